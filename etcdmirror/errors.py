"""Errors that end replication, as types."""


class MirrorFatal(Exception):
    """Replication cannot go on without an operator: exit status 1.

    The message says what happened (key, index, cause) and what to do.
    """
