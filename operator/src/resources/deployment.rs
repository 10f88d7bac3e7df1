//! The Deployment: the user's app container plus the sidecar, native (init container with
//! `restartPolicy: Always`) or classic (beside the app), and a config hash that rolls the pods
//! when the sidecar's configuration changes.

use std::collections::BTreeMap;

use k8s_openapi::api::apps::v1::{Deployment, DeploymentSpec};
use k8s_openapi::api::core::v1::{Container, ContainerPort, PodSpec, PodTemplateSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, ObjectMeta};
use sha2::{Digest, Sha256};

use super::{Params, child_meta, labels, selector_labels, sidecar};
use crate::crd::{TaskStream, TaskStreamSpec};
use crate::error::{Error, Result};

/// Pod template annotation carrying the hash of the sidecar configuration.
pub const CONFIG_HASH_ANNOTATION: &str = "taskstream.dev/config-hash";
/// Name of the app container.
pub const APP_CONTAINER: &str = "app";
/// Time the pod gets beyond the sidecar's own drain, for the app and the kubelet.
const EXTRA_GRACE_SECONDS: i64 = 10;

/// The user's app container.
pub fn app_container(spec: &TaskStreamSpec) -> Container {
    let app = &spec.app;
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
        ports: Some(vec![ContainerPort {
            name: Some("app".into()),
            container_port: app.port,
            protocol: Some("TCP".into()),
            ..Default::default()
        }]),
        ..Default::default()
    }
}

/// Hash of everything that configures the sidecar: changes here must restart the pods, since
/// the sidecar reads its configuration once, at start.
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

/// The Deployment running the app with the sidecar in front of it.
pub fn deployment(ts: &TaskStream, params: &Params) -> Result<Deployment> {
    let spec = &ts.spec;
    let sidecar = sidecar::container(spec, params);
    let volumes: Vec<_> = sidecar::jwt_key_volume(spec).into_iter().collect();
    let hash = config_hash(&sidecar, &volumes)?;
    let app = app_container(spec);
    let (init_containers, containers) = if spec.native_sidecar() {
        (Some(vec![sidecar]), vec![app])
    } else {
        (None, vec![app, sidecar])
    };
    let mut template_labels = labels(ts);
    template_labels.remove("app.kubernetes.io/managed-by");
    Ok(Deployment {
        metadata: child_meta(ts)?,
        spec: Some(DeploymentSpec {
            replicas: Some(spec.replicas()),
            selector: LabelSelector {
                match_labels: Some(selector_labels(ts)),
                match_expressions: None,
            },
            template: PodTemplateSpec {
                metadata: Some(ObjectMeta {
                    labels: Some(template_labels),
                    annotations: Some(BTreeMap::from([(CONFIG_HASH_ANNOTATION.to_string(), hash)])),
                    ..Default::default()
                }),
                spec: Some(PodSpec {
                    init_containers,
                    containers,
                    volumes: (!volumes.is_empty()).then_some(volumes),
                    termination_grace_period_seconds: Some(
                        i64::from(spec.shutdown_grace_seconds()) + EXTRA_GRACE_SECONDS,
                    ),
                    ..Default::default()
                }),
            },
            ..Default::default()
        }),
        status: None,
    })
}
