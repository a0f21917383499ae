"""The v3 side of ``bench/v3mirror.py``: etcd's v3 JSON gateway, blocking, and the v3 writes.

:class:`V3` is a small blocking client of the v3 API over etcd's JSON gateway
(``/v3/kv/put``, ``/v3/kv/range``, ``/v3/lease/grant``, ...) on one
keep-alive connection (etcd-mirror's :class:`BlockingClient`, its base64 and
range helpers from ``etcdmirror/v3wire.py``).  :func:`v3_ops` gives the
writer processes of ``bench/writers.py`` their v3 keys and operations, so the
v3 load is the same as the v2 one: puts on about 100 keys, one operation in
ten a delete of a key that exists, each one source revision.  The keys the
benchmark writes are here too.
"""

import json
from typing import Any, Callable, Dict, List, Optional, Tuple

from bench.common import DST_PREFIX, SRC_PREFIX
from etcdmirror.localclient import BlockingClient
from etcdmirror.v3wire import b64, prefix_range_end, unb64

SRC = SRC_PREFIX
OURS_DST = DST_PREFIX  # etcd-mirror: /bench/k -> /replica/bench/k
MM_DST = "/mm"  # make-mirror: /bench/k -> /mm/bench/k
READY_KEY = SRC + "/ready"
MARKER_KEY = SRC + "/marker"
LEASE_KEY = SRC + "/leased"
JSON = {"Content-Type": "application/json"}


def writer_key(wid: int, j: int) -> str:
    """Key ``j`` of writer ``wid``; the checks write and delete these keys too."""
    return "%s/w%d/k%02d" % (SRC, wid, j)


def _key(text: str) -> str:
    return b64(text.encode("utf-8"))


def _text(data: Optional[str]) -> str:
    return unb64(data).decode("utf-8", "replace")


def _below(prefix: str) -> Dict[str, str]:
    return {"key": _key(prefix), "range_end": b64(prefix_range_end(prefix.encode("utf-8")))}


class V3:
    """etcd's v3 API over its JSON gateway, on one keep-alive connection."""

    def __init__(self, url: str, timeout: float = 10.0) -> None:
        self.http = BlockingClient(url, timeout=timeout)

    def close(self) -> None:
        self.http.close()

    def call(self, path: str, body: Dict[str, Any]) -> Dict[str, Any]:
        status, answer, _ = self.http.send("POST", path, json.dumps(body).encode(), JSON)
        if status != 200:
            raise RuntimeError("%s: HTTP %d: %s" % (path, status, answer[:300]))
        return json.loads(answer)

    def put(self, key: str, value: str, lease: str = "") -> int:
        body = {"key": _key(key), "value": _key(value)}
        if lease:
            body["lease"] = lease
        return int(self.call("/v3/kv/put", body)["header"]["revision"])

    def delete(self, key: str) -> Tuple[int, int]:
        """(keys deleted, revision)."""
        answer = self.call("/v3/kv/deleterange", {"key": _key(key)})
        return int(answer.get("deleted", 0)), int(answer["header"]["revision"])

    def delete_prefix(self, prefix: str) -> int:
        return int(self.call("/v3/kv/deleterange", _below(prefix)).get("deleted", 0))

    def range_prefix(self, prefix: str) -> Dict[str, Tuple[str, str]]:
        """Every key under ``prefix``: key -> (value, lease ID or "")."""
        answer = self.call("/v3/kv/range", _below(prefix))
        return {_text(kv["key"]): (_text(kv.get("value")), kv.get("lease", ""))
                for kv in answer.get("kvs", ())}

    def get(self, key: str) -> Optional[Tuple[str, str]]:
        kvs = self.call("/v3/kv/range", {"key": _key(key)}).get("kvs", ())
        return (_text(kvs[0].get("value")), kvs[0].get("lease", "")) if kvs else None

    def revision(self) -> int:
        answer = self.call("/v3/kv/range", {"key": _key("/"), "count_only": True})
        return int(answer["header"]["revision"])

    def compact(self, revision: int) -> None:
        self.call("/v3/kv/compaction", {"revision": str(revision), "physical": True})

    def lease_grant(self, ttl: int) -> str:
        return str(self.call("/v3/lease/grant", {"TTL": str(ttl)})["ID"])

    def lease_keepalive(self, lease: str) -> int:
        answer = self.call("/v3/lease/keepalive", {"ID": lease})
        return int((answer.get("result") or {}).get("TTL", 0))

    def lease_revoke(self, lease: str) -> int:
        return int(self.call("/v3/lease/revoke", {"ID": lease})["header"]["revision"])

    def lease_ttl(self, lease: str) -> Tuple[int, int]:
        """(seconds left, -1 once gone; granted TTL)."""
        answer = self.call("/v3/lease/timetolive", {"ID": lease})
        return int(answer.get("TTL", 0)), int(answer.get("grantedTTL", 0))


def v3_ops(wid: int, url: str, keys: int) -> Tuple[List[str], set, Callable, Callable]:
    """For ``bench/writers.py``'s ``WriterPool(..., ops=v3_ops)``: writer ``wid``'s keys,
    those that exist on the source, and its put and delete, each returning (ok,
    revision); a delete that deletes other than one key is not ok."""
    v3 = V3(url)

    def write(key: str, value: str) -> Tuple[bool, int]:
        return True, v3.put(key, value)

    def delete(key: str) -> Tuple[bool, int]:
        deleted, rev = v3.delete(key)
        return deleted == 1, rev

    existing = set(v3.range_prefix("%s/w%d/" % (SRC, wid)))
    return [writer_key(wid, j) for j in range(keys)], existing, write, delete
