"""The replication index and its sibling keys on the destination.

The index key and its format are etcd-mirror 0.0.12's: ``/__replication`` +
destination prefix (``/__replication/__ROOT__`` for ``/``), holding a plain
integer, the source index the replica is complete up to.  Everything else we
need lives in sibling keys next to it, never in that value, so that 0.0.12 can
continue from an index we wrote and we from one it wrote:

* ``<index>.source-cluster-id``: the source's X-Etcd-Cluster-Id;
* ``<index>.resync-in-progress``: present while a resync writes (a resync cut
  short leaves the replica ahead of its index; the next start finishes it);
* ``<index>.replay-horizon``: no event above this index has been applied.
  The index is persisted in batches, so after a crash the events between the
  persisted index and the horizon may be applied already and are replayed
  with relaxed checks;
* ``<index>.fresh-as-of``: when the replica was last known identical to the
  source (:mod:`etcdmirror.freshness`);
* ``<index>.probe``: never written; reading it tells the destination's index
  (credentials limited to the index keys may read it);
* ``<index>.lock``: the HA lock (``--ha``, :mod:`etcdmirror.halock`).

With ``--ha`` the store is *exclusive*: :meth:`IndexStore.claim` rewrites the
index and the horizon as they are, and every later write of either is a
compare-and-swap on the ``modifiedIndex`` we last left them at.  A mirror
that lost the lock while frozen then cannot move the index or the horizon
once the new holder has claimed them: its write fails, and it steps down.

Every sibling key's name is here and nowhere else.
"""

from typing import Dict, Optional

import etcd
from twisted.internet import defer

from etcdmirror.client import EtcdClient
from etcdmirror.errors import LostLease, MirrorFatal
from etcdmirror.keys import KeyMapper

#: A claim that keeps losing its compare-and-swap: someone keeps writing.
CLAIM_TRIES = 5



def index_in(value: Optional[str], key: str, where: str) -> int:
    """The index a replication key holds; :class:`MirrorFatal` when missing or not a number."""
    if value is None:
        raise MirrorFatal(f"The replication key {key} could not be found on {where}. "
                          "Restart with --reload!")
    try:
        return int(value)
    except (TypeError, ValueError):
        raise MirrorFatal(f"The replication key {key} holds {value!r}, not an etcd index. "
                          "Restart with --reload!") from None


class IndexStore:
    """The :class:`~etcdmirror.roles.Checkpoint` on an etcd v2 destination (no retries here)."""

    def __init__(self, destination: EtcdClient, mapper: KeyMapper,
                 exclusive: bool = False) -> None:
        self.destination = destination
        self.exclusive = exclusive
        #: Exclusive: the ``modifiedIndex`` of each claimed key as we last left
        #: it (None: absent).
        self._versions: Dict[str, Optional[int]] = {}
        self.key = mapper.index_key
        self.source_id_key = self.key + ".source-cluster-id"
        self.resync_marker_key = self.key + ".resync-in-progress"
        self.horizon_key = self.key + ".replay-horizon"
        self.fresh_as_of_key = self.key + ".fresh-as-of"
        self.lock_key = self.lock_key_for(mapper)
        self.probe_key = self.probe_key_for(mapper)

    @staticmethod
    def lock_key_for(mapper: KeyMapper) -> str:
        """The HA lock's key (``--ha``)."""
        return mapper.index_key + ".lock"

    @staticmethod
    def probe_key_for(mapper: KeyMapper) -> str:
        """The destination key a probe reads (before there is a client to store with)."""
        return mapper.index_key + ".probe"

    @defer.inlineCallbacks
    def read_index(self):
        """Fires with the persisted index; :class:`MirrorFatal` when missing or not a number."""
        value = yield self._read(self.key)
        return index_in(value, self.key, f"the destination {self.destination.cluster.display}")

    def write_index(self, index: int) -> defer.Deferred:
        """Fires once the index is written."""
        return self._write_claimed(self.key, str(index))

    @defer.inlineCallbacks
    def read_horizon(self):
        """Fires with the replay horizon, or None (never written, e.g. by 0.0.12)."""
        value = yield self._read(self.horizon_key)
        try:
            return int(value) if value is not None else None
        except ValueError:
            return None

    def write_horizon(self, index: int) -> defer.Deferred:
        """Fires once the replay horizon is written."""
        return self._write_claimed(self.horizon_key, str(index))

    @defer.inlineCallbacks
    def claim(self):
        """Exclusive: make the index and the horizon ours (see the module docstring).

        Fires with None; does nothing unless exclusive.
        """
        if self.exclusive:
            for key in (self.key, self.horizon_key):
                yield self._claim(key)

    @defer.inlineCallbacks
    def _claim(self, key: str):
        for _ in range(CLAIM_TRIES):
            node = yield self.destination.get_or_none(key)
            if node is None:
                self._versions[key] = None
                return
            try:
                answer = yield self.destination.put(key, node.value,
                                                    prev_index=node.modifiedIndex)
            except etcd.EtcdCompareFailed:
                continue  # written between our read and our write: look again
            self._versions[key] = answer.event.modifiedIndex
            return
        raise LostLease(f"{key} on the destination keeps changing while this mirror claims "
                        "it: another mirror is writing it")

    @defer.inlineCallbacks
    def _write_claimed(self, key: str, value: str):
        if not self.exclusive:
            answer = yield self.destination.put(key, value)
            return answer
        if key not in self._versions:
            yield self._claim(key)
        version = self._versions[key]
        try:
            if version is None:
                answer = yield self.destination.put(key, value, prev_exist=False)
            else:
                answer = yield self.destination.put(key, value, prev_index=version)
        except (etcd.EtcdCompareFailed, etcd.EtcdAlreadyExist, etcd.EtcdKeyNotFound):
            node = yield self.destination.get_or_none(key)
            if node is not None and node.value == value:
                # Our own earlier try landed; its answer was lost.
                self._versions[key] = node.modifiedIndex
                return None
            found = "no key" if node is None else repr(node.value)
            raise LostLease(f"{key} was changed by another mirror since this one last wrote "
                            f"it (found {found}, was writing {value!r}): another mirror holds "
                            "the HA lock") from None
        self._versions[key] = answer.event.modifiedIndex
        return answer

    def read_source_id(self) -> defer.Deferred:
        """Fires with the recorded X-Etcd-Cluster-Id of the source, or None."""
        return self._read(self.source_id_key)

    def write_source_id(self, cluster_id: str) -> defer.Deferred:
        """Fires once the source's cluster id is recorded."""
        return self.destination.put(self.source_id_key, cluster_id)

    def read_resync_marker(self) -> defer.Deferred:
        """Fires with the reason of a resync cut short, or None."""
        return self._read(self.resync_marker_key)

    def mark_resync(self, reason: str) -> defer.Deferred:
        """Fires once the resync marker holds ``reason``."""
        return self.destination.put(self.resync_marker_key, reason)

    def clear_resync_marker(self) -> defer.Deferred:
        """Fires with None once the marker is gone (also when it was not there)."""
        return self._delete(self.resync_marker_key)

    def read_fresh_as_of(self) -> defer.Deferred:
        """Fires with the published freshness (:class:`~etcdmirror.freshness.FreshAsOf` text)."""
        return self._read(self.fresh_as_of_key)

    def write_fresh_as_of(self, value: str) -> defer.Deferred:
        """Fires once the freshness is published."""
        return self.destination.put(self.fresh_as_of_key, value)

    @defer.inlineCallbacks
    def _read(self, key: str):
        node = yield self.destination.get_or_none(key)
        return node.value if node is not None else None

    @defer.inlineCallbacks
    def _delete(self, key: str):
        try:
            yield self.destination.delete(key)
        except etcd.EtcdKeyNotFound:
            pass
