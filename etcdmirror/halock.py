"""The HA lock and the lease that fences a mirror that lost it (``--ha``).

Several hosts run the same mirror; the one holding the lock key
``<index key>.lock`` on the destination replicates.  The lock is created
with ``prevExist=false`` and a TTL, and refreshed with ``refresh=true`` and
``prevValue`` (this holder's own random token), so a refresh can never
revive a lock another mirror took meanwhile.  Its ``modifiedIndex`` when
created is the holder's *epoch* (etcd's index only grows, so a later holder
always has a higher one).

The server's TTL says when the others may take over; the *lease* says until
when this mirror may still write, by its own monotonic clock.  The lease is
measured from the moment a refresh was *sent*, and lasts half the TTL; the
server's TTL runs from the moment it *received* that refresh.  So the lease
ends at least half a TTL before any other mirror can hold the lock, and
every write the destination client sends checks the lease first
(:meth:`Lease.check`), right before the request goes out.  A write is also
given at most a quarter of the TTL to be answered (:attr:`HaSettings.write_timeout`):
after that its connection is aborted, so a write sent under the lease
cannot arrive after the lease plus that quarter.  The window that remains is
in the README ("Active/standby").
"""

import logging
import os
import secrets
import socket
import time
from dataclasses import dataclass
from typing import Any, Callable, Optional

import etcd
from twisted.internet import defer
from twisted.internet.interfaces import IDelayedCall, IReactorTime

from etcdmirror.client import EtcdClient
from etcdmirror.errors import LostLease

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class HaSettings:
    """How the lock is held, all derived from its TTL (``--ha-ttl``)."""

    ttl: int = 10

    @property
    def lease(self) -> float:
        """How long after sending a refresh the holder may write."""
        return self.ttl / 2

    @property
    def refresh_interval(self) -> float:
        """Three refreshes per lease: two may fail before the lease runs out."""
        return self.ttl / 6

    @property
    def write_timeout(self) -> float:
        """A destination write not answered by then is aborted (and retried)."""
        return self.ttl / 4

    @property
    def poll_interval(self) -> float:
        """How often a standby looks at the lock."""
        return min(1.0, self.ttl / 4)


def holder_name(port: int) -> str:
    """This process's value in the lock: who holds it, for the others' logs.

    The random part makes every process's value different, so a refresh
    (``prevValue``) can only succeed for the process that created the lock.
    """
    return f"{socket.gethostname()}:{port} pid {os.getpid()} {secrets.token_hex(4)}"


class Lease:
    """Until when this mirror may write the destination, by its own clock.

    The destination client calls :meth:`check` before each write and
    :meth:`answered` after it (:class:`~etcdmirror.client.EtcdClient`'s
    ``fence``).
    """

    def __init__(self, key: str, settings: HaSettings,
                 now: Callable[[], float] = time.monotonic) -> None:
        self.key = key
        self.settings = settings
        self.now = now
        self.valid_until: Optional[float] = None

    @property
    def write_timeout(self) -> float:
        return self.settings.write_timeout

    @property
    def held(self) -> bool:
        return self.valid_until is not None and self.now() < self.valid_until

    def renewed(self, sent_at: float) -> None:
        """The lock was created or refreshed by a request sent at ``sent_at``."""
        self.valid_until = sent_at + self.settings.lease

    def drop(self) -> None:
        self.valid_until = None

    def check(self, what: str) -> float:
        """Raise :class:`LostLease` unless this mirror may write now; else the
        lease's end, for :meth:`answered`."""
        if not self.held:
            raise LostLease(f"{what} not sent: this mirror does not hold the HA lock "
                            f"{self.key} (its lease ran out or was given up)")
        return self.valid_until

    def answered(self, result: Any, what: str, valid_until: float) -> Any:
        """After a write's answer: say so loudly if it may have landed too late.

        No other mirror can hold the lock before ``valid_until`` plus half a
        TTL (see the module docstring); an answer after that (the process was
        frozen with the request in hand) may come from a write that landed
        after the new holder's.
        """
        if self.now() > valid_until + self.settings.ttl - self.settings.lease:
            log.critical("%s was answered %.1f s after this mirror's lease ran out: if "
                         "another mirror took over meanwhile, this write may have landed "
                         "after its writes. Run etcd-mirror-verify once the active mirror "
                         "is caught up.", what, self.now() - valid_until)
        return result


class HaLock:
    """Takes, refreshes and gives back the lock; calls ``on_lost`` when it is gone."""

    def __init__(self, client: EtcdClient, key: str, holder: str, lease: Lease,
                 clock: IReactorTime, settings: HaSettings,
                 on_lost: Callable[[str], None] = lambda reason: None) -> None:
        """``client``: a destination client of its own, without a fence (the lock's
        requests must not wait behind event writes, nor be refused by the lease)."""
        self.client = client
        self.key = key
        self.holder = holder
        self.lease = lease
        self.clock = clock
        self.settings = settings
        self.on_lost = on_lost
        #: The lock's createdIndex while we hold it.
        self.epoch: Optional[int] = None
        #: Who held the lock when we last looked (None: nobody, or us).
        self.seen_holder: Optional[str] = None
        self._holding = False
        self._refresh_timer: Optional[IDelayedCall] = None
        self._deadline_timer: Optional[IDelayedCall] = None

    @property
    def holding(self) -> bool:
        return self._holding

    @defer.inlineCallbacks
    def try_acquire(self):
        """One look at the lock; fires with True when it is ours now.

        A plain read first: a standby looking every second must not cost
        the destination a (failing) write each time.
        """
        node = yield self.client.get_or_none(self.key)
        if node is not None and node.value == self.holder and not self._holding:
            # Ours already: a create whose answer was lost.  A refresh (by
            # compare-and-swap on our value) makes it ours with a fresh lease.
            adopted = yield self._adopt(node.createdIndex)
            return adopted
        if node is not None:
            self.seen_holder = node.value
            return False
        sent = self.lease.now()
        try:
            answer = yield self.client.put(self.key, self.holder, ttl=self.settings.ttl,
                                           prev_exist=False)
        except etcd.EtcdAlreadyExist:
            return False
        self.seen_holder = None
        self.epoch = answer.event.modifiedIndex
        self._holding = True
        self._renewed(sent)
        self._refresh_later()
        return True

    @defer.inlineCallbacks
    def _adopt(self, epoch: int):
        sent = self.lease.now()
        try:
            yield self.client.put(self.key, ttl=self.settings.ttl, refresh=True,
                                           prev_value=self.holder)
        except (etcd.EtcdCompareFailed, etcd.EtcdKeyNotFound):
            return False
        self.seen_holder = None
        self.epoch = epoch
        self._holding = True
        self._renewed(sent)
        self._refresh_later()
        return True

    def release(self) -> defer.Deferred:
        """Give the lock back at once (a clean stop); fires with None, never fails."""
        was_holding = self._holding
        self._let_go()
        if not was_holding:
            return defer.succeed(None)
        d = self.client.delete(self.key, prev_value=self.holder)
        d.addCallbacks(lambda _: log.info("gave back the HA lock %s", self.key),
                       lambda f: log.info("could not give back the HA lock %s (it expires "
                                          "by itself): %s", self.key, f.getErrorMessage()))
        return d

    def describe(self) -> dict:
        return {"lock_key": self.key, "holder": self.holder, "epoch": self.epoch,
                "seen_holder": self.seen_holder, "ttl": self.settings.ttl}

    # -- holding -------------------------------------------------------------

    def _renewed(self, sent_at: float) -> None:
        self.lease.renewed(sent_at)
        self._cancel(self._deadline_timer)
        remaining = max(0.0, self.lease.valid_until - self.lease.now())
        self._deadline_timer = self.clock.callLater(remaining, self._check_deadline)

    def _refresh_later(self) -> None:
        self._refresh_timer = self.clock.callLater(self.settings.refresh_interval,
                                                   self._refresh)

    def _check_deadline(self) -> None:
        if not self._holding:
            return
        if self.lease.held:
            # The timer runs on the reactor's (wall) clock, the lease on the
            # monotonic one: after a wall-clock step, look again when due.
            remaining = max(0.0, self.lease.valid_until - self.lease.now())
            self._deadline_timer = self.clock.callLater(remaining, self._check_deadline)
            return
        self._lost(f"could not refresh the HA lock {self.key} before the lease ran out "
                   f"({self.settings.lease:g} s after the last refresh was sent)")

    @defer.inlineCallbacks
    def _refresh(self):
        if not self._holding:
            return
        sent = self.lease.now()
        try:
            yield self.client.put(self.key, ttl=self.settings.ttl, refresh=True,
                                  prev_value=self.holder)
        except (etcd.EtcdCompareFailed, etcd.EtcdKeyNotFound) as e:
            if self._holding:
                self._lost(f"the HA lock {self.key} is no longer ours ({e}): another "
                           "mirror holds it, or it expired")
            return
        except Exception as e:  # a transient fault: the lease says how long we may try
            if self._holding:
                log.warning("could not refresh the HA lock %s: %s", self.key, e)
                self._refresh_later()
            return
        if self._holding:
            self._renewed(sent)
            if self.lease.held:
                self._refresh_later()
            else:
                self._check_deadline()

    def _lost(self, reason: str) -> None:
        self._let_go()
        self.on_lost(reason)

    def _let_go(self) -> None:
        self._holding = False
        self.lease.drop()
        self.epoch = None
        self._cancel(self._refresh_timer)
        self._cancel(self._deadline_timer)

    @staticmethod
    def _cancel(timer: Optional[IDelayedCall]) -> None:
        if timer is not None and timer.active():
            timer.cancel()
