"""The benchmark's report: one Markdown section, and its place in BENCHMARKS.md.

:func:`report` turns a run's results into the section printed on stdout;
:func:`write_section` puts it into a file (``--write``), replacing the
section with the same title; :func:`publish` does both at the end of a run.
:func:`header` and :func:`note_lines` serve ``bench/v3report.py`` too.
Nothing here measures anything.
"""

import argparse
import os
import re
import shlex
import sys
from typing import TYPE_CHECKING, Callable, Dict, List, Optional

from bench.common import SRC_PREFIX, log

if TYPE_CHECKING:
    from bench.phases import Bench


def title_for(args: argparse.Namespace) -> str:
    """The section's title: ``--title``, or from ``--rtt-ms`` and ``--mirror-arg``."""
    if args.title:
        return args.title
    title = "loopback" if args.rtt_ms <= 0 else "%g ms RTT to the source" % args.rtt_ms
    if args.mirror_arg:
        title += ", " + " ".join(args.mirror_arg)
    return title


def fmt_ms(value: float) -> str:
    return "n/a" if value != value else "%.1f" % value


def resync_text(resyncs: Dict[str, float], lines: List[str]) -> str:
    if not resyncs and not lines:
        return "none"
    parts = ["%s×%d" % (k, v) for k, v in sorted(resyncs.items())]
    done = sum(1 for l in lines if re.search(r"resync \(\w+\) done", l))
    return (", ".join(parts) or "metrics: none") + "; log: %d done" % done


def header(title: str, command: str, r: Dict, tools: str = "") -> List[str]:
    """The title and the first lines of a section: command, date, machine, software
    (``tools``: more software after etcd's version, e.g. ", etcdctl 3.4")."""
    m = r["machine"]
    return ["## " + title, "",
            "* Command: `%s`" % command,
            "* Date: %s" % r["started"].strftime("%Y-%m-%d %H:%M UTC"),
            "* Machine: %s CPUs (%s), %s RAM, Linux %s; load average %s at the start%s"
            % (m["nproc"], m["cpu"], m["memory"], m["kernel"], m["load"],
               ", %s at the end" % r["load_end"] if "load_end" in r else ""),
            "* Software: Python %s, Twisted %s, treq %s, etcd %s%s; etcd-mirror %s (%s)"
            % (m["python"], m["twisted"], m["treq"], m["etcd"], tools, m["mirror"], m["git"])]


def note_lines(r: Dict) -> List[str]:
    """The run's notes, one bullet each, and a blank line (nothing without notes)."""
    return ["* Note: %s" % n for n in r["notes"]] + [""] if r["notes"] else []


def report(bench: "Bench", command: str) -> str:
    """The Markdown section of a run: setup, the results table, the details."""
    a = bench.args
    r = bench.results
    m = r["machine"]
    out = header(title_for(a), command, r)
    setup = ("mirror -> delay proxy (%g ms RTT) -> source etcd" % a.rtt_ms
             if a.rtt_ms > 0 else "mirror -> source etcd on loopback")
    out.append("* Setup: %s; destination on loopback; mirror flags: `%s`; %d writer "
               "processes. The writers, the probe, both etcd servers%s and the mirror "
               "share the %s CPUs."
               % (setup, " ".join(["--reload", "--src-prefix", SRC_PREFIX] + a.mirror_arg),
                  a.writers, " the proxy" if a.rtt_ms > 0 else "", m["nproc"]))
    if "wall_s" in r:
        out.append("* Duration of the measured phases: %.0f s" % r["wall_s"])
    out.append("")
    out.append("| measure | result |")
    out.append("|---|---|")
    raw = r.get("raw")
    if raw:
        out.append("| raw limit: sequential keep-alive PUTs to the destination (%d) | "
                   "**%.0f PUT/s** (%.2f ms each) |" % (raw["n"], raw["rate"],
                                                       1000 / raw["rate"]))
    floor = r.get("floor") if raw else None
    if floor:
        out.append("| the same PUTs from Twisted's `Agent` alone; from etcd-mirror's own "
                   "client (EtcdClient) — the ceiling for in-order writes on this stack | "
                   "%.0f PUT/s = %.2f × raw (%.2f CPU ms each); **%.0f PUT/s = %.2f × raw** "
                   "(%.2f CPU ms each) |"
                   % (floor["agent"]["rate"], floor["agent"]["rate"] / raw["rate"],
                      floor["agent"]["cpu_ms"], floor["client"]["rate"],
                      floor["client"]["rate"] / raw["rate"], floor["client"]["cpu_ms"]))
    loaded = r.get("floor_load")
    if loaded:
        out.append("| the same two, while writers load the source at %.0f writes/s (no mirror "
                   "running) | %.0f PUT/s (Agent); **%.0f PUT/s** (etcd-mirror's client) |"
                   % (loaded["load_rate"], loaded["agent"]["rate"], loaded["client"]["rate"]))
    c = r.get("catchup")
    if c:
        ratio = " = %.2f × the raw limit" % (c["rate"] / raw["rate"]) if raw else ""
        if floor:
            ratio += " (%.2f × the client's own limit)" % (c["rate"] / floor["client"]["rate"])
        out.append("| catch-up: %d events written while SIGSTOPped, SIGCONT → replica "
                   "index reached | %s%.2f s → **%.0f events/s**%s; mirror CPU **%.2f ms** per "
                   "event (%.2f ms counting the %d /status polls of the measurement); "
                   "resyncs: %s |"
                   % (c["events"], "TIMEOUT, " if c["timeout"] else "", c["elapsed"],
                      c["rate"], ratio, c["cpu_ms_per_event_net"], c["cpu_ms_per_event"],
                      c["polls"], resync_text(c["resyncs"], c["resync_log"])))
    mem = r.get("memory")
    if mem:
        out.append("| memory: VmRSS before → after %d events; peak (VmHWM) | %.1f → %.1f "
                   "MiB; peak **%.1f MiB** |" % (mem["events"], mem["rss_before_kb"] / 1024,
                                                mem["rss_after_kb"] / 1024,
                                                mem["hwm_kb"] / 1024))
        out.append("| memory phase: mirror CPU per 1000 events; throughput | **%.2f CPU s** "
                   "per 1000 events; %.0f events/s (%.0f s); resyncs: %s; tree %s |"
                   % (mem["cpu_s_per_1000"], mem["rate"], mem["elapsed"],
                      resync_text(mem["resyncs"], mem["resync_log"]),
                      "identical" if mem["equal"] else "DIFFERENT: " + mem["verify"]))
    out.append("")
    if r.get("sustained"):
        out.append("Sustained load (%g s per rate; probe every %g ms; latency = write "
                   "sent on the source → value visible on the destination. Its parts, p99: "
                   "the same write visible on the source itself; the hop, visible on the "
                   "destination minus visible on the source (the mirror and the "
                   "destination); and the floor under the hop, a key written and watched "
                   "on the destination alone):"
                   % (a.duration, a.probe_ms))
        out.append("")
        out.append("| target writes/s | achieved | probe p50 ms | p99 ms | max ms | on the "
                   "source p99 | hop p99 | destination alone p99 | probes | max lag "
                   "| lag at end | drain s | resyncs | CPU ms/event | machine CPU busy "
                   "| source = replica |")
        out.append("|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|")
        for s in r["sustained"]:
            probes = "%d" % s["probes"]
            if s["probe_superseded"]:
                probes += ", %d skipped" % s["probe_superseded"]
            if s["probe_missing"]:
                probes += ", %d never visible" % s["probe_missing"]
            row = ("| %g | %.0f%s | %s | %s | %s | %s | %s | %s | %s | %d | %d | %s | %s "
                   "| %.2f | %s | %s |")
            out.append(row % (
                s["target"], s["achieved"], " (%d errors)" % s["write_errors"]
                if s["write_errors"] else "", fmt_ms(s["p50"]), fmt_ms(s["p99"]),
                fmt_ms(s["max"]), fmt_ms(s.get("src_p99", float("nan"))),
                fmt_ms(s.get("hop_p99", float("nan"))),
                fmt_ms(s.get("dst_floor_p99", float("nan"))), probes, s["max_lag"], s["end_lag"],
                "%.2f" % s["drain_s"] if s["drain_s"] is not None else "TIMEOUT",
                resync_text(s["resyncs"], s["resync_log"]), s["cpu_ms_per_event"],
                "%.0f%%" % (100 * s["machine_busy"]) if "machine_busy" in s else "-",
                "yes (%s)" % s["verify"] if s["equal"] else "**NO**: " + s["verify"]))
        out.append("")
    if mem and mem["samples"]:
        out.append("Memory over the run (events applied since the phase began):")
        out.append("")
        out.append("| events | VmRSS MiB | VmHWM MiB | mirror CPU s | CPU s / 1000 events |")
        out.append("|---|---|---|---|---|")
        for s in mem["samples"]:
            out.append("| %d | %.1f | %.1f | %.1f | %.2f |" % (
                s["events"], s["rss_kb"] / 1024, s["hwm_kb"] / 1024, s["cpu_s"],
                s["cpu_s"] / max(1, s["events"]) * 1000))
        out.append("")
    p = r.get("profile")
    if p:
        pc = p["catchup"]
        out.append("Profile (%s, %s): catch-up of %d events under the profiler took %.2f s "
                   "(%.0f events/s)." % (p["tool"], p["file"], pc["applied"], pc["elapsed"],
                                         pc["rate"]))
        if p["tool"] == "cProfile":
            out.append("The profile covers the profiled mirror's whole life (start, "
                       "--reload, the catch-up, stop). SIGTERM: exit status %s after %.1f s; "
                       "profile %s." % (p["exit"], p["stop_s"], "written" if p["written"]
                                        else "NOT written"))
            for key in ("cumulative", "tottime", "etcdmirror"):
                if key in p.get("top", {}):
                    out.append("")
                    out.append("<details><summary>top 25 by %s</summary>" % (
                        key if key != "etcdmirror" else "cumulative, etcdmirror/ only"))
                    out.append("")
                    out.append("```")
                    out.append(p["top"][key])
                    out.append("```")
                    out.append("</details>")
        out.append("")
    out.extend(note_lines(r))
    return "\n".join(out)


def write_section(path: str, section: str, first: bool = False) -> None:
    """Replace the section with the same '## ' title in path; else append it (``first``:
    put it above the first '## ' section)."""
    heading = section.split("\n", 1)[0]
    if os.path.exists(path):
        with open(path, encoding="utf-8") as f:
            text = f.read()
    else:
        text = ("# etcd-mirror benchmarks\n\nProduced by `bench/run.py`; see "
                "[bench/README.md](bench/README.md) for what each number means.\n")
    lines = text.split("\n")
    body = section.rstrip("\n").split("\n") + [""]
    start = next((i for i, l in enumerate(lines) if l.rstrip() == heading), None)
    if start is not None:
        end = next((i for i in range(start + 1, len(lines))
                    if lines[i].startswith("## ")), len(lines))
        text = "\n".join(lines[:start] + body + lines[end:])
    elif first:
        at = next((i for i, l in enumerate(lines) if l.startswith("## ")), len(lines))
        text = "\n".join(lines[:at] + body + lines[at:])
    else:
        text = text.rstrip("\n") + "\n\n" + section
    tmp = path + ".tmp"
    with open(tmp, "w", encoding="utf-8") as f:
        f.write(text.rstrip("\n") + "\n")
    os.replace(tmp, path)


def command_line() -> str:
    """How this benchmark was started, for the report (paths relative to here)."""
    python = sys.executable
    try:
        rel = os.path.relpath(python)
        if not rel.startswith(".."):
            python = rel
    except ValueError:
        pass
    return shlex.join([python, os.path.relpath(os.path.abspath(sys.argv[0]))] + sys.argv[1:])


def publish(bench, command: str, failed: Optional[str], report: Callable[..., str],
            path: Optional[str], title: str, first: bool = False) -> int:
    """The end of a run: print the section (a partial one, with a note, if the run
    ``failed``) and put it into ``path`` (``--write``, only when it did not fail);
    the exit status."""
    if failed:
        if "started" in bench.results and "machine" in bench.results:
            bench.note("run " + failed + "; results are partial")
            print(report(bench, command))
        return 1
    section = report(bench, command)
    print(section)
    if path:
        write_section(path, section, first)
        log("wrote section %r to %s" % (title, path))
    return 0
