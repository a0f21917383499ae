"""The latency probe: how long until a write on the source is on the destination.

A thread writes :data:`~bench.common.PROBE_KEY` = a new sequence number at a
fixed interval on the source; another watches the replica key on the
destination (one long-poll watch at a time, so the time a value is first
visible is known to about a millisecond).  A third watches the key on the
source itself: the time until a write is visible *there* is the part of the
latency the mirror has nothing to do with (the source's write, its watch, this
process).  Per write, destination-visible minus source-visible is the *hop*: the
mirror's part plus the destination's write and watch.  :class:`FloorProbe`
writes and watches a key of the destination's own, outside the replica: the
destination's part alone, the floor under the hop.
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
        self.src_watch = BlockingClient(src_url, timeout=WATCH_TIMEOUT)
        self.src_seen: List[Tuple[int, float]] = []  # the same, on the source
        self.stop_writing = threading.Event()
        self.stop_watching = threading.Event()
        self.error: Optional[BaseException] = None
        self.writer = threading.Thread(target=self._write_loop, daemon=True)
        self.watcher = threading.Thread(target=self._watch_loop, daemon=True)
        self.src_watcher = threading.Thread(target=self._watch_source, daemon=True)

    def start(self) -> None:
        # The watches start at each side's current index, before any write.
        self.watch_from = self.reader.index() + 1
        self.src_watch_from = self.src.index() + 1
        self.watcher.start()
        self.src_watcher.start()
        self.writer.start()

    def _watch_source(self) -> None:
        try:
            watch_own(self.src_watch, PROBE_KEY, self.src_watch_from, self.src_seen,
                      self.stop_watching)
        except BaseException as e:
            self.error = e

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
        self.src_watcher.join(5)
        self.src.close()
        self.reader.close()

    def source_latencies_ms(self) -> List[float]:
        """Latencies in ms until each write was visible on the source itself."""
        return self.latencies_ms(self.src_seen)[0]

    def hops_ms(self) -> List[float]:
        """Per write seen as such on both sides: destination minus source, in ms."""
        on_source = dict(self.src_seen)
        return [(when - on_source[v]) * 1000 for v, when in self.seen
                if v in self.exact and v in on_source]

    def latencies_ms(self, seen=None) -> Tuple[List[float], int, int]:
        """(latencies in ms of the writes that became visible, not visible, superseded)."""
        out = []
        missing = superseded = 0
        j = 0
        exact = seen is None
        seen = self.seen if seen is None else seen
        for value in sorted(self.sent):
            while j < len(seen) and seen[j][0] < value:
                j += 1
            if j == len(seen):
                missing += 1
                continue
            if exact and value not in self.exact:
                superseded += 1
            out.append((seen[j][1] - self.sent[value]) * 1000)
        return out, missing, superseded



def watch_own(client: BlockingClient, key: str, wait_index: int,
              seen: List[Tuple[int, float]], stop: threading.Event) -> None:
    """Append (value, time first seen) for each new integer value of ``key``."""
    try:
        while not stop.is_set():
            try:
                status, body, _ = client.get(key, wait=True, waitIndex=wait_index)
                now = time.perf_counter()
            except Timeout as pending:
                if pending.index:
                    wait_index = max(wait_index, pending.index + 1)
                continue
            if status != 200:
                wait_index = client.index() + 1  # out of the history: go on from now
                continue
            node = body["node"]
            wait_index = node["modifiedIndex"] + 1
            value = node.get("value", "")
            if value.isdigit() and (not seen or int(value) > seen[-1][0]):
                seen.append((int(value), now))
    finally:
        client.close()


class FloorProbe:
    """Writes ``key`` on one cluster every ``interval`` seconds and watches it there:
    that cluster's own write-to-visible latency under the same load."""

    def __init__(self, url: str, key: str, interval: float) -> None:
        self.client = BlockingClient(url)
        self.watch = BlockingClient(url, timeout=WATCH_TIMEOUT)
        self.key, self.interval = key, interval
        self.sent: Dict[int, float] = {}
        self.seen: List[Tuple[int, float]] = []
        self.stop_event = threading.Event()
        self.error: Optional[BaseException] = None
        self.threads: List[threading.Thread] = []

    def start(self) -> None:
        start_index = self.client.index() + 1
        self.threads = [threading.Thread(target=self._guard, args=(f,), daemon=True)
                        for f in (lambda: watch_own(self.watch, self.key, start_index,
                                                    self.seen, self.stop_event),
                                  self._write_loop)]
        for t in self.threads:
            t.start()

    def _guard(self, function) -> None:
        try:
            function()
        except BaseException as e:  # reported by the caller
            self.error = e

    def _write_loop(self) -> None:
        start, i = time.perf_counter(), 0
        while not self.stop_event.is_set():
            due = start + (i + 0.5) * self.interval  # between the main probe's writes
            if due > time.perf_counter():
                time.sleep(due - time.perf_counter())
            self.sent[i] = time.perf_counter()
            self.client.set(self.key, str(i))
            i += 1

    def stop(self) -> List[float]:
        """Stops; the latencies in ms of the writes seen."""
        self.stop_event.set()
        for t in self.threads:
            t.join(5)
        self.client.close()
        seen = dict(self.seen)
        return [(seen[v] - t) * 1000 for v, t in self.sent.items() if v in seen]


def percentile(values: List[float], p: float) -> float:
    if not values:
        return float("nan")
    values = sorted(values)
    k = (len(values) - 1) * p / 100.0
    lo = int(k)
    hi = min(lo + 1, len(values) - 1)
    return values[lo] + (values[hi] - values[lo]) * (k - lo)
