//! The reconcile against a mocked API server for the production features: the HTTPRoute and
//! its acceptance, a cluster without the Gateway API, the HPA and who owns `spec.replicas`,
//! and Secret rotation.

use std::sync::Arc;

use serde_json::{Value, json};

use super::*;
use crate::fixtures::apiserver::{RouteStatus, Scenario, timeout_after_1s};

fn condition<'a>(status_body: &'a Value, type_: &str) -> &'a Value {
    status_body["status"]["conditions"]
        .as_array()
        .and_then(|cs| cs.iter().find(|c| c["type"] == type_))
        .unwrap_or_else(|| panic!("condition {type_} in {status_body}"))
}

fn annotation(deployment_body: &Value, key: &str) -> Option<String> {
    deployment_body["spec"]["template"]["metadata"]["annotations"][key]
        .as_str()
        .map(String::from)
}

async fn reconcile_with(ts: TaskStream, scenario: Scenario) -> (Result<Action>, Vec<Value>) {
    let (ctx, server) = Context::test();
    let mocksrv = server.run(scenario);
    let result = reconcile(Arc::new(ts), ctx).await;
    (result, timeout_after_1s(mocksrv).await)
}

#[tokio::test]
async fn accepted_route_is_ready_with_the_gateway_url() {
    let ts = TaskStream::test().with_gateway(&["shop.example.com"]);
    let (result, seen) = reconcile_with(ts, Scenario::Gateway(RouteStatus::Accepted)).await;
    result.expect("reconcile");
    let route = &seen[2];
    assert_eq!(route["spec"]["rules"][0]["backendRefs"][0]["port"], 80);
    let status = &seen[3];
    assert_eq!(status["status"]["url"], "wss://shop.example.com/ws/tasks/");
    assert_eq!(condition(status, "RouteAccepted")["status"], "True");
    assert_eq!(condition(status, "Ready")["status"], "True");
    assert_eq!(condition(status, "Degraded")["status"], "False");
}

#[tokio::test]
async fn refused_route_shows_in_ready_and_degraded() {
    let ts = TaskStream::test().with_gateway(&["shop.example.com"]);
    let (result, seen) = reconcile_with(ts, Scenario::Gateway(RouteStatus::Refused)).await;
    result.expect("a refused route is reported, not retried");
    let status = &seen[3];
    let accepted = condition(status, "RouteAccepted");
    assert_eq!(accepted["status"], "False");
    assert_eq!(accepted["reason"], "NotAllowedByListeners");
    let ready = condition(status, "Ready");
    assert_eq!(
        (ready["status"].as_str(), ready["reason"].as_str()),
        (Some("False"), Some("RouteNotAccepted"))
    );
    assert!(
        ready["message"]
            .as_str()
            .is_some_and(|m| m.contains("gateway edge/public refused the route")),
        "{ready}"
    );
    assert_eq!(condition(status, "Degraded")["status"], "True");
    // The rollout itself is fine.
    assert_eq!(
        condition(status, "Progressing")["reason"],
        "RolloutComplete"
    );
}

#[tokio::test]
async fn route_not_yet_reported_is_unknown_not_degraded() {
    let ts = TaskStream::test().with_gateway(&["shop.example.com"]);
    let (result, seen) = reconcile_with(ts, Scenario::Gateway(RouteStatus::None)).await;
    result.expect("reconcile");
    let status = &seen[3];
    assert_eq!(condition(status, "RouteAccepted")["status"], "Unknown");
    assert_eq!(condition(status, "Degraded")["status"], "False");
}

#[tokio::test]
async fn missing_gateway_api_degrades_without_crashing() {
    let ts = Arc::new(TaskStream::test().with_gateway(&["shop.example.com"]));
    let (ctx, server) = Context::test();
    let mocksrv = server.run(Scenario::GatewayApiMissing);
    let err = reconcile(ts.clone(), ctx.clone())
        .await
        .expect_err("no HTTPRoute resource");
    let seen = timeout_after_1s(mocksrv).await;
    assert_eq!(err.metric_label(), "gateway_api_missing");
    assert!(err.to_string().contains("is not installed"), "{err}");
    let status = &seen[2];
    let degraded = condition(status, "Degraded");
    assert_eq!(
        (degraded["status"].as_str(), degraded["reason"].as_str()),
        (Some("True"), Some("GatewayAPIMissing"))
    );
    assert_eq!(condition(status, "RouteAccepted")["status"], "Unknown");
    assert_eq!(seen[3]["reason"], "GatewayAPIMissing");
    // Retried with backoff, like every user-fixable problem: no hot loop.
    assert_eq!(
        error_policy(ts, &err, ctx),
        Action::requeue(Duration::from_secs(5))
    );
}

#[tokio::test]
async fn a_child_the_api_server_refuses_degrades_with_its_message() {
    // E.g. app.volumeMounts naming a volume that spec.pod.volumes lacks: only the API server
    // can tell, and retrying will not help, so the user must see it.
    let (result, seen) = reconcile_with(TaskStream::test(), Scenario::ApplyInvalid).await;
    let err = result.expect_err("invalid deployment");
    assert_eq!(err.metric_label(), "kube_api");
    let degraded = condition(&seen[0], "Degraded");
    assert_eq!(
        (degraded["status"].as_str(), degraded["reason"].as_str()),
        (Some("True"), Some("ChildInvalid"))
    );
    assert!(
        degraded["message"]
            .as_str()
            .is_some_and(|m| m.contains("volumeMounts[0].name: Not found")),
        "{degraded}"
    );
    assert_eq!(seen[1]["reason"], "ChildInvalid");
}

#[tokio::test]
async fn autoscaled_deployment_starts_at_min_replicas_with_hpa_and_pdb() {
    let ts = TaskStream::test().with_autoscaling(2, 6);
    let (result, seen) = reconcile_with(ts, Scenario::AutoscaleCreate).await;
    result.expect("reconcile");
    assert_eq!(seen[0]["spec"]["replicas"], 2, "created at minReplicas");
    assert_eq!(seen[2]["kind"], "PodDisruptionBudget");
    assert_eq!(seen[3]["spec"]["minReplicas"], 2);
    assert_eq!(seen[3]["spec"]["maxReplicas"], 6);
    assert_eq!(seen[4]["status"]["replicas"], 2);
}

#[tokio::test]
async fn owned_replicas_are_handed_off_before_the_operator_lets_go() {
    // Scaled to 5 by the HPA while the operator's manager still owned the field (autoscaling
    // was just turned on): hand-off at 5, then apply without replicas; 5 stays.
    let ts = TaskStream::test().with_autoscaling(2, 6);
    let (result, seen) = reconcile_with(
        ts,
        Scenario::AutoscaleExisting {
            replicas: 5,
            ours: true,
        },
    )
    .await;
    result.expect("reconcile");
    assert_eq!(seen[0]["spec"], json!({"replicas": 5}));
    assert!(
        seen[1]["spec"].get("replicas").is_none(),
        "the operator does not own spec.replicas: {}",
        seen[1]["spec"]
    );
    assert_eq!(seen[5]["status"]["replicas"], 5);
    assert_eq!(seen[5]["status"]["replicaSummary"], "5/5");
}

#[tokio::test]
async fn kubectl_scale_is_not_reverted() {
    // Replicas already someone else's (kubectl scale to 4): no hand-off, no replicas applied.
    let ts = TaskStream::test().with_autoscaling(2, 6);
    let (result, seen) = reconcile_with(
        ts,
        Scenario::AutoscaleExisting {
            replicas: 4,
            ours: false,
        },
    )
    .await;
    result.expect("reconcile");
    assert_eq!(seen[0]["kind"], "Deployment");
    assert!(seen[0]["spec"].get("replicas").is_none());
    assert_eq!(seen[4]["status"]["replicas"], 4);
}

#[tokio::test]
async fn secret_value_change_rolls_and_unreferenced_key_does_not() {
    let ts = || TaskStream::test().with_redis_secret("redis", "url");
    let hash = |data: Vec<(&'static str, &'static str)>| async move {
        let (result, seen) = reconcile_with(ts(), Scenario::WithSecret(data)).await;
        result.expect("reconcile");
        let hash = annotation(&seen[0], SECRET_HASH).expect("secret hash");
        assert!(!seen[0].to_string().contains("s3cret"), "no value copied");
        hash
    };
    let before = hash(vec![("url", "redis://:s3cret@r:6379"), ("other", "a")]).await;
    let rotated = hash(vec![("url", "redis://:s3cret2@r:6379"), ("other", "a")]).await;
    let unrelated = hash(vec![("url", "redis://:s3cret@r:6379"), ("other", "b")]).await;
    assert_ne!(before, rotated, "a new value rolls the pods");
    assert_eq!(before, unrelated, "an unreferenced key rolls nothing");
}

const SECRET_HASH: &str = crate::resources::SECRET_HASH_ANNOTATION;
