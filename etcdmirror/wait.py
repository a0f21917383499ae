"""The read-your-writes barrier from a shell: ``etcd-mirror-wait``, and its limits.

A tool that wrote to the source (say, depooled a server in one datacenter)
takes the write's index (the answer's ``X-Etcd-Index``, or the node's
``modifiedIndex``) and asks the mirror that feeds the other datacenter's
replica to answer once the replica holds it, instead of sleeping.  The
mirror's HTTP interface does the waiting (``/wait``, in
:mod:`etcdmirror.web`); this is a one-shot client of it, on the standard
library only: no reactor, nothing to set up for a single request.

The limits below are shared by both sides, so that the command line refuses
what the server would cut.
"""

import json
import math
from typing import Any, Callable, Optional

#: ``/wait``'s timeout when none is given (seconds).
DEFAULT_TIMEOUT = 30.0
#: The largest ``/wait`` timeout: the server cuts a larger one to this, and
#: ``etcd-mirror-wait --timeout`` refuses it.
MAX_TIMEOUT = 300.0
#: How much longer than ``timeout`` the client waits for the answer.
ANSWER_SLACK = 10.0

#: Exit statuses of ``etcd-mirror-wait``.
REACHED = 0
#: The mirror answered: not there (timed out, or the mirror failed or is stopping).
NOT_REACHED = 1
#: No usable answer (or a usage error, which click reports with the same status).
NO_ANSWER = 2


def mirror_url(host: str, port: int) -> str:
    """The base URL of a mirror's HTTP interface (IPv6 addresses bracketed)."""
    if ":" in host and not host.startswith("["):
        host = f"[{host}]"
    return f"http://{host}:{port}"


def wait_command(base_url: str, index: int, timeout: float,
                 echo: Callable[[str], None], echo_err: Callable[[str], None]) -> int:
    """The body of ``etcd-mirror-wait``: one ``GET /wait``; returns the exit status.

    Prints one line: on ``echo`` what the mirror answered (reached, or not
    with the replica index), on ``echo_err`` why there is no answer.  Goes
    straight to the mirror, whatever ``$http_proxy`` says.
    """
    import http.client
    import urllib.error
    import urllib.request

    url = f"{base_url}/wait?index={index}&timeout={timeout!r}"
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    try:
        try:
            with opener.open(url, timeout=timeout + ANSWER_SLACK) as answer:
                code, body = answer.status, answer.read()
        except urllib.error.HTTPError as e:
            code, body = e.code, e.read()
    except (urllib.error.URLError, http.client.HTTPException, OSError) as e:
        reason = getattr(e, "reason", None) or e
        reason = getattr(reason, "strerror", None) or reason
        echo_err(f"could not ask the mirror at {base_url}: {reason}")
        return NO_ANSWER
    doc = _decode(body)
    if code == 400 and doc is not None and "error" in doc:
        echo_err(f"the mirror at {base_url} refused the question: {doc['error']}")
        return NO_ANSWER
    if code not in (200, 503, 504) or doc is None or not isinstance(
            doc.get("replica_index"), int):
        echo_err(f"{base_url} did not answer as an etcd-mirror with /wait does "
                 f"(HTTP {code}); is it one, and a version with /wait?")
        return NO_ANSWER
    replica, state = doc["replica_index"], doc.get("state", "unknown")
    waited = doc.get("waited_seconds") or 0.0
    if code == 200:
        echo(f"reached: the replica holds source index {index} (replica index {replica}, "
             f"waited {waited:.2f} s)")
        return REACHED
    if code == 504:
        echo(f"timed out after {waited:.1f} s: replica index {replica}, source index "
             f"{index} not reached (mirror {state})")
    else:
        echo(f"not reached: the mirror is {state}; replica index {replica}, source index "
             f"{index} not reached")
    return NOT_REACHED


def _decode(body: bytes) -> Optional[Any]:
    """The JSON object in ``body``, or None."""
    try:
        doc = json.loads(body)
    except ValueError:
        return None
    return doc if isinstance(doc, dict) else None


def check_timeout(timeout: float) -> Optional[str]:
    """Why ``timeout`` is not a usable ``--timeout``, or None."""
    if not math.isfinite(timeout) or not 0 <= timeout <= MAX_TIMEOUT:
        return f"must be a number of seconds from 0 to {MAX_TIMEOUT:g}"
    return None
