"""The v3 replica writer's chain (etcdmirror/v3replica.py), with a stand-in client
that records each transaction: what the checkpoint must hold before each change
(the revision before it in source order, also when it is sent again), which
changes share a transaction, and the order they go out in.

That etcd applies a transaction only when its compares hold, and answers a
connection's requests in order, is tested on real servers (tests/test_v3mirror.py,
the kill -9 mix with --write-pipeline's default); this is our bookkeeping only.
"""

import base64

import pytest
from twisted.internet import defer
from twisted.internet.task import Clock

from etcdmirror.endpoints import parse_cluster
from etcdmirror.events import Divergence, Outcome
from etcdmirror.keys import KeyMapper
from etcdmirror.v3mapping import Revision
from etcdmirror.v3replica import V3ReplicaWriter
from etcdmirror.v3wire import Header, KeyValue, TxnResult, V3Unavailable, WatchEvent, b64

CHECKPOINT = b"/__replication/r"


class Client:
    """Records each ordered transaction as (checkpoint before, checkpoint after, keys);
    answers each with the next of ``self.answers`` (default: it succeeded)."""

    cluster = parse_cluster("http://127.0.0.1:1")
    pipelines = True

    def __init__(self):
        self.reactor = Clock()
        self.sent, self.answers = [], []

    def txn(self, compare, success, failure, ordered=False):
        assert ordered
        first = compare[0]
        before = (int(base64.b64decode(first["value"])) if first["target"] == "VALUE"
                  else None)
        after = int(base64.b64decode(success[-1]["request_put"]["value"]))
        keys = [base64.b64decode(op["request_put"]["key"]).decode() for op in success[:-1]]
        self.sent.append((before, after, keys))
        answer = self.answers.pop(0) if self.answers else True
        if isinstance(answer, Exception):
            return defer.fail(answer)
        if answer is True:
            return defer.succeed(TxnResult(Header("c", "m", 1, 1), True, []))
        return defer.succeed(TxnResult(Header("c", "m", 1, 1), False, [
            {"response_range": {"kvs": [{"value": b64(str(answer).encode())}]}}]))


def revision(index, key):
    return Revision(index, [WatchEvent("PUT", KeyValue(key.encode(), b"v",
                                                       mod_revision=index))])


def writer():
    client = Client()
    w = V3ReplicaWriter(client, KeyMapper("/s", "/r", strip=True), pipeline=32)
    w.applied = 10
    return w, client


def results(d):
    got = []
    d.addBoth(got.append)
    return got


def test_revisions_handed_over_together_on_different_keys_share_one_transaction():
    w, client = writer()
    done = [results(w.apply(revision(i, f"/s/k{i}"))) for i in (11, 12, 13)]
    w.apply(revision(14, "/s/k11"))                    # the same key again: its own
    client.reactor.advance(0)
    assert client.sent == [(10, 13, ["/r/k11", "/r/k12", "/r/k13"]), (13, 14, ["/r/k11"])]
    assert [d[0] for d in done] == [Outcome.APPLIED] * 3 and w.applied == 14


def test_a_change_sent_again_still_follows_the_one_before_it():
    """The regression: after a failure, a change sent again must not chain from the
    last one applied when the change before it has not landed yet."""
    w, client = writer()
    client.answers = [V3Unavailable("connection lost"), 10]   # 11 lost; 12 finds 10
    first = results(w.apply(revision(11, "/s/a")))
    client.reactor.advance(0)
    second = results(w.apply(revision(12, "/s/a")))
    client.reactor.advance(0)
    assert first[0].check(V3Unavailable) and second[0].check(V3Unavailable)
    # Sent again in the wrong order on purpose: 12 still needs 11 first.
    again = results(w.apply(revision(12, "/s/a")))
    client.reactor.advance(0)
    assert client.sent[-1][:2] == (11, 12)
    results(w.apply(revision(11, "/s/a")))
    client.reactor.advance(0)
    assert client.sent[-1][:2] == (10, 11) and again[0] is Outcome.APPLIED


def test_a_lease_grant_holds_back_the_changes_after_it():
    class Leases:
        def __init__(self):
            self.granted = defer.Deferred()

        def for_source_lease(self, lease):
            return self.granted

    w, client = writer()
    w.leases = Leases()
    leased = Revision(11, [WatchEvent("PUT", KeyValue(b"/s/a", b"v", mod_revision=11,
                                                      lease=7))])
    w.apply(leased)
    client.reactor.advance(0)
    w.apply(revision(12, "/s/a"))
    client.reactor.advance(0)
    assert client.sent == [], "12 went out before 11"
    w.leases.granted.callback(99)
    assert [s[:2] for s in client.sent] == [(10, 11), (11, 12)]


@pytest.mark.parametrize("found, verdict", [
    (14, "replayed"),            # the group landed before: its answer was lost
    (11, "not landed"),          # 12, before it, did not land yet: send again in order
    (99, "another writer"),      # nothing this writer sent
])
def test_the_verdict_of_a_failed_group(found, verdict):
    w, client = writer()
    w.applied = 11
    w._before, w._tail, w._sent_max = {12: 11}, 12, 12   # 12 sent, not answered yet
    client.answers = [found]
    done = [results(w.apply(revision(i, f"/s/k{i}"))) for i in (13, 14)]
    client.reactor.advance(0)
    assert client.sent == [(12, 14, ["/r/k13", "/r/k14"])]
    got = [d[0] for d in done]
    if verdict == "replayed":
        assert got == [Outcome.REPLAYED] * 2 and w.applied == 14
    elif verdict == "not landed":
        assert all(g.check(V3Unavailable) for g in got)
    else:
        assert all(g.check(Divergence) for g in got) and "another writer" in str(got[0].value)
