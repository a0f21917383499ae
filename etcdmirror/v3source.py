"""An etcd v3 prefix as the mirror's :class:`~etcdmirror.roles.SourceReader`.

Events come from one watch on the prefix, from the revision after the
checkpoint, with ``prev_kv`` (the destination compares each key with it:
:mod:`etcdmirror.v3mapping`).  The events of one source revision (a
transaction on several keys) are handed out together, as one
:class:`~etcdmirror.v3mapping.Revision`: etcd sends them in one watch message
(the watch is created without ``fragment``).

A quiet prefix moves too, so that the checkpoint follows the source and a
restart after a quiet day starts inside the history.  etcd 3.4's progress
report is no proof of quiet (it comes before the history of a watch started
in the past: ``v3client.V3Client.watch``), so when the watch saw nothing for
``idle_timeout`` seconds the reader *proves* it with three reads, each at one
revision: the keys under the prefix modified at or after the next revision,
as of now (revision R, from its header), must be none, and the number of
keys must be the same at R as just before the next revision (no creation,
so the same count means no deletion either).  The first read scans the
prefix on the server (etcd filters by modification after counting, so a
count cannot answer it).  Then nothing
under the prefix happened up to R: a :class:`~etcdmirror.events.WatchProgress`.

A start revision that was compacted away fails :meth:`next` with
:class:`~etcdmirror.v3wire.V3Compacted`, which is an
``etcd.EtcdEventIndexCleared``: the controller resyncs as it does for a
cleared v2 index, counted as ``reason="compacted"``.
"""

from collections import deque
from dataclasses import dataclass
from typing import Any, Deque, Dict, List, Optional

from twisted.internet import defer
from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.python.failure import Failure

from etcdmirror.events import WatchProgress
from etcdmirror.keys import INDEX_ROOT, is_under
from etcdmirror.resync import NodeState, Snapshot
from etcdmirror.v3client import V3Client, V3Watch
from etcdmirror.v3mapping import Revision, raw, text
from etcdmirror.v3wire import WatchEvent, WatchResponse, keys_below

#: Keys read per request of a snapshot.
SNAPSHOT_PAGE = 1000


@dataclass(frozen=True)
class Delivery:
    """One source revision's changes, as the controller takes an event."""

    event: Revision
    etcd_index: int
    cluster_id: str


class V3SourceReader:
    """Reads one prefix of an etcd v3 source, revision by revision."""

    api = "v3"
    connections_needed = 1

    def __init__(self, client: V3Client, prefix: str, clock: IReactorTime,
                 idle_timeout: float = 5.0, on_source_index: Any = None,
                 on_registered: Any = None) -> None:
        self.client = client
        self.display = client.cluster.display
        self.key, self.range_end = keys_below(raw(prefix))
        self.clock = clock
        self.idle_timeout = idle_timeout
        self._on_source_index = on_source_index or (lambda index: None)
        self._on_registered = on_registered or (lambda: None)
        self._next_revision = 1
        self._ready: Deque[Any] = deque()
        self._waiter: Optional[defer.Deferred] = None
        self._watch: Optional[V3Watch] = None
        self._idle: Optional[IDelayedCall] = None
        self._failure: Optional[Failure] = None
        self.watches_opened = 0

    # -- the role ------------------------------------------------------------------

    @defer.inlineCallbacks
    def position(self):
        """The source's revision now (a linearizable read) and its cluster id."""
        found = yield self.client.range(self.key, self.range_end, limit=1, keys_only=True)
        return WatchProgress(found.header.revision, found.header.cluster_id)

    def snapshot(self) -> defer.Deferred:
        """Every key under the prefix at one revision, but replication keys (as v2
        hides them: :mod:`etcdmirror.v3mapping`); fires with a Snapshot."""
        return read_snapshot(self.client, self.key, self.range_end).addCallback(_unhidden)

    def follow(self, index: int) -> None:
        """Hand out revisions from ``index`` on."""
        self.close()
        self._next_revision = index
        self._ready.clear()
        self._failure = None

    def next(self) -> defer.Deferred:
        """Fires with the next :class:`Delivery`, or progress (:class:`WatchProgress`)."""
        if self._ready:
            return defer.succeed(self._ready.popleft())
        if self._failure is not None:
            failure, self._failure = self._failure, None
            return defer.fail(failure)
        if self._watch is None:
            self._open()
        self._waiter = defer.Deferred(lambda _: self._cancelled())
        return self._waiter

    def close(self) -> None:
        """Stop watching (a resync or a stop); :meth:`next` opens a watch again."""
        self._stop_timer()
        watch, self._watch = self._watch, None
        if watch is not None:
            watch.cancel()

    def describe(self) -> Dict[str, Any]:
        return {"api": "v3", "next_revision": self._next_revision,
                "watching": self._watch is not None, "revisions_waiting": len(self._ready),
                "watches_opened": self.watches_opened}

    # -- the watch -------------------------------------------------------------------

    def _open(self) -> None:
        self.watches_opened += 1
        watch = self.client.watch(self.key, self.range_end, self._next_revision,
                                  self._received, prev_kv=True)
        self._watch = watch
        watch.done.addBoth(self._ended, watch)
        self._arm_timer()

    def _received(self, response: WatchResponse) -> None:
        self._on_source_index(response.header.revision)
        if response.created:
            self._on_registered()
            return
        self._arm_timer()
        for revision in _by_revision(response.events):
            if revision.modifiedIndex < self._next_revision:
                continue  # already handed out (a watch opened again)
            self._next_revision = revision.modifiedIndex + 1
            self._deliver(Delivery(revision, max(response.header.revision,
                                                 revision.modifiedIndex),
                                   response.header.cluster_id))

    def _deliver(self, item: Any) -> None:
        waiter, self._waiter = self._waiter, None
        if waiter is not None:
            waiter.callback(item)
        else:
            self._ready.append(item)

    def _ended(self, result: Any, watch: V3Watch) -> None:
        if watch is not self._watch:
            return None  # a watch we closed ourselves
        self._watch = None
        self._stop_timer()
        if isinstance(result, Failure):
            waiter, self._waiter = self._waiter, None
            if waiter is not None:
                waiter.errback(result)
            else:
                self._failure = result
        elif self._waiter is not None:
            self._open()  # the server ended the stream: watch again
        return None

    def _arm_timer(self) -> None:
        self._stop_timer()
        self._idle = self.clock.callLater(self.idle_timeout, self._renew)

    def _stop_timer(self) -> None:
        if self._idle is not None and self._idle.active():
            self._idle.cancel()
        self._idle = None

    def _renew(self) -> None:
        """Nothing for a while: prove the quiet (module docstring), then look again later."""
        self._idle = None
        since = self._next_revision
        d = self._quiet_until(since)
        # A failed proof proves nothing; the next idle period tries again.
        d.addCallbacks(self._proved, lambda failure: None, callbackArgs=(since,))
        self._arm_timer()

    @defer.inlineCallbacks
    def _quiet_until(self, since: int):
        """The revision up to which nothing under the prefix changed from ``since`` on,
        or None when something did (its events are on their way)."""
        # Not count_only: etcd counts before it filters by modification.
        changed = yield self.client.range(self.key, self.range_end, keys_only=True,
                                          min_mod_revision=since)
        if changed.kvs:
            return None
        now = changed.header.revision
        if now < since:
            # Nothing at all since the last proof: the same progress again, so
            # that a checkpoint write that was not due then is made now.
            return (since - 1, changed.header.cluster_id) if since > 1 else None
        after = yield self.client.range(self.key, self.range_end, count_only=True,
                                        revision=now)
        before = 0
        if since > 1:  # revision 0 would mean "now"
            before = (yield self.client.range(self.key, self.range_end, count_only=True,
                                              revision=since - 1)).count
        return (now, after.header.cluster_id) if after.count == before else None

    def _proved(self, quiet: Any, since: int) -> None:
        if quiet is None or self._next_revision != since or self._watch is None:
            return  # something changed, or the reader moved on meanwhile
        revision, cluster_id = quiet
        self._next_revision = max(self._next_revision, revision + 1)
        self._deliver(WatchProgress(revision, cluster_id))

    def _cancelled(self) -> None:
        self._waiter = None
        self.close()



@defer.inlineCallbacks
def read_snapshot(client: V3Client, key: bytes, range_end: bytes):
    """Every key in ``[key, range_end)`` at one revision, :data:`SNAPSHOT_PAGE` keys a
    request; fires with a :class:`Snapshot`.

    Keys and values are text (UTF-8, any other byte kept as it is); a key with
    a lease carries it and the lease's remaining TTL (asked once per lease).
    """
    nodes: Dict[str, NodeState] = {}
    revision, cluster_id, start = 0, "", key
    leased: Dict[str, Any] = {}
    while True:
        page = yield client.range(start, range_end, revision=revision, limit=SNAPSHOT_PAGE)
        revision = revision or page.header.revision
        cluster_id = cluster_id or page.header.cluster_id
        for kv in page.kvs:
            nodes[text(kv.key)] = NodeState(False, text(kv.value))
            if kv.lease:
                leased[text(kv.key)] = kv.lease
        if not page.more or not page.kvs:
            break
        start = page.kvs[-1].key + b"\0"
    ttls: Dict[int, int] = {}
    for name, lease in leased.items():
        if lease not in ttls:
            ttls[lease] = (yield client.lease_time_to_live(lease))[0]
        nodes[name] = NodeState(False, nodes[name].value, max(ttls[lease], 0), lease)
    return Snapshot(nodes, revision, cluster_id)


def _unhidden(snapshot: Snapshot) -> Snapshot:
    snapshot.nodes = {key: node for key, node in snapshot.nodes.items()
                      if not is_under(key, INDEX_ROOT)}
    return snapshot


def _by_revision(events: List[WatchEvent]) -> List[Revision]:
    """The events of one watch message, grouped by the revision that made them."""
    groups: List[Revision] = []
    for event in events:
        revision = event.kv.mod_revision  # a delete's too: the revision of the delete
        if groups and groups[-1].modifiedIndex == revision:
            groups[-1].events.append(event)
        else:
            groups.append(Revision(revision, [event]))
    return groups
