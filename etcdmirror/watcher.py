"""Reads the source prefix's events in index order, without falling out of history.

etcd v2 keeps only the last 1000 events of the *whole cluster*.  A mirror of a
quiet prefix in a busy cluster used to wait on ``waitIndex = last + 1`` while
locks elsewhere made thousands of events; its next watch then asked for a
cleared index and it died.

Two facts keep us inside the window:

* etcd answers a watch's headers as soon as it registers it, and their
  ``X-Etcd-Index`` is the store index at that moment; a *pending* watch on
  ``waitIndex = w`` with ``X-Etcd-Index = N`` proves that no event under the
  prefix exists in ``[w, N]`` (:class:`~etcdmirror.client.WatchProgress`);
* re-registering at ``N + 1`` is safe as long as ``N + 1`` is still in the
  history.

So a pending watch is re-registered when it has been idle for
``idle_timeout`` seconds, and also as soon as a cheap probe of the source's
current index shows that the cluster moved ``probe_threshold`` events past
the watch's registration, long before 1000 events pass.
"""

import logging
from typing import Callable, Optional

from twisted.internet import defer, task
from twisted.internet.interfaces import IReactorTime

from etcdmirror.client import EtcdClient, PendingWatch, forward_to

log = logging.getLogger(__name__)


class WatchReader:
    """One recursive watch at a time on the source prefix."""

    def __init__(
        self,
        client: EtcdClient,
        prefix: str,
        clock: IReactorTime,
        idle_timeout: float = 5.0,
        probe_interval: float = 0.5,
        probe_threshold: int = 200,
    ) -> None:
        self.client = client
        self.prefix = prefix
        self.clock = clock
        self.idle_timeout = idle_timeout
        self.probe_interval = probe_interval
        self.probe_threshold = probe_threshold
        self.early_renewals = 0

    def read(self, wait_index: int,
             on_registered: Optional[Callable[[int], None]] = None) -> defer.Deferred:
        """The first event under the prefix with index ``>= wait_index``.

        Fires with :class:`~etcdmirror.client.Answer` for an event or
        :class:`~etcdmirror.client.WatchProgress` when the watch was renewed.
        ``on_registered(N)`` is called as soon as etcd registered the watch.
        Cancelling the returned Deferred closes the watch.
        """
        watch = self.client.watch(self.prefix, wait_index)
        timers = []

        def registered(etcd_index: Optional[int]) -> None:
            if etcd_index is None:
                return
            if on_registered is not None:
                on_registered(etcd_index)
            timers.append(self.clock.callLater(self.idle_timeout, watch.finish, self.clock))
            if self.probe_interval > 0:
                probe = task.LoopingCall(self._probe, watch)
                probe.clock = self.clock
                probe.start(self.probe_interval, now=False).addErrback(
                    lambda f: log.debug("index probe stopped: %s", f.getErrorMessage()))
                timers.append(probe)

        def cleanup(result):
            for timer in timers:
                if isinstance(timer, task.LoopingCall):
                    if timer.running:
                        timer.stop()
                elif timer.active():
                    timer.cancel()
            return result

        watch.registered.addCallback(registered)
        d = defer.Deferred(lambda _: watch.cancel())
        watch.result.addBoth(cleanup).addBoth(forward_to, d)
        return d

    @defer.inlineCallbacks
    def _probe(self, watch: PendingWatch):
        if watch.result.called or watch.etcd_index is None:
            return
        try:
            current = (yield self.client.probe()).etcd_index
        except Exception as e:  # a failed probe changes nothing; the watch decides
            log.debug("index probe failed: %s", e)
            return
        if current is not None and current - watch.etcd_index >= self.probe_threshold:
            log.debug("source moved from %d to %d: renewing the watch early",
                      watch.etcd_index, current)
            self.early_renewals += 1
            watch.finish(self.clock)
