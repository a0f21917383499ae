"""Reads the source prefix's events in index order: many watches in flight,
never out of etcd's history.

**The window.**  A watch on ``waitIndex = w`` returns the first event under the
prefix whose index is ``>= w``.  So watches at ``a, a+1, ..., a+k-1`` return,
together, every event in ``[a, a+k-1]``: the watch at ``next`` gives the next
event ``e``, the one at ``e+1`` the event after it, and so on, all in one
round trip when the events are in etcd's history.  The window only opens
while we are behind (up to the source index the headers told us); a mirror
that is caught up keeps a single watch, which waits for the next event.
Events are handed out strictly in index order, each once, whatever order the
answers arrive in; watches keep running while the caller applies an event,
so reading never waits for writing.

**Staying in the history.**  etcd v2 keeps only the last 1000 events of the
*whole cluster*.  etcd answers a watch's headers as soon as it registers it;
their ``X-Etcd-Index`` is the store index at that moment, so a watch on
``waitIndex = w`` that stays pending proves that no event under the prefix
exists in ``[w, X-Etcd-Index]`` (:class:`~etcdmirror.client.WatchProgress`).
A pending watch is renewed when it was idle for ``idle_timeout`` seconds,
and also as soon as a cheap probe of the source's index shows the cluster
moved ``probe_threshold`` events past its registration, long before 1000
events pass.

**Streaming when caught up.**  A mirror that is caught up watches with
``stream=true`` instead, so that it pays no request per event.  etcd v2
treats such a stream in one of two ways, and the ``X-Etcd-Index`` of its
headers (the store index ``S`` at registration) tells which:

* if an event under the prefix with index in ``[waitIndex, S]`` is in the
  history, etcd sends that one event and *nothing more, ever* on this
  stream.  Its index is ``<= S``: we take it and close the stream;
* otherwise etcd registered the watch ahead of the store, and sends every
  later event under the prefix, in order, until it ends the stream (it does
  when we read too slowly).  The first event's index is then ``> S``.

A stream is renewed like a pending watch (idle timer, index probe); while it
has delivered nothing it proves what a pending watch proves, and once it has
delivered events it proves nothing beyond the last of them.  That matters:
when etcd cannot queue an event for a stream that is not being read (its
queue holds 100), etcd 3.4 drops the watcher *and leaves the response open*,
silent, exactly like a quiet prefix.  The idle timer or the index probe then
renews the stream, and the window reads on from etcd's history after the
last event received.  When events pile up faster than they are applied, the
stream is paused (and so, in time, dropped the same way).
"""

import logging
from typing import Callable, Dict, Optional

from twisted.internet import defer
from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.python.failure import Failure

from etcdmirror.client import (
    Answer, EtcdClient, EtcdTimeout, EtcdUnavailable, EventStream, PendingWatch, StreamEnd, WatchProgress)
from etcdmirror.periodic import Periodic

log = logging.getLogger(__name__)


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
        self.use_stream = stream
        #: Pause the stream when this many events, or values of this many
        #: bytes, wait to be applied.
        self.max_buffered = max(2, max_buffered)
        self.max_buffered_bytes = max_buffered_bytes
        self.early_renewals = 0
        #: Streams opened, and how many of them etcd served from its history.
        self.streams_opened = 0
        self.streams_from_history = 0
        self._next = 1
        self._known = 0
        self._watches: Dict[int, PendingWatch] = {}
        self._timers: Dict[int, IDelayedCall] = {}
        self._results: Dict[int, Answer] = {}
        #: Value sizes of the streamed events in _results.
        self._sizes: Dict[int, int] = {}
        self._buffered_bytes = 0
        self._empty: Dict[int, WatchProgress] = {}
        self._waiter: Optional[defer.Deferred] = None
        self._error: Optional[Failure] = None
        self._probe = Periodic(clock, self._probe_once)
        self._stream: Optional[EventStream] = None
        #: The stream's next event answers the watch at this index.
        self._stream_at = 0
        self._stream_from = 0
        self._stream_last = 0
        self._stream_timer: Optional[IDelayedCall] = None
        self._stream_paused = False

    # -- the caller's side ----------------------------------------------------

    def reset(self, next_index: int) -> None:
        """Forget everything and read from ``next_index`` on."""
        self.close()
        self._results.clear()
        self._sizes.clear()
        self._buffered_bytes = 0
        self._empty.clear()
        self._error = None
        self._next = next_index
        self._stream_at = 0

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

    def close(self) -> None:
        """Cancel every watch and timer."""
        watches, self._watches = self._watches, {}
        for w in list(self._timers):
            self._cancel_timer(w)
        for watch in watches.values():
            watch.cancel()
        self._close_stream()
        self._stop_probe()

    def _cancelled(self) -> None:
        self._waiter = None
        self.close()

    # -- ordering -------------------------------------------------------------

    def _pop(self):
        if self._next in self._results:
            answer = self._results.pop(self._next)
            self._buffered_bytes -= self._sizes.pop(self._next, 0)
            self._advance(answer.result.modifiedIndex + 1)
            if (self._stream_paused and len(self._results) <= self.max_buffered // 2
                    and self._buffered_bytes <= self.max_buffered_bytes // 2):
                self._stream_paused = False
                assert self._stream is not None
                self._stream.resume()
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
                del table[w]
                self._buffered_bytes -= self._sizes.pop(w, 0)

    def _fill(self) -> None:
        """Open the watches the window needs: only past ``next`` while behind."""
        if self._error is not None or self._stream is not None:
            return  # an open stream covers everything from its position on
        # Events a closed stream left behind cover [next, _stream_at) already.
        start = max(self._next, self._stream_at)
        last = max(start, min(start + self.concurrency - 1, self._known + 1))
        if (self.use_stream and last == start and not self._watches
                and start not in self._results and start not in self._empty):
            self._open_stream(start)
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
        self._timers[w] = self.clock.callLater(self.idle_timeout, watch.finish, self.clock)
        self._start_probe()
        self._fill()

    def _answered(self, outcome, w: int, watch: PendingWatch) -> None:
        if self._watches.get(w) is not watch:
            return  # dropped meanwhile: its answer is covered by another one
        self._drop(w)
        if isinstance(outcome, Answer):
            event_index = outcome.result.modifiedIndex
            self._saw(max(outcome.etcd_index, event_index))
            self._results[w] = outcome
            # The watches between w and the event would return the same event.
            for later in [x for x in self._watches if w < x <= event_index]:
                self._drop(later).cancel()
        elif outcome.etcd_index >= w:
            self._empty[w] = outcome
        if self._stream is None and not any(t.active() for t in self._timers.values()):
            self._stop_probe()
        self._deliver()

    def _failed(self, failure: Failure, w: int, watch: PendingWatch) -> None:
        if self._watches.get(w) is not watch:
            return None  # we cancelled it ourselves
        self._drop(w)
        self.close()
        if self._waiter is not None:
            waiter, self._waiter = self._waiter, None
            waiter.errback(failure)
        else:
            self._error = failure
        return None

    # -- the stream ------------------------------------------------------------

    def _open_stream(self, w: int) -> None:
        self.streams_opened += 1
        stream = self.client.stream(self.prefix, w, lambda answer: self._streamed(stream, answer))
        self._stream = stream
        self._stream_at = self._stream_from = w
        self._stream_last = 0
        stream.registered.addCallback(self._stream_registered, stream)
        stream.done.addCallbacks(self._stream_ended, self._stream_failed,
                                 callbackArgs=(stream,), errbackArgs=(stream,))

    def _close_stream(self) -> None:
        stream, self._stream = self._stream, None
        self._stream_paused = False
        if self._stream_timer is not None and self._stream_timer.active():
            self._stream_timer.cancel()
        self._stream_timer = None
        if stream is not None:
            stream.cancel()

    def _arm_stream_timer(self, stream: EventStream) -> None:
        if self._stream_timer is not None and self._stream_timer.active():
            self._stream_timer.reset(self.idle_timeout)
        else:
            self._stream_timer = self.clock.callLater(
                self.idle_timeout, self._stream_idle, stream)

    def _stream_idle(self, stream: EventStream) -> None:
        if stream is not self._stream:
            return
        if self._stream_paused:
            self._arm_stream_timer(stream)  # paused by us, not quiet
            return
        stream.finish(self.clock)

    def _stream_registered(self, etcd_index: Optional[int], stream: EventStream) -> None:
        if stream is not self._stream or etcd_index is None:
            return
        log.debug("streaming watch on %r from %d registered at source index %d",
                  self.prefix, self._stream_from, etcd_index)
        self._saw(etcd_index)
        self._arm_stream_timer(stream)
        self._start_probe()

    def _streamed(self, stream: EventStream, answer: Answer) -> None:
        if stream is not self._stream:
            return
        index = answer.result.modifiedIndex
        if index < self._stream_at:
            # etcd sends a stream's events in index order; anything else is
            # not something we can place.
            self._stream_failed(Failure(EtcdUnavailable(
                f"streaming watch on {self.prefix!r}: event {index} arrived after "
                f"{self._stream_at - 1}")), stream)
            return
        self._saw(max(answer.etcd_index, index))
        self._results[self._stream_at] = answer
        size = len(answer.result.value or "")
        self._sizes[self._stream_at] = size
        self._buffered_bytes += size
        self._stream_at = index + 1
        self._stream_last = index
        if stream.events == 1 and stream.etcd_index is not None and index <= stream.etcd_index:
            # From etcd's history: it sends nothing more on this stream.
            log.debug("event %d came from etcd's history: closing the stream", index)
            self.streams_from_history += 1
            self._close_stream()
        else:
            self._arm_stream_timer(stream)
            if not self._stream_paused and (len(self._results) >= self.max_buffered or
                                            self._buffered_bytes >= self.max_buffered_bytes):
                log.debug("%d events (%d bytes of values) not applied yet: pausing the "
                          "stream", len(self._results), self._buffered_bytes)
                self._stream_paused = True
                stream.pause()
        self._deliver()

    def _stream_ended(self, end: StreamEnd, stream: EventStream) -> None:
        if stream is not self._stream:
            return
        self._close_stream()
        log.debug("streaming watch from %d ended (%s) after %d events", self._stream_from,
                  "idle" if end.idle else "by etcd", end.events)
        if end.events and not end.idle:
            log.info("etcd ended the streaming watch on %r after %d events (it does when "
                     "we read more slowly than it sends); reading on from index %d",
                     self.prefix, end.events, self._stream_at)
        if end.events == 0:
            if not end.idle:
                self._stream_failed(Failure(EtcdUnavailable(
                    f"streaming watch on {self.prefix!r} from {self._stream_from} ended "
                    f"without an event")), None)
                return
            if end.etcd_index is not None and end.etcd_index >= self._stream_from:
                # Quiet since registration: nothing in [from, X-Etcd-Index].
                self._empty[self._stream_from] = WatchProgress(end.etcd_index, end.cluster_id)
        self._deliver()

    def _stream_failed(self, failure: Failure, stream: Optional[EventStream]) -> None:
        if stream is not None and stream is not self._stream:
            return None  # closed by us
        if stream is not None and stream.etcd_index is None and failure.check(EtcdTimeout):
            # A plain watch gets its headers when its event arrives; a stream
            # gets them at once, unless something in between holds the
            # answer until it is complete, which a stream never is.
            log.warning("the streaming watch on %r got no answer headers within the "
                        "timeout: is there a proxy that buffers answers? Using one "
                        "request per event from now on (--no-watch-stream makes "
                        "this permanent)", self.prefix)
            self.use_stream = False
        self.close()
        if self._waiter is not None:
            waiter, self._waiter = self._waiter, None
            waiter.errback(failure)
        else:
            self._error = failure
        return None

    # -- the index probe --------------------------------------------------------

    def _start_probe(self) -> None:
        if self.probe_interval > 0:
            self._probe.start(self.probe_interval, now=False)

    def _stop_probe(self) -> None:
        self._probe.stop()

    @defer.inlineCallbacks
    def _probe_once(self):
        pending = [w for w in self._watches if w in self._timers]
        stream = self._stream
        if stream is not None and (stream.etcd_index is None or self._stream_paused):
            stream = None
        if not pending and stream is None:
            return
        streamed = stream.events if stream is not None else 0
        try:
            current = (yield self.client.probe()).etcd_index
        except Exception as e:  # a failed probe changes nothing; the watches decide
            log.debug("index probe failed: %s", e)
            return
        if current is None:
            return
        for w in pending:
            watch = self._watches.get(w)
            if (watch is not None and watch.etcd_index is not None
                    and current - watch.etcd_index >= self.probe_threshold):
                log.debug("source moved from %d to %d: renewing the watch at %d early",
                          watch.etcd_index, current, w)
                self.early_renewals += 1
                watch.finish(self.clock)
        if stream is not None and stream is self._stream and stream.events == streamed:
            # (A stream that got events meanwhile is busy, not quiet: its
            # events move the index on.)
            assert stream.etcd_index is not None
            seen = max(stream.etcd_index, self._stream_last)
            if current - seen >= self.probe_threshold:
                log.debug("source moved from %d to %d: renewing the stream at %d early",
                          seen, current, self._stream_at)
                self.early_renewals += 1
                stream.finish(self.clock)
