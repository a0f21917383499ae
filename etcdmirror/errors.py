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
