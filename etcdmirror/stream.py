"""Follows the source prefix with one streaming watch while the mirror is caught up.

A plain watch returns one event per request.  A streaming watch
(``stream=true``) can carry every event over one request, but etcd v2 only
does that in one of the two cases below, and the ``X-Etcd-Index`` of the
stream's headers (the store index ``S`` at registration) tells which:

* if an event under the prefix with index in ``[waitIndex, S]`` is in the
  history, etcd sends that one event and *nothing more, ever* on this
  stream.  Its index is ``<= S``: we take it and close the stream;
* otherwise etcd registered the watch ahead of the store, and sends every
  later event under the prefix, in order.  The first event's index is then
  ``> S``.

A stream that has delivered nothing proves what a pending watch proves: no
event under the prefix in ``[waitIndex, S]``.  Once it has delivered events it
proves nothing beyond the last of them.  That matters: when etcd cannot queue
an event for a stream that is not being read (its queue holds 100), etcd 3.4
drops the watcher *and leaves the response open*, silent, exactly like a
quiet prefix.  So a stream is renewed like a pending watch, after
``idle_timeout`` seconds without an event or when an index probe shows the
cluster moved ``probe_threshold`` events past what the stream told us, and
the window reads on after the last event received.

:class:`StreamFollower` owns the stream and its timer; the
:class:`~etcdmirror.watcher.WatchWindow` owns ordering and buffering, and gets
each event with the watch index it answers.
"""

import logging
from typing import Callable, Optional, Tuple

from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.python.failure import Failure

from etcdmirror.answers import Answer, EtcdTimeout, EtcdUnavailable, StreamEnd
from etcdmirror.client import EtcdClient
from etcdmirror.events import WatchProgress
from etcdmirror.watches import EventStream

log = logging.getLogger(__name__)


class StreamFollower:
    """At most one streaming watch on ``prefix``, reported through callbacks.

    * ``on_registered(etcd_index)``: etcd registered the stream at that index;
    * ``on_event(w, answer)``: ``answer`` is what a plain watch at ``w`` returns;
    * ``on_progress(w, progress)``: no event under the prefix in
      ``[w, progress.etcd_index]``;
    * ``on_end()``: the stream is closed; the window decides what comes next;
    * ``on_error(failure)``: the stream failed (retry with backoff).
    """

    def __init__(
        self,
        client: EtcdClient,
        prefix: str,
        clock: IReactorTime,
        on_registered: Callable[[int], None],
        on_event: Callable[[int, Answer], None],
        on_progress: Callable[[int, WatchProgress], None],
        on_end: Callable[[], None],
        on_error: Callable[[Failure], None],
        idle_timeout: float = 5.0,
        probe_threshold: int = 200,
        enabled: bool = True,
    ) -> None:
        self.client = client
        self.prefix = prefix
        self.clock = clock
        self.on_registered = on_registered
        self.on_event = on_event
        self.on_progress = on_progress
        self.on_end = on_end
        self.on_error = on_error
        self.idle_timeout = idle_timeout
        self.probe_threshold = probe_threshold
        #: False: plain watches only (``--no-watch-stream``, or a proxy that
        #: buffers answers was detected).
        self.enabled = enabled
        #: The watch index the stream's next event answers.  After the stream
        #: closed, the events before it have all been handed over.
        self.position = 0
        self.paused = False
        self.opened = 0
        self.from_history = 0
        self.early_renewals = 0
        #: Times the stream was given up for plain watches (a buffering proxy).
        self.fallbacks = 0
        self._stream: Optional[EventStream] = None
        self._from = 0
        self._last = 0
        self._timer: Optional[IDelayedCall] = None

    @property
    def active(self) -> bool:
        return self._stream is not None

    @property
    def registered(self) -> bool:
        return self._stream is not None and self._stream.etcd_index is not None

    def open(self, w: int) -> None:
        self.close()
        self.opened += 1
        stream = self.client.stream(self.prefix, w, lambda answer: self._event(stream, answer))
        self._stream = stream
        self.position = self._from = w
        self._last = 0
        stream.registered.addCallback(self._registered, stream)
        stream.done.addCallbacks(self._ended, self._failed,
                                 callbackArgs=(stream,), errbackArgs=(stream,))

    def close(self) -> None:
        stream, self._stream = self._stream, None
        self.paused = False
        if self._timer is not None and self._timer.active():
            self._timer.cancel()
        self._timer = None
        if stream is not None:
            stream.cancel()

    def reset(self) -> None:
        self.close()
        self.position = 0

    def pause(self) -> None:
        """Stop reading (too many events wait); etcd drops the stream in time."""
        if self._stream is not None and not self.paused:
            self.paused = True
            self._stream.pause()

    def resume(self) -> None:
        if self._stream is not None and self.paused:
            self.paused = False
            self._stream.resume()

    def probe_token(self) -> Tuple[Optional[EventStream], int]:
        """What :meth:`probed` needs to know about the stream when a probe is sent."""
        return self._stream, self._stream.events if self._stream is not None else 0

    def probed(self, current: int, token: Tuple[Optional[EventStream], int]) -> None:
        """The source is at ``current``; renew the stream if it fell far behind.

        ``token``: :meth:`probe_token` from when the probe was sent.  A stream
        that got events meanwhile is busy, not quiet: its events move the
        index on.
        """
        stream, events_before = token
        if stream is None or stream is not self._stream or stream.etcd_index is None:
            return
        if self.paused or stream.events != events_before:
            return
        seen = max(stream.etcd_index, self._last)
        if current - seen >= self.probe_threshold:
            log.debug("source moved from %d to %d: renewing the stream at %d early",
                      seen, current, self.position)
            self.early_renewals += 1
            stream.finish()

    # -- the stream's callbacks -------------------------------------------------

    def _arm_timer(self, stream: EventStream) -> None:
        if self._timer is not None and self._timer.active():
            self._timer.reset(self.idle_timeout)
        else:
            self._timer = self.clock.callLater(self.idle_timeout, self._idle, stream)

    def _idle(self, stream: EventStream) -> None:
        if stream is not self._stream:
            return
        if self.paused:
            self._arm_timer(stream)  # paused by us, not quiet
            return
        stream.finish()

    def _registered(self, etcd_index: Optional[int], stream: EventStream) -> None:
        if stream is not self._stream or etcd_index is None:
            return
        log.debug("streaming watch on %r from %d registered at source index %d",
                  self.prefix, self._from, etcd_index)
        self._arm_timer(stream)
        self.on_registered(etcd_index)

    def _event(self, stream: EventStream, answer: Answer) -> None:
        if stream is not self._stream:
            return
        index = answer.event.modifiedIndex
        if index < self.position:
            # etcd sends a stream's events in index order; anything else is
            # not something we can place.
            self._failed(Failure(EtcdUnavailable(
                f"streaming watch on {self.prefix!r}: event {index} arrived after "
                f"{self.position - 1}")), stream)
            return
        w, self.position, self._last = self.position, index + 1, index
        if stream.events == 1 and stream.etcd_index is not None and index <= stream.etcd_index:
            # From etcd's history: it sends nothing more on this stream.
            log.debug("event %d came from etcd's history: closing the stream", index)
            self.from_history += 1
            self.close()
            self.on_event(w, answer)
            self.on_end()
            return
        self._arm_timer(stream)
        self.on_event(w, answer)

    def _ended(self, end: StreamEnd, stream: EventStream) -> None:
        if stream is not self._stream:
            return
        self.close()
        log.debug("streaming watch from %d ended (%s) after %d events", self._from,
                  "idle" if end.idle else "by etcd", end.events)
        if end.events and not end.idle:
            log.info("etcd ended the streaming watch on %r after %d events; reading on "
                     "from index %d", self.prefix, end.events, self.position)
        if end.events == 0:
            if not end.idle:
                self.on_error(Failure(EtcdUnavailable(
                    f"streaming watch on {self.prefix!r} from {self._from} ended "
                    f"without an event")))
                return
            if end.etcd_index is not None and end.etcd_index >= self._from:
                # Quiet since registration: nothing in [from, X-Etcd-Index].
                self.on_progress(self._from, WatchProgress(end.etcd_index, end.cluster_id))
        self.on_end()

    def _failed(self, failure: Failure, stream: EventStream) -> None:
        if stream is not self._stream:
            return None  # closed by us
        if stream.etcd_index is None and failure.check(EtcdTimeout):
            # A plain watch gets its headers when its event arrives; a stream
            # gets them at once, unless something in between holds the
            # answer until it is complete, which a stream never is.
            log.warning("the streaming watch on %r got no answer headers within the "
                        "timeout: is there a proxy that buffers answers? Using one "
                        "request per event from now on (--no-watch-stream makes "
                        "this permanent)", self.prefix)
            self.enabled = False
            self.fallbacks += 1
        self.close()
        self.on_error(failure)
        return None
