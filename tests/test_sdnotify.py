"""systemd notify: READY once the start-up checks passed, WATCHDOG while the loop moves, STATUS."""

import os
import socket
import tempfile

import pytest
from twisted.internet.task import Clock

from etcdmirror import status as st
from etcdmirror.sdnotify import Notifier, SystemdReporter, summary
from tests.helpers import wait_for

PREFIX = "/conftool"


@pytest.fixture
def notify_socket():
    directory = tempfile.mkdtemp(prefix="etcdmirror-notify-")
    path = os.path.join(directory, "notify")
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(path)
    sock.setblocking(False)
    yield path, sock
    sock.close()
    os.unlink(path)
    os.rmdir(directory)


def received(sock):
    out = []
    while True:
        try:
            out.extend(sock.recv(65536).decode().splitlines())
        except BlockingIOError:
            return out


def test_ready_watchdog_and_status_from_a_real_mirror(src, dst, mirror, etcd_dst,
                                                      notify_socket):
    """The watchdog means alive: a destination down for longer than the watchdog
    interval keeps it kicked, nothing restarts, replication resumes."""
    path, sock = notify_socket
    src.set(PREFIX + "/a", "1")
    m = mirror(src.url, dst.url, "--reload", "--src-prefix", PREFIX,
               "--heartbeat-interval", "0.2", "--watch-idle-timeout", "0.5",
               env={"NOTIFY_SOCKET": path, "WATCHDOG_USEC": "2000000"})
    lines = []
    wait_for(lambda: lines.extend(received(sock)) or lines.count("WATCHDOG=1") >= 3,
             message="watchdog kicks")
    assert lines.count("READY=1") == 1
    assert any(line.startswith("STATUS=replicating: replica index") for line in lines)
    # A quiet prefix: the loop still moves (idle watches are renewed).
    first = m.status()["loop_heartbeat"]
    wait_for(lambda: m.status()["loop_heartbeat"] > first + 1, message="the loop moving")
    etcd_dst.stop()
    try:
        src.set(PREFIX + "/b", "during the outage")
        wait_for(lambda: m.status()["state"] == "retrying", message="retrying")
        received(sock)
        seen = []
        # Three watchdog intervals without a destination: kicked all along.
        wait_for(lambda: seen.extend(received(sock)) or
                 sum(line.startswith("STATUS=retrying") for line in seen) >= 6, timeout=20)
        assert seen.count("WATCHDOG=1") >= 5, seen
        assert m.proc.poll() is None
    finally:
        etcd_dst.restart()
    wait_for(lambda: dst.get("/replica" + PREFIX + "/b")[0] == 200, timeout=30,
             message="replication resumed")
    assert m.status()["state"] == "replicating" and m.proc.poll() is None
    m.stop()
    assert "STOPPING=1" in received(sock)


def test_notifier_reads_systemds_environment():
    n = Notifier({"NOTIFY_SOCKET": "@/org/systemd/notify", "WATCHDOG_USEC": "30000000"})
    assert n.address == "\0/org/systemd/notify" and n.watchdog_seconds == 30.0
    assert not Notifier({}).enabled


class Recorder:
    enabled = True
    watchdog_seconds = 3.0

    def __init__(self):
        self.sent = []

    def send(self, message):
        self.sent.append(message)


def test_ready_after_the_checks_and_watchdog_while_the_loop_moves():
    clock = Clock()
    status = st.MirrorStatus("s", "d", "/a", "/b", "/__replication/b", clock=clock.seconds)
    notifier = Recorder()
    reporter = SystemdReporter(notifier, status, clock, wedged_after=30.0)
    reporter.start()
    assert notifier.sent[-1].split("\n")[1:] == []     # nothing checked, nothing moved
    status.loop_heartbeat = clock.seconds()            # probing, retrying...
    clock.advance(1)
    assert notifier.sent[-1].split("\n")[1:] == ["WATCHDOG=1"]
    status.checks_passed = True                        # safe to replicate: ready
    status.state = st.State.RELOADING                        # however long the reload takes
    clock.advance(1)
    assert notifier.sent[-1].split("\n")[1:] == ["READY=1", "WATCHDOG=1"]
    status.state = st.State.REPLICATING
    # Stale (no fresh-as-of for minutes) but moving: alive.
    for _ in range(100):
        status.loop_heartbeat = clock.seconds()
        clock.advance(1)
        assert notifier.sent[-1].split("\n")[1:] == ["WATCHDOG=1"]
    # The loop stops moving (a request stuck past every timeout): no more kicks.
    clock.advance(29)
    assert "WATCHDOG=1" in notifier.sent[-1]
    clock.advance(2)
    assert "WATCHDOG=1" not in notifier.sent[-1]
    status.loop_heartbeat = clock.seconds()
    clock.advance(1)
    assert "WATCHDOG=1" in notifier.sent[-1]
    status.state = st.State.FAILED
    clock.advance(1)
    assert "WATCHDOG=1" not in notifier.sent[-1]
    assert summary(status).startswith("failed: replica index 0")


def test_no_ready_when_the_checks_fail():
    clock = Clock()
    status = st.MirrorStatus("s", "d", "/a", "/b", "/__replication/b", clock=clock.seconds)
    notifier = Recorder()
    SystemdReporter(notifier, status, clock).start()
    status.state = st.State.FAILED
    clock.advance(5)
    assert not any("READY=1" in message for message in notifier.sent)
