"""An etcd v2 prefix as the mirror's :class:`~etcdmirror.roles.SourceReader`.

Snapshots are recursive ``quorum=true`` GETs, so a member cut off from its
quorum cannot hand us stale state; the answer's ``X-Etcd-Index`` is the index
the snapshot was read at.  Events come from the
:class:`~etcdmirror.watcher.WatchWindow` (many watches while behind, one
stream when caught up), which also turns quiet intervals into progress.
"""

from dataclasses import asdict
from typing import Any, Callable, Dict, Optional

import etcd
from twisted.internet import defer
from twisted.internet.interfaces import IReactorTime

from etcdmirror.client import EtcdClient
from etcdmirror.resync import NodeState, Snapshot
from etcdmirror.watcher import WatchSettings, WatchWindow


def flatten(result: Any) -> Dict[str, NodeState]:
    """Every node of a recursive GET answer (dirs included) by key."""
    nodes = {}
    for node in result.get_subtree():
        if node.key is None:  # the root of the keyspace has no key
            continue
        ttl = int(node.ttl) if node.ttl is not None else None
        nodes[node.key] = NodeState(bool(node.dir), None if node.dir else node.value, ttl)
    return nodes


@defer.inlineCallbacks
def read_snapshot(client: EtcdClient, key: str, quorum: bool = True):
    """Fires with a recursive read of ``key`` as a :class:`Snapshot` (empty when missing)."""
    try:
        answer = yield client.get(key, recursive=True, quorum=quorum)
    except etcd.EtcdKeyNotFound as e:
        return Snapshot({}, int(getattr(e, "etcd_index", 0) or 0), None)
    return Snapshot(flatten(answer.result), answer.etcd_index, answer.cluster_id)


class V2SourceReader:
    """Reads one prefix of an etcd v2 cluster: snapshots, ordered events, progress."""

    api = "v2"

    def __init__(self, client: EtcdClient, prefix: str, clock: IReactorTime,
                 settings: Optional[WatchSettings] = None,
                 on_source_index: Optional[Callable[[int], None]] = None,
                 on_registered: Optional[Callable[[], None]] = None) -> None:
        self.client = client
        self.prefix = prefix
        self.display = client.cluster.display
        settings = settings or WatchSettings()
        self.connections_needed = settings.connections_needed
        self.window = WatchWindow(client, prefix, clock, on_source_index=on_source_index,
                                  on_registered=on_registered, **asdict(settings))

    def position(self) -> defer.Deferred:
        """Fires with the source's index and cluster id, read through its quorum."""
        return self.client.probe(quorum=True)

    def snapshot(self) -> defer.Deferred:
        """Fires with a quorum snapshot of the prefix."""
        return read_snapshot(self.client, self.prefix)

    def follow(self, index: int) -> None:
        self.window.reset(index)

    def next(self) -> defer.Deferred:
        """Fires with the next event (an Answer) or progress (a WatchProgress)."""
        return self.window.next()

    def close(self) -> None:
        self.window.close()

    def describe(self) -> Dict[str, Any]:
        return self.window.describe()
