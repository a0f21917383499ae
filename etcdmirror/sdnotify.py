"""systemd's notify protocol: READY, WATCHDOG and STATUS, without libsystemd.

Under ``Type=notify`` systemd hands us ``$NOTIFY_SOCKET`` (a datagram socket,
``@`` for the abstract namespace) and, with ``WatchdogSec=``,
``$WATCHDOG_USEC``.

The watchdog means *alive*, not *fresh*: systemd restarts what stops kicking
it, and a restart cannot heal a partition from the source or a destination
that is down; it only adds a restart loop, and a start that never becomes
ready blocks ``systemctl start`` and Puppet runs.  So READY=1 comes once the
start-up safety checks passed (the HTTP interface listens before those
start), and WATCHDOG=1 as long as the reactor turns (this timer runs) and
the replication loop moves: retrying with backoff moves, a request stuck
past every timeout does not.  How old the replica is goes to STATUS=, to
``/healthz`` (``--max-replica-age``) and to the alerts.
"""

import os
import socket
from typing import Dict, Optional

from twisted.internet.interfaces import IReactorTime

from etcdmirror import status as st
from etcdmirror.periodic import Periodic


#: Seconds without a move of the replication loop after which it counts as
#: wedged.  Its longest honest pause: a backoff of up to 30 s, or a watch
#: answer that started and stalls until it is given up after 30 s, plus the
#: 10 s request timeout; twice that, for a slow machine.
WEDGED_AFTER = 90.0


class Notifier:
    """Sends notify messages; does nothing when not started by systemd."""

    def __init__(self, environ: Optional[Dict[str, str]] = None) -> None:
        env = os.environ if environ is None else environ
        path = env.get("NOTIFY_SOCKET", "")
        self.address: Optional[str] = None
        if path:
            self.address = "\0" + path[1:] if path.startswith("@") else path
        usec = env.get("WATCHDOG_USEC", "")
        self.watchdog_seconds: Optional[float] = int(usec) / 1e6 if usec.isdigit() else None

    @property
    def enabled(self) -> bool:
        return self.address is not None

    def send(self, message: str) -> None:
        if self.address is None:
            return
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
            try:
                sock.sendto(message.encode("utf-8", "replace"), self.address)
            except OSError:
                pass  # systemd went away; nothing to tell


def summary(status: st.MirrorStatus) -> str:
    """The STATUS= line: state, indexes, lag and age."""
    age = status.replica_age
    age_text = f", replica age {age:.0f}s" if age is not None else ""
    return (f"{status.state.value}: replica index {status.replica_index}, source index "
            f"{status.source_index}, lag {status.lag}{age_text}")


class SystemdReporter:
    """Drives READY/WATCHDOG/STATUS from the mirror's status."""

    def __init__(self, notifier: Notifier, status: st.MirrorStatus, clock: IReactorTime,
                 wedged_after: float = WEDGED_AFTER) -> None:
        self.notifier = notifier
        self.status = status
        self.clock = clock
        self.wedged_after = wedged_after
        self.ready = False
        self._periodic = Periodic(clock, self.tick)

    def start(self, interval: float = 1.0) -> None:
        if not self.notifier.enabled:
            return
        if self.notifier.watchdog_seconds:
            interval = min(interval, self.notifier.watchdog_seconds / 3)
        self._periodic.start(interval)

    def stop(self) -> None:
        self._periodic.stop()
        self.notifier.send("STOPPING=1")

    def alive(self) -> bool:
        """Kick the watchdog?  While the replication loop moved lately."""
        beat = self.status.loop_heartbeat
        return (self.status.state not in (st.State.FAILED, st.State.STOPPED) and beat is not None
                and self.clock.seconds() - beat <= self.wedged_after)

    def tick(self) -> None:
        messages = [f"STATUS={summary(self.status)}"]
        if not self.ready and self.status.checks_passed and self.status.state is not st.State.FAILED:
            self.ready = True
            messages.append("READY=1")
        if self.notifier.watchdog_seconds and self.alive():
            messages.append("WATCHDOG=1")
        self.notifier.send("\n".join(messages))
