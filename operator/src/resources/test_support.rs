//! Helpers of the builder tests: build a TaskStream's children and look into them.

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{Container, EnvVar, PodSpec};

use super::{Children, SIDECAR_CONTAINER, build};
use crate::crd::TaskStream;
use crate::fixtures::params;

pub fn built(ts: &TaskStream) -> Children {
    build(ts, &params(), None).expect("builds")
}

pub fn pod(d: &Deployment) -> &PodSpec {
    d.spec
        .as_ref()
        .and_then(|s| s.template.spec.as_ref())
        .expect("pod spec")
}

pub fn sidecar_of(d: &Deployment) -> &Container {
    let pod = pod(d);
    pod.init_containers
        .iter()
        .flatten()
        .chain(pod.containers.iter())
        .find(|c| c.name == SIDECAR_CONTAINER)
        .expect("sidecar container")
}

pub fn env_of<'a>(d: &'a Deployment, name: &str) -> Option<&'a EnvVar> {
    sidecar_of(d).env.iter().flatten().find(|e| e.name == name)
}

pub fn env_value(d: &Deployment, name: &str) -> Option<String> {
    env_of(d, name).and_then(|e| e.value.clone())
}
