"""deploy/monitoring/ (Prometheus alert rules, Grafana dashboard) names only series the worker exports.

The exported names are read from the worker itself: :class:`worker.ops.metrics.WorkerMetrics`
is instantiated and its ``/metrics`` rendering parsed for ``# TYPE`` lines
(counters are scraped as ``<name>`` ending in ``_total``; histograms as
``_bucket``/``_sum``/``_count``), so a metric renamed in the worker fails here,
not on a dashboard that silently shows nothing. Label matchers (``{code="..."}``)
must name labels the metric has. Prometheus's own ``up``-style series are not
used: a vanished worker is caught with ``absent_over_time`` on a worker series.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest
import yaml

from worker.ops.metrics import WorkerMetrics

MONITORING = Path(__file__).resolve().parents[2] / "deploy" / "monitoring"
KEYWORDS = {"by", "without", "on", "ignoring", "group_left", "group_right", "bool", "and", "or", "unless", "offset", "inf", "nan"}
IDENT = re.compile(r"[a-zA-Z_:][a-zA-Z0-9_:]*")


def exported() -> tuple[set[str], dict[str, set[str]]]:
    """Series names a scrape of the worker can return, and the labels of each aigis_* metric."""
    metrics = WorkerMetrics()
    names: set[str] = set()
    for line in metrics.render().splitlines():
        if line.startswith("# TYPE "):
            _, _, name, kind = line.split()
            if kind == "histogram":
                names |= {f"{name}_bucket", f"{name}_sum", f"{name}_count"}
            elif kind == "counter":
                names |= {name} if name.endswith("_total") else {name, f"{name}_total"}
            else:
                names.add(name)
    labels: dict[str, set[str]] = {}
    for m in vars(metrics).values():
        if hasattr(m, "label_names") and hasattr(m, "name"):
            base = set(m.label_names)
            for suffix in ("", "_bucket", "_sum", "_count"):
                labels[m.name + suffix] = base | ({"le"} if suffix == "_bucket" else set())
    return names, labels


def strip(expr: str) -> str:
    """The expression without strings, Grafana variables, ranges, offsets and grouping clauses."""
    expr = re.sub(r'"(?:[^"\\]|\\.)*"|\'(?:[^\'\\]|\\.)*\'', '""', expr)
    expr = re.sub(r"\$\{?\w+\}?", "", expr)
    expr = re.sub(r"\[[^\]]*\]", "", expr)
    expr = re.sub(r"\boffset\s+\w+", "", expr)
    return re.sub(r"\b(by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", "", expr)


def metric_names(expr: str) -> set[str]:
    """Identifiers that are series names: not functions or aggregations (followed by '('), keywords, or inside {...}."""
    body = re.sub(r"\{[^}]*\}", "", strip(expr))
    out = set()
    for m in IDENT.finditer(body):
        word = m.group(0)
        if word.lower() in KEYWORDS or body[m.end() :].lstrip().startswith("("):
            continue
        if m.start() > 0 and (body[m.start() - 1].isdigit() or body[m.start() - 1] == "."):
            continue  # the exponent/suffix of a number such as 1e3
        out.add(word)
    return out


def matchers(expr: str) -> list[tuple[str, set[str]]]:
    """(metric, label names in its {...} matcher) for every selector with a matcher."""
    body = strip(expr)
    found = []
    for m in re.finditer(r"([a-zA-Z_:][a-zA-Z0-9_:]*)\s*\{([^}]*)\}", body):
        keys = {k for k in re.findall(r"([a-zA-Z_][a-zA-Z0-9_]*)\s*(?:=~|!~|!=|=)", m.group(2))}
        found.append((m.group(1), keys))
    return found


def alert_exprs() -> list[tuple[str, str]]:
    doc = yaml.safe_load((MONITORING / "alerts.yaml").read_text())
    return [(rule["alert"], rule["expr"]) for group in doc["groups"] for rule in group["rules"]]


def dashboard_exprs() -> list[tuple[str, str]]:
    out: list[tuple[str, str]] = []

    def walk(node: Any, title: str) -> None:
        if isinstance(node, dict):
            title = node.get("title", title)
            if isinstance(node.get("expr"), str):
                out.append((title, node["expr"]))
            for v in node.values():
                walk(v, title)
        elif isinstance(node, list):
            for v in node:
                walk(v, title)

    walk(json.loads((MONITORING / "grafana-dashboard.json").read_text()), "")
    return out


ALL = [*alert_exprs(), *dashboard_exprs()]


def test_the_parser_finds_names_and_skips_functions_labels_and_ranges() -> None:
    expr = 'histogram_quantile(0.99, sum by (le, stage) (rate(aigis_stage_seconds_bucket{stage="x"}[5m]))) > 1e3 and on(job) up_series offset 5m'
    assert metric_names(expr) == {"aigis_stage_seconds_bucket", "up_series"}
    assert matchers('sum(rate(aigis_dead_letters_total{code="a", x=~"b"}[$__rate_interval]))') == [("aigis_dead_letters_total", {"code", "x"})]
    names, labels = exported()
    assert {"aigis_verdicts_total", "aigis_stage_seconds_bucket", "aigis_stage_seconds_count", "aigis_drift_alarm"} <= names
    assert "aigis_stage_seconds" not in names  # a histogram has no bare series
    assert labels["aigis_dead_letters_total"] == {"code"} and "le" in labels["aigis_stage_seconds_bucket"]


@pytest.mark.parametrize(("where", "expr"), ALL, ids=[w for w, _ in ALL])
def test_every_expression_names_only_series_the_worker_exports(where: str, expr: str) -> None:
    names, labels = exported()
    used = metric_names(expr)
    assert used, f"{where}: no metric found in {expr!r}"
    assert used <= names, f"{where}: {sorted(used - names)} are not exported by WorkerMetrics"
    for metric, keys in matchers(expr):
        have = labels.get(metric, set())
        assert keys <= have, f"{where}: {metric} has labels {sorted(have)}, not {sorted(keys - have)}"


def test_alerts_have_severity_summary_and_description_and_cover_the_issues_areas() -> None:
    doc = yaml.safe_load((MONITORING / "alerts.yaml").read_text())
    rules = [r for g in doc["groups"] for r in g["rules"]]
    for r in rules:
        assert r["labels"]["severity"] in {"warning", "critical"}, r["alert"]
        assert r["annotations"]["summary"] and r["annotations"]["description"], r["alert"]
    used = set().union(*(metric_names(r["expr"]) for r in rules))
    for needed in ("aigis_consumer_lag_sum", "aigis_dead_letters_total", "aigis_stage_seconds_bucket", "aigis_cache_circuit_state", "aigis_drift_alarm"):
        assert needed in used, needed


def test_dashboard_shows_throughput_lag_cache_dead_letters_latency_and_drift() -> None:
    doc = json.loads((MONITORING / "grafana-dashboard.json").read_text())
    assert doc["uid"] and doc["schemaVersion"] >= 30
    assert {"datasource"} <= {v["name"] for v in doc["templating"]["list"]}
    used = set().union(*(metric_names(e) for _, e in dashboard_exprs()))
    for needed in (
        "aigis_verdicts_total",
        "aigis_consumer_lag_sum",
        "aigis_cache_lookups_total",
        "aigis_dead_letters_total",
        "aigis_stage_seconds_bucket",
        "aigis_drift_value",
        "aigis_drift_threshold",
        "aigis_drift_alarm",
    ):
        assert needed in used, needed
    ids = [p["id"] for p in doc["panels"]]
    assert len(ids) == len(set(ids))
