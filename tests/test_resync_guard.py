"""Guard rails on deletion, on real etcd (issue 13).

A resync that reads an empty source (a leader election, a wrong prefix) must
not delete the replica: consul-replicate users lost 127,739 keys that way.
Here the mirror is stopped, the source changes, and more than 1000 events
elsewhere on the source push the mirror's index out of etcd's history, so the
next start resyncs by itself (``index_cleared``): an automatic resync, held
to ``--max-resync-deletes`` and to the empty-source rule.
"""

from tests.helpers import persisted_index, run_command, wait_for, wait_same

PREFIX = "/conftool"
IMAGE = "/replica/conftool"
MARKER = "/__replication/replica.resync-in-progress"


def past_the_history(client, events=1100):
    """More writes elsewhere than etcd v2's 1000-event history holds."""
    for i in range(events):
        client.set(f"/elsewhere/k{i % 50}", str(i))


def seeded_mirror(src, dst, mirror, keys):
    for key in keys:
        src.set(f"{PREFIX}/{key}", "v-" + key)
    m = mirror(src.url, dst.url, "--reload", "--src-prefix", PREFIX)
    wait_same(src, dst, PREFIX, IMAGE)
    assert m.stop() == 0
    return m


def refused(src, dst, mirror, *flags):
    """Start without --reload: it must exit 1 and leave the replica as it was."""
    image, index = dst.tree(IMAGE), persisted_index(dst)
    m = mirror(src.url, dst.url, "--src-prefix", PREFIX, *flags, healthy=False)
    assert m.wait_exit(60) == 1, m.log_tail()
    assert dst.tree(IMAGE) == image, "a refused resync changed the replica"
    assert persisted_index(dst) == index
    return m.log()


def test_an_emptied_source_prefix_past_the_history_is_refused(src, dst, mirror):
    """The issue's test: empty the source prefix while the mirror is stopped past
    etcd's history, start it: it refuses and the replica is untouched."""
    keys = [f"k{i:02}" for i in range(30)] + ["dir/sub/x"]
    seeded_mirror(src, dst, mirror, keys)
    src.delete(PREFIX, recursive=True, dir=True)
    past_the_history(src)

    log = refused(src, dst, mirror)
    assert "Resync (index_cleared) refused: it would delete 31 of the 31 keys" in log
    assert f"has no key under {PREFIX}" in log
    sample = [f"{IMAGE}/dir/sub/x"] + [f"{IMAGE}/k{i:02}" for i in range(9)]
    assert ", ".join(sample) + ", ... (the first 10 of 31, sorted)" in log
    assert "--reload" in log and "CRITICAL" in log
    assert "resync: deleted" not in log
    # The resync stays pending, and so does the refusal.
    assert dst.get(MARKER)[0] == 200
    log = refused(src, dst, mirror)
    assert "Resync (interrupted, started as index_cleared) refused" in log

    # The operator accepts: --reload empties the replica.
    m = mirror(src.url, dst.url, "--reload", "--src-prefix", PREFIX)
    wait_same(src, dst, PREFIX, IMAGE)
    assert dst.get(MARKER)[0] == 404
    assert m.metric("etcdmirror_resyncs_total", 'reason="reload"') == 1


def test_deletes_within_the_limit_resync_past_it_refuse(src, dst, mirror):
    """The default, 10%: 30 keys may lose 3 (rounded up: 27 may lose 3 too)."""
    keys = [f"k{i:02}" for i in range(30)]
    seeded_mirror(src, dst, mirror, keys)
    for key in keys[:3]:
        src.delete(f"{PREFIX}/{key}")
    src.set(f"{PREFIX}/k05", "changed")
    past_the_history(src)
    m = mirror(src.url, dst.url, "--src-prefix", PREFIX)
    wait_same(src, dst, PREFIX, IMAGE)
    wait_for(lambda: m.metric("etcdmirror_resyncs_total", 'reason="index_cleared"') == 1)
    assert m.stop() == 0

    for key in keys[3:7]:
        src.delete(f"{PREFIX}/{key}")
    past_the_history(src)
    log = refused(src, dst, mirror)
    assert "it would delete 4 of the 27 keys (14.8%)" in log
    assert "--max-resync-deletes 10% allows at most 3 keys" in log
    assert ", ".join(f"{IMAGE}/k{i:02}" for i in range(3, 7)) + "." in log
    assert "raise --max-resync-deletes" in log

    # Raised: the pending resync goes through.
    m = mirror(src.url, dst.url, "--src-prefix", PREFIX, "--max-resync-deletes", "4")
    wait_same(src, dst, PREFIX, IMAGE)
    wait_for(lambda: m.metric("etcdmirror_resyncs_total", 'reason="interrupted"') == 1)
    assert m.stop() == 0


def test_reload_goes_past_the_limit(src, dst, mirror):
    keys = [f"k{i:02}" for i in range(20)]
    seeded_mirror(src, dst, mirror, keys)
    for key in keys[:15]:
        src.delete(f"{PREFIX}/{key}")
    m = mirror(src.url, dst.url, "--reload", "--src-prefix", PREFIX,
               "--max-resync-deletes", "0")
    wait_same(src, dst, PREFIX, IMAGE)
    assert len(dst.tree(IMAGE)) == 5
    assert "refused" not in m.log()


def test_a_small_count_limit_refuses_a_divergence_resync(src, dst, mirror):
    """--on-divergence resync is automatic too: held to the limit."""
    for key in ("a", "b"):
        src.set(f"{PREFIX}/{key}", "1")
    m = mirror(src.url, dst.url, "--reload", "--src-prefix", PREFIX,
               "--on-divergence", "resync", "--max-resync-deletes", "0")
    wait_same(src, dst, PREFIX, IMAGE)
    dst.set(IMAGE + "/intruder", "written behind the mirror's back")
    dst.set(IMAGE + "/a", "diverged")
    image = dst.tree(IMAGE)
    src.set(PREFIX + "/a", "2", prevValue="1")    # fails on the replica: a divergence
    assert m.wait_exit(30) == 1, m.log_tail()
    assert dst.tree(IMAGE) == image
    assert "Resync (divergence) refused: it would delete 1 of the 3 keys" in m.log()
    assert f"{IMAGE}/intruder." in m.log()


# -- etcd-mirror-verify --plan -----------------------------------------------------------


def plan(*args):
    return run_command("verify_main", "--plan", *args)


def test_verify_plan_prints_what_a_resync_would_do_and_writes_nothing(src, dst):
    src.set(PREFIX + "/same", "1")
    dst.set(IMAGE + "/same", "1")
    src.set(PREFIX + "/changed", "new")
    dst.set(IMAGE + "/changed", "old")
    src.set(PREFIX + "/missing", "m")
    for i in range(3):
        dst.set(f"{IMAGE}/extra/k{i}", "e")
    before = dst.tree("/")
    result = plan("--src-prefix", PREFIX, src.url, dst.url)
    assert result.returncode == 1, result.stdout + result.stderr
    out = result.stdout.splitlines()
    assert out[:4] == [
        f"write   {IMAGE}/changed: value 'new' (destination: value 'old')",
        f"write   {IMAGE}/missing: value 'm' (destination: nothing)",
        f"delete  {IMAGE}/extra (a directory: 3 keys below it)",
        out[3]]
    assert out[3].startswith(f"plan: 2 writes, 1 deletes, taking 3 of the 5 keys (60%) "
                             f"under {IMAGE}; source snapshot at index ")
    assert out[4].startswith("an automatic resync would refuse it (--max-resync-deletes 10% "
                             "allows at most 1 key")
    assert dst.tree("/") == before

    result = plan("--src-prefix", PREFIX, "--max-resync-deletes", "50%", src.url, dst.url)
    assert result.returncode == 1
    assert result.stdout.splitlines()[-1] == (
        "an automatic resync would carry it out (--max-resync-deletes 50%: up to 3 keys)")

    # An empty source prefix: refused whatever the limit.
    src.delete(PREFIX, recursive=True, dir=True)
    result = plan("--src-prefix", PREFIX, "--max-resync-deletes", "100%", src.url, dst.url)
    assert result.returncode == 1
    assert f"has no key under {PREFIX}" in result.stdout.splitlines()[-1]


def test_verify_plan_of_identical_trees_exits_0(src, dst):
    src.set(PREFIX + "/t", "ttl", ttl=300)
    dst.set(IMAGE + "/t", "ttl", ttl=301)
    result = plan("--src-prefix", PREFIX, src.url, dst.url)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "nothing to write or delete" in result.stdout
    # A TTL that drifted is what a resync would write, unlike plain verify.
    dst.set(IMAGE + "/t", "ttl", ttl=100)
    result = plan("--src-prefix", PREFIX, src.url, dst.url)
    assert result.returncode == 1
    assert result.stdout.startswith(f"write   {IMAGE}/t: value 'ttl', TTL ")
    assert run_command("verify_main", "--src-prefix", PREFIX, src.url, dst.url).returncode == 0


def test_verify_plan_unreachable_and_usage_errors_exit_2(src):
    from etcdmirror.localetcd import free_port

    result = plan(src.url, f"http://127.0.0.1:{free_port()}")
    assert result.returncode == 2 and "could not compare" in result.stderr
    result = plan("--max-resync-deletes", "abc", src.url, src.url)
    assert result.returncode == 2 and "--max-resync-deletes" in result.stderr
