"""Safety checks that make the mirror stop instead of replicating garbage.

Each check compares what the destination remembers with what the source is
now, and raises :class:`~etcdmirror.errors.MirrorFatal` with the reason and
the operator's way out.  They run before replication starts; the identity and
rollback checks also run whenever the source's headers look suspicious.

The deletion guard (:func:`check_deletes`) runs inside every resync, after the
plan is made and before anything is written: a source that reads empty or
nearly so (a wrong prefix, a source being rebuilt or restored) must not empty
the replica by itself.  consul-replicate users lost 127,739 keys that way.
An operator's ``--reload`` is not checked: it is the way to accept.
"""

import math
import re
from dataclasses import dataclass
from fractions import Fraction
from typing import Optional, Sequence

from etcdmirror.errors import MirrorFatal
from etcdmirror.keys import KeyMapper

#: How many keys of the replica a resync shows when it refuses.
SAMPLE_SIZE = 10

#: ``--max-resync-deletes``: a count, or a percentage (decimals allowed).
_LIMIT = re.compile(r"(?P<number>[0-9]+(?:\.[0-9]+)?)(?P<percent>%?)")


def check_not_a_loop(source_id: Optional[str], destination_id: Optional[str],
                     mapper: KeyMapper, same_keyspace: bool = True) -> None:
    """Same cluster on both sides and overlapping prefixes: we would feed ourselves.

    ``same_keyspace`` is False when the two sides are different APIs of one
    cluster (v2 -> v3): etcd keeps their keys apart, so nothing loops.
    """
    if (same_keyspace and source_id and source_id == destination_id
            and mapper.overlaps(mapper.src_prefix)):
        raise MirrorFatal(
            f"Source and destination are the same etcd cluster ({source_id}) and the "
            f"destination image {mapper.dst_root} overlaps the source prefix "
            f"{mapper.src_prefix}: the mirror would replicate its own writes. "
            "Use a destination prefix outside the source prefix.")


def check_not_rolled_back(index: int, source_index: int) -> None:
    """Our index is ahead of the source: it was rebuilt or restored from a backup."""
    if index > source_index:
        raise MirrorFatal(
            f"The replication index {index} is ahead of the source's current index "
            f"{source_index}: the source cluster was rebuilt or restored from a backup, "
            "and its events can no longer be matched with the replica. Check the "
            "source, then restart with --reload to resynchronise from it.")


def check_same_source(recorded: Optional[str], current: Optional[str], source: str) -> None:
    if recorded and current and recorded != current:
        raise MirrorFatal(
            f"The destination was replicated from etcd cluster {recorded}, but the source "
            f"{source} is cluster {current}. If the source was replaced on purpose, "
            "restart with --reload to resynchronise the replica from it.")


@dataclass(frozen=True)
class DeleteLimit:
    """How many replica keys an automatic resync may delete (``--max-resync-deletes``).

    ``N``: at most N keys (``0``: an automatic resync never deletes a key).
    ``N%``: at most N percent of the keys of the replica's image, rounded up,
    so that a small image may still lose one key; ``100%`` lifts the limit
    (but not the empty-source rule).
    """

    text: str
    amount: Fraction
    percent: bool

    @classmethod
    def parse(cls, text: str) -> "DeleteLimit":
        """``"50"`` or ``"10%"`` (decimals allowed: ``"2.5%"``); ValueError otherwise."""
        raw = text.strip()
        syntax = _LIMIT.fullmatch(raw)
        if not syntax or ("." in syntax["number"] and not syntax["percent"]):
            raise ValueError(f"{text!r} is not a number of keys (e.g. 50) or a percentage "
                             "of the replica's keys (e.g. 10%)")
        amount, percent = Fraction(syntax["number"]), bool(syntax["percent"])
        if percent and amount > 100:
            raise ValueError(f"{text!r} is more than 100%")
        return cls(raw, amount, percent)

    def allowed(self, replica_keys: int) -> int:
        """How many keys may go from a replica image of ``replica_keys`` keys."""
        if self.percent:
            return math.ceil(self.amount * replica_keys / 100)
        return int(self.amount)

    def __str__(self) -> str:
        return self.text


#: The default: a tenth of the replica.  Keys a config tree loses between two
#: automatic resyncs are a few at a time; a wrong prefix or a source being
#: rebuilt takes most of it.  Rounded up, so a small image may lose one key.
DEFAULT_MAX_RESYNC_DELETES = DeleteLimit.parse("10%")


@dataclass(frozen=True)
class Deletions:
    """What a resync's plan would take from the replica, counted in keys (not directories)."""

    #: Replica keys the plan removes, sorted: deleted, below a deleted directory,
    #: or replaced by a node of the other type.
    keys: Sequence[str]
    #: Keys of the mirror's image on the replica now (ignored keys not counted).
    replica_keys: int
    #: Keys the source snapshot holds for the image (ignored keys not counted).
    source_keys: int

    def share(self) -> str:
        """``"12 of the 40 keys (30%)"``."""
        percent = 100 * len(self.keys) / self.replica_keys if self.replica_keys else 0
        return f"{len(self.keys)} of the {self.replica_keys} keys ({percent:.3g}%)"


def n_keys(count: int) -> str:
    """``"1 key"``, ``"2 keys"``."""
    return f"{count} key" if count == 1 else f"{count} keys"


class ResyncRefused(MirrorFatal):
    """An automatic resync would delete too much of the replica; nothing was written."""

    def __init__(self, message: str, deletions: Deletions, why: str) -> None:
        super().__init__(message)
        self.deletions = deletions
        #: Why, in a few words: the empty source or the limit.
        self.why = why


def check_deletes(deletions: Deletions, limit: Optional[DeleteLimit],
                  refuse_empty_source: bool, source_index: int, mapper: KeyMapper) -> None:
    """Raise :class:`ResyncRefused` when a resync must not carry out its plan.

    ``refuse_empty_source``: a source snapshot without a single key while the
    replica would lose keys is refused whatever the limit.  ``limit`` None: no
    limit on the count (an operator's reload).
    """
    count = len(deletions.keys)
    if not count:
        return
    if refuse_empty_source and deletions.source_keys == 0:
        why = (f"the source snapshot at index {source_index} has no key under "
               f"{mapper.src_prefix}, and an automatic resync never empties the replica")
        accept = "if the source is meant to be empty, restart once with --reload"
    elif limit is not None and count > limit.allowed(deletions.replica_keys):
        why = (f"--max-resync-deletes {limit} allows at most "
               f"{n_keys(limit.allowed(deletions.replica_keys))}; source snapshot at index "
               f"{source_index}")
        accept = ("if these deletions are intended, restart once with --reload, or raise "
                  "--max-resync-deletes")
    else:
        return
    sample = list(deletions.keys[:SAMPLE_SIZE])
    more = f", ... (the first {len(sample)} of {count}, sorted)" if count > len(sample) else ""
    raise ResyncRefused(
        f"refused: it would delete {deletions.share()} of the replica under "
        f"{mapper.dst_root} ({why}): {', '.join(sample)}{more}. Nothing was written to the "
        f"replica. Check the source cluster and --src-prefix {mapper.src_prefix}; {accept}.",
        deletions, why)
