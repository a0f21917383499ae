"""The controller with several events in flight (etcdmirror/pipeline.py), on a fake clock
and a replica that answers when the test says: the index never passes an event that is
not applied, a transient failure is sent again in order, a divergence stops with the
index before it, and a stop waits for the answers of the events in flight.

What etcd does with pipelined writes is tested on real servers (test_pipelining.py,
test_ordered_writes.py)."""

from twisted.internet import defer

from etcdmirror import status as st
from etcdmirror.answers import EtcdUnavailable, is_transient
from etcdmirror.events import Divergence, Outcome
from tests.fakes import MemoryCheckpoint, MemoryReplica, mirror


class HeldReplica(MemoryReplica):
    """Four events in flight at once; each answered when the test says."""

    in_flight = 4

    def __init__(self, mapper):
        super().__init__(mapper)
        self.answers = {}

    def apply(self, e, replaying=False):
        self.applied.append(e.modifiedIndex)
        d = self.answers[e.modifiedIndex] = defer.Deferred()
        return d

    def answer(self, index, outcome=Outcome.APPLIED):
        self.answers.pop(index).callback(outcome)

    def fail(self, index, error):
        self.answers.pop(index).errback(error)


def started(**options):
    checkpoint = MemoryCheckpoint(index=0)
    c, source, replica, clock = mirror(checkpoint, make_replica=HeldReplica,
                                       transient=is_transient, **options)
    for i in range(6):
        source.write(f"/a/k{i % 5}", str(i))       # k0 again at index 6
    done = c.run()
    return c, source, replica, clock, checkpoint, done


def result(d):
    """What ``d`` fired with so far (left in ``d`` for the next look)."""
    got = []

    def seen(outcome):
        got.append(outcome)
        return outcome
    d.addBoth(seen)
    return got


def test_events_on_distinct_keys_are_in_flight_together_and_the_index_follows_the_answers():
    c, source, replica, clock, checkpoint, done = started()
    assert replica.applied == [1, 2, 3, 4]             # the depth; 5 waits for room
    assert c.pipeline.describe() == {"depth": 4, "in_flight": 4, "most_in_flight": 4}
    replica.answer(2)
    replica.answer(3)
    assert c.index == 0 and replica.applied == [1, 2, 3, 4]
    replica.answer(1)
    # Event 6 writes k0 again: it goes once 1 (k0) is answered, the depth allowing.
    assert c.index == 3 and replica.applied == [1, 2, 3, 4, 5, 6]
    replica.answer(4)
    replica.answer(5)
    replica.answer(6)
    assert c.index == 6 and c.pipeline.idle and not c.gate.held
    c.stop()
    assert result(done) == [0] and checkpoint.index == 6


def test_a_transient_failure_is_sent_again_in_order_once_the_rest_settled():
    c, source, replica, clock, checkpoint, done = started()
    replica.fail(2, EtcdUnavailable("PUT '/b/a/k1': 500 etcdserver: request timed out"))
    replica.answer(1)
    replica.answer(3)
    assert replica.applied == [1, 2, 3, 4] and c.index == 1   # nothing new is sent
    replica.answer(4)
    assert replica.applied == [1, 2, 3, 4, 2]                  # then 2 again, alone
    assert c.index == 1
    replica.answer(2)
    assert c.index == 4 and replica.applied == [1, 2, 3, 4, 2, 5, 6]
    assert c.metrics.retries.labels(side="destination")._value.get() == 1
    c.stop()


def test_a_divergence_stops_with_the_index_before_it_and_the_gate_kept_from_the_keeper():
    c, source, replica, clock, checkpoint, done = started()
    replica.answer(1)                                          # 5 goes out
    keeper = result(c.gate.acquire())                          # the TTL keeper waits
    replica.fail(2, Divergence("compareAndSwap of key '/a/k1' at index 2 failed", None))
    replica.answer(3)
    replica.answer(4)
    assert result(done) == []                                  # 5 is still in flight
    replica.answer(5)
    assert result(done) == [1] and c.index == 1
    assert c.status.state is st.State.FAILED and "last applied index 1" in c.status.last_error
    assert keeper == []


def test_a_stop_waits_for_the_answers_of_the_events_in_flight():
    c, source, replica, clock, checkpoint, done = started()
    c.stop()
    assert result(done) == [] and replica.applied == [1, 2, 3, 4]
    for i in (1, 2, 3, 4):
        replica.answer(i)
    assert result(done) == [0] and checkpoint.index == 4
    assert replica.applied == [1, 2, 3, 4]                     # nothing sent after the stop
