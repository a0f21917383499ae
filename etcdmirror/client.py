"""A thin, non-blocking etcd v2 client on treq.

Only what the mirror needs: read a node (optionally recursive and through
consensus), write one, delete one, and watch a prefix.  Answers are
python-etcd's :class:`etcd.EtcdResult` objects and errors are python-etcd's
exception types (``errorCode`` -> exception), so the rest of the mirror speaks
the same vocabulary as every other etcd tool in Python.  What python-etcd does
not have, we add as types here: :class:`EtcdUnavailable` for anything worth
retrying and :class:`BadResponse` for an answer that is not etcd's.

Two things are deliberate:

* every exception message names the request (method, key, endpoint) and never
  the credentials;
* a watch can be finished early, in which case it reports the
  ``X-Etcd-Index`` that etcd sent with the response headers when it
  registered the watch.  No event under the
  prefix exists between ``waitIndex`` and that index, which is what keeps a
  quiet prefix inside etcd's 1000-event history;
* a streaming watch (:meth:`EtcdClient.stream`) hands over each event as its
  line arrives, so a mirror that is caught up costs no request per event.
  Whether etcd will send more than one event on it is the window's business
  (see :mod:`etcdmirror.watcher`): this module only reports what arrived.
"""

import json
from dataclasses import dataclass
from typing import Any, Callable, Dict, List, Optional, Tuple, Union
from urllib.parse import quote, urlencode

import etcd
import treq
from twisted.internet import defer
from twisted.internet.error import ConnectionDone
from twisted.internet.interfaces import IReactorTime
from twisted.internet.protocol import Protocol
from twisted.python.failure import Failure
from twisted.web.client import Agent, HTTPConnectionPool, ResponseDone
from twisted.web.http import PotentialDataLoss
from twisted.web.iweb import IBodyProducer
from zope.interface import implementer

from etcdmirror.endpoints import Cluster, Endpoint

#: Largest response body we accept (etcd's own request limit is 1.5 MiB per
#: value; a recursive snapshot of a big prefix is larger, so be generous).
MAX_BODY = 512 * 1024 * 1024

#: How long a watch answer that has started may take to complete.
BODY_STALL_SECONDS = 30.0

#: A key nobody writes: reading it is the cheapest way to learn the index.
#: Hidden (a leading "_"): never listed in a recursive read, never watched.
PROBE_KEY = "/__etcd_mirror_index_probe"

#: errorCodes that mean "try again", not "you asked for something wrong".
TRANSIENT_ERROR_CODES = {300, 301, 400}


class EtcdUnavailable(etcd.EtcdConnectionFailed):
    """The request did not get an answer we can act on; it is worth retrying."""


class EtcdTimeout(EtcdUnavailable):
    """No answer (not even the response headers) within the request timeout."""


class TLSError(etcd.EtcdException):
    """The TLS handshake failed: an unknown CA, a wrong host name, a refused client cert."""


class BadResponse(EtcdUnavailable):
    """Something answered, but not with an etcd v2 response (proxy page, junk)."""


@dataclass
class Answer:
    """A successful etcd answer: the node(s) and the indexes from the headers."""

    result: etcd.EtcdResult
    etcd_index: int
    cluster_id: Optional[str]


@dataclass
class WatchProgress:
    """A watch that stayed pending: nothing under the key in ``[waitIndex, etcd_index]``."""

    etcd_index: int
    cluster_id: Optional[str]


WatchOutcome = Union[Answer, WatchProgress]


class _Finishable:
    """What a plain watch and a streaming watch share: headers first, then a
    body we may stop reading on purpose (:meth:`finish`)."""

    #: The body reader, once the headers have arrived.
    _body: Optional[Any] = None

    def __init__(self) -> None:
        self.registered: defer.Deferred = defer.Deferred()
        self.etcd_index: Optional[int] = None

    def _outcome(self) -> defer.Deferred:
        raise NotImplementedError

    def _midway(self) -> bool:
        """True while part of an answer (an event) has arrived, not all of it."""
        raise NotImplementedError

    def finish(self, clock: Any) -> None:
        """Stop reading; the outcome reports what the headers proved.

        The abort happens one reactor turn later, so that bytes already on
        the socket (an event sent just before, or while the process was
        stopped) are read first.  An event that has started is given
        :data:`BODY_STALL_SECONDS` to complete; one that never does (a broken
        proxy) fails the request, which is then retried at the same index.
        """
        clock.callLater(0, self._finish_now, clock)

    def _finish_now(self, clock: Any) -> None:
        if self._body is None or self._outcome().called:
            return
        if not self._midway():
            self._body.abort("idle")
        else:
            clock.callLater(BODY_STALL_SECONDS, self._abort_stalled)

    def _abort_stalled(self) -> None:
        if self._body is not None and not self._outcome().called and self._midway():
            self._body.abort(f"an answer stalled for {BODY_STALL_SECONDS:g}s")

    def cancel(self) -> None:
        self._outcome().cancel()

    def _on_headers(self, body: Any, etcd_index: Optional[int]) -> None:
        self._body = body
        self.etcd_index = etcd_index
        self.registered.callback(etcd_index)


class PendingWatch(_Finishable):
    """A watch request in flight.

    ``registered`` fires with the ``X-Etcd-Index`` header as soon as etcd has
    registered the watch (its headers arrive before any event); ``result``
    fires with the event (:class:`Answer`) or, after :meth:`finish`, with
    :class:`WatchProgress`: a watch is only "pending" if its body is empty.
    """

    _body: Optional["_Collector"]

    def __init__(self) -> None:
        super().__init__()
        self.result: defer.Deferred  # set by EtcdClient.watch

    def _outcome(self) -> defer.Deferred:
        return self.result

    def _midway(self) -> bool:
        return self._body is not None and self._body.size > 0


@dataclass
class StreamEnd:
    """How a streaming watch ended without an error.

    ``idle``: we stopped it after it had been quiet (see
    :meth:`EventStream.finish`); otherwise etcd ended it.  ``events``: how
    many events it delivered.
    """

    etcd_index: Optional[int]
    cluster_id: Optional[str]
    events: int
    idle: bool


class EventStream(_Finishable):
    """A streaming watch (``stream=true``) in flight.

    ``registered`` fires with the ``X-Etcd-Index`` header when etcd has
    registered the watch; ``on_event`` is called with each event
    (:class:`Answer`) in the order etcd sent them; ``done`` fires with
    :class:`StreamEnd` when the response ends (after :meth:`finish`, with
    ``idle=True``), or fails like any request.
    """

    _body: Optional["_EventLines"]

    def __init__(self, on_event: Callable[[Answer], None]) -> None:
        super().__init__()
        self.on_event = on_event
        self.done: defer.Deferred  # set by EtcdClient.stream
        self.events = 0

    def _outcome(self) -> defer.Deferred:
        return self.done

    def _midway(self) -> bool:
        return self._body is not None and bool(self._body.partial)

    def pause(self) -> None:
        """Stop reading.  etcd queues 100 events for us, then drops the watcher."""
        if self._body is not None and self._body.transport is not None:
            self._body.transport.pauseProducing()

    def resume(self) -> None:
        if self._body is not None and self._body.transport is not None:
            self._body.transport.resumeProducing()

    def _event(self, answer: Answer) -> None:
        self.events += 1
        self.on_event(answer)


def is_transient(failure: Union[Failure, BaseException]) -> bool:
    """True when the error is worth retrying with backoff."""
    exc = failure.value if isinstance(failure, Failure) else failure
    if isinstance(exc, (EtcdUnavailable, etcd.EtcdLeaderElectionInProgress,
                        etcd.EtcdWatcherCleared)):
        return True
    payload = getattr(exc, "payload", None)
    return isinstance(payload, dict) and payload.get("errorCode") in TRANSIENT_ERROR_CODES


def make_pool(reactor: Any, max_per_host: int = 8) -> HTTPConnectionPool:
    """A persistent connection pool; treq's default keeps only 2 per host."""
    pool = HTTPConnectionPool(reactor, persistent=True)
    pool.maxPersistentPerHost = max_per_host
    pool.retryAutomatically = False
    return pool


class _Collector(Protocol):
    """Collects a response body, with a size cap and an optional deadline."""

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
            self.finished.errback(_Aborted(self.aborted_by))
        elif reason.check(ResponseDone, PotentialDataLoss):
            self.finished.callback(b"".join(self.parts))
        else:
            self.finished.errback(reason)


class _EventLines(Protocol):
    """Splits a streaming watch's body into events: etcd ends each with a newline."""

    def __init__(self, on_line: Callable[[bytes], None], finished: defer.Deferred,
                 limit: int) -> None:
        self.on_line = on_line
        self.finished = finished
        self.limit = limit
        self.partial = b""
        self.aborted_by: Optional[str] = None
        self.error: Optional[BaseException] = None

    def dataReceived(self, data: bytes) -> None:
        if self.aborted_by is not None:
            return
        *lines, self.partial = (self.partial + data).split(b"\n")
        for line in lines:
            if not line.strip():
                continue
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
            self.finished.errback(_Aborted(self.aborted_by))
        elif reason.check(ResponseDone, PotentialDataLoss) and not self.partial.strip():
            self.finished.callback(None)
        elif reason.check(ResponseDone, PotentialDataLoss):
            self.finished.errback(_Aborted("the stream ended inside an event"))
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


class _Aborted(Exception):
    """We stopped reading a body on purpose (idle watch or oversized body)."""


class EtcdClient:
    """Talks to one etcd v2 cluster over HTTP(S), moving between its endpoints."""

    def __init__(
        self,
        cluster: Cluster,
        reactor: IReactorTime,
        pool: Optional[HTTPConnectionPool] = None,
        timeout: float = 10.0,
        name: str = "etcd",
        probe_key: str = PROBE_KEY,
        tls: Optional[Any] = None,
    ) -> None:
        self.cluster = cluster
        #: The missing key :meth:`probe` reads: somewhere the credentials may
        #: read (a role limited to the prefix cannot read outside it).
        self.probe_key = probe_key
        self.reactor = reactor
        self.timeout = timeout
        self.name = name
        self._endpoint_no = 0
        self._pool = pool if pool is not None else make_pool(reactor)
        self._http = treq.client.HTTPClient(
            Agent(reactor, pool=self._pool, connectTimeout=timeout,
                  **({"contextFactory": tls} if tls is not None else {}))
        )

    @property
    def endpoint(self) -> Endpoint:
        return self.cluster.endpoints[self._endpoint_no]

    def next_endpoint(self) -> None:
        """Move to the next endpoint of the cluster (after a transport failure)."""
        self._endpoint_no = (self._endpoint_no + 1) % len(self.cluster.endpoints)

    def close(self) -> defer.Deferred:
        return self._pool.closeCachedConnections()

    # -- requests -----------------------------------------------------------

    def get(self, key: str, recursive: bool = False, quorum: bool = False) -> defer.Deferred:
        """GET a node; fires with :class:`Answer`."""
        params = []
        if recursive:
            params.append(("recursive", "true"))
        if quorum:
            params.append(("quorum", "true"))
        return self._request("GET", key, params)

    def put(
        self,
        key: str,
        value: Optional[str] = None,
        *,
        dir: bool = False,
        ttl: Optional[int] = None,
        clear_ttl: bool = False,
        prev_exist: Optional[bool] = None,
        prev_value: Optional[str] = None,
        refresh: bool = False,
    ) -> defer.Deferred:
        """PUT a node (set/create/update/compareAndSwap); fires with :class:`Answer`.

        ``refresh`` sets only the TTL of an existing node (``refresh=true``:
        etcd keeps the value and tells no watcher); it sends no value.
        """
        body: List[Tuple[str, str]] = []
        if dir:
            body.append(("dir", "true"))
        elif not refresh:
            body.append(("value", value if value is not None else ""))
        if refresh:
            body.append(("refresh", "true"))
        if ttl is not None:
            body.append(("ttl", str(max(int(ttl), 1))))
        elif clear_ttl:
            body.append(("ttl", ""))
        if prev_exist is not None:
            body.append(("prevExist", "true" if prev_exist else "false"))
        if prev_value is not None:
            body.append(("prevValue", prev_value))
        return self._request("PUT", key, [], body)

    def delete(
        self,
        key: str,
        *,
        recursive: bool = False,
        dir: bool = False,
        prev_value: Optional[str] = None,
    ) -> defer.Deferred:
        """DELETE a node (delete/compareAndDelete); fires with :class:`Answer`."""
        params = []
        if dir:
            params.append(("dir", "true"))
        if recursive:
            params.append(("recursive", "true"))
        if prev_value is not None:
            params.append(("prevValue", prev_value))
        return self._request("DELETE", key, params)

    def watch(self, key: str, wait_index: int) -> PendingWatch:
        """Recursive watch on ``key`` from ``wait_index``.

        ``result`` fires with an :class:`Answer` holding the first event under
        ``key`` whose index is ``>= wait_index``, or with
        :class:`WatchProgress` once :meth:`PendingWatch.finish` is called.
        """
        watch = PendingWatch()
        params = [("wait", "true"), ("recursive", "true"), ("waitIndex", str(wait_index))]
        request = self._request("GET", key, params, watch=watch)
        watch.result = defer.Deferred(lambda _: request.cancel())
        request.addBoth(forward_to, watch.result)
        return watch

    def stream(self, key: str, wait_index: int,
               on_event: Callable[[Answer], None]) -> EventStream:
        """Recursive streaming watch on ``key`` from ``wait_index``.

        ``on_event`` gets every event etcd sends on the stream, in order.
        etcd v2 sends a stream only the *first* event when that event comes
        from its history, and every later event only when the watch was
        registered ahead of the store; :class:`~etcdmirror.watcher.WatchWindow`
        tells the two apart with the ``X-Etcd-Index`` header.
        """
        stream = EventStream(on_event)
        params = [("wait", "true"), ("recursive", "true"), ("stream", "true"),
                  ("waitIndex", str(wait_index))]
        request = self._request("GET", key, params, stream=stream)
        stream.done = defer.Deferred(lambda _: request.cancel())
        request.addBoth(forward_to, stream.done)
        return stream

    @defer.inlineCallbacks
    def get_or_none(self, key: str):
        """The node at ``key`` (an :class:`etcd.EtcdResult`), or None when it does not exist."""
        try:
            answer = yield self.get(key)
        except etcd.EtcdKeyNotFound:
            return None
        return answer.result

    @defer.inlineCallbacks
    def probe(self, quorum: bool = False):
        """The store's index and cluster id now, from a read of a missing key.

        With ``quorum`` the read goes through consensus, so a member that is
        behind or cut off cannot report an old index.  Fires with
        :class:`WatchProgress` (an index and a cluster id, nothing more).
        """
        try:
            answer = yield self.get(self.probe_key, quorum=quorum)
        except etcd.EtcdKeyNotFound as e:
            return WatchProgress(e.etcd_index, e.cluster_id)
        return WatchProgress(answer.etcd_index, answer.cluster_id)

    # -- plumbing -----------------------------------------------------------

    def url_for(self, key: str) -> str:
        return self.endpoint.url + "/v2/keys" + quote(key, safe="/")

    def _describe(self, method: str, key: str, endpoint: Endpoint) -> str:
        return f"{method} {key!r} on {self.name} {endpoint.url}"

    def _request(
        self,
        method: str,
        key: str,
        params: List[Tuple[str, str]],
        body: Optional[List[Tuple[str, str]]] = None,
        watch: Optional[PendingWatch] = None,
        stream: Optional[EventStream] = None,
    ) -> defer.Deferred:
        endpoint = self.endpoint
        what = self._describe(method, key, endpoint)
        url = self.url_for(key)
        if params:
            url += "?" + urlencode(params)
        headers = {b"Accept": [b"application/json"]}
        data = None
        if body is not None:
            data = BytesBody(urlencode(body).encode("ascii"))
            headers[b"Content-Type"] = [b"application/x-www-form-urlencoded"]
        d = self._http.request(
            method,
            url,
            data=data,
            headers=headers,
            auth=self.cluster.auth,
            timeout=self.timeout,
            unbuffered=True,
            allow_redirects=False,
            reactor=self.reactor,
        )
        d.addCallbacks(
            self._read_response,
            self._transport_failed,
            callbackArgs=(what, watch, stream),
            errbackArgs=(what,),
        )
        return d

    def _transport_failed(self, failure: Failure, what: str) -> Failure:
        tls_problem = _tls_problem(failure.value)
        if tls_problem is not None:
            # Retrying cannot fix a certificate: stop with the reason.
            raise TLSError(f"{what}: TLS failed: {tls_problem}; check the CA file, the "
                           "certificate and that the URL's host name is in it")
        self.next_endpoint()
        cause = failure.value
        if _cancelled(failure):
            # treq cancels a request whose headers did not come in time; Twisted
            # wraps that in ResponseNeverReceived.
            raise EtcdTimeout(f"{what}: no answer within {self.timeout:g}s", cause=cause)
        raise EtcdUnavailable(f"{what}: {_describe_exception(cause)}", cause=cause)

    def _read_response(self, response: Any, what: str, watch: Optional[PendingWatch],
                       stream: Optional[EventStream] = None):
        etcd_index = _header_int(response, b"x-etcd-index")
        cluster_id = _header(response, b"x-etcd-cluster-id")
        if stream is not None and response.code == 200:
            return self._read_stream(response, what, stream, etcd_index, cluster_id)
        finished: defer.Deferred = defer.Deferred(lambda _: collector.abort("cancelled"))
        collector = _Collector(finished, MAX_BODY)
        response.deliverBody(collector)
        if watch is not None and response.code == 200:
            watch._on_headers(collector, etcd_index)

        def body_failed(failure: Failure):
            if failure.check(defer.CancelledError):
                return failure
            if failure.check(_Aborted) and collector.aborted_by == "idle":
                if etcd_index is None:
                    raise BadResponse(f"{what}: pending watch without X-Etcd-Index header")
                return WatchProgress(etcd_index, cluster_id)
            if failure.check(_Aborted):
                raise BadResponse(f"{what}: {collector.aborted_by}")
            raise self._connection_lost(what, "reading the answer", failure)

        finished.addCallbacks(
            self._parse, body_failed, callbackArgs=(response.code, etcd_index, cluster_id, what)
        )
        return finished

    def _connection_lost(self, what: str, doing: str, failure: Failure) -> EtcdUnavailable:
        """The error for a body cut off midway; the next try goes to another endpoint."""
        self.next_endpoint()
        return EtcdUnavailable(
            f"{what}: connection lost while {doing}: {_describe_exception(failure.value)}",
            cause=failure.value,
        )

    def _read_stream(self, response: Any, what: str, stream: EventStream,
                     etcd_index: Optional[int], cluster_id: Optional[str]):
        if etcd_index is None:
            # Without the header the window cannot tell a live stream from a
            # one-event answer out of etcd's history.
            response.deliverBody(_Collector(defer.Deferred(), 0))
            return defer.fail(BadResponse(f"{what}: streaming watch without X-Etcd-Index header"))

        def on_line(line: bytes) -> None:
            stream._event(self._parse(line, 200, etcd_index, cluster_id, what))

        finished: defer.Deferred = defer.Deferred(lambda _: lines.abort("cancelled"))
        lines = _EventLines(on_line, finished, MAX_BODY)
        response.deliverBody(lines)
        stream._on_headers(lines, etcd_index)

        def ended(_: None) -> StreamEnd:
            return StreamEnd(etcd_index, cluster_id, stream.events, idle=False)

        def failed(failure: Failure):
            if failure.check(defer.CancelledError, etcd.EtcdException):
                return failure
            if failure.check(_Aborted) and lines.aborted_by == "idle":
                return StreamEnd(etcd_index, cluster_id, stream.events, idle=True)
            if failure.check(_Aborted):
                raise BadResponse(f"{what}: {lines.aborted_by}")
            raise self._connection_lost(what, "streaming", failure)

        finished.addCallbacks(ended, failed)
        return finished

    def _parse(
        self, body: bytes, code: int, etcd_index: Optional[int], cluster_id: Optional[str], what: str
    ) -> Answer:
        payload = _decode(body)
        if code >= 400 or payload is None or "errorCode" in payload:
            self._raise_error(code, payload, body, etcd_index, cluster_id, what)
        if payload is None or not isinstance(payload.get("node"), dict) or "action" not in payload:
            raise BadResponse(f"{what}: HTTP {code} without an etcd node: {_excerpt(body)}")
        if etcd_index is None:
            raise BadResponse(f"{what}: answer without X-Etcd-Index header")
        problem = _malformed(payload)
        if problem:
            raise BadResponse(f"{what}: malformed answer ({problem}): {_excerpt(body)}")
        result = etcd.EtcdResult(
            action=payload["action"], node=payload["node"], prevNode=payload.get("prevNode"))
        result.etcd_index = etcd_index
        return Answer(result, etcd_index, cluster_id)

    def _raise_error(
        self,
        code: int,
        payload: Optional[Dict[str, Any]],
        body: bytes,
        etcd_index: Optional[int],
        cluster_id: Optional[str],
        what: str,
    ) -> None:
        # etcd v2 answers some state errors (102 "Not a file", 104 "Not a
        # directory", 108 "Directory not empty") with HTTP 403: the errorCode
        # decides, the status only when there is none.
        has_code = payload is not None and isinstance(payload.get("errorCode"), int)
        if (code in (401, 403) and not has_code) or (has_code and payload["errorCode"] == 110):
            exc: etcd.EtcdException = etcd.EtcdInsufficientPermissions(
                f"{what}: permission denied (HTTP {code}); check the credentials", payload
            )
        elif has_code:
            try:
                etcd.EtcdError.handle(payload)
            except etcd.EtcdException as e:
                exc = e
            exc.args = (f"{what}: {exc.args[0] if exc.args else ''}",)
        else:
            exc = (EtcdUnavailable if code >= 500 else BadResponse)(
                f"{what}: HTTP {code}: {_excerpt(body)}"
            )
        exc.etcd_index = etcd_index
        exc.cluster_id = cluster_id
        if is_transient(exc):
            # This member cannot serve us right now; another one may.
            self.next_endpoint()
        raise exc


def forward_to(result: Any, target: defer.Deferred) -> None:
    """Fire ``target`` with ``result`` unless it was cancelled meanwhile.

    Chaining a cancellable Deferred to the request behind it must not blow up
    with AlreadyCalledError when the request finishes after the cancel.
    """
    if not target.called:
        if isinstance(result, Failure):
            target.errback(result)
        else:
            target.callback(result)
    return None


#: The node fields the mirror relies on, and the types etcd gives them.
_NODE_FIELDS = {"key": str, "value": str, "dir": bool, "ttl": int, "expiration": str,
                "modifiedIndex": int, "createdIndex": int, "nodes": list}


def _malformed(payload: Dict[str, Any]) -> Optional[str]:
    """What is wrong with an answer's structure, or None when it is usable.

    Checked here, once, so that nothing downstream (ordering, applying,
    diffing) ever meets a missing index or a value of the wrong type.
    """
    if not isinstance(payload.get("action"), str):
        return "no action"
    prev = payload.get("prevNode")
    if prev is not None and not isinstance(prev, dict):
        return "prevNode is not an object"
    stack = [payload["node"]] + ([prev] if prev is not None else [])
    top = True
    while stack:
        node = stack.pop()
        if not isinstance(node, dict):
            return "a node is not an object"
        for field, kind in _NODE_FIELDS.items():
            value = node.get(field)
            if value is not None and (not isinstance(value, kind)
                                      or (kind is int and isinstance(value, bool))):
                return f"{field} is not a {kind.__name__}"
        if "key" not in node and not (top and node.get("dir")):
            return "a node without key"
        if top and not isinstance(node.get("modifiedIndex", 0), int):
            return "no modifiedIndex"
        stack.extend(node.get("nodes") or ())
        top = False
    return None


def _decode(body: bytes) -> Optional[Dict[str, Any]]:
    try:
        payload = json.loads(body.decode("utf-8"))
    except (UnicodeDecodeError, ValueError):
        return None
    return payload if isinstance(payload, dict) else None


def _excerpt(body: bytes, limit: int = 200) -> str:
    text = body[:limit].decode("utf-8", "replace").replace("\n", " ")
    if not text:
        return "(empty body)"
    return repr(text) + ("..." if len(body) > limit else "")


def _header(response: Any, name: bytes) -> Optional[str]:
    values = response.headers.getRawHeaders(name)
    if not values:
        return None
    return values[0].decode("latin-1") if isinstance(values[0], bytes) else values[0]


def _header_int(response: Any, name: bytes) -> Optional[int]:
    value = _header(response, name)
    try:
        return int(value) if value is not None else None
    except ValueError:
        return None


def _cancelled(failure: Failure) -> bool:
    """True for a cancelled request, also when Twisted wrapped the cancellation."""
    if failure.check(defer.CancelledError):
        return True
    reasons = getattr(failure.value, "reasons", None) or ()
    return any(isinstance(r, Failure) and r.check(defer.CancelledError) for r in reasons)


def _tls_problem(exc: BaseException) -> Optional[str]:
    """The TLS error inside a transport failure (Twisted nests them), if any."""
    reasons = getattr(exc, "reasons", None)
    if reasons:
        for reason in reasons:
            found = _tls_problem(reason.value)
            if found:
                return found
        return None
    module = type(exc).__module__ or ""
    if module.startswith(("OpenSSL", "service_identity", "ssl")) or "SSL" in type(exc).__name__:
        return _describe_exception(exc)
    return None


def _describe_exception(exc: BaseException) -> str:
    """A one-line cause: Twisted wraps the real reason in lists of Failures."""
    reasons = getattr(exc, "reasons", None)
    if reasons:
        inner = "; ".join(_describe_exception(r.value) for r in reasons)
        return f"{type(exc).__name__}({inner})"
    text = str(exc) or type(exc).__name__
    return text if type(exc).__name__ in text else f"{type(exc).__name__}: {text}"
