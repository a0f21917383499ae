"""Several local etcd servers forming one cluster, for the failover tests.

Only the tests need a multi-member cluster (the demo and the benchmark run
single servers), so this lives here and not in the shipped package.  Each
member is an ordinary :class:`etcdmirror.localetcd.LocalEtcd` that is given
its ports, the initial cluster and the cluster token through its constructor.
"""

import uuid
from typing import List, Optional, Sequence

from etcdmirror.localetcd import LocalEtcd, free_ports, wait_all_ready

__all__ = ["LocalEtcdCluster"]

# How many times a first start is tried with fresh ports when a member could
# not bind (another process took a port between free_ports() and etcd's bind).
_BIND_RETRIES = 3


class LocalEtcdCluster:
    """``size`` etcd members on 127.0.0.1 forming one cluster.

    Each entry of :attr:`members` is a :class:`LocalEtcd`, so a single member
    can be stopped, killed, paused or restarted to test failover.  Restarting
    one member needs the others (a quorum) up; restart the whole cluster with
    :meth:`restart`.
    """

    def __init__(
        self,
        size: int = 3,
        name: str = "etcd",
        binary: str = "etcd",
        extra_args: Sequence[str] = (),
    ) -> None:
        if size < 1:
            raise ValueError("a cluster needs at least one member")
        self.name = name
        self.size = size
        self.binary = binary
        self.extra_args = list(extra_args)
        # Until a first start succeeds, members whose ports were taken are
        # replaced by new ones on other ports.
        self._started = False
        self.members: List[LocalEtcd] = self._new_members()

    def _new_members(self) -> List[LocalEtcd]:
        ports = free_ports(2 * self.size)
        names = ["%s%d" % (self.name, i) for i in range(self.size)]
        initial = ",".join("%s=http://127.0.0.1:%d" % (n, ports[2 * i + 1])
                           for i, n in enumerate(names))
        # A unique token keeps members of different test clusters from ever
        # joining each other, even if ports get reused.
        token = "etcdmirror-%s" % uuid.uuid4().hex
        return [
            LocalEtcd(name=n, binary=self.binary, extra_args=self.extra_args,
                      client_port=ports[2 * i], peer_port=ports[2 * i + 1],
                      initial_cluster=initial, cluster_token=token)
            for i, n in enumerate(names)
        ]

    @property
    def urls(self) -> List[str]:
        return [m.url for m in self.members]

    @property
    def url(self) -> str:
        """All client URLs, comma-separated (the form etcd clients accept)."""
        return ",".join(self.urls)

    @property
    def pids(self) -> List[Optional[int]]:
        return [m.pid for m in self.members]

    def start(self, timeout: float = 20.0) -> "LocalEtcdCluster":
        """Start all members at once, then wait until each serves v2 reads.

        Members are spawned before any is waited for: a member only becomes
        ready once a leader is elected, which needs a quorum of the others.
        """
        if all(m.running for m in self.members):
            return self
        attempt = 0
        while True:
            attempt += 1
            try:
                for m in self.members:
                    if not m.running:
                        m.spawn()
                wait_all_ready(self.members, timeout)
                self._started = True
                return self
            except RuntimeError:
                bind_failed = any(m.bind_failed() for m in self.members)
                self.stop()
                if self._started or not bind_failed or attempt >= _BIND_RETRIES:
                    raise
                # The surviving members already wrote a cluster made of the
                # old ports to disk; start over with new members.
                for m in self.members:
                    m.cleanup()
                self.members = self._new_members()

    def stop(self, timeout: float = 10.0) -> None:
        """Stop every member, one after the other.

        Deliberately sequential: on SIGTERM a leader first hands leadership
        to a connected peer; if all members get SIGTERM at once that peer is
        going away too and the leader waits for a timeout (~7s measured on
        etcd 3.4), while stopping one by one takes well under a second.
        """
        for m in self.members:
            m.stop(timeout)

    def kill(self) -> None:
        for m in self.members:
            m.kill()

    def restart(self, timeout: float = 20.0) -> "LocalEtcdCluster":
        """Stop all members and start them again with their ports and data."""
        self.stop()
        return self.start(timeout)

    def cleanup(self) -> None:
        """Stop and remove every member's data: a later start is a new cluster."""
        self.stop()
        for m in self.members:
            m.cleanup()
        self._started = False

    def __enter__(self) -> "LocalEtcdCluster":
        return self.start()

    def __exit__(self, *exc_info) -> None:
        self.cleanup()

    def __repr__(self) -> str:
        return "<LocalEtcdCluster %s %r>" % (self.name, self.members)
