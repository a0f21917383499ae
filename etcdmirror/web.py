"""The read-only HTTP interface: ``/lag``, ``/metrics``, ``/status``, ``/healthz``.

``/lag`` and ``/metrics`` answer as in etcd-mirror 0.0.12, so existing checks
keep working.  Only GET and HEAD exist; nothing over HTTP changes state.
Metrics are rendered on the reactor thread (no thread pool: rendering a few
dozen samples is cheaper than a thread hop).
"""

import json

from prometheus_client import CollectorRegistry
from prometheus_client.exposition import CONTENT_TYPE_LATEST, generate_latest
from twisted.web.resource import Resource
from twisted.web.server import Request, Site

from etcdmirror.status import MirrorStatus, State

INDEX_TEXT = b"""etcd-mirror
/lag: Replication lag (in term of etcd indexes)
/metrics: metrics in a format useful for prometheus
/status: replication state, indexes and last error (JSON)
/healthz: 200 when replicating normally and fresh, 503 otherwise
"""


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


class RootResource(Resource):
    def __init__(self, status: MirrorStatus, registry: CollectorRegistry) -> None:
        super().__init__()
        self.putChild(b"lag", LagResource(status))
        self.putChild(b"metrics", MetricsResource(registry))
        self.putChild(b"status", StatusResource(status))
        self.putChild(b"healthz", HealthResource(status))

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


def make_site(status: MirrorStatus, registry: CollectorRegistry) -> Site:
    return QuietSite(RootResource(status, registry))
