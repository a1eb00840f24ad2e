#!/usr/bin/env python3
"""TeraSort through the engine in every shuffle mode, on worker processes,
against the embedded shuffle service and against a shuffle-server daemon.

Each configuration runs `--repeat` times; the table reports the best and
the median wall time, and, as this machine's own baseline measured in the
same run, the time the job's data generation alone takes (the terasort
report's `generate_seconds`), so results compare across machines as ratios.

    cargo build --release -p engine -p shuffle-server
    python3 benches/engine/modes.py --size 1GiB --workers 2 --repeat 3

Writes benches/results/engine_modes.json and engine_modes.md.
"""

import argparse
import json
import os
import pathlib
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time

ROOT = pathlib.Path(__file__).resolve().parents[2]
MODES = ["blocking", "pipelined", "hybrid-full", "hybrid-selective"]


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_daemon(bin_dir, data_dir, budget):
    ports = [free_port() for _ in range(4)]
    args = [
        str(bin_dir / "shuffle-server"),
        "--data-dir", data_dir, "--create-data-dirs",
        "--listen", f"127.0.0.1:{ports[0]}",
        "--quic-listen", f"127.0.0.1:{ports[1]}",
        "--grpc-listen", f"127.0.0.1:{ports[2]}",
        "--http-listen", f"127.0.0.1:{ports[3]}",
        "--memory-budget", budget,
    ]
    proc = subprocess.Popen(args, stderr=subprocess.DEVNULL)
    deadline = time.time() + 30
    while time.time() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", ports[3]), timeout=1):
                return proc, f"tcp://127.0.0.1:{ports[0]}"
        except OSError:
            time.sleep(0.1)
    proc.kill()
    sys.exit("the shuffle-server daemon did not start")


def run_engine(bin_dir, args):
    out = subprocess.run([str(bin_dir / "engine"), *args], capture_output=True, text=True)
    if out.returncode != 0:
        return {"error": out.stderr.strip().splitlines()[-1:] or ["failed"]}
    return json.loads(out.stdout.strip().splitlines()[-1])


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--size", default="1GiB")
    p.add_argument("--maps", default="16")
    p.add_argument("--partitions", default="64")
    p.add_argument("--workers", default="2")
    p.add_argument("--repeat", type=int, default=3)
    p.add_argument("--memory-budget", default="2GiB")
    p.add_argument("--bin-dir", default=str(ROOT / "target" / "release"))
    p.add_argument("--out", default=str(ROOT / "benches" / "results" / "engine_modes"))
    a = p.parse_args()
    bin_dir = pathlib.Path(a.bin_dir)
    for b in ["engine", "shuffle-server"]:
        if not (bin_dir / b).exists():
            sys.exit(f"{bin_dir / b} is missing: cargo build --release -p engine -p shuffle-server")

    base = ["run", "terasort", "--size", a.size, "--maps", a.maps, "--partitions", a.partitions,
            "--workers", a.workers, "--json", "--quiet"]
    rows = []
    tmp = tempfile.mkdtemp(prefix="rss-modes-")
    daemon, url = start_daemon(bin_dir, os.path.join(tmp, "daemon"), a.memory_budget)
    try:
        for service in ["embedded", "daemon"]:
            for mode in MODES:
                extra = ["--mode", mode]
                if service == "daemon":
                    extra += ["--shuffle-servers", url]
                else:
                    extra += ["--memory-budget", a.memory_budget]
                runs = [run_engine(bin_dir, base + extra) for _ in range(a.repeat)]
                ok = [r for r in runs if "error" not in r]
                row = {"service": service, "mode": mode, "runs": runs}
                if ok:
                    walls = [r["wall_seconds"] for r in ok]
                    gens = [r.get("extra", {}).get("generate_seconds") for r in ok]
                    gens = [g for g in gens if g is not None]
                    row.update(
                        best=min(walls), median=statistics.median(walls),
                        valid=all(r["valid"] for r in ok),
                        startup=statistics.median(r["startup_seconds"] for r in ok),
                        on_disk=ok[0]["stored_bytes"],
                        generate=statistics.median(gens) if gens else None,
                    )
                rows.append(row)
                print(service, mode, {k: v for k, v in row.items() if k != "runs"}, flush=True)
    finally:
        daemon.terminate()
        daemon.wait(timeout=30)
        shutil.rmtree(tmp, ignore_errors=True)

    out = pathlib.Path(a.out)
    out.with_suffix(".json").write_text(json.dumps({"args": vars(a), "rows": rows}, indent=1))
    lines = [
        f"TeraSort {a.size}, {a.maps} maps, {a.partitions} partitions, {a.workers} worker processes, "
        f"best of {a.repeat} (median in brackets). Baseline: generating the data alone, same run.",
        "",
        "| service | mode | wall s | x generation | worker start s | on disk | valid |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        if "best" not in r:
            lines.append(f"| {r['service']} | {r['mode']} | failed: {r['runs'][0]['error']} | | | | |")
            continue
        ratio = f"{r['best'] / r['generate']:.1f}" if r.get("generate") else "?"
        lines.append(
            f"| {r['service']} | {r['mode']} | {r['best']:.2f} ({r['median']:.2f}) | {ratio} | "
            f"{r['startup']:.2f} | {r['on_disk'] / 2**20:.0f} MiB | {r['valid']} |"
        )
    out.with_suffix(".md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
