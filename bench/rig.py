"""The benchmark's rig: etcd servers, delay proxy, writers, mirror, and their cleanup.

Everything the benchmark starts is started here and registered with
``bench/reaper.py`` (which cleans up if the benchmark is killed with
SIGKILL), and stopped by pid in :meth:`Rig.teardown`.  The phases
(``bench/phases.py``) only use what the rig has running.
"""

import argparse
import os
import re
import shlex
import shutil
import subprocess
import sys
import tempfile
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


def stop_proc(proc: Optional[subprocess.Popen], timeout: float = 5.0) -> None:
    if proc is None or proc.poll() is not None:
        return
    proc.terminate()
    try:
        proc.wait(timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


class Rig:
    """The processes the phases measure, and the reaper that outlives us.

    :meth:`setup` starts the source and destination etcd servers, the delay
    proxy (``--rtt-ms``) and the writers; :meth:`start_mirror` the mirror;
    :meth:`teardown` stops all of it by pid, on any end of the run.
    """

    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.python = args.python or sys.executable
        self.mirror_root = os.path.abspath(args.mirror_path or REPO)
        self.workdir = tempfile.mkdtemp(prefix="etcdmirror-bench-")
        self.src: Optional[LocalEtcd] = None
        self.dst: Optional[LocalEtcd] = None
        self.proxy: Optional[subprocess.Popen] = None
        self.mirror: Optional[MirrorProcess] = None
        self.writers: Optional[WriterPool] = None
        self.probe_seq = 1
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

    # -- setup / teardown --

    def setup(self) -> None:
        log("starting source and destination etcd (work dir %s)" % self.workdir)
        self.src = LocalEtcd("bench-src")
        self.dst = LocalEtcd("bench-dst")
        for server in (self.src, self.dst):
            server.start()
            self.guard("pid", server.pid)
            self.guard("dir", server.data_dir)
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
        try:
            mirror.start(timeout=self.args.start_timeout)
        finally:
            if mirror.proc is not None:
                self.guard("pid", mirror.pid)
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
        out = {}
        for labels, value in self.mirror.samples("etcdmirror_resyncs_total").items():
            found = re.fullmatch(r'reason="([^"]*)"', labels)
            if found:
                out[found.group(1)] = value
        return out

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
