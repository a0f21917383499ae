"""How old is the replica: heartbeat, published freshness, etcd-mirror-freshness,
/healthz turning 503 when stale.  Real etcd, plus the timers on a fake clock."""

import json
import re
import subprocess
import sys
import time

from twisted.internet import defer
from twisted.internet.task import Clock

from etcdmirror.events import WatchProgress
from etcdmirror.freshness import FreshAsOf, FreshnessTracker, Heartbeat
from tests.helpers import run_command, wait_for

PREFIX = "/conftool"
IMAGE = "/replica/conftool"
FRESH_KEY = "/__replication/replica.fresh-as-of"


def freshness(*args):
    return run_command("freshness_main", *args)


def test_heartbeat_replicates_and_gives_the_age(src, dst, mirror):
    src.set(PREFIX + "/a", "1")
    m = mirror(src.url, dst.url, "--reload", "--src-prefix", PREFIX,
               "--heartbeat-key", PREFIX + "/heartbeat", "--heartbeat-interval", "0.2")
    wait_for(lambda: dst.get(IMAGE + "/heartbeat")[0] == 200)
    value = float(dst.get(IMAGE + "/heartbeat")[1]["node"]["value"])
    assert abs(time.time() - value) < 30
    wait_for(lambda: 0 <= m.metric("etcdmirror_heartbeat_age_seconds") < 30)
    assert m.metric("etcdmirror_lag_seconds") >= 0   # the old name, until 1.0
    result = freshness("--max-age", "30", "--heartbeat-key", PREFIX + "/heartbeat",
                       "--src-prefix", PREFIX, dst.url)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "heartbeat /replica/conftool/heartbeat" in result.stdout


def test_published_freshness_and_a_cut_off_source(src, dst, mirror, etcd_src):
    src.set(PREFIX + "/a", "1")
    m = mirror(src.url, dst.url, "--reload", "--src-prefix", PREFIX,
               "--heartbeat-interval", "0.2", "--max-replica-age", "2")
    wait_for(lambda: dst.get(FRESH_KEY)[0] == 200)
    doc = json.loads(dst.get(FRESH_KEY)[1]["node"]["value"])
    assert doc["index"] >= 1 and abs(time.time() - doc["time"]) < 30
    ok = freshness("--warning", "20", "--critical", "30", dst.url)
    assert ok.returncode == 0, ok.stdout + ok.stderr
    line, = ok.stdout.splitlines()
    assert re.match(r"OK: replica age \d+\.\d s \(identical to the source up to index \d+, "
                    r"as of .*\) \| age=\d+\.\ds;20;30;0$", line), line
    assert freshness("--max-age", "30", dst.url).returncode == 0   # the old name
    wait_for(lambda: m.status()["replica_age_seconds"] is not None)
    assert m.healthy()
    # The source is cut off: the replica only gets older.
    etcd_src.stop()
    try:
        wait_for(lambda: freshness("-w", "1", "-c", "60", dst.url).returncode == 1,
                 timeout=20, message="WARNING for a replica older than 1 s")
        wait_for(lambda: freshness("--warning", "1", "--critical", "2",
                                   dst.url).returncode == 2, timeout=20,
                 message="CRITICAL for a replica older than 2 s")
        assert freshness("-c", "2", dst.url).stdout.startswith("CRITICAL: replica age")
        wait_for(lambda: not m.healthy(), timeout=20, message="/healthz 503")
        assert m.status()["replica_age_seconds"] > 2
    finally:
        etcd_src.restart()
    wait_for(m.healthy, timeout=30, message="fresh again once the source is back")


def test_unknown_freshness_exits_3(dst):
    result = freshness("--critical", "100", dst.url)
    assert result.returncode == 3 and result.stdout.startswith("UNKNOWN: no usable value")
    down = freshness("--critical", "100", "http://127.0.0.1:1")
    assert down.returncode == 3 and down.stdout.startswith("UNKNOWN: "), down.stdout


def test_heartbeat_key_must_be_replicated():
    for args in (["--src-prefix", "/a", "--heartbeat-key", "/b/hb"],
                 ["--src-prefix", "/a", "--heartbeat-key", "/a/hb",
                  "--src-ignore-keys-regex", "/a/h.*"]):
        result = subprocess.run([sys.executable, "-m", "etcdmirror", *args, "http://h:1",
                                 "http://h:2"], capture_output=True, text=True, timeout=30)
        assert result.returncode == 2 and "--heartbeat-key" in result.stderr


class FakeSource:
    def __init__(self):
        self.puts, self.index = [], 10

    def put(self, key, value=None, **kw):
        self.puts.append((key, value))
        return defer.succeed(None)

    def position(self):
        return defer.succeed(WatchProgress(self.index, None))


class FakeStore:
    key = "/__replication/r"
    fresh_as_of_key = key + ".fresh-as-of"

    def __init__(self):
        self.puts = []

    def write_fresh_as_of(self, value):
        self.puts.append((self.fresh_as_of_key, value))
        return defer.succeed(None)


def test_heartbeat_beats_every_interval():
    clock, source = Clock(), FakeSource()
    hb = Heartbeat(source, "/a/hb", clock, 5.0, wall=lambda: 1000.0 + clock.seconds())
    hb.start()
    assert source.puts == [("/a/hb", "1000.000")]
    clock.advance(5)
    assert source.puts[-1] == ("/a/hb", "1005.000") and len(source.puts) == 2
    hb.stop()
    clock.advance(50)
    assert len(source.puts) == 2


def test_freshness_waits_until_the_quorum_index_is_applied():
    clock, source, store = Clock(), FakeSource(), FakeStore()
    applied = [5]
    seen = []
    tracker = FreshnessTracker(source, store, clock, 1.0, lambda: applied[0],
                               on_fresh=seen.append, wall=lambda: 100.0 + clock.seconds())
    tracker.start()                      # t=0: quorum index 10, only 5 applied
    assert tracker.fresh_as_of is None and store.puts == []
    applied[0] = 10
    source.index = 12
    clock.advance(1)                     # t=1: index 10 (read at t=0) is applied
    assert seen[0] == FreshAsOf(100.0, 10)
    assert store.puts == [("/__replication/r.fresh-as-of", FreshAsOf(100.0, 10).encode())]
    applied[0] = 12
    clock.advance(1)                     # t=2: index 12 (read at t=1) applied, and 12 again
    assert tracker.fresh_as_of == FreshAsOf(102.0, 12)
    assert abs(tracker.age() - 0.0) < 1e-9


def test_freshness_and_heartbeat_on_v3_sides(src, dst, mirror):
    """A v3 -> v3 mirror publishes its freshness in the v3 keyspace, writes its
    heartbeat to the v3 source, and etcd-mirror-freshness --dst-api v3 reads both."""
    import uuid

    from tests.v3sync import V3
    prefix = "/f" + uuid.uuid4().hex[:8]
    V3(src.url).put(prefix + "/a", "1")
    m = mirror(src.url, dst.url, "--reload", "--src-api", "v3", "--dst-api", "v3",
               "--src-prefix", prefix, "--dst-prefix", prefix, "--strip",
               "--heartbeat-key", prefix + "/heartbeat", "--heartbeat-interval", "0.2")
    d = V3(dst.url)
    wait_for(lambda: d.get("/__replication" + prefix + ".fresh-as-of"),
             message="freshness published in the v3 keyspace")
    wait_for(lambda: d.get(prefix + "/heartbeat"), message="the heartbeat replicated")
    ok = freshness("-c", "30", "--dst-api", "v3", "--dst-prefix", prefix, dst.url)
    assert ok.returncode == 0 and ok.stdout.startswith("OK: replica age"), ok.stdout + ok.stderr
    beat = freshness("-c", "30", "--dst-api", "v3", "--dst-prefix", prefix, "--strip",
                     "--src-prefix", prefix, "--heartbeat-key", prefix + "/heartbeat",
                     dst.url)
    assert beat.returncode == 0 and f"heartbeat {prefix}/heartbeat" in beat.stdout, \
        beat.stdout + beat.stderr
    assert m.healthy() and m.metric("etcdmirror_heartbeat_age_seconds") >= 0
