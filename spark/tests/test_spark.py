#!/usr/bin/env python3
"""Spark shuffles through the service: the plugin on a real local cluster.

    python3 spark/tests/test_spark.py            # builds what it needs

What it does: builds the plugin (`spark/build.sh`, which makes the PySpark
venv if needed) and re-executes itself in that venv; starts two real
`shuffle-server` daemons on ephemeral loopback ports; runs Spark in
`local-cluster[2,1,1024]` mode (two executors, each its own JVM) with
`spark.shuffle.manager=rss.spark.RssShuffleManager`, and the same jobs again
on Spark's built-in sort shuffle (`local[2]`); each result must be equal.

Checked besides the results: the bytes the servers received
(`rss_push_bytes_total`) equal the shuffle-write bytes the plugin reported
to Spark (block headers plus compressed payloads, as pushed), the bytes
they served (`rss_fetch_bytes_total`) equal Spark's remote shuffle-read
bytes, and no Spark shuffle file (`shuffle_*.data` / `.index`) appears in
the executors' local directories (`SPARK_LOCAL_DIRS`).

Environment: `SHUFFLE_SERVER_BIN` (default `target/debug/shuffle-server`,
built, or brought up to date, first), `SPARK_VENV` (default `spark/.venv`), `RSS_SPARK_JAR`
(skip the build). Needs Java 17.
"""

import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
import unittest
import urllib.request

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))
VENV = os.environ.get("SPARK_VENV", os.path.join(ROOT, "spark", ".venv"))
TARGET = os.environ.get("CARGO_TARGET_DIR", os.path.join(ROOT, "target"))


def build_jar():
    if os.environ.get("RSS_SPARK_JAR"):
        return os.environ["RSS_SPARK_JAR"]
    out = subprocess.run(
        ["bash", os.path.join(ROOT, "spark", "build.sh"), "--venv", VENV],
        check=True,
        stdout=subprocess.PIPE,
        text=True,
    ).stdout
    return out.strip().splitlines()[-1]


def in_venv():
    return os.path.realpath(sys.prefix) == os.path.realpath(VENV)


class Server:
    """A shuffle-server daemon on ephemeral loopback ports."""

    def __init__(self, binary, data_dir):
        self.proc = subprocess.Popen(
            [binary, "--data-dir", data_dir, "--listen", "127.0.0.1:0",
             "--quic-listen", "127.0.0.1:0", "--grpc-listen", "127.0.0.1:0",
             "--http-listen", "127.0.0.1:0", "--memory-budget", "256MiB"],
            stderr=subprocess.PIPE, text=True, env={**os.environ, "RUST_LOG": "info"})
        deadline = time.time() + 30
        self.tcp = self.http = None
        while time.time() < deadline:
            line = self.proc.stderr.readline()
            if not line:
                raise RuntimeError("shuffle-server exited before listening")
            m = re.search(r"tcp=(\S+) .*http=(\S+)", line)
            if "shuffle server listening" in line and m:
                self.tcp, self.http = m.group(1), m.group(2)
                break
        if self.tcp is None:
            raise RuntimeError("shuffle-server did not start")
        # Keep draining its log so it never blocks on a full pipe.
        import threading
        threading.Thread(target=self.proc.stderr.read, daemon=True).start()

    def counter(self, name, label=""):
        """The sum of `name`'s series (those whose labels contain `label`)."""
        text = urllib.request.urlopen(f"http://{self.http}/metrics", timeout=10).read().decode()
        total = 0.0
        for line in text.splitlines():
            if (line.startswith(name + "{") or line.startswith(name + " ")) and label in line:
                total += float(line.rsplit(" ", 1)[1])
        return int(total)

    def kill(self):
        """SIGKILL: a lost server, not a drained one."""
        self.proc.kill()
        self.proc.wait(timeout=20)

    def stop(self):
        self.proc.terminate()
        try:
            self.proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            self.proc.kill()


def jobs(spark):
    """Every job of the test: name -> a collected, comparable result."""
    from operator import add
    from pyspark.sql import functions as F

    sc = spark.sparkContext
    out = {}
    nums = sc.parallelize(range(20000), 4)
    out["reduceByKey"] = sorted(nums.map(lambda x: (x % 97, x)).reduceByKey(add, 8).collect())
    out["groupByKey"] = sorted(
        (k, sorted(v)) for k, v in nums.map(lambda x: (x % 13, x)).groupByKey(5).collect())
    out["sortByKey"] = nums.map(lambda x: ((x * 7919) % 10007, x)).sortByKey(numPartitions=6).collect()
    # Many records per partition, a few large ones.
    out["bigValues"] = sorted(
        sc.parallelize(range(200), 4).map(lambda x: (x % 7, "v" * (x * 50))).reduceByKey(
            lambda a, b: a if len(a) >= len(b) else b, 3).mapValues(len).collect())
    df = spark.range(0, 100000, numPartitions=4).selectExpr("id % 101 as k", "id as v")
    out["groupBy"] = sorted(
        tuple(r) for r in df.groupBy("k").agg(F.sum("v").alias("s"), F.count("*").alias("c")).collect())
    # A skewed join with AQE: key 0 holds most rows.
    left = spark.range(0, 60000, numPartitions=4).selectExpr(
        "case when id % 10 < 7 then 0 else id % 50 end as k", "id as a")
    right = spark.range(0, 5000, numPartitions=3).selectExpr("id % 50 as k", "id as b")
    joined = left.join(right, "k").groupBy("k").agg(F.count("*").alias("n"), F.sum("a").alias("sa"))
    out["skewJoin"] = sorted(tuple(r) for r in joined.collect())
    return out


def shuffle_files(root):
    """Spark shuffle files under `root`."""
    return [os.path.join(d, f) for d, _, files in os.walk(root)
            for f in files if re.match(r"shuffle_\d+_\d+_\d+\.(data|index)$", f)]


def fallback_job():
    """`spark.rss.fallback=true` and no server listening: every shuffle uses
    Spark's own sort shuffle (logged), and the job still runs."""
    import socket
    from operator import add

    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        dead = s.getsockname()[1]
    settings = {
        "spark.ui.enabled": "false",
        "spark.shuffle.manager": "rss.spark.RssShuffleManager",
        "spark.rss.servers": f"tcp://127.0.0.1:{dead}",
        "spark.rss.fallback": "true",
        "spark.rss.connectTimeout": "1s",
        "spark.rss.retryWindow": "1s",
        "spark.driver.extraClassPath": os.environ["RSS_SPARK_JAR"],
    }
    spark = session("local[2]", "fallback", settings)
    try:
        return sorted(spark.sparkContext.parallelize(range(1000), 3)
                      .map(lambda x: (x % 7, x)).reduceByKey(add, 4).collect())
    finally:
        spark.stop()


def failing_job(sc):
    """A map task that fails on its first attempt."""
    from pyspark import TaskContext

    def flaky(x):
        ctx = TaskContext.get()
        if ctx.partitionId() == 1 and ctx.attemptNumber() == 0:
            raise RuntimeError("first attempt fails on purpose")
        return (x % 11, 1)

    return sorted(sc.parallelize(range(1000), 3).map(flaky).reduceByKey(lambda a, b: a + b).collect())


def executor_pid():
    """The executor JVM this Python worker runs under."""
    pid = os.getpid()
    while pid > 1:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            if b"CoarseGrainedExecutorBackend" in f.read():
                return pid
        with open(f"/proc/{pid}/stat") as f:
            pid = int(f.read().rsplit(")", 1)[1].split()[1])
    raise RuntimeError("no executor JVM above this Python worker")


def executor_lost_after_commit_job(server, tmp):
    """Map 0 commits; its executor is then killed (SIGKILL) while map 1
    still runs. Without reliable storage Spark runs map 0 again in the same
    stage attempt; that attempt's commit conflicts with the committed one,
    and the writer succeeds with the committed attempt's sizes."""
    import threading
    from operator import add

    marker = os.path.join(tmp, "map0-executor")
    go = os.path.join(tmp, "map1-go")

    def produce(index, _):
        from pyspark import TaskContext
        if index == 1:
            deadline = time.time() + 120
            while not os.path.exists(go) and time.time() < deadline:
                time.sleep(0.1)
        elif TaskContext.get().attemptNumber() == 0:
            with open(marker + ".tmp", "w") as f:
                f.write(str(executor_pid()))
            os.rename(marker + ".tmp", marker)
        return ((x % 13, x) for x in range(index * 5000, (index + 1) * 5000))

    settings = {
        **COMMON,
        "spark.shuffle.manager": "rss.spark.RssShuffleManager",
        # Spark's default: map outputs of a lost executor count as lost.
        "spark.shuffle.sort.io.plugin.class": "org.apache.spark.shuffle.sort.io.LocalDiskShuffleDataIO",
        "spark.rss.servers": f"tcp://{server.tcp}",
        "spark.driver.extraClassPath": os.environ["RSS_SPARK_JAR"],
        "spark.executor.extraClassPath": os.environ["RSS_SPARK_JAR"],
        "spark.executor.memory": "768m",
    }
    spark = session("local-cluster[2,1,1024]", "executor-lost", settings)
    try:
        sc = spark.sparkContext
        conflicts_before = server.counter("rss_rejected_requests_total", 'reason="commit_conflict"')
        result = {}
        job = threading.Thread(target=lambda: result.update(out=sorted(
            sc.parallelize(range(2), 2).mapPartitionsWithIndex(produce).reduceByKey(add, 4).collect())))
        job.start()
        deadline = time.time() + 120
        # Map 0 has committed once Spark counts it complete.
        def map0_done():
            tracker = sc.statusTracker()
            infos = [tracker.getStageInfo(i) for i in tracker.getActiveStageIds()]
            return any(i is not None and i.numCompletedTasks >= 1 for i in infos)

        while time.time() < deadline and not (os.path.exists(marker) and map0_done()):
            time.sleep(0.1)
        with open(marker) as f:
            os.kill(int(f.read()), 9)
        time.sleep(3)  # the driver notices the lost executor and queues map 0 again
        open(go, "w").close()
        job.join(timeout=180)
        result["conflicts"] = server.counter(
            "rss_rejected_requests_total", 'reason="commit_conflict"') - conflicts_before
        return result
    finally:
        open(go, "w").close()
        spark.stop()


def lost_server_job(spark, victim, survivor):
    """One server of two is killed between a shuffle's stages: the next
    read of that shuffle fails, Spark runs the map stage again, and its
    new attempt writes a fresh service shuffle on the server left."""
    from operator import add

    sc = spark.sparkContext
    pairs = sc.parallelize(range(20000), 4).map(lambda x: (x % 101, x)).reduceByKey(add, 8)
    first = sorted(pairs.collect())
    pushed_before = survivor.counter("rss_push_bytes_total")
    victim.kill()
    second = sorted(pairs.collect())
    pushed_after = survivor.counter("rss_push_bytes_total")
    return {
        "first": first,
        "second": second,
        "repushed": pushed_after - pushed_before,
        "stage_attempts": stage_attempts(sc.uiWebUrl),
    }


def stage_attempts(ui):
    """(stage id, attempt, status) of every stage attempt of the app."""
    app = json.load(urllib.request.urlopen(f"{ui}/api/v1/applications", timeout=10))[0]["id"]
    stages = json.load(urllib.request.urlopen(f"{ui}/api/v1/applications/{app}/stages", timeout=10))
    return sorted((s["stageId"], s["attemptId"], s["status"]) for s in stages)


def session(master, name, settings):
    """A new SparkSession with `settings`."""
    from pyspark.sql import SparkSession

    return conf(SparkSession.builder.master(master).appName(name), settings).getOrCreate()


def conf(builder, settings):
    for k, v in settings.items():
        builder = builder.config(k, v)
    return builder


COMMON = {
    "spark.ui.port": "0",
    "spark.sql.adaptive.enabled": "true",
    "spark.sql.adaptive.coalescePartitions.enabled": "true",
    "spark.sql.adaptive.advisoryPartitionSizeInBytes": "2k",
    "spark.sql.adaptive.skewJoin.enabled": "true",
    "spark.sql.adaptive.skewJoin.skewedPartitionThresholdInBytes": "4k",
    "spark.sql.adaptive.skewJoin.skewedPartitionFactor": "2",
    "spark.sql.autoBroadcastJoinThreshold": "-1",
    "spark.sql.shuffle.partitions": "16",
    "spark.task.maxFailures": "4",
}


def stage_totals(ui):
    app = json.load(urllib.request.urlopen(f"{ui}/api/v1/applications", timeout=10))[0]["id"]
    stages = json.load(urllib.request.urlopen(f"{ui}/api/v1/applications/{app}/stages", timeout=10))
    if os.environ.get("RSS_TEST_DEBUG"):
        for s in stages:
            print({k: v for k, v in s.items() if k.startswith("shuffle")}, file=sys.stderr)
    write = sum(s.get("shuffleWriteBytes", 0) for s in stages)
    remote = sum(s.get("shuffleRemoteBytesRead", 0) for s in stages)
    local = sum(s.get("shuffleLocalBytesRead", 0) for s in stages)
    return write, remote, local


class SparkThroughTheService(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        try:
            cls.start()
        except BaseException:
            cls.tearDownClass()  # not called when setUpClass fails
            raise

    @classmethod
    def start(cls):
        cls.tmp = tempfile.mkdtemp(prefix="rss-spark-test-")
        binary = os.environ.get("SHUFFLE_SERVER_BIN", os.path.join(TARGET, "debug", "shuffle-server"))
        cls.servers = []
        for i in range(2):
            data = os.path.join(cls.tmp, f"server{i}")
            os.makedirs(data)
            cls.servers.append(Server(binary, data))
        cls.local_dirs = os.path.join(cls.tmp, "spark-local")
        os.makedirs(cls.local_dirs)
        os.environ["SPARK_LOCAL_DIRS"] = cls.local_dirs
        os.environ["PYSPARK_PYTHON"] = sys.executable
        jar = os.environ["RSS_SPARK_JAR"]
        urls = ",".join(f"tcp://{s.tcp}" for s in cls.servers)
        rss = {
            **COMMON,
            "spark.shuffle.manager": "rss.spark.RssShuffleManager",
            "spark.shuffle.sort.io.plugin.class": "rss.spark.RssShuffleDataIO",
            "spark.rss.servers": urls,
            "spark.driver.extraClassPath": jar,
            "spark.executor.extraClassPath": jar,
            "spark.executor.memory": "768m",
            # The lost-server job: give up on a dead server quickly.
            "spark.rss.connectTimeout": "2s",
            "spark.rss.retryWindow": "3s",
        }
        spark = session("local-cluster[2,1,1024]", "rss-test", rss)
        try:
            cls.results = jobs(spark)
            time.sleep(1)  # the listener bus delivers stage metrics asynchronously
            cls.spark_bytes = stage_totals(spark.sparkContext.uiWebUrl)
            cls.server_bytes = (
                sum(s.counter("rss_push_bytes_total") for s in cls.servers),
                sum(s.counter("rss_fetch_bytes_total") for s in cls.servers),
            )
            cls.flaky = failing_job(spark.sparkContext)
            # While the executors live: Spark deletes its local dirs at stop.
            cls.shuffle_files = shuffle_files(cls.local_dirs)
            # Last in this session: it kills a server.
            cls.lost = lost_server_job(spark, cls.servers[1], cls.servers[0])
        finally:
            spark.stop()
        cls.executor_lost = executor_lost_after_commit_job(cls.servers[0], cls.tmp)
        # The first session's settings became the gateway JVM's system
        # properties (PySpark passes them to spark-submit), so later
        # sessions inherit them: name Spark's own shuffle explicitly.
        builtin = session("local[2]", "builtin", {
            **COMMON,
            "spark.shuffle.manager": "sort",
            "spark.shuffle.sort.io.plugin.class": "org.apache.spark.shuffle.sort.io.LocalDiskShuffleDataIO",
        })
        manager = builtin.sparkContext.getConf().get("spark.shuffle.manager", "sort")
        assert "Rss" not in manager, f"the built-in side runs {manager}"
        try:
            cls.expected = jobs(builtin)
            cls.expected_flaky = sorted(
                builtin.sparkContext.parallelize(range(1000), 3).map(lambda x: (x % 11, 1))
                .reduceByKey(lambda a, b: a + b).collect())
            # The same scan finds the built-in shuffle's files (it can fail).
            cls.builtin_shuffle_files = shuffle_files(cls.local_dirs)
        finally:
            builtin.stop()
        # Last: it writes Spark's own shuffle files.
        cls.fallback = fallback_job()

    @classmethod
    def tearDownClass(cls):
        for s in getattr(cls, "servers", []):
            s.stop()
        shutil.rmtree(cls.tmp, ignore_errors=True)

    def test_every_job_equals_the_builtin_shuffle(self):
        for name, expected in self.expected.items():
            with self.subTest(job=name):
                self.assertEqual(self.results[name], expected)

    def test_a_task_failing_its_first_attempt_still_gives_the_right_result(self):
        self.assertEqual(self.flaky, self.expected_flaky)

    def test_servers_received_what_spark_counted(self):
        write, remote, local = self.spark_bytes
        pushed, fetched = self.server_bytes
        self.assertGreater(pushed, 0)
        self.assertEqual(pushed, write)
        self.assertEqual(fetched, remote)
        self.assertEqual(local, 0)

    def test_a_server_lost_between_stages_makes_spark_rerun_the_map_stage_on_the_one_left(self):
        expected = {}
        for x in range(20000):
            expected[x % 101] = expected.get(x % 101, 0) + x
        lost = self.lost
        self.assertEqual(lost["first"], sorted(expected.items()))
        self.assertEqual(lost["second"], sorted(expected.items()))
        # The map stage ran again (a second attempt, complete) and its
        # output went to the server left.
        reruns = [a for a in lost["stage_attempts"] if a[1] >= 1 and a[2] == "COMPLETE"]
        self.assertTrue(reruns, lost["stage_attempts"])
        self.assertGreater(lost["repushed"], 0)

    def test_a_map_run_again_after_its_executor_died_past_the_commit_succeeds(self):
        expected = {}
        for x in range(10000):
            expected[x % 13] = expected.get(x % 13, 0) + x
        self.assertEqual(self.executor_lost.get("out"), sorted(expected.items()))
        # The second attempt's commit lost to the first (and did not fail the job).
        self.assertGreaterEqual(self.executor_lost["conflicts"], 1)

    def test_with_fallback_and_no_server_a_job_uses_the_sort_shuffle(self):
        expected = {}
        for x in range(1000):
            expected[x % 7] = expected.get(x % 7, 0) + x
        self.assertEqual(self.fallback, sorted(expected.items()))

    def test_no_spark_shuffle_file_in_the_executors_local_dirs(self):
        self.assertEqual(self.shuffle_files, [])
        self.assertNotEqual(self.builtin_shuffle_files, [])


def main():
    if not in_venv():
        jar = build_jar()
        if not os.environ.get("SHUFFLE_SERVER_BIN"):
            # Always: a stale binary would test an older server.
            subprocess.run(["cargo", "build", "-p", "shuffle-server"], cwd=ROOT, check=True)
        env = {**os.environ, "RSS_SPARK_JAR": jar}
        os.execve(os.path.join(VENV, "bin", "python"),
                  [os.path.join(VENV, "bin", "python"), os.path.abspath(__file__)] + sys.argv[1:], env)
    unittest.main(verbosity=2)


if __name__ == "__main__":
    main()
