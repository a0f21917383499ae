"""A small blocking etcd v3 client for the tests' own reads and writes (the JSON
gateway, standard library only), beside the mirror processes they start.

The mirror's own client is :mod:`etcdmirror.v3client`; this one exists so that
a test that drives real mirror processes can write and read without a
reactor, as ``tests.helpers.V2`` does for v2.
"""

import base64
import json
import urllib.error
import urllib.request
from typing import Any, Callable, Dict, List, Optional, Tuple

from etcdmirror.v3wire import keys_below


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def _raw(text: Any) -> bytes:
    return text if isinstance(text, bytes) else text.encode("utf-8")


class V3:
    """Blocking calls to one etcd member's v3 JSON gateway."""

    def __init__(self, url: str, timeout: float = 10.0, context: Any = None) -> None:
        """``context``: an ``ssl.SSLContext`` for an https:// member."""
        self.url = url.rstrip("/")
        self.timeout = timeout
        self.context = context
        self.token: Optional[str] = None

    def authenticate(self, name: str, password: str) -> "V3":
        """Use a v3 auth token for ``name`` from now on; returns self."""
        self.token = self.call("/v3/auth/authenticate",
                               {"name": name, "password": password})["token"]
        return self

    def call(self, path: str, body: Dict[str, Any]) -> Dict[str, Any]:
        headers = {"Content-Type": "application/json"}
        if self.token:
            headers["Authorization"] = self.token
        request = urllib.request.Request(self.url + path, data=json.dumps(body).encode(),
                                         headers=headers)
        try:
            with urllib.request.urlopen(request, timeout=self.timeout,
                                        context=self.context) as answer:
                return json.loads(answer.read() or b"{}")
        except urllib.error.HTTPError as e:
            raise RuntimeError(f"{path}: {e.code} {e.read()[:300]!r}") from None

    def revision(self) -> int:
        return int(self.call("/v3/kv/range", {"key": _b64(b"\0"), "limit": 1,
                                                "keys_only": True})["header"]["revision"])

    def put(self, key: Any, value: Any, lease: int = 0) -> int:
        """Fires with the revision of the write."""
        body: Dict[str, Any] = {"key": _b64(_raw(key)), "value": _b64(_raw(value))}
        if lease:
            body["lease"] = str(lease)
        return int(self.call("/v3/kv/put", body)["header"]["revision"])

    def delete(self, key: Any, prefix: bool = False) -> int:
        """Deletes ``key`` (``prefix``: every key under the path ``key``); the revision."""
        if prefix:
            start, end = keys_below(_raw(key))
            body = {"key": _b64(start), "range_end": _b64(end)}
        else:
            body = {"key": _b64(_raw(key))}
        return int(self.call("/v3/kv/deleterange", body)["header"]["revision"])

    def get(self, key: Any) -> Optional[str]:
        kvs = self.call("/v3/kv/range", {"key": _b64(_raw(key))}).get("kvs") or []
        return base64.b64decode(kvs[0].get("value", "")).decode("utf-8") if kvs else None

    def lease_of(self, key: Any) -> int:
        kvs = self.call("/v3/kv/range", {"key": _b64(_raw(key))}).get("kvs") or []
        return int(kvs[0].get("lease", 0)) if kvs else 0

    def tree(self, path: str) -> Dict[str, str]:
        """Every key under the path ``path`` (``/``: every key) and its value."""
        start, end = keys_below(_raw(path))
        found = self.call("/v3/kv/range", {"key": _b64(start), "range_end": _b64(end)})
        return {base64.b64decode(kv["key"]).decode("utf-8"):
                base64.b64decode(kv.get("value", "")).decode("utf-8")
                for kv in found.get("kvs") or []}

    def txn(self, puts: List[Tuple[str, str]] = (), deletes: List[str] = ()) -> int:
        """One transaction of puts and deletes, with no compare; the revision."""
        success = [{"request_put": {"key": _b64(_raw(k)), "value": _b64(_raw(v))}}
                   for k, v in puts]
        success += [{"request_delete_range": {"key": _b64(_raw(k))}} for k in deletes]
        return int(self.call("/v3/kv/txn", {"success": success})["header"]["revision"])

    def compact(self, revision: int) -> None:
        self.call("/v3/kv/compaction", {"revision": str(revision), "physical": True})

    def grant(self, ttl: int) -> int:
        return int(self.call("/v3/lease/grant", {"TTL": str(ttl)})["ID"])

    def revoke(self, lease: int) -> None:
        self.call("/v3/lease/revoke", {"ID": str(lease)})

    def keep_alive(self, lease: int) -> None:
        self.call("/v3/lease/keepalive", {"ID": str(lease)})

    def ttl(self, lease: int) -> int:
        """The lease's remaining TTL in seconds (-1: no such lease)."""
        return int(self.call("/v3/lease/timetolive", {"ID": str(lease)}).get("TTL", -1))


def wait_image(expected: Callable[[], Any], image: Callable[[], Any],
               checkpoint: Callable[[], Optional[int]], index: Optional[int] = None,
               mirror: Any = None, timeout: float = 20.0,
               describe: Optional[Callable[[], Any]] = None) -> None:
    """Until ``image()`` equals ``expected()`` and (``index``) ``checkpoint()`` holds
    exactly ``index``; fails the test at once if ``mirror`` exits, and on timeout
    with ``describe()`` (default: both trees)."""
    import pytest

    from tests.helpers import wait_for

    def check():
        if mirror is not None and mirror.proc.poll() is not None:
            return "exited"
        if index is not None and checkpoint() != index:
            return None
        return expected() == image()

    try:
        result = wait_for(check, timeout=timeout, message="image == source")
    except AssertionError:
        shown = describe() if describe else f"source {expected()}, image {image()}"
        pytest.fail(f"not converged after {timeout}s: checkpoint {checkpoint()}, wanted "
                    f"{index}; {shown}")
    if result == "exited":
        pytest.fail(f"the mirror exited with {mirror.returncode}:\n{mirror.log_tail(40)}")
