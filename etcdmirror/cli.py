"""The command lines, ``etcd-mirror``'s compatible with etcd-mirror 0.0.12: parsing only.

Everything the operator typed is validated here, before any connection, so a
typo is a usage error (exit 2) naming the flag rather than a daemon that
starts and dies.  Exit statuses: 0 clean stop, 1 needs an operator (systemd:
``RestartPreventExitStatus=1``), 2 usage error, anything else a crash.
"""

import logging
import re
import sys
from typing import Any, Callable, Dict, Optional, Tuple

import click

from etcdmirror import __version__
from etcdmirror.endpoints import Cluster, EndpointError, parse_cluster
from etcdmirror.guards import DEFAULT_MAX_RESYNC_DELETES, DeleteLimit
from etcdmirror.keys import KeyMapper, PrefixError, compile_ignore, normalize_prefix
from etcdmirror.logs import LEVELS
from etcdmirror.switchplan import EPILOG as SWITCHOVER_EPILOG, switchover_options
from etcdmirror.wait import DEFAULT_TIMEOUT, MAX_TIMEOUT, check_timeout

log = logging.getLogger("etcdmirror")

def _prefix(ctx: click.Context, param: click.Parameter, value: str) -> str:
    try:
        normalize_prefix(value)
    except PrefixError as e:
        raise click.BadParameter(str(e)) from None
    return value


def _regex(ctx: click.Context, param: click.Parameter, value: Optional[str]):
    try:
        return compile_ignore(value)
    except re.error as e:
        raise click.BadParameter(f"invalid regular expression {value!r}: {e}") from None


def _cluster(ctx: click.Context, param: click.Parameter, value: str) -> Cluster:
    try:
        return parse_cluster(value)
    except EndpointError as e:
        raise click.BadParameter(str(e)) from None


def _delete_limit(ctx: click.Context, param: click.Parameter, value: str) -> DeleteLimit:
    try:
        return DeleteLimit.parse(value)
    except ValueError as e:
        raise click.BadParameter(str(e)) from None


def max_resync_deletes_option(help_text: str) -> Callable[[Callable], Callable]:
    """``--max-resync-deletes N|N%``: shared by ``etcd-mirror`` and ``etcd-mirror-verify``."""
    return click.option("--max-resync-deletes", default=str(DEFAULT_MAX_RESYNC_DELETES),
                        show_default=True, metavar="N|N%", callback=_delete_limit,
                        help=help_text)


def mapping_options(f: Callable) -> Callable:
    """What is mirrored where: shared by ``etcd-mirror`` and ``etcd-mirror-verify``."""
    decorators = [
        click.option("--strip", is_flag=True, help="Strip the source prefix from the keys."),
        click.option("--src-prefix", default="/", show_default=True, callback=_prefix,
                     help="Prefix to replicate from the source."),
        click.option("--dst-prefix", default="/replica", show_default=True,
                     callback=_prefix, help="Prefix to replicate to on the destination."),
        click.option("--src-ignore-keys-regex", "ignore", default=None, metavar="REGEX",
                     callback=_regex,
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


def cluster_arguments(f: Callable) -> Callable:
    f = click.argument("dst", metavar="DST", callback=_cluster)(f)
    f = click.argument("src", metavar="SRC", callback=_cluster)(f)
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


URL_HELP = ("SRC and DST are full URLs (http:// or https://, optionally "
            "user:password@host:port), or comma-separated lists of the endpoints of one "
            "cluster.")


@click.command(
    context_settings={"help_option_names": ["-h", "--help"]},
    epilog="Allows replicating a specific prefix in one etcd cluster to a different "
    "prefix on another cluster. " + URL_HELP + " Exit status: 0 clean stop, 1 the "
    "operator is needed (the log says why), 2 usage error.",
)
@click.option("-d", "--debug", is_flag=True,
              help="Log at debug level (the same as --log-level debug).")
@click.option("--log-level", type=click.Choice(list(LEVELS)), default="info",
              show_default=True,
              help="Least important messages logged. Under systemd, lines carry their "
              "syslog priority for journald (journalctl -p err) instead of a timestamp.")
@click.option("--event-log/--no-event-log", default=True, show_default=True,
              help="Log one INFO line per replicated event, as 0.0.12 did: \"Replicating "
              "key KEY at index N (action, outcome)\", and one per key a resync writes.")
@click.option(
    "--reload", is_flag=True,
    help="Bring the destination to a consistent snapshot of the source (only the "
    "differences are written), then replicate from the snapshot's index.")
@mapping_options
@click.option("--port", default=8000, show_default=True, type=click.IntRange(0, 65535),
              help="Port of the HTTP interface (/lag, /metrics, /status, /healthz, /wait).")
@click.option("--listen-address", default="", metavar="ADDRESS",
              help="Address the HTTP interface binds to (default: all), e.g. 127.0.0.1.")
@click.option("--no-auto-resync", is_flag=True,
              help="When the source's event history no longer holds our index, exit 1 "
              "instead of resynchronising from a snapshot.")
@click.option("--on-divergence", type=click.Choice(["fail", "resync"]), default="fail",
              show_default=True,
              help="When a conditional event fails on the destination because something "
              "else wrote the replica: exit 1, or resynchronise from a snapshot.")
@max_resync_deletes_option(
    "An automatic resync (any but --reload: a cleared index, --on-divergence resync, a "
    "TTL'd directory run out, one cut short) that would delete more replica keys than "
    "this writes nothing and exits 1, listing some of them. N keys (0: it never "
    "deletes), or N% of the replica's keys, rounded up. A source prefix that reads "
    "empty while the replica has keys is always refused. --reload is not limited.")
@click.option("--verify-interval", default=0.0, show_default=True, metavar="SECONDS",
              type=click.FloatRange(min=0),
              help="Compare the replica with the source every SECONDS (0: never) and "
              "export etcdmirror_divergent_keys.")
@click.option("--heartbeat-key", default=None, metavar="KEY",
              help="Write the current time to this SOURCE key (under --src-prefix) every "
              "--heartbeat-interval seconds: readers of the replica get its true age "
              "with one GET. Opt-in: it writes to the source.")
@click.option("--heartbeat-interval", default=5.0, show_default=True, metavar="SECONDS",
              type=click.FloatRange(0.1, 3600),
              help="How often to write the heartbeat and to publish the replica's "
              "freshness on the destination.")
@click.option("--max-replica-age", default=0.0, show_default=True, metavar="SECONDS",
              type=click.FloatRange(min=0),
              help="/healthz answers 503 when the replica is older than this (0: never).")
@click.option("--watch-concurrency", default=16, show_default=True, metavar="N",
              type=click.IntRange(1, 256),
              help="Watches in flight at once while catching up: up to N events per "
              "round trip to the source.")
@click.option("--watch-stream/--no-watch-stream", default=True, show_default=True,
              help="Once caught up, read events from one streaming watch (stream=true) "
              "instead of one request per event. Turn it off behind a proxy that "
              "buffers chunked answers.")
@click.option("--watch-idle-timeout", default=5.0, show_default=True, metavar="SECONDS",
              type=click.FloatRange(0.1, 600),
              help="Re-register a watch that saw no event for this long, to learn the "
              "source's current index.")
@click.option("--check-config", is_flag=True,
              help="Validate the options and exit 0, without connecting to anything.")
@click.version_option(__version__, "--version", message="%(version)s")
@cluster_arguments
def main(debug: bool, log_level: str, event_log: bool, reload: bool, strip: bool,
         src_prefix: str, dst_prefix: str,
         ignore: Any, port: int, no_auto_resync: bool, on_divergence: str,
         max_resync_deletes: DeleteLimit,
         verify_interval: float, heartbeat_key: Optional[str], heartbeat_interval: float,
         max_replica_age: float, watch_concurrency: int, watch_stream: bool,
         watch_idle_timeout: float, check_config: bool, listen_address: str,
         src: Cluster, dst: Cluster, **sides: Any) -> None:
    """Etcd MirrorMaker: replicate an etcd v2 prefix into another cluster."""
    src, src_tls = resolve_side(src, "src", sides)
    dst, dst_tls = resolve_side(dst, "dst", sides)
    mapper = KeyMapper(src_prefix, dst_prefix, strip=strip, ignore=ignore)
    if heartbeat_key is not None:
        _check_heartbeat_key(heartbeat_key, mapper)
    if check_config:
        click.echo(f"configuration ok: {src.display}{mapper.src_prefix} -> "
                   f"{dst.display}{mapper.dst_root} (index {mapper.index_key})")
        return
    setup_logging(debug, level=LEVELS[log_level])
    from etcdmirror.controller import Options
    from etcdmirror.daemon import DaemonOptions, run
    from etcdmirror.watcher import WatchSettings
    options = Options(reload=reload, event_log=event_log, auto_resync=not no_auto_resync,
                      on_divergence=on_divergence, heartbeat_key=heartbeat_key,
                      max_resync_deletes=max_resync_deletes)
    daemon = DaemonOptions(
        watch=WatchSettings(concurrency=watch_concurrency, stream=watch_stream,
                            idle_timeout=watch_idle_timeout),
        verify_interval=verify_interval, heartbeat_interval=heartbeat_interval,
        max_replica_age=max_replica_age, listen_address=listen_address,
        src_tls=src_tls, dst_tls=dst_tls)
    sys.exit(run(src, dst, mapper, dst_prefix, port, options, daemon))


@click.command(
    context_settings={"help_option_names": ["-h", "--help"]},
    epilog=URL_HELP + " Exit status (diff's convention): 0 identical (with --plan: "
    "nothing to write or delete), 1 different, 2 the trees could not be compared (or a "
    "usage error).",
)
@click.option("-d", "--debug", is_flag=True, help="Show debug output.")
@mapping_options
@click.option("--plan", is_flag=True,
              help="Print the writes and deletes a resync would make now (TTLs compared "
              "as a resync does), how many replica keys it would delete, and whether an "
              "automatic resync would be refused. Writes nothing.")
@max_resync_deletes_option(
    "With --plan: the mirror's --max-resync-deletes, to tell whether an automatic "
    "resync would be refused.")
@click.version_option(__version__, "--version", message="%(version)s")
@cluster_arguments
def verify_main(debug: bool, strip: bool, src_prefix: str, dst_prefix: str, ignore: Any,
                plan: bool, max_resync_deletes: DeleteLimit,
                src: Cluster, dst: Cluster, **sides: Any) -> None:
    """Compare the replica with a quorum snapshot of the source and print differences.

    Takes the same options as etcd-mirror; compares presence, dir-ness and value
    (not TTLs). Run it while the source is quiet for an exact answer: events in
    flight show up as differences. With --plan, print what a resync would do instead.
    """
    src, src_tls = resolve_side(src, "src", sides)
    dst, dst_tls = resolve_side(dst, "dst", sides)
    setup_logging(debug, level=logging.WARNING)
    mapper = KeyMapper(src_prefix, dst_prefix, strip=strip, ignore=ignore)
    from twisted.internet import task
    from etcdmirror.verify import verify_command
    task.react(verify_command, (src, dst, mapper, src_tls, dst_tls, click.echo,
                                lambda line: click.echo(line, err=True),
                                plan, max_resync_deletes))


@click.command(
    context_settings={"help_option_names": ["-h", "--help"]},
    epilog="DST is the destination cluster's URL (or comma-separated endpoints). Prints "
    "one status line, with the age as performance data. Exit status (Nagios/NRPE "
    "plugin convention): 0 OK, 1 WARNING (older than --warning), 2 CRITICAL (older "
    "than --critical), 3 UNKNOWN (the age cannot be read); a usage error exits 2.",
)
@click.option("-w", "--warning", type=click.FloatRange(min=0), metavar="SECONDS",
              default=None, help="WARNING (exit 1) when the replica is older than this "
              "(default: the same as --critical).")
@click.option("-c", "--critical", "--max-age", type=click.FloatRange(min=0), metavar="SECONDS",
              required=True, help="CRITICAL (exit 2) when the replica is older than this. "
              "--max-age is its old name.")
@click.option("--dst-prefix", default="/replica", show_default=True, callback=_prefix,
              help="The mirror's --dst-prefix.")
@click.option("--heartbeat-key", default=None, metavar="KEY",
              help="The mirror's --heartbeat-key (a source key): read its replica instead "
              "of the freshness the mirror publishes.")
@click.option("--src-prefix", default="/", show_default=True, callback=_prefix,
              help="The mirror's --src-prefix (with --heartbeat-key).")
@click.option("--strip", is_flag=True, help="The mirror's --strip (with --heartbeat-key).")
@side_options("dst")
@click.version_option(__version__, "--version", message="%(version)s")
@click.argument("dst", metavar="DST", callback=_cluster)
def freshness_main(warning: Optional[float], critical: float, dst_prefix: str,
                   heartbeat_key: Optional[str], src_prefix: str, strip: bool, dst: Cluster,
                   **sides: Any) -> None:
    """How old is the replica? Reads only the destination; prints the age in seconds.

    A Nagios/NRPE check, and for scripts that act on the replica's
    configuration: stop acting when this exits non-zero, the replica may be
    cut off from its source.
    """
    if warning is None or warning > critical:
        warning = critical
    dst, dst_tls = resolve_side(dst, "dst", sides)
    mapper = KeyMapper(src_prefix, dst_prefix, strip=strip)
    if heartbeat_key is not None:
        _check_heartbeat_key(heartbeat_key, mapper)
    setup_logging(False, level=logging.WARNING)
    from twisted.internet import task
    from etcdmirror.freshness import check_freshness
    task.react(check_freshness, (dst, mapper, heartbeat_key, warning, critical, dst_tls,
                                 click.echo))


def _wait_timeout(ctx: click.Context, param: click.Parameter, value: float) -> float:
    problem = check_timeout(value)
    if problem:
        raise click.BadParameter(f"{value!r}: {problem}")
    return value


@click.command(
    context_settings={"help_option_names": ["-h", "--help"]},
    epilog="Exit status: 0 the replica holds the index; 1 it does not (timed out, or the "
    "mirror failed or is stopping; the replica index is printed); 2 the mirror could not "
    "be asked (no answer, not an etcd-mirror), or a usage error.",
)
@click.option("--index", required=True, type=click.IntRange(min=0), metavar="N",
              help="The source index to wait for: the X-Etcd-Index of the write's answer "
              "(or the written node's modifiedIndex).")
@click.option("--timeout", default=DEFAULT_TIMEOUT, show_default=True, type=float,
              metavar="SECONDS", callback=_wait_timeout,
              help=f"Give up after SECONDS (0: answer at once; at most {MAX_TIMEOUT:g}).")
@click.option("--host", default="127.0.0.1", show_default=True, metavar="HOST",
              help="Host of the mirror's HTTP interface (see its --listen-address).")
@click.option("--port", default=8000, show_default=True, type=click.IntRange(1, 65535),
              metavar="N", help="Port of the mirror's HTTP interface (its --port).")
@click.version_option(__version__, "--version", message="%(version)s")
def wait_main(index: int, timeout: float, host: str, port: int) -> None:
    """Wait until a running etcd-mirror's replica holds a source index.

    A read-your-writes barrier: after writing to the source, give the
    write's index; this returns once the replica the mirror writes holds
    everything up to it, instead of sleeping. Asks the mirror's HTTP
    interface (GET /wait); the mirror may be on another host.
    """
    from etcdmirror.wait import mirror_url, wait_command

    sys.exit(wait_command(mirror_url(host, port), index, timeout, click.echo,
                          lambda line: click.echo(line, err=True)))


@click.command(context_settings={"help_option_names": ["-h", "--help"]},
               epilog=URL_HELP + " " + SWITCHOVER_EPILOG)
@click.option("-d", "--debug", is_flag=True, help="Show debug output.")
@mapping_options
@switchover_options
@click.version_option(__version__, "--version", message="%(version)s")
@cluster_arguments
def switchover_main(debug: bool, strip: bool, src_prefix: str, dst_prefix: str, ignore: Any,
                    src: Cluster, dst: Cluster, **options: Any) -> None:
    """Reverse a running A->B mirror into B->A without a --reload (planned switchover).

    Give the running mirror's own SRC (A), DST (B), mapping and TLS options.
    Checks that A is quiet, that the mirror applied A's index and that both
    trees are equal, writes on A the keys a B->A mirror starts from, and
    prints the next steps.
    """
    sides = {k: options.pop(k) for k in list(options) if k.startswith(("src_", "dst_"))}
    src, src_tls = resolve_side(src, "src", dict(sides))
    dst, dst_tls = resolve_side(dst, "dst", dict(sides))
    setup_logging(debug, level=logging.WARNING)
    mapper = KeyMapper(src_prefix, dst_prefix, strip=strip, ignore=ignore)
    from twisted.internet import task
    from etcdmirror.switchover import switchover_command
    task.react(switchover_command, (src, dst, mapper, src_tls, dst_tls, options, sides,
                                    click.echo, lambda line: click.echo(line, err=True)))


def _check_heartbeat_key(key: str, mapper: KeyMapper) -> None:
    """The heartbeat must be a key the mirror replicates, or nobody sees it."""
    from etcdmirror.keys import is_under

    problem = None
    if not key.startswith("/") or key.endswith("/"):
        problem = "must be an absolute key"
    elif key == mapper.src_prefix or not is_under(key, mapper.src_prefix):
        problem = f"must be a key under --src-prefix {mapper.src_prefix}"
    elif mapper.ignored(key):
        problem = "matches --src-ignore-keys-regex, so it would never be replicated"
    if problem:
        raise click.BadParameter(f"{key!r} {problem}", param_hint="'--heartbeat-key'")


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


def setup_logging(debug: bool, level: int = logging.INFO) -> None:
    from twisted.logger import (
        FilteringLogObserver, LogLevel, LogLevelFilterPredicate, STDLibLogObserver,
        globalLogBeginner)

    from etcdmirror.logs import setup

    setup(logging.DEBUG if debug else level)
    # Twisted's own chatter ("Starting factory ...") is noise; its warnings and
    # unhandled errors are not.
    predicate = LogLevelFilterPredicate(defaultLogLevel=LogLevel.warn)
    globalLogBeginner.beginLoggingTo(
        [FilteringLogObserver(STDLibLogObserver(), [predicate])],
        redirectStandardIO=False, discardBuffer=True)
