"""Transient faults on real etcd: retried with backoff, replication resumes, nothing lost.

Each test breaks something a production mirror meets (a destination or
source restart, a dead endpoint in the list, a cluster member going away, a
quiet prefix) while the source keeps changing, then checks that the
destination ends exactly equal to the source.  Every wait is a poll with a
deadline; faults are observed through the mirror's HTTP interface.
"""

import threading
import urllib.request


from etcdmirror.localetcd import free_port
from tests.helpers import V2, persisted_index, wait_for, wait_same

PREFIX = "/conftool"
DST_ROOT = "/replica" + PREFIX


def same(src, dst, src_prefix=PREFIX, dst_root=DST_ROOT, timeout=30.0):
    return wait_same(src, dst, src_prefix, dst_root, timeout)



def churn(client, count, tag, prefix=PREFIX):
    """``count`` source changes: sets, overwrites, deletes, dirs, recursive deletes."""
    for i in range(count):
        step = i % 10
        if step in (3, 7):
            client.delete(f"{prefix}/k{i % 4}")  # a 404 when absent is no event: fine
        elif step == 5:
            client.set(f"{prefix}/dir{i % 3}/sub/x", f"{tag}-{i}")
        elif step == 9:
            client.delete(f"{prefix}/dir{(i + 1) % 3}", recursive=True)
        else:
            client.set(f"{prefix}/k{i % 4}", f"{tag}-{i}")


def write_retrying(client, key, value):
    """A set that survives a leader change: retried until etcd acknowledges it."""
    def attempt():
        status, _, _ = client.set(key, value)
        return status in (200, 201)
    wait_for(attempt, timeout=20, message=f"write of {key} acknowledged")


def etcd_metric(url, name):
    """One unlabelled sample of an etcd server's own /metrics."""
    with urllib.request.urlopen(url + "/metrics", timeout=5) as r:
        for line in r.read().decode().splitlines():
            if line.startswith(name + " "):
                return float(line.split()[1])
    raise AssertionError(f"{name} not in {url}/metrics")


def error_samples(m):
    """All non-zero ``etcdmirror_errors_total`` samples, as text lines."""
    return [line for line in m.metrics().splitlines()
            if line.startswith("etcdmirror_errors_total") and float(line.rpartition(" ")[2])]


def healthz(m):
    return m.get("/healthz")[0]


# -- destination faults -------------------------------------------------------


def test_destination_down_then_back(src, dst, etcd_dst, mirror):
    src.set(PREFIX + "/seed", "1")
    m = mirror(src.url, dst.url, "--reload", "--src-prefix", PREFIX)
    same(src, dst)

    etcd_dst.stop()
    churn(src, 10, "a")
    wait_for(lambda: m.status()["state"] == "retrying", message="state retrying")
    churn(src, 40, "b")
    assert healthz(m) == 503
    status = m.status()
    assert status["state"] == "retrying" and status["healthy"] is False
    assert status["last_error"], status
    assert m.metric("etcdmirror_retries_total", 'side="destination"') > 0

    etcd_dst.restart()
    last = src.index()
    m.wait_index(last, timeout=60)
    same(src, dst)
    wait_for(m.healthy, message="healthy again")
    assert m.status()["state"] == "replicating"
    assert m.metric("etcdmirror_retries_total", 'side="destination"') > 0
    wait_for(lambda: persisted_index(dst) == last, message="index persisted")
    assert m.proc.poll() is None


# -- source faults -------------------------------------------------------------


def test_source_restart_resumes(src, dst, etcd_src, mirror):
    churn(src, 10, "seed")
    m = mirror(src.url, dst.url, "--reload", "--src-prefix", PREFIX)
    same(src, dst)

    etcd_src.restart()  # nothing written while it was down
    churn(src, 30, "after")
    m.wait_index(src.index(), timeout=60)
    same(src, dst)
    wait_for(m.healthy, message="healthy again")
    assert m.metric("etcdmirror_retries_total", 'side="source"') > 0
    assert m.metric("etcdmirror_resyncs_total", 'reason="index_cleared"') == 0


def test_source_back_after_several_backoffs(src, dst, etcd_src, mirror):
    src.set(PREFIX + "/seed", "1")
    m = mirror(src.url, dst.url, "--reload", "--src-prefix", PREFIX)
    same(src, dst)

    etcd_src.stop()
    wait_for(lambda: m.metric("etcdmirror_retries_total", 'side="source"') >= 3,
             timeout=30, message="three source retries")
    status = m.status()
    assert status["state"] == "retrying" and status["last_error"]
    assert healthz(m) == 503

    etcd_src.restart()
    churn(src, 30, "back")
    m.wait_index(src.index(), timeout=60)
    same(src, dst)
    wait_for(m.healthy, message="healthy again")


def test_first_source_endpoint_dead(src, dst, mirror):
    churn(src, 10, "seed")
    dead = f"http://127.0.0.1:{free_port()}"
    m = mirror(f"{dead},{src.url}", dst.url, "--reload", "--src-prefix", PREFIX)
    same(src, dst)  # the reload went through the second endpoint
    churn(src, 20, "live")
    m.wait_index(src.index())
    same(src, dst)
    assert m.healthy()


def test_source_cluster_member_stops_mid_stream(src, dst, etcd_factory, mirror):
    cluster = etcd_factory.cluster(3)
    writer = V2(cluster.members[1].url)
    reader = V2(cluster.members[2].url)
    write_retrying(writer, PREFIX + "/seed", "1")
    # The mirror starts on the first endpoint, the member we will stop.
    m = mirror(cluster.url, dst.url, "--reload", "--src-prefix", PREFIX)
    same(reader, dst)

    done = []
    errors = []

    def burst():
        try:
            for i in range(80):
                write_retrying(writer, f"{PREFIX}/b{i % 12}", f"v{i}")
                done.append(i)
        except Exception as e:  # reported by the main thread
            errors.append(e)

    thread = threading.Thread(target=burst, daemon=True)
    thread.start()
    try:
        wait_for(lambda: len(done) >= 20 or errors, message="burst under way")
        cluster.members[0].stop()
    finally:
        thread.join(60)
    assert not thread.is_alive() and not errors, errors
    write_retrying(writer, PREFIX + "/last", "done")
    tree = same(reader, dst)
    assert tree["last"] == (False, "done", False)
    assert m.proc.poll() is None
    wait_for(m.healthy, message="healthy again")


# -- idle watches --------------------------------------------------------------


def test_idle_watch_is_normal(src, dst, etcd_src, mirror):
    src.set(PREFIX + "/seed", "1")
    m = mirror(src.url, dst.url, "--reload", "--src-prefix", PREFIX,
               "--watch-idle-timeout", "0.5")
    same(src, dst)
    # Count the watch requests etcd receives: several idle periods go by
    # without any write anywhere.
    watches = etcd_metric(etcd_src.url, "etcd_debugging_store_watch_requests_total")
    wait_for(lambda: etcd_metric(etcd_src.url, "etcd_debugging_store_watch_requests_total")
             >= watches + 4, timeout=30, message="four more watch registrations")
    assert m.healthy()
    assert m.status()["state"] == "replicating"
    assert error_samples(m) == []
    assert m.metric("etcdmirror_retries_total", 'side="source"') == 0
    assert m.status()["last_error"] is None

    src.set(PREFIX + "/later", "yes")
    tree = same(src, dst)
    assert tree["later"] == (False, "yes", False)
    assert error_samples(m) == []
    assert m.healthy()


def test_idle_watch_advances_to_source_index(src, dst, mirror):
    src.set(PREFIX + "/seed", "1")
    m = mirror(src.url, dst.url, "--reload", "--src-prefix", PREFIX,
               "--watch-idle-timeout", "0.5")
    same(src, dst)
    start = m.status()["replica_index"]
    for round_ in range(3):
        for i in range(5):
            src.set(f"/other/r{round_}/k{i}", "x")  # outside the prefix
        target = src.index()
        wait_for(lambda: m.status()["replica_index"] >= target, timeout=15,
                 message=f"replica index reaching the source index {target}")
        assert m.status()["replica_index"] == target
    assert m.status()["replica_index"] > start
    assert m.metric("etcdmirror_replicated_events_total") == 0
    assert dst.tree("/replica/other") == {}
    assert error_samples(m) == []
    assert m.healthy()
    src.set(PREFIX + "/after", "1")
    m.wait_index(src.index())
    same(src, dst)
