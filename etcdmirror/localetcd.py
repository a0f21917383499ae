"""A throwaway local etcd v2 server for demos, tests and benchmarks.

etcd-mirror has to be tested against the real thing: the v2 API has many
corner cases (watch history, outdated indexes, hidden keys, TTLs) that a fake
would get subtly wrong.  This module starts real ``etcd`` processes on the
loopback interface, on ports chosen by the kernel, with a private data
directory, and waits until they really serve v2 requests.

A server can also be one member of a cluster: the constructor takes its ports,
the initial cluster and the cluster token.  Starting several members as one
cluster is the tests' job (``tests/localcluster.py``).

Only the standard library is used and no other etcdmirror module is imported,
so the module works in any environment (including a bare ``python3`` for the
demo, or as a lone copy of this file next to an installed package) and does
not pull Twisted into synchronous test code.

Processes are controlled strictly by the pid of the process we started,
never by name, so several instances (or other people's etcd servers) can run
on the same machine without interfering.
"""

import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
import urllib.error
import urllib.request
from typing import Any, List, Optional, Sequence, Tuple

__all__ = ["free_port", "free_ports", "LocalEtcd", "wait_all_ready"]

# How long a single readiness probe may take.  A starting etcd accepts TCP
# connections on its client port before it serves them (the listener exists
# but HTTP handling waits for the server to be ready), so every probe needs
# its own timeout or it could hang for the whole deadline.
_PROBE_TIMEOUT = 1.0
# Poll interval while waiting for a condition; this is a poll, not a fixed
# delay: we return as soon as the condition holds.
_POLL_INTERVAL = 0.05
# How many times a first start is retried with fresh ports when etcd could
# not bind (another process took a port between free_port() and etcd's bind).
_BIND_RETRIES = 3
_LOG_NAME = "etcd.log"


def free_port() -> int:
    """Return a TCP port on 127.0.0.1 that is free right now.

    The socket is closed before returning, so another process could grab the
    port before etcd binds it.  That race is accepted: the window is tiny and
    :meth:`LocalEtcd.start` retries with new ports when etcd fails to bind.
    """
    return free_ports(1)[0]


def free_ports(count: int) -> List[int]:
    """``count`` different ports that are free right now (see :func:`free_port`)."""
    # Hold all sockets open until every port is chosen, so the kernel
    # cannot hand out the same port twice within one call.
    socks = []
    try:
        for _ in range(count):
            s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            socks.append(s)
            s.bind(("127.0.0.1", 0))
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


def _etcd_env() -> dict:
    # etcd reads ETCD_* variables as flag defaults; one left in the caller's
    # environment (ETCD_NAME, ETCD_DATA_DIR, ...) must not change our server.
    return {k: v for k, v in os.environ.items() if not k.startswith("ETCD_")}


def _http_ok(url: str, timeout: float, context: Any = None) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=timeout, context=context) as resp:
            resp.read()
            return resp.status == 200
    except (OSError, urllib.error.URLError, ValueError):
        # Connection refused/reset, timeouts, HTTP errors (HTTPError is a
        # URLError) and half-started servers all mean "not ready yet".
        return False


def wait_all_ready(servers: "Sequence[LocalEtcd]", timeout: float) -> None:
    """Wait until every server (started with :meth:`LocalEtcd.spawn`) answers v2 reads.

    All are polled together so that one member dying at startup (say, its
    port was taken) is reported at once instead of after the others have
    waited out the deadline for a quorum that may never come.  Raises
    RuntimeError, with the tail of the log, like :meth:`LocalEtcd.start`.
    """
    deadline = time.monotonic() + timeout
    pending = list(servers)
    while True:
        for s in pending:
            s._check_alive()
        remaining = deadline - time.monotonic()
        probe_timeout = max(0.05, min(_PROBE_TIMEOUT, remaining))
        pending = [s for s in pending if not s._probe(probe_timeout)]
        if not pending:
            return
        if time.monotonic() >= deadline:
            s = pending[0]
            raise RuntimeError(
                "etcd %s at %s not ready after %.1fs; log %s:\n%s"
                % (s.name, s.url, timeout, s.log_path, s.log_tail())
            )
        time.sleep(_POLL_INTERVAL)


class LocalEtcd:
    """One etcd server process on 127.0.0.1 with the v2 API enabled.

    Ports are chosen on the first :meth:`start` and kept afterwards, so
    :meth:`restart` brings the server back at the same URL with the same
    data (the mirror's reconnect logic is tested that way).

    Use as a context manager to be sure the process and the temporary data
    directory are removed::

        with LocalEtcd() as etcd:
            print(etcd.url)
    """

    def __init__(
        self,
        name: str = "etcd",
        data_dir: Optional[str] = None,
        binary: str = "etcd",
        extra_args: Sequence[str] = (),
        tls: Optional[Tuple[str, str]] = None,
        client_ca: Optional[str] = None,
        probe_cert: Optional[Tuple[str, str]] = None,
        client_port: Optional[int] = None,
        peer_port: Optional[int] = None,
        initial_cluster: Optional[str] = None,
        cluster_token: Optional[str] = None,
    ) -> None:
        """``tls=(cert_file, key_file)`` serves clients over HTTPS; with
        ``client_ca`` clients must also present a certificate signed by it
        (``probe_cert`` is then the one the readiness checks use).

        A member of a bigger cluster is given its ``client_port`` and
        ``peer_port`` (otherwise free ones are chosen at the first start),
        the ``initial_cluster`` (``name=peer_url,...``, every member; by
        default this server alone) and the ``cluster_token`` all members
        share.  Ports given here are never replaced, not even when etcd
        cannot bind them.
        """
        if (client_port is None) != (peer_port is None):
            raise ValueError("give both client_port and peer_port, or neither")
        self.name = name
        self.binary = binary
        self.extra_args = list(extra_args)
        self.tls = tls
        self.client_ca = client_ca
        self.probe_cert = probe_cert
        self.initial_cluster = initial_cluster
        self.cluster_token = cluster_token
        self._data_dir = data_dir
        # Only a directory we created ourselves is ever deleted.
        self._own_data_dir = data_dir is None
        self._client_port = client_port
        self._peer_port = peer_port
        # Only ports we chose ourselves are chosen again (after a failed
        # bind, or after cleanup()).
        self._own_ports = client_port is None
        self._proc: Optional[subprocess.Popen] = None

    # -- properties ---------------------------------------------------------

    @property
    def client_port(self) -> int:
        if self._client_port is None:
            raise RuntimeError("%s has not been started yet" % self.name)
        return self._client_port

    @property
    def peer_port(self) -> int:
        if self._peer_port is None:
            raise RuntimeError("%s has not been started yet" % self.name)
        return self._peer_port

    @property
    def url(self) -> str:
        """Client URL, e.g. ``http://127.0.0.1:40123`` (valid while stopped too)."""
        return "%s://127.0.0.1:%d" % ("https" if self.tls else "http", self.client_port)

    @property
    def peer_url(self) -> str:
        return "http://127.0.0.1:%d" % self.peer_port

    @property
    def pid(self) -> Optional[int]:
        """Pid of the running etcd process, None when it is not running."""
        if self.running:
            return self._proc.pid
        return None

    @property
    def running(self) -> bool:
        """True while the process exists (also when paused)."""
        return self._proc is not None and self._proc.poll() is None

    @property
    def data_dir(self) -> Optional[str]:
        return self._data_dir

    @property
    def log_path(self) -> Optional[str]:
        """etcd's stdout+stderr, appended to across restarts."""
        if self._data_dir is None:
            return None
        return os.path.join(self._data_dir, _LOG_NAME)

    def log_tail(self, lines: int = 30) -> str:
        """Last lines of the log, for error messages."""
        path = self.log_path
        if path is None or not os.path.exists(path):
            return "(no log)"
        with open(path, "rb") as f:
            f.seek(0, os.SEEK_END)
            f.seek(max(0, f.tell() - 64 * 1024))
            data = f.read().decode("utf-8", "replace")
        return "\n".join(data.splitlines()[-lines:])

    # -- lifecycle ----------------------------------------------------------

    def start(self, timeout: float = 20.0) -> "LocalEtcd":
        """Start etcd and return once it serves v2 reads.

        No-op if already running.  Raises RuntimeError (with the tail of the
        log) if etcd exits or is not ready within ``timeout`` seconds.
        """
        if self.running:
            return self
        fresh_ports = self._own_ports and self._client_port is None
        attempt = 0
        while True:
            attempt += 1
            if fresh_ports:
                self._client_port, self._peer_port = free_ports(2)
            self.spawn()
            try:
                self.wait_ready(timeout)
                return self
            except RuntimeError:
                bind_failed = self.bind_failed()
                self.stop()
                # Ports we picked ourselves may have been stolen in the
                # free_port() race; etcd fails before writing any data then,
                # so trying again on other ports is safe.
                if not (fresh_ports and bind_failed and attempt < _BIND_RETRIES):
                    raise

    def bind_failed(self) -> bool:
        """True if the process exited because a port was taken."""
        return (
            self._proc is not None
            and self._proc.poll() is not None
            and "address already in use" in self.log_tail(10)
        )

    def _args(self) -> List[str]:
        initial_cluster = self.initial_cluster or "%s=%s" % (self.name, self.peer_url)
        args = [
            self.binary,
            "--name", self.name,
            "--data-dir", self._data_dir,
            "--listen-client-urls", self.url,
            "--advertise-client-urls", self.url,
            "--listen-peer-urls", self.peer_url,
            "--initial-advertise-peer-urls", self.peer_url,
            "--initial-cluster", initial_cluster,
            "--initial-cluster-state", "new",
            "--enable-v2=true",
            # zap: capnslog is deprecated in 3.4 and noisy.  warn keeps the
            # log small but still explains failures.  Explicit stderr: the
            # "default" output goes to journald when run under systemd.
            "--logger", "zap",
            "--log-level", "warn",
            "--log-outputs", "stderr",
        ]
        if self.cluster_token is not None:
            args += ["--initial-cluster-token", self.cluster_token]
        if self.tls:
            args += ["--cert-file", self.tls[0], "--key-file", self.tls[1]]
        if self.client_ca:
            args += ["--client-cert-auth", "--trusted-ca-file", self.client_ca]
        # Last, so callers can override any of the above.
        return args + self.extra_args

    def spawn(self) -> None:
        """Start the process without waiting until it serves.

        The members of a cluster are all spawned first, then waited for
        together with :func:`wait_all_ready`: none is ready before a quorum
        runs.  :meth:`start` is spawn, wait, and retry on stolen ports.
        """
        if shutil.which(self.binary) is None:
            raise RuntimeError(
                "etcd binary %r not found (on Debian: apt-get install etcd-server)"
                % self.binary
            )
        if self._data_dir is None:
            self._data_dir = tempfile.mkdtemp(prefix="etcdmirror-%s-" % self.name)
            self._own_data_dir = True
        else:
            # etcd wants its data dir private (0700) and warns otherwise.
            os.makedirs(self._data_dir, mode=0o700, exist_ok=True)
        with open(self.log_path, "ab") as log:
            self._proc = subprocess.Popen(
                self._args(),
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                env=_etcd_env(),
                close_fds=True,
            )

    def wait_ready(self, timeout: float = 20.0) -> None:
        """Poll until ``GET /version`` and ``GET /v2/keys/`` both answer 200.

        /version alone is not enough: it shows the HTTP server is up, while
        the v2 read proves v2 is enabled and the member has joined a cluster
        with a leader.
        """
        wait_all_ready([self], timeout)

    def _check_alive(self) -> None:
        code = self._proc.poll() if self._proc is not None else -1
        if code is not None:
            raise RuntimeError(
                "etcd %s exited with code %s while starting; log %s:\n%s"
                % (self.name, code, self.log_path, self.log_tail())
            )

    def _probe(self, timeout: float) -> bool:
        context = None
        if self.tls:
            import ssl
            # Readiness only: whether the server answers, not whom it claims to be.
            context = ssl.create_default_context()
            context.check_hostname = False
            context.verify_mode = ssl.CERT_NONE
            if self.probe_cert:
                context.load_cert_chain(*self.probe_cert)
        return _http_ok(self.url + "/version", timeout, context) and _http_ok(
            self.url + "/v2/keys/", timeout, context
        )

    def _signal(self, sig: int) -> None:
        if self.running:
            try:
                os.kill(self._proc.pid, sig)
            except ProcessLookupError:
                pass  # exited in between; wait() below reaps it

    def stop(self, timeout: float = 10.0) -> None:
        """Stop gracefully: SIGTERM, then SIGKILL after ``timeout``; idempotent.

        Always reaps the process so its pid is really gone afterwards.
        """
        if self._proc is None:
            return
        self._signal(signal.SIGTERM)
        # A paused (SIGSTOPped) process only acts on SIGTERM once continued.
        self._signal(signal.SIGCONT)
        try:
            self._proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self._signal(signal.SIGKILL)
            self._proc.wait()

    def kill(self) -> None:
        """Simulate a crash: SIGKILL, no chance to flush or say goodbye."""
        if self._proc is None:
            return
        self._signal(signal.SIGKILL)
        self._proc.wait()

    def pause(self, timeout: float = 5.0) -> None:
        """SIGSTOP: the port stays open but nothing answers (a hung server).

        Returns once every thread has stopped (or after ``timeout``): the
        kernel hands SIGSTOP to one thread, which stops the others only when
        it acts on it, and that thread may be busy in the kernel for a while
        (etcd fsyncs right after it starts) while the others still answer.
        """
        self._signal(signal.SIGSTOP)
        deadline = time.monotonic() + timeout
        while self.running and not self._all_threads_stopped():
            if time.monotonic() >= deadline:
                return
            time.sleep(0.005)

    def _all_threads_stopped(self) -> bool:
        tasks = "/proc/%d/task" % self._proc.pid
        try:
            for tid in os.listdir(tasks):
                with open("%s/%s/stat" % (tasks, tid)) as f:
                    # "tid (comm) state ...": comm may hold spaces or parens.
                    if f.read().rsplit(")", 1)[1].split()[0] not in ("T", "t"):
                        return False
        except FileNotFoundError:
            return False  # a thread came or went; look again
        except OSError:
            return True  # no /proc to look at: do not wait
        return True

    def resume(self) -> None:
        """SIGCONT after :meth:`pause`."""
        self._signal(signal.SIGCONT)

    def restart(self, timeout: float = 20.0) -> "LocalEtcd":
        """Stop, then start again on the same ports with the same data dir."""
        self.stop()
        return self.start(timeout)

    def cleanup(self) -> None:
        """Stop and remove the data directory if we created it."""
        self.stop()
        if self._own_data_dir and self._data_dir is not None:
            shutil.rmtree(self._data_dir, ignore_errors=True)
            # A later start() gets a brand new server.
            self._data_dir = None
            if self._own_ports:
                self._client_port = self._peer_port = None

    def __enter__(self) -> "LocalEtcd":
        return self.start()

    def __exit__(self, *exc_info) -> None:
        self.cleanup()

    def __repr__(self) -> str:
        port = self._client_port if self._client_port is not None else "-"
        return "<LocalEtcd %s port=%s pid=%s>" % (self.name, port, self.pid)

