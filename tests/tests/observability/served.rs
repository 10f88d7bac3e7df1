//! What is served: the sidecar's and the operator's `/metrics` after traffic that makes every
//! labelled family appear, read as series names and their label names.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use taskstream_operator::metrics::Metrics as OperatorMetrics;
use taskstream_sidecar::PUBLISH_SCRIPT;
use taskstream_tests::redis_server::RedisServer;
use taskstream_tests::sidecar::{SidecarProcess, ws_url};
use taskstream_tests::upstream::{App, http_get};
use taskstream_tests::ws::{connect_with, recv_text};
use taskstream_tests::{WAIT, eventually};

/// Series names and their label names, from Prometheus/OpenMetrics text.
pub(super) fn served(text: &str) -> BTreeMap<String, BTreeSet<String>> {
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
pub(super) async fn sidecar_metrics() -> String {
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
pub(super) async fn operator_metrics() -> String {
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
