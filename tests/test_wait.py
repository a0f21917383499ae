"""The read-your-writes barrier: ``/wait`` and ``etcd-mirror-wait`` on a real mirror
between real etcd servers.  (Its timing, states and parameters with a Clock:
tests/test_web.py.)"""

import json
import threading
import time
import urllib.error
import urllib.request

from etcdmirror.localetcd import free_port
from etcdmirror.wait import mirror_url
from tests.helpers import run_command, wait_same

PREFIX = "/conftool"
IMAGE = "/replica" + PREFIX


def ask(m, query, method="GET", timeout=60.0):
    """``(code, json)`` of a request to the mirror's /wait (the raw body if not JSON)."""
    request = urllib.request.Request(f"http://127.0.0.1:{m.port}/wait?{query}", method=method)
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    try:
        with opener.open(request, timeout=timeout) as answer:
            code, body = answer.status, answer.read()
    except urllib.error.HTTPError as e:
        code, body = e.code, e.read()
    return code, json.loads(body) if body.startswith(b"{") else body


def wait_cmd(*args):
    return run_command("wait_main", *args)


def test_wait_answers_once_the_replica_holds_the_write(src, dst, mirror):
    src.set(PREFIX + "/pool/host0", "pooled")
    m = mirror(src.url, dst.url, "--reload", "--src-prefix", PREFIX)
    # The source is quiet: the next write gets the next index.
    index = src.index() + 1
    result = {}
    asking = threading.Thread(
        target=lambda: result.update(answer=ask(m, f"index={index}&timeout=60")))
    asking.start()
    asking.join(0.3)
    assert asking.is_alive(), f"answered before the write: {result}"
    written = src.set(PREFIX + "/pool/host1", "depooled")
    assert written.index == index
    asking.join(60)
    code, doc = result["answer"]
    assert code == 200 and doc["reached"] and doc["replica_index"] >= index, doc
    assert doc["waited_seconds"] >= 0.3
    # The replica holds it as soon as /wait says so: no polling here.
    assert dst.get(IMAGE + "/pool/host1")[1]["node"]["value"] == "depooled"


def test_wait_for_the_last_of_many_writes_means_all_of_them(src, dst, mirror):
    m = mirror(src.url, dst.url, "--reload", "--src-prefix", PREFIX)
    for i in range(100):
        last = src.set(f"{PREFIX}/bulk/k{i}", str(i))
    code, doc = ask(m, f"index={last.index}&timeout=60")
    assert code == 200 and doc["replica_index"] >= last.index
    assert dst.tree(IMAGE) == src.tree(PREFIX)


def test_an_index_the_prefix_never_sees_is_reached_on_progress(src, dst, mirror):
    """A write outside the prefix: reached when the idle watch is renewed."""
    m = mirror(src.url, dst.url, "--reload", "--src-prefix", PREFIX,
               "--watch-idle-timeout", "0.5")
    written = src.set("/elsewhere/x", "1")
    code, doc = ask(m, f"index={written.index}&timeout=30")
    assert code == 200 and doc["replica_index"] >= written.index, doc


def test_an_index_far_ahead_times_out_with_504(src, dst, mirror):
    m = mirror(src.url, dst.url, "--reload", "--src-prefix", PREFIX)
    src.set(PREFIX + "/a", "1")
    wait_same(src, dst, PREFIX, IMAGE)
    ahead = src.index() + 1_000_000
    started = time.monotonic()
    code, doc = ask(m, f"index={ahead}&timeout=0.5")
    took = time.monotonic() - started
    assert code == 504 and not doc["reached"] and doc["state"] == "replicating"
    assert 0 < doc["replica_index"] < ahead and doc["replica_index"] >= src.index() - 1
    assert doc["waited_seconds"] >= 0.5 and took >= 0.5
    assert took < 30, "the timeout was not kept"
    # timeout=0 answers at once.
    assert ask(m, f"index={ahead}&timeout=0")[0] == 504


def test_bad_parameters_are_400_and_nothing_but_get_and_head(src, dst, mirror):
    m = mirror(src.url, dst.url, "--reload", "--src-prefix", PREFIX)
    for query, bad in (("", "'index' is required"), ("index=abc", "'index'"),
                       ("index=-3", "'index'"), ("index=1&timeout=x", "'timeout'")):
        code, doc = ask(m, query)
        assert code == 400 and bad in doc["error"], (query, doc)
    assert ask(m, "index=0", method="HEAD") == (200, b"")
    assert ask(m, "index=0", method="POST")[0] == 405
    assert ask(m, "index=0", method="PUT")[0] == 501   # twisted.web: a method it does not know


def test_etcd_mirror_wait_exit_statuses(src, dst, mirror):
    m = mirror(src.url, dst.url, "--reload", "--src-prefix", PREFIX)
    written = src.set(PREFIX + "/pool/host2", "depooled")
    result = wait_cmd("--port", str(m.port), "--index", str(written.index), "--timeout", "60")
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"holds source index {written.index}" in result.stdout
    assert dst.get(IMAGE + "/pool/host2")[1]["node"]["value"] == "depooled"

    ahead = written.index + 1_000_000
    result = wait_cmd("--host", "127.0.0.1", "--port", str(m.port), "--index", str(ahead),
                      "--timeout", "0.3")
    assert result.returncode == 1, result.stdout + result.stderr
    replica = m.status()["replica_index"]
    assert f"replica index {replica}" in result.stdout and "timed out" in result.stdout

    # Nobody there, and something that is not a mirror (etcd itself): 2.
    result = wait_cmd("--port", str(free_port()), "--index", "1", "--timeout", "1")
    assert result.returncode == 2 and "could not ask the mirror" in result.stderr
    etcd_port = src.url.rsplit(":", 1)[1]
    result = wait_cmd("--port", etcd_port, "--index", "1", "--timeout", "1")
    assert result.returncode == 2 and "did not answer as an etcd-mirror" in result.stderr


def test_etcd_mirror_wait_usage_errors_exit_2():
    for args, flag in ((["--timeout", "1"], "--index"), (["--index", "-1"], "--index"),
                       (["--index", "1", "--timeout", "301"], "--timeout"),
                       (["--index", "1", "--timeout", "nan"], "--timeout"),
                       (["--index", "1", "--port", "0"], "--port")):
        result = wait_cmd(*args)
        assert result.returncode == 2 and flag in result.stderr, (args, result.stderr)


def test_etcd_mirror_wait_asks_the_port_etcd_mirror_serves_by_default():
    from etcdmirror.cli import main, wait_main

    def default(command, name):
        return next(p.default for p in command.params if p.name == name)

    assert default(wait_main, "port") == default(main, "port")
    assert mirror_url("127.0.0.1", 8000) == "http://127.0.0.1:8000"
    assert mirror_url("::1", 8000) == "http://[::1]:8000"
    assert mirror_url("mirror.example.org", 80) == "http://mirror.example.org:80"
