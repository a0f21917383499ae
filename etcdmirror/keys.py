"""Where a source key lands on the destination, and which keys we leave alone.

The rules are etcd-mirror 0.0.12's, so that a site can swap binaries without a
reload:

* without ``--strip`` the destination key is the destination prefix (trailing
  ``/`` removed) followed by the whole source key;
* with ``--strip`` the source prefix is removed from the source key first;
* the replication index lives at ``/__replication`` + destination prefix, or
  ``/__replication/__ROOT__`` when the destination prefix is ``/``.

Prefixes are path segments: ``/conftool`` covers ``/conftool`` and
``/conftool/...``, never ``/conftool2``.
"""

import re
from typing import Optional, Pattern

INDEX_ROOT = "/__replication"


class PrefixError(ValueError):
    """A prefix that is not an absolute etcd key."""


def normalize_prefix(prefix: str) -> str:
    """Return the prefix without trailing slashes; ``/`` stays ``/``.

    Raises :class:`PrefixError` for relative prefixes or empty segments.
    """
    if not prefix.startswith("/"):
        raise PrefixError(f"prefix {prefix!r} must start with '/'")
    stripped = prefix.rstrip("/")
    if "//" in stripped:
        raise PrefixError(f"prefix {prefix!r} has an empty path segment")
    return stripped or "/"


def _base(prefix: str) -> str:
    """The string that is glued in front of a relative key: '' for the root."""
    return "" if prefix == "/" else prefix


def is_under(key: str, prefix: str) -> bool:
    """True if ``key`` is ``prefix`` or lies below it (segment-wise)."""
    if prefix == "/":
        return key.startswith("/")
    return key == prefix or key.startswith(prefix + "/")


def index_key(dst_prefix: str) -> str:
    """The key that holds the replication index, as 0.0.12 names it."""
    dst = normalize_prefix(dst_prefix)
    return INDEX_ROOT + ("/__ROOT__" if dst == "/" else dst)


def probe_key(prefix: str) -> str:
    """A hidden, never-written key under ``prefix`` whose read tells the index.

    Under the prefix, so that credentials limited to it may read it; hidden
    (``_``), so that recursive reads and watches never see it.
    """
    return _base(normalize_prefix(prefix)) + "/__etcd_mirror_index_probe"


def compile_ignore(regex: Optional[str]) -> Optional[Pattern[str]]:
    """Compile ``--src-ignore-keys-regex`` (raises ``re.error`` when invalid)."""
    if regex is None or regex == "":
        return None
    return re.compile(regex)


class KeyMapper:
    """Maps keys between the source prefix and its image on the destination."""

    def __init__(
        self,
        src_prefix: str,
        dst_prefix: str,
        strip: bool = False,
        ignore: Optional[Pattern[str]] = None,
    ) -> None:
        self.src_prefix = normalize_prefix(src_prefix)
        self.dst_prefix = normalize_prefix(dst_prefix)
        self.strip = strip
        self.ignore = ignore
        self.index_key = index_key(self.dst_prefix)
        # The destination key that mirrors the source prefix itself.
        self.dst_root = self.to_dst(self.src_prefix)

    def to_dst(self, src_key: str) -> str:
        """Destination key for a source key under the source prefix."""
        if not is_under(src_key, self.src_prefix):
            raise ValueError(f"key {src_key!r} is outside the source prefix")
        rest = src_key
        if self.strip:
            rest = src_key[len(_base(self.src_prefix)):]
        if rest == "/":
            rest = ""
        key = _base(self.dst_prefix) + rest
        return key or "/"

    def to_src(self, dst_key: str) -> str:
        """Source key for a destination key under :attr:`dst_root`."""
        if not is_under(dst_key, self.dst_root):
            raise ValueError(f"key {dst_key!r} is outside {self.dst_root!r}")
        rest = dst_key[len(_base(self.dst_prefix)):] if self.dst_prefix != "/" else dst_key
        if self.strip:
            rest = _base(self.src_prefix) + (rest if rest != "/" else "")
        return rest or "/"

    def ignored(self, src_key: str) -> bool:
        """True when ``--src-ignore-keys-regex`` fully matches the source key."""
        return self.ignore is not None and self.ignore.fullmatch(src_key) is not None

    def overlaps(self, other_prefix: str) -> bool:
        """True when writing the destination image could feed the source prefix."""
        a, b = self.dst_root, normalize_prefix(other_prefix)
        return is_under(a, b) or is_under(b, a)
