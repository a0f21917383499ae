"""The catch-up of ``bench/v3mirror.py``: a tool SIGSTOPped, writes, SIGCONT, the time to catch up.

One run of :func:`catch_up` on one tool: it starts and settles, is
SIGSTOPped (every thread), ``--events`` writes go to the source from the
writer processes and then a marker key; SIGCONT, and the time until the
destination has it all (etcd-mirror: ``/status`` ``replica_index`` reaches the
marker's revision; make-mirror: the marker key is on the destination),
polled every ``--poll-ms``; events/s and the tool's CPU seconds per event
(``/proc/PID/stat``).  For etcd-mirror also the CPU per event without what
its ``/status`` polls cost (measured on the idle mirror first) and its
resyncs.
"""

import signal
import time
from typing import Any, Dict

from bench.common import log
from bench.machine import cpu_per_call, cpu_seconds
from bench.rig import resyncs_since
from bench.v3load import MARKER_KEY
from bench.v3rig import MakeMirror, Ours, Tool, V3Rig, exit_text


def catch_up(b: V3Rig, tool: Tool, run: int) -> Dict[str, Any]:
    """Catch-up run ``run`` of ``tool``: its numbers, and whether the destination is
    equal to the source afterwards.  The tool is stopped at the end."""
    if isinstance(tool, MakeMirror):
        # A new make-mirror starts from an empty prefix (it never deletes what
        # changed while it was not running): wiped between its runs.
        b.d.delete_prefix(tool.dst_root + "/")
    tool.start()
    try:
        b.settle(tool)
        poll = b.args.poll_ms / 1000
        poll_cpu = 0.0
        resyncs_before: Dict[str, float] = {}
        if isinstance(tool, Ours):
            # What one /status read costs the idle mirror (they are part of the
            # measurement below, not of the replication).
            poll_cpu = cpu_per_call(tool.pid, tool.replica_index, poll)
            resyncs_before = tool.resyncs()
        tool.pause()
        rev0 = b.s.revision()
        written = b.burst(b.args.events)
        token = "marker-%s-%d-%d" % (tool.key, run, time.time_ns())
        target = b.s.put(MARKER_KEY, token)
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
                return (b.d.get(want) or ("",))[0] == token
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
            if time.perf_counter() - started > b.args.catchup_timeout:
                timeout = True
                break
            time.sleep(poll)
        elapsed = time.perf_counter() - started
        cpu = cpu_seconds(tool.pid) - cpu_before
        same, text, _ = b.compare(tool)
        result = {"events": events, "write_s": written["elapsed"], "elapsed": elapsed,
                  "rate": events / elapsed, "timeout": timeout, "cpu_s": cpu,
                  "cpu_ms": cpu / events * 1000, "polls": polls, "equal": same,
                  "verify": text}
        if isinstance(tool, Ours):
            result["cpu_ms_net"] = max(0.0, cpu - polls * poll_cpu) / events * 1000
            result["resyncs"] = resyncs_since(resyncs_before, tool.resyncs())
        log("catch-up %s run %d: %d events (written in %.1f s) in %.2f s = %.0f "
            "events/s, %.3f CPU ms/event%s; destination %s"
            % (tool.name, run, events, written["elapsed"], elapsed, result["rate"],
               result["cpu_ms"], ", TIMEOUT" if timeout else "", text))
        return result
    finally:
        code = tool.stop()
        if code not in (0, None, -signal.SIGTERM):
            b.note("%s ended with %s after catch-up run %d: %s"
                   % (tool.name, exit_text(code), run, tool.last_line()))
