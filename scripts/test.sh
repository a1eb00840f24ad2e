#!/usr/bin/env bash
# Every test: the workspace's (cargo test), then Spark through the service
# (spark/tests/test_spark.py: builds the plugin, makes the PySpark venv on
# first use, needs Java 17). RSS_SKIP_SPARK=1 runs the cargo tests only.
set -euo pipefail
cd "$(dirname "$0")/.."
cargo test --workspace
if [ "${RSS_SKIP_SPARK:-0}" = 1 ]; then
  echo "== Spark tests skipped (RSS_SKIP_SPARK=1)"
  exit 0
fi
echo "== Spark tests (spark/tests/test_spark.py)"
python3 -W ignore::ResourceWarning spark/tests/test_spark.py
