"""Watch handles: a plain or a streaming watch in flight, which we may stop reading on purpose.

A watch's response headers arrive as soon as etcd has registered it, before
any event (:attr:`Handle.registered` fires with their ``X-Etcd-Index``).  A
watch may then be finished early (:meth:`Handle.finish`), in which case its
outcome reports what the headers proved; what that is worth is the
business of :mod:`etcdmirror.watcher` and :mod:`etcdmirror.stream`.

A handle is built whole by :class:`~etcdmirror.client.EtcdClient` (or a
test's fake source): with the Deferred of its outcome, the Deferred of its
:class:`Registration`, and the clock.
"""

from dataclasses import dataclass
from typing import Any, Optional

from twisted.internet import defer
from twisted.internet.interfaces import IReactorTime

#: How long a watch answer that has started may take to complete.
BODY_STALL_SECONDS = 30.0


@dataclass(frozen=True)
class Registration:
    """What a watch's response headers brought.

    ``etcd_index``: their ``X-Etcd-Index`` (None when missing).  ``body``:
    the reader of the rest of the answer, :class:`~etcdmirror.bodies.Collector`
    for a plain watch, :class:`~etcdmirror.bodies.EventLines` for a stream;
    the handle stops it with ``abort(why)``.
    """

    etcd_index: Optional[int]
    body: Any


class Handle:
    """What a plain watch and a streaming watch share: headers first, then a
    body we may stop reading on purpose (:meth:`finish`)."""

    def __init__(self, outcome: defer.Deferred, registration: defer.Deferred,
                 clock: IReactorTime) -> None:
        self._outcome = outcome
        self._clock = clock
        #: The body reader, once the headers have arrived.
        self._body: Optional[Any] = None
        #: The ``X-Etcd-Index`` of the headers, once they have arrived.
        self.etcd_index: Optional[int] = None
        #: Fires with the ``X-Etcd-Index`` header when etcd has registered the watch.
        self.registered: defer.Deferred = registration.addCallback(self._on_registration)

    def _on_registration(self, registration: Registration) -> Optional[int]:
        self._body = registration.body
        self.etcd_index = registration.etcd_index
        return registration.etcd_index

    def _midway(self) -> bool:
        """True while part of an answer (an event) has arrived, not all of it."""
        raise NotImplementedError

    def finish(self) -> None:
        """Stop reading; the outcome reports what the headers proved.

        The abort happens one reactor turn later, so that bytes already on
        the socket (an event sent just before, or while the process was
        stopped) are read first.  An event that has started is given
        :data:`BODY_STALL_SECONDS` to complete; one that never does (a broken
        proxy) fails the request, which is then retried at the same index.
        """
        self._clock.callLater(0, self._finish_now)

    def _finish_now(self) -> None:
        if self._body is None or self._outcome.called:
            return
        if not self._midway():
            self._body.abort("idle")
        else:
            self._clock.callLater(BODY_STALL_SECONDS, self._abort_stalled)

    def _abort_stalled(self) -> None:
        if self._body is not None and not self._outcome.called and self._midway():
            self._body.abort(f"an answer stalled for {BODY_STALL_SECONDS:g}s")

    def cancel(self) -> None:
        self._outcome.cancel()


class PendingWatch(Handle):
    """A watch request in flight.

    ``registered`` fires with the ``X-Etcd-Index`` header as soon as etcd has
    registered the watch (its headers arrive before any event); ``result``
    fires with the event (:class:`~etcdmirror.answers.Answer`) or, after
    :meth:`finish`, with :class:`~etcdmirror.answers.WatchProgress`: a watch
    is only "pending" if its body is empty.
    """

    def __init__(self, result: defer.Deferred, registration: defer.Deferred,
                 clock: IReactorTime) -> None:
        super().__init__(result, registration, clock)
        self.result = result

    def _midway(self) -> bool:
        return self._body is not None and self._body.size > 0


class EventStream(Handle):
    """A streaming watch (``stream=true``) in flight.

    ``registered`` fires with the ``X-Etcd-Index`` header when etcd has
    registered the watch; the events go to the ``on_event`` the stream was
    asked for with (:meth:`~etcdmirror.client.EtcdClient.stream`), in the
    order etcd sent them; ``done`` fires with
    :class:`~etcdmirror.answers.StreamEnd` when the response ends (after
    :meth:`finish`, with ``idle=True``), or fails like any request.
    """

    def __init__(self, done: defer.Deferred, registration: defer.Deferred,
                 clock: IReactorTime) -> None:
        super().__init__(done, registration, clock)
        self.done = done

    @property
    def events(self) -> int:
        """How many events the stream has delivered so far."""
        return self._body.events if self._body is not None else 0

    def _midway(self) -> bool:
        return self._body is not None and bool(self._body.partial)

    def pause(self) -> None:
        """Stop reading for now (what etcd does meanwhile: :mod:`etcdmirror.stream`)."""
        if self._body is not None and self._body.transport is not None:
            self._body.transport.pauseProducing()

    def resume(self) -> None:
        if self._body is not None and self._body.transport is not None:
            self._body.transport.resumeProducing()
