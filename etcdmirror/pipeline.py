"""Ordered event writes, several in flight at once: sent in source order, finished in it.

Writing one event at a time costs the destination's round trip per event, so
the mirror could never write faster than the destination's sequential rate.
An etcd server reads the requests of one connection one after another and
answers them in order (``tests/test_pipelining.py``), so events written back
to back on one connection (:meth:`etcdmirror.client.EtcdClient.ordered`) are
applied in source order.  What the pipeline keeps true:

* **Verdicts stay per event.**  The verdict on an event whose condition
  failed (a replay, or a divergence: :mod:`etcdmirror.applier`) is read back
  from the event's key on the destination, so no two events in flight touch
  the same key, or a key and one below it: an event waits until the events
  in flight on its key (or above or below it) have their outcome.
* **The applied index never passes an unfinished event.**  An event is
  *finished* (``on_finished``: the index, the event log, the TTL keeper) only
  once it and every event before it has its outcome, in source order.
* **After a failure, nothing more is sent.**  The caller waits for every
  event in flight (:meth:`EventPipeline.settled`) and deals with the ones not
  finished, in source order: a transient failure is sent again, anything
  else stops replication or resyncs, as one at a time.  The events after a
  failed one were sent before the failure was known; they may have landed,
  and the replay horizon (:mod:`etcdmirror.checkpoint`) covers them.
* **The write gate is held while events are in flight** (:mod:`etcdmirror.gate`):
  the TTL keeper writes only between events.  When it waits, nothing more is
  sent; the gate is handed over once the events in flight are finished.
"""

import logging
from collections import deque
from dataclasses import dataclass
from typing import Any, Callable, Deque, Dict, List, Optional

from twisted.internet import defer
from twisted.python.failure import Failure

from etcdmirror.events import Event, Outcome, describe
from etcdmirror.gate import WriteGate

log = logging.getLogger(__name__)

#: Events in flight at once on the destination's ordered lane (``http://``).
PIPELINE_DEPTH = 32


def overlaps(a: str, b: str) -> bool:
    """True when keys ``a`` and ``b`` are the same node, or one is below the other."""
    if len(a) > len(b):
        a, b = b, a
    return b.startswith(a) and (len(a) == len(b) or b[len(a)] == "/" or a.endswith("/"))


@dataclass
class InFlight:
    """One event sent to the destination: its outcome or failure once answered."""

    event: Event
    replaying: bool
    #: When it was sent (``time.perf_counter``), for the write latency.
    started: float
    outcome: Optional[Outcome] = None
    failure: Optional[Failure] = None

    @property
    def settled(self) -> bool:
        return self.outcome is not None or self.failure is not None


class EventPipeline:
    """Up to ``depth`` events in flight; finished in source order."""

    def __init__(self, apply: Callable[[Event, bool], defer.Deferred], gate: WriteGate,
                 depth: int, on_finished: Callable[[Event, Outcome, float], None],
                 on_stalled: Callable[[], None] = lambda: None, keyed: bool = True) -> None:
        """``apply(event, replaying)`` sends one event, in order with the ones before;
        ``on_finished(event, outcome, started)`` is called for each event in
        source order; ``on_stalled()`` once an event failed.  ``keyed=False``: the
        replica needs no two events on different keys (its writes are chained:
        each lands only after the one before, and its verdict is read in the
        same transaction), so events on one key may be in flight together."""
        self._apply = apply
        self.keyed = keyed
        self.gate = gate
        self.depth = depth
        self._on_finished = on_finished
        self._on_stalled = on_stalled
        self._queue: Deque[InFlight] = deque()
        self._holding = False
        self._failed = 0
        self._waiter: Optional[defer.Deferred] = None
        #: The index of the last event sent.
        self.last_index = 0
        self._most = 0

    @property
    def idle(self) -> bool:
        """Nothing sent waits to be finished."""
        return not self._queue

    @property
    def stalled(self) -> bool:
        """An event in flight failed: :meth:`settled` before sending more."""
        return self._failed > 0

    def admits(self, event: Event) -> bool:
        """True when ``event`` may be sent now (see the module docstring)."""
        queue = self._queue
        if not queue:
            return True
        if self._failed or len(queue) >= self.depth or self.gate.contended:
            return False
        if not self.keyed:
            return True
        key = event.key or "/"
        return not any(overlaps(item.event.key or "/", key) for item in queue)

    def describe(self) -> Dict[str, Any]:
        """For /status: how many events may be in flight, are, and were at most."""
        return {"depth": self.depth, "in_flight": len(self._queue),
                "most_in_flight": self._most}

    def turn(self) -> Optional[defer.Deferred]:
        """Take the write gate before sending: None once it is ours, else a
        Deferred that fires when it is (cancelling it gives up the place)."""
        if self._holding:
            return None
        waiting = self.gate.acquire()
        if waiting is None:
            self._holding = True
            return None
        return waiting.addCallback(self._took_gate)

    def _took_gate(self, _: Any) -> None:
        self._holding = True

    def send(self, event: Event, replaying: bool, started: float) -> None:
        """Send ``event`` (after :meth:`admits` and :meth:`turn`)."""
        assert self._holding, "send() without the write gate"
        if log.isEnabledFor(logging.DEBUG):
            log.debug("event %s", describe(event))
        item = InFlight(event, replaying, started)
        self._queue.append(item)
        self._most = max(self._most, len(self._queue))
        self.last_index = event.modifiedIndex or self.last_index
        self._apply(event, replaying).addCallbacks(
            self._answered, self._failure, callbackArgs=(item,), errbackArgs=(item,))

    @defer.inlineCallbacks
    def enter(self, event: Event, prepare: Callable[[], defer.Deferred],
              wait: Callable[[defer.Deferred], defer.Deferred]):
        """Fires with True once ``event`` may be :meth:`send`-t, the gate ours and
        ``prepare()`` done (the replay horizon); with False once the pipeline
        stalled (:meth:`settled` first).  ``wait`` wraps every wait (a stop
        cancels it)."""
        while True:
            if self.stalled:
                return False
            if not self.admits(event):
                yield wait(self.room())
                continue
            yield prepare()
            turn = self.turn()
            if turn is not None:
                yield wait(turn)
            if self.admits(event):
                return True

    def room(self) -> defer.Deferred:
        """Fires with None at the next change: an event answered, or failed."""
        if self._waiter is None:
            self._waiter = defer.Deferred(self._forget_waiter)
        return self._waiter

    def _forget_waiter(self, _: defer.Deferred) -> None:
        self._waiter = None

    @defer.inlineCallbacks
    def settled(self):
        """Fires once no event is in flight, with the ones not finished, in order.

        The first of them failed (the ones after it may have an outcome);
        the caller finishes or fails them, then calls :meth:`release`.
        """
        while not all(item.settled for item in self._queue):
            yield self.room()
        leftovers: List[InFlight] = list(self._queue)
        self._queue.clear()
        self._failed = 0
        return leftovers

    @defer.inlineCallbacks
    def quiet(self):
        """On the way out: fires once nothing is in flight; what did not finish stays so."""
        yield self.settled()
        self.release()

    def release(self) -> None:
        """Give the write gate back (nothing in flight)."""
        if self._holding and not self._queue:
            self._holding = False
            self.gate.release()

    def hand_over(self) -> None:
        """The caller keeps the write gate (nothing in flight): releasing it is its business."""
        assert not self._queue
        self._holding = False

    def _answered(self, outcome: Outcome, item: InFlight) -> None:
        item.outcome = outcome
        queue = self._queue
        while queue and queue[0].outcome is not None:
            done = queue[0]
            try:
                self._on_finished(done.event, done.outcome, done.started)
            except Exception:  # a bug: the caller's settle() raises it
                done.outcome = None
                self._failure(Failure(), done)
                return
            queue.popleft()
        if not queue:
            self.release()
        self._wake()

    def _failure(self, failure: Failure, item: InFlight) -> None:
        item.failure = failure
        self._failed += 1
        self._wake()
        self._on_stalled()

    def _wake(self) -> None:
        waiter, self._waiter = self._waiter, None
        if waiter is not None:
            waiter.callback(None)


def send_again(item: InFlight, sent_with: List[InFlight], retrying: Any, replica: Any,
               metrics: Any) -> defer.Deferred:
    """Apply a failed event again (through ``retrying``) if its failure was transient.

    Fails with the event's own failure otherwise.  When events sent after it
    were applied meanwhile (an error answer to this one, not a lost
    connection), they landed before it on the destination: said at WARNING.
    """
    event, failure = item.event, item.failure
    if not retrying.transient(failure.value):
        return defer.fail(failure)
    landed = sum(1 for other in sent_with
                 if other.outcome is not None and other.event.modifiedIndex > event.modifiedIndex)
    metrics.retries.labels(side="destination").inc()
    metrics.errors.labels(kind=failure.type.__name__).inc()
    log.warning("applying %s failed: %s; sending it again%s", describe(event),
                failure.getErrorMessage(),
                f" ({landed} later events on other keys, sent with it, were applied before "
                "it: on the destination those keys changed out of source order; each key's "
                "own order holds)" if landed else "")
    return retrying(lambda: f"applying {describe(event)}", "destination",
                    lambda: replica.apply(event, replaying=item.replaying))
