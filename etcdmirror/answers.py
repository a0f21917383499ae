"""What an etcd v2 answer means: the answer parser, the error mapping, and their types.

Pure functions, no endpoint and no I/O: :func:`parse_answer` turns a body,
its HTTP status and its two headers into an :class:`Answer` or raises the
error :func:`error_for` maps it to.  Errors are python-etcd's exception types
(``errorCode`` -> exception), so the rest of the mirror speaks the same
vocabulary as every other etcd tool in Python.  What python-etcd does not
have, we add as types here: :class:`EtcdUnavailable` for anything worth
retrying and :class:`BadResponse` for an answer that is not etcd's.  Every
message names the request (``what``: method, key, endpoint) and never the
credentials.

The structure of an answer is checked here, once, whatever arrived (junk,
truncated JSON, a proxy's page, wrong types): nothing downstream meets a
value of the wrong type, and nothing escapes as anything but an
``EtcdException``.  Which errors are worth another endpoint is
:func:`is_transient`; moving to it is the caller's business.
"""

import dataclasses
import json
from dataclasses import dataclass
from functools import cached_property
from typing import Any, Dict, Optional, Union

import etcd
from twisted.python.failure import Failure

from etcdmirror.events import Event

#: errorCodes that mean "try again", not "you asked for something wrong".
TRANSIENT_ERROR_CODES = {300, 301, 400}


class EtcdUnavailable(etcd.EtcdConnectionFailed):
    """The request did not get an answer we can act on; it is worth retrying."""


class EtcdTimeout(EtcdUnavailable):
    """No answer (not even the response headers) within the request timeout."""


class TLSError(etcd.EtcdException):
    """The TLS handshake failed: an unknown CA, a wrong host name, a refused client cert."""


class BadResponse(EtcdUnavailable):
    """Something answered, but not with an etcd v2 response (proxy page, junk)."""


def is_transient(failure: Union[Failure, BaseException]) -> bool:
    """True when the error is worth retrying with backoff."""
    exc = failure.value if isinstance(failure, Failure) else failure
    if isinstance(exc, (EtcdUnavailable, etcd.EtcdLeaderElectionInProgress,
                        etcd.EtcdWatcherCleared)):
        return True
    payload = getattr(exc, "payload", None)
    return isinstance(payload, dict) and payload.get("errorCode") in TRANSIENT_ERROR_CODES


@dataclass(frozen=True)
class Answer:
    """A successful etcd answer: what it says happened and the indexes from the headers.

    ``event`` is all that replicating needs; ``result`` is the same answer as
    python-etcd's :class:`etcd.EtcdResult`, with the whole tree of a
    recursive read (``get_subtree()``), built when first asked for.
    """

    event: Event
    etcd_index: int
    cluster_id: Optional[str]
    #: The decoded answer (``action``, ``node``, ``prevNode``) behind :attr:`result`.
    payload: Dict[str, Any] = dataclasses.field(repr=False, compare=False)

    @classmethod
    def from_payload(cls, payload: Dict[str, Any], etcd_index: int,
                     cluster_id: Optional[str] = None) -> "Answer":
        """The answer for a decoded body that :func:`parse_answer` found well formed."""
        return cls(Event.from_payload(payload), etcd_index, cluster_id, payload)

    @cached_property
    def result(self) -> etcd.EtcdResult:
        payload = self.payload
        result = etcd.EtcdResult(
            action=payload["action"], node=payload["node"], prevNode=payload.get("prevNode"))
        result.etcd_index = self.etcd_index
        return result


@dataclass
class StreamEnd:
    """How a streaming watch ended without an error.

    ``idle``: we stopped it after it had been quiet (see
    :meth:`~etcdmirror.watches.EventStream.finish`); otherwise etcd ended it.
    ``events``: how many events it delivered.
    """

    etcd_index: Optional[int]
    cluster_id: Optional[str]
    events: int
    idle: bool


def parse_answer(body: bytes, code: int, etcd_index: Optional[int],
                 cluster_id: Optional[str], what: str) -> Answer:
    """The :class:`Answer` in ``body``, or raise what is wrong with it.

    ``code`` is the HTTP status, ``etcd_index`` and ``cluster_id`` the
    ``X-Etcd-Index`` and ``X-Etcd-Cluster-Id`` headers (None when missing or
    unreadable), ``what`` names the request in error messages.  Raises
    :func:`error_for`'s error for an error answer, :class:`BadResponse` for
    one that is not a usable etcd answer.
    """
    payload = _decode(body)
    if code >= 400 or payload is None or "errorCode" in payload:
        raise error_for(code, payload, body, etcd_index, cluster_id, what)
    if not isinstance(payload.get("node"), dict) or "action" not in payload:
        raise BadResponse(f"{what}: HTTP {code} without an etcd node: {_excerpt(body)}")
    if etcd_index is None:
        raise BadResponse(f"{what}: answer without X-Etcd-Index header")
    problem = _malformed(payload)
    if problem:
        raise BadResponse(f"{what}: malformed answer ({problem}): {_excerpt(body)}")
    return Answer.from_payload(payload, etcd_index, cluster_id)


def error_for(code: int, payload: Optional[Dict[str, Any]], body: bytes,
              etcd_index: Optional[int], cluster_id: Optional[str],
              what: str) -> etcd.EtcdException:
    """The exception for an error answer.

    ``payload`` is the decoded body (None when it is not a JSON object),
    ``body`` the raw bytes for the message.  The exception carries
    ``etcd_index`` and ``cluster_id`` (a cleared watch index names the index
    to resync from).
    """
    # etcd v2 answers some state errors (102 "Not a file", 104 "Not a
    # directory", 108 "Directory not empty") with HTTP 403: the errorCode
    # decides, the status only when there is none.
    has_code = payload is not None and isinstance(payload.get("errorCode"), int)
    if (code in (401, 403) and not has_code) or (has_code and payload["errorCode"] == 110):
        exc: etcd.EtcdException = etcd.EtcdInsufficientPermissions(
            f"{what}: permission denied (HTTP {code}); check the credentials", payload
        )
    elif has_code:
        try:
            etcd.EtcdError.handle(payload)
        except etcd.EtcdException as e:
            exc = e
        exc.args = (f"{what}: {exc.args[0] if exc.args else ''}",)
    else:
        exc = (EtcdUnavailable if code >= 500 else BadResponse)(
            f"{what}: HTTP {code}: {_excerpt(body)}"
        )
    exc.etcd_index = etcd_index
    exc.cluster_id = cluster_id
    return exc


#: The node fields the mirror relies on, and the types etcd gives them.
_NODE_FIELDS = {"key": str, "value": str, "dir": bool, "ttl": int, "expiration": str,
                "modifiedIndex": int, "createdIndex": int, "nodes": list}


def _malformed(payload: Dict[str, Any]) -> Optional[str]:
    """What is wrong with an answer's structure, or None when it is usable."""
    if not isinstance(payload.get("action"), str):
        return "no action"
    prev = payload.get("prevNode")
    if prev is not None and not isinstance(prev, dict):
        return "prevNode is not an object"
    top = payload["node"]
    stack = [top] + ([prev] if prev is not None else [])
    while stack:
        node = stack.pop()
        if not isinstance(node, dict):
            return "a node is not an object"
        for field, kind in _NODE_FIELDS.items():
            value = node.get(field)
            if value is not None and (not isinstance(value, kind)
                                      or (kind is int and isinstance(value, bool))):
                return f"{field} is not a {kind.__name__}"
        if "key" not in node and not (node is top and node.get("dir")):
            return "a node without key"
        stack.extend(node.get("nodes") or ())
    # etcd gives every node but the keyspace's root a modifiedIndex; an event
    # without one could not be ordered.
    if "key" in top and top.get("modifiedIndex") is None:
        return "a node without modifiedIndex"
    return None


def _decode(body: bytes) -> Optional[Dict[str, Any]]:
    try:
        payload = json.loads(body.decode("utf-8"))
    except (UnicodeDecodeError, ValueError):
        return None
    return payload if isinstance(payload, dict) else None


def _excerpt(body: bytes, limit: int = 200) -> str:
    text = body[:limit].decode("utf-8", "replace").replace("\n", " ")
    if not text:
        return "(empty body)"
    return repr(text) + ("..." if len(body) > limit else "")
