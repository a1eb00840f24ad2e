#!/usr/bin/env python3
"""Fault suite: TeraSort over three shuffle-server daemons, one of them hit by
a fault (SIGKILL, or its data directory removed) at a random moment, many
runs per scenario; a table of outcomes at the end.

    python3 benches/faults/suite.py                        # the six scenarios, 20 runs each
    python3 benches/faults/suite.py --runs 2 --scenarios blocking-r1-kill,pipelined-r1-kill
    python3 benches/faults/suite.py --seed 1234 --json /tmp/faults.json --logs /tmp/fault-logs

Each run starts three fresh release `shuffle-server` daemons (loopback,
ephemeral ports, fresh data directories), runs `engine run terasort ...
--json` over them, and at a random time uniform in [0, baseline] after the
engine starts hits one server chosen at random (the baseline is the median
elapsed time of 2 runs of the same mode and replication without a fault,
measured first). Scenarios (mode, --replication, fault):

  blocking-r2-kill             blocking, 2, SIGKILL     valid, 0 maps re-run
  hybrid-full-r2-kill          hybrid-full, 2, SIGKILL  valid, 0 maps re-run
  blocking-r1-kill             blocking, 1, SIGKILL     valid (maps re-run, or
  hybrid-full-r1-kill          hybrid-full, 1, SIGKILL   0 if the data was read)
  pipelined-r1-kill            pipelined, 1, SIGKILL    valid (region restarts)
  blocking-r2-datadir-removed  blocking, 2, rm -rf of the server's data dir: valid
  blocking-r1-datadir-removed  blocking, 1, rm -rf (only with --scenarios)

Outcome of a run, exactly one of:

  valid   exit 0, report `valid` true, `records_out` = size / 100
  wrong   the job ended (exit 0, or exit 2: "did not validate") with an
          invalid report or the wrong count: a correctness bug
  failed  any other non-zero exit (the last error line is kept)
  hang    no progress for --hang-seconds (the engine's stderr did not grow
          and the servers' rss_push_bytes_total + rss_fetch_bytes_total did
          not change); the engine is killed then

A run whose job had already ended when its fault was due is `late`: the
engine had exited (no fault happens), or every stage had printed `done`
(the fault still hits, during the app's release). A late run that is valid
counts in the `late` column, not as a pass of the fault; one that is not is
still `wrong`, `failed` or `hang`. Runs go round-robin over the
scenarios, so when --budget-minutes runs out every scenario has about as
many runs; the ones that got fewer are named. Exit status: 1 if any run was
wrong or hang, else 0. Every child (servers, engine and its workers) is
killed and the temporary folder removed on exit, Ctrl-C included.

Python 3 standard library only. Builds `cargo build --release -q -p
shuffle-server -p engine` first (skip with --no-build).
"""

import argparse
import json
import os
import random
import re
import shlex
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

# name -> (mode, replication, fault, what is expected)
SCENARIOS = {
    "blocking-r2-kill": ("blocking", 2, "kill", "valid, 0 maps re-run"),
    "hybrid-full-r2-kill": ("hybrid-full", 2, "kill", "valid, 0 maps re-run"),
    "blocking-r1-kill": ("blocking", 1, "kill", "valid (maps re-run, or 0 when the data was read)"),
    "hybrid-full-r1-kill": ("hybrid-full", 1, "kill", "valid (maps re-run, or 0 when the data was read)"),
    "pipelined-r1-kill": ("pipelined", 1, "kill", "valid (region restarts)"),
    "blocking-r2-datadir-removed": ("blocking", 2, "rm-datadir", "valid"),
    # Not run by default (select it with --scenarios): no replica to read.
    "blocking-r1-datadir-removed": ("blocking", 1, "rm-datadir", "valid (maps re-run)"),
}
DEFAULT = [n for n in SCENARIOS if n != "blocking-r1-datadir-removed"]
OUTCOMES = ["valid", "wrong", "failed", "hang"]

CHILDREN = []  # Popen objects, each the leader of its own process group
TMP = None


def log(msg):
    print(msg, file=sys.stderr, flush=True)


def parse_size(text):
    """Bytes of `text` as the engine reads it (protocol::units::parse_size)."""
    m = re.fullmatch(r"\s*([0-9.]+)\s*([A-Za-z]*)\s*", text)
    if not m:
        raise argparse.ArgumentTypeError(f"{text!r} is not a size (64MB, 256MiB, 1GiB)")
    mult = {"": 1, "b": 1, "k": 1 << 10, "kib": 1 << 10, "m": 1 << 20, "mib": 1 << 20,
            "g": 1 << 30, "gib": 1 << 30, "kb": 10**3, "mb": 10**6, "gb": 10**9}
    unit = m.group(2).lower()
    if unit not in mult:
        raise argparse.ArgumentTypeError(f"unknown size unit in {text!r}")
    return int(float(m.group(1)) * mult[unit])


# ---------------------------------------------------------------- children

def spawn(args, **kw):
    """Starts a child in its own process group (Ctrl-C reaches only us; we
    kill the group, which takes the engine's workers along)."""
    p = subprocess.Popen(args, start_new_session=True, stdin=subprocess.DEVNULL, **kw)
    CHILDREN.append(p)
    return p


def kill_group(p):
    try:
        os.killpg(p.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass
    try:
        p.wait(timeout=10)
    except subprocess.TimeoutExpired:
        pass
    if p in CHILDREN:
        CHILDREN.remove(p)


def cleanup():
    for p in list(CHILDREN):
        kill_group(p)
    if TMP and os.path.isdir(TMP):
        shutil.rmtree(TMP, ignore_errors=True)


def on_signal(signum, _frame):
    raise KeyboardInterrupt(f"signal {signum}")


class Server:
    def __init__(self, bin_dir, run_dir, i):
        self.index = i
        self.data_dir = os.path.join(run_dir, f"s{i}")
        self.log_path = os.path.join(run_dir, f"s{i}.log")
        self.log = open(self.log_path, "wb")
        self.proc = spawn([
            os.path.join(bin_dir, "shuffle-server"), "--data-dir", self.data_dir,
            "--create-data-dirs", "--no-fsync",
            "--listen", "127.0.0.1:0", "--quic-listen", "127.0.0.1:0",
            "--grpc-listen", "127.0.0.1:0", "--http-listen", "127.0.0.1:0",
        ], stdout=subprocess.DEVNULL, stderr=self.log)
        self.url = self.http = None
        self.last_bytes = 0.0

    def wait_ready(self, timeout=20):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with open(self.log_path, errors="replace") as f:
                for line in f:
                    if "shuffle server listening" in line:
                        tcp = re.search(r"tcp=(\S+)", line).group(1)
                        self.http = re.search(r"http=(\S+)", line).group(1)
                        self.url = f"tcp://{tcp}"
                        return
            if self.proc.poll() is not None:
                break
            time.sleep(0.02)
        raise RuntimeError(f"shuffle-server {self.index} did not start:\n"
                           + open(self.log_path, errors="replace").read()[-2000:])

    def bytes_moved(self):
        """rss_push_bytes_total + rss_fetch_bytes_total, or the last value
        read when /metrics does not answer (a killed server)."""
        try:
            with urllib.request.urlopen(f"http://{self.http}/metrics", timeout=0.5) as r:
                text = r.read().decode()
        except Exception:
            return self.last_bytes
        total = 0.0
        for line in text.splitlines():
            if line.startswith(("rss_push_bytes_total", "rss_fetch_bytes_total")):
                try:
                    total += float(line.rsplit(None, 1)[1])
                except (ValueError, IndexError):
                    pass
        self.last_bytes = total
        return total

    def stop(self):
        kill_group(self.proc)
        self.log.close()


# ---------------------------------------------------------------- one run

def last_error_line(text):
    lines = [l.strip() for l in text.splitlines() if l.strip()]
    for l in reversed(lines):
        if re.search(r"error|panick|failed|lost", l, re.I) and not l.startswith("["):
            return l[:300]
    return lines[-1][:300] if lines else ""


def tasks_over(err_path):
    """Every stage the engine started printed `[stage] done:` (the scheduler
    ended: what is left is the report and releasing the app)."""
    started, done = set(), set()
    with open(err_path, errors="replace") as f:
        for line in f:
            m = re.match(r"\[([^\]]+)\] (started|done):", line)
            if m:
                (started if m.group(2) == "started" else done).add(m.group(1))
    return bool(started) and started <= done


def run_once(a, bin_dir, mode, replication, fault=None, fault_at=None, server=None):
    """One TeraSort over three fresh servers. `fault` is None (baseline),
    "kill" or "rm-datadir", due `fault_at` seconds after the engine starts,
    on server index `server`. Returns the run's record (without scenario)."""
    run_dir = tempfile.mkdtemp(prefix="run-", dir=TMP)
    servers = [Server(bin_dir, run_dir, i) for i in range(3)]
    engine = None
    rec = {"mode": mode, "replication": replication, "fault": fault, "fault_at": fault_at,
           "server": server, "late": False, "fault_done_at": None}
    try:
        for s in servers:
            s.wait_ready()
        out_path, err_path = os.path.join(run_dir, "report.json"), os.path.join(run_dir, "engine.log")
        cmd = [os.path.join(bin_dir, "engine"), "run", "terasort", "--size", a.size,
               "--mode", mode, "--replication", str(replication),
               "--shuffle-servers", ",".join(s.url for s in servers),
               "--retry-window", a.retry_window, "--max-attempts", str(a.max_attempts), "--json"]
        with open(out_path, "wb") as out, open(err_path, "wb") as err:
            start = time.monotonic()
            engine = spawn(cmd, stdout=out, stderr=err)
        last_progress, last_err_size, last_moved = start, 0, 0.0
        next_poll = start
        while True:
            now = time.monotonic()
            ended = engine.poll() is not None
            pending = fault is not None and rec["fault_done_at"] is None and not rec["late"]
            if pending and ended:
                rec["late"] = "exited"  # the engine exited before the fault was due
            elif pending and now - start >= fault_at:
                s = servers[server]
                rec["fault_done_at"] = round(now - start, 3)
                if tasks_over(err_path):
                    # Only the report and the app's release were left: the
                    # fault still hits (the release must cope), but no task.
                    rec["late"] = "tasks over"
                if fault == "kill":
                    os.killpg(s.proc.pid, signal.SIGKILL)
                else:
                    for _ in range(50):  # files may appear while it is removed
                        shutil.rmtree(s.data_dir, ignore_errors=True)
                        if not os.path.exists(s.data_dir):
                            break
            if ended:
                break
            if now >= next_poll:
                next_poll = now + 0.5
                size = os.path.getsize(err_path)
                moved = sum(s.bytes_moved() for s in servers)
                if size != last_err_size or moved != last_moved:
                    last_progress, last_err_size, last_moved = now, size, moved
                elif now - last_progress >= a.hang_seconds:
                    kill_group(engine)
                    rec.update(outcome="hang", exit=None, wall=round(now - start, 3),
                               error=f"no progress for {a.hang_seconds:g}s: "
                                     + last_error_line(open(err_path, errors="replace").read()))
                    break
            waits = [next_poll]
            if pending:
                waits.append(start + fault_at)
            time.sleep(max(0.0, min(0.05, min(waits) - time.monotonic())))
        if rec.get("outcome") != "hang":
            rec["wall"] = round(time.monotonic() - start, 3)
            rec["exit"] = engine.returncode
            kill_group(engine)  # its workers, should any outlive it
            classify(rec, a, open(out_path, errors="replace").read(),
                     open(err_path, errors="replace").read())
        if a.logs and (rec["outcome"] != "valid" or a.keep_all_logs):
            keep = os.path.join(a.logs, f"run-{time.strftime('%H%M%S')}-{os.path.basename(run_dir)}")
            os.makedirs(keep, exist_ok=True)
            for s in servers:
                s.log.flush()
            for name in os.listdir(run_dir):
                p = os.path.join(run_dir, name)
                if os.path.isfile(p):
                    shutil.copy(p, keep)
            rec["logs"] = keep
        return rec
    finally:
        if engine is not None and engine in CHILDREN:
            kill_group(engine)
        for s in servers:
            s.stop()
        shutil.rmtree(run_dir, ignore_errors=True)


def classify(rec, a, stdout, stderr):
    report = None
    lines = [l for l in stdout.splitlines() if l.strip()]
    if lines:
        try:
            report = json.loads(lines[-1])
        except ValueError:
            report = None
    if report is not None:
        for k in ("maps_rerun", "read_failovers", "region_restarts", "retries", "records_out", "valid"):
            rec[k] = report.get(k)
        rec["report_wall"] = report.get("wall_seconds")
        rec["recoveries"] = len(report.get("recoveries", []) or [])
    expected = a.expected_records
    if rec["exit"] == 0 and report is not None and report.get("valid") is True \
            and report.get("records_out") == expected:
        rec["outcome"], rec["error"] = "valid", None
    elif rec["exit"] in (0, 2):
        # The job ran to its end: an invalid result or a wrong count.
        rec["outcome"] = "wrong"
        rec["error"] = (f"exit {rec['exit']}, valid={None if report is None else report.get('valid')}, "
                        f"records_out={None if report is None else report.get('records_out')} "
                        f"(expected {expected})")
        if report is None:
            rec["error"] += ": " + last_error_line(stderr)
    else:
        rec["outcome"] = "failed"
        rec["error"] = f"exit {rec['exit']}: " + last_error_line(stderr)


# ---------------------------------------------------------------- the suite

def reproduce_cmd(a, name, rec):
    return (f"python3 benches/faults/suite.py --no-build --scenarios {name} --runs 1 "
            f"--size {a.size} --retry-window {a.retry_window} --max-attempts {a.max_attempts} "
            f"--kill-at {rec['fault_at']} --kill-server {rec['server']}"
            + (f" --hang-seconds {a.hang_seconds:g}" if a.hang_seconds != 60 else ""))


def fmt_med(values, spec="{:.2f}"):
    values = [v for v in values if v is not None]
    return spec.format(statistics.median(values)) if values else "-"


def table(a, results, planned):
    rows = [
        # Medians over the valid runs the fault hit (not late).
        "| scenario | runs | valid | wrong | failed | hang | late | median wall s | median maps re-run "
        "| median read failovers | median region restarts |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for name in planned:
        rs = results[name]
        n = {o: sum(1 for r in rs if r["outcome"] == o and not (o == "valid" and r["late"])) for o in OUTCOMES}
        late = sum(1 for r in rs if r["late"] and r["outcome"] == "valid")
        ok = [r for r in rs if r["outcome"] == "valid"]
        faulted = [r for r in ok if not r["late"]]
        rows.append(
            f"| {name} | {len(rs)} | {n['valid']} | {n['wrong']} | {n['failed']} | {n['hang']} | {late} | "
            f"{fmt_med([r['wall'] for r in faulted])} | {fmt_med([r.get('maps_rerun') for r in faulted], '{:g}')} | "
            f"{fmt_med([r.get('read_failovers') for r in faulted], '{:g}')} | "
            f"{fmt_med([r.get('region_restarts') for r in faulted], '{:g}')} |")
    return "\n".join(rows)


def main():
    global TMP
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--scenarios", default=",".join(DEFAULT),
                   help="comma-separated, of: " + ", ".join(SCENARIOS)
                   + " (default: all but blocking-r1-datadir-removed)")
    p.add_argument("--runs", type=int, default=20, help="runs per scenario (default 20)")
    p.add_argument("--size", default="64MB", help="TeraSort size (default 64MB)")
    p.add_argument("--retry-window", default="2s", help="engine --retry-window (default 2s)")
    p.add_argument("--max-attempts", type=int, default=4, help="engine --max-attempts (default 4)")
    p.add_argument("--seed", type=int, default=None, help="seed of the fault times and servers (default: random, printed)")
    p.add_argument("--budget-minutes", type=float, default=30.0,
                   help="stop starting runs after this long, baselines included, the build not (default 30)")
    p.add_argument("--hang-seconds", type=float, default=60.0, help="no progress this long is a hang (default 60)")
    p.add_argument("--json", metavar="FILE", help="write every run's record here")
    p.add_argument("--logs", metavar="DIR", help="copy the engine's and servers' logs of every run not valid here")
    p.add_argument("--keep-all-logs", action="store_true", help="with --logs: of every run")
    p.add_argument("--kill-at", type=float, default=None,
                   help="fault time in seconds after the engine starts, instead of a random one (to reproduce a run)")
    p.add_argument("--kill-server", type=int, choices=[0, 1, 2], default=None,
                   help="server to hit, instead of a random one")
    p.add_argument("--bin-dir", default=os.path.join(ROOT, "target", "release"))
    p.add_argument("--no-build", action="store_true", help="do not run cargo build first")
    a = p.parse_args()
    names = [s.strip() for s in a.scenarios.split(",") if s.strip()]
    unknown = [s for s in names if s not in SCENARIOS]
    if unknown or not names:
        p.error(f"unknown scenario(s) {unknown}; known: {', '.join(SCENARIOS)}")
    a.expected_records = parse_size(a.size) // 100
    if a.seed is None:
        a.seed = random.SystemRandom().randrange(1, 2**31)

    signal.signal(signal.SIGINT, on_signal)  # also when started in the background
    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGHUP, on_signal)
    if not a.no_build:
        log("building: cargo build --release -q -p shuffle-server -p engine")
        subprocess.run(["cargo", "build", "--release", "-q", "-p", "shuffle-server", "-p", "engine"],
                       cwd=ROOT, check=True)
    for b in ("engine", "shuffle-server"):
        if not os.path.exists(os.path.join(a.bin_dir, b)):
            sys.exit(f"{a.bin_dir}/{b} is missing")
    TMP = tempfile.mkdtemp(prefix="rss-faults-")
    t0 = time.monotonic()
    budget = a.budget_minutes * 60
    results = {n: [] for n in names}
    interrupted = False
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT,
                            capture_output=True, text=True).stdout.strip() or "?"
    if subprocess.run(["git", "status", "--porcelain", "--untracked-files=no", "--",
                       "*.rs", "*Cargo.toml", "Cargo.lock"], cwd=ROOT,
                      capture_output=True, text=True).stdout.strip():
        commit += "+uncommitted"  # the binaries include uncommitted Rust changes
    log(f"seed {a.seed}; size {a.size} ({a.expected_records} records), retry window {a.retry_window}, "
        f"max attempts {a.max_attempts}, {a.runs} runs per scenario, budget {a.budget_minutes:g} min, "
        f"commit {commit}")
    try:
        baselines = {}
        for n in names:
            mode, repl, _, _ = SCENARIOS[n]
            if (mode, repl) in baselines:
                continue
            walls = []
            for _ in range(2):
                r = run_once(a, a.bin_dir, mode, repl)
                if r["outcome"] != "valid":
                    sys.exit(f"baseline {mode} r{repl} was not valid: {r['outcome']}: {r.get('error')}")
                walls.append(r["wall"])
            baselines[(mode, repl)] = statistics.median(walls)
            log(f"baseline {mode} --replication {repl}: {baselines[(mode, repl)]:.2f}s "
                f"(runs {', '.join(f'{w:.2f}' for w in walls)}; elapsed from engine start to exit)")

        total = a.runs * len(names)
        done = 0
        for i in range(a.runs):
            for n in names:
                if time.monotonic() - t0 >= budget:
                    raise TimeoutError
                mode, repl, fault, _ = SCENARIOS[n]
                rng = random.Random(f"{a.seed}/{n}/{i}")
                u, server = rng.random(), rng.randrange(3)
                at = a.kill_at if a.kill_at is not None else round(u * baselines[(mode, repl)], 3)
                if a.kill_server is not None:
                    server = a.kill_server
                rec = run_once(a, a.bin_dir, mode, repl, fault, at, server)
                rec.update(scenario=n, run=i)
                results[n].append(rec)
                done += 1
                extra = "" if rec["outcome"] == "valid" else f" ({rec['error']})"
                what = "kill" if fault == "kill" else "rm data dir of"
                late_note = f" (late: {rec['late']})" if rec["late"] else ""
                log(f"[{done}/{total} {time.monotonic() - t0:5.0f}s] {n} #{i}: {what} s{server} at {at:.3f}s"
                    f"{late_note} -> {rec['outcome']}"
                    f" wall {rec['wall']:.2f}s maps_rerun {rec.get('maps_rerun')} "
                    f"failovers {rec.get('read_failovers')} restarts {rec.get('region_restarts')}{extra}")
                if rec["outcome"] != "valid":
                    rec["reproduce"] = reproduce_cmd(a, n, rec) + f"  # seed {a.seed}, run {i}"
                    log(f"    reproduce: {rec['reproduce']}")
    except TimeoutError:
        short = [f"{n} ({len(results[n])} of {a.runs})" for n in names if len(results[n]) < a.runs]
        log(f"budget of {a.budget_minutes:g} min used up; fewer runs: {', '.join(short)}")
    except KeyboardInterrupt:
        interrupted = True
        log("interrupted: stopping")
    finally:
        cleanup()

    elapsed = time.monotonic() - t0
    if a.json:
        with open(a.json, "w") as f:
            json.dump({"seed": a.seed, "commit": commit, "size": a.size, "retry_window": a.retry_window,
                       "max_attempts": a.max_attempts, "runs_per_scenario": a.runs,
                       "elapsed_seconds": round(elapsed, 1),
                       "runs": [r for n in names for r in results[n]]}, f, indent=1)
    print(f"TeraSort {a.size}, 3 servers, retry window {a.retry_window}, max attempts {a.max_attempts}, "
          f"seed {a.seed}, commit {commit}, {elapsed / 60:.1f} min")
    print()
    print(table(a, results, names))
    bad = [r for n in names for r in results[n] if r["outcome"] in ("wrong", "hang")]
    for r in [r for n in names for r in results[n] if r["outcome"] != "valid"]:
        print(f"\n{r['scenario']} #{r['run']}: {r['outcome']}: {r['error']}\n  {r['reproduce']}")
    if interrupted:
        sys.exit(130)
    sys.exit(1 if bad else 0)


if __name__ == "__main__":
    main()
