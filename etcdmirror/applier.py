"""Applies one source event to the destination, the way the source applied it.

Each etcd v2 action is replayed with the same kind of request (a ``create``
stays a create with ``prevExist=false``, a ``compareAndSwap`` compares against
the event's ``prevNode``), so that a destination written behind our back shows
up as a failed condition instead of being silently overwritten.

A failed condition is not automatically an error: the index is persisted after
the event, so after a crash we may apply an event a second time.  When the
destination already holds exactly what the event leaves behind, the event was
applied before and that is fine (:attr:`Outcome.REPLAYED`).  Anything else is
:class:`Divergence`.
"""

import logging
from typing import Any, Optional

import etcd
from twisted.internet import defer

from etcdmirror.events import (
    ACTIONS, DELETE_ACTIONS, ApplyError, Divergence, Event, ExpiredEarly, Outcome,
    UnknownAction, describe)
from etcdmirror.client import EtcdClient
from etcdmirror.keys import KeyMapper

log = logging.getLogger(__name__)


#: Seconds added to every TTL written on the replica.  The replica's copy then
#: outlives the source's, whose ``expire`` event removes it; and the TTL
#: keeper (:mod:`etcdmirror.ttlkeeper`) can look at the source once more after
#: the source copy's own expiry before the replica's runs out.
TTL_GRACE = 1

def _had_ttl(event: Event) -> bool:
    """The node the event replaced carried a TTL (prevNode has ttl/expiration)."""
    prev = event.prevNode
    return prev is not None and (prev.ttl is not None or prev.expiration is not None)


def replica_ttl(source_ttl: int) -> int:
    """The TTL to write on the replica for a source TTL of ``source_ttl`` seconds."""
    return int(source_ttl) + TTL_GRACE


def _ttl(event: Event) -> Optional[int]:
    return replica_ttl(event.ttl) if event.ttl is not None else None


class EventApplier:
    """Replays source events on the destination through an :class:`EtcdClient`."""

    def __init__(self, destination: EtcdClient, mapper: KeyMapper) -> None:
        self.destination = destination
        self.mapper = mapper

    def apply(self, event: Event, replaying: bool = False) -> defer.Deferred:
        """Apply ``event``; fires with its :class:`Outcome`.

        ``replaying`` says the event may have been applied before a crash
        together with later ones (it is below the replay horizon): the
        destination may then be *ahead* of the event, so a failed condition
        or a state error is accepted as a replay; the later events, which are
        replayed too, bring the key to its final state.

        Transient errors (:func:`etcdmirror.answers.is_transient`) propagate
        unchanged so the caller can retry the same event.
        """
        if self.mapper.ignored(event.key):
            return defer.succeed(Outcome.IGNORED)
        action = event.action
        if action not in ACTIONS:
            return defer.fail(UnknownAction(
                f"unknown action {action!r} in event {event.key!r} at index "
                f"{event.modifiedIndex}: refusing to skip it; event: {vars(event)!r}",
                event,
            ))
        key = self.mapper.to_dst(event.key)
        d = getattr(self, "_" + action)(event, key)
        d.addCallback(lambda result: result if isinstance(result, Outcome) else Outcome.APPLIED)
        if replaying:
            d.addErrback(_ahead_of_the_event)
        return d

    # -- writes ------------------------------------------------------------

    def _set(self, event: Event, key: str) -> defer.Deferred:
        if not event.dir:
            d = self.destination.put(key, event.value, ttl=_ttl(event))
            d.addErrback(self._check_replay, event, key, etcd.EtcdNotFile)
            return d
        d = self.destination.put(key, dir=True, ttl=_ttl(event))
        # Setting a dir that exists is "Not a file" in etcd v2: on a replay the
        # dir is already there, so only its TTL may need refreshing.
        d.addErrback(self._refresh_existing_dir, event, key)
        return d

    def _create(self, event: Event, key: str) -> defer.Deferred:
        d = self.destination.put(
            key, event.value, dir=bool(event.dir), ttl=_ttl(event), prev_exist=False
        )
        d.addErrback(self._check_replay, event, key, etcd.EtcdAlreadyExist)
        return d

    def _update(self, event: Event, key: str) -> defer.Deferred:
        d = self.destination.put(
            key, event.value, dir=bool(event.dir), ttl=_ttl(event), prev_exist=True
        )
        d.addErrback(self._check_replay, event, key, etcd.EtcdKeyNotFound, etcd.EtcdNotFile)
        return d

    def _compareAndSwap(self, event: Event, key: str) -> defer.Deferred:
        prev = event.prevNode
        if prev is None or prev.value is None:
            return defer.fail(ApplyError(
                f"{describe(event)} has no prevNode value to compare against", event
            ))
        d = self.destination.put(key, event.value, ttl=_ttl(event), prev_value=prev.value)
        d.addErrback(
            self._check_replay, event, key, etcd.EtcdCompareFailed, etcd.EtcdKeyNotFound
        )
        return d

    # -- deletes -----------------------------------------------------------

    def _delete(self, event: Event, key: str) -> defer.Deferred:
        d = self.destination.delete(key, recursive=bool(event.dir), dir=bool(event.dir))
        d.addErrback(self._already_gone)
        return d

    _expire = _delete

    def _compareAndDelete(self, event: Event, key: str) -> defer.Deferred:
        prev = event.prevNode
        if prev is None or prev.value is None:
            return defer.fail(ApplyError(
                f"{describe(event)} has no prevNode value to compare against", event
            ))
        d = self.destination.delete(key, prev_value=prev.value)
        d.addErrback(self._already_gone)
        d.addErrback(self._check_replay, event, key, etcd.EtcdCompareFailed)
        return d

    # -- replay checks -----------------------------------------------------

    @staticmethod
    def _already_gone(failure: Any) -> Outcome:
        """A delete of a key that is not there has its effect already."""
        failure.trap(etcd.EtcdKeyNotFound)
        return Outcome.REPLAYED

    def _refresh_existing_dir(self, failure: Any, event: Event, key: str) -> defer.Deferred:
        failure.trap(etcd.EtcdNotFile)
        d = self.destination.put(key, dir=True, ttl=_ttl(event), prev_exist=True)
        d.addErrback(self._check_replay, event, key, etcd.EtcdKeyNotFound, etcd.EtcdNotFile)
        return d

    @defer.inlineCallbacks
    def _check_replay(self, failure: Any, event: Event, key: str, *expected: type):
        """After a failed condition: was the event applied already?"""
        failure.trap(*expected)
        # Through consensus: the write that failed may have gone to another
        # member than this read (the ordered lane stays on its endpoint while
        # writes wait there), and a member may lag behind the others.
        found = yield self.destination.get_or_none(key, quorum=True)
        if _matches(found, event):
            return Outcome.REPLAYED
        if found is None and event.action in ("update", "compareAndSwap") and _had_ttl(event):
            # The destination's copy ran out on the destination's clock; the
            # source renewed it in time.  The event says what the key is now.
            if event.dir:
                raise ExpiredEarly(
                    f"{describe(event)}: the directory {key!r} already expired on the "
                    "destination (its TTL ran out there while the mirror was behind)",
                    event)
            log.warning("%s: the key %r had already expired on the destination (its TTL "
                        "ran out there while the mirror was behind); writing it again",
                        describe(event), key)
            yield self.destination.put(key, event.value, ttl=_ttl(event))
            return Outcome.TTL_REWRITE
        raise Divergence(
            f"{describe(event)} failed on the destination key {key!r} "
            f"({failure.getErrorMessage()}); expected "
            f"{_show_expected(event)}, found {_show(found)}. The destination "
            "was changed by something other than this mirror.",
            event,
        )


#: What a destination that is ahead of a replayed event answers.
STATE_ERRORS = (etcd.EtcdKeyNotFound, etcd.EtcdCompareFailed, etcd.EtcdNotFile,
                etcd.EtcdNotDir, etcd.EtcdAlreadyExist, etcd.EtcdDirNotEmpty, Divergence)


def _ahead_of_the_event(failure: Any) -> Outcome:
    failure.trap(*STATE_ERRORS)
    return Outcome.REPLAYED


def _matches(found: Optional[etcd.EtcdResult], event: Event) -> bool:
    """True when the destination node already is what ``event`` leaves behind."""
    if event.action in DELETE_ACTIONS:
        return found is None
    if found is None or bool(found.dir) != bool(event.dir):
        return False
    return bool(event.dir) or found.value == event.value


def _show(node: Optional[etcd.EtcdResult]) -> str:
    if node is None:
        return "no key"
    if node.dir:
        return "a directory"
    return f"value {node.value!r}"


def _show_expected(event: Event) -> str:
    if event.action in DELETE_ACTIONS:
        return "no key"
    return "a directory" if event.dir else f"value {event.value!r}"
