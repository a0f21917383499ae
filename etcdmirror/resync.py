"""Bring the destination to one consistent snapshot of the source, hitlessly.

etcd-mirror 0.0.12 reloaded by deleting the whole destination prefix and then
loading the source into it: for the minutes that took, every confd or pybal
reading the replica saw an empty or half-filled tree.  Here we compare the two
trees and write only the difference: keys that differ are overwritten in
place, keys the source lacks are deleted, keys present on both sides are never
removed.  Ignored keys are left exactly as they are.

An automatic resync (any but an operator's ``--reload``) first counts the
replica keys its plan would delete and refuses, before writing anything, when
the source reads empty or the count is over ``--max-resync-deletes``
(:func:`etcdmirror.guards.check_deletes`).

The snapshots come from the two roles (:mod:`etcdmirror.roles`): the source's
is read at one index, from which replication continues; the replica writer
carries out the plan.
"""

import logging
from dataclasses import dataclass, field
from typing import Callable, Dict, List, Optional, Tuple

from twisted.internet import defer

from etcdmirror.guards import DeleteLimit, Deletions, check_deletes
from etcdmirror.keys import INDEX_ROOT, KeyMapper, is_under
from etcdmirror.roles import ReplicaWriter, SourceReader

log = logging.getLogger(__name__)

#: TTLs on the two sides are read a moment apart; closer than this is "equal".
TTL_TOLERANCE = 2


@dataclass(frozen=True)
class NodeState:
    """What a reader can observe of one node."""

    dir: bool
    value: Optional[str] = None
    ttl: Optional[int] = None
    #: etcd v3: the key's lease (0: none); its TTL is :attr:`ttl`.
    lease: int = 0


@dataclass
class Plan:
    """The writes and deletes that turn the destination into the source."""

    writes: List[Tuple[str, NodeState, Optional[NodeState]]] = field(default_factory=list)
    deletes: List[Tuple[str, NodeState]] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.writes) + len(self.deletes)


@dataclass
class Snapshot:
    """A flattened tree and the index it was read at."""

    nodes: Dict[str, NodeState]
    etcd_index: int
    cluster_id: Optional[str]


@dataclass
class ResyncReport:
    etcd_index: int
    cluster_id: Optional[str]
    source_keys: int
    writes: int
    deletes: int
    #: The snapshot's nodes that carry a TTL (for the TTL keeper).
    ttl_nodes: Dict[str, NodeState] = field(default_factory=dict)


def _depth(key: str) -> Tuple[int, str]:
    return (key.count("/"), key)


def _ancestors(key: str) -> List[str]:
    """``/a/b/c`` -> ``['/a', '/a/b']``."""
    parts = key.split("/")
    return ["/".join(parts[:i]) for i in range(2, len(parts))]


def _ttl_differs(a: NodeState, b: NodeState) -> bool:
    if (a.ttl is None) != (b.ttl is None):
        return True
    return a.ttl is not None and abs(a.ttl - b.ttl) > TTL_TOLERANCE


def _ours(key: str, mapper: KeyMapper) -> bool:
    """A destination key of the image, which a resync may write or delete."""
    return (is_under(key, mapper.dst_root) and key != "/"
            and not is_under(key, INDEX_ROOT)
            and not mapper.ignored(mapper.to_src(key)))


def make_plan(source: Dict[str, NodeState], destination: Dict[str, NodeState],
              mapper: KeyMapper, compare_ttl: bool = True) -> Plan:
    """Pure diff of two flattened trees (source keys, destination keys).

    ``compare_ttl=False`` looks only at presence, dir-ness and value (what
    ``etcd-mirror-verify`` reports); a resync also refreshes drifted TTLs.
    """
    wanted: Dict[str, NodeState] = {}
    for key, node in source.items():
        if not mapper.ignored(key):
            wanted[mapper.to_dst(key)] = node

    plan = Plan()
    # Directories deleted as a whole: nothing below them needs deleting.
    covered = set()
    for key in sorted(wanted, key=_depth):
        if key == "/":
            continue
        node, have = wanted[key], destination.get(key)
        if (have is None or have.dir != node.dir
                or (compare_ttl and _ttl_differs(node, have))):
            plan.writes.append((key, node, have))
            if have is not None and have.dir and not node.dir:
                covered.add(key)  # a dir that becomes a file goes first
        elif not node.dir and have.value != node.value:
            plan.writes.append((key, node, have))

    # A directory that holds an ignored key is never deleted as a whole.
    holds_kept = set()
    for key in destination:
        if is_under(key, mapper.dst_root) and not _ours(key, mapper):
            holds_kept.update(_ancestors(key))
    for key in sorted(destination, key=_depth):
        if key in wanted or not _ours(key, mapper):
            continue
        if covered.intersection(_ancestors(key)):
            continue
        node = destination[key]
        if node.dir and key in holds_kept:
            continue
        plan.deletes.append((key, node))
        if node.dir:
            covered.add(key)
    return plan


def count_deletions(plan: Plan, source: Dict[str, NodeState],
                    destination: Dict[str, NodeState], mapper: KeyMapper) -> Deletions:
    """The keys (not directories) ``plan`` takes from the replica ``destination``.

    A deleted directory takes every key below it (``plan.deletes`` holds only
    the top one), and so does a directory that becomes a key; a key that
    becomes a directory is gone too.
    """
    removed = {key for key, _ in plan.deletes}
    removed.update(key for key, node, have in plan.writes
                   if have is not None and have.dir != node.dir)
    gone = sorted(key for key, node in destination.items()
                  if removed and not node.dir
                  and (key in removed or removed.intersection(_ancestors(key))))
    return Deletions(
        keys=gone,
        replica_keys=sum(1 for key, node in destination.items()
                         if not node.dir and _ours(key, mapper)),
        source_keys=sum(1 for key, node in source.items()
                        if not node.dir and not mapper.ignored(key)))


def as_held(replica: ReplicaWriter, snapshot: Snapshot) -> Snapshot:
    """The source's ``snapshot`` as ``replica`` can hold it (an etcd v3 replica of a
    v2 source: no directories), so that only real differences are compared."""
    held = getattr(replica, "as_held", None)
    if held is None:
        return snapshot
    return Snapshot(held(snapshot.nodes), snapshot.etcd_index, snapshot.cluster_id)


#: How a resync runs each request: ``retry(what, side, operation)``.  The
#: controller passes its retrying wrapper, so that one transient error costs
#: one request again, not the whole resync from a new snapshot.
Retry = Callable[[str, str, Callable[[], defer.Deferred]], defer.Deferred]


def no_retry(what: str, side: str, operation: Callable[[], defer.Deferred]) -> defer.Deferred:
    """Run ``operation`` once; fires with its result."""
    return operation()


@defer.inlineCallbacks
def resync(source: SourceReader, replica: ReplicaWriter, mapper: KeyMapper,
           retry: Retry = no_retry, log_writes: bool = True,
           max_deletes: Optional[DeleteLimit] = None, refuse_empty_source: bool = False):
    """Reconcile the replica's image of the source prefix; fires with a :class:`ResyncReport`.

    Before writing anything, fails with :class:`~etcdmirror.guards.ResyncRefused`
    when the plan deletes more replica keys than ``max_deletes`` allows (None:
    no limit), or, with ``refuse_empty_source``, when the source has no key
    while the replica would lose some.
    """
    src = as_held(replica, (yield retry(f"resync: reading the source under "
                                        f"{mapper.src_prefix!r}", "source", source.snapshot)))
    dst = yield retry(f"resync: reading the destination under {mapper.dst_root!r}",
                      "destination", replica.snapshot)
    plan = make_plan(src.nodes, dst.nodes, mapper)
    deletions = count_deletions(plan, src.nodes, dst.nodes, mapper)
    log.info(
        "resync: source has %d nodes under %s at index %d; writing %d, deleting %d "
        "on the destination under %s (the deletes take %s)",
        len(src.nodes), mapper.src_prefix, src.etcd_index, len(plan.writes),
        len(plan.deletes), mapper.dst_root, deletions.share(),
    )
    check_deletes(deletions, max_deletes, refuse_empty_source, src.etcd_index, mapper)
    yield replica.write_plan(plan, retry, log_writes)
    return ResyncReport(src.etcd_index, src.cluster_id, len(src.nodes),
                        len(plan.writes), len(plan.deletes),
                        {key: node for key, node in src.nodes.items() if node.ttl is not None})
