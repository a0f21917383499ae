"""The three roles the replication controller talks to, in etcd-neutral words.

The controller, the guards, resync, verify and the side jobs see a source and
a replica only through these interfaces.  Today's implementations speak etcd
v2 (:mod:`etcdmirror.v2source`, :mod:`etcdmirror.v2replica`,
:mod:`etcdmirror.indexstore`); another API on either side means new
implementations of these roles, not edits across the controller.

Words used here:

* an *index* is a position in the source's history (etcd v2: the
  ``modifiedIndex`` / ``X-Etcd-Index``; etcd v3: a revision);
* a *position* says where a cluster is now: its index and its identity
  (:class:`~etcdmirror.answers.WatchProgress`, ``etcd_index`` and
  ``cluster_id``);
* a *snapshot* is a flattened tree under a prefix read at one index
  (:class:`~etcdmirror.resync.Snapshot`).
"""

from typing import Any, Dict

from twisted.internet import defer

try:
    from typing import Protocol
except ImportError:  # pragma: no cover - Python < 3.8
    Protocol = object  # type: ignore


class SourceReader(Protocol):
    """Where events come from: one prefix of the source cluster."""

    #: The cluster, for messages (never with credentials).
    display: str
    #: The etcd API read: "v2" or "v3" (their keyspaces are separate).
    api: str
    #: How many connections reading the source may hold at once.
    connections_needed: int

    def position(self) -> defer.Deferred:
        """Fires with the source's position now, read through its quorum."""

    def snapshot(self) -> defer.Deferred:
        """Fires with a :class:`~etcdmirror.resync.Snapshot` of the prefix at one index."""

    def follow(self, index: int) -> None:
        """Hand out events from ``index`` on (forgets what came before)."""

    def next(self) -> defer.Deferred:
        """Fires with the next event in index order, or with progress without events.

        An event is an :class:`~etcdmirror.answers.Answer`; progress is a
        :class:`~etcdmirror.answers.WatchProgress` (nothing under the prefix
        up to its index).  Fails with ``etcd.EtcdEventIndexCleared`` when the
        source no longer holds the history asked for.
        """

    def close(self) -> None:
        """Stop reading (a resync or a stop); :meth:`follow` starts again."""

    def describe(self) -> Dict[str, Any]:
        """How the source is being read right now (``/status``'s ``watch``)."""


class ReplicaWriter(Protocol):
    """Where events go: the image of the prefix on the destination cluster."""

    display: str
    #: The etcd API written: "v2" or "v3".
    api: str
    #: How many events may be on their way at once: :meth:`apply` lands them
    #: in the order called (the controller treats a writer without it as 1).
    in_flight: int
    #: True when each event lands only after the one before (its verdict read
    #: at that point): events on one key may then be in flight together; optional.
    chained: bool

    def position(self) -> defer.Deferred:
        """Fires with the destination's position (its own index and identity)."""

    def apply(self, event: Any, replaying: bool = False) -> defer.Deferred:
        """Apply one event, after every one applied before; fires with an
        :class:`~etcdmirror.applier.Outcome`.

        Fails with :class:`~etcdmirror.applier.Divergence` when the replica
        holds what the source never had at this point; ``replaying`` relaxes
        that check for events that may have been applied before a crash.
        """

    def snapshot(self) -> defer.Deferred:
        """Fires with a :class:`~etcdmirror.resync.Snapshot` of the replica's image."""

    def as_held(self, nodes: Dict[str, Any]) -> Dict[str, Any]:
        """The source snapshot's nodes as this replica can hold them (v3: no
        directories), for a resync's plan and verify; optional."""

    def write_plan(self, plan: Any, retry: Any, log_writes: bool = True) -> defer.Deferred:
        """Carry out a resync's :class:`~etcdmirror.resync.Plan`; fires with None.

        Every step is idempotent, so an interrupted plan can be carried out
        again from a fresh snapshot.
        """


class Checkpoint(Protocol):
    """Where the replica records how far it is (today: keys on the destination)."""

    #: The index key's name, for messages.
    key: str
    #: True when the replica writer moves the index with each event, in the
    #: same transaction (etcd v3): no replay horizon, no batches; optional.
    atomic: bool

    def claim(self) -> defer.Deferred:
        """Make the record this mirror's alone (``--ha``): a mirror that wrote it
        before can no longer move it.  Fires with None; may do nothing."""

    def read_index(self) -> defer.Deferred:
        """Fires with the recorded index; fails with MirrorFatal when there is none."""

    def write_index(self, index: int) -> defer.Deferred:
        """Record that every event up to ``index`` is applied; fires once written."""

    def read_horizon(self) -> defer.Deferred:
        """Fires with the replay horizon (no event above it was applied), or None."""

    def write_horizon(self, index: int) -> defer.Deferred:
        """Record a replay horizon before applying events up to ``index``; fires once written."""

    def read_source_id(self) -> defer.Deferred:
        """Fires with the recorded source identity, or None."""

    def write_source_id(self, cluster_id: str) -> defer.Deferred:
        """Record the source's identity; fires once written."""

    def read_resync_marker(self) -> defer.Deferred:
        """Fires with the reason of a resync that did not finish, or None."""

    def mark_resync(self, reason: str) -> defer.Deferred:
        """Record that a resync is writing (the replica may be ahead of its index);
        fires once written."""

    def clear_resync_marker(self) -> defer.Deferred:
        """The resync finished, the index is the snapshot's; fires once recorded."""

    def read_fresh_as_of(self) -> defer.Deferred:
        """Fires with the recorded freshness text, or None."""

    def write_fresh_as_of(self, value: str) -> defer.Deferred:
        """Record when the replica was last known identical to the source; fires once written."""



class NoKeeper:
    """The TTL keeper of a mirror whose replica needs none.

    etcd v2 replicas need one (:class:`~etcdmirror.ttlkeeper.TtlKeeper`):
    keys renewed on the source with ``refresh=true`` send no event.  The
    controller calls these at the same points whatever the keeper.
    """

    def __init__(self, **hooks: Any) -> None:
        pass

    def load(self) -> defer.Deferred:
        """Fires with 0: no TTL'd node is tracked."""
        return defer.succeed(0)

    def start(self) -> None:
        pass

    def stop(self) -> None:
        pass

    def applied(self, event: Any, outcome: Any) -> None:
        pass

    def track_snapshot(self, nodes: Any, etcd_index: int, read_at: float,
                       present: bool = False) -> None:
        pass

    def describe(self) -> None:
        return None
