"""Active/standby mirrors (``--ha``) on real etcd: one replicates, the other
takes over when it dies, hangs (SIGSTOP) or is cut off, and a mirror that
lost the lock steps down without writing; the replica ends equal to the
source every time.

Every mirror here uses ``--ha-ttl 4``: takeovers within a few seconds.  The
load is a thread writing the source as fast as it can; waits are deadlines,
never sleeps.
"""

import threading
from urllib.parse import urlsplit

import pytest

from tests.helpers import V2, run_command, wait_for, wait_same
from tests.tcpproxy import CuttableProxy

PREFIX = "/ha"
IMAGE = "/replica/ha"
LOCK_KEY = "/__replication/replica.lock"
INDEX_KEY = "/__replication/replica"
HA = ["--src-prefix", PREFIX, "--ha", "--ha-ttl", "4"]
PACE = 100  # source writes per second
TAKEOVER = 30.0  # deadline for a takeover (about one TTL; generous for a loaded CI)


class Writer(threading.Thread):
    """Writes and deletes keys under PREFIX, about ``PACE`` times a second."""

    def __init__(self, url: str) -> None:
        super().__init__(daemon=True)
        self.client = V2(url)
        self.done = threading.Event()
        self.count = 0

    def run(self) -> None:
        while not self.done.is_set():
            i = self.count
            key = f"{PREFIX}/k{i % 40}"
            if i % 7 == 6:
                self.client.delete(key)
            else:
                self.client.set(key, str(i))
            self.count += 1
            self.done.wait(1.0 / PACE)  # pacing the load, not waiting for a result

    def written(self, more: int, timeout: float = 30.0) -> None:
        """Wait until ``more`` further writes went through."""
        target = self.count + more
        wait_for(lambda: self.count >= target, timeout=timeout,
                 message=f"{more} more writes on the source")

    def stop(self) -> None:
        self.done.set()
        self.join(timeout=10)
        self.client.close()


@pytest.fixture
def writer(src):
    made = []

    def start():
        w = Writer(src.url)
        made.append(w)
        w.start()
        return w

    yield start
    for w in made:
        w.stop()


def role(m) -> str:
    return m.status()["role"]


def holder(dst) -> str:
    status, body, _ = dst.get(LOCK_KEY)
    return body["node"]["value"] if status == 200 else ""


def wait_role(m, wanted: str, timeout: float = TAKEOVER) -> None:
    wait_for(lambda: role(m) == wanted, timeout=timeout,
             message=f"the mirror's role to be {wanted!r}:\n{m.log_tail()}")


def seeded(src, mirror, dst) -> None:
    """Keys on the source and an index on the destination (a reload, then stopped)."""
    for i in range(10):
        src.set(f"{PREFIX}/seed{i}", str(i))
    first = mirror(src.url, dst.url, "--reload", *HA)
    wait_role(first, "active")
    wait_same(src, dst, PREFIX, IMAGE)
    assert first.stop() == 0
    assert holder(dst) == "", "a clean stop gives the lock back"


def test_both_started_at_once_exactly_one_replicates(src, dst, mirror):
    seeded(src, mirror, dst)
    a = mirror(src.url, dst.url, *HA, start=False)
    b = mirror(src.url, dst.url, *HA, start=False)
    a.start(healthy=False)
    b.start(healthy=False)
    wait_for(lambda: a.healthy() and b.healthy(), message="both healthy")
    wait_for(lambda: sorted([role(a), role(b)]) == ["active", "standby"],
             message="one active, one standby")
    active, standby = (a, b) if role(a) == "active" else (b, a)

    src.set(PREFIX + "/after", "x")
    wait_same(src, dst, PREFIX, IMAGE)
    takeovers = [m.metric("etcdmirror_ha_takeovers_total") for m in (a, b)]
    assert sorted(takeovers) == [0.0, 1.0]
    assert holder(dst) == active.status()["ha"]["holder"]
    assert active.metric("etcdmirror_role", 'role="active"') == 1.0
    assert standby.metric("etcdmirror_role", 'role="standby"') == 1.0
    assert standby.metric("etcdmirror_role", 'role="active"') == 0.0
    st = standby.status()
    assert st["state"] == "standby" and st["healthy"] is True
    assert st["ha"]["lock_key"] == LOCK_KEY
    assert "is held by " + holder(dst) in standby.log()
    # The standby never wrote: every event was applied by the active one.
    assert standby.metric("etcdmirror_replicated_events_total") == 0.0


def test_sigstop_active_past_the_ttl_standby_takes_over_old_steps_down(
        src, dst, mirror, writer):
    seeded(src, mirror, dst)
    a, b = active_then_standby(src, mirror, dst.url, dst.url)
    assert role(b) == "standby"
    w = writer()
    w.written(200)

    a.pause()  # frozen with events in hand while the source keeps changing
    try:
        wait_role(b, "active")
        wait_for(lambda: b.metric("etcdmirror_replicated_events_total") > 50,
                 message="the new active replicating")
    finally:
        a.resume()
    wait_role(a, "standby")
    w.written(200)
    w.stop()
    wait_same(src, dst, PREFIX, IMAGE)

    log = a.log()
    # Woken up, it found its lease over (the lock's timer or its next write,
    # whichever came first) and said so.
    assert "stepping down: " in log and "stepped down to standby" in log
    assert a.metric("etcdmirror_ha_stepdowns_total") == 1.0
    assert b.metric("etcdmirror_ha_takeovers_total") == 1.0
    assert holder(dst) == b.status()["ha"]["holder"]
    assert a.running and b.running


def active_then_standby(src, mirror, a_dst: str, b_dst: str):
    """A (writing through ``a_dst``) active, then B standing by."""
    a = mirror(src.url, a_dst, *HA)
    wait_role(a, "active")
    return a, mirror(src.url, b_dst, *HA)


def test_kill_9_of_the_active_under_load(src, dst, mirror, writer):
    seeded(src, mirror, dst)
    a, b = active_then_standby(src, mirror, dst.url, dst.url)
    w = writer()
    w.written(300)
    a.kill()
    wait_role(b, "active")
    w.written(300)
    w.stop()
    wait_same(src, dst, PREFIX, IMAGE)
    assert "took the HA lock" in b.log()
    # Continued from the index the dead one left: no resync.
    assert sum(b.samples("etcdmirror_resyncs_total").values()) == 0.0


def test_active_cut_off_from_the_destination(src, dst, mirror, writer):
    seeded(src, mirror, dst)
    target = urlsplit(dst.url)
    proxy = CuttableProxy((target.hostname, target.port))
    try:
        a, b = active_then_standby(src, mirror, proxy.url, dst.url)
        w = writer()
        w.written(200)
        proxy.cut()
        wait_role(b, "active")
        wait_role(a, "standby")
        w.written(200)
        w.stop()
        wait_same(src, dst, PREFIX, IMAGE)
        assert "stepped down to standby" in a.log()
        proxy.heal()
        # Back on the network, the old active sees the new holder and stays standby.
        wait_for(lambda: "is held by " + b.status()["ha"]["holder"] in a.log(),
                 message="the old active seeing the new holder")
        assert role(a) == "standby"
        src.set(PREFIX + "/healed", "yes")
        wait_same(src, dst, PREFIX, IMAGE)
    finally:
        proxy.close()


def test_index_moved_by_another_writer_makes_the_active_step_down(src, dst, mirror):
    """The index is written by compare-and-swap on what this mirror left it at:
    a write by anyone else (a frozen mirror waking up, here by hand) makes the
    holder's next index write fail, and it steps down instead of overwriting."""
    seeded(src, mirror, dst)
    a = mirror(src.url, dst.url, *HA)
    wait_role(a, "active")
    a.wait_log("Starting replication at")  # the index is claimed: ours from here on
    status, body, _ = dst.get(INDEX_KEY)
    dst.set(INDEX_KEY, body["node"]["value"])  # same value, new modifiedIndex
    for i in range(5):
        src.set(f"{PREFIX}/new{i}", str(i))
    a.wait_log("was changed by another mirror")
    wait_for(lambda: a.metric("etcdmirror_ha_stepdowns_total") == 1.0,
             message="one step-down")
    # Nobody else holds the lock: it takes it again and finishes the job.
    wait_for(lambda: a.metric("etcdmirror_ha_takeovers_total") == 2.0,
             message="taken again")
    wait_same(src, dst, PREFIX, IMAGE)


@pytest.mark.parametrize("args, flag", [
    (["--ha-ttl", "5"], "--ha-ttl"),
    (["--ha", "--ha-ttl", "1"], "--ha-ttl"),
])
def test_ha_usage_errors(args, flag):
    result = run_command("main", *args, "--check-config", "http://127.0.0.1:1",
                         "http://127.0.0.1:2")
    assert result.returncode == 2, result.stderr
    assert flag in result.stderr
