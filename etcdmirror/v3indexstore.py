"""The replication checkpoint and its sibling keys on an etcd v3 destination.

The same key names as on v2 (:mod:`etcdmirror.indexstore`): ``/__replication``
+ destination prefix, holding the source revision (or, from a v2 source, the
source index) the replica is complete up to, as a plain integer; the sibling
keys ``.source-cluster-id``, ``.resync-in-progress`` and ``.fresh-as-of`` next to
it; all in the v3 keyspace.

The checkpoint is written by the changes' own transactions
(:class:`~etcdmirror.v3replica.V3ReplicaWriter`), so this store is *atomic*:
there is no replay horizon (reading it gives None, writing it does nothing),
and writing the index (progress on a quiet prefix) goes through the writer,
compared like every change.
"""

from typing import Optional

from twisted.internet import defer

from etcdmirror.indexstore import index_in
from etcdmirror.keys import KeyMapper
from etcdmirror.v3mapping import raw, text
from etcdmirror.v3replica import V3ReplicaWriter


class V3IndexStore:
    """The :class:`~etcdmirror.roles.Checkpoint` on an etcd v3 destination."""

    #: The checkpoint moves with the data: no horizon, no batches needed.
    atomic = True

    def __init__(self, writer: V3ReplicaWriter, mapper: KeyMapper) -> None:
        self.writer = writer
        self.client = writer.client
        self.key = mapper.index_key
        self.source_id_key = self.key + ".source-cluster-id"
        self.resync_marker_key = self.key + ".resync-in-progress"
        self.fresh_as_of_key = self.key + ".fresh-as-of"

    @defer.inlineCallbacks
    def read_index(self):
        """Fires with the checkpoint; :class:`MirrorFatal` when missing or not a number."""
        value = yield self._read(self.key)
        index = index_in(value, self.key, "the v3 keyspace of the destination "
                         f"{self.client.cluster.display}")
        self.writer.applied = index
        return index

    @defer.inlineCallbacks
    def write_index(self, index: int):
        """Progress with no change, or the end of a resync: moves the checkpoint
        through the writer, compared like every change; fires with None.

        After a ``--reload`` from another source the index may go down: the
        checkpoint is then the new source's, exactly.
        """
        if self.writer.applied is None:
            yield self.writer.load()  # a reload starts without reading it
        if index != self.writer.applied:
            yield self.writer.move_checkpoint(index)

    def read_horizon(self) -> defer.Deferred:
        return defer.succeed(None)

    def write_horizon(self, index: int) -> defer.Deferred:
        return defer.succeed(None)

    def claim(self) -> defer.Deferred:
        """At every start: the writer learns where the checkpoint is."""
        return self.writer.load()

    def read_source_id(self) -> defer.Deferred:
        return self._read(self.source_id_key)

    def write_source_id(self, cluster_id: str) -> defer.Deferred:
        return self.client.put(raw(self.source_id_key), raw(cluster_id))

    def read_resync_marker(self) -> defer.Deferred:
        return self._read(self.resync_marker_key)

    def mark_resync(self, reason: str) -> defer.Deferred:
        return self.client.put(raw(self.resync_marker_key), raw(reason))

    def clear_resync_marker(self) -> defer.Deferred:
        return self.client.delete_range(raw(self.resync_marker_key))

    def read_fresh_as_of(self) -> defer.Deferred:
        return self._read(self.fresh_as_of_key)

    def write_fresh_as_of(self, value: str) -> defer.Deferred:
        return self.client.put(raw(self.fresh_as_of_key), raw(value))

    @defer.inlineCallbacks
    def _read(self, key: str):
        found = yield self.client.range(raw(key))
        value: Optional[str] = text(found.kvs[0].value) if found.kvs else None
        return value
