"""What a source change becomes on an etcd v3 destination: one transaction.

A v3 destination takes each source change (one v3 revision, or one v2 event)
as **one transaction** that also moves the checkpoint key, so the data and
the checkpoint can never be apart after a crash: a change is applied exactly
once, and no replay horizon is needed (:mod:`etcdmirror.checkpoint` keeps one
for v2, whose writes are one key at a time).  The transaction:

* **compares** the checkpoint's value with the revision applied before (so
  a change applied already, whose answer was lost, is recognised, and two
  mirrors cannot interleave), and each key with what the source had before
  the change (its ``prev_kv`` or ``prevNode``; no key at all when there was
  none), so a replica written behind the mirror's back shows up as a failed
  compare instead of being overwritten (:mod:`etcdmirror.applier` does the
  same for v2);
* on **success**, writes the changes and the checkpoint;
* on **failure**, reads the checkpoint and the keys, for the verdict: the
  checkpoint at the revision is a change applied already; a key that
  already holds what the change leaves behind is no divergence either (a
  lease that ran out on the destination first, as a v2 TTL can); anything
  else is.

The v2 → v3 mapping (the migration path off etcd v2):

* a v2 key becomes the v3 key with the same path, after the prefix mapping
  (``--src-prefix``, ``--dst-prefix``, ``--strip`` and the ignore regex mean
  what they mean for v2), as UTF-8;
* v3 has no directories.  A v2 directory exists on the v3 side only through
  the keys under it: writing a directory writes nothing, and deleting one
  deletes every key under it.  An empty v2 directory is **skipped**, not
  recorded by a marker key: a marker would be a key with a made-up value in
  the application's v3 keyspace, which readers (confd, pybal) would list as
  data;
* a v2 TTL becomes a v3 lease: the change carries the TTL (:attr:`Change.ttl`)
  and the writer attaches the key to a lease (:mod:`etcdmirror.v3leases`);
* compareAndSwap and compareAndDelete compare the previous value, as every
  other change does.

etcd v2 hides ``/__replication`` (where the checkpoint keys live) from every
recursive read and watch; v3 hides nothing, so a v3 source's keys under it
(another mirror's checkpoint, on a source mirrored from or into) are never
replicated.

Keys are bytes in v3; a v3 key is mapped through the prefixes as text
(UTF-8, with any byte that is not UTF-8 kept as it is), so any key survives.
"""

from dataclasses import dataclass
from typing import Any, Dict, List, Optional, Tuple

from etcdmirror.events import DELETE_ACTIONS, Event
from etcdmirror.keys import INDEX_ROOT, KeyMapper, is_under
from etcdmirror.v3wire import (
    WatchEvent, compare_value, compare_version, keys_below, request_delete,
    request_put, request_range)


def text(key: bytes) -> str:
    return key.decode("utf-8", "surrogateescape")


def raw(key: str) -> bytes:
    return key.encode("utf-8", "surrogateescape")


@dataclass(frozen=True)
class Change:
    """One key's change on the destination: a put (``value`` not None) or a delete.

    ``before`` is what the destination must hold first: the value, or None
    for "no key".  ``below`` deletes every key under ``key`` too (a v2
    directory).  ``ttl`` (a v2 TTL) or ``source_lease`` (a v3 key's lease)
    asks the writer for a destination lease.
    """

    key: bytes
    value: Optional[bytes]
    before: Optional[bytes]
    below: bool = False
    ttl: Optional[int] = None
    source_lease: int = 0
    #: False when there is nothing to compare (a v2 directory).
    compared: bool = True


@dataclass(frozen=True)
class Revision:
    """What one source revision changed under the prefix: its events, in order.

    Named as the controller names a v2 event (``modifiedIndex``, ``key``,
    ``action``, ``dir``, ``value``), so it flows through the same loop.
    """

    modifiedIndex: int
    events: List[WatchEvent]

    @property
    def key(self) -> str:
        return text(self.events[0].kv.key) if self.events else ""

    @property
    def action(self) -> str:
        if len(self.events) != 1:
            return "txn"
        return "delete" if self.events[0].type == "DELETE" else "put"

    dir = False

    @property
    def value(self) -> Optional[str]:
        return text(self.events[0].kv.value) if len(self.events) == 1 else None


def v3_changes(events: List[WatchEvent], mapper: KeyMapper) -> List[Change]:
    """The destination changes for one source revision's events (ignored keys, and
    replication keys of another mirror, left out)."""
    changes = []
    for event in events:
        key = text(event.kv.key)
        if mapper.ignored(key) or is_under(key, INDEX_ROOT):
            continue
        before = event.prev_kv.value if event.prev_kv is not None else None
        value = None if event.type == "DELETE" else event.kv.value
        changes.append(Change(raw(mapper.to_dst(key)), value, before,
                              source_lease=event.kv.lease if value is not None else 0))
    return changes


def v2_changes(event: Event, mapper: KeyMapper) -> List[Change]:
    """The destination changes for one v2 event (none for a directory write)."""
    if mapper.ignored(event.key):
        return []
    key = raw(mapper.to_dst(event.key))
    prev = event.prevNode
    # No prevNode: the key did not exist on the source before (v2 says so for set
    # and create alike), so "no key" is what the destination must hold.
    before = _utf8(prev.value) if prev is not None and not prev.dir else None
    if event.action in DELETE_ACTIONS:
        if event.dir:
            return [Change(key, None, None, below=True, compared=False)]
        return [Change(key, None, before)]
    if event.dir:
        return []
    return [Change(key, _utf8(event.value or ""), before, ttl=event.ttl)]


def _utf8(value: Optional[str]) -> Optional[bytes]:
    return value.encode("utf-8") if value is not None else None


def ranges_below(path: bytes) -> List[Tuple[bytes, bytes]]:
    """The key ranges under ``path`` without the replication keys.

    Only the root covers them (a v2 delete of the source prefix itself with
    ``--strip`` into ``--dst-prefix /``): deleting the checkpoint in the
    transaction that writes it would be refused by etcd, and would lose it.
    """
    start, end = keys_below(path)
    index_start, index_end = keys_below(raw(INDEX_ROOT))
    if start <= index_start and (end == b"\0" or index_end <= end):
        return [(start, index_start), (index_end, end)]
    return [(start, end)]


def transaction(changes: List[Change], checkpoint_key: bytes, applied: Optional[int],
                revision: int, leases: Optional[Dict[bytes, int]] = None) -> Dict[str, Any]:
    """The body of the transaction that applies ``changes`` and moves the checkpoint
    from ``applied`` (None: no checkpoint yet) to ``revision``.

    ``leases`` maps a changed key to the destination lease it is written with.
    """
    leases = leases or {}
    compare = [compare_value(checkpoint_key, str(applied).encode("ascii"))
               if applied is not None else compare_version(checkpoint_key, 0)]
    success: List[Dict[str, Any]] = []
    failure = [request_range(checkpoint_key)]
    for change in changes:
        if change.compared:
            compare.append(compare_value(change.key, change.before)
                           if change.before is not None else compare_version(change.key, 0))
            failure.append(request_range(change.key))
        if change.value is not None:
            success.append(request_put(change.key, change.value, leases.get(change.key, 0)))
        else:
            success.append(request_delete(change.key))
            if change.below:
                success.extend(request_delete(*r) for r in ranges_below(change.key))
    success.append(request_put(checkpoint_key, str(revision).encode("ascii")))
    return {"compare": compare, "success": success, "failure": failure}
