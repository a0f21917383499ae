"""Leases on a v3 replica (etcdmirror/v3leases.py), on real etcd: a leased key
never expires early there, and goes when the source's lifetime ends.

etcd decides when a lease runs out, so these tests wait for real time: short
TTLs (2-3 s), a source kept alive past them, and polls with deadlines.
"""

import time
import uuid

from tests.helpers import wait_for
from tests.v3sync import V3


def _prefix() -> str:
    return "/l" + uuid.uuid4().hex[:8]


def _outlives(check, seconds: float, keep_alive=lambda: None) -> None:
    """``check()`` holds all along ``seconds`` while ``keep_alive()`` renews the source."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        keep_alive()
        assert check(), "a leased key expired early on the replica"
        time.sleep(0.3)  # the poll's pace, as in wait_for: the deadline bounds the wait


def test_v3_leases_are_shared_kept_alive_and_end_with_the_source(src, dst, mirror):
    prefix, dst_prefix = _prefix(), _prefix()
    s, d = V3(src.url), V3(dst.url)
    lease = s.grant(4)
    s.put(prefix + "/before", "b", lease=lease)            # found by the reload
    m = mirror(src.url, dst.url, "--src-api", "v3", "--dst-api", "v3", "--src-prefix",
               prefix, "--dst-prefix", dst_prefix, "--strip", "--reload")
    s.put(prefix + "/a", "1", lease=lease)
    m.wait_index(s.put(prefix + "/b", "2", lease=lease), timeout=20)
    leases = {d.lease_of(dst_prefix + k) for k in ("/before", "/a", "/b")}
    assert len(leases) == 1 and 0 not in leases, "keys sharing a lease share one"
    dst_lease = leases.pop()
    assert 0 < d.ttl(dst_lease) <= 4 + 1

    # Kept alive on the source past its TTL: the replica keeps the keys too.
    _outlives(lambda: d.get(dst_prefix + "/a") == "1", 6, lambda: s.keep_alive(lease))
    # A restart finds the pair again and keeps renewing it.
    m.stop()
    m = mirror(src.url, dst.url, "--src-api", "v3", "--dst-api", "v3", "--src-prefix",
               prefix, "--dst-prefix", dst_prefix, "--strip")
    _outlives(lambda: d.get(dst_prefix + "/a") == "1", 6, lambda: s.keep_alive(lease))
    assert m.status()["ttl"]["renewals"] > 0 and "resync" not in m.log()

    # The source lease ends: its deletes replicate, the destination lease runs out.
    s.revoke(lease)
    wait_for(lambda: d.tree(dst_prefix) == {}, timeout=10, message="keys deleted")
    wait_for(lambda: d.ttl(dst_lease) == -1, timeout=10, message="destination lease gone")


def test_v2_ttls_become_leases_kept_alive_by_refresh(src, dst, mirror):
    prefix, dst_prefix = "/ttl", _prefix()
    d = V3(dst.url)
    m = mirror(src.url, dst.url, "--src-api", "v2", "--dst-api", "v3", "--src-prefix",
               prefix, "--dst-prefix", dst_prefix, "--strip", "--reload")
    src.set(prefix + "/kept", "k", ttl=2)
    index = src.set(prefix + "/plain", "p")[1]["node"]["modifiedIndex"]
    m.wait_index(index, timeout=20)
    lease = d.lease_of(dst_prefix + "/kept")
    assert lease and d.lease_of(dst_prefix + "/plain") == 0
    assert 0 < d.ttl(lease) <= 2 + 1

    # refresh=true on the v2 source sends no event: the keeper renews the lease.
    _outlives(lambda: d.get(dst_prefix + "/kept") == "k", 5,
              lambda: src.set(prefix + "/kept", ttl=2, refresh=True, prevExist=True))
    # Left to expire on the source: the expire event deletes it on the replica.
    wait_for(lambda: d.get(dst_prefix + "/kept") is None, timeout=15,
             message="expired key deleted on the replica")
    assert d.get(dst_prefix + "/plain") == "p"


def test_keys_that_ran_out_while_the_mirror_was_stopped_are_resynced(src, dst, mirror):
    prefix, dst_prefix = _prefix(), _prefix()
    s, d = V3(src.url), V3(dst.url)
    lease = s.grant(2)
    args = ("--src-api", "v3", "--dst-api", "v3", "--src-prefix", prefix, "--dst-prefix",
            dst_prefix, "--strip")
    m = mirror(src.url, dst.url, *args, "--reload")
    m.wait_index(s.put(prefix + "/a", "1", lease=lease), timeout=20)
    m.stop()
    # The source keeps its lease; nobody renews the replica's.
    wait_for(lambda: s.keep_alive(lease) or d.get(dst_prefix + "/a") is None, timeout=15,
             message="the replica's lease ran out while the mirror was stopped")
    m = mirror(src.url, dst.url, *args)
    wait_for(lambda: s.keep_alive(lease) or d.get(dst_prefix + "/a") == "1", timeout=20,
             message="the key is back on the replica")
    assert m.metric("etcdmirror_resyncs_total", 'reason="ttl_expired"') == 1
    assert d.lease_of(dst_prefix + "/a")
