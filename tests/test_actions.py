"""Every etcd v2 action, replayed by a running mirror between two real etcd servers."""

import pytest

from etcdmirror.applier import TTL_GRACE
from tests.helpers import persisted_index, wait_for, wait_same

PREFIX = "/conftool"
IMAGE = "/replica" + PREFIX


def same(src, dst, src_prefix=PREFIX, dst_root=IMAGE):
    return wait_same(src, dst, src_prefix, dst_root)


@pytest.fixture
def mirrored(src, dst, mirror):
    """A mirror of /conftool onto /replica/conftool, started with --reload."""
    src.set(PREFIX + "/seed", "1")
    m = mirror(src.url, dst.url, "--reload", "--src-prefix", PREFIX)
    return m



def replica(dst, key):
    return dst.get("/replica" + key)


def test_set_file(src, dst, mirrored):
    src.set(PREFIX + "/a", "one")
    src.set(PREFIX + "/a", "two")
    tree = same(src, dst)
    assert tree["a"] == (False, "two", False)


def test_create_prev_exist_false(src, dst, mirrored):
    status, body, _ = src.set(PREFIX + "/c", "new", prevExist=False)
    assert body["action"] == "create"
    same(src, dst)
    assert replica(dst, PREFIX + "/c")[1]["node"]["value"] == "new"


def test_create_in_order_keys_keep_their_names(src, dst, mirrored):
    keys = [src.create_in_order(PREFIX + "/queue", f"job{i}")[1]["node"]["key"]
            for i in range(3)]
    tree = same(src, dst)
    for i, key in enumerate(keys):
        assert tree[key[len(PREFIX) + 1:]] == (False, f"job{i}", False)


def test_update_prev_exist_true(src, dst, mirrored):
    src.set(PREFIX + "/u", "v1")
    status, body, _ = src.set(PREFIX + "/u", "v2", prevExist=True)
    assert body["action"] == "update"
    same(src, dst)
    assert replica(dst, PREFIX + "/u")[1]["node"]["value"] == "v2"
    m = mirrored
    wait_for(lambda: m.metric("etcdmirror_events_total",
                              'action="update",outcome="applied"') == 1)


def test_compare_and_swap(src, dst, mirrored):
    src.set(PREFIX + "/cas", "old")
    status, body, _ = src.set(PREFIX + "/cas", "new", prevValue="old")
    assert body["action"] == "compareAndSwap"
    same(src, dst)
    _, body, _ = src.get(PREFIX + "/cas")
    status, body, _ = src.set(PREFIX + "/cas", "newer",
                              prevIndex=body["node"]["modifiedIndex"])
    assert body["action"] == "compareAndSwap"
    tree = same(src, dst)
    assert tree["cas"] == (False, "newer", False)


def test_delete_and_compare_and_delete(src, dst, mirrored):
    src.set(PREFIX + "/d1", "x")
    src.set(PREFIX + "/d2", "y")
    same(src, dst)
    assert src.delete(PREFIX + "/d1")[1]["action"] == "delete"
    assert src.delete(PREFIX + "/d2", prevValue="y")[1]["action"] == "compareAndDelete"
    tree = same(src, dst)
    assert "d1" not in tree and "d2" not in tree


def test_directories(src, dst, mirrored):
    src.set(PREFIX + "/dir", dir=True)
    src.set(PREFIX + "/dir/sub", dir=True)
    src.set(PREFIX + "/dir/sub/k", "v")
    tree = same(src, dst)
    assert tree["dir"] == (True, None, False) and tree["dir/sub"][0] is True
    src.delete(PREFIX + "/dir/sub/k")
    src.delete(PREFIX + "/dir/sub", dir=True)  # empty dir delete
    same(src, dst)
    src.set(PREFIX + "/dir/x/y", "z")
    assert src.delete(PREFIX + "/dir", recursive=True)[0] == 200
    tree = same(src, dst)
    assert not any(k.startswith("dir") for k in tree)


def test_ttl_is_carried_and_expire_replicates(src, dst, mirrored):
    src.set(PREFIX + "/ttl", "short", ttl=2)
    src.set(PREFIX + "/keep", "long", ttl=300)
    wait_for(lambda: replica(dst, PREFIX + "/keep")[0] == 200)
    node = replica(dst, PREFIX + "/keep")[1]["node"]
    assert node["value"] == "long" and 290 <= node["ttl"] <= 300 + TTL_GRACE
    # The source expires the key; the destination follows (its own TTL or the
    # replicated expire event, whichever is first, and neither is an error).
    wait_for(lambda: src.get(PREFIX + "/ttl")[0] == 404, timeout=10)
    wait_for(lambda: replica(dst, PREFIX + "/ttl")[0] == 404, timeout=10)
    # Updating without a TTL makes the key permanent on both sides.
    src.set(PREFIX + "/keep", "forever", prevExist=True)
    wait_for(lambda: replica(dst, PREFIX + "/keep")[1]["node"].get("value") == "forever")
    assert "ttl" not in replica(dst, PREFIX + "/keep")[1]["node"]
    assert mirrored.proc.poll() is None


def test_expire_of_key_already_gone_on_destination(src, dst, mirrored):
    """An expire for a key the destination already dropped is not an error."""
    src.set(PREFIX + "/gone", "x", ttl=2)
    wait_for(lambda: replica(dst, PREFIX + "/gone")[0] == 200)
    dst.delete("/replica" + PREFIX + "/gone")
    wait_for(lambda: mirrored.metric("etcdmirror_events_total",
                                     'action="expire",outcome="replayed"') == 1, timeout=10)
    assert "already in effect on the destination" in mirrored.log()
    assert mirrored.healthy()


def test_directory_ttl(src, dst, mirrored):
    src.set(PREFIX + "/tdir", dir=True, ttl=300)
    wait_for(lambda: replica(dst, PREFIX + "/tdir")[0] == 200)
    node = replica(dst, PREFIX + "/tdir")[1]["node"]
    assert node["dir"] and node["ttl"] > 200
    src.set(PREFIX + "/tdir", dir=True, ttl=600, prevExist=True)
    wait_for(lambda: replica(dst, PREFIX + "/tdir")[1]["node"].get("ttl", 0) > 500)


AWKWARD = [
    "with space", "per%cent", "quest?ion", "hash#tag", "plus+sign", "amp&ersand",
    "equal=s", "ünïcödé-ключ-鍵", "semi;colon", "tab\tkey",
]


def test_awkward_keys_and_values_are_byte_exact(src, dst, mirrored):
    for i, name in enumerate(AWKWARD):
        src.set(f"{PREFIX}/awk/{name}", f"value {name} %20 + & = ? #\nline2 {i}")
    big = "x" * 1024 * 1024
    src.set(PREFIX + "/big", big)
    tree = same(src, dst)
    for name in AWKWARD:
        assert f"awk/{name}" in tree
    assert tree["big"][1] == big


def test_prefix_boundary(src, dst, mirrored):
    src.set("/conftool2/other", "no")
    src.set(PREFIX + "/mine", "yes")
    same(src, dst)
    assert dst.get("/replica/conftool2/other")[0] == 404
    assert dst.tree("/replica/conftool2") == {}


def test_ignored_keys_are_skipped_but_index_advances(src, dst, mirror):
    src.set(PREFIX + "/keep", "1")
    src.set(PREFIX + "/locks/a", "1")
    dst.set("/replica" + PREFIX + "/locks/local", "mine")
    m = mirror(src.url, dst.url, "--reload", "--src-prefix", PREFIX,
               "--src-ignore-keys-regex", PREFIX + "/locks/.*")
    src.set(PREFIX + "/locks/b", "2")
    src.set(PREFIX + "/keep", "2")
    last = src.index()
    m.wait_index(last)
    tree = dst.tree("/replica" + PREFIX)
    assert tree["keep"] == (False, "2", False)
    assert "locks/a" not in tree and "locks/b" not in tree
    assert tree["locks/local"] == (False, "mine", False)  # never touched, not even by reload
    assert m.metric("etcdmirror_ignored_events_total") == 1
    # The index is persisted in batches: shortly, not necessarily at once.
    wait_for(lambda: persisted_index(dst) == last)


def test_strip_maps_prefix_to_prefix(src, dst, mirror):
    src.set("/conftool/a", "1")
    mirror(src.url, dst.url, "--reload", "--strip", "--src-prefix", "/conftool",
           "--dst-prefix", "/conftool")
    src.set("/conftool/b/c", "2")
    tree = same(src, dst, "/conftool", "/conftool")
    assert tree == {"a": (False, "1", False), "b": (True, None, False),
                    "b/c": (False, "2", False)}
    _, body, _ = dst.get("/__replication/conftool")
    assert int(body["node"]["value"]) >= 1


def test_whole_keyspace_to_root_index_key(src, dst, mirror):
    src.set("/x/y", "1")
    m = mirror(src.url, dst.url, "--reload", "--dst-prefix", "/")
    src.set("/z", "2")
    m.wait_index(src.index())
    assert dst.get("/x/y")[1]["node"]["value"] == "1"
    assert dst.get("/z")[1]["node"]["value"] == "2"
    wait_for(lambda: persisted_index(dst, "/__replication/__ROOT__") == src.index())


def test_state_errors_answered_with_403_are_not_permission_errors(src, dst, mirrored):
    """etcd answers 'Not a file' (102) with HTTP 403: a set of a dir that exists
    on the destination (a replay) is recognised, not taken for bad credentials."""
    dst.set("/replica" + PREFIX + "/d", dir=True)
    status, body, _ = dst.set("/replica" + PREFIX + "/d", dir=True)
    assert status == 403 and body["errorCode"] == 102  # what etcd really answers
    src.set(PREFIX + "/d", dir=True)
    src.set(PREFIX + "/after", "1")
    same(src, dst)
    assert mirrored.healthy() and "permission" not in mirrored.log()
