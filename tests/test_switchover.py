"""``etcd-mirror-switchover`` on real etcd: A->B reversed into B->A without a
reload, and back; and every refusal, with nothing written."""

import threading

import pytest

from tests.helpers import run_command, wait_for, wait_same

PREFIX = "/conftool"

#: (A->B's mapping, B's image root, the B->A mapping the switchover prints).
MAPPINGS = {
    "renamed": (["--strip", "--src-prefix", PREFIX, "--dst-prefix", "/replica/conftool"],
                "/replica/conftool",
                ["--strip", "--src-prefix", "/replica/conftool", "--dst-prefix", PREFIX]),
    "same names, ignored locks": (
        ["--strip", "--src-prefix", PREFIX, "--dst-prefix", PREFIX,
         "--src-ignore-keys-regex", PREFIX + "/locks(/.*)?"],
        PREFIX,
        ["--strip", "--src-prefix", PREFIX, "--dst-prefix", PREFIX,
         "--src-ignore-keys-regex", PREFIX + "/locks(/.*)?"]),
}
FAST = ["--quiet-seconds", "0.5", "--timeout", "30"]


def switchover(*args):
    return run_command("switchover_main", *args)


def resyncs(m):
    return sum(m.samples("etcdmirror_resyncs_total").values())


def switch(a, b, mapping, *extra):
    """Run the switchover; it must succeed and print the reverse mirror's mapping."""
    forward, _, reverse = mapping
    result = switchover(*FAST, *forward, *extra, a.url, b.url)
    assert result.returncode == 0, result.stdout + result.stderr
    assert " ".join(reverse) in result.stdout.replace("'", "")
    return result


@pytest.mark.parametrize("name", sorted(MAPPINGS))
def test_switch_over_and_back_without_a_reload(src, dst, mirror, name):
    a, b = src, dst
    forward, image, reverse = MAPPINGS[name]
    a.set(PREFIX + "/pools/host1", "pooled")
    a.set(PREFIX + "/pools/host2", "depooled")
    a_to_b = mirror(a.url, b.url, "--reload", *forward)
    wait_same(a, b, PREFIX, image)

    first = switch(a, b, MAPPINGS[name], "--instance", "conftool")
    assert "1. quiet: no write under /conftool" in first.stdout
    assert "systemctl stop etcd-mirror@conftool" in first.stdout
    assert "WITHOUT --reload" in first.stdout
    # Re-running after success is fine (nothing wrote B's image meanwhile).
    again = switch(a, b, MAPPINGS[name])
    assert "4. wrote on A" in again.stdout

    a_to_b.stop()
    b_to_a = mirror(b.url, a.url, *reverse)  # no --reload
    b.set(image + "/pools/host1", "depooled")
    b.delete(image + "/pools/host2")
    b.set(image + "/pools/host3", "new on B")
    if "locks" in name:
        b.set(image + "/locks/b-only", "a lock of B's")  # never replicated
    tree = wait_same(b, a, image, PREFIX) if "locks" not in name else None
    if "locks" in name:
        wait_for(lambda: a.tree(PREFIX).get("pools/host3") == (False, "new on B", False))
        assert "locks/b-only" not in a.tree(PREFIX)
    else:
        assert tree["pools/host3"] == (False, "new on B", False)
    assert resyncs(b_to_a) == 0 and b_to_a.status()["state"] == "replicating"

    # And back: B->A reversed into A->B again, the same way.
    switch(b, a, (reverse, PREFIX, forward))
    b_to_a.stop()
    a_to_b = mirror(a.url, b.url, *forward)  # no --reload
    a.set(PREFIX + "/pools/host4", "back on A")
    wait_for(lambda: b.tree(image).get("pools/host4") == (False, "back on A", False))
    assert b.tree(image)["pools/host1"] == (False, "depooled", False)
    assert resyncs(a_to_b) == 0


def test_writes_still_arriving_on_a_are_refused(src, dst, mirror):
    forward, image, _ = MAPPINGS["renamed"]
    src.set(PREFIX + "/a", "1")
    mirror(src.url, dst.url, "--reload", *forward)
    stop = threading.Event()

    def writer():
        n = 0
        while not stop.wait(0.05):
            n += 1
            src.set(PREFIX + "/busy", str(n))
    thread = threading.Thread(target=writer, daemon=True)
    thread.start()
    try:
        result = switchover("--quiet-seconds", "3", *forward, src.url, dst.url)
    finally:
        stop.set()
        thread.join(10)
    assert result.returncode == 1, result.stdout + result.stderr
    assert "A still receives writes under /conftool" in result.stderr
    assert "/conftool/busy at index" in result.stderr and "read-only" in result.stderr
    assert src.get("/__replication/conftool").status == 404


def mirrored(src, dst, mirror):
    """A->B ("renamed") running, caught up on one key: its options, B's image root, the mirror."""
    forward, image, _ = MAPPINGS["renamed"]
    src.set(PREFIX + "/a", "1")
    m = mirror(src.url, dst.url, "--reload", *forward)
    wait_same(src, dst, PREFIX, image)
    return forward, image, m


def test_trees_that_differ_are_refused_naming_the_keys(src, dst, mirror):
    forward, image, _ = mirrored(src, dst, mirror)
    dst.set(image + "/intruder", "written behind the mirror's back")
    result = switchover(*FAST, *forward, src.url, dst.url)
    assert result.returncode == 1, result.stdout + result.stderr
    assert "extra   /replica/conftool/intruder" in result.stderr
    assert "1 differences" in result.stderr
    assert src.get("/__replication/conftool").status == 404


def test_a_mirror_that_has_not_caught_up_is_refused(src, dst, mirror):
    forward, _, m = mirrored(src, dst, mirror)
    m.stop()
    index = src.set(PREFIX + "/a", "2").index  # A is quiet from now on
    result = switchover("--quiet-seconds", "0.5", "--timeout", "1", *forward,
                        src.url, dst.url)
    assert result.returncode == 1, result.stdout + result.stderr
    assert f"A is at {index}" in result.stderr and "/status" in result.stderr
    assert src.get("/__replication/conftool").status == 404


def test_dry_run_writes_nothing(src, dst, mirror):
    forward, _, _ = mirrored(src, dst, mirror)
    before = src.index()
    result = switchover(*FAST, "--dry-run", *forward, src.url, dst.url)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "4. would write on A" in result.stdout and "dry run" in result.stdout
    assert src.get("/__replication/conftool").status == 404
    assert src.index() == before


def test_an_ignore_regex_on_renamed_keys_is_refused_before_connecting():
    result = switchover("--src-prefix", PREFIX, "--src-ignore-keys-regex", "/conftool/x",
                        "http://127.0.0.1:9", "http://127.0.0.1:9")
    assert result.returncode == 1 and "cannot be rewritten safely" in result.stderr


def test_an_unreachable_cluster_exits_2():
    result = switchover(*FAST, "http://127.0.0.1:9", "http://127.0.0.1:9")
    assert result.returncode == 2 and "could not switch over" in result.stderr
