"""The read-only HTTP interface, rendered with twisted.web's test request."""

import json

import pytest
from prometheus_client import CollectorRegistry
from twisted.internet.task import Clock
from twisted.web.server import NOT_DONE_YET
from twisted.web.test.requesthelper import DummyRequest

from etcdmirror import status as st
from etcdmirror.metrics import Metrics
from etcdmirror.web import WAIT_POLL_INTERVAL, RootResource


def make(clock=None):
    status = st.MirrorStatus(source="http://s:1", destination="http://d:2",
                             src_prefix="/a", dst_prefix="/b", index_key="/__replication/b")
    registry = CollectorRegistry()
    metrics = Metrics(registry, status, url="http://d:2", prefix="/b")
    return status, metrics, RootResource(status, registry, clock or Clock())


def render(root, path, method=b"GET"):
    request = DummyRequest([path.encode()])
    request.method = method
    resource = root.getChildWithDefault(path.encode(), request)
    body = resource.render(request)
    return request.responseCode or 200, body if isinstance(body, bytes) else b"".join(
        request.written)


def assert_post_refused(root, path, args=None):
    """A POST to ``path`` is refused: Twisted raises UnsupportedMethod, or answers 405."""
    request = DummyRequest([path.encode()])
    request.method = b"POST"
    if args is not None:
        request.args = args
    resource = root.getChildWithDefault(path.encode(), request)
    try:
        resource.render(request)
    except Exception as e:  # twisted raises UnsupportedMethod for POST
        assert type(e).__name__ == "UnsupportedMethod"
    else:
        assert request.responseCode == 405


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
        assert_post_refused(root, path)


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


# -- /wait: the read-your-writes barrier, timed with a Clock ------------------------

def start_wait(root, method=b"GET", **args):
    """A /wait request rendered; ``(request, body)``, body NOT_DONE_YET while it waits."""
    request = DummyRequest([b"wait"])
    request.method = method
    request.args = {k.encode(): [str(v).encode()] for k, v in args.items()}
    resource = root.getChildWithDefault(b"wait", request)
    return request, resource.render(request)


def answer(request, body):
    """``(code, json)`` of a /wait that has answered."""
    if body is NOT_DONE_YET:
        assert request.finished, "still waiting"
        body = b"".join(request.written)
    return request.responseCode or 200, json.loads(body)


def waiting(root):
    return root.getStaticEntity(b"wait")


def replicating(clock=None):
    clock = clock or Clock()
    status, _, root = make(clock)
    status.state = st.State.REPLICATING
    status.replica_index = 100
    return clock, status, root


def test_wait_answers_at_once_when_the_replica_holds_the_index():
    _, status, root = replicating()
    for index in (0, 99, 100):
        code, doc = answer(*start_wait(root, index=index))
        assert code == 200
        assert doc == {"index": index, "replica_index": 100, "reached": True,
                       "state": "replicating", "timeout": 30.0, "waited_seconds": 0.0}


def test_wait_answers_once_the_replica_gets_there():
    clock, status, root = replicating()
    request, body = start_wait(root, index=105, timeout=10)
    assert body is NOT_DONE_YET and waiting(root).pending == 1
    clock.advance(1)
    status.replica_index = 104
    clock.advance(WAIT_POLL_INTERVAL)
    assert not request.finished
    status.replica_index = 107                       # an event beyond it counts too
    clock.advance(WAIT_POLL_INTERVAL)
    code, doc = answer(request, body)
    assert code == 200 and doc["reached"] and doc["replica_index"] == 107
    assert doc["waited_seconds"] == pytest.approx(1 + 2 * WAIT_POLL_INTERVAL)
    assert waiting(root).pending == 0 and not clock.getDelayedCalls()


def test_wait_times_out_with_504_and_the_replica_index():
    clock, status, root = replicating()
    request, body = start_wait(root, index=200, timeout=2.5)
    clock.pump([WAIT_POLL_INTERVAL] * 49)            # 2.45 s
    assert not request.finished
    status.replica_index = 150
    clock.advance(WAIT_POLL_INTERVAL)
    code, doc = answer(request, body)
    assert code == 504
    assert doc == {"index": 200, "replica_index": 150, "reached": False,
                   "state": "replicating", "timeout": 2.5, "waited_seconds": 2.5}
    assert not clock.getDelayedCalls()


def test_wait_timeout_between_polls_is_kept():
    clock, _, root = replicating()
    request, body = start_wait(root, index=200, timeout=0.02)
    clock.advance(0.019)
    assert not request.finished
    clock.advance(0.002)                             # not at the next poll, 0.05
    assert answer(request, body)[0] == 504


def test_wait_with_timeout_0_answers_at_once():
    _, _, root = replicating()
    code, doc = answer(*start_wait(root, index=101, timeout=0))
    assert code == 504 and doc["replica_index"] == 100 and doc["waited_seconds"] == 0.0


def test_wait_default_timeout_and_cap():
    clock, _, root = replicating()
    request, body = start_wait(root, index=101)
    clock.advance(29.9)
    assert not request.finished
    clock.advance(0.1)
    code, doc = answer(request, body)
    assert code == 504 and doc["timeout"] == 30.0 and doc["waited_seconds"] == 30.0
    request, body = start_wait(root, index=101, timeout=100000)
    clock.pump([1.0] * 299)
    assert not request.finished
    clock.advance(1.0)
    code, doc = answer(request, body)
    assert code == 504 and doc["timeout"] == 300.0 and doc["waited_seconds"] == 300.0


def test_many_waits_share_one_timer():
    clock, status, root = replicating()
    requests = [start_wait(root, index=100 + i, timeout=5) for i in range(1, 51)]
    assert len(clock.getDelayedCalls()) == 1
    status.replica_index = 125
    clock.advance(WAIT_POLL_INTERVAL)
    done = [r for r, _ in requests if r.finished]
    assert len(done) == 25 and waiting(root).pending == 25
    assert len(clock.getDelayedCalls()) == 1
    clock.advance(5)
    assert all(answer(r, b)[0] == 504 for r, b in requests[25:])
    assert not clock.getDelayedCalls()


def test_wait_keeps_waiting_while_resyncing_or_retrying():
    clock, status, root = replicating()
    request, body = start_wait(root, index=300, timeout=10)
    for state in (st.State.RESYNCING, st.State.RETRYING, st.State.STARTING):
        status.state = state
        clock.advance(1)
        assert not request.finished
    status.replica_index = 300                       # a resync's snapshot index
    clock.advance(WAIT_POLL_INTERVAL)
    code, doc = answer(request, body)
    assert code == 200 and doc["state"] == "starting"


@pytest.mark.parametrize("state", [st.State.FAILED, st.State.STOPPING, st.State.STOPPED,
                                   st.State.STANDBY])
def test_wait_gives_up_with_503_when_the_mirror_will_not_get_there(state):
    clock, status, root = replicating()
    request, body = start_wait(root, index=300, timeout=10)
    status.state = state
    clock.advance(WAIT_POLL_INTERVAL)
    code, doc = answer(request, body)
    assert code == 503 and doc["state"] == state.value and not doc["reached"]
    assert doc["replica_index"] == 100
    # At once when asked in that state; what the replica holds still counts.
    assert answer(*start_wait(root, index=300))[0] == 503
    assert answer(*start_wait(root, index=100))[0] == 200
    assert not clock.getDelayedCalls()


def test_a_client_that_goes_away_is_forgotten():
    clock, status, root = replicating()
    gone, _ = start_wait(root, index=101, timeout=10)
    stays, body = start_wait(root, index=102, timeout=10)
    gone.processingFailed(Exception("connection lost"))
    assert waiting(root).pending == 1
    status.replica_index = 102
    clock.advance(WAIT_POLL_INTERVAL)
    assert answer(stays, body)[0] == 200 and not gone.written
    last, _ = start_wait(root, index=200, timeout=10)
    last.processingFailed(Exception("connection lost"))
    assert waiting(root).pending == 0 and not clock.getDelayedCalls()


@pytest.mark.parametrize("args, bad", [
    ({}, "'index' is required"),
    ({"index": ""}, "'index' must be a non-negative integer"),
    ({"index": "-1"}, "'index' must be a non-negative integer"),
    ({"index": "1.5"}, "'index' must be a non-negative integer"),
    ({"index": "abc"}, "'index' must be a non-negative integer"),
    ({"index": "²"}, "'index' must be a non-negative integer"),
    ({"index": "1", "timeout": "soon"}, "'timeout' must be a non-negative number"),
    ({"index": "1", "timeout": "-1"}, "'timeout' must be a non-negative number"),
    ({"index": "1", "timeout": "nan"}, "'timeout' must be a non-negative number"),
    ({"index": "1", "timeout": "inf"}, "'timeout' must be a non-negative number"),
])
def test_bad_wait_parameters_are_400_naming_them(args, bad):
    clock, _, root = replicating()
    code, doc = answer(*start_wait(root, **args))
    assert code == 400 and bad in doc["error"]
    assert not clock.getDelayedCalls()


def test_a_parameter_given_twice_is_400():
    _, _, root = replicating()
    request = DummyRequest([b"wait"])
    request.args = {b"index": [b"1", b"2"]}
    code, doc = answer(request, root.getChildWithDefault(b"wait", request).render(request))
    assert code == 400 and "'index' given 2 times" in doc["error"]


def test_wait_is_read_only_and_answers_head():
    clock, status, root = replicating()
    request, body = start_wait(root, method=b"HEAD", index=101, timeout=1)
    assert body is NOT_DONE_YET
    status.replica_index = 101
    clock.advance(WAIT_POLL_INTERVAL)
    assert request.finished and request.responseCode == 200
    assert_post_refused(root, "wait", {b"index": [b"1"]})
    assert waiting(root).pending == 0
