//! The reconcile loop against a mocked API server: each scenario scripts the exact requests.

use std::sync::Arc;
use std::time::Duration;

use serde_json::Value;

use super::*;
use crate::fixtures::apiserver::{Scenario, timeout_after_1s};

fn condition<'a>(status_body: &'a Value, type_: &str) -> &'a Value {
    status_body["status"]["conditions"]
        .as_array()
        .and_then(|cs| cs.iter().find(|c| c["type"] == type_))
        .unwrap_or_else(|| panic!("condition {type_} in {status_body}"))
}

fn hash(deployment_body: &Value) -> String {
    deployment_body["spec"]["template"]["metadata"]["annotations"]["taskstream.dev/config-hash"]
        .as_str()
        .expect("config hash")
        .to_string()
}

#[tokio::test]
async fn create_applies_every_child_and_the_status() {
    let (ctx, server) = Context::test();
    let ts = TaskStream::test()
        .with_redis_secret("redis", "url")
        .with_replicas(2)
        .with_ingress("shop.example", Some("shop-tls"));
    let mocksrv = server.run(Scenario::CreateFull);
    let action = reconcile(Arc::new(ts), ctx).await.expect("reconcile");
    let seen = timeout_after_1s(mocksrv).await;
    assert_eq!(action, Action::requeue(RESYNC));

    let deployment = &seen[0];
    let env = deployment["spec"]["template"]["spec"]["initContainers"][0]["env"]
        .as_array()
        .expect("sidecar env");
    let redis = env
        .iter()
        .find(|e| e["name"] == "TASKSTREAM_REDIS_URL")
        .expect("redis env");
    assert_eq!(redis["valueFrom"]["secretKeyRef"]["name"], "redis");
    // The Service exposes only `http`: the sidecar's admin port (POST /publish) stays in the pod.
    assert_eq!(seen[1]["kind"], "Service");
    assert_eq!(seen[1]["spec"]["ports"].as_array().map(Vec::len), Some(1));
    assert_eq!(seen[1]["spec"]["ports"][0]["name"], "http");
    assert_eq!(seen[2]["spec"]["maxUnavailable"], 1);
    assert_eq!(seen[3]["spec"]["tls"][0]["secretName"], "shop-tls");

    let status = &seen[4];
    assert_eq!(status["status"]["observedGeneration"], 1);
    assert_eq!(status["status"]["url"], "wss://shop.example/ws/tasks/");
    assert_eq!(status["status"]["replicaSummary"], "2/2");
    assert_eq!(condition(status, "Ready")["status"], "True");
    assert_eq!(condition(status, "Progressing")["status"], "False");
    assert_eq!(condition(status, "Degraded")["status"], "False");
    assert_eq!(condition(status, "Degraded")["reason"], "AsExpected");
}

#[tokio::test]
async fn minimal_spec_has_no_pdb_nor_ingress() {
    let (ctx, server) = Context::test();
    let mocksrv = server.run(Scenario::ApplyMinimal);
    reconcile(Arc::new(TaskStream::test()), ctx)
        .await
        .expect("reconcile");
    let seen = timeout_after_1s(mocksrv).await;
    assert_eq!(seen[2]["status"]["url"], "ws://shop.apps.svc/ws/tasks/");
}

#[tokio::test]
async fn changed_spec_rolls_the_pod_template() {
    let (ctx, server) = Context::test();
    let mocksrv = server.run(Scenario::ApplyMinimal);
    reconcile(Arc::new(TaskStream::test()), ctx)
        .await
        .expect("first reconcile");
    let before = timeout_after_1s(mocksrv).await;

    let (ctx, server) = Context::test();
    let mut changed = TaskStream::test().with_generation(2);
    changed.spec.redis.url = Some("redis://other:6379/1".into());
    let mocksrv = server.run(Scenario::ApplyMinimal);
    reconcile(Arc::new(changed), ctx)
        .await
        .expect("second reconcile");
    let after = timeout_after_1s(mocksrv).await;

    assert_ne!(
        hash(&before[0]),
        hash(&after[0]),
        "config change rolls the pods"
    );
    assert_eq!(after[2]["status"]["observedGeneration"], 2);
}

#[tokio::test]
async fn unchanged_spec_applies_identical_objects_and_no_status() {
    let (ctx, server) = Context::test();
    let mocksrv = server.run(Scenario::ApplyMinimal);
    let mut ts = TaskStream::test();
    reconcile(Arc::new(ts.clone()), ctx)
        .await
        .expect("first reconcile");
    let first = timeout_after_1s(mocksrv).await;

    // The TaskStream as the watch now delivers it, with the status just written: the same
    // status is not sent again (the mocked API server ends after the Service: a status patch
    // would fail the reconcile).
    ts.status = Some(serde_json::from_value(first[2]["status"].clone()).expect("status"));
    let (ctx, server) = Context::test();
    let mocksrv = server.run(Scenario::ApplyMinimalStatusUnchanged);
    reconcile(Arc::new(ts), ctx)
        .await
        .expect("second reconcile");
    let second = timeout_after_1s(mocksrv).await;
    assert_eq!(
        first[..2],
        second[..],
        "steady state: same apply bodies, so no resourceVersion change"
    );
}

#[tokio::test]
async fn children_the_spec_drops_are_deleted() {
    let (ctx, server) = Context::test();
    let mocksrv = server.run(Scenario::DeleteStaleChildren);
    reconcile(Arc::new(TaskStream::test()), ctx)
        .await
        .expect("reconcile");
    timeout_after_1s(mocksrv).await;
}

#[tokio::test]
async fn missing_secret_degrades_publishes_an_event_and_backs_off() {
    let (ctx, server) = Context::test();
    let ts = Arc::new(TaskStream::test().with_redis_secret("redis", "url"));
    let mocksrv = server.run(Scenario::SecretMissing);
    let err = reconcile(ts.clone(), ctx.clone())
        .await
        .expect_err("secret is missing");
    let seen = timeout_after_1s(mocksrv).await;
    assert_eq!(err.metric_label(), "secret_not_found");
    assert_eq!(
        err.to_string(),
        "taskstream apps/shop: secret redis not found"
    );

    let degraded = condition(&seen[0], "Degraded");
    assert_eq!(degraded["status"], "True");
    assert_eq!(degraded["reason"], "SecretNotFound");
    assert!(
        degraded["message"]
            .as_str()
            .is_some_and(|m| m.contains("secret redis"))
    );
    assert_eq!(condition(&seen[0], "Ready")["status"], "False");

    let event = &seen[1];
    assert_eq!(event["type"], "Warning");
    assert_eq!(event["reason"], "SecretNotFound");
    assert_eq!(event["reportingController"], "taskstream-operator");

    assert_eq!(
        error_policy(ts.clone(), &err, ctx.clone()),
        Action::requeue(Duration::from_secs(5))
    );
    assert_eq!(
        error_policy(ts, &err, ctx),
        Action::requeue(Duration::from_secs(10))
    );
}

#[tokio::test]
async fn missing_secret_key_degrades() {
    let (ctx, server) = Context::test();
    let ts = Arc::new(TaskStream::test().with_redis_secret("redis", "url"));
    let mocksrv = server.run(Scenario::SecretKeyMissing);
    let err = reconcile(ts, ctx).await.expect_err("key is missing");
    let seen = timeout_after_1s(mocksrv).await;
    assert_eq!(err.metric_label(), "secret_key_not_found");
    assert_eq!(
        condition(&seen[0], "Degraded")["reason"],
        "SecretKeyNotFound"
    );
    assert_eq!(seen[1]["reason"], "SecretKeyNotFound");
}

#[tokio::test]
async fn api_errors_back_off_exponentially_and_reset_on_success() {
    let ts = Arc::new(TaskStream::test());
    let (ctx, server) = Context::test();
    let mocksrv = server.run(Scenario::ApplyFails(409));
    let err = reconcile(ts.clone(), ctx.clone())
        .await
        .expect_err("conflict");
    timeout_after_1s(mocksrv).await;
    assert_eq!(err.metric_label(), "kube_api");
    assert!(
        err.to_string().starts_with("apply Deployment apps/shop: "),
        "{err}"
    );
    assert_eq!(
        error_policy(ts.clone(), &err, ctx.clone()),
        Action::requeue(Duration::from_secs(5))
    );

    // The same context (its backoff state) against a fresh mock for the next attempt.
    let (fresh, server) = Context::test();
    let ctx = ctx.with_client_of(&fresh);
    let mocksrv = server.run(Scenario::ApplyFails(500));
    let err = reconcile(ts.clone(), ctx.clone())
        .await
        .expect_err("internal error");
    timeout_after_1s(mocksrv).await;
    assert_eq!(
        error_policy(ts.clone(), &err, ctx.clone()),
        Action::requeue(Duration::from_secs(10))
    );
    assert_eq!(
        error_policy(ts.clone(), &err, ctx.clone()),
        Action::requeue(Duration::from_secs(20))
    );

    let mut errors = String::new();
    let (_, registry) = {
        let mut registry = prometheus_client::registry::Registry::default();
        registry.register("errors", "", ctx.metrics.errors.clone());
        ((), registry)
    };
    prometheus_client::encoding::text::encode(&mut errors, &registry).expect("encode");
    assert!(
        errors.contains(r#"errors_total{error="kube_api"} 3"#),
        "{errors}"
    );

    for _ in 0..10 {
        error_policy(ts.clone(), &err, ctx.clone());
    }
    assert_eq!(
        error_policy(ts.clone(), &err, ctx.clone()),
        Action::requeue(BACKOFF_MAX)
    );
    ctx.reset_backoff(&ts);
    assert_eq!(error_policy(ts, &err, ctx), Action::requeue(BACKOFF_BASE));
}

#[test]
fn secrets_map_to_the_taskstreams_that_reference_them() {
    let (reader, mut writer) = kube::runtime::reflector::store::<TaskStream>();
    let referencing = TaskStream::test().with_redis_secret("redis", "url");
    let mut other = TaskStream::test();
    other.metadata.name = Some("other".into());
    writer.apply_watcher_event(&watcher::Event::InitApply(referencing));
    writer.apply_watcher_event(&watcher::Event::InitApply(other));
    writer.apply_watcher_event(&watcher::Event::InitDone);

    let mut secret = PartialObjectMeta::<Secret>::default();
    secret.metadata.name = Some("redis".into());
    secret.metadata.namespace = Some(crate::fixtures::NS.into());
    let refs = referrers(&reader, &secret);
    assert_eq!(refs.len(), 1);
    assert_eq!(refs[0].name, crate::fixtures::NAME);

    secret.metadata.namespace = Some("elsewhere".into());
    assert!(referrers(&reader, &secret).is_empty());
}
