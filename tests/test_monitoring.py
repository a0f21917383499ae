"""The shipped Prometheus rules and Grafana dashboard match the daemon's metrics.

No etcd and no promtool here (scripts/check-monitoring runs promtool): every
metric name used in monitoring/etcd-mirror.rules.yml and in the dashboard's
PromQL must be one that :class:`etcdmirror.metrics.Metrics` registers, and
the dashboard must be importable Grafana JSON.  PyYAML is not a dependency,
so the rules file is read with a small parser for its ``expr:`` values
(cross-checked against PyYAML when it is installed).
"""

import json
import re
from pathlib import Path
from typing import Dict, Iterator, List, Set

import pytest
from prometheus_client import CollectorRegistry

from etcdmirror.metrics import Metrics
from etcdmirror.status import MirrorStatus

MONITORING = Path(__file__).resolve().parent.parent / "monitoring"
RULES = MONITORING / "etcd-mirror.rules.yml"
RULE_TESTS = MONITORING / "etcd-mirror.rules.test.yml"
DASHBOARD = MONITORING / "etcd-mirror.dashboard.json"

#: Series that Prometheus makes itself for every scrape target.
SCRAPE_SERIES = {"up"}

# -- what the daemon registers ------------------------------------------------------

SUFFIXES = {
    "counter": ("_total", "_created"),
    "histogram": ("_bucket", "_sum", "_count", "_created"),
    "summary": ("_sum", "_count", "_created"),
    "gaugehistogram": ("_bucket", "_gsum", "_gcount"),
    "info": ("_info",),
}


def registered_names() -> Set[str]:
    """Every series name a scrape of the daemon's registry can show."""
    registry = CollectorRegistry()
    Metrics(registry, MirrorStatus("s", "d", "/a", "/b", "/__replication/b"),
            "http://d:1", "/b")
    names = set()
    for family in registry.collect():
        names.update(sample.name for sample in family.samples)
        suffixes = SUFFIXES.get(family.type)
        if suffixes:
            names.update(family.name + suffix for suffix in suffixes)
        else:
            names.add(family.name)
    return names


@pytest.fixture(scope="module")
def registered() -> Set[str]:
    return registered_names()


# -- metric names in PromQL ------------------------------------------------------------

#: Keywords and modifiers that look like identifiers (functions and
#: aggregations are told apart by the "(" that follows them).
PROMQL_WORDS = {"and", "or", "unless", "by", "without", "on", "ignoring", "group_left",
                "group_right", "bool", "offset", "inf", "nan"}
_STRING = re.compile(r'"(?:[^"\\]|\\.)*"|\'(?:[^\'\\]|\\.)*\'|`[^`]*`')
_NAME_MATCHER = re.compile(r'__name__\s*=\s*"([^"]+)"')
_GROUPING = re.compile(r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\([^()]*\)")
_IDENTIFIER = re.compile(r"(?<![\w.:$])[A-Za-z_:][\w:]*")


def promql_metric_names(expr: str) -> Set[str]:
    """Metric names in a PromQL expression (Grafana variables allowed)."""
    names = set(_NAME_MATCHER.findall(expr))
    text = _STRING.sub('""', expr)
    text = re.sub(r"\{[^{}]*\}", " ", text)         # label matchers
    text = re.sub(r"\[[^\[\]]*\]", " ", text)       # ranges and subqueries
    text = _GROUPING.sub(" ", text)                  # label names in grouping
    text = re.sub(r"\$\{[^}]*\}|\$\w+", " ", text)  # Grafana variables
    for match in _IDENTIFIER.finditer(text):
        word = match.group()
        rest = text[match.end():].lstrip()
        if rest.startswith("(") or word.lower() in PROMQL_WORDS:
            continue  # a function or aggregation, or a keyword
        names.add(word)
    return names


@pytest.mark.parametrize("expr, names", [
    ("etcdmirror_lag > 50", {"etcdmirror_lag"}),
    ('up{job="etcdmirror"} == 0', {"up"}),
    ("increase(etcdmirror_resyncs_total{reason!=\"reload\"}[1h]) > 0",
     {"etcdmirror_resyncs_total"}),
    ("a > 0 and a > time() - 300", {"a"}),
    ("x != x", {"x"}),
    ('histogram_quantile(0.99, sum by (instance, le) '
     '(rate(m_bucket{job=~"$job"}[$__rate_interval])))', {"m_bucket"}),
    ("sum(rate(a_total[5m] offset 1h)) without (le) / on(instance) group_left(state) b",
     {"a_total", "b"}),
    ('sum by (instance) (rate(x[5m])) / ignoring (kind) y{kind="1e3"} * 1e3 + Inf',
     {"x", "y"}),
    ('{__name__="named", state=~"retrying|failed"}', {"named"}),
    ("max_over_time(g[10m:1m]) unless bool h", {"g", "h"}),
    ("label_replace(c, \"dst\", \"$1\", \"src\", \"(.*)\")", {"c"}),
])
def test_promql_metric_names(expr: str, names: Set[str]) -> None:
    assert promql_metric_names(expr) == names


def check_registered(used: Dict[str, Set[str]], registered: Set[str]) -> None:
    """Fail naming each unregistered metric and where it is used."""
    missing = {name: sorted(where) for name, where in used.items()
               if name not in registered and name not in SCRAPE_SERIES}
    if missing:
        pytest.fail(
            "metrics used but not registered by etcdmirror.metrics.Metrics:\n"
            + "".join(f"  {name}: used in {', '.join(missing[name])}\n" for name in sorted(missing)))


# -- the rules file ---------------------------------------------------------------------


def _unquote(value: str) -> str:
    value = value.strip()
    if len(value) >= 2 and value[0] == value[-1] and value[0] in "'\"":
        inner = value[1:-1]
        return inner.replace("''", "'") if value[0] == "'" else json.loads(value)
    return value


def yaml_values(text: str, key: str) -> List[str]:
    """The values of ``key:`` in a YAML file, plain, quoted or block (|, >).

    Enough for the rules file: comment lines are skipped, so the commented
    example there is not read.
    """
    lines = text.splitlines()
    values = []
    pattern = re.compile(r"^(\s*)(?:-\s+)?" + re.escape(key) + r":\s*(.*)$")
    i = 0
    while i < len(lines):
        match = pattern.match(lines[i])
        i += 1
        if not match or lines[i - 1].lstrip().startswith("#"):
            continue
        value = match.group(2)
        if value.startswith(("|", ">")):
            indent = len(match.group(1))
            block = []
            while i < len(lines) and (not lines[i].strip()
                                      or len(lines[i]) - len(lines[i].lstrip()) > indent):
                block.append(lines[i].strip())
                i += 1
            sep = "\n" if value.startswith("|") else " "
            values.append(sep.join(line for line in block if line))
        else:
            values.append(_unquote(value))
    return values


def alert_blocks(text: str) -> Dict[str, str]:
    """Alert name -> the text of its rule, from "- alert:" to the next rule."""
    blocks: Dict[str, str] = {}
    name = None
    for line in text.splitlines():
        if line.lstrip().startswith("#"):
            continue
        match = re.match(r"^\s*-\s+(alert|record):\s*(\S+)", line)
        if match:
            name = match.group(2) if match.group(1) == "alert" else None
            if name:
                assert name not in blocks, f"alert {name} defined twice"
                blocks[name] = ""
        if name:
            blocks[name] += line + "\n"
    return blocks


def rule_exprs() -> List[str]:
    exprs = yaml_values(RULES.read_text(encoding="utf-8"), "expr")
    assert exprs, "no expr: found in the rules file"
    return exprs


def test_rules_use_registered_metrics(registered: Set[str]) -> None:
    used: Dict[str, Set[str]] = {}
    for expr in rule_exprs():
        for name in promql_metric_names(expr):
            used.setdefault(name, set()).add(RULES.name)
    check_registered(used, registered)


def test_rules_do_not_use_the_deprecated_lag_seconds() -> None:
    for expr in rule_exprs():
        assert "etcdmirror_lag_seconds" not in promql_metric_names(expr), expr


def test_every_alert_has_severity_and_instructions() -> None:
    blocks = alert_blocks(RULES.read_text(encoding="utf-8"))
    assert len(blocks) == len(rule_exprs()), "every rule is an alert with one expr"
    for name, block in blocks.items():
        assert re.search(r"^\s+severity:\s*(page|warning)\s*$", block, re.M), name
        assert re.search(r"^\s+summary:\s*\S", block, re.M), name
        assert re.search(r"^\s+description:\s*\S", block, re.M), name


def test_the_two_alerts_of_0_0_12_are_kept() -> None:
    """Same expressions and durations as the 0.0.12 setup, both paging."""
    blocks = alert_blocks(RULES.read_text(encoding="utf-8"))
    kept = {}
    for name, block in blocks.items():
        (expr,) = yaml_values(block, "expr")
        durations = yaml_values(block, "for")
        kept[expr] = (durations[0] if durations else None,
                      "severity: page" in block)
    assert kept.get("etcdmirror_lag > 50") == ("15m", True)
    assert kept.get('up{job="etcdmirror"} == 0') == ("2m", True)


def test_every_alert_is_unit_tested() -> None:
    """Each alert has a promtool test case where it fires and one where it does not."""
    alerts = set(alert_blocks(RULES.read_text(encoding="utf-8")))
    text = RULE_TESTS.read_text(encoding="utf-8")
    fires: Set[str] = set()
    quiet: Set[str] = set()
    for case in re.split(r"^\s+- eval_time:", text, flags=re.M)[1:]:
        (name,) = yaml_values(case, "alertname")
        (fires if re.search(r"^\s+- exp_labels:", case, re.M) else quiet).add(name)
    assert alerts - fires == set(), "alerts never tested firing"
    assert alerts - quiet == set(), "alerts never tested not firing"
    assert (fires | quiet) - alerts == set(), "tests of alerts that do not exist"


def test_rule_parser_agrees_with_pyyaml() -> None:
    yaml = pytest.importorskip("yaml")
    groups = yaml.safe_load(RULES.read_text(encoding="utf-8"))["groups"]
    rules = [rule for group in groups for rule in group["rules"]]
    assert [rule["expr"].strip() for rule in rules] == [e.strip() for e in rule_exprs()]
    assert set(alert_blocks(RULES.read_text(encoding="utf-8"))) == {
        rule["alert"] for rule in rules}
    for rule in rules:
        assert rule["labels"]["severity"] in ("page", "warning"), rule["alert"]
        assert rule["annotations"]["summary"] and rule["annotations"]["description"]


# -- the dashboard ---------------------------------------------------------------------


@pytest.fixture(scope="module")
def dashboard() -> Dict:
    return json.loads(DASHBOARD.read_text(encoding="utf-8"))


def all_panels(panels: List[Dict]) -> Iterator[Dict]:
    for panel in panels:
        yield panel
        yield from all_panels(panel.get("panels", []))  # collapsed rows


def dashboard_exprs(dashboard: Dict) -> Iterator[tuple]:
    """(where, PromQL) for every panel target and query variable."""
    for panel in all_panels(dashboard["panels"]):
        for target in panel.get("targets", []):
            yield f"panel {panel['title']!r}", target["expr"]
    for variable in dashboard["templating"]["list"]:
        if variable["type"] == "query":
            query = variable["query"]
            query = query["query"] if isinstance(query, dict) else query
            match = re.fullmatch(r"\s*label_values\((.*),\s*\w+\s*\)\s*", query)
            assert match, f"variable {variable['name']}: {query}"
            yield f"variable ${variable['name']}", match.group(1)


def test_dashboard_uses_registered_metrics(dashboard: Dict, registered: Set[str]) -> None:
    used: Dict[str, Set[str]] = {}
    for where, expr in dashboard_exprs(dashboard):
        names = promql_metric_names(expr)
        assert names, f"{where}: no metric in {expr!r}"
        for name in names:
            used.setdefault(name, set()).add(where)
    assert "etcdmirror_lag_seconds" not in used, "deprecated: use etcdmirror_heartbeat_age_seconds"
    check_registered(used, registered)


def test_dashboard_is_importable_grafana_json(dashboard: Dict) -> None:
    assert dashboard["title"] and dashboard["uid"]
    assert isinstance(dashboard.get("schemaVersion"), int)
    assert "id" not in dashboard or dashboard["id"] is None, "an id ties it to one Grafana"
    variables = {v["name"]: v for v in dashboard["templating"]["list"]}
    assert variables["datasource"]["type"] == "datasource"
    assert variables["datasource"]["query"] == "prometheus"
    assert {"job", "instance"} <= set(variables)
    ids = [panel["id"] for panel in all_panels(dashboard["panels"])]
    assert len(ids) == len(set(ids)), "panel ids must be unique"
    panels = [p for p in all_panels(dashboard["panels"]) if p["type"] != "row"]
    assert panels
    for panel in panels:
        where = f"panel {panel.get('title')!r}"
        assert panel.get("title") and panel.get("gridPos"), where
        # Every query goes to the chosen data source: importable anywhere.
        assert panel["datasource"]["uid"] == "${datasource}", where
        assert panel["targets"], where
        for target in panel["targets"]:
            assert target["expr"].strip() and target["refId"], where
            assert target.get("datasource", panel["datasource"])["uid"] == "${datasource}", where
            # Filtered to the chosen job and instances.
            for name in promql_metric_names(target["expr"]):
                assert re.search(re.escape(name) + r'\{[^}]*job=~"\$job"[^}]*instance=~"\$instance"',
                                 target["expr"]), f"{where}: {name} not filtered by $job/$instance"


def test_dashboard_covers_what_an_on_call_needs(dashboard: Dict) -> None:
    used = set()
    for _, expr in dashboard_exprs(dashboard):
        used |= promql_metric_names(expr)
    for name in ("etcdmirror_lag", "etcdmirror_replica_age_seconds", "etcdmirror_state",
                 "etcdmirror_events_total", "etcdmirror_write_latency_bucket",
                 "etcdmirror_resyncs_total", "etcdmirror_retries_total",
                 "etcdmirror_errors_total", "etcdmirror_ttl_tracked_keys",
                 "etcdmirror_ttl_refreshes_total", "etcdmirror_ttl_expired_late_total",
                 "etcdmirror_divergent_keys", "process_cpu_seconds_total",
                 "process_resident_memory_bytes"):
        assert name in used, name
    quantiles = [expr for _, expr in dashboard_exprs(dashboard)
                 if "histogram_quantile(" in expr and "etcdmirror_write_latency_bucket" in expr]
    assert len(quantiles) >= 2
