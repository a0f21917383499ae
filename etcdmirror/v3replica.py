"""An etcd v3 prefix as the destination of a mirror: each change in one transaction.

Each source change (a v3 revision's events, or one v2 event: the v2 → v3
migration) is written with :func:`etcdmirror.v3mapping.transaction`: the
changes and the checkpoint land together, at one revision, or not at all.
So the destination never needs a replay horizon, and the verdict after a
failed transaction is read from the transaction's own failure branch:

* the checkpoint holds the change's revision, or a later one this writer
  sent: the change was applied already (its answer was lost) -
  :attr:`Outcome.REPLAYED`;
* the checkpoint holds a revision between the last one applied and this
  change's: a change sent before it did not land (yet), so this one could
  not either - sent again in order (a transient error);
* the checkpoint is anything else: another writer moved it - :class:`Divergence`;
* a key that did not hold what the source had before the change, but
  already holds what the change leaves behind (a lease that ran out on the
  destination first), is dropped from the change and the rest is sent again;
* any other key that differs is :class:`Divergence`, naming the key, what
  was expected and what was found.

Several changes may be in flight at once (``--write-pipeline``, to an
``http://`` destination): they are pipelined on one connection
(:mod:`etcdmirror.v3client`, ordered), and each compares the checkpoint
with the revision before it in source order, also when it is sent again,
so etcd applies them only in source order, or not at all: a change whose
predecessor did not land (failed, or still waits for a lease) fails too,
and is sent again once the failure is settled (:mod:`etcdmirror.pipeline`).

Source revisions that wait together (handed over in one turn of the
reactor: a catch-up) go in one transaction when they change different keys
(at most :data:`GROUP_CHANGES` changes, no v2 directory delete): they land
together, at one destination revision, the checkpoint at the last of them.
Each is still applied whole, in order, exactly once; a reader of the
replica sees the state after the group, which the source had too.  Only
the verdict of a failed group is coarser: a replay or a change sent before
it that did not land is recognised as for one change; a key not as
expected sends each revision of the group again alone, for its own verdict.

A resync's plan (:mod:`etcdmirror.resync`) is written
:data:`~etcdmirror.v2replica.RESYNC_CONCURRENCY` requests at a time, every
key then every delete: v3 has no directories to write first (a v2
directory in the plan writes nothing; deleting one deletes what is below it).

A key with a source lease or a v2 TTL is written with a destination lease
(:mod:`etcdmirror.v3leases`).
"""

import logging
from dataclasses import dataclass
from functools import partial
from typing import Any, Dict, List, Optional, Set

from twisted.internet import defer
from twisted.python.failure import Failure

from etcdmirror.bounded import run_bounded
from etcdmirror.events import Divergence, Outcome, WatchProgress
from etcdmirror.keys import KeyMapper
from etcdmirror.resync import NodeState, Plan, Retry, no_retry
from etcdmirror.v2replica import RESYNC_CONCURRENCY
from etcdmirror.v3client import V3Client
from etcdmirror.v3mapping import (
    Change, Revision, raw, text, transaction, v2_changes, v3_changes)
from etcdmirror.v3source import read_snapshot
from etcdmirror.v3wire import V3Unavailable, keys_below, unb64

log = logging.getLogger(__name__)

#: Most changes (keys) in one transaction of several source revisions; etcd's
#: ``--max-txn-ops`` (128 by default) bounds its compares, writes and reads.
GROUP_CHANGES = 40


@dataclass
class _Waiting:
    """A change handed to :meth:`V3ReplicaWriter.apply`, not sent yet."""

    event: Any
    changes: List[Change]
    nothing: Outcome
    done: defer.Deferred

    @property
    def alone(self) -> bool:
        """A v2 directory delete (a range) never shares its transaction."""
        return any(change.below for change in self.changes)


class V3ReplicaWriter:
    """Applies source changes to a v3 destination, each with the checkpoint."""

    api = "v3"

    #: Each change compares the checkpoint the one before it leaves, and reads its
    #: verdict in its own transaction: changes on one key may be in flight together.
    chained = True

    def __init__(self, client: V3Client, mapper: KeyMapper, leases: Any = None,
                 pipeline: int = 1) -> None:
        """``leases``: the :class:`~etcdmirror.v3leases.LeaseKeeper` that gives leased
        keys their destination lease (None: keys are written without leases);
        ``pipeline``: changes in flight at once to an ``http://`` destination."""
        self.client = client
        self.mapper = mapper
        self.leases = leases
        self.in_flight = pipeline if client.pipelines else 1
        #: The revision the last change sent moves the checkpoint to (None: nothing
        #: sent since the checkpoint was read or moved), and the highest sent.
        self._tail: Optional[int] = None
        self._sent_max = 0
        #: What the checkpoint must hold before each revision sent and not applied
        #: yet: the revision before it in source order (kept for sending it again).
        self._before: Dict[int, Optional[int]] = {}
        #: Changes handed over in this turn of the reactor, sent at its end.
        self._waiting: List[_Waiting] = []
        self._flush_call: Any = None
        #: Revisions up to here are sent alone (their group failed on a key).
        self._alone_until = 0
        #: Fires once the last transaction handed over is on its way.
        self._dispatched: defer.Deferred = defer.succeed(None)
        self.display = client.cluster.display
        self.checkpoint_key = raw(mapper.index_key)
        #: The revision the checkpoint holds (None: none yet); :meth:`load` reads it.
        self.applied: Optional[int] = None

    @defer.inlineCallbacks
    def position(self):
        """Fires with the destination's revision and cluster id (a linearizable read)."""
        found = yield self.client.range(self.checkpoint_key)
        return WatchProgress(found.header.revision, found.header.cluster_id)

    def snapshot(self) -> defer.Deferred:
        """Fires with the image of the source prefix on the destination, at one revision."""
        return read_snapshot(self.client, *keys_below(raw(self.mapper.dst_root)))

    def as_held(self, nodes: Dict[str, NodeState]) -> Dict[str, NodeState]:
        """The source's nodes as a v3 replica holds them: keys only (a v2 directory
        exists through the keys under it); a TTL becomes a lease's."""
        return {key: node for key, node in nodes.items() if not node.dir}

    @defer.inlineCallbacks
    def write_plan(self, plan: Plan, retry: Retry = no_retry, log_writes: bool = True):
        """Carry out a resync's plan: every key, then every delete; fires with None."""
        yield run_bounded([partial(self._write, key, node, retry, log_writes)
                           for key, node, _ in plan.writes if not node.dir],
                          RESYNC_CONCURRENCY)
        yield run_bounded([partial(self._delete, key, node, retry)
                           for key, node in plan.deletes], RESYNC_CONCURRENCY)

    @defer.inlineCallbacks
    def _write(self, key: str, node: NodeState, retry: Retry, log_writes: bool):
        lease = yield retry(f"resync: a lease for {key!r}", "destination",
                            lambda: self._lease(raw(key), node.lease, node.ttl))
        yield retry(f"resync: writing {key!r}", "destination",
                    lambda: self.client.put(raw(key), raw(node.value or ""), lease))
        if log_writes:
            log.info("resync: wrote %s", key)

    @defer.inlineCallbacks
    def _delete(self, key: str, node: NodeState, retry: Retry):
        yield retry(f"resync: deleting {key!r}", "destination",
                    lambda: self.client.delete_range(raw(key)))
        if node.dir:
            yield retry(f"resync: deleting what is below {key!r}", "destination",
                        lambda: self.client.delete_range(*keys_below(raw(key))))
        log.info("resync: deleted %s%s", key, " (and everything below it)" if node.dir else "")

    @defer.inlineCallbacks
    def load(self):
        """Read the checkpoint; fires with the revision it holds, or None."""
        found = yield self.client.range(self.checkpoint_key)
        self.applied = int(found.kvs[0].value) if found.kvs else None
        self._restart_chain()
        return self.applied

    @defer.inlineCallbacks
    def move_checkpoint(self, revision: int):
        """Move the checkpoint to ``revision`` with no change (progress on a quiet
        prefix), compared like every change; fires with None, or Divergence.

        Only between changes: every change sent before is answered by then.
        """
        self._restart_chain()
        result = yield self.client.txn(**transaction([], self.checkpoint_key, self.applied,
                                                     revision))
        if not result.succeeded:
            raise self._moved_by_another(_found(result.responses[0]), self.applied)
        self.applied = revision

    def apply(self, event: Any, replaying: bool = False) -> defer.Deferred:
        """Apply a v2 :class:`Event` or a v3 :class:`Revision`; fires with an Outcome.

        The checkpoint moves to the event's ``modifiedIndex``.  ``replaying``
        changes nothing here: the checkpoint says what was applied.  Sent at
        the end of this turn of the reactor, with the changes handed over
        after it in the same turn (module docstring).
        """
        if isinstance(event, Revision):
            changes = v3_changes(event.events, self.mapper)
            keys = [text(e.kv.key) for e in event.events]
        else:
            changes, keys = v2_changes(event, self.mapper), [event.key]
        # Nothing to write is "ignored by regex" only when the regex said so; a v2
        # directory write, say, is applied: it exists through its keys.
        ignored = bool(keys) and all(self.mapper.ignored(key) for key in keys)
        waiting = _Waiting(event, changes, Outcome.IGNORED if ignored else Outcome.APPLIED,
                           defer.Deferred())
        self._waiting.append(waiting)
        if self._flush_call is None:
            self._flush_call = self.client.reactor.callLater(0, self._flush)
        return waiting.done

    def _flush(self) -> None:
        """Send what waits: consecutive revisions on different keys together."""
        self._flush_call = None
        waiting, self._waiting = self._waiting, []
        group: List[_Waiting] = []
        keys: Set[bytes] = set()  # the group's keys, one per change
        for item in waiting:
            mine = {change.key for change in item.changes}
            if group and not self._joins(group[0], item, keys, mine):
                self._send_group(group)
                group, keys = [], set()
            group.append(item)
            keys |= mine
        if group:
            self._send_group(group)

    def _joins(self, head: _Waiting, item: _Waiting, keys: Set[bytes],
               mine: Set[bytes]) -> bool:
        """``item`` may share the transaction of the group ``head`` starts, which
        changes ``keys``."""
        return (item.event.modifiedIndex > self._alone_until and not item.alone
                and not head.alone and not keys & mine
                and len(keys) + len(mine) <= GROUP_CHANGES)

    def _send_group(self, group: List[_Waiting]) -> None:
        if len(group) == 1:
            item = group[0]
            self._apply(item.event, item.changes, item.event.modifiedIndex,
                        item.nothing).chainDeferred(item.done)
            return

        def answered(outcomes: Any) -> None:
            for item, outcome in zip(group, outcomes):
                item.done.callback(outcome)

        def failed(failure: Failure) -> None:
            for item in group:
                item.done.errback(failure)
        self._apply_group(group).addCallbacks(answered, failed)

    @defer.inlineCallbacks
    def _apply_group(self, group: List[_Waiting]):
        """Several source revisions in one transaction; fires with their Outcomes."""
        revisions = [item.event.modifiedIndex for item in group]
        first, last = revisions[0], revisions[-1]
        before = self._chain(revisions)  # now, in the order of the calls
        changes = [change for item in group for change in item.changes]
        result = yield self._txn_in_turn(changes, before, last)
        if result.succeeded:
            self._landed(revisions)
            return [Outcome.APPLIED if item.changes else item.nothing for item in group]
        if self._replayed(result, before, revisions, group[0].event):
            return [Outcome.REPLAYED] * len(group)
        self._alone_until = max(self._alone_until, last)
        raise V3Unavailable(f"revisions {first} to {last}: a key on the destination is "
                            "not as the source had it; sending each revision alone")

    @defer.inlineCallbacks
    def _txn_in_turn(self, changes: List[Change], before: Optional[int], revision: int):
        """The transaction of ``changes`` and their leases, sent after every one handed
        over before it: a lease grant holds back the changes after it too, so that
        they go out in source order; fires with its TxnResult."""
        prior, mine = self._dispatched, defer.Deferred()
        self._dispatched = mine
        try:
            leases = yield self._leases(changes)
            yield prior
            sent = self.client.txn(
                **transaction(changes, self.checkpoint_key, before, revision, leases),
                ordered=True)
        finally:
            mine.callback(None)
        result = yield sent
        return result

    @defer.inlineCallbacks
    def _leases(self, changes: List[Change]):
        """Fires with the destination lease of each put that needs one, by key."""
        leases = {}
        for change in changes:
            if change.value is not None:
                leases[change.key] = yield self._lease(change.key, change.source_lease,
                                                       change.ttl)
        return leases

    def _lease(self, key: bytes, source_lease: int, ttl: Optional[int]) -> defer.Deferred:
        """Fires with the destination lease for a key with a source lease or a TTL, or 0."""
        if self.leases is not None and source_lease:
            return self.leases.for_source_lease(source_lease)
        if self.leases is not None and ttl:
            return self.leases.for_ttl(key, ttl)
        return defer.succeed(0)

    def _restart_chain(self) -> None:
        """The checkpoint was read or moved, with nothing in flight: chain from it."""
        self._tail, self._sent_max, self._alone_until = None, 0, 0
        self._before.clear()

    def _chain(self, revisions: List[int]) -> Optional[int]:
        """What the checkpoint must hold just before ``revisions`` land: the revision
        before the first in source order, always, also when sent again after a
        failure (so nothing can land before what precedes it)."""
        first = revisions[0]
        if first in self._before:
            return self._before[first]  # sent again
        before = previous = self._tail if self._tail is not None else self.applied
        for revision in revisions:
            self._before[revision], previous = previous, revision
        self._tail = revisions[-1]
        self._sent_max = max(self._sent_max, revisions[-1])
        return before

    def _landed(self, revisions: List[int]) -> None:
        self.applied = revisions[-1]
        for revision in revisions:
            self._before.pop(revision, None)

    def _apply(self, event: Any, changes: List[Change], revision: int,
               nothing: Outcome) -> defer.Deferred:
        before = self._chain([revision])  # now, in the order of the calls
        return self._send(event, changes, revision, before, nothing)

    @defer.inlineCallbacks
    def _send(self, event: Any, changes: List[Change], revision: int, before: Optional[int],
              nothing: Outcome):
        dropped = False
        for _ in range(2):
            result = yield self._txn_in_turn(changes, before, revision)
            if result.succeeded:
                self._landed([revision])
                if changes:
                    return Outcome.APPLIED
                return Outcome.REPLAYED if dropped else nothing
            if self._replayed(result, before, [revision], event):
                return Outcome.REPLAYED
            reads = [_found(r) for r in result.responses[1:]]
            remaining = _in_effect_dropped(changes, reads, event, revision)
            dropped, changes = dropped or len(remaining) < len(changes), remaining
        raise Divergence(f"revision {revision}: the destination changed while it was "
                         "being written", event)

    def _replayed(self, result: Any, before: Optional[int], revisions: List[int],
                  event: Any) -> bool:
        """The checkpoint a failed transaction of ``revisions`` read: True when they
        landed before (changes land only in source order; their answer was lost);
        False when it holds ``before`` (a key differs).  Otherwise the change before
        them has not landed (V3Unavailable: send again, in order), or another writer
        moved it (Divergence)."""
        found = _found(result.responses[0])
        checkpoint = int(found) if found is not None else None
        first, last = revisions[0], revisions[-1]
        if checkpoint is not None and last <= checkpoint <= self._sent_max:
            self._landed(revisions)
            return True
        if checkpoint == before:
            return False
        if checkpoint is not None and self.applied is not None and (
                self.applied <= checkpoint < first):
            raise V3Unavailable(
                f"revision {first}: the change sent before it has not landed (the "
                f"checkpoint {self._key_text!r} holds {checkpoint}); sending it again in "
                "order")
        raise self._moved_by_another(checkpoint, before, f", before revision {first}", event)

    @property
    def _key_text(self) -> str:
        return self.checkpoint_key.decode("utf-8", "replace")

    def _moved_by_another(self, found: Any, expected: Optional[int], where: str = "",
                          event: Any = None) -> Divergence:
        return Divergence(
            f"the checkpoint {self._key_text!r} on the destination holds {found}, not "
            f"{expected} as this mirror wrote it{where}: another writer moved it", event)


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
