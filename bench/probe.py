"""The latency probe: how long until a write on the source is on the destination.

A thread writes :data:`~bench.common.PROBE_KEY` = a new sequence number at a
fixed interval on the source; another watches the replica key on the
destination (one long-poll watch at a time, so the time a value is first
visible is known to about a millisecond).
"""

import threading
import time
from typing import Dict, List, Optional, Tuple

from bench.common import DST_PREFIX, PROBE_KEY
from etcdmirror.localclient import BlockingClient, Timeout

# A watch that sees nothing for this long is renewed, from the index its
# headers gave, so it never falls behind etcd's event history.
WATCH_TIMEOUT = 0.5


class Probe:
    """Writes PROBE_KEY = a new sequence number every ``interval`` seconds on the
    source, and watches its replica on the destination.

    The latency of write i is the time from just before its PUT was sent until
    the destination first holds value i or a later one (a resync may skip
    straight to a later value; that still ends the staleness of i).
    """

    def __init__(self, src_url: str, dst_url: str, interval: float, first_seq: int) -> None:
        self.src = BlockingClient(src_url)
        self.watch = BlockingClient(dst_url, timeout=WATCH_TIMEOUT)
        self.reader = BlockingClient(dst_url)  # reads that must not time out so soon
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
        self.watch_from = self.reader.index() + 1
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
                self.src.set(PROBE_KEY, str(value))
                self.seq += 1
                i += 1
        except BaseException as e:  # reported by the caller
            self.error = e

    def _watch_loop(self) -> None:
        wait_index = self.watch_from
        try:
            while not self.stop_watching.is_set():
                try:
                    status, body, _ = self.watch.get(self.dst_key, wait=True,
                                                     waitIndex=wait_index)
                    now = time.perf_counter()
                except Timeout as pending:
                    # Still pending: nothing on the key up to the index the
                    # headers gave (if we got them); renew from there.
                    if pending.index:
                        wait_index = max(wait_index, pending.index + 1)
                    continue
                if status == 400 and body.get("errorCode") == 401:
                    # Fell out of the destination's history: read the key now.
                    answer = self.reader.get(self.dst_key)
                    now = time.perf_counter()
                    wait_index = answer.index + 1
                    if answer.status == 200:
                        self._saw(answer.body["node"]["value"], now, exact=False)
                    continue
                if status != 200:
                    raise RuntimeError("probe watch: HTTP %d %r" % (status, body))
                node = body["node"]
                wait_index = node["modifiedIndex"] + 1
                if "value" in node:
                    self._saw(node["value"], now, exact=True)
        except BaseException as e:
            self.error = e
        finally:
            self.watch.close()

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
        self.reader.close()

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
