"""The load: writer processes that write to the source, in bursts or paced.

Each writer is a process of its own (so the load does not share the
benchmark's GIL) with one keep-alive connection to the source, and writes
only its own keys, so every operation makes exactly one event.  A
:class:`WriterPool` hands them commands: write N events as fast as possible
(``burst``), or at a rate for a duration, open loop (``start_paced`` and
``finish_paced``).  The keys and the operations are the v2 keys API's by
default; ``bench/v3load.py`` gives the v3 ones.
"""

import multiprocessing
import os
import random
import signal
import time
from typing import Callable, Dict, List, Optional, Tuple

from bench.common import KEYS_PER_SET, SRC_PREFIX
from etcdmirror.localclient import BlockingClient


def die_with_parent(parent_pid: int) -> None:
    try:
        import ctypes
        ctypes.CDLL(None).prctl(1, signal.SIGTERM, 0, 0, 0)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass
    if os.getppid() != parent_pid:
        os._exit(0)


def v2_ops(wid: int, url: str, keys: int) -> Tuple[List[str], set, Callable, Callable]:
    """A writer's keys and operations on the v2 keys API: (its key names, those that
    exist, ``write(key, value)`` and ``delete(key)``, each returning (ok, index))."""
    client = BlockingClient(url)

    def write(key: str, value: str) -> Tuple[bool, int]:
        answer = client.set(key, value)
        return 200 <= answer.status < 300, answer.index

    def delete(key: str) -> Tuple[bool, int]:
        answer = client.delete(key)
        return 200 <= answer.status < 300, answer.index

    return ["%s/set%d/k%d" % (SRC_PREFIX, wid, j) for j in range(keys)], set(), write, delete


def writer_main(wid: int, url: str, keys: int, parent_pid: int, commands, results,
                ops: Callable = v2_ops, seed: Optional[str] = None) -> None:
    """One writer process: runs commands from its queue on its own connection.

    Every operation makes exactly one event: a write of one of its own keys, or
    (one op in ten) a delete of one of its own keys that exists.  ``ops`` gives
    the keys and the operations (:func:`v2_ops`; ``bench/v3load.py``: v3); the
    keys are chosen at random, from ``seed`` and ``wid`` (default: ``wid`` only).
    """
    die_with_parent(parent_pid)
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the parent handles Ctrl-C
    try:
        names, existing, write, delete = ops(wid, url, keys)
    except Exception as e:  # reported by the parent
        results.put(("error", wid, "%s: %s" % (type(e).__name__, e)))
        return
    rng = random.Random(wid if seed is None else "%s-%d" % (seed, wid))
    seq = 0
    results.put(("ready", wid))

    def one_op() -> Tuple[bool, int]:
        nonlocal seq
        seq += 1
        if seq % 10 == 0 and existing:
            key = rng.choice(sorted(existing))
            ok, index = delete(key)
            existing.discard(key)
        else:
            key = rng.choice(names)
            ok, index = write(key, "w%d-%d-%s" % (wid, seq, "x" * rng.randint(8, 40)))
            existing.add(key)
        return ok, index

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
            results.put(run_writer_command(command, one_op))
        except Exception as e:  # reported by the parent, without a traceback
            results.put(("error", wid, "%s: %s" % (type(e).__name__, e)))
            return


def run_writer_command(command: tuple, one_op) -> tuple:
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

    def __init__(self, count: int, url: str, ops: Callable = v2_ops,
                 name: str = "bench-writer", seed: Optional[str] = None) -> None:
        ctx = multiprocessing.get_context("spawn")
        self.results = ctx.Queue()
        self.queues = []
        self.procs = []
        keys = max(1, KEYS_PER_SET // count)
        for wid in range(count):
            q = ctx.Queue()
            p = ctx.Process(target=writer_main, name="%s-%d" % (name, wid),
                            args=(wid, url, keys, os.getpid(), q, self.results, ops, seed),
                            daemon=True)
            p.start()
            self.queues.append(q)
            self.procs.append(p)
        # Wait until every writer has started (spawning and importing costs CPU
        # that must not overlap a measurement).
        try:
            ready = self._collect(60)
        except BaseException:
            self.stop()
            raise
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
