"""Capped exponential backoff with full jitter, driven by an injected clock.

Retrying at a fixed interval makes every mirror of a site hammer a recovering
etcd in lock-step; jitter spreads them out, the cap keeps the mirror prompt
once the fault is gone.
"""

import random
from typing import Callable, Optional

from twisted.internet import defer, task
from twisted.internet.interfaces import IReactorTime


class Backoff:
    """Delays for successive retries: ``uniform(0, min(cap, base * 2**n))``.

    The first delay is never below ``base / 2`` so that a tight failure loop is
    impossible even with unlucky jitter.
    """

    def __init__(
        self,
        base: float = 0.5,
        cap: float = 30.0,
        rng: Optional[Callable[[], float]] = None,
    ) -> None:
        self.base = base
        self.cap = cap
        self.rng = rng if rng is not None else random.random
        self.attempts = 0

    def next_delay(self) -> float:
        ceiling = min(self.cap, self.base * (2 ** self.attempts))
        self.attempts += 1
        return max(self.base / 2, ceiling * self.rng())

    def reset(self) -> None:
        self.attempts = 0

    def wait(self, clock: IReactorTime) -> defer.Deferred:
        """A Deferred that fires after the next delay on ``clock``."""
        return task.deferLater(clock, self.next_delay(), lambda: None)
