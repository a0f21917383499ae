"""The reload/resync diff as a pure function: what is written, what is deleted."""

import re

from etcdmirror.keys import KeyMapper
from etcdmirror.resync import NodeState, make_plan

F = lambda v, ttl=None: NodeState(False, v, ttl)  # noqa: E731
D = lambda ttl=None: NodeState(True, None, ttl)  # noqa: E731


def keys(pairs):
    return [p[0] for p in pairs]


def test_identical_trees_need_nothing():
    m = KeyMapper("/s", "/d", strip=True)
    plan = make_plan({"/s": D(), "/s/a": F("1")}, {"/d": D(), "/d/a": F("1")}, m)
    assert len(plan) == 0


def test_differences_only():
    m = KeyMapper("/s", "/d", strip=True)
    src = {"/s": D(), "/s/same": F("1"), "/s/changed": F("new"), "/s/new": F("x"),
           "/s/dir": D(), "/s/dir/k": F("v")}
    dst = {"/d": D(), "/d/same": F("1"), "/d/changed": F("old"), "/d/extra": F("e"),
           "/d/olddir": D(), "/d/olddir/k": F("v")}
    plan = make_plan(src, dst, m)
    # parents before children
    assert keys(plan.writes) == ["/d/changed", "/d/dir", "/d/new", "/d/dir/k"]
    # a whole dir is deleted once, not key by key
    assert sorted(keys(plan.deletes)) == ["/d/extra", "/d/olddir"]


def test_ttl_presence_and_big_ttl_drift_rewrite():
    m = KeyMapper("/s", "/d", strip=True)
    plan = make_plan({"/s/a": F("1", 100), "/s/b": F("1", 100), "/s/c": F("1")},
                     {"/d/a": F("1", 99), "/d/b": F("1", 50), "/d/c": F("1", 10)}, m)
    assert keys(plan.writes) == ["/d/b", "/d/c"]


def test_type_flip_is_a_write():
    m = KeyMapper("/s", "/d", strip=True)
    plan = make_plan({"/s/x": D(), "/s/x/y": F("1")}, {"/d/x": F("file")}, m)
    assert keys(plan.writes) == ["/d/x", "/d/x/y"]
    assert plan.writes[0][2] == F("file")  # what is there now, for the executor


def test_ignored_keys_are_never_touched():
    m = KeyMapper("/s", "/d", strip=True, ignore=re.compile("/s/locks(/.*)?"))
    src = {"/s/a": F("1"), "/s/locks": D(), "/s/locks/l1": F("src")}
    dst = {"/d/locks": D(), "/d/locks/mine": F("dst"), "/d/gone": D(), "/d/gone/k": F("1")}
    plan = make_plan(src, dst, m)
    assert keys(plan.writes) == ["/d/a"]
    assert keys(plan.deletes) == ["/d/gone"]


def test_dir_holding_an_ignored_key_is_emptied_not_deleted():
    m = KeyMapper("/s", "/d", strip=True, ignore=re.compile(".*/keep"))
    dst = {"/d/old": D(), "/d/old/keep": F("1"), "/d/old/drop": F("2")}
    plan = make_plan({}, dst, m)
    assert keys(plan.deletes) == ["/d/old/drop"]


def test_outside_the_image_is_not_ours():
    m = KeyMapper("/s", "/replica")  # image is /replica/s
    dst = {"/replica/s": D(), "/replica/s/x": F("1"), "/replica/other": F("2")}
    plan = make_plan({"/s": D()}, dst, m)
    assert keys(plan.deletes) == ["/replica/s/x"]


def test_index_keys_are_never_deleted_at_the_root():
    m = KeyMapper("/", "/")
    plan = make_plan({"/a": F("1")}, {"/a": F("1"), "/__replication": D(),
                                      "/__replication/__ROOT__": F("5")}, m)
    assert len(plan) == 0


def test_dir_becoming_a_file_deletes_its_children_once():
    m = KeyMapper("/s", "/d", strip=True)
    plan = make_plan({"/s/x": F("now a file")}, {"/d/x": D(), "/d/x/child": F("c")}, m)
    assert keys(plan.writes) == ["/d/x"] and plan.deletes == []
