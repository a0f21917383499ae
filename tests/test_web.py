"""The read-only HTTP interface, rendered with twisted.web's test request."""

import json

from prometheus_client import CollectorRegistry
from twisted.web.test.requesthelper import DummyRequest

from etcdmirror import status as st
from etcdmirror.metrics import Metrics
from etcdmirror.web import RootResource


def make():
    status = st.MirrorStatus(source="http://s:1", destination="http://d:2",
                             src_prefix="/a", dst_prefix="/b", index_key="/__replication/b")
    registry = CollectorRegistry()
    metrics = Metrics(registry, status, url="http://d:2", prefix="/b")
    return status, metrics, RootResource(status, registry)


def render(root, path, method=b"GET"):
    request = DummyRequest([path.encode()])
    request.method = method
    resource = root.getChildWithDefault(path.encode(), request)
    body = resource.render(request)
    return request.responseCode or 200, body if isinstance(body, bytes) else b"".join(
        request.written)


def test_lag_is_source_minus_replica():
    status, _, root = make()
    status.source_index, status.replica_index = 120, 100
    assert render(root, "lag") == (200, b"20\n")


def test_healthz_follows_state():
    status, _, root = make()
    assert render(root, "healthz")[0] == 503
    status.state = st.State.REPLICATING
    assert render(root, "healthz") == (200, b"ok\n")
    status.state = st.State.RETRYING
    assert render(root, "healthz") == (503, b"retrying\n")


def test_status_is_json_without_credentials():
    status, _, root = make()
    status.error("boom")
    code, body = render(root, "status")
    doc = json.loads(body)
    assert code == 200 and doc["last_error"] == "boom" and doc["state"] == "starting"
    assert doc["source"] == {"endpoints": "http://s:1", "prefix": "/a"}


def test_metrics_keep_0_0_12_names():
    status, metrics, root = make()
    metrics.replicated_events.inc()
    status.source_index, status.replica_index = 10, 7
    code, body = render(root, "metrics")
    text = body.decode()
    assert "etcdmirror_replicated_events_total 1.0" in text
    assert 'etcdmirror_lag{prefix="/b",url="http://d:2"} 3.0' in text
    assert "etcdmirror_write_latency_bucket" in text and "etcdmirror_load_time" in text
    assert "etcdmirror_source_index 10.0" in text and "etcdmirror_replica_index 7.0" in text


def test_nothing_changes_state_over_http():
    status, _, root = make()
    for path in ("lag", "status", "healthz", "metrics"):
        request = DummyRequest([path.encode()])
        request.method = b"POST"
        resource = root.getChildWithDefault(path.encode(), request)
        try:
            resource.render(request)
        except Exception as e:  # twisted raises UnsupportedMethod for POST
            assert type(e).__name__ == "UnsupportedMethod"
        else:
            assert request.responseCode == 405


def test_healthz_is_503_when_the_replica_is_stale():
    status, _, root = make()
    status.state = st.State.REPLICATING
    status.max_replica_age = 10
    status.clock = lambda: 1000.0
    assert render(root, "healthz")[0] == 503          # age unknown
    status.fresh_as_of = 995.0
    assert render(root, "healthz") == (200, b"ok\n")
    status.fresh_as_of = 980.0
    assert render(root, "healthz") == (503, b"stale\n")
    status.heartbeat_time = 999.0                      # a recent heartbeat counts too
    assert render(root, "healthz") == (200, b"ok\n")
