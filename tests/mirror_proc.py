"""Runs the real ``etcd-mirror`` command as a child process, for end-to-end tests.

The mirror is started exactly as an operator would start it (same module, same
flags), controlled by its pid, and observed through its HTTP interface and its
log.  Every wait is a poll with a deadline.
"""

import json
import os
import re
import signal
import subprocess
import sys
import tempfile
import urllib.error
import urllib.request
from typing import Any, Dict, List, Optional, Sequence

from tests.helpers import wait_for


class MirrorProcess:
    """One ``python -m etcdmirror`` process with its log in a temp file."""

    def __init__(self, src: str, dst: str, args: Sequence[str] = (),
                 port: Optional[int] = None, env: Optional[Dict[str, str]] = None) -> None:
        self.src = src
        self.dst = dst
        self.args = list(args)
        # Port 0: the kernel picks a free port, which the mirror logs.  Picking
        # one here and passing it would race with outgoing connections.
        self.requested_port = port if port is not None else 0
        self.port: Optional[int] = port
        self.env = env
        self.proc: Optional[subprocess.Popen] = None
        fd, self.log_path = tempfile.mkstemp(prefix="etcdmirror-test-", suffix=".log")
        os.close(fd)
        self._log_offset = 0

    @property
    def command(self) -> List[str]:
        return [sys.executable, "-m", "etcdmirror", "--port", str(self.requested_port),
                *self.args, self.src, self.dst]

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def start(self, healthy: bool = True, timeout: float = 30.0) -> "MirrorProcess":
        env = dict(os.environ)
        env.update(self.env or {})
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(self.command, stdout=log, stderr=subprocess.STDOUT,
                                         stdin=subprocess.DEVNULL, env=env)
        if self.requested_port == 0:
            self.port = None
            wait_for(lambda: self.proc.poll() is not None or self._logged_port(),
                     timeout=timeout, message="the mirror's HTTP port in its log")
        if healthy:
            self.wait_healthy(timeout)
        return self

    def _logged_port(self) -> Optional[int]:
        found = re.search(r"HTTP interface on port (\d+)", self.log())
        if found:
            self.port = int(found.group(1))
        return self.port

    # -- observing ----------------------------------------------------------

    def log(self) -> str:
        with open(self.log_path, encoding="utf-8", errors="replace") as f:
            return f.read()

    def _get(self, path: str) -> Any:
        if self.port is None:
            raise AssertionError(f"the mirror has no HTTP port (yet):\n{self.log()}")
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.port}{path}", timeout=2) as r:
                return r.status, r.read().decode()
        except urllib.error.HTTPError as e:
            return e.code, e.read().decode()

    def status(self) -> Dict[str, Any]:
        return json.loads(self._get("/status")[1])

    def metrics(self) -> str:
        return self._get("/metrics")[1]

    def metric(self, name: str, labels: str = "") -> float:
        """Value of one sample of ``/metrics`` (0 when absent)."""
        wanted = name + ("{" + labels + "}" if labels else "")
        for line in self.metrics().splitlines():
            if line.startswith("#"):
                continue
            sample, _, value = line.rpartition(" ")
            if sample == wanted:
                return float(value)
        return 0.0

    def healthy(self) -> bool:
        try:
            return self._get("/healthz")[0] == 200
        except (OSError, urllib.error.URLError):
            return False

    def wait_healthy(self, timeout: float = 30.0) -> None:
        """Until ``/healthz`` answers 200; fails at once if the mirror exits."""
        wait_for(lambda: self.proc.poll() is not None or self.healthy(), timeout=timeout,
                 message="mirror never became healthy")
        if self.proc.poll() is not None:
            raise AssertionError(f"mirror exited with {self.proc.returncode} before "
                                 f"becoming healthy:\n{self.log()}")

    def wait_log(self, text: str, timeout: float = 15.0) -> None:
        wait_for(lambda: text in self.log(), timeout=timeout,
                 message=f"{text!r} never appeared in the mirror log")

    def wait_index(self, index: int, timeout: float = 15.0) -> None:
        """Until the mirror reports a replica index of at least ``index``."""
        wait_for(lambda: self.status()["replica_index"] >= index, timeout=timeout,
                 message=f"replica index never reached {index}")

    # -- controlling ----------------------------------------------------------

    def wait_exit(self, timeout: float = 30.0) -> int:
        assert self.proc is not None
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            raise AssertionError(f"mirror still running after {timeout}s:\n{self.log()}")

    def signal(self, sig: int) -> None:
        if self.proc is not None and self.proc.poll() is None:
            os.kill(self.proc.pid, sig)

    def stop(self, timeout: float = 10.0) -> int:
        """SIGTERM by pid, wait; SIGKILL if it does not go. Returns the exit code."""
        if self.proc is None:
            return 0
        if self.proc.poll() is None:
            self.signal(signal.SIGCONT)
            self.signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        return self.proc.returncode

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()

    def pause(self) -> None:
        self.signal(signal.SIGSTOP)

    def resume(self) -> None:
        self.signal(signal.SIGCONT)

    def cleanup(self) -> None:
        self.kill()
        try:
            os.unlink(self.log_path)
        except OSError:
            pass


class MirrorFactory:
    """Starts mirrors for one test and stops every one of them afterwards."""

    def __init__(self) -> None:
        self.made: List[MirrorProcess] = []

    def __call__(self, src: str, dst: str, *args: str, start: bool = True,
                 healthy: bool = True, **kwargs: Any) -> MirrorProcess:
        mirror = MirrorProcess(src, dst, args, **kwargs)
        self.made.append(mirror)
        if start:
            mirror.start(healthy=healthy)
        return mirror

    def cleanup(self, failed: bool = False) -> None:
        for mirror in self.made:
            if failed and mirror.proc is not None:
                sys.stderr.write(f"--- mirror log ({' '.join(mirror.args)}):\n{mirror.log()}\n")
            mirror.cleanup()
        self.made.clear()
