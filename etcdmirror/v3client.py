"""A thin, non-blocking etcd v3 client on treq, through etcd's JSON gateway.

What a v3 mirror asks of a cluster, and no more: read a range (at a
revision), put, delete a range, a transaction, leases (grant, time to live,
revoke, one keep-alive), the cluster's status, compaction (for tests and
the benchmark), and a watch stream.  Encodings and errors are
:mod:`etcdmirror.v3wire`'s; every call is a ``POST`` of JSON to the current
endpoint of the cluster, and after a transport failure or an answer worth
retrying (:class:`~etcdmirror.v3wire.V3Unavailable`) the next call goes to
the next endpoint.  Messages name the call and the endpoint, never
credentials.

etcd v3 auth: with credentials (``user:password@`` in the URL, or the
credentials file), the client first trades them for a token at
``/v3/auth/authenticate`` and sends the token with every call; when etcd
answers that the token is no longer valid (gRPC code 16, after a restart or
its TTL), it authenticates again and sends the call once more.  The password
is sent to that one endpoint only and appears in no message.

An *ordered* transaction to an ``http://`` endpoint goes on the ordered lane
of :mod:`etcdmirror.writeconn`: pipelined on one connection behind every
ordered one before it, which etcd's HTTP server (the gateway's too) reads
and answers one after another, so they apply in the order sent.
"""

import json
from typing import Any, Callable, Dict, List, Optional, Tuple

import treq
from twisted.internet import defer
from twisted.internet.interfaces import IReactorTime
from twisted.python.failure import Failure
from twisted.web.client import HTTPConnectionPool

from etcdmirror.bodies import Aborted, BytesBody, Collector, EventLines
from etcdmirror.endpoints import Cluster, Endpoint, EndpointCursor
from etcdmirror.transport import check_tls, make_agent, make_pool, was_cancelled
from etcdmirror.writeconn import WritePool, build_request
from etcdmirror.v3wire import (
    UNAUTHENTICATED, Header, KeyValue, RangeResult, TxnResult, V3Error, V3Unavailable,
    WatchResponse, b64, decode, error_for, number, unb64, watch_response)

#: Largest answer read whole (a range of a big prefix can be large; bounded).
MAX_BODY = 512 * 1024 * 1024


class V3Client(EndpointCursor):
    """Talks etcd v3 to one cluster, moving between its endpoints."""

    def __init__(self, cluster: Cluster, reactor: IReactorTime,
                 pool: Optional[HTTPConnectionPool] = None, timeout: float = 10.0,
                 name: str = "etcd", tls: Optional[Any] = None) -> None:
        super().__init__(cluster)
        self.reactor = reactor
        self.timeout = timeout
        self.name = name
        self._pool = pool if pool is not None else make_pool(reactor)
        self._http = treq.client.HTTPClient(make_agent(reactor, self._pool, timeout, tls))
        #: The v3 auth token (None: none yet, or no credentials).
        self._token: Optional[str] = None
        self._writes = WritePool(reactor, connect_timeout=timeout)

    @property
    def pipelines(self) -> bool:
        """True when ordered transactions are pipelined (every endpoint ``http://``)."""
        return all(e.scheme == "http" for e in self.cluster.endpoints)

    def close(self) -> defer.Deferred:
        """Close the idle connections; fires once they are closed."""
        self._writes.close()
        return self._pool.closeCachedConnections()

    # -- key-value -------------------------------------------------------------

    def range(self, key: bytes, range_end: Optional[bytes] = None, revision: int = 0,
              limit: int = 0, keys_only: bool = False, serializable: bool = False,
              count_only: bool = False, min_mod_revision: int = 0) -> defer.Deferred:
        """Fires with a :class:`RangeResult`: ``key``, or ``[key, range_end)``, at
        ``revision`` (0: now).  ``serializable`` reads the member's own copy,
        without a round of consensus; ``count_only`` returns only the count;
        ``min_mod_revision`` keeps only keys modified at or after it."""
        body: Dict[str, Any] = {"key": b64(key)}
        if count_only:
            body["count_only"] = True
        if min_mod_revision:
            body["min_mod_revision"] = str(min_mod_revision)
        if range_end is not None:
            body["range_end"] = b64(range_end)
        if revision:
            body["revision"] = str(revision)
        if limit:
            body["limit"] = str(limit)
        if keys_only:
            body["keys_only"] = True
        if serializable:
            body["serializable"] = True
        return self.call("/v3/kv/range", body, RangeResult.parse)

    def put(self, key: bytes, value: bytes, lease: int = 0,
            prev_kv: bool = False) -> defer.Deferred:
        """Fires with ``(header, prev_kv)``; ``prev_kv`` None unless asked for and there."""
        body: Dict[str, Any] = {"key": b64(key), "value": b64(value)}
        if lease:
            body["lease"] = str(lease)
        if prev_kv:
            body["prev_kv"] = True
        return self.call("/v3/kv/put", body, lambda d: (
            Header.parse(d.get("header")),
            KeyValue.parse(d["prev_kv"]) if d.get("prev_kv") else None))

    def delete_range(self, key: bytes, range_end: Optional[bytes] = None,
                     prev_kv: bool = False) -> defer.Deferred:
        """Fires with ``(header, deleted, prev_kvs)``."""
        body: Dict[str, Any] = {"key": b64(key)}
        if range_end is not None:
            body["range_end"] = b64(range_end)
        if prev_kv:
            body["prev_kv"] = True
        return self.call("/v3/kv/deleterange", body, lambda d: (
            Header.parse(d.get("header")), number(d.get("deleted")),
            [KeyValue.parse(kv) for kv in d.get("prev_kvs", ())]))

    def txn(self, compare: List[Dict[str, Any]], success: List[Dict[str, Any]],
            failure: Optional[List[Dict[str, Any]]] = None,
            ordered: bool = False) -> defer.Deferred:
        """Fires with a :class:`TxnResult`; build the lists with :mod:`etcdmirror.v3wire`'s
        ``compare_*`` and ``request_*``.  Everything lands at one revision.
        ``ordered``: on the ordered lane (module docstring)."""
        body = {"compare": compare, "success": success, "failure": failure or []}
        return self.call("/v3/kv/txn", body, lambda d: TxnResult(
            Header.parse(d.get("header")), bool(d.get("succeeded")), d.get("responses", [])),
            ordered=ordered)

    def compact(self, revision: int, physical: bool = False) -> defer.Deferred:
        """Forget the history before ``revision``; fires with the header."""
        body: Dict[str, Any] = {"revision": str(revision)}
        if physical:
            body["physical"] = True
        return self.call("/v3/kv/compaction", body, lambda d: Header.parse(d.get("header")))

    # -- leases -------------------------------------------------------------------

    def lease_grant(self, ttl: int, lease_id: int = 0) -> defer.Deferred:
        """Fires with ``(lease ID, granted TTL)``; ``lease_id`` 0 lets etcd choose."""
        body: Dict[str, Any] = {"TTL": str(ttl)}
        if lease_id:
            body["ID"] = str(lease_id)
        return self.call("/v3/lease/grant", body,
                         lambda d: (number(d.get("ID")), number(d.get("TTL"))))

    def lease_time_to_live(self, lease_id: int, keys: bool = False) -> defer.Deferred:
        """Fires with ``(remaining TTL, granted TTL, keys)``; remaining -1: no such lease."""
        body: Dict[str, Any] = {"ID": str(lease_id)}
        if keys:
            body["keys"] = True
        return self.call("/v3/lease/timetolive", body, lambda d: (
            number(d.get("TTL")), number(d.get("grantedTTL")),
            [unb64(k) for k in d.get("keys", ())]))

    def lease_revoke(self, lease_id: int) -> defer.Deferred:
        """Revoke the lease and delete its keys; fires with the header."""
        return self.call("/v3/lease/revoke", {"ID": str(lease_id)},
                         lambda d: Header.parse(d.get("header")))

    def lease_keep_alive(self, lease_id: int) -> defer.Deferred:
        """Renew the lease once; fires with its TTL now (0: the lease is gone)."""
        return self.call("/v3/lease/keepalive", {"ID": str(lease_id)},
                         lambda d: number((d.get("result") or {}).get("TTL")))

    # -- the cluster ----------------------------------------------------------------

    def status(self) -> defer.Deferred:
        """Fires with ``(header, version)`` of the member asked."""
        return self.call("/v3/maintenance/status", {},
                         lambda d: (Header.parse(d.get("header")), d.get("version", "")))

    # -- watching -------------------------------------------------------------------

    def watch(self, key: bytes, range_end: Optional[bytes], start_revision: int,
              on_response: Callable[[WatchResponse], None], prev_kv: bool = True,
              request_progress: bool = False) -> "V3Watch":
        """Watch ``[key, range_end)`` from ``start_revision``; ``on_response`` gets each
        message of the stream, in order (the first says ``created``).

        ``request_progress`` asks, right after the watch is created, for a
        progress report: a message without events and the current
        ``header.revision``.  **Not a proof of quiet on etcd 3.4**: it answers
        with the current revision at once, even before a watch that started in
        the past sent its history (checked on a real server: the report came
        before 3000 older events).  etcd 3.4's gateway also answers a watch
        only once its request body is complete, so no request can be added to
        a running stream.  See :class:`V3Watch`.
        """
        create: Dict[str, Any] = {"key": b64(key), "start_revision": str(start_revision)}
        if range_end is not None:
            create["range_end"] = b64(range_end)
        if prev_kv:
            create["prev_kv"] = True
        requests = [{"create_request": create}] + ([{"progress_request": {}}]
                                                   if request_progress else [])
        body = b"".join(json.dumps(r).encode("ascii") + b"\n" for r in requests)
        what = self._what("/v3/watch")
        request = self._token_ready().addCallback(
            lambda _: self._post("/v3/watch", body, timeout=None)[1])

        def streaming(response: Any) -> defer.Deferred:
            if response.code != 200:
                return self._read(response, what, lambda d: d)
            finished: defer.Deferred = defer.Deferred(lambda _: lines.abort("cancelled"))
            lines = EventLines(lambda line: on_response(watch_response(line, what)),
                               finished, MAX_BODY)
            response.deliverBody(lines)
            finished.addErrback(self._stream_failed, what)
            return finished

        request.addCallback(streaming)
        request.addErrback(self._watch_token_expired)
        return V3Watch(request)

    def _watch_token_expired(self, failure: Failure) -> Failure:
        """A watch refused for an expired token: the next call authenticates again,
        and the watch is worth opening again (a transient failure)."""
        if self.cluster.auth is not None and failure.check(V3Error) and (
                failure.value.code == UNAUTHENTICATED):
            self._token = None
            raise V3Unavailable(f"{failure.getErrorMessage()}; authenticating again")
        return failure

    # -- the request path -------------------------------------------------------------

    def call(self, path: str, body: Dict[str, Any],
             parse: Callable[[Dict[str, Any]], Any], ordered: bool = False) -> defer.Deferred:
        """POST ``body`` to ``path``; fires with ``parse(answer)`` or fails with a V3Error."""
        if self._token is not None or self.cluster.auth is None:
            d = self._call_once(path, body, parse, ordered)  # sent now: in call order
        else:
            d = self._token_ready()
            d.addCallback(lambda _: self._call_once(path, body, parse, ordered))
        d.addErrback(self._token_expired, path, body, parse, ordered)
        return d

    @defer.inlineCallbacks
    def authenticate(self):
        """Trade the cluster's credentials for a token; fires with None."""
        user, password = self.cluster.auth
        self._token = None
        self._token = yield self._call_once(
            "/v3/auth/authenticate", {"name": user, "password": password},
            lambda d: str(d.get("token", "")))

    def _token_ready(self) -> defer.Deferred:
        if self.cluster.auth is None or self._token is not None:
            return defer.succeed(None)
        return self.authenticate()

    def _token_expired(self, failure: Failure, path: str, body: Dict[str, Any],
                       parse: Callable[[Dict[str, Any]], Any], ordered: bool) -> Any:
        if self.cluster.auth is None or not failure.check(V3Error) or (
                failure.value.code != UNAUTHENTICATED):
            return failure
        if ordered:
            # Sent again by the caller, in order: the next call authenticates.
            self._token = None
            raise V3Unavailable(f"{failure.getErrorMessage()}; authenticating again")
        d = self.authenticate()
        d.addCallback(lambda _: self._call_once(path, body, parse))
        return d

    def _call_once(self, path: str, body: Dict[str, Any],
                   parse: Callable[[Dict[str, Any]], Any], ordered: bool = False
                   ) -> defer.Deferred:
        what, request = self._post(path, body, self.timeout, ordered)
        return request.addCallback(self._read, what, parse)

    def _what(self, path: str, endpoint: Optional[Endpoint] = None) -> str:
        """Names a call in messages: the path and the endpoint, never credentials."""
        return f"{path} on {self.name} {(endpoint or self.endpoint).url}"

    def _post(self, path: str, body: Any, timeout: Optional[float],
              ordered: bool = False) -> Tuple[str, defer.Deferred]:
        """POST ``body`` (a dict sent as JSON, or bytes as they are) to ``path``."""
        # An ordered call follows the ones still waiting on the lane's endpoint.
        endpoint = (ordered and self._writes.lane_endpoint()) or self.endpoint
        what = self._what(path, endpoint)
        data = body if isinstance(body, bytes) else json.dumps(body).encode("ascii")
        if ordered and endpoint.scheme == "http" and timeout is not None:
            lines = b"Content-Type: application/json\r\n"
            if self._token is not None:
                lines += b"Authorization: " + self._token.encode("ascii") + b"\r\n"
            d = self._writes.ordered(endpoint, build_request("POST", endpoint, path, lines, data),
                                     timeout)
            d.addErrback(self._unavailable, what, timeout)
            return what, d
        headers = {b"Content-Type": [b"application/json"]}
        if self._token is not None:
            headers[b"Authorization"] = [self._token.encode("ascii")]
        d = self._http.request(
            "POST", endpoint.url + path, data=BytesBody(data), headers=headers, timeout=timeout,
            unbuffered=True, allow_redirects=False, reactor=self.reactor)
        d.addErrback(self._unavailable, what, timeout)
        return what, d

    def _read(self, response: Any, what: str, parse: Callable[[Dict[str, Any]], Any]):
        finished: defer.Deferred = defer.Deferred(lambda _: collector.abort("cancelled"))
        collector = Collector(finished, MAX_BODY)
        response.deliverBody(collector)

        def answered(body: bytes) -> Any:
            data = decode(body, what)
            if response.code != 200:
                error = error_for(response.code, data, what)
                if isinstance(error, V3Unavailable):
                    self.next_endpoint()
                raise error
            return parse(data)

        return finished.addCallbacks(answered, self._unavailable,
                                     errbackArgs=(what, self.timeout))

    def _stream_failed(self, failure: Failure, what: str) -> Failure:
        """A watch stream that ended badly: cancelled by us, refused (a V3Error), or cut."""
        if failure.check(Aborted) and str(failure.value) == "cancelled":
            return Failure(defer.CancelledError())
        if failure.check(V3Error, defer.CancelledError, Aborted):
            return failure
        return self._unavailable(failure, what, None)

    def _unavailable(self, failure: Failure, what: str, timeout: Optional[float]) -> Failure:
        """A transport failure, or no answer within ``timeout``: worth retrying, on the
        next endpoint.  A cancelled request with no timeout was cancelled by its caller."""
        if failure.check(V3Error):
            return failure
        check_tls(failure, what)
        if was_cancelled(failure):
            if timeout is None:
                return Failure(defer.CancelledError())
            self.next_endpoint()
            raise V3Unavailable(f"{what}: no answer within {timeout:g}s")
        self.next_endpoint()
        raise V3Unavailable(f"{what}: {failure.getErrorMessage() or failure.type.__name__}")


class V3Watch:
    """A watch stream in flight.

    ``done`` fires with None when the server ends the stream, or fails with
    :class:`~etcdmirror.v3wire.V3Compacted` (the start revision is no longer in
    the history), another V3Error, or ``CancelledError`` after :meth:`cancel`.
    """

    def __init__(self, done: defer.Deferred) -> None:
        self.done = done

    def cancel(self) -> None:
        self.done.cancel()
