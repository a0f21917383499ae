"""Reads the source prefix's events in index order: many watches in flight,
never out of etcd's history.

**The window.**  A watch on ``waitIndex = w`` returns the first event under the
prefix whose index is ``>= w``.  So watches at ``a, a+1, ..., a+k-1`` return,
together, every event in ``[a, a+k-1]``: the watch at ``next`` gives the next
event ``e``, the one at ``e+1`` the event after it, and so on, all in one
round trip when the events are in etcd's history.  The window only opens
while we are behind (up to the source index the headers told us); a mirror
that is caught up keeps a single watch (a stream, below) for the next events.
Events are handed out strictly in index order, each once, whatever order the
answers arrive in; watches keep running while the caller applies an event,
so reading never waits for writing.

**Staying in the history.**  etcd v2 keeps only the last 1000 events of the
*whole cluster*.  etcd answers a watch's headers as soon as it registers it;
their ``X-Etcd-Index`` is the store index at that moment, so a watch on
``waitIndex = w`` that stays pending proves that no event under the prefix
exists in ``[w, X-Etcd-Index]`` (:class:`~etcdmirror.answers.WatchProgress`).
A pending watch is renewed when it was idle for ``idle_timeout`` seconds,
and also as soon as a cheap probe of the source's index shows the cluster
moved ``probe_threshold`` events past its registration, long before 1000
events pass.  The probe runs every ``probe_interval`` seconds, and more often
while the cluster moves fast (:func:`probe_delay`): at 2,500 writes/s, 1000
events pass in 0.4 s.

**Streaming when caught up.**  A mirror that is caught up reads with one
streaming watch instead (:mod:`etcdmirror.stream`), so that it pays no request
per event.  Its events land in the same ordered table as the window's; when
too many wait to be applied, the stream is paused.
"""

import logging
from dataclasses import dataclass
from typing import Any, Callable, Dict, Optional, Tuple

from twisted.internet import defer
from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.python.failure import Failure

from etcdmirror.answers import Answer
from etcdmirror.client import EtcdClient
from etcdmirror.events import WatchProgress
from etcdmirror.stream import StreamFollower
from etcdmirror.watches import PendingWatch

log = logging.getLogger(__name__)

#: The index probe never runs more often than this (seconds).
MIN_PROBE_INTERVAL = 0.05


def probe_delay(rate: float, interval: float, threshold: int) -> float:
    """Seconds until the next index probe, for a cluster moving ``rate`` events/s.

    The base ``interval``, or less when ``threshold`` events would pass
    before it: a watch is then renewed well inside etcd's 1000 events.
    """
    if rate <= 0:
        return interval
    return max(MIN_PROBE_INTERVAL, min(interval, threshold / rate))


@dataclass
class WatchSettings:
    """How the window reads (the command line's ``--watch-*`` options)."""

    #: Watches in flight at once while catching up (1: one event per round trip).
    concurrency: int = 16
    #: Once caught up, watch with ``stream=true``: no request per event.
    stream: bool = True
    #: Re-register a watch that saw nothing for this long (seconds).
    idle_timeout: float = 5.0
    #: How often to probe the source's index while a watch is pending.
    probe_interval: float = 0.5
    #: Renew a pending watch early once the source moved this far past it.
    probe_threshold: int = 200

    @property
    def connections_needed(self) -> int:
        """Connections a window holds at most: its watches, the stream and the probe."""
        return max(1, self.concurrency) + 2


class WatchWindow:
    """Up to ``concurrency`` recursive watches on the source prefix."""

    def __init__(
        self,
        client: EtcdClient,
        prefix: str,
        clock: IReactorTime,
        concurrency: int = 16,
        idle_timeout: float = 5.0,
        probe_interval: float = 0.5,
        probe_threshold: int = 200,
        on_source_index: Optional[Callable[[int], None]] = None,
        on_registered: Optional[Callable[[], None]] = None,
        stream: bool = True,
        max_buffered: int = 4096,
        max_buffered_bytes: int = 64 * 1024 * 1024,
    ) -> None:
        self.client = client
        self.prefix = prefix
        self.clock = clock
        self.concurrency = max(1, concurrency)
        self.idle_timeout = idle_timeout
        self.probe_interval = probe_interval
        self.probe_threshold = probe_threshold
        self.on_source_index = on_source_index
        #: Called whenever etcd registered one of our watches or streams: the
        #: source is being read, even when there is nothing to read.
        self.on_registered = on_registered
        #: Pause the stream when this many events, or values of this many
        #: bytes, wait to be applied.
        self.max_buffered = max(2, max_buffered)
        self.max_buffered_bytes = max_buffered_bytes
        self.early_renewals = 0
        self._next = 1
        self._known = 0
        self._watches: Dict[int, PendingWatch] = {}
        self._timers: Dict[int, IDelayedCall] = {}
        self._results: Dict[int, Answer] = {}
        #: Bytes of values in _results.
        self._buffered_bytes = 0
        self._empty: Dict[int, WatchProgress] = {}
        self._waiter: Optional[defer.Deferred] = None
        self._error: Optional[Failure] = None
        self._probe_timer: Optional[IDelayedCall] = None
        self._probe_wanted = False
        self._probing = False
        #: The cluster's write rate (events/s) between the last two probes,
        #: and when and at which index the last probe was answered.
        self._cluster_rate = 0.0
        self._last_probe: Optional[Tuple[float, int]] = None
        self.stream = StreamFollower(
            client, prefix, clock, on_registered=self._stream_registered,
            on_event=self._streamed, on_progress=self._empty.__setitem__,
            on_end=self._deliver, on_error=self._fail, idle_timeout=idle_timeout,
            probe_threshold=probe_threshold, enabled=stream)

    # -- the caller's side ----------------------------------------------------

    def reset(self, next_index: int) -> None:
        """Forget everything and read from ``next_index`` on."""
        self.close()
        self._results.clear()
        self._buffered_bytes = 0
        self._empty.clear()
        self._error = None
        self._next = next_index
        self.stream.reset()

    def next(self) -> defer.Deferred:
        """The next event (:class:`Answer`) in index order, or progress.

        Fires with :class:`WatchProgress` when the watch at the next index was
        renewed while pending: no event under the prefix up to its index.
        Errors of any watch (transient or not) fail this Deferred; calling
        again re-opens the window.  Cancelling it closes every watch.
        """
        if self._error is not None:
            error, self._error = self._error, None
            return defer.fail(error)
        ready = self._pop()
        self._fill()
        if ready is not None:
            return defer.succeed(ready)
        self._waiter = defer.Deferred(lambda _: self._cancelled())
        return self._waiter

    def describe(self) -> Dict[str, Any]:
        """For /status: how the source is being read right now."""
        return {
            "streaming": self.stream.active,
            "stream_enabled": self.stream.enabled,
            "watches_in_flight": len(self._watches),
            "events_waiting": len(self._results),
            "streams_opened": self.stream.opened,
            "streams_from_history": self.stream.from_history,
            "early_renewals": self.early_renewals + self.stream.early_renewals,
            "stream_fallbacks": self.stream.fallbacks,
        }

    def close(self) -> None:
        """Cancel every watch and timer."""
        watches, self._watches = self._watches, {}
        for w in list(self._timers):
            self._cancel_timer(w)
        for watch in watches.values():
            watch.cancel()
        self.stream.close()
        self._stop_probe()

    def _cancelled(self) -> None:
        self._waiter = None
        self.close()

    # -- ordering -------------------------------------------------------------

    def _pop(self):
        if self._next in self._results:
            answer = self._results.pop(self._next)
            self._buffered_bytes -= _value_size(answer)
            self._advance(answer.event.modifiedIndex + 1)
            if (self.stream.paused and len(self._results) <= self.max_buffered // 2
                    and self._buffered_bytes <= self.max_buffered_bytes // 2):
                self.stream.resume()
            return answer
        if self._next in self._empty:
            progress = self._empty.pop(self._next)
            self._advance(progress.etcd_index + 1)
            return progress
        return None

    def _advance(self, next_index: int) -> None:
        passed, self._next = self._next, next_index
        for w in [w for w in self._watches if w < next_index]:
            self._drop(w).cancel()
        # Everything below the old ``next`` is gone already; a stream may have
        # thousands of events waiting, so look only at the indexes just passed.
        for table in (self._results, self._empty):
            if next_index - passed <= len(table):
                gone = [w for w in range(passed, next_index) if w in table]
            else:
                gone = [w for w in table if w < next_index]
            for w in gone:
                outcome = table.pop(w)
                if table is self._results:
                    self._buffered_bytes -= _value_size(outcome)

    def _fill(self) -> None:
        """Open the watches the window needs: only past ``next`` while behind."""
        if self._error is not None or self.stream.active:
            return  # an open stream covers everything from its position on
        # Events a closed stream left behind cover [next, its position) already.
        start = max(self._next, self.stream.position)
        last = max(start, min(start + self.concurrency - 1, self._known + 1))
        if (self.stream.enabled and last == start and not self._watches
                and start not in self._results and start not in self._empty):
            self.stream.open(start)
            return
        for w in range(start, last + 1):
            if w not in self._watches and w not in self._results and w not in self._empty:
                self._open(w)

    def _deliver(self) -> None:
        if self._waiter is not None:
            ready = self._pop()
            if ready is not None:
                waiter, self._waiter = self._waiter, None
                self._fill()
                waiter.callback(ready)
                return
        self._fill()

    # -- one watch ------------------------------------------------------------

    def _open(self, w: int) -> None:
        watch = self.client.watch(self.prefix, w)
        self._watches[w] = watch
        watch.registered.addCallback(self._registered, w, watch)
        watch.result.addCallbacks(self._answered, self._failed,
                                  callbackArgs=(w, watch), errbackArgs=(w, watch))

    def _drop(self, w: int) -> PendingWatch:
        self._cancel_timer(w)
        return self._watches.pop(w)

    def _cancel_timer(self, w: int) -> None:
        timer = self._timers.pop(w, None)
        if timer is not None and timer.active():
            timer.cancel()

    def _saw(self, etcd_index: Optional[int]) -> None:
        if etcd_index is not None and etcd_index > self._known:
            self._known = etcd_index
            if self.on_source_index is not None:
                self.on_source_index(etcd_index)

    def _registered(self, etcd_index: Optional[int], w: int, watch: PendingWatch) -> None:
        if self._watches.get(w) is not watch or etcd_index is None:
            return
        self._saw(etcd_index)
        if self.on_registered is not None:
            self.on_registered()
        self._timers[w] = self.clock.callLater(self.idle_timeout, watch.finish)
        self._start_probe()
        self._fill()

    def _answered(self, outcome, w: int, watch: PendingWatch) -> None:
        if self._watches.get(w) is not watch:
            return  # dropped meanwhile: its answer is covered by another one
        self._drop(w)
        if isinstance(outcome, Answer):
            event_index = outcome.event.modifiedIndex
            self._saw(max(outcome.etcd_index, event_index))
            self._results[w] = outcome
            self._buffered_bytes += _value_size(outcome)
            # The watches between w and the event would return the same event.
            for later in [x for x in self._watches if w < x <= event_index]:
                self._drop(later).cancel()
        elif outcome.etcd_index >= w:
            self._empty[w] = outcome
        if not self.stream.active and not any(t.active() for t in self._timers.values()):
            self._stop_probe()
        self._deliver()

    def _failed(self, failure: Failure, w: int, watch: PendingWatch) -> None:
        if self._watches.get(w) is not watch:
            return None  # we cancelled it ourselves
        self._drop(w)
        self._fail(failure)
        return None

    def _fail(self, failure: Failure) -> None:
        self.close()
        if self._waiter is not None:
            waiter, self._waiter = self._waiter, None
            waiter.errback(failure)
        else:
            self._error = failure

    # -- the stream ------------------------------------------------------------

    def _stream_registered(self, etcd_index: int) -> None:
        self._saw(etcd_index)
        if self.on_registered is not None:
            self.on_registered()
        self._start_probe()

    def _streamed(self, w: int, answer: Answer) -> None:
        self._saw(max(answer.etcd_index, answer.event.modifiedIndex))
        self._results[w] = answer
        self._buffered_bytes += _value_size(answer)
        if self.stream.active and not self.stream.paused and (
                len(self._results) >= self.max_buffered
                or self._buffered_bytes >= self.max_buffered_bytes):
            log.debug("%d events (%d bytes of values) not applied yet: pausing the stream",
                      len(self._results), self._buffered_bytes)
            self.stream.pause()
        self._deliver()

    # -- the index probe --------------------------------------------------------

    def _start_probe(self) -> None:
        if self.probe_interval > 0:
            self._probe_wanted = True
            self._schedule_probe()

    def _stop_probe(self) -> None:
        self._probe_wanted = False
        if self._probe_timer is not None and self._probe_timer.active():
            self._probe_timer.cancel()
        self._probe_timer = None

    def _schedule_probe(self) -> None:
        if self._probing or (self._probe_timer is not None and self._probe_timer.active()):
            return
        delay = probe_delay(self._cluster_rate, self.probe_interval, self.probe_threshold)
        self._probe_timer = self.clock.callLater(delay, self._probe_now)

    def _probe_now(self) -> None:
        self._probe_timer = None
        self._probing = True

        def done(result: Any) -> None:
            self._probing = False
            if isinstance(result, Failure):
                log.error("index probe: %s", result.getTraceback())
            if self._probe_wanted:
                self._schedule_probe()

        self._probe_once().addBoth(done)

    def _measure(self, current: int) -> None:
        """Learn the cluster's write rate from two probes in a row."""
        now = self.clock.seconds()
        if self._last_probe is not None:
            then, before = self._last_probe
            if now > then and current >= before:
                self._cluster_rate = (current - before) / (now - then)
        self._last_probe = (now, current)

    @defer.inlineCallbacks
    def _probe_once(self):
        pending = [w for w in self._watches if w in self._timers]
        streaming = self.stream.registered and not self.stream.paused
        if not pending and not streaming:
            return
        token = self.stream.probe_token()
        try:
            current = (yield self.client.probe()).etcd_index
        except Exception as e:  # a failed probe changes nothing; the watches decide
            log.debug("index probe failed: %s", e)
            return
        if current is None:
            return
        self._measure(current)
        for w in pending:
            watch = self._watches.get(w)
            if (watch is not None and watch.etcd_index is not None
                    and current - watch.etcd_index >= self.probe_threshold):
                log.debug("source moved from %d to %d: renewing the watch at %d early",
                          watch.etcd_index, current, w)
                self.early_renewals += 1
                watch.finish()
        if streaming:
            self.stream.probed(current, token)


def _value_size(answer: Answer) -> int:
    """What an event waiting to be applied holds in memory, roughly: its value."""
    return len(answer.event.value or "")
