"""An etcd v3 prefix as the destination of a mirror: each change in one transaction.

Each source change (a v3 revision's events, or one v2 event: the v2 → v3
migration) is written with :func:`etcdmirror.v3mapping.transaction`: the
changes and the checkpoint land together, at one revision, or not at all.
So the destination never needs a replay horizon, and the verdict after a
failed transaction is read from the transaction's own failure branch:

* the checkpoint holds the change's revision: the change was applied already
  (its answer was lost; one change is in flight at a time, and a restart
  starts after the checkpoint) - :attr:`Outcome.REPLAYED`;
* the checkpoint is neither that nor the revision applied before: another
  writer moved it - :class:`Divergence`;
* a key that did not hold what the source had before the change, but
  already holds what the change leaves behind (a lease that ran out on the
  destination first), is dropped from the change and the rest is sent again;
* any other key that differs is :class:`Divergence`, naming the key, what
  was expected and what was found.

Part of issue 15: the role's snapshot, resync plan and leases come with the
v3 source reader; the controller does not use this writer yet.
"""

from typing import Any, Dict, List, Optional

from twisted.internet import defer

from etcdmirror.events import Divergence, Outcome
from etcdmirror.keys import KeyMapper
from etcdmirror.v3client import V3Client
from etcdmirror.v3mapping import Change, Revision, raw, transaction, v2_changes, v3_changes
from etcdmirror.v3wire import unb64


class V3ReplicaWriter:
    """Applies source changes to a v3 destination, each with the checkpoint."""

    #: One change at a time: each transaction compares the checkpoint the one
    #: before it wrote.
    in_flight = 1

    def __init__(self, client: V3Client, mapper: KeyMapper) -> None:
        self.client = client
        self.mapper = mapper
        self.display = client.cluster.display
        self.checkpoint_key = raw(mapper.index_key)
        #: The revision the checkpoint holds (None: none yet); :meth:`load` reads it.
        self.applied: Optional[int] = None

    @defer.inlineCallbacks
    def load(self):
        """Read the checkpoint; fires with the revision it holds, or None."""
        found = yield self.client.range(self.checkpoint_key)
        self.applied = int(found.kvs[0].value) if found.kvs else None
        return self.applied

    @defer.inlineCallbacks
    def move_checkpoint(self, revision: int):
        """Move the checkpoint to ``revision`` with no change (progress on a quiet
        prefix), compared like every change; fires with None, or Divergence."""
        result = yield self.client.txn(**transaction([], self.checkpoint_key, self.applied,
                                                     revision))
        if not result.succeeded:
            found = _found(result.responses[0])
            raise Divergence(
                f"the checkpoint {self.checkpoint_key.decode('utf-8', 'replace')!r} on the "
                f"destination holds {found!r}, not {self.applied} as this mirror wrote it: "
                "another writer moved it")
        self.applied = revision

    def apply(self, event: Any, replaying: bool = False) -> defer.Deferred:
        """Apply a v2 :class:`Event` or a v3 :class:`Revision`; fires with an Outcome.

        The checkpoint moves to the event's ``modifiedIndex``.  ``replaying``
        changes nothing here: the checkpoint says what was applied.
        """
        changes = (v3_changes(event.events, self.mapper) if isinstance(event, Revision)
                   else v2_changes(event, self.mapper))
        return self._apply(event, changes, event.modifiedIndex)

    @defer.inlineCallbacks
    def _apply(self, event: Any, changes: List[Change], revision: int):
        dropped = False
        for _ in range(2):
            result = yield self.client.txn(
                **transaction(changes, self.checkpoint_key, self.applied, revision))
            if result.succeeded:
                self.applied = revision
                if changes:
                    return Outcome.APPLIED
                return Outcome.REPLAYED if dropped else Outcome.IGNORED
            reads = [_found(r) for r in result.responses]
            checkpoint = int(reads[0]) if reads[0] is not None else None
            if checkpoint == revision:
                self.applied = checkpoint
                return Outcome.REPLAYED
            if checkpoint != self.applied:
                raise Divergence(
                    f"the checkpoint {self.checkpoint_key.decode('utf-8', 'replace')!r} on "
                    f"the destination holds {checkpoint}, not {self.applied} as this mirror "
                    f"wrote it, before revision {revision}: another writer moved it", event)
            remaining = _in_effect_dropped(changes, reads[1:], event, revision)
            dropped, changes = dropped or len(remaining) < len(changes), remaining
        raise Divergence(f"revision {revision}: the destination changed while it was "
                         "being written", event)


def _found(response: Dict[str, Any]) -> Optional[bytes]:
    """The value a failure branch's range read found, or None for no key."""
    kvs = (response.get("response_range") or {}).get("kvs") or []
    return unb64(kvs[0].get("value")) if kvs else None


def _in_effect_dropped(changes: List[Change], found: List[Optional[bytes]], event: Any,
                       revision: int) -> List[Change]:
    """The changes without those already in effect; Divergence for a key that differs."""
    compared = [c for c in changes if c.compared]
    done = set()
    for change, value in zip(compared, found):
        if value == change.before:
            continue
        if value == change.value:
            done.add(change.key)
            continue
        raise Divergence(
            f"revision {revision}: the destination key {change.key!r} holds "
            f"{_show(value)}, expected {_show(change.before)} (what the source had before "
            "this change). The destination was changed by something other than this "
            "mirror.", event)
    return [c for c in changes if c.key not in done]


def _show(value: Optional[bytes]) -> str:
    return "no key" if value is None else f"value {value!r}"
