"""Test helpers: a tiny synchronous etcd v2 client and a polling wait.

Tests set up and check etcd state with plain blocking HTTP (urllib) instead
of the Twisted client under test, so a bug in etcd-mirror's own client cannot
hide itself by being used to verify its own results.
"""

import base64
import json
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
import uuid
from typing import Any, Callable, Dict, Optional, Tuple

__all__ = ["V2", "wait_for", "wait_same", "persisted_index", "TreeReader", "run_command"]

Response = Tuple[int, Any, Any]  # (status, json body or raw text, headers)


def _encode_param(value: Any) -> str:
    # etcd wants lowercase booleans (prevExist=false, dir=true).
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


class V2:
    """Synchronous etcd v2 keys client for tests.

    Every method returns ``(status, body, headers)``; HTTP errors (404 Key
    not found, 412 compare failed, ...) are returned, not raised, so tests
    can assert on them.  ``body`` is the decoded JSON (raw text if it is not
    JSON); ``headers`` is case-insensitive (``headers["X-Etcd-Index"]``).
    Connection errors do raise (URLError), there is no status to return.

    Keys are percent-quoted (only ``/`` is kept), values and parameters are
    form-encoded, so keys and values with spaces, ``%?#+&=`` or non-ASCII
    characters go through unchanged.
    """

    def __init__(
        self,
        url: str,
        username: Optional[str] = None,
        password: Optional[str] = None,
        timeout: float = 10.0,
    ) -> None:
        # Accept the comma-separated form LocalEtcdCluster.url gives and use
        # the first member.
        self.url = url.split(",")[0].rstrip("/")
        self.timeout = timeout
        self._auth = None
        if username is not None:
            token = "%s:%s" % (username, password or "")
            self._auth = "Basic " + base64.b64encode(token.encode()).decode()

    def __repr__(self) -> str:
        return "V2(%r)" % self.url

    # -- plumbing -----------------------------------------------------------

    def _key_url(self, key: str, query: Optional[Dict[str, Any]] = None) -> str:
        if not key.startswith("/"):
            key = "/" + key
        url = self.url + "/v2/keys" + urllib.parse.quote(key, safe="/")
        if query:
            url += "?" + urllib.parse.urlencode(
                {k: _encode_param(v) for k, v in query.items()}
            )
        return url

    def request(
        self,
        method: str,
        key: str,
        query: Optional[Dict[str, Any]] = None,
        form: Optional[Dict[str, Any]] = None,
    ) -> Response:
        """Send one request; parameters in the query string or the form body."""
        data = None
        headers = {}
        if form is not None:
            data = urllib.parse.urlencode(
                {k: _encode_param(v) for k, v in form.items()}
            ).encode()
            headers["Content-Type"] = "application/x-www-form-urlencoded"
        if self._auth:
            headers["Authorization"] = self._auth
        req = urllib.request.Request(
            self._key_url(key, query), data=data, headers=headers, method=method
        )
        try:
            with urllib.request.urlopen(req, timeout=self.timeout) as resp:
                return resp.status, _decode(resp.read()), resp.headers
        except urllib.error.HTTPError as err:
            try:
                return err.code, _decode(err.read() if err.fp else b""), err.headers
            finally:
                err.close()

    # -- API ----------------------------------------------------------------

    def get(self, key: str, recursive: bool = False, quorum: bool = False, **params) -> Response:
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
        """PUT; extra params (prevExist, prevValue, prevIndex, refresh) as-is."""
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
        """Current store index (X-Etcd-Index of a GET of a key that is missing)."""
        _, _, headers = self.get("/etcdmirror-tests-missing-%s" % uuid.uuid4().hex)
        return int(headers["X-Etcd-Index"])

    def tree(self, prefix: str = "/", quorum: bool = False) -> Dict[str, Tuple[bool, Optional[str], bool]]:
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
        out: Dict[str, Tuple[bool, Optional[str], bool]] = {}
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


def _decode(raw: bytes) -> Any:
    text = raw.decode("utf-8", "replace")
    try:
        return json.loads(text)
    except ValueError:
        return text


def wait_for(
    predicate: Callable[[], Any],
    timeout: float = 15.0,
    interval: float = 0.05,
    message: str = "",
) -> Any:
    """Poll ``predicate()`` until it returns something truthy; return that.

    Replaces fixed sleeps: fast when things are fast, patient when the
    machine is slow.  An exception from the predicate counts as "not yet"
    (a server may be restarting), and is reported if time runs out.
    Raises AssertionError with ``message`` and the last value on timeout.
    """
    deadline = time.monotonic() + timeout
    last: Any = None
    while True:
        try:
            last = predicate()
            if last:
                return last
        except Exception as exc:  # noqa: BLE001 - reported below
            last = exc
        if time.monotonic() >= deadline:
            raise AssertionError(
                "timed out after %.1fs waiting for %s; last value: %r"
                % (timeout, message or getattr(predicate, "__name__", "condition"), last)
            )
        time.sleep(interval)


def wait_same(src: "V2", dst: "V2", src_prefix: str, dst_root: str,
              timeout: float = 30.0) -> Dict[str, Tuple[bool, Optional[str], bool]]:
    """Until the destination image equals the source prefix; returns the tree."""
    def check():
        tree = src.tree(src_prefix)
        return (tree,) if tree == dst.tree(dst_root) else None
    return wait_for(check, timeout=timeout,
                    message=f"{dst_root} on the destination equal to {src_prefix}")[0]


def persisted_index(dst: "V2", key: str = "/__replication/replica") -> Optional[int]:
    """The replication index the mirror persisted on the destination, or None."""
    status, body, _ = dst.get(key)
    return int(body["node"]["value"]) if status == 200 else None


class TreeReader(threading.Thread):
    """Polls a destination subtree like confd would, recording every view it gets.

    Used to prove that a reload or resync never makes a key vanish that
    exists before and after it.
    """

    def __init__(self, client: "V2", root: str) -> None:
        super().__init__(daemon=True)
        self.client, self.root = client, root
        self.views: list = []
        self.done = threading.Event()

    def run(self) -> None:
        while not self.done.is_set():
            self.views.append(set(self.client.tree(self.root)))

    def stop(self) -> None:
        self.done.set()
        self.join(10)


def run_command(function: str, *args: str, timeout: float = 60.0):
    """Run one of etcdmirror.cli's commands (``verify_main``...) as a real process.

    Through ``python -c`` rather than the console script, so that it works
    from a source checkout as well as from an installed package.
    """
    import subprocess
    import sys

    prog = "etcd-mirror-" + function.replace("_main", "")
    return subprocess.run(
        [sys.executable, "-c", f"from etcdmirror.cli import {function}; "
         f"{function}(prog_name={prog!r})", *args],
        capture_output=True, text=True, timeout=timeout, stdin=subprocess.DEVNULL)
