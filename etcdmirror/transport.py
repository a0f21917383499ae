"""HTTP to one etcd cluster: requests on a persistent pool, moving between the cluster's endpoints.

Transport failures become etcd errors here: a failed TLS handshake is
:class:`~etcdmirror.answers.TLSError` (retrying cannot fix a certificate),
anything else :class:`~etcdmirror.answers.EtcdUnavailable` (or
:class:`~etcdmirror.answers.EtcdTimeout`), after which the next request goes
to the next endpoint.  Messages name the request and the endpoint, never the
credentials.

Reads go through treq.  Writes (``PUT``, ``DELETE``: the ordered event
writes and a resync's) skip it: to ``http://`` endpoints they go through a
lean client of our own (:mod:`etcdmirror.writeconn`, requests built as bytes
here), to ``https://`` ones through Twisted's ``Agent`` with headers built
once.  treq costs about four times the CPU of the lean client per write
(BENCHMARKS.md).  All share the timeouts and the error mapping.
"""

import binascii
from typing import Any, List, Optional, Tuple
from urllib.parse import quote, urlencode

import treq
from twisted.internet import defer
from twisted.internet.interfaces import IReactorTime
from twisted.python.failure import Failure
from twisted.web.client import Agent, HTTPConnectionPool
from twisted.web.http_headers import Headers

from etcdmirror.answers import EtcdTimeout, EtcdUnavailable, TLSError
from etcdmirror.bodies import BytesBody
from etcdmirror.endpoints import Cluster, EndpointCursor
from etcdmirror.writeconn import WritePool, build_request


def make_agent(reactor: Any, pool: HTTPConnectionPool, timeout: float,
               tls: Optional[Any] = None) -> Agent:
    """Twisted's ``Agent`` on ``pool``, with the side's TLS policy if it has one."""
    return Agent(reactor, pool=pool, connectTimeout=timeout,
                 **({"contextFactory": tls} if tls is not None else {}))


def make_pool(reactor: Any, max_per_host: int = 8) -> HTTPConnectionPool:
    """A persistent connection pool; treq's default keeps only 2 per host."""
    pool = HTTPConnectionPool(reactor, persistent=True)
    pool.maxPersistentPerHost = max_per_host
    pool.retryAutomatically = False
    return pool


class Transport(EndpointCursor):
    """Sends requests to the current endpoint of ``cluster``; moves on after a failure."""

    def __init__(
        self,
        cluster: Cluster,
        reactor: IReactorTime,
        pool: Optional[HTTPConnectionPool] = None,
        timeout: float = 10.0,
        name: str = "etcd",
        tls: Optional[Any] = None,
    ) -> None:
        super().__init__(cluster)
        self.reactor = reactor
        self.timeout = timeout
        self.name = name
        self._pool = pool if pool is not None else make_pool(reactor)
        self._agent = make_agent(reactor, self._pool, timeout, tls)
        self._http = treq.client.HTTPClient(self._agent)
        #: The headers of every write (Agent copies them before adding Host).
        self._write_headers = Headers({b"Accept": [b"application/json"],
                                       b"Content-Type": [b"application/x-www-form-urlencoded"]})
        self._write_lines = (b"Accept: application/json\r\n"
                             b"Content-Type: application/x-www-form-urlencoded\r\n")
        if cluster.auth is not None:
            user, password = (part.encode("utf-8") for part in cluster.auth)
            basic = b"Basic " + binascii.b2a_base64(user + b":" + password, newline=False)
            self._write_headers.setRawHeaders(b"Authorization", [basic])
            self._write_lines += b"Authorization: " + basic + b"\r\n"
        self._writes = WritePool(reactor, connect_timeout=timeout)

    def close(self) -> defer.Deferred:
        """Close the pools' idle connections; fires once they are closed."""
        self._writes.close()
        return self._pool.closeCachedConnections()

    def request(
        self,
        method: str,
        key: str,
        params: List[Tuple[str, str]],
        form: Optional[List[Tuple[str, str]]] = None,
        timeout: Optional[float] = None,
        ordered: bool = False,
    ) -> Tuple[str, defer.Deferred]:
        """Send a request for ``key``; ``form`` is sent url-encoded.

        ``timeout`` replaces the client's own for this request.  An
        ``ordered`` write to an ``http://`` endpoint goes on its ordered lane
        (:meth:`~etcdmirror.writeconn.WritePool.ordered`): pipelined behind
        every ordered write before it.  Returns what
        names the request in errors, and a Deferred that fires
        with the response as soon as its headers are in (the body is the
        caller's to read) or fails with an etcd error.
        """
        # An ordered write follows the ones still waiting on the lane's endpoint.
        endpoint = (ordered and self._writes.lane_endpoint()) or self.endpoint
        what = f"{method} {key!r} on {self.name} {endpoint.url}"
        path = "/v2/keys" + quote(key, safe="/") + ("?" + urlencode(params) if params else "")
        url = endpoint.url + path
        timeout = self.timeout if timeout is None else timeout
        if method != "GET" and url.isascii():
            body = urlencode(form).encode("ascii") if form is not None else None
            if endpoint.scheme == "http":
                send = self._writes.ordered if ordered else self._writes.request
                d = send(endpoint, build_request(method, endpoint, path, self._write_lines, body),
                         timeout)
            else:
                d = self._write(method, url, body, timeout)
            d.addErrback(self._failed, what, timeout)
            return what, d
        headers = {b"Accept": [b"application/json"]}
        data = None
        if form is not None:
            data = BytesBody(urlencode(form).encode("ascii"))
            headers[b"Content-Type"] = [b"application/x-www-form-urlencoded"]
        d = self._http.request(
            method,
            url,
            data=data,
            headers=headers,
            auth=self.cluster.auth,
            timeout=timeout,
            unbuffered=True,
            allow_redirects=False,
            reactor=self.reactor,
        )
        d.addErrback(self._failed, what, timeout)
        return what, d

    def _write(self, method: str, url: str, body: Optional[bytes],
               timeout: float) -> defer.Deferred:
        """A write on the Agent; fires with the response once its headers are in.

        As treq does it: the request is cancelled (its connection aborted)
        when no answer came within ``timeout``.
        """
        d = self._agent.request(method.encode("ascii"), url.encode("ascii"),
                                self._write_headers,
                                BytesBody(body) if body is not None else None)
        timer = self.reactor.callLater(timeout, d.cancel)

        def answered(result: Any) -> Any:
            if timer.active():
                timer.cancel()
            return result

        d.addBoth(answered)
        return d

    def connection_lost(self, what: str, doing: str, failure: Failure) -> EtcdUnavailable:
        """The error for a body cut off midway; the next try goes to another endpoint."""
        self.next_endpoint()
        return EtcdUnavailable(
            f"{what}: connection lost while {doing}: {_describe_exception(failure.value)}",
            cause=failure.value,
        )

    def _failed(self, failure: Failure, what: str, timeout: float) -> Failure:
        check_tls(failure, what)
        self.next_endpoint()
        cause = failure.value
        if was_cancelled(failure):
            # treq cancels a request whose headers did not come in time; Twisted
            # wraps that in ResponseNeverReceived.
            raise EtcdTimeout(f"{what}: no answer within {timeout:g}s", cause=cause)
        raise EtcdUnavailable(f"{what}: {_describe_exception(cause)}", cause=cause)


def check_tls(failure: Failure, what: str) -> None:
    """Raise :class:`TLSError` when ``failure`` is a TLS handshake that failed:
    retrying cannot fix a certificate, so it is a stop with the reason."""
    tls_problem = _tls_problem(failure.value)
    if tls_problem is not None:
        raise TLSError(f"{what}: TLS failed: {tls_problem}; check the CA file, the "
                       "certificate and that the URL's host name is in it")


def was_cancelled(failure: Failure) -> bool:
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
