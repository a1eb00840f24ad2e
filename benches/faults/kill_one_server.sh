#!/usr/bin/env bash
# TeraSort over three shuffle-server daemons, one of them killed with
# SIGKILL once it has served its first fetch bytes (mid-reduce): prints the
# job's report line and its recovery (maps re-run, time to recover).
#
#   bash benches/faults/kill_one_server.sh            # 1GiB, blocking
#   SIZE=256MB MODE=hybrid-full RETRY_WINDOW=5s bash benches/faults/kill_one_server.sh
#   REPLICATION=2 bash benches/faults/kill_one_server.sh   # read from the replica
#
# Needs curl. Release binaries are built first.
set -euo pipefail
cd "$(dirname "$0")/../.."
SIZE=${SIZE:-1GiB}
MODE=${MODE:-blocking}
RETRY_WINDOW=${RETRY_WINDOW:-5s}
KILL_AFTER=${KILL_AFTER:-rss_fetch_bytes_total}
REPLICATION=${REPLICATION:-1}
cargo build --release -q -p shuffle-server -p engine
bin=target/release
tmp=$(mktemp -d)
pids=()
cleanup() {
  for p in "${pids[@]}"; do kill -9 "$p" 2>/dev/null || true; done
  rm -rf "$tmp"
}
trap cleanup EXIT

urls=() https=()
for i in 0 1 2; do
  "$bin/shuffle-server" --data-dir "$tmp/s$i" --create-data-dirs --no-fsync \
    --listen 127.0.0.1:0 --quic-listen 127.0.0.1:0 --grpc-listen 127.0.0.1:0 \
    --http-listen 127.0.0.1:0 2> "$tmp/s$i.log" &
  pids+=($!)
  disown  # killed on purpose: no job-control notice
  for _ in $(seq 200); do grep -q "shuffle server listening" "$tmp/s$i.log" && break; sleep 0.05; done
  line=$(grep -m1 "shuffle server listening" "$tmp/s$i.log") || { cat "$tmp/s$i.log"; exit 1; }
  urls+=("tcp://$(sed -E 's/.*tcp=([^ ]+).*/\1/' <<<"$line")")
  https+=("$(sed -E 's/.*http=([^ ]+).*/\1/' <<<"$line")")
done
servers=$(IFS=,; echo "${urls[*]}")
echo "servers: $servers; killing ${urls[1]} once it counts $KILL_AFTER > 0" >&2

"$bin/engine" run terasort --size "$SIZE" --mode "$MODE" --shuffle-servers "$servers" \
  --retry-window "$RETRY_WINDOW" --replication "$REPLICATION" --json > "$tmp/report.json" 2> "$tmp/engine.log" &
engine=$!
start=$(date +%s.%N)
while :; do
  v=$(curl -s "http://${https[1]}/metrics" | awk -v m="$KILL_AFTER" '$1 ~ "^"m {s+=$2} END {print s+0}')
  if awk -v v="$v" 'BEGIN {exit !(v > 0)}'; then break; fi
  kill -0 "$engine" 2>/dev/null || { echo "the job ended before the kill" >&2; break; }
  sleep 0.02
done
kill -9 "${pids[1]}" 2>/dev/null || true
echo "killed server 1 at $(awk -v a="$start" -v b="$(date +%s.%N)" 'BEGIN {printf "%.2f", b - a}')s" >&2
status=0
wait "$engine" || status=$?
grep -E "lost|running the|recovered" "$tmp/engine.log" >&2 || true
tail -1 "$tmp/report.json"
python3 - "$tmp/report.json" <<'PY'
import json, sys
r = json.loads(open(sys.argv[1]).read().splitlines()[-1])
print(f"valid={r['valid']} records_out={r['records_out']} wall={r['wall_seconds']:.2f}s "
      f"maps_rerun={r['maps_rerun']} read_failovers={r.get('read_failovers', 0)} region_restarts={r['region_restarts']} retries={r['retries']}")
for x in r.get("recoveries", []):
    print(f"  shuffle {x['lost_shuffle']} lost at {x['at']:.2f}s: {x['tasks_rerun']} {x['stage']} tasks re-run "
          f"on shuffle {x['new_shuffle']} in {x['seconds']}s")
PY
exit $status
