"""The benchmark's phases: what is measured, one method each.

1. raw limit (:meth:`Bench.raw_limit`): sequential keep-alive PUTs to the
   destination, then the same from Twisted's stacks (``bench/httpfloor.py``),
   idle and under load;
2. catch-up (:meth:`Bench.catch_up`): events written while the mirror is
   SIGSTOPped, then the time from SIGCONT until the replica has them;
3. sustained load (:meth:`Bench.sustained`): paced writers plus the latency
   probe, at each ``--rates`` rate;
4. memory (:meth:`Bench.memory`): RSS and CPU over ``--events-total`` events;
5. profile (:meth:`Bench.profile`, ``--profile DIR``): the mirror during a
   catch-up.

:meth:`Bench.run` runs them in that order on the :class:`~bench.rig.Rig`
and leaves every number in ``Bench.results`` for ``bench/report.py``.
"""

import datetime
import http.client
import json
import os
import shutil
import subprocess
import sys
import time
from typing import Dict, List, Tuple

from bench.common import BENCH_DIR, KEYS_PER_SET, log
from bench.machine import (cpu_per_call, cpu_seconds, loadavg, machine_busy,
                           machine_busy_share, machine_info, memory_kb)
from bench.probe import FloorProbe, Probe, percentile
from bench.profiling import PySpy, profile_tables
from bench.rig import STOP_TIMEOUT, Rig, resyncs_since

#: Written and watched on the destination, outside the replica: its own latency.
FLOOR_KEY = "/bench-probe-floor"


def slow_writes(mirror) -> int:
    """Events whose write (sent to finished) took over 100 ms, from ``/metrics``."""
    buckets = mirror.samples("etcdmirror_write_latency_bucket")
    count = sum(mirror.samples("etcdmirror_write_latency_count").values())
    fast = sum(v for labels, v in buckets.items() if 'le="0.1"' in labels)
    return int(count - fast)

FORM = {"Content-Type": "application/x-www-form-urlencoded"}


class Bench(Rig):
    """The phases, on the processes the rig runs."""

    def raw_limit(self) -> None:
        n = self.args.raw_puts
        log("raw limit: %d sequential keep-alive PUTs to the destination" % n)
        # Deliberately the bare protocol on one connection, not BlockingClient:
        # this is what the destination can do, with no client work in between.
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
        poll_cpu = cpu_per_call(mirror.pid, mirror.status, poll)
        log_offset = mirror.log_size()
        resyncs_before = self.resyncs()
        cpu_before = cpu_seconds(mirror.pid)
        mirror.pause()
        if profile is not None:
            profile.start(mirror.pid)
        log("catch-up: mirror SIGSTOPped; writing %d events" % events)
        written = self.writers.burst(events)
        target = self.src_client.index()
        polls_before = mirror.status_reads
        mirror.resume()
        started = time.perf_counter()
        took = self.wait_replica(target, self.args.catchup_timeout, poll)
        cpu_after = cpu_seconds(mirror.pid)
        polls = mirror.status_reads - polls_before
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
        result["resyncs"] = resyncs_since(resyncs_before, self.resyncs())
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
        resyncs_before = self.resyncs()
        cpu_before = cpu_seconds(mirror.pid)
        slow_before = slow_writes(mirror)
        index_before = self.src_client.index()
        probe = Probe(self.src.url, self.dst.url, self.args.probe_ms / 1000, self.probe_seq)
        probe.start()
        floor = FloorProbe(self.dst.url, FLOOR_KEY, self.args.probe_ms / 1000)
        floor.start()
        busy_before = machine_busy()
        self.writers.start_paced(rate, duration)
        started = time.perf_counter()
        max_lag = 0
        # Sample the lag while the writers run (cheap: 10 /status reads a second).
        while time.perf_counter() - started < duration:
            time.sleep(0.1)
            self.check_mirror()
            if probe.error is not None:
                raise RuntimeError("probe failed: %r" % (probe.error,))
            try:
                status = mirror.status()
                max_lag = max(max_lag, self.src_client.index() - status["replica_index"])
            except (OSError, ValueError):
                pass
        written = self.writers.finish_paced(duration + 60)
        busy = machine_busy_share(busy_before)
        end_index = self.src_client.index()
        end_lag = end_index - mirror.status()["replica_index"]
        max_lag = max(max_lag, end_lag)
        probe.stop_writing.set()
        probe.writer.join(5)
        dst_floor = floor.stop()
        _, drain = self.caught_up(self.args.drain_timeout, poll=0.01)
        if drain is None:
            self.note("rate %g: the replica did not catch up within %.0fs after the load"
                      % (rate, self.args.drain_timeout))
        probe.wait_seen(probe.last_sent(), 5)
        probe.stop()
        self.probe_seq = probe.seq
        cpu = cpu_seconds(mirror.pid) - cpu_before
        slow = slow_writes(mirror) - slow_before
        events = self.src_client.index() - index_before
        if probe.error is not None:
            raise RuntimeError("probe failed: %r" % (probe.error,))
        lat, missing, superseded = probe.latencies_ms()
        src_lat = probe.source_latencies_ms()
        hops = probe.hops_ms()
        resyncs = resyncs_since(resyncs_before, self.resyncs())
        equal, detail = self.verify_tree() if drain is not None else (False, "not caught up")
        result = {
            "target": rate, "duration": duration, "achieved": written["rate"],
            "writes": written["ops"], "write_errors": written["errors"],
            "late_p99_ms": written["late_p99_ms"], "probes": len(probe.sent),
            "p50": percentile(lat, 50), "p99": percentile(lat, 99),
            "src_p50": percentile(src_lat, 50), "src_p99": percentile(src_lat, 99),
            "hop_p50": percentile(hops, 50), "hop_p99": percentile(hops, 99),
            "slow_writes": slow,
            "dst_floor_p50": percentile(dst_floor, 50),
            "dst_floor_p99": percentile(dst_floor, 99),
            "max": max(lat) if lat else float("nan"),
            "probe_missing": missing, "probe_superseded": superseded,
            "max_lag": max_lag, "end_lag": end_lag, "drain_s": drain,
            "resyncs": resyncs, "resync_log": self.resync_lines(log_offset),
            "equal": equal, "verify": detail, "events": events, "cpu_s": cpu,
            "cpu_ms_per_event": cpu / max(1, events) * 1000, "machine_busy": busy,
        }
        log("sustained %g/s: probe visible on the source p50 %.1f p99 %.1f ms; source -> "
            "destination hop p50 %.1f p99 %.1f ms; a write and watch on the destination "
            "alone p50 %.1f p99 %.1f ms; event writes slower than 100 ms in the mirror: %d"
            % (rate, result["src_p50"], result["src_p99"], result["hop_p50"],
               result["hop_p99"], result["dst_floor_p50"], result["dst_floor_p99"], slow))
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
        resyncs_before = self.resyncs()
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
        resyncs = resyncs_since(resyncs_before, self.resyncs())
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
        code = self.mirror.stop(STOP_TIMEOUT)
        self.guard("unpid", self.mirror.pid)
        self.results["mirror_exit"] = code
        self.start_mirror(profile_path=out, name="mirror-cprofile")
        result = self.catch_up(self.args.catchup_events)
        t = time.perf_counter()
        code = self.mirror.stop(STOP_TIMEOUT)
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
