"""What the mirror shows the world: no credentials anywhere, one debug line per event,
and a broken endpoint (HTTP 5xx) that is skipped for the next one."""

import http.server
import threading

import pytest

from tests.helpers import wait_for

PREFIX = "/conftool"
SECRET = "s3cr3t-pa55"


def with_credentials(url):
    return url.replace("http://", f"http://mirror:{SECRET}@")


def test_credentials_never_shown_and_debug_logs_each_event(src, dst, mirror):
    src.set(PREFIX + "/a", "1")
    m = mirror(with_credentials(src.url), with_credentials(dst.url), "-d", "--reload",
               "--src-prefix", PREFIX)
    for i in range(5):
        src.set(f"{PREFIX}/k{i}", str(i))
    m.wait_index(src.index())
    status_text = m.get("/status")[1]
    emitted = [m.log(), m.metrics(), status_text, m.get("/")[1]]
    assert not [text for text in emitted if SECRET in text]
    assert src.url in status_text  # the endpoint itself is shown
    events = [line for line in m.log().splitlines() if "DEBUG" in line and "event set" in line]
    assert len(events) == 5


class Broken(http.server.BaseHTTPRequestHandler):
    """An endpoint that answers every request with a proxy's 503 page."""

    def do_GET(self):
        self.send_response(503)
        self.send_header("Content-Type", "text/html")
        self.end_headers()
        self.wfile.write(b"<html><body>503 Service Unavailable</body></html>")

    do_PUT = do_DELETE = do_GET

    def log_message(self, *args):
        pass


@pytest.fixture
def broken_endpoint():
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Broken)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


def test_5xx_endpoint_is_skipped(src, dst, mirror, broken_endpoint):
    src.set(PREFIX + "/a", "1")
    m = mirror(f"{broken_endpoint},{src.url}", dst.url, "--reload", "--src-prefix", PREFIX)
    src.set(PREFIX + "/b", "2")
    wait_for(lambda: dst.get("/replica" + PREFIX + "/b")[0] == 200)
    assert "HTTP 503" in m.log()
    assert m.metric("etcdmirror_retries_total", 'side="source"') >= 1


def test_listen_address(src, dst, mirror):
    m = mirror(src.url, dst.url, "--reload", "--listen-address", "127.0.0.1")
    assert "(address 127.0.0.1)" in m.log() and m.healthy()
