"""--reload: one consistent snapshot, only the differences written, no empty window."""

from etcdmirror.applier import TTL_GRACE
from tests.helpers import TreeReader, wait_for

PREFIX = "/conftool"
IMAGE = "/replica/conftool"


def test_reload_is_hitless_and_writes_only_differences(src, dst, mirror):
    for i in range(300):
        src.set(f"{PREFIX}/svc{i % 10}/host{i}", f"v{i}")
        # The stale replica: most keys equal, some different, some missing.
        if i % 7:
            dst.set(f"{IMAGE}/svc{i % 10}/host{i}", f"v{i}" if i % 5 else "stale")
    for i in range(40):
        dst.set(f"{IMAGE}/gone/old{i}", "x")
    src.set(PREFIX + "/ttl", "t", ttl=300)
    before = set(dst.tree(IMAGE))
    expected = src.tree(PREFIX)
    survivors = before & set(expected)
    assert len(survivors) > 200

    reader = TreeReader(dst, IMAGE)
    reader.start()
    wait_for(lambda: len(reader.views) >= 3)
    m = mirror(src.url, dst.url, "--reload", "--src-prefix", PREFIX)
    wait_for(lambda: dst.tree(IMAGE) == expected, message="replica equal to source")
    n = len(reader.views)
    wait_for(lambda: len(reader.views) >= n + 3)
    reader.stop()

    assert len(reader.views) > 6
    for view in reader.views:
        missing = survivors - view
        assert not missing, f"a reader saw keys vanish during the reload: {sorted(missing)[:5]}"
    node = dst.get(IMAGE + "/ttl")[1]["node"]
    assert 250 < node["ttl"] <= 300 + TTL_GRACE
    assert m.metric("etcdmirror_resyncs_total", 'reason="reload"') == 1
    assert m.metric("etcdmirror_load_time_count") == 1
    # It wrote the differences only: the log's summary says how many.
    changed = sum(1 for i in range(300) if i % 7 == 0 or i % 5 == 0) + 1
    assert f"writing {changed}, deleting 1" in m.log()


def test_reload_takes_index_from_snapshot_and_keeps_replicating(src, dst, mirror):
    src.set(PREFIX + "/a", "1")
    m = mirror(src.url, dst.url, "--reload", "--src-prefix", PREFIX)
    _, body, _ = dst.get("/__replication/replica")
    assert int(body["node"]["value"]) >= int(src.get(PREFIX + "/a")[1]["node"]["modifiedIndex"])
    src.set(PREFIX + "/b", "2")
    wait_for(lambda: dst.get(IMAGE + "/b")[0] == 200)
    assert m.status()["state"] == "replicating"


def test_reload_of_a_missing_source_prefix_empties_the_image(src, dst, mirror):
    dst.set(IMAGE + "/leftover", "x")
    dst.set("/replica/other/untouched", "y")
    mirror(src.url, dst.url, "--reload", "--src-prefix", PREFIX)
    wait_for(lambda: dst.tree(IMAGE) == {})
    assert dst.get("/replica/other/untouched")[0] == 200


def test_reload_flips_key_and_dir_types(src, dst, mirror):
    src.set(PREFIX + "/was_file/now_dir", "1")
    src.set(PREFIX + "/was_dir", "now a file")
    dst.set(IMAGE + "/was_file", "file")
    dst.set(IMAGE + "/was_dir/child", "c")
    mirror(src.url, dst.url, "--reload", "--src-prefix", PREFIX)
    wait_for(lambda: dst.tree(IMAGE) == src.tree(PREFIX))
