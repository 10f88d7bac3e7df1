//! One AdmissionReview in, one out: parse, look the TaskStream up, mutate, answer.
//!
//! ```text
//! body ─> AdmissionReview<Pod> ──(malformed: 400)
//!           └─> Pod CREATE with the inject label ─> TaskStreams::get(ns, label) ─> mutate()
//!                 └─> AdmissionResponse: patch | unchanged + warnings | denied ─> 200 JSON
//! ```
//!
//! Dry-run requests (`kubectl apply --dry-run=server`) get the same answer: the webhook has no
//! side effects at all (`sideEffects: None`), it only reads the TaskStream.

use std::collections::BTreeMap;
use std::future::Future;

use http::StatusCode;
use k8s_openapi::api::core::v1::Pod;
use kube::core::admission::{AdmissionRequest, AdmissionResponse, AdmissionReview, Operation};
use kube::{Api, Client};
use tracing::{debug, info, warn};

use super::mutate::{Verdict, mutate};
use crate::crd::{INJECT_LABEL, TaskStream};
use crate::resources::Params;

/// Where the webhook reads TaskStreams: the API server, or a map in tests.
pub trait TaskStreams: Send + Sync {
    /// The TaskStream `namespace/name`, `None` if it does not exist.
    fn get(
        &self,
        namespace: &str,
        name: &str,
    ) -> impl Future<Output = Result<Option<TaskStream>, kube::Error>> + Send;
}

impl TaskStreams for Client {
    async fn get(&self, namespace: &str, name: &str) -> Result<Option<TaskStream>, kube::Error> {
        Api::<TaskStream>::namespaced(self.clone(), namespace)
            .get_opt(name)
            .await
    }
}

impl TaskStreams for BTreeMap<(String, String), TaskStream> {
    async fn get(&self, namespace: &str, name: &str) -> Result<Option<TaskStream>, kube::Error> {
        Ok(self
            .get(&(namespace.to_string(), name.to_string()))
            .cloned())
    }
}

/// An HTTP answer: status and JSON (or, for a 400, plain text) body.
#[derive(Debug)]
pub struct Answer {
    pub status: StatusCode,
    pub body: Vec<u8>,
}

fn bad_request(message: String) -> Answer {
    Answer {
        status: StatusCode::BAD_REQUEST,
        body: message.into_bytes(),
    }
}

/// Answers one AdmissionReview body.
pub async fn review(body: &[u8], taskstreams: &impl TaskStreams, params: &Params) -> Answer {
    let review: AdmissionReview<Pod> = match serde_json::from_slice(body) {
        Ok(r) => r,
        Err(e) => return bad_request(format!("malformed AdmissionReview: {e}\n")),
    };
    let request: AdmissionRequest<Pod> = match review.try_into() {
        Ok(r) => r,
        Err(_) => return bad_request("AdmissionReview without a request\n".into()),
    };
    let response = respond(&request, taskstreams, params).await;
    match serde_json::to_vec(&response.into_review()) {
        Ok(body) => Answer {
            status: StatusCode::OK,
            body,
        },
        Err(e) => Answer {
            status: StatusCode::INTERNAL_SERVER_ERROR,
            body: format!("serialize AdmissionReview: {e}\n").into_bytes(),
        },
    }
}

async fn respond(
    request: &AdmissionRequest<Pod>,
    taskstreams: &impl TaskStreams,
    params: &Params,
) -> AdmissionResponse {
    let allowed = AdmissionResponse::from(request);
    // The webhook configuration sends only pod creations; anything else passes untouched.
    let (Operation::Create, Some(pod)) = (&request.operation, &request.object) else {
        return allowed;
    };
    if request.kind.kind != "Pod" {
        return allowed;
    }
    let Some(name) = pod
        .metadata
        .labels
        .as_ref()
        .and_then(|l| l.get(INJECT_LABEL))
    else {
        return allowed;
    };
    let namespace = request
        .namespace
        .clone()
        .or_else(|| pod.metadata.namespace.clone())
        .unwrap_or_else(|| "default".into());
    let ts = match taskstreams.get(&namespace, name).await {
        Ok(ts) => ts,
        Err(e) => {
            // Transient (or RBAC): refuse, so the ReplicaSet retries, rather than let a
            // labelled pod start without its sidecar.
            warn!(taskstream = %format!("{namespace}/{name}"), error = %e, "reading the TaskStream for a pod");
            return allowed.deny(format!(
                "{INJECT_LABEL}={name}: reading TaskStream {namespace}/{name} failed: {e}; \
                 retry shortly"
            ));
        }
    };
    let pod_name = pod
        .metadata
        .name
        .clone()
        .or_else(|| pod.metadata.generate_name.clone())
        .unwrap_or_default();
    match mutate(pod, &namespace, ts.as_ref(), params) {
        Verdict::Patch(patch) => {
            info!(pod = %pod_name, namespace, taskstream = %name, dry_run = request.dry_run, "injecting the sidecar");
            match allowed.clone().with_patch(patch) {
                Ok(r) => r,
                Err(e) => allowed.deny(format!("serialize the patch: {e}")),
            }
        }
        Verdict::Admit { warnings } => {
            if !warnings.is_empty() {
                info!(pod = %pod_name, namespace, warnings = ?warnings, "admitted without the sidecar");
            } else {
                debug!(pod = %pod_name, namespace, "already injected");
            }
            let mut r = allowed;
            r.warnings = (!warnings.is_empty()).then_some(warnings);
            r
        }
        Verdict::Deny(message) => {
            info!(pod = %pod_name, namespace, reason = %message, "denied");
            allowed.deny(message)
        }
    }
}

#[cfg(test)]
mod tests;
