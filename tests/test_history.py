"""etcd v2 keeps 1000 events: stay inside that window, and recover when we fall out.

The old mirror died when its prefix was quiet while >1000 events happened
elsewhere in the cluster, and again after a restart.  These tests reproduce
both situations on a real etcd.
"""

from tests.helpers import TreeReader, persisted_index, wait_for

PREFIX = "/conftool"
IMAGE = "/replica/conftool"


def burst(client, prefix, count, deletes_every=0):
    for i in range(count):
        client.set(f"{prefix}/k{i % 300}", f"v{i}")
        if deletes_every and i % deletes_every == 0:
            client.delete(f"{prefix}/k{(i * 7) % 300}")


def test_quiet_prefix_survives_1500_events_elsewhere(src, dst, mirror):
    src.set(PREFIX + "/seed", "1")
    # A short idle timeout only makes the waits for progress below shorter;
    # the renewals triggered by the index probe do the work during the bursts.
    m = mirror(src.url, dst.url, "--reload", "--src-prefix", PREFIX, "--watch-idle-timeout", "1")
    burst(src, "/elsewhere", 1500)
    after = src.index()
    # Idle: the mirror learns from its watches that nothing happened under the
    # prefix, and persists that, so even a restart starts inside the history.
    wait_for(lambda: (persisted_index(dst) or 0) >= after, timeout=30,
             message="persisted index catching up with the source while idle")
    src.set(PREFIX + "/x", "after the burst")
    wait_for(lambda: dst.get(IMAGE + "/x")[0] == 200, timeout=10)
    assert m.metric("etcdmirror_resyncs_total", 'reason="index_cleared"') == 0
    assert "not available anymore" not in m.log()

    # A restart at the end of the quiet period, even after kill -9.
    burst(src, "/elsewhere", 1200)
    after = src.index()
    wait_for(lambda: (persisted_index(dst) or 0) >= after, timeout=30)
    m.kill()
    m2 = mirror(src.url, dst.url, "--src-prefix", PREFIX, "--watch-idle-timeout", "1")
    src.set(PREFIX + "/y", "after the restart")
    wait_for(lambda: dst.get(IMAGE + "/y")[0] == 200, timeout=10)
    assert m2.metric("etcdmirror_resyncs_total", 'reason="index_cleared"') == 0
    assert "not available anymore" not in m2.log()


def test_cleared_index_is_recovered_hitlessly(src, dst, mirror):
    for i in range(50):
        src.set(f"{PREFIX}/stable{i}", "s")
    # Plain watches: a streaming watch may carry the whole burst in its socket
    # buffers, and then there is nothing to recover from (test_stream.py).
    m = mirror(src.url, dst.url, "--reload", "--src-prefix", PREFIX, "--no-watch-stream")
    stable = {f"stable{i}" for i in range(50)}
    wait_for(lambda: stable <= set(dst.tree(IMAGE)))
    m.pause()
    try:
        burst(src, PREFIX, 1500, deletes_every=10)
    finally:
        reader = TreeReader(dst, IMAGE)
        reader.start()
        m.resume()
    expected = src.tree(PREFIX)
    wait_for(lambda: dst.tree(IMAGE) == expected, timeout=60, message="replica == source")
    reader.stop()
    # The replica can equal the source a moment before the resync has moved
    # the index and counted itself.
    wait_for(lambda: m.metric("etcdmirror_resyncs_total", 'reason="index_cleared"') == 1)
    for view in reader.views:
        assert stable <= view, "a key that existed throughout vanished during the resync"
    assert m.healthy()
    src.set(PREFIX + "/later", "1")
    wait_for(lambda: dst.get(IMAGE + "/later")[0] == 200)


def test_no_auto_resync_exits_1(src, dst, mirror):
    src.set(PREFIX + "/seed", "1")
    m = mirror(src.url, dst.url, "--reload", "--src-prefix", PREFIX, "--no-auto-resync",
               "--no-watch-stream")
    m.pause()
    burst(src, PREFIX, 1100)
    m.resume()
    assert m.wait_exit(30) == 1
    assert "--reload" in m.log() and "not available anymore" in m.log()
