"""What a failure in the replication loop leads to: a resync, or a stop that says why.

An event that cannot be applied, or a resync that cannot finish, ends in
:class:`~etcdmirror.errors.MirrorFatal` (exit status 1, no restart by
systemd) with a message that names the event or the resync, the last applied
index and what the operator should do; where a resync repairs the replica
(and the operator allowed it), in the reason to resync for.
"""

import logging

import etcd

from etcdmirror.errors import MirrorFatal
from etcdmirror.events import ApplyError, Divergence, Event, ExpiredEarly, describe
from etcdmirror.guards import ResyncRefused
from etcdmirror.loopoptions import Options

log = logging.getLogger("etcdmirror.controller")


def history_lost_reason(error: Exception, index: int, options: Options) -> str:
    """The source's history no longer holds ``index`` (v2: a cleared index; v3: a
    compacted revision): the reason to resync for, or MirrorFatal (``--no-auto-resync``)."""
    message = (f"The current replication index {index} is not available anymore "
               f"in the etcd source cluster ({error}).")
    if not options.auto_resync:
        raise MirrorFatal(message + " Restart the process with --reload.")
    log.warning("%s Resynchronising from a snapshot.", message)
    return getattr(error, "resync_reason", "index_cleared")


def resync_reason(error: Exception, event: Event, index: int, options: Options) -> str:
    """Why to resync after ``event`` could not be applied (``error``), or MirrorFatal.

    ``index`` is the last applied one, for the operator.
    """
    if isinstance(error, Divergence):
        if options.on_divergence != "resync":
            raise MirrorFatal(
                f"{error} Replication stopped; last applied index {index}. Find "
                "what writes to the replica, then restart with --reload (or run "
                "with --on-divergence resync).")
        log.warning("%s Resynchronising from a snapshot (--on-divergence resync).", error)
        return "divergence"
    if isinstance(error, ExpiredEarly):
        log.warning("%s Resynchronising from a snapshot.", error)
        return "ttl_expired"
    if isinstance(error, ApplyError):
        raise MirrorFatal(f"{error} Replication stopped; last applied index {index}. "
                          "Check the destination, then restart with --reload.")
    raise MirrorFatal(f"could not apply {describe(event)} on the destination: {error}. "
                      f"Replication stopped; last applied index {index}.")


def resync_failure(error: Exception, reason: str, started_as: str, index: int) -> MirrorFatal:
    """The stop for a resync (for ``reason``, first started for ``started_as``) that failed."""
    if isinstance(error, ResyncRefused):
        what = reason if reason == started_as else f"{reason}, started as {started_as}"
        return MirrorFatal(
            f"Resync ({what}) {error} Replication stopped; last applied index {index}. "
            "The resync stays pending: every start without --reload checks again.")
    assert isinstance(error, etcd.EtcdException)
    return MirrorFatal(f"resync ({reason}) failed: {error}")
