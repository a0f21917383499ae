"""Shared pytest fixtures: real local etcd servers and v2 clients for them.

Every etcd process is started through these fixtures (or, in
test_localetcd.py, directly) and stopped at teardown; a session fixture
fails the run if any etcd process started during it is still alive, because
a leaked server would keep ports and CPU on the CI machine and could make
later tests pass or fail for the wrong reason.
"""

import os
import signal
from typing import Dict, Iterator, List, Set, Union

import pytest

from etcdmirror.localetcd import LocalEtcd
from tests.helpers import V2
from tests.localcluster import LocalEtcdCluster


def _etcd_descendants() -> Set[int]:
    """Pids of live etcd processes descended from this pytest process.

    Catches processes the fixtures never saw (restarted members get a new
    pid, tests may create LocalEtcd directly).  Read from /proc: no psutil.
    """
    parents: Dict[int, int] = {}
    names: Dict[int, str] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open("/proc/%s/stat" % entry) as f:
                stat = f.read()
        except OSError:
            continue  # exited meanwhile
        # "pid (comm) state ppid ..." - comm may contain spaces/parens.
        comm = stat[stat.index("(") + 1 : stat.rindex(")")]
        fields = stat[stat.rindex(")") + 2 :].split()
        if fields[0] == "Z":
            continue  # a zombie is dead, only not reaped yet
        parents[int(entry)] = int(fields[1])
        names[int(entry)] = comm
    me = os.getpid()
    found = set()
    for pid in parents:
        p, seen = pid, 0
        while p in parents and p != me and seen < 64:
            p, seen = parents[p], seen + 1
        if p == me and names[pid] == "etcd":
            found.add(pid)
    return found


def _is_our_live_etcd(pid: int) -> bool:
    """True if ``pid`` is a live etcd child of this process.

    Checking the parent matters: a recorded pid may have been reused by an
    unrelated etcd (another user's, on a shared machine) that we must not kill.
    """
    try:
        with open("/proc/%d/stat" % pid) as f:
            stat = f.read()
    except OSError:
        return False
    comm = stat[stat.index("(") + 1 : stat.rindex(")")]
    state, ppid = stat[stat.rindex(")") + 2 :].split()[:2]
    return comm == "etcd" and state != "Z" and int(ppid) == os.getpid()


def pytest_configure(config) -> None:
    config.addinivalue_line(
        "markers", "soak: a long scenario; scripts/test runs it in one of its two passes")


@pytest.fixture(scope="session")
def etcd_pids() -> Set[int]:
    """Pids of etcd processes started by the fixtures in this session."""
    return set()


@pytest.fixture(scope="session", autouse=True)
def no_leaked_etcd(etcd_pids):
    """At the end of the session, fail if an etcd we started still runs."""
    yield
    leaked = {p for p in etcd_pids if _is_our_live_etcd(p)} | _etcd_descendants()
    for pid in leaked:
        # Don't leave them behind for the next run, then report.
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    assert not leaked, "etcd processes still running after the tests: %s" % sorted(leaked)


def _started(etcd: LocalEtcd, pids: Set[int]) -> LocalEtcd:
    etcd.start()
    pids.add(etcd.pid)
    return etcd


@pytest.fixture(scope="module")
def etcd_src(etcd_pids):
    """A source etcd server shared by the tests of one module."""
    etcd = LocalEtcd(name="src")
    try:
        yield _started(etcd, etcd_pids)
    finally:
        etcd.cleanup()


@pytest.fixture(scope="module")
def etcd_dst(etcd_pids):
    """A destination etcd server shared by the tests of one module."""
    etcd = LocalEtcd(name="dst")
    try:
        yield _started(etcd, etcd_pids)
    finally:
        etcd.cleanup()


def _fresh_client(etcd: LocalEtcd, pids: Set[int]) -> Iterator[V2]:
    # The server is shared by the module: bring it back if an earlier test
    # paused or stopped it, and start each test from an empty keyspace.
    etcd.resume()
    if not etcd.running:
        _started(etcd, pids)
    with V2(etcd.url) as client:
        client.wipe()
        yield client


@pytest.fixture
def src(etcd_src, etcd_pids) -> Iterator[V2]:
    """Client for ``etcd_src``; the keyspace is emptied before each test."""
    yield from _fresh_client(etcd_src, etcd_pids)


@pytest.fixture
def dst(etcd_dst, etcd_pids) -> Iterator[V2]:
    """Client for ``etcd_dst``; the keyspace is emptied before each test."""
    yield from _fresh_client(etcd_dst, etcd_pids)


class EtcdFactory:
    """Starts extra servers for one test; everything is cleaned up after it.

    ``etcd_factory()`` -> started LocalEtcd (pass ``start=False`` to get it
    unstarted), ``etcd_factory.cluster(3)`` -> started LocalEtcdCluster.
    Keyword arguments go to the constructors.
    """

    def __init__(self, pids: Set[int]) -> None:
        self._pids = pids
        self._made: List[Union[LocalEtcd, LocalEtcdCluster]] = []

    def __call__(self, name: str = "extra", start: bool = True, **kwargs) -> LocalEtcd:
        etcd = LocalEtcd(name=name, **kwargs)
        self._made.append(etcd)  # before start: a failed start leaves a dir
        if start:
            _started(etcd, self._pids)
        return etcd

    def cluster(self, size: int = 3, name: str = "member", start: bool = True, **kwargs) -> LocalEtcdCluster:
        cluster = LocalEtcdCluster(size=size, name=name, **kwargs)
        self._made.append(cluster)
        if start:
            cluster.start()
            self._pids.update(p for p in cluster.pids if p is not None)
        return cluster

    def cleanup(self) -> None:
        errors = []
        for obj in reversed(self._made):
            try:
                obj.cleanup()
            except Exception as exc:  # clean up the rest before failing
                errors.append(exc)
        self._made.clear()
        if errors:
            raise errors[0]


@pytest.fixture
def etcd_factory(etcd_pids):
    """Factory for extra etcd servers/clusters, all cleaned up at teardown."""
    factory = EtcdFactory(etcd_pids)
    try:
        yield factory
    finally:
        factory.cleanup()


@pytest.fixture
def mirror(request):
    """Factory for real ``etcd-mirror`` processes; all are stopped at teardown.

    ``mirror(src_url, dst_url, *flags)`` starts one and waits until it is
    healthy (``healthy=False`` to not wait, ``start=False`` to not start).
    The mirror's log is printed when the test failed.
    """
    from tests.mirror_proc import MirrorFactory

    factory = MirrorFactory()
    yield factory
    rep = getattr(request.node, "rep_call", None)
    factory.cleanup(failed=bool(rep and rep.failed))


@pytest.hookimpl(tryfirst=True, hookwrapper=True)
def pytest_runtest_makereport(item, call):
    """Expose each phase's report on the item, so fixtures can see failures."""
    outcome = yield
    rep = outcome.get_result()
    setattr(item, "rep_" + rep.when, rep)
