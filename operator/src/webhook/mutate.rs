//! The mutation: a labelled pod and its TaskStream in, a JSON patch (or a reason to leave the
//! pod alone, or to refuse it) out. Pure, so every case is a unit test.
//!
//! ```text
//! Pod (label taskstream.dev/inject=<name>) ─┐
//! TaskStream <name> (or none) ──────────────┼─> mutate() ─┬─> Patch: + sidecar, + Secret volumes,
//! Params (default sidecar image) ───────────┘             │          + config-hash, grace period
//!                                                         ├─> Admit unchanged (+ warnings)
//!                                                         └─> Deny (a conflict the team must fix)
//! ```
//!
//! Idempotent: a pod that already carries the injected sidecar is returned unchanged, so the
//! API server's reinvocation (`reinvocationPolicy: IfNeeded`) never adds anything twice.

use k8s_openapi::api::core::v1::Pod;
use kube::ResourceExt;

use crate::crd::{INJECT_LABEL, TaskStream};
use crate::resources::attach::injection;
use crate::resources::{
    ADMIN_PORT, CONFIG_HASH_ANNOTATION, HTTP_PORT, Params, SIDECAR_CONTAINER, VOLUME_PREFIX,
    validate,
};

/// What the webhook answers for one pod.
#[derive(Debug, PartialEq)]
pub enum Verdict {
    /// Let the pod in as it is; the warnings are shown by kubectl.
    Admit { warnings: Vec<String> },
    /// Let the pod in with the sidecar.
    Patch(json_patch::Patch),
    /// Refuse the pod: it conflicts with the sidecar.
    Deny(String),
}

fn admit(warning: String) -> Verdict {
    Verdict::Admit {
        warnings: vec![warning],
    }
}

/// Whether `pod` already carries the sidecar this webhook injects.
pub fn injected(pod: &Pod) -> bool {
    has_sidecar(pod) && pod.annotations().contains_key(CONFIG_HASH_ANNOTATION)
}

fn has_sidecar(pod: &Pod) -> bool {
    pod.spec.as_ref().is_some_and(|s| {
        s.init_containers
            .iter()
            .flatten()
            .chain(s.containers.iter())
            .any(|c| c.name == SIDECAR_CONTAINER)
    })
}

/// The verdict for `pod` in `namespace`, whose inject label names `ts` (`None`: no such
/// TaskStream).
pub fn mutate(pod: &Pod, namespace: &str, ts: Option<&TaskStream>, params: &Params) -> Verdict {
    let name = pod.labels().get(INJECT_LABEL).cloned().unwrap_or_default();
    let without = "the pod runs without the taskstream sidecar";
    let Some(ts) = ts else {
        return admit(format!(
            "{INJECT_LABEL}={name}: no TaskStream {name} in namespace {namespace}: {without}"
        ));
    };
    if ts.metadata.deletion_timestamp.is_some() {
        return admit(format!(
            "{INJECT_LABEL}={name}: TaskStream {namespace}/{name} is being deleted: {without}"
        ));
    }
    if ts.spec.attach.is_none() {
        return admit(format!(
            "{INJECT_LABEL}={name}: TaskStream {namespace}/{name} has no spec.attach (the \
             operator runs its own Deployment): {without}"
        ));
    }
    if let Err(e) = validate(ts) {
        return admit(format!("{INJECT_LABEL}={name}: {e}: {without}"));
    }
    if injected(pod) {
        return Verdict::Admit {
            warnings: Vec::new(),
        };
    }
    let Some(spec) = pod.spec.as_ref() else {
        return Verdict::Admit {
            warnings: Vec::new(),
        };
    };
    let containers = spec
        .init_containers
        .iter()
        .flatten()
        .chain(&spec.containers);
    for c in containers.clone() {
        if c.name == SIDECAR_CONTAINER {
            return Verdict::Deny(format!(
                "{INJECT_LABEL}={name}: the pod already has a container named \
                 {SIDECAR_CONTAINER}: rename it, or remove the label"
            ));
        }
    }
    for c in containers {
        if let Some(p) = c
            .ports
            .iter()
            .flatten()
            .find(|p| [HTTP_PORT, ADMIN_PORT].contains(&p.container_port))
        {
            return Verdict::Deny(format!(
                "{INJECT_LABEL}={name}: container {} uses port {}, which the taskstream sidecar \
                 listens on (8080 and 9090): move the app to another port and set \
                 spec.attach.appPort",
                c.name, p.container_port
            ));
        }
    }
    if let Some(v) = spec
        .volumes
        .iter()
        .flatten()
        .find(|v| v.name.starts_with(VOLUME_PREFIX))
    {
        return Verdict::Deny(format!(
            "{INJECT_LABEL}={name}: volume {}: names starting with {VOLUME_PREFIX} belong to the \
             taskstream sidecar",
            v.name
        ));
    }

    let injection = match injection(ts, params) {
        Ok(i) => i,
        Err(e) => return admit(format!("{INJECT_LABEL}={name}: {e}: {without}")),
    };
    let mut mutated = pod.clone();
    let spec = mutated.spec.get_or_insert_with(Default::default);
    if injection.native {
        // Last among the init containers: the team's own (migrations...) run first, as in
        // owned mode.
        spec.init_containers
            .get_or_insert_with(Vec::new)
            .push(injection.sidecar);
    } else {
        spec.containers.push(injection.sidecar);
    }
    if !injection.volumes.is_empty() {
        spec.volumes
            .get_or_insert_with(Vec::new)
            .extend(injection.volumes);
    }
    // Never shorten the team's grace period; lengthen it to cover the sidecar's drain.
    let grace = spec.termination_grace_period_seconds.unwrap_or(30);
    if grace < injection.min_grace_seconds {
        spec.termination_grace_period_seconds = Some(injection.min_grace_seconds);
    }
    mutated
        .annotations_mut()
        .insert(CONFIG_HASH_ANNOTATION.into(), injection.config_hash);
    let (Ok(before), Ok(after)) = (serde_json::to_value(pod), serde_json::to_value(&mutated))
    else {
        return admit(format!(
            "{INJECT_LABEL}={name}: the pod could not be serialized: {without}"
        ));
    };
    Verdict::Patch(json_patch::diff(&before, &after))
}

#[cfg(test)]
mod tests;
