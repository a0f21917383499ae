"""etcd v3 -> v3: etcd-mirror against ``etcdctl make-mirror`` on local etcd servers (issue 15).

    .venv/bin/python bench/v3mirror.py [--events 5000] [--runs 3] [--write BENCHMARKS.md]

Starts two throwaway etcd 3.4 servers (source and destination, as
``bench/rig.py`` does) and runs, one at a time against the same servers and
the same writes:

* etcd-mirror in v3 -> v3 mode, ``python -m etcdmirror --src-api v3 --dst-api
  v3 --src-prefix /bench --dst-prefix /replica --port 0 SRC DST`` (``/bench/k``
  becomes ``/replica/bench/k``; ``--reload`` on its first start only);
* ``ETCDCTL_API=3 etcdctl --endpoints SRC make-mirror --prefix /bench/
  --dest-prefix /mm/bench/ DST`` (Debian's ``etcd-client``).

It measures:

1. catch-up, ``--runs`` times each, the two tools alternated: the tool is
   SIGSTOPped (every thread), ``--events`` writes (puts on about 100 keys, one
   in ten a delete; each one source revision) go to the source from
   ``--writers`` processes as fast as they can, then a marker key; SIGCONT,
   and the time until the destination has it all (etcd-mirror: ``/status``
   ``replica_index`` reaches the marker's revision; make-mirror: the marker
   key is on the destination), polled every ``--poll-ms``.  Events/s and CPU
   seconds (utime+stime of the tool's process, ``/proc/PID/stat``) per event;
2. correctness, each a yes/no per tool with its evidence:
   a. a restart (SIGTERM, 100 puts, the same command without ``--reload``)
      loses nothing;
   b. the initial sync deletes destination keys the source lacks;
   c. a source key on a lease: has the destination key a lease, does it
      outlive the lease's TTL while the source keeps it alive, and is it deleted
      once the source lease is revoked;
   d. a restart after the source was compacted past the tool's position
      (make-mirror with ``--rev`` = the revision it had reached, as an operator
      would have to);
   e. (extra) a restart after keys were deleted on the source meanwhile.

Every wait has a deadline (``--timeout``), so a tool that never converges is a
"no", not a hang.  Prints one Markdown section; ``--write FILE`` puts it into
FILE above the dated sections (or replaces the section with the same title).
Everything started here (etcd servers, the tools, writer processes) is stopped
by pid at the end, on errors, on Ctrl-C and on SIGTERM; ``bench/reaper.py``
cleans up if this process is killed with SIGKILL.
"""

import argparse
import base64
import datetime
import http.client
import json
import multiprocessing
import os
import random
import re
import shlex
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from typing import Any, Callable, Dict, List, Optional, Tuple

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if REPO not in sys.path:
    sys.path.insert(0, REPO)

from bench.common import BENCH_DIR, log  # noqa: E402
from bench.machine import cpu_seconds, loadavg, machine_info  # noqa: E402
from bench.rig import STOP_TIMEOUT  # noqa: E402
from bench.writers import die_with_parent  # noqa: E402
from etcdmirror.localetcd import LocalEtcd  # noqa: E402
from etcdmirror.localmirror import MirrorProcess  # noqa: E402

TITLE = "2026-12-02: etcd v3 -> v3 against etcdctl make-mirror (issue 15)"
SRC = "/bench"
OURS_DST = "/replica"  # etcd-mirror: /bench/k -> /replica/bench/k
MM_DST = "/mm"  # make-mirror: /bench/k -> /mm/bench/k
READY_KEY = SRC + "/ready"
MARKER_KEY = SRC + "/marker"
LEASE_KEY = SRC + "/leased"
KEYS = 100  # the writers share about this many keys


class Timeout(RuntimeError):
    pass


# -- the v3 JSON gateway, blocking ------------------------------------------------


def b64(text: str) -> str:
    return base64.b64encode(text.encode("utf-8")).decode("ascii")


def unb64(text: Optional[str]) -> str:
    return base64.b64decode(text).decode("utf-8", "replace") if text else ""


def range_end(prefix: str) -> str:
    data = bytearray(prefix.encode("utf-8"))
    data[-1] += 1
    return base64.b64encode(bytes(data)).decode("ascii")


class V3:
    """etcd's v3 API over its JSON gateway, on one keep-alive ``http.client`` connection."""

    def __init__(self, port: int, timeout: float = 10.0) -> None:
        self.port = port
        self.timeout = timeout
        self.conn: Optional[http.client.HTTPConnection] = None

    def close(self) -> None:
        if self.conn is not None:
            self.conn.close()
            self.conn = None

    def call(self, path: str, body: Dict[str, Any]) -> Dict[str, Any]:
        data = json.dumps(body)
        for attempt in (1, 2):
            try:
                if self.conn is None:
                    self.conn = http.client.HTTPConnection("127.0.0.1", self.port,
                                                           timeout=self.timeout)
                self.conn.request("POST", path, body=data,
                                  headers={"Content-Type": "application/json"})
                resp = self.conn.getresponse()
                answer = resp.read()
            except (OSError, http.client.HTTPException):
                # A keep-alive connection the server closed: once more on a new one.
                self.close()
                if attempt == 2:
                    raise
                continue
            if resp.status != 200:
                raise RuntimeError("%s: HTTP %d: %s" % (path, resp.status, answer[:300]))
            return json.loads(answer)
        raise AssertionError("unreachable")

    def put(self, key: str, value: str, lease: str = "") -> int:
        body = {"key": b64(key), "value": b64(value)}
        if lease:
            body["lease"] = lease
        return int(self.call("/v3/kv/put", body)["header"]["revision"])

    def delete(self, key: str) -> Tuple[int, int]:
        """(keys deleted, revision)."""
        answer = self.call("/v3/kv/deleterange", {"key": b64(key)})
        return int(answer.get("deleted", 0)), int(answer["header"]["revision"])

    def delete_prefix(self, prefix: str) -> int:
        answer = self.call("/v3/kv/deleterange", {"key": b64(prefix),
                                                  "range_end": range_end(prefix)})
        return int(answer.get("deleted", 0))

    def range_prefix(self, prefix: str) -> Dict[str, Tuple[str, str]]:
        """Every key under ``prefix``: key -> (value, lease ID or "")."""
        answer = self.call("/v3/kv/range", {"key": b64(prefix), "range_end": range_end(prefix)})
        return {unb64(kv["key"]): (unb64(kv.get("value")), kv.get("lease", ""))
                for kv in answer.get("kvs", ())}

    def get(self, key: str) -> Optional[Tuple[str, str]]:
        kvs = self.call("/v3/kv/range", {"key": b64(key)}).get("kvs", ())
        return (unb64(kvs[0].get("value")), kvs[0].get("lease", "")) if kvs else None

    def revision(self) -> int:
        answer = self.call("/v3/kv/range", {"key": b64("/"), "count_only": True})
        return int(answer["header"]["revision"])

    def compact(self, revision: int) -> None:
        self.call("/v3/kv/compaction", {"revision": str(revision), "physical": True})

    def lease_grant(self, ttl: int) -> str:
        return str(self.call("/v3/lease/grant", {"TTL": str(ttl)})["ID"])

    def lease_keepalive(self, lease: str) -> int:
        answer = self.call("/v3/lease/keepalive", {"ID": lease})
        return int((answer.get("result") or {}).get("TTL", 0))

    def lease_revoke(self, lease: str) -> int:
        return int(self.call("/v3/lease/revoke", {"ID": lease})["header"]["revision"])

    def lease_ttl(self, lease: str) -> Tuple[int, int]:
        """(seconds left, -1 once gone; granted TTL)."""
        answer = self.call("/v3/lease/timetolive", {"ID": lease})
        return int(answer.get("TTL", 0)), int(answer.get("grantedTTL", 0))


# -- the writers (processes of their own) -----------------------------------------


def writer_main(port: int, wid: int, count: int, keys: int, parent_pid: int,
                results) -> None:
    """Write ``count`` operations on this writer's own keys: puts, one in ten a delete
    of a key that exists (so each operation is exactly one source revision)."""
    die_with_parent(parent_pid)
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        v3 = V3(port)
        own = "%s/w%d/" % (SRC, wid)
        names = ["%sk%02d" % (own, j) for j in range(keys)]
        existing = set(v3.range_prefix(own))
        rng = random.Random("%d-%d-%f" % (wid, count, time.time()))
        max_rev = 0
        started = time.perf_counter()
        for seq in range(1, count + 1):
            if seq % 10 == 0 and existing:
                key = rng.choice(sorted(existing))
                deleted, rev = v3.delete(key)
                existing.discard(key)
                if deleted != 1:
                    raise RuntimeError("delete of %s deleted %d keys" % (key, deleted))
            else:
                key = rng.choice(names)
                rev = v3.put(key, "w%d-%d-%s" % (wid, seq, "x" * rng.randint(8, 40)))
                existing.add(key)
            max_rev = max(max_rev, rev)
        results.put(("done", wid, count, max_rev, time.perf_counter() - started))
    except Exception as e:  # reported by the parent
        results.put(("error", wid, "%s: %s" % (type(e).__name__, e)))


# -- the two tools ---------------------------------------------------------------


def threads_stopped(pid: int) -> bool:
    try:
        for tid in os.listdir("/proc/%d/task" % pid):
            with open("/proc/%d/task/%s/stat" % (pid, tid)) as f:
                if f.read().rsplit(")", 1)[1].split()[0] not in ("T", "t"):
                    return False
    except FileNotFoundError:
        return False
    return True


class Tool:
    """One mirror under test: started, stopped, paused by its pid."""

    name = ""
    dst_root = ""

    def __init__(self, bench: "Bench") -> None:
        self.b = bench
        self.starts = 0
        self.last_log: Optional[str] = None

    def dst_key(self, src_key: str) -> str:
        return self.dst_root + src_key[len(SRC):]

    @property
    def pid(self) -> int:
        raise NotImplementedError

    @property
    def running(self) -> bool:
        raise NotImplementedError

    def returncode(self) -> Optional[int]:
        raise NotImplementedError

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

    def __init__(self, bench: "Bench") -> None:
        super().__init__(bench)
        self.m: Optional[MirrorProcess] = None

    def args(self, reload: bool) -> List[str]:
        return (["--src-api", "v3", "--dst-api", "v3", "--src-prefix", SRC,
                 "--dst-prefix", OURS_DST] + (["--reload"] if reload else [])
                + self.b.args.mirror_arg)

    def command_text(self, reload: bool) -> str:
        return "python -m etcdmirror %s --port 0 SRC DST" % shlex.join(self.args(reload))

    def start(self, reload: bool = False, rev: Optional[int] = None) -> None:
        m = MirrorProcess(self.b.src.url, self.b.dst.url, self.args(reload),
                          log_path=self.new_log(), root=REPO, http_timeout=10.0)
        self.m = m
        try:
            m.start(healthy=False, timeout=self.b.args.timeout)
        finally:
            if m.proc is not None:
                self.b.guard("pid", m.pid)
        log("%s started, pid %d, HTTP port %s%s" % (self.name, m.pid, m.port,
                                                   " (--reload)" if reload else ""))

    def stop(self) -> Optional[int]:
        if self.m is None or self.m.proc is None:
            return None
        code = self.m.stop(STOP_TIMEOUT)
        self.b.guard("unpid", self.m.pid)
        return code

    @property
    def pid(self) -> int:
        return self.m.pid

    @property
    def running(self) -> bool:
        return self.m is not None and self.m.running

    def returncode(self) -> Optional[int]:
        return self.m.returncode if self.m is not None else None

    def replica_index(self) -> Optional[int]:
        try:
            return int(self.m.status()["replica_index"])
        except Exception:  # noqa: BLE001 - not answering (yet)
            return None

    def resyncs(self) -> Dict[str, float]:
        out = {}
        try:
            for labels, value in self.m.samples("etcdmirror_resyncs_total").items():
                found = re.fullmatch(r'reason="([^"]*)"', labels)
                if found and value:
                    out[found.group(1)] = value
        except Exception:  # noqa: BLE001 - reported as no metrics
            pass
        return out


class MakeMirror(Tool):
    name = "etcdctl make-mirror"
    key = "make-mirror"
    dst_root = MM_DST + SRC

    def __init__(self, bench: "Bench") -> None:
        super().__init__(bench)
        self.proc: Optional[subprocess.Popen] = None

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
            self.proc = subprocess.Popen(self.argv(self.b.src.url, self.b.dst.url, rev),
                                         stdin=subprocess.DEVNULL,
                                         stdout=out, stderr=subprocess.STDOUT, env=env)
        self.b.guard("pid", self.proc.pid)
        log("%s started, pid %d%s" % (self.name, self.proc.pid,
                                     " (--rev %d)" % rev if rev is not None else ""))

    def stop(self) -> Optional[int]:
        if self.proc is None:
            return None
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                os.kill(self.proc.pid, signal.SIGCONT)
            except ProcessLookupError:
                pass
            try:
                self.proc.wait(STOP_TIMEOUT)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.b.guard("unpid", self.proc.pid)
        return self.proc.returncode

    @property
    def pid(self) -> int:
        return self.proc.pid

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def returncode(self) -> Optional[int]:
        return self.proc.poll() if self.proc is not None else None


# -- the benchmark -----------------------------------------------------------------


def exit_text(code: Optional[int]) -> str:
    if code is None:
        return "still running"
    if code < 0:
        return "killed by %s" % signal.Signals(-code).name
    return "exit code %d" % code


class Bench:
    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.workdir = tempfile.mkdtemp(prefix="etcdmirror-v3bench-")
        self.src: Optional[LocalEtcd] = None
        self.dst: Optional[LocalEtcd] = None
        self.writers: List[multiprocessing.Process] = []
        self.tools: List[Tool] = []
        self.results: Dict[str, Any] = {"notes": [], "catchup": {}, "checks": {}}
        self.ready_seq = 0
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

    # -- setup and teardown --

    def setup(self) -> None:
        log("starting source and destination etcd (work dir %s)" % self.workdir)
        self.src = LocalEtcd("v3bench-src")
        self.dst = LocalEtcd("v3bench-dst")
        for server in (self.src, self.dst):
            server.start()
            self.guard("pid", server.pid)
            self.guard("dir", server.data_dir)
        self.s = V3(self.src.client_port)
        self.d = V3(self.dst.client_port)
        self.tools = [Ours(self), MakeMirror(self)]
        if self.args.only:
            self.tools = [t for t in self.tools if t.key == self.args.only]

    def teardown(self) -> None:
        log("stopping everything")
        for tool in self.tools:
            try:
                tool.stop()
            except Exception as e:  # noqa: BLE001 - go on stopping the rest
                log("stopping %s: %s" % (tool.name, e))
        self.stop_writers()
        for v3 in (getattr(self, "s", None), getattr(self, "d", None)):
            if v3 is not None:
                v3.close()
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

    def stop_writers(self) -> None:
        for p in self.writers:
            p.join(0.5)
            if p.is_alive():
                p.terminate()  # by pid
                p.join(2)
            if p.is_alive():
                p.kill()
                p.join()
            self.guard("unpid", p.pid)
        self.writers = []

    # -- writes --

    def burst(self, count: int) -> Dict[str, Any]:
        """``count`` source revisions from the writer processes, as fast as they go."""
        n = self.args.writers
        ctx = multiprocessing.get_context("spawn")
        results = ctx.Queue()
        shares = [count // n + (1 if i < count % n else 0) for i in range(n)]
        started = time.perf_counter()
        try:
            for wid, share in enumerate(shares):
                p = ctx.Process(target=writer_main, name="v3bench-writer-%d" % wid,
                                args=(self.src.client_port, wid, share, KEYS // n,
                                      os.getpid(), results), daemon=True)
                p.start()
                self.writers.append(p)
                self.guard("pid", p.pid)
            got = []
            deadline = time.monotonic() + self.args.timeout + count / 100
            while len(got) < n:
                try:
                    answer = results.get(timeout=0.5)
                except Exception:  # queue.Empty
                    if time.monotonic() > deadline:
                        raise Timeout("writers did not finish in time")
                    continue
                if answer[0] == "error":
                    raise RuntimeError("writer %d failed: %s" % (answer[1], answer[2]))
                got.append(answer)
        finally:
            self.stop_writers()
        return {"ops": sum(g[2] for g in got), "max_rev": max(g[3] for g in got),
                "elapsed": time.perf_counter() - started}

    def puts(self, count: int, tag: str) -> int:
        """``count`` puts on the writers' keys, from here; returns the last revision."""
        rev = 0
        for i in range(count):
            rev = self.s.put("%s/w%d/k%02d" % (SRC, i % self.args.writers,
                                              (i // self.args.writers) % (KEYS // self.args.writers)),
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

    def converge(self, tool: Tool) -> Tuple[bool, str]:
        """After a (re)start: settled, then equal to the source within ``--grace``."""
        try:
            took = self.settle(tool)
        except Timeout as e:
            same, text, _ = self.compare(tool)
            return False, "not replicating: a marker key written to the source did not " \
                "reach the destination (%s); destination: %s" % (e, text)
        try:
            def equal() -> Optional[str]:
                same, text, _ = self.compare(tool)
                return text if same else None
            text, extra = self.wait_for(equal, self.args.grace, None, 0.1)
            return True, "equal %.1f s after the start: %s" % (took + extra, text)
        except Timeout:
            same, text, _ = self.compare(tool)
            return same, "replicating again after %.1f s, but %.0f s later still %s" % (
                took, self.args.grace, text)

    def run_check(self, name: str, tool: Tool, check: Callable[[Tool], Tuple[bool, str]]) -> None:
        log("check %s: %s" % (name, tool.name))
        try:
            ok, evidence = check(tool)
        except Exception as e:  # noqa: BLE001 - a failed check is a "no", with why
            ok, evidence = False, "check failed: %s: %s" % (type(e).__name__, e)
            if isinstance(tool, Ours):
                evidence += "; log: %s" % tool.last_line()
        self.results["checks"].setdefault(name, {})[tool.key] = (ok, evidence)
        log("check %s, %s: %s: %s" % (name, tool.name, "yes" if ok else "NO", evidence))
        if not ok:
            self.results.setdefault("failure_logs", {}).setdefault(
                tool.key, []).append((name, tool.log_tail()))

    def ensure_running(self, tool: Tool) -> None:
        if not tool.running:
            tool.stop()
            tool.start()
        self.settle(tool)

    # -- check b: the initial sync deletes what the source lacks --

    def check_initial_sync(self, tool: Tool) -> Tuple[bool, str]:
        stale = [tool.dst_root + "/stale-%d" % i for i in range(5)]
        for key in stale:
            self.d.put(key, "left over")
        tool.start(reload=True)
        try:
            took = self.settle(tool)
        except Timeout as e:
            return False, "initial sync did not finish: %s" % e
        try:
            self.wait_for(lambda: not any(self.d.get(k) for k in stale), self.args.grace,
                          None, 0.1)
        except Timeout:
            pass
        left = [k for k in stale if self.d.get(k)]
        same, text, _ = self.compare(tool)
        if left:
            return False, "%d of the %d destination-only keys still there %.1f s after " \
                "the first start (e.g. %s); destination: %s" % (
                    len(left), len(stale), took + self.args.grace, left[0], text)
        return True, "all %d destination-only keys deleted; destination: %s" % (
            len(stale), text)

    # -- catch-up --

    def catch_up(self, tool: Tool, run: int) -> Dict[str, Any]:
        if isinstance(tool, MakeMirror):
            # A new make-mirror starts from an empty prefix (it never deletes what
            # changed while it was not running): wiped between its runs.
            self.d.delete_prefix(tool.dst_root + "/")
        tool.start()
        try:
            self.settle(tool)
            poll = self.args.poll_ms / 1000
            poll_cpu = 0.0
            resyncs_before: Dict[str, float] = {}
            if isinstance(tool, Ours):
                # What one /status read costs the idle mirror (they are part of the
                # measurement below, not of the replication).
                cpu0 = cpu_seconds(tool.pid)
                reads = 0
                end = time.perf_counter() + 1.0
                while time.perf_counter() < end:
                    tool.replica_index()
                    reads += 1
                    time.sleep(poll)
                poll_cpu = (cpu_seconds(tool.pid) - cpu0) / reads
                resyncs_before = tool.resyncs()
            tool.pause()
            rev0 = self.s.revision()
            written = self.burst(self.args.events)
            token = "marker-%s-%d-%d" % (tool.key, run, time.time_ns())
            target = self.s.put(MARKER_KEY, token)
            events = target - rev0
            cpu_before = cpu_seconds(tool.pid)
            polls = 0
            want = tool.dst_key(MARKER_KEY)
            if isinstance(tool, Ours):
                def done() -> bool:
                    index = tool.replica_index()
                    return index is not None and index >= target
            else:
                def done() -> bool:
                    return (self.d.get(want) or ("",))[0] == token
            started = time.perf_counter()
            tool.resume()
            timeout = False
            while True:
                polls += 1
                if done():
                    break
                if not tool.running:
                    raise RuntimeError("%s exited during the catch-up (%s)"
                                       % (tool.name, exit_text(tool.returncode())))
                if time.perf_counter() - started > self.args.catchup_timeout:
                    timeout = True
                    break
                time.sleep(poll)
            elapsed = time.perf_counter() - started
            cpu = cpu_seconds(tool.pid) - cpu_before
            same, text, _ = self.compare(tool)
            result = {"events": events, "write_s": written["elapsed"], "elapsed": elapsed,
                      "rate": events / elapsed, "timeout": timeout, "cpu_s": cpu,
                      "cpu_ms": cpu / events * 1000, "polls": polls, "equal": same,
                      "verify": text}
            if isinstance(tool, Ours):
                result["cpu_ms_net"] = max(0.0, cpu - polls * poll_cpu) / events * 1000
                after = tool.resyncs()
                result["resyncs"] = {k: v - resyncs_before.get(k, 0) for k, v in after.items()
                                     if v - resyncs_before.get(k, 0)}
            log("catch-up %s run %d: %d events (written in %.1f s) in %.2f s = %.0f "
                "events/s, %.3f CPU ms/event%s; destination %s"
                % (tool.name, run, events, written["elapsed"], elapsed, result["rate"],
                   result["cpu_ms"], ", TIMEOUT" if timeout else "", text))
            return result
        finally:
            code = tool.stop()
            if code not in (0, None, -signal.SIGTERM):
                self.note("%s ended with %s after catch-up run %d: %s"
                          % (tool.name, exit_text(code), run, tool.last_line()))

    # -- check a: a restart loses nothing --

    def check_restart(self, tool: Tool) -> Tuple[bool, str]:
        self.ensure_running(tool)
        code = tool.stop()
        self.puts(100, "restart")
        tool.start()
        ok, text = self.converge(tool)
        return ok, "SIGTERM (%s), 100 puts, same command%s: %s" % (
            exit_text(code), " without --reload" if isinstance(tool, Ours) else "", text)

    # -- check e (extra): deletes made while the tool was stopped --

    def check_deletes_while_stopped(self, tool: Tool) -> Tuple[bool, str]:
        self.ensure_running(tool)
        tool.stop()
        victims = sorted(k for k in self.s.range_prefix(SRC + "/w") if k.startswith(SRC + "/w"))
        victims = victims[::max(1, len(victims) // 5)][:5]
        for key in victims:
            self.s.delete(key)
        tool.start()
        ok, text = self.converge(tool)
        return ok, "SIGTERM, %d source keys deleted, same command: %s" % (len(victims), text)

    # -- check c: leases --

    def check_lease(self, tool: Tool) -> Tuple[bool, str]:
        self.ensure_running(tool)
        ttl = self.args.lease_ttl
        lease = self.s.lease_grant(ttl)
        self.s.put(LEASE_KEY, "leased", lease)
        want = tool.dst_key(LEASE_KEY)
        got, _ = self.wait_for(lambda: self.d.get(want), self.args.timeout, tool)
        dst_lease = got[1]
        parts = []
        ok = bool(dst_lease)
        if dst_lease:
            left, granted = self.d.lease_ttl(dst_lease)
            parts.append("destination key has lease %s (TTL %d s of %d)"
                         % (dst_lease, left, granted))
            # Kept alive on the source for longer than the TTL: the destination's
            # lease must be kept alive too.
            started = time.perf_counter()
            last_keepalive = started
            lost = None
            while time.perf_counter() - started < self.args.lease_hold:
                if time.perf_counter() - last_keepalive >= ttl / 6:
                    self.s.lease_keepalive(lease)
                    last_keepalive = time.perf_counter()
                if self.d.get(want) is None:
                    lost = time.perf_counter() - started
                    break
                if not tool.running:
                    break
                time.sleep(0.5)
            if lost is not None:
                ok = False
                parts.append("it VANISHED from the destination after %.1f s while the "
                             "source lease was kept alive" % lost)
            else:
                parts.append("still there after %.0f s of source keep-alives (TTL %d s)"
                             % (self.args.lease_hold, ttl))
        else:
            parts.append("destination key has NO lease (the source key's lease is %s)"
                         % lease)
        self.s.lease_revoke(lease)
        try:
            _, took = self.wait_for(lambda: self.d.get(want) is None, self.args.timeout, tool)
            parts.append("deleted on the destination %.2f s after the source lease was "
                         "revoked" % took)
        except Timeout as e:
            ok = False
            parts.append("NOT deleted after the source lease was revoked (%s)" % e)
        if dst_lease:
            try:
                left, _ = self.d.lease_ttl(dst_lease)
                parts.append("destination lease %s" % ("gone" if left < 0 else
                                                         "left with %d s" % left))
            except Exception as e:  # noqa: BLE001 - evidence only
                parts.append("destination lease: %s" % e)
        return ok, "; ".join(parts)

    # -- check d: a restart after the source was compacted --

    def check_compaction(self, tool: Tool) -> Tuple[bool, str]:
        self.ensure_running(tool)
        if isinstance(tool, Ours):
            reached = tool.replica_index() or 0
            before = tool.resyncs()
        else:
            reached = self.s.revision()  # settled: it has everything up to here
            before = {}
        tool.stop()
        self.puts(50, "compaction")
        rev = self.s.revision()
        self.s.compact(rev)
        parts = ["stopped at revision %d, 50 puts, source compacted at %d" % (reached, rev)]
        if isinstance(tool, MakeMirror):
            tool.start(rev=reached)
            try:
                self.wait_for(lambda: False, self.args.grace, tool, 0.1)
            except Timeout:
                pass
            if not tool.running:
                parts.append("`make-mirror --rev %d`: %s, %r" % (
                    reached, exit_text(tool.returncode()), tool.last_line()))
                tool.stop()
                tool.start()
                parts.append("then the same command without --rev")
        else:
            tool.start()
        ok, text = self.converge(tool)
        parts.append(text)
        if isinstance(tool, Ours) and tool.running:
            after = tool.resyncs()
            parts.append("resyncs: %s" % (", ".join(
                "%s +%d" % (k, v - before.get(k, 0)) for k, v in sorted(after.items())
                if v - before.get(k, 0)) or "none"))
        parts.append("%s, last log line %r" % (exit_text(tool.returncode()), tool.last_line()))
        return ok, "; ".join(parts)

    # -- the run --

    def run(self) -> None:
        self.results["started"] = datetime.datetime.now(datetime.timezone.utc)
        self.results["machine"] = machine_info(REPO)
        try:
            out = subprocess.run([self.args.etcdctl, "version"], capture_output=True,
                                 text=True, env=dict(os.environ, ETCDCTL_API="3"))
            self.results["etcdctl"] = out.stdout.split("\n")[0].replace(
                "etcdctl version:", "").strip() or "?"
        except OSError as e:
            raise RuntimeError("no etcdctl (%s): apt-get install etcd-client" % e)
        wall = time.perf_counter()
        self.setup()
        log("seeding the source: %d writes on about %d keys" % (3 * KEYS, KEYS))
        self.burst(3 * KEYS)
        for tool in self.tools:
            self.run_check("b", tool, self.check_initial_sync)
            tool.stop()
        for run in range(1, self.args.runs + 1):
            for tool in self.tools:
                try:
                    result = self.catch_up(tool, run)
                except Exception as e:  # noqa: BLE001 - recorded, the run goes on
                    result = {"error": "%s: %s" % (type(e).__name__, e)}
                    log("catch-up %s run %d FAILED: %s\n%s" % (tool.name, run, e,
                                                               tool.log_tail()))
                    self.results.setdefault("failure_logs", {}).setdefault(
                        tool.key, []).append(("catch-up %d" % run, tool.log_tail()))
                self.results["catchup"].setdefault(tool.key, []).append(result)
        for tool in self.tools:
            for name, check in (("a", self.check_restart), ("c", self.check_lease),
                                ("d", self.check_compaction),
                                ("e", self.check_deletes_while_stopped)):
                self.run_check(name, tool, check)
            tool.stop()
        self.results["wall_s"] = time.perf_counter() - wall
        self.results["load_end"] = loadavg()


# -- the report --------------------------------------------------------------------

CHECKS = [
    ("a", "restart without losing updates (SIGTERM, 100 puts, start again)"),
    ("b", "initial sync deletes destination keys the source lacks"),
    ("c", "lease: destination key on a lease, kept while the source keeps its lease "
          "alive, deleted once it is revoked"),
    ("d", "restart after the source was compacted past the tool's position"),
    ("e", "(extra) restart after 5 source keys were deleted while the tool was stopped"),
]


def cell(text: str, limit: int = 400) -> str:
    """Text for a table cell: one line, no '|', at most ``limit`` characters."""
    text = " ".join(text.replace("|", "/").split())
    return text if len(text) <= limit else text[:limit - 3] + "..."


def spread(values: List[float], fmt: str) -> str:
    if not values:
        return "n/a"
    return " / ".join(fmt % v for v in (min(values), statistics.median(values), max(values)))


def report(bench: Bench, command: str) -> str:
    a = bench.args
    r = bench.results
    m = r["machine"]
    out = ["## " + TITLE, ""]
    out.append("* Command: `%s`" % command)
    out.append("* Date: %s" % r["started"].strftime("%Y-%m-%d %H:%M UTC"))
    out.append("* Machine: %s CPUs (%s), %s RAM, Linux %s; load average %s at the start%s"
               % (m["nproc"], m["cpu"], m["memory"], m["kernel"], m["load"],
                  ", %s at the end" % r["load_end"] if "load_end" in r else ""))
    out.append("* Software: Python %s, Twisted %s, treq %s, etcd %s, etcdctl %s; "
               "etcd-mirror %s (%s)" % (m["python"], m["twisted"], m["treq"], m["etcd"],
                                        r.get("etcdctl", "?"), m["mirror"], m["git"]))
    ours, mm = Ours(bench), MakeMirror(bench)
    out.append("* etcd-mirror: `%s` (`--reload` on its first start only); "
               "make-mirror: `%s`. Both against the same two local etcd servers, one at a "
               "time; %d writer processes; everything shares the %s CPUs."
               % (ours.command_text(False), mm.command_text(), a.writers, m["nproc"]))
    if "wall_s" in r:
        out.append("* Duration: %.0f s" % r["wall_s"])
    out.append("")
    out.append("Catch-up: the tool is SIGSTOPped, %d writes (puts on about %d keys, one in "
               "ten a delete: one source revision each) and a marker put go to the source, "
               "then SIGCONT; the time until the destination has them (etcd-mirror: "
               "`/status` `replica_index` reaches the marker's revision; make-mirror: the "
               "marker key is on the destination; polled every %g ms). %d runs each, the "
               "tools alternated; min / median / max:" % (a.events, KEYS, a.poll_ms, a.runs))
    out.append("")
    out.append("| | %s |" % " | ".join(t.name for t in bench.tools))
    out.append("|---|" + "---|" * len(bench.tools))
    rows = [("events/s", "rate", "%.0f"), ("seconds", "elapsed", "%.2f"),
            ("CPU ms per event (utime+stime of the tool)", "cpu_ms", "%.3f"),
            ("the same without the cost of the `/status` polls", "cpu_ms_net", "%.3f")]
    for label, field, fmt in rows:
        cells = []
        for t in bench.tools:
            runs = [x for x in r["catchup"].get(t.key, []) if field in x]
            cells.append("**%s**" % spread([x[field] for x in runs], fmt) if runs
                         else ("-" if field == "cpu_ms_net" else "n/a"))
        out.append("| %s | %s |" % (label, " | ".join(cells)))
    cells = []
    for t in bench.tools:
        runs = r["catchup"].get(t.key, [])
        text = []
        for i, x in enumerate(runs, 1):
            if "error" in x:
                text.append("run %d FAILED: %s" % (i, cell(x["error"], 200)))
            else:
                text.append("run %d: %d events%s, %s%s" % (
                    i, x["events"], " TIMEOUT" if x["timeout"] else "",
                    "equal" if x["equal"] else "DIFFERENT (%s)" % x["verify"],
                    "; resyncs %s" % x["resyncs"] if x.get("resyncs") else ""))
        cells.append("<br>".join(text) or "not run")
    out.append("| runs; destination equal to the source afterwards | %s |" % " | ".join(cells))
    out.append("")
    medians = {t.key: statistics.median(x["rate"] for x in r["catchup"].get(t.key, [])
                                        if "rate" in x)
               for t in bench.tools if any("rate" in x for x in r["catchup"].get(t.key, []))}
    if "ours" in medians and "make-mirror" in medians:
        ratio = medians["ours"] / medians["make-mirror"]
        out.append("Target: etcd-mirror's catch-up at least make-mirror's: **%s** (median "
                   "%.0f against %.0f events/s = %.2f ×)."
                   % ("met" if ratio >= 1 else "not met", medians["ours"],
                      medians["make-mirror"], ratio))
        out.append("")
    out.append("Correctness (each wait has a %g s deadline; \"equal\" is the whole prefix, "
               "keys and values, read on both servers):" % a.timeout)
    out.append("")
    out.append("| check | %s |" % " | ".join(t.name for t in bench.tools))
    out.append("|---|" + "---|" * len(bench.tools))
    for name, label in CHECKS:
        cells = []
        for t in bench.tools:
            got = r["checks"].get(name, {}).get(t.key)
            if got is None:
                cells.append("not run")
            else:
                cells.append("**%s**: %s" % ("yes" if got[0] else "no", cell(got[1])))
        out.append("| %s. %s | %s |" % (name, label, " | ".join(cells)))
    out.append("")
    for n in r["notes"]:
        out.append("* Note: %s" % n)
    if r["notes"]:
        out.append("")
    tails = [(key, what, tail) for key, logs in r.get("failure_logs", {}).items()
             for what, tail in logs if tail.strip()]
    for key, what, tail in tails[:4]:
        out.append("<details><summary>%s: the end of its log after %s</summary>"
                   % (key, "check " + what if len(what) == 1 else what))
        out.append("")
        out.append("```")
        out.extend(l[:300] for l in tail.splitlines()[-10:])
        out.append("```")
        out.append("</details>")
        out.append("")
    return "\n".join(out)


def write_section(path: str, section: str) -> None:
    """Replace the section with the same title, or put it above the first '## '."""
    heading = section.split("\n", 1)[0]
    with open(path, encoding="utf-8") as f:
        lines = f.read().split("\n")
    body = section.rstrip("\n").split("\n") + [""]
    start = next((i for i, l in enumerate(lines) if l.rstrip() == heading), None)
    if start is None:
        first = next((i for i, l in enumerate(lines) if l.startswith("## ")), len(lines))
        lines = lines[:first] + body + lines[first:]
    else:
        end = next((i for i in range(start + 1, len(lines)) if lines[i].startswith("## ")),
                   len(lines))
        lines = lines[:start] + body + lines[end:]
    tmp = path + ".tmp"
    with open(tmp, "w", encoding="utf-8") as f:
        f.write("\n".join(lines).rstrip("\n") + "\n")
    os.replace(tmp, path)


# -- the command line --------------------------------------------------------------


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="bench/v3mirror.py",
        description="etcd v3 -> v3: etcd-mirror against etcdctl make-mirror on two local "
        "etcd servers: catch-up throughput and CPU, and correctness checks.",
        epilog="Run from the repository root: .venv/bin/python bench/v3mirror.py --write "
        "BENCHMARKS.md. The defaults take about 3-4 minutes. See bench/README.md.")
    p.add_argument("--events", type=int, default=5000,
                   help="writes per catch-up run while the tool is SIGSTOPped (default 5000)")
    p.add_argument("--runs", type=int, default=3,
                   help="catch-up runs per tool, the tools alternated (default 3)")
    p.add_argument("--writers", type=int, default=4,
                   help="writer processes, one keep-alive connection each (default 4)")
    p.add_argument("--poll-ms", type=float, default=5.0,
                   help="poll interval while waiting for a catch-up (default 5)")
    p.add_argument("--timeout", type=float, default=60.0,
                   help="deadline of every wait in the checks, and of a start (default 60)")
    p.add_argument("--catchup-timeout", type=float, default=120.0,
                   help="deadline of one catch-up (default 120)")
    p.add_argument("--grace", type=float, default=5.0,
                   help="after a tool replicates again, how long the destination may take "
                   "to equal the source (default 5)")
    p.add_argument("--lease-ttl", type=int, default=30,
                   help="TTL of the source lease in check c (default 30)")
    p.add_argument("--lease-hold", type=float, default=35.0,
                   help="check c: seconds the source lease is kept alive before it is "
                   "revoked, when the destination key has a lease (default 35: longer "
                   "than the TTL)")
    p.add_argument("--mirror-arg", action="append", default=[], metavar="ARG",
                   help="extra etcd-mirror argument, repeatable")
    p.add_argument("--etcdctl", default=shutil.which("etcdctl") or "etcdctl",
                   help="the etcdctl binary (default: from PATH; Debian: etcd-client)")
    p.add_argument("--only", choices=["ours", "make-mirror"],
                   help="run one tool only (for trying the script out)")
    p.add_argument("--write", metavar="FILE",
                   help="also put the section into FILE (Markdown), replacing the one with "
                   "the same title, else above the first '## ' section")
    p.add_argument("--keep-logs", action="store_true",
                   help="keep the work directory with the tools' logs")
    args = p.parse_args(argv)
    if args.writers < 1 or args.events < args.writers or args.runs < 1:
        p.error("need --writers >= 1, --events >= --writers and --runs >= 1")
    return args


def command_line() -> str:
    python = sys.executable
    rel = os.path.relpath(python)
    if not rel.startswith(".."):
        python = rel
    return shlex.join([python, os.path.relpath(os.path.abspath(sys.argv[0]))] + sys.argv[1:])


def main(argv=None) -> int:
    args = parse_args(argv)
    command = command_line()
    bench = Bench(args)

    def on_term(signum, frame):
        raise KeyboardInterrupt()

    signal.signal(signal.SIGTERM, on_term)
    failed = None
    try:
        bench.run()
    except KeyboardInterrupt:
        failed = "interrupted"
    except Exception as e:
        failed = "failed: %s" % e
        import traceback
        traceback.print_exc()
    finally:
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        for key, logs in bench.results.get("failure_logs", {}).items():
            for what, tail in logs:
                if tail.strip():
                    log("%s log tail after %s:\n%s" % (key, what, tail))
        bench.teardown()
    if failed:
        log(failed)
        if "machine" in bench.results:
            bench.note("run " + failed + "; results are partial")
            print(report(bench, command))
        return 1
    section = report(bench, command)
    print(section)
    if args.write:
        write_section(args.write, section)
        log("wrote section %r to %s" % (TITLE, args.write))
    return 0


if __name__ == "__main__":
    sys.exit(main())
