"""The real ``etcd-mirror`` as a child process, for the demo, the tests and the benchmark.

All three run the mirror exactly as an operator would (``python -m
etcdmirror`` with the same flags), not an in-process imitation, so what they
show or measure is the daemon itself.  This module is the one wrapper they
share: it starts the process with its log in a file, finds the HTTP port it
logs, reads ``/status`` and ``/metrics`` over one keep-alive connection (the
benchmark polls ``/status`` every few milliseconds and counts what that
costs), and stops, pauses or kills it strictly by its pid.  Every wait is a
poll with a deadline that also gives up at once if the mirror exits.

Only the standard library and :mod:`etcdmirror.localclient` are used.
"""

import json
import os
import re
import signal
import subprocess
import sys
import tempfile
import time
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

from etcdmirror.localclient import BlockingClient

__all__ = ["MirrorProcess", "MirrorError", "MirrorTimeout"]

_PORT_LINE = re.compile(r"HTTP interface on port (\d+)")


class MirrorError(RuntimeError):
    """The mirror exited, or could not be started or observed; with its log's tail."""


class MirrorTimeout(MirrorError):
    """The mirror did not get where it was waited for in time."""


class MirrorProcess:
    """One ``python -m etcdmirror [ARGS] --port PORT SRC DST`` process.

    ``port`` 0 (the default) lets the kernel pick a free port, which the
    mirror logs and :meth:`start` reads; picking one here and passing it
    would race with outgoing connections.  The log goes to ``log_path``, by
    default a temporary file that :meth:`cleanup` removes; with
    ``inherit_output`` the mirror writes to our stdout and stderr instead (the
    demo), and then ``port`` must be given.

    For the benchmark: ``python`` runs the mirror (default: this
    interpreter), ``root`` is the directory the mirror runs in and imports
    etcdmirror from (prepended to PYTHONPATH: another checkout),
    ``profile_path`` runs it under ``python -m cProfile -o PATH``, and ``env``
    adds to the environment.  ``http_timeout`` bounds each read of the HTTP
    interface.
    """

    def __init__(
        self,
        src: str,
        dst: str,
        args: Sequence[str] = (),
        port: Optional[int] = None,
        env: Optional[Dict[str, str]] = None,
        log_path: Optional[str] = None,
        inherit_output: bool = False,
        python: Optional[str] = None,
        root: Optional[str] = None,
        profile_path: Optional[str] = None,
        http_timeout: float = 2.0,
    ) -> None:
        if inherit_output and not port:
            raise ValueError("a mirror that writes to our output needs a given port")
        self.src = src
        self.dst = dst
        self.args = list(args)
        self.requested_port = port or 0
        self.port: Optional[int] = port or None
        self.env = env
        self.python = python or sys.executable
        self.root = root
        self.profile_path = profile_path
        self.http_timeout = http_timeout
        self.inherit_output = inherit_output
        # Only a log file we created ourselves is ever deleted.
        self._own_log = log_path is None and not inherit_output
        if self._own_log:
            fd, log_path = tempfile.mkstemp(prefix="etcdmirror-", suffix=".log")
            os.close(fd)
        self.log_path = log_path
        self.proc: Optional[subprocess.Popen] = None
        self._client: Optional[BlockingClient] = None
        #: How many times /status was read: the benchmark subtracts their cost.
        self.status_reads = 0

    @property
    def command(self) -> List[str]:
        profiler = ["-m", "cProfile", "-o", self.profile_path] if self.profile_path else []
        return [self.python, *profiler, "-m", "etcdmirror", *self.args,
                "--port", str(self.requested_port), self.src, self.dst]

    @property
    def pid(self) -> int:
        if self.proc is None:
            raise MirrorError("the mirror has not been started")
        return self.proc.pid

    @property
    def running(self) -> bool:
        """True while the process exists (also when paused)."""
        return self.proc is not None and self.proc.poll() is None

    @property
    def returncode(self) -> Optional[int]:
        return self.proc.returncode if self.proc is not None else None

    # -- starting -------------------------------------------------------------

    def start(self, healthy: bool = True, timeout: float = 30.0) -> "MirrorProcess":
        """Start it; return once its port is known and (``healthy``) it replicates."""
        env = dict(os.environ)
        env.update(self.env or {})
        if self.root is not None:
            env["PYTHONPATH"] = self.root + os.pathsep + env.get("PYTHONPATH", "")
        if self.inherit_output:
            self.proc = subprocess.Popen(self.command, cwd=self.root, env=env,
                                         stdin=subprocess.DEVNULL)
        else:
            with open(self.log_path, "ab") as log:
                self.proc = subprocess.Popen(self.command, cwd=self.root, env=env,
                                             stdin=subprocess.DEVNULL, stdout=log,
                                             stderr=subprocess.STDOUT)
        if self.requested_port == 0:
            self.port = None
            self._until(self._logged_port, timeout, "its HTTP port in its log")
        if healthy:
            self.wait_healthy(timeout)
        return self

    def _logged_port(self) -> Optional[int]:
        found = _PORT_LINE.search(self.log())
        if found:
            self.port = int(found.group(1))
        return self.port

    # -- the log ------------------------------------------------------------

    def log(self) -> str:
        """Everything the mirror logged so far ("" when it writes to our output)."""
        if self.log_path is None:
            return ""
        with open(self.log_path, encoding="utf-8", errors="replace") as f:
            return f.read()

    def log_size(self) -> int:
        """An offset for :meth:`log_since`."""
        return os.path.getsize(self.log_path) if self.log_path is not None else 0

    def log_since(self, offset: int) -> str:
        if self.log_path is None:
            return ""
        with open(self.log_path, encoding="utf-8", errors="replace") as f:
            f.seek(offset)
            return f.read()

    def log_tail(self, lines: int = 30) -> str:
        if self.log_path is None:
            return "(the mirror's log went to our output)"
        return "\n".join(self.log().splitlines()[-lines:])

    # -- the HTTP interface ---------------------------------------------------

    def get(self, path: str) -> Tuple[int, str]:
        """``(status, text)`` of a GET on the HTTP interface; OSError if none."""
        if self.port is None:
            raise MirrorError("the mirror has no HTTP port (yet):\n" + self.log_tail())
        if self._client is None or self._client.url != "http://127.0.0.1:%d" % self.port:
            self._client = BlockingClient("http://127.0.0.1:%d" % self.port,
                                          timeout=self.http_timeout)
        status, body, _ = self._client.send("GET", path)
        return status, body.decode("utf-8", "replace")

    def status(self) -> Dict[str, Any]:
        self.status_reads += 1
        return json.loads(self.get("/status")[1])

    def metrics(self) -> str:
        return self.get("/metrics")[1]

    def samples(self, name: str) -> Dict[str, float]:
        """The samples of one ``/metrics`` family by label text (``'reason="reload"'``,
        ``""`` without labels)."""
        out = {}
        for line in self.metrics().splitlines():
            if line.startswith("#"):
                continue
            sample, _, value = line.rpartition(" ")
            if sample == name:
                out[""] = float(value)
            elif sample.startswith(name + "{") and sample.endswith("}"):
                out[sample[len(name) + 1:-1]] = float(value)
        return out

    def metric(self, name: str, labels: str = "") -> float:
        """Value of one sample of ``/metrics`` (0 when absent)."""
        return self.samples(name).get(labels, 0.0)

    def healthy(self) -> bool:
        """``/healthz`` answers 200 (False when it does not answer at all)."""
        try:
            return self.get("/healthz")[0] == 200
        except OSError:
            return False

    # -- waiting ------------------------------------------------------------

    def _until(self, check: Callable[[], Any], timeout: float, what: str,
               poll: float = 0.05) -> Any:
        """Poll ``check()`` until it is truthy and return that.

        An exception from it counts as "not yet" (the mirror may be busy or
        starting); the mirror exiting ends the wait at once.
        """
        deadline = time.monotonic() + timeout
        last: Any = None
        while True:
            try:
                result = check()
                if result:
                    return result
                last = result
            except Exception as exc:  # noqa: BLE001 - reported below
                last = exc
            if not self.running:
                raise MirrorError("the mirror exited with %s while waiting for %s:\n%s"
                                  % (self.returncode, what, self.log_tail()))
            if time.monotonic() >= deadline:
                raise MirrorTimeout("no %s after %.1fs (last: %r):\n%s"
                                    % (what, timeout, last, self.log_tail()))
            time.sleep(poll)

    def wait_healthy(self, timeout: float = 30.0) -> None:
        """Until ``/healthz`` answers 200; fails at once if the mirror exits."""
        self._until(self.healthy, timeout, "healthy mirror")

    def wait_log(self, text: str, timeout: float = 15.0) -> None:
        """Until ``text`` is in the log."""
        self._until(lambda: text in self.log(), timeout, "%r in the log" % text)

    def wait_index(self, index: int, timeout: float = 15.0, poll: float = 0.05) -> float:
        """Until ``/status`` has a replica index of at least ``index``.

        Returns the seconds from the call to the read that showed it.
        """
        started = time.perf_counter()
        self._until(lambda: self.status()["replica_index"] >= index, timeout,
                    "replica index %d" % index, poll)
        return time.perf_counter() - started

    def wait_exit(self, timeout: float = 30.0) -> int:
        """The exit status, once it has exited by itself."""
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            raise MirrorTimeout("the mirror still runs after %ss:\n%s"
                                % (timeout, self.log_tail())) from None

    # -- controlling ----------------------------------------------------------

    def signal(self, sig: int) -> None:
        """Send ``sig`` to the mirror's pid if it still runs."""
        if self.running:
            try:
                os.kill(self.proc.pid, sig)
            except ProcessLookupError:
                pass  # exited in between; wait() reaps it

    def pause(self) -> None:
        """SIGSTOP: its port stays open but nothing answers."""
        self.signal(signal.SIGSTOP)

    def resume(self) -> None:
        """SIGCONT after :meth:`pause`."""
        self.signal(signal.SIGCONT)

    def stop(self, timeout: float = 10.0) -> Optional[int]:
        """SIGTERM (continuing it if paused), wait, SIGKILL if it does not go.

        Returns the exit status (None if it was never started); idempotent.
        """
        self._close()
        if self.proc is None:
            return None
        if self.proc.poll() is None:
            self.signal(signal.SIGTERM)
            self.signal(signal.SIGCONT)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.kill()
        return self.proc.returncode

    def kill(self) -> None:
        """SIGKILL: a crash, no chance to finish anything."""
        self._close()
        if self.running:
            self.proc.kill()
        if self.proc is not None:
            self.proc.wait()

    def _close(self) -> None:
        if self._client is not None:
            self._client.close()

    def cleanup(self) -> None:
        """Kill it if it still runs, and remove the log if we made it."""
        self.kill()
        if self._own_log:
            try:
                os.unlink(self.log_path)
            except OSError:
                pass

    def __repr__(self) -> str:
        return "<MirrorProcess port=%s pid=%s>" % (
            self.port, self.proc.pid if self.proc is not None else None)
