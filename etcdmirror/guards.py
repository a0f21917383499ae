"""Safety checks that make the mirror stop instead of replicating garbage.

Each check compares what the destination remembers with what the source is
now, and raises :class:`~etcdmirror.errors.MirrorFatal` with the reason and
the operator's way out.  They run before replication starts; the identity and
rollback checks also run whenever the source's headers look suspicious.
"""

from typing import Optional

from etcdmirror.errors import MirrorFatal
from etcdmirror.keys import KeyMapper


def check_not_a_loop(source_id: Optional[str], destination_id: Optional[str],
                     mapper: KeyMapper) -> None:
    """Same cluster on both sides and overlapping prefixes: we would feed ourselves."""
    if source_id and source_id == destination_id and mapper.overlaps(mapper.src_prefix):
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
