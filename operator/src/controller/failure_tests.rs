//! A child the API server refuses is never silent: for each class of refusal, one reconcile
//! writes `Degraded=True` with the class's reason and the API server's message, sets
//! `observedGeneration`, posts one Warning Event, and returns the error for a retry with
//! backoff. A retry meeting the same refusal posts no second Event; a success clears it.

use std::sync::Arc;
use std::time::Duration;

use serde_json::Value;

use super::*;
use crate::error::ApiRefusal;
use crate::fixtures::apiserver::{Scenario, timeout_after_1s};
use crate::fixtures::child_failures::{self, Refusal, Seen};

fn degraded(status_body: &Value) -> &Value {
    status_body["status"]["conditions"]
        .as_array()
        .and_then(|cs| cs.iter().find(|c| c["type"] == "Degraded"))
        .unwrap_or_else(|| panic!("Degraded in {status_body}"))
}

/// One reconcile of `ts` against an API server refusing as `refusal`.
async fn reconcile_refused(ts: TaskStream, refusal: Refusal, news: bool) -> (Error, Seen) {
    let (ctx, server) = child_failures::context();
    let scenario = server.run(refusal, news);
    let ts = Arc::new(ts);
    let err = reconcile(ts.clone(), ctx.clone())
        .await
        .expect_err("the child is refused");
    assert_eq!(
        error_policy(ts, &err, ctx.clone()),
        Action::requeue(Duration::from_secs(5)),
        "retried with backoff"
    );
    drop(ctx);
    (err, timeout_after_1s(scenario).await)
}

#[tokio::test]
async fn every_class_of_refusal_shows_in_status_and_one_event() {
    let cases = [
        (
            Refusal::Quota,
            "QuotaExceeded",
            "apply Service apps/shop: services \"shop\" is forbidden: exceeded quota: apps-quota",
        ),
        (
            Refusal::KyvernoWebhook,
            "AdmissionDenied",
            "apply Deployment apps/shop: admission webhook \"validate.kyverno.svc-fail\" denied the request",
        ),
        (
            Refusal::GatekeeperWebhook,
            "AdmissionDenied",
            "apply Deployment apps/shop: admission webhook \"validation.gatekeeper.sh\" denied the request: [must-have-team]",
        ),
        (
            Refusal::AdmissionPolicy,
            "AdmissionDenied",
            "apply Deployment apps/shop: deployments.apps \"shop\" is forbidden: ValidatingAdmissionPolicy 'replica-limit'",
        ),
        (
            Refusal::Invalid,
            "ChildInvalid",
            "apply Deployment apps/shop: Deployment.apps \"shop\" is invalid: spec.template",
        ),
        (
            Refusal::ServiceIpRangeFull,
            "APIServerError",
            "apply Service apps/shop: Internal error occurred: failed to allocate a serviceIP: range is full",
        ),
        (
            Refusal::DeleteTimeout,
            "APIServerError",
            "delete PodDisruptionBudget apps/shop: Internal error occurred: etcdserver: request timed out",
        ),
    ];
    for (refusal, reason, message) in cases {
        let ts = TaskStream::test().with_generation(4);
        let (err, seen) = reconcile_refused(ts, refusal, true).await;
        assert_eq!(err.degraded_reason(), Some(reason), "{refusal:?}");

        let condition = degraded(&seen.status);
        assert_eq!(condition["status"], "True", "{refusal:?}");
        assert_eq!(condition["reason"], reason, "{refusal:?}");
        let shown = condition["message"].as_str().expect("message");
        assert!(shown.starts_with(message), "{refusal:?}: {shown}");
        assert!(!shown.contains("Status {"), "no Debug dump: {shown}");
        assert_eq!(condition["observedGeneration"], 4, "{refusal:?}");
        assert_eq!(
            seen.status["status"]["observedGeneration"], 4,
            "{refusal:?}"
        );

        let event = seen.event.expect("a Warning Event");
        assert_eq!(event["type"], "Warning", "{refusal:?}");
        assert_eq!(event["reason"], reason, "{refusal:?}");
        assert_eq!(event["note"], shown, "{refusal:?}");
        assert_eq!(event["regarding"]["kind"], "TaskStream");
        assert_eq!(event["regarding"]["name"], "shop");
    }
}

/// The retry of a TaskStream whose status already shows the refusal sends neither that status
/// again nor an Event: one Event per reason and message, not one per retry.
#[tokio::test]
async fn a_retry_meeting_the_same_refusal_posts_no_second_event() {
    let (_, first) = reconcile_refused(TaskStream::test(), Refusal::Quota, true).await;
    let mut ts = TaskStream::test();
    ts.status = Some(serde_json::from_value(first.status["status"].clone()).expect("status"));

    // The status already shows it: neither the same status nor a second Event is sent.
    let (_, retry) = reconcile_refused(ts.clone(), Refusal::Quota, false).await;
    assert!(retry.status.is_null(), "{}", retry.status);
    assert!(retry.event.is_none());

    // A different refusal is news: its own Event.
    let (_, other) = reconcile_refused(ts, Refusal::ServiceIpRangeFull, true).await;
    assert_eq!(degraded(&other.status)["reason"], "APIServerError");
    assert!(other.event.is_some());
}

/// Once the child applies, `Degraded` clears.
#[tokio::test]
async fn a_successful_apply_clears_the_refusal() {
    let (_, first) = reconcile_refused(TaskStream::test(), Refusal::Quota, true).await;
    let mut ts = TaskStream::test();
    ts.status = Some(serde_json::from_value(first.status["status"].clone()).expect("status"));

    let (ctx, server) = Context::test();
    let scenario = server.run(Scenario::ApplyMinimal);
    reconcile(Arc::new(ts), ctx).await.expect("reconcile");
    let seen = timeout_after_1s(scenario).await;
    let condition = degraded(&seen[2]);
    assert_eq!(condition["status"], "False");
    assert_eq!(condition["reason"], "AsExpected");
}

#[test]
fn classes_follow_the_api_servers_status() {
    let api = |code: u16, reason: &str, message: &str| {
        kube::Error::Api(Box::new(kube::core::Status {
            code,
            reason: reason.into(),
            message: message.into(),
            ..Default::default()
        }))
    };
    let class = |e: &kube::Error| ApiRefusal::of(e).reason();
    assert_eq!(
        class(&api(
            403,
            "Forbidden",
            "pods \"x\" is forbidden: exceeded quota: q"
        )),
        "QuotaExceeded"
    );
    // RBAC is the operator's problem, not a quota nor an admission decision.
    let rbac = "deployments.apps \"shop\" is forbidden: User \"system:serviceaccount:ts:op\" \
                cannot patch resource \"deployments\" in API group \"apps\"";
    assert_eq!(class(&api(403, "Forbidden", rbac)), "APIServerError");
    // A webhook that chose 422 is still an admission decision.
    assert_eq!(
        class(&api(
            422,
            "",
            "admission webhook \"w\" denied the request: no"
        )),
        "AdmissionDenied"
    );
    assert_eq!(class(&api(409, "Conflict", "modified")), "APIServerError");
    assert_eq!(class(&api(504, "Timeout", "timeout")), "APIServerError");
    let unreachable = kube::Error::Service("connection refused".into());
    assert_eq!(class(&unreachable), "APIServerError");
}

/// A verbose webhook: the condition keeps 4 KiB of its message, the Event (which the API server
/// refuses past 1 KiB) 1 KiB; both cut on a character boundary.
#[test]
fn long_messages_are_bounded() {
    let long = format!(
        "admission webhook \"w\" denied the request: {}",
        "é".repeat(5000)
    );
    let err = Error::Kube {
        action: "apply",
        kind: "Deployment",
        namespace: "apps".into(),
        name: "shop".into(),
        source: Box::new(kube::Error::Api(Box::new(kube::core::Status {
            code: 400,
            message: long,
            ..Default::default()
        }))),
    };
    assert_eq!(err.degraded_reason(), Some("AdmissionDenied"));
    let message = err.degraded_message();
    assert!(
        message.len() <= 4096 && message.len() > 4000,
        "{}",
        message.len()
    );
    assert!(message.ends_with('…'));
    let note = crate::error::truncate(message, EVENT_NOTE_MAX_BYTES);
    assert!(note.len() <= EVENT_NOTE_MAX_BYTES && note.len() > 1000);
}
