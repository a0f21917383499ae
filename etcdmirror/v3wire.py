"""etcd v3's JSON gateway, on the wire: its encodings, its answers and its errors.

etcd serves the v3 API as JSON over HTTP on its client port (the gRPC
gateway; ``shared/etcd-v3-gateway-facts.md``, checked on etcd 3.4).  Its
JSON has three habits this module hides from the rest of etcd-mirror:

* keys and values are **base64** strings: here they are ``bytes``;
* 64-bit integers (revisions, lease IDs, TTLs, counts) are **JSON strings**:
  here they are ``int``;
* fields equal to zero, false or empty are **left out**: here they have
  their zero value.

Errors come back as an HTTP error status with ``{"error", "message",
"code"}``, ``code`` being a gRPC status code; :func:`error_for` turns them
into :class:`V3Error` types.  Everything here is pure: no I/O.
"""

import base64
import json
from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional, Tuple

import etcd

#: gRPC status codes etcd answers with (google.golang.org/grpc/codes).
INVALID_ARGUMENT, DEADLINE_EXCEEDED, NOT_FOUND = 3, 4, 5
FAILED_PRECONDITION, OUT_OF_RANGE, UNAVAILABLE, UNAUTHENTICATED = 9, 11, 14, 16
#: Codes worth retrying: the request may succeed on another try or member.
TRANSIENT_CODES = {DEADLINE_EXCEEDED, UNAVAILABLE}


class V3Error(etcd.EtcdException):
    """etcd refused a v3 request; ``code`` is the gRPC status code."""

    def __init__(self, message: str, code: int = 0) -> None:
        super().__init__(message)
        self.code = code


class V3Unavailable(V3Error):
    """No usable answer now (a connection failure, a timeout, no leader): retry."""


class V3Compacted(V3Error, etcd.EtcdEventIndexCleared):
    """The revision asked for was compacted away; history starts at ``compact_revision``.

    An ``etcd.EtcdEventIndexCleared`` too: the controller resyncs from a
    snapshot as it does when a v2 source cleared the index it needed.
    """

    #: ``etcdmirror_resyncs_total{reason}`` of the resync it leads to.
    resync_reason = "compacted"

    def __init__(self, message: str, compact_revision: int = 0) -> None:
        super().__init__(message, OUT_OF_RANGE)
        self.compact_revision = compact_revision


class V3NotFound(V3Error):
    """A lease (or another object) that does not exist."""


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def unb64(text: Optional[str]) -> bytes:
    return base64.b64decode(text) if text else b""


def number(value: Any) -> int:
    """A 64-bit integer as etcd sends it (a string, or left out for 0)."""
    return int(value) if value not in (None, "") else 0


def prefix_range_end(prefix: bytes) -> bytes:
    """The ``range_end`` that, with ``key`` = ``prefix``, covers every key under it.

    The prefix with its last byte that is not 0xff incremented (and what
    follows it dropped); an empty prefix, or one of only 0xff bytes, means
    every key: ``b"\\0"``.
    """
    data = bytearray(prefix)
    while data and data[-1] == 0xFF:
        data.pop()
    if not data:
        return b"\0"
    data[-1] += 1
    return bytes(data)


def keys_below(path: bytes) -> Tuple[bytes, bytes]:
    """``(key, range_end)`` covering every key below the path ``path`` (``/a``: every
    ``/a/...``); ``/`` covers every key."""
    if not path.strip(b"/"):
        return b"\0", b"\0"
    below = path.rstrip(b"/") + b"/"
    return below, prefix_range_end(below)


@dataclass(frozen=True)
class Header:
    """The ``header`` of every answer: who answered, at which revision."""

    cluster_id: str
    member_id: str
    revision: int
    raft_term: int

    @classmethod
    def parse(cls, data: Optional[Dict[str, Any]]) -> "Header":
        data = data or {}
        return cls(_hex_id(data.get("cluster_id")), _hex_id(data.get("member_id")),
                   number(data.get("revision")), number(data.get("raft_term")))


def _hex_id(value: Any) -> str:
    """A cluster or member id as etcd v2 shows it (``X-Etcd-Cluster-Id``: hex), so one
    cluster has one identity whichever API the mirror reads it through."""
    return format(number(value), "x") if value not in (None, "") else ""


@dataclass(frozen=True)
class KeyValue:
    """One key as etcd v3 keeps it; ``lease`` 0 when it has none."""

    key: bytes
    value: bytes = b""
    create_revision: int = 0
    mod_revision: int = 0
    version: int = 0
    lease: int = 0

    @classmethod
    def parse(cls, data: Dict[str, Any]) -> "KeyValue":
        return cls(unb64(data.get("key")), unb64(data.get("value")),
                   number(data.get("create_revision")), number(data.get("mod_revision")),
                   number(data.get("version")), number(data.get("lease")))


@dataclass(frozen=True)
class WatchEvent:
    """A PUT or a DELETE of one key, with the key before it (``prev_kv``, when asked)."""

    type: str
    kv: KeyValue
    prev_kv: Optional[KeyValue] = None

    @classmethod
    def parse(cls, data: Dict[str, Any]) -> "WatchEvent":
        prev = data.get("prev_kv")
        return cls(data.get("type", "PUT"), KeyValue.parse(data.get("kv") or {}),
                   KeyValue.parse(prev) if prev else None)


@dataclass(frozen=True)
class RangeResult:
    header: Header
    kvs: List[KeyValue]
    count: int
    more: bool

    @classmethod
    def parse(cls, data: Dict[str, Any]) -> "RangeResult":
        return cls(Header.parse(data.get("header")),
                   [KeyValue.parse(kv) for kv in data.get("kvs", ())],
                   number(data.get("count")), bool(data.get("more")))


@dataclass(frozen=True)
class TxnResult:
    """``succeeded``: the compares held (``success`` ran) or not (``failure`` ran).
    ``responses`` are the raw answers of the operations that ran, in order."""

    header: Header
    succeeded: bool
    responses: List[Dict[str, Any]] = field(default_factory=list)


@dataclass(frozen=True)
class WatchResponse:
    """One message of a watch stream.

    ``created`` (the watch is registered), ``events`` (all at one revision or
    more, in order), or a progress report (no events: nothing under the range
    up to ``header.revision``).  A canceled watch raises instead
    (:func:`watch_response`).
    """

    header: Header
    watch_id: int
    created: bool
    events: List[WatchEvent]


def decode(body: bytes, what: str) -> Dict[str, Any]:
    """The JSON object of an answer, or :class:`V3Unavailable` if it is not one."""
    try:
        data = json.loads(body)
    except ValueError:
        raise V3Unavailable(f"{what}: the answer is not JSON: {body[:200]!r}") from None
    if not isinstance(data, dict):
        raise V3Unavailable(f"{what}: the answer is not a JSON object: {body[:200]!r}")
    return data


def error_for(status: int, data: Dict[str, Any], what: str) -> V3Error:
    """The error for an answer with HTTP ``status`` and body ``data``."""
    code = number(data.get("code"))
    message = data.get("message") or data.get("error") or f"HTTP {status}"
    text = f"{what}: {message} (gRPC code {code}, HTTP {status})"
    if code == OUT_OF_RANGE and "compacted" in message:
        return V3Compacted(text)
    if code == NOT_FOUND:
        return V3NotFound(text, code)
    if code in TRANSIENT_CODES or status >= 500 and code not in (INVALID_ARGUMENT,
                                                                 FAILED_PRECONDITION):
        return V3Unavailable(text, code)
    return V3Error(text, code)


def watch_response(line: bytes, what: str) -> WatchResponse:
    """One line of a watch stream; a canceled watch raises its reason."""
    data = decode(line, what)
    if "error" in data:  # the stream itself failed (grpc-gateway's shape)
        error = data["error"]
        raise error_for(number(error.get("http_code")) or 500, error, what)
    result = data.get("result") or {}
    header = Header.parse(result.get("header"))
    if result.get("canceled"):
        compacted = number(result.get("compact_revision"))
        if compacted:
            raise V3Compacted(f"{what}: history before revision {compacted} was compacted "
                              "away", compacted)
        raise V3Unavailable(f"{what}: the watch was canceled by the server "
                            f"({result.get('cancel_reason') or 'no reason given'})")
    return WatchResponse(header, number(result.get("watch_id")), bool(result.get("created")),
                         [WatchEvent.parse(e) for e in result.get("events", ())])


# -- building requests -----------------------------------------------------

def compare_value(key: bytes, value: bytes, result: str = "EQUAL") -> Dict[str, Any]:
    """A txn compare on the key's value."""
    return {"key": b64(key), "result": result, "target": "VALUE", "value": b64(value)}


def compare_mod_revision(key: bytes, revision: int, result: str = "EQUAL") -> Dict[str, Any]:
    """A txn compare on the key's last modification (0: the key does not exist)."""
    return {"key": b64(key), "result": result, "target": "MOD", "mod_revision": str(revision)}


def compare_version(key: bytes, version: int, result: str = "EQUAL") -> Dict[str, Any]:
    """A txn compare on the key's version (0: the key does not exist)."""
    return {"key": b64(key), "result": result, "target": "VERSION", "version": str(version)}


def request_put(key: bytes, value: bytes, lease: int = 0) -> Dict[str, Any]:
    put: Dict[str, Any] = {"key": b64(key), "value": b64(value)}
    if lease:
        put["lease"] = str(lease)
    return {"request_put": put}


def request_delete(key: bytes, range_end: Optional[bytes] = None) -> Dict[str, Any]:
    delete = {"key": b64(key)}
    if range_end is not None:
        delete["range_end"] = b64(range_end)
    return {"request_delete_range": delete}


def request_range(key: bytes, range_end: Optional[bytes] = None) -> Dict[str, Any]:
    read = {"key": b64(key)}
    if range_end is not None:
        read["range_end"] = b64(range_end)
    return {"request_range": read}
