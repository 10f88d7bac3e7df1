use serde_json::{Value, json};

use super::*;
use crate::fixtures::{NS, params};

fn store(ts: TaskStream) -> BTreeMap<(String, String), TaskStream> {
    BTreeMap::from([((NS.to_string(), "shop".to_string()), ts)])
}

fn review_of(pod: Value, dry_run: bool) -> Vec<u8> {
    serde_json::to_vec(&json!({
        "apiVersion": "admission.k8s.io/v1",
        "kind": "AdmissionReview",
        "request": {
            "uid": "705ab4f5-6393-11e8-b7cc-42010a800002",
            "kind": {"group": "", "version": "v1", "kind": "Pod"},
            "resource": {"group": "", "version": "v1", "resource": "pods"},
            "requestKind": {"group": "", "version": "v1", "kind": "Pod"},
            "requestResource": {"group": "", "version": "v1", "resource": "pods"},
            "namespace": NS,
            "operation": "CREATE",
            "userInfo": {"username": "system:serviceaccount:kube-system:replicaset-controller"},
            "object": pod,
            "oldObject": null,
            "dryRun": dry_run,
            "options": {"apiVersion": "meta.k8s.io/v1", "kind": "CreateOptions"}
        }
    }))
    .expect("json")
}

fn pod(label: &str) -> Value {
    json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"generateName": "web-abc12-", "labels": {"taskstream.dev/inject": label}},
        "spec": {"containers": [{"name": "web", "image": "web:1", "ports": [{"containerPort": 8000}]}]}
    })
}

async fn answer(body: &[u8], ts: TaskStream) -> (StatusCode, Value) {
    let a = review(body, &store(ts), &params()).await;
    let v = serde_json::from_slice(&a.body).unwrap_or(Value::Null);
    (a.status, v)
}

#[tokio::test]
async fn a_labelled_pod_gets_a_json_patch() {
    let (status, v) = answer(
        &review_of(pod("shop"), false),
        TaskStream::test().attached(8000, None),
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(v["apiVersion"], "admission.k8s.io/v1");
    assert_eq!(v["kind"], "AdmissionReview");
    let r = &v["response"];
    assert_eq!(r["uid"], "705ab4f5-6393-11e8-b7cc-42010a800002");
    assert_eq!(r["allowed"], true);
    assert_eq!(r["patchType"], "JSONPatch");
    // kube serializes the patch bytes as a JSON array of numbers, which the API server's JSON
    // decoder accepts for a []byte field as well as base64.
    let patch: Vec<u8> = serde_json::from_value(r["patch"].clone()).expect("patch bytes");
    let patch: json_patch::Patch = serde_json::from_slice(&patch).expect("json patch");
    let mut doc = pod("shop");
    json_patch::patch(&mut doc, &patch).expect("applies");
    assert_eq!(
        doc["spec"]["initContainers"][0]["name"],
        "taskstream-sidecar"
    );
}

#[tokio::test]
async fn dry_run_gets_the_same_answer() {
    let ts = TaskStream::test().attached(8000, None);
    let (_, real) = answer(&review_of(pod("shop"), false), ts.clone()).await;
    let (status, dry) = answer(&review_of(pod("shop"), true), ts).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(real["response"]["patch"], dry["response"]["patch"]);
}

#[tokio::test]
async fn an_unknown_taskstream_is_admitted_with_a_warning() {
    let (status, v) = answer(
        &review_of(pod("nope"), false),
        TaskStream::test().attached(8000, None),
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(v["response"]["allowed"], true);
    assert!(v["response"].get("patch").is_none());
    let w = v["response"]["warnings"][0].as_str().expect("warning");
    assert!(w.contains("no TaskStream nope"), "{w}");
}

#[tokio::test]
async fn a_conflict_is_denied_with_the_reason() {
    let mut p = pod("shop");
    p["spec"]["containers"][0]["ports"][0]["containerPort"] = json!(8080);
    let (status, v) = answer(
        &review_of(p, false),
        TaskStream::test().attached(8000, None),
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(v["response"]["allowed"], false);
    let msg = v["response"]["status"]["message"]
        .as_str()
        .expect("message");
    assert!(msg.contains("port 8080"), "{msg}");
}

#[tokio::test]
async fn malformed_reviews_are_400() {
    let ts = TaskStream::test().attached(8000, None);
    for body in [
        &b"not json"[..],
        br#"{"apiVersion":"admission.k8s.io/v1","kind":"AdmissionReview"}"#,
        br#"{"apiVersion":"admission.k8s.io/v1","kind":"AdmissionReview","request":{"uid":1}}"#,
    ] {
        let a = review(body, &store(ts.clone()), &params()).await;
        assert_eq!(
            a.status,
            StatusCode::BAD_REQUEST,
            "{}",
            String::from_utf8_lossy(body)
        );
        assert!(!a.body.is_empty());
    }
}
