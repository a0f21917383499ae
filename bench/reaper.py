"""Stops the benchmark's processes if the benchmark itself is killed (kill -9).

    python bench/reaper.py      (started by bench/run.py, commands on stdin)

bench/run.py stops everything it started in a ``finally`` block, which covers
normal ends, errors, Ctrl-C and SIGTERM, but not SIGKILL.  This tiny process
holds the read end of a pipe from the benchmark and a list of what to clean
up.  Commands, one a line:

* ``pid N``: stop process N if the benchmark dies;
* ``unpid N``: N was stopped normally, forget it;
* ``dir PATH``: remove PATH (a temporary directory) if the benchmark dies;
* ``done``: the benchmark cleaned up by itself; exit without touching anything.

End of input without ``done`` means the benchmark died: every listed process
gets SIGCONT and SIGTERM, SIGKILL after 5 s, then the directories are removed.
Processes are only ever signalled by the pids the benchmark registered.
"""

import os
import shutil
import signal
import sys
import time


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # A zombie child of the dead benchmark is reparented and reaped by init;
    # until then it counts as gone if /proc says so.
    try:
        with open("/proc/%d/stat" % pid) as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def main() -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is for the benchmark
    pids = []
    dirs = []
    for line in sys.stdin:
        command, _, arg = line.strip().partition(" ")
        if command == "pid":
            pids.append(int(arg))
        elif command == "unpid" and int(arg) in pids:
            pids.remove(int(arg))
        elif command == "dir":
            dirs.append(arg)
        elif command == "done":
            return
    for sig in (signal.SIGCONT, signal.SIGTERM):
        for pid in pids:
            try:
                os.kill(pid, sig)
            except OSError:
                pass
    deadline = time.monotonic() + 5
    while any(alive(p) for p in pids) and time.monotonic() < deadline:
        time.sleep(0.1)
    for pid in pids:
        if alive(pid):
            try:
                os.kill(pid, signal.SIGKILL)
            except OSError:
                pass
    time.sleep(0.2)
    for path in dirs:
        shutil.rmtree(path, ignore_errors=True)


if __name__ == "__main__":
    main()
