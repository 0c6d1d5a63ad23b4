"""The monitoring kit in etc/: the alerting rules pass ``promtool check rules``
and their own ``promtool test rules``; the Grafana dashboard is well formed;
and every metric either of them names is one a node (with workers) exports."""
from __future__ import annotations

import json
import re
import shutil
import socket
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml
from prometheus_client.parser import text_string_to_metric_families

from conftest import HOST, REPO_ROOT, Daemon, HttpConn, free_port, wait_port

RULES = REPO_ROOT / "etc" / "prometheus" / "mogstored-rules.yml"
RULES_TEST = REPO_ROOT / "etc" / "prometheus" / "mogstored-rules.test.yml"
DASHBOARD = REPO_ROOT / "etc" / "grafana" / "mogstored.json"

PROMTOOL = shutil.which("promtool")
needs_promtool = pytest.mark.skipif(PROMTOOL is None, reason="promtool missing (Debian's prometheus package; "
                                                              ".ci/run installs it)")

# Suffixes of the series a family of each type exposes.
_SUFFIXES = {"counter": ("_total",), "gauge": ("",), "histogram": ("_bucket", "_sum", "_count")}
_KEYWORDS = {"by", "without", "on", "ignoring", "group_left", "group_right", "and", "or", "unless", "offset", "bool",
             "inf", "nan"}


def metric_names(expr: str) -> set[str]:
    """The metric names a PromQL expression selects: its identifiers once strings,
    label matchers, ranges, grouping clauses, functions and keywords are gone."""
    expr = re.sub(r'"(?:[^"\\]|\\.)*"', '""', expr)
    expr = re.sub(r"\{[^}]*\}|\[[^]]*\]", " ", expr)
    expr = re.sub(r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", " ", expr)
    idents = re.findall(r"(?<![\w.])([a-zA-Z_:][\w:]*)\b(?!\s*\()", expr)
    return {i for i in idents if i.lower() not in _KEYWORDS}


def rule_exprs() -> list[str]:
    groups = yaml.safe_load(RULES.read_text())["groups"]
    return [rule["expr"] for group in groups for rule in group["rules"]]


def dashboard() -> dict:
    return json.loads(DASHBOARD.read_text())


def dashboard_exprs() -> list[str]:
    """The panels' queries and the series the variables take label values from."""
    exprs = [t["expr"] for p in dashboard()["panels"] for t in p.get("targets", [])]
    for v in dashboard()["templating"]["list"]:
        if v["type"] == "query":
            series = re.fullmatch(r"label_values\((.+), \w+\)", v["query"]["query"])
            assert series, v["query"]
            exprs.append(series[1])
    return exprs


@pytest.fixture(scope="module")
def exported(tmp_path_factory: pytest.TempPathFactory) -> Iterator[set[str]]:
    """Every series name a node with worker processes exports, from the families
    of one scrape (a family with no samples yet still declares its type)."""
    port = free_port()
    d = Daemon(tmp_path_factory.mktemp("kit"), args=(f"--metricslisten={HOST}:{port}", "--worker-processes=2"))
    try:
        wait_port(port, proc=d.proc)
        with HttpConn(socket.create_connection((HOST, port), timeout=10)) as conn:
            resp = conn.request(b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n")
        assert resp.status == 200
        families = list(text_string_to_metric_families(resp.body.decode()))
    finally:
        d.stop()
    yield {f.name + suffix for f in families for suffix in _SUFFIXES[f.type]}


def test_metric_names_parser() -> None:
    assert metric_names('sum by (le, method) (rate(a_bucket{instance=~"$i",x="by(y)"}[$__rate_interval]))') == \
        {"a_bucket"}
    assert metric_names("a{kind=\"x\"} / ignoring (kind) b > 0.1 and on (d) c offset 15m or 2 * 60") == {"a", "b", "c"}
    assert metric_names("histogram_quantile(0.99, x)") == {"x"}


def test_worker_metrics_exported(exported: set[str]) -> None:
    """The fixture's scrape did see what only worker mode exports, and the histogram's series."""
    assert {"mogstored_worker_restarts_total", "mogstored_worker_processes",
            "mogstored_http_request_duration_seconds_bucket", "mogstored_device_stalled"} <= exported


@pytest.mark.parametrize("kit", ["rules", "dashboard"])
def test_kit_names_only_exported_metrics(kit: str, exported: set[str]) -> None:
    exprs = rule_exprs() if kit == "rules" else dashboard_exprs()
    assert exprs
    for expr in exprs:
        names = metric_names(expr)
        assert names, expr
        assert names <= exported, f"{sorted(names - exported)} not exported, in {expr}"


def test_rules_cover_the_issue() -> None:
    """A stalled device, disk errors, a device near full, workers restarting:
    each alert has a severity, a for: duration where it is about a state, and
    annotations naming the node (and the device where there is one)."""
    groups = yaml.safe_load(RULES.read_text())["groups"]
    rules = {r["alert"]: r for g in groups for r in g["rules"]}
    assert {"MogstoredDeviceStalled", "MogstoredDiskErrors", "MogstoredDeviceNearFull",
            "MogstoredWorkerRestarted"} <= set(rules)
    for name, rule in rules.items():
        assert rule["labels"]["severity"] in ("warning", "critical"), name
        text = rule["annotations"]["summary"] + rule["annotations"]["description"]
        assert "$labels.instance" in text, name
        assert ("device" in rule["expr"]) == ("$labels.device" in text), name
    for gauge_alert in ("MogstoredDeviceStalled", "MogstoredDeviceNearFull", "MogstoredDeviceFull",
                        "MogstoredDeviceSaturated"):
        assert re.fullmatch(r"\d+[smh]", rules[gauge_alert]["for"]), gauge_alert


@needs_promtool
def test_promtool_checks_and_unit_tests_the_rules() -> None:
    check = subprocess.run([PROMTOOL, "check", "rules", str(RULES)], capture_output=True, text=True)
    assert check.returncode == 0, check.stdout + check.stderr
    assert f"SUCCESS: {len(rule_exprs())} rules found" in check.stdout
    unit = subprocess.run([PROMTOOL, "test", "rules", str(RULES_TEST)], capture_output=True, text=True)
    assert unit.returncode == 0, unit.stdout + unit.stderr


@needs_promtool
def test_dashboard_queries_parse(tmp_path: Path) -> None:
    """Every dashboard query, with its variables filled in, is valid PromQL:
    promtool parses them as recording rules."""
    exprs = [e.replace("$__rate_interval", "5m").replace("$instance", ".*").replace("$device", ".*")
             for e in dashboard_exprs()]
    rules = {"groups": [{"name": "dashboard", "rules": [{"record": f"panel:query{n}", "expr": e}
                                                       for n, e in enumerate(exprs)]}]}
    path = tmp_path / "dashboard-queries.yml"
    path.write_text(yaml.safe_dump(rules))
    check = subprocess.run([PROMTOOL, "check", "rules", str(path)], capture_output=True, text=True)
    assert check.returncode == 0, check.stdout + check.stderr


def test_dashboard_is_well_formed() -> None:
    d = dashboard()
    assert isinstance(d["schemaVersion"], int) and d["uid"] and d["title"]
    variables = {v["name"]: v for v in d["templating"]["list"]}
    assert variables["datasource"]["type"] == "datasource" and variables["datasource"]["query"] == "prometheus"
    assert variables["instance"]["type"] == "query"
    ids = [p["id"] for p in d["panels"]]
    assert len(ids) == len(set(ids)), "panel ids repeat"
    for p in d["panels"]:
        pos = p["gridPos"]
        assert 0 <= pos["x"] and pos["x"] + pos["w"] <= 24 and pos["h"] > 0, p["title"]
        if p["type"] == "row":
            continue
        assert p["datasource"]["uid"] == "${datasource}", p["title"]
        refs = [t["refId"] for t in p["targets"]]
        assert refs and len(refs) == len(set(refs)), p["title"]
        for t in p["targets"]:
            assert 'instance=~"$instance"' in t["expr"], (p["title"], t["expr"])
    titles = " ".join(p["title"] for p in d["panels"]).lower()
    for topic in ("method and status", "duration", "sent", "received", "threads", "oldest", "stalled",
                  "errno", "fullness", "utilization", "listener", "worker"):
        assert topic in titles, topic
