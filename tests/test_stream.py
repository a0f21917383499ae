"""Streaming watches (``stream=true``) against a real etcd.

The window streams only once it is caught up; these tests check the etcd
behaviour that this relies on, then that a mirror gets a burst of events
over one request, and that nothing is lost when etcd ends a stream because
the mirror read too slowly (etcd drops the watcher but leaves the response
open and silent).
"""

import http.client
import json
import socket
import urllib.parse
import urllib.request

from tests.helpers import wait_for, wait_same

PREFIX = "/conftool"
IMAGE = "/replica" + PREFIX


def open_stream(server, prefix, wait_index):
    """A raw streaming watch: (connection, response, X-Etcd-Index)."""
    url = urllib.parse.urlsplit(server.url)
    conn = http.client.HTTPConnection(url.hostname, url.port, timeout=10)
    conn.request("GET", "/v2/keys%s?wait=true&recursive=true&stream=true&waitIndex=%d"
                 % (prefix, wait_index))
    response = conn.getresponse()
    assert response.status == 200
    return conn, response, int(response.getheader("X-Etcd-Index"))


def read_events(response, count):
    """The next ``count`` events of a stream (each line one event)."""
    events = []
    while len(events) < count:
        line = response.readline()
        assert line, "the stream ended"
        if line.strip():
            events.append(json.loads(line))
    return events


def index_of(event):
    return event["node"]["modifiedIndex"]


def written(response):
    """The index of the event a write made (from its answer)."""
    status, body, _ = response
    assert status in (200, 201), response
    return body["node"]["modifiedIndex"]


def etcd_metric(server, name):
    text = urllib.request.urlopen(server.url + "/metrics", timeout=10).read().decode()
    for line in text.splitlines():
        if line.startswith(name + " "):
            return float(line.split()[1])
    raise AssertionError("%s not in etcd's /metrics" % name)


def watch_requests(server):
    """How many watches the v2 store has been asked for (etcd's own counter)."""
    return etcd_metric(server, "etcd_debugging_store_watch_requests_total")


def watchers(server):
    """Watches the v2 store holds registered right now."""
    return etcd_metric(server, "etcd_debugging_store_watchers")


def test_etcd_stream_semantics(src):
    """What the window relies on: the header tells a live stream from a one-shot one."""
    first = written(src.set(PREFIX + "/a", "1"))
    src.set("/elsewhere", "x")
    store = src.index()

    # Registered ahead of the store: every later event, in order, each > header.
    conn, live, header = open_stream(src, PREFIX, store + 1)
    assert header == store
    made = [written(src.set(PREFIX + "/b%d" % i, "line\nbreak")) for i in range(3)]
    src.set("/elsewhere", "y")
    made.append(written(src.set(PREFIX + "/c", "2")))
    assert [index_of(e) for e in read_events(live, 4)] == made
    conn.close()

    # Served from the history: one event, <= header, and nothing after it.
    conn, past, header = open_stream(src, PREFIX, first)
    (event,) = read_events(past, 1)
    assert index_of(event) == first <= header
    later = written(src.set(PREFIX + "/d", "3"))
    conn.sock.settimeout(0.5)     # waiting for an event that must not come
    try:
        extra = past.readline()
    except socket.timeout:
        extra = b""
    assert extra == b"", "etcd sent a second event on a stream served from history"
    conn.close()
    assert src.get(PREFIX + "/d")[1]["node"]["modifiedIndex"] == later


def test_a_caught_up_mirror_reads_a_burst_over_one_stream(src, dst, mirror):
    src.set(PREFIX + "/seed", "0")
    m = mirror(src.url, dst.url, "--reload", "--src-prefix", PREFIX)
    wait_same(src, dst, PREFIX, IMAGE)
    # The stream is registered once the source has a watcher for it.
    before = watch_requests(src)
    for i in range(300):
        src.set(PREFIX + "/k%d" % (i % 50), "v%d" % i)
    wait_same(src, dst, PREFIX, IMAGE, timeout=60)
    asked = watch_requests(src) - before
    # One request per event would be 300; a renewal or two is allowed.
    assert asked <= 20, "%d watch requests for 300 events" % asked
    watch = m.status()["watch"]
    assert watch["streaming"] and watch["stream_enabled"] and watch["watches_in_flight"] == 0
    assert m.metric("etcdmirror_resyncs_total", 'reason="index_cleared"') == 0


def test_no_stream_flag_means_one_watch_per_event(src, dst, mirror):
    src.set(PREFIX + "/seed", "0")
    m = mirror(src.url, dst.url, "--reload", "--src-prefix", PREFIX, "--no-watch-stream")
    wait_same(src, dst, PREFIX, IMAGE)
    before = watch_requests(src)
    for i in range(60):
        src.set(PREFIX + "/k%d" % i, "v")
        wait_for(lambda: dst.get(IMAGE + "/k%d" % i)[0] == 200)
    assert watch_requests(src) - before >= 60
    assert m.healthy()
    assert m.status()["watch"]["streams_opened"] == 0


def test_a_stream_etcd_drops_goes_silent_and_loses_nothing(src, dst, mirror):
    """A stopped mirror cannot read; etcd drops its stream's watcher.

    300 events of 50 kB are more than the socket buffers and etcd's own
    100-event queue hold.  etcd 3.4 then removes the watcher but does not end
    the response: the stream just goes quiet.  The mirror must not take that
    for a quiet prefix: it renews the stream after the last event it got and
    reads the rest from etcd's history (all 300 are still in it): no resync,
    nothing lost.
    """
    src.set(PREFIX + "/seed", "0")
    wait_for(lambda: watchers(src) == 0, message="no watcher left by earlier tests")
    m = mirror(src.url, dst.url, "--reload", "--src-prefix", PREFIX, "--debug")
    wait_same(src, dst, PREFIX, IMAGE)
    wait_for(lambda: watchers(src) == 1, message="the mirror's stream registered")
    m.pause()
    try:
        big = "x" * 50_000
        for i in range(300):
            src.set(PREFIX + "/big%d" % (i % 40), "%d:%s" % (i, big))
        # The drop happens while the mirror is stopped, not after.
        wait_for(lambda: watchers(src) == 0, message="etcd dropped the stream's watcher")
    finally:
        m.resume()
    wait_same(src, dst, PREFIX, IMAGE, timeout=60)
    assert m.metric("etcdmirror_resyncs_total", 'reason="index_cleared"') == 0
    log = m.log()
    assert "ended (idle) after" in log and "came from etcd's history" in log
    assert m.healthy()
