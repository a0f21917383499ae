"""Tests of the test infrastructure itself, against the real etcd binary.

If LocalEtcd or the V2 helper misbehaved (leaked processes, lost data on
restart, mangled keys), every mirror test built on them would be suspect.
"""

import json
import os
import socket
import threading
import urllib.error
import urllib.request

import pytest

from etcdmirror import localetcd
from etcdmirror.localclient import Timeout
from etcdmirror.localetcd import LocalEtcd, free_port
from tests.helpers import V2, wait_for
from tests.localcluster import LocalEtcdCluster


def _pid_gone(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    return False


def _refused(url: str) -> bool:
    try:
        urllib.request.urlopen(url + "/version", timeout=2).read()
    except urllib.error.URLError as err:
        return isinstance(err.reason, ConnectionRefusedError)
    return False


def _leader(cluster: LocalEtcdCluster) -> LocalEtcd:
    for m in cluster.members:
        with urllib.request.urlopen(m.url + "/v2/stats/self", timeout=5) as r:
            if json.load(r)["state"] == "StateLeader":
                return m
    raise AssertionError("no leader")


# -- LocalEtcd ----------------------------------------------------------------


def test_free_port_is_bindable():
    port = free_port()
    assert 0 < port < 65536
    with socket.socket() as s:
        s.bind(("127.0.0.1", port))


def test_start_stop_cleanup():
    etcd = LocalEtcd(name="t1")
    try:
        etcd.start()
        assert etcd.url == "http://127.0.0.1:%d" % etcd.client_port
        pid = etcd.pid
        assert pid and not _pid_gone(pid)
        with urllib.request.urlopen(etcd.url + "/version") as r:
            assert json.load(r)["etcdserver"]
        client = V2(etcd.url)
        assert client.set("/k", "v")[0] == 201
        assert client.get("/k")[1]["node"]["value"] == "v"
        assert os.path.exists(os.path.join(etcd.data_dir, "etcd.log"))

        etcd.stop()
        assert etcd.pid is None and not etcd.running
        assert _pid_gone(pid), "stop() must reap the process"
        assert _refused(etcd.url)
        etcd.stop()  # idempotent
        data_dir = etcd.data_dir
        assert os.path.isdir(data_dir), "stop() keeps the data"
    finally:
        etcd.cleanup()
    assert not os.path.exists(data_dir)
    assert _pid_gone(pid)
    etcd.cleanup()  # idempotent too


def test_context_manager_cleans_up():
    with LocalEtcd(name="ctx") as etcd:
        pid, data_dir = etcd.pid, etcd.data_dir
        assert V2(etcd.url).get("/")[0] == 200
    assert _pid_gone(pid)
    assert not os.path.exists(data_dir)


def test_restart_keeps_data_and_url(etcd_factory):
    etcd = etcd_factory()
    client = V2(etcd.url)
    client.set("/dir/a", "1")
    url, pid = etcd.url, etcd.pid

    etcd.restart()
    assert etcd.url == url
    assert etcd.pid != pid and _pid_gone(pid)
    assert client.get("/dir/a")[1]["node"]["value"] == "1"

    # A crash (SIGKILL) does not lose acknowledged writes either.
    client.set("/dir/b", "2")
    pid = etcd.pid
    etcd.kill()
    assert _pid_gone(pid) and not etcd.running
    etcd.start()
    assert etcd.url == url
    assert client.tree("/dir") == {"a": (False, "1", False), "b": (False, "2", False)}


def test_pause_resume(etcd_factory):
    etcd = etcd_factory()
    etcd.pause()
    try:
        with pytest.raises(OSError):  # socket timeout, wrapped or not
            V2(etcd.url, timeout=0.5).get("/")
    finally:
        etcd.resume()
    assert V2(etcd.url).get("/")[0] == 200
    # A paused server can still be stopped promptly.
    etcd.pause()
    pid = etcd.pid
    etcd.stop(timeout=5)
    assert _pid_gone(pid)


def test_stop_is_by_pid(etcd_factory):
    a = etcd_factory("a")
    b = etcd_factory("b")
    a.stop()
    assert _refused(a.url)
    assert b.running and V2(b.url).get("/")[0] == 200


def test_start_failure_reports_log_and_leaves_nothing(etcd_factory):
    etcd = etcd_factory(start=False, extra_args=["--no-such-flag"])
    with pytest.raises(RuntimeError) as err:
        etcd.start(timeout=10)
    assert "no-such-flag" in str(err.value)
    assert not etcd.running


def test_start_retries_when_a_chosen_port_was_taken(monkeypatch, etcd_factory):
    # Simulate the free_port() race: another process binds the port first.
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        real, calls = localetcd.free_ports, []

        def racy_free_ports(count):
            ports = real(count)
            if not calls:
                ports[0] = taken.getsockname()[1]
            calls.append(ports)
            return ports

        monkeypatch.setattr(localetcd, "free_ports", racy_free_ports)
        etcd = etcd_factory()
        assert len(calls) == 2
        assert etcd.client_port == calls[1][0] != taken.getsockname()[1]
        assert "address already in use" in open(etcd.log_path).read()
        assert V2(etcd.url).get("/")[0] == 200


def test_given_data_dir_is_kept_and_env_ignored(tmp_path, monkeypatch):
    # etcd reads ETCD_* variables; one in the caller's environment (here a
    # config file that would override every flag) must not leak in.
    monkeypatch.setenv("ETCD_CONFIG_FILE", str(tmp_path / "missing.yml"))
    data_dir = str(tmp_path / "data")
    with LocalEtcd(name="kept", data_dir=data_dir) as etcd:
        V2(etcd.url).set("/k", "v")
    assert os.path.isdir(os.path.join(data_dir, "member"))
    # Same data dir, new instance (new ports): the data is still there.
    with LocalEtcd(name="kept", data_dir=data_dir) as etcd:
        assert V2(etcd.url).get("/k")[1]["node"]["value"] == "v"
    assert os.path.isdir(data_dir)


# -- LocalEtcdCluster ---------------------------------------------------------


def test_cluster(etcd_factory):
    cluster = etcd_factory.cluster(3)
    assert len(cluster.members) == 3 == len(set(cluster.urls))
    assert cluster.url == ",".join(cluster.urls)
    clients = [V2(u) for u in cluster.urls]
    ids = {c.get("/")[2]["X-Etcd-Cluster-Id"] for c in clients}
    assert len(ids) == 1, "members must form one cluster"

    clients[0].set("/k", "v1")
    for c in clients:
        assert c.get("/k", quorum=True)[1]["node"]["value"] == "v1"

    # Stop the leader: the two others elect a new one and keep serving
    # quorum reads and writes.
    leader = _leader(cluster)
    survivors = [V2(m.url) for m in cluster.members if m is not leader]
    leader.stop()
    assert _refused(leader.url)
    wait_for(lambda: survivors[0].set("/k", "v2")[0] == 200, message="write after failover")
    for c in survivors:
        wait_for(
            lambda: c.get("/k", quorum=True)[1]["node"]["value"] == "v2",
            message="quorum read on %s" % c.url,
        )

    # The old leader comes back at the same URL and catches up.
    leader.restart()
    back = V2(leader.url)
    wait_for(lambda: back.get("/k")[1]["node"]["value"] == "v2", message="catch up")

    data_dirs = [m.data_dir for m in cluster.members]
    pids = cluster.pids
    cluster.cleanup()
    assert all(_pid_gone(p) for p in pids)
    assert not any(os.path.exists(d) for d in data_dirs)


def test_cluster_start_retries_with_new_members_when_a_port_was_taken(monkeypatch,
                                                                    etcd_factory):
    from tests import localcluster

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        real, calls = localcluster.free_ports, []

        def racy_free_ports(count):
            ports = real(count)
            if not calls:
                ports[2] = taken.getsockname()[1]  # the second member's client port
            calls.append(ports)
            return ports

        monkeypatch.setattr(localcluster, "free_ports", racy_free_ports)
        cluster = etcd_factory.cluster(2)
        assert len(calls) == 2
        assert [m.client_port for m in cluster.members] == [calls[1][0], calls[1][2]]
        assert all(V2(u).get("/")[0] == 200 for u in cluster.urls)


def test_given_ports_are_used_and_never_replaced(etcd_factory):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        client_port, peer_port = taken.getsockname()[1], free_port()
        etcd = etcd_factory(start=False, client_port=client_port, peer_port=peer_port)
        with pytest.raises(RuntimeError, match="address already in use"):
            etcd.start(timeout=10)
        assert (etcd.client_port, etcd.peer_port) == (client_port, peer_port)
    etcd.start()
    assert etcd.url == "http://127.0.0.1:%d" % client_port
    assert V2(etcd.url).get("/")[0] == 200


# -- the V2 helper ------------------------------------------------------------

WEIRD_KEYS = [
    "/w/with space",
    "/w/per%cent",
    "/w/what?x=1",
    "/w/hash#frag",
    "/w/plus+sign",
    "/w/amp&eq=",
    "/w/ünïcødé/☃",
]


def test_v2_weird_keys_round_trip(src):
    for key in WEIRD_KEYS:
        value = "v %+&=?#\nü " + key
        status, body, _ = src.set(key, value)
        assert status == 201, body
        assert body["node"]["key"] == key
        status, body, _ = src.get(key)
        assert (status, body["node"]["value"]) == (200, value)
    tree = src.tree("/w")
    assert tree == {
        "with space": (False, "v %+&=?#\nü /w/with space", False),
        "per%cent": (False, "v %+&=?#\nü /w/per%cent", False),
        "what?x=1": (False, "v %+&=?#\nü /w/what?x=1", False),
        "hash#frag": (False, "v %+&=?#\nü /w/hash#frag", False),
        "plus+sign": (False, "v %+&=?#\nü /w/plus+sign", False),
        "amp&eq=": (False, "v %+&=?#\nü /w/amp&eq=", False),
        "ünïcødé": (True, None, False),
        "ünïcødé/☃": (False, "v %+&=?#\nü /w/ünïcødé/☃", False),
    }
    for key in WEIRD_KEYS:
        assert src.delete(key)[0] == 200
    assert src.tree("/w") == {"ünïcødé": (True, None, False)}


def test_v2_operations(src):
    status, body, headers = src.get("/missing")
    assert status == 404 and body["errorCode"] == 100
    assert int(headers["X-Etcd-Index"]) == src.index()

    before = src.index()
    assert src.set("/d", dir=True)[0] == 201
    assert src.set("/d/t", "x", ttl=100)[0] == 201
    status, body, _ = src.create_in_order("/q", "first")
    assert status == 201 and body["action"] == "create"
    assert body["node"]["key"] == "/q/%020d" % body["node"]["createdIndex"]
    assert src.index() == before + 3

    # Conditional writes: errors are returned, not raised; bools encoded.
    status, body, _ = src.set("/d/t", "y", prevExist=False)
    assert status == 412 and body["errorCode"] == 105
    status, body, _ = src.set("/d/t", "y", prevValue="x", ttl=100)
    assert status == 200 and body["action"] == "compareAndSwap"

    tree = src.tree("/")
    assert tree["d"] == (True, None, False)
    assert tree["d/t"] == (False, "y", True)
    assert src.tree("/d/t") == {"": (False, "y", True)}
    assert src.tree("/nope") == {}

    assert src.delete("/d")[0] == 403  # a dir needs dir=true or recursive=true
    assert src.delete("/d", recursive=True)[0] == 200
    assert src.set("/e", dir=True)[0] == 201
    assert src.delete("/e", dir=True)[0] == 200
    assert set(src.tree("/")) == {"q", next(k for k in tree if k.startswith("q/"))}


def test_v2_timeout_is_an_oserror_that_tells_a_watch_s_index(src):
    src.set("/a", "1")
    index = src.index()
    with V2(src.url, timeout=0.3) as client:
        with pytest.raises(Timeout) as err:
            client.get("/w", wait=True, waitIndex=index + 1)
        assert isinstance(err.value, OSError)
        assert err.value.index == index  # from the headers etcd sent at once
        assert client.get("/a")[1]["node"]["value"] == "1"  # a new connection


def test_v2_shared_by_threads(src):
    # Each thread has its own keep-alive connection: answers never mix.
    errors = []

    def work(n):
        try:
            for i in range(30):
                assert src.set("/t%d/k" % n, "%d-%d" % (n, i))[0] in (200, 201)
                assert src.get("/t%d/k" % n)[1]["node"]["value"] == "%d-%d" % (n, i)
        except BaseException as e:  # reported below
            errors.append(e)

    threads = [threading.Thread(target=work, args=(n,)) for n in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert not errors
    assert len(src._connections) == 1 + 4  # the fixture's wipe() and the threads
    src.close()
    assert src.get("/t0/k")[0] == 200  # usable after close()


def test_src_fixture_starts_from_empty_keyspace(src):
    assert src.tree("/") == {}


def test_wait_for():
    calls = []
    assert wait_for(lambda: calls.append(1) or len(calls) >= 3, timeout=5) is True

    def boom():
        raise ValueError("nope")

    with pytest.raises(AssertionError, match="my condition.*nope"):
        wait_for(boom, timeout=0.2, message="my condition")
    with pytest.raises(AssertionError, match="last value: 0"):
        wait_for(lambda: 0, timeout=0.1)
