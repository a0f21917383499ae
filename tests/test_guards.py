"""Fail closed, with the reason: loops, a different source, a rolled-back source."""

import pytest
from prometheus_client import CollectorRegistry
from twisted.internet import defer
from twisted.internet.task import Clock

from etcdmirror import guards
from etcdmirror import status as st
from etcdmirror.answers import Answer, is_transient
from etcdmirror.checkpoint import BatchSettings
from etcdmirror.controller import Options, ReplicationController
from etcdmirror.errors import MirrorFatal
from etcdmirror.events import Outcome
from etcdmirror.keys import KeyMapper
from etcdmirror.metrics import Metrics
from tests.fakes import QuietSource, RecordingCheckpoint
from tests.helpers import wait_for

PREFIX = "/conftool"
IMAGE = "/replica/conftool"


def test_same_cluster_overlapping_prefixes_is_refused(src, mirror):
    src.set(PREFIX + "/a", "1")
    m = mirror(src.url, src.url, "--reload", "--src-prefix", "/", "--dst-prefix", "/replica",
               healthy=False)
    assert m.wait_exit(30) == 1
    assert "same etcd cluster" in m.log()
    assert src.tree("/replica") == {}  # nothing was written


def test_same_cluster_disjoint_prefixes_is_fine(src, mirror):
    src.set(PREFIX + "/a", "1")
    mirror(src.url, src.url, "--reload", "--src-prefix", PREFIX, "--dst-prefix", "/copy",
           "--strip")
    src.set(PREFIX + "/b", "2")
    wait_for(lambda: src.tree("/copy") == src.tree(PREFIX))


def test_a_different_source_cluster_is_refused_unless_reload(src, dst, mirror, etcd_factory):
    src.set(PREFIX + "/a", "1")
    m = mirror(src.url, dst.url, "--reload", "--src-prefix", PREFIX)
    recorded = dst.get("/__replication/replica.source-cluster-id")[1]["node"]["value"]
    assert recorded == src.get("/")[2]["X-Etcd-Cluster-Id"]
    assert m.stop() == 0
    other = etcd_factory(name="other")
    m2 = mirror(other.url, dst.url, "--src-prefix", PREFIX, healthy=False)
    assert m2.wait_exit(30) == 1
    assert "--reload" in m2.log() and recorded in m2.log()
    assert dst.get(IMAGE + "/a")[0] == 200  # the replica was left alone
    mirror(other.url, dst.url, "--reload", "--src-prefix", PREFIX)
    wait_for(lambda: dst.tree(IMAGE) == {})


def test_index_ahead_of_the_source_is_refused_unless_reload(src, dst, mirror):
    src.set(PREFIX + "/a", "1")
    dst.set("/__replication/replica", str(src.index() + 5000))
    m = mirror(src.url, dst.url, "--src-prefix", PREFIX, healthy=False)
    assert m.wait_exit(30) == 1
    assert "restored from a backup" in m.log() and "--reload" in m.log()
    mirror(src.url, dst.url, "--reload", "--src-prefix", PREFIX)
    assert int(dst.get("/__replication/replica")[1]["node"]["value"]) <= src.index()


def test_divergence_resync_reconciles_and_goes_on(src, dst, mirror):
    src.set(PREFIX + "/a", "1")
    m = mirror(src.url, dst.url, "--reload", "--src-prefix", PREFIX,
               "--on-divergence", "resync")
    dst.set(IMAGE + "/b", "written behind the mirror's back")
    src.set(PREFIX + "/b", "source", prevExist=False)
    wait_for(lambda: dst.tree(IMAGE) == src.tree(PREFIX))
    wait_for(lambda: m.metric("etcdmirror_resyncs_total", 'reason="divergence"') == 1)
    assert m.healthy()


@pytest.mark.parametrize("index, current, fails", [(10, 10, False), (9, 10, False),
                                                   (11, 10, True)])
def test_rollback_rule(index, current, fails):
    if fails:
        with pytest.raises(MirrorFatal):
            guards.check_not_rolled_back(index, current)
    else:
        guards.check_not_rolled_back(index, current)


def test_identity_rule():
    guards.check_same_source(None, "abc", "s")   # nothing recorded yet: adopt
    guards.check_same_source("abc", None, "s")   # header missing: nothing to compare
    guards.check_same_source("abc", "abc", "s")
    with pytest.raises(MirrorFatal):
        guards.check_same_source("abc", "def", "s")


def delivery(index):
    """What the watch window hands over for the event at ``index``."""
    node = {"key": f"/a/k{index}", "value": "v", "modifiedIndex": index}
    return Answer.from_payload({"action": "set", "node": node}, 6)


def test_an_event_at_or_below_the_applied_index_is_never_applied():
    """Duplicate or stale deliveries (e.g. after a reconnect) are dropped."""
    status = st.MirrorStatus("s", "d", "/a", "/b", "/__replication/b")
    applied = []

    deliveries = [delivery(5), delivery(5), delivery(3), delivery(6)]

    class Source(QuietSource):
        def next(self):
            if not deliveries:
                c.stop()
                return defer.Deferred()
            return defer.succeed(deliveries.pop(0))

    class Replica:
        def apply(self, event, replaying=False):
            applied.append(event.modifiedIndex)
            return defer.succeed(Outcome.APPLIED)

    checkpoint = RecordingCheckpoint()
    c = ReplicationController(Source, Replica(), checkpoint, KeyMapper("/a", "/b"), status,
                              Metrics(CollectorRegistry(), status, "u", "/b"), Clock(),
                              Options(batch=BatchSettings(persist_events=1)),
                              transient=is_transient)
    c.index = c.checkpoint.persisted_index = 4
    c._replicate()
    assert applied == [5, 6]
    assert ("/__replication/b", "6") in checkpoint.puts
