"""When the TTL keeper looks at the source, and what it reads: pure timing and grouping.

When the checks fall
--------------------
* ``lead`` seconds (1 s, or twice the last round's duration if longer)
  before the replica's copy runs out.  A client that renews its key more
  often than its TTL is caught here, every time.
* If the source had not moved, ``final_lead`` (0.4 s) before.  Every
  replica copy is written with ``TTL_GRACE`` (1 s) more than the source's
  remaining TTL, so this check falls after the source's own expiry: a renewal
  made at the very last moment is seen too.  If the source copy expired, its
  ``expire`` event removes the replica's.
* A renewal that still slips through (the source answered slowly, etcd
  removed the expired key late) is caught ``late`` (1 s) after the replica
  copy ran out: the keeper writes the key again with the value it had at the
  replica's index, counts it in ``etcdmirror_ttl_expired_late_total`` and
  logs a warning.  A TTL'd *directory* that ran out on the replica took its
  children with it, so the keeper asks the controller for a resync
  (``reason="ttl_expired"``) instead.
"""

import posixpath
from dataclasses import dataclass
from typing import Dict, List, Optional, Tuple

from etcdmirror.keys import is_under

#: Seconds before a replica copy runs out that the source is read first ...
LEAD = 1.0
#: (LEAD grows to twice the last round's duration, up to this.)
MAX_LEAD = 30.0
#: ... and a last time, if the source had not moved.
FINAL_LEAD = 0.4
#: Seconds after a replica copy ran out to look for a renewal that slipped through.
LATE = 1.0
#: Due checks this close together are done in one round.
BATCH_AHEAD = 0.25
#: At most this many nodes are checked in one round.
MAX_BATCH = 1000
#: This many due nodes in one directory are read with one GET of the directory.
GROUP_READS = 8


@dataclass(eq=False)
class Tracked:
    """One TTL'd source node and what is known of its replica copy."""

    key: str
    dir: bool
    #: The value at the replica's index (None for a directory).
    value: Optional[str]
    #: Lower bound of when the replica's copy runs out (local clock); None:
    #: not known, check at once.
    replica_expires: Optional[float]
    #: Not written again (if gone) before the mirror has applied this source index.
    not_before: int = 0
    #: When the source is read next for this node.
    due: float = 0.0


def next_check(now: float, replica_expires: float, lead: float = LEAD,
               final_lead: float = FINAL_LEAD, late: float = LATE) -> float:
    """When to read the source next for a replica copy running out at ``replica_expires``."""
    for before in (lead, final_lead):
        if replica_expires - before > now:
            return replica_expires - before
    return max(now, replica_expires) + late


def plan_reads(keys: List[str], prefix: str,
               group: int = GROUP_READS) -> List[Tuple[str, List[str]]]:
    """Which source keys to GET for ``keys``: ``(key to read, keys it answers)``.

    Keys sharing a parent directory under ``prefix`` are read through that
    directory when there are at least ``group`` of them.
    """
    by_parent: Dict[str, List[str]] = {}
    for key in keys:
        by_parent.setdefault(posixpath.dirname(key), []).append(key)
    reads: List[Tuple[str, List[str]]] = []
    for parent, children in by_parent.items():
        if len(children) >= group and is_under(parent, prefix):
            reads.append((parent, children))
        else:
            reads.extend((key, [key]) for key in children)
    return reads
