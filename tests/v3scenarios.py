"""Scenarios for the etcd v3 client (etcdmirror/v3client.py), each run by
tests/test_v3client.py in its own process with Twisted's reactor
(``python -m tests.v3scenarios NAME URL PREFIX``): the reactor cannot be
restarted inside pytest.  A scenario asserts as it goes; the process exits 0
and prints "ok" when every assertion held."""

import sys

from twisted.internet import defer, task

from etcdmirror.endpoints import parse_cluster
from etcdmirror.v3client import V3Client
from etcdmirror.v3wire import (
    V3Compacted, V3NotFound, V3Unavailable, compare_mod_revision, compare_value,
    prefix_range_end, request_delete, request_put, request_range)


@defer.inlineCallbacks
def kv(reactor, client, prefix):
    """put, range over a prefix, binary keys and values, delete_range, status."""
    header, prev = yield client.put(prefix + b"/a", b"1")
    assert header.revision > 0 and header.cluster_id and prev is None
    _, prev = yield client.put(prefix + b"/a", b"\x00\xff binary", prev_kv=True)
    assert prev.value == b"1" and prev.version == 1
    yield client.put(prefix + b"/\xc3\xa9t\xc3\xa9", b"")
    yield client.put(prefix + b"0", b"outside the prefix")
    found = yield client.range(prefix + b"/", prefix_range_end(prefix + b"/"))
    assert [(kv.key, kv.value) for kv in found.kvs] == [
        (prefix + b"/a", b"\x00\xff binary"), (prefix + b"/\xc3\xa9t\xc3\xa9", b"")], found
    assert found.count == 2 and found.kvs[0].version == 2
    assert found.kvs[1].mod_revision == found.header.revision - 1
    old = yield client.range(prefix + b"/a", revision=header.revision)
    assert old.kvs[0].value == b"1"
    _, deleted, prevs = yield client.delete_range(prefix + b"/", prefix_range_end(prefix + b"/"),
                                                  prev_kv=True)
    assert deleted == 2 and sorted(kv.key for kv in prevs) == sorted(
        [prefix + b"/a", prefix + b"/\xc3\xa9t\xc3\xa9"])
    status_header, version = yield client.status()
    assert version.startswith("3.") and status_header.cluster_id == header.cluster_id


@defer.inlineCallbacks
def txn(reactor, client, prefix):
    """A transaction lands at one revision; a failed compare runs the failure branch."""
    header, _ = yield client.put(prefix + b"/k", b"v1")
    result = yield client.txn(
        [compare_value(prefix + b"/k", b"v1"), compare_mod_revision(prefix + b"/new", 0)],
        [request_put(prefix + b"/k", b"v2"), request_put(prefix + b"/new", b"n"),
         request_put(prefix + b"/__checkpoint", b"42")])
    assert result.succeeded and result.header.revision == header.revision + 1
    found = yield client.range(prefix + b"/", prefix_range_end(prefix + b"/"))
    assert {kv.mod_revision for kv in found.kvs} == {result.header.revision}
    result = yield client.txn([compare_value(prefix + b"/k", b"v1")],
                              [request_delete(prefix + b"/k")],
                              [request_range(prefix + b"/k")])
    assert not result.succeeded
    assert result.responses[0]["response_range"]["kvs"][0]["value"] == "djI="  # "v2"


@defer.inlineCallbacks
def leases(reactor, client, prefix):
    lease, ttl = yield client.lease_grant(30)
    assert lease and ttl == 30
    yield client.put(prefix + b"/leased", b"x", lease=lease)
    found = yield client.range(prefix + b"/leased")
    assert found.kvs[0].lease == lease
    remaining, granted, keys = yield client.lease_time_to_live(lease, keys=True)
    assert 0 < remaining <= 30 and granted == 30 and keys == [prefix + b"/leased"]
    assert (yield client.lease_keep_alive(lease)) == 30
    yield client.lease_revoke(lease)
    found = yield client.range(prefix + b"/leased")
    assert found.kvs == []
    remaining, _, _ = yield client.lease_time_to_live(lease)
    assert remaining == -1
    try:
        yield client.lease_revoke(lease)
    except V3NotFound as e:
        assert "lease not found" in str(e) and "/v3/lease/revoke" in str(e)
    else:
        raise AssertionError("revoking a revoked lease succeeded")


@defer.inlineCallbacks
def watch(reactor, client, prefix):
    """Events in order with prev_kv; a compacted start revision fails the watch."""
    header, _ = yield client.put(prefix + b"/w", b"1")
    yield client.put(prefix + b"/w", b"2")
    yield client.delete_range(prefix + b"/w")
    got, done = [], defer.Deferred()

    def on_response(response):
        got.append(response)
        if sum(len(r.events) for r in got) == 3 and not done.called:
            done.callback(None)

    stream = client.watch(prefix + b"/", prefix_range_end(prefix + b"/"), header.revision,
                          on_response)
    yield done
    assert got[0].created
    events = [e for r in got for e in r.events]
    assert [(e.type, e.kv.value, e.prev_kv.value if e.prev_kv else None) for e in events] == [
        ("PUT", b"1", None), ("PUT", b"2", b"1"), ("DELETE", b"", b"2")], events
    # A write elsewhere, then a watch asking for progress: the report covers it.
    elsewhere, _ = yield client.put(prefix + b"0/elsewhere", b"x")
    progress = defer.Deferred()
    got.clear()

    def on_progress(response):
        if not response.events and not response.created and not progress.called:
            progress.callback(response)
    got_progress = []
    stream_progress = client.watch(prefix + b"/", prefix_range_end(prefix + b"/"),
                                   header.revision + 3, on_progress, request_progress=True)
    report = yield progress
    got_progress.append(report)
    assert report.header.revision >= elsewhere.revision, report
    for s in (stream, stream_progress):
        s.cancel()
        try:
            yield s.done
        except defer.CancelledError:
            pass
    now, _ = yield client.put(prefix + b"/later", b"x")
    yield client.compact(now.revision)
    try:
        yield client.watch(prefix + b"/", prefix_range_end(prefix + b"/"), header.revision,
                           lambda response: None).done
    except V3Compacted as e:
        assert e.compact_revision == now.revision, e
    else:
        raise AssertionError("a watch from a compacted revision did not fail")
    try:
        yield client.range(prefix + b"/w", revision=header.revision)
    except V3Compacted:
        pass
    else:
        raise AssertionError("a read at a compacted revision did not fail")


@defer.inlineCallbacks
def unreachable(reactor, client, prefix):
    """No server: a V3Unavailable that names the call and the endpoint."""
    try:
        yield client.put(prefix + b"/x", b"1")
    except V3Unavailable as e:
        assert "/v3/kv/put on" in str(e) and "127.0.0.1" in str(e), e
    else:
        raise AssertionError("a put to nowhere succeeded")


def main(reactor, name, url, prefix):
    client = V3Client(parse_cluster(url), reactor, timeout=5)
    d = globals()[name](reactor, client, prefix.encode())
    d.addBoth(lambda result: (client.close(), result)[1])
    d.addCallback(lambda _: print("ok"))
    return d



@defer.inlineCallbacks
def mapping(reactor, client, prefix):
    """v3mapping.transaction on a real etcd: the changes and the checkpoint land at one
    revision; the same change again fails on the checkpoint (a replay); a key written
    behind the mirror's back fails its compare; a v2 directory delete takes what is below."""
    from etcdmirror.keys import KeyMapper
    from etcdmirror.v3mapping import transaction, v2_changes
    from tests.fakes import v2_event as v2
    mapper = KeyMapper("/src", prefix.decode(), strip=True)
    checkpoint = prefix + b"/__checkpoint"

    body = transaction(v2_changes(v2("set", "/src/a", "1", index=5), mapper)
                       + v2_changes(v2("create", "/src/d/x", "x", index=5), mapper),
                       checkpoint, None, 5)
    result = yield client.txn(**body)
    assert result.succeeded, result
    found = yield client.range(prefix + b"/", prefix_range_end(prefix + b"/"))
    assert {kv.key: kv.value for kv in found.kvs} == {
        prefix + b"/a": b"1", prefix + b"/d/x": b"x", checkpoint: b"5"}
    assert {kv.mod_revision for kv in found.kvs} == {result.header.revision}
    again = yield client.txn(**body)                      # the answer was lost: sent again
    assert not again.succeeded
    assert again.responses[0]["response_range"]["kvs"][0]["value"] == "NQ=="  # "5"
    yield client.put(prefix + b"/a", b"written behind our back")
    body = transaction(v2_changes(v2("compareAndSwap", "/src/a", "2", prev="1", index=6),
                                  mapper), checkpoint, 5, 6)
    diverged = yield client.txn(**body)
    assert not diverged.succeeded
    body = transaction(v2_changes(v2("delete", "/src/d", prev=None, index=7, is_dir=True),
                                  mapper), checkpoint, 5, 7)
    result = yield client.txn(**body)
    assert result.succeeded
    found = yield client.range(prefix + b"/", prefix_range_end(prefix + b"/"))
    assert {kv.key for kv in found.kvs} == {prefix + b"/a", checkpoint}


@defer.inlineCallbacks
def replica(reactor, client, prefix):
    """V3ReplicaWriter on a real etcd: applied, replayed, in effect already, diverged."""
    from etcdmirror.events import Divergence, Outcome
    from etcdmirror.keys import KeyMapper
    from etcdmirror.v3mapping import Revision
    from etcdmirror.v3replica import V3ReplicaWriter
    from etcdmirror.v3wire import KeyValue, WatchEvent
    src = b"/src"
    mapper = KeyMapper("/src", prefix.decode(), strip=True)
    writer = V3ReplicaWriter(client, mapper)
    assert (yield writer.load()) is None

    def put(key, value, prev=None):
        return WatchEvent("PUT", KeyValue(src + key, value),
                          KeyValue(src + key, prev) if prev is not None else None)

    def delete(key, prev):
        return WatchEvent("DELETE", KeyValue(src + key), KeyValue(src + key, prev))

    first = Revision(10, [put(b"/a", b"1"), put(b"/b", b"1")])
    assert (yield writer.apply(first)) is Outcome.APPLIED and writer.applied == 10
    writer.applied = None                                 # as after a crash, answer lost
    assert (yield writer.load()) == 10
    assert (yield writer.apply(first)) is Outcome.REPLAYED
    # /b ran out on the destination first (its lease, say): its delete is in effect.
    yield client.delete_range(prefix + b"/b")
    second = Revision(11, [put(b"/a", b"2", prev=b"1"), delete(b"/b", prev=b"1")])
    assert (yield writer.apply(second)) is Outcome.APPLIED and writer.applied == 11
    found = yield client.range(prefix + b"/", prefix_range_end(prefix + b"/"))
    assert {kv.key: kv.value for kv in found.kvs} == {prefix + b"/a": b"2"}
    checkpoint = yield client.range(writer.checkpoint_key)
    assert writer.checkpoint_key == b"/__replication" + prefix
    assert checkpoint.kvs[0].value == b"11"
    assert checkpoint.kvs[0].mod_revision == found.kvs[0].mod_revision   # one transaction
    yield client.put(prefix + b"/a", b"written behind our back")
    try:
        yield writer.apply(Revision(12, [put(b"/a", b"3", prev=b"2")]))
    except Divergence as e:
        assert "written behind our back" in str(e) and "b'2'" in str(e), e
    else:
        raise AssertionError("a diverged key was overwritten")
    yield client.put(writer.checkpoint_key, b"99")
    try:
        yield writer.apply(Revision(13, [put(b"/c", b"1")]))
    except Divergence as e:
        assert "another writer" in str(e), e
    else:
        raise AssertionError("a checkpoint moved by someone else went unnoticed")


@defer.inlineCallbacks
def indexstore(reactor, client, prefix):
    """V3IndexStore on a real etcd: the checkpoint read and moved through the writer,
    the sibling keys, no horizon."""
    from etcdmirror.errors import MirrorFatal
    from etcdmirror.events import Divergence
    from etcdmirror.keys import KeyMapper
    from etcdmirror.v3indexstore import V3IndexStore
    from etcdmirror.v3replica import V3ReplicaWriter
    mapper = KeyMapper("/src", prefix.decode())
    writer = V3ReplicaWriter(client, mapper)
    store = V3IndexStore(writer, mapper)
    try:
        yield store.read_index()
    except MirrorFatal as e:
        assert "Restart with --reload" in str(e) and store.key in str(e)
    else:
        raise AssertionError("a missing checkpoint was read")
    yield store.write_index(5)                            # the first checkpoint
    assert (yield store.read_index()) == 5 and writer.applied == 5
    yield store.write_index(5)                            # where it is: no write
    yield store.write_index(4)                            # a reload from another source
    assert (yield store.read_index()) == 4
    yield client.put(store.key.encode(), b"77")           # someone else
    try:
        yield store.write_index(6)
    except Divergence as e:
        assert "another writer" in str(e)
    else:
        raise AssertionError("a checkpoint moved by someone else was overwritten")
    assert (yield store.read_horizon()) is None
    yield store.write_source_id("10539258402056643068")
    assert (yield store.read_source_id()) == "10539258402056643068"
    yield store.mark_resync("compacted")
    assert (yield store.read_resync_marker()) == "compacted"
    yield store.clear_resync_marker()
    assert (yield store.read_resync_marker()) is None


@defer.inlineCallbacks
def source(reactor, client, prefix):
    """V3SourceReader on a real etcd: a transaction's events handed out together, in
    order; progress on a quiet prefix; a snapshot at one revision, page by page; a
    compacted start revision is a cleared index."""
    import etcd

    from etcdmirror import v3source
    from etcdmirror.events import WatchProgress
    from etcdmirror.v3source import V3SourceReader
    reader = V3SourceReader(client, prefix.decode(), reactor, idle_timeout=0.5)
    start = yield reader.position()
    reader.follow(start.etcd_index + 1)
    yield client.txn([], [request_put(prefix + b"/a", b"1"), request_put(prefix + b"/b", b"2")])
    yield client.put(prefix + b"0/outside", b"x")
    yield client.delete_range(prefix + b"/a")
    @defer.inlineCallbacks
    def next_change():
        while True:
            item = yield reader.next()
            if not isinstance(item, WatchProgress):
                return item
    first = yield next_change()
    assert first.event.action == "txn" and first.cluster_id == start.cluster_id
    assert [(e.type, e.kv.key) for e in first.event.events] == [
        ("PUT", prefix + b"/a"), ("PUT", prefix + b"/b")], first
    second = yield next_change()
    assert second.event.action == "delete" and second.event.events[0].prev_kv.value == b"1"
    assert second.event.modifiedIndex == first.event.modifiedIndex + 2   # the outside put
    # Quiet: the watch is created again, asking for progress, which covers the source.
    now, _ = yield client.put(prefix + b"0/outside", b"y")
    while True:
        progress = yield reader.next()
        assert isinstance(progress, WatchProgress), progress
        if progress.etcd_index >= now.revision:
            break
    # Far behind (a watch that starts in the past): no progress may overtake the history.
    behind = now.revision
    for i in range(300):
        yield client.put(prefix + b"/h%d" % (i % 7), b"%d" % i)
    last, _ = yield client.put(prefix + b"/h-last", b"x")
    reader.follow(behind + 1)
    seen = behind
    while seen < last.revision:
        item = yield reader.next()
        if isinstance(item, WatchProgress):
            assert item.etcd_index <= seen, (item, seen)
        else:
            assert item.event.modifiedIndex == seen + 1, (item, seen)
            seen = item.event.modifiedIndex
    reader.close()
    v3source.SNAPSHOT_PAGE = 2
    for i in range(5):
        yield client.put(prefix + b"/p%d" % i, b"%d" % i)
    snap = yield reader.snapshot()
    whole = yield client.range(prefix + b"/", prefix_range_end(prefix + b"/"),
                               revision=snap.etcd_index)
    assert len(whole.kvs) == 14 and sorted(snap.nodes) == [
        kv.key.decode() for kv in whole.kvs], snap.nodes
    assert snap.nodes[prefix.decode() + "/p3"].value == "3" and snap.etcd_index > now.revision
    yield client.compact(snap.etcd_index)
    reader.follow(start.etcd_index + 1)
    try:
        yield reader.next()
    except etcd.EtcdEventIndexCleared as e:
        assert e.compact_revision == snap.etcd_index
    else:
        raise AssertionError("a compacted start revision was not reported")


@defer.inlineCallbacks
def resync(reactor, client, prefix):
    """A resync's plan written to a v3 destination (from a v2 source's snapshot, with a
    directory): the image equals the source after it, and the checkpoint moves after
    a reload that did not read it."""
    from etcdmirror.keys import KeyMapper
    from etcdmirror.resync import NodeState, make_plan
    from etcdmirror.v3indexstore import V3IndexStore
    from etcdmirror.v3replica import V3ReplicaWriter
    mapper = KeyMapper("/src", prefix.decode(), strip=True)
    writer = V3ReplicaWriter(client, mapper)
    store = V3IndexStore(writer, mapper)
    yield client.put(prefix + b"/stale", b"not on the source")
    yield client.put(prefix + b"/a", b"old")
    yield client.put(writer.checkpoint_key, b"3")        # an earlier mirror's
    source = {"/src/a": NodeState(False, "new"), "/src/d": NodeState(True),
              "/src/d/x": NodeState(False, "x")}
    replica = yield writer.snapshot()
    plan = make_plan(source, replica.nodes, mapper)
    yield writer.write_plan(plan, log_writes=False)
    after = yield writer.snapshot()
    p = prefix.decode()
    assert after.nodes == {p + "/a": NodeState(False, "new"),
                           p + "/d/x": NodeState(False, "x")}, after.nodes
    position = yield writer.position()
    assert position.etcd_index >= after.etcd_index and position.cluster_id
    yield store.write_index(40)                           # the resync's index
    assert (yield store.read_index()) == 40


@defer.inlineCallbacks
def auth(reactor, client, prefix):
    """etcd v3 auth on a real etcd: enabled here (the server is the test's own), then
    the client trades its credentials for a token, uses it in calls and in a watch,
    and authenticates again when the token is no longer valid; a wrong password and
    no credentials at all are errors that never show the password."""
    from etcdmirror.endpoints import parse_cluster
    from etcdmirror.v3wire import V3Error
    url = client.cluster.display
    for path, body in [("/v3/auth/role/add", {"name": "root"}),
                       ("/v3/auth/user/add", {"name": "root", "password": "s3cr3t-pw"}),
                       ("/v3/auth/user/grant", {"user": "root", "role": "root"}),
                       ("/v3/auth/enable", {})]:
        yield client.call(path, body, lambda d: d)
    try:
        yield client.put(prefix + b"/x", b"1")
    except V3Error as e:
        assert "user name is empty" in str(e)
    else:
        raise AssertionError("a call without credentials went through")
    authed = V3Client(parse_cluster(url.replace("http://", "http://root:s3cr3t-pw@")),
                      reactor, timeout=5)
    header, _ = yield authed.put(prefix + b"/x", b"1")
    assert header.revision > 0
    authed._token = "not.a-valid-token"                   # as after a restart of etcd
    found = yield authed.range(prefix + b"/x")
    assert found.kvs[0].value == b"1"
    got = defer.Deferred()
    watch = authed.watch(prefix + b"/", prefix_range_end(prefix + b"/"), header.revision,
                         lambda r: got.callback(r) if r.events and not got.called else None)
    yield got
    watch.cancel()
    try:
        yield watch.done
    except defer.CancelledError:
        pass
    wrong = V3Client(parse_cluster(url.replace("http://", "http://root:wrong-pw@")),
                     reactor, timeout=5)
    try:
        yield wrong.put(prefix + b"/x", b"2")
    except V3Error as e:
        assert "authentication failed" in str(e) and "wrong-pw" not in str(e), e
    else:
        raise AssertionError("a wrong password went through")
    yield authed.call("/v3/auth/disable", {}, lambda d: d)
    yield authed.close()
    yield wrong.close()


if __name__ == "__main__":
    task.react(main, sys.argv[1:])
