"""The HA lock, its lease and the active/standby supervisor (``--ha``), on a fake clock.

Only timing and our own logic are exercised: the lock's destination client is
a small in-memory stand-in (one key, a holder value, an index) that can fail
or hold requests; what etcd really answers to prevExist/prevValue/refresh is
tested against real servers elsewhere.
"""

import logging
from types import SimpleNamespace

import etcd
import pytest
from prometheus_client import CollectorRegistry
from twisted.internet import defer
from twisted.internet.task import Clock

from etcdmirror import status as st
from etcdmirror.answers import Answer, EtcdUnavailable
from etcdmirror.client import EtcdClient
from etcdmirror.endpoints import parse_cluster
from etcdmirror.errors import EXIT_OK, STEPPED_DOWN, LostLease
from etcdmirror.ha import HaSupervisor
from etcdmirror.halock import HaLock, HaSettings, Lease
from etcdmirror.metrics import Metrics

KEY = "/__replication/b.lock"
ME = "me:8080 pid 1 abcd"
OTHER = "other:8080 pid 2 ef01"
#: lease 3 s, refresh every 1 s, write timeout 1.5 s, standby poll every 1 s.
TTL6 = HaSettings(ttl=6)


class FakeLockClient:
    """The lock's destination client: one key, answered from memory.

    ``fail_next(exc, ...)``: the next requests fail with these errors;
    ``hold_next``: that many next requests stay unanswered until
    :meth:`answer_held`, which then does what they asked (a request late in transit).
    """

    def __init__(self, value=None):
        self.value, self.index = value, 10
        self.requests, self.failures, self.held = [], [], []
        self.hold_next = 0

    def take(self, value):
        """Another mirror (or nobody, None) now has the key."""
        self.index, self.value = self.index + 1, value

    def fail_next(self, *errors):
        self.failures.extend(errors)

    def answer_held(self):
        d, operation = self.held.pop(0)
        defer.maybeDeferred(operation).chainDeferred(d)

    def _request(self, method, kwargs, operation):
        self.requests.append((method, kwargs))
        if self.failures:
            return defer.fail(self.failures.pop(0))
        if self.hold_next:
            self.hold_next -= 1
            self.held.append((defer.Deferred(), operation))
            return self.held[-1][0]
        return defer.maybeDeferred(operation)

    def _answer(self, action):
        node = {"key": KEY, "value": self.value, "modifiedIndex": self.index}
        return Answer.from_payload({"action": action, "node": node}, self.index)

    def get_or_none(self, key):
        def operation():
            return None if self.value is None else self._answer("get").result
        return self._request("get", {"key": key}, operation)

    def put(self, key, value=None, *, ttl=None, prev_exist=None, prev_value=None,
            refresh=False):
        def operation():
            if prev_exist is False and self.value is not None:
                raise etcd.EtcdAlreadyExist("Key already exists", {})
            self._compare(prev_value)
            self.index += 1
            if not refresh:
                self.value = value
            return self._answer("update" if refresh else "create")
        return self._request("put", dict(key=key, value=value, ttl=ttl, prev_exist=prev_exist,
                                         prev_value=prev_value, refresh=refresh), operation)

    def delete(self, key, prev_value=None):
        def operation():
            self._compare(prev_value)
            self.index += 1
            answer, self.value = self._answer("compareAndDelete"), None
            return answer
        return self._request("delete", {"key": key, "prev_value": prev_value}, operation)

    def _compare(self, prev_value):
        if prev_value is not None and self.value != prev_value:
            raise (etcd.EtcdKeyNotFound if self.value is None else etcd.EtcdCompareFailed)()


def make_lock(clock, client, now=None):
    lost = []
    lease = Lease(KEY, TTL6, now=now or clock.seconds)
    return HaLock(client, KEY, ME, lease, clock, TTL6, on_lost=lost.append), lost


def acquired(clock):
    client, results = FakeLockClient(), []
    lock, lost = make_lock(clock, client)
    lock.try_acquire().addCallback(results.append)
    assert results == [True]
    return lock, lost, client


def active_calls(clock):
    return [c for c in clock.getDelayedCalls() if c.active()]


def refreshes(client):
    return [kw for method, kw in client.requests if method == "put" and kw["refresh"]]


def gets(client):
    return sum(method == "get" for method, _ in client.requests)


# -- settings and lease ---------------------------------------------------------


def test_settings_are_derived_from_the_ttl():
    """Every timing of the lock follows from --ha-ttl: check the formulas at two TTLs."""
    ten, four = HaSettings(ttl=10), HaSettings(ttl=4)
    assert (ten.lease, ten.refresh_interval, ten.write_timeout, ten.poll_interval) == \
        pytest.approx((5.0, 10 / 6, 2.5, 1.0))
    assert (four.lease, four.refresh_interval, four.write_timeout, four.poll_interval) == \
        pytest.approx((2.0, 4 / 6, 1.0, 1.0))
    assert HaSettings(ttl=2).poll_interval == pytest.approx(0.5)


def test_a_late_answer_is_reported_only_after_the_safe_window(caplog):
    """No other mirror can hold the lock before the lease's end plus ttl - lease:
    an answer within that is fine, one after it may have landed after a new holder's."""
    clock = Clock()
    lease = Lease(KEY, TTL6, now=clock.seconds)
    lease.renewed(0.0)                       # valid until 3; the window ends at 6
    valid_until = lease.check("PUT '/b/x'")
    assert valid_until == 3.0
    clock.advance(6)
    with caplog.at_level(logging.WARNING, logger="etcdmirror.halock"):
        assert lease.answered("answer", "PUT '/b/x'", valid_until) == "answer"
        assert not [r for r in caplog.records if r.levelno == logging.CRITICAL]
        clock.advance(0.1)
        assert lease.answered("answer", "PUT '/b/x'", valid_until) == "answer"
    critical = [r for r in caplog.records if r.levelno == logging.CRITICAL]
    assert len(critical) == 1 and "PUT '/b/x'" in critical[0].getMessage()


# -- taking and keeping the lock ------------------------------------------------


def test_a_free_lock_is_taken_and_its_lease_starts():
    """A free lock is created with prevExist=false and the TTL; its index is our epoch."""
    clock = Clock()
    clock.advance(100)
    lock, _, client = acquired(clock)
    assert lock.holding and lock.epoch == 11 and lock.seen_holder is None
    assert client.requests[-1] == ("put", dict(key=KEY, value=ME, ttl=6, prev_exist=False,
                                               prev_value=None, refresh=False))
    assert lock.lease.held and lock.lease.check("PUT '/b/x'") == 103.0


def test_a_lock_held_by_another_is_only_read():
    """A standby polls every second: a held lock must cost a read, never a failing write."""
    clock = Clock()
    client = FakeLockClient(OTHER)
    lock, _ = make_lock(clock, client)
    results = []
    lock.try_acquire().addCallback(results.append)
    assert results == [False] and not lock.holding and lock.epoch is None
    assert lock.seen_holder == OTHER
    assert [method for method, _ in client.requests] == ["get"]
    with pytest.raises(LostLease):
        lock.lease.check("PUT '/b/x'")


def test_refreshes_every_interval_and_the_lease_runs_from_the_send_time():
    """The server's TTL runs from when it got the refresh, our lease from when we sent
    it: a slow answer must not stretch the lease past sent + lease."""
    clock = Clock()
    lock, lost, client = acquired(clock)
    client.hold_next = 1
    clock.advance(1)                         # the first refresh goes out at 1 ...
    assert refreshes(client) == [dict(key=KEY, value=None, ttl=6, prev_exist=None,
                                      prev_value=ME, refresh=True)]
    clock.advance(1.5)                       # ... and is answered at 2.5
    assert lock.lease.valid_until == 3.0
    client.answer_held()
    assert lock.lease.valid_until == 4.0     # 1 + 3, not 2.5 + 3
    clock.advance(0.99)
    assert len(refreshes(client)) == 1       # the next one an interval after the answer
    clock.advance(0.01)
    assert len(refreshes(client)) == 2 and lock.lease.valid_until == pytest.approx(6.5)
    for _ in range(5):                       # answered at once: one a second
        clock.advance(1)
    assert len(refreshes(client)) == 7 and lock.lease.valid_until == pytest.approx(11.5)
    assert lock.holding and not lost


def test_transient_refresh_failures_are_retried_until_the_lease_runs_out():
    """Two refreshes may fail within a lease; when none succeeded by its end the lock
    is given up once, and the fence refuses every write from then on."""
    clock = Clock()
    lock, lost, client = acquired(clock)
    client.fail_next(*[EtcdUnavailable("PUT: connection refused")] * 10)
    for _ in range(2):
        clock.advance(1)
    assert len(refreshes(client)) == 2 and lock.holding and lock.lease.held and not lost
    clock.advance(0.99)
    assert not lost
    clock.advance(0.01)                      # 3 s after the last successful send
    assert len(lost) == 1 and "lease" in lost[0]
    assert not lock.holding and len(refreshes(client)) == 2
    with pytest.raises(LostLease):
        lock.lease.check("PUT '/b/x'")
    clock.advance(10)
    assert len(lost) == 1 and len(refreshes(client)) == 2 and not active_calls(clock)


def test_a_refresh_refused_because_another_holds_the_lock_loses_it_at_once():
    """prevValue failed: someone else's lock, so stop writing now, not at the lease's end."""
    clock = Clock()
    lock, lost, client = acquired(clock)
    client.take(OTHER)
    clock.advance(1)
    assert len(lost) == 1 and KEY in lost[0]
    assert not lock.holding and lock.lease.valid_until is None and lock.epoch is None
    assert not active_calls(clock)


def test_a_refresh_answered_after_the_lock_was_lost_does_not_revive_it():
    """A refresh that succeeds too late changes nothing: the mirror already stepped down."""
    clock = Clock()
    lock, lost, client = acquired(clock)
    client.hold_next = 1
    clock.advance(1)
    clock.advance(2)                         # the lease ran out with the refresh in hand
    assert len(lost) == 1 and not lock.holding
    client.answer_held()                     # etcd accepted it after all
    assert not lock.holding and lock.lease.valid_until is None and len(lost) == 1
    assert not active_calls(clock)


def test_release_gives_the_lock_back_only_when_held():
    """A clean stop hands over at once (compare-and-delete on our value); a mirror
    that does not hold the lock must not touch someone else's."""
    clock = Clock()
    lock, lost, client = acquired(clock)
    results = []
    lock.release().addCallback(results.append)
    assert results == [None] and client.requests[-1] == (
        "delete", {"key": KEY, "prev_value": ME})
    assert not lock.holding and client.value is None and not lock.lease.held
    assert not active_calls(clock) and not lost
    sent = len(client.requests)
    lock.release().addCallback(results.append)
    assert results == [None, None] and len(client.requests) == sent


def test_the_lease_end_is_noticed_after_a_wall_clock_step():
    """The reactor's clock is not the lease's: a deadline that fires early must look again."""
    reactor, monotonic = Clock(), Clock()
    client = FakeLockClient()
    lock, lost = make_lock(reactor, client, now=monotonic.seconds)
    lock.try_acquire()
    client.fail_next(*[EtcdUnavailable("PUT: no route to host")] * 100)
    reactor.advance(5)                       # NTP steps the wall clock 5 s forward
    for _ in range(5):
        reactor.advance(1)
        monotonic.advance(1)
    assert not lock.lease.held and not lock.holding  # monotonic 5, the lease ended at 3
    assert len(lost) == 1


def test_a_lock_holding_our_own_value_is_adopted_with_a_refresh():
    """Our create landed but its answer was lost: the next look finds our own value.
    It is ours: a compare-and-swap refresh takes it with a fresh lease (not "held by
    <ourselves>" until the TTL runs out)."""
    clock, client = Clock(), FakeLockClient(ME)
    lock, lost = make_lock(clock, client)
    results = []
    lock.try_acquire().addCallback(results.append)
    assert results == [True] and lock.holding and lock.lease.held and not lost
    assert refreshes(client)[-1]["prev_value"] == ME and lock.seen_holder is None


# -- the fence on the destination client ---------------------------------------


def test_the_client_fence_refuses_writes_without_the_lease_and_lets_reads_through(
        monkeypatch):
    """A write without the lease must fail before anything is sent; reads are not
    fenced (a standby, and a mirror that stepped down, may still read)."""
    clock = Clock()
    lease = Lease(KEY, TTL6, now=clock.seconds)
    client = EtcdClient(parse_cluster("http://127.0.0.1:1"), Clock(), fence=lease)
    calls = []

    def request(method, key, params, form=None, timeout=None, ordered=False):
        calls.append((method, key, timeout))
        return f"{method} {key!r}", defer.Deferred()

    monkeypatch.setattr(client.transport, "request", request)
    failures = []
    client.put("/k", "v").addErrback(failures.append)
    client.delete("/k").addErrback(failures.append)
    assert [f.check(LostLease) for f in failures] == [LostLease, LostLease] and calls == []
    client.get("/k")
    assert calls == [("GET", "/k", None)]
    lease.renewed(clock.seconds())           # held: sent, with the write timeout
    client.put("/k", "v")
    assert calls[-1] == ("PUT", "/k", TTL6.write_timeout)


# -- the supervisor --------------------------------------------------------------


class FakeController:
    """run() fires when the test says; records stop and step_down."""

    def __init__(self):
        self.options = SimpleNamespace(reload=True)
        self.runs, self.stops, self.step_downs = [], 0, []

    def run(self):
        self.runs.append(defer.Deferred())
        return self.runs[-1]

    def stop(self):
        self.stops += 1

    def step_down(self, reason):
        self.step_downs.append(reason)


def start(holder=OTHER, *errors):
    """A supervisor running on a fake clock; the lock's first requests fail with ``errors``."""
    clock, client = Clock(), FakeLockClient(holder)
    client.fail_next(*errors)
    lock, _ = make_lock(clock, client)
    status = st.MirrorStatus("http://s:1", "http://d:1", "/a", "/b", "/__replication/b",
                             clock=clock.seconds)
    registry = CollectorRegistry()
    metrics = Metrics(registry, status, url="http://d:1", prefix="/b")
    controller, roles, results = FakeController(), [], []
    sup = HaSupervisor(lock, controller, status, metrics, clock, on_role=roles.append)
    sup.run().addBoth(results.append)
    return SimpleNamespace(clock=clock, client=client, lock=lock, status=status, sup=sup,
                           controller=controller, roles=roles, results=results,
                           count=lambda name: registry.get_sample_value(
                               f"etcdmirror_ha_{name}_total"))


def test_a_standby_polls_the_lock_and_is_healthy_once_it_can_read_it():
    """Standby: role and state say so, it looks every poll interval, and it is healthy
    (ready to take over) once a look at the lock worked."""
    h = start(OTHER, EtcdUnavailable("GET: connection refused"))
    assert h.status.role is st.Role.STANDBY and h.status.state is st.State.STANDBY
    assert h.roles == [st.Role.STANDBY] and not h.status.healthy
    assert "connection refused" in h.status.last_error
    h.clock.advance(0.99)
    assert gets(h.client) == 1
    h.clock.advance(0.01)
    assert gets(h.client) == 2 and h.status.healthy and h.lock.seen_holder == OTHER
    for _ in range(3):
        h.clock.advance(1)
    assert gets(h.client) == 5 and h.status.loop_heartbeat == 4.0
    assert h.controller.runs == [] and h.results == [] and h.count("takeovers") == 0
    assert h.status.as_dict()["ha"]["seen_holder"] == OTHER


def test_a_standby_takes_over_when_the_lock_frees_and_steps_back_after_the_controller():
    """Lock free: active, one controller run, counted.  The controller stepped down:
    --reload is not repeated, the lock is given back and competed for again."""
    h = start()
    h.client.take(None)
    h.clock.advance(1)
    assert h.status.role is st.Role.ACTIVE and h.roles == [st.Role.STANDBY, st.Role.ACTIVE]
    assert len(h.controller.runs) == 1 and h.count("takeovers") == 1 and h.lock.holding
    for _ in range(2):                       # refreshed while active
        h.clock.advance(1)
    assert len(refreshes(h.client)) == 2 and h.lock.lease.held
    h.client.hold_next = 1                   # the give-back
    h.controller.runs[0].callback(STEPPED_DOWN)
    assert h.controller.options.reload is False and h.count("stepdowns") == 1
    assert h.client.requests[-1] == ("delete", {"key": KEY, "prev_value": ME})
    assert not h.lock.holding
    h.client.answer_held()
    assert h.status.role is st.Role.STANDBY and h.roles[-1] is st.Role.STANDBY
    sent = len(h.client.requests)
    h.client.take(OTHER)                     # another standby was quicker ...
    for _ in range(5):
        h.clock.advance(1)
    assert len(h.client.requests) == sent    # ... it had a TTL to take over first
    h.clock.advance(1)
    assert h.status.state is st.State.STANDBY and h.lock.seen_holder == OTHER
    assert len(h.controller.runs) == 1 and h.results == []


def test_a_lost_lock_makes_the_controller_step_down():
    """The refresh found another holder: the controller is told at once, with why."""
    h = start(holder=None)
    assert h.status.role is st.Role.ACTIVE and len(h.controller.runs) == 1
    h.client.take(OTHER)
    h.clock.advance(1)
    assert len(h.controller.step_downs) == 1 and KEY in h.controller.step_downs[0]
    sent = len(h.client.requests)
    h.controller.runs[0].callback(STEPPED_DOWN)
    for _ in range(6):                       # a TTL before it competes again
        h.clock.advance(1)
    assert h.client.requests[sent][0] == "get"   # no delete: the lock is not ours
    assert h.status.role is st.Role.STANDBY and h.count("stepdowns") == 1
    assert h.results == []


def test_stop_while_standby_ends_at_once():
    """SIGTERM in standby: the poll wait is interrupted, nothing is left scheduled."""
    h = start()
    h.clock.advance(0.5)
    h.sup.stop()
    assert h.results == [EXIT_OK] and h.controller.runs == [] and h.controller.stops == 0
    assert not active_calls(h.clock)


def test_stop_while_active_stops_the_controller_then_gives_the_lock_back():
    """SIGTERM while active: the controller finishes first, then the lock is released
    so that a planned restart hands over at once, not after a TTL."""
    h = start(holder=None)
    h.sup.stop()
    assert h.controller.stops == 1 and h.results == [] and h.lock.holding
    h.controller.runs[0].callback(0)
    assert h.client.requests[-1] == ("delete", {"key": KEY, "prev_value": ME})
    assert h.results == [0] and not h.lock.holding and h.client.value is None
    assert not active_calls(h.clock) and h.count("stepdowns") == 0


def test_stop_during_a_poll_that_takes_the_lock_does_not_start_replicating():
    """A stop asked for must win over a takeover that was in flight."""
    h = start()
    h.client.hold_next = 1
    h.clock.advance(1)                       # the second look is in flight ...
    h.sup.stop()                             # ... when SIGTERM comes
    h.client.take(None)
    h.client.answer_held()                   # the lock was free: it is taken
    assert h.controller.runs == []
    assert h.results == [EXIT_OK] and not h.lock.holding
