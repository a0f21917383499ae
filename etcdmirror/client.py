"""A thin, non-blocking etcd v2 client on treq: what the mirror asks of a cluster.

Only what the mirror needs: read a node (optionally recursive and through
consensus), write one, delete one, watch a prefix, and learn the store's
index.  Answers are :class:`~etcdmirror.answers.Answer` (with python-etcd's
:class:`etcd.EtcdResult` for reads) and errors python-etcd's exception types
(:mod:`etcdmirror.answers`); requests go through a
:class:`~etcdmirror.transport.Transport`, which moves to the next endpoint
after a failure, and so does this client after an error answer worth
retrying elsewhere.

Two kinds of watch, both handed out as handles (:mod:`etcdmirror.watches`):

* a plain watch (:meth:`EtcdClient.watch`) can be finished early, and then
  reports the ``X-Etcd-Index`` that etcd sent with the response headers when
  it registered the watch (what that proves: :mod:`etcdmirror.watcher`);
* a streaming watch (:meth:`EtcdClient.stream`) hands over each event as its
  line arrives, so a mirror that is caught up costs no request per event.
  Which events etcd sends on it is the stream follower's business
  (:mod:`etcdmirror.stream`): this module only reports what arrived.
"""

import copy
from typing import Any, Callable, List, Optional, Tuple

import etcd
from twisted.internet import defer
from twisted.internet.interfaces import IReactorTime
from twisted.python.failure import Failure
from twisted.web.client import HTTPConnectionPool

from etcdmirror.answers import Answer, BadResponse, StreamEnd, is_transient, parse_answer
from etcdmirror.bodies import Aborted, Collector, EventLines
from etcdmirror.endpoints import Cluster, Endpoint
from etcdmirror.errors import LostLease
from etcdmirror.events import WatchProgress
from etcdmirror.transport import Transport
from etcdmirror.watches import EventStream, PendingWatch, Registration

#: Largest response body we accept (etcd's own request limit is 1.5 MiB per
#: value; a recursive snapshot of a big prefix is larger, so be generous).
MAX_BODY = 512 * 1024 * 1024

#: A key nobody writes: reading it is the cheapest way to learn the index.
#: Hidden (a leading "_"): never listed in a recursive read, never watched.
PROBE_KEY = "/__etcd_mirror_index_probe"


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
        fence: Optional[Any] = None,
    ) -> None:
        """``fence``: checked before every write (:class:`etcdmirror.halock.Lease`)."""
        self.cluster = cluster
        self.fence = fence
        #: The missing key :meth:`probe` reads: somewhere the credentials may
        #: read (a role limited to the prefix cannot read outside it).
        self.probe_key = probe_key
        self.reactor = reactor
        self.name = name
        self.transport = Transport(cluster, reactor, pool, timeout, name, tls)
        self._ordered = False

    def ordered(self) -> "EtcdClient":
        """This client with its writes on the ordered lane: each ``http://`` write is
        sent, pipelined, behind every write made through it before (see
        :meth:`Transport.request`).  Reads are unchanged."""
        twin = copy.copy(self)
        twin._ordered = True
        return twin

    @property
    def pipelines(self) -> bool:
        """True when writes through :meth:`ordered` may be in flight together and
        still land in the order made: every endpoint is ``http://`` (the
        ``https://`` ones go through Twisted's ``Agent``, one pooled connection
        per request in flight)."""
        return all(e.scheme == "http" for e in self.cluster.endpoints)

    @property
    def endpoint(self) -> Endpoint:
        return self.transport.endpoint

    def next_endpoint(self) -> None:
        """Move to the next endpoint of the cluster (after a transport failure)."""
        self.transport.next_endpoint()

    def close(self) -> defer.Deferred:
        """Close the idle connections; fires once they are closed."""
        return self.transport.close()

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
        prev_index: Optional[int] = None,
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
        if prev_index is not None:
            body.append(("prevIndex", str(prev_index)))
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
        params = [("wait", "true"), ("recursive", "true"), ("waitIndex", str(wait_index))]
        registration: defer.Deferred = defer.Deferred()
        what, request = self.transport.request("GET", key, params)
        request.addCallback(self._read_response, what, registration)
        watch = PendingWatch(defer.Deferred(lambda _: request.cancel()), registration,
                             self.reactor)
        request.addBoth(forward_to, watch.result)
        return watch

    def stream(self, key: str, wait_index: int,
               on_event: Callable[[Answer], None]) -> EventStream:
        """Recursive streaming watch on ``key`` from ``wait_index``.

        ``on_event`` gets every event etcd sends on the stream, in order, as
        an :class:`Answer`; ``done`` fires with :class:`StreamEnd`.
        """
        params = [("wait", "true"), ("recursive", "true"), ("stream", "true"),
                  ("waitIndex", str(wait_index))]
        registration: defer.Deferred = defer.Deferred()
        what, request = self.transport.request("GET", key, params)
        request.addCallback(self._read_stream, what, registration, on_event)
        stream = EventStream(defer.Deferred(lambda _: request.cancel()), registration,
                             self.reactor)
        request.addBoth(forward_to, stream.done)
        return stream

    @defer.inlineCallbacks
    def get_or_none(self, key: str, quorum: bool = False):
        """Fires with the node at ``key`` (an :class:`etcd.EtcdResult`), or None when it does not exist."""
        try:
            answer = yield self.get(key, quorum=quorum)
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

    # -- reading answers ----------------------------------------------------

    def _request(self, method: str, key: str, params: List[Tuple[str, str]],
                 form: Optional[List[Tuple[str, str]]] = None) -> defer.Deferred:
        fenced = self.fence is not None and method != "GET"
        if fenced:
            # As late as we can: right before the request is handed to the
            # connection; LostLease fails the request before anything is sent.
            try:
                valid_until = self.fence.check(f"{method} {key!r}")
            except LostLease:
                return defer.fail()
        what, request = self.transport.request(
            method, key, params, form, timeout=self.fence.write_timeout if fenced else None,
            ordered=self._ordered)
        request.addCallback(self._read_response, what)
        if fenced:
            request.addBoth(self.fence.answered, what, valid_until)
        return request

    def _answer(self, body: bytes, code: int, etcd_index: Optional[int],
                cluster_id: Optional[str], what: str) -> Answer:
        try:
            return parse_answer(body, code, etcd_index, cluster_id, what)
        except etcd.EtcdException as e:
            if is_transient(e):
                # This member cannot serve us right now; another one may.
                self.transport.next_endpoint()
            raise

    def _read_response(self, response: Any, what: str,
                       registration: Optional[defer.Deferred] = None):
        etcd_index = _header_int(response, b"x-etcd-index")
        cluster_id = _header(response, b"x-etcd-cluster-id")
        finished: defer.Deferred = defer.Deferred(lambda _: collector.abort("cancelled"))
        collector = Collector(finished, MAX_BODY)
        response.deliverBody(collector)
        if registration is not None and response.code == 200:
            registration.callback(Registration(etcd_index, collector))

        def body_failed(failure: Failure):
            if failure.check(defer.CancelledError):
                return failure
            if failure.check(Aborted) and collector.aborted_by == "idle":
                if etcd_index is None:
                    raise BadResponse(f"{what}: pending watch without X-Etcd-Index header")
                return WatchProgress(etcd_index, cluster_id)
            if failure.check(Aborted):
                raise BadResponse(f"{what}: {collector.aborted_by}")
            raise self.transport.connection_lost(what, "reading the answer", failure)

        finished.addCallbacks(
            self._answer, body_failed, callbackArgs=(response.code, etcd_index, cluster_id, what)
        )
        return finished

    def _read_stream(self, response: Any, what: str, registration: defer.Deferred,
                     on_event: Callable[[Answer], None]):
        if response.code != 200:
            return self._read_response(response, what)
        etcd_index = _header_int(response, b"x-etcd-index")
        cluster_id = _header(response, b"x-etcd-cluster-id")
        if etcd_index is None:
            # Without the header the window cannot tell a live stream from a
            # one-event answer out of etcd's history.
            response.deliverBody(Collector(defer.Deferred(), 0))
            return defer.fail(BadResponse(f"{what}: streaming watch without X-Etcd-Index header"))

        def on_line(line: bytes) -> None:
            on_event(self._answer(line, 200, etcd_index, cluster_id, what))

        finished: defer.Deferred = defer.Deferred(lambda _: lines.abort("cancelled"))
        lines = EventLines(on_line, finished, MAX_BODY)
        response.deliverBody(lines)
        registration.callback(Registration(etcd_index, lines))

        def ended(_: None) -> StreamEnd:
            return StreamEnd(etcd_index, cluster_id, lines.events, idle=False)

        def failed(failure: Failure):
            if failure.check(defer.CancelledError, etcd.EtcdException):
                return failure
            if failure.check(Aborted) and lines.aborted_by == "idle":
                return StreamEnd(etcd_index, cluster_id, lines.events, idle=True)
            if failure.check(Aborted):
                raise BadResponse(f"{what}: {lines.aborted_by}")
            raise self.transport.connection_lost(what, "streaming", failure)

        finished.addCallbacks(ended, failed)
        return finished


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
