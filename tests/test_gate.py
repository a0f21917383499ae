"""The WriteGate: first come, first served, a free gate costs no Deferred."""

from twisted.internet import defer

from etcdmirror.gate import WriteGate


def test_waiters_are_served_in_order_and_a_cancelled_one_leaves_the_queue():
    gate = WriteGate()
    assert gate.acquire() is None and gate.held
    order = []
    first, second, third = gate.acquire(), gate.acquire(), gate.acquire()
    for name, d in (("first", first), ("second", second), ("third", third)):
        d.addCallback(lambda _, name=name: order.append(name))
    second.addErrback(lambda f: f.trap(defer.CancelledError))
    second.cancel()
    gate.release()
    assert order == ["first"] and gate.held
    gate.release()
    assert order == ["first", "third"] and gate.held
    gate.release()
    assert not gate.held


def test_run_holds_the_gate_for_the_operation_and_releases_on_failure():
    gate = WriteGate()
    pending = defer.Deferred()
    done = gate.run(lambda: pending)
    assert gate.held
    failures = []
    done.addErrback(failures.append)
    pending.errback(RuntimeError("boom"))
    assert failures and not gate.held
