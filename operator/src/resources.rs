//! Pure builders: a `TaskStream` in, the child objects the operator applies out.
//!
//! ```text
//!                 ┌─> deployment.rs ──> Deployment (app + sidecar.rs container + pod settings,
//!                 │                      config hash, Secret values hash)
//! TaskStream ─────┼─> service.rs ─────> Service (http -> sidecar), PodDisruptionBudget (min > 1)
//!  + Params       ├─> autoscaling.rs ─> HorizontalPodAutoscaler (spec.autoscaling)
//!  + Secret hash  ├─> ingress.rs ─────> Ingress (WebSocket timeouts), status URL
//!                 ├─> route.rs ───────> HTTPRoute (spec.gateway), its acceptance, its URL
//!                 └─> attach.rs ──────> spec.attach: Service on the inject label, WebSocket-path
//!                                       route; the sidecar + config hash the webhook injects
//! ```
//!
//! No API calls here: `controller` applies what these return, `render` prints it. Both see the
//! same objects, which is what makes `render` honest.

pub mod attach;
mod autoscaling;
mod deployment;
mod ingress;
pub mod route;
mod service;
mod sidecar;

#[cfg(test)]
mod contract_tests;
#[cfg(test)]
mod production_tests;
#[cfg(test)]
mod sidecar_tests;
#[cfg(test)]
mod test_support;
#[cfg(test)]
mod tests;
#[cfg(test)]
mod upgrade_tests;

use std::collections::BTreeMap;

use gateway_api::httproutes::HttpRoute;
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::autoscaling::v2::HorizontalPodAutoscaler;
use k8s_openapi::api::core::v1::Service;
use k8s_openapi::api::networking::v1::Ingress;
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, OwnerReference};
use kube::{Resource, ResourceExt};

use crate::crd::{AuthMode, TaskStream};
use crate::error::{Error, Result};

pub use autoscaling::hpa;
pub use deployment::{
    APP_CONTAINER, CONFIG_HASH_ANNOTATION, SECRET_HASH_ANNOTATION, config_hash, deployment,
    secret_hash,
};
pub use ingress::{ingress, status_url};
pub use route::httproute;
pub use service::{SERVICE_PORT, pdb, service};
pub use sidecar::{ADMIN_PORT, HTTP_PORT, SIDECAR_CONTAINER, VOLUME_PREFIX};
pub(crate) use sidecar::{container as sidecar_container, secret_mounts};

/// The one field manager of every server-side apply the operator makes.
pub const FIELD_MANAGER: &str = "taskstream-operator";
/// `app.kubernetes.io/managed-by` value on every child; also the owned-object watch selector.
pub const MANAGED_BY: &str = "taskstream-operator";

/// Operator-wide inputs of the builders (from flags, not from the TaskStream).
#[derive(Clone, Debug)]
pub struct Params {
    /// Sidecar image used when `spec.sidecar.image` is unset.
    pub sidecar_image: String,
}

/// Everything one TaskStream turns into. `None` means "must not exist".
#[derive(Clone, Debug)]
pub struct Children {
    pub deployment: Deployment,
    pub service: Service,
    pub pdb: Option<PodDisruptionBudget>,
    pub hpa: Option<HorizontalPodAutoscaler>,
    pub ingress: Option<Ingress>,
    pub route: Option<HttpRoute>,
}

/// Builds every child of `ts`, after the checks the schema cannot make (or that `render`, which
/// has no API server, needs made here). `secret_hash`: see [`deployment`].
pub fn build(ts: &TaskStream, params: &Params, secret_hash: Option<&str>) -> Result<Children> {
    validate(ts)?;
    Ok(Children {
        deployment: deployment(ts, params, secret_hash)?,
        service: service(ts)?,
        pdb: pdb(ts)?,
        hpa: hpa(ts)?,
        ingress: ingress(ts)?,
        route: httproute(ts)?,
    })
}

/// Mirrors the CRD's CEL rules: a spec reaching us through `render` never met the API server.
pub fn validate(ts: &TaskStream) -> Result<()> {
    let invalid = |reason: &str| Error::InvalidSpec {
        name: ts.name_any(),
        reason: reason.to_string(),
    };
    let spec = &ts.spec;
    if spec.redis.url.is_some() == spec.redis.url_secret_ref.is_some() {
        return Err(invalid(
            "exactly one of redis.url and redis.urlSecretRef must be set",
        ));
    }
    match (&spec.app, &spec.attach) {
        (Some(_), None) => {}
        (None, Some(_)) => {
            if spec.replicas.is_some() || spec.autoscaling.is_some() || spec.pod.is_some() {
                return Err(invalid(
                    "replicas, autoscaling and pod are not allowed with attach: the pods belong to your own workload",
                ));
            }
        }
        _ => return Err(invalid("set exactly one of app and attach")),
    }
    let port = spec.app_port();
    if !(1..=65535).contains(&port) || [HTTP_PORT, ADMIN_PORT].contains(&port) {
        return Err(invalid(
            "app.port (attach.appPort) must be 1-65535 and not 8080 or 9090",
        ));
    }
    if !spec.ws_path().starts_with('/') {
        return Err(invalid("websocket.path must start with /"));
    }
    if spec.replicas() < 0 {
        return Err(invalid("replicas must not be negative"));
    }
    match spec.auth.mode {
        AuthMode::Jwt => {
            let jwt = spec.auth.jwt.as_ref();
            let keys = jwt.map_or(0, |j| {
                usize::from(j.secret_ref.is_some())
                    + usize::from(j.public_key_ref.is_some())
                    + usize::from(j.jwks_url.is_some())
            });
            if keys != 1 {
                return Err(invalid(
                    "auth.mode jwt needs exactly one of auth.jwt.secretRef, auth.jwt.publicKeyRef and auth.jwt.jwksUrl",
                ));
            }
            if let Some(j) = jwt {
                if j.jwks_url
                    .as_deref()
                    .is_some_and(|u| !u.starts_with("https://"))
                {
                    return Err(invalid("auth.jwt.jwksUrl must be an https:// URL"));
                }
                if j.jwks_ca_secret_ref.is_some() && j.jwks_url.is_none() {
                    return Err(invalid(
                        "auth.jwt.jwksCaSecretRef is only used with auth.jwt.jwksUrl",
                    ));
                }
            }
        }
        AuthMode::Forward => {
            if let Some(path) = spec.auth.forward.as_ref().and_then(|f| f.path.as_deref())
                && !path.starts_with('/')
            {
                return Err(invalid("auth.forward.path must start with /"));
            }
        }
        AuthMode::None => {}
    }
    if let Some(ing) = &spec.ingress
        && ing.host.is_empty()
    {
        return Err(invalid("ingress.host must not be empty"));
    }
    if spec.ingress.is_some() && spec.gateway.is_some() {
        return Err(invalid("set only one of gateway and ingress"));
    }
    if let Some(gw) = &spec.gateway
        && gw.parent_refs.is_empty()
    {
        return Err(invalid("gateway.parentRefs must name at least one Gateway"));
    }
    if let Some(a) = &spec.autoscaling {
        if spec.replicas.is_some() {
            return Err(invalid("set only one of replicas and autoscaling"));
        }
        if !(1..=a.max_replicas).contains(&spec.min_replicas()) {
            return Err(invalid(
                "autoscaling.minReplicas must be at least 1 and not exceed autoscaling.maxReplicas",
            ));
        }
    }
    if spec.redis.sentinel.is_some() && spec.redis.cluster == Some(true) {
        return Err(invalid("set only one of redis.sentinel and redis.cluster"));
    }
    if let Some(h) = &spec.history
        && (h.size > 10_000 || h.ttl_seconds.is_some_and(|t| !(1..=604_800).contains(&t)))
    {
        return Err(invalid(
            "history.size must be 0-10000 and history.ttlSeconds 1-604800",
        ));
    }
    if let Some(pod) = &spec.pod {
        if let Some(v) = pod
            .volumes
            .iter()
            .flatten()
            .find(|v| v.name.starts_with(VOLUME_PREFIX))
        {
            return Err(invalid(&format!(
                "pod.volumes: {}: names starting with {VOLUME_PREFIX} are the operator's",
                v.name
            )));
        }
        if let Some(c) = pod
            .init_containers
            .iter()
            .flatten()
            .find(|c| c.name == APP_CONTAINER || c.name == SIDECAR_CONTAINER)
        {
            return Err(invalid(&format!(
                "pod.initContainers: {}: the name is taken by the operator's containers",
                c.name
            )));
        }
    }
    Ok(())
}

/// The path the Ingress or HTTPRoute sends to the Service: everything (`/`) when the operator
/// runs the app; only the WebSocket path in attach mode, where the team's own routes keep
/// serving the rest of the host (the longest matching prefix wins).
pub fn route_path(ts: &TaskStream) -> String {
    if ts.spec.attach.is_some() {
        ts.spec.ws_path().to_string()
    } else {
        "/".to_string()
    }
}

/// Labels that select the TaskStream's pods.
pub fn selector_labels(ts: &TaskStream) -> BTreeMap<String, String> {
    BTreeMap::from([
        (
            "app.kubernetes.io/name".to_string(),
            "taskstream".to_string(),
        ),
        ("app.kubernetes.io/instance".to_string(), ts.name_any()),
    ])
}

/// Labels on every child object.
pub fn labels(ts: &TaskStream) -> BTreeMap<String, String> {
    let mut labels = selector_labels(ts);
    labels.insert("app.kubernetes.io/managed-by".into(), MANAGED_BY.into());
    labels
}

/// Metadata of a child named after the TaskStream, owned by it.
///
/// The owner reference needs the TaskStream's uid; `render` works on a manifest that has none,
/// so there the reference is left out (and the operator adds it when it applies).
pub fn child_meta(ts: &TaskStream) -> Result<ObjectMeta> {
    let name = ts.metadata.name.clone().ok_or(Error::MissingField {
        kind: "TaskStream",
        field: "metadata.name",
    })?;
    let namespace = ts.metadata.namespace.clone().ok_or(Error::MissingField {
        kind: "TaskStream",
        field: "metadata.namespace",
    })?;
    Ok(ObjectMeta {
        name: Some(name),
        namespace: Some(namespace),
        labels: Some(labels(ts)),
        owner_references: owner_ref(ts).map(|o| vec![o]),
        ..Default::default()
    })
}

/// The controller owner reference to `ts`, if it has a uid.
pub fn owner_ref(ts: &TaskStream) -> Option<OwnerReference> {
    ts.controller_owner_ref(&())
}
