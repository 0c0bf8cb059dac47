#!/usr/bin/env python3
"""Writes confab's Grafana dashboards (grafana/*.json and the chart's copies).

The dashboards are data; this script is their source so that every panel uses the same
variables (${datasource}, $namespace, $pod) and a valid grid. Run it after editing and commit
the JSON: `python3 grafana/generate.py`. CI checks the committed files match."""

import json
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SEL = 'namespace="$namespace", pod=~"$pod"'


def variables():
    return {
        "list": [
            {"name": "datasource", "type": "datasource", "query": "prometheus", "label": "Data source",
             "current": {}, "hide": 0},
            {"name": "namespace", "type": "query", "label": "Namespace",
             "datasource": {"type": "prometheus", "uid": "${datasource}"},
             "query": {"query": "label_values(confab_build_info, namespace)", "refId": "ns"},
             "definition": "label_values(confab_build_info, namespace)", "refresh": 2, "current": {}, "hide": 0},
            {"name": "pod", "type": "query", "label": "Pod",
             "datasource": {"type": "prometheus", "uid": "${datasource}"},
             "query": {"query": 'label_values(confab_build_info{namespace="$namespace"}, pod)', "refId": "pod"},
             "definition": 'label_values(confab_build_info{namespace="$namespace"}, pod)',
             "refresh": 2, "multi": True, "includeAll": True, "allValue": ".*", "current": {}, "hide": 0},
        ]
    }


class Board:
    def __init__(self, uid, title, description):
        self.uid, self.title, self.description = uid, title, description
        self.panels, self.next_id, self.x, self.y = [], 1, 0, 0

    def row(self, title):
        if self.x:
            self.x, self.y = 0, self.y + 8
        self.panels.append({"id": self.next_id, "type": "row", "title": title, "collapsed": False,
                            "gridPos": {"h": 1, "w": 24, "x": 0, "y": self.y}, "panels": []})
        self.next_id += 1
        self.y += 1

    def panel(self, title, targets, unit="short", kind="timeseries", width=12, description=""):
        if self.x + width > 24:
            self.x, self.y = 0, self.y + 8
        self.panels.append({
            "id": self.next_id, "type": kind, "title": title, "description": description,
            "datasource": {"type": "prometheus", "uid": "${datasource}"},
            "gridPos": {"h": 8, "w": width, "x": self.x, "y": self.y},
            "fieldConfig": {"defaults": {"unit": unit}, "overrides": []},
            "options": {},
            "targets": [{"refId": chr(65 + i), "expr": expr, "legendFormat": legend,
                         "datasource": {"type": "prometheus", "uid": "${datasource}"}}
                        for i, (expr, legend) in enumerate(targets)],
        })
        self.next_id += 1
        self.x += width

    def json(self):
        return {
            "uid": self.uid, "title": self.title, "description": self.description, "tags": ["confab"],
            "schemaVersion": 39, "version": 1, "editable": True, "timezone": "browser",
            "time": {"from": "now-1h", "to": "now"}, "refresh": "30s",
            "templating": variables(), "annotations": {"list": []}, "panels": self.panels,
        }


def rate(metric, by=""):
    grouping = f" by ({by})" if by else ""
    return f"sum{grouping} (rate({metric}{{{SEL}}}[$__rate_interval]))"


def quantile(q, metric, by=""):
    extra = f", {by}" if by else ""
    return f"histogram_quantile({q}, sum by (le{extra}) (rate({metric}_bucket{{{SEL}}}[$__rate_interval])))"


def overview():
    b = Board("confab-overview", "confab / overview", "Connections, traffic, latency and errors of a confab installation.")
    b.row("Connections")
    b.panel("Connections per pod", [(f"sum by (pod) (confab_ws_connections{{{SEL}}})", "{{pod}}")])
    b.panel("Connections, total", [(f'sum(confab_ws_connections{{namespace="$namespace"}})', "total")], kind="stat", width=6)
    b.panel("Pods", [(f'count(confab_build_info{{namespace="$namespace"}})', "pods")], kind="stat", width=6)
    b.panel("Connections opened and closed /s", [(rate("confab_ws_connections_opened_total"), "opened"),
                                               (rate("confab_ws_connections_closed_total", "reason"), "closed: {{reason}}")], unit="ops")
    b.panel("Subscriptions", [(f"sum by (pod) (confab_subscriptions{{{SEL}}})", "{{pod}}")])
    b.row("Traffic")
    b.panel("Messages in /s", [(rate("confab_messages_received_total"), "received"), (rate("confab_messages_committed_total"), "committed")], unit="ops")
    b.panel("Deliveries out /s", [(rate("confab_deliveries_total"), "deliveries")], unit="ops")
    b.row("Latency")
    b.panel("Delivery latency (frame read to socket write)", [(quantile(0.5, "confab_delivery_latency_seconds"), "p50"),
                                                            (quantile(0.99, "confab_delivery_latency_seconds"), "p99")], unit="s")
    b.panel("Group commit latency", [(quantile(0.5, "confab_commit_duration_seconds"), "p50"), (quantile(0.99, "confab_commit_duration_seconds"), "p99")], unit="s")
    b.panel("Group commit batch size", [(f"{rate('confab_commit_batch_size_sum')} / {rate('confab_commit_batch_size_count')}", "mean")])
    b.panel("Bus lag between pods", [(quantile(0.99, "confab_bus_lag_seconds"), "p99")], unit="s")
    b.row("Errors and protection")
    b.panel("HTTP 5xx /s", [(f'sum(rate(confab_http_requests_total{{{SEL}, status=~"5.."}}[$__rate_interval]))', "5xx")], unit="ops")
    b.panel("Rate limited /s", [(rate("confab_rate_limited_total", "scope"), "{{scope}}")], unit="ops")
    b.panel("Slow consumers closed /s", [(rate("confab_slow_consumers_total"), "1008")], unit="ops")
    b.panel("Gap fills from the store /s", [(rate("confab_gap_fills_total"), "gap fills")], unit="ops")
    b.row("HTTP")
    b.panel("HTTP requests /s by route", [(rate("confab_http_requests_total", "route"), "{{route}}")], unit="reqps")
    b.panel("HTTP latency p99 by route", [(quantile(0.99, "confab_http_request_duration_seconds", "route"), "{{route}}")], unit="s")
    b.row("Webhooks")
    b.panel("Webhook deliveries /s by outcome", [(rate("confab_webhook_deliveries_total", "outcome"), "{{outcome}}")], unit="ops")
    # Every pod reports the installation-wide backlog: max, not sum.
    b.panel("Webhook backlog", [
        (f'max(confab_webhook_queue_depth{{{SEL}}})', "events waiting"),
    ])
    b.panel("Oldest undelivered webhook event", [
        (f'max(confab_webhook_oldest_due_age_seconds{{{SEL}}})', "age"),
    ], unit="s", description="The alert ConfabWebhookBacklogOld fires past 15 minutes.")
    return b


def capacity():
    b = Board("confab-capacity", "confab / capacity and SLO", "SLO attainment, headroom and the dependencies that limit confab.")
    b.row("SLO: 99% of deliveries within 250 ms")
    good = f'sum(rate(confab_delivery_latency_seconds_bucket{{{SEL}, le="0.25"}}[1h]))'
    total = f'sum(rate(confab_delivery_latency_seconds_count{{{SEL}}}[1h]))'
    b.panel("Deliveries within 250 ms (1h)", [(f"{good} / {total}", "within SLO")], unit="percentunit", kind="stat", width=8)
    b.panel("Error budget burn rate (1h)", [(f"(1 - {good} / {total}) / 0.01", "burn rate")], kind="stat", width=8)
    b.panel("Pods ready", [(f"sum(confab_ready{{{SEL}}})", "ready")], kind="stat", width=8)
    b.row("Headroom")
    b.panel("Connections per pod vs the 20,000 open-file limit", [(f"max by (pod) (confab_ws_connections{{{SEL}}})", "{{pod}}")])
    b.panel("Outbound queues", [(f"sum by (pod) (confab_outbound_queue_frames{{{SEL}}})", "queued {{pod}}"),
                                (f"max by (pod) (confab_outbound_queue_max_frames{{{SEL}}})", "longest {{pod}}")])
    b.panel("Users online (per room, summed)", [(f"sum(confab_presence_users{{{SEL}}})", "online")])
    b.panel("Acks /s", [(rate("confab_acks_total"), "acks")], unit="ops")
    b.row("Dependencies")
    b.panel("Store query latency p99 by operation", [(quantile(0.99, "confab_store_query_duration_seconds", "op"), "{{op}}")], unit="s")
    b.panel("Redis command latency p99", [(quantile(0.99, "confab_redis_command_duration_seconds", "command"), "{{command}}")], unit="s")
    b.panel("Bus publish latency p99", [(quantile(0.99, "confab_bus_publish_duration_seconds"), "p99")], unit="s")
    b.panel("Build", [(f'count by (version) (confab_build_info{{namespace="$namespace"}})', "{{version}}")], kind="stat")
    return b


def main():
    for board in (overview(), capacity()):
        text = json.dumps(board.json(), indent=2) + "\n"
        for folder in (ROOT / "grafana", ROOT / "charts" / "confab" / "dashboards"):
            folder.mkdir(parents=True, exist_ok=True)
            (folder / f"{board.uid}.json").write_text(text)


if __name__ == "__main__":
    main()
