"""The replication controller: watch, apply in order, persist the index.

Data flows one way: the :class:`~etcdmirror.watcher.WatchWindow` hands out the
source's events in index order, the :class:`~etcdmirror.applier.EventApplier`
replays each on the destination, and only then does the applied index move.
The index is persisted in batches (every ``persist_events`` events or
``persist_interval`` seconds, on idle progress and on the way out), so it is
never ahead of what was applied; after a crash the events since the persisted
index are replayed, which the applier recognises.

Transient faults are retried (:mod:`etcdmirror.retry`), resuming at the same
event; the TTL keeper's writes take turns with the events' through the
:class:`~etcdmirror.gate.WriteGate`.  Everything else that stops replication is a
:class:`~etcdmirror.errors.MirrorFatal`: logged with the key, the index and
the cause, and turned into exit status 1 so that systemd does not restart
into the same wall.
"""

import logging
import time
from dataclasses import dataclass
from typing import Any, Callable, Optional

import etcd
from twisted.internet import defer
from twisted.internet.interfaces import IDelayedCall, IReactorTime

from etcdmirror import guards
from etcdmirror import status as st
from etcdmirror.answers import Event, WatchProgress
from etcdmirror.applier import (
    ApplyError, Divergence, EventApplier, ExpiredEarly, Outcome, describe)
from etcdmirror.backoff import Backoff
from etcdmirror.client import EtcdClient
from etcdmirror.errors import MirrorFatal
from etcdmirror.freshness import parse_heartbeat
from etcdmirror.gate import WriteGate
from etcdmirror.indexstore import IndexStore, horizon_value
from etcdmirror.keys import KeyMapper
from etcdmirror.metrics import Metrics
from etcdmirror.resync import resync
from etcdmirror.retry import Retrier
from etcdmirror.ttlkeeper import TtlKeeper
from etcdmirror.watcher import WatchWindow

log = logging.getLogger(__name__)

EXIT_OK = 0
EXIT_OPERATOR = 1
EXIT_CRASH = 70


class _Stopping(Exception):
    """Raised inside the loop once a stop was requested."""


#: How the event log words each outcome (after 0.0.12's "Replicating key K at index N").
EVENT_LOG_OUTCOMES = {Outcome.APPLIED: "applied",
                      Outcome.REPLAYED: "replay, already in effect",
                      Outcome.IGNORED: "ignored by regex",
                      Outcome.TTL_REWRITE: "TTL rewrite"}


@dataclass
class Options:
    reload: bool = False
    #: One INFO line per event ("Replicating key K at index N (action, outcome)").
    event_log: bool = True
    #: Watches in flight at once while catching up (1: one event per round trip).
    watch_concurrency: int = 16
    #: Once caught up, watch with ``stream=true``: no request per event.
    watch_stream: bool = True
    #: Re-register a watch that saw nothing for this long (seconds), to learn
    #: the source's X-Etcd-Index and keep the index inside etcd's history.
    watch_idle_timeout: float = 5.0
    #: Persist the applied index after this many events ...
    persist_events: int = 500
    #: ... or this many seconds after the first event not yet persisted.
    persist_interval: float = 0.5
    #: Persist index progress learnt from idle watches at most this often ...
    progress_persist_interval: float = 10.0
    #: ... or as soon as it moved this many indexes ahead of the persisted one.
    progress_persist_events: int = 500
    #: A replay horizon covers this many indexes past the event that wrote it.
    horizon_slack: int = 1000
    #: How often to probe the source's index while a watch is pending.
    index_probe_interval: float = 0.5
    #: Renew a pending watch early once the source moved this far past it.
    index_probe_threshold: int = 200
    #: On a cleared watch index: resync by ourselves (True) or exit 1 (False).
    auto_resync: bool = True
    #: A conditional event that fails on the destination: "fail" or "resync".
    on_divergence: str = "fail"
    #: Compare the replica with the source every so many seconds (0: never).
    verify_interval: float = 0.0
    #: The source key the mirror writes its heartbeat to (None: no heartbeat).
    heartbeat_key: Optional[str] = None
    #: How often to write the heartbeat and publish freshness (seconds).
    heartbeat_interval: float = 5.0
    #: /healthz is 503 when the replica is older than this (0: never).
    max_replica_age: float = 0.0
    #: Address the HTTP interface binds to ("": all, as 0.0.12 did).
    listen_address: str = ""
    #: TLS policies (IPolicyForHTTPS) per side; None: the system's trust store.
    src_tls: Any = None
    dst_tls: Any = None


class ReplicationController:
    """Runs one mirror from start (or reload) until stop or a fatal error."""

    def __init__(
        self,
        source: EtcdClient,
        destination: EtcdClient,
        mapper: KeyMapper,
        status: st.MirrorStatus,
        metrics: Metrics,
        clock: IReactorTime,
        options: Optional[Options] = None,
        backoff_factory: Callable[[], Backoff] = Backoff,
    ) -> None:
        self.source = source
        self.destination = destination
        self.mapper = mapper
        self.status = status
        self.metrics = metrics
        self.clock = clock
        self.options = options or Options()
        #: ``self._retrying(what, side, operation)``: see :mod:`etcdmirror.retry`.
        self._retrying = Retrier(clock, status, metrics, backoff_factory,
                                 self._check_running, self._interruptibly)
        self.applier = EventApplier(destination, mapper)
        self.store = IndexStore(destination, mapper)
        self.window = WatchWindow(
            source, mapper.src_prefix, clock,
            concurrency=self.options.watch_concurrency,
            idle_timeout=self.options.watch_idle_timeout,
            probe_interval=self.options.index_probe_interval,
            probe_threshold=self.options.index_probe_threshold,
            on_source_index=status.saw_source_index,
            on_registered=self._source_registered_a_watch,
            stream=self.options.watch_stream)
        status.watch_info = self.window.describe
        #: Event writes, resyncs and TTL refreshes take turns on the destination.
        self.gate = WriteGate()
        self.ttl = TtlKeeper(source, destination, mapper, clock, self.gate,
                             lambda: self.index, metrics, self._ttl_dir_expired)
        status.ttl_info = self.ttl.describe
        #: A resync asked for from outside the loop (the TTL keeper), by reason.
        self._resync_wanted: Optional[str] = None
        self._waiting_for_source = False
        #: Every event up to this source index is applied.
        self.index = 0
        self.persisted_index: Optional[int] = None
        #: Events up to here may have been applied before the last crash.
        self.replay_until = 0
        self.horizon: Optional[int] = None
        self.source_cluster_id: Optional[str] = None
        self._last_persist = 0.0
        self._persist_timer: Optional[IDelayedCall] = None
        self._persisting: Optional[defer.Deferred] = None
        self._unpersisted = 0
        self._running = True
        self._interruptible: Optional[defer.Deferred] = None

    # -- lifecycle -----------------------------------------------------------

    @defer.inlineCallbacks
    def run(self):
        """Replicate until stopped; fires with the process exit status."""
        try:
            yield self._start()
            yield self._replicate()
        except _Stopping:
            pass
        except MirrorFatal as e:
            return self._failed(str(e))
        except etcd.EtcdException as e:
            # Not transient and not expected: bad credentials, a role without
            # the permission, an answer we cannot use.  The message names the
            # request and the endpoint.
            return self._failed(f"{e}; replication stopped, last applied index {self.index}")
        except Exception as e:  # a bug: say so loudly, let systemd restart us
            self._shutdown_io()
            self.status.state = st.FAILED
            self.status.error(f"internal error: {e!r}")
            log.critical("internal error, stopping (last applied index %d)", self.index,
                         exc_info=True)
            return EXIT_CRASH
        self._shutdown_io()
        yield self._persist_quietly()
        self.status.state = st.STOPPED
        if self.persisted_index is None:
            log.info("stopped before replication started")
        else:
            log.info("stopped; last applied index %d", self.index)
        return EXIT_OK

    def _failed(self, message: str) -> int:
        self._shutdown_io()
        self.status.state = st.FAILED
        self.status.error(message)
        log.critical("%s", message)
        return EXIT_OPERATOR

    def stop(self) -> None:
        """Ask the loop to stop after the event in hand; interrupts waits."""
        if not self._running:
            return
        log.info("stop requested")
        self._running = False
        self.status.state = st.STOPPING
        if self._interruptible is not None:
            self._interruptible.cancel()

    def _shutdown_io(self) -> None:
        self.window.close()
        self.ttl.stop()
        if self._persist_timer is not None and self._persist_timer.active():
            self._persist_timer.cancel()

    def _check_running(self) -> None:
        if not self._running:
            raise _Stopping()

    @defer.inlineCallbacks
    def _start(self):
        """Safety checks, optional reload, and the index to start from."""
        src = yield self._retrying("probing the source", "source",
                                   lambda: self.source.probe(quorum=True))
        dst = yield self._retrying("probing the destination", "destination",
                                   lambda: self.destination.probe())
        guards.check_not_a_loop(src.cluster_id, dst.cluster_id, self.mapper)
        self.source_cluster_id = src.cluster_id
        self.status.saw_source_index(src.etcd_index)
        recorded = None
        if not self.options.reload:
            recorded = yield self._read_optional(self.store.source_id_key)
            guards.check_same_source(recorded, src.cluster_id, self.source.cluster.display)
        interrupted = yield self._read_optional(self.store.resync_marker_key)
        if self.options.reload or interrupted is not None:
            # Safe to write: a reload or resync however long is not a start-up check.
            self.status.checks_passed = True
            if not self.options.reload:
                log.warning("A resync (%s) was interrupted before it finished; "
                            "resuming it before replicating", interrupted)
            yield self._resync("reload" if self.options.reload else "interrupted")
            return
        yield self._load_index()
        guards.check_not_rolled_back(self.index, src.etcd_index)
        if recorded is None and src.cluster_id:
            yield self._record_source_id(src.cluster_id)
        self.status.checks_passed = True
        yield self._retrying(f"reading the TTL'd keys under {self.mapper.src_prefix!r}",
                             "source", self.ttl.load)

    def _read_optional(self, key: str) -> defer.Deferred:
        return self._retrying(f"reading {key!r}", "destination",
                              lambda: self.store.read_optional(key))

    @defer.inlineCallbacks
    def _record_source_id(self, cluster_id: str):
        yield self._retrying("recording the source cluster id", "destination",
                             lambda: self.store.put(self.store.source_id_key, cluster_id))
        self.source_cluster_id = cluster_id

    # -- index ---------------------------------------------------------------

    @defer.inlineCallbacks
    def _load_index(self):
        log.info("Current index read from %s", self.store.key)
        self.index = yield self._retrying(
            f"reading the replication index {self.store.key!r}", "destination",
            self.store.read_index)
        self.persisted_index = self.index
        self._last_persist = self.clock.seconds()
        self.horizon = yield self._retrying(
            "reading the replay horizon", "destination", self.store.read_horizon)
        self.replay_until = max(self.horizon or 0, self.index)
        if self.replay_until > self.index:
            log.info("events %d..%d may have been applied before the last stop; they are "
                     "replayed with relaxed checks", self.index + 1, self.replay_until)

    @defer.inlineCallbacks
    def _persist(self, index: int):
        yield self._retrying(
            f"writing the replication index {index} to {self.store.key!r}", "destination",
            lambda: self.store.write_index(index))
        self._persisted(index)

    def _persisted(self, index: int) -> None:
        if self.persisted_index is None or index > self.persisted_index:
            self.persisted_index = index
        self._last_persist = self.clock.seconds()

    def _flush_later(self, delay: Optional[float] = None) -> None:
        """Persist the applied index soon, without holding up the event loop."""
        if self._persist_timer is None or not self._persist_timer.active():
            self._persist_timer = self.clock.callLater(
                self.options.persist_interval if delay is None else delay, self._flush)

    def _flush(self) -> None:
        if self._persisting is not None or self.persisted_index is None:
            return
        index = self.index
        if index <= self.persisted_index:
            return
        self._unpersisted = 0

        def done(result: Any) -> None:
            self._persisting = None
            self._persisted(index)

        def failed(failure: Any) -> None:
            self._persisting = None
            log.warning("could not persist index %d (will retry): %s", index,
                        failure.getErrorMessage())
            if self._running:
                self._flush_later()

        self._persisting = self.store.write_index(index)
        self._persisting.addCallbacks(done, failed)  # may run at once: assign first

    @defer.inlineCallbacks
    def _persist_quietly(self):
        """On the way out: persist progress if there is any, never raise."""
        if self._persisting is not None:
            yield self._persisting
        if self.persisted_index is None or self.index <= self.persisted_index:
            return
        try:
            yield self.store.write_index(self.index)
            self.persisted_index = self.index
        except Exception as e:
            log.warning("could not persist index %d on the way out: %s", self.index, e)

    # -- the loop ------------------------------------------------------------

    @defer.inlineCallbacks
    def _replicate(self):
        self.status.replica_index = self.index
        self.status.state = st.REPLICATING
        self.window.reset(self.index + 1)
        log.info("Starting replication at %s", self.index)
        self.ttl.start()
        while True:
            self._check_running()
            if self._resync_wanted is not None:
                reason, self._resync_wanted = self._resync_wanted, None
                yield self._resync(reason)
                continue
            self._waiting_for_source = True
            try:
                outcome = yield self._retrying(
                    lambda: f"watching {self.mapper.src_prefix!r} from index {self.index + 1}",
                    "source", self.window.next)
            except etcd.EtcdEventIndexCleared as e:
                yield self._index_cleared(e)
                continue
            except defer.CancelledError:
                if self._resync_wanted is None:
                    raise
                continue
            finally:
                self._waiting_for_source = False
            guards.check_same_source(self.source_cluster_id, outcome.cluster_id,
                                     self.source.cluster.display)
            if isinstance(outcome, WatchProgress):
                if outcome.etcd_index < self.index:
                    yield self._check_rollback()
                yield self._progress(outcome.etcd_index)
                continue
            event = outcome.event
            self.status.saw_source_index(max(outcome.etcd_index, event.modifiedIndex))
            if event.modifiedIndex <= self.index:
                log.warning("ignoring stale delivery of %s: index %d is already applied",
                            describe(event), self.index)
                continue
            yield self._apply(event)

    @defer.inlineCallbacks
    def _check_rollback(self):
        """A member answered with an index below ours: lagging, or rolled back?"""
        src = yield self._retrying("probing the source", "source",
                                   lambda: self.source.probe(quorum=True))
        guards.check_not_rolled_back(self.index, src.etcd_index)

    @defer.inlineCallbacks
    def _progress(self, etcd_index: int):
        """An idle watch: nothing under the prefix up to ``etcd_index``."""
        self.status.saw_source_index(etcd_index)
        if etcd_index > self.index:
            self.index = etcd_index
            self.status.replica_index = etcd_index
        if self.persisted_index is None or self.index <= self.persisted_index:
            return
        wait = self._last_persist + self.options.progress_persist_interval - self.clock.seconds()
        # Far behind in persisted progress: a restart would start outside
        # etcd's 1000-event history, so persist now whatever the interval.
        far = self.index - self.persisted_index >= self.options.progress_persist_events
        if wait <= 0 or far:
            yield self._persist(self.index)
        else:
            self._flush_later(wait)

    @defer.inlineCallbacks
    def _apply(self, event: Event):
        index = event.modifiedIndex
        if log.isEnabledFor(logging.DEBUG):
            log.debug("event %s", describe(event))
        started = time.perf_counter()
        horizon = horizon_value(self.horizon, index, self.options.horizon_slack)
        if horizon is not None:
            yield self._retrying("writing the replay horizon", "destination",
                                 lambda: self.store.write_horizon(horizon))
            self.horizon = horizon
        waiting = self.gate.acquire()
        if waiting is not None:
            yield self._interruptibly(waiting)
        try:
            try:
                outcome = yield self._retrying(
                    lambda: f"applying {describe(event)}", "destination",
                    lambda: self.applier.apply(event, replaying=index <= self.replay_until))
                # Before the gate opens: the keeper decides on what is applied.
                self.ttl.applied(event, outcome)
            finally:
                self.gate.release()
        except Divergence as e:
            self.metrics.errors.labels(kind=type(e).__name__).inc()
            if self.options.on_divergence != "resync":
                raise MirrorFatal(
                    f"{e} Replication stopped; last applied index {self.index}. Find "
                    "what writes to the replica, then restart with --reload (or run "
                    "with --on-divergence resync).") from None
            log.warning("%s Resynchronising from a snapshot (--on-divergence resync).", e)
            yield self._resync("divergence")
            return
        except ExpiredEarly as e:
            self.metrics.errors.labels(kind=type(e).__name__).inc()
            log.warning("%s Resynchronising from a snapshot.", e)
            yield self._resync("ttl_expired")
            return
        except ApplyError as e:
            self.metrics.errors.labels(kind=type(e).__name__).inc()
            raise MirrorFatal(
                f"{e} Replication stopped; last applied index {self.index}. "
                "Check the destination, then restart with --reload.") from None
        except etcd.EtcdException as e:
            self.metrics.errors.labels(kind=type(e).__name__).inc()
            raise MirrorFatal(
                f"could not apply {describe(event)} on the destination: {e}. "
                f"Replication stopped; last applied index {self.index}.") from None
        self.index = index
        self._unpersisted += 1
        if self._unpersisted >= self.options.persist_events:
            self._flush()
        else:
            self._flush_later()
        self.metrics.write_latency.observe(time.perf_counter() - started)
        self.metrics.replicated_events.inc()
        self.metrics.events.labels(action=event.action, outcome=outcome.value).inc()
        if outcome is Outcome.IGNORED:
            self.metrics.ignored_events.inc()
        elif outcome is Outcome.REPLAYED:
            log.info("%s was already in effect on the destination (a replay, or a TTL "
                     "that expired there first)", describe(event))
        if self.options.event_log:
            log.info("Replicating key %s at index %d (%s, %s)", event.key, index,
                     event.action, EVENT_LOG_OUTCOMES[outcome])
        self.status.replica_index = index
        self.status.last_event_time = self.clock.seconds()
        if event.key == self.options.heartbeat_key and event.action in ("set", "update"):
            self.status.heartbeat_time = parse_heartbeat(event.value)

    @defer.inlineCallbacks
    def _index_cleared(self, error: Exception):
        message = (
            f"The current replication index {self.index} is not available anymore "
            f"in the etcd source cluster ({error})."
        )
        if not self.options.auto_resync:
            raise MirrorFatal(message + " Restart the process with --reload.")
        log.warning("%s Resynchronising from a snapshot.", message)
        yield self._resync("index_cleared")

    def _source_registered_a_watch(self) -> None:
        """Waiting for events on a quiet prefix is the loop moving too (systemd's
        watchdog): the source answers the watches that renew themselves."""
        if self._waiting_for_source:
            self.status.loop_heartbeat = self.clock.seconds()

    def _ttl_dir_expired(self, key: str) -> None:
        """The TTL keeper found a TTL'd directory run out on the replica: resync."""
        if self._resync_wanted is None:
            self._resync_wanted = "ttl_expired"
        if self._waiting_for_source and self._interruptible is not None:
            self._interruptible.cancel()

    @defer.inlineCallbacks
    def _resync(self, reason: str):
        """Reconcile the destination with a snapshot; the index becomes its index."""
        waiting = self.gate.acquire()
        if waiting is not None:
            yield self._interruptibly(waiting)
        try:
            yield self._resync_in_turn(reason)
        finally:
            self.gate.release()

    @defer.inlineCallbacks
    def _resync_in_turn(self, reason: str):
        self.status.state = st.RELOADING if reason == "reload" else st.RESYNCING
        log.info("Re-loading the etcd data from the source cluster (%s)", reason)
        self.window.close()
        started = time.perf_counter()
        read_at = self.clock.seconds()
        marker = self.store.resync_marker_key
        yield self._retrying(f"marking the resync in {marker!r}", "destination",
                             lambda: self.store.put(marker, reason))
        try:
            # Each request of the resync is retried on its own; nothing else in
            # it can fail for a transient reason.
            report = yield resync(self.source, self.destination, self.mapper,
                                  retry=self._retrying, log_writes=self.options.event_log)
        except etcd.EtcdException as e:
            self.metrics.errors.labels(kind=type(e).__name__).inc()
            raise MirrorFatal(f"resync ({reason}) failed: {e}") from None
        self.index = report.etcd_index
        self.ttl.track_snapshot(report.ttl_nodes, report.etcd_index, read_at, present=True)
        yield self._persist(self.index)
        if report.cluster_id:
            yield self._record_source_id(report.cluster_id)
        yield self._retrying(f"clearing {marker!r}", "destination",
                             lambda: self.store.delete(marker))
        self.replay_until = 0
        self.metrics.load_time.observe(time.perf_counter() - started)
        self.metrics.resyncs.labels(reason=reason).inc()
        self.status.saw_source_index(report.etcd_index)
        self.status.replica_index = self.index
        self.status.state = st.REPLICATING
        self.window.reset(self.index + 1)
        log.info(
            "resync (%s) done in %.2fs: %d source nodes, %d written, %d deleted; "
            "index %d", reason, time.perf_counter() - started, report.source_keys,
            report.writes, report.deletes, self.index)

    # -- waits a stop interrupts -----------------------------------------------

    @defer.inlineCallbacks
    def _interruptibly(self, d: defer.Deferred):
        """Wait for ``d``, but let :meth:`stop` cancel it."""
        self._interruptible = d
        try:
            result = yield d
        except defer.CancelledError:
            self._check_running()
            raise
        finally:
            self._interruptible = None
        return result
