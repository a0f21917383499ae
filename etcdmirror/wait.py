"""The read-your-writes barrier's limits, shared by ``/wait`` (:mod:`etcdmirror.web`)
and its clients."""

#: ``/wait``'s timeout when none is given (seconds).
DEFAULT_TIMEOUT = 30.0
#: The largest ``/wait`` timeout: the server cuts a larger one to this.
MAX_TIMEOUT = 300.0
