"""The options ``etcd-mirror`` and its companion commands share, and their checks.

Each callback turns what the operator typed into what the code uses (a
:class:`~etcdmirror.endpoints.Cluster`, a compiled regex, a
:class:`~etcdmirror.guards.DeleteLimit`) or a usage error naming the flag.
"""

import re
from typing import Any, Callable, Dict, Optional, Tuple

import click

from etcdmirror.endpoints import Cluster, EndpointError, parse_cluster
from etcdmirror.guards import DEFAULT_MAX_RESYNC_DELETES, DeleteLimit
from etcdmirror.keys import PrefixError, compile_ignore, normalize_prefix


def prefix_callback(ctx: click.Context, param: click.Parameter, value: str) -> str:
    try:
        normalize_prefix(value)
    except PrefixError as e:
        raise click.BadParameter(str(e)) from None
    return value


def regex_callback(ctx: click.Context, param: click.Parameter, value: Optional[str]):
    try:
        return compile_ignore(value)
    except re.error as e:
        raise click.BadParameter(f"invalid regular expression {value!r}: {e}") from None


def cluster_callback(ctx: click.Context, param: click.Parameter, value: str) -> Cluster:
    try:
        return parse_cluster(value)
    except EndpointError as e:
        raise click.BadParameter(str(e)) from None


def delete_limit_callback(ctx: click.Context, param: click.Parameter, value: str) -> DeleteLimit:
    try:
        return DeleteLimit.parse(value)
    except ValueError as e:
        raise click.BadParameter(str(e)) from None


def max_resync_deletes_option(help_text: str) -> Callable[[Callable], Callable]:
    """``--max-resync-deletes N|N%``: shared by ``etcd-mirror`` and ``etcd-mirror-verify``."""
    return click.option("--max-resync-deletes", default=str(DEFAULT_MAX_RESYNC_DELETES),
                        show_default=True, metavar="N|N%", callback=delete_limit_callback,
                        help=help_text)


def mapping_options(f: Callable) -> Callable:
    """What is mirrored where: shared by ``etcd-mirror`` and ``etcd-mirror-verify``."""
    decorators = [
        click.option("--strip", is_flag=True, help="Strip the source prefix from the keys."),
        click.option("--src-prefix", default="/", show_default=True, callback=prefix_callback,
                     help="Prefix to replicate from the source."),
        click.option("--dst-prefix", default="/replica", show_default=True,
                     callback=prefix_callback, help="Prefix to replicate to on the destination."),
        click.option("--src-ignore-keys-regex", "ignore", default=None, metavar="REGEX",
                     callback=regex_callback,
                     help="Do not replicate source keys that fully match REGEX (the "
                     "index still advances; the destination keys are never touched)."),
    ]
    for decorator in reversed(decorators):
        f = decorator(f)
    return f


def side_options(side: str) -> Callable[[Callable], Callable]:
    """Credentials and TLS options of one side (``src`` or ``dst``)."""
    def decorate(f: Callable) -> Callable:
        for name, what in (("key-file", "The private key of --{side}-cert-file (default: "
                                        "in the same file)."),
                           ("cert-file", "Client certificate (PEM) to show {SIDE} (mutual "
                                         "TLS)."),
                           ("ca-file", "CA certificates (PEM) to verify {SIDE}'s server "
                                       "certificate with (default: the system's).")):
            f = click.option(f"--{side}-{name}", type=click.Path(dir_okay=False), default=None,
                             metavar="FILE",
                             help=what.format(side=side, SIDE=side.upper()))(f)
        return click.option(
            f"--{side}-credentials-file", type=click.Path(dir_okay=False), default=None,
            metavar="FILE",
            help=f"Read 'user:password' for {side.upper()} from FILE (or from "
            f"${CREDENTIALS_ENV[side]}) instead of the URL, so that the password is "
            "not in the process list.")(f)
    return decorate


def api_option(side: str, help_text: str) -> Callable[[Callable], Callable]:
    """``--src-api`` or ``--dst-api``: the etcd API of one side (:mod:`etcdmirror.sides`)."""
    return click.option(f"--{side}-api", type=click.Choice(["v2", "v3"]), default="v2",
                        show_default=True, help=help_text)


def api_options(f: Callable) -> Callable:
    """``--src-api`` and ``--dst-api``, for the mirror and the commands that take its sides."""
    for side in ("dst", "src"):
        f = api_option(side, f"The etcd API (and keyspace) {side.upper()} is read and written "
                       "through. Modes: v2 -> v2, v3 -> v3, v2 -> v3 (also inside one "
                       "cluster: its v2 and v3 keyspaces are separate).")(f)
    return f


def check_mode(src_api: str, dst_api: str) -> None:
    """A usage error for a pair of APIs the mirror cannot run."""
    from etcdmirror.sides import mode_problem

    problem = mode_problem(src_api, dst_api)
    if problem:
        raise click.BadParameter(problem, param_hint="'--src-api'/'--dst-api'")


def cluster_arguments(f: Callable) -> Callable:
    f = click.argument("dst", metavar="DST", callback=cluster_callback)(f)
    f = click.argument("src", metavar="SRC", callback=cluster_callback)(f)
    return side_options("src")(side_options("dst")(f))


#: Environment variables that may carry 'user:password' for each side.
CREDENTIALS_ENV = {"src": "ETCDMIRROR_SRC_CREDENTIALS", "dst": "ETCDMIRROR_DST_CREDENTIALS"}


def with_credentials(cluster: Cluster, side: str, path: Optional[str]) -> Cluster:
    """Credentials from a file or the environment; a usage error when unusable.

    The file's content and the password are never echoed, only its path.
    """
    import dataclasses
    import os

    flag = f"--{side}-credentials-file"
    if path is not None:
        try:
            with open(path, encoding="utf-8") as f:
                text = f.readline().rstrip("\r\n")
        except OSError as e:
            raise click.BadParameter(f"cannot read {path!r}: {e.strerror}",
                                     param_hint=f"'{flag}'") from None
        origin = f"{path!r}"
    elif os.environ.get(CREDENTIALS_ENV[side]):
        text, origin = os.environ[CREDENTIALS_ENV[side]], f"${CREDENTIALS_ENV[side]}"
    else:
        return cluster
    user, sep, password = text.partition(":")
    if not sep or not user:
        raise click.BadParameter(f"{origin} must hold 'user:password'",
                                 param_hint=f"'{flag}'")
    if cluster.username is not None:
        raise click.BadParameter(f"credentials are given both in the URL and in {origin}",
                                 param_hint=f"'{flag}'")
    return dataclasses.replace(cluster, username=user, password=password)


def resolve_side(cluster: Cluster, side: str, options: Dict[str, Any]) -> Tuple[Cluster, Any]:
    """Credentials and TLS of one side: the cluster to use and its TLS policy (or None)."""
    cluster = with_credentials(cluster, side, options.pop(f"{side}_credentials_file", None))
    files = [options.pop(f"{side}_{name}", None) for name in ("ca_file", "cert_file", "key_file")]
    if not any(files):
        return cluster, None
    from etcdmirror.tls import TLSConfigError, TLSFiles

    if files[2] and not files[1]:
        raise click.BadParameter("a key without a certificate", param_hint=f"'--{side}-key-file'")
    if not all(e.scheme == "https" for e in cluster.endpoints):
        raise click.BadParameter(f"TLS files given but {side.upper()} is not https://",
                                 param_hint=f"'--{side}-ca-file'")
    try:
        return cluster, TLSFiles(*files).policy()
    except TLSConfigError as e:
        raise click.BadParameter(f"cannot use the TLS files: {e}",
                                 param_hint=f"'--{side}-ca-file'/'--{side}-cert-file'") from None
