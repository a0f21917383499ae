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

This file is the command line; the parts, each readable alone:
``common.py`` (prefixes, keys, log), ``machine.py`` (/proc readings, the
machine), ``writers.py`` (the load), ``probe.py`` (the latency probe),
``rig.py`` (what runs, and its cleanup), ``phases.py`` (the measurements),
``profiling.py`` (py-spy, cProfile tables), ``report.py`` (the Markdown).
"""

import argparse
import os
import sys

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if REPO not in sys.path:
    # The parts are imported as bench.*, etcd-mirror's modules as etcdmirror.*.
    sys.path.insert(0, REPO)

from bench.common import log  # noqa: E402
from bench.phases import Bench  # noqa: E402
from bench.report import command_line, publish, report, title_for  # noqa: E402


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


def main(argv=None) -> int:
    args = parse_args(argv)
    bench = Bench(args)
    command = command_line()
    failed = bench.run_to_the_end()
    return publish(bench, command, failed, report, args.write, title_for(args))


if __name__ == "__main__":
    sys.exit(main())
