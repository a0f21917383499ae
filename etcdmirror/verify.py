"""Is the replica right?  A one-shot comparison, and the daemon's periodic check.

``etcd-mirror-verify`` compares a ``quorum=true`` snapshot of the source prefix
with its image on the destination (presence, dir-ness, value; TTLs drift by
nature and are not compared) and prints every difference.

Inside the daemon (``--verify-interval``) the comparison must not mistake
events still in flight for divergence, so a round reads the source, waits
until the mirror has applied up to that snapshot's index, reads the
destination, reads the source again, and only counts keys that did not change
on the source between the two source reads.

``etcd-mirror-verify --plan`` prints instead what a resync would do now: the
plan :func:`etcdmirror.resync.make_plan` makes for a resync (TTLs compared),
the replica keys its deletes take, and whether the deletion guard would let an
automatic resync carry it out (:func:`etcdmirror.guards.check_deletes`).
"""

import bisect
import logging
from dataclasses import dataclass
from typing import Any, Callable, Dict, List, Optional, Tuple

from twisted.internet import defer, task
from twisted.internet.interfaces import IReactorTime

from etcdmirror import sides
from etcdmirror.endpoints import Cluster
from etcdmirror.guards import (
    DEFAULT_MAX_RESYNC_DELETES, DeleteLimit, ResyncRefused, check_deletes, n_keys)
from etcdmirror.keys import KeyMapper
from etcdmirror.periodic import Periodic
from etcdmirror.resync import NodeState, Snapshot, as_held, count_deletions, make_plan
from etcdmirror.roles import ReplicaWriter, SourceReader

log = logging.getLogger(__name__)

#: ``etcd-mirror-verify``'s exit statuses besides 0 (diff's convention).
DIFFERENT, UNCOMPARABLE = 1, 2


@dataclass(frozen=True)
class Difference:
    """One destination key that is not what the source says it should be."""

    key: str
    kind: str  # missing, value, type, extra
    source: Optional[NodeState]
    destination: Optional[NodeState]

    def describe(self) -> str:
        if self.kind == "missing":
            return f"missing {self.key}: on the source as {_show(self.source)}"
        if self.kind == "extra":
            below = " (and everything below it)" if self.destination.dir else ""
            return f"extra   {self.key}{below}: not on the source"
        return (f"{'differs' if self.kind == 'value' else 'type   '} {self.key}: source "
                f"{_show(self.source)}, destination {_show(self.destination)}")


def _show(node: Optional[NodeState]) -> str:
    if node is None:
        return "nothing"
    return "a directory" if node.dir else f"value {node.value!r}"


def differences(source: Dict[str, NodeState], destination: Dict[str, NodeState],
                mapper: KeyMapper) -> List[Difference]:
    """Pure comparison of two flattened trees (source keys, destination keys)."""
    plan = make_plan(source, destination, mapper, compare_ttl=False)
    out = []
    for key, node, have in plan.writes:
        kind = "missing" if have is None else ("type" if have.dir != node.dir else "value")
        out.append(Difference(key, kind, node, have))
    for key, have in plan.deletes:
        out.append(Difference(key, "extra", None, have))
    return sorted(out, key=lambda d: d.key)


def _show_ttl(node: Optional[NodeState]) -> str:
    ttl = node is not None and node.ttl is not None
    return _show(node) + (f", TTL {node.ttl} s" if ttl else "")


def plan_lines(src: Snapshot, dst: Snapshot, mapper: KeyMapper,
               limit: DeleteLimit) -> List[str]:
    """What a resync would do now, one line per write and delete, then a summary
    and what the deletion guard would say of an automatic resync (pure).  No
    lines: a resync would write and delete nothing."""
    plan = make_plan(src.nodes, dst.nodes, mapper)
    if not plan:
        return []
    deletions = count_deletions(plan, src.nodes, dst.nodes, mapper)
    gone = list(deletions.keys)

    def below(key: str) -> str:
        # Sorted keys under KEY/ are contiguous; "0" is the character after "/".
        count = bisect.bisect_left(gone, key + "0") - bisect.bisect_left(gone, key + "/")
        return f" (a directory: {n_keys(count)} below it)"

    lines = []
    for key, node, have in plan.writes:
        replaced = below(key) if have is not None and have.dir and not node.dir else ""
        lines.append(f"write   {key}: {_show_ttl(node)} (destination: "
                     f"{_show_ttl(have)}){replaced}")
    for key, have in plan.deletes:
        lines.append(f"delete  {key}{below(key) if have.dir else ''}")
    lines.append(f"plan: {len(plan.writes)} writes, {len(plan.deletes)} deletes, taking "
                 f"{deletions.share()} under {mapper.dst_root}; source snapshot at index "
                 f"{src.etcd_index}")
    try:
        check_deletes(deletions, limit, True, src.etcd_index, mapper)
    except ResyncRefused as e:
        lines.append(f"an automatic resync would refuse it ({e.why}); "
                     "etcd-mirror --reload would carry it out")
    else:
        lines.append(f"an automatic resync would carry it out (--max-resync-deletes "
                     f"{limit}: up to {n_keys(limit.allowed(deletions.replica_keys))})")
    return lines


@defer.inlineCallbacks
def read_both(source: SourceReader, replica: ReplicaWriter):
    """Fires with the source's snapshot and then the replica's (quorum reads)."""
    src = as_held(replica, (yield source.snapshot()))
    dst = yield replica.snapshot()
    return src, dst


@defer.inlineCallbacks
def verify_once(source: SourceReader, replica: ReplicaWriter, mapper: KeyMapper):
    """Snapshot both sides (quorum reads) and compare them; fires with the list."""
    src, dst = yield read_both(source, replica)
    return differences(src.nodes, dst.nodes, mapper)


class PeriodicVerifier:
    """Runs a consistent comparison every ``interval`` seconds inside the daemon."""

    def __init__(self, source: SourceReader, replica: ReplicaWriter, mapper: KeyMapper,
                 clock: IReactorTime, applied_index: Callable[[], int],
                 report: Callable[[List[Difference]], None],
                 catch_up_timeout: float = 30.0) -> None:
        self.source = source
        self.replica = replica
        self.mapper = mapper
        self.clock = clock
        self.applied_index = applied_index
        self.report = report
        self.catch_up_timeout = catch_up_timeout
        self._periodic = Periodic(clock, self._round_logged)

    def start(self, interval: float) -> None:
        self._periodic.start(interval, now=False)

    def stop(self) -> None:
        self._periodic.stop()

    @defer.inlineCallbacks
    def _round_logged(self):
        try:
            yield self.round()
        except Exception as e:  # a failed check is retried next round
            log.warning("periodic verify failed: %s", e)

    @defer.inlineCallbacks
    def round(self):
        """One comparison; reports and fires with the differences, or None if skipped."""
        first = as_held(self.replica, (yield self.source.snapshot()))
        deadline = self.clock.seconds() + self.catch_up_timeout
        while self.applied_index() < first.etcd_index:
            if self.clock.seconds() >= deadline:
                log.info("periodic verify skipped: the mirror is still behind index %d",
                         first.etcd_index)
                return None
            yield task.deferLater(self.clock, 0.1, lambda: None)
        dst = yield self.replica.snapshot()
        second = as_held(self.replica, (yield self.source.snapshot()))
        found = [d for d in differences(first.nodes, dst.nodes, self.mapper)
                 if self._stable(d, first.nodes, second.nodes)]
        self.report(found)
        return found

    def _stable(self, diff: Difference, first: Dict[str, NodeState],
                second: Dict[str, NodeState]) -> bool:
        """The source key did not change between the two reads: not in flight."""
        key = self.mapper.to_src(diff.key)
        a, b = first.get(key), second.get(key)
        if a is None or b is None:
            return a is b
        return a.dir == b.dir and a.value == b.value


def verify_command(reactor: Any, src: Cluster, dst: Cluster, mapper: KeyMapper,
                   src_tls: Any, dst_tls: Any, echo: Callable[[str], None],
                   echo_error: Callable[[str], None], plan: bool = False,
                   limit: DeleteLimit = DEFAULT_MAX_RESYNC_DELETES,
                   apis: Tuple[str, str] = ("v2", "v2")) -> defer.Deferred:
    """The body of ``etcd-mirror-verify``: print every difference (``plan``: the
    resync's plan, judged with ``limit``); ``apis``: the source's and the
    destination's etcd API.

    Exits as ``diff`` does: the Deferred fires with None when the trees are
    identical, or the plan empty (exit 0), and fails with :class:`SystemExit`
    otherwise (``task.react`` exits with it): 1 different, 2 the trees could
    not be compared.
    """
    source = sides.source_reader(apis[0], sides.client_for(apis[0], src, reactor, "source",
                                                           src_tls), mapper.src_prefix, reactor)
    replica, _ = sides.replica_and_checkpoint(
        apis[1], sides.client_for(apis[1], dst, reactor, "destination", dst_tls), mapper)

    def report(found: List[Difference]) -> None:
        for difference in found:
            echo(difference.describe())
        where = f"{src.display}{mapper.src_prefix} and {dst.display}{mapper.dst_root}"
        if found:
            echo(f"{len(found)} differences between {where}")
            raise SystemExit(DIFFERENT)
        echo(f"identical: {where}")

    def failed(failure: Any) -> None:
        failure.trap(Exception)
        echo_error(f"could not compare: {failure.getErrorMessage()}")
        raise SystemExit(UNCOMPARABLE)

    def report_plan(snapshots: Any) -> None:
        lines = plan_lines(*snapshots, mapper, limit)
        for line in lines:
            echo(line)
        if lines:
            raise SystemExit(DIFFERENT)
        echo(f"nothing to write or delete: {src.display}{mapper.src_prefix} and "
             f"{dst.display}{mapper.dst_root} are identical, TTLs included")

    if plan:
        d = read_both(source, replica)
        d.addCallbacks(report_plan, failed)
        return d
    d = verify_once(source, replica, mapper)
    d.addCallbacks(report, failed)
    return d
