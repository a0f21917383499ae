"""etcd-mirror resync benchmark: ``--reload`` into an empty replica, and into a live one.

    .venv/bin/python bench/resync.py [--keys 10000] [--root OTHER_CHECKOUT]

Starts two throwaway etcd servers, fills the source prefix with ``--keys``
keys (about 20 per directory, the shape of a configuration tree), then
measures in one run:

1. raw: sequential keep-alive PUTs to the destination, one connection (the
   same yardstick as ``bench/run.py``);
2. empty: ``etcd-mirror --reload`` into an empty replica: the resync's own
   time, from the mirror's log line ``resync (reload) done in X s``, and the
   mirror's peak RSS (VmHWM) once it is done;
3. live: 1% of the source keys changed, then ``--reload`` again into the
   live replica.

The ratio of interest is keys per second of the empty reload over the raw
PUT rate.  ``--root`` runs the mirror from another checkout (an A/B run).
Everything started is stopped at the end, by pid.
"""

import argparse
import http.client
import os
import re
import sys
import threading
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if REPO not in sys.path:
    sys.path.insert(0, REPO)

from bench.machine import machine_info, memory_kb  # noqa: E402
from etcdmirror.localetcd import LocalEtcd  # noqa: E402
from etcdmirror.localmirror import MirrorProcess  # noqa: E402

PREFIX = "/bench-resync"
FORM = {"Content-Type": "application/x-www-form-urlencoded"}
DONE = re.compile(r"resync \(reload\) done in ([0-9.]+)s")


def key(i: int) -> str:
    return f"{PREFIX}/d{i // 20}/k{i % 20}"


def put_all(port: int, keys, value: str) -> None:
    """PUT every key (in threads of 8 connections): setup speed only."""
    keys = list(keys)

    def worker(part):
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
        for k in part:
            conn.request("PUT", "/v2/keys" + k, body="value=" + value, headers=FORM)
            resp = conn.getresponse()
            resp.read()
            if resp.status >= 300:
                raise RuntimeError(f"PUT {k}: HTTP {resp.status}")
        conn.close()

    threads = [threading.Thread(target=worker, args=(keys[i::8],)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()


def raw_rate(port: int, n: int) -> float:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    started = time.perf_counter()
    for i in range(n):
        conn.request("PUT", f"/v2/keys/bench-raw/k{i % 1000}", body=f"value=raw-{i}",
                     headers=FORM)
        resp = conn.getresponse()
        resp.read()
    elapsed = time.perf_counter() - started
    conn.close()
    return n / elapsed


def reload_once(src: LocalEtcd, dst: LocalEtcd, root, timeout: float):
    """One ``--reload``; returns (resync seconds, peak RSS in MB)."""
    mirror = MirrorProcess(src.url, dst.url, ["--reload", "--no-event-log",
                                              "--src-prefix", PREFIX], root=root)
    try:
        mirror.start(healthy=False)
        deadline = time.monotonic() + timeout
        while True:
            found = DONE.search(mirror.log())
            if found:
                break
            if not mirror.running or time.monotonic() > deadline:
                raise RuntimeError("no resync done line:\n" + mirror.log_tail())
            time.sleep(0.05)
        peak = memory_kb(mirror.pid).get("VmHWM", 0) / 1024
        return float(found.group(1)), peak
    finally:
        mirror.stop()
        mirror.cleanup()


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--keys", type=int, default=10000)
    parser.add_argument("--raw-puts", type=int, default=2000)
    parser.add_argument("--root", default=None,
                        help="run the mirror from this checkout instead of this one")
    parser.add_argument("--timeout", type=float, default=600.0)
    args = parser.parse_args(argv)

    src, dst = LocalEtcd("bench-src"), LocalEtcd("bench-dst")
    try:
        src.start()
        dst.start()
        started = time.perf_counter()
        put_all(src.client_port, (key(i) for i in range(args.keys)), "v0")
        print(f"setup: {args.keys} keys on the source in "
              f"{time.perf_counter() - started:.1f} s", file=sys.stderr)
        raw = raw_rate(dst.client_port, args.raw_puts)
        empty_s, empty_rss = reload_once(src, dst, args.root, args.timeout)
        changed = range(0, args.keys, 100)
        put_all(src.client_port, (key(i) for i in changed), "v1")
        live_s, live_rss = reload_once(src, dst, args.root, args.timeout)
    finally:
        src.stop()
        dst.stop()
        src.cleanup()
        dst.cleanup()

    info = machine_info(args.root or REPO)
    rate = args.keys / empty_s
    print(f"### Resync, {args.keys} keys\n")
    print(f"* Command: `.venv/bin/python bench/resync.py --keys {args.keys}"
          + (f" --root {args.root}" if args.root else "") + "`")
    print(f"* Machine: {info['cpu']}, {info['nproc']} CPUs, {info['memory']}; Python "
          f"{info['python']}, Twisted {info['twisted']}, treq {info['treq']}, etcd "
          f"{info['etcd']}; etcd-mirror {info['mirror']} ({info['git']})")
    print(f"* Raw sequential PUT rate on the destination: {raw:.0f}/s\n")
    print("| run | time | keys/s | ratio to raw | peak RSS |")
    print("|---|---|---|---|---|")
    print(f"| `--reload` into an empty replica | {empty_s:.2f} s | {rate:.0f} | "
          f"{rate / raw:.2f}x | {empty_rss:.0f} MB |")
    print(f"| `--reload` into the live replica, 1% changed | {live_s:.2f} s | | | "
          f"{live_rss:.0f} MB |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
