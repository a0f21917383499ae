"""run_bounded: a resync's writes a few at a time, and nothing new after a failure;
V2ReplicaWriter.write_plan: directories level by level before the keys, deletes last."""

from twisted.internet import defer

from etcdmirror.bounded import run_bounded
from etcdmirror.keys import KeyMapper
from etcdmirror.resync import NodeState, Plan
from etcdmirror.v2replica import RESYNC_CONCURRENCY, V2ReplicaWriter


class Jobs:
    """Jobs whose Deferreds the test fires by hand."""

    def __init__(self, count):
        self.started, self.deferreds = [], {}
        self.jobs = [self._job(i) for i in range(count)]

    def _job(self, i):
        def job():
            self.started.append(i)
            self.deferreds[i] = defer.Deferred()
            return self.deferreds[i]
        return job


def test_at_most_limit_in_flight_and_fires_once_all_succeeded():
    jobs, results = Jobs(5), []
    run_bounded(jobs.jobs, 2).addCallback(results.append)
    assert jobs.started == [0, 1]
    jobs.deferreds[1].callback(None)
    assert jobs.started == [0, 1, 2]
    for i in (0, 2, 3):
        jobs.deferreds[i].callback(None)
    assert jobs.started == [0, 1, 2, 3, 4] and results == []
    jobs.deferreds[4].callback(None)
    assert results == [None]


def test_no_job_fires_at_once():
    results = []
    run_bounded([], 3).addCallback(results.append)
    assert results == [None]


def test_after_a_failure_nothing_new_starts_and_the_first_error_comes_out_unwrapped():
    jobs, failures = Jobs(6), []
    run_bounded(jobs.jobs, 3).addErrback(failures.append)
    jobs.deferreds[1].errback(ValueError("first"))
    assert jobs.started == [0, 1, 2]          # no job 3: it failed
    jobs.deferreds[0].errback(KeyError("second"))
    assert failures == []                     # job 2 is still in flight
    jobs.deferreds[2].callback(None)
    assert len(failures) == 1 and failures[0].check(ValueError)
    assert str(failures[0].value) == "first"


class RecordingClient:
    """Records the order of writes; holds each until the test lets them all go."""

    class cluster:
        display = "dst"

    pipelines = False

    def __init__(self):
        self.calls, self.in_flight, self.max_in_flight = [], [], 0

    def ordered(self):
        return self

    def _request(self, what):
        self.calls.append(what)
        d = defer.Deferred()
        self.in_flight.append(d)
        self.max_in_flight = max(self.max_in_flight, len(self.in_flight))
        return d

    def put(self, key, value=None, dir=False, ttl=None, prev_exist=None):
        return self._request(("dir" if dir else "put", key))

    def delete(self, key, recursive=False, dir=False):
        return self._request(("delete", key))

    def release_all(self):
        while self.in_flight:
            self.in_flight.pop(0).callback(None)


def test_write_plan_writes_directories_level_by_level_then_keys_then_deletes():
    client = RecordingClient()
    writer = V2ReplicaWriter(client, KeyMapper("/a", "/r"))
    d, k = NodeState(dir=True), NodeState(dir=False, value="v")
    plan = Plan(
        writes=[("/r/a", d, None), ("/r/a/x", d, None), ("/r/a/y", d, None),
                ("/r/a/x/z", d, None)]
        + [(f"/r/a/k{i}", k, None) for i in range(20)] + [("/r/a/x/k", k, None)],
        deletes=[("/r/a/old1", k), ("/r/a/old2", k)])
    done = []
    writer.write_plan(plan, log_writes=False).addCallback(done.append)
    order = []
    while client.in_flight:
        batch = list(client.calls[len(order):])
        order.extend(batch)
        client.release_all()
    order.extend(client.calls[len(order):])
    assert done == [None]
    assert order[0] == ("dir", "/r/a")
    assert set(order[1:3]) == {("dir", "/r/a/x"), ("dir", "/r/a/y")}
    assert order[3] == ("dir", "/r/a/x/z")
    assert {c for c in order[4:-2]} == {("put", f"/r/a/k{i}") for i in range(20)} | {
        ("put", "/r/a/x/k")}
    assert set(order[-2:]) == {("delete", "/r/a/old1"), ("delete", "/r/a/old2")}
    assert client.max_in_flight == RESYNC_CONCURRENCY
