"""Cluster addresses given on the command line.

``SRC`` and ``DST`` are full URLs, as in etcd-mirror 0.0.12, optionally with
``user:password@`` and optionally a comma-separated list of endpoints of one
cluster.  Parsing happens before any network call so that a bad URL is a usage
error, and the password is kept apart from the URL from then on: everything
that is printed (logs, ``/status``, metric labels, exceptions) uses the
redacted form.
"""

from dataclasses import dataclass, field
from typing import List, Optional, Tuple
from urllib.parse import unquote, urlsplit


class EndpointError(ValueError):
    """A cluster URL that cannot be used."""


@dataclass(frozen=True)
class Endpoint:
    """One etcd client URL, without credentials."""

    scheme: str
    host: str
    port: int

    @property
    def url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{self.scheme}://{host}:{self.port}"

    def __str__(self) -> str:
        return self.url


@dataclass(frozen=True)
class Cluster:
    """The endpoints of one etcd cluster and the credentials to use with it."""

    endpoints: Tuple[Endpoint, ...]
    username: Optional[str] = None
    password: Optional[str] = field(default=None, repr=False)

    @property
    def auth(self) -> Optional[Tuple[str, str]]:
        if self.username is None:
            return None
        return (self.username, self.password or "")

    @property
    def display(self) -> str:
        """The cluster as it may be shown anywhere: no password."""
        return ",".join(e.url for e in self.endpoints)

    def __str__(self) -> str:
        return self.display


def parse_cluster(text: str) -> Cluster:
    """Parse ``SRC``/``DST``: one URL or several comma-separated ones.

    Raises :class:`EndpointError` naming the bad part (never the password).
    """
    parts = [p.strip() for p in text.split(",")]
    if not text.strip() or any(not p for p in parts):
        raise EndpointError("empty endpoint in cluster URL list")
    endpoints: List[Endpoint] = []
    creds = set()
    for part in parts:
        endpoint, user, password = _parse_one(part)
        endpoints.append(endpoint)
        if user is not None:
            creds.add((user, password))
    if len(creds) > 1:
        raise EndpointError("endpoints of one cluster carry different credentials")
    user, password = creds.pop() if creds else (None, None)
    return Cluster(tuple(endpoints), user, password)


def _parse_one(text: str) -> Tuple[Endpoint, Optional[str], Optional[str]]:
    try:
        parsed = urlsplit(text)
        port = parsed.port
    except ValueError:
        raise EndpointError(f"not a valid URL: {_redact(text)!r}") from None
    if parsed.scheme not in ("http", "https"):
        raise EndpointError(
            f"unsupported URL scheme in {_redact(text)!r}: use http:// or https://"
        )
    if not parsed.hostname:
        raise EndpointError(f"no host in URL {_redact(text)!r}")
    if parsed.path not in ("", "/") or parsed.query or parsed.fragment:
        raise EndpointError(
            f"URL {_redact(text)!r} must be scheme://host:port, without a path"
        )
    if port is None:
        port = 2379  # etcd's registered client port
    user = unquote(parsed.username) if parsed.username is not None else None
    password = unquote(parsed.password) if parsed.password is not None else None
    if user is not None and password is None:
        raise EndpointError(f"URL {_redact(text)!r} has a user but no password")
    return Endpoint(parsed.scheme, parsed.hostname, port), user, password


def _redact(text: str) -> str:
    """Hide anything between ``://`` and ``@`` so errors never print passwords."""
    head, sep, rest = text.partition("://")
    if not sep or "@" not in rest:
        return text
    return head + "://***@" + rest.rsplit("@", 1)[1]


class EndpointCursor:
    """Which of a cluster's endpoints requests go to now; the next one after a failure."""

    def __init__(self, cluster: Cluster) -> None:
        self.cluster = cluster
        self._endpoint_no = 0

    @property
    def endpoint(self) -> Endpoint:
        return self.cluster.endpoints[self._endpoint_no]

    def next_endpoint(self) -> None:
        """Move to the next endpoint of the cluster (after a transport failure)."""
        self._endpoint_no = (self._endpoint_no + 1) % len(self.cluster.endpoints)
