"""What flows from the source reader to the replica writer, in etcd-neutral words.

The words are etcd's own (``action``, ``node``, ``prevNode``,
``modifiedIndex``): an :class:`Event` is what happened to one node at one
index of the source; :class:`WatchProgress` says that nothing happened under
the prefix up to an index; an :class:`Outcome` is what applying an event did
on the replica, and the :class:`ApplyError` family is why it could not be
applied.  The source reader builds events (for etcd v2: the answer parser,
:mod:`etcdmirror.answers`), the replica writer applies them
(:mod:`etcdmirror.applier`), and the controller only passes them on.
"""

from dataclasses import dataclass
from enum import Enum
from typing import Any, Dict, Optional


@dataclass(frozen=True)
class Node:
    """A node as an answer carries it, under etcd's own field names.

    ``key`` and ``modifiedIndex`` are None only for the root directory in a
    read: etcd leaves them out there, and gives every other node both (the
    parser refuses an answer whose node has a key but no ``modifiedIndex``).
    """

    key: Optional[str]
    value: Optional[str]
    dir: bool
    ttl: Optional[int]
    expiration: Optional[str]
    modifiedIndex: Optional[int]


@dataclass(frozen=True)
class Event(Node):
    """What an answer says happened: ``action`` on the node, which was ``prevNode`` before.

    For a watch, the source's event; for a write, what the write did.
    ``prevNode`` is None when the node did not exist before (or etcd did not
    say).
    """

    action: str
    prevNode: Optional[Node]

    @classmethod
    def from_payload(cls, payload: Dict[str, Any]) -> "Event":
        """The event in a decoded answer (``action``, ``node``, optional ``prevNode``)."""
        node, prev = payload["node"], payload.get("prevNode")
        prev_node = Node(prev.get("key"), prev.get("value"), bool(prev.get("dir")),
                         prev.get("ttl"), prev.get("expiration"),
                         prev.get("modifiedIndex")) if prev else None
        return cls(node.get("key"), node.get("value"),
                   # Read as python-etcd reads it (its issue 38: a write's
                   # answer may leave "dir" out): a directory stays one.
                   bool(node.get("dir")) or (prev_node is not None and prev_node.dir),
                   node.get("ttl"), node.get("expiration"), node.get("modifiedIndex"),
                   payload["action"], prev_node)


@dataclass
class WatchProgress:
    """A watch that stayed pending: nothing under the key in ``[waitIndex, etcd_index]``."""

    etcd_index: int
    cluster_id: Optional[str]


class Outcome(Enum):
    """What applying an event did; the value is its ``outcome`` metric label."""

    APPLIED = "applied"
    #: The destination already held what the event leaves behind.
    REPLAYED = "replayed"
    #: The key matches the ignore regex: nothing was written.
    IGNORED = "ignored"
    #: The destination's copy had run out on its TTL; the event wrote it again.
    TTL_REWRITE = "ttl_rewrite"


WRITE_ACTIONS = ("set", "create", "update", "compareAndSwap")
DELETE_ACTIONS = ("delete", "compareAndDelete", "expire")
ACTIONS = WRITE_ACTIONS + DELETE_ACTIONS


class ApplyError(Exception):
    """An event that cannot be applied; the mirror must stop or resync."""

    def __init__(self, message: str, event: Optional[Event] = None) -> None:
        super().__init__(message)
        self.event = event


class UnknownAction(ApplyError):
    """The source sent an action this mirror does not know how to replay."""


class Divergence(ApplyError):
    """The destination holds something the source never had at this point."""


class ExpiredEarly(ApplyError):
    """A directory with a TTL expired on the destination before the source renewed it.

    Destination TTLs count from when the mirror applied the node; a mirror
    that was down or behind for longer than the TTL sees its copy expire
    while the source's lives on.  The directory's children went with it, so
    only a resync brings the destination back.
    """


def describe(event: Event) -> str:
    """One line naming the event, for logs and errors."""
    kind = "dir" if event.dir else "key"
    return f"{event.action} of {kind} {event.key!r} at index {event.modifiedIndex}"
