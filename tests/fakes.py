"""Stand-ins for the three roles (:mod:`etcdmirror.roles`), for tests of the
controller's own logic on a fake clock.

They model what the controller relies on (order, snapshots, a history floor),
never etcd's behaviour: that is tested against real servers.
"""

import etcd
from prometheus_client import CollectorRegistry
from twisted.internet import defer
from twisted.internet.task import Clock

from etcdmirror import status as st
from etcdmirror.controller import Options, ReplicationController
from etcdmirror.events import Event, Outcome, WatchProgress
from etcdmirror.keys import KeyMapper
from etcdmirror.metrics import Metrics
from etcdmirror.resync import NodeState, Snapshot


class RecordingCheckpoint:
    """Records index and horizon writes; answers nothing else."""

    key = "/__replication/b"

    def __init__(self):
        self.puts = []

    def write_index(self, index):
        self.puts.append((self.key, str(index)))
        return defer.succeed(None)

    def write_horizon(self, index):
        self.puts.append((self.key + ".replay-horizon", str(index)))
        return defer.succeed(None)


class QuietSource:
    """A source reader whose watches never answer (until cancelled)."""

    display = "http://s:1"

    def __init__(self, **hooks):
        self.waits = []

    def follow(self, index):
        pass

    def close(self):
        pass

    def describe(self):
        return {}

    def next(self):
        d = defer.Deferred(lambda d: self.waits.append("cancelled"))
        self.waits.append(d)
        return d


def event(action, key, index, value=None):
    return Event(key, value, False, None, None, index, action, None)


def v2_event(action, key, value=None, prev=None, index=9, is_dir=False, ttl=None):
    """An event as a v2 watch answer carries it (``prev``: the prevNode's value)."""
    node = {"key": key, "modifiedIndex": index}
    if value is not None:
        node["value"] = value
    if is_dir:
        node["dir"] = True
    if ttl is not None:
        node["ttl"] = ttl
    payload = {"action": action, "node": node}
    if prev is not None:
        payload["prevNode"] = {"key": key, "value": prev, "modifiedIndex": index - 1}
    return Event.from_payload(payload)


class Delivery:
    """What a source reader hands out for one event."""

    def __init__(self, e, etcd_index):
        self.event, self.etcd_index, self.cluster_id = e, etcd_index, "memory-source"


class MemorySource:
    """A source prefix as a tree, a history of events, and a history floor."""

    display = "memory://source"
    connections_needed = 1

    def __init__(self, **hooks):
        self.tree, self.history, self.index, self.floor = {}, [], 0, 0
        self.next_index = None
        self.waiting = None

    def write(self, key, value):
        """A write on the source: a watcher waiting for it gets the event."""
        self.index += 1
        self.tree[key] = NodeState(False, value)
        self.history.append(event("set", key, self.index, value))
        waiting, self.waiting = self.waiting, None
        if waiting is not None:
            self.next().chainDeferred(waiting)

    def position(self):
        return defer.succeed(WatchProgress(self.index, "memory-source"))

    def snapshot(self):
        return defer.succeed(Snapshot(dict(self.tree), self.index, "memory-source"))

    def follow(self, index):
        self.next_index = index

    def close(self):
        pass

    def describe(self):
        return {}

    def next(self):
        if self.next_index <= self.floor:
            return defer.fail(etcd.EtcdEventIndexCleared("index cleared", payload={}))
        for e in self.history:
            if e.modifiedIndex >= self.next_index:
                self.next_index = e.modifiedIndex + 1
                return defer.succeed(Delivery(e, self.index))
        self.waiting = defer.Deferred()
        return self.waiting


class MemoryReplica:
    display = "memory://replica"

    def __init__(self, mapper):
        self.mapper, self.tree, self.applied = mapper, {}, []

    def position(self):
        return defer.succeed(WatchProgress(0, "memory-replica"))

    def apply(self, e, replaying=False):
        self.applied.append(e.modifiedIndex)
        self.tree[self.mapper.to_dst(e.key)] = NodeState(False, e.value)
        return defer.succeed(Outcome.APPLIED)

    def snapshot(self):
        return defer.succeed(Snapshot(dict(self.tree), 0, "memory-replica"))

    def write_plan(self, plan, retry, log_writes=True):
        for key, node, _ in plan.writes:
            self.tree[key] = node
        for key, _ in plan.deletes:
            del self.tree[key]
        return defer.succeed(None)


class MemoryCheckpoint:
    key = "memory-index"

    def __init__(self, index=None):
        self.index, self.horizon, self.source_id, self.marker = index, None, None, None
        self.marks = []

    def claim(self):
        return defer.succeed(None)

    def read_index(self):
        return defer.succeed(self.index)

    def write_index(self, index):
        self.index = index
        return defer.succeed(None)

    def read_horizon(self):
        return defer.succeed(self.horizon)

    def write_horizon(self, index):
        self.horizon = index
        return defer.succeed(None)

    def read_source_id(self):
        return defer.succeed(self.source_id)

    def write_source_id(self, cluster_id):
        self.source_id = cluster_id
        return defer.succeed(None)

    def read_resync_marker(self):
        return defer.succeed(self.marker)

    def mark_resync(self, reason):
        self.marker = reason
        self.marks.append(reason)
        return defer.succeed(None)

    def clear_resync_marker(self):
        self.marker = None
        return defer.succeed(None)


def mirror(checkpoint, make_replica=MemoryReplica, transient=lambda error: False, **options):
    clock, mapper = Clock(), KeyMapper("/a", "/b")
    status = st.MirrorStatus("memory://source", "memory://replica", "/a", "/b", "memory-index")
    sources, replica = [], make_replica(mapper)

    def make_source(**hooks):
        sources.append(MemorySource(**hooks))
        return sources[-1]

    c = ReplicationController(make_source, replica, checkpoint, mapper, status,
                              Metrics(CollectorRegistry(), status, "memory", "/b"), clock,
                              Options(**options), transient=transient)
    return c, sources[0], replica, clock
