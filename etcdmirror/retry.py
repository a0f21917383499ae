"""Retry a request that failed for a transient reason, resuming at the same request.

Transient faults (connection refused or reset, timeouts, 5xx, leader
elections, an etcd restart on either side: for etcd v2,
:func:`~etcdmirror.answers.is_transient`, passed in by the daemon) are
retried with capped, jittered backoff, for as long as they last; anything
else propagates at once.  While retrying, the mirror's state is ``retrying``
and ``/status`` shows the last error; each retry is counted by side.  One
retrier serves the replication loop and every request of a resync, so a
transient error costs one request again, never a whole resync.
"""

import logging
from typing import Any, Callable, Union

from twisted.internet import defer
from twisted.internet.interfaces import IReactorTime

from etcdmirror import status as st
from etcdmirror.backoff import Backoff
from etcdmirror.metrics import Metrics

log = logging.getLogger(__name__)

#: Names the operation in logs; a callable is only called on an error, so the
#: hot path formats no message it does not need.
What = Union[str, Callable[[], str]]


class Retrier:
    """``retrier(what, side, operation)``: fires with ``operation()``'s result.

    ``check_running`` raises once a stop was asked for; ``interruptibly``
    wraps every wait (the request, the backoff sleep) so a stop can cancel it.
    Every attempt and every retry moves ``status.loop_heartbeat``: the
    replication loop is alive (systemd's watchdog).
    """

    def __init__(self, clock: IReactorTime, status: st.MirrorStatus, metrics: Metrics,
                 backoff_factory: Callable[[], Backoff], check_running: Callable[[], None],
                 interruptibly: Callable[[defer.Deferred], defer.Deferred],
                 transient: Callable[[Any], bool]) -> None:
        self.clock = clock
        self.transient = transient
        self.status = status
        self.metrics = metrics
        self.backoff_factory = backoff_factory
        self.check_running = check_running
        self.interruptibly = interruptibly

    @defer.inlineCallbacks
    def __call__(self, what: What, side: str, operation: Callable[[], defer.Deferred]):
        backoff = self.backoff_factory()
        previous_state = None
        status = self.status
        while True:
            self.check_running()
            status.loop_heartbeat = self.clock.seconds()
            try:
                result = yield self.interruptibly(operation())
            except Exception as e:
                status.loop_heartbeat = self.clock.seconds()
                if not self.transient(e):
                    raise
                self.check_running()
                delay = backoff.next_delay()
                self.metrics.retries.labels(side=side).inc()
                self.metrics.errors.labels(kind=type(e).__name__).inc()
                status.error(str(e))
                if previous_state is None:
                    previous_state = status.state
                status.state = st.State.RETRYING
                if callable(what):
                    what = what()
                log.warning("%s failed: %s; retrying in %.1fs", what, e, delay)
                try:
                    yield self.interruptibly(sleep(self.clock, delay))
                except defer.CancelledError:
                    self.check_running()
                continue
            status.loop_heartbeat = self.clock.seconds()
            if previous_state is not None:
                log.info("%s: recovered after %d retries",
                         what() if callable(what) else what, backoff.attempts)
                if status.state is st.State.RETRYING:
                    status.state = previous_state
            return result


def sleep(clock: IReactorTime, seconds: float) -> defer.Deferred:
    """A Deferred that fires after ``seconds``; cancelling it cancels the timer."""
    d: defer.Deferred = defer.Deferred(lambda d: call.cancel())
    call = clock.callLater(seconds, d.callback, None)
    return d



