"""etcd v3 -> etcd v3 (``--src-api v3 --dst-api v3``) on real etcd servers.

Every source revision under the prefix lands on the destination as one
transaction with the checkpoint ``/__replication/<dst prefix>`` (the source
revision applied), so these tests compare the destination image with the
source prefix and the checkpoint with the source revision, through a reload,
live changes of every kind (put, delete, delete-range, multi-key transaction),
a clean restart, repeated kill -9, a compacted history, a quiet prefix, a
destination written behind the mirror's back, ``etcd-mirror-verify`` and the
usage errors of the modes.

The fixtures wipe the v2 keyspace between tests, not the v3 one: each test
works under prefixes of its own (:class:`Area`) and looks only there.
"""

import random
import re
import signal
import socket
import subprocess
import sys
import threading
import uuid
from dataclasses import dataclass, field
from typing import Dict, List, Optional

import pytest

from tests.helpers import run_command, wait_for
from tests.v3sync import V3, wait_image

V3_MODE = ("--src-api", "v3", "--dst-api", "v3")

#: Mirror log lines that mean something went wrong (a kill -9 is not one of them).
FORBIDDEN = ("Traceback", "internal error", "CRITICAL", "Divergence", "divergence",
             "changed by something other than this mirror", "Replication stopped")


@dataclass
class Area:
    """One test's own prefixes: the source prefix and the destination prefix.

    Without ``--strip`` the image of ``prefix`` is ``dst_prefix + prefix``.
    """

    tag: str = field(default_factory=lambda: uuid.uuid4().hex[:8])

    @property
    def prefix(self) -> str:
        return "/t" + self.tag

    @property
    def dst_prefix(self) -> str:
        return "/r" + self.tag

    @property
    def image(self) -> str:
        return self.dst_prefix + self.prefix

    @property
    def checkpoint_key(self) -> str:
        return "/__replication" + self.dst_prefix

    @property
    def args(self) -> tuple:
        return ("--src-prefix", self.prefix, "--dst-prefix", self.dst_prefix)

    def key(self, rel: str) -> str:
        return f"{self.prefix}/{rel}"

    def dst_key(self, rel: str) -> str:
        return f"{self.image}/{rel}"

    def expected(self, s: V3) -> Dict[str, str]:
        """The source prefix as its image on the destination should be."""
        return {self.dst_prefix + key: value for key, value in s.tree(self.prefix).items()}


def checkpoint(d: V3, area: Area) -> Optional[int]:
    value = d.get(area.checkpoint_key)
    return int(value) if value is not None else None


def differences(s: V3, d: V3, area: Area) -> Dict[str, tuple]:
    want, got = area.expected(s), d.tree(area.image)
    return {k: (want.get(k), got.get(k)) for k in sorted(set(want) | set(got))
            if want.get(k) != got.get(k)}


def wait_converged(s: V3, d: V3, area: Area, revision: Optional[int] = None,
                   mirror=None, timeout: float = 20.0) -> None:
    """Until the image equals the source prefix and (``revision``) the checkpoint holds
    exactly that revision; fails at once if ``mirror`` exits."""
    wait_image(lambda: area.expected(s), lambda: d.tree(area.image),
               lambda: checkpoint(d, area), revision, mirror, timeout,
               describe=lambda: f"(source, destination) by key: {differences(s, d, area)}")


def start_indexes(m) -> List[int]:
    return [int(i) for i in re.findall(r"Starting replication at (\d+)", m.log())]


def assert_clean(m, what: str = "the mirror") -> None:
    log = m.log()
    for bad in FORBIDDEN:
        assert bad not in log, f"{what} logged {bad!r}:\n{log}"


def start_mirror(mirror, src_url: str, dst_url: str, area: Area, *extra: str,
                 reload: bool = False):
    """A v3 -> v3 mirror of ``area``, once healthy."""
    args = V3_MODE + area.args + (("--reload",) if reload else ()) + extra
    return mirror(src_url, dst_url, *args)


def started_at(m) -> int:
    """The revision the mirror logged it started replicating at (waits for the line)."""
    m.wait_log("Starting replication at ")
    return start_indexes(m)[-1]


# -- 1. --reload -----------------------------------------------------------------------


def test_reload_writes_the_differences_and_deletes_stale_keys(src, dst, mirror):
    s, d, area = V3(src.url), V3(dst.url), Area()
    for i in range(20):
        s.put(area.key(f"svc{i % 3}/host{i}"), f"v{i}")
        if i % 4:  # the stale replica: most keys equal, some missing
            d.put(area.dst_key(f"svc{i % 3}/host{i}"), f"v{i}")
    d.put(area.dst_key("svc1/host1"), "differs")
    d.put(area.dst_key("stale/old"), "gone at the reload")
    d.put(area.dst_prefix + "/elsewhere", "outside the image: untouched")
    s.put(area.prefix + "x/outside", "outside the source prefix: not mirrored")
    revision = s.revision()

    m = start_mirror(mirror, src.url, dst.url, area, reload=True)
    wait_converged(s, d, area, revision, m)

    image = d.tree(area.image)
    assert len(image) == 20
    assert image[area.dst_key("svc1/host1")] == "v1"
    assert d.get(area.dst_key("stale/old")) is None
    assert d.get(area.dst_prefix + "/elsewhere") == "outside the image: untouched"
    assert d.get(area.dst_prefix + area.prefix + "x/outside") is None
    assert checkpoint(d, area) == revision == s.revision()
    assert m.metric("etcdmirror_resyncs_total", 'reason="reload"') == 1
    # Only the differences: 5 missing keys (i % 4 == 0) and 1 that differs; 1 delete.
    assert "writing 6, deleting 1" in m.log(), m.log()
    assert started_at(m) == revision and len(start_indexes(m)) == 1
    # And it goes on replicating from there.
    r = s.put(area.key("after"), "1")
    wait_converged(s, d, area, r, m)
    assert_clean(m)


# -- 2. live changes of every kind ---------------------------------------------------------


def random_change(s: V3, area: Area, rng: random.Random, n: int,
                  leases: Optional[List[int]] = None) -> Optional[int]:
    """One random change under the area (put, delete, delete-range, txn; with
    ``leases``, also a lease granted and attached to keys, or revoked; the others
    run out by themselves); the revision of the answer (a delete of nothing makes
    no revision: the current one)."""
    keys = [area.key(f"d{i}/k{j}") for i in range(3) for j in range(6)]
    kinds, weights = ["put", "delete", "range", "txn"], [6, 2, 0.7, 2]
    if leases is not None:
        kinds, weights = kinds + ["lease", "revoke"], weights + [1, 0.5]
    kind = rng.choices(kinds, weights)[0]
    if kind == "lease":
        lease = s.grant(rng.randint(1, 3))           # never kept alive: it expires
        leases.append(lease)
        return max(s.put(k, f"l{n}", lease=lease) for k in rng.sample(keys, rng.randint(1, 3)))
    if kind == "revoke":
        if leases:
            try:
                s.revoke(leases.pop(rng.randrange(len(leases))))
            except RuntimeError:
                pass                                  # it ran out first
        return s.revision()
    if kind == "put":
        return s.put(rng.choice(keys), f"v{n}-{rng.randrange(100)}")
    if kind == "delete":
        return s.delete(rng.choice(keys))
    if kind == "range":
        return s.delete(area.key(f"d{rng.randrange(3)}"), prefix=True)
    chosen = rng.sample(keys, rng.randint(2, 6))
    cut = rng.randint(1, len(chosen))
    return s.txn(puts=[(k, f"t{n}") for k in chosen[:cut]], deletes=chosen[cut:])


def revoke_all(s: V3, leases: List[int]) -> None:
    """No lease left to run out later: the source revision stays where it is."""
    for lease in leases:
        try:
            s.revoke(lease)
        except RuntimeError:
            pass                                      # it ran out already
    leases.clear()


def test_live_changes_of_every_kind(src, dst, mirror):
    s, d, area = V3(src.url), V3(dst.url), Area()
    s.put(area.key("seed"), "1")
    m = start_mirror(mirror, src.url, dst.url, area, reload=True)
    rng = random.Random(uuid.uuid4().int)
    # Each kind at least once, then a random mix.
    s.put(area.key("d0/k0"), "a")
    s.put(area.key("d0/k1"), "b")
    s.put(area.key("d1/k0"), "c")
    s.delete(area.key("d0/k1"))
    s.delete(area.key("d0"), prefix=True)
    s.txn(puts=[(area.key("d2/k0"), "x"), (area.key("d2/k1"), "y")],
          deletes=[area.key("d1/k0")])
    leases: List[int] = []
    for n in range(150):
        random_change(s, area, rng, n, leases)
    revoke_all(s, leases)
    wait_converged(s, d, area, s.revision(), m)

    # One source transaction of N keys is one destination change: one event.
    n_keys = 7
    revision = s.txn(puts=[(area.key(f"batch/k{i}"), str(i)) for i in range(n_keys)],
                     deletes=[area.key("seed")])
    wait_converged(s, d, area, revision, m)
    lines = [line for line in m.log().splitlines() if f" at index {revision} (" in line]
    assert len(lines) == 1, lines
    assert "Replicating key " + area.key("batch/k") in lines[0], lines
    assert lines[0].endswith("(txn, applied)"), lines
    assert checkpoint(d, area) == revision == s.revision()
    assert m.metric("etcdmirror_events_total", 'action="txn",outcome="applied"') >= 2
    assert m.status()["replica_index"] == revision
    assert_clean(m)


# -- 3. a clean restart ---------------------------------------------------------------------


def test_restart_resumes_at_the_checkpoint_without_losing_updates(src, dst, mirror):
    s, d, area = V3(src.url), V3(dst.url), Area()
    for i in range(10):
        s.put(area.key(f"k{i}"), "before")
    m = start_mirror(mirror, src.url, dst.url, area, reload=True)
    wait_converged(s, d, area, s.revision(), m)
    assert m.stop() == 0, m.log()
    stopped_at = checkpoint(d, area)
    assert stopped_at == s.revision()

    rng = random.Random(uuid.uuid4().int)
    for n in range(50):
        key = area.key(f"k{rng.randrange(15)}")
        if rng.random() < 0.3:
            s.delete(key)
        else:
            s.put(key, f"while down {n}")
    assert checkpoint(d, area) == stopped_at  # nobody wrote the destination

    m2 = start_mirror(mirror, src.url, dst.url, area)
    wait_converged(s, d, area, s.revision(), m2)
    assert started_at(m2) == stopped_at and len(start_indexes(m2)) == 1, m2.log()
    assert "Re-loading" not in m2.log()
    assert m2.metric("etcdmirror_resyncs_total", 'reason="compacted"') == 0
    assert_clean(m2)
    assert m2.stop() == 0


# -- 4. kill -9, again and again ----------------------------------------------------------


class Writer(threading.Thread):
    """Random changes (put, delete, delete-range, txn, leases) on the source until stopped."""

    def __init__(self, url: str, area: Area, seed: int) -> None:
        super().__init__(daemon=True, name="v3-writer")
        self.s = V3(url)
        self.area = area
        self.rng = random.Random(seed)
        self.ops = 0
        self.leases: List[int] = []
        self.error: Optional[BaseException] = None
        self.done = threading.Event()

    def run(self) -> None:
        try:
            while not self.done.is_set():
                random_change(self.s, self.area, self.rng, self.ops, self.leases)
                self.ops += 1
                # A little slack for the two cores the mirror and two etcds share.
                self.done.wait(0.003)
        except BaseException as e:  # reported by the test
            self.error = e

    def stop(self) -> None:
        self.done.set()
        self.join(10)


def test_kill_9_repeatedly_while_writing_loses_nothing(src, dst, mirror):
    s, d, area = V3(src.url), V3(dst.url), Area()
    seed = random.SystemRandom().randrange(2**32)
    s.put(area.key("seed"), "1")
    m = start_mirror(mirror, src.url, dst.url, area, reload=True)
    mirrors = [m]
    writer = Writer(src.url, area, seed)
    rng = random.Random(seed)
    kills = 5
    behind: List[int] = []  # source revision - checkpoint, right after each kill
    writer.start()
    try:
        for n in range(kills):
            target = writer.ops + rng.randint(40, 120)
            wait_for(lambda: writer.ops >= target or not writer.is_alive(), timeout=30,
                     message=f"the writer reaching op {target} (seed {seed})")
            assert writer.error is None, f"writer failed: {writer.error!r}"
            # It is replicating (the checkpoint moved past its start), still running.
            started = started_at(m)
            wait_for(lambda: m.proc.poll() is not None or (checkpoint(d, area) or 0) > started,
                     timeout=20, message=f"mirror #{n} applying something")
            assert m.proc.poll() is None, f"mirror #{n} exited with {m.returncode}:\n{m.log()}"
            m.kill()
            assert m.returncode == -signal.SIGKILL, m.log()
            behind.append(s.revision() - checkpoint(d, area))
            # A few more writes while it is down, then the same mirror again, no --reload.
            down_until = writer.ops + rng.randint(0, 30)
            wait_for(lambda: writer.ops >= down_until or not writer.is_alive(),
                     message="writes while the mirror is down")
            at_kill = checkpoint(d, area)
            m = start_mirror(mirror, src.url, dst.url, area)
            mirrors.append(m)
            # It starts exactly where the killed one's last transaction left the checkpoint.
            assert started_at(m) == at_kill and len(start_indexes(m)) == 1, m.log()
    finally:
        writer.stop()
    assert writer.error is None, f"writer failed: {writer.error!r} (seed {seed})"
    revoke_all(s, writer.leases)
    marker = s.put(area.key("marker"), "last")
    assert marker == s.revision()
    wait_converged(s, d, area, marker, m, timeout=30)
    assert d.get(area.dst_key("marker")) == "last"
    assert m.proc.poll() is None and m.healthy(), m.log()
    for i, each in enumerate(mirrors):
        assert_clean(each, f"mirror #{i} (seed {seed})")
        if i:
            assert "Re-loading" not in each.log(), f"mirror #{i} resynced:\n{each.log()}"
    assert [each.returncode for each in mirrors[:-1]] == [-signal.SIGKILL] * kills
    assert m.stop() == 0
    print(f"v3 kill -9: seed {seed}, {writer.ops} changes, {kills} kills (the checkpoint "
          f"that many revisions behind the source at each: {behind}), the mirrors "
          f"started at {[start_indexes(each) for each in mirrors]}")


# -- 5. compacted history ---------------------------------------------------------------------


def test_compaction_while_stopped_resyncs_by_itself(src, dst, mirror):
    s, d, area = V3(src.url), V3(dst.url), Area()
    for i in range(40):
        s.put(area.key(f"k{i}"), "v0")
    m = start_mirror(mirror, src.url, dst.url, area, reload=True)
    wait_converged(s, d, area, s.revision(), m)
    assert m.stop() == 0
    stopped_at = checkpoint(d, area)

    # 30 changes, 3 of them deletes (within the default --max-resync-deletes 10%).
    for i in range(27):
        s.put(area.key(f"k{i % 20}" if i < 20 else f"new{i}"), f"v{i + 1}")
    for i in (37, 38, 39):
        s.delete(area.key(f"k{i}"))
    now = s.revision()
    assert now == stopped_at + 30
    s.compact(now)

    m2 = start_mirror(mirror, src.url, dst.url, area)
    wait_converged(s, d, area, now, m2)
    wait_for(lambda: m2.metric("etcdmirror_resyncs_total", 'reason="compacted"') == 1,
             message="the compacted resync counted")
    assert m2.metric("etcdmirror_resyncs_total", 'reason="reload"') == 0
    assert "resync (compacted) done" in m2.log(), m2.log()
    assert m2.status()["state"] == "replicating"
    # It replicates live again afterwards.
    r = s.put(area.key("after"), "1")
    wait_converged(s, d, area, r, m2)
    assert m2.metric("etcdmirror_resyncs_total", 'reason="compacted"') == 1


# -- 6. a quiet prefix ------------------------------------------------------------------------
#
# The mirror proves its prefix quiet every --watch-idle-timeout seconds and writes that
# progress to the checkpoint when it is 500 revisions ahead, or 10 s after the last write.


def quiet_mirror(mirror, src, dst, area: Area):
    s, d = V3(src.url), V3(dst.url)
    s.put(area.key("k"), "1")
    m = start_mirror(mirror, src.url, dst.url, area, "--watch-idle-timeout", "0.5",
                     reload=True)
    start = s.revision()
    wait_converged(s, d, area, start, m)
    return s, d, m, start


def wait_checkpoint(d: V3, area: Area, m, done, what: str, timeout: float) -> int:
    """Until ``done(checkpoint)``; fails at once if the mirror exits."""
    try:
        wait_for(lambda: m.proc.poll() is not None or done(checkpoint(d, area) or 0),
                 timeout=timeout, message=what)
    except AssertionError:
        pytest.fail(f"no {what} after {timeout}s: the checkpoint is at "
                    f"{checkpoint(d, area)}, the mirror's replica_index at "
                    f"{m.status()['replica_index']}")
    assert m.proc.poll() is None, m.log()
    return checkpoint(d, area)


def test_quiet_prefix_checkpoint_moves_when_500_revisions_ahead(src, dst, mirror):
    area = Area()
    s, d, m, start = quiet_mirror(mirror, src, dst, area)
    outside = "/o" + area.tag
    for i in range(600):
        s.put(f"{outside}/k{i % 50}", str(i))
    now = s.revision()
    assert now == start + 600
    moved = wait_checkpoint(d, area, m, lambda c: c >= start + 500,
                            "checkpoint 500 revisions ahead", timeout=20)
    assert moved <= now
    # The mirror itself knows the prefix is quiet up to the source's revision.
    wait_for(lambda: m.status()["replica_index"] == now, message="replica_index == source")
    assert d.tree(area.image) == {area.dst_key("k"): "1"}
    assert d.tree(area.dst_prefix + outside) == {}
    assert "Replicating key" not in m.log()  # not one event for all that
    assert_clean(m)


def test_quiet_prefix_checkpoint_follows_a_source_written_elsewhere(src, dst, mirror):
    """Fewer than 500 revisions: written 10 s after the last write at most."""
    area = Area()
    s, d, m, start = quiet_mirror(mirror, src, dst, area)
    writer = threading.Event()
    outside = "/o" + area.tag

    def write_elsewhere() -> None:
        w, n = V3(src.url), 0
        while not writer.wait(0.05):
            w.put(f"{outside}/k{n % 10}", str(n))
            n += 1

    thread = threading.Thread(target=write_elsewhere, daemon=True)
    thread.start()
    try:
        wait_for(lambda: s.revision() >= start + 20, message="writes outside the prefix")
        target = s.revision()
        moved = wait_checkpoint(d, area, m, lambda c: c >= target,
                                f"checkpoint at the source revision {target}", timeout=25)
    finally:
        writer.set()
        thread.join(10)
    assert target <= moved <= s.revision() < start + 500
    assert d.tree(area.image) == {area.dst_key("k"): "1"}
    assert "Replicating key" not in m.log()
    assert_clean(m)


def test_quiet_cluster_checkpoint_reaches_the_last_revision(src, dst, mirror):
    """The write at 500 ahead lands before the last revisions, then nothing at all
    happens on the source: the last progress must still be written, or a kill -9 and a
    compaction later force a needless resync.  (Until 85cbb84 it never was: the v3
    source proved nothing more once the cluster was quiet.)"""
    area = Area()
    s, d, m, start = quiet_mirror(mirror, src, dst, area)
    outside = "/o" + area.tag
    for i in range(600):
        s.put(f"{outside}/k{i % 50}", str(i))
    wait_checkpoint(d, area, m, lambda c: c >= start + 500, "checkpoint 500 ahead",
                    timeout=20)
    # A few more revisions elsewhere, then the whole source cluster is quiet.
    for i in range(5):
        s.put(f"{outside}/last{i}", "x")
    now = s.revision()
    wait_for(lambda: m.status()["replica_index"] == now, message="replica_index == source")
    # Twice the 10 s interval.
    wait_checkpoint(d, area, m, lambda c: c == now, f"checkpoint at the source revision "
                    f"{now}", timeout=20)
    # What it is for: a crash, then the source compacted at its revision, and the
    # restarted mirror still starts inside the history, without a resync.
    m.kill()
    s.compact(now)
    m2 = start_mirror(mirror, src.url, dst.url, area)
    assert started_at(m2) == now
    r = s.put(area.key("after"), "2")
    wait_converged(s, d, area, r, m2)
    assert m2.metric("etcdmirror_resyncs_total", 'reason="compacted"') == 0
    assert "Re-loading" not in m2.log()
    assert_clean(m2)


# -- 7. the destination changed behind the mirror's back --------------------------------


def test_divergence_stops_the_mirror_or_resyncs(src, dst, mirror):
    s, d, area = V3(src.url), V3(dst.url), Area()
    s.put(area.key("k"), "1")
    s.put(area.key("other"), "o")
    m = start_mirror(mirror, src.url, dst.url, area, reload=True)
    wait_converged(s, d, area, s.revision(), m)
    before = checkpoint(d, area)

    d.put(area.dst_key("k"), "written behind the mirror's back")
    s.put(area.key("k"), "2")
    assert m.wait_exit(20) == 1, m.log()
    log = m.log()
    assert "holds" in log and area.dst_key("k") in log, log
    assert "written behind the mirror's back" in log, log
    assert "--on-divergence resync" in log, log
    # Nothing of that change landed: the checkpoint did not move.
    assert checkpoint(d, area) == before
    assert d.get(area.dst_key("k")) == "written behind the mirror's back"

    # The same mirror with --on-divergence resync: it resyncs instead and converges.
    m2 = start_mirror(mirror, src.url, dst.url, area, "--on-divergence", "resync")
    wait_converged(s, d, area, s.revision(), m2)
    wait_for(lambda: m2.metric("etcdmirror_resyncs_total", 'reason="divergence"') == 1,
             message="the divergence resync counted")
    assert d.get(area.dst_key("k")) == "2"
    # Once more while it runs: a key deleted behind its back, then changed on the source.
    d.delete(area.dst_key("other"))
    r = s.put(area.key("other"), "o2")
    wait_converged(s, d, area, r, m2)
    wait_for(lambda: m2.metric("etcdmirror_resyncs_total", 'reason="divergence"') == 2,
             message="the second divergence resync counted")
    assert m2.proc.poll() is None and m2.status()["state"] == "replicating"


# -- 8. etcd-mirror-verify -------------------------------------------------------------------


def test_verify_compares_v3_trees(src, dst):
    s, d, area = V3(src.url), V3(dst.url), Area()
    for rel, value in (("a", "1"), ("dir/b", "2"), ("dir/deep/c", "3")):
        s.put(area.key(rel), value)
        d.put(area.dst_key(rel), value)
    args = ("--src-api", "v3", "--dst-api", "v3") + area.args + (src.url, dst.url)
    result = run_command("verify_main", *args)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "identical" in result.stdout

    d.put(area.dst_key("dir/b"), "changed")
    d.put(area.dst_key("extra"), "x")
    s.put(area.key("missing"), "m")
    result = run_command("verify_main", *args)
    assert result.returncode == 1, result.stdout + result.stderr
    out = result.stdout
    assert f"differs {area.dst_key('dir/b')}: source value '2', destination value " \
           "'changed'" in out, out
    assert f"extra   {area.dst_key('extra')}" in out, out
    assert f"missing {area.dst_key('missing')}" in out, out
    assert "3 differences" in out, out


# -- 9. usage errors ---------------------------------------------------------------------------


def _listener() -> socket.socket:
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen(8)
    sock.setblocking(False)
    return sock


def _nobody_connected(sock: socket.socket) -> bool:
    try:
        conn, _ = sock.accept()
    except BlockingIOError:
        return True
    conn.close()
    return False


@pytest.mark.parametrize("args,named", [
    pytest.param(("--src-api", "v3", "--dst-api", "v2"), ("--src-api", "--dst-api"),
                 id="v3-to-v2"),
    pytest.param(("--src-api", "v3"), ("--src-api", "--dst-api"), id="v3-to-default-v2"),
    pytest.param(("--ha", "--dst-api", "v3"), ("--ha",), id="ha-into-v3"),
    pytest.param(("--ha", "--src-api", "v3", "--dst-api", "v3"), ("--ha",), id="ha-v3-v3"),
])
def test_usage_errors_exit_2_before_touching_a_cluster(args, named):
    a, b = _listener(), _listener()
    try:
        urls = [f"http://127.0.0.1:{sock.getsockname()[1]}" for sock in (a, b)]
        result = subprocess.run([sys.executable, "-m", "etcdmirror", *args, "--port", "0",
                                 *urls], capture_output=True, text=True, timeout=30,
                                stdin=subprocess.DEVNULL)
        assert result.returncode == 2, result.stdout + result.stderr
        for flag in named:
            assert flag in result.stderr, result.stderr
        assert _nobody_connected(a) and _nobody_connected(b)
    finally:
        a.close()
        b.close()


def test_verify_refuses_v3_to_v2_and_the_three_modes_are_valid():
    a, b = _listener(), _listener()
    try:
        urls = [f"http://127.0.0.1:{sock.getsockname()[1]}" for sock in (a, b)]
        result = run_command("verify_main", "--src-api", "v3", "--dst-api", "v2", *urls)
        assert result.returncode == 2, result.stdout + result.stderr
        assert "--src-api" in result.stderr and "--dst-api" in result.stderr
        for src_api, dst_api in (("v2", "v2"), ("v3", "v3"), ("v2", "v3")):
            result = subprocess.run(
                [sys.executable, "-m", "etcdmirror", "--src-api", src_api, "--dst-api",
                 dst_api, "--check-config", *urls], capture_output=True, text=True,
                timeout=30, stdin=subprocess.DEVNULL)
            assert result.returncode == 0, result.stdout + result.stderr
            assert f"({src_api})" in result.stdout and f"({dst_api})" in result.stdout
        assert _nobody_connected(a) and _nobody_connected(b)
    finally:
        a.close()
        b.close()


# -- 10. --strip and the ignore regex mean the same as on v2 ------------------------------


def test_strip_and_the_ignore_regex_as_on_v2(src, dst, mirror):
    """Ignored keys are never written, their images never touched (not even by a
    reload), and a revision of ignored keys only still moves the checkpoint."""
    s, d, area = V3(src.url), V3(dst.url), Area()
    s.put(area.key("app/a"), "1")
    s.put(area.key("locks/l1"), "source lock")
    d.put(area.dst_prefix + "/locks/mine", "the destination's own lock")
    m = mirror(src.url, dst.url, "--src-api", "v3", "--dst-api", "v3", "--strip",
               "--src-prefix", area.prefix, "--dst-prefix", area.dst_prefix,
               "--src-ignore-keys-regex", area.prefix + "/locks(/.*)?", "--reload")
    s.txn(puts=[(area.key("app/b"), "2"), (area.key("locks/l2"), "ignored")])
    only_ignored = s.put(area.key("locks/l1"), "still ignored")
    wait_image(lambda: {"/app/a": "1", "/app/b": "2", "/locks/mine": "the destination's own lock"},
               lambda: {k[len(area.dst_prefix):]: v for k, v in d.tree(area.dst_prefix).items()},
               lambda: checkpoint(d, area), only_ignored, m)
    assert m.metric("etcdmirror_ignored_events_total") == 1
    assert f"at index {only_ignored} (put, ignored by regex)" in m.log()
