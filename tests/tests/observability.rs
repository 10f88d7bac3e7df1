//! The chart's Grafana dashboard and PrometheusRule against what really runs.
//!
//! ```text
//! helm template (ci/observability-values.yaml) ─┬─> ConfigMap grafana_dashboard=1 ─> dashboard JSON
//!                                                └─> PrometheusRule ─> alert expressions
//!        every expression ─> promql-parser ─> metric names, label names, reason values
//! redis-server + sidecar binary + app, traffic ─> sidecar /metrics  ─┐
//! operator admin server (library) + a reconcile ─> operator /metrics ─┴─> served names and labels
//! ```
//!
//! Every metric a panel or an alert reads must be served (the series, after `_total`, `_bucket`
//! and the like), every label it filters or groups by must be on that series or be a label
//! Prometheus adds from the chart's PodMonitor/ServiceMonitor, and every `reason` it names must
//! be one the sidecar emits. The dashboard is checked against the structural rules of the
//! schemaVersion it declares (see [`check_dashboard_structure`]).
//!
//! Needs helm (`./scripts/install-test-deps.sh` puts it in `.tools/bin/helm`; `HELM` overrides).

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use std::process::Command;

use promql_parser::label::Matchers;
use promql_parser::parser::{self, Expr, LabelModifier};
use serde_json::Value;
use taskstream_sidecar::{CloseReason, DropReason, RejectReason, ResetReason};

#[path = "observability/dashboard.rs"]
mod dashboard;
#[path = "observability/served.rs"]
mod served;
use dashboard::check_dashboard_structure;
use served::{operator_metrics, served, sidecar_metrics};

/// Labels Prometheus puts on every series of a target: the PodMonitor's (namespace, pod,
/// container, endpoint, job, instance, and `taskstream` from its relabeling) and the
/// ServiceMonitor's (the same plus service).
const TARGET_LABELS: &[&str] = &[
    "namespace",
    "pod",
    "container",
    "endpoint",
    "job",
    "instance",
    "service",
    "taskstream",
];

/// Series Prometheus makes itself for every target.
const SYNTHETIC: &[&str] = &["up"];

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// The chart rendered with the dashboard, the rules and both monitors on.
fn render() -> Vec<Value> {
    let root = root();
    let helm = std::env::var_os("HELM")
        .map(PathBuf::from)
        .unwrap_or_else(|| root.join(".tools/bin/helm"));
    assert!(
        helm.exists(),
        "{} missing: run ./scripts/install-test-deps.sh (or set HELM)",
        helm.display()
    );
    let out = Command::new(&helm)
        .current_dir(&root)
        .args([
            "template",
            "ts",
            "charts/taskstream",
            "--namespace",
            "taskstream-system",
            "-f",
            "charts/taskstream/ci/observability-values.yaml",
        ])
        .output()
        .expect("run helm template");
    assert!(
        out.status.success(),
        "helm template: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8(out.stdout).expect("helm output is UTF-8");
    serde_norway::Deserializer::from_str(&text)
        .map(|doc| serde::Deserialize::deserialize(doc).expect("rendered YAML"))
        .filter(|v: &Value| !v.is_null())
        .collect()
}

/// (where, expression) of every query of the dashboard and every alert, plus the dashboard.
fn expressions(objects: &[Value]) -> (Value, Vec<(String, String)>) {
    let configmap = objects
        .iter()
        .find(|o| o["kind"] == "ConfigMap" && o["metadata"]["labels"]["grafana_dashboard"] == "1")
        .expect("a ConfigMap labelled grafana_dashboard: \"1\"");
    let json = configmap["data"]["taskstream.json"]
        .as_str()
        .expect("the ConfigMap holds taskstream.json");
    let dashboard: Value = serde_json::from_str(json).expect("the dashboard is JSON");
    let mut exprs = Vec::new();
    for panel in dashboard["panels"].as_array().expect("panels") {
        for target in panel["targets"].as_array().into_iter().flatten() {
            let expr = target["expr"].as_str().expect("a target with expr");
            exprs.push((format!("panel {:?}", panel["title"]), expr.to_owned()));
        }
    }
    for var in dashboard["templating"]["list"]
        .as_array()
        .expect("templating")
    {
        if var["type"] == "query" {
            let query = var["query"]["query"].as_str().expect("query variable");
            // label_values(<selector>, <label>): the selector is PromQL.
            let inner = query
                .strip_prefix("label_values(")
                .and_then(|q| q.rsplit_once(','))
                .map(|(sel, _)| sel.to_owned())
                .unwrap_or_else(|| {
                    panic!("variable {}: not label_values(..): {query}", var["name"])
                });
            exprs.push((format!("variable {}", var["name"]), inner));
        }
    }
    let rule = objects
        .iter()
        .find(|o| o["kind"] == "PrometheusRule")
        .expect("a PrometheusRule");
    let mut alerts = 0;
    for group in rule["spec"]["groups"].as_array().expect("groups") {
        for r in group["rules"].as_array().expect("rules") {
            let name = r["alert"].as_str().expect("alerting rules only");
            exprs.push((
                format!("alert {name}"),
                r["expr"].as_str().expect("expr").into(),
            ));
            alerts += 1;
        }
    }
    assert_eq!(alerts, 7, "the seven alerts of the issue");
    (dashboard, exprs)
}

/// Grafana's variables replaced by values PromQL accepts (what Grafana does before it sends).
fn interpolate(expr: &str) -> String {
    expr.replace("$__rate_interval", "1m")
        .replace("$namespace", ".*")
        .replace("$taskstream", ".*")
}

/// What an expression reads: metric names, label names used per metric, grouping labels, and
/// the values its `reason` matchers name.
#[derive(Default, Debug)]
struct Reads {
    metrics: BTreeMap<String, BTreeSet<String>>,
    grouping: BTreeSet<String>,
    reasons: BTreeSet<String>,
}

impl Reads {
    fn selector(&mut self, name: &Option<String>, matchers: &Matchers) {
        let name = name.clone().or_else(|| {
            matchers
                .matchers
                .iter()
                .find(|m| m.name == "__name__")
                .map(|m| m.value.clone())
        });
        let name = name.expect("every selector names its metric");
        let labels = self.metrics.entry(name).or_default();
        for m in matchers
            .matchers
            .iter()
            .chain(matchers.or_matchers.iter().flatten())
        {
            if m.name == "__name__" {
                continue;
            }
            labels.insert(m.name.clone());
            if m.name == "reason" {
                // `a|b` alternations and plain values alike.
                self.reasons.extend(m.value.split('|').map(str::to_owned));
            }
        }
    }

    fn modifier(&mut self, modifier: &Option<LabelModifier>) {
        if let Some(m) = modifier {
            self.grouping.extend(m.labels().labels.iter().cloned());
        }
    }

    fn walk(&mut self, expr: &Expr) {
        match expr {
            Expr::Aggregate(a) => {
                self.modifier(&a.modifier);
                self.walk(&a.expr);
                if let Some(p) = &a.param {
                    self.walk(p);
                }
            }
            Expr::Unary(u) => self.walk(&u.expr),
            Expr::Binary(b) => {
                if let Some(m) = &b.modifier {
                    self.modifier(&m.matching);
                }
                self.walk(&b.lhs);
                self.walk(&b.rhs);
            }
            Expr::Paren(p) => self.walk(&p.expr),
            Expr::Subquery(s) => self.walk(&s.expr),
            Expr::VectorSelector(vs) => self.selector(&vs.name, &vs.matchers),
            Expr::MatrixSelector(ms) => self.selector(&ms.vs.name, &ms.vs.matchers),
            Expr::Call(c) => c.args.args.iter().for_each(|a| self.walk(a)),
            Expr::NumberLiteral(_) | Expr::StringLiteral(_) | Expr::Extension(_) => {}
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_series_the_dashboard_and_alerts_read_is_served_and_every_query_parses() {
    let objects = render();
    let (dashboard, exprs) = expressions(&objects);
    let mut problems = Vec::new();
    check_dashboard_structure(&dashboard, &mut problems);

    let mut reads = Reads::default();
    for (place, expr) in &exprs {
        match parser::parse(&interpolate(expr)) {
            Ok(ast) => reads.walk(&ast),
            Err(e) => problems.push(format!("{place}: does not parse: {e}: {expr}")),
        }
    }

    let sidecar = sidecar_metrics().await;
    let operator = operator_metrics().await;
    let mut served_series = served(&sidecar);
    served_series.extend(served(&operator));

    let target: BTreeSet<&str> = TARGET_LABELS.iter().copied().collect();
    let all_labels: BTreeSet<String> = served_series.values().flatten().cloned().collect();
    for (metric, labels) in &reads.metrics {
        if SYNTHETIC.contains(&metric.as_str()) {
            continue;
        }
        let Some(has) = served_series.get(metric) else {
            problems.push(format!(
                "{metric}: read by the dashboard or an alert, served by no sidecar or operator"
            ));
            continue;
        };
        for l in labels {
            if !has.contains(l) && !target.contains(l.as_str()) {
                problems.push(format!(
                    "{metric}: filtered by label {l}, which it does not carry"
                ));
            }
        }
    }
    for l in &reads.grouping {
        if !all_labels.contains(l) && !target.contains(l.as_str()) {
            problems.push(format!("grouped by {l}, which no served series carries"));
        }
    }
    // The reasons named must be ones the sidecar emits; these are its enums' variants, encoded
    // as their names (checked on one of each that the traffic above produced).
    let mut reasons: BTreeSet<String> = BTreeSet::new();
    reasons.extend(
        [
            DropReason::NonUtf8,
            DropReason::SlowClient,
            DropReason::Malformed,
            DropReason::Undecryptable,
            DropReason::TooLarge,
        ]
        .map(|r| format!("{r:?}")),
    );
    reasons.extend(
        [
            CloseReason::Client,
            CloseReason::SlowClient,
            CloseReason::Timeout,
            CloseReason::TooBig,
            CloseReason::Protocol,
            CloseReason::InvalidUtf8,
            CloseReason::Unread,
            CloseReason::Gone,
            CloseReason::Shutdown,
        ]
        .map(|r| format!("{r:?}")),
    );
    reasons.extend(
        [
            RejectReason::Unauthorized,
            RejectReason::Forbidden,
            RejectReason::Origin,
            RejectReason::BadRequest,
            RejectReason::Limit,
            RejectReason::AuthUnavailable,
            RejectReason::ShuttingDown,
        ]
        .map(|r| format!("{r:?}")),
    );
    reasons.extend(
        [
            ResetReason::Trimmed,
            ResetReason::Expired,
            ResetReason::Unknown,
            ResetReason::TooFar,
            ResetReason::HistoryOff,
            ResetReason::Unavailable,
            ResetReason::Reconnected,
        ]
        .map(|r| format!("{r:?}")),
    );
    assert!(
        sidecar.contains(r#"taskstream_events_dropped_total{reason="TooLarge"} 1"#),
        "reason values are the variants' names: {sidecar}"
    );
    for r in &reads.reasons {
        if !reasons.contains(r) {
            problems.push(format!(
                "reason {r:?} is no reason the sidecar emits ({reasons:?})"
            ));
        }
    }
    // The alerts cover what the issue lists; each reads what it is about.
    let reads_of = |alert: &str| -> String {
        exprs
            .iter()
            .find(|(p, _)| p == &format!("alert {alert}"))
            .map(|(_, e)| e.clone())
            .unwrap_or_default()
    };
    for (alert, series) in [
        ("TaskStreamBrokerDown", "taskstream_broker_up"),
        ("TaskStreamEventsDropped", "taskstream_events_dropped_total"),
        (
            "TaskStreamSlowClientClosesRising",
            "taskstream_connections_closed_total",
        ),
        (
            "TaskStreamHistoryReadsFailing",
            "taskstream_history_resets_total",
        ),
        (
            "TaskStreamDegraded",
            "taskstream_operator_taskstream_condition",
        ),
        (
            "TaskStreamOperatorReconcileErrors",
            "taskstream_operator_reconcile_errors_total",
        ),
        ("TaskStreamOperatorAbsent", "absent(up{"),
    ] {
        if !reads_of(alert).contains(series) {
            problems.push(format!("alert {alert} does not read {series}"));
        }
    }
    assert!(
        problems.is_empty(),
        "{} problem(s):\n{}",
        problems.len(),
        problems.join("\n")
    );
    eprintln!(
        "checked {} expressions reading {} metrics; {} panels",
        exprs.len(),
        reads.metrics.len(),
        dashboard["panels"].as_array().map_or(0, Vec::len)
    );
}

/// The dashboard file in the chart is what the ConfigMap carries, byte for byte (trimmed).
#[test]
fn the_configmap_carries_the_dashboard_file() {
    let file =
        std::fs::read_to_string(root().join("charts/taskstream/files/dashboards/taskstream.json"))
            .expect("read the dashboard file");
    let objects = render();
    let cm = objects
        .iter()
        .find(|o| o["kind"] == "ConfigMap" && o["metadata"]["labels"]["grafana_dashboard"] == "1")
        .expect("the dashboard ConfigMap");
    assert_eq!(cm["data"]["taskstream.json"].as_str(), Some(file.trim()));
}
