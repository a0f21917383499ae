"""Several events in flight at once (issue 14) and still in source order, on real etcd.

The mirror pipelines its event writes to an ``http://`` destination on one connection
(etcdmirror/pipeline.py).  Whatever it does inside, what counts is what the destination
went through: read back from the destination's own history, the writes of a catch-up
must be the source's events, one for one, in the source's order.  The burst below
makes keys collide on purpose (the same key again and again, a directory deleted
while keys under it were just written, a key that becomes a directory), so an
event that may not be in flight with the one before it is there to be held back.

Then the connection to the destination is dropped again and again during a catch-up:
every event sent and not answered is sent again, in order, and nothing is lost.
"""

from urllib.parse import urlsplit

import pytest

from tests.helpers import V2, wait_for, wait_same
from tests.tcpproxy import CuttableProxy

PREFIX = "/ord"
IMAGE = "/replica/ord"


def burst(src: V2, rounds: int) -> None:
    """About 9 events a round, under PREFIX, colliding on purpose."""
    for i in range(rounds):
        src.set(f"{PREFIX}/k{i % 5}", f"v{i}")
        src.set(f"{PREFIX}/d{i % 3}/x", f"x{i}")
        src.set(f"{PREFIX}/d{i % 3}/y{i % 4}", f"y{i}")
        if i % 4 == 3:
            src.delete(f"{PREFIX}/d{i % 3}", recursive=True)
        src.set(f"{PREFIX}/k{i % 5}", f"w{i}", prevValue=f"v{i}")
        src.create_in_order(f"{PREFIX}/q", f"q{i}")
        if i % 6 == 5:
            src.delete(f"{PREFIX}/k{i % 5}", prevValue=f"w{i}")
        src.set(f"{PREFIX}/e{i % 2}", f"e{i}", prevExist="false" if i < 2 else "true")
        src.set(f"{PREFIX}/last", str(i))


def history(client: V2, prefix: str, after: int, count: int):
    """The first ``count`` events under ``prefix`` after index ``after``, as
    (action, key below the prefix, value, dir)."""
    events, index = [], after + 1
    for _ in range(count):
        response = client.get(prefix, recursive=True, wait="true", waitIndex=index)
        assert response.status == 200, response
        node = response.body["node"]
        events.append((response.body["action"], node["key"][len(prefix):],
                       node.get("value"), bool(node.get("dir"))))
        index = node["modifiedIndex"] + 1
    return events


def start_then_stop(src: V2, dst: V2, mirror) -> int:
    """A mirror that reloaded the prefix and stopped: the destination's index after it."""
    src.set(f"{PREFIX}/seed", "1")
    m = mirror(src.url, dst.url, "--reload", "--src-prefix", PREFIX)
    wait_same(src, dst, PREFIX, IMAGE)
    assert m.stop() == 0
    return dst.index()


@pytest.mark.parametrize("depth", [None, "1"])
def test_a_catch_up_lands_every_event_in_source_order(src, dst, mirror, depth):
    dst_before = start_then_stop(src, dst, mirror)
    src_before = src.index()
    burst(src, 60)
    source = history(src, PREFIX, src_before, src.index() - src_before)
    m = mirror(src.url, dst.url, "--src-prefix", PREFIX,
               *(["--write-pipeline", depth] if depth else []))
    wait_same(src, dst, PREFIX, IMAGE)
    wait_for(lambda: m.metric("etcdmirror_replicated_events_total") >= len(source),
             message="every event counted")
    replica = history(dst, IMAGE, dst_before, len(source))
    # An expired or recursive delete says "delete" on both sides here (no TTLs).
    assert replica == source
    pipeline = m.status()["pipeline"]
    if depth is None:
        assert pipeline["depth"] == 32 and pipeline["most_in_flight"] > 1, pipeline
    else:
        assert pipeline["depth"] == pipeline["most_in_flight"] == 1, pipeline
    assert "out of source order" not in m.log()


def test_dropped_connections_to_the_destination_lose_nothing(src, dst, mirror):
    target = urlsplit(dst.url)
    proxy = CuttableProxy((target.hostname, target.port))
    try:
        src.set(f"{PREFIX}/seed", "1")
        m = mirror(src.url, proxy.url, "--reload", "--src-prefix", PREFIX)
        wait_same(src, dst, PREFIX, IMAGE)
        assert m.stop() == 0
        burst(src, 120)
        m = mirror(src.url, proxy.url, "--src-prefix", PREFIX)
        applied = m.metric("etcdmirror_replicated_events_total")
        for _ in range(5):
            # Drop every connection through the proxy (a reset, not a partition),
            # each time after a few more events were applied.
            wait_for(lambda: m.metric("etcdmirror_replicated_events_total") > applied + 20
                     or src.tree(PREFIX) == dst.tree(IMAGE), timeout=30,
                     message="more events applied")
            applied = m.metric("etcdmirror_replicated_events_total")
            proxy.cut()
            proxy.heal()
        wait_same(src, dst, PREFIX, IMAGE)
        assert m.proc.poll() is None, m.log()
        assert "Divergence" not in m.log() and "resync" not in m.log().lower()
    finally:
        proxy.close()

