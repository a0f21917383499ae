"""Response and request bodies: read a whole answer or a stream's events, write a form at once.

Both readers cap what they hold and can be stopped on purpose
(:meth:`Collector.abort`); a stop ends their Deferred with :class:`Aborted`,
so the caller can tell "we stopped it" (an idle watch, an oversized body)
from a connection that broke.
"""

from typing import Any, Callable, List, Optional

from twisted.internet import defer
from twisted.internet.error import ConnectionDone
from twisted.internet.protocol import Protocol
from twisted.python.failure import Failure
from twisted.web.client import ResponseDone
from twisted.web.http import PotentialDataLoss
from twisted.web.iweb import IBodyProducer
from zope.interface import implementer


class Aborted(Exception):
    """We stopped reading a body on purpose (idle watch or oversized body)."""


class Collector(Protocol):
    """Collects a response body, up to ``limit`` bytes; ``finished`` fires with it."""

    def __init__(self, finished: defer.Deferred, limit: int) -> None:
        self.finished = finished
        self.limit = limit
        self.parts: List[bytes] = []
        self.size = 0
        self.aborted_by: Optional[str] = None

    def dataReceived(self, data: bytes) -> None:
        self.size += len(data)
        if self.size > self.limit:
            self.abort("body too large")
            return
        self.parts.append(data)

    def abort(self, why: str) -> None:
        if self.aborted_by is None:
            self.aborted_by = why
            self.transport.stopProducing()

    def connectionLost(self, reason: Failure = ConnectionDone()) -> None:
        if self.finished.called:
            return
        if self.aborted_by is not None:
            self.finished.errback(Aborted(self.aborted_by))
        elif reason.check(ResponseDone, PotentialDataLoss):
            self.finished.callback(b"".join(self.parts))
        else:
            self.finished.errback(reason)


class EventLines(Protocol):
    """Splits a streaming watch's body into events: etcd ends each with a newline.

    ``on_line`` gets each event's line as it completes; ``events`` counts
    them (it is one ahead while ``on_line`` runs).  An exception from
    ``on_line`` stops the stream and fails ``finished`` with it.
    """

    def __init__(self, on_line: Callable[[bytes], None], finished: defer.Deferred,
                 limit: int) -> None:
        self.on_line = on_line
        self.finished = finished
        self.limit = limit
        self.partial = b""
        self.events = 0
        self.aborted_by: Optional[str] = None
        self.error: Optional[BaseException] = None

    def dataReceived(self, data: bytes) -> None:
        if self.aborted_by is not None:
            return
        *lines, self.partial = (self.partial + data).split(b"\n")
        for line in lines:
            if not line.strip():
                continue
            self.events += 1
            try:
                self.on_line(line)
            except Exception as e:
                self.error = e
                self.abort("a bad event")
                return
        if len(self.partial) > self.limit:
            self.abort("event too large")

    def abort(self, why: str) -> None:
        if self.aborted_by is None:
            self.aborted_by = why
            if self.transport is not None:
                self.transport.stopProducing()

    def connectionLost(self, reason: Failure = ConnectionDone()) -> None:
        if self.finished.called:
            return
        if self.error is not None:
            self.finished.errback(self.error)
        elif self.aborted_by is not None:
            self.finished.errback(Aborted(self.aborted_by))
        elif reason.check(ResponseDone, PotentialDataLoss) and not self.partial.strip():
            self.finished.callback(None)
        elif reason.check(ResponseDone, PotentialDataLoss):
            self.finished.errback(Aborted("the stream ended inside an event"))
        else:
            self.finished.errback(reason)


@implementer(IBodyProducer)
class BytesBody:
    """A request body that is written at once.

    treq would wrap bytes in a ``FileBodyProducer``, which writes them one
    reactor turn later through a cooperator: a turn and a timer per write,
    on the path every replicated event takes.
    """

    def __init__(self, data: bytes) -> None:
        self.data = data
        self.length = len(data)

    def startProducing(self, consumer: Any) -> defer.Deferred:
        consumer.write(self.data)
        return defer.succeed(None)

    def pauseProducing(self) -> None:
        pass

    def resumeProducing(self) -> None:
        pass

    def stopProducing(self) -> None:
        pass
