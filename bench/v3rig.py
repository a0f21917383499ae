"""What ``bench/v3mirror.py`` runs: the two etcd servers, the writers and the two tools.

The two tools under test, each started, paused and stopped by its pid:
:class:`Ours` (etcd-mirror in v3 -> v3 mode, ``python -m etcdmirror --src-api
v3 --dst-api v3 ...``) and :class:`MakeMirror` (``ETCDCTL_API=3 etcdctl
make-mirror``).  :class:`V3Rig` starts the etcd servers (as ``bench/rig.py``
does, with whose :class:`~bench.rig.RigBase` it shares the reaper and the
cleanup), the v3 writer processes of ``bench/writers.py``, and has the waits
and the comparison of source and destination that the catch-up and the
checks use.  Every process is registered with ``bench/reaper.py`` and stopped
by pid in :meth:`V3Rig.teardown`.
"""

import argparse
import os
import shlex
import signal
import subprocess
import time
from typing import Any, Callable, Dict, List, Optional, Tuple

from bench.common import KEYS_PER_SET, REPO, log
from bench.machine import threads_stopped
from bench.rig import STOP_TIMEOUT, RigBase, resyncs_of, stop_proc
from bench.v3load import MM_DST, OURS_DST, READY_KEY, SRC, V3, v3_ops, writer_key
from bench.writers import WriterPool
from etcdmirror.localmirror import MirrorProcess


class Timeout(RuntimeError):
    pass


def exit_text(code: Optional[int]) -> str:
    if code is None:
        return "still running"
    if code < 0:
        return "killed by %s" % signal.Signals(-code).name
    return "exit code %d" % code


class Tool:
    """One mirror under test: started, stopped, paused by its pid."""

    name = ""
    key = ""
    dst_root = ""

    def __init__(self, rig: "V3Rig") -> None:
        self.b = rig
        self.starts = 0
        self.last_log: Optional[str] = None

    def dst_key(self, src_key: str) -> str:
        return self.dst_root + src_key[len(SRC):]

    @property
    def proc(self) -> Optional[subprocess.Popen]:
        raise NotImplementedError

    def _stop(self) -> Optional[int]:
        raise NotImplementedError

    def stop(self) -> Optional[int]:
        """SIGTERM, SIGKILL after a while; the exit status (None if never started)."""
        if self.proc is None:
            return None
        code = self._stop()
        self.b.guard("unpid", self.proc.pid)
        return code

    @property
    def pid(self) -> int:
        return self.proc.pid

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def returncode(self) -> Optional[int]:
        return self.proc.poll() if self.proc is not None else None

    def pause(self) -> None:
        """SIGSTOP; returns once every thread has stopped (or after 5 s)."""
        os.kill(self.pid, signal.SIGSTOP)
        deadline = time.monotonic() + 5
        while not threads_stopped(self.pid) and time.monotonic() < deadline:
            time.sleep(0.002)

    def resume(self) -> None:
        os.kill(self.pid, signal.SIGCONT)

    def log_text(self) -> str:
        if self.last_log is None:
            return ""
        with open(self.last_log, encoding="utf-8", errors="replace") as f:
            return f.read()

    def log_tail(self, lines: int = 15) -> str:
        return "\n".join(self.log_text().splitlines()[-lines:])

    def last_line(self) -> str:
        lines = [l for l in self.log_text().splitlines() if l.strip()]
        return lines[-1].strip() if lines else "(nothing logged)"

    def new_log(self) -> str:
        self.starts += 1
        self.last_log = os.path.join(self.b.workdir, "%s-%d.log" % (self.key, self.starts))
        return self.last_log


class Ours(Tool):
    name = "etcd-mirror (v3 -> v3)"
    key = "ours"
    dst_root = OURS_DST + SRC
    m: Optional[MirrorProcess] = None  # the running (or last) mirror

    @property
    def proc(self) -> Optional[subprocess.Popen]:
        return self.m.proc if self.m is not None else None

    def args(self, reload: bool) -> List[str]:
        return (["--src-api", "v3", "--dst-api", "v3", "--src-prefix", SRC,
                 "--dst-prefix", OURS_DST] + (["--reload"] if reload else [])
                + self.b.args.mirror_arg)

    def command_text(self, reload: bool) -> str:
        return "python -m etcdmirror %s --port 0 SRC DST" % shlex.join(self.args(reload))

    def start(self, reload: bool = False, rev: Optional[int] = None) -> None:
        self.m = MirrorProcess(self.b.src.url, self.b.dst.url, self.args(reload),
                               log_path=self.new_log(), root=REPO, http_timeout=10.0)
        self.b.start_guarded(self.m, healthy=False, timeout=self.b.args.timeout)
        log("%s started, pid %d, HTTP port %s%s" % (self.name, self.m.pid, self.m.port,
                                                   " (--reload)" if reload else ""))

    def _stop(self) -> Optional[int]:
        return self.m.stop(STOP_TIMEOUT)

    def replica_index(self) -> Optional[int]:
        try:
            return int(self.m.status()["replica_index"])
        except Exception:  # noqa: BLE001 - not answering (yet)
            return None

    def resyncs(self) -> Dict[str, float]:
        try:
            return resyncs_of(self.m)
        except Exception:  # noqa: BLE001 - reported as no metrics
            return {}


class MakeMirror(Tool):
    name = "etcdctl make-mirror"
    key = "make-mirror"
    dst_root = MM_DST + SRC
    popen: Optional[subprocess.Popen] = None  # the running (or last) etcdctl

    @property
    def proc(self) -> Optional[subprocess.Popen]:
        return self.popen

    def argv(self, src: str, dst: str, rev: Optional[int] = None) -> List[str]:
        return ([self.b.args.etcdctl, "--endpoints", src, "make-mirror",
                 "--prefix", SRC + "/", "--dest-prefix", self.dst_root + "/"]
                + (["--rev", str(rev)] if rev is not None else []) + [dst])

    def command_text(self, rev: Optional[int] = None) -> str:
        argv = self.argv("SRC", "DST", rev)
        argv[0] = os.path.basename(argv[0])
        return "ETCDCTL_API=3 " + shlex.join(argv)

    def start(self, reload: bool = False, rev: Optional[int] = None) -> None:
        env = dict(os.environ, ETCDCTL_API="3")
        with open(self.new_log(), "ab") as out:
            self.popen = subprocess.Popen(self.argv(self.b.src.url, self.b.dst.url, rev),
                                          stdin=subprocess.DEVNULL,
                                          stdout=out, stderr=subprocess.STDOUT, env=env)
        self.b.guard("pid", self.popen.pid)
        log("%s started, pid %d%s" % (self.name, self.popen.pid,
                                     " (--rev %d)" % rev if rev is not None else ""))

    def _stop(self) -> Optional[int]:
        return stop_proc(self.popen, STOP_TIMEOUT)


class V3Rig(RigBase):
    """The servers, the writers and the tools; waiting for and comparing the destination."""

    def __init__(self, args: argparse.Namespace) -> None:
        super().__init__(args, "etcdmirror-v3bench-")
        self.results.update(catchup={}, checks={})
        self.writers: Optional[WriterPool] = None
        self.tools: List[Tool] = []
        self.s: Optional[V3] = None
        self.d: Optional[V3] = None
        self.ready_seq = 0

    def setup(self) -> None:
        self.start_servers("v3bench")
        self.s = V3(self.src.url)
        self.d = V3(self.dst.url)
        self.tools = [Ours(self), MakeMirror(self)]
        if self.args.only:
            self.tools = [t for t in self.tools if t.key == self.args.only]

    def teardown(self) -> None:
        for key, logs in self.results.get("failure_logs", {}).items():
            for what, tail in logs:
                if tail.strip():
                    log("%s log tail after %s:\n%s" % (key, what, tail))
        log("stopping everything")
        for tool in self.tools:
            try:
                tool.stop()
            except Exception as e:  # noqa: BLE001 - go on stopping the rest
                log("stopping %s: %s" % (tool.name, e))
        self.stop_writers()
        for v3 in (self.s, self.d):
            if v3 is not None:
                v3.close()
        self.finish()

    def keep_tail(self, tool: Tool, what: str) -> None:
        """Keep the end of the tool's log for the report (after a failure)."""
        self.results.setdefault("failure_logs", {}).setdefault(tool.key, []).append(
            (what, tool.log_tail()))

    # -- writes --

    def start_writers(self) -> None:
        self.writers = WriterPool(self.args.writers, self.src.url, v3_ops, "v3bench-writer",
                                  seed="%f" % time.time())
        for p in self.writers.procs:
            self.guard("pid", p.pid)

    def stop_writers(self) -> None:
        if self.writers is not None:
            self.writers.stop()
            for p in self.writers.procs:
                self.guard("unpid", p.pid)
            self.writers = None

    def burst(self, count: int) -> Dict[str, Any]:
        """``count`` source revisions from writer processes started for them, as fast as
        they go; the writers are stopped after it.  In a catch-up the tool is paused
        all that time, the writers' start included, as it always was, so that the
        numbers stay comparable with earlier runs (the pause's length can change
        them)."""
        started = time.perf_counter()
        self.start_writers()
        try:
            written = self.writers.burst(count, self.args.timeout + count / 100)
            written["elapsed"] = time.perf_counter() - started
        finally:
            self.stop_writers()
        if written["errors"]:
            raise RuntimeError("%d of %d writes failed" % (written["errors"], written["ops"]))
        return written

    def puts(self, count: int, tag: str) -> int:
        """``count`` puts on the writers' keys, from here; returns the last revision."""
        n = self.args.writers
        rev = 0
        for i in range(count):
            rev = self.s.put(writer_key(i % n, (i // n) % (KEYS_PER_SET // n)),
                             "%s-%d" % (tag, i))
        return rev

    # -- comparing and waiting --

    def compare(self, tool: Tool) -> Tuple[bool, str, Dict[str, List[str]]]:
        src = self.s.range_prefix(SRC + "/")
        dst = {SRC + k[len(tool.dst_root):]: v
               for k, v in self.d.range_prefix(tool.dst_root + "/").items()}
        diff = {"missing": sorted(k for k in src if k not in dst),
                "extra": sorted(k for k in dst if k not in src),
                "differ": sorted(k for k in src if k in dst and src[k][0] != dst[k][0])}
        if not any(diff.values()):
            return True, "%d keys identical" % len(src), diff
        # Examples by their destination names.
        example = [tool.dst_key(k) for k in diff["missing"] + diff["extra"] + diff["differ"]][:3]
        return False, "%d missing, %d extra, %d differ (e.g. %s)" % (
            len(diff["missing"]), len(diff["extra"]), len(diff["differ"]),
            ", ".join(example)), diff

    def wait_for(self, check: Callable[[], Any], timeout: float, tool: Optional[Tool],
                 poll: float = 0.05) -> Tuple[Any, float]:
        """Poll ``check()`` until truthy; (result, seconds); Timeout when late or when
        the tool exited."""
        started = time.perf_counter()
        deadline = started + timeout
        while True:
            result = check()
            if result:
                return result, time.perf_counter() - started
            if tool is not None and not tool.running:
                raise Timeout("%s exited (%s)" % (tool.name, exit_text(tool.returncode())))
            if time.perf_counter() >= deadline:
                raise Timeout("not within %.0f s" % timeout)
            time.sleep(poll)

    def settle(self, tool: Tool) -> float:
        """Two marker puts, each waited for on the destination: the second one can
        only have come through the tool's live watch, so its initial sync is done.
        Returns the seconds it took."""
        started = time.perf_counter()
        for _ in range(2):
            self.ready_seq += 1
            token = "ready-%d" % self.ready_seq
            self.s.put(READY_KEY, token)
            want = tool.dst_key(READY_KEY)
            self.wait_for(lambda: (self.d.get(want) or ("",))[0] == token,
                          self.args.timeout, tool)
        return time.perf_counter() - started
