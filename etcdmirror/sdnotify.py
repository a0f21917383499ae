"""systemd's notify protocol: READY, WATCHDOG and STATUS, without libsystemd.

Under ``Type=notify`` systemd hands us ``$NOTIFY_SOCKET`` (a datagram socket,
``@`` for the abstract namespace) and, with ``WatchdogSec=``,
``$WATCHDOG_USEC``.  We say READY=1 once the mirror replicates and is caught
up, and WATCHDOG=1 only while the replica is *known* current (progress, or an
idle prefix confirmed by a quorum read): a mirror that is stuck, or cut off
from its source, stops kicking the watchdog and systemd restarts it.
STATUS= carries a one-line summary for ``systemctl status``.
"""

import os
import socket
from typing import Callable, Dict, Optional

from twisted.internet.interfaces import IReactorTime

from etcdmirror import status as st
from etcdmirror.periodic import Periodic


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
    return (f"{status.state}: replica index {status.replica_index}, source index "
            f"{status.source_index}, lag {status.lag}{age_text}")


class SystemdReporter:
    """Drives READY/WATCHDOG/STATUS from the mirror's status."""

    def __init__(self, notifier: Notifier, status: st.MirrorStatus, clock: IReactorTime,
                 current_within: Callable[[], float]) -> None:
        self.notifier = notifier
        self.status = status
        self.clock = clock
        self.current_within = current_within
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
        """Kick the watchdog?  While resyncing, or replicating and known current."""
        if self.status.state in (st.RELOADING, st.RESYNCING):
            return True
        age = self.status.replica_age
        return (self.status.state == st.REPLICATING and age is not None
                and age <= self.current_within())

    def tick(self) -> None:
        messages = [f"STATUS={summary(self.status)}"]
        if (not self.ready and self.status.state == st.REPLICATING
                and self.status.replica_age is not None):
            self.ready = True
            messages.append("READY=1")
        if self.notifier.watchdog_seconds and self.alive():
            messages.append("WATCHDOG=1")
        self.notifier.send("\n".join(messages))
