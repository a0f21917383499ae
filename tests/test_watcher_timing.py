"""When a pending watch is renewed: idle timeout and index probe, on a fake clock.

What etcd answers (headers first, X-Etcd-Index semantics) is checked against a
real server in test_history.py; here only our timers are exercised.
"""

from twisted.internet import defer
from twisted.internet.task import Clock

from etcdmirror.client import Answer, PendingWatch, WatchProgress
from etcdmirror.watcher import WatchReader


class FakeCollector:
    def __init__(self, watch, etcd_index):
        self.watch, self.etcd_index, self.size = watch, etcd_index, 0

    def abort(self, why):
        self.watch.result.callback(WatchProgress(self.etcd_index, None))


class FakeSource:
    """Hands out watches we complete by hand; answers index probes."""

    def __init__(self):
        self.watches, self.index, self.probes = [], 100, 0

    def watch(self, key, wait_index):
        w = PendingWatch()
        w.result = defer.Deferred()
        self.watches.append((wait_index, w))
        return w

    def probe(self):
        self.probes += 1
        return defer.succeed(WatchProgress(self.index, None))

    def register(self, etcd_index):
        w = self.watches[-1][1]
        w._on_headers(FakeCollector(w, etcd_index), etcd_index)


def reader(clock, source, **kw):
    kw.setdefault("idle_timeout", 5.0)
    kw.setdefault("probe_interval", 0.5)
    kw.setdefault("probe_threshold", 200)
    return WatchReader(source, "/p", clock, **kw)


def test_idle_watch_is_finished_after_the_timeout_with_its_header_index():
    clock, source = Clock(), FakeSource()
    out, seen = [], []
    reader(clock, source).read(42, seen.append).addCallback(out.append)
    source.register(100)
    assert seen == [100]
    clock.advance(4.9)
    assert not out
    clock.advance(0.1)   # the idle timer
    clock.advance(0)     # the abort runs one reactor turn later
    assert out == [WatchProgress(100, None)]
    assert not [c for c in clock.getDelayedCalls() if c.active()]


def test_probe_renews_early_when_the_cluster_moves_far():
    clock, source = Clock(), FakeSource()
    out = []
    r = reader(clock, source)
    r.read(42).addCallback(out.append)
    source.register(100)
    source.index = 250
    clock.advance(0.5)
    clock.advance(0)
    assert not out          # 150 events: not yet
    source.index = 300
    clock.advance(0.5)
    clock.advance(0)
    assert out == [WatchProgress(100, None)] and r.early_renewals == 1
    assert source.probes == 2


def test_an_event_stops_the_timers():
    clock, source = Clock(), FakeSource()
    out = []
    reader(clock, source).read(42).addCallback(out.append)
    source.register(100)
    event = Answer(result=object(), etcd_index=100, cluster_id=None)
    source.watches[-1][1].result.callback(event)
    assert out == [event]
    probes = source.probes
    clock.advance(10)
    assert source.probes == probes
    assert not [c for c in clock.getDelayedCalls() if c.active()]


def test_no_timers_before_etcd_registered_the_watch():
    clock, source = Clock(), FakeSource()
    reader(clock, source).read(1)
    clock.advance(30)
    assert source.probes == 0


def test_cancel_closes_the_watch():
    clock, source = Clock(), FakeSource()
    d = reader(clock, source).read(1)
    source.register(5)
    failures = []
    d.addErrback(failures.append)
    d.cancel()
    assert failures and failures[0].check(defer.CancelledError)
    assert source.watches[-1][1].result.called
