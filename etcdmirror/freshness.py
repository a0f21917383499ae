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
from typing import Any, Callable, Optional

from twisted.internet import defer
from twisted.internet.interfaces import IReactorTime

from etcdmirror import sides
from etcdmirror.endpoints import Cluster
from etcdmirror.roles import Checkpoint, SourceReader
from etcdmirror.status import parse_heartbeat
from etcdmirror.keys import KeyMapper
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


class Heartbeat:
    """Writes the current time to a source key every ``interval`` seconds."""

    def __init__(self, source: Any, key: str, clock: IReactorTime,
                 interval: float, wall: Callable[[], float] = time.time) -> None:
        """``source``: what writes a text key there (``put(key, value)``): an
        ``EtcdClient``, or :class:`etcdmirror.sides.TextKeys` for a v3 source."""
        self.source = source
        self.key = key
        self.clock = clock
        self.interval = interval
        self.wall = wall
        self._periodic = Periodic(clock, self.beat)

    def start(self) -> None:
        self._periodic.start(self.interval)

    def stop(self) -> None:
        self._periodic.stop()

    @defer.inlineCallbacks
    def beat(self):
        """Write the heartbeat once; fires with None, never fails (the next beat retries)."""
        try:
            yield self.source.put(self.key, f"{self.wall():.3f}")
        except Exception as e:  # the next beat tries again; the age tells the rest
            log.warning("heartbeat to %r failed: %s", self.key, e)


class FreshnessTracker:
    """Learns when the destination was last identical to the source's quorum state.

    Every ``interval`` seconds: if the quorum index read last time is applied,
    the destination was fresh as of that read; publish it; read the quorum
    index again.
    """

    def __init__(self, source: SourceReader, store: Checkpoint, clock: IReactorTime,
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
        """One round (see the class docstring); fires with None, never fails."""
        try:
            self._promote()
            asked = self.wall()
            probe = yield self.source.position()
            if probe.etcd_index is not None:
                self._pending = FreshAsOf(asked, probe.etcd_index)
                self._promote()
            if self.fresh_as_of is not None and self.fresh_as_of != self._published:
                yield self.store.write_fresh_as_of(self.fresh_as_of.encode())
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


# -- etcd-mirror-freshness ------------------------------------------------------

#: Nagios plugin exit statuses.
OK, WARNING, CRITICAL, UNKNOWN = 0, 1, 2, 3


def check_freshness(reactor: Any, dst: Cluster, mapper: KeyMapper,
                    heartbeat_key: Optional[str], warning: float, critical: float,
                    dst_tls: Any, echo: Callable[[str], None],
                    dst_api: str = "v2") -> defer.Deferred:
    """The body of ``etcd-mirror-freshness``: one status line, a Nagios exit status.

    Reads the freshness the mirror publishes (or the replica of its
    heartbeat key) from the destination only.  The Deferred fails with
    :class:`SystemExit` (``task.react`` exits with it): 0 OK, 1 WARNING,
    2 CRITICAL or 3 UNKNOWN.
    """
    destination = sides.client_for(dst_api, dst, reactor, "destination", dst_tls)
    _, store = sides.replica_and_checkpoint(dst_api, destination, mapper)
    key = mapper.to_dst(heartbeat_key) if heartbeat_key else store.fresh_as_of_key

    def report(value: Optional[str]) -> None:
        if heartbeat_key:
            when, what = parse_heartbeat(value), f"heartbeat {key}"
        else:
            fresh = FreshAsOf.decode(value) if value is not None else None
            when = fresh.time if fresh else None
            what = f"identical to the source up to index {fresh.index}" if fresh else ""
        if when is None:
            echo(f"UNKNOWN: no usable value in {key} on {dst.display}")
            raise SystemExit(UNKNOWN)
        age = max(0.0, time.time() - when)
        code, word = ((CRITICAL, "CRITICAL") if age > critical else
                      (WARNING, "WARNING") if age > warning else (OK, "OK"))
        as_of = time.strftime('%Y-%m-%dT%H:%M:%SZ', time.gmtime(when))
        echo(f"{word}: replica age {age:.1f} s ({what}, as of {as_of}) "
             f"| age={age:.1f}s;{warning:g};{critical:g};0")
        raise SystemExit(code)

    def failed(failure: Any) -> None:
        failure.trap(Exception)
        echo(f"UNKNOWN: {failure.getErrorMessage()}")
        raise SystemExit(UNKNOWN)

    if heartbeat_key and dst_api == "v3":
        d = sides.TextKeys(destination).get_value(key)
    elif heartbeat_key:
        d = destination.get_or_none(key)
        d.addCallback(lambda node: node.value if node is not None else None)
    else:
        d = store.read_fresh_as_of()
    d.addCallbacks(report, failed)
    return d
