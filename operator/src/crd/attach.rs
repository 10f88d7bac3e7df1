//! Attach mode (`spec.attach`): the sidecar is injected by the operator's mutating webhook into
//! the pods of a workload the team already owns, instead of the operator running the Deployment.
//!
//! ```text
//! team's Deployment (label taskstream.dev/inject=<name>) ─> ReplicaSet ─> Pod CREATE
//!        ─> webhook /mutate-pods (+ sidecar, same builder as spec.app) ─> Pod with sidecar
//! controller: Service (selector: the label) + route for the WebSocket path ; status.attach
//! ```

use serde::{Deserialize, Serialize};

/// Label a team puts on its pod template: the name of the TaskStream (same namespace) whose
/// sidecar the webhook injects.
pub const INJECT_LABEL: &str = "taskstream.dev/inject";

/// Attach to pods of a workload the team owns (its own chart, Kustomize, Argo CD): pods labelled
/// `taskstream.dev/inject: <this TaskStream's name>` get the sidecar when they are created.
#[derive(kube::KubeSchema, Deserialize, Serialize, Clone, Debug, PartialEq, Default)]
#[serde(rename_all = "camelCase")]
pub struct AttachSpec {
    /// Port the app listens on inside its pod (plain HTTP): the sidecar proxies to
    /// `127.0.0.1:<appPort>` and asks it for forward auth. 8080 and 9090 belong to the sidecar.
    #[schemars(range(min = 1, max = 65535))]
    #[x_kube(validation = Rule::new("self != 8080 && self != 9090").message("attach.appPort must not be 8080 or 9090: the sidecar listens there"))]
    pub app_port: i32,
    /// What happens to running pods when the sidecar configuration changes: `Manual` (default:
    /// the pods are reported stale in `status.attach` and the `PodsUpToDate` condition, the
    /// team restarts them) or `Auto` (the operator restarts their Deployment or StatefulSet like
    /// `kubectl rollout restart`, once per configuration change).
    // Omitted rather than `null` when unset: the schema's enum admits only the two values.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rollout: Option<AttachRollout>,
}

/// How stale attached pods are replaced.
#[derive(
    Deserialize, Serialize, Clone, Copy, Debug, PartialEq, Eq, Default, schemars::JsonSchema,
)]
pub enum AttachRollout {
    /// Never write to the team's workloads: report stale pods only.
    #[default]
    Manual,
    /// Restart the owning Deployment or StatefulSet of stale pods.
    Auto,
}

/// The labelled pods of an attached TaskStream, as last counted.
#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, Eq, Default, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct AttachStatus {
    /// Pods labelled `taskstream.dev/inject: <name>` (not terminating).
    pub pods: i32,
    /// Of those, pods whose sidecar has the current configuration.
    pub up_to_date: i32,
    /// Of those, pods with an older sidecar configuration or no sidecar at all (created before
    /// the label, or while the webhook was unavailable with `failurePolicy: Ignore`).
    pub stale: i32,
}
