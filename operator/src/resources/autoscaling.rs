//! The HorizontalPodAutoscaler (autoscaling/v2, CPU utilization) of `spec.autoscaling`.
//!
//! While it exists, the Deployment is applied without `spec.replicas`: the autoscaler (or
//! `kubectl scale`) owns the count, and the operator never reverts it (see `controller`).

use k8s_openapi::api::autoscaling::v2::{
    CrossVersionObjectReference, HorizontalPodAutoscaler, HorizontalPodAutoscalerSpec, MetricSpec,
    MetricTarget, ResourceMetricSource,
};
use kube::ResourceExt;

use super::child_meta;
use crate::crd::{DEFAULT_TARGET_CPU_UTILIZATION, TaskStream};
use crate::error::Result;

/// The HorizontalPodAutoscaler, when `spec.autoscaling` is set.
pub fn hpa(ts: &TaskStream) -> Result<Option<HorizontalPodAutoscaler>> {
    let Some(autoscaling) = &ts.spec.autoscaling else {
        return Ok(None);
    };
    Ok(Some(HorizontalPodAutoscaler {
        metadata: child_meta(ts)?,
        spec: Some(HorizontalPodAutoscalerSpec {
            scale_target_ref: CrossVersionObjectReference {
                api_version: Some("apps/v1".into()),
                kind: "Deployment".into(),
                name: ts.name_any(),
            },
            min_replicas: Some(ts.spec.min_replicas()),
            max_replicas: autoscaling.max_replicas,
            metrics: Some(vec![MetricSpec {
                type_: "Resource".into(),
                resource: Some(ResourceMetricSource {
                    name: "cpu".into(),
                    target: MetricTarget {
                        type_: "Utilization".into(),
                        average_utilization: Some(
                            autoscaling
                                .target_cpu_utilization_percentage
                                .unwrap_or(DEFAULT_TARGET_CPU_UTILIZATION),
                        ),
                        ..Default::default()
                    },
                }),
                ..Default::default()
            }]),
            behavior: None,
        }),
        status: None,
    }))
}
