"""What a pipelined writer would build on (issue 14), checked on a real etcd: requests
sent back to back on one connection, before any answer, are applied and answered one
after another, in the order sent.

A plain socket and a few lines of parsing here, not etcd-mirror's own client: this is
etcd's behaviour, not ours."""

import socket
from urllib.parse import urlsplit

N = 200


def pipelined(url: str, requests):
    """Send every request before reading any answer; the answers, parsed in order."""
    target = urlsplit(url)
    with socket.create_connection((target.hostname, target.port), timeout=30) as sock:
        sock.sendall(b"".join(requests))
        stream = sock.makefile("rb")
        return [read_answer(stream) for _ in requests]


def read_answer(stream):
    """(status, X-Etcd-Index, body) of the next answer on ``stream``."""
    status = int(stream.readline().split()[1])
    headers = {}
    for line in iter(stream.readline, b"\r\n"):
        name, _, value = line.decode("latin-1").partition(":")
        headers[name.strip().lower()] = value.strip()
    if headers.get("transfer-encoding") == "chunked":
        body = b""
        while True:
            size = int(stream.readline().split(b";")[0], 16)
            body += stream.read(size + 2)[:size]
            if size == 0:
                break
    else:
        body = stream.read(int(headers.get("content-length", 0)))
    return status, headers.get("x-etcd-index"), body


def put(key: str, value: str, extra: str = "") -> bytes:
    body = f"value={value}{extra}".encode()
    return (f"PUT /v2/keys{key} HTTP/1.1\r\nHost: etcd\r\n"
            "Content-Type: application/x-www-form-urlencoded\r\n"
            f"Content-Length: {len(body)}\r\n\r\n").encode() + body


def test_pipelined_writes_are_applied_and_answered_in_the_order_sent(src):
    src.set("/pipe/k", "start")
    requests = []
    for i in range(N):
        # Each write is conditional on the one before: one out of order fails.
        requests.append(put("/pipe/k", str(i), f"&prevValue={i - 1 if i else 'start'}"))
        requests.append(put(f"/pipe/other{i % 7}", str(i)))
    answers = pipelined(src.url, requests)
    assert [status for status, _, _ in answers] == [200 if i % 2 == 0 or i >= 14 else 201
                                                    for i in range(2 * N)]
    indexes = [int(index) for _, index, _ in answers]
    assert indexes == sorted(indexes) and len(set(indexes)) == len(indexes)
    status, body, _ = src.get("/pipe/k")
    assert body["node"]["value"] == str(N - 1)


def test_a_failed_condition_in_the_pipeline_fails_alone(src):
    src.set("/pipe/c", "a")
    answers = pipelined(src.url, [put("/pipe/c", "b", "&prevValue=a"),
                                  put("/pipe/c", "x", "&prevValue=a"),
                                  put("/pipe/c", "c", "&prevValue=b")])
    assert [status for status, _, _ in answers] == [200, 412, 200]
    assert src.get("/pipe/c")[1]["node"]["value"] == "c"
