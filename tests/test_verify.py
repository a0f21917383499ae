"""etcd-mirror-verify and the daemon's periodic verify, on real etcd."""


from etcdmirror.localetcd import free_port
from tests.helpers import run_command, wait_for

PREFIX = "/conftool"
IMAGE = "/replica/conftool"


def verify(*args):
    return run_command("verify_main", *args)


def test_identical_trees_exit_0(src, dst):
    for key, value in (("/a", "1"), ("/d/b", "2")):
        src.set(PREFIX + key, value)
        dst.set(IMAGE + key, value)
    src.set(PREFIX + "/t", "ttl", ttl=300)
    dst.set(IMAGE + "/t", "ttl", ttl=100)  # TTLs are not compared
    result = verify("--src-prefix", PREFIX, src.url, dst.url)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "identical" in result.stdout


def test_differences_are_listed_and_exit_1(src, dst):
    src.set(PREFIX + "/same", "1")
    dst.set("/conftool/same", "1")
    src.set(PREFIX + "/missing", "m")
    src.set(PREFIX + "/changed", "new")
    dst.set("/conftool/changed", "old")
    src.set(PREFIX + "/typ/child", "c")
    dst.set("/conftool/typ", "a file")
    dst.set("/conftool/extra/deep", "e")
    src.set(PREFIX + "/locks/l", "src")  # ignored: never reported
    dst.set("/conftool/locks/mine", "dst")
    result = verify("--strip", "--src-prefix", PREFIX, "--dst-prefix", "/conftool",
                    "--src-ignore-keys-regex", PREFIX + "/locks(/.*)?", src.url, dst.url)
    assert result.returncode == 1
    out = result.stdout
    assert "missing /conftool/missing" in out
    assert "differs /conftool/changed: source value 'new', destination value 'old'" in out
    assert "type    /conftool/typ: source a directory, destination value 'a file'" in out
    assert "extra   /conftool/extra (and everything below it)" in out
    assert "locks" not in out
    assert "5 differences" in out


def test_unreachable_cluster_exit_2(src):
    result = verify(src.url, f"http://127.0.0.1:{free_port()}")
    assert result.returncode == 2 and "could not compare" in result.stderr


def test_usage_error_exit_2():
    result = verify("--src-prefix", "relative", "http://h:1", "http://h:2")
    assert result.returncode == 2 and "--src-prefix" in result.stderr


def test_periodic_verify_exports_divergent_keys(src, dst, mirror):
    src.set(PREFIX + "/a", "1")
    m = mirror(src.url, dst.url, "--reload", "--src-prefix", PREFIX,
               "--verify-interval", "0.3")
    wait_for(lambda: m.status()["divergent_keys"] == 0)
    assert m.metric("etcdmirror_divergent_keys") == 0
    # Busy replication is not divergence.
    for i in range(100):
        src.set(f"{PREFIX}/busy{i}", str(i))
    dst.set(IMAGE + "/intruder", "written behind the mirror's back")
    wait_for(lambda: m.metric("etcdmirror_divergent_keys") == 1)
    assert "extra   /replica/conftool/intruder" in m.log()
    # Events in flight during a round were never reported as differences.
    assert "verify: missing" not in m.log() and "verify: differs" not in m.log()
    dst.delete(IMAGE + "/intruder")
    wait_for(lambda: m.metric("etcdmirror_divergent_keys") == 0)
