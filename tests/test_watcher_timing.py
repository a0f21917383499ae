"""The watch window's own logic, with a fake source and a fake clock.

What etcd answers (headers first, X-Etcd-Index semantics, history) is checked
against a real server in test_history.py and test_actions.py; here only our
ordering, window and timers are exercised.
"""

import etcd
from twisted.internet import defer
from twisted.internet.task import Clock

from etcdmirror.client import Answer, EtcdUnavailable, PendingWatch, WatchProgress
from etcdmirror.watcher import WatchWindow


class FakeCollector:
    def __init__(self, watch, etcd_index):
        self.watch, self.etcd_index, self.size = watch, etcd_index, 0

    def abort(self, why):
        self.watch.result.callback(WatchProgress(self.etcd_index, None))


class FakeSource:
    """Hands out watches we answer by hand; answers index probes."""

    def __init__(self):
        self.watches, self.index, self.probes = {}, 100, 0

    def watch(self, key, wait_index):
        w = PendingWatch()
        w.result = defer.Deferred()
        self.watches[wait_index] = w
        return w

    def probe(self):
        self.probes += 1
        return defer.succeed(WatchProgress(self.index, None))

    def register(self, wait_index, etcd_index):
        w = self.watches[wait_index]
        w._on_headers(FakeCollector(w, etcd_index), etcd_index)

    def event(self, wait_index, index, header=None):
        node = {"key": f"/p/k{index}", "value": "v", "modifiedIndex": index}
        result = etcd.EtcdResult(action="set", node=node)
        self.watches[wait_index].result.callback(
            Answer(result, header if header is not None else index, None))

    def open(self):
        return sorted(w for w, d in self.watches.items() if not d.result.called)


def window(clock, source, **kw):
    kw.setdefault("concurrency", 4)
    kw.setdefault("idle_timeout", 5.0)
    kw.setdefault("probe_interval", 0.5)
    kw.setdefault("probe_threshold", 200)
    w = WatchWindow(source, "/p", clock, **kw)
    w.reset(42)
    return w


def indexes(outcomes):
    return [o.result.modifiedIndex if isinstance(o, Answer) else ("progress", o.etcd_index)
            for o in outcomes]


def test_caught_up_means_one_watch():
    clock, source = Clock(), FakeSource()
    w = window(clock, source)
    w.next()
    assert source.open() == [42]
    source.register(42, 41)       # registered, nothing newer than 41 exists
    assert source.open() == [42]


def test_behind_opens_the_window_and_delivers_in_order():
    clock, source = Clock(), FakeSource()
    w = window(clock, source)
    out = []
    w.next().addCallback(out.append)
    source.event(42, 43, header=60)     # from history: the source is at 60
    assert out and indexes(out) == [43]
    assert source.open() == [44, 45, 46, 47]
    # Answers arrive out of order; events come out in order, each once.
    source.event(46, 47, header=60)
    source.event(47, 47, header=60)
    source.event(45, 47, header=60)
    source.event(44, 45, header=60)
    w.next().addCallback(out.append)
    w.next().addCallback(out.append)
    assert indexes(out) == [43, 45, 47]


def test_idle_watch_renewal_reports_progress():
    clock, source = Clock(), FakeSource()
    w = window(clock, source)
    out = []
    w.next().addCallback(out.append)
    source.register(42, 100)   # pending with X-Etcd-Index 100: nothing in [42, 100]
    clock.advance(4.9)
    assert not out
    clock.advance(0.1)         # the idle timer
    clock.advance(0)           # the abort runs one reactor turn later
    assert indexes(out) == [("progress", 100)]
    w.next()
    assert source.open() == [101]


def test_probe_renews_early_when_the_cluster_moves_far():
    clock, source = Clock(), FakeSource()
    w = window(clock, source, concurrency=1)
    out = []
    w.next().addCallback(out.append)
    source.register(42, 100)
    source.index = 250
    clock.advance(0.5)
    clock.advance(0)
    assert not out              # 150 events: not yet
    source.index = 300
    clock.advance(0.5)
    clock.advance(0)
    assert indexes(out) == [("progress", 100)] and w.early_renewals == 1


def test_an_error_fails_next_and_the_window_reopens():
    clock, source = Clock(), FakeSource()
    w = window(clock, source)
    failures = []
    w.next().addErrback(failures.append)
    source.watches[42].result.errback(EtcdUnavailable("connection refused"))
    assert failures and failures[0].check(EtcdUnavailable)
    out = []
    w.next().addCallback(out.append)
    source.event(42, 50)
    assert indexes(out) == [50]


def test_cancel_closes_every_watch_and_timer():
    clock, source = Clock(), FakeSource()
    w = window(clock, source)
    d = w.next()
    source.register(42, 41)
    failures = []
    d.addErrback(failures.append)
    d.cancel()
    assert failures and failures[0].check(defer.CancelledError)
    assert source.open() == []
    assert not [c for c in clock.getDelayedCalls() if c.active()]


def test_a_watch_answer_that_stalls_midway_fails_the_watch():
    """A body that starts but never ends (a broken proxy) must not hang the mirror."""
    clock, source = Clock(), FakeSource()
    w = window(clock, source, concurrency=1)
    failures = []
    w.next().addErrback(failures.append)
    source.register(42, 100)
    watch = source.watches[42]
    aborted = []
    watch._collector.size = 17                    # part of an event arrived
    watch._collector.abort = aborted.append
    clock.advance(5)                              # idle timer: not pending, has a body
    clock.advance(0)
    assert aborted == []
    clock.advance(30)
    assert aborted and "stalled" in aborted[0]
