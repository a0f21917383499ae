"""The daemon: wires clients, controller, HTTP interface and side jobs together.

Everything is built here and passed in; nothing is module-level state.  The
command line (:mod:`etcdmirror.cli`) only parses and validates.
"""

import logging
import signal
from dataclasses import dataclass, field, replace
from functools import partial
from typing import Any, Callable, List, Optional, Tuple

from prometheus_client import CollectorRegistry
from twisted.internet.error import CannotListenError

from etcdmirror import __version__
from etcdmirror import sides
from etcdmirror.client import EtcdClient
from etcdmirror.controller import Options, ReplicationController
from etcdmirror.endpoints import Cluster
from etcdmirror.errors import EXIT_OK, EXIT_OPERATOR
from etcdmirror.freshness import FreshnessTracker, Heartbeat
from etcdmirror.ha import HaSupervisor
from etcdmirror.halock import HaLock, HaSettings, Lease, holder_name
from etcdmirror.indexstore import IndexStore
from etcdmirror.keys import KeyMapper, probe_key
from etcdmirror.metrics import Metrics
from etcdmirror.sdnotify import Notifier, SystemdReporter
from etcdmirror.status import MirrorStatus, Role
from etcdmirror.pipeline import PIPELINE_DEPTH
from etcdmirror.transport import make_pool
from etcdmirror.ttlkeeper import CONCURRENCY as TTL_CONCURRENCY
from etcdmirror.ttlkeeper import TtlKeeper
from etcdmirror.verify import PeriodicVerifier
from etcdmirror.watcher import WatchSettings
from etcdmirror.web import make_site

log = logging.getLogger("etcdmirror")

#: How long a stop may wait for the request in hand before giving up on it.
STOP_GRACE_SECONDS = 4.0

#: Source connections the side jobs may hold at once (freshness probe,
#: heartbeat, periodic verify), beyond the watch window's and the TTL keeper's.
SIDE_JOB_CONNECTIONS = 2


@dataclass
class DaemonOptions:
    """The process around the replication loop: reading, serving, side jobs, TLS."""

    #: How the source is watched (``--watch-*``).
    watch: WatchSettings = field(default_factory=WatchSettings)
    #: Compare the replica with the source every so many seconds (0: never).
    verify_interval: float = 0.0
    #: How often to write the heartbeat and publish freshness (seconds).
    heartbeat_interval: float = 5.0
    #: /healthz is 503 when the replica is older than this (0: never).
    max_replica_age: float = 0.0
    #: Address the HTTP interface binds to ("": all, as 0.0.12 did).
    listen_address: str = ""
    #: TLS policies (IPolicyForHTTPS) per side; None: the system's trust store.
    src_tls: Any = None
    dst_tls: Any = None
    #: ``--ha``: the lock's TTL in seconds (None: no HA, always active).
    ha_ttl: Optional[int] = None
    #: ``--write-pipeline``: event writes in flight at once (``http://`` only).
    write_pipeline: int = PIPELINE_DEPTH
    #: ``--src-api`` and ``--dst-api``: "v2" or "v3" (:mod:`etcdmirror.sides`).
    src_api: str = "v2"
    dst_api: str = "v2"


def run(src: Cluster, dst: Cluster, mapper: KeyMapper, dst_prefix_arg: str, port: int,
        options: Options, daemon: DaemonOptions) -> int:
    """Wire the mirror together on the global reactor and run it; returns the exit code."""
    from twisted.internet import reactor

    status = MirrorStatus(source=src.display, destination=dst.display,
                          src_prefix=mapper.src_prefix, dst_prefix=mapper.dst_prefix,
                          index_key=mapper.index_key, version=__version__,
                          max_replica_age=daemon.max_replica_age)
    registry = CollectorRegistry()
    metrics = Metrics(registry, status, url=dst.endpoints[0].url, prefix=dst_prefix_arg)
    ha = None if daemon.ha_ttl is None else HaSettings(ttl=daemon.ha_ttl)
    # --ha: every write to the destination checks the lease first.
    lease = None if ha is None else Lease(IndexStore.lock_key_for(mapper), ha)
    source, destination = _clients(reactor, src, dst, mapper, daemon, lease)
    # What keeps replica keys alive while the source's live, without events:
    # a v2 replica's TTLs (TtlKeeper), a v3 replica's leases (LeaseKeeper).
    keeper: Any = partial(TtlKeeper, source, destination, mapper, reactor, metrics=metrics)
    leases = None
    if daemon.dst_api == "v3":
        leases = sides.lease_keeper(daemon.src_api, source, destination, mapper, reactor)
        keeper = partial(_the, leases)
    replica, store = sides.replica_and_checkpoint(
        daemon.dst_api, destination, mapper, daemon.write_pipeline, exclusive=ha is not None,
        leases=leases)
    if daemon.src_api == "v3":
        # A v3 source proves quiet at most once per idle period: each proof is
        # written as it comes, not held back for the batch interval.
        options = replace(options, batch=replace(
            options.batch, progress_persist_interval=min(
                options.batch.progress_persist_interval, daemon.watch.idle_timeout)))
    controller = ReplicationController(
        partial(sides.source_reader, daemon.src_api, source, mapper.src_prefix, reactor,
                daemon.watch),
        replica, store, mapper, status, metrics, reactor, options,
        transient=sides.is_transient, make_keeper=keeper)
    try:
        listening = reactor.listenTCP(port, make_site(status, registry, reactor),
                                      interface=daemon.listen_address)
    except CannotListenError as e:
        log.critical("cannot serve the HTTP interface on port %d: %s", port, e.socketError)
        return EXIT_OPERATOR
    log.info("etcd-mirror %s: %s%s -> %s%s; HTTP interface on port %d%s", __version__,
             src.display, mapper.src_prefix, dst.display, mapper.dst_root,
             listening.getHost().port,
             f" (address {daemon.listen_address})" if daemon.listen_address else "")

    side_jobs = _side_jobs(reactor, source, controller, status, options, daemon)
    runner: Any = controller
    if ha is None:
        for start, _ in side_jobs:
            reactor.callWhenRunning(start)
    else:
        # The lock's requests have their own connections and no fence.
        lock_client = EtcdClient(dst, reactor, make_pool(reactor, 2), name="destination",
                                 timeout=ha.refresh_interval, tls=daemon.dst_tls)
        lock = HaLock(lock_client, store.lock_key, holder_name(listening.getHost().port),
                      lease, reactor, ha)
        runner = HaSupervisor(lock, controller, status, metrics, reactor,
                              on_role=partial(_follow_role, side_jobs))
        log.info("--ha: this mirror is %s; it replicates while it holds %s (TTL %d s)",
                 lock.holder, lock.key, ha.ttl)

    exit_code: List[int] = []

    def finished(code: int) -> None:
        exit_code.append(code)
        if reactor.running:
            reactor.stop()

    def shutdown(signum: int) -> None:
        log.info("received %s, stopping", signal.Signals(signum).name)
        runner.stop()
        # Never hang on a request in hand: what was not acknowledged is
        # simply replayed at the next start.
        reactor.callLater(STOP_GRACE_SECONDS, finished, EXIT_OK)

    def on_signal(signum: int, frame: Any) -> None:
        reactor.callFromThread(shutdown, signum)

    for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        signal.signal(sig, on_signal)

    reactor.callWhenRunning(lambda: runner.run().addBoth(finished))
    _start_systemd_reporter(reactor, status)
    reactor.run(installSignalHandlers=False)
    return exit_code[0] if exit_code else EXIT_OK


def _clients(reactor: Any, src: Cluster, dst: Cluster, mapper: KeyMapper,
             daemon: DaemonOptions, lease: Optional[Lease]) -> Tuple[Any, Any]:
    """The source's and the destination's clients, for their APIs."""
    if daemon.src_api == "v3":
        # One watch, the lease keeper's reads and the side jobs.
        source: Any = sides.v3_client(src, reactor, "source", daemon.src_tls,
                                      make_pool(reactor, 2 + SIDE_JOB_CONNECTIONS))
    else:
        # Every watch in flight holds a connection, and so does each of the TTL
        # keeper's reads; keep them all persistent.
        connections = (daemon.watch.connections_needed + TTL_CONCURRENCY
                       + SIDE_JOB_CONNECTIONS)
        source = EtcdClient(src, reactor, make_pool(reactor, connections), name="source",
                            probe_key=probe_key(mapper.src_prefix), tls=daemon.src_tls)
    if daemon.dst_api == "v3":
        return source, sides.v3_client(dst, reactor, "destination", daemon.dst_tls,
                                       make_pool(reactor))
    return source, EtcdClient(dst, reactor, make_pool(reactor), name="destination",
                              probe_key=IndexStore.probe_key_for(mapper), tls=daemon.dst_tls,
                              fence=lease)


def _the(keeper: Any, *, applied_index: Any, on_dir_expired: Any, **hooks: Any) -> Any:
    """``make_keeper`` for a v3 replica's lease keeper, built beforehand."""
    keeper.bind(applied_index, on_dir_expired)
    return keeper


def _follow_role(side_jobs: List[Tuple[Callable[[], None], Callable[[], None]]],
                 role: Role) -> None:
    """--ha: the jobs that write or compare run on the active mirror only."""
    for start, stop in side_jobs:
        (start if role is Role.ACTIVE else stop)()


def _start_systemd_reporter(reactor: Any, status: MirrorStatus) -> None:
    notifier = Notifier()
    systemd = SystemdReporter(notifier, status, reactor)
    reactor.callWhenRunning(systemd.start)
    reactor.addSystemEventTrigger("before", "shutdown", systemd.stop)


def _side_jobs(reactor: Any, source: Any, controller: ReplicationController,
               status: MirrorStatus, options: Options, daemon: DaemonOptions
               ) -> List[Tuple[Callable[[], None], Callable[[], None]]]:
    """Freshness, the opt-in heartbeat and the periodic verify: (start, stop) each."""

    def fresh(as_of: Any) -> None:
        status.fresh_as_of = as_of.time

    tracker = FreshnessTracker(controller.source, controller.store, reactor,
                               daemon.heartbeat_interval, lambda: controller.index,
                               on_fresh=fresh)
    jobs = [(tracker.start, tracker.stop)]
    if options.heartbeat_key:
        keys = sides.TextKeys(source) if daemon.src_api == "v3" else source
        heartbeat = Heartbeat(keys, options.heartbeat_key, reactor, daemon.heartbeat_interval)
        jobs.append((heartbeat.start, heartbeat.stop))

    if daemon.verify_interval > 0:
        def report(found: List[Any]) -> None:
            status.divergent_keys = len(found)
            status.last_verify_time = reactor.seconds()
            for difference in found[:20]:
                log.warning("verify: %s", difference.describe())
            if found:
                log.warning("verify: %d keys differ from the source", len(found))

        verifier = PeriodicVerifier(controller.source, controller.replica, controller.mapper,
                                    reactor, lambda: controller.index, report)
        jobs.append((partial(verifier.start, daemon.verify_interval), verifier.stop))
    return jobs
