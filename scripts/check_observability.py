"""Checks of the chart's Grafana dashboard ConfigMap and PrometheusRule; part of
scripts/check_chart.py, which calls them.

    helm template ──> dashboard ConfigMap (JSON, uid, schemaVersion)
                  ──> PrometheusRule (structural schema below, unique alerts, no templates left)
                  ──> PodMonitor relabels series with their TaskStream
    prometheusRule on, no operator job ──> helm template must refuse it

check_chart.py passes itself as `chart` (its fail, run, template and chart constants): importing
it here would, when it runs as a script, load a second copy with a failure list of its own.
"""

from __future__ import annotations

import json
from types import ModuleType

import jsonschema

# The PrometheusRule fields the chart uses, as the CRD of prometheus-operator v0.7x+ defines them
# (monitoring.coreos.com/v1 PrometheusRule: spec.groups[].rules[]); no package here ships that
# CRD, so this is its structural schema for what we write, strict like the API server's.
_STRING_MAP = {"type": "object", "additionalProperties": {"type": "string"}}
PROMETHEUS_RULE_SCHEMA = {
    "type": "object",
    "required": ["apiVersion", "kind", "metadata", "spec"],
    "additionalProperties": False,
    "properties": {
        "apiVersion": {"const": "monitoring.coreos.com/v1"},
        "kind": {"const": "PrometheusRule"},
        "metadata": {
            "type": "object",
            "required": ["name", "namespace"],
            "properties": {"name": {"type": "string"}, "namespace": {"type": "string"}, "labels": _STRING_MAP},
        },
        "spec": {
            "type": "object",
            "required": ["groups"],
            "additionalProperties": False,
            "properties": {
                "groups": {
                    "type": "array",
                    "minItems": 1,
                    "items": {
                        "type": "object",
                        "required": ["name", "rules"],
                        "additionalProperties": False,
                        "properties": {
                            "name": {"type": "string", "minLength": 1},
                            "interval": {"type": "string", "pattern": "^(0|(([0-9]+)h)?(([0-9]+)m)?(([0-9]+)s)?)$"},
                            "rules": {
                                "type": "array",
                                "items": {
                                    "type": "object",
                                    "required": ["alert", "expr", "labels", "annotations"],
                                    "additionalProperties": False,
                                    "properties": {
                                        "alert": {"type": "string", "pattern": "^[A-Za-z][A-Za-z0-9_]*$"},
                                        "expr": {"type": "string", "minLength": 1},
                                        "for": {"type": "string", "pattern": "^(0|(([0-9]+)h)?(([0-9]+)m)?(([0-9]+)s)?)$"},
                                        "labels": {**_STRING_MAP, "required": ["severity"]},
                                        "annotations": {**_STRING_MAP, "required": ["summary", "description"]},
                                    },
                                },
                            },
                        },
                    },
                }
            },
        },
    },
}


def check_observability(chart: ModuleType, name: str, objects: list[dict], values: dict) -> None:
    """The Grafana dashboard ConfigMap and the PrometheusRule, when the values turn them on. The
    PromQL, the metric names and the dashboard's schema rules are checked by
    tests/tests/observability.rs against a running sidecar and operator."""
    dashboard_on = values.get("grafana", {}).get("dashboard", {}).get("enabled", False)
    rules_on = values.get("prometheusRule", {}).get("enabled", False)
    dashboards = [d for d in objects if d["kind"] == "ConfigMap" and d["metadata"].get("labels", {}).get("grafana_dashboard") == "1"]
    if len(dashboards) != (1 if dashboard_on else 0):
        chart.fail(f"{name}: {len(dashboards)} dashboard ConfigMaps with grafana.dashboard.enabled={dashboard_on}")
    for cm in dashboards:
        try:
            board = json.loads(cm["data"]["taskstream.json"])
        except (KeyError, json.JSONDecodeError) as e:
            chart.fail(f"{name}: dashboard ConfigMap: taskstream.json is not JSON: {e}")
            continue
        if board.get("uid") != "taskstream" or not isinstance(board.get("schemaVersion"), int):
            chart.fail(f"{name}: dashboard without uid taskstream or an integer schemaVersion")
    rules = [d for d in objects if d["kind"] == "PrometheusRule"]
    if len(rules) != (1 if rules_on else 0):
        chart.fail(f"{name}: {len(rules)} PrometheusRules with prometheusRule.enabled={rules_on}")
    validator = jsonschema.Draft7Validator(PROMETHEUS_RULE_SCHEMA)
    for rule in rules:
        for e in validator.iter_errors(rule):
            chart.fail(f"{name}: PrometheusRule: {'.'.join(map(str, e.absolute_path)) or '<root>'}: {e.message}")
        alerts = [r.get("alert") for g in rule["spec"].get("groups", []) for r in g.get("rules", [])]
        if len(alerts) != len(set(alerts)):
            chart.fail(f"{name}: PrometheusRule: repeated alert names {alerts}")
        for g in rule["spec"].get("groups", []):
            for r in g.get("rules", []):
                if "{{" in r.get("expr", ""):
                    chart.fail(f"{name}: alert {r.get('alert')}: a template left in expr")
    for d in objects:
        if d["kind"] == "PodMonitor":
            relabel = [r for e in d["spec"]["podMetricsEndpoints"] for r in e.get("relabelings", [])]
            if not any(r.get("targetLabel") == "taskstream" for r in relabel):
                chart.fail(f"{name}: PodMonitor does not label series with their TaskStream (taskstream)")


def check_observability_refusals(chart: ModuleType) -> None:
    """The operator-absent alert needs to know the operator's job: without the ServiceMonitor
    or prometheusRule.operatorJob the chart refuses, naming both."""
    args = ["--set", "prometheusRule.enabled=true", "--set", "metrics.serviceMonitor.enabled=false"]
    p = chart.run([chart.HELM, "template", chart.RELEASE, chart.CHART, "--namespace", chart.RELEASE_NS, *args], check=False)
    if p.returncode == 0:
        chart.fail(f"helm template {' '.join(args)} was accepted")
    elif "operatorJob" not in p.stderr:
        chart.fail(f"helm template {' '.join(args)}: the error does not name operatorJob: {p.stderr.strip()}")
    args += ["--set", "prometheusRule.operatorJob=taskstream-operator"]
    objects = chart.template(args)
    rules = [d for d in objects if d["kind"] == "PrometheusRule"]
    exprs = [r["expr"] for rule in rules for g in rule["spec"]["groups"] for r in g["rules"]]
    if not any('job="taskstream-operator"' in e for e in exprs):
        chart.fail("prometheusRule.operatorJob is not the job the operator alerts select")
