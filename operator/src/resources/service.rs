//! The Service (port `http` -> the sidecar, never the app directly) and the
//! PodDisruptionBudget that keeps one pod up during voluntary disruptions when there are several.
//!
//! The sidecar's admin port (9090) is deliberately not on the Service: it serves
//! `POST /publish/<group>`, so whoever reaches it can publish to any group. It stays inside the
//! pod (probes go to the pod IP); Prometheus scrapes `/metrics` per pod with a PodMonitor.

use k8s_openapi::api::core::v1::{Service, ServicePort, ServiceSpec};
use k8s_openapi::api::policy::v1::{PodDisruptionBudget, PodDisruptionBudgetSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;

use super::{child_meta, selector_labels};
use crate::crd::TaskStream;
use crate::error::Result;

/// Port of the Service's `http` port.
pub const SERVICE_PORT: i32 = 80;

/// The ClusterIP Service in front of the sidecar.
pub fn service(ts: &TaskStream) -> Result<Service> {
    Ok(Service {
        metadata: child_meta(ts)?,
        spec: Some(ServiceSpec {
            type_: Some("ClusterIP".into()),
            selector: Some(selector_labels(ts)),
            // Only `http`: the admin port must never be reachable through the Service.
            ports: Some(vec![ServicePort {
                name: Some("http".into()),
                port: SERVICE_PORT,
                target_port: Some(IntOrString::String("http".into())),
                protocol: Some("TCP".into()),
                ..Default::default()
            }]),
            ..Default::default()
        }),
        status: None,
    })
}

/// The PodDisruptionBudget, only when there is always more than one replica (`replicas`, or
/// `autoscaling.minReplicas`): with one, a PDB would block node drains forever.
pub fn pdb(ts: &TaskStream) -> Result<Option<PodDisruptionBudget>> {
    if ts.spec.min_replicas() <= 1 {
        return Ok(None);
    }
    Ok(Some(PodDisruptionBudget {
        metadata: child_meta(ts)?,
        spec: Some(PodDisruptionBudgetSpec {
            max_unavailable: Some(IntOrString::Int(1)),
            selector: Some(LabelSelector {
                match_labels: Some(selector_labels(ts)),
                match_expressions: None,
            }),
            ..Default::default()
        }),
        status: None,
    }))
}
