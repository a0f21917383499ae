"""The v3 source reader's own logic (etcdmirror/v3source.py) on a fake clock, with a
stand-in client: grouping by revision, the idle timer and the proof of quiet, a
failed or ended watch.  What etcd sends is tested on a real server
(test_v3client.py, the "source" scenario)."""

import etcd
from twisted.internet import defer
from twisted.internet.task import Clock

from etcdmirror.endpoints import parse_cluster
from etcdmirror.events import WatchProgress
from etcdmirror.v3client import V3Watch
from etcdmirror.v3source import V3SourceReader, _by_revision
from etcdmirror.v3wire import (
    Header, KeyValue, RangeResult, V3Compacted, WatchEvent, WatchResponse)


def put(key, revision):
    return WatchEvent("PUT", KeyValue(key, b"v", mod_revision=revision))


def response(revision, *events, created=False):
    return WatchResponse(Header("c1", "m1", revision, 2), 0, created, list(events))


class Client:
    """Answers reads from ``self.reads`` (a function of the arguments); records watches."""

    cluster = parse_cluster("http://127.0.0.1:1")

    def __init__(self):
        self.watches, self.reads = [], None

    def watch(self, key, range_end, start, on_response, prev_kv=True):
        done = defer.Deferred()
        self.watches.append((start, on_response, done))
        return V3Watch(done)

    def range(self, key, range_end=None, revision=0, keys_only=False, count_only=False,
              min_mod_revision=0, limit=0):
        return defer.succeed(self.reads(revision=revision, min_mod_revision=min_mod_revision))


def results(d):
    got = []
    d.addBoth(got.append)
    return got


def reader():
    clock, client = Clock(), Client()
    r = V3SourceReader(client, "/p", clock, idle_timeout=5)
    r.follow(10)
    return r, client, clock


def test_the_events_of_one_revision_go_together_in_order():
    groups = _by_revision([put(b"/p/a", 10), put(b"/p/b", 10), put(b"/p/a", 12)])
    assert [(g.modifiedIndex, len(g.events), g.action) for g in groups] == [
        (10, 2, "txn"), (12, 1, "put")]


def test_revisions_are_handed_out_once_in_order():
    r, client, clock = reader()
    first = results(r.next())
    start, on_response, _ = client.watches[0]
    assert start == 10
    on_response(response(12, created=True))
    on_response(response(12, put(b"/p/a", 9), put(b"/p/a", 10), put(b"/p/b", 11)))
    assert first[0].event.modifiedIndex == 10            # 9 was handed out before
    assert results(r.next())[0].event.modifiedIndex == 11


def test_a_quiet_prefix_is_proven_quiet_then_reported():
    r, client, clock = reader()
    waiting = results(r.next())
    client.watches[0][1](response(30, created=True))

    def reads(revision, min_mod_revision):
        if min_mod_revision:
            return RangeResult(Header("c1", "m1", 30, 2), [], 0, False)   # none modified
        return RangeResult(Header("c1", "m1", 30, 2), [], 4, False)       # 4 keys, 9 and 30
    client.reads = reads
    clock.advance(4.9)
    assert waiting == []
    clock.advance(0.1)
    assert waiting == [WatchProgress(30, "c1")]
    assert r.describe()["next_revision"] == 31
    # Nothing at all since: the same progress again at the next idle period, so a
    # checkpoint write that was not due the first time is made (an atomic
    # checkpoint has no timer of its own).
    again = results(r.next())
    clock.advance(5)
    assert again == [WatchProgress(30, "c1")] and r.describe()["next_revision"] == 31


def test_no_report_when_a_key_was_deleted_or_an_event_came_meanwhile():
    r, client, clock = reader()
    waiting = results(r.next())

    def reads(revision, min_mod_revision):
        count = 3 if revision == 9 else 2                              # one key deleted
        return RangeResult(Header("c1", "m1", 30, 2), [], count, False)
    client.reads = reads
    clock.advance(5)
    assert waiting == []
    client.reads = lambda revision, min_mod_revision: RangeResult(
        Header("c1", "m1", 30, 2), [KeyValue(b"/p/x")] if min_mod_revision else [], 1, False)
    clock.advance(5)
    assert waiting == [] and len(client.watches) == 1                   # still the same watch


def test_a_compacted_start_fails_next_and_an_ended_stream_is_opened_again():
    r, client, clock = reader()
    failed = results(r.next())
    client.watches[0][2].errback(V3Compacted("compacted", 20))
    assert failed[0].check(etcd.EtcdEventIndexCleared)
    r.follow(21)
    waiting = results(r.next())
    client.watches[1][2].callback(None)                                  # the server ended it
    assert len(client.watches) == 3 and client.watches[2][0] == 21 and waiting == []
