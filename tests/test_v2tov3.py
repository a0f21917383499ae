"""etcd v2 -> etcd v3 (``--src-api v2 --dst-api v3``), the migration path, on real etcd.

Across two clusters, and inside one (its v2 and v3 keyspaces are apart, so
the same prefix may be mirrored onto itself with ``--strip``).  v3 has no
directories: a v2 directory exists on the v3 side only through the keys under
it (an empty one is skipped), and deleting it deletes every v3 key under it.
The checkpoint ``/__replication/<dst prefix>`` in the v3 keyspace holds the v2
index applied.

Leases are not looked at here (v2 TTLs as v3 leases are being built): only
that a v2 key that expires on the source is deleted on the v3 side.

The fixtures wipe the v2 keyspace between tests, not the v3 one: each test
works under prefixes of its own and compares only there.
"""

import re
import uuid
from dataclasses import dataclass
from typing import Dict, Optional

import pytest

from tests.helpers import V2, run_command, wait_for
from tests.v3sync import V3, wait_image

MODE = ("--src-api", "v2", "--dst-api", "v3")

FORBIDDEN = ("Traceback", "internal error", "CRITICAL", "holds", "Replication stopped",
             "changed by something other than this mirror")


@dataclass
class Area:
    """One test's prefixes.  ``same_prefix``: ``--strip`` with the destination prefix
    equal to the source prefix, so the v3 keys are the v2 keys (inside one cluster)."""

    tag: str
    same_prefix: bool

    @classmethod
    def new(cls, same_prefix: bool = False) -> "Area":
        return cls(uuid.uuid4().hex[:8], same_prefix)

    @property
    def prefix(self) -> str:
        return "/t" + self.tag

    @property
    def dst_prefix(self) -> str:
        return self.prefix if self.same_prefix else "/r" + self.tag

    @property
    def image(self) -> str:
        return self.prefix if self.same_prefix else self.dst_prefix + self.prefix

    @property
    def checkpoint_key(self) -> str:
        return "/__replication" + self.dst_prefix

    @property
    def args(self) -> tuple:
        return (("--strip",) if self.same_prefix else ()) + (
            "--src-prefix", self.prefix, "--dst-prefix", self.dst_prefix)

    def key(self, rel: str) -> str:
        return f"{self.prefix}/{rel}"

    def dst_key(self, rel: str) -> str:
        return f"{self.image}/{rel}"

    def expected(self, v2: V2) -> Dict[str, str]:
        """The v2 prefix as its v3 image should be: its keys (not its directories)."""
        return {self.dst_key(rel): value for rel, (is_dir, value, _) in
                v2.tree(self.prefix).items() if not is_dir}


def checkpoint(d: V3, area: Area) -> Optional[int]:
    value = d.get(area.checkpoint_key)
    return int(value) if value is not None else None


def wait_converged(v2: V2, d: V3, area: Area, index: Optional[int] = None, mirror=None,
                   timeout: float = 20.0) -> None:
    """Until the v3 image equals the v2 prefix and (``index``) the checkpoint holds it."""
    wait_image(lambda: area.expected(v2), lambda: d.tree(area.image),
               lambda: checkpoint(d, area), index, mirror, timeout)


def ok(answer, action: str):
    status, body, _ = answer
    assert status in (200, 201) and body["action"] == action, (status, body)
    return body


def assert_clean(m) -> None:
    log = m.log()
    for bad in FORBIDDEN:
        assert bad not in log, f"the mirror logged {bad!r}:\n{log}"


# -- 10. every v2 action, across two clusters and inside one -----------------------------


@pytest.mark.parametrize("one_cluster", [
    pytest.param(False, id="two_clusters"),
    pytest.param(True, id="one_cluster"),
])
def test_every_v2_action_reaches_the_v3_image(src, dst, mirror, one_cluster):
    area = Area.new(same_prefix=one_cluster)
    dst_url = src.url if one_cluster else dst.url
    d = V3(dst_url)
    src.set(area.key("seed"), "1")
    m = mirror(src.url, dst_url, *MODE, *area.args, "--reload")
    wait_converged(src, d, area, src.index(), m)

    k = area.key
    ok(src.set(k("a"), "1"), "set")
    queued = ok(src.create_in_order(k("queue"), "job 1"), "create")["node"]["key"]
    ok(src.create_in_order(k("queue"), "job 2"), "create")
    ok(src.set(k("a"), "2", prevExist=True), "update")
    ok(src.set(k("a"), "café ☕", prevValue="2"), "compareAndSwap")
    ok(src.set(k("c"), "x", prevExist=False), "create")
    ok(src.delete(k("c"), prevValue="x"), "compareAndDelete")
    ok(src.set(k("b"), "b"), "set")
    ok(src.delete(k("b")), "delete")
    ok(src.set(k("empty"), dir=True), "set")            # stays empty: absent on v3
    ok(src.set(k("rmd"), dir=True), "set")
    ok(src.delete(k("rmd"), dir=True), "delete")        # rmdir of an empty dir
    ok(src.set(k("dir/filled"), dir=True), "set")
    ok(src.set(k("dir/filled/x"), "in a dir made first"), "set")
    ok(src.set(k("tree/x/1"), "1"), "set")
    ok(src.set(k("tree/y/2"), "2"), "set")
    ok(src.set(k("tree/top"), "t"), "set")
    wait_converged(src, d, area, src.index(), m)
    assert d.get(area.dst_key("tree/x/1")) == "1"
    ok(src.delete(k("tree"), recursive=True), "delete")  # every v3 key under it goes
    ok(src.set(k("with space/key"), "spaced"), "set")
    ok(src.delete(queued), "delete")
    expiring = ok(src.set(k("ttl"), "short-lived", ttl=1), "set")["node"]["modifiedIndex"]
    # The TTL runs out on the source: an expire event, which deletes the v3 key.
    wait_for(lambda: src.get(k("ttl"))[0] == 404, timeout=15,
             message="the v2 key expiring on the source")
    last = src.index()
    assert last > expiring
    wait_converged(src, d, area, last, m)

    left_in_queue = list(src.tree(k("queue")))  # the second job, by its in-order name
    assert len(left_in_queue) == 1 and k("queue/" + left_in_queue[0]) != queued
    image = d.tree(area.image)
    assert image == {
        area.dst_key("seed"): "1",
        area.dst_key("a"): "café ☕",
        area.dst_key("queue/" + left_in_queue[0]): "job 2",
        area.dst_key("dir/filled/x"): "in a dir made first",
        area.dst_key("with space/key"): "spaced",
    }, image
    assert d.tree(area.dst_key("tree")) == {} and d.get(area.dst_key("tree")) is None
    assert d.get(area.dst_key("empty")) is None and d.tree(area.dst_key("empty")) == {}
    assert d.get(area.dst_key("rmd")) is None
    assert d.get(area.dst_key("ttl")) is None
    log = m.log()
    for action in ("set", "create", "update", "compareAndSwap", "compareAndDelete", "delete",
                   "expire"):
        assert f"({action}, applied)" in log, f"no {action} applied:\n{log}"
    assert re.search(rf"Replicating key {re.escape(k('ttl'))} at index {last} \(expire, "
                     r"applied\)", log), log
    assert checkpoint(d, area) == last
    assert_clean(m)

    result = run_command("verify_main", *MODE, *area.args, src.url, dst_url)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "identical" in result.stdout
    # And verify sees a difference in the v3 image.
    d.put(area.dst_key("a"), "changed behind the mirror's back")
    result = run_command("verify_main", *MODE, *area.args, src.url, dst_url)
    assert result.returncode == 1, result.stdout + result.stderr
    assert f"differs {area.dst_key('a')}" in result.stdout, result.stdout


# -- 11. --reload of an existing v2 tree ---------------------------------------------------


def test_reload_of_a_v2_tree_into_an_empty_v3_prefix(src, dst, mirror):
    area = Area.new()
    d = V3(dst.url)
    k = area.key
    for rel, value in (("top", "t"), ("a/x", "ax"), ("a/b/c/deep", "abc"),
                       ("a/b/y", "aby"), ("other/z", "ünïcödé")):
        ok(src.set(k(rel), value), "set")
    ok(src.set(k("empty"), dir=True), "set")
    ok(src.set(k("a/b/emptysub"), dir=True), "set")
    last_modified = src.get(k("other/z"))[1]["node"]["modifiedIndex"]
    at_snapshot = src.index()  # the source is quiet from here
    assert d.tree(area.image) == {}
    assert checkpoint(d, area) is None

    m = mirror(src.url, dst.url, *MODE, *area.args, "--reload")
    wait_converged(src, d, area, at_snapshot, m)
    assert d.tree(area.image) == {
        area.dst_key("top"): "t", area.dst_key("a/x"): "ax",
        area.dst_key("a/b/c/deep"): "abc", area.dst_key("a/b/y"): "aby",
        area.dst_key("other/z"): "ünïcödé"}
    for empty in ("empty", "a/b/emptysub"):
        assert d.get(area.dst_key(empty)) is None and d.tree(area.dst_key(empty)) == {}
    assert checkpoint(d, area) == at_snapshot >= last_modified
    m.wait_log("Starting replication at ")
    assert f"Starting replication at {at_snapshot}" in m.log(), m.log()
    assert m.metric("etcdmirror_resyncs_total", 'reason="reload"') == 1

    # It replicates on from the snapshot: a key in the empty dir appears, a
    # recursive delete takes every v3 key below it.
    index = ok(src.set(k("empty/now"), "filled"), "set")["node"]["modifiedIndex"]
    wait_converged(src, d, area, index, m)
    assert d.get(area.dst_key("empty/now")) == "filled"
    index = ok(src.delete(k("a"), recursive=True), "delete")["node"]["modifiedIndex"]
    wait_converged(src, d, area, index, m)
    assert d.tree(area.dst_key("a")) == {}
    assert d.tree(area.image) == {area.dst_key("top"): "t", area.dst_key("other/z"): "ünïcödé",
                                  area.dst_key("empty/now"): "filled"}
    assert_clean(m)


# -- a reporting bug found while writing these tests (fixed) -------------------------------


def test_a_v2_directory_write_is_not_reported_as_ignored_by_regex(src, dst, mirror):
    area = Area.new()
    d = V3(dst.url)
    src.set(area.key("seed"), "1")
    m = mirror(src.url, dst.url, *MODE, *area.args, "--reload")
    made = ok(src.set(area.key("dir"), dir=True), "set")["node"]["modifiedIndex"]
    index = ok(src.set(area.key("dir/k"), "v"), "set")["node"]["modifiedIndex"]
    wait_converged(src, d, area, index, m)
    line = [x for x in m.log().splitlines() if f" at index {made} (" in x]
    assert len(line) == 1, m.log()
    assert "ignored by regex" not in line[0], line[0]
    assert m.metric("etcdmirror_ignored_events_total") == 0
