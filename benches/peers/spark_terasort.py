#!/usr/bin/env python3
"""Peer comparison: `engine run terasort` against Apache Spark (PySpark, local mode).

One command runs the same TeraSort on both sides, on this machine, and prints
both wall times and their ratio:

    python3 benches/peers/spark_terasort.py --size 1GiB --partitions 64 --json

What it does:

1. Checks that Java is installed (Spark 3.5 runs on Java 8, 11 or 17).
2. Creates a virtual environment of its own (default `benches/peers/.venv`),
   installs `pyspark==3.5.9` into it, and re-executes itself inside it.
   Re-running reuses the venv; nothing is installed anywhere else.
3. Builds the engine (`cargo build --release -p engine` from the repository
   root, honouring `CARGO_TARGET_DIR`) unless `--engine-bin` names one, and
   runs `engine run terasort --size S --partitions P --maps M --seed X --json
   --quiet` `--repeat` times. Its JSON report must say `valid: true`.
4. Starts Spark in local mode (`local[N]`, N = the CPUs this process may use,
   the engine's default parallelism too) and runs the same TeraSort with the
   DataFrame API, all in the JVM (no Python UDF):
   - the same records as the engine, byte for byte: `size / 100` records of
     100 bytes, a 10-byte key from the engine's splitmix64 generator, the row
     id in hex and the rotating A..Z filler, computed with built-in SQL
     expressions over `spark.range(records, numPartitions=maps)`, so every
     map slice generates its rows in parallel (a few rows are compared with a
     Python copy of the generator before timing);
   - `repartitionByRange(P, key)` (Spark samples split points) then
     `sortWithinPartitions(key)`;
   - one validation pass that materialises every record of every partition:
     per partition, the record count, the sum of CRC32 of the records, the
     first and last key and whether the keys are in order; the driver then
     checks that partitions are in key order, that the count equals the
     generated count and that the checksum equals the generator's.
   The Spark wall time runs from the start of generation to the end of
   validation, like the engine's `wall_seconds`; SparkSession start-up (JVM
   included) and a generation-only pass (like the engine's
   `extra.generate_seconds`) are timed and reported separately.
5. Prints the machine, both wall times (median of `--repeat` runs), Spark's
   start-up, both generation-only times and the ratio `spark / engine`; with
   `--json`, the last stdout line is one JSON object holding all of it.

Every run also measures how much CPU other processes of the machine used
meanwhile (from /proc/stat, less this run's own CPU time) and says so when it
was more than 10%: on a shared machine the numbers are not clean.

Exit status: 0 when both sides validated; 2 when either did not validate; 1
on any other error (bad arguments, no Java, pip could not install PySpark,
the engine could not be built, Spark failed...), each with a message on
stderr.

Options: `--size` (1GiB, 256MiB...; default 1GiB), `--partitions` (64),
`--maps` (default, like the engine: one per 64 MiB, at least the CPU count
and at least 2), `--repeat` (1), `--engine-bin` (default: build it),
`--seed`, `--driver-memory` (8g), `--venv`, `--json`.

`--shuffle rss` compares Spark with Spark instead: the same TeraSort in
`local-cluster[2,1,M]` mode (two executor JVMs, `--executor-memory`, default
2g), first on Spark's built-in sort shuffle, then through the shuffle
service (`spark/build.sh` builds the plugin; one release `shuffle-server`
is started on loopback), and prints both wall times and the ratio
`rss / builtin` (both sides validated the same way).

This is a stand-alone tool: not part of CI, imported by nothing. It uses only
the standard library, plus PySpark inside its own venv.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import resource
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

PYSPARK_VERSION = "3.5.9"
SUPPORTED_JAVA = (8, 11, 17)

HERE = Path(__file__).resolve().parent
REPO_ROOT = HERE.parent.parent
DEFAULT_VENV = HERE / ".venv"
REEXEC_MARKER = "SPARK_TERASORT_REEXEC"

RECORD_LEN = 100
KEY_LEN = 10
DEFAULT_SEED = 0x5EED
FILLER = "ABCDEFGHIJKLMNOPQRSTUVWXYZ" * 4
MASK64 = (1 << 64) - 1


class BenchError(Exception):
    """A failure reported as `error: ...` with exit status 1."""


class NotValid(BenchError):
    """A side's output did not validate (exit status 2)."""


# --------------------------------------------------------------------------
# Command line


def parse_size(text: str) -> int:
    """Byte sizes as the engine reads them: 1GiB, 256MiB, 10MB, 4096."""
    match = re.fullmatch(r"\s*([0-9]+(?:\.[0-9]*)?)\s*([A-Za-z]*)\s*", text)
    units = {
        "": 1, "b": 1,
        "k": 1 << 10, "kib": 1 << 10, "m": 1 << 20, "mib": 1 << 20,
        "g": 1 << 30, "gib": 1 << 30, "t": 1 << 40, "tib": 1 << 40,
        "kb": 10**3, "mb": 10**6, "gb": 10**9, "tb": 10**12,
    }
    if not match or match.group(2).lower() not in units:
        raise argparse.ArgumentTypeError(f"{text!r} is not a size (examples: 1GiB, 256MiB, 1000000)")
    return int(float(match.group(1)) * units[match.group(2).lower()])


def positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"{text} must be at least 1")
    return value


class ArgumentParser(argparse.ArgumentParser):
    """Usage errors exit 1: status 2 means that an output did not validate."""

    def error(self, message: str):
        self.print_usage(sys.stderr)
        self.exit(1, f"{self.prog}: error: {message}\n")


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = ArgumentParser(
        description="TeraSort: the engine against Apache Spark (PySpark, local mode), same data, same machine.",
    )
    parser.add_argument("--size", type=parse_size, default=parse_size("1GiB"),
                        help="bytes to sort: size/100 records of 100 bytes (1GiB, 256MiB...; default 1GiB)")
    parser.add_argument("--partitions", type=positive_int, default=64, help="reduce partitions (default 64)")
    parser.add_argument("--maps", type=positive_int, default=None,
                        help="map tasks / generator slices (default: one per 64 MiB, at least the CPU count and 2)")
    parser.add_argument("--repeat", type=positive_int, default=1,
                        help="runs of each side; the median wall time is compared (default 1)")
    parser.add_argument("--engine-bin", type=Path, default=None,
                        help="engine binary to run (default: cargo build --release -p engine)")
    parser.add_argument("--seed", type=lambda text: int(text, 0), default=DEFAULT_SEED,
                        help="generator seed, decimal or 0x hex (default 0x5eed, the engine's)")
    parser.add_argument("--driver-memory", default="8g", help="spark.driver.memory (default 8g)")
    parser.add_argument("--venv", type=Path, default=DEFAULT_VENV,
                        help=f"virtual environment for PySpark (default {DEFAULT_VENV})")
    parser.add_argument("--json", action="store_true",
                        help="print one JSON object with both results as the last stdout line")
    parser.add_argument("--shuffle", choices=["engine", "rss"], default="engine",
                        help="engine: the engine against Spark local[N] (default); rss: Spark with the "
                             "shuffle-service plugin against Spark's built-in shuffle, both in "
                             "local-cluster mode, same run")
    parser.add_argument("--executor-memory", default="2g",
                        help="--shuffle rss: spark.executor.memory of each of the two executors (default 2g)")
    args = parser.parse_args(argv)
    records = args.size // RECORD_LEN
    if records == 0:
        parser.error(f"--size {args.size} bytes holds no 100-byte record")
    if args.maps is None:
        args.maps = max(args.size >> 26, cpu_count(), 2)
    if args.maps > records:
        parser.error(f"--maps {args.maps} is more than the {records} records")
    return args


# --------------------------------------------------------------------------
# Machine, Java, venv


def cpu_count() -> int:
    """CPUs this process may run on (what the engine's parallelism defaults to)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:
        return os.cpu_count() or 1


def machine() -> dict:
    model = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    ram = None
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                ram = int(line.split()[1]) * 1024
                break
    except OSError:
        pass
    return {
        "cpu_model": model,
        "cpus": cpu_count(),
        "ram_bytes": ram,
        "os": f"{platform.system()} {platform.release()}",
        "python": platform.python_version(),
    }


class Interference:
    """Measures, around one run, the CPU time that other processes of this
    machine used (all CPU busy time from /proc/stat, minus ours): a shared
    machine makes both sides slower, by different amounts."""

    def __init__(self, own_cpu_seconds):
        self.own_cpu_seconds = own_cpu_seconds
        self.other_share: float | None = None

    @staticmethod
    def _busy_seconds() -> float | None:
        try:
            fields = [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:8]]
        except (OSError, ValueError):
            return None
        user, nice, system, _idle, _iowait, irq, softirq = fields
        return (user + nice + system + irq + softirq) / os.sysconf("SC_CLK_TCK")

    def __enter__(self) -> "Interference":
        self.started = time.perf_counter()
        self.busy = self._busy_seconds()
        self.own = self.own_cpu_seconds()
        return self

    def __exit__(self, *exc) -> None:
        wall = time.perf_counter() - self.started
        busy = self._busy_seconds()
        if busy is None or self.busy is None or wall <= 0:
            return
        other = max(0.0, (busy - self.busy) - (self.own_cpu_seconds() - self.own))
        self.other_share = min(1.0, other / (wall * (os.cpu_count() or 1)))


def rusage_seconds(who: int) -> float:
    usage = resource.getrusage(who)
    return usage.ru_utime + usage.ru_stime


def process_cpu_seconds(pid: int) -> float:
    """User + system CPU of a live process (all its threads)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def java_version() -> str:
    """The `java` Spark will use, checked; returns its version string."""
    java_home = os.environ.get("JAVA_HOME")
    java = str(Path(java_home) / "bin" / "java") if java_home else shutil.which("java")
    if not java or not os.access(java, os.X_OK):
        where = f"JAVA_HOME={java_home}" if java_home else "PATH"
        raise BenchError(
            f"Java not found (looked in {where}): Spark needs Java {'/'.join(map(str, SUPPORTED_JAVA))}, "
            "e.g. `apt-get install openjdk-17-jre-headless`"
        )
    try:
        out = subprocess.run([java, "-version"], capture_output=True, text=True, timeout=60)
    except (OSError, subprocess.TimeoutExpired) as e:
        raise BenchError(f"cannot run {java} -version: {e}") from e
    match = re.search(r'version "([^"]+)"', out.stderr + out.stdout)
    if out.returncode != 0 or not match:
        raise BenchError(f"{java} -version failed: {(out.stderr or out.stdout).strip()}")
    version = match.group(1)
    parts = version.split(".")
    major = int(parts[1] if parts[0] == "1" and len(parts) > 1 else re.match(r"\d+", parts[0]).group())
    if major not in SUPPORTED_JAVA:
        print(f"warning: Java {version}: Spark {PYSPARK_VERSION} supports Java "
              f"{'/'.join(map(str, SUPPORTED_JAVA))}", file=sys.stderr)
    return version


def venv_python(venv: Path) -> Path:
    return venv / ("Scripts/python.exe" if os.name == "nt" else "bin/python")


def installed_pyspark(python: Path) -> str | None:
    out = subprocess.run([str(python), "-c", "import pyspark; print(pyspark.__version__)"],
                         capture_output=True, text=True)
    return out.stdout.strip() if out.returncode == 0 else None


def ensure_pyspark(python: Path) -> None:
    if installed_pyspark(python) == PYSPARK_VERSION:
        return
    print(f"installing pyspark=={PYSPARK_VERSION} into {python.parent.parent} (once)...", file=sys.stderr)
    out = subprocess.run([str(python), "-m", "pip", "install", "--disable-pip-version-check",
                          f"pyspark=={PYSPARK_VERSION}"], capture_output=True, text=True)
    if out.returncode != 0 or installed_pyspark(python) != PYSPARK_VERSION:
        tail = "\n".join((out.stderr or out.stdout).strip().splitlines()[-15:])
        raise BenchError(f"pip could not install pyspark=={PYSPARK_VERSION} into {python.parent.parent}:\n{tail}")


def enter_venv(venv: Path, argv: list[str]) -> None:
    """Returns when running inside `venv` with PySpark; otherwise creates the
    venv if needed, installs PySpark, and re-executes this script in it."""
    venv = venv.resolve()
    if Path(sys.prefix).resolve() == venv:
        ensure_pyspark(Path(sys.executable))
        return
    if os.environ.get(REEXEC_MARKER):
        raise BenchError(f"re-executed with {sys.executable}, which is not the venv {venv}")
    python = venv_python(venv)
    if not python.exists():
        print(f"creating the venv {venv}...", file=sys.stderr)
        out = subprocess.run([sys.executable, "-m", "venv", str(venv)], capture_output=True, text=True)
        if out.returncode != 0:
            raise BenchError(f"cannot create the venv {venv}: {(out.stderr or out.stdout).strip()}")
    ensure_pyspark(python)
    sys.stdout.flush()
    sys.stderr.flush()
    env = dict(os.environ, **{REEXEC_MARKER: "1"})
    os.execve(str(python), [str(python), str(Path(__file__).resolve()), *argv], env)


# --------------------------------------------------------------------------
# The engine


def engine_binary(explicit: Path | None) -> Path:
    if explicit is not None:
        if not (explicit.is_file() and os.access(explicit, os.X_OK)):
            raise BenchError(f"--engine-bin {explicit} is not an executable file")
        return explicit.resolve()
    cargo = shutil.which("cargo")
    if cargo is None:
        raise BenchError("cargo not found: install Rust, or pass --engine-bin")
    print("building the engine: cargo build --release -p engine ...", file=sys.stderr)
    if subprocess.run([cargo, "build", "--release", "-p", "engine"], cwd=REPO_ROOT).returncode != 0:
        raise BenchError("cargo build --release -p engine failed")
    meta = subprocess.run([cargo, "metadata", "--format-version", "1", "--no-deps"],
                          cwd=REPO_ROOT, capture_output=True, text=True)
    if meta.returncode != 0:
        raise BenchError(f"cargo metadata failed: {meta.stderr.strip()}")
    binary = Path(json.loads(meta.stdout)["target_directory"]) / "release" / "engine"
    if not binary.is_file():
        raise BenchError(f"the build left no engine binary at {binary}")
    return binary


def run_engine(binary: Path, args: argparse.Namespace) -> dict:
    cmd = [str(binary), "run", "terasort", "--size", str(args.size), "--partitions", str(args.partitions),
           "--maps", str(args.maps), "--seed", str(args.seed), "--json", "--quiet"]
    with Interference(lambda: rusage_seconds(resource.RUSAGE_CHILDREN)) as meter:
        out = subprocess.run(cmd, capture_output=True, text=True)
    lines = [line for line in out.stdout.splitlines() if line.strip()]
    try:
        report = json.loads(lines[-1])
    except (IndexError, json.JSONDecodeError):
        raise BenchError(f"`{' '.join(cmd)}` exited {out.returncode} without a JSON report:\n"
                         f"{out.stderr.strip()}") from None
    records = args.size // RECORD_LEN
    if out.returncode == 2 or report.get("valid") is not True or report.get("records_out") != records:
        raise NotValid(f"the engine's output did not validate (valid={report.get('valid')}, "
                       f"records_out={report.get('records_out')}, expected {records})")
    if out.returncode != 0:
        raise BenchError(f"`{' '.join(cmd)}` exited {out.returncode}: {out.stderr.strip()}")
    report["other_cpu_share"] = meter.other_share
    return report


# --------------------------------------------------------------------------
# Spark


def s64(value: int) -> int:
    """An unsigned 64-bit constant as the signed long Spark SQL holds."""
    value &= MASK64
    return value - (1 << 64) if value >= 1 << 63 else value


def splitmix64(z: int) -> int:
    z = (z + 0x9E3779B97F4A7C15) & MASK64
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & MASK64
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & MASK64
    return z ^ (z >> 31)


def reference_row(seed: int, row: int) -> bytes:
    """The engine's `generate_row`, in Python, to check Spark's generator."""
    a = splitmix64(seed ^ ((row * 0x2545F4914F6CDD1D) & MASK64))
    b = splitmix64(a)
    key = a.to_bytes(8, "big") + b.to_bytes(8, "big")[:KEY_LEN - 8]
    shift = row % 26
    return key + f"{row:016X}".encode() + FILLER[shift:shift + RECORD_LEN - 26].encode()


def records_of(ids, seed: int):
    """TeraGen in Spark SQL: from a DataFrame of row ids (`id`, bigint),
    the engine's records as (`key` binary(10), `value` binary(90)).

    Long arithmetic wraps (ANSI mode off), `shiftrightunsigned` is `>>>`, and
    a cast of a long (short) to binary gives its 8 (2) big-endian bytes. Each
    step is its own projection so that `z`, used twice per step, is computed
    once (Spark does not collapse projections that would duplicate work)."""
    from pyspark.sql import functions as F

    def mix(df, src: str, dst: str):
        z = F.col("z")
        df = df.withColumn("z", F.col(src) + F.lit(s64(0x9E3779B97F4A7C15)))
        df = df.withColumn("z", z.bitwiseXOR(F.shiftrightunsigned(z, 30)) * F.lit(s64(0xBF58476D1CE4E5B9)))
        df = df.withColumn("z", z.bitwiseXOR(F.shiftrightunsigned(z, 27)) * F.lit(s64(0x94D049BB133111EB)))
        return df.withColumn(dst, z.bitwiseXOR(F.shiftrightunsigned(z, 31))).drop("z")

    df = ids.withColumn("s", (F.col("id") * F.lit(s64(0x2545F4914F6CDD1D))).bitwiseXOR(F.lit(s64(seed))))
    df = mix(df, "s", "a")
    df = mix(df, "a", "b")
    key = F.concat(F.col("a").cast("binary"),
                   F.shiftrightunsigned(F.col("b"), 48).cast("smallint").cast("binary"))
    # On binary, substring counts bytes: ten times faster than on a string,
    # where it counts UTF-8 characters.
    filler = f"X'{FILLER.encode().hex()}'"
    value = F.concat(F.lpad(F.hex(F.col("id")), 16, "0").cast("binary"),
                     F.expr(f"substring({filler}, CAST(id % 26 AS INT) + 1, {RECORD_LEN - 26})"))
    return df.select(key.alias("key"), value.alias("value"))


def start_spark(args: argparse.Namespace, master: str | None = None, extra: dict | None = None):
    from pyspark.sql import SparkSession

    # Local mode needs no network; this also silences the loopback warning.
    os.environ.setdefault("SPARK_LOCAL_IP", "127.0.0.1")
    started = time.perf_counter()
    builder = (
        SparkSession.builder.master(master or f"local[{cpu_count()}]")
        .appName("terasort-peer")
        .config("spark.driver.memory", args.driver_memory)
        .config("spark.sql.shuffle.partitions", str(args.partitions))
        .config("spark.ui.enabled", "false")
        .config("spark.ui.showConsoleProgress", "false")
        .config("spark.sql.ansi.enabled", "false")
    )
    for key, value in (extra or {}).items():
        builder = builder.config(key, value)
    spark = builder.getOrCreate()
    spark.sparkContext.setLogLevel("WARN")
    return spark, time.perf_counter() - started


def check_generator(spark, seed: int, records: int) -> None:
    from pyspark.sql import functions as F

    rows = sorted({0, 1, 25, 26, 42, records // 2, records - 1})
    # Built in the JVM, so that no Python worker is ever started.
    ids = spark.range(1).select(F.explode(F.array(*[F.lit(r).cast("bigint") for r in rows])).alias("id"))
    got = [bytes(r.key) + bytes(r.value) for r in records_of(ids, seed).collect()]
    want = [reference_row(seed, r) for r in rows]
    if got != want:
        raise BenchError(f"Spark's generator differs from the engine's: rows {rows}:\n{got}\n!=\n{want}")


def generated(spark, args: argparse.Namespace):
    ids = spark.range(0, args.size // RECORD_LEN, 1, numPartitions=args.maps)
    return records_of(ids, args.seed)


def record_crc(F):
    return F.crc32(F.concat(F.col("key"), F.col("value")))


def spark_generate_only(spark, args: argparse.Namespace) -> tuple[int, int, float]:
    """Generates every record and sums their CRC32 without shuffling: the
    baseline (outside the wall time), like the engine's generate_seconds."""
    from pyspark.sql import functions as F

    started = time.perf_counter()
    row = generated(spark, args).agg(F.count(F.lit(1)).alias("n"), F.sum(record_crc(F)).alias("crc")).first()
    return row.n, row.crc or 0, time.perf_counter() - started


def spark_terasort(spark, args: argparse.Namespace, baseline: tuple[int, int]) -> dict:
    """One timed TeraSort + TeraValidate in Spark."""
    from pyspark.sql import functions as F

    started = time.perf_counter()
    data = generated(spark, args)
    ordered = data.repartitionByRange(args.partitions, "key").sortWithinPartitions("key")
    # TeraValidate, one pass over every record of every sorted partition.
    # collect_list keeps the partition's order: each group is one partition,
    # so each list is built by one task reading that partition in order.
    ks = F.col("ks")
    in_order = F.when(F.size(ks) < 2, F.lit(True)).otherwise(
        F.forall(F.sequence(F.lit(2), F.size(ks)), lambda i: F.element_at(ks, i - 1) <= F.element_at(ks, i)))
    check = (
        ordered.select(F.spark_partition_id().alias("p"), "key", record_crc(F).alias("crc"))
        .groupBy("p")
        .agg(F.count(F.lit(1)).alias("n"), F.sum("crc").alias("crc"), F.collect_list("key").alias("ks"))
        .select("p", "n", "crc", F.element_at(ks, 1).alias("first"), F.element_at(ks, -1).alias("last"),
                in_order.alias("sorted"))
    )
    plan = check._jdf.queryExecution().executedPlan().toString().lower()
    if "rangepartitioning(key" not in plan or "sort [key" not in plan:
        raise BenchError(f"Spark's plan lacks the range partitioning or the sort:\n{plan}")
    parts = sorted(check.collect(), key=lambda r: r.p)
    wall = time.perf_counter() - started

    records = args.size // RECORD_LEN
    records_out = sum(r.n for r in parts)
    checksum = sum(r.crc for r in parts)
    all_sorted = all(r.sorted for r in parts)
    in_range = all(0 <= r.p < args.partitions for r in parts)
    partitions_in_order = all(bytes(a.last) <= bytes(b.first) for a, b in zip(parts, parts[1:]))
    valid = (all_sorted and partitions_in_order and in_range and records_out == records
             and baseline == (records, checksum))
    return {
        "wall_seconds": wall,
        "valid": valid,
        "records_out": records_out,
        "checksum": checksum,
        "partitions_sorted": all_sorted,
        "partitions_in_order": partitions_in_order and in_range,
        "non_empty_partitions": len(parts),
        "largest_partition_records": max((r.n for r in parts), default=0),
    }


def run_spark(args: argparse.Namespace, master: str | None = None, extra: dict | None = None) -> dict:
    import pyspark

    spark, startup = start_spark(args, master, extra)
    try:
        records = args.size // RECORD_LEN
        check_generator(spark, args.seed, records)
        n, crc, generate_seconds = spark_generate_only(spark, args)
        if n != records:
            raise NotValid(f"Spark generated {n} records, expected {records}")
        jvm_pid = int(spark._jvm.java.lang.ProcessHandle.current().pid())

        def own_cpu() -> float:
            return rusage_seconds(resource.RUSAGE_SELF) + process_cpu_seconds(jvm_pid)

        runs = []
        for i in range(args.repeat):
            with Interference(own_cpu) as meter:
                run = spark_terasort(spark, args, (n, crc))
            # In local-cluster mode the executors are other processes: the
            # meter cannot tell them from the rest of the machine.
            cluster = (master or "").startswith("local-cluster")
            run["other_cpu_share"] = None if cluster else meter.other_share
            print(f"  spark run {i + 1}/{args.repeat}: wall {run['wall_seconds']:.2f}s, "
                  f"{'valid' if run['valid'] else 'NOT VALID'}{others(run['other_cpu_share'])}", file=sys.stderr)
            if not run["valid"]:
                raise NotValid(f"Spark's output did not validate: {run}")
            runs.append(run)
        return {
            "version": pyspark.__version__,
            "master": spark.sparkContext.master,
            "driver_memory": args.driver_memory,
            "api": "DataFrame",
            "sort": "repartitionByRange(partitions, key).sortWithinPartitions(key)",
            "startup_seconds": startup,
            "generate_seconds": generate_seconds,
            "wall_seconds": statistics.median(r["wall_seconds"] for r in runs),
            "valid": True,
            "runs": runs,
        }
    except BenchError:
        raise
    except Exception as e:  # Py4J / Spark errors, with the JVM's message
        message = "\n".join(str(e).strip().splitlines()[:20])
        raise BenchError(f"Spark failed: {type(e).__name__}: {message}") from e
    finally:
        spark.stop()


# --------------------------------------------------------------------------


def human_bytes(n: int) -> str:
    value, unit = float(n), "B"
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if value < 1024 or unit == "TiB":
            break
        value /= 1024
    return f"{n} B" if unit == "B" else f"{value:.2f} {unit}"


def others(share: float | None) -> str:
    return "" if share is None else f"; other processes used {share:.0%} of the CPUs meanwhile"


class ShuffleServer:
    """A release `shuffle-server` on ephemeral loopback ports, for --shuffle rss."""

    def __init__(self, data_dir: Path):
        subprocess.run(["cargo", "build", "--quiet", "--release", "-p", "shuffle-server"],
                       cwd=REPO_ROOT, check=True)
        target = Path(os.environ.get("CARGO_TARGET_DIR", REPO_ROOT / "target"))
        binary = target / "release" / "shuffle-server"
        self.proc = subprocess.Popen(
            [str(binary), "--data-dir", str(data_dir), "--create-data-dirs", "--listen", "127.0.0.1:0",
             "--quic-listen", "127.0.0.1:0", "--grpc-listen", "127.0.0.1:0", "--http-listen", "127.0.0.1:0",
             "--memory-budget", "512MiB"],
            stderr=subprocess.PIPE, text=True, env={**os.environ, "RUST_LOG": "info"})
        self.tcp = None
        for line in self.proc.stderr:
            m = re.search(r"shuffle server listening tcp=(\S+)", line)
            if m:
                self.tcp = m.group(1)
                break
        if self.tcp is None:
            raise BenchError("shuffle-server did not start")
        import threading
        threading.Thread(target=self.proc.stderr.read, daemon=True).start()

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.proc.kill()


def main_rss(args: argparse.Namespace, java: str) -> int:
    """Spark with the plugin against Spark's built-in shuffle, same run."""
    import tempfile

    out = subprocess.run(["bash", str(REPO_ROOT / "spark" / "build.sh"), "--venv", str(args.venv)],
                         check=True, stdout=subprocess.PIPE, text=True).stdout
    jar = out.strip().splitlines()[-1]
    host = machine()
    master = f"local-cluster[2,1,{int(parse_size(args.executor_memory) / (1 << 20)) + 512}]"
    common = {"spark.executor.memory": args.executor_memory,
              "spark.driver.extraClassPath": jar, "spark.executor.extraClassPath": jar}
    records = args.size // RECORD_LEN
    print(f"terasort {human_bytes(args.size)} ({records} records), {args.partitions} partitions, "
          f"{args.maps} maps, {master}, {args.repeat} run(s) per side", file=sys.stderr)
    with tempfile.TemporaryDirectory(prefix="terasort-rss-") as tmp:
        os.environ["SPARK_LOCAL_DIRS"] = str(Path(tmp) / "spark-local")
        # Runs first: the first session's settings become the gateway JVM's
        # system properties, inherited by later sessions.
        builtin = run_spark(args, master, {**common, "spark.shuffle.manager": "sort"})
        server = ShuffleServer(Path(tmp) / "server")
        try:
            rss = run_spark(args, master, {
                **common,
                "spark.shuffle.manager": "rss.spark.RssShuffleManager",
                "spark.shuffle.sort.io.plugin.class": "rss.spark.RssShuffleDataIO",
                "spark.rss.servers": f"tcp://{server.tcp}",
            })
        finally:
            server.stop()
    ratio = rss["wall_seconds"] / builtin["wall_seconds"]
    print(f"machine: {host['cpu_model']}, {host['cpus']} CPUs ({host['os']})")
    print(f"terasort: {human_bytes(args.size)}, {args.partitions} partitions, {args.maps} maps, {master}; "
          f"median of {args.repeat} run(s)")
    print(f"spark built-in shuffle: wall {builtin['wall_seconds']:.2f}s (valid)")
    print(f"spark with the rss plugin: wall {rss['wall_seconds']:.2f}s (valid)")
    print(f"ratio rss_wall / builtin_wall: {ratio:.2f}")
    if args.json:
        print(json.dumps({"benchmark": "terasort-spark-rss", "size_bytes": args.size,
                          "partitions": args.partitions, "maps": args.maps, "master": master,
                          "java": java, "machine": host, "builtin": builtin, "rss": rss,
                          "ratio": ratio}), flush=True)
    return 0


def main(argv: list[str]) -> int:
    args = parse_args(argv)
    java = java_version()
    enter_venv(args.venv, argv)
    if args.shuffle == "rss":
        return main_rss(args, java)
    binary = engine_binary(args.engine_bin)
    host = machine()
    records = args.size // RECORD_LEN
    print(f"terasort {human_bytes(args.size)} ({records} records), {args.partitions} partitions, "
          f"{args.maps} maps, {args.repeat} run(s) per side", file=sys.stderr)

    engine_runs = []
    for i in range(args.repeat):
        report = run_engine(binary, args)
        print(f"  engine run {i + 1}/{args.repeat}: wall {report['wall_seconds']:.2f}s, valid"
              f"{others(report['other_cpu_share'])}", file=sys.stderr)
        engine_runs.append(report)
    engine = {
        "binary": str(binary),
        "wall_seconds": statistics.median(r["wall_seconds"] for r in engine_runs),
        "generate_seconds": statistics.median(r["extra"]["generate_seconds"] for r in engine_runs),
        "valid": True,
        "parallelism": engine_runs[0].get("parallelism"),
        "runs": engine_runs,
    }
    spark = run_spark(args)
    spark["java"] = java
    ratio = spark["wall_seconds"] / engine["wall_seconds"]

    ram = f"{host['ram_bytes'] / (1 << 30):.1f} GiB RAM" if host["ram_bytes"] else "RAM unknown"
    print(f"machine: {host['cpu_model']}, {host['cpus']} CPUs, {ram} ({host['os']})")
    print(f"terasort: {human_bytes(args.size)} = {records} records of 100 bytes, "
          f"{args.partitions} partitions, {args.maps} maps; median of {args.repeat} run(s)")
    print(f"engine: wall {engine['wall_seconds']:.2f}s (valid; generation alone "
          f"{engine['generate_seconds']:.2f}s, not in the wall time)")
    print(f"spark {spark['version']} {spark['master']}: wall {spark['wall_seconds']:.2f}s (valid; "
          f"start-up {spark['startup_seconds']:.2f}s and generation alone {spark['generate_seconds']:.2f}s, "
          f"neither in the wall time)")
    print(f"ratio spark_wall / engine_wall: {ratio:.2f}")
    shares = [r["other_cpu_share"] for r in engine_runs + spark["runs"] if r["other_cpu_share"] is not None]
    busiest = max(shares, default=None)
    if busiest is not None:
        print(f"other processes used at most {busiest:.0%} of the CPUs during a run"
              + (" (the machine was not idle: the times are not clean)" if busiest > 0.10 else ""))
    if args.json:
        result = {
            "benchmark": "terasort-peer-spark",
            "size_bytes": args.size,
            "records": records,
            "partitions": args.partitions,
            "maps": args.maps,
            "seed": args.seed,
            "repeat": args.repeat,
            "machine": host,
            "engine": engine,
            "spark": spark,
            "ratio": ratio,
            "max_other_cpu_share": busiest,
        }
        print(json.dumps(result), flush=True)
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main(sys.argv[1:]))
    except NotValid as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)
    except BenchError as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(1)
    except KeyboardInterrupt:
        sys.exit(130)
