"""Leases on an etcd v3 replica: a leased key never expires early there.

What gives a source key a limited life (a *lifetime*):

* a v3 lease: keys that share it on the source share one destination lease;
* a v2 TTL: each TTL'd v2 key gets a destination lease of its own (v2 TTLs
  are per key).

Each destination lease is granted with the source's remaining TTL plus
:data:`~etcdmirror.applier.TTL_GRACE`, and kept alive while the source's
lifetime lives.  That takes a keeper: keep-alives on a v3 source, and v2
``refresh=true`` writes, produce no event.  So every third of a lease's TTL
the keeper asks the source (a v3 lease's remaining TTL; a v2 key's TTL) and
renews the destination lease while the source's lives.  Once it ended, the
destination lease is left to run out by itself: the source's deletes (a v3
lease's expiry, a v2 ``expire``) reach the replica as events, and the lease
can run out only after the source's did, never before.

A restart finds the pairs again from the keys of both sides
(:meth:`LeaseKeeper.load`): a destination key's lease belongs to its source
key's lifetime.  The destination leases are etcd's to number: a lease ID is
never assumed to mean the same on both clusters.
"""

import logging
from typing import Any, Callable, Dict, Hashable, Optional

import etcd
from twisted.internet import defer
from twisted.internet.interfaces import IDelayedCall, IReactorTime

from etcdmirror.applier import TTL_GRACE
from etcdmirror.keys import KeyMapper
from etcdmirror.v3client import V3Client
from etcdmirror.v3mapping import raw, text
from etcdmirror.v3wire import keys_below

log = logging.getLogger(__name__)

class V3Lifetimes:
    """A v3 source: a lifetime is a lease ID."""

    def __init__(self, source: V3Client) -> None:
        self.source = source

    def remaining(self, lease: Hashable) -> defer.Deferred:
        """Fires with the lease's remaining TTL; <= 0 once it ended."""
        return self.source.lease_time_to_live(lease).addCallback(lambda found: found[0])

    @defer.inlineCallbacks
    def leased(self, prefix: str):
        """Fires with ``{key: (lease, create_revision)}`` for the leased keys under ``prefix``."""
        found = yield self.source.range(*keys_below(raw(prefix)), keys_only=True)
        return {text(kv.key): (kv.lease, kv.create_revision) for kv in found.kvs if kv.lease}


class V2Lifetimes:
    """A v2 source (an ``EtcdClient``): a lifetime is a TTL'd key."""

    def __init__(self, source: Any) -> None:
        self.source = source

    def remaining(self, key: Hashable) -> defer.Deferred:
        """Fires with the key's TTL; 0 once it is gone or has no TTL."""
        return self.source.get_or_none(key).addCallback(
            lambda node: (node.ttl or 0) if node is not None else 0)

    @defer.inlineCallbacks
    def leased(self, prefix: str):
        """Fires with ``{key: (key, createdIndex)}`` for the TTL'd keys under ``prefix``."""
        try:
            answer = yield self.source.get(prefix, recursive=True, quorum=True)
        except etcd.EtcdKeyNotFound:
            return {}
        return {node.key: (node.key, node.createdIndex) for node in answer.result.leaves
                if not node.dir and node.ttl}


class _Lease:
    """One destination lease and the source lifetime it follows."""

    def __init__(self, lease_id: int, ttl: int) -> None:
        self.id = lease_id
        self.ttl = ttl
        self.timer: Optional[IDelayedCall] = None


class LeaseKeeper:
    """Grants destination leases for source lifetimes and keeps them alive."""

    def __init__(self, destination: V3Client, source: Any, mapper: KeyMapper,
                 clock: IReactorTime) -> None:
        """``source``: :class:`V3Lifetimes` or :class:`V2Lifetimes`."""
        self.destination = destination
        self.source = source
        self.mapper = mapper
        self.clock = clock
        self.leases: Dict[Hashable, _Lease] = {}
        self._running = False
        self.renewals = 0
        self._applied_index: Callable[[], int] = lambda: 0
        self._on_expired: Callable[[str], None] = lambda key: None

    def bind(self, applied_index: Callable[[], int], on_expired: Callable[[str], None]) -> None:
        """The controller's hooks: its applied index, and ``on_expired(key)``, which
        asks for a resync (a replica key that ran out while the mirror was away)."""
        self._applied_index = applied_index
        self._on_expired = on_expired

    # -- what the replica writer asks ------------------------------------------

    def for_source_lease(self, lease: int) -> defer.Deferred:
        """The destination lease of v3 source lease ``lease``; fires with its ID."""
        known = self.leases.get(lease)
        if known is not None:
            return defer.succeed(known.id)
        return self._grant(lease, None)

    def for_ttl(self, dst_key: bytes, ttl: int) -> defer.Deferred:
        """A new destination lease for a v2 key written with ``ttl``; fires with its ID.

        The key's lease before it (an earlier write) is no longer followed.
        """
        src_key = self.mapper.to_src(text(dst_key))
        self._forget(src_key)
        return self._grant(src_key, ttl)

    @defer.inlineCallbacks
    def _grant(self, lifetime: Hashable, ttl: Optional[int]):
        if ttl is None:
            ttl = yield self.source.remaining(lifetime)
        # A lifetime that just ended still gets a short lease: its delete is on its way.
        lease_id, granted = yield self.destination.lease_grant(max(int(ttl), 1) + TTL_GRACE)
        if lifetime in self.leases:  # granted meanwhile by another change
            return self.leases[lifetime].id
        self._follow(lifetime, _Lease(lease_id, granted))
        return lease_id

    # -- the controller's keeper slot (:class:`~etcdmirror.roles.NoKeeper`) ----------

    @defer.inlineCallbacks
    def load(self):
        """At a start: pair the replica's leased keys with their source lifetimes.

        A source key with a limited life that existed at the checkpoint already
        (created at or before it: a key deleted and made again is created anew)
        must be on the replica; one that is not ran out there while no mirror
        renewed its lease (stopped longer than the TTL): that asks for a resync.  Fires with
        how many destination leases are kept alive.
        """
        checkpoint = self._applied_index()
        leased = yield self.source.leased(self.mapper.src_prefix)
        found = yield self.destination.range(*keys_below(raw(self.mapper.dst_root)),
                                             keys_only=True)
        replica = {text(kv.key): kv.lease for kv in found.kvs}
        expired = []
        for key, (lifetime, created) in sorted(leased.items()):
            if self.mapper.ignored(key) or created > checkpoint:
                continue  # its event is still to come
            lease = replica.get(self.mapper.to_dst(key))
            if lease is None:
                expired.append(key)
            elif lease and lifetime not in self.leases:
                remaining, granted, _ = yield self.destination.lease_time_to_live(lease)
                if remaining > 0:
                    self._follow(lifetime, _Lease(lease, granted), check_in=0)
        if expired:
            log.warning("%d keys with a lease or TTL on the source ran out on the replica "
                        "while no mirror renewed them (first: %s); resynchronising",
                        len(expired), expired[0])
            self._on_expired(expired[0])
        return len(self.leases)

    def start(self) -> None:
        self._running = True
        for lifetime, lease in self.leases.items():
            self._schedule(lifetime, lease, lease.ttl / 3.0)

    def stop(self) -> None:
        self._running = False
        for lease in self.leases.values():
            if lease.timer is not None and lease.timer.active():
                lease.timer.cancel()
            lease.timer = None

    def applied(self, event: Any, outcome: Any) -> None:
        pass

    def track_snapshot(self, *args: Any, **kwargs: Any) -> None:
        pass

    def describe(self) -> Dict[str, Any]:
        return {"leases": len(self.leases), "renewals": self.renewals}

    # -- keeping alive ----------------------------------------------------------------

    def _follow(self, lifetime: Hashable, lease: _Lease, check_in: Optional[float] = None) -> None:
        self.leases[lifetime] = lease
        if self._running:
            self._schedule(lifetime, lease, lease.ttl / 3.0 if check_in is None else check_in)

    def _forget(self, lifetime: Hashable) -> None:
        lease = self.leases.pop(lifetime, None)
        if lease is not None and lease.timer is not None and lease.timer.active():
            lease.timer.cancel()

    def _schedule(self, lifetime: Hashable, lease: _Lease, delay: float) -> None:
        if lease.timer is not None and lease.timer.active():
            lease.timer.cancel()
        lease.timer = self.clock.callLater(max(delay, 0.0), self._check, lifetime, lease)

    def _check(self, lifetime: Hashable, lease: _Lease) -> defer.Deferred:
        lease.timer = None
        d = self._renew_if_alive(lifetime, lease)

        def failed(failure: Any) -> None:
            # Tried again soon: the lease has a third of its TTL left at least.
            log.warning("could not renew the destination lease %x: %s", lease.id,
                        failure.getErrorMessage())
            if self._running and self.leases.get(lifetime) is lease:
                self._schedule(lifetime, lease, min(1.0, lease.ttl / 6.0))
        return d.addErrback(failed)

    @defer.inlineCallbacks
    def _renew_if_alive(self, lifetime: Hashable, lease: _Lease):
        remaining = yield self.source.remaining(lifetime)
        if self.leases.get(lifetime) is not lease:
            return  # forgotten meanwhile
        if remaining <= 0:
            # The source's ended: its deletes come as events; this lease runs out.
            self._forget(lifetime)
            return
        left = yield self.destination.lease_keep_alive(lease.id)
        self.renewals += 1
        if left <= 0:
            # Gone on the destination (revoked by someone, or ran out while we
            # could not reach it): the next write of its keys grants a new one.
            log.warning("destination lease %x is gone while its source lives on", lease.id)
            self._forget(lifetime)
            return
        if self._running:
            self._schedule(lifetime, lease, lease.ttl / 3.0)
