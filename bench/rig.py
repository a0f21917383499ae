"""The benchmark's rig: etcd servers, delay proxy, writers, mirror, and their cleanup.

Everything the benchmark starts is started here and registered with
``bench/reaper.py`` (which cleans up if the benchmark is killed with
SIGKILL), and stopped by pid in :meth:`Rig.teardown`.  The phases
(``bench/phases.py``) only use what the rig has running.  :class:`RigBase`
(the work directory, the reaper, the two etcd servers, running to the end
whatever happens) is shared with ``bench/v3rig.py``.
"""

import argparse
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
import traceback
from typing import Dict, List, Optional, Tuple

from bench.common import BENCH_DIR, DST_PREFIX, REPO, SRC_PREFIX, log
from bench.writers import WriterPool
from etcdmirror.localclient import BlockingClient
from etcdmirror.localetcd import LocalEtcd
from etcdmirror.localmirror import MirrorProcess, MirrorTimeout

# SIGTERM, then SIGKILL after this many seconds.
STOP_TIMEOUT = 15.0


def start_proxy(target_port: int, rtt_ms: float) -> Tuple[subprocess.Popen, int]:
    proc = subprocess.Popen(
        [sys.executable, os.path.join(BENCH_DIR, "delayproxy.py"), "0", str(target_port),
         repr(rtt_ms / 2.0), "--parent-pid", str(os.getpid())],
        stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, text=True)
    line = proc.stdout.readline()
    found = re.match(r"listening on (\d+)", line)
    if not found:
        proc.kill()
        proc.wait()
        raise RuntimeError("delay proxy did not start: %r" % line)
    return proc, int(found.group(1))


def stop_proc(proc: Optional[subprocess.Popen], timeout: float = 5.0) -> Optional[int]:
    """SIGTERM (and SIGCONT, should it be stopped), SIGKILL after ``timeout``; its exit status."""
    if proc is None:
        return None
    if proc.poll() is None:
        proc.terminate()
        try:
            os.kill(proc.pid, signal.SIGCONT)
        except ProcessLookupError:
            pass
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    return proc.returncode


def resyncs_of(mirror: MirrorProcess) -> Dict[str, float]:
    """A mirror's etcdmirror_resyncs_total by reason."""
    out = {}
    for labels, value in mirror.samples("etcdmirror_resyncs_total").items():
        found = re.fullmatch(r'reason="([^"]*)"', labels)
        if found:
            out[found.group(1)] = value
    return out


def resyncs_since(before: Dict[str, float], after: Dict[str, float]) -> Dict[str, float]:
    """The resyncs by reason between two readings of :func:`resyncs_of` (none: left out)."""
    return {k: v - before.get(k, 0) for k, v in after.items() if v - before.get(k, 0)}


class RigBase:
    """A benchmark's work directory, the reaper that outlives us, the two etcd servers.

    A subclass has ``run()`` and ``teardown()`` (which ends with :meth:`finish`);
    :meth:`run_to_the_end` runs the one and always the other.
    """

    def __init__(self, args: argparse.Namespace, prefix: str) -> None:
        self.args = args
        self.workdir = tempfile.mkdtemp(prefix=prefix)
        self.src: Optional[LocalEtcd] = None
        self.dst: Optional[LocalEtcd] = None
        self.results: Dict = {"notes": []}
        # Cleans up after us if we are killed with SIGKILL (see reaper.py).
        self.reaper = subprocess.Popen([sys.executable, os.path.join(BENCH_DIR, "reaper.py")],
                                       stdin=subprocess.PIPE, text=True)
        self.guard("dir", self.workdir)

    def guard(self, command: str, arg) -> None:
        try:
            self.reaper.stdin.write("%s %s\n" % (command, arg))
            self.reaper.stdin.flush()
        except (OSError, ValueError):
            pass

    def note(self, text: str) -> None:
        log("NOTE: " + text)
        self.results["notes"].append(text)

    def start_servers(self, name: str) -> None:
        """The source and destination etcd servers, ``NAME-src`` and ``NAME-dst``."""
        log("starting source and destination etcd (work dir %s)" % self.workdir)
        self.src = LocalEtcd(name + "-src")
        self.dst = LocalEtcd(name + "-dst")
        for server in (self.src, self.dst):
            server.start()
            self.guard("pid", server.pid)
            self.guard("dir", server.data_dir)

    def start_guarded(self, mirror: MirrorProcess, **start) -> MirrorProcess:
        """``mirror.start(**start)``, its pid told to the reaper even if the start fails."""
        try:
            mirror.start(**start)
        finally:
            if mirror.proc is not None:
                self.guard("pid", mirror.pid)
        return mirror

    def finish(self) -> None:
        """The end of a teardown: the servers, the work directory, the reaper."""
        for server in (self.src, self.dst):
            if server is not None:
                server.cleanup()
        if self.args.keep_logs:
            log("logs kept in %s" % self.workdir)
        else:
            shutil.rmtree(self.workdir, ignore_errors=True)
        self.guard("done", "")
        try:
            self.reaper.stdin.close()
        except OSError:
            pass
        self.reaper.wait()

    def failure_details(self) -> None:
        """Logged after an error, before the teardown."""

    def run_to_the_end(self) -> Optional[str]:
        """``run()``, then ``teardown()`` however it ends (SIGTERM counts as Ctrl-C, and
        both are ignored during the teardown); None, "interrupted" or "failed: ..."."""
        def on_term(signum, frame):
            raise KeyboardInterrupt()

        signal.signal(signal.SIGTERM, on_term)
        failed = None
        try:
            self.run()
        except KeyboardInterrupt:
            failed = "interrupted"
            log("interrupted")
        except Exception as e:
            failed = "failed: %s" % e
            log("FAILED: %s" % e)
            traceback.print_exc()
            self.failure_details()
        finally:
            # Ctrl-C again during cleanup must not leave processes behind.
            signal.signal(signal.SIGINT, signal.SIG_IGN)
            signal.signal(signal.SIGTERM, signal.SIG_IGN)
            self.teardown()
        return failed


class Rig(RigBase):
    """The processes the phases measure, and the reaper that outlives us.

    :meth:`setup` starts the source and destination etcd servers, the delay
    proxy (``--rtt-ms``) and the writers; :meth:`start_mirror` the mirror;
    :meth:`teardown` stops all of it by pid, on any end of the run.
    """

    def __init__(self, args: argparse.Namespace) -> None:
        super().__init__(args, "etcdmirror-bench-")
        self.python = args.python or sys.executable
        self.mirror_root = os.path.abspath(args.mirror_path or REPO)
        self.proxy: Optional[subprocess.Popen] = None
        self.mirror: Optional[MirrorProcess] = None
        self.writers: Optional[WriterPool] = None
        self.probe_seq = 1

    # -- setup / teardown --

    def setup(self) -> None:
        self.start_servers("bench")
        self.src_client = BlockingClient(self.src.url)
        self.dst_client = BlockingClient(self.dst.url)
        mirror_src = self.src.url
        if self.args.rtt_ms > 0:
            self.proxy, port = start_proxy(self.src.client_port, self.args.rtt_ms)
            self.guard("pid", self.proxy.pid)
            mirror_src = "http://127.0.0.1:%d" % port
            log("delay proxy pid %d on port %d: %.1f ms each way to the source"
                % (self.proxy.pid, port, self.args.rtt_ms / 2))
        self.mirror_src = mirror_src
        log("starting %d writer processes" % self.args.writers)
        self.writers = WriterPool(self.args.writers, self.src.url)

    def start_mirror(self, profile_path: Optional[str] = None,
                     name: str = "mirror") -> MirrorProcess:
        """Start the mirror (under cProfile with ``profile_path``); once it replicates."""
        mirror = MirrorProcess(
            self.mirror_src, self.dst.url,
            ["--reload", "--src-prefix", SRC_PREFIX, "--dst-prefix", DST_PREFIX]
            + self.args.mirror_arg,
            log_path=os.path.join(self.workdir, name + ".log"), python=self.python,
            root=self.mirror_root, profile_path=profile_path, http_timeout=10.0)
        self.mirror = mirror
        self.start_guarded(mirror, timeout=self.args.start_timeout)
        log("%s pid %d, HTTP port %d: %s" % (name, mirror.pid, mirror.port,
                                            shlex.join(mirror.command[1:])))
        return mirror

    def teardown(self) -> None:
        log("stopping everything")
        if self.mirror is not None:
            code = self.mirror.stop(STOP_TIMEOUT)
            if code not in (0, None) and "mirror_exit" not in self.results:
                self.results["mirror_exit"] = code
        if self.writers is not None:
            self.writers.stop()
        stop_proc(self.proxy)
        self.finish()

    def failure_details(self) -> None:
        if self.mirror is not None and self.mirror.proc is not None:
            log("mirror log tail:\n" + self.mirror.log_tail())

    # -- helpers --

    def caught_up(self, timeout: float, poll: float = 0.005) -> Tuple[int, Optional[float]]:
        """Wait until the replica reaches the source's current index."""
        target = self.src_client.index()
        return target, self.wait_replica(target, timeout, poll)

    def wait_replica(self, target: int, timeout: float, poll: float) -> Optional[float]:
        """Seconds until /status replica_index >= target (None on timeout)."""
        try:
            return self.mirror.wait_index(target, timeout, poll)
        except MirrorTimeout:
            return None

    def check_mirror(self) -> None:
        if not self.mirror.running:
            raise RuntimeError("mirror exited with status %s:\n%s"
                               % (self.mirror.returncode, self.mirror.log_tail()))

    def resyncs(self) -> Dict[str, float]:
        """etcdmirror_resyncs_total by reason."""
        return resyncs_of(self.mirror)

    def resync_lines(self, since: int) -> List[str]:
        return [l for l in self.mirror.log_since(since).splitlines()
                if re.search(r"resync", l, re.I)]

    def verify_tree(self) -> Tuple[bool, str]:
        src = self.src_client.tree(SRC_PREFIX)
        dst = self.dst_client.tree(DST_PREFIX + SRC_PREFIX)
        if src == dst:
            return True, "%d keys identical" % sum(not is_dir for is_dir, _, _ in src.values())
        missing = [k for k in src if k not in dst]
        extra = [k for k in dst if k not in src]
        differs = [k for k in src if k in dst and src[k] != dst[k]]
        return False, "%d missing, %d extra, %d differ (e.g. %s)" % (
            len(missing), len(extra), len(differs), (missing + extra + differs)[:3])
