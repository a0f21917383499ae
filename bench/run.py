"""etcd-mirror benchmark: throughput, latency, memory and CPU on local etcd servers.

    .venv/bin/python bench/run.py [--rtt-ms 30] [--mirror-arg=--flag=value ...]
                                  [--write BENCHMARKS.md] [--profile DIR]

Starts two throwaway etcd servers (source and destination), optionally a delay
proxy between the mirror and the source, and the real ``etcd-mirror`` process
(``python -m etcdmirror``), then measures, in one run:

1. raw limit: sequential keep-alive PUTs to the destination, one connection;
2. catch-up: 900 events written while the mirror is SIGSTOPped, then the
   time from SIGCONT until the replica index reaches the source index;
3. sustained load: paced writers at each ``--rates`` rate plus a latency probe;
4. memory: RSS and CPU over ``--events-total`` events written in bursts;
5. optionally (``--profile DIR``) a profile of the mirror during a catch-up.

Prints a Markdown section; ``--write FILE`` also replaces (or appends) the
section with the same title in FILE.  See bench/README.md.

Everything started here (etcd servers, proxy, mirror, writer processes) is
stopped at the end, on Ctrl-C and on errors, by pid.  Only the standard
library and etcd-mirror's own modules are used.
"""

import argparse
import datetime
import http.client
import importlib.metadata
import json
import multiprocessing
import os
import platform
import random
import re
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.parse
from typing import Dict, List, Optional, Tuple

BENCH_DIR = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(BENCH_DIR)
if REPO not in sys.path:
    sys.path.insert(0, REPO)

from etcdmirror.localetcd import LocalEtcd  # noqa: E402

SRC_PREFIX = "/bench"
DST_PREFIX = "/replica"
PROBE_KEY = SRC_PREFIX + "/probe"
KEYS_PER_SET = 100  # the writers share about this many keys
CLK_TCK = os.sysconf("SC_CLK_TCK")
FORM = {"Content-Type": "application/x-www-form-urlencoded"}


def log(message: str) -> None:
    print("[%s] %s" % (time.strftime("%H:%M:%S"), message), file=sys.stderr, flush=True)


# -- small etcd v2 client on http.client (one keep-alive connection) -----------

class Etcd:
    """Blocking etcd v2 client on one keep-alive connection; reconnects on errors."""

    def __init__(self, port: int, timeout: float = 10.0) -> None:
        self.port = port
        self.timeout = timeout
        self.conn: Optional[http.client.HTTPConnection] = None

    def request(self, method: str, key: str, params: Optional[dict] = None,
                body: Optional[dict] = None) -> Tuple[int, Dict, int]:
        """Returns (HTTP status, JSON body, X-Etcd-Index)."""
        path = "/v2/keys" + urllib.parse.quote(key)
        if params:
            path += "?" + urllib.parse.urlencode(params)
        data = urllib.parse.urlencode(body) if body is not None else None
        for attempt in (1, 2):
            if self.conn is None:
                self.conn = http.client.HTTPConnection("127.0.0.1", self.port,
                                                       timeout=self.timeout)
            try:
                self.conn.request(method, path, body=data, headers=FORM if data else {})
                resp = self.conn.getresponse()
                raw = resp.read()
            except (OSError, http.client.HTTPException):
                self.close()
                if attempt == 2:
                    raise
                continue
            index = int(resp.getheader("X-Etcd-Index") or 0)
            return resp.status, (json.loads(raw) if raw else {}), index
        raise AssertionError("unreachable")

    def put(self, key: str, value: str) -> Tuple[int, int]:
        status, _, index = self.request("PUT", key, body={"value": value})
        return status, index

    def delete(self, key: str) -> Tuple[int, int]:
        status, _, index = self.request("DELETE", key)
        return status, index

    def index(self) -> int:
        """The store's current index (a read of a missing key)."""
        return self.request("GET", "/__etcdmirror_bench_missing")[2]

    def tree(self, prefix: str) -> Dict[str, Optional[str]]:
        """{key relative to prefix: value (None for a directory)}."""
        status, body, _ = self.request("GET", prefix, {"recursive": "true"})
        if status == 404:
            return {}
        out: Dict[str, Optional[str]] = {}

        def walk(node: dict) -> None:
            rel = node.get("key", prefix)[len(prefix):]
            if node.get("dir"):
                if rel:
                    out[rel] = None
                for child in node.get("nodes", []):
                    walk(child)
            else:
                out[rel] = node.get("value")

        walk(body["node"])
        return out

    def close(self) -> None:
        if self.conn is not None:
            self.conn.close()
            self.conn = None


# -- /proc ----------------------------------------------------------------------

def cpu_seconds(pid: int) -> float:
    """utime + stime of a process, in seconds."""
    with open("/proc/%d/stat" % pid) as f:
        # The command name may hold spaces; fields after it are fixed.
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


def memory_kb(pid: int) -> Dict[str, int]:
    out = {}
    with open("/proc/%d/status" % pid) as f:
        for line in f:
            if line.startswith(("VmRSS:", "VmHWM:")):
                name, value = line.split(":", 1)
                out[name] = int(value.split()[0])
    return out


# -- writer processes -----------------------------------------------------------

def die_with_parent(parent_pid: int) -> None:
    try:
        import ctypes
        ctypes.CDLL(None).prctl(1, signal.SIGTERM, 0, 0, 0)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass
    if os.getppid() != parent_pid:
        os._exit(0)


def writer_main(wid: int, port: int, keys: int, parent_pid: int, commands, results) -> None:
    """One writer process: runs commands from its queue on its own connection.

    Every operation makes exactly one event: a set of one of its own keys, or
    (one op in ten) a delete of one of its own keys that exists.
    """
    die_with_parent(parent_pid)
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the parent handles Ctrl-C
    client = Etcd(port)
    rng = random.Random(wid)
    names = ["%s/set%d/k%d" % (SRC_PREFIX, wid, j) for j in range(keys)]
    existing: set = set()
    seq = 0
    results.put(("ready", wid))

    def one_op() -> Tuple[bool, int]:
        nonlocal seq
        seq += 1
        if seq % 10 == 0 and existing:
            key = rng.choice(sorted(existing))
            status, index = client.delete(key)
            existing.discard(key)
        else:
            key = rng.choice(names)
            value = "w%d-%d-%s" % (wid, seq, "x" * rng.randint(8, 40))
            status, index = client.put(key, value)
            existing.add(key)
        return 200 <= status < 300, index

    while True:
        try:
            command = commands.get(timeout=1.0)
        except Exception:  # queue.Empty
            if os.getppid() != parent_pid:
                return
            continue
        if command[0] == "stop":
            return
        try:
            results.put(run_command(command, one_op))
        except Exception as e:  # reported by the parent, without a traceback
            results.put(("error", wid, "%s: %s" % (type(e).__name__, e)))
            return


def run_command(command: tuple, one_op) -> tuple:
    """Run one writer command; returns ("done", ops, errors, max index, seconds, late p99)."""
    ops = errors = max_index = 0
    lateness: List[float] = []
    started = time.perf_counter()
    if command[0] == "count":
        for _ in range(command[1]):
            ok, index = one_op()
            ops += 1
            errors += not ok
            max_index = max(max_index, index)
    elif command[0] == "paced":
        # Open loop: op i is due at start + i / rate whatever happened to
        # the previous ones; a late op is sent at once (and counted late).
        _, rate, duration, start_at = command
        started = start_at
        i = 0
        while True:
            due = start_at + i / rate
            if due >= start_at + duration:
                break
            now = time.perf_counter()
            if due > now:
                time.sleep(due - now)
            else:
                lateness.append(now - due)
            ok, index = one_op()
            ops += 1
            errors += not ok
            max_index = max(max_index, index)
            i += 1
    elapsed = time.perf_counter() - started
    late_ms = sorted(lateness)[len(lateness) * 99 // 100] * 1000 if lateness else 0.0
    return ("done", ops, errors, max_index, elapsed, late_ms)


class WriterPool:
    """Several writer processes, each with one keep-alive connection to the source."""

    def __init__(self, count: int, port: int) -> None:
        ctx = multiprocessing.get_context("spawn")
        self.results = ctx.Queue()
        self.queues = []
        self.procs = []
        keys = max(1, KEYS_PER_SET // count)
        for wid in range(count):
            q = ctx.Queue()
            p = ctx.Process(target=writer_main, name="bench-writer-%d" % wid,
                            args=(wid, port, keys, os.getpid(), q, self.results),
                            daemon=True)
            p.start()
            self.queues.append(q)
            self.procs.append(p)
        # Wait until every writer has started (spawning and importing costs CPU
        # that must not overlap a measurement).
        ready = self._collect(60)
        assert all(r[0] == "ready" for r in ready), ready

    def _collect(self, timeout: float) -> List[tuple]:
        out = []
        deadline = time.monotonic() + timeout
        while len(out) < len(self.procs):
            try:
                result = self.results.get(timeout=0.5)
            except Exception:  # queue.Empty
                if time.monotonic() > deadline:
                    raise RuntimeError("writers did not finish within %.0fs" % timeout)
                continue
            if result[0] == "error":
                raise RuntimeError("writer %d failed: %s" % (result[1], result[2]))
            out.append(result)
        return out

    def check(self) -> None:
        for p in self.procs:
            if not p.is_alive():
                raise RuntimeError("writer process %s died (exit %s)" % (p.name, p.exitcode))

    def burst(self, count: int, timeout: float = 120.0) -> Dict:
        """Write exactly ``count`` events as fast as the writers can."""
        n = len(self.queues)
        shares = [count // n + (1 if i < count % n else 0) for i in range(n)]
        started = time.perf_counter()
        for q, share in zip(self.queues, shares):
            q.put(("count", share))
        got = self._collect(timeout)
        return {"ops": sum(r[1] for r in got), "errors": sum(r[2] for r in got),
                "max_index": max(r[3] for r in got),
                "elapsed": time.perf_counter() - started}

    def start_paced(self, rate: float, duration: float) -> None:
        start_at = time.perf_counter() + 0.05
        for q in self.queues:
            q.put(("paced", rate / len(self.queues), duration, start_at))

    def finish_paced(self, timeout: float) -> Dict:
        got = self._collect(timeout)
        ops = sum(r[1] for r in got)
        elapsed = max(r[4] for r in got)
        return {"ops": ops, "errors": sum(r[2] for r in got),
                "max_index": max(r[3] for r in got), "elapsed": elapsed,
                "rate": ops / elapsed if elapsed else 0.0,
                "late_p99_ms": max(r[5] for r in got)}

    def stop(self) -> None:
        for q in self.queues:
            try:
                q.put(("stop",))
            except Exception:
                pass
        for p in self.procs:
            p.join(2)
            if p.is_alive():
                p.terminate()  # by pid
                p.join(2)
            if p.is_alive():
                p.kill()
                p.join()


# -- the mirror process ---------------------------------------------------------

class Mirror:
    """The real etcd-mirror as a child process, with its log in a file."""

    def __init__(self, python: str, root: str, src_url: str, dst_url: str, extra: List[str],
                 log_path: str, profile_path: Optional[str] = None) -> None:
        self.root = root  # etcdmirror is imported from here
        self.args = [python]
        if profile_path:
            self.args += ["-m", "cProfile", "-o", profile_path]
        self.args += ["-m", "etcdmirror", "--reload", "--src-prefix", SRC_PREFIX,
                      "--dst-prefix", DST_PREFIX, "--port", "0"] + extra + [src_url, dst_url]
        self.log_path = log_path
        self.proc: Optional[subprocess.Popen] = None
        self.port: Optional[int] = None
        self.conn: Optional[http.client.HTTPConnection] = None
        self.stopped = False  # SIGSTOPped
        self.polls = 0  # /status reads by wait_index()

    @property
    def pid(self) -> int:
        return self.proc.pid

    def start(self, timeout: float = 30.0) -> None:
        env = dict(os.environ)
        env["PYTHONPATH"] = self.root + os.pathsep + env.get("PYTHONPATH", "")
        with open(self.log_path, "ab") as logf:
            self.proc = subprocess.Popen(self.args, cwd=self.root, env=env,
                                         stdin=subprocess.DEVNULL,
                                         stdout=logf, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + timeout
        while self.port is None:
            self._check_alive()
            found = re.search(r"HTTP interface on port (\d+)", self.log_text())
            if found:
                self.port = int(found.group(1))
            elif time.monotonic() > deadline:
                raise RuntimeError("mirror did not log its port:\n" + self.log_tail())
            else:
                time.sleep(0.02)
        while True:
            self._check_alive()
            try:
                if self.status()["state"] == "replicating":
                    return
            except (OSError, http.client.HTTPException, ValueError):
                pass
            if time.monotonic() > deadline:
                raise RuntimeError("mirror not healthy within %.0fs:\n%s"
                                   % (timeout, self.log_tail()))
            time.sleep(0.02)

    def _check_alive(self) -> None:
        if self.proc.poll() is not None:
            raise RuntimeError("mirror exited with status %s:\n%s"
                               % (self.proc.returncode, self.log_tail()))

    def log_text(self) -> str:
        with open(self.log_path, encoding="utf-8", errors="replace") as f:
            return f.read()

    def log_size(self) -> int:
        return os.path.getsize(self.log_path)

    def log_since(self, offset: int) -> str:
        with open(self.log_path, encoding="utf-8", errors="replace") as f:
            f.seek(offset)
            return f.read()

    def log_tail(self, lines: int = 30) -> str:
        return "\n".join(self.log_text().splitlines()[-lines:])

    def _get(self, path: str) -> bytes:
        for attempt in (1, 2):
            if self.conn is None:
                self.conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=10)
            try:
                self.conn.request("GET", path)
                resp = self.conn.getresponse()
                return resp.read()
            except (OSError, http.client.HTTPException):
                self.conn.close()
                self.conn = None
                if attempt == 2:
                    raise
        raise AssertionError("unreachable")

    def status(self) -> Dict:
        return json.loads(self._get("/status"))

    def resyncs(self) -> Dict[str, float]:
        """etcdmirror_resyncs_total by reason."""
        out = {}
        for line in self._get("/metrics").decode().splitlines():
            found = re.match(r'etcdmirror_resyncs_total\{reason="([^"]*)"\} (\S+)', line)
            if found:
                out[found.group(1)] = float(found.group(2))
        return out

    def wait_index(self, target: int, timeout: float, poll: float = 0.005) -> Optional[float]:
        """Seconds until /status replica_index >= target (None on timeout)."""
        started = time.perf_counter()
        while True:
            self.polls += 1
            if self.status()["replica_index"] >= target:
                return time.perf_counter() - started
            if time.perf_counter() - started > timeout:
                return None
            self._check_alive()
            time.sleep(poll)

    def sigstop(self) -> None:
        os.kill(self.proc.pid, signal.SIGSTOP)
        self.stopped = True

    def sigcont(self) -> None:
        os.kill(self.proc.pid, signal.SIGCONT)
        self.stopped = False

    def stop(self, timeout: float = 15.0) -> Optional[int]:
        """SIGTERM (and SIGCONT if paused), then SIGKILL; returns the exit status."""
        if self.conn is not None:
            self.conn.close()
            self.conn = None
        if self.proc is None or self.proc.poll() is not None:
            return self.proc.returncode if self.proc else None
        os.kill(self.proc.pid, signal.SIGTERM)
        os.kill(self.proc.pid, signal.SIGCONT)
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
            return None


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


# -- the latency probe ----------------------------------------------------------

class Probe:
    """Writes PROBE_KEY = a new sequence number every ``interval`` seconds on the
    source, and watches its replica on the destination.

    The latency of write i is the time from just before its PUT was sent until
    the destination first holds value i or a later one (a resync may skip
    straight to a later value; that still ends the staleness of i).
    """

    def __init__(self, src_port: int, dst_port: int, interval: float, first_seq: int) -> None:
        self.src = Etcd(src_port)
        self.dst_port = dst_port
        self.dst_key = DST_PREFIX + PROBE_KEY
        self.interval = interval
        self.seq = first_seq
        self.first_seq = first_seq
        self.sent: Dict[int, float] = {}
        self.seen: List[Tuple[int, float]] = []  # (value, time first seen), in order
        self.exact = set()  # values seen as such on the destination
        self.stop_writing = threading.Event()
        self.stop_watching = threading.Event()
        self.error: Optional[BaseException] = None
        self.writer = threading.Thread(target=self._write_loop, daemon=True)
        self.watcher = threading.Thread(target=self._watch_loop, daemon=True)

    def start(self) -> None:
        # The watch starts at the destination's current index, before any write.
        self.watch_from = Etcd(self.dst_port).index() + 1
        self.watcher.start()
        self.writer.start()

    def _write_loop(self) -> None:
        try:
            start = time.perf_counter()
            i = 0
            while not self.stop_writing.is_set():
                due = start + i * self.interval
                now = time.perf_counter()
                if due > now:
                    time.sleep(due - now)
                value = self.seq
                self.sent[value] = time.perf_counter()
                self.src.put(PROBE_KEY, str(value))
                self.seq += 1
                i += 1
        except BaseException as e:  # reported by the caller
            self.error = e

    def _watch_loop(self) -> None:
        wait_index = self.watch_from
        conn = None
        path = "/v2/keys" + self.dst_key
        try:
            while not self.stop_watching.is_set():
                if conn is None:
                    conn = http.client.HTTPConnection("127.0.0.1", self.dst_port, timeout=0.5)
                pending_index = None
                try:
                    conn.request("GET", "%s?wait=true&waitIndex=%d" % (path, wait_index))
                    resp = conn.getresponse()
                    pending_index = int(resp.getheader("X-Etcd-Index") or 0)
                    raw = resp.read()
                    now = time.perf_counter()
                except (socket.timeout, TimeoutError):
                    # Still pending: nothing on the key up to the index the
                    # headers gave (if we got them); renew from there.
                    conn.close()
                    conn = None
                    if pending_index:
                        wait_index = max(wait_index, pending_index + 1)
                    continue
                body = json.loads(raw)
                if resp.status == 400 and body.get("errorCode") == 401:
                    # Fell out of the destination's history: read the key now.
                    reader = Etcd(self.dst_port)
                    status, body, index = reader.request("GET", self.dst_key)
                    reader.close()
                    now = time.perf_counter()
                    wait_index = index + 1
                    if status == 200:
                        self._saw(body["node"]["value"], now, exact=False)
                    continue
                if resp.status != 200:
                    raise RuntimeError("probe watch: HTTP %d %r" % (resp.status, body))
                node = body["node"]
                wait_index = node["modifiedIndex"] + 1
                if "value" in node:
                    self._saw(node["value"], now, exact=True)
        except BaseException as e:
            self.error = e
        finally:
            if conn is not None:
                conn.close()

    def _saw(self, value: str, when: float, exact: bool) -> None:
        try:
            v = int(value)
        except ValueError:
            return
        if exact:
            self.exact.add(v)
        if not self.seen or v > self.seen[-1][0]:
            self.seen.append((v, when))

    def last_sent(self) -> int:
        return self.seq - 1

    def wait_seen(self, value: int, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.seen and self.seen[-1][0] >= value:
                return True
            time.sleep(0.01)
        return False

    def stop(self) -> None:
        self.stop_writing.set()
        self.stop_watching.set()
        self.writer.join(5)
        self.watcher.join(5)
        self.src.close()

    def latencies_ms(self) -> Tuple[List[float], int, int]:
        """(latencies in ms of the writes that became visible, not visible, superseded)."""
        out = []
        missing = superseded = 0
        j = 0
        seen = self.seen
        for value in sorted(self.sent):
            while j < len(seen) and seen[j][0] < value:
                j += 1
            if j == len(seen):
                missing += 1
                continue
            if value not in self.exact:
                superseded += 1
            out.append((seen[j][1] - self.sent[value]) * 1000)
        return out, missing, superseded


def percentile(values: List[float], p: float) -> float:
    if not values:
        return float("nan")
    values = sorted(values)
    k = (len(values) - 1) * p / 100.0
    lo = int(k)
    hi = min(lo + 1, len(values) - 1)
    return values[lo] + (values[hi] - values[lo]) * (k - lo)


# -- the benchmark --------------------------------------------------------------

def machine_busy() -> Tuple[float, float]:
    """(busy, total) CPU time of the whole machine so far, from /proc/stat."""
    with open("/proc/stat") as f:
        fields = [float(x) for x in f.readline().split()[1:]]
    idle = fields[3] + (fields[4] if len(fields) > 4 else 0.0)  # idle + iowait
    total = sum(fields[:8])
    return total - idle, total


def machine_busy_share(before: Tuple[float, float]) -> float:
    """Share of all CPUs' time that was busy since ``before`` (0..1)."""
    busy, total = machine_busy()
    return (busy - before[0]) / max(1e-9, total - before[1])


def loadavg() -> str:
    try:
        with open("/proc/loadavg") as f:
            return " ".join(f.read().split()[:3])
    except OSError:
        return "?"


def machine_info(mirror_root: str) -> Dict[str, str]:
    info = {"nproc": str(len(os.sched_getaffinity(0)))}
    try:
        with open("/proc/cpuinfo") as f:
            models = [l.split(":", 1)[1].strip() for l in f if l.startswith("model name")]
        info["cpu"] = models[0] if models else platform.processor() or "?"
    except OSError:
        info["cpu"] = "?"
    try:
        with open("/proc/meminfo") as f:
            kb = int(next(l for l in f if l.startswith("MemTotal")).split()[1])
        info["memory"] = "%.1f GiB" % (kb / 1024 / 1024)
    except (OSError, StopIteration):
        info["memory"] = "?"
    info["kernel"] = platform.release()
    info["load"] = loadavg()
    info["python"] = platform.python_version()
    for dist in ("Twisted", "treq"):
        try:
            info[dist.lower()] = importlib.metadata.version(dist)
        except importlib.metadata.PackageNotFoundError:
            info[dist.lower()] = "?"
    try:
        out = subprocess.run(["etcd", "--version"], capture_output=True, text=True).stdout
        info["etcd"] = out.split("\n")[0].replace("etcd Version:", "").strip()
    except OSError:
        info["etcd"] = "?"
    try:
        with open(os.path.join(mirror_root, "etcdmirror", "__init__.py")) as f:
            found = re.search(r"__version__\s*=\s*['\"]([^'\"]+)", f.read())
        info["mirror"] = found.group(1) if found else "?"
    except OSError:
        info["mirror"] = "?"
    where = "" if mirror_root == REPO else " from %s" % mirror_root
    try:
        git = ["git", "-C", mirror_root]
        top = subprocess.run(git + ["rev-parse", "--show-toplevel"], capture_output=True,
                             text=True).stdout.strip()
        if top and os.path.realpath(top) == os.path.realpath(mirror_root):
            rev = subprocess.run(git + ["rev-parse", "--short", "HEAD"],
                                 capture_output=True, text=True).stdout.strip()
            dirty = subprocess.run(git + ["status", "--porcelain", "--", "etcdmirror"],
                                   capture_output=True, text=True).stdout.strip()
            info["git"] = "git " + rev + (" + uncommitted changes in etcdmirror/"
                                          if dirty else "") + where
        else:
            info["git"] = "not a git checkout" + where
    except OSError:
        info["git"] = "?" + where
    return info


class Bench:
    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.python = args.python or sys.executable
        self.mirror_root = os.path.abspath(args.mirror_path or REPO)
        self.workdir = tempfile.mkdtemp(prefix="etcdmirror-bench-")
        self.src: Optional[LocalEtcd] = None
        self.dst: Optional[LocalEtcd] = None
        self.proxy: Optional[subprocess.Popen] = None
        self.mirror: Optional[Mirror] = None
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
        self.src_client = Etcd(self.src.client_port)
        self.dst_client = Etcd(self.dst.client_port)
        mirror_src = self.src.url
        if self.args.rtt_ms > 0:
            self.proxy, port = start_proxy(self.src.client_port, self.args.rtt_ms)
            self.guard("pid", self.proxy.pid)
            mirror_src = "http://127.0.0.1:%d" % port
            log("delay proxy pid %d on port %d: %.1f ms each way to the source"
                % (self.proxy.pid, port, self.args.rtt_ms / 2))
        self.mirror_src = mirror_src
        log("starting %d writer processes" % self.args.writers)
        self.writers = WriterPool(self.args.writers, self.src.client_port)

    def start_mirror(self, profile_path: Optional[str] = None, name: str = "mirror") -> Mirror:
        mirror = Mirror(self.python, self.mirror_root, self.mirror_src, self.dst.url,
                        self.args.mirror_arg,
                        os.path.join(self.workdir, name + ".log"), profile_path)
        self.mirror = mirror
        try:
            mirror.start(self.args.start_timeout)
        finally:
            if mirror.proc is not None:
                self.guard("pid", mirror.pid)
        log("%s pid %d, HTTP port %d: %s" % (name, mirror.pid, mirror.port,
                                            shlex.join(mirror.args[1:])))
        return mirror

    def teardown(self) -> None:
        log("stopping everything")
        if self.mirror is not None:
            code = self.mirror.stop()
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
        return target, self.mirror.wait_index(target, timeout, poll)

    def resync_lines(self, since: int) -> List[str]:
        return [l for l in self.mirror.log_since(since).splitlines()
                if re.search(r"resync", l, re.I)]

    def verify_tree(self) -> Tuple[bool, str]:
        src = self.src_client.tree(SRC_PREFIX)
        dst = self.dst_client.tree(DST_PREFIX + SRC_PREFIX)
        if src == dst:
            return True, "%d keys identical" % sum(v is not None for v in src.values())
        missing = [k for k in src if k not in dst]
        extra = [k for k in dst if k not in src]
        differs = [k for k in src if k in dst and src[k] != dst[k]]
        return False, "%d missing, %d extra, %d differ (e.g. %s)" % (
            len(missing), len(extra), len(differs), (missing + extra + differs)[:3])

    # -- phases --

    def raw_limit(self) -> None:
        n = self.args.raw_puts
        log("raw limit: %d sequential keep-alive PUTs to the destination" % n)
        conn = http.client.HTTPConnection("127.0.0.1", self.dst.client_port, timeout=10)
        try:
            started = time.perf_counter()
            for i in range(n):
                conn.request("PUT", "/v2/keys/bench-raw/k%d" % (i % KEYS_PER_SET),
                             body="value=raw-%d" % i, headers=FORM)
                resp = conn.getresponse()
                resp.read()
                if resp.status >= 300:
                    raise RuntimeError("raw PUT failed: HTTP %d" % resp.status)
            elapsed = time.perf_counter() - started
        finally:
            conn.close()
        self.results["raw"] = {"n": n, "elapsed": elapsed, "rate": n / elapsed}
        log("raw limit: %.0f PUT/s (%.2f ms each)" % (n / elapsed, elapsed / n * 1000))
        # The same, from the HTTP stacks the mirror is built on (bench/httpfloor.py).
        self.results["floor"] = self.http_floor(n)
        rate = self.args.floor_load
        if rate > 0:
            # ... and while writers load the source at that rate, as in the
            # sustained phase (no mirror runs yet).
            log("floor under load: writers at %g writes/s on the source" % rate)
            self.writers.start_paced(rate, 10.0)
            floor = self.http_floor(n, "under load")
            load = self.writers.finish_paced(60.0)
            floor["load_rate"] = load["rate"]
            self.results["floor_load"] = floor

    def http_floor(self, n: int, label: str = "") -> Dict:
        run = subprocess.run(
            [sys.executable, os.path.join(BENCH_DIR, "httpfloor.py"),
             str(self.dst.client_port), str(n)],
            capture_output=True, text=True, timeout=300, stdin=subprocess.DEVNULL)
        if run.returncode != 0:
            raise RuntimeError("httpfloor.py failed: %s" % run.stderr[-2000:])
        floor = json.loads(run.stdout)
        for name, f in floor.items():
            log("floor %s(%s): %.0f PUT/s, %.3f CPU ms each"
                % (label + " " if label else "", name, f["rate"], f["cpu_ms"]))
        return floor

    def catch_up(self, events: int, profile=None) -> Dict:
        mirror = self.mirror
        log("catch-up: waiting until the mirror is idle and caught up")
        _, took = self.caught_up(self.args.drain_timeout)
        if took is None:
            raise RuntimeError("mirror not caught up before the catch-up phase")
        poll = self.args.status_poll_ms / 1000
        # What one /status read costs the idle mirror: the catch-up below reads
        # it every `poll` seconds, and that CPU is not replication work.
        calib_cpu = cpu_seconds(mirror.pid)
        calib_polls = 0
        calib_end = time.perf_counter() + 1.0
        while time.perf_counter() < calib_end:
            mirror.status()
            calib_polls += 1
            time.sleep(poll)
        poll_cpu = (cpu_seconds(mirror.pid) - calib_cpu) / calib_polls
        log_offset = mirror.log_size()
        resyncs_before = mirror.resyncs()
        cpu_before = cpu_seconds(mirror.pid)
        mirror.sigstop()
        if profile is not None:
            profile.start(mirror.pid)
        log("catch-up: mirror SIGSTOPped; writing %d events" % events)
        written = self.writers.burst(events)
        target = self.src_client.index()
        polls_before = mirror.polls
        mirror.sigcont()
        started = time.perf_counter()
        took = mirror.wait_index(target, self.args.catchup_timeout, poll)
        cpu_after = cpu_seconds(mirror.pid)
        polls = mirror.polls - polls_before
        if profile is not None:
            profile.stop()
        result = {"events": written["ops"], "write_s": written["elapsed"],
                  "errors": written["errors"], "target": target}
        if took is None:
            replica = mirror.status()["replica_index"]
            done = events - (target - replica)
            result.update(timeout=True, elapsed=time.perf_counter() - started,
                          applied=done)
            self.note("catch-up did not finish within %.0fs (%d of %d events applied)"
                      % (self.args.catchup_timeout, done, events))
            rate = done / result["elapsed"]
        else:
            result.update(timeout=False, elapsed=took, applied=events)
            rate = events / took
        result["rate"] = rate
        result["cpu_s"] = cpu_after - cpu_before
        result["cpu_ms_per_event"] = result["cpu_s"] / max(1, result["applied"]) * 1000
        result["polls"] = polls
        result["poll_cpu_ms"] = poll_cpu * 1000
        result["poll_share"] = polls * poll_cpu / result["cpu_s"] if result["cpu_s"] else 0.0
        result["cpu_ms_per_event_net"] = max(0.0, result["cpu_s"] - polls * poll_cpu) / max(
            1, result["applied"]) * 1000
        after = mirror.resyncs()
        result["resyncs"] = {k: v - resyncs_before.get(k, 0) for k, v in after.items()
                             if v - resyncs_before.get(k, 0)}
        result["resync_log"] = self.resync_lines(log_offset)
        if took is None:
            log("catch-up: waiting for the rest")
            self.caught_up(self.args.drain_timeout)
        log("catch-up: %d events in %.2fs after SIGCONT = %.0f events/s, %.2f ms CPU/event "
            "without the %d /status reads (%.2f with them, ~%.2f ms each)%s"
            % (result["applied"], result["elapsed"], rate, result["cpu_ms_per_event_net"],
               polls, result["cpu_ms_per_event"], result["poll_cpu_ms"],
               ", RESYNC" if result["resyncs"] else ""))
        return result

    def sustained(self, rate: float) -> Dict:
        mirror = self.mirror
        duration = self.args.duration
        log("sustained %g writes/s for %gs: starting writers and the probe" % (rate, duration))
        self.caught_up(self.args.drain_timeout)
        log_offset = mirror.log_size()
        resyncs_before = mirror.resyncs()
        cpu_before = cpu_seconds(mirror.pid)
        index_before = self.src_client.index()
        probe = Probe(self.src.client_port, self.dst.client_port,
                      self.args.probe_ms / 1000, self.probe_seq)
        probe.start()
        busy_before = machine_busy()
        self.writers.start_paced(rate, duration)
        started = time.perf_counter()
        max_lag = 0
        # Sample the lag while the writers run (cheap: 10 /status reads a second).
        while time.perf_counter() - started < duration:
            time.sleep(0.1)
            mirror._check_alive()
            if probe.error is not None:
                raise RuntimeError("probe failed: %r" % (probe.error,))
            try:
                status = mirror.status()
                max_lag = max(max_lag, self.src_client.index() - status["replica_index"])
            except (OSError, http.client.HTTPException, ValueError):
                pass
        written = self.writers.finish_paced(duration + 60)
        busy = machine_busy_share(busy_before)
        end_index = self.src_client.index()
        end_lag = end_index - mirror.status()["replica_index"]
        max_lag = max(max_lag, end_lag)
        probe.stop_writing.set()
        probe.writer.join(5)
        _, drain = self.caught_up(self.args.drain_timeout, poll=0.01)
        if drain is None:
            self.note("rate %g: the replica did not catch up within %.0fs after the load"
                      % (rate, self.args.drain_timeout))
        probe.wait_seen(probe.last_sent(), 5)
        probe.stop()
        self.probe_seq = probe.seq
        cpu = cpu_seconds(mirror.pid) - cpu_before
        events = self.src_client.index() - index_before
        if probe.error is not None:
            raise RuntimeError("probe failed: %r" % (probe.error,))
        lat, missing, superseded = probe.latencies_ms()
        after = mirror.resyncs()
        resyncs = {k: v - resyncs_before.get(k, 0) for k, v in after.items()
                   if v - resyncs_before.get(k, 0)}
        equal, detail = self.verify_tree() if drain is not None else (False, "not caught up")
        result = {
            "target": rate, "duration": duration, "achieved": written["rate"],
            "writes": written["ops"], "write_errors": written["errors"],
            "late_p99_ms": written["late_p99_ms"], "probes": len(probe.sent),
            "p50": percentile(lat, 50), "p99": percentile(lat, 99),
            "max": max(lat) if lat else float("nan"),
            "probe_missing": missing, "probe_superseded": superseded,
            "max_lag": max_lag, "end_lag": end_lag, "drain_s": drain,
            "resyncs": resyncs, "resync_log": self.resync_lines(log_offset),
            "equal": equal, "verify": detail, "events": events, "cpu_s": cpu,
            "cpu_ms_per_event": cpu / max(1, events) * 1000, "machine_busy": busy,
        }
        log("sustained %g/s: achieved %.0f/s; probe p50 %.1f p99 %.1f max %.1f ms; "
            "max lag %d, end lag %d, drain %s; resyncs %s; tree %s"
            % (rate, result["achieved"], result["p50"], result["p99"], result["max"],
               max_lag, end_lag, "%.2fs" % drain if drain is not None else "TIMEOUT",
               resyncs or "none", detail))
        return result

    def memory(self) -> Dict:
        mirror = self.mirror
        total = self.args.events_total
        burst = self.args.burst
        budget = self.args.memory_budget
        # Every tenth of the way (10k, 20k, ... 100k by default).
        checkpoints = sorted({max(1, total * i // 10) for i in range(1, 11)})
        log("memory: %d events in bursts of %d (lag kept under %d), budget %.0fs"
            % (total, burst, self.args.max_lag, budget))
        self.caught_up(self.args.drain_timeout)
        log_offset = mirror.log_size()
        resyncs_before = mirror.resyncs()
        mem_before = memory_kb(mirror.pid)
        cpu_before = cpu_seconds(mirror.pid)
        index_before = self.src_client.index()
        written = 0
        pending: List[Tuple[int, int]] = []  # (events written, source index then)
        samples = []
        started = time.perf_counter()
        last_report = started
        budget_hit = False
        source_index = index_before

        def take_samples(replica: int) -> None:
            while pending and replica >= pending[0][1]:
                count, _ = pending.pop(0)
                mem = memory_kb(mirror.pid)
                samples.append({"events": count, "rss_kb": mem["VmRSS"],
                                "hwm_kb": mem["VmHWM"],
                                "cpu_s": cpu_seconds(mirror.pid) - cpu_before,
                                "t": time.perf_counter() - started})
                log("memory: %d events applied: VmRSS %.1f MiB, VmHWM %.1f MiB"
                    % (count, mem["VmRSS"] / 1024, mem["VmHWM"] / 1024))

        while written < total:
            if time.perf_counter() - started > budget:
                budget_hit = True
                break
            replica = mirror.status()["replica_index"]
            take_samples(replica)
            if source_index - replica > self.args.max_lag - burst:
                time.sleep(0.01)
                continue
            n = min(burst, total - written)
            # Never write past a checkpoint in one burst, so the sample is exact.
            nxt = [c for c in checkpoints if c > written]
            if nxt:
                n = min(n, nxt[0] - written)
            result = self.writers.burst(n)
            written += result["ops"]
            source_index = self.src_client.index()
            if written in checkpoints:
                pending.append((written, source_index))
            if time.perf_counter() - last_report > 10:
                last_report = time.perf_counter()
                log("memory: %d events written, replica %d behind"
                    % (written, source_index - mirror.status()["replica_index"]))
        if budget_hit:
            self.note("memory phase: budget of %.0fs reached after %d of %d events "
                      "(raise --memory-budget or lower --events-total)"
                      % (budget, written, total))
            if not pending or pending[-1][0] != written:
                if not samples or samples[-1]["events"] != written:
                    pending.append((written, source_index))
        _, drain = self.caught_up(self.args.drain_timeout, poll=0.01)
        take_samples(mirror.status()["replica_index"])
        elapsed = time.perf_counter() - started
        cpu = cpu_seconds(mirror.pid) - cpu_before
        mem_after = memory_kb(mirror.pid)
        events = self.src_client.index() - index_before
        after = mirror.resyncs()
        resyncs = {k: v - resyncs_before.get(k, 0) for k, v in after.items()
                   if v - resyncs_before.get(k, 0)}
        equal, detail = self.verify_tree() if drain is not None else (False, "not caught up")
        result = {"events": events, "written": written, "elapsed": elapsed,
                  "rate": events / elapsed, "rss_before_kb": mem_before["VmRSS"],
                  "hwm_before_kb": mem_before["VmHWM"], "rss_after_kb": mem_after["VmRSS"],
                  "hwm_kb": mem_after["VmHWM"], "samples": samples, "cpu_s": cpu,
                  "cpu_s_per_1000": cpu / max(1, events) * 1000, "resyncs": resyncs,
                  "resync_log": self.resync_lines(log_offset), "equal": equal,
                  "verify": detail, "budget_hit": budget_hit}
        log("memory: %d events in %.1fs (%.0f/s); VmRSS %.1f -> %.1f MiB, VmHWM %.1f MiB; "
            "%.2f CPU s per 1000 events; tree %s"
            % (events, elapsed, result["rate"], mem_before["VmRSS"] / 1024,
               mem_after["VmRSS"] / 1024, mem_after["VmHWM"] / 1024,
               result["cpu_s_per_1000"], detail))
        return result

    def profile(self) -> None:
        directory = os.path.abspath(self.args.profile)
        os.makedirs(directory, exist_ok=True)
        pyspy = shutil.which("py-spy")
        if pyspy:
            # py-spy samples the running mirror from outside: profile the main
            # mirror during one more catch-up.
            out = os.path.join(directory, "mirror-catchup.speedscope.json")
            log("profile: py-spy on the mirror during a catch-up -> %s" % out)
            result = self.catch_up(self.args.catchup_events, profile=PySpy(pyspy, out))
            self.results["profile"] = {"tool": "py-spy", "file": out, "catchup": result}
            return
        # cProfile needs a mirror started under it: stop the main mirror and run
        # a profiled one (with --reload) for one catch-up.
        out = os.path.join(directory, "mirror.prof")
        if os.path.exists(out):
            os.unlink(out)
        log("profile: py-spy not installed; catch-up with a mirror under cProfile -> %s" % out)
        code = self.mirror.stop()
        self.guard("unpid", self.mirror.pid)
        self.results["mirror_exit"] = code
        self.start_mirror(profile_path=out, name="mirror-cprofile")
        result = self.catch_up(self.args.catchup_events)
        t = time.perf_counter()
        code = self.mirror.stop()
        stop_s = time.perf_counter() - t
        self.guard("unpid", self.mirror.pid)
        entry = {"tool": "cProfile", "file": out, "catchup": result, "exit": code,
                 "stop_s": stop_s}
        if not os.path.exists(out) or os.path.getsize(out) == 0:
            entry["written"] = False
            self.note("cProfile wrote no %s after SIGTERM (exit status %s)" % (out, code))
        else:
            entry["written"] = True
            entry["top"] = profile_tables(out)
        self.results["profile"] = entry
        self.mirror = None

    def run(self) -> None:
        a = self.args
        self.results["started"] = datetime.datetime.now(datetime.timezone.utc)
        self.results["machine"] = machine_info(self.mirror_root)
        self.setup()
        if a.raw_puts > 0:
            self.raw_limit()
        self.start_mirror()
        wall = time.perf_counter()
        if a.catchup_events > 0:
            self.results["catchup"] = self.catch_up(a.catchup_events)
        self.results["sustained"] = []
        for rate in a.rates:
            self.results["sustained"].append(self.sustained(rate))
        if a.events_total > 0:
            self.results["memory"] = self.memory()
        if a.profile:
            self.profile()
        self.results["wall_s"] = time.perf_counter() - wall
        self.results["load_end"] = loadavg()


class PySpy:
    """py-spy record on a pid, stopped with SIGINT (py-spy then writes its output)."""

    def __init__(self, binary: str, out: str) -> None:
        self.binary = binary
        self.out = out
        self.proc: Optional[subprocess.Popen] = None

    def start(self, pid: int) -> None:
        self.proc = subprocess.Popen(
            [self.binary, "record", "--pid", str(pid), "--format", "speedscope",
             "--output", self.out, "--rate", "250", "--nonblocking"],
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)

    def stop(self) -> None:
        if self.proc is None:
            return
        self.proc.send_signal(signal.SIGINT)
        try:
            self.proc.wait(30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


def profile_tables(path: str, top: int = 25) -> Dict[str, str]:
    import io
    import pstats
    tables = {}
    for key in ("cumulative", "tottime", "etcdmirror"):
        buf = io.StringIO()
        stats = pstats.Stats(path, stream=buf)
        if key == "etcdmirror":
            # Our own code only, by cumulative time: which step costs what.
            stats.sort_stats("cumulative").print_stats(r"etcdmirror/(?!__main__|cli)", top)
        else:
            stats.strip_dirs().sort_stats(key).print_stats(top)
        text = buf.getvalue()
        # Keep the table only (from the header line on).
        start = text.find("   ncalls")
        tables[key] = text[start:].rstrip() if start >= 0 else text.rstrip()
    return tables


# -- report ---------------------------------------------------------------------

def title_for(args: argparse.Namespace) -> str:
    if args.title:
        return args.title
    title = "loopback" if args.rtt_ms <= 0 else "%g ms RTT to the source" % args.rtt_ms
    if args.mirror_arg:
        title += ", " + " ".join(args.mirror_arg)
    return title


def fmt_ms(value: float) -> str:
    return "n/a" if value != value else "%.1f" % value


def resync_text(resyncs: Dict[str, float], lines: List[str]) -> str:
    if not resyncs and not lines:
        return "none"
    parts = ["%s×%d" % (k, v) for k, v in sorted(resyncs.items())]
    done = sum(1 for l in lines if re.search(r"resync \(\w+\) done", l))
    return (", ".join(parts) or "metrics: none") + "; log: %d done" % done


def report(bench: Bench, command: str) -> str:
    a = bench.args
    r = bench.results
    m = r["machine"]
    out = ["## %s" % title_for(a), ""]
    out.append("* Command: `%s`" % command)
    out.append("* Date: %s" % r["started"].strftime("%Y-%m-%d %H:%M UTC"))
    out.append("* Machine: %s CPUs (%s), %s RAM, Linux %s; load average %s at the start%s"
               % (m["nproc"], m["cpu"], m["memory"], m["kernel"], m["load"],
                  ", %s at the end" % r["load_end"] if "load_end" in r else ""))
    out.append("* Software: Python %s, Twisted %s, treq %s, etcd %s; etcd-mirror %s (%s)"
               % (m["python"], m["twisted"], m["treq"], m["etcd"], m["mirror"], m["git"]))
    setup = ("mirror -> delay proxy (%g ms RTT) -> source etcd" % a.rtt_ms
             if a.rtt_ms > 0 else "mirror -> source etcd on loopback")
    out.append("* Setup: %s; destination on loopback; mirror flags: `%s`; %d writer "
               "processes. The writers, the probe, both etcd servers%s and the mirror "
               "share the %s CPUs."
               % (setup, " ".join(["--reload", "--src-prefix", SRC_PREFIX] + a.mirror_arg),
                  a.writers, " the proxy" if a.rtt_ms > 0 else "", m["nproc"]))
    if "wall_s" in r:
        out.append("* Duration of the measured phases: %.0f s" % r["wall_s"])
    out.append("")
    out.append("| measure | result |")
    out.append("|---|---|")
    raw = r.get("raw")
    if raw:
        out.append("| raw limit: sequential keep-alive PUTs to the destination (%d) | "
                   "**%.0f PUT/s** (%.2f ms each) |" % (raw["n"], raw["rate"],
                                                       1000 / raw["rate"]))
    floor = r.get("floor") if raw else None
    if floor:
        out.append("| the same PUTs from Twisted's `Agent` alone; from etcd-mirror's own "
                   "client (treq) — the ceiling for in-order writes on this stack | "
                   "%.0f PUT/s = %.2f × raw (%.2f CPU ms each); **%.0f PUT/s = %.2f × raw** "
                   "(%.2f CPU ms each) |"
                   % (floor["agent"]["rate"], floor["agent"]["rate"] / raw["rate"],
                      floor["agent"]["cpu_ms"], floor["client"]["rate"],
                      floor["client"]["rate"] / raw["rate"], floor["client"]["cpu_ms"]))
    loaded = r.get("floor_load")
    if loaded:
        out.append("| the same two, while writers load the source at %.0f writes/s (no mirror "
                   "running) | %.0f PUT/s (Agent); **%.0f PUT/s** (etcd-mirror's client) |"
                   % (loaded["load_rate"], loaded["agent"]["rate"], loaded["client"]["rate"]))
    c = r.get("catchup")
    if c:
        ratio = " = %.2f × the raw limit" % (c["rate"] / raw["rate"]) if raw else ""
        if floor:
            ratio += " (%.2f × the client's own limit)" % (c["rate"] / floor["client"]["rate"])
        out.append("| catch-up: %d events written while SIGSTOPped, SIGCONT → replica "
                   "index reached | %s%.2f s → **%.0f events/s**%s; mirror CPU **%.2f ms** per "
                   "event (%.2f ms counting the %d /status polls of the measurement); "
                   "resyncs: %s |"
                   % (c["events"], "TIMEOUT, " if c["timeout"] else "", c["elapsed"],
                      c["rate"], ratio, c["cpu_ms_per_event_net"], c["cpu_ms_per_event"],
                      c["polls"], resync_text(c["resyncs"], c["resync_log"])))
    mem = r.get("memory")
    if mem:
        out.append("| memory: VmRSS before → after %d events; peak (VmHWM) | %.1f → %.1f "
                   "MiB; peak **%.1f MiB** |" % (mem["events"], mem["rss_before_kb"] / 1024,
                                                mem["rss_after_kb"] / 1024,
                                                mem["hwm_kb"] / 1024))
        out.append("| memory phase: mirror CPU per 1000 events; throughput | **%.2f CPU s** "
                   "per 1000 events; %.0f events/s (%.0f s); resyncs: %s; tree %s |"
                   % (mem["cpu_s_per_1000"], mem["rate"], mem["elapsed"],
                      resync_text(mem["resyncs"], mem["resync_log"]),
                      "identical" if mem["equal"] else "DIFFERENT: " + mem["verify"]))
    out.append("")
    if r.get("sustained"):
        out.append("Sustained load (%g s per rate; probe every %g ms; latency = write "
                   "sent on the source → value visible on the destination):"
                   % (a.duration, a.probe_ms))
        out.append("")
        out.append("| target writes/s | achieved | probe p50 ms | p99 ms | max ms | probes "
                   "| max lag | lag at end | drain s | resyncs | CPU ms/event "
                   "| machine CPU busy | source = replica |")
        out.append("|---|---|---|---|---|---|---|---|---|---|---|---|---|")
        for s in r["sustained"]:
            probes = "%d" % s["probes"]
            if s["probe_superseded"]:
                probes += ", %d skipped" % s["probe_superseded"]
            if s["probe_missing"]:
                probes += ", %d never visible" % s["probe_missing"]
            row = "| %g | %.0f%s | %s | %s | %s | %s | %d | %d | %s | %s | %.2f | %s | %s |"
            out.append(row % (
                s["target"], s["achieved"], " (%d errors)" % s["write_errors"]
                if s["write_errors"] else "", fmt_ms(s["p50"]), fmt_ms(s["p99"]),
                fmt_ms(s["max"]), probes, s["max_lag"], s["end_lag"],
                "%.2f" % s["drain_s"] if s["drain_s"] is not None else "TIMEOUT",
                resync_text(s["resyncs"], s["resync_log"]), s["cpu_ms_per_event"],
                "%.0f%%" % (100 * s["machine_busy"]) if "machine_busy" in s else "-",
                "yes (%s)" % s["verify"] if s["equal"] else "**NO**: " + s["verify"]))
        out.append("")
    if mem and mem["samples"]:
        out.append("Memory over the run (events applied since the phase began):")
        out.append("")
        out.append("| events | VmRSS MiB | VmHWM MiB | mirror CPU s | CPU s / 1000 events |")
        out.append("|---|---|---|---|---|")
        for s in mem["samples"]:
            out.append("| %d | %.1f | %.1f | %.1f | %.2f |" % (
                s["events"], s["rss_kb"] / 1024, s["hwm_kb"] / 1024, s["cpu_s"],
                s["cpu_s"] / max(1, s["events"]) * 1000))
        out.append("")
    p = r.get("profile")
    if p:
        pc = p["catchup"]
        out.append("Profile (%s, %s): catch-up of %d events under the profiler took %.2f s "
                   "(%.0f events/s)." % (p["tool"], p["file"], pc["applied"], pc["elapsed"],
                                         pc["rate"]))
        if p["tool"] == "cProfile":
            out.append("The profile covers the profiled mirror's whole life (start, "
                       "--reload, the catch-up, stop). SIGTERM: exit status %s after %.1f s; "
                       "profile %s." % (p["exit"], p["stop_s"], "written" if p["written"]
                                        else "NOT written"))
            for key in ("cumulative", "tottime", "etcdmirror"):
                if key in p.get("top", {}):
                    out.append("")
                    out.append("<details><summary>top 25 by %s</summary>" % (
                        key if key != "etcdmirror" else "cumulative, etcdmirror/ only"))
                    out.append("")
                    out.append("```")
                    out.append(p["top"][key])
                    out.append("```")
                    out.append("</details>")
        out.append("")
    if r["notes"]:
        for n in r["notes"]:
            out.append("* Note: %s" % n)
        out.append("")
    return "\n".join(out)


def write_section(path: str, section: str) -> None:
    """Replace the section with the same '## ' title in path, or append it."""
    heading = section.split("\n", 1)[0]
    if os.path.exists(path):
        with open(path, encoding="utf-8") as f:
            text = f.read()
    else:
        text = ("# etcd-mirror benchmarks\n\nProduced by `bench/run.py`; see "
                "[bench/README.md](bench/README.md) for what each number means.\n")
    lines = text.split("\n")
    start = next((i for i, l in enumerate(lines) if l.rstrip() == heading), None)
    if start is None:
        text = text.rstrip("\n") + "\n\n" + section.rstrip("\n") + "\n"
    else:
        end = next((i for i in range(start + 1, len(lines))
                    if lines[i].startswith("## ")), len(lines))
        new = lines[:start] + section.rstrip("\n").split("\n") + [""] + lines[end:]
        text = "\n".join(new).rstrip("\n") + "\n"
    tmp = path + ".tmp"
    with open(tmp, "w", encoding="utf-8") as f:
        f.write(text)
    os.replace(tmp, path)


# -- command line -----------------------------------------------------------------

def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="bench/run.py", description="Benchmark etcd-mirror on local etcd servers.",
        epilog="Run from the repository root, e.g. .venv/bin/python bench/run.py "
        "--write BENCHMARKS.md. The defaults take about 3-4 minutes.")
    p.add_argument("--rtt-ms", type=float, default=0.0,
                   help="put a delay proxy with this round-trip time between the mirror "
                   "and the source (default: 0, direct loopback)")
    p.add_argument("--mirror-arg", action="append", default=[], metavar="ARG",
                   help="extra etcd-mirror argument, repeatable, e.g. "
                   "--mirror-arg=--watch-concurrency=16")
    p.add_argument("--raw-puts", type=int, default=2000,
                   help="sequential PUTs for the raw limit (default 2000; 0 skips)")
    p.add_argument("--catchup-events", type=int, default=900,
                   help="events written while the mirror is stopped (default 900; keep it "
                   "under etcd's 1000-event history; 0 skips)")
    p.add_argument("--rates", type=lambda s: [float(x) for x in s.split(",") if x],
                   default=[100.0, 400.0, 1000.0],
                   help="sustained write rates, comma-separated (default 100,400,1000; "
                   "empty skips)")
    p.add_argument("--floor-load", type=float, default=None, metavar="RATE",
                   help="also measure the HTTP floors while writers load the source at "
                   "RATE writes/s (default: the highest of --rates; 0 skips)")
    p.add_argument("--duration", type=float, default=10.0,
                   help="seconds per sustained rate (default 10)")
    p.add_argument("--probe-ms", type=float, default=50.0,
                   help="probe write interval in ms (default 50)")
    p.add_argument("--events-total", type=int, default=100000,
                   help="events for the memory phase (default 100000; 0 skips)")
    p.add_argument("--burst", type=int, default=400,
                   help="memory phase: events per burst (default 400)")
    p.add_argument("--max-lag", type=int, default=800,
                   help="memory phase: start a burst only while the replica is less than "
                   "this minus --burst behind, to stay inside etcd's history (default 800)")
    p.add_argument("--memory-budget", type=float, default=150.0,
                   help="memory phase: stop writing after this many seconds even if "
                   "--events-total is not reached (default 150)")
    p.add_argument("--writers", type=int, default=4,
                   help="writer processes, one keep-alive connection each (default 4)")
    p.add_argument("--status-poll-ms", type=float, default=5.0,
                   help="/status poll interval during catch-up (default 5)")
    p.add_argument("--catchup-timeout", type=float, default=120.0)
    p.add_argument("--drain-timeout", type=float, default=60.0,
                   help="how long to wait for the replica to catch up after a load")
    p.add_argument("--start-timeout", type=float, default=60.0)
    p.add_argument("--profile", metavar="DIR",
                   help="profile the mirror during a catch-up: py-spy if installed, "
                   "else cProfile (DIR/mirror.prof, top 25 printed)")
    p.add_argument("--write", metavar="FILE",
                   help="also replace/append this run's section in FILE (Markdown)")
    p.add_argument("--title", help="section title (default: from --rtt-ms and --mirror-arg)")
    p.add_argument("--python", help="interpreter for the mirror (default: this one)")
    p.add_argument("--mirror-path", metavar="DIR",
                   help="run the etcdmirror package found in DIR instead of this checkout's "
                   "(e.g. an older commit: git archive HEAD | tar -x -C DIR)")
    p.add_argument("--keep-logs", action="store_true",
                   help="keep the work directory with the mirror logs")
    args = p.parse_args(argv)
    if args.writers < 1:
        p.error("--writers must be at least 1")
    if args.floor_load is None:
        args.floor_load = max(args.rates, default=0.0)
    if args.catchup_events >= 1000:
        log("warning: --catchup-events >= 1000 leaves etcd's event history; "
            "the mirror will resync")
    return args


def command_line() -> str:
    python = sys.executable
    try:
        rel = os.path.relpath(python)
        if not rel.startswith(".."):
            python = rel
    except ValueError:
        pass
    return shlex.join([python, os.path.relpath(os.path.abspath(sys.argv[0]))] + sys.argv[1:])


def main(argv=None) -> int:
    args = parse_args(argv)
    bench = Bench(args)
    command = command_line()

    def on_term(signum, frame):
        raise KeyboardInterrupt()

    signal.signal(signal.SIGTERM, on_term)
    failed = None
    try:
        bench.run()
    except KeyboardInterrupt:
        failed = "interrupted"
        log("interrupted")
    except Exception as e:
        failed = "failed: %s" % e
        log("FAILED: %s" % e)
        import traceback
        traceback.print_exc()
        if bench.mirror is not None and bench.mirror.proc is not None:
            log("mirror log tail:\n" + bench.mirror.log_tail())
    finally:
        # Ctrl-C again during cleanup must not leave processes behind.
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        bench.teardown()
    if failed:
        if "started" in bench.results and "machine" in bench.results:
            bench.note("run " + failed + "; results are partial")
            print(report(bench, command))
        return 1
    section = report(bench, command)
    print(section)
    if args.write:
        write_section(args.write, section)
        log("wrote section %r to %s" % (title_for(args), args.write))
    return 0


if __name__ == "__main__":
    sys.exit(main())
