"""The correctness checks of ``bench/v3mirror.py``: yes or no per tool, with one line of evidence.

a. a restart (SIGTERM, 100 puts, the same command without ``--reload``) loses
   nothing;
b. the initial sync deletes destination keys the source lacks;
c. a source key on a lease: has the destination key a lease, does it outlive
   the lease's TTL while the source keeps it alive, and is it deleted once the
   source lease is revoked;
d. a restart after the source was compacted past the tool's position
   (make-mirror with ``--rev`` = the revision it had reached, as an operator
   would have to);
e. (extra) a restart after keys were deleted on the source meanwhile.

Each check is a function ``(rig, tool) -> (ok, evidence)``; :func:`run_check`
runs one and records it (a check that raises is a "no", with why).  Every
wait has a deadline (``--timeout``), so a tool that never converges is a
"no", not a hang.
"""

import time
from typing import Callable, Tuple

from bench.common import log
from bench.rig import resyncs_since
from bench.v3load import LEASE_KEY, SRC
from bench.v3rig import MakeMirror, Ours, Timeout, Tool, V3Rig, exit_text

Result = Tuple[bool, str]


def converge(b: V3Rig, tool: Tool) -> Result:
    """After a (re)start: settled, then equal to the source within ``--grace``."""
    try:
        took = b.settle(tool)
    except Timeout as e:
        same, text, _ = b.compare(tool)
        return False, "not replicating: a marker key written to the source did not " \
            "reach the destination (%s); destination: %s" % (e, text)
    try:
        def equal():
            same, text, _ = b.compare(tool)
            return text if same else None
        text, extra = b.wait_for(equal, b.args.grace, None, 0.1)
        return True, "equal %.1f s after the start: %s" % (took + extra, text)
    except Timeout:
        same, text, _ = b.compare(tool)
        return same, "replicating again after %.1f s, but %.0f s later still %s" % (
            took, b.args.grace, text)


def ensure_running(b: V3Rig, tool: Tool) -> None:
    if not tool.running:
        tool.stop()
        tool.start()
    b.settle(tool)


def run_check(b: V3Rig, name: str, tool: Tool, check: Callable[[V3Rig, Tool], Result]) -> None:
    log("check %s: %s" % (name, tool.name))
    try:
        ok, evidence = check(b, tool)
    except Exception as e:  # noqa: BLE001 - a failed check is a "no", with why
        ok, evidence = False, "check failed: %s: %s" % (type(e).__name__, e)
        if isinstance(tool, Ours):
            evidence += "; log: %s" % tool.last_line()
    b.results["checks"].setdefault(name, {})[tool.key] = (ok, evidence)
    log("check %s, %s: %s: %s" % (name, tool.name, "yes" if ok else "NO", evidence))
    if not ok:
        b.keep_tail(tool, name)


def check_initial_sync(b: V3Rig, tool: Tool) -> Result:
    """b: the tool's first start deletes destination keys the source lacks."""
    stale = [tool.dst_root + "/stale-%d" % i for i in range(5)]
    for key in stale:
        b.d.put(key, "left over")
    tool.start(reload=True)
    try:
        took = b.settle(tool)
    except Timeout as e:
        return False, "initial sync did not finish: %s" % e
    try:
        b.wait_for(lambda: not any(b.d.get(k) for k in stale), b.args.grace, None, 0.1)
    except Timeout:
        pass
    left = [k for k in stale if b.d.get(k)]
    same, text, _ = b.compare(tool)
    if left:
        return False, "%d of the %d destination-only keys still there %.1f s after " \
            "the first start (e.g. %s); destination: %s" % (
                len(left), len(stale), took + b.args.grace, left[0], text)
    return True, "all %d destination-only keys deleted; destination: %s" % (
        len(stale), text)


def check_restart(b: V3Rig, tool: Tool) -> Result:
    """a: a restart loses nothing."""
    ensure_running(b, tool)
    code = tool.stop()
    b.puts(100, "restart")
    tool.start()
    ok, text = converge(b, tool)
    return ok, "SIGTERM (%s), 100 puts, same command%s: %s" % (
        exit_text(code), " without --reload" if isinstance(tool, Ours) else "", text)


def check_deletes_while_stopped(b: V3Rig, tool: Tool) -> Result:
    """e (extra): deletes made while the tool was stopped."""
    ensure_running(b, tool)
    tool.stop()
    victims = sorted(k for k in b.s.range_prefix(SRC + "/w") if k.startswith(SRC + "/w"))
    victims = victims[::max(1, len(victims) // 5)][:5]
    for key in victims:
        b.s.delete(key)
    tool.start()
    ok, text = converge(b, tool)
    return ok, "SIGTERM, %d source keys deleted, same command: %s" % (len(victims), text)


def check_lease(b: V3Rig, tool: Tool) -> Result:
    """c: a key on a lease keeps a lease, outlives the TTL while kept alive, goes
    when it is revoked."""
    ensure_running(b, tool)
    ttl = b.args.lease_ttl
    lease = b.s.lease_grant(ttl)
    b.s.put(LEASE_KEY, "leased", lease)
    want = tool.dst_key(LEASE_KEY)
    got, _ = b.wait_for(lambda: b.d.get(want), b.args.timeout, tool)
    dst_lease = got[1]
    parts = []
    ok = bool(dst_lease)
    if dst_lease:
        left, granted = b.d.lease_ttl(dst_lease)
        parts.append("destination key has lease %s (TTL %d s of %d)"
                     % (dst_lease, left, granted))
        # Kept alive on the source for longer than the TTL: the destination's
        # lease must be kept alive too.
        started = time.perf_counter()
        last_keepalive = started
        lost = None
        while time.perf_counter() - started < b.args.lease_hold:
            if time.perf_counter() - last_keepalive >= ttl / 6:
                b.s.lease_keepalive(lease)
                last_keepalive = time.perf_counter()
            if b.d.get(want) is None:
                lost = time.perf_counter() - started
                break
            if not tool.running:
                break
            time.sleep(0.5)
        if lost is not None:
            ok = False
            parts.append("it VANISHED from the destination after %.1f s while the "
                         "source lease was kept alive" % lost)
        else:
            parts.append("still there after %.0f s of source keep-alives (TTL %d s)"
                         % (b.args.lease_hold, ttl))
    else:
        parts.append("destination key has NO lease (the source key's lease is %s)"
                     % lease)
    b.s.lease_revoke(lease)
    try:
        _, took = b.wait_for(lambda: b.d.get(want) is None, b.args.timeout, tool)
        parts.append("deleted on the destination %.2f s after the source lease was "
                     "revoked" % took)
    except Timeout as e:
        ok = False
        parts.append("NOT deleted after the source lease was revoked (%s)" % e)
    if dst_lease:
        try:
            left, _ = b.d.lease_ttl(dst_lease)
            parts.append("destination lease %s" % ("gone" if left < 0 else
                                                     "left with %d s" % left))
        except Exception as e:  # noqa: BLE001 - evidence only
            parts.append("destination lease: %s" % e)
    return ok, "; ".join(parts)


def check_compaction(b: V3Rig, tool: Tool) -> Result:
    """d: a restart after the source was compacted past the tool's position."""
    ensure_running(b, tool)
    if isinstance(tool, Ours):
        reached = tool.replica_index() or 0
        before = tool.resyncs()
    else:
        reached = b.s.revision()  # settled: it has everything up to here
        before = {}
    tool.stop()
    b.puts(50, "compaction")
    rev = b.s.revision()
    b.s.compact(rev)
    parts = ["stopped at revision %d, 50 puts, source compacted at %d" % (reached, rev)]
    if isinstance(tool, MakeMirror):
        tool.start(rev=reached)
        try:
            b.wait_for(lambda: False, b.args.grace, tool, 0.1)
        except Timeout:
            pass
        if not tool.running:
            parts.append("`make-mirror --rev %d`: %s, %r" % (
                reached, exit_text(tool.returncode()), tool.last_line()))
            tool.stop()
            tool.start()
            parts.append("then the same command without --rev")
    else:
        tool.start()
    ok, text = converge(b, tool)
    parts.append(text)
    if isinstance(tool, Ours) and tool.running:
        resyncs = resyncs_since(before, tool.resyncs())
        parts.append("resyncs: %s" % (", ".join(
            "%s +%d" % (k, v) for k, v in sorted(resyncs.items())) or "none"))
    parts.append("%s, last log line %r" % (exit_text(tool.returncode()), tool.last_line()))
    return ok, "; ".join(parts)


#: The checks in the order of the report: (name, what it checks, the check).
CHECKS = [
    ("a", "restart without losing updates (SIGTERM, 100 puts, start again)", check_restart),
    ("b", "initial sync deletes destination keys the source lacks", check_initial_sync),
    ("c", "lease: destination key on a lease, kept while the source keeps its lease "
          "alive, deleted once it is revoked", check_lease),
    ("d", "restart after the source was compacted past the tool's position", check_compaction),
    ("e", "(extra) restart after 5 source keys were deleted while the tool was stopped",
     check_deletes_while_stopped),
]
