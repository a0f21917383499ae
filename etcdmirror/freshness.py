"""How old is the replica?  Heartbeats and published freshness.

A script acting on the replica's configuration must be able to tell that the
replica has been cut off from the primary (a split brain), or it may move data
the wrong way.  Two mechanisms answer "how old is what I read?" with one GET
of the destination:

* ``--heartbeat-key KEY`` (opt-in: it writes to the source): every few seconds
  the mirror writes the current time to that source key.  It replicates like
  any key, so its value on the destination is the source time of the last
  write that made it through.
* Without writing to the source, the mirror regularly reads the source's
  index through consensus (``quorum=true``) at time *t*; once it has applied
  everything up to that index, the destination was identical to the source's
  quorum state as of *t*.  It publishes *t* (and the index) in the sibling key
  ``<index key>.fresh-as-of`` on the destination.

Both are wall-clock times of the mirror's host: the hosts need NTP.
"""

import json
import logging
import time
from dataclasses import dataclass
from typing import Callable, Optional

from twisted.internet import defer
from twisted.internet.interfaces import IReactorTime

from etcdmirror.client import EtcdClient
from etcdmirror.indexstore import IndexStore
from etcdmirror.periodic import Periodic

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class FreshAsOf:
    """The destination held the source's quorum state up to ``index`` at ``time``."""

    time: float
    index: int

    def encode(self) -> str:
        return json.dumps({"time": round(self.time, 3), "index": self.index})

    @classmethod
    def decode(cls, text: str) -> Optional["FreshAsOf"]:
        try:
            doc = json.loads(text)
            return cls(float(doc["time"]), int(doc["index"]))
        except (ValueError, TypeError, KeyError):
            return None


def parse_heartbeat(text: Optional[str]) -> Optional[float]:
    """A heartbeat value (seconds since the epoch), or None if it is not one."""
    try:
        return float(text) if text is not None else None
    except ValueError:
        return None


class Heartbeat:
    """Writes the current time to a source key every ``interval`` seconds."""

    def __init__(self, source: EtcdClient, key: str, clock: IReactorTime,
                 interval: float, wall: Callable[[], float] = time.time) -> None:
        self.source = source
        self.key = key
        self.clock = clock
        self.interval = interval
        self.wall = wall
        self.failures = 0
        self._periodic = Periodic(clock, self.beat)

    def start(self) -> None:
        self._periodic.start(self.interval)

    def stop(self) -> None:
        self._periodic.stop()

    @defer.inlineCallbacks
    def beat(self):
        try:
            yield self.source.put(self.key, f"{self.wall():.3f}")
        except Exception as e:  # the next beat tries again; the age tells the rest
            self.failures += 1
            log.warning("heartbeat to %r failed: %s", self.key, e)


class FreshnessTracker:
    """Learns when the destination was last identical to the source's quorum state.

    Every ``interval`` seconds: if the quorum index read last time is applied,
    the destination was fresh as of that read; publish it; read the quorum
    index again.
    """

    def __init__(self, source: EtcdClient, store: IndexStore, clock: IReactorTime,
                 interval: float, applied_index: Callable[[], int],
                 on_fresh: Callable[[FreshAsOf], None] = lambda fresh: None,
                 wall: Callable[[], float] = time.time) -> None:
        self.on_fresh = on_fresh
        self.source = source
        self.store = store
        self.clock = clock
        self.interval = interval
        self.applied_index = applied_index
        self.wall = wall
        self.fresh_as_of: Optional[FreshAsOf] = None
        self._pending: Optional[FreshAsOf] = None
        self._published: Optional[FreshAsOf] = None
        self._periodic = Periodic(clock, self.check)

    @property
    def key(self) -> str:
        return self.store.key + ".fresh-as-of"

    def start(self) -> None:
        self._periodic.start(self.interval)

    def stop(self) -> None:
        self._periodic.stop()

    def age(self) -> Optional[float]:
        if self.fresh_as_of is None:
            return None
        return max(0.0, self.wall() - self.fresh_as_of.time)

    @defer.inlineCallbacks
    def check(self):
        try:
            self._promote()
            asked = self.wall()
            probe = yield self.source.probe(quorum=True)
            if probe.etcd_index is not None:
                self._pending = FreshAsOf(asked, probe.etcd_index)
                self._promote()
            if self.fresh_as_of is not None and self.fresh_as_of != self._published:
                yield self.store.put(self.key, self.fresh_as_of.encode())
                self._published = self.fresh_as_of
        except Exception as e:  # next round; the age keeps growing meanwhile
            log.debug("freshness check failed: %s", e)

    def _promote(self) -> None:
        """The last quorum read is applied: the destination was fresh as of it."""
        pending = self._pending
        if pending is not None and self.applied_index() >= pending.index:
            self.fresh_as_of = pending
            self._pending = None
            self.on_fresh(pending)
