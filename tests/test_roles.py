"""The seam: the controller, resync and verify work against any implementation of
the three roles (:mod:`etcdmirror.roles`); tests/test_structure.py checks that
they import no etcd v2 module.

Here the roles are small in-memory stand-ins, driven on a fake clock: what is
checked is the controller's own contract with the roles (order, checkpoint,
resync through snapshots), not etcd's behaviour, which the v2 implementations
are tested for against real servers everywhere else.
"""

from etcdmirror import status as st
from etcdmirror.keys import KeyMapper
from etcdmirror.resync import NodeState
from etcdmirror.verify import verify_once
from tests.fakes import MemoryCheckpoint, MemoryReplica, MemorySource, mirror

def test_events_are_applied_in_order_and_checkpointed():
    checkpoint = MemoryCheckpoint(index=0)
    c, source, replica, clock = mirror(checkpoint)
    for i in range(3):
        source.write(f"/a/k{i}", str(i))
    done = c.run()
    assert replica.applied == [1, 2, 3] and c.index == 3
    assert c.status.state is st.State.REPLICATING and checkpoint.index == 0
    clock.advance(1)                                   # the batch is written
    assert checkpoint.index == 3 and checkpoint.source_id == "memory-source"
    source.write("/a/k0", "again")
    assert replica.applied == [1, 2, 3, 4]
    assert replica.tree["/b/a/k0"] == NodeState(False, "again")
    c.stop()
    results = []
    done.addCallback(results.append)
    assert results == [0] and checkpoint.index == 4


def test_a_cleared_index_resyncs_through_the_snapshots():
    checkpoint = MemoryCheckpoint(index=1)
    c, source, replica, clock = mirror(checkpoint)
    for i in range(5):
        source.write(f"/a/k{i}", str(i))
    source.floor = 3                                   # history before 4 is gone
    replica.tree["/b/a/stale"] = NodeState(False, "not on the source")
    c.run()
    assert checkpoint.marks == ["index_cleared"] and checkpoint.marker is None
    assert replica.tree == {f"/b/a/k{i}": NodeState(False, str(i)) for i in range(5)}
    assert c.index == 5 and checkpoint.index == 5
    c.stop()


def test_verify_compares_the_two_snapshots():
    mapper = KeyMapper("/a", "/b")
    source, replica = MemorySource(), MemoryReplica(mapper)
    source.write("/a/x", "1")
    replica.tree["/b/a/x"] = NodeState(False, "2")
    found = []
    verify_once(source, replica, mapper).addCallback(found.extend)
    assert [(d.key, d.kind) for d in found] == [("/b/a/x", "value")]
