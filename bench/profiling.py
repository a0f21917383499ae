"""Profiling the mirror: py-spy from outside, or the tables of a cProfile file.

With py-spy installed, :class:`PySpy` samples the running mirror during a
catch-up; otherwise the benchmark runs a mirror under ``python -m cProfile``
(:class:`etcdmirror.localmirror.MirrorProcess` with ``profile_path``) and
:func:`profile_tables` turns its file into the report's top-25 tables.
"""

import signal
import subprocess
from typing import Dict, Optional


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
