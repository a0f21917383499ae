"""What the mirror is doing right now, in one object that everyone reads.

The replication controller is the only writer; the HTTP interface and the
Prometheus gauges only read it.  Nothing here is module-level: each mirror
gets its own :class:`MirrorStatus`, passed in.
"""

import time
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, Optional

STARTING = "starting"
RELOADING = "reloading"
RESYNCING = "resyncing"
REPLICATING = "replicating"
RETRYING = "retrying"
STOPPING = "stopping"
STOPPED = "stopped"
FAILED = "failed"
STATES = (STARTING, RELOADING, RESYNCING, REPLICATING, RETRYING, STOPPING, STOPPED, FAILED)


@dataclass
class MirrorStatus:
    """Indexes, state and last error of one mirror instance."""

    source: str
    destination: str
    src_prefix: str
    dst_prefix: str
    index_key: str
    version: str = ""
    state: str = STARTING
    source_index: int = 0
    replica_index: int = 0
    last_error: Optional[str] = None
    last_error_time: Optional[float] = None
    last_event_time: Optional[float] = None
    #: Keys found different by the last periodic verify (None: not checked).
    divergent_keys: Optional[int] = None
    last_verify_time: Optional[float] = None
    started_at: float = field(default_factory=time.time)
    clock: Callable[[], float] = field(default=time.time, repr=False)

    @property
    def lag(self) -> int:
        """Source index minus replica index, as 0.0.12's ``/lag`` reports it."""
        return max(0, self.source_index - self.replica_index)

    @property
    def healthy(self) -> bool:
        return self.state == REPLICATING

    def saw_source_index(self, index: Optional[int]) -> None:
        if index is not None and index > self.source_index:
            self.source_index = index

    def error(self, message: str) -> None:
        self.last_error = message
        self.last_error_time = self.clock()

    def as_dict(self) -> Dict[str, Any]:
        return {
            "state": self.state,
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
            "last_verify_time": self.last_verify_time,
            "last_error": self.last_error,
            "last_error_time": self.last_error_time,
            "started_at": self.started_at,
        }
