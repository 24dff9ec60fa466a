"""A real Prometheus scrapes three real nodes; the metric docs and the Grafana dashboard
are checked against what the nodes export, so neither can drift."""

from __future__ import annotations

import json
import re
import urllib.parse
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.integration.harness import REPO_ROOT, NodeProcess, call_tool
from tests.integration.prometheus import PrometheusServer
from tests.polling import wait_for
from vsmcp.node.vsm.immune.model import IMMUNE_KINDS

PUBLIC_TOKEN = "public-token-0123456789abc"
CONFIG = f"""
[tools]
entry_points = false
[[mcp.tokens]]
name = "viewer"
token = "{PUBLIC_TOKEN}"
zone = "public"
"""
SCRAPE_TIMEOUT_S = 60.0
METRICS_DOC = REPO_ROOT / "docs" / "metrics.md"
DASHBOARD = REPO_ROOT / "docs" / "grafana" / "vsmcp.json"
# Words of PromQL that look like metric names in an expression.
PROMQL_WORDS = frozenset(
    [
        "sum",
        "avg",
        "min",
        "max",
        "count",
        "rate",
        "irate",
        "increase",
        "delta",
        "histogram_quantile",
        "by",
        "without",
        "on",
        "ignoring",
        "group_left",
        "group_right",
        "and",
        "or",
        "unless",
        "bool",
        "offset",
        "topk",
        "bottomk",
        "abs",
        "clamp_min",
        "clamp_max",
        "label_values",
    ]
)


@pytest.fixture(scope="module")
def mesh(tmp_path_factory: pytest.TempPathFactory) -> Iterator[list[NodeProcess]]:
    base = tmp_path_factory.mktemp("prom-mesh")
    config = base / "node.toml"
    config.write_text(CONFIG)
    started: list[NodeProcess] = []
    try:
        for name in ("a", "b", "c"):
            started.append(NodeProcess(base / name, "--config", str(config)).start())
        yield started
    finally:
        for node in started:
            node.stop()


def exported_families(node: NodeProcess) -> set[str]:
    text = node.get("/metrics")[1].decode()
    return set(re.findall(r"^# TYPE (\S+) \S+$", text, re.MULTILINE))


def exported_series_names(node: NodeProcess) -> set[str]:
    """The names PromQL can read: families, and a histogram's _bucket, _count and _sum."""
    text = node.get("/metrics")[1].decode()
    names: set[str] = set()
    for name, kind in re.findall(r"^# TYPE (\S+) (\S+)$", text, re.MULTILINE):
        names.add(name)
        if kind == "histogram":
            names.update(f"{name}{suffix}" for suffix in ("_bucket", "_count", "_sum"))
    return names


def documented_families() -> tuple[set[str], set[str]]:
    """(every family in docs/metrics.md's table, those marked conditional)."""
    rows = re.findall(r"^\| `(vsmcp_\w+)` \|(.*)$", METRICS_DOC.read_text(), re.MULTILINE)
    return {name for name, _ in rows}, {name for name, rest in rows if "*Conditional*" in rest}


def dashboard_expressions() -> list[str]:
    dashboard = json.loads(DASHBOARD.read_text())
    exprs = [t["expr"] for p in dashboard["panels"] for t in p.get("targets", [])]
    exprs += [v["definition"] for v in dashboard["templating"]["list"]]
    return exprs


def metric_names(expr: str) -> set[str]:
    """The metric names a PromQL expression reads (label matchers, strings, ranges,
    grouping labels and PromQL's own words taken out)."""
    bare = re.sub(r'"[^"]*"|\{[^}]*\}|\[[^\]]*\]', "", expr)
    bare = re.sub(r"\b(by|without|on|ignoring)\s*\([^)]*\)", "", bare)
    bare = re.sub(r"label_values\(([^,)]+),[^)]*\)", r"\1", bare)
    words = set(re.findall(r"[A-Za-z_:][\w:]*", bare))
    return {w for w in words if w not in PROMQL_WORDS and not w.startswith("$")}


def test_docs_list_exactly_the_exported_families(mesh: list[NodeProcess]) -> None:
    exported = {f for f in exported_families(mesh[0]) if f.startswith("vsmcp_")}
    documented, conditional = documented_families()
    assert exported - documented == set(), "exported but not in docs/metrics.md"
    assert documented - conditional - exported == set(), "documented but not exported"


def test_exported_names_follow_the_conventions(mesh: list[NodeProcess]) -> None:
    text = mesh[0].get("/metrics")[1].decode()
    types = dict(re.findall(r"^# TYPE (vsmcp_\S+) (\S+)$", text, re.MULTILINE))
    assert all(name.endswith("_total") for name, t in types.items() if t == "counter")
    assert not [n for n in types if re.search(r"_(ms|milliseconds|kb|mb)(_|$)", n)]
    inputs = re.findall(r'^vsmcp_viability_input\{input="([^"]+)"\}', text, re.MULTILINE)
    assert "latency_p95_seconds" in inputs
    assert not [i for i in inputs if i.endswith("_ms")]


def test_dashboard_reads_only_exported_metrics(mesh: list[NodeProcess]) -> None:
    exported = exported_series_names(mesh[0])
    names = set().union(*(metric_names(e) for e in dashboard_expressions()))
    assert {
        "vsmcp_viability",
        "vsmcp_events_total",
        "vsmcp_mesh_members",
        "vsmcp_tool_call_duration_seconds_bucket",
    } <= names
    assert names - exported == set(), "dashboard names metrics the node does not export"


def test_metric_names_of_an_expression() -> None:
    expr = 'sum by (instance, kind) (rate(vsmcp_events_total{kind=~"a|b"}[1m])) > vsmcp_up'
    assert metric_names(expr) == {"vsmcp_events_total", "vsmcp_up"}


def _target(node: NodeProcess) -> str:
    return urllib.parse.urlsplit(node.url).netloc


def test_prometheus_scrapes_three_nodes(mesh: list[NodeProcess], tmp_path: Path) -> None:
    targets = [_target(n) for n in mesh]
    prometheus = PrometheusServer(tmp_path / "prometheus", targets).start()
    try:
        _check_scrapes(prometheus, mesh, targets)
    except AssertionError as e:
        raise AssertionError(
            f"{e}\n--- prometheus log ---\n{prometheus.log_text()[-4000:]}"
        ) from None
    finally:
        prometheus.stop()


def _instances(prometheus: PrometheusServer, promql: str) -> dict[str, float]:
    return {r["metric"]["instance"]: float(r["value"][1]) for r in prometheus.query(promql)}


def _check_scrapes(
    prometheus: PrometheusServer, mesh: list[NodeProcess], targets: list[str]
) -> None:
    everyone_up = dict.fromkeys(targets, 1.0)
    wait_for(
        lambda: _instances(prometheus, 'up{job="vsmcp"}') == everyone_up,
        timeout_s=SCRAPE_TIMEOUT_S,
        what="up == 1 for the three targets",
    )

    # A slow scrape on a loaded machine can leave one target's series stale for a round:
    # wait for every target's series, not the first.
    def viability_of_all() -> dict[str, float] | None:
        found = _instances(prometheus, 'vsmcp_viability{scope="node"}')
        return found if set(found) == set(targets) else None

    viability = wait_for(
        viability_of_all, timeout_s=SCRAPE_TIMEOUT_S, what="vsmcp_viability{scope=node} x3"
    )
    assert all(0.0 <= v <= 1.0 for v in viability.values())
    # Every node shows the immune policy kinds up front, at zero without any policy.
    expected = {(target, kind) for target in targets for kind in sorted(IMMUNE_KINDS)}

    def policies_of_all() -> list[dict[str, Any]] | None:
        found = prometheus.query("vsmcp_policies")
        seen = {(r["metric"]["instance"], r["metric"]["kind"]) for r in found}
        return found if seen == expected else None

    policies = wait_for(policies_of_all, timeout_s=SCRAPE_TIMEOUT_S, what="vsmcp_policies x3")
    assert all(float(r["value"][1]) == 0 for r in policies)

    calls = (
        "vsmcp_tool_call_duration_seconds_count"
        f'{{tool="echo",outcome="ok",instance="{targets[0]}"}}'
    )
    # No echo call yet: the series is absent until the first one.
    before = _instances(prometheus, calls).get(targets[0], 0.0)
    for i in range(3):
        reply = call_tool(mesh[0], PUBLIC_TOKEN, "echo", {"text": f"scrape {i}"})
        assert "result" in reply, reply
    wait_for(
        lambda: _instances(prometheus, calls).get(targets[0], before) >= before + 3,
        timeout_s=SCRAPE_TIMEOUT_S,
        what=f"{calls} up by 3 from {before}",
    )
    p95 = "histogram_quantile(0.95, sum by (le) (vsmcp_tool_call_duration_seconds_bucket))"
    quantile = _instances_any(prometheus, p95)
    assert len(quantile) == 1 and 0 < quantile[0] <= 60, quantile


def _instances_any(prometheus: PrometheusServer, promql: str) -> list[float]:
    return [float(r["value"][1]) for r in prometheus.query(promql)]
