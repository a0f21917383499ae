"""Destination writers take turns: ordered events, resyncs and TTL refreshes.

The replica is written by three parties: the event path (one source event at
a time, in order), a resync, and the TTL keeper, which refreshes replica
copies of keys whose source TTL was renewed without an event.  A refresh, and
above all the rewrite of a replica copy that already expired, is only right
for the replica's state *between* two events: a rewrite that landed after the
event deleting the key would bring the key back.  So every write of those
parties happens while it holds this gate, and the keeper decides what to
write only once it holds it.

The event path takes the gate once per event, so taking a free gate costs no
Deferred.  Waiters are served first come, first served: a busy event stream
cannot starve the keeper, nor the keeper the events.
"""

from collections import deque
from typing import Any, Callable, Deque, Optional

from twisted.internet import defer


class WriteGate:
    """A first-come-first-served lock with a free fast path."""

    def __init__(self) -> None:
        self._held = False
        self._waiting: Deque[defer.Deferred] = deque()

    @property
    def held(self) -> bool:
        return self._held

    @property
    def contended(self) -> bool:
        """Someone waits for the gate."""
        return bool(self._waiting)

    def acquire(self) -> Optional[defer.Deferred]:
        """Take the gate: None when it was free (it is ours now), or a Deferred.

        The Deferred fires with None once the gate is ours; cancelling it
        gives up the place in the queue.
        """
        if not self._held:
            self._held = True
            return None
        waiter: defer.Deferred = defer.Deferred(self._waiting.remove)
        self._waiting.append(waiter)
        return waiter

    def release(self) -> None:
        """Hand the gate to the next waiter, or free it."""
        if self._waiting:
            self._waiting.popleft().callback(None)
        else:
            self._held = False

    @defer.inlineCallbacks
    def run(self, operation: Callable[[], Any]):
        """Call ``operation`` while holding the gate; fires with its result."""
        waiter = self.acquire()
        if waiter is not None:
            yield waiter
        try:
            return (yield operation())
        finally:
            self.release()
