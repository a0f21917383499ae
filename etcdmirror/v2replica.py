"""An etcd v2 prefix as the mirror's :class:`~etcdmirror.roles.ReplicaWriter`.

Events are replayed by the :class:`~etcdmirror.applier.EventApplier`, their
writes on the client's ordered lane (:meth:`EtcdClient.ordered`).  A
resync's plan is carried out here: etcd v2 cannot change a node's type in
place (a key becoming a directory is a delete, then a write), and setting a
directory that exists is "Not a file" (error 102), so a retried directory
write sets its TTL with ``prevExist=true`` instead.

A plan's writes need no order but one: a directory (with its TTL, or in
place of a key) before anything below it.  So directories are written a
level at a time, then every key, then the deletes, each step
:data:`RESYNC_CONCURRENCY` requests at a time.
"""

import logging
from functools import partial
from itertools import groupby
from typing import Optional

import etcd
from twisted.internet import defer

from etcdmirror.applier import EventApplier, replica_ttl
from etcdmirror.bounded import run_bounded
from etcdmirror.client import EtcdClient
from etcdmirror.keys import KeyMapper
from etcdmirror.pipeline import PIPELINE_DEPTH
from etcdmirror.resync import NodeState, Plan, Retry, no_retry
from etcdmirror.v2source import read_snapshot

log = logging.getLogger(__name__)

#: Resync requests in flight at once (the destination pool keeps 8 connections).
RESYNC_CONCURRENCY = 8


class V2ReplicaWriter:
    """Writes the image of the source prefix under the destination prefix."""

    api = "v2"

    def __init__(self, client: EtcdClient, mapper: KeyMapper,
                 pipeline: int = PIPELINE_DEPTH) -> None:
        self.client = client
        self.mapper = mapper
        self.display = client.cluster.display
        #: Events on their way to the destination at once (:mod:`etcdmirror.pipeline`):
        #: ``pipeline``, on one connection to ``http://``; one at a time to ``https://``.
        self.in_flight = pipeline if client.pipelines else 1
        self.applier = EventApplier(client.ordered(), mapper)

    def position(self) -> defer.Deferred:
        """Fires with the destination's index and cluster id (a plain read)."""
        return self.client.probe()

    def apply(self, event, replaying: bool = False) -> defer.Deferred:
        """Fires with the event's outcome; see :meth:`EventApplier.apply`."""
        return self.applier.apply(event, replaying)

    def snapshot(self) -> defer.Deferred:
        """Fires with the destination's tree under the destination root (quorum read)."""
        return read_snapshot(self.client, self.mapper.dst_root)

    @defer.inlineCallbacks
    def write_plan(self, plan: Plan, retry: Retry = no_retry, log_writes: bool = True):
        """Carry out a plan: directories parents-first, then keys, then deletes.

        Fires with None.  Every step is idempotent.  Each key written (with
        ``log_writes``) and each key deleted is logged at INFO: a resync that
        deletes keys leaves a trail of which.
        """
        write = partial(self._write, retry=retry, log_writes=log_writes)
        dirs = [w for w in plan.writes if w[1].dir]  # in depth order (make_plan)
        for _, level in groupby(dirs, key=lambda w: w[0].count("/")):
            yield run_bounded([partial(write, *w) for w in level], RESYNC_CONCURRENCY)
        yield run_bounded([partial(write, *w) for w in plan.writes if not w[1].dir],
                          RESYNC_CONCURRENCY)
        yield run_bounded([partial(self._delete, key, node, retry)
                           for key, node in plan.deletes], RESYNC_CONCURRENCY)

    @defer.inlineCallbacks
    def _write(self, key: str, node: NodeState, have: Optional[NodeState], retry: Retry,
               log_writes: bool):
        if have is not None and have.dir != node.dir:
            yield retry(f"resync: deleting {key!r}", "destination",
                        lambda: self._delete_quietly(key, have))
        ttl = None if node.ttl is None else replica_ttl(node.ttl)
        if node.dir:
            yield retry(f"resync: writing directory {key!r}", "destination",
                        lambda: self._write_dir(key, ttl))
        else:
            yield retry(f"resync: writing {key!r}", "destination",
                        lambda: self.client.put(key, node.value, ttl=ttl))
        if log_writes:
            log.info("resync: wrote %s", key)

    @defer.inlineCallbacks
    def _delete(self, key: str, node: NodeState, retry: Retry):
        yield retry(f"resync: deleting {key!r}", "destination",
                    lambda: self._delete_quietly(key, node))
        log.info("resync: deleted %s%s", key, " (and everything below it)" if node.dir else "")

    @defer.inlineCallbacks
    def _write_dir(self, key: str, ttl: Optional[int]):
        """Create the directory, or set its TTL when it exists (a retry may find it)."""
        try:
            yield self.client.put(key, dir=True, ttl=ttl)
        except etcd.EtcdNotFile:
            yield self.client.put(key, dir=True, ttl=ttl, prev_exist=True)

    @defer.inlineCallbacks
    def _delete_quietly(self, key: str, node: NodeState):
        try:
            yield self.client.delete(key, recursive=node.dir, dir=node.dir)
        except etcd.EtcdKeyNotFound:
            pass
