"""The TTL keeper's schedule, on a fake clock.

Only the keeper's own decisions are exercised here: when it reads the
source, whether it refreshes, what it does when the replica's copy is gone,
that it waits for the gate and for the replica's index.  The two "clusters"
below are a few lines of bookkeeping that answer with etcd's ceil-rounded
``ttl``; what a real etcd does with ``refresh=true`` and expirations is tested
against real servers in ``test_ttl_refresh.py``.
"""

import math

import etcd
from prometheus_client import CollectorRegistry
from twisted.internet import defer
from twisted.internet.task import Clock

from etcdmirror import status as st
from etcdmirror.answers import Answer, EtcdUnavailable
from etcdmirror.applier import TTL_GRACE
from etcdmirror.events import Outcome
from etcdmirror.gate import WriteGate
from etcdmirror.keys import KeyMapper
from etcdmirror.metrics import Metrics
from etcdmirror.resync import NodeState
from etcdmirror.ttlkeeper import TtlKeeper
from etcdmirror.ttlplan import FINAL_LEAD, LEAD, next_check, plan_reads


class Side:
    """Keys with a value and an expiry time on the fake clock (None: no TTL)."""

    def __init__(self, clock):
        self.clock = clock
        self.nodes = {}   # key -> [value, expires_at, dir]
        self.gets = []
        self.puts = []
        self.fail = False

    def alive(self, key):
        node = self.nodes.get(key)
        if node is not None and node[1] is not None and node[1] <= self.clock.seconds():
            del self.nodes[key]
            return None
        return node

    def _json(self, key):
        value, expires, is_dir = self.nodes[key]
        out = {"key": key, "modifiedIndex": 1, "createdIndex": 1}
        if is_dir:
            out["dir"] = True
        else:
            out["value"] = value
        if expires is not None:
            out["ttl"] = math.ceil(expires - self.clock.seconds())
        return out

    def get(self, key, recursive=False, quorum=False):
        self.gets.append(key)
        if self.fail:
            return defer.fail(EtcdUnavailable("GET: connection refused"))
        for k in list(self.nodes):
            self.alive(k)
        if key in self.nodes:
            node = self._json(key)
            if node.get("dir"):
                node["nodes"] = [self._json(k) for k in self.nodes
                                 if k.rsplit("/", 1)[0] == key]
            return defer.succeed(Answer.from_payload({"action": "get", "node": node}, 10))
        children = [self._json(k) for k in self.nodes if k.rsplit("/", 1)[0] == key]
        if children:
            node = {"key": key, "dir": True, "nodes": children}
            return defer.succeed(Answer.from_payload({"action": "get", "node": node}, 10))
        return defer.fail(etcd.EtcdKeyNotFound("Key not found"))

    def put(self, key, value=None, dir=False, ttl=None, refresh=False, prev_exist=None):
        self.puts.append((key, value, ttl, refresh, prev_exist))
        node = self.alive(key)
        if prev_exist is True and node is None:
            return defer.fail(etcd.EtcdKeyNotFound("Key not found"))
        if prev_exist is False and node is not None:
            return defer.fail(etcd.EtcdAlreadyExist("Key already exists"))
        expires = None if ttl is None else self.clock.seconds() + ttl
        self.nodes[key] = [node[0] if refresh else value, expires, dir]
        return defer.succeed(None)


def source_event(key, value, ttl, action="set", dir=False):
    """An event as the source's watch hands it over."""
    node = {"key": key, "value": value, "ttl": ttl, "dir": dir, "modifiedIndex": 1}
    return Answer.from_payload({"action": action, "node": node}, 1).event


def make(clock, index=100):
    src, dst = Side(clock), Side(clock)
    status = st.MirrorStatus("s", "d", "/a", "/b", "/__replication/b")
    metrics = Metrics(CollectorRegistry(), status, "http://d:1", "/b")
    gate = WriteGate()
    expired_dirs = []
    applied = [index]
    keeper = TtlKeeper(src, dst, KeyMapper("/a", "/b", strip=True), clock, gate,
                       lambda: applied[0], metrics, expired_dirs.append)
    keeper.start()
    return keeper, src, dst, gate, applied, expired_dirs


def write_both(clock, src, dst, keeper, key, value, ttl):
    """A source write with a TTL and the mirror applying it."""
    src.nodes[key] = [value, clock.seconds() + ttl, False]
    dst.nodes["/b" + key[2:]] = [value, clock.seconds() + ttl + TTL_GRACE, False]
    keeper.applied(source_event(key, value, ttl), Outcome.APPLIED)


def test_next_check_first_final_then_late():
    assert next_check(0.0, 10.0) == 10.0 - LEAD
    assert next_check(10.0 - LEAD, 10.0) == 10.0 - FINAL_LEAD
    assert next_check(10.0 - FINAL_LEAD, 10.0) == 11.0
    assert next_check(12.0, 10.0) == 13.0


def test_reads_are_grouped_by_directory_past_the_threshold():
    keys = [f"/a/svc/k{i}" for i in range(10)] + ["/a/x", "/a/other/y"]
    reads = dict(plan_reads(keys, "/a", group=8))
    assert reads["/a/svc"] == keys[:10]
    assert reads["/a/x"] == ["/a/x"] and reads["/a/other/y"] == ["/a/other/y"]
    # Never above the prefix: credentials may be limited to it.
    assert dict(plan_reads([f"/a{i}" for i in range(10)], "/a0", group=2)) == {
        "/a0": ["/a0"], **{f"/a{i}": [f"/a{i}"] for i in range(1, 10)}}


def test_a_key_renewed_every_second_never_runs_out_on_the_replica():
    clock = Clock()
    keeper, src, dst, *_ = make(clock)
    write_both(clock, src, dst, keeper, "/a/svc", "up", 3)
    for step in range(1, 601):                  # 60 s in 0.1 s steps
        clock.advance(0.1)
        if step % 10 == 0:                      # the client's refresh=true
            src.nodes["/a/svc"][1] = clock.seconds() + 3
        assert dst.alive("/b/svc") is not None, f"replica copy gone at t={clock.seconds():.1f}"
    assert keeper.refreshes >= 20
    # About one read per refresh, not one per tick.
    assert len(src.gets) <= 2 * keeper.refreshes
    assert all(refresh and prev for _, _, _, refresh, prev in dst.puts)
    # The renewals stop: both copies run out, the replica's at most TTL_GRACE
    # plus etcd's rounding up of ``ttl`` (under a second) after the source's.
    # (With real servers the source's expire event removes it at once.)
    src_gone = dst_gone = None
    for _ in range(100):
        clock.advance(0.1)
        if src_gone is None and src.alive("/a/svc") is None:
            src_gone = clock.seconds()
        if dst_gone is None and dst.alive("/b/svc") is None:
            dst_gone = clock.seconds()
    assert src_gone is not None and dst_gone is not None
    assert 0 <= dst_gone - src_gone <= TTL_GRACE + 1
    assert keeper.expired_late == 0
    assert keeper.describe()["tracked"] == 0   # the source said 404: forgotten


def test_a_renewal_at_the_last_moment_is_seen_by_the_final_check():
    clock = Clock()
    keeper, src, dst, *_ = make(clock)
    write_both(clock, src, dst, keeper, "/a/k", "v", 5)
    clock.advance(4.85)                         # 0.15 s before the source runs out
    src.nodes["/a/k"][1] = clock.seconds() + 5
    while src.alive("/a/k") is not None:
        clock.advance(0.1)
        assert dst.alive("/b/k") is not None
    assert keeper.refreshes == 1 and keeper.expired_late == 0


def test_no_renewal_means_no_write():
    clock = Clock()
    keeper, src, dst, *_ = make(clock)
    write_both(clock, src, dst, keeper, "/a/k", "v", 4)
    clock.pump([0.1] * 100)
    assert dst.puts == [] and keeper.refreshes == 0
    assert dst.alive("/b/k") is None and keeper.describe()["tracked"] == 0


def test_a_replica_copy_gone_is_written_again_with_its_value():
    clock = Clock()
    keeper, src, dst, *_ = make(clock)
    write_both(clock, src, dst, keeper, "/a/k", "v", 5)
    del dst.nodes["/b/k"]                       # ran out there, say
    src.nodes["/a/k"][1] = clock.seconds() + 30
    clock.pump([0.1] * 60)
    assert dst.nodes["/b/k"][0] == "v"
    assert keeper.expired_late == 1
    # Checked at t=5 (LEAD before the replica copy would have run out): 25 s left.
    assert ("/b/k", "v", 25 + TTL_GRACE, False, False) in dst.puts


def test_a_directory_gone_on_the_replica_asks_for_a_resync():
    clock = Clock()
    keeper, src, dst, _, _, expired_dirs = make(clock)
    src.nodes["/a/d"] = [None, clock.seconds() + 30, True]
    keeper.applied(source_event("/a/d", None, 3, dir=True), Outcome.APPLIED)
    clock.pump([0.1] * 50)
    assert expired_dirs == ["/a/d"] and keeper.expired_late == 1


def test_nothing_is_written_while_the_gate_is_held():
    clock = Clock()
    keeper, src, dst, gate, *_ = make(clock)
    write_both(clock, src, dst, keeper, "/a/k", "v", 3)
    assert gate.acquire() is None               # an event being applied
    src.nodes["/a/k"][1] = clock.seconds() + 60
    clock.pump([0.1] * 35)
    assert src.gets and dst.puts == []
    gate.release()
    assert dst.puts and dst.puts[0][3] is True


def test_an_event_while_waiting_for_the_gate_wins():
    clock = Clock()
    keeper, src, dst, gate, *_ = make(clock)
    write_both(clock, src, dst, keeper, "/a/k", "v", 3)
    gate.acquire()
    src.nodes["/a/k"][1] = clock.seconds() + 60
    clock.pump([0.1] * 35)
    assert src.gets
    # The event deletes the key; the keeper's decision is void.
    del src.nodes["/a/k"], dst.nodes["/b/k"]
    keeper.applied(source_event("/a/k", None, None, action="delete"), Outcome.APPLIED)
    gate.release()
    assert dst.puts == [] and "/b/k" not in dst.nodes


def test_a_snapshot_node_waits_for_the_replica_index():
    clock = Clock()
    keeper, src, dst, _, applied, _ = make(clock, index=100)
    src.nodes["/a/k"] = ["v", clock.seconds() + 30, False]
    keeper.track_snapshot({"/a/k": NodeState(False, "v", 30)}, 120, clock.seconds(),
                          present=False)
    clock.pump([0.1] * 20)
    # Refreshes are tried; the replica may lack the key until 120.
    assert src.gets and all(p[3] for p in dst.puts) and "/b/k" not in dst.nodes
    applied[0] = 120
    clock.pump([0.1] * 12)
    assert dst.nodes["/b/k"][0] == "v" and keeper.expired_late == 1


def test_a_replayed_event_is_checked_at_once():
    clock = Clock()
    keeper, src, dst, *_ = make(clock)
    src.nodes["/a/k"] = ["v", clock.seconds() + 50, False]
    dst.nodes["/b/k"] = ["v", clock.seconds() + 2, False]   # an older write's TTL
    keeper.applied(source_event("/a/k", "v", 50), Outcome.REPLAYED)
    clock.advance(0)
    assert dst.nodes["/b/k"][1] >= clock.seconds() + 50


def test_failed_reads_are_retried_and_logged_once(caplog):
    clock = Clock()
    keeper, src, dst, *_ = make(clock)
    write_both(clock, src, dst, keeper, "/a/k", "v", 3)
    src.fail = True
    clock.pump([0.1] * 50)
    reads = len(src.gets)
    assert reads >= 2
    assert sum("TTL keeper" in r.message for r in caplog.records) == 1
    src.fail = False
    src.nodes["/a/k"][1] = clock.seconds() + 60
    clock.pump([0.1] * 20)
    assert dst.nodes["/b/k"][1] >= clock.seconds() + 55


def test_events_track_and_forget():
    clock = Clock()
    keeper, *_ = make(clock)
    keeper.applied(source_event("/a/d", None, 10, dir=True), Outcome.APPLIED)
    keeper.applied(source_event("/a/d/k", "v", 10), Outcome.APPLIED)
    keeper.applied(source_event("/a/x", "v", 10), Outcome.APPLIED)
    assert keeper.describe()["tracked"] == 3
    keeper.applied(source_event("/a/x", "v", None), Outcome.APPLIED)        # made permanent
    keeper.applied(source_event("/a/d", None, None, action="delete", dir=True), Outcome.APPLIED)
    assert keeper.describe()["tracked"] == 0


def test_a_directory_gone_is_reported_once_until_it_is_tracked_anew():
    clock = Clock()
    keeper, src, dst, _, _, expired_dirs = make(clock)
    src.nodes["/a/d"] = [None, clock.seconds() + 60, True]
    keeper.applied(source_event("/a/d", None, 3, dir=True), Outcome.APPLIED)
    clock.pump([0.1] * 200)                     # the resync has not come yet
    assert expired_dirs == ["/a/d"] and keeper.expired_late == 1
    keeper.applied(source_event("/a/d", None, 3, dir=True), Outcome.APPLIED)
    clock.pump([0.1] * 50)
    assert expired_dirs == ["/a/d", "/a/d"] and keeper.expired_late == 2
