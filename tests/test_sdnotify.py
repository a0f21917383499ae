"""systemd notify: READY once caught up, WATCHDOG only while known current, STATUS."""

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


def test_ready_watchdog_and_status_from_a_real_mirror(src, dst, mirror, etcd_src,
                                                      notify_socket):
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
    # Cut off from the source: the replica is no longer known current, so the
    # watchdog is no longer kicked and systemd would restart the mirror.
    etcd_src.stop()
    try:
        wait_for(lambda: m.status()["replica_age_seconds"] is not None
                 and m.status()["replica_age_seconds"] > 2.5, timeout=20)
        received(sock)
        seen = []
        wait_for(lambda: seen.extend(received(sock)) or
                 sum(line.startswith("STATUS=") for line in seen) >= 3, timeout=10)
        assert "WATCHDOG=1" not in seen
    finally:
        etcd_src.restart()
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


def test_watchdog_only_while_known_current():
    clock = Clock()
    status = st.MirrorStatus("s", "d", "/a", "/b", "/__replication/b", clock=clock.seconds)
    notifier = Recorder()
    reporter = SystemdReporter(notifier, status, clock, current_within=lambda: 10.0)
    reporter.start()
    assert "READY=1" not in notifier.sent[-1]      # starting: not ready, no kick
    status.state = st.REPLICATING
    status.fresh_as_of = clock.seconds()
    clock.advance(1)
    assert notifier.sent[-1].split("\n")[1:] == ["READY=1", "WATCHDOG=1"]
    clock.advance(1)
    assert notifier.sent[-1].split("\n")[1:] == ["WATCHDOG=1"]
    clock.advance(10)                               # not confirmed fresh for 11 s
    assert "WATCHDOG=1" not in notifier.sent[-1]
    status.state = st.RESYNCING                     # a long resync keeps kicking
    clock.advance(1)
    assert "WATCHDOG=1" in notifier.sent[-1]
    assert summary(status).startswith("resyncing: replica index 0")
