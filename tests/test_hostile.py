"""A misbehaving HTTP server in front of real etcd servers.

Every few answers, the proxy replaces etcd's answer with junk: a proxy's HTML
error page, a 200 with an empty body, bytes that are not JSON, a JSON node with
wrong types, or a body cut off in the middle.  The mirror must neither crash
nor write anything wrong: it retries, and the replica ends equal to the source.
"""

import http.client
import http.server
import json
import threading
import urllib.parse

import pytest

from tests.helpers import wait_for, wait_same

PREFIX = "/conftool"
IMAGE = "/replica" + PREFIX

BAD = ["html", "empty", "junk", "wrong-types", "truncated"]


class Hostile(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    target = None          # (host, port) of the real etcd
    every = 4              # spoil one answer in so many
    counter = None         # shared itertools-like counter (a list)
    spoiled = None         # list of what was done

    def log_message(self, *args):
        pass

    def _forward(self):
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length) if length else None
        upstream = http.client.HTTPConnection(*self.target, timeout=60)
        headers = {k: v for k, v in self.headers.items() if k.lower() != "host"}
        upstream.request(self.command, self.path, body=body, headers=headers)
        answer = upstream.getresponse()
        data = answer.read()
        status, reply_headers = answer.status, answer.getheaders()
        upstream.close()
        with self.lock:
            self.counter[0] += 1
            n = self.counter[0]
        if n % self.every == 0:
            mode = BAD[(n // self.every) % len(BAD)]
            self.spoiled.append(mode)
            return self._spoil(mode, data)
        self.send_response(status)
        for name, value in reply_headers:
            if name.lower() in ("x-etcd-index", "x-etcd-cluster-id", "content-type"):
                self.send_header(name, value)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def _spoil(self, mode, data):
        if mode == "html":
            status, body = 502, b"<html><body><h1>502 Bad Gateway</h1></body></html>"
        elif mode == "empty":
            status, body = 200, b""
        elif mode == "junk":
            status, body = 200, b"\x00\xffnot json at all"
        elif mode == "wrong-types":
            status, body = 200, json.dumps({"action": "set", "node": {
                "key": ["/x"], "value": 5, "modifiedIndex": "soon"}}).encode()
        else:  # truncated: promise the whole body, send half, hang up
            self.send_response(200)
            self.send_header("X-Etcd-Index", "1")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data[: len(data) // 2])
            self.close_connection = True
            return
        self.send_response(status)
        self.send_header("X-Etcd-Index", "1")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    do_GET = do_PUT = do_DELETE = do_POST = _forward


def hostile_proxy(url):
    parsed = urllib.parse.urlsplit(url)
    handler = type("Handler", (Hostile,), {
        "target": (parsed.hostname, parsed.port), "counter": [0], "spoiled": [],
        "lock": threading.Lock()})
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server, handler, f"http://127.0.0.1:{server.server_address[1]}"


@pytest.fixture
def proxies(src, dst):
    made = [hostile_proxy(src.url), hostile_proxy(dst.url)]
    yield made
    for server, _, _ in made:
        server.shutdown()
        server.server_close()


def test_junk_answers_are_retried_and_never_replicated(src, dst, mirror, proxies):
    (_, src_handler, src_proxy), (_, dst_handler, dst_proxy) = proxies
    for i in range(20):
        src.set(f"{PREFIX}/seed{i}", str(i))
    m = mirror(src_proxy, dst_proxy, "--reload", "--src-prefix", PREFIX,
               "--watch-idle-timeout", "0.5", healthy=False)
    wait_for(lambda: m.proc.poll() is not None or m.healthy(), timeout=60)
    for i in range(40):
        src.set(f"{PREFIX}/k{i % 10}", f"v{i}")
        if i % 7 == 0:
            src.delete(f"{PREFIX}/seed{i % 20}")
    src.set(PREFIX + "/c", "new", prevExist=False)
    wait_same(src, dst, PREFIX, IMAGE, timeout=90)
    assert m.proc.poll() is None, m.log()
    assert "internal error" not in m.log() and "Traceback" not in m.log()
    # The proxy holds every answer until it is complete, which a streaming
    # watch never is: the mirror notices and reads one event per request.
    assert "is there a proxy that buffers answers" in m.log()
    spoiled = set(src_handler.spoiled) | set(dst_handler.spoiled)
    assert spoiled == set(BAD), spoiled
    assert m.metric("etcdmirror_retries_total", 'side="source"') > 0
    assert m.metric("etcdmirror_retries_total", 'side="destination"') > 0
