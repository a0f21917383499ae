"""Run something every few seconds on an injected clock.

Heartbeats, freshness checks, the periodic verify, systemd's watchdog and the
watch window's index probe all repeat on the reactor; tests drive them with
``twisted.internet.task.Clock``.
"""

from typing import Any, Callable, Optional

from twisted.internet import task
from twisted.internet.interfaces import IReactorTime


class Periodic:
    """A :class:`~twisted.internet.task.LoopingCall` that is safe to start and stop twice."""

    def __init__(self, clock: IReactorTime, function: Callable[[], Any]) -> None:
        self.clock = clock
        self.function = function
        self._loop: Optional[task.LoopingCall] = None

    @property
    def running(self) -> bool:
        return self._loop is not None and self._loop.running

    def start(self, interval: float, now: bool = True) -> None:
        """Call ``function`` every ``interval`` seconds (at once too, with ``now``).

        A call that fails or returns a failing Deferred stops the loop, so
        ``function`` handles its own errors.
        """
        if self.running:
            return
        self._loop = task.LoopingCall(self.function)
        self._loop.clock = self.clock
        self._loop.start(interval, now=now)

    def stop(self) -> None:
        if self.running:
            self._loop.stop()
        self._loop = None
