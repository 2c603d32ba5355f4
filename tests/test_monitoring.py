"""The shipped monitoring files: the alert rules (ops/prometheus/alerts.yml), the dashboard (ops/grafana/tlink.json).

The real promtool (Debian's prometheus package, unpacked by ops/test) checks the rules,
runs their unit tests (ops/prometheus/alerts_test.yml) and parses every panel's
expression; every metric a rule or a panel names must be in the service's /metrics once
it has seen some traffic.
"""

from __future__ import annotations

import asyncio
import copy
import json
import re
import subprocess
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml
from prometheus_client.parser import text_string_to_metric_families

from ops.fake_tlink import FakeTlinkState, make_fake_tlink_app
from service.http.keys import SYNC_STATS
from tests.conftest import FIXTURES, fake_tlink_settings, fixture_bytes

OPS = Path(__file__).parent.parent / "ops"
ALERTS = OPS / "prometheus" / "alerts.yml"
ALERTS_TEST = OPS / "prometheus" / "alerts_test.yml"
DASHBOARD = OPS / "grafana" / "tlink.json"
# The Compose stack's Prometheus configuration.
SCRAPE_CONFIG = OPS / "prometheus" / "prometheus.yml"
JOB = "tlink-push"
DATASOURCE = {"type": "prometheus", "uid": "tlink-prometheus"}
SEVERITIES = {"critical", "warning", "info"}
# What Grafana puts in place of its interval variables before it sends a query.
GRAFANA_VARIABLES = {"$__rate_interval": "5m", "$__interval": "1m", "$__range": "1h"}
# A metric the service exports, or `up`, with the label selector that follows it, if any.
METRIC = re.compile(r"\b((?:tlink|process|python)_[a-z0-9_]+|up)\b(\{[^}]*\})?(?!\s*\()")


def rules() -> list[dict[str, Any]]:
    groups = yaml.safe_load(ALERTS.read_text())["groups"]
    return [rule for group in groups for rule in group["rules"]]


def dashboard() -> dict[str, Any]:
    return json.loads(DASHBOARD.read_text())


def panel_expressions() -> list[tuple[str, str]]:
    """(panel title, expression as Prometheus gets it) of every query of the dashboard."""
    found = []
    for panel in dashboard()["panels"]:
        for target in panel["targets"]:
            expr = target["expr"]
            for variable, value in GRAFANA_VARIABLES.items():
                expr = expr.replace(variable, value)
            found.append((panel["title"], expr))
    return found


def promtool_run(promtool: str, *args: str | Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([promtool, *map(str, args)], capture_output=True, text=True, timeout=120)


def metric_names(expr: str) -> set[str]:
    return {name for name, _ in METRIC.findall(expr)}


# --------------------------------------------------------------------------- alert rules


def test_the_alert_rules_pass_promtool_check(promtool):
    result = promtool_run(promtool, "check", "rules", ALERTS)
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"SUCCESS: {len(rules())} rules found" in result.stdout


def test_each_alert_fires_on_a_series_that_should_trigger_it_and_not_on_a_healthy_one(promtool):
    result = promtool_run(promtool, "test", "rules", ALERTS_TEST)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS" in result.stdout
    tests = yaml.safe_load(ALERTS_TEST.read_text())["tests"]
    fired = {case["alertname"] for test in tests for case in test["alert_rule_test"] if case["exp_alerts"]}
    quiet = {case["alertname"] for test in tests for case in test["alert_rule_test"] if not case["exp_alerts"]}
    assert fired == quiet == {rule["alert"] for rule in rules()}


def test_promtool_test_rules_fails_when_an_alert_does_not_fire(promtool, tmp_path):
    """The unit tests can fail: without its absent() branch the sync-stalled rule misses a sync that never finished."""
    text = ALERTS.read_text()
    absent_branch = re.search(r"\n\s+or\n\s+\(absent\(tlink_sync_last_run_timestamp_seconds.*\)\n", text)
    assert absent_branch is not None
    (tmp_path / "alerts.yml").write_text(text.replace(absent_branch.group(0), "\n"))
    (tmp_path / "alerts_test.yml").write_text(ALERTS_TEST.read_text())
    result = promtool_run(promtool, "test", "rules", tmp_path / "alerts_test.yml")
    assert result.returncode != 0
    assert "no run ever finished (the gauge is absent)" in result.stdout + result.stderr


def test_each_rule_waits_has_a_severity_and_says_what_happened():
    for rule in rules():
        assert re.fullmatch(r"[0-9]+[smh]", rule["for"]), rule["alert"]
        assert rule["labels"]["severity"] in SEVERITIES, rule["alert"]
        assert rule["annotations"]["summary"] and rule["annotations"]["description"], rule["alert"]


def test_every_selector_names_the_scrape_job_of_the_shipped_prometheus_config():
    jobs = [scrape["job_name"] for scrape in yaml.safe_load(SCRAPE_CONFIG.read_text())["scrape_configs"]]
    assert jobs == [JOB]
    for expr in [rule["expr"] for rule in rules()] + [expr for _, expr in panel_expressions()]:
        for name, selector in METRIC.findall(expr):
            assert f'job="{JOB}"' in selector, f"{name} in {expr}"


# --------------------------------------------------------------------------- dashboard


def dashboard_schema() -> dict[str, Any]:
    schema: dict[str, Any] = json.loads(fixture_bytes("grafana-dashboard.schema.json"))
    jsonschema.Draft202012Validator.check_schema(schema)
    return schema


def test_the_dashboard_is_a_schema_valid_grafana_dashboard():
    board = dashboard()
    jsonschema.validate(board, dashboard_schema(), cls=jsonschema.Draft202012Validator)
    assert board["schemaVersion"] == 39
    panels = board["panels"]
    assert len({p["id"] for p in panels}) == len(panels)
    cells = [(p["gridPos"]["x"] + dx, p["gridPos"]["y"] + dy) for p in panels
             for dx in range(p["gridPos"]["w"]) for dy in range(p["gridPos"]["h"])]  # fmt: skip
    assert len(cells) == len(set(cells)), "panels overlap"
    assert all(x < 24 for x, _ in cells)
    for panel in panels:
        assert panel["datasource"] == DATASOURCE, panel["title"]
        assert panel["targets"] and all(t["datasource"] == DATASOURCE for t in panel["targets"]), panel["title"]


@pytest.mark.parametrize(
    "breakage",
    [
        lambda board: board["panels"][0].pop("gridPos"),
        lambda board: board["panels"][1]["targets"][0].pop("refId"),
        lambda board: board["panels"][2]["datasource"].pop("uid"),
        lambda board: board.pop("schemaVersion"),
        lambda board: board["panels"][3].update(type="graph"),  # removed from Grafana
    ],
)
def test_the_schema_rejects_a_dashboard_grafana_cannot_load(breakage):
    board = copy.deepcopy(dashboard())
    breakage(board)
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(board, dashboard_schema(), cls=jsonschema.Draft202012Validator)


def test_the_dashboard_has_a_panel_for_each_subject():
    titles = [panel["title"] for panel in dashboard()["panels"]]
    assert titles == [
        "Pushes by outcome", "Push latency", "Log fsync latency", "Lines per flush", "Projection lag",
        "Sync and backfill runs", "Read API latency by route (p99)", "Read API requests by status class",
    ]  # fmt: skip
    assert all("histogram_quantile" in expr for title, expr in panel_expressions() if "latency" in title)


def test_every_panel_expression_parses(promtool, tmp_path):
    """promtool parses them as recording rules: a syntax error in any fails the check."""
    records = [{"record": f"tlink:panel_{i}", "expr": expr} for i, (_, expr) in enumerate(panel_expressions())]
    path = tmp_path / "panels.yml"
    path.write_text(yaml.safe_dump({"groups": [{"name": "panels", "rules": records}]}))
    result = promtool_run(promtool, "check", "rules", path)
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"SUCCESS: {len(records)} rules found" in result.stdout
    broken = [{"record": "tlink:broken", "expr": "sum by (outcome) (rate(tlink_webhook_requests_total[5m])"}]
    path.write_text(yaml.safe_dump({"groups": [{"name": "panels", "rules": broken}]}))
    assert promtool_run(promtool, "check", "rules", path).returncode != 0


# --------------------------------------------------------------------------- the names exist


@pytest.fixture
def database_url(sqlite_url):
    """The metric names do not depend on the backend: SQLite only."""
    return sqlite_url


async def test_every_metric_a_rule_or_a_panel_names_is_exported(app_client, aiohttp_server):
    fake = await aiohttp_server(make_fake_tlink_app(FIXTURES, state=FakeTlinkState()))
    url = str(fake.make_url("")).rstrip("/")
    client = await app_client(
        **fake_tlink_settings(url), TLINK_SYNC_ENABLED=True, TLINK_SYNC_INTERVAL_SECONDS=3600
    )  # the start-up run only
    stats = client.server.app[SYNC_STATS]
    for _ in range(500):
        if sum(stats.runs.values()):
            break
        await asyncio.sleep(0.02)
    assert sum(stats.runs.values()) == 1
    assert (await client.post("/api/webhooks/tlink", data=fixture_bytes("sample_push.json"))).status == 200
    assert (await client.get("/api/users/385/devices/2864/latest")).status == 200
    text = await (await client.get("/metrics")).text()
    exported = {sample.name for family in text_string_to_metric_families(text) for sample in family.samples}
    named = set().union(*(metric_names(rule["expr"]) for rule in rules()))
    named |= set().union(*(metric_names(expr) for _, expr in panel_expressions()))
    assert "tlink_sync_interval_seconds" in named and "tlink_http_requests_total" in named
    named.discard("up")  # Prometheus's own, per scrape target
    assert sorted(named - exported) == []
