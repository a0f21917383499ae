"""``etcd-mirror-switchover --src-api v3 --dst-api v3`` on real etcd: a v3 -> v3
mirror A->B reversed into B->A without a reload; writes on A refused; and the
v2 -> v3 migration, which has no reverse, is a usage error."""

import threading
import uuid

from tests.helpers import run_command, wait_for
from tests.v3sync import V3

V3_ARGS = ["--src-api", "v3", "--dst-api", "v3"]
FAST = ["--quiet-seconds", "0.5", "--timeout", "40"]


def _mapping():
    """A fresh prefix per test (the v3 keyspace is not wiped between tests)."""
    prefix = "/s" + uuid.uuid4().hex[:8]
    return prefix, ["--strip", "--src-prefix", prefix, "--dst-prefix", prefix]


def test_switch_a_v3_mirror_over_without_a_reload(src, dst, mirror):
    prefix, mapping = _mapping()
    a, b = V3(src.url), V3(dst.url)
    a.put(prefix + "/pools/host1", "pooled")
    a.put(prefix + "/pools/host2", "depooled")
    # The quiet proof moves the checkpoint on a quiet prefix (--watch-idle-timeout).
    a_to_b = mirror(src.url, dst.url, "--reload", "--watch-idle-timeout", "0.5",
                    *V3_ARGS, *mapping)
    wait_for(lambda: b.tree(prefix) == a.tree(prefix), message="B caught up")
    for i in range(5):                    # A moves outside the prefix: proven quiet
        a.put("/elsewhere", str(i))

    result = run_command("switchover_main", *FAST, *V3_ARGS, *mapping, src.url, dst.url,
                         timeout=90)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "1. quiet: no write under " + prefix in result.stdout
    assert "4. wrote on A" in result.stdout and "replay-horizon" not in result.stdout
    printed = result.stdout.replace("'", "")
    assert "--src-api v3 --dst-api v3" in printed
    assert 0 < int(a.get("/__replication" + prefix)) <= b.revision()

    a_to_b.stop()
    b_to_a = mirror(dst.url, src.url, *V3_ARGS, *mapping)       # no --reload
    b.put(prefix + "/pools/host1", "depooled")
    b.delete(prefix + "/pools/host2")
    b.put(prefix + "/pools/host3", "new on B")
    wait_for(lambda: a.tree(prefix) == b.tree(prefix), message="A follows B")
    assert sum(b_to_a.samples("etcdmirror_resyncs_total").values()) == 0
    assert "resync" not in b_to_a.log()


def test_writes_still_arriving_on_a_v3_a_are_refused(src, dst, mirror):
    prefix, mapping = _mapping()
    a = V3(src.url)
    a.put(prefix + "/a", "1")
    mirror(src.url, dst.url, "--reload", *V3_ARGS, *mapping)
    stop = threading.Event()

    def writer():
        n = 0
        while not stop.wait(0.05):
            n += 1
            a.put(prefix + "/busy", str(n))
    thread = threading.Thread(target=writer, daemon=True)
    thread.start()
    try:
        result = run_command("switchover_main", "--quiet-seconds", "3", *V3_ARGS, *mapping,
                             src.url, dst.url)
    finally:
        stop.set()
        thread.join(10)
    assert result.returncode == 1, result.stdout + result.stderr
    assert f"A still receives writes under {prefix}" in result.stderr
    assert f"{prefix}/busy at index" in result.stderr
    assert a.get("/__replication" + prefix) is None, "nothing written on A"


def test_a_v2_to_v3_migration_has_no_reverse(src, dst):
    result = run_command("switchover_main", "--src-api", "v2", "--dst-api", "v3",
                         src.url, dst.url)
    assert result.returncode == 2
    assert "--src-api" in result.stderr and "v3 -> v2 is not a mode" in result.stderr
