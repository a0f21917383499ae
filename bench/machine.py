"""Readings of the machine and of processes, from /proc and a few commands.

CPU seconds and memory of one process (the mirror), how busy the whole
machine's CPUs were, and the description of the machine and the software
versions at the top of the report.  Linux only, like the benchmark.
"""

import importlib.metadata
import os
import platform
import re
import subprocess
import time
from typing import Callable, Dict, Tuple

from bench.common import REPO

CLK_TCK = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid: int) -> float:
    """utime + stime of a process, in seconds."""
    with open("/proc/%d/stat" % pid) as f:
        # The command name may hold spaces; fields after it are fixed.
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


def cpu_per_call(pid: int, call: Callable[[], object], interval: float,
                 seconds: float = 1.0) -> float:
    """CPU seconds process ``pid`` spends per ``call()``, made every ``interval`` seconds
    for ``seconds`` (what one ``/status`` read costs an idle mirror)."""
    before = cpu_seconds(pid)
    calls = 0
    end = time.perf_counter() + seconds
    while time.perf_counter() < end:
        call()
        calls += 1
        time.sleep(interval)
    return (cpu_seconds(pid) - before) / calls


def threads_stopped(pid: int) -> bool:
    """Every thread of process ``pid`` is stopped (SIGSTOP has taken effect)."""
    try:
        for tid in os.listdir("/proc/%d/task" % pid):
            with open("/proc/%d/task/%s/stat" % (pid, tid)) as f:
                if f.read().rsplit(")", 1)[1].split()[0] not in ("T", "t"):
                    return False
    except FileNotFoundError:
        return False
    return True


def memory_kb(pid: int) -> Dict[str, int]:
    out = {}
    with open("/proc/%d/status" % pid) as f:
        for line in f:
            if line.startswith(("VmRSS:", "VmHWM:")):
                name, value = line.split(":", 1)
                out[name] = int(value.split()[0])
    return out


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
