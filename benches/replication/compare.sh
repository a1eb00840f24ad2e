#!/usr/bin/env bash
# The cost of a second copy: shuffle-bench with --replication 1 and 2 over
# the same three started servers' setup, alternated in one run (1, 2, 1, 2,
# ...), then a table of throughput and CPU seconds per shuffled GB with the
# ratio of the medians. On one machine this measures CPU (the client pushes
# every block twice, two servers store it), not network.
#
#   bash benches/replication/compare.sh                 # 1GiB, blocking, 3 rounds
#   SIZE=512MB MODE=hybrid-full ROUNDS=5 COMPRESS=off bash benches/replication/compare.sh
#
# Run it on a quiet machine, alone (no build, no other benchmark).
set -euo pipefail
cd "$(dirname "$0")/../.."
SIZE=${SIZE:-1GiB}
MODE=${MODE:-blocking}
ROUNDS=${ROUNDS:-3}
COMPRESS=${COMPRESS:-on}
MAPS=${MAPS:-8}
PARTITIONS=${PARTITIONS:-64}
cargo build --release -q -p benches -p shuffle-server
out=$(mktemp)
trap 'rm -f "$out"' EXIT
for round in $(seq "$ROUNDS"); do
  for r in 1 2; do
    echo "round $round/$ROUNDS: --replication $r" >&2
    ./target/release/shuffle-bench --size "$SIZE" --mode "$MODE" --maps "$MAPS" \
      --partitions "$PARTITIONS" --compress "$COMPRESS" --servers 3 --replication "$r" \
      --no-baselines --json | tail -1 >> "$out"
  done
done
python3 - "$out" <<'PY'
import json, statistics, sys
runs = [json.loads(l) for l in open(sys.argv[1]) if l.strip()]
by = {1: [], 2: []}
for r in runs:
    by[r["replication"]].append(r)
r0 = runs[0]
print(f"{r0['size_bytes'] / 2**30:.2f} GiB, {r0['mode']}, {r0['maps']} maps, {r0['partitions']} partitions, "
      f"compress {'on' if r0['compress'] else 'off'}, 3 servers, {len(by[1])} runs each, alternated")
print()
print("| replication | GB/s (runs) | median GB/s | CPU s per GB (runs) | median CPU s/GB | pushed bytes | disk bytes |")
print("|---:|---|---:|---|---:|---:|---:|")
med = {}
for k in (1, 2):
    gbs = [r["throughput_gb_per_sec"] for r in by[k]]
    cpu = [r["cpu_seconds_per_gb"] for r in by[k] if r["cpu_seconds_per_gb"] is not None]
    med[k] = (statistics.median(gbs), statistics.median(cpu) if cpu else float("nan"))
    last = by[k][-1]
    print(f"| {k} | {', '.join(f'{x:.3f}' for x in gbs)} | {med[k][0]:.3f} | "
          f"{', '.join(f'{x:.2f}' for x in cpu)} | {med[k][1]:.2f} | "
          f"{last['pushed_bytes'] / 2**20:.0f} MiB | {last['disk_bytes'] / 2**20:.0f} MiB |")
print()
print(f"replication 2 / replication 1: throughput {med[2][0] / med[1][0]:.0%} (goal >= 70%), "
      f"CPU per GB {med[2][1] / med[1][1]:.2f}x")
PY
