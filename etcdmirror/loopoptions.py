"""What the replication loop is told to do, and how it reports each applied event.

:class:`Options` is the loop's part of the command line (the daemon's own
settings are :class:`etcdmirror.daemon.DaemonOptions`);
:func:`record_applied` is what one applied event leaves behind: the event
log's line (0.0.12's wording), the counters and the status.
"""

import logging
from dataclasses import dataclass, field
from typing import Optional

from twisted.internet.interfaces import IReactorTime

from etcdmirror import status as st
from etcdmirror.checkpoint import BatchSettings
from etcdmirror.events import Event, Outcome, describe
from etcdmirror.guards import DEFAULT_MAX_RESYNC_DELETES, DeleteLimit
from etcdmirror.metrics import Metrics

log = logging.getLogger("etcdmirror.controller")


#: How the event log words each outcome (after 0.0.12's "Replicating key K at index N").
EVENT_LOG_OUTCOMES = {Outcome.APPLIED: "applied",
                      Outcome.REPLAYED: "replay, already in effect",
                      Outcome.IGNORED: "ignored by regex",
                      Outcome.TTL_REWRITE: "TTL rewrite"}


@dataclass
class Options:
    """What the replication loop does (the daemon's own settings: :mod:`etcdmirror.daemon`)."""

    reload: bool = False
    #: One INFO line per event ("Replicating key K at index N (action, outcome)").
    event_log: bool = True
    #: On a cleared watch index: resync by ourselves (True) or exit 1 (False).
    auto_resync: bool = True
    #: A conditional event that fails on the destination: "fail" or "resync".
    on_divergence: str = "fail"
    #: The source key the mirror writes its heartbeat to (None: no heartbeat).
    heartbeat_key: Optional[str] = None
    #: Replica keys an automatic resync (any but ``reload``) may delete.
    max_resync_deletes: DeleteLimit = DEFAULT_MAX_RESYNC_DELETES
    #: How often the applied index is written.
    batch: BatchSettings = field(default_factory=BatchSettings)


def record_applied(event: Event, outcome: Outcome, elapsed: float, status: st.MirrorStatus,
                   metrics: Metrics, clock: IReactorTime, options: Options) -> None:
    """Count, log and show one event applied in ``elapsed`` seconds."""
    metrics.write_latency.observe(elapsed)
    metrics.replicated_events.inc()
    metrics.events.labels(action=event.action, outcome=outcome.value).inc()
    if outcome is Outcome.IGNORED:
        metrics.ignored_events.inc()
    elif outcome is Outcome.REPLAYED:
        log.info("%s was already in effect on the destination (a replay, or a TTL "
                 "that expired there first)", describe(event))
    if options.event_log:
        log.info("Replicating key %s at index %d (%s, %s)", event.key, event.modifiedIndex,
                 event.action, EVENT_LOG_OUTCOMES[outcome])
    status.replica_index = event.modifiedIndex
    status.last_event_time = status.loop_heartbeat = clock.seconds()
    if event.key == options.heartbeat_key and event.action in ("set", "update", "put"):
        status.heartbeat_time = st.parse_heartbeat(event.value)

