"""A lean HTTP/1.1 client for the destination's writes: bytes in, answer out.

Every replicated event is one write to the destination, in order, each
waiting for the one before; a resync writes thousands.  Twisted's ``Agent``
spends about 0.4 ms of CPU per PUT (header objects, a ``lineReceived`` per
header line, an endpoint and its IDNA check per request, several Deferred
layers); this client spends about 0.1 ms (BENCHMARKS.md).  It does only what
etcd's write answers need:

* keep-alive connections, each request answered in the order sent: the
  pool's connections carry one request at a time (a resync's writes, which
  need no order, go on several at once); each endpoint's *ordered lane* is
  one connection on which the replicated events' writes are pipelined, sent
  back to back in source order (etcd reads and answers the requests of a
  connection one after another: ``tests/test_pipelining.py``);
* the request is built by the caller as bytes (:func:`build_request`);
* the answer's status line, its headers, and a body with ``Content-Length``
  or ``Transfer-Encoding: chunked`` (etcd uses both, by size);
* anything else (a malformed answer, bytes nobody asked for, a connection
  that closes) fails the request and drops the connection, never reused;
* a timeout, or a cancelled request, aborts the connection: a write whose
  answer never came cannot land later through it.

Plain ``http://`` only: ``https://`` endpoints keep Twisted's ``Agent``,
whose TLS errors the transport knows how to report.
"""

from collections import deque
from typing import Any, Deque, Dict, List, Optional, Tuple

from twisted.internet import defer
from twisted.internet.endpoints import HostnameEndpoint, connectProtocol
from twisted.internet.error import ConnectionAborted, ConnectionDone
from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.internet.protocol import Protocol
from twisted.python.failure import Failure
from twisted.web.client import ResponseDone

from etcdmirror.endpoints import Endpoint

#: Largest header block and body accepted (a write's answer holds at most two
#: values of 1.5 MiB each; be generous, but bounded).
MAX_HEAD = 64 * 1024
MAX_BODY = 16 * 1024 * 1024


class BadHttpAnswer(Exception):
    """The destination's answer is not HTTP/1.1 this client understands."""


def build_request(method: str, endpoint: Endpoint, path: str, headers: bytes,
                  body: Optional[bytes]) -> bytes:
    """The bytes of one request; ``headers`` are extra ``Name: value\\r\\n`` lines."""
    host = f"[{endpoint.host}]" if ":" in endpoint.host else endpoint.host
    head = (f"{method} {path} HTTP/1.1\r\nHost: {host}:{endpoint.port}\r\n").encode("ascii")
    if body is None:
        return head + headers + b"\r\n"
    return head + headers + b"Content-Length: %d\r\n\r\n" % len(body) + body


class RawHeaders:
    """The answer's headers, read the way :class:`twisted.web.http_headers.Headers` is."""

    def __init__(self, values: Dict[bytes, List[bytes]]) -> None:
        self._values = values

    def getRawHeaders(self, name: bytes, default: Any = None) -> Any:
        return self._values.get(name.lower(), default)


class RawResponse:
    """An answer read whole: ``code``, ``headers``, and the body for ``deliverBody``."""

    def __init__(self, code: int, headers: RawHeaders, body: bytes) -> None:
        self.code = code
        self.headers = headers
        self.body = body

    def deliverBody(self, protocol: Any) -> None:
        protocol.dataReceived(self.body)
        protocol.connectionLost(Failure(ResponseDone()))


class WriteConnection(Protocol):
    """One keep-alive connection; requests are answered in the order sent.

    The pool (:meth:`WritePool.request`) sends one request at a time on it;
    an ordered lane (:meth:`WritePool.ordered`) pipelines them: requests
    made before the connection is up are sent, in order, once it is.  With
    a ``clock``, one timer watches the oldest request's deadline (later
    requests were sent later, with the same timeout); when it passes, that
    request fails with ``CancelledError`` and the connection is aborted,
    failing every request behind it.
    """

    def __init__(self, clock: Optional[IReactorTime] = None) -> None:
        self._buffer = bytearray()
        self._pending: Deque[defer.Deferred] = deque()
        self._deadlines: Deque[float] = deque()
        self._unsent: List[bytes] = []
        self._clock = clock
        self._timer: Optional[IDelayedCall] = None
        #: The connection attempt of a lane, until it succeeds.
        self.connecting: Optional[defer.Deferred] = None
        self.usable = True

    @property
    def idle(self) -> bool:
        """Reusable, and no request waits for an answer."""
        return (self.usable and not self._pending and self.transport is not None
                and self.transport.connected)

    def request(self, data: bytes, deadline: Optional[float] = None) -> defer.Deferred:
        """Send ``data`` after every request before it; fires with a :class:`RawResponse`.

        ``deadline`` (on the ``clock``): see the class docstring.
        """
        assert self.usable
        d = defer.Deferred(self._cancelled)
        self._pending.append(d)
        if self.transport is None:
            self._unsent.append(data)
        else:
            self.transport.write(data)
        if deadline is not None and self._clock is not None:
            self._deadlines.append(deadline)
            if self._timer is None:
                self._timer = self._clock.callLater(
                    max(0.0, deadline - self._clock.seconds()), self._timed_out)
        return d

    def connectionMade(self) -> None:
        self.connecting = None
        if self._unsent:
            unsent, self._unsent = self._unsent, []
            self.transport.writeSequence(unsent)

    def connect_failed(self, failure: Failure) -> None:
        """The lane's connection attempt failed: so does every request made on it."""
        self.connecting = None
        self._fail_all(failure)

    @property
    def waiting(self) -> bool:
        """Some request sent here waits for its answer."""
        return bool(self._pending)

    def _cancelled(self, d: defer.Deferred) -> None:
        """A request given up on (its deadline, or its caller): it fails with
        ``CancelledError``, and the connection goes with it."""
        if d in self._pending:
            self._pending.remove(d)
        self.abort()

    def abort(self, why: str = "connection aborted after a request was given up on") -> None:
        """Drop the connection; every request still waiting fails now, not later:
        nothing sent after this can be answered before them."""
        self.usable = False
        if self.transport is not None:
            self.transport.abortConnection()
        elif self.connecting is not None:
            self.connecting.cancel()
        self._fail_all(Failure(ConnectionAborted(why)))

    def dataReceived(self, data: bytes) -> None:
        if not self._pending:
            self._fail(BadHttpAnswer("bytes from the server with no request in flight"))
            return
        self._buffer += data
        while self._pending and self.usable:
            try:
                parsed = _parse(self._buffer)
            except BadHttpAnswer as e:
                self._fail(e)
                return
            if parsed is None:
                return
            response, used, close = parsed
            del self._buffer[:used]
            if close:
                self.usable = False
                self.transport.loseConnection()
            self._answered().callback(response)
            if close:
                # Whatever was sent after this request gets no answer.
                self._fail_all(Failure(ConnectionDone(
                    "the server closed the connection after an answer")))
        if self._buffer and self.usable:
            # Bytes nobody asked for: this connection cannot be trusted again.
            self.usable = False
            self.transport.loseConnection()

    def _answered(self) -> defer.Deferred:
        """The oldest request, taken off the queue; its deadline's timer moves on."""
        if self._deadlines:
            self._deadlines.popleft()
            if self._timer is not None:
                if self._deadlines:
                    self._timer.reset(max(0.0, self._deadlines[0] - self._clock.seconds()))
                else:
                    self._timer.cancel()
                    self._timer = None
        return self._pending.popleft()

    def _timed_out(self) -> None:
        self._timer = None
        if self._pending:
            self._pending[0].cancel()

    def connectionLost(self, reason: Failure = Failure(ConnectionDone())) -> None:
        self._fail_all(reason)

    def _fail(self, error: Exception) -> None:
        self._fail_all(Failure(error))
        self.abort()

    def _fail_all(self, reason: Failure) -> None:
        self.usable = False
        if self._timer is not None and self._timer.active():
            self._timer.cancel()
        self._timer = None
        self._deadlines.clear()
        pending, self._pending = self._pending, deque()
        for d in pending:
            if not d.called:  # a cancelled request failed already
                d.errback(reason)


def _parse(buffer: bytearray) -> Optional[Tuple[RawResponse, int, bool]]:
    """``(response, bytes used, close after)`` once ``buffer`` holds a whole answer."""
    end = buffer.find(b"\r\n\r\n")
    if end < 0:
        if len(buffer) > MAX_HEAD:
            raise BadHttpAnswer("answer headers too long")
        return None
    lines = bytes(buffer[:end]).split(b"\r\n")
    status = lines[0].split(b" ", 2)
    if len(status) < 2 or not status[0].startswith(b"HTTP/1.") or not status[1].isdigit():
        raise BadHttpAnswer(f"not an HTTP/1.1 status line: {lines[0][:80]!r}")
    code = int(status[1])
    headers: Dict[bytes, List[bytes]] = {}
    for line in lines[1:]:
        name, sep, value = line.partition(b":")
        if not sep:
            raise BadHttpAnswer(f"malformed header line {line[:80]!r}")
        headers.setdefault(name.strip().lower(), []).append(value.strip())
    start = end + 4
    close = (b"close" in (v.lower() for v in headers.get(b"connection", []))
             or status[0] == b"HTTP/1.0")
    if b"chunked" in (v.lower() for v in headers.get(b"transfer-encoding", [])):
        found = _chunked(buffer, start)
        if found is None:
            return None
        body, used = found
    else:
        lengths = headers.get(b"content-length")
        if lengths is None:
            if 100 <= code < 200 or code in (204, 304):
                body, used = b"", start
            else:
                raise BadHttpAnswer("answer without Content-Length or chunked body")
        else:
            try:
                length = int(lengths[0])
            except ValueError:
                raise BadHttpAnswer(f"bad Content-Length {lengths[0][:40]!r}") from None
            if length < 0 or length > MAX_BODY:
                raise BadHttpAnswer(f"Content-Length {length} out of bounds")
            if len(buffer) < start + length:
                return None
            body, used = bytes(buffer[start:start + length]), start + length
    return RawResponse(code, RawHeaders(headers), body), used, close


def _chunked(buffer: bytearray, at: int) -> Optional[Tuple[bytes, int]]:
    """A chunked body starting at ``at``: ``(body, end)``, or None if incomplete."""
    parts = []
    size_total = 0
    while True:
        eol = buffer.find(b"\r\n", at)
        if eol < 0:
            return None
        size_text = bytes(buffer[at:eol]).split(b";", 1)[0].strip()
        try:
            size = int(size_text, 16)
        except ValueError:
            raise BadHttpAnswer(f"bad chunk size {size_text[:40]!r}") from None
        size_total += size
        if size < 0 or size_total > MAX_BODY:
            raise BadHttpAnswer("chunked body out of bounds")
        if size == 0:
            # Trailers (none from etcd) end with an empty line.
            trailer_end = buffer.find(b"\r\n\r\n", eol)
            if buffer[eol:eol + 4] == b"\r\n\r\n":
                return b"".join(parts), eol + 4
            if trailer_end < 0:
                return None
            return b"".join(parts), trailer_end + 4
        data_start = eol + 2
        if len(buffer) < data_start + size + 2:
            return None
        if buffer[data_start + size:data_start + size + 2] != b"\r\n":
            raise BadHttpAnswer("chunk not followed by CRLF")
        parts.append(bytes(buffer[data_start:data_start + size]))
        at = data_start + size + 2


class WritePool:
    """Keep-alive :class:`WriteConnection` s per endpoint, made as needed."""

    def __init__(self, reactor: IReactorTime, connect_timeout: float = 10.0,
                 max_idle: int = 8) -> None:
        self.reactor = reactor
        self.connect_timeout = connect_timeout
        self.max_idle = max_idle
        self._idle: Dict[Endpoint, List[WriteConnection]] = {}
        #: The ordered lane, and the endpoint it is connected to.
        self._lane: Optional[WriteConnection] = None
        self._lane_endpoint: Optional[Endpoint] = None

    def _connect(self, endpoint: Endpoint, conn: WriteConnection) -> defer.Deferred:
        return connectProtocol(
            HostnameEndpoint(self.reactor, endpoint.host.encode("idna"), endpoint.port,
                             timeout=self.connect_timeout), conn)

    @defer.inlineCallbacks
    def request(self, endpoint: Endpoint, data: bytes, timeout: float):
        """Send one request; fires with its :class:`RawResponse`.

        No answer within ``timeout`` seconds (connecting included): the
        connection is aborted and the Deferred fails with ``CancelledError``.
        """
        idle = self._idle.get(endpoint)
        while idle:
            conn = idle.pop()
            if conn.idle:
                break
        else:
            conn = None
        deadline = self.reactor.seconds() + timeout
        if conn is None:
            conn = yield self._within(self._connect(endpoint, WriteConnection()), deadline)
        response = yield self._within(conn.request(data), deadline)
        if conn.usable:
            kept = self._idle.setdefault(endpoint, [])
            if len(kept) < self.max_idle:
                kept.append(conn)
            else:
                conn.transport.loseConnection()
        return response

    def lane_endpoint(self) -> Optional[Endpoint]:
        """The endpoint of the ordered lane while writes sent there wait for their
        answers: the next ordered write must go there too, behind them, even if
        the cluster's current endpoint moved meanwhile (another request failed)."""
        lane = self._lane
        return self._lane_endpoint if lane is not None and lane.waiting else None

    def ordered(self, endpoint: Endpoint, data: bytes, timeout: float) -> defer.Deferred:
        """Send ``data`` on the ordered lane, after every request sent there before.

        Fires with its :class:`RawResponse`.  No answer within ``timeout``
        seconds (connecting included): this request fails with
        ``CancelledError`` and every one behind it at once with the aborted
        connection; the next request opens a new lane.  A lane to another
        endpoint is replaced (callers follow :meth:`lane_endpoint`).
        """
        lane = self._lane
        if lane is None or not lane.usable or self._lane_endpoint != endpoint:
            if lane is not None and lane.usable:
                lane.abort("the ordered lane moved to another endpoint")
            lane = self._lane = WriteConnection(self.reactor)
            self._lane_endpoint = endpoint
            lane.connecting = self._connect(endpoint, lane)
            lane.connecting.addErrback(lane.connect_failed)
        return lane.request(data, self.reactor.seconds() + timeout)

    @defer.inlineCallbacks
    def _within(self, d: defer.Deferred, deadline: float):
        """``d``'s result, or ``CancelledError`` (``d`` cancelled) at ``deadline``."""
        timer = self.reactor.callLater(max(0.0, deadline - self.reactor.seconds()), d.cancel)
        try:
            result = yield d
        finally:
            if timer.active():
                timer.cancel()
        return result

    def close(self) -> None:
        """Close the idle connections and the lanes (requests in flight there fail)."""
        conns = [conn for kept in self._idle.values() for conn in kept]
        for conn in conns + ([self._lane] if self._lane is not None else []):
            if conn.transport is not None:
                conn.transport.loseConnection()
            elif conn.connecting is not None:
                conn.connecting.cancel()
        self._idle.clear()
        self._lane = None
