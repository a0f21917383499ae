"""What the reverse of a mirror is, and what the operator does next (pure).

``etcd-mirror-switchover`` (:mod:`etcdmirror.switchover`) reverses a running
A->B mirror into B->A.  This module holds the parts that talk to no cluster:

* the reverse mapping.  A->B maps a source key under ``--src-prefix P`` to
  ``dst_root`` and below on B (:class:`~etcdmirror.keys.KeyMapper`); B->A must
  map every such key back.  ``--strip --src-prefix <dst_root> --dst-prefix P``
  does, with or without the forward ``--strip`` and for ``/`` prefixes too
  (``tests/test_switchover_plan.py`` checks it key by key);
* the ignore regex.  ``--src-ignore-keys-regex`` is matched against *source*
  keys: for B->A, against B's keys.  When the mapping leaves keys unchanged
  (``dst_root == P``, e.g. ``--strip --src-prefix /conftool --dst-prefix
  /conftool``) the same regex is right; otherwise a regex cannot be rewritten
  safely for the other side, so the switchover refuses and says why;
* the command-line options of this command (:func:`switchover_options`), and
  the next steps it prints: stop A->B, start B->A (the full command line, TLS
  and credentials files moved to the other side), make B writable.
"""

import re
import shlex
from dataclasses import dataclass
from typing import Any, Callable, Dict, List, Optional

import click

from etcdmirror.keys import KeyMapper

#: Exit statuses: done (or, with --dry-run, ready); refused; a cluster could
#: not be read (or a usage error, which click reports with the same status).
DONE, REFUSED, UNUSABLE = 0, 1, 2

#: etcd v2 keeps the last 1000 events of a cluster: B->A starts its watch at
#: the index the switchover wrote, which must still be in B's history.
HISTORY = 1000

EPILOG = ("Exit status: 0 done (with --dry-run: everything is ready), 1 refused: "
          "A still receives writes, the mirror is not caught up, the trees differ, or "
          "the reverse mirror could not be set up (the message says what to do), 2 a "
          "cluster could not be read, or a usage error.")


class Refused(Exception):
    """The switchover cannot go on; the message says why and what to do (exit 1)."""


@dataclass(frozen=True)
class Settings:
    """This command's own options."""

    quiet_seconds: float = 10.0
    timeout: float = 60.0
    instance: Optional[str] = None
    dry_run: bool = False


def switchover_options(f: Callable) -> Callable:
    """``--quiet-seconds``, ``--timeout``, ``--instance``, ``--dry-run``."""
    decorators = [
        click.option("--quiet-seconds", default=10.0, show_default=True, metavar="SECONDS",
                     type=click.FloatRange(0.1, 3600),
                     help="How long A must receive no write under --src-prefix."),
        click.option("--timeout", default=60.0, show_default=True, metavar="SECONDS",
                     type=click.FloatRange(0, 3600),
                     help="How long to wait for the mirror to apply A's last write "
                     "under --src-prefix."),
        click.option("--instance", default=None, metavar="NAME",
                     help="The systemd instance of the A->B mirror (etcd-mirror@NAME), "
                     "to print the exact systemctl commands."),
        click.option("--dry-run", is_flag=True,
                     help="Run the checks and print what would be written and the next "
                     "steps; write nothing."),
    ]
    for decorator in reversed(decorators):
        f = decorator(f)
    return f


def reverse_mapper(forward: KeyMapper) -> KeyMapper:
    """The mapping of the B->A mirror that undoes ``forward`` (raises :class:`Refused`)."""
    if forward.ignore is not None and forward.dst_root != forward.src_prefix:
        raise Refused(
            f"--src-ignore-keys-regex {forward.ignore.pattern!r} is matched against A's "
            f"keys under {forward.src_prefix}; the B->A mirror would match it against B's "
            f"keys under {forward.dst_root}, which are named differently, and a regular "
            "expression cannot be rewritten safely for them. Nothing was written. Switch "
            "over by hand: stop A->B, then start B->A once with --reload and a regex "
            f"written for B's keys (see README, \"Switchover and failover\").")
    return KeyMapper(forward.dst_root, forward.src_prefix, strip=True, ignore=forward.ignore)


def mirror_args(reverse: KeyMapper, sides: Dict[str, Any]) -> List[str]:
    """The options of the B->A mirror: its mapping, and each side's files swapped."""
    args = ["--strip", "--src-prefix", reverse.src_prefix, "--dst-prefix", reverse.dst_prefix]
    if reverse.ignore is not None:
        args += ["--src-ignore-keys-regex", reverse.ignore.pattern]
    src_api, dst_api = sides.get("dst_api") or "v2", sides.get("src_api") or "v2"
    if (src_api, dst_api) != ("v2", "v2"):
        args += ["--src-api", src_api, "--dst-api", dst_api]
    for name in ("credentials_file", "ca_file", "cert_file", "key_file"):
        for old, new in (("dst", "src"), ("src", "dst")):
            value = sides.get(f"{old}_{name}")
            if value:
                args += [f"--{new}-{name.replace('_', '-')}", value]
    return args


def _line(words: List[str]) -> str:
    return " ".join(shlex.quote(w) for w in words)


def unit_opts(args: List[str]) -> Optional[str]:
    """``args`` as an ``ETCD_MIRROR_OPTS=`` value, quoted as debian/README.Debian says
    (single quotes around the value, double quotes around an argument, its
    backslashes doubled); None when an argument holds a single quote."""
    words = [a if re.fullmatch(r"[\w@%+=:,./-]+", a) else
             '"' + a.replace("\\", "\\\\").replace('"', '\\"') + '"' for a in args]
    value = " ".join(words)
    return None if "'" in value else f"'{value}'"


def next_steps(forward: KeyMapper, reverse: KeyMapper, a: str, b: str,
               sides: Dict[str, Any], settings: Settings, credentials: bool) -> List[str]:
    """What the operator does next, in order, as printed lines."""
    args = mirror_args(reverse, sides)
    if settings.instance:
        stop = f"systemctl stop etcd-mirror@{shlex.quote(settings.instance)}"
    else:
        stop = "stop the etcd-mirror process that replicates A into B (under systemd: " \
               "systemctl stop etcd-mirror@INSTANCE)"
    lines = [
        "next steps, in this order:",
        f"  1. stop the A->B mirror: {stop}",
        "     (with --ha: on every host that runs it, standbys included)",
        f"  2. start the B->A mirror, WITHOUT --reload, before B takes {HISTORY} writes "
        "(etcd's event history), usually on a host near A:",
        f"       {_line(['etcd-mirror', *args, b, a])}",
        "     add the options your A->B mirror has besides the mapping and TLS ones "
        "(--port, --max-resync-deletes, --ha, ...);",
        "     under systemd, the instance's /etc/etcd-mirror/<instance>.conf holds:",
        f"       SRC={shlex.quote(b)}",
        f"       DST={shlex.quote(a)}",
    ]
    opts = unit_opts(args)
    lines.append(f"       ETCD_MIRROR_OPTS={opts}" if opts is not None else
                 "       ETCD_MIRROR_OPTS= the options above, quoted as README.Debian says")
    if credentials:
        lines.append("     the URLs above carry no credentials: give B's as "
                     "--src-credentials-file and A's as --dst-credentials-file")
    lines += [
        "     its /status must show state \"replicating\" and "
        "etcdmirror_resyncs_total stay 0; check the copy with:",
        f"       {_line(['etcd-mirror-verify', *args, b, a])}",
        f"  3. make B writable under {forward.dst_root}, and keep A read-only under "
        f"{forward.src_prefix}: the B->A mirror is now its only writer there.",
    ]
    return lines
