"""The event pipeline's rules (etcdmirror/pipeline.py), with a replica that answers when
the test says: which events may be in flight together, that they finish in source order
whatever order the answers come in, what a failure stops, and when the write gate is held.

That etcd applies pipelined writes in the order sent is etcd's behaviour, tested on a
real server in test_pipelining.py; the mirror's order end to end is in test_ordered_writes.py.
"""

import logging

import pytest
from twisted.internet import defer

from etcdmirror.answers import EtcdUnavailable
from etcdmirror.events import Divergence, Event, Outcome
from etcdmirror.gate import WriteGate
from etcdmirror.pipeline import EventPipeline, overlaps, send_again


def event(index, key, action="set"):
    return Event.from_payload({"action": action,
                               "node": {"key": key, "value": str(index), "modifiedIndex": index}})


class Replica:
    """Records what was sent; each answer is the test's to give."""

    def __init__(self):
        self.sent, self.answers = [], {}

    def apply(self, e, replaying=False):
        self.sent.append(e.modifiedIndex)
        self.answers[e.modifiedIndex] = d = defer.Deferred()
        return d

    def answer(self, index, outcome=Outcome.APPLIED):
        self.answers.pop(index).callback(outcome)

    def fail(self, index, error):
        self.answers.pop(index).errback(error)


def make(depth=4):
    replica, finished, gate = Replica(), [], WriteGate()
    pipeline = EventPipeline(replica.apply, gate, depth,
                             lambda e, outcome, started: finished.append((e.modifiedIndex, outcome)))
    return pipeline, replica, finished, gate


def send(pipeline, e):
    assert pipeline.admits(e)
    assert pipeline.turn() is None
    pipeline.send(e, False, 0.0)


def results(d):
    got = []
    d.addBoth(got.append)
    return got


@pytest.mark.parametrize("a, b, expected", [
    ("/a/b", "/a/b", True),
    ("/a", "/a/b", True),
    ("/a/b/c", "/a", True),
    ("/", "/a", True),
    ("/a", "/ab", False),
    ("/a/b", "/a/c", False),
    ("/ab/c", "/a", False),
])
def test_overlaps_is_same_node_or_one_below_the_other(a, b, expected):
    assert overlaps(a, b) is expected and overlaps(b, a) is expected


def test_events_on_distinct_keys_go_out_together_up_to_the_depth():
    pipeline, replica, _, _ = make(depth=3)
    for i, key in enumerate(["/a/1", "/a/2", "/a/3"], start=10):
        send(pipeline, event(i, key))
    assert replica.sent == [10, 11, 12]
    assert not pipeline.admits(event(13, "/a/4"))          # full
    assert pipeline.last_index == 12


def test_an_event_waits_for_the_events_in_flight_on_its_key_or_above_or_below_it():
    pipeline, replica, finished, _ = make(depth=8)
    send(pipeline, event(10, "/d/x"))
    send(pipeline, event(11, "/e"))
    for blocked in ("/d/x", "/d", "/d/x/y", "/"):
        assert not pipeline.admits(event(12, blocked)), blocked
    assert pipeline.admits(event(12, "/d/xy"))
    room = results(pipeline.room())
    replica.answer(10)
    assert room == [None] and finished == [(10, Outcome.APPLIED)]
    assert pipeline.admits(event(12, "/d/x"))


def test_events_finish_in_source_order_whatever_order_the_answers_come_in():
    pipeline, replica, finished, gate = make()
    for i, key in enumerate(["/a", "/b", "/c"], start=1):
        send(pipeline, event(i, key))
    replica.answer(3)
    replica.answer(2, Outcome.REPLAYED)
    assert finished == [] and gate.held
    replica.answer(1)
    assert finished == [(1, Outcome.APPLIED), (2, Outcome.REPLAYED), (3, Outcome.APPLIED)]
    assert pipeline.idle and not gate.held


def test_a_failure_stops_sending_and_settled_hands_back_what_did_not_finish_in_order():
    pipeline, replica, finished, gate = make()
    for i, key in enumerate(["/a", "/b", "/c", "/d"], start=1):
        send(pipeline, event(i, key))
    replica.answer(1)
    replica.fail(2, EtcdUnavailable("PUT '/b': connection lost"))
    assert pipeline.stalled and not pipeline.admits(event(5, "/z"))
    settled = results(pipeline.settled())
    replica.answer(4)
    assert settled == []                                   # 3 is still in flight
    replica.fail(3, EtcdUnavailable("PUT '/c': connection lost"))
    leftovers = settled[0]
    assert [item.event.modifiedIndex for item in leftovers] == [2, 3, 4]
    assert [item.outcome for item in leftovers] == [None, None, Outcome.APPLIED]
    assert finished == [(1, Outcome.APPLIED)]              # never past the failure
    assert gate.held and not pipeline.stalled and pipeline.idle
    pipeline.release()
    assert not gate.held


def test_enter_says_false_once_the_pipeline_stalled():
    pipeline, replica, _, _ = make(depth=1)
    send(pipeline, event(1, "/a"))
    entered = results(pipeline.enter(event(2, "/b"), lambda: defer.succeed(None),
                                     lambda d: d))
    assert entered == []                                   # full: waits for room
    replica.fail(1, EtcdUnavailable("lost"))
    assert entered == [False]


def test_enter_prepares_then_takes_the_gate_from_the_ttl_keeper():
    pipeline, replica, _, gate = make()
    assert gate.acquire() is None                          # the keeper writes
    prepared = []
    entered = results(pipeline.enter(event(1, "/a"),
                                     lambda: defer.succeed(prepared.append(1)), lambda d: d))
    assert prepared == [1] and entered == []
    gate.release()
    assert entered == [True]
    pipeline.send(event(1, "/a"), False, 0.0)
    assert replica.sent == [1]


def test_a_waiting_ttl_keeper_stops_new_sends_and_gets_the_gate_once_they_finished():
    pipeline, replica, finished, gate = make()
    send(pipeline, event(1, "/a"))
    keeper = results(gate.acquire())
    assert not pipeline.admits(event(2, "/b"))             # the keeper is next
    replica.answer(1)
    assert finished == [(1, Outcome.APPLIED)] and keeper == [None]
    assert pipeline.turn() is not None                     # now we wait for the keeper


def test_a_bug_while_finishing_an_event_stalls_the_pipeline_with_it():
    gate, replica = WriteGate(), Replica()

    def broken(e, outcome, started):
        raise RuntimeError("bug")

    pipeline = EventPipeline(replica.apply, gate, 4, broken)
    send(pipeline, event(1, "/a"))
    replica.answer(1)
    assert pipeline.stalled
    leftovers = results(pipeline.settled())[0]
    assert leftovers[0].failure.check(RuntimeError)


class Retrying:
    def __init__(self):
        self.calls = []

    def transient(self, error):
        return isinstance(error, EtcdUnavailable)

    def __call__(self, what, side, operation):
        self.calls.append(what())
        return operation()


class Metrics:
    class Counter:
        def __init__(self):
            self.counts = {}

        def labels(self, **labels):
            key = tuple(sorted(labels.items()))
            self.counts.setdefault(key, 0)
            counter = self

            class Inc:
                def inc(self):
                    counter.counts[key] += 1
            return Inc()

    def __init__(self):
        self.retries, self.errors = self.Counter(), self.Counter()


def test_send_again_resends_a_transient_failure_and_says_which_later_events_landed_first(caplog):
    pipeline, replica, _, _ = make()
    for i, key in enumerate(["/a", "/b", "/c"], start=1):
        send(pipeline, event(i, key))
    replica.fail(1, EtcdUnavailable("PUT '/a': 500 request timed out"))
    replica.answer(2)
    replica.fail(3, EtcdUnavailable("PUT '/c': connection lost"))
    leftovers = results(pipeline.settled())[0]
    retrying, metrics = Retrying(), Metrics()
    with caplog.at_level(logging.WARNING, logger="etcdmirror.pipeline"):
        again = results(send_again(leftovers[0], leftovers, retrying, replica, metrics))
    assert replica.sent == [1, 2, 3, 1] and retrying.calls == ["applying set of key '/a' at index 1"]
    assert "1 later events on other keys, sent with it, were applied before it" in caplog.text
    assert metrics.retries.counts == {(("side", "destination"),): 1}
    replica.answer(1, Outcome.REPLAYED)
    assert again == [Outcome.REPLAYED]


def test_send_again_fails_with_the_event_s_own_error_when_it_is_not_transient():
    pipeline, replica, _, _ = make()
    send(pipeline, event(1, "/a"))
    replica.fail(1, Divergence("compareAndSwap '/a' failed", event(1, "/a")))
    leftovers = results(pipeline.settled())[0]
    again = results(send_again(leftovers[0], leftovers, Retrying(), replica, Metrics()))
    assert again[0].check(Divergence) and replica.sent == [1]
