"""The replication controller: read in order, apply in order, checkpoint.

Data flows one way: the :class:`~etcdmirror.roles.SourceReader` hands out the
source's events in index order, the :class:`~etcdmirror.roles.ReplicaWriter`
applies them in that order (several in flight where it can: :mod:`etcdmirror.pipeline`),
and the applied index moves only over events applied; the
:class:`~etcdmirror.checkpoint.Checkpointer` writes it to the
:class:`~etcdmirror.roles.Checkpoint` in batches, never ahead of what was
applied.  The controller sees the two clusters only through these roles.

Transient faults are retried (:mod:`etcdmirror.retry`), resuming at the same
event; the TTL keeper's writes take turns with the events' through the
:class:`~etcdmirror.gate.WriteGate`.  Everything else that stops replication is a
:class:`~etcdmirror.errors.MirrorFatal`: logged with the key, the index and
the cause, and turned into exit status 1 so that systemd does not restart
into the same wall.
"""

import logging
import time
from typing import Any, Callable, Optional, Set

import etcd
from twisted.internet import defer
from twisted.internet.interfaces import IReactorTime

from etcdmirror import guards
from etcdmirror import status as st
from etcdmirror.backoff import Backoff
from etcdmirror.checkpoint import Checkpointer
from etcdmirror.errors import (
    EXIT_CRASH, EXIT_OK, EXIT_OPERATOR, STEPPED_DOWN, LostLease, MirrorFatal)
from etcdmirror.events import ApplyError, Event, Outcome, WatchProgress, describe
from etcdmirror.failures import history_lost_reason, resync_failure, resync_reason
from etcdmirror.gate import WriteGate
from etcdmirror.guards import ResyncRefused
from etcdmirror.keys import KeyMapper
from etcdmirror.loopoptions import Options, record_applied
from etcdmirror.metrics import Metrics
from etcdmirror.pipeline import EventPipeline, send_again
from etcdmirror.resync import resync
from etcdmirror.retry import Retrier
from etcdmirror.roles import Checkpoint, NoKeeper, ReplicaWriter, SourceReader

log = logging.getLogger(__name__)


class _Stopping(Exception):
    """Raised inside the loop once a stop was requested."""


def _api(role: Any) -> str:
    """The etcd API a source or replica speaks ("v2" when it does not say)."""
    return getattr(role, "api", "v2")


class ReplicationController:
    """Runs one mirror from start (or reload) until stop or a fatal error."""

    def __init__(
        self,
        make_source: Callable[..., SourceReader],
        replica: ReplicaWriter,
        checkpoint: Checkpoint,
        mapper: KeyMapper,
        status: st.MirrorStatus,
        metrics: Metrics,
        clock: IReactorTime,
        options: Optional[Options] = None,
        *,
        transient: Callable[[Any], bool],
        backoff_factory: Callable[[], Backoff] = Backoff,
        make_keeper: Callable[..., Any] = NoKeeper,
    ) -> None:
        """``make_source(on_source_index=, on_registered=)`` builds the source reader
        with the controller's hooks; ``transient(error)`` says which of the roles'
        errors are worth retrying; ``make_keeper(gate=, applied_index=,
        on_dir_expired=)`` builds the TTL keeper (:mod:`etcdmirror.ttlkeeper`)."""
        self.replica = replica
        self.mapper = mapper
        self.status = status
        self.metrics = metrics
        self.clock = clock
        self.options = options or Options()
        #: ``self._retrying(what, side, operation)``: see :mod:`etcdmirror.retry`.
        self._retrying = Retrier(clock, status, metrics, backoff_factory,
                                 self._check_running, self._interruptibly, transient)
        self.source = make_source(on_source_index=status.saw_source_index,
                                  on_registered=self._source_registered_a_watch)
        status.watch_info = self.source.describe
        self.store = checkpoint
        self._make_keeper = make_keeper
        self._terms = 0
        self._new_term()

    def _new_term(self) -> None:
        """Fresh replication state: at construction, and for each run after the
        first (a mirror that stepped down and took over again, ``--ha``)."""
        self.checkpoint = Checkpointer(self.store, self.clock, self._retrying,
                                       lambda: self.index, self.options.batch,
                                       running=lambda: self._running,
                                       on_lost=self.step_down)
        #: Event writes, resyncs and TTL refreshes take turns on the destination.
        self.gate = WriteGate()
        self.ttl = self._make_keeper(gate=self.gate, applied_index=lambda: self.index,
                                     on_dir_expired=self._ttl_dir_expired)
        self.status.ttl_info = self.ttl.describe
        #: A resync asked for from outside the loop (the TTL keeper), by reason.
        self._resync_wanted: Optional[str] = None
        self._waiting_for_source = False
        #: Every event up to this source index is applied.
        self.index = 0
        self.source_cluster_id: Optional[str] = None
        self._running = True
        #: Why this run lost the right to write (``--ha``), once it did.
        self._lost: Optional[str] = None
        #: What the loop waits for now (a resync's writes: several at once).
        self._interruptible: Set[defer.Deferred] = set()
        #: Events in flight on the destination (as many as the replica's ``in_flight``).
        self.pipeline = EventPipeline(
            lambda event, replaying: self.replica.apply(event, replaying=replaying),
            self.gate, getattr(self.replica, "in_flight", 1), self._finished,
            on_stalled=self._wake_from_source,
            keyed=not getattr(self.replica, "chained", False))
        self.status.pipeline_info = self.pipeline.describe

    # -- lifecycle -----------------------------------------------------------

    @defer.inlineCallbacks
    def run(self):
        """Replicate until stopped; fires with the process exit status.

        Or with :data:`~etcdmirror.errors.STEPPED_DOWN` once the mirror lost
        the HA lock (:meth:`step_down`); it may then :meth:`run` again.
        """
        if self._terms:
            self._new_term()
        self._terms += 1
        try:
            yield self._start()
            yield self._replicate()
        except _Stopping:
            pass
        except LostLease as e:
            self._lost = self._lost or str(e)
        except (MirrorFatal, etcd.EtcdException) as e:
            if self._lost is not None:
                # Found after the lock was lost: not this mirror's to judge.
                log.info("after losing the HA lock: %s", e)
            elif isinstance(e, MirrorFatal):
                return self._failed(str(e))
            else:
                # Not transient and not expected: bad credentials, a missing
                # permission, an answer we cannot use (named in the message).
                return self._failed(f"{e}; replication stopped, last applied index {self.index}")
        except Exception as e:  # a bug: say so loudly, let systemd restart us
            log.critical("internal error, stopping (last applied index %d)", self.index,
                         exc_info=True)
            return self._failed(f"internal error: {e!r}", EXIT_CRASH, logged=True)
        # The events in flight are answered (or time out) before the index is written.
        yield self.pipeline.quiet()
        self._shutdown_io()
        if self._lost is not None:
            # Not one more write: the index stays where this run left it
            # (behind what was applied), which the next holder replays from.
            log.warning("stepping down: %s; last applied index %d", self._lost, self.index)
            return STEPPED_DOWN
        yield self.checkpoint.close()
        self.status.state = st.State.STOPPED
        if self.checkpoint.persisted_index is None:
            log.info("stopped before replication started")
        else:
            log.info("stopped; last applied index %d", self.index)
        return EXIT_OK

    def _failed(self, message: str, exit_status: int = EXIT_OPERATOR, logged: bool = False) -> int:
        self._shutdown_io()
        self.status.state = st.State.FAILED
        self.status.error(message)
        if not logged:
            log.critical("%s", message)
        return exit_status

    def stop(self) -> None:
        """Ask the loop to stop after the event in hand; interrupts waits."""
        if not self._running:
            return
        log.info("stop requested")
        self._running = False
        self.status.state = st.State.STOPPING
        self._interrupt()

    def step_down(self, reason: str) -> None:
        """This mirror lost the HA lock: stop at once, write nothing more."""
        if self._lost is not None:
            return
        self._lost = reason
        self._running = False
        self._interrupt()

    def _interrupt(self) -> None:
        for waiting in list(self._interruptible):
            waiting.cancel()

    def _shutdown_io(self) -> None:
        self.source.close()
        self.ttl.stop()
        self.checkpoint.stop()

    def _check_running(self) -> None:
        if not self._running:
            raise _Stopping()

    @defer.inlineCallbacks
    def _start(self):
        """Safety checks, optional reload, and the index to start from."""
        src = yield self._retrying("probing the source", "source", self.source.position)
        dst = yield self._retrying("probing the destination", "destination",
                                   self.replica.position)
        guards.check_not_a_loop(src.cluster_id, dst.cluster_id, self.mapper,
                                same_keyspace=_api(self.source) == _api(self.replica))
        yield self._retrying("claiming the replication index", "destination",
                             self.store.claim)
        self.source_cluster_id = src.cluster_id
        self.status.saw_source_index(src.etcd_index)
        recorded = None
        if not self.options.reload:
            recorded = yield self._retrying("reading the recorded source cluster id",
                                            "destination", self.store.read_source_id)
            guards.check_same_source(recorded, src.cluster_id, self.source.display)
        interrupted = yield self._retrying("reading the resync marker", "destination",
                                           self.store.read_resync_marker)
        if self.options.reload or interrupted is not None:
            # Safe to write: a reload or resync however long is not a start-up check.
            self.status.checks_passed = True
            if not self.options.reload:
                log.warning("A resync (%s) was interrupted before it finished; "
                            "resuming it before replicating", interrupted)
            # The marker keeps the reason the resync was started for: one cut
            # short that was an operator's reload is still one when finished.
            yield self._resync("reload" if self.options.reload else "interrupted",
                               started_as=None if self.options.reload else interrupted)
            return
        self.index = yield self.checkpoint.load()
        guards.check_not_rolled_back(self.index, src.etcd_index)
        if recorded is None and src.cluster_id:
            yield self._record_source_id(src.cluster_id)
        self.status.checks_passed = True
        yield self._retrying(f"reading the TTL'd keys under {self.mapper.src_prefix!r}",
                             "source", self.ttl.load)

    @defer.inlineCallbacks
    def _record_source_id(self, cluster_id: str):
        yield self._retrying("recording the source cluster id", "destination",
                             lambda: self.store.write_source_id(cluster_id))
        self.source_cluster_id = cluster_id

    # -- the loop ------------------------------------------------------------

    @defer.inlineCallbacks
    def _replicate(self):
        self.status.replica_index = self.index
        self.status.state = st.State.REPLICATING
        self.source.follow(self.index + 1)
        log.info("Starting replication at %s", self.index)
        self.ttl.start()
        while True:
            self._check_running()
            if self._resync_wanted is not None:
                yield self._settle()
                reason, self._resync_wanted = self._resync_wanted, None
                yield self._resync(reason)
                continue
            if self.pipeline.stalled:
                yield self._settle()
                continue
            self._waiting_for_source = True
            try:
                outcome = yield self._retrying(
                    lambda: f"watching {self.mapper.src_prefix!r} from index {self.index + 1}",
                    "source", self.source.next)
            except etcd.EtcdEventIndexCleared as e:
                yield self._settle()
                yield self._resync(history_lost_reason(e, self.index, self.options))
                continue
            except defer.CancelledError:
                if self._resync_wanted is None and not self.pipeline.stalled:
                    raise
                continue
            finally:
                self._waiting_for_source = False
            guards.check_same_source(self.source_cluster_id, outcome.cluster_id,
                                     self.source.display)
            if isinstance(outcome, WatchProgress):
                yield self._settle()
                if outcome.etcd_index < self.index:
                    yield self._check_rollback()
                yield self._progress(outcome.etcd_index)
                continue
            event = outcome.event
            self.status.saw_source_index(max(outcome.etcd_index, event.modifiedIndex))
            if event.modifiedIndex <= max(self.index, self.pipeline.last_index):
                log.warning("ignoring stale delivery of %s: index %d is already applied",
                            describe(event), max(self.index, self.pipeline.last_index))
                continue
            yield self._send(event)

    @defer.inlineCallbacks
    def _check_rollback(self):
        """A member answered with an index below ours: lagging, or rolled back?"""
        src = yield self._retrying("probing the source", "source", self.source.position)
        guards.check_not_rolled_back(self.index, src.etcd_index)

    @defer.inlineCallbacks
    def _progress(self, etcd_index: int):
        """An idle watch: nothing under the prefix up to ``etcd_index``."""
        self.status.saw_source_index(etcd_index)
        self.index = self.status.replica_index = max(self.index, etcd_index)
        yield self.checkpoint.progress(self.index)

    @defer.inlineCallbacks
    def _send(self, event: Event):
        """Hand ``event`` to the pipeline as soon as it may go (:mod:`etcdmirror.pipeline`)."""
        index, pipeline = event.modifiedIndex, self.pipeline
        while not (yield pipeline.enter(event, lambda: self.checkpoint.before_apply(index),
                                        self._interruptibly)):
            yield self._settle()
            if index <= self.index:
                return  # a resync (after a divergence) covered it
        pipeline.send(event, self.checkpoint.replaying(index), time.perf_counter())

    def _finished(self, event: Event, outcome: Outcome, started: float) -> None:
        """``event`` and every one before it are applied: the index moves past it."""
        # Before the gate opens: the keeper decides on what is applied.
        self.ttl.applied(event, outcome)
        self.index = event.modifiedIndex
        self.checkpoint.applied()
        record_applied(event, outcome, time.perf_counter() - started, self.status,
                       self.metrics, self.clock, self.options)

    @defer.inlineCallbacks
    def _settle(self):
        """Once nothing is in flight, finish what is not, in source order: a transient
        failure is sent again, any other stops or resyncs (:mod:`etcdmirror.failures`)."""
        leftovers = yield self._interruptibly(self.pipeline.settled())
        try:
            for item in leftovers:
                outcome = item.outcome
                if outcome is None:
                    outcome = yield send_again(item, leftovers, self._retrying, self.replica,
                                               self.metrics)
                self._finished(item.event, outcome, item.started)
        except (ApplyError, etcd.EtcdException) as e:
            # The gate stays ours (the TTL keeper must not act on a replica with
            # later events landed past this one): for the resync, or to the end.
            self.metrics.errors.labels(kind=type(e).__name__).inc()
            reason = resync_reason(e, item.event, self.index, self.options)
            self.pipeline.hand_over()
            yield self._resync(reason, gate_held=True)
            return
        self.pipeline.release()

    def _source_registered_a_watch(self) -> None:
        """Waiting on a quiet prefix is the loop moving too (systemd's watchdog)."""
        if self._waiting_for_source:
            self.status.loop_heartbeat = self.clock.seconds()

    def _ttl_dir_expired(self, key: str) -> None:
        """The TTL keeper found a TTL'd directory run out on the replica: resync."""
        self._resync_wanted = self._resync_wanted or "ttl_expired"
        self._wake_from_source()

    def _wake_from_source(self) -> None:
        """Stop waiting for the source: a resync is wanted, or an event in flight failed."""
        if self._waiting_for_source:
            self._interrupt()

    @defer.inlineCallbacks
    def _resync(self, reason: str, started_as: Optional[str] = None, gate_held: bool = False):
        """Reconcile the destination with a snapshot; the index becomes its index.

        ``started_as``: the reason an interrupted resync was first started for;
        ``gate_held``: the caller holds the write gate already (released after).
        """
        waiting = None if gate_held else self.gate.acquire()  # None: ours already
        if waiting is not None:
            yield self._interruptibly(waiting)
        try:
            yield self._resync_in_turn(reason, started_as or reason)
        finally:
            self.gate.release()

    @defer.inlineCallbacks
    def _resync_in_turn(self, reason: str, started_as: str):
        self.status.state = st.State.RELOADING if reason == "reload" else st.State.RESYNCING
        log.info("Re-loading the etcd data from the source cluster (%s)", reason)
        self.source.close()
        started = time.perf_counter()
        read_at = self.clock.seconds()
        yield self._retrying("marking the resync in progress", "destination",
                             lambda: self.store.mark_resync(started_as))
        try:
            # Each request of the resync is retried on its own; nothing else in
            # it can fail for a transient reason.  Only an operator's reload
            # deletes past the limit, and only one given now reads an empty source.
            report = yield resync(
                self.source, self.replica, self.mapper, retry=self._retrying,
                log_writes=self.options.event_log,
                max_deletes=None if started_as == "reload" else self.options.max_resync_deletes,
                refuse_empty_source=reason != "reload")
        except (ResyncRefused, etcd.EtcdException) as e:
            self.metrics.errors.labels(kind=type(e).__name__).inc()
            raise resync_failure(e, reason, started_as, self.index) from None
        self.index = report.etcd_index
        self.ttl.track_snapshot(report.ttl_nodes, report.etcd_index, read_at, present=True)
        yield self.checkpoint.persist(self.index)
        if report.cluster_id:
            yield self._record_source_id(report.cluster_id)
        yield self._retrying("clearing the resync marker", "destination",
                             self.store.clear_resync_marker)
        self.checkpoint.resynced()
        self.metrics.load_time.observe(time.perf_counter() - started)
        self.metrics.resyncs.labels(reason=reason).inc()
        self.status.saw_source_index(report.etcd_index)
        self.status.replica_index = self.index
        self.status.state = st.State.REPLICATING
        self.source.follow(self.index + 1)
        log.info(
            "resync (%s) done in %.2fs: %d source nodes, %d written, %d deleted; "
            "index %d", reason, time.perf_counter() - started, report.source_keys,
            report.writes, report.deletes, self.index)

    # -- waits a stop interrupts -----------------------------------------------

    @defer.inlineCallbacks
    def _interruptibly(self, d: defer.Deferred):
        """Wait for ``d``, but let :meth:`stop` cancel it."""
        self._interruptible.add(d)
        try:
            result = yield d
        except defer.CancelledError:
            self._check_running()
            raise
        finally:
            self._interruptible.discard(d)
        return result
