"""Keys kept alive with ``refresh=true`` never expire early on the replica (real etcd).

etcd v2 sends no watch event for a TTL refresh, so these tests drive exactly
what a service-registration client does: write a key with a TTL, then renew
it with ``refresh=true`` before it runs out.  The clients below renew on
their own schedule (that pacing is the scenario, not a wait for a
condition); every check of the replica is a poll.
"""

import heapq
import random
import threading
import time
from typing import Dict, List, Optional, Set, Tuple

import pytest

from tests.helpers import V2, run_command, wait_for, wait_same

PREFIX = "/svc"
IMAGE = "/replica/svc"


def image(key: str) -> str:
    return "/replica" + key


class Renewer(threading.Thread):
    """A client renewing TTL'd keys (and directories) with ``refresh=true``.

    ``plan`` maps a key to ``(ttl, low, high, is_dir)``: after each renewal
    the next one comes after a random ``low``..``high`` seconds.  A renewal
    that finds the key gone (the client was too late, the source expired it)
    is recorded in ``missed``: the scenario did not hold on this machine.
    """

    def __init__(self, client: V2, plan: Dict[str, Tuple[int, float, float, bool]],
                 seed: int) -> None:
        super().__init__(daemon=True)
        self.client = V2(client.url)
        self.plan = plan
        self.rng = random.Random(seed)
        self.stopped: Set[str] = set()
        self.missed: List[Tuple[str, int]] = []
        self.renewals = 0
        self.done = threading.Event()
        self.lock = threading.Lock()
        now = time.monotonic()
        self._queue = [(now + self.rng.uniform(low, high), key)
                       for key, (_, low, high, _) in plan.items()]
        heapq.heapify(self._queue)

    def stop_renewing(self, keys) -> None:
        with self.lock:
            self.stopped.update(keys)

    def run(self) -> None:
        while self._queue and not self.done.is_set():
            at, key = self._queue[0]
            if self.done.wait(max(0.0, at - time.monotonic())):
                return
            heapq.heappop(self._queue)
            with self.lock:
                if key in self.stopped:
                    continue
            ttl, low, high, is_dir = self.plan[key]
            status, body, _ = self.client.set(key, dir=is_dir, ttl=ttl, refresh=True,
                                              prevExist=True)
            if status != 200:
                self.missed.append((key, status))
            self.renewals += 1
            heapq.heappush(self._queue, (time.monotonic() + self.rng.uniform(low, high), key))

    def stop(self) -> None:
        self.done.set()
        self.join(10)


def first_404(clients: Dict[str, Tuple[V2, str]], timeout: float) -> Dict[str, float]:
    """Poll each ``(client, key)`` every 50 ms; when did each first answer 404?"""
    gone: Dict[str, float] = {}

    def check():
        for name, (client, key) in clients.items():
            if name not in gone and client.get(key)[0] == 404:
                gone[name] = time.monotonic()
        return len(gone) == len(clients)

    wait_for(check, timeout=timeout, message=f"{sorted(clients)} expiring")
    return gone


@pytest.mark.soak
def test_keys_renewed_with_refresh_never_expire_on_the_replica(src, dst, mirror):
    """The scenario for 60 s, and 200 keys and a renewed directory beside it.

    One key with TTL 3 renewed every second, polled on the replica every
    100 ms; 200 keys with TTLs of 3 to 10 s renewed at random moments, 40 of
    which stop being renewed after 30 s; a directory with a TTL of 4 s and
    five children, renewed every 1 to 2 s.  (A ``soak`` test: scripts/test
    runs it once, in the pass with Debian's libraries.)
    """
    rng = random.Random(20261201)
    single = PREFIX + "/a"
    src.set(single, "up", ttl=3)
    plan = {single: (3, 1.0, 1.0, False)}
    pool = []
    for i in range(200):
        key = f"{PREFIX}/pool/g{i % 4}/k{i}"
        ttl = rng.choice([3, 5, 8, 10])
        src.set(key, f"v{i}", ttl=ttl)
        plan[key] = (ttl, 0.2, ttl - 1.5, False)
        pool.append(key)
    tdir = PREFIX + "/tdir"
    src.set(tdir, dir=True, ttl=4)
    for i in range(5):
        src.set(f"{tdir}/c{i}", f"child{i}")
    plan[tdir] = (4, 1.0, 2.0, True)
    stopping = set(rng.sample(pool, 40))

    m = mirror(src.url, dst.url, "--reload", "--src-prefix", PREFIX)
    wait_same(src, dst, PREFIX, IMAGE)
    renewer = Renewer(src, plan, seed=1)
    renewer.start()
    kept = [image(k) for k in pool if k not in stopping] + [image(tdir)] + [
        image(f"{tdir}/c{i}") for i in range(5)]
    single_misses: List[Tuple[float, int]] = []
    tree_misses: List[Tuple[float, List[str]]] = []
    started = time.monotonic()
    polls = 0
    try:
        # Every 100 ms the single key; every 500 ms the whole image.
        while time.monotonic() - started < 60:
            polls += 1
            status = dst.get(image(single))[0]
            if status != 200:
                single_misses.append((time.monotonic() - started, status))
            if polls % 5 == 0:
                seen = {IMAGE + "/" + k for k in dst.tree(IMAGE)}
                missing = [k for k in kept if k not in seen]
                if missing:
                    tree_misses.append((time.monotonic() - started, missing[:5]))
            if polls == 300:
                renewer.stop_renewing(stopping)
            renewer.done.wait(max(0.0, started + polls * 0.1 - time.monotonic()))
        assert not renewer.missed, (
            f"the renewing client itself was too late on this machine: {renewer.missed[:5]}")
        assert polls >= 400, f"only {polls} polls of the replica in 60 s"
        assert not single_misses, f"the replica's {single} was gone at {single_misses[:5]}"
        assert not tree_misses, f"replica copies gone while renewed: {tree_misses[:3]}"

        # The renewals of the single key stop: it runs out on both sides,
        # within a second or two of each other.
        renewer.stop_renewing([single])
        gone = first_404({"source": (src, single), "replica": (dst, image(single))},
                         timeout=15)
        assert abs(gone["replica"] - gone["source"]) <= 2.0, gone
    finally:
        renewer.stop()
    # The keys whose renewals stopped at 30 s are gone on both sides.
    for key in stopping:
        assert src.get(key)[0] == 404 and dst.get(image(key))[0] == 404, key
    assert m.metric("etcdmirror_ttl_refreshes_total") > 100, m.metrics()
    assert m.metric("etcdmirror_ttl_expired_late_total") == 0, m.log()
    wait_for(lambda: m.metric("etcdmirror_ttl_tracked_keys") == len(pool) - len(stopping) + 1,
             message="tracked keys: the renewed pool and the directory")
    assert m.status()["ttl"]["tracked"] == len(pool) - len(stopping) + 1
    assert m.healthy(), m.log()


def renew_all(keys: List[str], ttl: int) -> Dict[str, Tuple[int, float, float, bool]]:
    return {key: (ttl, 0.8, 1.2, False) for key in keys}


def missing_on_replica(dst: V2, keys: List[str]) -> Optional[List[str]]:
    seen = {IMAGE + "/" + k for k in dst.tree(IMAGE)}
    return [k for k in keys if image(k) not in seen]


def watch_replica(dst: V2, keys: List[str], seconds: float) -> List[Tuple[float, List[str]]]:
    """Poll the replica every 200 ms for ``seconds``; the moments a key was missing."""
    misses = []
    started = time.monotonic()
    done = threading.Event()
    polls = 0
    while time.monotonic() - started < seconds:
        polls += 1
        missing = missing_on_replica(dst, keys)
        if missing:
            misses.append((round(time.monotonic() - started, 1), missing[:5]))
        done.wait(max(0.0, started + polls * 0.2 - time.monotonic()))
    return misses


def test_tracking_survives_restarts_and_a_long_stop(src, dst, mirror):
    """Killed and restarted, down past the TTL, restarted with --reload."""
    keys = [f"{PREFIX}/r/k{i}" for i in range(20)]
    for key in keys:
        src.set(key, "up", ttl=5)
    renewer = Renewer(src, renew_all(keys, 5), seed=2)
    m1 = mirror(src.url, dst.url, "--reload", "--src-prefix", PREFIX)
    renewer.start()
    try:
        wait_same(src, dst, PREFIX, IMAGE)
        assert not watch_replica(dst, keys, 2)

        # kill -9 and an immediate restart: the new process learns the TTL'd
        # keys from a source snapshot and keeps them alive.  A replica copy
        # that ran out during the gap is written again.
        # This one reads the history with plain watches, no stream.
        m1.kill()
        m2 = mirror(src.url, dst.url, "--src-prefix", PREFIX, "--no-watch-stream")
        wait_for(lambda: not missing_on_replica(dst, keys), message="every key on the replica")
        assert not watch_replica(dst, keys, 4)
        assert m2.status()["ttl"]["tracked"] == len(keys)

        # Down for longer than the TTL while the source renews: every replica
        # copy runs out, and verify says so.
        m2.kill()
        wait_for(lambda: missing_on_replica(dst, keys) == keys, timeout=15,
                 message="the replica's copies running out while the mirror is down")
        result = run_command("verify_main", "--src-prefix", PREFIX, src.url, dst.url)
        assert result.returncode == 1, result.stdout + result.stderr
        assert f"missing {image(keys[0])}" in result.stdout
        # (A short idle timeout: the index reaches the snapshot's sooner.)
        m3 = mirror(src.url, dst.url, "--src-prefix", PREFIX, "--watch-idle-timeout", "1")
        wait_for(lambda: not missing_on_replica(dst, keys), message="every key written again")
        assert m3.metric("etcdmirror_ttl_expired_late_total") == len(keys), m3.log()
        assert "ran out while the source's lives on" in m3.log()
        assert not watch_replica(dst, keys, 3)
        assert run_command("verify_main", "--src-prefix", PREFIX, src.url,
                           dst.url).returncode == 0

        # A restart with --reload: tracking comes from the resync's snapshot.
        m3.stop()
        m4 = mirror(src.url, dst.url, "--reload", "--src-prefix", PREFIX)
        assert not watch_replica(dst, keys, 3)
        assert m4.status()["ttl"]["tracked"] == len(keys)
        assert m4.metric("etcdmirror_ttl_refreshes_total") > 0
        assert not renewer.missed, renewer.missed[:5]
    finally:
        renewer.stop()


def test_a_prefix_without_ttls_costs_nothing(src, dst, mirror):
    m = mirror(src.url, dst.url, "--reload", "--src-prefix", PREFIX)
    for i in range(50):
        src.set(f"{PREFIX}/plain/k{i}", str(i))
    wait_same(src, dst, PREFIX, IMAGE)
    assert m.metric("etcdmirror_ttl_tracked_keys") == 0
    assert m.metric("etcdmirror_ttl_source_reads_total") == 0
    assert m.status()["ttl"] == {"tracked": 0, "refreshes": 0, "expired_late": 0,
                                 "next_check_in": None}


def test_a_ttl_directory_run_out_on_the_replica_is_resynced(src, dst, mirror):
    """Frozen for longer than the TTL: the directory and its children come back."""
    tdir = PREFIX + "/locks"
    src.set(tdir, dir=True, ttl=3)
    src.set(tdir + "/holder", "host1")
    m = mirror(src.url, dst.url, "--reload", "--src-prefix", PREFIX)
    wait_same(src, dst, PREFIX, IMAGE)
    renewer = Renewer(src, {tdir: (3, 0.8, 1.2, True)}, seed=4)
    renewer.start()
    try:
        m.pause()                               # SIGSTOP: a frozen host, say
        try:
            wait_for(lambda: dst.get(image(tdir))[0] == 404, timeout=15,
                     message="the replica's copy running out")
            assert dst.get(image(tdir + "/holder"))[0] == 404
        finally:
            m.resume()
        wait_for(lambda: m.metric("etcdmirror_resyncs_total", 'reason="ttl_expired"') == 1,
                 message="a resync for the directory that ran out")
        wait_same(src, dst, PREFIX, IMAGE)
        assert m.metric("etcdmirror_ttl_expired_late_total") >= 1
        assert "its children went with it" in m.log()
        assert not watch_replica(dst, [tdir, tdir + "/holder"], 4)
        assert not renewer.missed, renewer.missed
    finally:
        renewer.stop()
