"""The watch window's own logic, with a fake source and a fake clock.

What etcd answers (headers first, X-Etcd-Index semantics, history) is checked
against a real server in test_history.py and test_actions.py; here only our
ordering, window and timers are exercised.
"""

from twisted.internet import defer
from twisted.internet.task import Clock

from etcdmirror.answers import Answer, EtcdTimeout, EtcdUnavailable, StreamEnd
from etcdmirror.events import WatchProgress
from etcdmirror.watcher import MIN_PROBE_INTERVAL, WatchWindow, probe_delay
from etcdmirror.watches import EventStream, PendingWatch, Registration


class FakeCollector:
    """The body side of a fake watch: what finish touches."""

    def __init__(self, watch, etcd_index):
        self.watch, self.etcd_index, self.size = watch, etcd_index, 0

    def abort(self, why):
        self.watch.result.callback(WatchProgress(self.etcd_index, None))


class FakeSource:
    """Hands out watches we answer by hand; answers index probes."""

    def __init__(self, clock):
        self.clock = clock
        self.watches, self.index, self.probes = {}, 100, 0
        self.registrations, self.bodies = {}, {}
        self.streams = []

    def watch(self, key, wait_index):
        self.registrations[wait_index] = defer.Deferred()
        w = PendingWatch(defer.Deferred(), self.registrations[wait_index], self.clock)
        self.watches[wait_index] = w
        return w

    def probe(self):
        self.probes += 1
        return defer.succeed(WatchProgress(self.index, None))

    def register(self, wait_index, etcd_index):
        body = self.bodies[wait_index] = FakeCollector(self.watches[wait_index], etcd_index)
        self.registrations[wait_index].callback(Registration(etcd_index, body))

    def event(self, wait_index, index, header=None):
        node = {"key": f"/p/k{index}", "value": "v", "modifiedIndex": index}
        self.watches[wait_index].result.callback(Answer.from_payload(
            {"action": "set", "node": node}, header if header is not None else index))

    def open(self):
        return sorted(w for w, d in self.watches.items() if not d.result.called)

    # streaming watches: what etcd sends is decided by the test; one
    # [wait_index, handle, registration, on_event, body] per stream

    def stream(self, key, wait_index, on_event):
        registration = defer.Deferred()
        s = EventStream(defer.Deferred(), registration, self.clock)
        self.streams.append([wait_index, s, registration, on_event, None])
        return s

    def open_streams(self):
        return [w for w, s, *_ in self.streams if not s.done.called]

    def last_stream(self):
        return self.streams[-1][1]

    def last_lines(self):
        return self.streams[-1][4]

    def stream_register(self, etcd_index):
        entry = self.streams[-1]
        entry[4] = FakeLines(entry[1], etcd_index)
        entry[2].callback(Registration(etcd_index, entry[4]))

    def stream_event(self, index, header=None, value="v"):
        _, s, _, on_event, lines = self.streams[-1]
        node = {"key": f"/p/k{index}", "value": value, "modifiedIndex": index}
        lines.events += 1
        on_event(Answer.from_payload({"action": "set", "node": node},
                                     header if header is not None else s.etcd_index))

    def stream_end(self):
        s = self.last_stream()
        s.done.callback(StreamEnd(s.etcd_index, None, s.events, idle=False))


class FakeLines:
    """The body side of a fake stream: what pause, resume and finish touch."""

    def __init__(self, stream, etcd_index):
        self.stream, self.etcd_index, self.partial = stream, etcd_index, b""
        self.events = 0
        self.paused = False
        self.transport = self

    def pauseProducing(self):
        self.paused = True

    def resumeProducing(self):
        self.paused = False

    def abort(self, why):
        self.stream.done.callback(StreamEnd(self.etcd_index, None, self.events, idle=True))


def fakes():
    clock = Clock()
    return clock, FakeSource(clock)


def window(clock, source, **kw):
    kw.setdefault("concurrency", 4)
    kw.setdefault("idle_timeout", 5.0)
    kw.setdefault("probe_interval", 0.5)
    kw.setdefault("probe_threshold", 200)
    kw.setdefault("stream", False)
    w = WatchWindow(source, "/p", clock, **kw)
    w.reset(42)
    return w


def indexes(outcomes):
    return [o.event.modifiedIndex if isinstance(o, Answer) else ("progress", o.etcd_index)
            for o in outcomes]


def test_caught_up_means_one_watch():
    clock, source = fakes()
    w = window(clock, source)
    w.next()
    assert source.open() == [42]
    source.register(42, 41)       # registered, nothing newer than 41 exists
    assert source.open() == [42]


def test_behind_opens_the_window_and_delivers_in_order():
    clock, source = fakes()
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
    clock, source = fakes()
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
    clock, source = fakes()
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


def test_probe_runs_more_often_while_the_cluster_moves_fast():
    """At 2,500 writes/s, 1000 events pass in 0.4 s: a 0.5 s probe would be late."""
    clock, source = fakes()
    w = window(clock, source, concurrency=1)
    out = []
    w.next().addCallback(out.append)
    source.register(42, 100)
    clock.advance(0.5)                   # first probe: nothing learnt yet
    source.index = 100 + 1250            # 2,500 events/s
    clock.advance(0.5)
    clock.advance(0)
    assert indexes(out) == [("progress", 100)]
    w.next()
    source.register(101, 1350)
    probes = source.probes
    source.index += 200
    clock.advance(probe_delay(2500, 0.5, 200))      # 0.08 s later, not 0.5 s
    assert source.probes == probes + 1
    clock.advance(0)
    assert w.early_renewals == 2


def test_probe_delay():
    assert probe_delay(0, 0.5, 200) == 0.5
    assert probe_delay(100, 0.5, 200) == 0.5
    assert probe_delay(2500, 0.5, 200) == 0.08
    assert probe_delay(10**6, 0.5, 200) == MIN_PROBE_INTERVAL


def test_an_error_fails_next_and_the_window_reopens():
    clock, source = fakes()
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
    clock, source = fakes()
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
    clock, source = fakes()
    w = window(clock, source, concurrency=1)
    failures = []
    w.next().addErrback(failures.append)
    source.register(42, 100)
    body = source.bodies[42]
    aborted = []
    body.size = 17                                # part of an event arrived
    body.abort = aborted.append
    clock.advance(5)                              # idle timer: not pending, has a body
    clock.advance(0)
    assert aborted == []
    clock.advance(30)
    assert aborted and "stalled" in aborted[0]


# -- streaming watches --------------------------------------------------------

def streaming(clock, source, **kw):
    kw["stream"] = True
    return window(clock, source, **kw)


def test_caught_up_streams_every_event_on_one_request():
    clock, source = fakes()
    w = streaming(clock, source)
    out = []
    w.next().addCallback(out.append)
    assert source.open_streams() == [42] and source.open() == []
    source.stream_register(41)                # registered ahead of the store: live
    for index in (43, 47, 48):
        source.stream_event(index)
    w.next().addCallback(out.append)
    w.next().addCallback(out.append)
    assert indexes(out) == [43, 47, 48]
    assert len(source.streams) == 1 and source.open() == []
    assert source.open_streams() == [42]


def test_a_stream_answered_from_history_is_closed_after_its_event():
    """etcd sends nothing more after an event from its history (index <= header)."""
    clock, source = fakes()
    w = streaming(clock, source)
    out = []
    w.next().addCallback(out.append)
    source.stream_register(60)                # the store is at 60
    source.stream_event(45)                   # from history
    assert indexes(out) == [45]
    assert source.open_streams() == [] and w.stream.from_history == 1
    w.next()
    assert source.open() == [46, 47, 48, 49]   # behind: the window reads the history


def test_a_quiet_stream_reports_progress_and_is_renewed():
    clock, source = fakes()
    w = streaming(clock, source)
    out = []
    w.next().addCallback(out.append)
    source.stream_register(100)               # nothing under the prefix in [42, 100]
    clock.advance(5)
    clock.advance(0)
    assert indexes(out) == [("progress", 100)]
    w.next()
    assert source.open_streams() == [101]


def test_events_restart_the_idle_timer():
    clock, source = fakes()
    w = streaming(clock, source)
    out = []
    w.next().addCallback(out.append)
    source.stream_register(41)
    clock.advance(4)
    source.stream_event(43)
    clock.advance(4)
    clock.advance(0)
    assert source.open_streams() == [42]      # 4 s since the event: not idle yet
    clock.advance(1)
    clock.advance(0)
    # Renewed after its last event; no progress is claimed for it.
    assert len(source.streams) == 2 and source.open_streams() == [44]
    assert indexes(out) == [43]


def test_a_stream_etcd_ends_is_reopened_after_its_last_event():
    clock, source = fakes()
    w = streaming(clock, source)
    out = []
    w.next().addCallback(out.append)
    source.stream_register(41)
    source.stream_event(43)
    source.stream_event(44)
    source.stream_end()                       # etcd dropped the watcher (we were slow)
    # Event 44 still waits to be taken; the new stream starts after it.
    assert source.open() == [] and source.open_streams() == [45]
    w.next().addCallback(out.append)
    assert indexes(out) == [43, 44]


def test_a_stream_that_ends_without_an_event_fails_next():
    clock, source = fakes()
    w = streaming(clock, source)
    failures = []
    w.next().addErrback(failures.append)
    source.stream_register(41)
    source.stream_end()
    assert failures and failures[0].check(EtcdUnavailable)
    assert "without an event" in failures[0].getErrorMessage()


def test_a_stream_is_paused_while_too_many_events_wait():
    clock, source = fakes()
    w = streaming(clock, source, max_buffered=4)
    out = []
    w.next().addCallback(out.append)
    source.stream_register(41)
    for index in range(43, 48):
        source.stream_event(index)            # 43 taken at once, 4 wait
    lines = source.last_lines()
    assert lines.paused
    clock.advance(30)                         # paused by us is not idle
    assert source.open_streams() == [42]
    w.next().addCallback(out.append)
    w.next().addCallback(out.append)
    assert not lines.paused                   # down to half: reading again
    assert indexes(out) == [43, 44, 45]


def test_big_values_pause_the_stream_sooner():
    clock, source = fakes()
    w = streaming(clock, source, max_buffered_bytes=3000)
    out = []
    w.next().addCallback(out.append)
    source.stream_register(41)
    for index in range(43, 47):
        source.stream_event(index, value="x" * 1000)   # 43 taken at once, 3 kB wait
    lines = source.last_lines()
    assert lines.paused
    for _ in range(2):
        w.next().addCallback(out.append)
    assert not lines.paused and w._buffered_bytes == 1000
    assert indexes(out) == [43, 44, 45]


def test_no_headers_in_time_falls_back_to_plain_watches():
    """A proxy that buffers answers holds a stream's headers forever."""
    clock, source = fakes()
    w = streaming(clock, source)
    failures = []
    w.next().addErrback(failures.append)
    source.last_stream().done.errback(EtcdTimeout("no answer within 10s"))
    assert failures and not w.stream.enabled
    w.next()
    assert source.open() == [42] and len(source.streams) == 1


def test_probe_renews_a_stream_when_the_cluster_moves_far():
    clock, source = fakes()
    w = streaming(clock, source)
    out = []
    w.next().addCallback(out.append)
    source.stream_register(100)
    source.stream_event(150)
    source.index = 300                         # 150 past the last event: not yet
    clock.advance(0.5)
    clock.advance(0)
    assert source.open_streams() == [42]
    source.index = 350
    clock.advance(0.5)
    clock.advance(0)
    assert w.stream.early_renewals == 1
    assert len(source.streams) == 2 and source.open_streams() == [151]
