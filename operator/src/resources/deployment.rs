//! The Deployment: the user's app container plus the sidecar, native (init container with
//! `restartPolicy: Always`) or classic (beside the app), the user's pod settings, and two
//! pod-template annotations that roll the pods: a hash of the sidecar's configuration, and a
//! hash of the referenced Secret values (so a rotated password or key reaches the pods; the
//! values themselves never appear).

use k8s_openapi::api::apps::v1::{Deployment, DeploymentSpec};
use k8s_openapi::api::core::v1::{Container, ContainerPort, PodSpec, PodTemplateSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, ObjectMeta};
use sha2::{Digest, Sha256};

use super::{Params, child_meta, labels, selector_labels, sidecar};
use crate::crd::{AppSpec, TaskStream, TaskStreamSpec};
use crate::error::{Error, Result};

/// Pod template annotation carrying the hash of the sidecar configuration.
pub const CONFIG_HASH_ANNOTATION: &str = "taskstream.dev/config-hash";
/// Pod template annotation carrying the hash of the referenced Secret values.
pub const SECRET_HASH_ANNOTATION: &str = "taskstream.dev/secret-hash";
/// Name of the app container.
pub const APP_CONTAINER: &str = "app";
/// Time the pod gets beyond the sidecar's own drain, for the app and the kubelet.
const EXTRA_GRACE_SECONDS: i64 = 10;

/// The user's app container.
pub fn app_container(app: &AppSpec) -> Container {
    Container {
        name: APP_CONTAINER.into(),
        image: Some(app.image.clone()),
        command: app.command.clone(),
        args: app.args.clone(),
        env: app.env.clone(),
        env_from: app.env_from.clone(),
        resources: app.resources.clone(),
        readiness_probe: app.readiness_probe.clone(),
        liveness_probe: app.liveness_probe.clone(),
        volume_mounts: app.volume_mounts.clone(),
        ports: Some(vec![ContainerPort {
            name: Some("app".into()),
            container_port: app.port,
            protocol: Some("TCP".into()),
            ..Default::default()
        }]),
        ..Default::default()
    }
}

/// The pod's termination grace period: the sidecar's drain plus time for the app and kubelet.
pub fn min_grace_seconds(spec: &TaskStreamSpec) -> i64 {
    i64::from(spec.shutdown_grace_seconds()) + EXTRA_GRACE_SECONDS
}

/// Hash of everything that configures the sidecar: changes here must restart the pods, since
/// the sidecar reads its configuration once, at start. Its value for an unchanged spec must not
/// change across operator releases (`upgrade_tests` pins it), or upgrades roll every pod.
pub fn config_hash(
    sidecar: &Container,
    volumes: &[k8s_openapi::api::core::v1::Volume],
) -> Result<String> {
    let bytes = serde_json::to_vec(&(sidecar, volumes)).map_err(|source| Error::Serialize {
        what: "sidecar configuration",
        source,
    })?;
    let digest = Sha256::digest(&bytes);
    Ok(digest.iter().take(8).map(|b| format!("{b:02x}")).collect())
}

/// The Deployment running the app with the sidecar in front of it. `secret_hash` is the hash
/// of the referenced Secret values (`None` where they cannot be read, as in `render`). With
/// `spec.autoscaling` the replica count is left out: the autoscaler owns it.
pub fn deployment(
    ts: &TaskStream,
    params: &Params,
    secret_hash: Option<&str>,
) -> Result<Deployment> {
    let spec = &ts.spec;
    let app = spec.app.as_ref().ok_or_else(|| Error::InvalidSpec {
        name: kube::ResourceExt::name_any(ts),
        reason: "spec.app is required to run a Deployment (attach mode has none)".into(),
    })?;
    let pod = spec.pod.clone().unwrap_or_default();
    let sidecar = sidecar::container(spec, params);
    let own_volumes: Vec<_> = sidecar::secret_mounts(spec)
        .into_iter()
        .map(|m| m.volume)
        .collect();
    let hash = config_hash(&sidecar, &own_volumes)?;
    let app = app_container(app);
    let mut init_containers = pod.init_containers.unwrap_or_default();
    let containers = if spec.native_sidecar() {
        // After the user's init containers (migrations run before anything serves).
        init_containers.push(sidecar);
        vec![app]
    } else {
        vec![app, sidecar]
    };
    let mut volumes = pod.volumes.unwrap_or_default();
    volumes.extend(own_volumes);

    // The user's labels and annotations first, so the operator's win where they collide.
    let mut template_labels = pod.labels.unwrap_or_default();
    let mut own_labels = labels(ts);
    own_labels.remove("app.kubernetes.io/managed-by");
    template_labels.extend(own_labels);
    let mut annotations = pod.annotations.unwrap_or_default();
    annotations.insert(CONFIG_HASH_ANNOTATION.to_string(), hash);
    if let Some(secret_hash) = secret_hash {
        annotations.insert(SECRET_HASH_ANNOTATION.to_string(), secret_hash.to_string());
    }
    Ok(Deployment {
        metadata: child_meta(ts)?,
        spec: Some(DeploymentSpec {
            replicas: spec.autoscaling.is_none().then(|| spec.replicas()),
            selector: LabelSelector {
                match_labels: Some(selector_labels(ts)),
                match_expressions: None,
            },
            template: PodTemplateSpec {
                metadata: Some(ObjectMeta {
                    labels: Some(template_labels),
                    annotations: Some(annotations),
                    ..Default::default()
                }),
                spec: Some(PodSpec {
                    init_containers: (!init_containers.is_empty()).then_some(init_containers),
                    containers,
                    volumes: (!volumes.is_empty()).then_some(volumes),
                    termination_grace_period_seconds: Some(min_grace_seconds(spec)),
                    service_account_name: pod.service_account_name,
                    image_pull_secrets: pod.image_pull_secrets,
                    node_selector: pod.node_selector,
                    tolerations: pod.tolerations,
                    affinity: pod.affinity,
                    topology_spread_constraints: pod.topology_spread_constraints,
                    priority_class_name: pod.priority_class_name,
                    ..Default::default()
                }),
            },
            ..Default::default()
        }),
        status: None,
    })
}

/// Hash of the referenced Secret values, keyed by Secret name and key, in a stable order. Only
/// this digest (truncated SHA-256) leaves the operator; the values are never logged or stored.
pub fn secret_hash<'a>(values: impl IntoIterator<Item = (&'a str, &'a str, &'a [u8])>) -> String {
    let mut sorted: Vec<_> = values.into_iter().collect();
    sorted.sort();
    let mut digest = Sha256::new();
    for (secret, key, value) in sorted {
        // Length-prefixed, so no two different inputs share a byte stream.
        for part in [secret.as_bytes(), key.as_bytes(), value] {
            digest.update((part.len() as u64).to_be_bytes());
            digest.update(part);
        }
    }
    digest
        .finalize()
        .iter()
        .take(8)
        .map(|b| format!("{b:02x}"))
        .collect()
}
