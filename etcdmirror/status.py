"""What the mirror is doing right now, in one object that everyone reads.

The replication controller is the only writer; the HTTP interface and the
Prometheus gauges only read it.  Nothing here is module-level: each mirror
gets its own :class:`MirrorStatus`, passed in.
"""

import time
from dataclasses import dataclass, field
from enum import Enum
from typing import Any, Callable, Dict, Optional

class State(Enum):
    """What the mirror is doing; the value is what ``/status`` and the metrics say."""

    STARTING = "starting"
    RELOADING = "reloading"
    RESYNCING = "resyncing"
    REPLICATING = "replicating"
    RETRYING = "retrying"
    #: ``--ha``: another host holds the lock; this one waits to take over.
    STANDBY = "standby"
    STOPPING = "stopping"
    STOPPED = "stopped"
    FAILED = "failed"


class Role(Enum):
    """Whether this mirror writes the replica (``--ha``: only the lock's holder does)."""

    ACTIVE = "active"
    STANDBY = "standby"


def parse_heartbeat(text: Optional[str]) -> Optional[float]:
    """A heartbeat value (seconds since the epoch), or None if it is not one."""
    try:
        return float(text) if text is not None else None
    except ValueError:
        return None


@dataclass
class MirrorStatus:
    """Indexes, state and last error of one mirror instance."""

    source: str
    destination: str
    src_prefix: str
    dst_prefix: str
    index_key: str
    version: str = ""
    state: State = State.STARTING
    #: Without ``--ha`` always active.
    role: Role = Role.ACTIVE
    source_index: int = 0
    replica_index: int = 0
    last_error: Optional[str] = None
    last_error_time: Optional[float] = None
    last_event_time: Optional[float] = None
    #: Source time of the last heartbeat applied to the destination.
    heartbeat_time: Optional[float] = None
    #: The destination was identical to the source's quorum state at this time.
    fresh_as_of: Optional[float] = None
    #: /healthz turns 503 when the replica is older than this (0: never).
    max_replica_age: float = 0.0
    #: Keys found different by the last periodic verify (None: not checked).
    divergent_keys: Optional[int] = None
    last_verify_time: Optional[float] = None
    #: The start-up safety checks passed (systemd: READY=1).
    checks_passed: bool = False
    #: When the replication loop last moved (a request began or ended, a retry
    #: was scheduled, an event or progress came): a loop that stops moving is
    #: wedged, and systemd's watchdog is no longer kicked.
    loop_heartbeat: Optional[float] = None
    started_at: float = field(default_factory=time.time)
    clock: Callable[[], float] = field(default=time.time, repr=False)
    #: How the source is being read right now (set by the controller: the
    #: watch window's :meth:`~etcdmirror.watcher.WatchWindow.describe`).
    watch_info: Optional[Callable[[], Dict[str, Any]]] = field(default=None, repr=False)
    #: The TTL keeper's counts (its :meth:`~etcdmirror.ttlkeeper.TtlKeeper.describe`).
    ttl_info: Optional[Callable[[], Dict[str, Any]]] = field(default=None, repr=False)
    #: Events in flight on the destination (:meth:`~etcdmirror.pipeline.EventPipeline.describe`).
    pipeline_info: Optional[Callable[[], Dict[str, Any]]] = field(default=None, repr=False)
    #: ``--ha``: the lock (its :meth:`~etcdmirror.halock.HaLock.describe`).
    ha_info: Optional[Callable[[], Dict[str, Any]]] = field(default=None, repr=False)

    @property
    def lag(self) -> int:
        """Source index minus replica index, as 0.0.12's ``/lag`` reports it."""
        return max(0, self.source_index - self.replica_index)

    @property
    def heartbeat_age(self) -> Optional[float]:
        """Seconds since the source wrote the last heartbeat the replica has."""
        if self.heartbeat_time is None:
            return None
        return max(0.0, self.clock() - self.heartbeat_time)

    @property
    def replica_age(self) -> Optional[float]:
        """Seconds since the replica was last known identical to the source."""
        ages = [a for a in (self.heartbeat_age, self._fresh_age) if a is not None]
        return min(ages) if ages else None

    @property
    def _fresh_age(self) -> Optional[float]:
        return None if self.fresh_as_of is None else max(0.0, self.clock() - self.fresh_as_of)

    @property
    def stale(self) -> bool:
        if self.max_replica_age <= 0:
            return False
        age = self.replica_age
        return age is None or age > self.max_replica_age

    @property
    def healthy(self) -> bool:
        """Replicating and fresh; a standby that can see the lock is healthy too."""
        if self.state is State.STANDBY:
            return self.checks_passed
        return self.state is State.REPLICATING and not self.stale

    def saw_source_index(self, index: Optional[int]) -> None:
        if index is not None and index > self.source_index:
            self.source_index = index

    def error(self, message: str) -> None:
        self.last_error = message
        self.last_error_time = self.clock()

    def as_dict(self) -> Dict[str, Any]:
        return {
            "state": self.state.value,
            "role": self.role.value,
            "healthy": self.healthy,
            "version": self.version,
            "source": {"endpoints": self.source, "prefix": self.src_prefix},
            "destination": {"endpoints": self.destination, "prefix": self.dst_prefix,
                            "index_key": self.index_key},
            "source_index": self.source_index,
            "replica_index": self.replica_index,
            "lag": self.lag,
            "last_event_time": self.last_event_time,
            "divergent_keys": self.divergent_keys,
            "heartbeat_time": self.heartbeat_time,
            "fresh_as_of": self.fresh_as_of,
            "replica_age_seconds": self.replica_age,
            "stale": self.stale,
            "last_verify_time": self.last_verify_time,
            "last_error": self.last_error,
            "last_error_time": self.last_error_time,
            "started_at": self.started_at,
            "loop_heartbeat": self.loop_heartbeat,
            "watch": self.watch_info() if self.watch_info is not None else None,
            "ttl": self.ttl_info() if self.ttl_info is not None else None,
            "pipeline": self.pipeline_info() if self.pipeline_info is not None else None,
            "ha": self.ha_info() if self.ha_info is not None else None,
        }
