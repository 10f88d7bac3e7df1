//! The `TaskStream` custom resource (`taskstream.dev/v1alpha1`): the user's contract.
//!
//! Everything here is data: the spec users write, the status the operator reports, and the
//! schema-level validation (ranges, patterns and CEL rules) that makes `kubectl apply` refuse a
//! bad spec before the operator ever sees it. Defaults live in the accessor methods at the
//! bottom, so `resources/` never repeats a default.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{
    Affinity, Container, EnvFromSource, EnvVar, LocalObjectReference, Probe, ResourceRequirements,
    Toleration, TopologySpreadConstraint, Volume, VolumeMount,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;
use kube::{CustomResource, KubeSchema};
use serde::{Deserialize, Serialize};
use taskstream_contract::default as contract;

/// API group of the TaskStream resource.
pub const GROUP: &str = "taskstream.dev";
/// API version of the TaskStream resource.
pub const VERSION: &str = "v1alpha1";

// The sidecar's defaults come from the shared contract, so the operator writes what the
// sidecar would assume.

/// Default WebSocket path served by the sidecar.
pub const DEFAULT_WS_PATH: &str = contract::WS_PATH;
/// Default Redis channel prefix.
pub const DEFAULT_CHANNEL_PREFIX: &str = contract::CHANNEL_PREFIX;
/// Default JWT claim holding the user's groups.
pub const DEFAULT_GROUPS_CLAIM: &str = contract::JWT_GROUPS_CLAIM;
/// Default group template every authenticated user joins.
pub const DEFAULT_USER_GROUP: &str = contract::USER_GROUP;
/// Default forward-auth path on the app.
pub const DEFAULT_AUTH_PATH: &str = contract::AUTH_PATH;
/// Default forward-auth timeout.
pub const DEFAULT_AUTH_TIMEOUT_MS: u32 = contract::AUTH_TIMEOUT_SECONDS * 1000;
/// Default ping interval.
pub const DEFAULT_PING_INTERVAL_SECONDS: u32 = contract::PING_INTERVAL_SECONDS;
/// Default sidecar shutdown grace.
pub const DEFAULT_SHUTDOWN_GRACE_SECONDS: u32 = contract::SHUTDOWN_GRACE_SECONDS;
/// Default sidecar log filter.
pub const DEFAULT_LOG_LEVEL: &str = contract::LOG_LEVEL;
/// Certificate key of a `kubernetes.io/tls` Secret.
pub const TLS_CERT_KEY: &str = "tls.crt";
/// Private key key of a `kubernetes.io/tls` Secret.
pub const TLS_KEY_KEY: &str = "tls.key";
/// Default minimum replicas with `spec.autoscaling`.
pub const DEFAULT_MIN_REPLICAS: i32 = 1;
/// Default CPU utilization target with `spec.autoscaling`, in percent of the CPU requests.
pub const DEFAULT_TARGET_CPU_UTILIZATION: i32 = 80;

/// A web app with real-time task progress: the app container, with the taskstream sidecar in
/// front of it.
#[derive(CustomResource, KubeSchema, Deserialize, Serialize, Clone, Debug, PartialEq)]
#[kube(
    group = "taskstream.dev",
    version = "v1alpha1",
    kind = "TaskStream",
    namespaced,
    status = "TaskStreamStatus",
    shortname = "ts",
    category = "all",
    doc = "A web app with real-time task progress: the app with the taskstream sidecar in front of it",
    // Raw JSON columns: the structured form trips clippy's duplicated_attributes lint.
    printcolumn = r#"{"name":"Ready","type":"string","jsonPath":".status.conditions[?(@.type==\"Ready\")].status"}"#,
    printcolumn = r#"{"name":"Replicas","type":"string","description":"ready/desired replicas","jsonPath":".status.replicaSummary"}"#,
    printcolumn = r#"{"name":"Stale","type":"integer","description":"attach mode: labelled pods with an outdated or no sidecar","jsonPath":".status.attach.stale"}"#,
    printcolumn = r#"{"name":"URL","type":"string","jsonPath":".status.url"}"#,
    printcolumn = r#"{"name":"Age","type":"date","jsonPath":".metadata.creationTimestamp"}"#
)]
#[serde(rename_all = "camelCase")]
#[x_kube(
    validation = Rule::new("!(has(self.gateway) && has(self.ingress))").message("set only one of gateway and ingress"),
    validation = Rule::new("!(has(self.replicas) && has(self.autoscaling))").message("set only one of replicas and autoscaling: the HorizontalPodAutoscaler owns the replica count"),
    validation = Rule::new("has(self.app) != has(self.attach)").message("set exactly one of app (the operator runs the Deployment) and attach (the sidecar is injected into pods of your own workload)"),
    validation = Rule::new("!has(self.attach) || !(has(self.replicas) || has(self.autoscaling) || has(self.pod))").message("replicas, autoscaling and pod are not allowed with attach: the pods belong to your own workload")
)]
pub struct TaskStreamSpec {
    /// The user's app container. The sidecar proxies plain HTTP to it on localhost. Exactly one
    /// of `app` and `attach`.
    pub app: Option<AppSpec>,
    /// Inject the sidecar into the pods of a workload you own (pods labelled
    /// `taskstream.dev/inject: <name>`) instead of running the app. Exactly one of `app` and
    /// `attach`; `replicas`, `autoscaling` and `pod` are not allowed with it.
    pub attach: Option<AttachSpec>,
    /// Number of pods (default 1). A PodDisruptionBudget is created when greater than 1.
    /// Not allowed with `autoscaling`.
    #[schemars(range(min = 0, max = 100))]
    pub replicas: Option<i32>,
    /// Scale the pods on CPU with a HorizontalPodAutoscaler (autoscaling/v2). While it is set,
    /// the operator leaves the Deployment's replica count to the autoscaler (and to
    /// `kubectl scale`). Not allowed with `replicas`.
    pub autoscaling: Option<AutoscalingSpec>,
    /// Where task progress messages come from.
    pub redis: RedisSpec,
    /// WebSocket endpoint settings.
    pub websocket: Option<WebSocketSpec>,
    /// How WebSocket clients are authenticated.
    pub auth: AuthSpec,
    /// The taskstream sidecar container.
    pub sidecar: Option<SidecarSpec>,
    /// Event history kept in Redis, so clients that reconnect get what they missed.
    pub history: Option<HistorySpec>,
    /// Expose the app through an Ingress (networking.k8s.io/v1). Not allowed with `gateway`.
    pub ingress: Option<IngressSpec>,
    /// Expose the app through a Gateway API HTTPRoute (gateway.networking.k8s.io/v1) attached
    /// to existing Gateways. Not allowed with `ingress`.
    pub gateway: Option<GatewaySpec>,
    /// Settings of the pod, passed through to the Deployment's pod template.
    pub pod: Option<PodSettings>,
}

/// The user's app container.
#[derive(KubeSchema, Deserialize, Serialize, Clone, Debug, PartialEq, Default)]
#[serde(rename_all = "camelCase")]
pub struct AppSpec {
    /// Container image of the app.
    #[schemars(length(min = 1))]
    pub image: String,
    /// Port the app listens on (plain HTTP). 8080 and 9090 belong to the sidecar in the same pod.
    #[schemars(range(min = 1, max = 65535))]
    #[x_kube(validation = Rule::new("self != 8080 && self != 9090").message("app.port must not be 8080 or 9090: the sidecar listens there"))]
    pub port: i32,
    /// Entrypoint override.
    pub command: Option<Vec<String>>,
    /// Arguments to the entrypoint.
    pub args: Option<Vec<String>>,
    /// Environment variables of the app container.
    pub env: Option<Vec<EnvVar>>,
    /// Environment variables of the app container, from ConfigMaps or Secrets.
    pub env_from: Option<Vec<EnvFromSource>>,
    /// Compute resources of the app container.
    pub resources: Option<ResourceRequirements>,
    /// Readiness probe of the app container.
    pub readiness_probe: Option<Probe>,
    /// Liveness probe of the app container.
    pub liveness_probe: Option<Probe>,
    /// Volumes (from `pod.volumes`) mounted into the app container.
    pub volume_mounts: Option<Vec<VolumeMount>>,
}

/// WebSocket endpoint settings.
#[derive(KubeSchema, Deserialize, Serialize, Clone, Debug, PartialEq, Default)]
#[serde(rename_all = "camelCase")]
pub struct WebSocketSpec {
    /// Path of the WebSocket endpoint (default `/ws/tasks/`); everything else goes to the app.
    #[schemars(regex(pattern = r"^/"))]
    pub path: Option<String>,
    /// Maximum concurrent WebSocket connections per pod.
    #[schemars(range(min = 1))]
    pub max_connections: Option<u32>,
    /// Maximum size of one client message, in bytes.
    #[schemars(range(min = 1))]
    pub max_message_bytes: Option<u32>,
    /// Interval between server pings, in seconds (default 20).
    #[schemars(range(min = 1, max = 3600))]
    pub ping_interval_seconds: Option<u32>,
    /// Origins allowed to connect (e.g. `https://app.example.com`); unset means same host only.
    pub allowed_origins: Option<Vec<String>>,
}

/// The taskstream sidecar container.
#[derive(KubeSchema, Deserialize, Serialize, Clone, Debug, PartialEq, Default)]
#[serde(rename_all = "camelCase")]
pub struct SidecarSpec {
    /// Sidecar image (default: the operator's `--sidecar-image`).
    pub image: Option<String>,
    /// Compute resources of the sidecar.
    pub resources: Option<ResourceRequirements>,
    /// Run as a Kubernetes native sidecar (an init container with `restartPolicy: Always`,
    /// Kubernetes >= 1.29). Default true; false puts it beside the app in `containers`.
    pub native: Option<bool>,
    /// Time the sidecar gives open connections to close on shutdown, in seconds (default 25).
    /// The pod's termination grace period is this plus 10 s.
    #[schemars(range(min = 1, max = 3600))]
    pub shutdown_grace_seconds: Option<u32>,
    /// `RUST_LOG` filter of the sidecar (default `info`).
    pub log_level: Option<String>,
    /// Log format of the sidecar: `json` (default: one object a line, for log collectors) or
    /// `text`.
    // Omitted rather than `null` when unset: the schema's enum admits only the two values.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub log_format: Option<SidecarLogFormat>,
}

/// Log format of the sidecar.
#[derive(
    Deserialize, Serialize, Clone, Copy, Debug, PartialEq, Eq, Default, schemars::JsonSchema,
)]
#[serde(rename_all = "lowercase")]
pub enum SidecarLogFormat {
    /// Human-readable lines.
    Text,
    /// One JSON object a line.
    #[default]
    Json,
}

impl SidecarLogFormat {
    /// The value of `TASKSTREAM_LOG_FORMAT`.
    pub fn as_str(self) -> &'static str {
        match self {
            SidecarLogFormat::Text => "text",
            SidecarLogFormat::Json => "json",
        }
    }
}

/// Event history, kept per group in Redis by the sidecar.
#[derive(KubeSchema, Deserialize, Serialize, Clone, Debug, PartialEq, Default)]
#[serde(rename_all = "camelCase")]
pub struct HistorySpec {
    /// Events kept per group; 0 turns history off.
    #[schemars(range(min = 0, max = 10000))]
    pub size: u32,
    /// A group's history expires this long after its last event, in seconds (sidecar default:
    /// 600).
    #[schemars(range(min = 1, max = 604800))]
    pub ttl_seconds: Option<u32>,
}

/// Scaling on CPU with a HorizontalPodAutoscaler. The containers need CPU requests
/// (`app.resources`, `sidecar.resources`) for utilization to be measured.
#[derive(KubeSchema, Deserialize, Serialize, Clone, Debug, PartialEq, Default)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("!has(self.minReplicas) || self.minReplicas <= self.maxReplicas").message("autoscaling.minReplicas must not exceed autoscaling.maxReplicas"))]
pub struct AutoscalingSpec {
    /// Fewest pods (default 1). A PodDisruptionBudget is created when greater than 1.
    #[schemars(range(min = 1, max = 100))]
    pub min_replicas: Option<i32>,
    /// Most pods.
    #[schemars(range(min = 1, max = 100))]
    pub max_replicas: i32,
    /// Average CPU utilization to keep, in percent of the pods' CPU requests (default 80).
    // The name `autoscaling/v1` and every chart's HPA values use: camelCase would spell `Cpu`.
    #[serde(rename = "targetCPUUtilizationPercentage")]
    #[schemars(range(min = 1, max = 1000))]
    pub target_cpu_utilization_percentage: Option<i32>,
}

/// A Gateway API HTTPRoute to the app.
#[derive(KubeSchema, Deserialize, Serialize, Clone, Debug, PartialEq, Default)]
#[serde(rename_all = "camelCase")]
pub struct GatewaySpec {
    /// Gateways (or one listener of each, by `sectionName`) the route attaches to.
    #[schemars(length(min = 1, max = 32))]
    pub parent_refs: Vec<GatewayParentRef>,
    /// Host names the route answers for; the first one is the URL in the status. Unset: every
    /// host name of the Gateway's listeners.
    #[schemars(
        length(max = 16),
        inner(
            length(min = 1, max = 253),
            regex(
                pattern = r"^(\*\.)?[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$"
            )
        )
    )]
    pub hostnames: Option<Vec<String>>,
}

/// A Gateway the route attaches to.
#[derive(KubeSchema, Deserialize, Serialize, Clone, Debug, PartialEq, Default)]
#[serde(rename_all = "camelCase")]
pub struct GatewayParentRef {
    /// Name of the Gateway.
    #[schemars(length(min = 1, max = 253))]
    pub name: String,
    /// Namespace of the Gateway (default: the TaskStream's). The Gateway's listener must allow
    /// routes from this namespace.
    pub namespace: Option<String>,
    /// Name of one listener of the Gateway (default: every listener that accepts the route).
    pub section_name: Option<String>,
}

/// Settings of the pod. Where the operator sets the same thing (its labels, its annotations,
/// its `taskstream-*` volumes), the operator's wins.
#[derive(KubeSchema, Deserialize, Serialize, Clone, Debug, PartialEq, Default)]
#[serde(rename_all = "camelCase")]
pub struct PodSettings {
    /// ServiceAccount the pod runs as.
    pub service_account_name: Option<String>,
    /// Secrets with credentials for private image registries.
    pub image_pull_secrets: Option<Vec<LocalObjectReference>>,
    /// Nodes the pod may run on, by label.
    pub node_selector: Option<BTreeMap<String, String>>,
    /// Taints the pod tolerates.
    pub tolerations: Option<Vec<Toleration>>,
    /// Node and pod affinity of the pod.
    pub affinity: Option<Affinity>,
    /// How pods spread across zones or nodes.
    pub topology_spread_constraints: Option<Vec<TopologySpreadConstraint>>,
    /// PriorityClass of the pod.
    pub priority_class_name: Option<String>,
    /// Extra labels of the pod; the operator's `app.kubernetes.io/*` labels win.
    pub labels: Option<BTreeMap<String, String>>,
    /// Extra annotations of the pod; the operator's `taskstream.dev/*` annotations win.
    pub annotations: Option<BTreeMap<String, String>>,
    /// Volumes of the pod, for `app.volumeMounts` and `initContainers`. Names starting with
    /// `taskstream-` are the operator's.
    pub volumes: Option<Vec<Volume>>,
    /// Containers run to completion before the app starts (e.g. database migrations), in
    /// order, before the sidecar.
    pub init_containers: Option<Vec<Container>>,
}

/// Ingress for the app and its WebSocket endpoint.
#[derive(KubeSchema, Deserialize, Serialize, Clone, Debug, PartialEq, Default)]
#[serde(rename_all = "camelCase")]
pub struct IngressSpec {
    /// Host name clients use.
    #[schemars(length(min = 1, max = 253))]
    pub host: String,
    /// IngressClass name.
    pub class_name: Option<String>,
    /// Secret with the TLS certificate for `host`; when set, clients use `wss://`.
    pub tls_secret_name: Option<String>,
    /// Annotations of the Ingress, merged over the operator's WebSocket timeouts.
    pub annotations: Option<BTreeMap<String, String>>,
}

/// What the operator observed, for humans and tools.
#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, Default, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct TaskStreamStatus {
    /// The `metadata.generation` this status describes.
    pub observed_generation: Option<i64>,
    /// Desired pods.
    pub replicas: Option<i32>,
    /// Pods ready.
    pub ready_replicas: Option<i32>,
    /// `ready/desired`, for `kubectl get`.
    pub replica_summary: Option<String>,
    /// The address WebSocket clients use (`ws://` or `wss://`).
    pub url: Option<String>,
    /// Attach mode: the labelled pods, counted by sidecar configuration.
    pub attach: Option<AttachStatus>,
    /// `Ready`, `Progressing` and `Degraded`; `PodsUpToDate` in attach mode.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub conditions: Vec<Condition>,
}

impl TaskStreamSpec {
    /// The port the sidecar proxies to on localhost: `app.port`, or `attach.appPort`.
    pub fn app_port(&self) -> i32 {
        match (&self.app, &self.attach) {
            (Some(app), _) => app.port,
            (None, Some(attach)) => attach.app_port,
            (None, None) => 0,
        }
    }

    /// How stale attached pods are replaced (`Manual` without `attach`).
    pub fn attach_rollout(&self) -> AttachRollout {
        self.attach
            .as_ref()
            .and_then(|a| a.rollout)
            .unwrap_or_default()
    }

    /// Desired replicas without autoscaling.
    pub fn replicas(&self) -> i32 {
        self.replicas.unwrap_or(1)
    }

    /// The fewest pods the spec asks for: `autoscaling.minReplicas`, else `replicas`.
    pub fn min_replicas(&self) -> i32 {
        match &self.autoscaling {
            Some(a) => a.min_replicas.unwrap_or(DEFAULT_MIN_REPLICAS),
            None => self.replicas(),
        }
    }

    /// The WebSocket path.
    pub fn ws_path(&self) -> &str {
        self.websocket
            .as_ref()
            .and_then(|w| w.path.as_deref())
            .unwrap_or(DEFAULT_WS_PATH)
    }

    /// Whether the sidecar runs as a native sidecar.
    pub fn native_sidecar(&self) -> bool {
        self.sidecar.as_ref().and_then(|s| s.native).unwrap_or(true)
    }

    /// Sidecar shutdown grace in seconds.
    pub fn shutdown_grace_seconds(&self) -> u32 {
        self.sidecar
            .as_ref()
            .and_then(|s| s.shutdown_grace_seconds)
            .unwrap_or(DEFAULT_SHUTDOWN_GRACE_SECONDS)
    }

    /// Every Secret key the pods need: the operator checks they exist before rolling pods, and
    /// a change of any of their values rolls the pods.
    pub fn secret_refs(&self) -> Vec<SecretKeyRef> {
        let mut refs = Vec::new();
        refs.extend(self.redis.url_secret_ref.clone());
        if let Some(tls) = &self.redis.tls {
            refs.extend(tls.ca_secret_ref.clone());
            if let Some(client) = &tls.client_cert_secret_ref {
                for key in [TLS_CERT_KEY, TLS_KEY_KEY] {
                    refs.push(SecretKeyRef {
                        name: client.name.clone(),
                        key: key.into(),
                    });
                }
            }
        }
        if let Some(sentinel) = &self.redis.sentinel {
            refs.extend(sentinel.password_secret_ref.clone());
        }
        if self.auth.mode == AuthMode::Jwt
            && let Some(jwt) = &self.auth.jwt
        {
            refs.extend(jwt.secret_ref.clone());
            refs.extend(jwt.public_key_ref.clone());
            refs.extend(jwt.jwks_ca_secret_ref.clone());
        }
        refs
    }
}

mod attach;
mod auth;
mod redis;
mod schema;
pub use attach::{AttachRollout, AttachSpec, AttachStatus, INJECT_LABEL};
pub use auth::{AuthMode, AuthSpec, ForwardSpec, JwtSpec};
pub use redis::{RedisSentinelSpec, RedisSpec, RedisTlsSpec, SecretKeyRef, SecretNameRef};
pub use schema::{crd, crd_yaml};

#[cfg(test)]
mod tests;
