"""When the applied index is written to the :class:`~etcdmirror.roles.Checkpoint`.

Writing the index after every event would double the destination's writes.
So the index is written in batches (every ``persist_events`` events or
``persist_interval`` seconds after the first event not yet written, on idle
progress and on the way out), and it is never ahead of what was applied.
After a crash, the events between the written index and the *replay
horizon* may have been applied already; the horizon is written before any
event above it is applied (with slack, so that one write covers the next
``horizon_slack`` indexes), and events up to it are replayed with relaxed
checks (:class:`~etcdmirror.applier.EventApplier`).

Index progress learnt from quiet watches is written less often, but at once
when it moved far: a restart must not land outside the source's history.

An *atomic* checkpoint (etcd v3: :mod:`etcdmirror.v3indexstore`) moves with
each event, in the event's own transaction: nothing is batched and no
horizon is written.  Progress is still written here, but only from the loop
(never from a timer), because it is a compared transaction too and must not
run beside an event's.
"""

import logging
from dataclasses import dataclass
from typing import Any, Callable, Optional

from twisted.internet import defer
from twisted.internet.interfaces import IDelayedCall, IReactorTime

from etcdmirror.errors import LostLease
from etcdmirror.retry import Retrier
from etcdmirror.roles import Checkpoint

log = logging.getLogger(__name__)


@dataclass
class BatchSettings:
    """How often the applied index is written."""

    #: Write the applied index after this many events ...
    persist_events: int = 500
    #: ... or this many seconds after the first event not yet written.
    persist_interval: float = 0.5
    #: Write index progress learnt from idle watches at most this often ...
    progress_persist_interval: float = 10.0
    #: ... or as soon as it moved this many indexes ahead of the written one.
    progress_persist_events: int = 500
    #: A replay horizon covers this many indexes past the event that wrote it.
    horizon_slack: int = 1000


def horizon_value(current: Optional[int], event_index: int, slack: int) -> Optional[int]:
    """The horizon to write before applying ``event_index``, or None if covered."""
    if current is not None and event_index <= current:
        return None
    return event_index + slack


class Checkpointer:
    """Keeps the checkpoint's index behind, and close to, the applied index."""

    def __init__(self, checkpoint: Checkpoint, clock: IReactorTime, retrying: Retrier,
                 applied_index: Callable[[], int], settings: Optional[BatchSettings] = None,
                 running: Callable[[], bool] = lambda: True,
                 on_lost: Callable[[str], None] = lambda reason: None) -> None:
        """``on_lost(reason)``: a background write of the index found that this
        mirror may no longer write (:class:`~etcdmirror.errors.LostLease`)."""
        self.checkpoint = checkpoint
        self.clock = clock
        self.settings = settings or BatchSettings()
        self._retrying = retrying
        self._applied_index = applied_index
        self._running = running
        self._on_lost = on_lost
        self.atomic = bool(getattr(checkpoint, "atomic", False))
        #: The index last written (None: replication has not started).
        self.persisted_index: Optional[int] = None
        #: Events up to here may have been applied before the last crash.
        self.replay_until = 0
        self.horizon: Optional[int] = None
        self._last_persist = 0.0
        self._timer: Optional[IDelayedCall] = None
        self._persisting: Optional[defer.Deferred] = None
        self._unpersisted = 0

    @defer.inlineCallbacks
    def load(self):
        """Fires with the recorded index; learns the replay horizon above it."""
        key = self.checkpoint.key
        log.info("Current index read from %s", key)
        index = yield self._retrying(f"reading the replication index {key!r}", "destination",
                                     self.checkpoint.read_index)
        self.persisted_index = index
        self._last_persist = self.clock.seconds()
        self.horizon = yield self._retrying("reading the replay horizon", "destination",
                                            self.checkpoint.read_horizon)
        self.replay_until = max(self.horizon or 0, index)
        if self.replay_until > index:
            log.info("events %d..%d may have been applied before the last stop; they are "
                     "replayed with relaxed checks", index + 1, self.replay_until)
        return index

    def replaying(self, index: int) -> bool:
        """True when the event at ``index`` may have been applied before a crash."""
        return index <= self.replay_until

    @defer.inlineCallbacks
    def before_apply(self, index: int):
        """Fires once the replay horizon covers ``index`` (usually at once)."""
        if self.atomic:
            return
        horizon = horizon_value(self.horizon, index, self.settings.horizon_slack)
        if horizon is not None:
            yield self._retrying("writing the replay horizon", "destination",
                                 lambda: self.checkpoint.write_horizon(horizon))
            self.horizon = horizon

    def applied(self) -> None:
        """One more event is applied: write the index soon, or now after a full batch."""
        if self.atomic:
            self._persisted(self._applied_index())  # its transaction wrote it
            return
        self._unpersisted += 1
        if self._unpersisted >= self.settings.persist_events:
            self._flush()
        else:
            self._flush_later()

    @defer.inlineCallbacks
    def progress(self, index: int):
        """Nothing under the prefix up to the applied ``index``: write it when due.

        Fires with None, once written if it was due now.
        """
        if self.persisted_index is None or index <= self.persisted_index:
            return
        wait = (self._last_persist + self.settings.progress_persist_interval
                - self.clock.seconds())
        far = index - self.persisted_index >= self.settings.progress_persist_events
        if wait <= 0 or far:
            yield self.persist(index)
        elif not self.atomic:
            self._flush_later(wait)

    @defer.inlineCallbacks
    def persist(self, index: int):
        """Write ``index`` now, retrying; fires once it is written."""
        yield self._retrying(
            f"writing the replication index {index} to {self.checkpoint.key!r}",
            "destination", lambda: self.checkpoint.write_index(index))
        self._persisted(index)

    def resynced(self) -> None:
        """A resync wrote the whole image: nothing below the index is a replay."""
        self.replay_until = 0

    @defer.inlineCallbacks
    def close(self):
        """On the way out: write the applied index if it moved; fires with None, never fails."""
        self._cancel_timer()
        if self._persisting is not None:
            yield self._persisting
        index = self._applied_index()
        if self.persisted_index is None or index <= self.persisted_index:
            return
        try:
            yield self.checkpoint.write_index(index)
            self.persisted_index = index
        except LostLease as e:
            log.warning("index %d not written on the way out: %s", index, e)
        except Exception as e:
            log.warning("could not persist index %d on the way out: %s", index, e)

    def stop(self) -> None:
        self._cancel_timer()

    def _cancel_timer(self) -> None:
        if self._timer is not None and self._timer.active():
            self._timer.cancel()

    def _persisted(self, index: int) -> None:
        if self.persisted_index is None or index > self.persisted_index:
            self.persisted_index = index
        self._last_persist = self.clock.seconds()

    def _flush_later(self, delay: Optional[float] = None) -> None:
        """Write the applied index soon, without holding up the event loop."""
        if self._timer is None or not self._timer.active():
            self._timer = self.clock.callLater(
                self.settings.persist_interval if delay is None else delay, self._flush)

    def _flush(self) -> None:
        if self._persisting is not None or self.persisted_index is None:
            return
        index = self._applied_index()
        if index <= self.persisted_index:
            return
        self._unpersisted = 0

        def done(result: Any) -> None:
            self._persisting = None
            self._persisted(index)

        def failed(failure: Any) -> None:
            self._persisting = None
            if failure.check(LostLease):
                self._on_lost(failure.getErrorMessage())
                return
            log.warning("could not persist index %d (will retry): %s", index,
                        failure.getErrorMessage())
            if self._running():
                self._flush_later()

        self._persisting = self.checkpoint.write_index(index)
        self._persisting.addCallbacks(done, failed)  # may run at once: assign first
