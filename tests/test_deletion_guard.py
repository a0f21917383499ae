"""The deletion guard of automatic resyncs, as pure functions and through the controller.

What a resync would delete is counted in replica keys (a deleted directory
takes every key below it); an automatic resync over ``--max-resync-deletes``,
or one that reads an empty source while the replica has keys, refuses before
writing anything.  The controller is driven here with the in-memory roles of
tests/fakes.py; tests/test_resync_guard.py runs the same cases on etcd.
"""

import re

import pytest

from etcdmirror.guards import (
    DEFAULT_MAX_RESYNC_DELETES, DeleteLimit, Deletions, ResyncRefused, check_deletes)
from etcdmirror.keys import KeyMapper
from etcdmirror.resync import NodeState, Snapshot, count_deletions, make_plan
from etcdmirror.verify import plan_lines
from tests.fakes import MemoryCheckpoint
from tests.fakes import mirror as memory_mirror

F = lambda v, ttl=None: NodeState(False, v, ttl)  # noqa: E731
D = lambda ttl=None: NodeState(True, None, ttl)  # noqa: E731

# -- the limit's syntax ----------------------------------------------------------


@pytest.mark.parametrize("text, replica_keys, allowed", [
    ("10%", 1000, 100), ("10%", 31, 4), ("10%", 5, 1), ("10%", 0, 0),
    ("2.5%", 40, 1), ("100%", 7, 7), ("0%", 50, 0), ("0", 50, 0), ("25", 3, 25),
])
def test_a_limit_is_a_count_or_a_percentage_rounded_up(text, replica_keys, allowed):
    limit = DeleteLimit.parse(text)
    assert limit.allowed(replica_keys) == allowed
    assert str(limit) == text


@pytest.mark.parametrize("text", ["-1", "abc", "150%", "100.5%", "2.5", "", "%", "1e3",
                                  "10 %", "ten"])
def test_junk_limits_are_refused(text):
    with pytest.raises(ValueError):
        DeleteLimit.parse(text)


def test_the_default_is_a_tenth_of_the_replica():
    assert str(DEFAULT_MAX_RESYNC_DELETES) == "10%"


# -- counting ----------------------------------------------------------------------


def test_a_deleted_directory_counts_the_keys_below_it():
    m = KeyMapper("/s", "/d", strip=True)
    src = {"/s": D(), "/s/a": F("1")}
    dst = {"/d": D(), "/d/a": F("1"), "/d/old": D(), "/d/old/k1": F("1"),
           "/d/old/sub": D(), "/d/old/sub/k2": F("2"), "/d/empty": D(), "/d/lone": F("x")}
    plan = make_plan(src, dst, m)
    assert sorted(k for k, _ in plan.deletes) == ["/d/empty", "/d/lone", "/d/old"]
    found = count_deletions(plan, src, dst, m)
    # Directories are not keys: the empty one costs nothing.
    assert found == Deletions(["/d/lone", "/d/old/k1", "/d/old/sub/k2"], 4, 1)
    assert found.share() == "3 of the 4 keys (75%)"


def test_type_changes_count_what_they_replace():
    m = KeyMapper("/s", "/d", strip=True)
    src = {"/s/x": F("now a key"), "/s/f": D(), "/s/f/g": F("1")}
    dst = {"/d/x": D(), "/d/x/c1": F("c"), "/d/x/c2": F("c"), "/d/f": F("was a key")}
    found = count_deletions(make_plan(src, dst, m), src, dst, m)
    assert list(found.keys) == ["/d/f", "/d/x/c1", "/d/x/c2"]


def test_ignored_and_index_keys_are_not_the_replica_s_keys():
    m = KeyMapper("/", "/", ignore=re.compile(".*/keep"))
    src = {"/a": F("1"), "/keep": F("source's")}
    dst = {"/a": F("1"), "/gone": F("x"), "/h": D(), "/h/keep": F("k"), "/h/drop": F("d"),
           "/__replication": D(), "/__replication/__ROOT__": F("5")}
    found = count_deletions(make_plan(src, dst, m), src, dst, m)
    assert list(found.keys) == ["/gone", "/h/drop"]
    assert found.replica_keys == 3 and found.source_keys == 1


# -- the check ---------------------------------------------------------------------


MAPPER = KeyMapper("/conftool", "/replica")


def gone(n, total, source_keys=1):
    keys = sorted(f"/replica/conftool/k{i:03}" for i in range(n))
    return Deletions(keys, total, source_keys)


def test_within_the_limit_passes_over_it_refuses_with_a_sample():
    limit = DeleteLimit.parse("10%")
    check_deletes(gone(4, 31), limit, True, 77, MAPPER)        # 31 keys: up to 4
    with pytest.raises(ResyncRefused) as refused:
        check_deletes(gone(12, 31), limit, True, 77, MAPPER)
    message = str(refused.value)
    assert message.startswith("refused: it would delete 12 of the 31 keys (38.7%)")
    assert "--max-resync-deletes 10% allows at most 4 keys" in message
    assert "index 77" in message
    # The first ten, sorted, and how many there are.
    assert ", ".join(f"/replica/conftool/k{i:03}" for i in range(10)) + ", ..." in message
    assert "k010" not in message and "the first 10 of 12" in message
    assert "--reload" in message and "raise --max-resync-deletes" in message
    assert "--src-prefix /conftool" in message
    assert refused.value.deletions.replica_keys == 31


def test_zero_means_never_delete():
    check_deletes(gone(0, 31), DeleteLimit.parse("0"), True, 1, MAPPER)
    with pytest.raises(ResyncRefused):
        check_deletes(gone(1, 31), DeleteLimit.parse("0"), True, 1, MAPPER)


def test_an_empty_source_is_refused_whatever_the_limit():
    for limit in (DeleteLimit.parse("100%"), DeleteLimit.parse("1000"), None):
        with pytest.raises(ResyncRefused) as refused:
            check_deletes(gone(3, 3, source_keys=0), limit, True, 9, MAPPER)
        assert "has no key under /conftool" in str(refused.value)
        assert "raise --max-resync-deletes" not in str(refused.value)
    # An empty source and an empty replica: nothing to lose.
    check_deletes(gone(0, 0, source_keys=0), None, True, 9, MAPPER)


def test_an_operator_s_reload_is_not_checked():
    check_deletes(gone(3, 3, source_keys=0), None, False, 9, MAPPER)


# -- etcd-mirror-verify --plan's text ------------------------------------------------


def test_plan_lines_show_writes_deletes_and_the_verdict():
    m = KeyMapper("/s", "/d", strip=True)
    src = Snapshot({"/s": D(), "/s/a": F("new", 30), "/s/x": F("a key now")}, 42, None)
    dst = Snapshot({"/d": D(), "/d/a": F("old"), "/d/x": D(), "/d/x/c": F("c"),
                    "/d/old": D(), "/d/old/k1": F("1"), "/d/old/k2": F("2")}, 50, None)
    lines = plan_lines(src, dst, m, DeleteLimit.parse("10%"))
    assert lines == [
        "write   /d/a: value 'new', TTL 30 s (destination: value 'old')",
        "write   /d/x: value 'a key now' (destination: a directory) (a directory: 1 key "
        "below it)",
        "delete  /d/old (a directory: 2 keys below it)",
        "plan: 2 writes, 1 deletes, taking 3 of the 4 keys (75%) under /d; source "
        "snapshot at index 42",
        "an automatic resync would refuse it (--max-resync-deletes 10% allows at most 1 "
        "key; source snapshot at index 42); etcd-mirror --reload would carry it out",
    ]
    assert plan_lines(src, dst, m, DeleteLimit.parse("3"))[-1] == (
        "an automatic resync would carry it out (--max-resync-deletes 3: up to 3 keys)")
    assert plan_lines(src, src_as_dst(src, m), m, DEFAULT_MAX_RESYNC_DELETES) == []


def src_as_dst(src, m):
    return Snapshot({m.to_dst(k): v for k, v in src.nodes.items()}, 1, None)


# -- through the controller, with in-memory roles --------------------------------------


def replica_keys(replica, n):
    for i in range(n):
        replica.tree[f"/b/a/k{i:02}"] = F(str(i))


def run(c):
    results = []
    c.run().addCallback(results.append)
    return results


def cleared(source, keys):
    """The source holds ``keys`` and no history the mirror could follow."""
    for key in keys:
        source.tree[key] = F(str(int(key[-2:])))     # as replica_keys wrote it
    source.index = source.floor = 100


def test_an_automatic_resync_of_an_empty_source_refuses_and_writes_nothing():
    checkpoint = MemoryCheckpoint(index=1)
    c, source, replica, clock = memory_mirror(checkpoint)
    replica_keys(replica, 5)
    before = dict(replica.tree)
    cleared(source, [])
    assert run(c) == [1]
    assert replica.tree == before and checkpoint.index == 1
    # Still pending: the next start resumes it, and checks again.
    assert checkpoint.marker == "index_cleared"
    error = c.status.last_error
    assert error.startswith("Resync (index_cleared) refused: it would delete 5 of the 5 keys")
    assert "has no key under /a" in error and "last applied index 1" in error
    assert "/b/a/k00, /b/a/k01" in error and "--reload" in error
    assert c.metrics.errors.labels(kind="ResyncRefused")._value.get() == 1


TWO = DeleteLimit.parse("2")


def test_deletes_within_the_limit_resync_and_past_it_refuse():
    checkpoint = MemoryCheckpoint(index=1)
    c, source, replica, clock = memory_mirror(checkpoint, max_resync_deletes=TWO)
    replica_keys(replica, 10)
    cleared(source, [f"/a/k{i:02}" for i in range(2, 10)])      # two fewer
    assert run(c) == []                                          # replicating
    assert sorted(replica.tree) == [f"/b/a/k{i:02}" for i in range(2, 10)]
    c.stop()

    checkpoint = MemoryCheckpoint(index=1)
    c, source, replica, clock = memory_mirror(checkpoint, max_resync_deletes=TWO)
    replica_keys(replica, 10)
    before = dict(replica.tree)
    cleared(source, [f"/a/k{i:02}" for i in range(3, 10)])      # three fewer
    assert run(c) == [1] and replica.tree == before
    assert "--max-resync-deletes 2 allows at most 2 keys" in c.status.last_error


def test_an_operator_s_reload_goes_past_the_limit_and_into_an_empty_source():
    checkpoint = MemoryCheckpoint(index=1)
    c, source, replica, clock = memory_mirror(checkpoint, reload=True)
    replica_keys(replica, 10)
    cleared(source, [])
    assert run(c) == [] and replica.tree == {}
    assert checkpoint.marks == ["reload"] and checkpoint.marker is None
    c.stop()


def test_a_reload_cut_short_is_finished_past_the_limit_but_not_into_an_empty_source():
    checkpoint = MemoryCheckpoint(index=1)
    checkpoint.marker = "reload"                     # a --reload that was killed
    c, source, replica, clock = memory_mirror(checkpoint)
    replica_keys(replica, 10)
    cleared(source, ["/a/k00"])
    assert run(c) == [] and sorted(replica.tree) == ["/b/a/k00"]
    # The marker kept the reason it was started for while it ran.
    assert checkpoint.marks == ["reload"] and checkpoint.marker is None
    assert c.metrics.resyncs.labels(reason="interrupted")._value.get() == 1
    c.stop()

    checkpoint = MemoryCheckpoint(index=1)
    checkpoint.marker = "reload"
    c, source, replica, clock = memory_mirror(checkpoint)
    replica_keys(replica, 10)
    cleared(source, [])
    assert run(c) == [1] and len(replica.tree) == 10
    assert c.status.last_error.startswith("Resync (interrupted, started as reload) refused")
    assert checkpoint.marker == "reload"


def test_an_automatic_resync_cut_short_keeps_its_reason_and_its_limit():
    checkpoint = MemoryCheckpoint(index=1)
    checkpoint.marker = "index_cleared"
    c, source, replica, clock = memory_mirror(checkpoint)
    replica_keys(replica, 10)
    cleared(source, ["/a/k00"])                      # nine of ten would go
    assert run(c) == [1] and len(replica.tree) == 10
    assert checkpoint.marks == ["index_cleared"]
    assert "Resync (interrupted, started as index_cleared) refused" in c.status.last_error
