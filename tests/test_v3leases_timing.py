"""The lease keeper's and the atomic checkpoint's timing, on a fake clock.

Only our own scheduling is exercised here (when a destination lease is granted,
renewed, let go); what etcd does with leases is tested on real servers in
tests/test_v3leases.py.
"""

from twisted.internet import defer
from twisted.internet.task import Clock

from etcdmirror.checkpoint import BatchSettings, Checkpointer
from etcdmirror.keys import KeyMapper
from etcdmirror.v3leases import LeaseKeeper
from tests.fakes import RecordingCheckpoint


class Destination:
    """Grants leases 100, 101, ... and records keep-alives."""

    def __init__(self):
        self.granted, self.renewed, self.fail = [], [], False

    def lease_grant(self, ttl):
        self.granted.append(ttl)
        return defer.succeed((99 + len(self.granted), ttl))

    def lease_keep_alive(self, lease):
        if self.fail:
            return defer.fail(ConnectionError("destination away"))
        self.renewed.append(lease)
        return defer.succeed(9)


class Lifetimes:
    def __init__(self, **remaining):
        self.left = dict(remaining)

    def remaining(self, lifetime):
        return defer.succeed(self.left.get(lifetime, -1))


def keeper(**remaining):
    clock, destination = Clock(), Destination()
    k = LeaseKeeper(destination, Lifetimes(**remaining), KeyMapper("/a", "/b", strip=True), clock)
    return k, clock, destination


def test_keys_of_one_source_lease_share_one_destination_lease():
    k, clock, destination = keeper(L=8)
    ids = [k.for_source_lease("L").result, k.for_source_lease("L").result]
    assert ids == [100, 100] and destination.granted == [8 + 1]


def test_renewed_every_third_of_its_ttl_while_the_source_lives():
    k, clock, destination = keeper(L=8)
    k.for_source_lease("L")
    k.start()
    clock.advance(2.9)
    assert destination.renewed == []
    clock.advance(0.1)                      # a third of the 9 s granted
    assert destination.renewed == [100]
    clock.advance(3)
    assert destination.renewed == [100, 100]
    k.source.left["L"] = -1                 # the source lease ended
    clock.advance(3)
    assert destination.renewed == [100, 100] and k.leases == {}
    clock.advance(30)
    assert destination.renewed == [100, 100], "a lease let go is never renewed again"


def test_a_failed_renewal_is_tried_again_sooner():
    k, clock, destination = keeper(L=8)
    k.for_source_lease("L")
    k.start()
    destination.fail = True
    clock.advance(3)
    destination.fail = False
    clock.advance(1)                        # not a whole third later
    assert destination.renewed == [100]


def test_a_v2_key_written_again_follows_its_new_lease_only():
    k, clock, destination = keeper(**{"/a/k": 5})
    assert k.for_ttl(b"/b/k", 5).result == 100
    assert k.for_ttl(b"/b/k", 5).result == 101
    assert list(k.leases) == ["/a/k"] and k.leases["/a/k"].id == 101
    k.start()
    clock.advance(2)
    assert destination.renewed == [101]


def test_stop_cancels_every_timer():
    k, clock, destination = keeper(L=8, M=8)
    k.for_source_lease("L"), k.for_source_lease("M")
    k.start()
    k.stop()
    assert clock.getDelayedCalls() == []


class AtomicCheckpoint(RecordingCheckpoint):
    atomic = True


def test_an_atomic_checkpoint_is_written_only_by_progress_from_the_loop():
    clock, store, index = Clock(), AtomicCheckpoint(), [10]
    checkpoint = Checkpointer(store, clock, lambda what, side, op: op(), lambda: index[0],
                              BatchSettings(persist_events=1, progress_persist_events=5))
    checkpoint.persisted_index = 10
    checkpoint.before_apply(11)
    index[0] = 11
    checkpoint.applied()                    # its transaction moved the checkpoint
    assert store.puts == [] and checkpoint.persisted_index == 11
    checkpoint.progress(12)                 # not due: nothing, and no timer either
    assert store.puts == [] and clock.getDelayedCalls() == []
    clock.advance(60)
    assert store.puts == []
    checkpoint.progress(20)                 # far: written now
    assert store.puts == [(store.key, "20")]
