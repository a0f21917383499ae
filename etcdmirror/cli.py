"""The command lines, ``etcd-mirror``'s compatible with etcd-mirror 0.0.12: parsing only.

Everything the operator typed is validated here, before any connection, so a
typo is a usage error (exit 2) naming the flag rather than a daemon that
starts and dies.  Exit statuses: 0 clean stop, 1 needs an operator (systemd:
``RestartPreventExitStatus=1``), 2 usage error, anything else a crash.
"""

import logging
import sys
from typing import Any, Optional

import click

from etcdmirror import __version__
from etcdmirror.cliopts import (
    api_option, api_options, check_mode, cluster_arguments, cluster_callback, mapping_options,
    max_resync_deletes_option, prefix_callback, resolve_side, side_options)
from etcdmirror.endpoints import Cluster
from etcdmirror.guards import DeleteLimit
from etcdmirror.keys import KeyMapper
from etcdmirror.logs import LEVELS
from etcdmirror.switchplan import EPILOG as SWITCHOVER_EPILOG, switchover_options
from etcdmirror.wait import DEFAULT_TIMEOUT, MAX_TIMEOUT, check_timeout

log = logging.getLogger("etcdmirror")

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
@api_options
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
              "round trip to the source (a v2 source; a v3 source is read from one watch).")
@click.option("--watch-stream/--no-watch-stream", default=True, show_default=True,
              help="Once caught up, read events from one streaming watch (stream=true) "
              "instead of one request per event (a v2 source). Turn it off behind a proxy "
              "that buffers chunked answers.")
@click.option("--watch-idle-timeout", default=5.0, show_default=True, metavar="SECONDS",
              type=click.FloatRange(0.1, 600),
              help="Re-register a watch that saw no event for this long, to learn the "
              "source's current index (a v3 source: prove the prefix quiet, and move the "
              "index).")
@click.option("--write-pipeline", default=32, show_default=True, metavar="N",
              type=click.IntRange(1, 256),
              help="Event writes in flight at once on one connection to an http:// "
              "destination, sent and applied in source order (1: each waits for the "
              "answer to the one before). To https:// destinations: always 1.")
@click.option("--ha", is_flag=True,
              help="Active/standby: run this same mirror on several hosts; only the one "
              "holding the lock key <index key>.lock on the destination replicates, the "
              "others wait (role \"standby\" in /status) and take over within about "
              "--ha-ttl seconds after it dies, hangs or is cut off.")
@click.option("--ha-ttl", default=None, metavar="SECONDS", type=click.IntRange(2, 3600),
              help="TTL of the --ha lock [default: 10]. The active mirror writes only "
              "within half of it after its last refresh.")
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
         watch_idle_timeout: float, write_pipeline: int, check_config: bool,
         listen_address: str, ha: bool, ha_ttl: Optional[int], src_api: str, dst_api: str,
         src: Cluster, dst: Cluster, **sides: Any) -> None:
    """Etcd MirrorMaker: replicate an etcd prefix into another cluster (v2, or v3)."""
    if ha_ttl is not None and not ha:
        raise click.BadParameter("only means something with --ha", param_hint="'--ha-ttl'")
    check_mode(src_api, dst_api)
    if ha and dst_api == "v3":
        raise click.BadParameter("is not available with --dst-api v3 yet", param_hint="'--ha'")
    src, src_tls = resolve_side(src, "src", sides)
    dst, dst_tls = resolve_side(dst, "dst", sides)
    mapper = KeyMapper(src_prefix, dst_prefix, strip=strip, ignore=ignore)
    if heartbeat_key is not None:
        _check_heartbeat_key(heartbeat_key, mapper)
    if check_config:
        click.echo(f"configuration ok: {src.display}{mapper.src_prefix} ({src_api}) -> "
                   f"{dst.display}{mapper.dst_root} ({dst_api}) (index {mapper.index_key})")
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
        src_tls=src_tls, dst_tls=dst_tls, ha_ttl=(ha_ttl or 10) if ha else None,
        write_pipeline=write_pipeline, src_api=src_api, dst_api=dst_api)
    sys.exit(run(src, dst, mapper, dst_prefix, port, options, daemon))


@click.command(
    context_settings={"help_option_names": ["-h", "--help"]},
    epilog=URL_HELP + " Exit status (diff's convention): 0 identical (with --plan: "
    "nothing to write or delete), 1 different, 2 the trees could not be compared (or a "
    "usage error).",
)
@click.option("-d", "--debug", is_flag=True, help="Show debug output.")
@mapping_options
@api_options
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
                plan: bool, max_resync_deletes: DeleteLimit, src_api: str, dst_api: str,
                src: Cluster, dst: Cluster, **sides: Any) -> None:
    """Compare the replica with a quorum snapshot of the source and print differences.

    Takes the same options as etcd-mirror; compares presence, dir-ness and value
    (not TTLs). Run it while the source is quiet for an exact answer: events in
    flight show up as differences. With --plan, print what a resync would do instead.
    """
    check_mode(src_api, dst_api)
    src, src_tls = resolve_side(src, "src", sides)
    dst, dst_tls = resolve_side(dst, "dst", sides)
    setup_logging(debug, level=logging.WARNING)
    mapper = KeyMapper(src_prefix, dst_prefix, strip=strip, ignore=ignore)
    from twisted.internet import task
    from etcdmirror.verify import verify_command
    task.react(verify_command, (src, dst, mapper, src_tls, dst_tls, click.echo,
                                lambda line: click.echo(line, err=True),
                                plan, max_resync_deletes, (src_api, dst_api)))


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
@click.option("--dst-prefix", default="/replica", show_default=True, callback=prefix_callback,
              help="The mirror's --dst-prefix.")
@click.option("--heartbeat-key", default=None, metavar="KEY",
              help="The mirror's --heartbeat-key (a source key): read its replica instead "
              "of the freshness the mirror publishes.")
@click.option("--src-prefix", default="/", show_default=True, callback=prefix_callback,
              help="The mirror's --src-prefix (with --heartbeat-key).")
@click.option("--strip", is_flag=True, help="The mirror's --strip (with --heartbeat-key).")
@api_option("dst", "The mirror's --dst-api: the keyspace its replica is in.")
@side_options("dst")
@click.version_option(__version__, "--version", message="%(version)s")
@click.argument("dst", metavar="DST", callback=cluster_callback)
def freshness_main(warning: Optional[float], critical: float, dst_prefix: str,
                   heartbeat_key: Optional[str], src_prefix: str, strip: bool, dst_api: str,
                   dst: Cluster, **sides: Any) -> None:
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
                                 click.echo, dst_api))


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
@api_options
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
    check_mode(sides["src_api"], sides["dst_api"])
    if sides["src_api"] != sides["dst_api"]:
        raise click.BadParameter(
            f"a switchover reverses the mirror, and {sides['dst_api']} -> {sides['src_api']} "
            "is not a mode: a v2 -> v3 migration is finished by moving the readers and "
            "writers to v3, then stopping the mirror", param_hint="'--src-api'/'--dst-api'")
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
