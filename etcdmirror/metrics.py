"""Prometheus metrics, with etcd-mirror 0.0.12's names kept as they were.

0.0.12 exported ``etcdmirror_replicated_events``, ``etcdmirror_write_latency``
``{url,prefix}``, ``etcdmirror_lag{url,prefix}`` and ``etcdmirror_load_time``,
and, because it used prometheus_client's default registry, the ``process_*``
and ``python_*`` families too; dashboards and alerts use those names, so they
stay.  The rest is what an on-call needs to tell *why* a mirror is behind.
Every metric lives in the registry passed in, never in prometheus_client's
global one.  Labelled counters start with a 0 series for every known label,
so that ``rate()`` and alerts work before the first event.
"""

import time
from typing import Any, Callable, Dict, Iterator, Optional

from prometheus_client import (
    GC_COLLECTOR, CollectorRegistry, Counter, Gauge, Histogram, Summary)
from prometheus_client.core import CounterMetricFamily
from prometheus_client.gc_collector import GCCollector
from prometheus_client.platform_collector import PlatformCollector
from prometheus_client.process_collector import ProcessCollector

from etcdmirror.events import ACTIONS, Outcome
from etcdmirror.status import MirrorStatus, Role, State

NAMESPACE = "etcdmirror"

#: Why a resync ran (``etcdmirror_resyncs_total{reason}``).
RESYNC_REASONS = ("reload", "index_cleared", "compacted", "divergence", "interrupted",
                  "ttl_expired")
#: Which cluster a retried request went to (``etcdmirror_retries_total{side}``).
SIDES = ("source", "destination")
#: Error kinds shown from the start (``etcdmirror_errors_total{kind}``); others
#: appear when they first happen.
ERROR_KINDS = ("EtcdUnavailable", "EtcdTimeout", "BadResponse", "Divergence",
               "ExpiredEarly", "UnknownAction")


class _ProcessCollector(ProcessCollector):
    """``process_*`` also under systemd's ``ProcSubset=pid``, which hides /proc/stat.

    prometheus_client reads the boot time from /proc/stat and exports no
    ``process_*`` at all without it; the kernel's boot-time clock gives the
    same number.
    """

    def _boot_time(self) -> float:
        try:
            return super()._boot_time()
        except OSError:
            return time.time() - time.clock_gettime(time.CLOCK_BOOTTIME)


class _FromStatus:
    """A counter whose value another object keeps (a custom collector)."""

    def __init__(self, name: str, documentation: str, value: Callable[[], float]) -> None:
        self.name, self.documentation, self.value = name, documentation, value

    def collect(self) -> Iterator[CounterMetricFamily]:
        yield CounterMetricFamily(self.name, self.documentation, value=self.value())

    def describe(self) -> Iterator[CounterMetricFamily]:
        return self.collect()


def _watch(status: MirrorStatus, field: str) -> float:
    info: Optional[Dict[str, Any]] = status.watch_info() if status.watch_info else None
    return float(info.get(field, 0)) if info else 0.0


class Metrics:
    """All metrics of one mirror instance."""

    def __init__(self, registry: CollectorRegistry, status: MirrorStatus,
                 url: str, prefix: str) -> None:
        self.registry = registry
        # What prometheus_client's default registry holds, as in 0.0.12.
        _ProcessCollector(registry=registry)
        PlatformCollector(registry=registry)
        if GC_COLLECTOR is not None:  # CPython only
            GCCollector(registry=registry)
        ns = dict(namespace=NAMESPACE, registry=registry)
        # -- 0.0.12's metrics ------------------------------------------------
        self.replicated_events = Counter(
            "replicated_events", "Replica events treated", **ns)
        self.write_latency = Histogram(
            "write_latency", "Etcd write latencies", ["url", "prefix"], **ns
        ).labels(url=url, prefix=prefix)
        self.lag = Gauge(
            "lag", "Calculated replica lag", ["url", "prefix"], **ns
        ).labels(url=url, prefix=prefix)
        self.lag.set_function(lambda: status.lag)
        self.load_time = Summary("load_time", "Dump and load time (seconds)", **ns)
        # -- additions ---------------------------------------------------------
        self.events = Counter(
            "events", "Source events by action and outcome "
            "(applied; replayed: already in effect on the destination; ignored)", ["action", "outcome"], **ns)
        self.ignored_events = Counter(
            "ignored_events", "Events matching --src-ignore-keys-regex", **ns)
        self.errors = Counter("errors", "Errors by kind", ["kind"], **ns)
        self.resyncs = Counter(
            "resyncs", "Full reconciliations with the source, by reason", ["reason"], **ns)
        self.retries = Counter(
            "retries", "Requests retried after a transient error, by side", ["side"], **ns)
        for counter, label, values in ((self.errors, "kind", ERROR_KINDS),
                                       (self.resyncs, "reason", RESYNC_REASONS),
                                       (self.retries, "side", SIDES)):
            for value in values:
                counter.labels(**{label: value})
        for action in ACTIONS:
            for outcome in Outcome:
                if outcome is not Outcome.TTL_REWRITE or action in ("update", "compareAndSwap"):
                    self.events.labels(action=action, outcome=outcome.value)
        last_error = Gauge(
            "last_error_timestamp_seconds", "When the last error was recorded "
            "(0: none since start); /status has the message", **ns)
        last_error.set_function(lambda: status.last_error_time or 0.0)
        registry.register(_FromStatus(
            NAMESPACE + "_watch_stream_fallbacks", "Times the streaming watch was given "
            "up for one request per event because answers were held back (a buffering "
            "proxy)", lambda: _watch(status, "stream_fallbacks")))
        source_index = Gauge(
            "source_index", "Latest X-Etcd-Index seen from the source", **ns)
        source_index.set_function(lambda: status.source_index)
        replica_index = Gauge(
            "replica_index", "Source index the replica is known complete up to", **ns)
        replica_index.set_function(lambda: status.replica_index)
        state = Gauge("state", "1 for the mirror's current state", ["state"], **ns)
        for each in State:
            state.labels(state=each.value).set_function(
                lambda each=each: float(status.state is each))
        role = Gauge("role", "1 for this mirror's role: active (writes the replica) or "
                     "standby (--ha: waits for the lock)", ["role"], **ns)
        for each in Role:
            role.labels(role=each.value).set_function(
                lambda each=each: float(status.role is each))
        self.ha_takeovers = Counter(
            "ha_takeovers", "Times this mirror took the HA lock and became active", **ns)
        self.ha_stepdowns = Counter(
            "ha_stepdowns", "Times this mirror lost the HA lock and stepped down", **ns)
        last_event = Gauge(
            "last_event_timestamp_seconds", "When the last event was applied", **ns)
        last_event.set_function(lambda: status.last_event_time or 0.0)
        nan = float("nan")
        heartbeat_age = Gauge(
            "heartbeat_age_seconds", "Age of the last --heartbeat-key value the replica "
            "has (NaN: no heartbeat)", **ns)
        heartbeat_age.set_function(
            lambda: nan if status.heartbeat_age is None else status.heartbeat_age)
        # The same under its first name, until 1.0: too close to 0.0.12's
        # etcdmirror_lag (events, not seconds) to keep for good.
        lag_seconds = Gauge(
            "lag_seconds", "Deprecated, removed in 1.0: use "
            "etcdmirror_heartbeat_age_seconds", **ns)
        lag_seconds.set_function(
            lambda: nan if status.heartbeat_age is None else status.heartbeat_age)
        replica_age = Gauge(
            "replica_age_seconds", "Seconds since the replica was last known identical "
            "to the source's quorum state (NaN: not yet known)", **ns)
        replica_age.set_function(
            lambda: nan if status.replica_age is None else status.replica_age)
        # -- the TTL keeper (etcdmirror.ttlkeeper) ------------------------------
        self.ttl_tracked = Gauge(
            "ttl_tracked_keys", "Keys and directories under the prefix with a TTL, whose "
            "replica copies the mirror keeps alive", **ns)
        self.ttl_refreshes = Counter(
            "ttl_refreshes", "Replica copies whose TTL was refreshed because the source's "
            "was renewed without an event", **ns)
        self.ttl_expired_late = Counter(
            "ttl_expired_late", "Replica copies found expired while the source's copy "
            "lived (written again; a directory is resynchronised)", **ns)
        self.ttl_source_reads = Counter(
            "ttl_source_reads", "Source reads made to learn TTLs", **ns)
        divergent = Gauge(
            "divergent_keys", "Keys that differ from the source in the last periodic "
            "verify (NaN: not verified)", **ns)
        divergent.set_function(
            lambda: float("nan") if status.divergent_keys is None
            else float(status.divergent_keys))
