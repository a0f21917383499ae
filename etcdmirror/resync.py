"""Bring the destination to one consistent snapshot of the source, hitlessly.

etcd-mirror 0.0.12 reloaded by deleting the whole destination prefix and then
loading the source into it: for the minutes that took, every confd or pybal
reading the replica saw an empty or half-filled tree.  Here we compare the two
trees and write only the difference: keys that differ are overwritten in
place, keys the source lacks are deleted, keys present on both sides are never
removed.  Ignored keys are left exactly as they are.

The source snapshot is a recursive ``quorum=true`` GET, so a member cut off
from its quorum cannot hand us stale state; its ``X-Etcd-Index`` is the index
from which replication continues.
"""

import logging
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, List, Optional, Tuple

import etcd
from twisted.internet import defer

from etcdmirror.applier import replica_ttl
from etcdmirror.client import EtcdClient
from etcdmirror.keys import INDEX_ROOT, KeyMapper, is_under

log = logging.getLogger(__name__)

#: TTLs on the two sides are read a moment apart; closer than this is "equal".
TTL_TOLERANCE = 2


@dataclass(frozen=True)
class NodeState:
    """What a reader can observe of one node."""

    dir: bool
    value: Optional[str] = None
    ttl: Optional[int] = None


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


def flatten(result: Any) -> Dict[str, NodeState]:
    """Every node of a recursive GET answer (dirs included) by key."""
    nodes = {}
    for node in result.get_subtree():
        if node.key is None:  # the root of the keyspace has no key
            continue
        ttl = int(node.ttl) if node.ttl is not None else None
        nodes[node.key] = NodeState(bool(node.dir), None if node.dir else node.value, ttl)
    return nodes


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

    def ours(key: str) -> bool:
        return (is_under(key, mapper.dst_root) and key != "/"
                and not is_under(key, INDEX_ROOT)
                and not mapper.ignored(mapper.to_src(key)))

    # A directory that holds an ignored key is never deleted as a whole.
    holds_kept = set()
    for key in destination:
        if is_under(key, mapper.dst_root) and not ours(key):
            holds_kept.update(_ancestors(key))
    for key in sorted(destination, key=_depth):
        if key in wanted or not ours(key):
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


@defer.inlineCallbacks
def snapshot(client: EtcdClient, key: str, quorum: bool = True):
    """Recursive read of ``key`` as a :class:`Snapshot` (empty when missing)."""
    try:
        answer = yield client.get(key, recursive=True, quorum=quorum)
    except etcd.EtcdKeyNotFound as e:
        return Snapshot({}, int(getattr(e, "etcd_index", 0) or 0), None)
    return Snapshot(flatten(answer.result), answer.etcd_index, answer.cluster_id)


#: How a resync runs each request: ``retry(what, side, operation)``.  The
#: controller passes its retrying wrapper, so that one transient error costs
#: one request again, not the whole resync from a new snapshot.
Retry = Callable[[str, str, Callable[[], defer.Deferred]], defer.Deferred]


def _once(what: str, side: str, operation: Callable[[], defer.Deferred]) -> defer.Deferred:
    return operation()


@defer.inlineCallbacks
def execute(plan: Plan, destination: EtcdClient, retry: Retry = _once,
            log_writes: bool = True) -> defer.Deferred:
    """Carry out a plan: writes parents-first, then deletes.  Every step is idempotent.

    Each key written (with ``log_writes``) and each key deleted is logged at
    INFO: a resync that deletes keys leaves a trail of which.
    """
    for key, node, have in plan.writes:
        if have is not None and have.dir != node.dir:
            # A file became a dir or the other way round: etcd v2 cannot
            # change a node's type in place.
            yield retry(f"resync: deleting {key!r}", "destination",
                        lambda: _delete_quietly(destination, key, have))
        ttl = None if node.ttl is None else replica_ttl(node.ttl)
        if node.dir:
            yield retry(f"resync: writing directory {key!r}", "destination",
                        lambda: _write_dir(destination, key, ttl))
        else:
            yield retry(f"resync: writing {key!r}", "destination",
                        lambda: destination.put(key, node.value, ttl=ttl))
        if log_writes:
            log.info("resync: wrote %s", key)
    for key, node in plan.deletes:
        yield retry(f"resync: deleting {key!r}", "destination",
                    lambda: _delete_quietly(destination, key, node))
        log.info("resync: deleted %s%s", key, " (and everything below it)" if node.dir else "")


@defer.inlineCallbacks
def _write_dir(destination: EtcdClient, key: str, ttl: Optional[int]):
    """Create the directory, or set its TTL when it exists (a retry may find it)."""
    try:
        yield destination.put(key, dir=True, ttl=ttl)
    except etcd.EtcdNotFile:
        yield destination.put(key, dir=True, ttl=ttl, prev_exist=True)


@defer.inlineCallbacks
def _delete_quietly(destination: EtcdClient, key: str, node: NodeState):
    try:
        yield destination.delete(key, recursive=node.dir, dir=node.dir)
    except etcd.EtcdKeyNotFound:
        pass


@defer.inlineCallbacks
def resync(source: EtcdClient, destination: EtcdClient, mapper: KeyMapper,
           retry: Retry = _once, log_writes: bool = True):
    """Reconcile the destination image of the source prefix; fires with a report."""
    src = yield retry(f"resync: reading the source under {mapper.src_prefix!r}", "source",
                      lambda: snapshot(source, mapper.src_prefix))
    dst = yield retry(f"resync: reading the destination under {mapper.dst_root!r}",
                      "destination", lambda: snapshot(destination, mapper.dst_root))
    plan = make_plan(src.nodes, dst.nodes, mapper)
    log.info(
        "resync: source has %d nodes under %s at index %d; writing %d, deleting %d "
        "on the destination under %s",
        len(src.nodes), mapper.src_prefix, src.etcd_index, len(plan.writes),
        len(plan.deletes), mapper.dst_root,
    )
    yield execute(plan, destination, retry, log_writes)
    return ResyncReport(src.etcd_index, src.cluster_id, len(src.nodes),
                        len(plan.writes), len(plan.deletes),
                        {key: node for key, node in src.nodes.items() if node.ttl is not None})
