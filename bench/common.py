"""What every part of the benchmark shares: where things are, the keys, the log.

The benchmark mirrors ``/bench`` on the source to ``/replica/bench`` on the
destination; the writers share about :data:`KEYS_PER_SET` keys under it and
the latency probe writes :data:`PROBE_KEY`.
"""

import os
import sys
import time

BENCH_DIR = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(BENCH_DIR)

SRC_PREFIX = "/bench"
DST_PREFIX = "/replica"
PROBE_KEY = SRC_PREFIX + "/probe"
KEYS_PER_SET = 100  # the writers share about this many keys


def log(message: str) -> None:
    """Progress on stderr (stdout is the report)."""
    print("[%s] %s" % (time.strftime("%H:%M:%S"), message), file=sys.stderr, flush=True)
