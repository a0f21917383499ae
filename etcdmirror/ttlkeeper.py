"""Keeps the replica's copy of every TTL'd node alive while its source copy lives.

etcd v2 renews a TTL without any watch event when a client writes with
``refresh=true`` (checked on etcd 3.4: the write takes an index, but neither
a live watcher nor one reading the history ever sees it).  That is the
standard way to keep service-registration and liveness keys alive, so a
mirror that only follows the watch lets the replica's copy run out while the
source's lives on: the replica is silently wrong.

The keeper knows every key and directory under the prefix that carries a
TTL: from a source snapshot read at start, from the snapshot of every
resync, and from every event the mirror applies.  For each it keeps a lower
bound of when the replica's copy runs out, and shortly before that moment it
reads the source's remaining TTL (a ``quorum=true`` read).  When the source's
expiration moved past the replica's, it refreshes the replica's copy the way
the source was refreshed (``refresh=true``, ``prevExist=true``, the remaining
TTL plus :data:`~etcdmirror.applier.TTL_GRACE`): no event, value untouched.

When the checks fall is :mod:`etcdmirror.ttlplan`'s business: shortly before
the replica's copy runs out, once more just after the source's own expiry,
and once after the replica's copy ran out, for a renewal that slipped through.

Cost
----
Nothing for a prefix without TTL'd nodes, past one source read at start.
Otherwise one quorum read and at most one write per tracked node and TTL
period.  When a round has :data:`~etcdmirror.ttlplan.GROUP_READS` or more due nodes in one
directory, it reads that directory once instead of each node (a plain,
non-recursive GET): that read carries the whole directory listing, so its
cost grows with the size of directories that hold many TTL'd keys.

Consistency
-----------
Writes happen only while the keeper holds the :class:`~etcdmirror.gate.WriteGate`,
so never while an event is being applied, and only for a node whose
tracking entry is still the one the decision was made on (any applied event
for the node replaces its entry).  A node learnt from a start-up snapshot at
source index J is only refreshed, never written again, before the mirror has
applied up to J: until then the replica may legitimately lack it.  (A
refresh never creates a key nor changes a value; at worst it gives a key the
TTL that a pending event is about to give it.)
"""

import heapq
import itertools
import logging
from typing import Any, Callable, Dict, List, Optional, Set, Tuple

import etcd
from twisted.internet import defer
from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.python.failure import Failure

from etcdmirror.applier import replica_ttl
from etcdmirror.client import EtcdClient
from etcdmirror.events import DELETE_ACTIONS, Event, Outcome
from etcdmirror.gate import WriteGate
from etcdmirror.keys import KeyMapper, is_under
from etcdmirror.metrics import Metrics
from etcdmirror.resync import TTL_TOLERANCE, NodeState
from etcdmirror.ttlplan import (
    BATCH_AHEAD, LATE, LEAD, MAX_BATCH, MAX_LEAD, Tracked, next_check, plan_reads)
from etcdmirror.v2source import read_snapshot

log = logging.getLogger(__name__)

#: A replica copy found gone is written again only if the source's lives on
#: for at least this many seconds (as etcd rounds them up).
MIN_REWRITE_TTL = 2
#: Reads, and writes, in flight at once.
CONCURRENCY = 8
#: After a failed read or write, check the node again this much later.
RETRY_DELAY = 1.0


class TtlKeeper:
    """Refreshes replica copies of TTL'd nodes; see the module docstring."""

    def __init__(self, source: EtcdClient, destination: EtcdClient, mapper: KeyMapper,
                 clock: IReactorTime, gate: WriteGate, applied_index: Callable[[], int],
                 metrics: Metrics, on_dir_expired: Callable[[str], None]) -> None:
        self.source = source
        self.destination = destination
        self.mapper = mapper
        self.clock = clock
        self.gate = gate
        self.applied_index = applied_index
        self.metrics = metrics
        self.on_dir_expired = on_dir_expired
        self.lead = LEAD
        self._nodes: Dict[str, Tracked] = {}
        self._heap: List[Tuple[float, int, Tracked]] = []
        self._order = itertools.count()
        self._timer: Optional[IDelayedCall] = None
        self._in_round = False
        self._running = False
        self._failing = False
        #: Directories already reported run out (a resync is on its way).
        self._dirs_reported: Set[str] = set()
        self.refreshes = 0
        self.expired_late = 0

    # -- lifecycle -------------------------------------------------------------

    def start(self) -> None:
        """Begin checking (the controller calls this once replication starts)."""
        self._running = True
        self._arm()

    def stop(self) -> None:
        self._running = False
        if self._timer is not None and self._timer.active():
            self._timer.cancel()
        self._timer = None

    def describe(self) -> Dict[str, Any]:
        """The keeper's part of ``/status``."""
        due = self._next_due()
        return {"tracked": len(self._nodes), "refreshes": self.refreshes,
                "expired_late": self.expired_late,
                "next_check_in": None if due is None
                else round(max(0.0, due - self.clock.seconds()), 3)}

    # -- what is tracked -----------------------------------------------------------

    @defer.inlineCallbacks
    def load(self):
        """Track the TTL'd nodes of a source snapshot (at start); fires with their count.

        The replica's copies may be missing (run out while the mirror was
        down) or older; each is checked at once, and written only once the
        mirror has applied up to the snapshot's index.
        """
        snap = yield read_snapshot(self.source, self.mapper.src_prefix)
        return self.track_snapshot(snap.nodes, snap.etcd_index, self.clock.seconds(),
                                   present=False)

    def track_snapshot(self, nodes: Dict[str, NodeState], etcd_index: int, read_at: float,
                       present: bool) -> int:
        """Forget everything and track the TTL'd ``nodes`` of a source snapshot.

        ``present``: a resync just made the replica equal to this snapshot,
        with TTLs within :data:`~etcdmirror.resync.TTL_TOLERANCE` seconds of
        the source's, read at ``read_at`` or later.  Returns the count.
        """
        self._nodes.clear()
        self._heap.clear()
        self._dirs_reported.clear()
        for key, node in nodes.items():
            if node.ttl is None or self.mapper.ignored(key) or self.mapper.to_dst(key) == "/":
                continue
            expires = read_at + node.ttl - TTL_TOLERANCE - 1 if present else None
            self._track(Tracked(key, node.dir, node.value, expires, not_before=etcd_index))
        self._count_changed()
        if self._nodes:
            log.info("TTL keeper: tracking %d keys and directories with a TTL (source "
                     "index %d)", len(self._nodes), etcd_index)
        return len(self._nodes)

    def applied(self, event: Event, outcome: Outcome) -> None:
        """The controller applied ``event`` with ``outcome``: follow what it did to TTLs."""
        ttl = event.ttl
        if ttl is None and not self._nodes:
            return
        if outcome is Outcome.IGNORED:
            return
        key = event.key
        if event.action in DELETE_ACTIONS:
            self._forget(key, subtree=bool(event.dir))
        elif ttl is None:
            self._forget(key)
        elif self.mapper.to_dst(key) != "/":
            # A replayed event found its result in place, with whatever TTL
            # an earlier write left: unknown, so checked at once.
            expires = (None if outcome is Outcome.REPLAYED
                       else self.clock.seconds() + replica_ttl(ttl))
            self._track(Tracked(key, bool(event.dir), None if event.dir else event.value,
                                expires))
        self._count_changed()

    def _track(self, entry: Tracked) -> None:
        self._nodes[entry.key] = entry
        self._dirs_reported.discard(entry.key)
        now = self.clock.seconds()
        due = now if entry.replica_expires is None else next_check(
            now, entry.replica_expires, self.lead)
        self._schedule(entry, due)

    def _forget(self, key: str, subtree: bool = False) -> None:
        self._nodes.pop(key, None)
        if subtree:
            for other in [k for k in self._nodes if is_under(k, key)]:
                del self._nodes[other]

    def _count_changed(self) -> None:
        self.metrics.ttl_tracked.set(len(self._nodes))

    def _current(self, entry: Tracked) -> bool:
        return self._nodes.get(entry.key) is entry

    # -- scheduling ------------------------------------------------------------------

    def _schedule(self, entry: Tracked, due: float) -> None:
        entry.due = due
        heapq.heappush(self._heap, (due, next(self._order), entry))
        if len(self._heap) > 4 * len(self._nodes) + 64:
            self._heap = [(e.due, next(self._order), e) for e in self._nodes.values()]
            heapq.heapify(self._heap)
        if self._timer is None or not self._timer.active() or due < self._timer.getTime():
            self._arm()

    def _next_due(self) -> Optional[float]:
        heap = self._heap
        while heap and not (self._current(heap[0][2]) and heap[0][2].due == heap[0][0]):
            heapq.heappop(heap)
        return heap[0][0] if heap else None

    def _arm(self) -> None:
        """Set the one timer to the earliest due check."""
        if self._timer is not None and self._timer.active():
            self._timer.cancel()
        self._timer = None
        if not self._running or self._in_round:
            return
        due = self._next_due()
        if due is not None:
            self._timer = self.clock.callLater(max(0.0, due - self.clock.seconds()),
                                               self._wake)

    def _take_due(self, until: float) -> List[Tracked]:
        batch: List[Tracked] = []
        while len(batch) < MAX_BATCH:
            due = self._next_due()
            if due is None or due > until:
                break
            batch.append(heapq.heappop(self._heap)[2])
        return batch

    def _wake(self) -> None:
        self._timer = None
        self._in_round = True
        started = self.clock.seconds()

        def done(result: Any) -> None:
            self._in_round = False
            # Give the next round time for what this one took.
            self.lead = min(MAX_LEAD, max(LEAD, 2 * (self.clock.seconds() - started)))
            self._arm()

        d = self.check_due()
        d.addErrback(self._round_failed)
        d.addBoth(done)

    def _round_failed(self, failure: Failure) -> None:
        """A bug: say so, and check every node again rather than lose one."""
        log.error("TTL keeper: a round failed; checking every node again in %gs: %s",
                  RETRY_DELAY, failure.getTraceback())
        due = self.clock.seconds() + RETRY_DELAY
        self._heap = []
        for entry in self._nodes.values():
            self._schedule(entry, due)

    # -- one round -----------------------------------------------------------------

    @defer.inlineCallbacks
    def check_due(self):
        """Check every node that is due now; fires when its writes are done."""
        ready = self._take_due(self.clock.seconds() + BATCH_AHEAD)
        if not ready:
            return
        answers = yield self._read_source(ready)
        refresh = []
        for entry in ready:
            if not self._current(entry):
                continue  # an event changed it meanwhile
            if entry.key not in answers:
                self._schedule(entry, self.clock.seconds() + RETRY_DELAY)
                continue
            node, received = answers[entry.key]
            if node is None or node.ttl is None or bool(node.dir) != entry.dir:
                # Deleted, expired, made permanent or replaced on the source:
                # the event saying so is on its way and decides.
                self._forget(entry.key)
            elif node.ttl <= 0:
                # Expired on the source, not removed yet: its event follows.
                self._schedule(entry, received + LATE)
            elif entry.replica_expires is None or received + node.ttl > entry.replica_expires:
                refresh.append((entry, int(node.ttl)))
            else:
                self._schedule(entry, next_check(received, entry.replica_expires, self.lead))
        self._count_changed()
        if refresh and self._running:
            yield self.gate.run(lambda: self._refresh_all(refresh))

    @defer.inlineCallbacks
    def _read_source(self, entries: List[Tracked]):
        """Quorum reads of the entries' source nodes: ``{key: (node or None, received)}``."""
        answers: Dict[str, Tuple[Any, float]] = {}
        limit = defer.DeferredSemaphore(CONCURRENCY)

        def got(answer: Any, keys: List[str]) -> None:
            received = self.clock.seconds()
            found = {node.key: node for node in answer.result.get_subtree()}
            for key in keys:
                answers[key] = (found.get(key), received)

        def missing(failure: Any, keys: List[str]) -> None:
            failure.trap(etcd.EtcdKeyNotFound)
            received = self.clock.seconds()
            for key in keys:
                answers[key] = (None, received)

        reads = []
        for target, keys in plan_reads([e.key for e in entries], self.mapper.src_prefix):
            d = limit.run(self.source.get, target, quorum=True)
            d.addCallbacks(got, missing, callbackArgs=(keys,), errbackArgs=(keys,))
            d.addErrback(self._failed, f"reading the source's TTL of {target!r}")
            reads.append(d)
        self.metrics.ttl_source_reads.inc(len(reads))
        yield defer.gatherResults(reads)
        if len(answers) == len(entries):
            self._failing = False
        return answers

    def _failed(self, failure: Any, what: str) -> None:
        """Log a failed request once per streak of failures (a full round of reads or a
        refresh that succeeds ends it); the node is checked again."""
        self.metrics.errors.labels(kind=type(failure.value).__name__).inc()
        if not self._failing:
            log.warning("TTL keeper: %s failed (index %d): %s; trying again in %gs",
                        what, self.applied_index(), failure.getErrorMessage(), RETRY_DELAY)
        self._failing = True

    @defer.inlineCallbacks
    def _refresh_all(self, refresh: List[Tuple[Tracked, int]]):
        limit = defer.DeferredSemaphore(CONCURRENCY)
        yield defer.gatherResults([limit.run(self._refresh, entry, ttl)
                                   for entry, ttl in refresh if self._current(entry)])

    @defer.inlineCallbacks
    def _refresh(self, entry: Tracked, ttl: int):
        """Refresh one replica copy to the source's TTL (holding the gate); never fails."""
        key = self.mapper.to_dst(entry.key)
        new_ttl = replica_ttl(ttl)
        sent = self.clock.seconds()
        doing = f"refreshing the TTL of {key!r}"
        try:
            try:
                log.debug("TTL keeper: refreshing %s to ttl %d (replica index %d)", key, new_ttl,
                          self.applied_index())
                yield self.destination.put(key, dir=entry.dir, ttl=new_ttl, refresh=True,
                                           prev_exist=True)
                self.refreshes += 1
                self.metrics.ttl_refreshes.inc()
                self._failing = False
            except etcd.EtcdKeyNotFound:
                if not self._current(entry):
                    return
                if entry.not_before > self.applied_index():
                    # The replica may lack it until the mirror gets there.
                    self._schedule(entry, self.clock.seconds() + RETRY_DELAY)
                    return
                if ttl < MIN_REWRITE_TTL:
                    # The source copy runs out within a second too (etcd
                    # rounds ``ttl`` up): its expire event is due.  A renewal
                    # at the last moment is seen by the late check.
                    self._schedule(entry, self.clock.seconds() + LATE)
                    return
                doing = f"writing {key!r} again"
                if not (yield self._expired_late(entry, key, new_ttl)):
                    return
        except Exception:
            self._failed(Failure(), doing)
            if self._current(entry):
                self._schedule(entry, self.clock.seconds() + RETRY_DELAY)
            return
        if self._current(entry):
            entry.replica_expires = sent + new_ttl
            self._schedule(entry, next_check(self.clock.seconds(), entry.replica_expires,
                                             self.lead))

    @defer.inlineCallbacks
    def _expired_late(self, entry: Tracked, key: str, ttl: int):
        """The replica's copy ran out while the source's lives: write it again.

        Fires with True when the key was written again.
        """
        index = self.applied_index()
        if entry.dir:
            self._schedule(entry, self.clock.seconds() + 5 * RETRY_DELAY)
            if entry.key in self._dirs_reported:
                return False
            self._dirs_reported.add(entry.key)
        self.expired_late += 1
        self.metrics.ttl_expired_late.inc()
        if entry.dir:
            log.warning("TTL keeper: the replica's copy of directory %r ran out while the "
                        "source's lives on (replica index %d); its children went with it, "
                        "resynchronising", key, index)
            self.on_dir_expired(entry.key)
            return False
        log.warning("TTL keeper: the replica's copy of %r ran out while the source's lives "
                    "on (replica index %d); writing it again with ttl %d", key, index, ttl)
        try:
            yield self.destination.put(key, entry.value, ttl=ttl, prev_exist=False)
        except etcd.EtcdAlreadyExist:
            # Not ours (the gate is held): look again at once.
            self._schedule(entry, self.clock.seconds())
            return False
        return True
