//! Status of an attached TaskStream: the labelled pods counted by sidecar configuration, the
//! `PodsUpToDate` condition, and the workloads to restart.
//!
//! ```text
//! pods labelled taskstream.dev/inject=<name> ─> census(current hash) ─┬─> status.attach {pods, upToDate, stale}
//!                                                                     ├─> PodsUpToDate (Stale: owners named)
//!                                                                     └─> stale owners ─> rollout: Auto
//! ```

use std::collections::BTreeSet;
use std::fmt;

use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::jiff::Timestamp;
use kube::ResourceExt;

use super::{Problem, Rollout, Route, compute as compute_owned, condition};
use crate::crd::{AttachStatus, TaskStream, TaskStreamStatus};
use crate::resources::{CONFIG_HASH_ANNOTATION, SIDECAR_CONTAINER};

/// Label the ReplicaSet controller puts on its pods; the ReplicaSet is `<deployment>-<hash>`.
const POD_TEMPLATE_HASH: &str = "pod-template-hash";

/// A workload that owns labelled pods.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct Owner {
    /// `Deployment`, `StatefulSet`, or the pod's direct owner kind (`DaemonSet`, `Job`, ...).
    pub kind: String,
    pub name: String,
}

impl Owner {
    /// Whether `rollout: Auto` may restart it (what `kubectl rollout restart` supports and the
    /// issue asks for: Deployments and StatefulSets).
    pub fn restartable(&self) -> bool {
        matches!(self.kind.as_str(), "Deployment" | "StatefulSet")
    }
}

impl fmt::Display for Owner {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.kind.to_lowercase(), self.name)
    }
}

/// The labelled pods, counted.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Census {
    pub pods: i32,
    pub up_to_date: i32,
    pub stale: i32,
    /// Up-to-date pods that are Ready: they serve the WebSocket path through the Service.
    pub ready: i32,
    /// Owners of the stale pods (a bare pod is its own owner, kind `Pod`).
    pub stale_owners: BTreeSet<Owner>,
}

/// The owner to restart for `pod`: a ReplicaSet's Deployment (from the `pod-template-hash`
/// label, so no ReplicaSet read is needed), else the direct controller owner, else the pod.
pub fn owner_of(pod: &Pod) -> Owner {
    let controller = pod
        .owner_references()
        .iter()
        .find(|o| o.controller == Some(true));
    match controller {
        Some(o) if o.kind == "ReplicaSet" => {
            let deployment = pod
                .labels()
                .get(POD_TEMPLATE_HASH)
                .and_then(|hash| o.name.strip_suffix(&format!("-{hash}")));
            match deployment {
                Some(name) => Owner {
                    kind: "Deployment".into(),
                    name: name.into(),
                },
                None => Owner {
                    kind: "ReplicaSet".into(),
                    name: o.name.clone(),
                },
            }
        }
        Some(o) => Owner {
            kind: o.kind.clone(),
            name: o.name.clone(),
        },
        None => Owner {
            kind: "Pod".into(),
            name: pod.name_any(),
        },
    }
}

/// Whether `pod` runs the sidecar with the configuration hashed `current`. A pod without the
/// sidecar (created before the label, or admitted while the webhook was down with
/// `failurePolicy: Ignore`) is stale too.
pub fn up_to_date(pod: &Pod, current: &str) -> bool {
    let has_sidecar = pod.spec.as_ref().is_some_and(|s| {
        s.init_containers
            .iter()
            .flatten()
            .chain(s.containers.iter())
            .any(|c| c.name == SIDECAR_CONTAINER)
    });
    has_sidecar
        && pod
            .annotations()
            .get(CONFIG_HASH_ANNOTATION)
            .map(String::as_str)
            == Some(current)
}

fn is_ready(pod: &Pod) -> bool {
    pod.status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .is_some_and(|cs| cs.iter().any(|c| c.type_ == "Ready" && c.status == "True"))
}

/// Counts the live (not terminating, not finished) labelled pods against the current hash.
pub fn census<'a>(pods: impl IntoIterator<Item = &'a Pod>, current: &str) -> Census {
    let mut census = Census::default();
    for pod in pods {
        let phase = pod.status.as_ref().and_then(|s| s.phase.as_deref());
        if pod.metadata.deletion_timestamp.is_some()
            || matches!(phase, Some("Succeeded" | "Failed"))
        {
            continue;
        }
        census.pods += 1;
        if up_to_date(pod, current) {
            census.up_to_date += 1;
            census.ready += i32::from(is_ready(pod));
        } else {
            census.stale += 1;
            census.stale_owners.insert(owner_of(pod));
        }
    }
    census
}

/// The status of an attached TaskStream. `census` is `None` when the pods could not be counted
/// (a problem stopped the reconcile first): the counts keep their last known values.
pub fn compute(
    ts: &TaskStream,
    census: Option<&Census>,
    problem: Option<&Problem>,
    route: Option<&Route>,
    now: Timestamp,
) -> TaskStreamStatus {
    let old = ts.status.clone().unwrap_or_default();
    let generation = ts.metadata.generation;
    let counts = match census {
        Some(c) => AttachStatus {
            pods: c.pods,
            up_to_date: c.up_to_date,
            stale: c.stale,
        },
        None => old.attach.clone().unwrap_or_default(),
    };
    let ready = census.map_or(0, |c| c.ready);
    // The owned-mode computation gives Degraded, RouteAccepted and the URL; Ready, Progressing
    // and the counts are attach mode's own.
    let rollout = Rollout {
        desired: counts.pods,
        ready,
        in_progress: false,
        stalled: None,
    };
    let mut status = compute_owned(ts, census.map(|_| &rollout), problem, route, now);
    let cond = |type_: &str, status: &str, reason: &str, message: String| {
        condition(&old, generation, now, type_, status, reason.into(), message)
    };
    let name = ts.name_any();
    let shown = status
        .conditions
        .iter()
        .find(|c| c.type_ == "Degraded" && c.status == "True")
        .map(|c| (c.reason.clone(), c.message.clone()));
    let ready_condition = match shown {
        Some((reason, message)) => cond("Ready", "False", &reason, message),
        None if ready > 0 => cond(
            "Ready",
            "True",
            "PodsReady",
            format!("{ready} labelled pod(s) with the current sidecar are ready"),
        ),
        None => cond(
            "Ready",
            "False",
            "NoReadyPods",
            format!(
                "no ready pod with the sidecar: label your pod template with \
                 taskstream.dev/inject: {name}"
            ),
        ),
    };
    let progressing = cond(
        "Progressing",
        "False",
        "Attached",
        "the pods belong to your own workload".into(),
    );
    let up_to_date = match census {
        Some(c) if c.stale > 0 => {
            let owners: Vec<String> = c.stale_owners.iter().map(ToString::to_string).collect();
            let namespace = ts.namespace().unwrap_or_default();
            let restart: Vec<String> = c
                .stale_owners
                .iter()
                .filter(|o| o.restartable())
                .map(|o| format!("kubectl rollout restart {o} -n {namespace}"))
                .collect();
            let hint = if restart.is_empty() {
                "recreate them".to_string()
            } else {
                restart.join("; ")
            };
            cond(
                "PodsUpToDate",
                "False",
                "Stale",
                format!(
                    "{} of {} labelled pods run an outdated sidecar or none (owned by {}): {hint}",
                    c.stale,
                    c.pods,
                    owners.join(", ")
                ),
            )
        }
        Some(c) => cond(
            "PodsUpToDate",
            "True",
            "UpToDate",
            format!("{} labelled pod(s) run the current sidecar", c.pods),
        ),
        None => old
            .conditions
            .iter()
            .find(|c| c.type_ == "PodsUpToDate")
            .cloned()
            .unwrap_or_else(|| {
                cond(
                    "PodsUpToDate",
                    "Unknown",
                    "NotCounted",
                    "the labelled pods are not counted yet".into(),
                )
            }),
    };
    for c in status.conditions.iter_mut() {
        match c.type_.as_str() {
            "Ready" => *c = ready_condition.clone(),
            "Progressing" => *c = progressing.clone(),
            _ => {}
        }
    }
    status.conditions.push(up_to_date);
    status.replicas = Some(counts.pods);
    status.ready_replicas = Some(ready);
    status.replica_summary = Some(format!("{ready}/{}", counts.pods));
    status.attach = Some(counts);
    status
}

#[cfg(test)]
mod tests;
