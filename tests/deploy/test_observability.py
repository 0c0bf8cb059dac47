"""Observability checks: alert rules (promtool), dashboards (structure, drift), the real
/metrics output (promtool check metrics), and every dashboard query evaluated by a real
Prometheus scraping two confab pods (cluster shape) under traffic."""

import json
import re
import subprocess
import time
import urllib.parse
import urllib.request
from pathlib import Path

import pytest
import yaml

from conftest import ROOT, binary, free_port, start_confab, wait_http

DASHBOARDS = sorted((ROOT / "grafana").glob("*.json"))

# Panels allowed to be empty in this check, and why. Everything else must return data.
ALLOWED_EMPTY = {
    "HTTP 5xx /s": "only a failing server answers 5xx; the alert rule is unit-tested instead",
    "Rate limited /s": "only abusive clients are limited; covered by the Rust moderation tests",
    "Webhook deliveries /s by outcome": "only with a webhook registered; covered by tests/webhooks.rs",
}


def test_alert_rules_are_valid_and_every_alert_is_unit_tested():
    rules = ROOT / "charts" / "confab" / "files" / "alerts.yaml"
    run = subprocess.run(["promtool", "check", "rules", str(rules)], capture_output=True, text=True)
    assert run.returncode == 0, run.stdout + run.stderr
    tests = ROOT / "tests" / "deploy" / "alerts.test.yaml"
    run = subprocess.run(["promtool", "test", "rules", str(tests)], capture_output=True, text=True, cwd=tests.parent)
    assert run.returncode == 0, run.stdout + run.stderr
    alerts = {r["alert"] for g in yaml.safe_load(open(rules))["groups"] for r in g["rules"] if "alert" in r}
    tested = {t["alertname"] for case in yaml.safe_load(open(tests))["tests"] for t in case["alert_rule_test"]}
    assert alerts == tested, f"untested alerts: {alerts - tested}"
    runbook = (ROOT / "docs" / "observability.md").read_text().lower()
    for alert in alerts:
        assert f"### {alert.lower()}" in runbook, f"no runbook entry for {alert}"


def test_dashboards_are_generated_valid_and_shipped_in_the_chart(tmp_path):
    assert len(DASHBOARDS) >= 2
    before = {p: p.read_text() for p in DASHBOARDS}
    subprocess.run(["python3", str(ROOT / "grafana" / "generate.py")], check=True)
    for p, text in before.items():
        assert p.read_text() == text, f"{p.name} differs from grafana/generate.py's output"
        assert (ROOT / "charts" / "confab" / "dashboards" / p.name).read_text() == text
    for p in DASHBOARDS:
        d = json.loads(p.read_text())
        names = [v["name"] for v in d["templating"]["list"]]
        assert names == ["datasource", "namespace", "pod"], names
        ids = [panel["id"] for panel in d["panels"]]
        assert len(ids) == len(set(ids)), f"{p.name}: duplicate panel ids"
        cells = set()
        for panel in d["panels"]:
            g = panel["gridPos"]
            assert g["x"] >= 0 and g["w"] > 0 and g["x"] + g["w"] <= 24, (p.name, panel["title"], g)
            for x in range(g["x"], g["x"] + g["w"]):
                for y in range(g["y"], g["y"] + g["h"]):
                    assert (x, y) not in cells, f"{p.name}: {panel['title']} overlaps another panel"
                    cells.add((x, y))
            for t in panel.get("targets", []):
                assert t["datasource"]["uid"] == "${datasource}"


def test_metrics_output_passes_promtool(confab):
    text = urllib.request.urlopen(f"http://127.0.0.1:{confab['metrics']}/metrics").read()
    run = subprocess.run(["promtool", "check", "metrics"], input=text, capture_output=True)
    assert run.returncode == 0, (run.stdout + run.stderr).decode()


def test_process_metrics_and_every_series_the_alerts_read_are_exported(confab):
    text = urllib.request.urlopen(f"http://127.0.0.1:{confab['metrics']}/metrics").read().decode()
    values = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            name, _, value = line.rpartition(" ")
            values[name.split("{")[0]] = float(value)
    assert values["process_open_fds"] > 0
    assert values["process_max_fds"] >= values["process_open_fds"]
    assert values["process_resident_memory_bytes"] > 1 << 20
    assert "process_cpu_seconds_total" in values
    # Every confab_/process_ series an alert reads exists (kube-state-metrics' are not ours).
    rules = yaml.safe_load(open(ROOT / "charts" / "confab" / "files" / "alerts.yaml"))
    exported = set(values) | {n.rsplit("_", 1)[0] for n in values}
    for group in rules["groups"]:
        for rule in group["rules"]:
            for name in re.findall(r"(?<![:\w])((?:confab|process)_[a-z_]+)\b(?!:)", rule["expr"]):
                assert name in exported, f"{rule.get('alert') or rule.get('record')} reads {name}, which confab does not export"


def panel_queries():
    for p in DASHBOARDS:
        for panel in json.loads(p.read_text())["panels"]:
            for t in panel.get("targets", []):
                yield p.name, panel["title"], t["expr"]


def query(prom, expr):
    url = f"http://127.0.0.1:{prom}/api/v1/query?" + urllib.parse.urlencode({"query": expr})
    body = json.loads(urllib.request.urlopen(url, timeout=10).read())
    assert body["status"] == "success", body
    return body["data"]["result"]


@pytest.fixture(scope="module")
def loaded_cluster(postgres, redis, tmp_path_factory):
    """Two confab pods on one PostgreSQL and Redis, scraped every second by a real Prometheus,
    after cross-pod traffic."""
    secret = {"CONFAB_JWT_SECRET": "observability-check-secret-observability"}
    pods = [start_confab("--database-url", postgres, "--redis-url", redis, env_extra=secret) for _ in range(2)]
    prom_port = free_port()
    config = {
        "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
        "scrape_configs": [{
            "job_name": "confab",
            "static_configs": [
                {"targets": [f"127.0.0.1:{ports['metrics']}"], "labels": {"namespace": "ci", "pod": f"confab-{i}"}}
                for i, (_, ports) in enumerate(pods)
            ],
        }],
    }
    tmp = tmp_path_factory.mktemp("prometheus")
    (tmp / "prometheus.yml").write_text(yaml.safe_dump(config))
    prom = subprocess.Popen(["prometheus", f"--config.file={tmp / 'prometheus.yml'}", f"--storage.tsdb.path={tmp / 'data'}",
                             f"--web.listen-address=127.0.0.1:{prom_port}"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    wait_http(f"http://127.0.0.1:{prom_port}/-/ready", 60)
    time.sleep(3)
    a, b = (f"http://127.0.0.1:{ports['http']}" for _, ports in pods)
    for i in range(6):
        run = subprocess.run([binary(), "selftest", "--url", a if i % 2 else b, "--peer-url", b if i % 2 else a], capture_output=True, text=True)
        assert run.returncode == 0, run.stderr
        time.sleep(1)
    time.sleep(8)  # let every pod's series be scraped a few times after the traffic
    yield prom_port
    prom.terminate()
    prom.wait(timeout=20)
    for proc, _ in pods:
        proc.terminate()
        proc.wait(timeout=20)


def test_every_dashboard_query_returns_data_from_a_real_prometheus(loaded_cluster):
    empty = []
    for board, title, expr in panel_queries():
        concrete = expr.replace("$namespace", "ci").replace("$pod", ".*").replace("$__rate_interval", "30s")
        if not query(loaded_cluster, concrete) and title not in ALLOWED_EMPTY:
            empty.append(f"{board}: {title}: {concrete}")
    assert not empty, "panels without data:\n" + "\n".join(empty)


def test_the_allow_list_is_not_stale(loaded_cluster):
    titles = {title for _, title, _ in panel_queries()}
    assert set(ALLOWED_EMPTY) <= titles
