"""Retry timing and stop behaviour of the controller, on a fake clock.

Only the controller's own time-driven logic is exercised here (backoff between
retries, interrupting a wait on stop, rate-limited progress persistence); what
etcd answers is tested against real servers elsewhere.
"""

import etcd
from prometheus_client import CollectorRegistry
from twisted.internet import defer
from twisted.internet.task import Clock

from etcdmirror import status as st
from etcdmirror.answers import EtcdUnavailable, is_transient
from etcdmirror.applier import EventApplier
from etcdmirror.backoff import Backoff
from etcdmirror.checkpoint import BatchSettings
from etcdmirror.controller import Options, ReplicationController, _Stopping
from etcdmirror.events import Event, Outcome, UnknownAction
from etcdmirror.keys import KeyMapper
from etcdmirror.metrics import Metrics
from tests.fakes import QuietSource, RecordingCheckpoint


def make(clock, checkpoint=None, replica=None, **batch):
    status = st.MirrorStatus("s", "d", "/a", "/b", "/__replication/b")
    metrics = Metrics(CollectorRegistry(), status, "http://d:1", "/b")
    return ReplicationController(
        QuietSource, replica, checkpoint or RecordingCheckpoint(),
        mapper=KeyMapper("/a", "/b"), status=status, metrics=metrics, clock=clock,
        options=Options(batch=BatchSettings(**batch)), transient=is_transient,
        backoff_factory=lambda: Backoff(base=1.0, cap=8.0, rng=lambda: 1.0))


def flaky(failures):
    calls = []

    def operation():
        calls.append(True)
        if len(calls) <= failures:
            return defer.fail(EtcdUnavailable("GET '/a' on source: connection refused"))
        return defer.succeed("answer")
    return operation, calls


def test_transient_errors_are_retried_with_growing_delays():
    clock = Clock()
    c = make(clock)
    c.status.state = st.State.REPLICATING
    operation, calls = flaky(3)
    results = []
    c._retrying("reading", "source", operation).addCallback(results.append)
    assert len(calls) == 1 and c.status.state is st.State.RETRYING
    clock.advance(0.99)
    assert len(calls) == 1
    clock.advance(0.01)          # 1 s
    assert len(calls) == 2
    clock.advance(2)             # 2 s
    assert len(calls) == 3
    clock.advance(3.99)
    assert len(calls) == 3 and not results
    clock.advance(0.01)          # 4 s
    assert results == ["answer"] and c.status.state is st.State.REPLICATING
    assert "connection refused" in c.status.last_error


def test_non_transient_errors_are_not_retried():
    c = make(Clock())
    failures = []
    c._retrying("x", "destination", lambda: defer.fail(etcd.EtcdNotDir("no"))).addErrback(
        failures.append)
    assert failures[0].check(etcd.EtcdNotDir)


def test_stop_interrupts_a_backoff_wait():
    clock = Clock()
    c = make(clock)
    operation, calls = flaky(100)
    failures = []
    c._retrying("x", "source", operation).addErrback(failures.append)
    c.stop()
    assert failures and failures[0].check(_Stopping)
    assert not clock.getDelayedCalls()


def test_progress_is_persisted_at_most_every_interval_and_at_least_once():
    clock = Clock()
    dest = RecordingCheckpoint()
    c = make(clock, dest, progress_persist_interval=10.0, progress_persist_events=500)
    c.index = c.checkpoint.persisted_index = 100
    c.checkpoint._last_persist = clock.seconds()
    c._progress(150)
    assert c.index == 150 and dest.puts == []
    clock.advance(9.9)
    assert dest.puts == []
    clock.advance(0.1)           # no more progress came: persisted anyway
    assert dest.puts == [("/__replication/b", "150")]
    c._progress(160)
    c._progress(170)
    assert len(dest.puts) == 1 and c.index == 170
    clock.advance(10)
    assert dest.puts[-1] == ("/__replication/b", "170")
    clock.advance(30)            # unchanged: nothing written
    assert len(dest.puts) == 2
    c._progress(700)             # far ahead of the persisted index: at once
    assert dest.puts[-1] == ("/__replication/b", "700")


def test_progress_never_moves_the_index_back():
    c = make(Clock())
    c.index = c.checkpoint.persisted_index = 100
    c._progress(50)
    assert c.index == 100


def test_unknown_action_is_refused_without_touching_the_destination():
    event = Event.from_payload({"action": "frobnicate",
                                "node": {"key": "/a/x", "value": "1", "modifiedIndex": 7}})
    failures = []
    EventApplier(None, KeyMapper("/a", "/b")).apply(event).addErrback(failures.append)
    assert failures[0].check(UnknownAction)
    assert "frobnicate" in str(failures[0].value) and "7" in str(failures[0].value)


def test_a_resync_asked_for_by_the_ttl_keeper_interrupts_a_quiet_watch():
    """A TTL'd directory ran out on the replica: resync now, not at the next event."""
    clock = Clock()
    c = make(clock)
    c.index = c.checkpoint.persisted_index = 10
    waits, resyncs = c.source.waits, []

    def resync(reason):
        resyncs.append(reason)
        c.stop()
        return defer.succeed(None)

    c._resync = resync
    c._replicate().addErrback(lambda f: f.trap(_Stopping))
    assert len(waits) == 1 and not resyncs
    c._ttl_dir_expired("/a/tdir")
    assert waits[-1] == "cancelled" and resyncs == ["ttl_expired"]


def test_an_event_waits_for_a_ttl_refresh_in_progress():
    clock = Clock()
    applied = []

    class Replica:
        def apply(self, event, replaying=False):
            applied.append(event.modifiedIndex)
            return defer.succeed(Outcome.APPLIED)

    c = make(clock, replica=Replica())
    c.index = c.checkpoint.persisted_index = 10

    event = Event.from_payload({"action": "set",
                                "node": {"key": "/a/x", "value": "1", "modifiedIndex": 11}})
    assert c.gate.acquire() is None          # the TTL keeper is writing
    c._send(event)
    assert applied == []
    c.gate.release()
    assert applied == [11] and c.index == 11 and not c.gate.held
