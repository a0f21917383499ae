"""``etcd-mirror-switchover``: reverse a running A->B mirror into B->A, without a reload.

Given the running mirror's own SRC (A), DST (B), mapping and TLS options:

1. **A is quiet.**  A recursive watch on A's prefix, from A's index (a quorum
   probe) + 1, stays open for ``--quiet-seconds`` and then until the keys
   are written: any event under the prefix (keys matching the ignore regex
   excepted: they are not mirrored) refuses, naming the key and its index.
   etcd answers a watch from its history when the event is older than the
   request, so nothing between the probe and the watch is missed.
2. **The mirror caught up** (a barrier, not a sleep): the A->B index key on B
   (:class:`~etcdmirror.indexstore.IndexStore`) must reach A's index of step
   1.  The mirror persists a quiet prefix's progress every 10 s
   (:class:`~etcdmirror.checkpoint.BatchSettings`), after an idle watch
   renewal (``--watch-idle-timeout``, 5 s), so this takes up to about 15 s
   when A's index moved outside the prefix; ``--timeout`` refuses.  (Asking
   instead whether A has an event above the mirror's index, with a watch
   finished once registered, races with etcd, which sends the headers of a
   watch answered from its history before the event.)
3. **Equal.**  Quorum snapshots of A's prefix and of B's image are compared
   as ``etcd-mirror-verify`` does (:func:`etcdmirror.verify.differences`); any
   difference refuses, naming the keys.  B's snapshot's ``X-Etcd-Index`` X is
   the moment of equality: B's image at X is A's prefix.  Once the watch is
   finished, A's prefix is read again and must not have changed (a watch
   finished at the moment an event comes may miss it).
4. **The keys B->A needs**, written on A through an
   :class:`~etcdmirror.indexstore.IndexStore` for the reverse mapping
   (:mod:`etcdmirror.switchplan`): its source identity (B's cluster id), its
   replay horizon (X: nothing above X applied), no resync marker, and last its
   index X.  The B->A mirror's start-up guards are run on them first: not a
   loop, same source, index not ahead of B.  A recorded source identity on A
   that is another cluster than B (another mirror writes A there) refuses.
5. **The next steps** are printed (:func:`etcdmirror.switchplan.next_steps`).

Every step only reads, except step 4, which writes the same keys from the
same checks: re-running after an interruption, or after success as long as
nothing wrote B since, is safe.  Once B->A runs, a re-run refuses (A receives
its writes, or A->B is behind): nothing is written then.  Index keys live
under ``/__replication``, a hidden etcd directory: no recursive read or
watch, of ``/`` either, ever sees them, so neither mirror copies them.
"""

from dataclasses import dataclass
from typing import Any, Callable, Dict, Optional

from twisted.internet import defer, task
from twisted.internet.interfaces import IReactorTime

from etcdmirror import guards, sides as apis
from etcdmirror.client import EtcdClient
from etcdmirror.endpoints import Cluster
from etcdmirror.errors import MirrorFatal
from etcdmirror.events import Event, WatchProgress
from etcdmirror.indexstore import IndexStore
from etcdmirror.keys import KeyMapper, probe_key
from etcdmirror.roles import Checkpoint, ReplicaWriter, SourceReader
from etcdmirror.switchplan import (
    REFUSED, UNUSABLE, Refused, Settings, next_steps, reverse_mapper)
from etcdmirror.resync import Snapshot
from etcdmirror.v2source import V2SourceReader
from etcdmirror.v3mapping import v3_changes
from etcdmirror.verify import differences

#: How often the barrier reads the mirror's index on B (seconds).
POLL_INTERVAL = 0.25


class QuietWatch:
    """A live recursive watch on a prefix: ends at the first write that is mirrored.

    ``done`` fires with None, always; then :attr:`seen` is the event (None:
    stopped with nothing seen) and :attr:`error` why the watch failed.
    """

    def __init__(self, client: EtcdClient, mapper: KeyMapper, index: int) -> None:
        self.client, self.mapper = client, mapper
        self.seen: Optional[Event] = None
        self.error: Optional[Exception] = None
        #: Events under the prefix on keys the ignore regex matches.
        self.ignored = 0
        self._watch: Any = None
        self.done = self._follow(index)

    @defer.inlineCallbacks
    def _follow(self, index: int):
        try:
            while True:
                self._watch = self.client.watch(self.mapper.src_prefix, index)
                outcome = yield self._watch.result
                if isinstance(outcome, WatchProgress):
                    return
                event = outcome.event
                if event.key is not None and self.mapper.ignored(event.key):
                    self.ignored += 1
                    index = event.modifiedIndex + 1
                    continue
                self.seen = event
                return
        except Exception as e:  # reported by the caller, with the step it broke
            self.error = e

    def stop(self) -> defer.Deferred:
        """Finish the watch (once etcd has registered it); fires with :attr:`done`'s None."""
        if not self.done.called:
            watch = self._watch
            watch.registered.addBoth(lambda result: watch.finish())
        return self.done


class V3QuietWatch:
    """:class:`QuietWatch` on an etcd v3 A (``--src-api v3``): a source reader's
    watch from ``index``, ended at the first revision that changes a mirrored key."""

    def __init__(self, reader: Any, mapper: KeyMapper, index: int) -> None:
        self.reader, self.mapper = reader, mapper
        self.seen: Any = None
        self.error: Optional[Exception] = None
        self.ignored = 0
        self._next: Optional[defer.Deferred] = None
        reader.follow(index)
        self.done = self._follow()

    @defer.inlineCallbacks
    def _follow(self):
        try:
            while True:
                self._next = self.reader.next()
                outcome = yield self._next
                if isinstance(outcome, WatchProgress):
                    continue  # quiet proven up to a revision: go on watching
                if not v3_changes(outcome.event.events, self.mapper):
                    self.ignored += 1  # nothing the mirror replicates
                    continue
                self.seen = outcome.event
                return
        except defer.CancelledError:
            return  # stopped
        except Exception as e:  # reported by the caller, with the step it broke
            self.error = e

    def stop(self) -> defer.Deferred:
        """Finish the watch; fires with :attr:`done`'s None."""
        if not self.done.called and self._next is not None:
            self._next.cancel()
        self.reader.close()
        return self.done


@dataclass
class Sides:
    """What the switchover reads and writes, through the mirror's APIs."""

    #: A's prefix, as the A->B mirror reads it (``position``, ``snapshot``).
    a: SourceReader
    #: B's image, as the B->A mirror will read it (``position``).
    b: SourceReader
    #: B's image, as the A->B mirror writes it (``snapshot``).
    b_image: ReplicaWriter
    #: The A->B mirror's keys on B, and the B->A mirror's on A.
    forward: Checkpoint
    reverse: Checkpoint
    #: ``quiet(index)``: a :class:`QuietWatch` on A from ``index``.
    quiet: Callable[[int], Any]


def make_sides(api: str, reactor: Any, src: Cluster, dst: Cluster, forward: KeyMapper,
               reverse: KeyMapper, src_tls: Any, dst_tls: Any) -> Sides:
    """The roles of a switchover of a v2 -> v2 or a v3 -> v3 mirror."""
    if api == "v3":
        a = apis.v3_client(src, reactor, "A", src_tls)
        b = apis.v3_client(dst, reactor, "B", dst_tls)
        b_image, forward_store = apis.replica_and_checkpoint("v3", b, forward)
        _, reverse_store = apis.replica_and_checkpoint("v3", a, reverse)
        return Sides(apis.source_reader("v3", a, forward.src_prefix, reactor),
                     apis.source_reader("v3", b, reverse.src_prefix, reactor), b_image,
                     forward_store, reverse_store,
                     lambda index: V3QuietWatch(
                         apis.source_reader("v3", a, forward.src_prefix, reactor),
                         forward, index))
    a = EtcdClient(src, reactor, name="A", tls=src_tls, probe_key=probe_key(forward.src_prefix))
    b = EtcdClient(dst, reactor, name="B", tls=dst_tls,
                   probe_key=IndexStore.probe_key_for(forward))
    b_image, forward_store = apis.replica_and_checkpoint("v2", b, forward)
    return Sides(V2SourceReader(a, forward.src_prefix, reactor),
                 V2SourceReader(b, reverse.src_prefix, reactor), b_image, forward_store,
                 IndexStore(a, reverse), lambda index: QuietWatch(a, forward, index))


def _within(clock: IReactorTime, seconds: float, d: defer.Deferred) -> defer.Deferred:
    """Fires with None after ``seconds``, or as soon as ``d`` fires (``d`` keeps its result)."""
    out: defer.Deferred = defer.Deferred()
    call = clock.callLater(seconds, lambda: out.called or out.callback(None))

    def fired(result: Any) -> Any:
        if call.active():
            call.cancel()
        if not out.called:
            out.callback(None)
        return result
    d.addBoth(fired)
    return out


class Switchover:
    """One run of the procedure; :meth:`run` fires with None (done) or fails."""

    def __init__(self, reactor: IReactorTime, sides: Sides, forward: KeyMapper,
                 settings: Settings, echo: Callable[[str], None]) -> None:
        self.reactor, self.sides = reactor, sides
        self.a, self.b = sides.a, sides.b
        self.forward, self.settings, self.echo = forward, settings, echo
        self.reverse = reverse_mapper(forward)
        self.a_name = f"A ({sides.a.display})"
        self.b_name = f"B ({sides.b.display})"

    @defer.inlineCallbacks
    def run(self):
        """Fires with what was (or, dry run, would be) written: (index, B's cluster id)."""
        p = self.forward.src_prefix
        start = yield self.a.position()
        quiet = self.sides.quiet(start.etcd_index + 1)
        try:
            yield _within(self.reactor, self.settings.quiet_seconds, quiet.done)
            self._still_quiet(quiet)
            ignored = f" ({quiet.ignored} on ignored keys)" if quiet.ignored else ""
            self.echo(f"1. quiet: no write under {p} on {self.a_name} for "
                      f"{self.settings.quiet_seconds:g} s{ignored}; A's index {start.etcd_index}")
            applied = yield self._barrier(start.etcd_index, start.cluster_id, quiet)
            self.echo(f"2. caught up: the mirror's index on B is {applied}, at or past "
                      f"A's index {start.etcd_index}")
            index, b_id, a_tree = yield self._compare(start.cluster_id)
            self._still_quiet(quiet)
            yield self._check_reverse_keys(index, b_id)
            self._still_quiet(quiet)
        finally:
            yield quiet.stop()
        self._still_quiet(quiet)
        yield self._unchanged(a_tree)
        yield self._write(index, b_id)
        return index, b_id

    def _still_quiet(self, quiet: Any) -> None:
        if quiet.error is not None:
            raise quiet.error
        if quiet.seen is not None:
            e = quiet.seen
            raise Refused(
                f"A still receives writes under {self.forward.src_prefix}: {e.action} "
                f"{e.key} at index {e.modifiedIndex} on {self.a_name}. Make A read-only "
                "under the prefix first (stop its writers; an A->B mirror's --heartbeat-key "
                "writes A too: restart it without), then run this again. Nothing was written.")

    @defer.inlineCallbacks
    def _barrier(self, index: int, a_id: Optional[str], quiet: Any):
        """Fires with the A->B mirror's index on B once it is at or past ``index``."""
        store = self.sides.forward
        recorded = yield store.read_source_id()
        if recorded and a_id and recorded != a_id:
            raise Refused(
                f"B's image under {self.forward.dst_root} was replicated from etcd cluster "
                f"{recorded}, but {self.a_name} is cluster {a_id}: give the running "
                "mirror's own SRC, DST and options. Nothing was written.")
        deadline = self.reactor.seconds() + self.settings.timeout
        while True:
            try:
                applied = yield store.read_index()
            except MirrorFatal as e:
                raise Refused(f"{e} Is this B the replica of the running mirror, with its "
                              "own --dst-prefix? Nothing was written.") from None
            if applied >= index:
                return applied
            self._still_quiet(quiet)
            if self.reactor.seconds() >= deadline:
                raise Refused(
                    f"the mirror has applied up to {applied}, A is at {index} (waited "
                    f"{self.settings.timeout:g} s): is it running? Check its /status "
                    "(state \"replicating\"), let it catch up, then run this again. "
                    "Nothing was written.")
            yield task.deferLater(self.reactor, POLL_INTERVAL, lambda: None)

    @defer.inlineCallbacks
    def _compare(self, a_id: Optional[str]):
        """Fires with B's index at the moment of equality and B's cluster id."""
        a_tree = yield self.a.snapshot()
        b_tree = yield self.sides.b_image.snapshot()
        found = differences(a_tree.nodes, b_tree.nodes, self.forward)
        where = (f"{self.a_name}{self.forward.src_prefix} and "
                 f"{self.b_name}{self.forward.dst_root}")
        if found:
            lines = "\n".join("   " + d.describe() for d in found)
            raise Refused(
                f"{len(found)} differences between {where}:\n{lines}\nThe replica is not "
                "A's copy: find who wrote B behind the mirror's back (or let the mirror "
                "repair it with --reload), check with etcd-mirror-verify, then run this "
                "again. Nothing was written.")
        b_id = b_tree.cluster_id or (yield self.b.position()).cluster_id
        if not b_id:
            raise Refused(f"{self.b_name} sends no X-Etcd-Cluster-Id: the B->A mirror "
                          "could not check its source. Nothing was written.")
        guards.check_not_a_loop(b_id, a_id, self.reverse)
        self.echo(f"3. identical: {where} ({len(a_tree.nodes)} nodes); B's index "
                  f"{b_tree.etcd_index}, cluster id {b_id}")
        return b_tree.etcd_index, b_id, a_tree

    @defer.inlineCallbacks
    def _unchanged(self, before: Snapshot):
        """A read again, after the watch: a write the watch may have missed at
        its very end (etcd sends an event after the headers) shows here."""
        after = yield self.a.snapshot()

        def seen(tree: Snapshot) -> Dict[str, Any]:
            return {k: (n.dir, n.value) for k, n in tree.nodes.items()
                    if not self.forward.ignored(k)}
        changed = sorted(set(seen(before).items()) ^ set(seen(after).items()))
        if changed:
            raise Refused(
                f"A still receives writes under {self.forward.src_prefix}: "
                f"{', '.join(sorted({k for k, _ in changed}))} changed on {self.a_name} "
                "during the checks. Make A read-only under the prefix first, then run this "
                "again. Nothing was written.")

    @defer.inlineCallbacks
    def _check_reverse_keys(self, index: int, b_id: str):
        """What B->A's start-up guards will say of the keys, and what A holds now."""
        store = self.sides.reverse
        recorded = yield store.read_source_id()
        if recorded and recorded != b_id:
            raise Refused(
                f"{self.a_name} already holds {store.source_id_key} = {recorded}: a mirror "
                f"from another cluster than B ({b_id}) writes {self.reverse.dst_prefix} on A. "
                "Stop it and delete its keys first. Nothing was written.")
        guards.check_same_source(b_id, b_id, self.b.display)
        guards.check_not_rolled_back(index, (yield self.b.position()).etcd_index)

    @defer.inlineCallbacks
    def _write(self, index: int, b_id: str):
        store = self.sides.reverse
        try:
            before = yield store.read_index()
        except MirrorFatal:
            before = "absent"
        if not self.settings.dry_run:
            # The index last: cut short before it, B->A refuses to start, and
            # a re-run writes everything again.
            yield store.write_source_id(b_id)
            yield store.write_horizon(index)
            yield store.clear_resync_marker()
            yield store.write_index(index)
        verb = "would write" if self.settings.dry_run else "wrote"
        horizon = getattr(store, "horizon_key", None)
        self.echo(f"4. {verb} on {self.a_name}: {store.key} = {index} (was {before}), "
                  f"{store.source_id_key} = {b_id}, "
                  f"{f'{horizon} = {index}, ' if horizon else ''}no "
                  f"{store.resync_marker_key}: a B->A mirror starts at B's index "
                  f"{index + 1} without --reload")


def switchover_command(reactor: Any, src: Cluster, dst: Cluster, forward: KeyMapper,
                       src_tls: Any, dst_tls: Any, options: Dict[str, Any],
                       sides: Dict[str, Any], echo: Callable[[str], None],
                       echo_error: Callable[[str], None]) -> defer.Deferred:
    """The body of ``etcd-mirror-switchover``; fires with None (exit 0) or fails
    with :class:`SystemExit` (1 refused, 2 a cluster could not be read).

    ``sides["src_api"]`` (the same as ``dst_api``: v2 -> v2 or v3 -> v3) says
    which API the mirror speaks."""
    settings = Settings(**options)
    try:
        reverse = reverse_mapper(forward)
    except Refused as e:
        echo_error(f"refused: {e}")
        return defer.fail(SystemExit(REFUSED))
    roles = make_sides(sides.get("src_api") or "v2", reactor, src, dst, forward, reverse,
                       src_tls, dst_tls)
    d = Switchover(reactor, roles, forward, settings, echo).run()

    def done(_: Any) -> None:
        for line in next_steps(forward, reverse, src.display, dst.display, sides, settings,
                               src.username is not None or dst.username is not None):
            echo(line)
        if settings.dry_run:
            echo("dry run: nothing was written; run again without --dry-run to write step 4")

    def failed(failure: Any) -> None:
        failure.trap(Exception)
        if failure.check(Refused, MirrorFatal):
            echo_error(f"refused: {failure.getErrorMessage()}")
            raise SystemExit(REFUSED)
        echo_error(f"could not switch over: {failure.getErrorMessage()}")
        raise SystemExit(UNUSABLE)

    d.addCallbacks(done, failed)
    return d
