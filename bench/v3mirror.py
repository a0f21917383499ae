"""etcd v3 -> v3: etcd-mirror against ``etcdctl make-mirror`` on local etcd servers (issue 15).

    .venv/bin/python bench/v3mirror.py [--events 5000] [--runs 3] [--write BENCHMARKS.md]

Starts two throwaway etcd 3.4 servers (source and destination, as
``bench/rig.py`` does) and runs, one at a time against the same servers and
the same writes:

* etcd-mirror in v3 -> v3 mode, ``python -m etcdmirror --src-api v3 --dst-api
  v3 --src-prefix /bench --dst-prefix /replica --port 0 SRC DST`` (``/bench/k``
  becomes ``/replica/bench/k``; ``--reload`` on its first start only);
* ``ETCDCTL_API=3 etcdctl --endpoints SRC make-mirror --prefix /bench/
  --dest-prefix /mm/bench/ DST`` (Debian's ``etcd-client``).

It measures:

1. catch-up, ``--runs`` times each, the two tools alternated: the tool is
   SIGSTOPped (every thread), ``--events`` writes (puts on about 100 keys, one
   in ten a delete; each one source revision) go to the source from
   ``--writers`` processes as fast as they can, then a marker key; SIGCONT,
   and the time until the destination has it all (etcd-mirror: ``/status``
   ``replica_index`` reaches the marker's revision; make-mirror: the marker
   key is on the destination), polled every ``--poll-ms``.  Events/s and CPU
   seconds (utime+stime of the tool's process, ``/proc/PID/stat``) per event;
2. correctness, each a yes/no per tool with its evidence (``bench/v3checks.py``
   has the details): a. a restart loses nothing; b. the initial sync deletes
   destination keys the source lacks; c. a key on a lease; d. a restart after
   the source was compacted; e. (extra) a restart after deletes on the source.

Every wait has a deadline (``--timeout``), so a tool that never converges is a
"no", not a hang.  Prints one Markdown section; ``--write FILE`` puts it into
FILE above the dated sections (or replaces the section with the same title).
Everything started here (etcd servers, the tools, writer processes) is stopped
by pid at the end, on errors, on Ctrl-C and on SIGTERM; ``bench/reaper.py``
cleans up if this process is killed with SIGKILL.

This file is the command line and the order of the run; the parts:
``v3rig.py`` (the servers, the writers, the two tools' processes),
``v3load.py`` (the v3 JSON-gateway client and the v3 writes),
``v3catchup.py`` (the catch-up), ``v3checks.py`` (the correctness checks),
``v3report.py`` (the Markdown section); and from ``bench/run.py``'s parts
``rig.py``, ``writers.py``, ``machine.py``, ``report.py``.
"""

import argparse
import datetime
import os
import shutil
import subprocess
import sys
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if REPO not in sys.path:
    # The parts are imported as bench.*, etcd-mirror's modules as etcdmirror.*.
    sys.path.insert(0, REPO)

from bench.common import KEYS_PER_SET, log  # noqa: E402
from bench.machine import loadavg, machine_info  # noqa: E402
from bench.report import command_line, publish  # noqa: E402
from bench.v3catchup import catch_up  # noqa: E402
from bench.v3checks import CHECKS, check_initial_sync, run_check  # noqa: E402
from bench.v3report import TITLE, report  # noqa: E402
from bench.v3rig import V3Rig  # noqa: E402


class V3Bench(V3Rig):
    def run(self) -> None:
        """Check b on each tool's first start, the catch-up runs (the tools alternated),
        then checks a, c, d and e on each tool."""
        self.results["started"] = datetime.datetime.now(datetime.timezone.utc)
        self.results["machine"] = machine_info(REPO)
        try:
            out = subprocess.run([self.args.etcdctl, "version"], capture_output=True,
                                 text=True, env=dict(os.environ, ETCDCTL_API="3"))
            self.results["etcdctl"] = out.stdout.split("\n")[0].replace(
                "etcdctl version:", "").strip() or "?"
        except OSError as e:
            raise RuntimeError("no etcdctl (%s): apt-get install etcd-client" % e)
        wall = time.perf_counter()
        self.setup()
        log("seeding the source: %d writes on about %d keys" % (3 * KEYS_PER_SET, KEYS_PER_SET))
        self.burst(3 * KEYS_PER_SET)
        for tool in self.tools:
            run_check(self, "b", tool, check_initial_sync)
            tool.stop()
        for run in range(1, self.args.runs + 1):
            for tool in self.tools:
                try:
                    result = catch_up(self, tool, run)
                except Exception as e:  # noqa: BLE001 - recorded, the run goes on
                    result = {"error": "%s: %s" % (type(e).__name__, e)}
                    log("catch-up %s run %d FAILED: %s\n%s" % (tool.name, run, e,
                                                               tool.log_tail()))
                    self.keep_tail(tool, "catch-up %d" % run)
                self.results["catchup"].setdefault(tool.key, []).append(result)
        for tool in self.tools:
            for name, _, check in CHECKS:
                if name != "b":
                    run_check(self, name, tool, check)
            tool.stop()
        self.results["wall_s"] = time.perf_counter() - wall
        self.results["load_end"] = loadavg()


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="bench/v3mirror.py",
        description="etcd v3 -> v3: etcd-mirror against etcdctl make-mirror on two local "
        "etcd servers: catch-up throughput and CPU, and correctness checks.",
        epilog="Run from the repository root: .venv/bin/python bench/v3mirror.py --write "
        "BENCHMARKS.md. The defaults take about 3-4 minutes. See bench/README.md.")
    p.add_argument("--events", type=int, default=5000,
                   help="writes per catch-up run while the tool is SIGSTOPped (default 5000)")
    p.add_argument("--runs", type=int, default=3,
                   help="catch-up runs per tool, the tools alternated (default 3)")
    p.add_argument("--writers", type=int, default=4,
                   help="writer processes, one keep-alive connection each (default 4)")
    p.add_argument("--poll-ms", type=float, default=5.0,
                   help="poll interval while waiting for a catch-up (default 5)")
    p.add_argument("--timeout", type=float, default=60.0,
                   help="deadline of every wait in the checks, and of a start (default 60)")
    p.add_argument("--catchup-timeout", type=float, default=120.0,
                   help="deadline of one catch-up (default 120)")
    p.add_argument("--grace", type=float, default=5.0,
                   help="after a tool replicates again, how long the destination may take "
                   "to equal the source (default 5)")
    p.add_argument("--lease-ttl", type=int, default=30,
                   help="TTL of the source lease in check c (default 30)")
    p.add_argument("--lease-hold", type=float, default=35.0,
                   help="check c: seconds the source lease is kept alive before it is "
                   "revoked, when the destination key has a lease (default 35: longer "
                   "than the TTL)")
    p.add_argument("--mirror-arg", action="append", default=[], metavar="ARG",
                   help="extra etcd-mirror argument, repeatable")
    p.add_argument("--etcdctl", default=shutil.which("etcdctl") or "etcdctl",
                   help="the etcdctl binary (default: from PATH; Debian: etcd-client)")
    p.add_argument("--only", choices=["ours", "make-mirror"],
                   help="run one tool only (for trying the script out)")
    p.add_argument("--write", metavar="FILE",
                   help="also put the section into FILE (Markdown), replacing the one with "
                   "the same title, else above the first '## ' section")
    p.add_argument("--keep-logs", action="store_true",
                   help="keep the work directory with the tools' logs")
    args = p.parse_args(argv)
    if args.writers < 1 or args.events < args.writers or args.runs < 1:
        p.error("need --writers >= 1, --events >= --writers and --runs >= 1")
    return args


def main(argv=None) -> int:
    args = parse_args(argv)
    command = command_line()
    bench = V3Bench(args)
    failed = bench.run_to_the_end()
    return publish(bench, command, failed, report, args.write, TITLE, first=True)


if __name__ == "__main__":
    sys.exit(main())
