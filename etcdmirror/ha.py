"""Active/standby (``--ha``): wait for the lock, replicate while it is ours.

The same mirror runs on several hosts.  Each is a *standby* until it holds
the HA lock (:class:`~etcdmirror.halock.HaLock`); then it is *active* and
its :class:`~etcdmirror.controller.ReplicationController` replicates, from
the index the previous holder left, exactly as after a restart.  When the
lock is lost (not refreshed in time, or taken), the controller steps down
without another write and the mirror is a standby again.

A stop (SIGTERM) gives the lock back, so that a planned restart hands over
at once instead of after a TTL.
"""

import logging
from typing import Any, Callable, Optional

from twisted.internet import defer, task
from twisted.internet.interfaces import IReactorTime

from etcdmirror import status as st
from etcdmirror.errors import EXIT_OK, STEPPED_DOWN
from etcdmirror.halock import HaLock

log = logging.getLogger(__name__)


class HaSupervisor:
    """Runs ``controller`` only while ``lock`` is ours."""

    def __init__(self, lock: HaLock, controller: Any, status: st.MirrorStatus, metrics: Any,
                 clock: IReactorTime,
                 on_role: Callable[[st.Role], None] = lambda role: None) -> None:
        """``on_role(role)``: called on every change of role (the side jobs follow it)."""
        self.lock = lock
        self.on_role = on_role
        self.controller = controller
        self.status = status
        self.metrics = metrics
        self.clock = clock
        lock.on_lost = self._lost
        status.ha_info = lock.describe
        self._running = True
        self._sleeping: Optional[defer.Deferred] = None
        self._told_holder: Optional[str] = None

    @defer.inlineCallbacks
    def run(self):
        """Standby, active, standby ... until stopped; fires with the exit status."""
        while self._running:
            acquired = yield self._standby()
            if not acquired:
                break
            self._set_role(st.Role.ACTIVE)
            self.metrics.ha_takeovers.inc()
            log.warning("took the HA lock %s (epoch %s); this mirror is now the active one",
                        self.lock.key, self.lock.epoch)
            code = yield self.controller.run()
            # An operator's --reload is done by the first holder only; later
            # holders continue from the index (or finish a reload cut short).
            self.controller.options.reload = False
            if code != STEPPED_DOWN:
                yield self.lock.release()
                return code
            self.metrics.ha_stepdowns.inc()
            self._become_standby()
            # Stepped down for what the controller found (the index key
            # written by another mirror), the lock may still be ours: give
            # it back, and let the others take it first: compete again
            # only after a TTL.
            yield self.lock.release()
            log.warning("stepped down to standby; another mirror may now take over")
            self._told_holder = None
            yield self._sleep(self.lock.settings.ttl)
        return EXIT_OK

    def stop(self) -> None:
        """Stop waiting, or stop replicating (then give the lock back)."""
        self._running = False
        if self._sleeping is not None:
            self._sleeping.cancel()
        if self.status.role is st.Role.ACTIVE:
            self.controller.stop()

    def _set_role(self, role: st.Role) -> None:
        if role is not self.status.role:
            self.status.role = role
            self.on_role(role)

    def _become_standby(self) -> None:
        self._set_role(st.Role.STANDBY)
        self.status.state = st.State.STANDBY
        # The replica's age is the active mirror's to tell; a standby's own
        # last view would only grow old (and page someone).
        self.status.fresh_as_of = None
        self.status.heartbeat_time = None

    def _lost(self, reason: str) -> None:
        log.warning("lost the HA lock: %s", reason)
        self.controller.step_down(reason)

    @defer.inlineCallbacks
    def _standby(self):
        """Look at the lock every poll interval; fires with True once it is ours."""
        self._become_standby()
        while self._running:
            try:
                acquired = yield self.lock.try_acquire()
            except Exception as e:  # the destination is away: keep looking
                self.status.error(f"standby: could not read the HA lock {self.lock.key}: {e}")
                log.warning("standby: could not read the HA lock %s: %s", self.lock.key, e)
                # Unhealthy: this standby could not take over now.
                self.status.checks_passed = False
                acquired = False
            else:
                # Looking at the lock works: ready to take over (systemd READY).
                self.status.checks_passed = True
            self.status.loop_heartbeat = self.clock.seconds()
            if acquired and not self._running:
                yield self.lock.release()  # stopped while that look took it
                return False
            if acquired:
                return True
            holder = self.lock.seen_holder
            if holder is not None and holder != self._told_holder:
                log.info("standby: the HA lock %s is held by %s", self.lock.key, holder)
                self._told_holder = holder
            yield self._sleep(self.lock.settings.poll_interval)
        return False

    @defer.inlineCallbacks
    def _sleep(self, seconds: float):
        """Wait, unless stopped meanwhile (:meth:`stop` cuts it short)."""
        if not self._running:
            return
        self._sleeping = task.deferLater(self.clock, seconds, lambda: None)
        try:
            yield self._sleeping
        except defer.CancelledError:
            pass
        finally:
            self._sleeping = None
