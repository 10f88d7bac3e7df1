//! The attach-mode reconcile against a mocked API server: every request in order, with the
//! API server's real answers (404 for what does not exist, 409 for a conflicting write).

use std::sync::Arc;

use http::{Method, Request, Response, StatusCode};
use kube::Client;
use kube::client::Body;
use serde_json::{Value, json};

use super::*;
use crate::controller::{Context, reconcile};
use crate::fixtures::{NAME, NS, params};
use crate::metrics::Metrics;

type Handle = tower_test::mock::Handle<Request<Body>, Response<Body>>;

const SSA: &str = "?&force=true&fieldManager=taskstream-operator";

fn context() -> (Arc<Context>, Handle) {
    let (service, handle) = tower_test::mock::pair::<Request<Body>, Response<Body>>();
    let ctx = Context::new(Client::new(service, NS), params(), Metrics::default());
    (Arc::new(ctx), handle)
}

fn reply(code: u16, body: &Value) -> Response<Body> {
    Response::builder()
        .status(StatusCode::from_u16(code).expect("code"))
        .body(Body::from(serde_json::to_vec(body).expect("json")))
        .expect("response")
}

fn not_found(what: &str) -> Response<Body> {
    reply(
        404,
        &json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
                "message": format!("{what} not found"), "reason": "NotFound", "code": 404}),
    )
}

/// Expects one request (method and full URI), answers it, returns its JSON body (or null).
async fn step(h: &mut Handle, method: Method, uri: &str, answer: Response<Body>) -> Value {
    let (request, send) = h.next_request().await.expect("a request");
    assert_eq!(request.method(), method, "{}", request.uri());
    assert_eq!(request.uri().to_string(), uri);
    let bytes = request.into_body().collect_bytes().await.expect("body");
    let body = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
    send.send_response(answer);
    body
}

fn ns_path(prefix: &str, plural: &str, name: &str) -> String {
    format!("{prefix}/namespaces/{NS}/{plural}/{name}")
}

/// A pod of Deployment `web`, injected with `hash` (or not injected).
fn pod(name: &str, hash: Option<&str>) -> Value {
    let mut containers = vec![json!({"name": "web", "image": "web:1"})];
    let mut annotations = json!({});
    if let Some(hash) = hash {
        containers.push(json!({"name": "taskstream-sidecar", "image": "sidecar"}));
        annotations = json!({"taskstream.dev/config-hash": hash});
    }
    json!({
        "metadata": {"name": name, "namespace": NS, "annotations": annotations,
            "labels": {"taskstream.dev/inject": NAME, "pod-template-hash": "5d8f9"},
            "ownerReferences": [{"apiVersion": "apps/v1", "kind": "ReplicaSet", "name": "web-5d8f9",
                "uid": "rs-uid", "controller": true}]},
        "spec": {"containers": containers},
        "status": {"phase": "Running", "conditions": [{"type": "Ready", "status": "True"}]}
    })
}

/// Service, no Ingress, no HTTPRoute, nothing left from owned mode, then the pod list.
async fn up_to_the_pods(h: &mut Handle, pods: Vec<Value>) -> Value {
    let service = step(
        h,
        Method::PATCH,
        &format!("{}{SSA}", ns_path("/api/v1", "services", NAME)),
        reply(
            200,
            &json!({"apiVersion": "v1", "kind": "Service", "metadata": {"name": NAME}}),
        ),
    )
    .await;
    for (prefix, plural) in [
        ("/apis/networking.k8s.io/v1", "ingresses"),
        ("/apis/gateway.networking.k8s.io/v1", "httproutes"),
        ("/apis/apps/v1", "deployments"),
        ("/apis/policy/v1", "poddisruptionbudgets"),
        ("/apis/autoscaling/v2", "horizontalpodautoscalers"),
    ] {
        step(
            h,
            Method::GET,
            &ns_path(prefix, plural, NAME),
            not_found(plural),
        )
        .await;
    }
    step(
        h,
        Method::GET,
        &format!("/api/v1/namespaces/{NS}/pods?&labelSelector=taskstream.dev%2Finject%3D{NAME}"),
        reply(
            200,
            &json!({"apiVersion": "v1", "kind": "PodList", "metadata": {"resourceVersion": "9"},
                    "items": pods}),
        ),
    )
    .await;
    service
}

async fn status(h: &mut Handle) -> Value {
    let uri =
        format!("/apis/taskstream.dev/v1alpha1/namespaces/{NS}/taskstreams/{NAME}/status{SSA}");
    let stored = serde_json::to_value(TaskStream::test()).expect("json");
    step(h, Method::PATCH, &uri, reply(200, &stored)).await
}

fn condition<'a>(body: &'a Value, type_: &str) -> &'a Value {
    body["status"]["conditions"]
        .as_array()
        .and_then(|cs| cs.iter().find(|c| c["type"] == type_))
        .unwrap_or_else(|| panic!("{type_} in {body}"))
}

fn current_hash(ts: &TaskStream) -> String {
    attach::injection(ts, &params())
        .expect("injection")
        .config_hash
}

/// Reconciles `ts` on a task while `script` plays the API server here.
async fn run(
    ts: TaskStream,
    script: impl AsyncFnOnce(&mut Handle) -> Vec<Value>,
) -> (Result<Action>, Vec<Value>) {
    let within = std::time::Duration::from_secs(2);
    let (ctx, mut handle) = context();
    let reconciling = tokio::spawn(reconcile(Arc::new(ts), ctx));
    let seen = tokio::time::timeout(within, script(&mut handle))
        .await
        .expect("scenario in time");
    let result = tokio::time::timeout(within, reconciling)
        .await
        .expect("reconcile in time")
        .expect("reconcile task");
    (result, seen)
}

#[tokio::test]
async fn attach_applies_the_service_counts_pods_and_writes_no_workload() {
    let ts = TaskStream::test().attached(8000, None);
    let hash = current_hash(&ts);
    let (result, seen) = run(ts, async move |h| {
        let service = up_to_the_pods(
            h,
            vec![pod("web-1", Some(&hash)), pod("web-2", Some("old"))],
        )
        .await;
        vec![service, status(h).await]
    })
    .await;
    assert_eq!(result.expect("reconcile"), Action::requeue(RESYNC));
    let service = &seen[0];
    assert_eq!(
        service["spec"]["selector"],
        json!({"taskstream.dev/inject": NAME})
    );
    assert_eq!(service["spec"]["ports"][0]["targetPort"], 8080);
    let status = &seen[1];
    assert_eq!(
        status["status"]["attach"],
        json!({"pods": 2, "upToDate": 1, "stale": 1})
    );
    let c = condition(status, "PodsUpToDate");
    assert_eq!(
        (c["status"].as_str(), c["reason"].as_str()),
        (Some("False"), Some("Stale"))
    );
    assert!(
        c["message"]
            .as_str()
            .expect("m")
            .contains("kubectl rollout restart deployment/web -n apps")
    );
    assert_eq!(condition(status, "Ready")["status"], "True");
}

#[tokio::test]
async fn rollout_auto_restarts_the_owner_once_per_config_change() {
    let ts = TaskStream::test().attached(8000, Some(AttachRollout::Auto));
    let hash = current_hash(&ts);
    let h2 = hash.clone();
    let (result, seen) = run(ts.clone(), async move |h| {
        up_to_the_pods(h, vec![pod("web-1", Some("old"))]).await;
        step(
            h,
            Method::GET,
            &ns_path("/apis/apps/v1", "deployments", "web"),
            reply(200, &json!({"apiVersion": "apps/v1", "kind": "Deployment",
                "metadata": {"name": "web", "namespace": NS, "annotations": {RESTARTED_FOR: "old"}}})),
        )
        .await;
        let restart = step(
            h,
            Method::PATCH,
            &format!(
                "{}?&force=true&fieldManager={ROLLOUT_MANAGER}",
                ns_path("/apis/apps/v1", "deployments", "web")
            ),
            reply(200, &json!({"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "web"}})),
        )
        .await;
        let event = step(
            h,
            Method::POST,
            &format!("/apis/events.k8s.io/v1/namespaces/{NS}/events?"),
            reply(201, &json!({})),
        )
        .await;
        vec![restart, event, status(h).await]
    })
    .await;
    result.expect("reconcile");
    let restart = &seen[0];
    // Exactly the two annotations: nothing else of the team's Deployment.
    assert_eq!(
        restart["metadata"]["annotations"],
        json!({RESTARTED_FOR: h2})
    );
    let template = &restart["spec"]["template"];
    assert_eq!(
        template["metadata"]["annotations"]
            .as_object()
            .map(|a| a.len()),
        Some(1)
    );
    assert!(template["metadata"]["annotations"][RESTARTED_AT].is_string());
    assert!(template.get("spec").is_none());
    assert_eq!(seen[1]["reason"], "RolloutRestart");
    assert!(
        seen[1]["note"]
            .as_str()
            .expect("note")
            .contains("deployment/web")
    );

    // Already restarted for this configuration: read, not written again.
    let (result, _) = run(ts, async move |h| {
        up_to_the_pods(h, vec![pod("web-1", Some("old"))]).await;
        step(
            h,
            Method::GET,
            &ns_path("/apis/apps/v1", "deployments", "web"),
            reply(200, &json!({"apiVersion": "apps/v1", "kind": "Deployment",
                "metadata": {"name": "web", "namespace": NS, "annotations": {RESTARTED_FOR: hash}}})),
        )
        .await;
        vec![status(h).await]
    })
    .await;
    result.expect("reconcile");
}

#[tokio::test]
async fn manual_rollout_never_writes_to_the_workload() {
    let ts = TaskStream::test().attached(8000, None);
    let (result, _) = run(ts, async move |h| {
        up_to_the_pods(h, vec![pod("web-1", None)]).await;
        // The next request is the status: no GET or PATCH of deployment/web.
        vec![status(h).await]
    })
    .await;
    result.expect("reconcile");
}

#[tokio::test]
async fn a_conflicting_service_write_is_retried_by_the_error_policy() {
    let ts = TaskStream::test().attached(8000, None);
    let (result, seen) = run(ts, async move |h| {
        step(
            h,
            Method::PATCH,
            &format!("{}{SSA}", ns_path("/api/v1", "services", NAME)),
            reply(
                409,
                &json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
                "message": "Apply failed with 1 conflict", "reason": "Conflict", "code": 409}),
            ),
        )
        .await;
        // Every refused child write shows: Degraded in the status, then one Warning Event.
        let status = status(h).await;
        let event = step(
            h,
            Method::POST,
            &format!("/apis/events.k8s.io/v1/namespaces/{NS}/events?"),
            reply(201, &json!({})),
        )
        .await;
        vec![status, event]
    })
    .await;
    let err = result.expect_err("409 is an error");
    assert!(err.to_string().contains("apply Service apps/shop"), "{err}");
    assert_eq!(
        err.degraded_reason(),
        Some("APIServerError"),
        "an API conflict is reported, and retried by the error policy"
    );
    assert_eq!(condition(&seen[0], "Degraded")["reason"], "APIServerError");
    assert_eq!(seen[1]["reason"], "APIServerError", "the Warning Event");
}
