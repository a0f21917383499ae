"""A small blocking etcd v2 client, for the demo, the tests and the benchmark.

The daemon's own client (:mod:`etcdmirror.client`) is non-blocking and lives
in Twisted's reactor.  The code around the daemon (the demo, the tests that
set up and check etcd state, the benchmark's writers and probe) wants plain
blocking calls instead, and the tests must not check the mirror's results
with the mirror's own client, or a bug in it could hide itself.  This module
is that one blocking client; the demo, the tests and the benchmark all use it.

* Keep-alive: each thread sends its requests on one ``http.client``
  connection of its own, so a benchmark writer measures etcd rather than TCP
  handshakes, and one client can be shared by a test and a reader thread.
  A connection the server closed while it was idle (a restarted etcd) is
  replaced and the request sent again; nothing else is ever retried.
* HTTP errors (404 Key not found, 412 compare failed, ...) are answers, not
  exceptions: every call returns a :class:`Response` (status, decoded JSON
  body, case-insensitive headers).  What is not an answer raises OSError: a
  refused or broken connection, or a :class:`Timeout`.
* Keys are percent-quoted (only ``/`` is kept), values and parameters are
  form-encoded, booleans are sent as etcd wants them (``true``/``false``),
  so any key or value goes through unchanged.
* Basic authentication, and https with the system's or a given SSL context.

Only the standard library is used, so the demo and the benchmark's writer
processes do not pull Twisted in.
"""

import base64
import http.client
import json
import socket
import ssl
import threading
import urllib.parse
import uuid
import weakref
from typing import Any, Dict, NamedTuple, Optional, Set, Tuple

__all__ = ["BlockingClient", "Response", "Timeout"]

_FORM = {"Content-Type": "application/x-www-form-urlencoded"}

# {path relative to the prefix: (is_dir, value, has_ttl)}, see BlockingClient.tree
Tree = Dict[str, Tuple[bool, Optional[str], bool]]


class Response(NamedTuple):
    """One HTTP answer: unpacks as ``status, body, headers``."""

    status: int
    #: The decoded JSON (the text if it is not JSON) for the keys API;
    #: the raw bytes from :meth:`BlockingClient.send`.
    body: Any
    #: Case-insensitive: ``headers["X-Etcd-Index"]``.
    headers: http.client.HTTPMessage

    @property
    def index(self) -> int:
        """The ``X-Etcd-Index`` header: the store's index (0 if absent)."""
        return _etcd_index(self.headers)


def _etcd_index(headers: http.client.HTTPMessage) -> int:
    return int(headers.get("X-Etcd-Index") or 0)


class Timeout(socket.timeout):
    """No complete answer within the client's timeout (an OSError).

    ``index`` is the ``X-Etcd-Index`` of the answer's headers if they came
    (etcd sends a watch's headers at once and its body with the event, so a
    watch that saw nothing still tells how far the store was), else 0.
    """

    def __init__(self, index: int = 0) -> None:
        super().__init__("timed out")
        self.index = index


def _encode_param(value: Any) -> str:
    # etcd wants lowercase booleans (prevExist=false, dir=true).
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


def _encode(params: Dict[str, Any]) -> str:
    return urllib.parse.urlencode({k: _encode_param(v) for k, v in params.items()})


def _decode(raw: bytes) -> Any:
    text = raw.decode("utf-8", "replace")
    try:
        return json.loads(text)
    except ValueError:
        return text


def _close_all(connections: Set[http.client.HTTPConnection], lock: threading.Lock) -> None:
    with lock:
        for conn in connections:
            conn.close()
        connections.clear()


class BlockingClient:
    """Blocking client for one etcd server's v2 keys API (any HTTP path too).

    ``url`` is ``http(s)://host:port``; of the comma-separated list a
    cluster's URL is, the first member is used.  ``timeout`` bounds every
    wait for the server (connecting, and each read).  For https, ``context``
    is the SSL context to use (default: the system's trust store).
    """

    def __init__(
        self,
        url: str,
        username: Optional[str] = None,
        password: Optional[str] = None,
        timeout: float = 10.0,
        context: Optional[ssl.SSLContext] = None,
    ) -> None:
        self.url = url.split(",")[0].rstrip("/")
        parts = urllib.parse.urlsplit(self.url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError("not an http(s)://host:port URL: %r" % self.url)
        self._https = parts.scheme == "https"
        self._host = parts.hostname
        self._port = parts.port or (443 if self._https else 80)
        self._base = parts.path
        self.timeout = timeout
        self._context = context
        self._headers: Dict[str, str] = {}
        if username is not None:
            token = "%s:%s" % (username, password or "")
            self._headers["Authorization"] = "Basic " + base64.b64encode(token.encode()).decode()
        # One connection per thread; all of them, to close them all.
        self._local = threading.local()
        self._lock = threading.Lock()
        self._connections: Set[http.client.HTTPConnection] = set()
        weakref.finalize(self, _close_all, self._connections, self._lock)

    def __repr__(self) -> str:
        return "%s(%r)" % (type(self).__name__, self.url)

    def __enter__(self) -> "BlockingClient":
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()

    def close(self) -> None:
        """Close every thread's connection; the client can still be used after."""
        _close_all(self._connections, self._lock)

    # -- HTTP ---------------------------------------------------------------

    def _connection(self) -> Tuple[http.client.HTTPConnection, bool]:
        """This thread's connection, and whether it served a request before."""
        conn = getattr(self._local, "conn", None)
        if conn is not None and conn.sock is not None:
            return conn, True
        if self._https:
            conn = http.client.HTTPSConnection(
                self._host, self._port, timeout=self.timeout,
                context=self._context or ssl.create_default_context())
        else:
            conn = http.client.HTTPConnection(self._host, self._port, timeout=self.timeout)
        self._local.conn = conn
        with self._lock:
            self._connections.add(conn)
        return conn, False

    def _drop(self, conn: http.client.HTTPConnection) -> None:
        conn.close()
        self._local.conn = None
        with self._lock:
            self._connections.discard(conn)

    def send(self, method: str, path: str, body: Optional[bytes] = None,
             headers: Optional[Dict[str, str]] = None) -> Response:
        """Send one request for ``path`` (e.g. ``/version``); the body is not decoded."""
        headers = {**self._headers, **(headers or {})}
        while True:
            conn, reused = self._connection()
            resp = None
            try:
                conn.request(method, self._base + path, body=body, headers=headers)
                resp = conn.getresponse()
                data = resp.read()
            except socket.timeout:
                self._drop(conn)
                raise Timeout(_etcd_index(resp.headers) if resp is not None else 0) from None
            except (ConnectionError, http.client.HTTPException) as err:
                self._drop(conn)
                if reused and resp is None:
                    # Closed by the server while idle (or it restarted):
                    # the request never got there, send it on a new one.
                    continue
                if isinstance(err, OSError):
                    raise
                raise ConnectionError("%s %s: %r" % (method, path, err)) from err
            except BaseException:
                self._drop(conn)
                raise
            if resp.will_close:
                self._drop(conn)
            return Response(resp.status, data, resp.headers)

    # -- the keys API -------------------------------------------------------

    def key_path(self, key: str, query: Optional[Dict[str, Any]] = None) -> str:
        """``/v2/keys/...`` for ``key``, quoted, with the query string."""
        if not key.startswith("/"):
            key = "/" + key
        path = "/v2/keys" + urllib.parse.quote(key, safe="/")
        if query:
            path += "?" + _encode(query)
        return path

    def request(
        self,
        method: str,
        key: str,
        query: Optional[Dict[str, Any]] = None,
        form: Optional[Dict[str, Any]] = None,
    ) -> Response:
        """One keys API request; parameters in the query string or the form body."""
        body = _encode(form).encode() if form is not None else None
        status, raw, headers = self.send(method, self.key_path(key, query), body,
                                         _FORM if body is not None else None)
        return Response(status, _decode(raw), headers)

    def get(self, key: str, recursive: bool = False, quorum: bool = False, **params) -> Response:
        """GET; extra params (wait, waitIndex, sorted, ...) as given."""
        query = dict(params)
        if recursive:
            query["recursive"] = True
        if quorum:
            query["quorum"] = True
        return self.request("GET", key, query=query)

    def set(
        self,
        key: str,
        value: Optional[str] = None,
        dir: bool = False,
        ttl: Optional[int] = None,
        **params,
    ) -> Response:
        """PUT; extra params (prevExist, prevValue, prevIndex, refresh) as given."""
        form = dict(params)
        if value is not None:
            form["value"] = value
        if dir:
            form["dir"] = True
        if ttl is not None:
            form["ttl"] = ttl
        return self.request("PUT", key, form=form)

    def create_in_order(self, dir_key: str, value: str) -> Response:
        """POST: etcd creates a key under ``dir_key`` named by the new index."""
        return self.request("POST", dir_key, form={"value": value})

    def delete(self, key: str, recursive: bool = False, dir: bool = False, **params) -> Response:
        # In the query string: Go only parses form bodies of POST/PUT/PATCH.
        query = dict(params)
        if recursive:
            query["recursive"] = True
        if dir:
            query["dir"] = True
        return self.request("DELETE", key, query=query)

    def index(self) -> int:
        """The store's current index (the X-Etcd-Index of a read of a missing key)."""
        return self.get("/etcdmirror-missing-%s" % uuid.uuid4().hex).index

    def tree(self, prefix: str = "/", quorum: bool = False) -> Tree:
        """Flatten everything under ``prefix`` for comparisons.

        Maps each path relative to the prefix (``"a/b"``, directories
        included, the prefix itself excluded) to ``(is_dir, value, has_ttl)``,
        value None for directories.  ``{}`` if the prefix does not exist.  If
        the prefix is a plain key it is returned under ``""`` so a key/dir
        mismatch between two trees is visible.  Hidden keys (``_name``) are
        not listed by etcd's recursive GET and so are not included.
        """
        base = "/" + prefix.strip("/")
        status, body, _ = self.get(base, recursive=True, quorum=quorum)
        if status == 404:
            return {}
        if status != 200:
            raise AssertionError("GET %s: %s %r" % (base, status, body))
        out: Tree = {}
        root = body["node"]
        if not root.get("dir"):
            out[""] = _entry(root)
            return out
        strip = len(base.rstrip("/")) + 1

        def walk(node: dict) -> None:
            for child in node.get("nodes", ()):
                out[child["key"][strip:]] = _entry(child)
                walk(child)

        walk(root)
        return out

    def wipe(self) -> None:
        """Delete every top-level node: a clean keyspace for a test.

        Hidden keys are not listed by etcd, so the mirror's own hidden
        ``/__replication`` is deleted by name: no test may continue from an
        index an earlier test left behind.
        """
        status, body, _ = self.get("/")
        if status != 200:
            raise AssertionError("GET /: %s %r" % (status, body))
        for node in body["node"].get("nodes", ()):
            self.delete(node["key"], recursive=True)
        self.delete("/__replication", recursive=True)


def _entry(node: dict) -> Tuple[bool, Optional[str], bool]:
    is_dir = bool(node.get("dir"))
    has_ttl = "ttl" in node or "expiration" in node
    return (is_dir, None if is_dir else node.get("value"), has_ttl)
