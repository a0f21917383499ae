"""The Markdown section of ``bench/v3mirror.py``: the catch-up table and the checks table.

:func:`report` turns a run's results into the section printed on stdout (and
put into a file with ``--write``: ``bench/report.py``'s ``write_section``,
whose :func:`~bench.report.header` gives the first lines).  Nothing here
measures anything.
"""

import statistics
from typing import List

from bench.common import KEYS_PER_SET
from bench.report import header, note_lines
from bench.v3checks import CHECKS
from bench.v3rig import MakeMirror, Ours, V3Rig

TITLE = "2026-12-02: etcd v3 -> v3 against etcdctl make-mirror (issue 15)"


def cell(text: str, limit: int = 400) -> str:
    """Text for a table cell: one line, no '|', at most ``limit`` characters."""
    text = " ".join(text.replace("|", "/").split())
    return text if len(text) <= limit else text[:limit - 3] + "..."


def spread(values: List[float], fmt: str) -> str:
    if not values:
        return "n/a"
    return " / ".join(fmt % v for v in (min(values), statistics.median(values), max(values)))


def catchup_table(bench: V3Rig) -> List[str]:
    """One column per tool: events/s, seconds, CPU per event (min / median / max), runs."""
    r = bench.results
    out = ["| | %s |" % " | ".join(t.name for t in bench.tools),
           "|---|" + "---|" * len(bench.tools)]
    rows = [("events/s", "rate", "%.0f"), ("seconds", "elapsed", "%.2f"),
            ("CPU ms per event (utime+stime of the tool)", "cpu_ms", "%.3f"),
            ("the same without the cost of the `/status` polls", "cpu_ms_net", "%.3f")]
    for label, field, fmt in rows:
        cells = []
        for t in bench.tools:
            runs = [x for x in r["catchup"].get(t.key, []) if field in x]
            cells.append("**%s**" % spread([x[field] for x in runs], fmt) if runs
                         else ("-" if field == "cpu_ms_net" else "n/a"))
        out.append("| %s | %s |" % (label, " | ".join(cells)))
    cells = []
    for t in bench.tools:
        text = []
        for i, x in enumerate(r["catchup"].get(t.key, []), 1):
            if "error" in x:
                text.append("run %d FAILED: %s" % (i, cell(x["error"], 200)))
            else:
                text.append("run %d: %d events%s, %s%s" % (
                    i, x["events"], " TIMEOUT" if x["timeout"] else "",
                    "equal" if x["equal"] else "DIFFERENT (%s)" % x["verify"],
                    "; resyncs %s" % x["resyncs"] if x.get("resyncs") else ""))
        cells.append("<br>".join(text) or "not run")
    out.append("| runs; destination equal to the source afterwards | %s |" % " | ".join(cells))
    return out


def report(bench: V3Rig, command: str) -> str:
    a = bench.args
    r = bench.results
    m = r["machine"]
    out = header(TITLE, command, r, ", etcdctl %s" % r.get("etcdctl", "?"))
    ours, mm = Ours(bench), MakeMirror(bench)
    out.append("* etcd-mirror: `%s` (`--reload` on its first start only); "
               "make-mirror: `%s`. Both against the same two local etcd servers, one at a "
               "time; %d writer processes; everything shares the %s CPUs."
               % (ours.command_text(False), mm.command_text(), a.writers, m["nproc"]))
    if "wall_s" in r:
        out.append("* Duration: %.0f s" % r["wall_s"])
    out.append("")
    out.append("Catch-up: the tool is SIGSTOPped, %d writes (puts on about %d keys, one in "
               "ten a delete: one source revision each) and a marker put go to the source, "
               "then SIGCONT; the time until the destination has them (etcd-mirror: "
               "`/status` `replica_index` reaches the marker's revision; make-mirror: the "
               "marker key is on the destination; polled every %g ms). %d runs each, the "
               "tools alternated; min / median / max:"
               % (a.events, KEYS_PER_SET, a.poll_ms, a.runs))
    out.append("")
    out.extend(catchup_table(bench))
    out.append("")
    medians = {t.key: statistics.median(x["rate"] for x in r["catchup"].get(t.key, [])
                                        if "rate" in x)
               for t in bench.tools if any("rate" in x for x in r["catchup"].get(t.key, []))}
    if "ours" in medians and "make-mirror" in medians:
        ratio = medians["ours"] / medians["make-mirror"]
        out.append("Target: etcd-mirror's catch-up at least make-mirror's: **%s** (median "
                   "%.0f against %.0f events/s = %.2f ×)."
                   % ("met" if ratio >= 1 else "not met", medians["ours"],
                      medians["make-mirror"], ratio))
        out.append("")
    out.append("Correctness (each wait has a %g s deadline; \"equal\" is the whole prefix, "
               "keys and values, read on both servers):" % a.timeout)
    out.append("")
    out.append("| check | %s |" % " | ".join(t.name for t in bench.tools))
    out.append("|---|" + "---|" * len(bench.tools))
    for name, label, _ in CHECKS:
        cells = []
        for t in bench.tools:
            got = r["checks"].get(name, {}).get(t.key)
            if got is None:
                cells.append("not run")
            else:
                cells.append("**%s**: %s" % ("yes" if got[0] else "no", cell(got[1])))
        out.append("| %s. %s | %s |" % (name, label, " | ".join(cells)))
    out.append("")
    out.extend(note_lines(r))
    tails = [(key, what, tail) for key, logs in r.get("failure_logs", {}).items()
             for what, tail in logs if tail.strip()]
    for key, what, tail in tails[:4]:
        out.append("<details><summary>%s: the end of its log after %s</summary>"
                   % (key, "check " + what if len(what) == 1 else what))
        out.append("")
        out.append("```")
        out.extend(l[:300] for l in tail.splitlines()[-10:])
        out.append("```")
        out.append("</details>")
        out.append("")
    return "\n".join(out)
