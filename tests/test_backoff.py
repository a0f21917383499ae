"""Backoff and retry timing, driven by a fake clock (no real time passes)."""

from twisted.internet.task import Clock

from etcdmirror.backoff import Backoff


def test_delays_grow_exponentially_up_to_the_cap():
    b = Backoff(base=0.5, cap=4.0, rng=lambda: 1.0)
    assert [b.next_delay() for _ in range(6)] == [0.5, 1.0, 2.0, 4.0, 4.0, 4.0]


def test_jitter_never_goes_below_half_the_base():
    b = Backoff(base=0.5, cap=30.0, rng=lambda: 0.0)
    assert all(b.next_delay() == 0.25 for _ in range(5))


def test_reset_starts_over():
    b = Backoff(base=1.0, cap=30.0, rng=lambda: 1.0)
    b.next_delay(), b.next_delay()
    b.reset()
    assert b.next_delay() == 1.0


def test_wait_fires_after_the_delay_on_the_clock():
    clock = Clock()
    b = Backoff(base=2.0, cap=30.0, rng=lambda: 1.0)
    fired = []
    b.wait(clock).addCallback(fired.append)
    clock.advance(1.9)
    assert not fired
    clock.advance(0.2)
    assert fired == [None]
