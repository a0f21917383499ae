"""The read-only HTTP interface: ``/lag``, ``/metrics``, ``/status``, ``/healthz``, ``/wait``.

``/lag`` and ``/metrics`` answer as in etcd-mirror 0.0.12, so existing checks
keep working.  Only GET and HEAD exist; nothing over HTTP changes state.
Metrics are rendered on the reactor thread (no thread pool: rendering a few
dozen samples is cheaper than a thread hop).

``/wait?index=N&timeout=S`` is a read-your-writes barrier: it answers once
the replica holds everything up to source index N (the status's
``replica_index``, which the controller moves after each applied event and
on watch progress), or when S seconds have passed.  A pending ``/wait`` holds
no thread and no timer of its own: the pending requests share one timer on
the injected clock that looks at the status every
:data:`WAIT_POLL_INTERVAL` seconds while any of them waits.
"""

import json
import math
from dataclasses import dataclass
from typing import Any, Dict, List, Optional, Tuple

from prometheus_client import CollectorRegistry
from prometheus_client.exposition import CONTENT_TYPE_LATEST, generate_latest
from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET, Request, Site

from etcdmirror.status import MirrorStatus, State
from etcdmirror.wait import DEFAULT_TIMEOUT as WAIT_DEFAULT_TIMEOUT
from etcdmirror.wait import MAX_TIMEOUT as WAIT_MAX_TIMEOUT

INDEX_TEXT = b"""etcd-mirror
/lag: Replication lag (in term of etcd indexes)
/metrics: metrics in a format useful for prometheus
/status: replication state, indexes and last error (JSON)
/healthz: 200 when replicating normally and fresh, 503 otherwise
/wait?index=N&timeout=S: 200 once the replica holds source index N, 504 after S seconds
"""

#: How often pending ``/wait`` requests look at the replica index (seconds).
WAIT_POLL_INTERVAL = 0.05
#: States from which the mirror will not move on: a ``/wait`` answers 503 at
#: once instead of waiting for its timeout.
WAIT_GIVES_UP = (State.FAILED, State.STOPPING, State.STOPPED, State.STANDBY)


class _Leaf(Resource):
    isLeaf = True

    def render_HEAD(self, request: Request) -> bytes:
        return self.render_GET(request)


class LagResource(_Leaf):
    def __init__(self, status: MirrorStatus) -> None:
        super().__init__()
        self.status = status

    def render_GET(self, request: Request) -> bytes:
        request.setHeader(b"Content-Type", b"text/plain; charset=utf-8")
        return b"%d\n" % self.status.lag


class MetricsResource(_Leaf):
    def __init__(self, registry: CollectorRegistry) -> None:
        super().__init__()
        self.registry = registry

    def render_GET(self, request: Request) -> bytes:
        request.setHeader(b"Content-Type", CONTENT_TYPE_LATEST.encode("ascii"))
        return generate_latest(self.registry)


class StatusResource(_Leaf):
    def __init__(self, status: MirrorStatus) -> None:
        super().__init__()
        self.status = status

    def render_GET(self, request: Request) -> bytes:
        request.setHeader(b"Content-Type", b"application/json")
        # Compact: json's C encoder only serves dumps without indent, and
        # monitoring may poll this often.
        return json.dumps(self.status.as_dict(), sort_keys=True).encode() + b"\n"


class HealthResource(_Leaf):
    def __init__(self, status: MirrorStatus) -> None:
        super().__init__()
        self.status = status

    def render_GET(self, request: Request) -> bytes:
        request.setHeader(b"Content-Type", b"text/plain; charset=utf-8")
        if not self.status.healthy:
            request.setResponseCode(503)
            why = "stale" if self.status.state is State.REPLICATING else self.status.state.value
            return f"{why}\n".encode()
        return b"ok\n"


class BadParameter(ValueError):
    """A ``/wait`` parameter that is missing or not usable (400)."""


def wait_parameters(args: Dict[bytes, List[bytes]],
                    max_timeout: float = WAIT_MAX_TIMEOUT) -> Tuple[int, float]:
    """``(index, timeout)`` from a ``/wait`` query; :class:`BadParameter` names the bad one."""
    def one(name: str) -> Optional[str]:
        values = args.get(name.encode())
        if not values:
            return None
        if len(values) > 1:
            raise BadParameter(f"parameter {name!r} given {len(values)} times")
        return values[0].decode("utf-8", "replace")

    text = one("index")
    if text is None:
        raise BadParameter("parameter 'index' is required: the source index to wait for")
    if not text.isdigit() or not text.isascii():
        raise BadParameter(f"parameter 'index' must be a non-negative integer, not {text!r}")
    text_timeout = one("timeout")
    if text_timeout is None:
        return int(text), min(WAIT_DEFAULT_TIMEOUT, max_timeout)
    try:
        timeout = float(text_timeout)
    except ValueError:
        timeout = math.nan
    if not timeout >= 0 or math.isinf(timeout):
        raise BadParameter("parameter 'timeout' must be a non-negative number of seconds, "
                           f"not {text_timeout!r}")
    return int(text), min(timeout, max_timeout)


@dataclass(eq=False)
class _Waiter:
    """One pending ``/wait`` request (compared by identity)."""

    request: Request
    index: int
    timeout: float
    started: float

    @property
    def deadline(self) -> float:
        return self.started + self.timeout


class WaitResource(_Leaf):
    """``/wait?index=N&timeout=S``: answer once the replica holds source index N.

    200 when ``replica_index >= N`` (whatever the state), 504 when S seconds
    passed first, 503 at once when the mirror is failed, stopping or stopped
    (it will not get further), 400 for a bad parameter.  Every answer is
    JSON: ``index``, ``replica_index``, ``reached``, ``waited_seconds``,
    ``timeout`` (after the cap) and ``state``; a 400 is ``{"error": ...}``.
    While the mirror starts, resyncs or retries, a ``/wait`` simply waits.
    """

    def __init__(self, status: MirrorStatus, clock: IReactorTime,
                 poll_interval: float = WAIT_POLL_INTERVAL,
                 max_timeout: float = WAIT_MAX_TIMEOUT) -> None:
        super().__init__()
        self.status = status
        self.clock = clock
        self.poll_interval = poll_interval
        self.max_timeout = max_timeout
        self._waiting: List[_Waiter] = []
        self._timer: Optional[IDelayedCall] = None

    @property
    def pending(self) -> int:
        """Requests waiting right now."""
        return len(self._waiting)

    def render_GET(self, request: Request) -> Any:
        request.setHeader(b"Content-Type", b"application/json")
        request.setHeader(b"Cache-Control", b"no-store")
        try:
            index, timeout = wait_parameters(request.args or {}, self.max_timeout)
        except BadParameter as e:
            request.setResponseCode(400)
            return _json({"error": str(e)})
        waiter = _Waiter(request, index, timeout, self.clock.seconds())
        code = self._verdict(waiter, waiter.started)
        if code is not None:
            request.setResponseCode(code)
            return self._body(waiter, code, waiter.started)
        self._waiting.append(waiter)
        # A client that goes away is forgotten; the Deferred also fires
        # (with None) when we finish the request ourselves.
        request.notifyFinish().addErrback(lambda _: self._forget(waiter))
        self._schedule(waiter.started)
        return NOT_DONE_YET

    def _verdict(self, waiter: _Waiter, now: float) -> Optional[int]:
        if self.status.replica_index >= waiter.index:
            return 200
        if self.status.state in WAIT_GIVES_UP:
            return 503
        # A millisecond's slack: a timer due at the deadline may fire a
        # rounding error early, and must not be set again for nothing.
        if now >= waiter.deadline - 0.001:
            return 504
        return None

    def _body(self, waiter: _Waiter, code: int, now: float) -> bytes:
        return _json({"index": waiter.index, "replica_index": self.status.replica_index,
                      "reached": code == 200, "state": self.status.state.value,
                      "timeout": waiter.timeout,
                      "waited_seconds": round(max(0.0, now - waiter.started), 3)})

    def _schedule(self, now: float) -> None:
        if self._timer is not None or not self._waiting:
            return
        soonest = min(w.deadline for w in self._waiting)
        delay = max(0.0, min(self.poll_interval, soonest - now))
        self._timer = self.clock.callLater(delay, self._check)

    def _check(self) -> None:
        self._timer = None
        now = self.clock.seconds()
        try:
            for waiter in list(self._waiting):
                code = self._verdict(waiter, now)
                if code is None:
                    continue
                self._waiting.remove(waiter)
                waiter.request.setResponseCode(code)
                waiter.request.write(self._body(waiter, code, now))
                waiter.request.finish()
        finally:
            # Whatever happened to one request, the others keep being looked at.
            self._schedule(now)

    def _forget(self, waiter: _Waiter) -> None:
        if waiter in self._waiting:
            self._waiting.remove(waiter)
        if not self._waiting and self._timer is not None:
            self._timer.cancel()
            self._timer = None


def _json(doc: Dict[str, Any]) -> bytes:
    return json.dumps(doc, sort_keys=True).encode() + b"\n"


class RootResource(Resource):
    def __init__(self, status: MirrorStatus, registry: CollectorRegistry,
                 clock: IReactorTime) -> None:
        super().__init__()
        self.putChild(b"lag", LagResource(status))
        self.putChild(b"metrics", MetricsResource(registry))
        self.putChild(b"status", StatusResource(status))
        self.putChild(b"healthz", HealthResource(status))
        self.putChild(b"wait", WaitResource(status, clock))

    def getChild(self, path: bytes, request: Request) -> Resource:
        if path == b"":
            return self
        return super().getChild(path, request)

    def render_GET(self, request: Request) -> bytes:
        request.setHeader(b"Content-Type", b"text/plain; charset=utf-8")
        return INDEX_TEXT

    render_HEAD = render_GET


class QuietSite(Site):
    """A Site that does not write an access-log line per scrape."""

    def log(self, request: Request) -> None:
        pass


def make_site(status: MirrorStatus, registry: CollectorRegistry, clock: IReactorTime) -> Site:
    """The HTTP interface; ``clock`` times ``/wait`` (the reactor)."""
    return QuietSite(RootResource(status, registry, clock))
