"""Which etcd API each side speaks, and the roles built for it.

``--src-api`` and ``--dst-api`` choose them (v2 and v2 by default: nothing
changes for a mirror that does not give them).  Three modes are supported:
v2 -> v2, v3 -> v3, and v2 -> v3, the migration path off etcd v2 (which can
run inside one cluster: its v2 and v3 keyspaces are separate).  v3 -> v2
would carry v3 data into the API etcd 3.6 removed, so it is refused.

The daemon and the companion commands (``etcd-mirror-verify``,
``etcd-mirror-freshness``, ``etcd-mirror-switchover``) build their clients
and roles here, so one mode means the same thing to all of them.
"""

from typing import Any, Optional, Tuple, Union

from twisted.internet import defer
from twisted.python.failure import Failure

from etcdmirror import answers
from etcdmirror.client import EtcdClient
from etcdmirror.endpoints import Cluster
from etcdmirror.indexstore import IndexStore
from etcdmirror.keys import KeyMapper
from etcdmirror.v2replica import V2ReplicaWriter
from etcdmirror.v2source import V2SourceReader
from etcdmirror.v3client import V3Client
from etcdmirror.v3indexstore import V3IndexStore
from etcdmirror.v3leases import LeaseKeeper, V2Lifetimes, V3Lifetimes
from etcdmirror.v3mapping import raw, text
from etcdmirror.v3replica import V3ReplicaWriter
from etcdmirror.v3source import V3SourceReader
from etcdmirror.v3wire import V3Unavailable

#: (source API, destination API) pairs a mirror can run.
MODES = (("v2", "v2"), ("v3", "v3"), ("v2", "v3"))


def mode_problem(src_api: str, dst_api: str) -> Optional[str]:
    """Why ``src_api`` -> ``dst_api`` cannot run, or None."""
    if (src_api, dst_api) in MODES:
        return None
    return (f"a {src_api} source cannot be mirrored into a {dst_api} destination; the "
            "modes are " + ", ".join(f"{a} -> {b}" for a, b in MODES))


def is_transient(failure: Union[Failure, BaseException]) -> bool:
    """Worth retrying with backoff, whichever API said it."""
    error = failure.value if isinstance(failure, Failure) else failure
    return answers.is_transient(error) or isinstance(error, V3Unavailable)


def v3_client(cluster: Cluster, reactor: Any, name: str, tls: Any = None,
              pool: Any = None) -> V3Client:
    return V3Client(cluster, reactor, pool, name=name, tls=tls)


def source_reader(api: str, client: Any, prefix: str, reactor: Any, watch: Any = None,
                  **hooks: Any) -> Any:
    """The :class:`~etcdmirror.roles.SourceReader` of ``client`` (an
    :class:`EtcdClient` for v2, a :class:`V3Client` for v3)."""
    if api == "v3":
        idle = watch.idle_timeout if watch is not None else 5.0
        return V3SourceReader(client, prefix, reactor, idle_timeout=idle, **hooks)
    return V2SourceReader(client, prefix, reactor, watch, **hooks)


def replica_and_checkpoint(api: str, client: Any, mapper: KeyMapper, pipeline: int = 1,
                           exclusive: bool = False, leases: Any = None) -> Tuple[Any, Any]:
    """The :class:`~etcdmirror.roles.ReplicaWriter` and the
    :class:`~etcdmirror.roles.Checkpoint` on the destination ``client``
    (``leases``: a v3 replica's :class:`~etcdmirror.v3leases.LeaseKeeper`)."""
    if api == "v3":
        writer = V3ReplicaWriter(client, mapper, leases, pipeline)
        return writer, V3IndexStore(writer, mapper)
    return (V2ReplicaWriter(client, mapper, pipeline),
            IndexStore(client, mapper, exclusive=exclusive))


def lease_keeper(src_api: str, source: Any, destination: V3Client, mapper: KeyMapper,
                 reactor: Any) -> LeaseKeeper:
    """The keeper of a v3 replica's leases, following ``source``'s leases or TTLs."""
    lifetimes = V3Lifetimes(source) if src_api == "v3" else V2Lifetimes(source)
    return LeaseKeeper(destination, lifetimes, mapper, reactor)


def client_for(api: str, cluster: Cluster, reactor: Any, name: str, tls: Any = None) -> Any:
    """A client of ``cluster`` for ``api``, with its own connections (the companion
    commands)."""
    if api == "v3":
        return v3_client(cluster, reactor, name, tls)
    return EtcdClient(cluster, reactor, name=name, tls=tls)


class TextKeys:
    """A v3 client seen as the v2 client's text keys: ``put`` and ``get_value``,
    for the heartbeat and ``etcd-mirror-freshness``, which need nothing more."""

    def __init__(self, client: V3Client) -> None:
        self.client = client

    def put(self, key: str, value: str) -> defer.Deferred:
        """Fires with the answer once ``key`` holds ``value``."""
        return self.client.put(raw(key), raw(value))

    @defer.inlineCallbacks
    def get_value(self, key: str):
        """Fires with the value of ``key``, or None when there is no such key."""
        found = yield self.client.range(raw(key))
        return text(found.kvs[0].value) if found.kvs else None
