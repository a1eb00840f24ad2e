#!/usr/bin/env bash
# Builds the Spark plugin without Maven: the native library (alone, so
# cargo's workspace feature unification does not link the server in), the
# Java sources against the jars of the PySpark wheel, and one jar holding
# both. Prints the jar's path on its last line.
#
#   bash spark/build.sh [--venv DIR]
#
# --venv DIR (or SPARK_VENV): a venv with pyspark==3.5.9; made (and the
# wheel installed) if it has none. Default: spark/.venv.
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
venv="${SPARK_VENV:-$root/spark/.venv}"
while [ $# -gt 0 ]; do
  case "$1" in
    --venv) venv="$2"; shift 2 ;;
    -h|--help) sed -n '2,11p' "$0"; exit 0 ;;
    *) echo "build.sh: unknown argument $1 (see --help)" >&2; exit 2 ;;
  esac
done
target="${CARGO_TARGET_DIR:-$root/target}"
out="$target/spark"

command -v javac >/dev/null || { echo "build.sh: javac (JDK 17) not found" >&2; exit 1; }
command -v jar >/dev/null || { echo "build.sh: jar (JDK 17) not found" >&2; exit 1; }

if ! "$venv/bin/python" -c "import pyspark" 2>/dev/null; then
  echo "== creating $venv with pyspark==3.5.9" >&2
  python3 -m venv "$venv"
  "$venv/bin/pip" install --quiet --disable-pip-version-check "pyspark==3.5.9" >&2
fi
jars="$("$venv/bin/python" -c 'import os, pyspark; print(os.path.join(os.path.dirname(pyspark.__file__), "jars"))')"

echo "== native library" >&2
(cd "$root" && cargo build --quiet --release -p rss-spark-native >&2)
lib="$target/release/librss_spark.so"
[ -f "$lib" ] || { echo "build.sh: $lib was not built" >&2; exit 1; }

echo "== java" >&2
rm -rf "$out/classes"
mkdir -p "$out/classes/native"
javac --release 17 -Xlint:all,-serial,-processing -Werror -nowarn \
  -cp "$jars/*" -d "$out/classes" "$root"/spark/src/main/java/rss/spark/*.java >&2
cp "$lib" "$out/classes/native/librss_spark.so"
rm -f "$out/rss-spark.jar"
jar --create --file "$out/rss-spark.jar" -C "$out/classes" . >&2
echo "$out/rss-spark.jar"
