"""Start, stop, crash and restart of a real mirror process; exit statuses and their logs.

Exit statuses are the contract with systemd: 0 for a clean stop (on SIGTERM,
SIGINT or SIGHUP, promptly, even while retrying), 1 when an operator must act
(no usable index, a destination that diverged, an unusable HTTP port), with a
log line that says what to do.  The persisted index must let a restarted
mirror continue exactly where the previous one stopped, also from an index
written by etcd-mirror 0.0.12.
"""

import re
import signal
import socket
import subprocess
import threading

import pytest

from tests.helpers import wait_for, wait_same

PREFIX = "/conftool"
DST_ROOT = "/replica" + PREFIX


def same(src, dst, src_prefix=PREFIX, dst_root=DST_ROOT, timeout=30.0):
    return wait_same(src, dst, src_prefix, dst_root, timeout)
INDEX_KEY = "/__replication/replica"

SIGNALS = [signal.SIGTERM, signal.SIGINT, signal.SIGHUP]



def persisted(dst, key=INDEX_KEY):
    status, body, _ = dst.get(key)
    assert status == 200, (key, status, body)
    return body["node"]["value"]


def resyncs(m):
    """Sum of every ``etcdmirror_resyncs_total`` sample (0 when absent)."""
    total = 0.0
    for line in m.metrics().splitlines():
        if line.startswith("etcdmirror_resyncs_total"):
            total += float(line.rpartition(" ")[2])
    return total


def exits_within(m, seconds):
    """The exit status, failing if the process is still there after ``seconds``."""
    try:
        return m.proc.wait(timeout=seconds)
    except subprocess.TimeoutExpired:
        raise AssertionError(f"mirror still running {seconds}s after the signal:\n{m.log()}")


class Burst:
    """Writes distinct keys from a thread, recording each one's index."""

    def __init__(self, client, count, prefix=PREFIX, tag="v", mixed=False):
        self.client = client
        self.count = count
        self.prefix = prefix
        self.tag = tag
        self.mixed = mixed
        self.written = {}  # key -> (modifiedIndex, value)
        self.errors = []
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _run(self):
        try:
            for i in range(self.count):
                if self.mixed and i % 5 == 4:
                    self.client.delete(f"{self.prefix}/{self.tag}{i - 2}")
                    continue
                key = f"{self.prefix}/{self.tag}{i}"
                if self.mixed and i % 5 == 1:
                    status, body, _ = self.client.set(key, f"{self.tag}-{i}", prevExist=False)
                else:
                    status, body, _ = self.client.set(key, f"{self.tag}-{i}")
                assert status in (200, 201), (status, body)
                self.written[key] = (body["node"]["modifiedIndex"], f"{self.tag}-{i}")
        except Exception as e:  # reported by join()
            self.errors.append(e)

    def start(self):
        self.thread.start()
        return self

    def join(self):
        self.thread.join(60)
        assert not self.thread.is_alive(), "writer thread hung"
        assert not self.errors, self.errors


# -- signals -------------------------------------------------------------------


@pytest.mark.parametrize("sig", SIGNALS, ids=lambda s: signal.Signals(s).name)
def test_signal_stops_cleanly(src, dst, mirror, sig):
    src.set(PREFIX + "/seed", "1")
    m = mirror(src.url, dst.url, "--reload", "--src-prefix", PREFIX)
    src.set(PREFIX + "/a", "1")
    m.wait_index(src.index())
    m.signal(sig)
    assert exits_within(m, 5) == 0
    log = m.log()
    assert f"received {signal.Signals(sig).name}" in log
    assert "stopped; last applied index" in log


@pytest.mark.parametrize("sig", SIGNALS, ids=lambda s: signal.Signals(s).name)
def test_signal_stops_cleanly_while_retrying(src, dst, etcd_dst, mirror, sig):
    src.set(PREFIX + "/seed", "1")
    m = mirror(src.url, dst.url, "--reload", "--src-prefix", PREFIX)
    etcd_dst.stop()
    src.set(PREFIX + "/a", "1")
    wait_for(lambda: m.status()["state"] == "retrying", message="state retrying")
    # Let the backoff grow a little: the stop must interrupt a long sleep too.
    wait_for(lambda: m.metric("etcdmirror_retries_total", 'side="destination"') >= 2,
             message="two destination retries")
    m.signal(sig)
    assert exits_within(m, 5) == 0
    assert f"received {signal.Signals(sig).name}" in m.log()


# -- the persisted index ---------------------------------------------------------


def test_clean_stop_persists_index_and_restart_continues(src, dst, mirror):
    src.set(PREFIX + "/seed", "1")
    m = mirror(src.url, dst.url, "--reload", "--src-prefix", PREFIX)
    burst = Burst(src, 300).start()
    try:
        # Stop mid-stream: some events replicated, more still coming.
        wait_for(lambda: m.metric("etcdmirror_replicated_events_total") >= 20,
                 message="20 events replicated")
        assert m.stop() == 0
    finally:
        burst.join()

    index = int(persisted(dst))
    found = re.findall(r"stopped; last applied index (\d+)", m.log())
    assert found and int(found[-1]) == index, m.log()
    assert index <= src.index()
    # Never ahead of the destination: everything up to the index is there.
    for key, (modified, value) in burst.written.items():
        if modified <= index:
            _, body, _ = dst.get("/replica" + key)
            assert body["node"]["value"] == value, (key, modified, index)

    # Written while no mirror runs.
    for i in range(10):
        src.set(f"{PREFIX}/down{i}", str(i))
    src.delete(PREFIX + "/v0")
    m2 = mirror(src.url, dst.url, "--src-prefix", PREFIX)
    assert f"Starting replication at {index}" in m2.log()
    m2.wait_index(src.index())
    tree = same(src, dst)
    assert tree["down9"] == (False, "9", False) and "v0" not in tree
    assert resyncs(m2) == 0
    # Persisted in batches: within a moment, not necessarily at once.
    wait_for(lambda: int(persisted(dst)) == src.index())


def test_kill_9_mid_stream_then_restart(src, dst, mirror):
    src.set(PREFIX + "/seed", "1")
    m = mirror(src.url, dst.url, "--reload", "--src-prefix", PREFIX)
    burst = Burst(src, 300, mixed=True).start()
    try:
        wait_for(lambda: m.metric("etcdmirror_replicated_events_total") >= 20,
                 message="20 events replicated")
        m.kill()
    finally:
        burst.join()
    assert m.proc.returncode == -signal.SIGKILL
    m2 = mirror(src.url, dst.url, "--src-prefix", PREFIX)
    m2.wait_index(src.index(), timeout=30)
    same(src, dst)
    assert resyncs(m2) == 0
    assert m2.healthy()


def test_missing_index_without_reload_exits_1(src, dst, mirror):
    src.set(PREFIX + "/a", "1")
    m = mirror(src.url, dst.url, "--src-prefix", PREFIX, healthy=False)
    assert m.wait_exit(15) == 1
    log = m.log()
    assert "--reload" in log and INDEX_KEY in log
    assert dst.tree("/replica") == {}


def test_garbage_index_without_reload_exits_1(src, dst, mirror):
    src.set(PREFIX + "/a", "1")
    dst.set(INDEX_KEY, "abc")
    m = mirror(src.url, dst.url, "--src-prefix", PREFIX, healthy=False)
    assert m.wait_exit(15) == 1
    log = m.log()
    assert "--reload" in log and "'abc'" in log
    assert persisted(dst) == "abc"  # not touched


# -- interop with etcd-mirror 0.0.12 ---------------------------------------------


def test_continues_from_0_0_12_index(src, dst, mirror):
    # Both sides seeded identically by hand, as 0.0.12 would have left them.
    for key, value in (("/a", "1"), ("/dir/b", "2")):
        src.set(PREFIX + key, value)
        dst.set(DST_ROOT + key, value)
    # Written before the index and deliberately not on the destination: a
    # mirror starting at n must never replay it.
    src.set(PREFIX + "/before", "old")
    n = src.index()
    dst.set(INDEX_KEY, str(n))

    m = mirror(src.url, dst.url, "--src-prefix", PREFIX)
    assert f"Starting replication at {n}" in m.log()
    src.set(PREFIX + "/after", "new")
    src.set(PREFIX + "/a", "1b")
    src.delete(PREFIX + "/dir", recursive=True)
    m.wait_index(src.index())
    tree = dst.tree(DST_ROOT)
    assert tree == {"a": (False, "1b", False), "after": (False, "new", False)}
    assert resyncs(m) == 0
    wait_for(lambda: int(persisted(dst)) == src.index())
    value = persisted(dst)
    assert re.fullmatch(r"[1-9][0-9]*", value), value


def test_root_index_key_is_plain_integer(src, dst, mirror):
    src.set(PREFIX + "/a", "1")
    m = mirror(src.url, dst.url, "--reload", "--src-prefix", PREFIX, "--dst-prefix", "/")
    src.set(PREFIX + "/b", "2")
    m.wait_index(src.index())
    same(src, dst, PREFIX, PREFIX)
    wait_for(lambda: int(persisted(dst, "/__replication/__ROOT__")) == src.index())
    value = persisted(dst, "/__replication/__ROOT__")
    assert re.fullmatch(r"[1-9][0-9]*", value), value
    assert dst.get(INDEX_KEY)[0] == 404


# -- failures that need an operator ----------------------------------------------


def test_file_where_source_needs_a_dir_exits_1(src, dst, mirror):
    src.set(PREFIX + "/seed", "1")
    m = mirror(src.url, dst.url, "--reload", "--src-prefix", PREFIX)
    before = m.status()["replica_index"]
    dst.set(DST_ROOT + "/a", "a file")  # behind the mirror's back
    _, body, _ = src.set(PREFIX + "/a/b", "x")
    event_index = body["node"]["modifiedIndex"]
    assert m.wait_exit(15) == 1
    log = m.log()
    assert f"'{PREFIX}/a/b'" in log
    assert f"at index {event_index}" in log
    assert f"last applied index {before}" in log
    assert "Not a directory" in log
    assert int(persisted(dst)) == before


def test_create_diverging_from_destination_exits_1(src, dst, mirror):
    src.set(PREFIX + "/seed", "1")
    m = mirror(src.url, dst.url, "--reload", "--src-prefix", PREFIX)
    before = m.status()["replica_index"]
    dst.set(DST_ROOT + "/c", "theirs")  # someone else created it first
    status, body, _ = src.set(PREFIX + "/c", "ours", prevExist=False)
    assert body["action"] == "create"
    assert m.wait_exit(15) == 1
    log = m.log()
    assert f"'{PREFIX}/c'" in log and f"'{DST_ROOT}/c'" in log
    assert "expected value 'ours'" in log and "found value 'theirs'" in log
    assert f"last applied index {before}" in log
    assert persisted(dst) == str(before)
    assert dst.get(DST_ROOT + "/c")[1]["node"]["value"] == "theirs"


def test_http_port_in_use_exits_1(src, dst, mirror):
    src.set(PREFIX + "/a", "1")
    busy = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    try:
        busy.bind(("0.0.0.0", 0))
        busy.listen(1)
        port = busy.getsockname()[1]
        m = mirror(src.url, dst.url, "--reload", "--src-prefix", PREFIX,
                   port=port, healthy=False)
        assert m.wait_exit(15) == 1
    finally:
        busy.close()
    log = m.log()
    assert f"cannot serve the HTTP interface on port {port}" in log
    assert "in use" in log.lower()


def test_crash_during_reload_then_restart_without_reload(src, dst, mirror):
    """A reload cut short leaves the replica ahead of its index: the next start
    finishes the resync instead of replaying into a false divergence."""
    src.set(PREFIX + "/seed", "1")
    first = mirror(src.url, dst.url, "--reload", "--src-prefix", PREFIX)
    assert first.stop() == 0
    old = persisted(dst)
    # After the first mirror stopped: a create then a CAS of the same key, and
    # enough keys (below the 1000-event history) for the reload to take a while.
    src.set(PREFIX + "/aaa", "1", prevExist=False)
    src.set(PREFIX + "/aaa", "2", prevValue="1")
    for i in range(900):
        src.set(f"{PREFIX}/z/k{i}", "x")
    reloading = mirror(src.url, dst.url, "--reload", "--src-prefix", PREFIX, healthy=False)
    wait_for(lambda: dst.get(DST_ROOT + "/aaa")[0] == 200, interval=0.005,
             message="the reload writing /aaa")
    reloading.kill()  # a crash (or systemd's SIGKILL) in the middle of the reload
    if persisted(dst) != old or src.tree(PREFIX) == dst.tree(DST_ROOT):
        pytest.skip("the reload finished before it could be interrupted")

    m = mirror(src.url, dst.url, "--src-prefix", PREFIX)
    assert "was interrupted" in m.log()
    assert m.metric("etcdmirror_resyncs_total", 'reason="interrupted"') == 1
    m.wait_index(src.index())
    same(src, dst)
    assert dst.get(INDEX_KEY + ".resync-in-progress")[0] == 404
