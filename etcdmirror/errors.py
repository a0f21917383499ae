"""Errors that end replication, as types; the process's exit statuses, as names."""

#: Stopped on request.
EXIT_OK = 0
#: Stopped for a reason an operator must look at (systemd does not restart it).
EXIT_OPERATOR = 1
#: An internal error (EX_SOFTWARE): systemd restarts the mirror.
EXIT_CRASH = 70


class MirrorFatal(Exception):
    """Replication cannot go on without an operator: exit status 1.

    The message says what happened (key, index, cause) and what to do.
    """


#: Not a process exit status: :meth:`ReplicationController.run` fires with it
#: when the mirror lost the HA lock and stepped down (:mod:`etcdmirror.ha`).
STEPPED_DOWN = -1


class LostLease(Exception):
    """This mirror no longer holds the HA lock: it must not write the destination.

    Raised before a write is sent (the lease ran out on this host's clock) or
    when the index key was written by another mirror since we last did.
    Never retried: the holder steps down to standby.
    """
