"""The etcd v3 client (etcdmirror/v3client.py) against a real etcd's JSON gateway, and
its wire format (etcdmirror/v3wire.py) on its own.  The client's scenarios run in
their own process (tests/v3scenarios.py), each under a fresh prefix: the fixtures
empty the v2 keyspace, not the v3 one."""

import socket
import subprocess
import sys
import uuid

import pytest

from etcdmirror.v3wire import (
    V3Compacted, V3Error, V3NotFound, V3Unavailable, error_for, keys_below,
    prefix_range_end, watch_response)


def scenario(name, url):
    result = subprocess.run(
        [sys.executable, "-m", "tests.v3scenarios", name, url, "/t-" + uuid.uuid4().hex],
        capture_output=True, text=True, timeout=60, stdin=subprocess.DEVNULL)
    assert result.returncode == 0 and result.stdout.strip() == "ok", result.stderr[-3000:]


@pytest.mark.parametrize("name", ["kv", "txn", "leases", "watch", "mapping", "replica",
                                  "indexstore", "source", "resync"])
def test_the_client_on_a_real_etcd(src, name):
    scenario(name, src.url)


def test_auth_tokens_on_an_etcd_of_its_own(etcd_factory):
    scenario("auth", etcd_factory(name="v3auth").url)


def test_an_unreachable_endpoint_is_unavailable():
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    scenario("unreachable", f"http://127.0.0.1:{port}")


@pytest.mark.parametrize("prefix, end", [
    (b"/a/", b"/a0"), (b"a", b"b"), (b"a\xff", b"b"), (b"\xff\xff", b"\0"), (b"", b"\0")])
def test_prefix_range_end(prefix, end):
    assert prefix_range_end(prefix) == end


@pytest.mark.parametrize("path, expected", [
    (b"/a", (b"/a/", b"/a0")), (b"/a/", (b"/a/", b"/a0")), (b"/", (b"\0", b"\0"))])
def test_keys_below_a_path(path, expected):
    assert keys_below(path) == expected


@pytest.mark.parametrize("status, body, kind", [
    (400, {"error": "etcdserver: mvcc: required revision has been compacted", "code": 11},
     V3Compacted),
    (404, {"message": "etcdserver: requested lease not found", "code": 5}, V3NotFound),
    (503, {"message": "etcdserver: leader changed", "code": 14}, V3Unavailable),
    (504, {"message": "context deadline exceeded", "code": 4}, V3Unavailable),
    (400, {"message": "illegal base64 data", "code": 3}, V3Error),
])
def test_errors_become_types_that_name_the_call(status, body, kind):
    error = error_for(status, body, "/v3/kv/range on destination http://h:1")
    assert type(error) is kind and "/v3/kv/range on destination" in str(error)


def test_a_canceled_watch_says_where_history_starts():
    line = (b'{"result":{"header":{"cluster_id":"1","revision":"9"},"canceled":true,'
            b'"compact_revision":"7"}}')
    with pytest.raises(V3Compacted) as caught:
        watch_response(line, "/v3/watch")
    assert caught.value.compact_revision == 7
