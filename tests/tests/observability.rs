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
use std::sync::Arc;

use promql_parser::label::Matchers;
use promql_parser::parser::{self, Expr, LabelModifier};
use serde_json::Value;
use taskstream_operator::metrics::Metrics as OperatorMetrics;
use taskstream_sidecar::{CloseReason, DropReason, RejectReason};
use taskstream_sidecar::{PUBLISH_SCRIPT, ResetReason};
use taskstream_tests::redis_server::RedisServer;
use taskstream_tests::sidecar::{SidecarProcess, ws_url};
use taskstream_tests::upstream::{App, http_get};
use taskstream_tests::ws::{connect_with, recv_text};
use taskstream_tests::{WAIT, eventually};

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

/// The schemaVersion the dashboard is written for (Grafana 10.4 / 11).
const SCHEMA_VERSION: u64 = 39;

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

/// Series names and their label names, from Prometheus/OpenMetrics text.
fn served(text: &str) -> BTreeMap<String, BTreeSet<String>> {
    let mut out: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for line in text
        .lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
    {
        let end = line.find(['{', ' ']).unwrap_or(line.len());
        let labels = out.entry(line[..end].to_owned()).or_default();
        if let Some(rest) = line[end..].strip_prefix('{') {
            let body = rest.split('}').next().unwrap_or_default();
            for pair in body.split(',').filter(|p| !p.is_empty()) {
                if let Some((k, _)) = pair.split_once('=') {
                    labels.insert(k.to_owned());
                }
            }
        }
    }
    out
}

/// A running sidecar's `/metrics` after traffic that makes every labelled family appear:
/// deliveries with history, a resume from history, a reset, a dropped event, a closed and a
/// refused connection, a proxied request.
async fn sidecar_metrics() -> String {
    let redis = RedisServer::start().await;
    let app = App::start().await;
    let url = redis.url();
    let upstream = app.url();
    let sc = SidecarProcess::spawn(&[
        "--auth",
        "none",
        "--redis-url",
        &url,
        "--upstream",
        &upstream,
        "--history-size",
        "100",
        "--max-event-bytes",
        "64",
    ])
    .await;
    let admin = sc.admin;
    eventually("the sidecar's broker link up", || async move {
        (http_get(&format!("http://{admin}/readyz/broker")).await.0 == 200).then_some(())
    })
    .await;
    let v1 = [("Sec-WebSocket-Protocol", "taskstream.v1")];
    let mut live = connect_with(&ws_url(sc.public, "groups=g"), &v1)
        .await
        .expect("v1 handshake");
    let mut conn = redis.conn().await.expect("publisher");
    // Until the sidecar's subscription is in place, events published now may reach no client:
    // publish until one arrives (bounded).
    let deadline = tokio::time::Instant::now() + WAIT;
    let first_id = loop {
        let id = publish(&mut conn, "g", r#"{"n":0}"#).await;
        let wait = std::time::Duration::from_millis(200);
        if tokio::time::timeout(wait, recv_text(&mut live))
            .await
            .is_ok()
        {
            break id;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "no live event through the sidecar within {WAIT:?}"
        );
    };
    publish(&mut conn, "g", r#"{"n":1}"#).await;
    // Above --max-event-bytes: dropped as TooLarge.
    publish(
        &mut conn,
        "g",
        &format!(r#"{{"pad":"{}"}}"#, "x".repeat(100)),
    )
    .await;
    // A resume from the first event gets the second from history.
    let resumed = connect_with(
        &ws_url(sc.public, &format!("groups=g&last_id=g:{first_id}")),
        &v1,
    )
    .await
    .expect("resume");
    // A position this history never issued: a reset.
    let reset = connect_with(&ws_url(sc.public, "groups=g&last_id=g:1-0"), &v1)
        .await
        .expect("reset");
    // No groups: refused.
    assert!(connect_with(&ws_url(sc.public, ""), &[]).await.is_err());
    assert_eq!(http_get(&format!("http://{}/echo", sc.public)).await.0, 200);
    drop((live, resumed, reset));

    eventually("every labelled sidecar family served", || async move {
        let text = http_get(&format!("http://{admin}/metrics")).await.1;
        let names = served(&text);
        let wanted = [
            "taskstream_events_dropped_total",
            "taskstream_connections_closed_total",
            "taskstream_connections_rejected_total",
            "taskstream_history_resets_total",
            "taskstream_proxied_requests_total",
        ];
        let recovered = text.lines().any(|l| {
            l.starts_with("taskstream_history_recovered_events_total ") && !l.ends_with(" 0")
        });
        let delivered = text
            .lines()
            .any(|l| l.starts_with("taskstream_delivery_seconds_count ") && !l.ends_with(" 0"));
        (wanted.iter().all(|n| names.contains_key(*n)) && recovered && delivered).then_some(text)
    })
    .await
}

/// Publishes with history, as an app does (the documented script); returns the event id.
async fn publish(
    conn: &mut redis::aio::MultiplexedConnection,
    group: &str,
    payload: &str,
) -> String {
    redis::Script::new(PUBLISH_SCRIPT)
        .key(format!("taskstream:{group}"))
        .arg(payload)
        .arg(100)
        .arg(600_000)
        .invoke_async(conn)
        .await
        .expect("EVAL publish script")
}

/// The operator's admin server, run from the library as `run` does, after a reconcile, a
/// failed one and a status write.
async fn operator_metrics() -> String {
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;
    use taskstream_operator::admin;

    let (metrics, registry) = OperatorMetrics::registered();
    drop(metrics.reconcile_started());
    metrics.reconcile_failed(&taskstream_operator::Error::InvalidSpec {
        name: "chat".into(),
        reason: "test".into(),
    });
    metrics.leader.set(1);
    let condition = |type_: &str, status: &str| Condition {
        type_: type_.into(),
        status: status.into(),
        reason: "Test".into(),
        message: String::new(),
        observed_generation: Some(1),
        last_transition_time: k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(
            k8s_openapi::jiff::Timestamp::UNIX_EPOCH,
        ),
    };
    metrics.status_written(
        "apps",
        "chat",
        &[condition("Ready", "False"), condition("Degraded", "True")],
    );
    let listener = admin::bind("127.0.0.1:0".parse().expect("addr"))
        .await
        .expect("bind the admin server");
    let addr = listener.local_addr().expect("admin addr");
    let (trigger, shutdown) = taskstream_operator::Shutdown::new();
    let server = tokio::spawn(admin::serve(
        listener,
        Arc::new(registry),
        Arc::new(admin::Health::default()),
        shutdown,
    ));
    let (status, text) = http_get(&format!("http://{addr}/metrics")).await;
    assert_eq!(status, 200, "operator /metrics: {text}");
    trigger.trigger();
    tokio::time::timeout(WAIT, server)
        .await
        .expect("admin server stops")
        .expect("admin task");
    text
}

/// Structural rules of a Grafana dashboard of the declared schemaVersion (39): what Grafana's
/// own schema (the `Dashboard` kind, schemaVersion 39) requires of what this dashboard uses.
fn check_dashboard_structure(d: &Value, problems: &mut Vec<String>) {
    let mut fail = |m: String| problems.push(m);
    if d["schemaVersion"].as_u64() != Some(SCHEMA_VERSION) {
        fail(format!(
            "schemaVersion {}, want {SCHEMA_VERSION}",
            d["schemaVersion"]
        ));
    }
    for key in ["uid", "title"] {
        if d[key].as_str().is_none_or(str::is_empty) {
            fail(format!("dashboard {key} missing"));
        }
    }
    if d["uid"].as_str().is_some_and(|u| u.len() > 40) {
        fail("uid longer than 40 characters".into());
    }
    let vars = d["templating"]["list"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    let names: BTreeSet<&str> = vars.iter().filter_map(|v| v["name"].as_str()).collect();
    for want in ["datasource", "namespace", "taskstream"] {
        if !names.contains(want) {
            fail(format!("no template variable {want}"));
        }
    }
    for v in &vars {
        let ok_type = [
            "query",
            "datasource",
            "custom",
            "constant",
            "interval",
            "textbox",
            "adhoc",
        ]
        .contains(&v["type"].as_str().unwrap_or_default());
        if !ok_type {
            fail(format!("variable {}: type {}", v["name"], v["type"]));
        }
        if v["type"] == "query" && v["datasource"]["uid"] != "${datasource}" {
            fail(format!(
                "variable {}: not on the datasource variable",
                v["name"]
            ));
        }
    }
    let panels = d["panels"].as_array().cloned().unwrap_or_default();
    let mut ids = BTreeSet::new();
    let mut cells: BTreeSet<(u64, u64)> = BTreeSet::new();
    for p in &panels {
        let title = p["title"].as_str().unwrap_or("<untitled>");
        let id = p["id"].as_u64();
        if !id.is_some_and(|id| ids.insert(id)) {
            fail(format!("panel {title}: id missing or repeated"));
        }
        let kind = p["type"].as_str().unwrap_or_default();
        if !["row", "timeseries", "stat", "table", "gauge", "text"].contains(&kind) {
            fail(format!("panel {title}: type {kind:?}"));
        }
        let g = &p["gridPos"];
        let (Some(x), Some(y), Some(w), Some(h)) = (
            g["x"].as_u64(),
            g["y"].as_u64(),
            g["w"].as_u64(),
            g["h"].as_u64(),
        ) else {
            fail(format!("panel {title}: gridPos needs integer x, y, w, h"));
            continue;
        };
        if w == 0 || h == 0 || x + w > 24 {
            fail(format!(
                "panel {title}: gridPos {g} outside the 24-column grid"
            ));
        }
        for cx in x..x + w {
            for cy in y..y + h {
                if !cells.insert((cx, cy)) {
                    fail(format!(
                        "panel {title}: overlaps another panel at ({cx},{cy})"
                    ));
                }
            }
        }
        if kind == "row" {
            continue;
        }
        if p["datasource"] != serde_json::json!({"type": "prometheus", "uid": "${datasource}"}) {
            fail(format!(
                "panel {title}: datasource is not the prometheus ${{datasource}} ref"
            ));
        }
        let targets = p["targets"].as_array().cloned().unwrap_or_default();
        if targets.is_empty() {
            fail(format!("panel {title}: no targets"));
        }
        let mut ref_ids = BTreeSet::new();
        for t in &targets {
            if !t["refId"]
                .as_str()
                .is_some_and(|r| ref_ids.insert(r.to_owned()))
            {
                fail(format!("panel {title}: refId missing or repeated"));
            }
            if t["datasource"] != p["datasource"] {
                fail(format!("panel {title}: a target on another datasource"));
            }
            let expr = t["expr"].as_str().unwrap_or_default();
            // Every variable a query uses is defined (or one of Grafana's own `$__...`).
            for used in expr.split('$').skip(1) {
                let name: String = used
                    .trim_start_matches('{')
                    .chars()
                    .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                    .collect();
                if !name.starts_with("__") && !names.contains(name.as_str()) {
                    fail(format!("panel {title}: ${name} is no template variable"));
                }
            }
            // Sidecar series are filtered by the dashboard's variables.
            if expr.contains("taskstream_") && !expr.contains("taskstream_operator_") {
                for var in ["$namespace", "$taskstream"] {
                    if !expr.contains(var) {
                        fail(format!("panel {title}: {expr} ignores {var}"));
                    }
                }
            }
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
