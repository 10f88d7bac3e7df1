//! Prometheus metrics (`taskstream_operator_*`), served on the admin port's `/metrics`.

pub mod api;

use std::time::Instant;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;

use crate::error::Error;

/// Label set of the error counter: one label, the error's `metric_label()`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ErrorLabels {
    pub error: String,
}

/// Label set of the condition gauge: which TaskStream, which condition.
///
/// Not `namespace`/`name`: Prometheus keeps the scrape target's own `namespace` label (the
/// operator's) and would rename ours to `exported_namespace`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ConditionLabels {
    pub taskstream_namespace: String,
    pub taskstream: String,
    pub condition: String,
}

/// The status conditions exported per TaskStream: those every status carries.
pub const EXPORTED_CONDITIONS: [&str; 3] = ["Ready", "Progressing", "Degraded"];

/// The operator's metrics.
#[derive(Clone)]
pub struct Metrics {
    /// Reconciliations started.
    pub reconciles: Counter,
    /// Failed reconciliations, by error kind.
    pub errors: Family<ErrorLabels, Counter>,
    /// Reconciliation duration.
    pub duration: Histogram,
    /// 1 while this replica holds the leader lease (or runs without leader election).
    pub leader: Gauge,
    /// 1 while a TaskStream's condition is `True` as last written to its status, else 0.
    pub conditions: Family<ConditionLabels, Gauge>,
    /// Requests to the API server, by verb, resource and code (see [`api::CountRequests`]).
    pub api_requests: Family<api::ApiRequestLabels, Counter>,
}

impl Default for Metrics {
    fn default() -> Self {
        Self {
            reconciles: Counter::default(),
            errors: Family::default(),
            // 5 ms .. ~20 s: a reconcile is a handful of API round trips.
            duration: Histogram::new(exponential_buckets(0.005, 2.0, 12)),
            leader: Gauge::default(),
            conditions: Family::default(),
            api_requests: Family::default(),
        }
    }
}

impl Metrics {
    /// Creates the metrics and registers them, under `taskstream_operator_`, in a new registry.
    pub fn registered() -> (Self, Registry) {
        let metrics = Self::default();
        let mut registry = Registry::with_prefix("taskstream_operator");
        registry.register(
            "reconciles",
            "Reconciliations of TaskStreams",
            metrics.reconciles.clone(),
        );
        registry.register(
            "reconcile_errors",
            "Failed reconciliations of TaskStreams, by error",
            metrics.errors.clone(),
        );
        registry.register(
            "reconcile_duration_seconds",
            "Duration of one reconciliation",
            metrics.duration.clone(),
        );
        registry.register(
            "leader",
            "1 while this replica runs the controller",
            metrics.leader.clone(),
        );
        registry.register(
            "taskstream_condition",
            "1 while the TaskStream's status condition is True, by condition (Ready, Progressing, Degraded)",
            metrics.conditions.clone(),
        );
        registry.register(
            "api_requests",
            "Requests of the operator to the API server, by verb, resource and HTTP code",
            metrics.api_requests.clone(),
        );
        (metrics, registry)
    }

    /// Records the conditions of a status the operator has just written, so alerts see what
    /// `kubectl get taskstream` shows.
    pub fn status_written(&self, namespace: &str, name: &str, conditions: &[Condition]) {
        for condition in EXPORTED_CONDITIONS {
            let value = conditions
                .iter()
                .find(|c| c.type_ == condition)
                .map(|c| i64::from(c.status == "True"));
            let labels = condition_labels(namespace, name, condition);
            match value {
                Some(v) => drop(self.conditions.get_or_create(&labels).set(v)),
                None => drop(self.conditions.remove(&labels)),
            }
        }
    }

    /// Drops a deleted TaskStream's series, so it stops counting as Degraded.
    pub fn taskstream_gone(&self, namespace: &str, name: &str) {
        for condition in EXPORTED_CONDITIONS {
            self.conditions
                .remove(&condition_labels(namespace, name, condition));
        }
    }

    /// Counts a reconcile and returns a guard that observes its duration when dropped.
    pub fn reconcile_started(&self) -> ReconcileTimer {
        self.reconciles.inc();
        ReconcileTimer {
            start: Instant::now(),
            histogram: self.duration.clone(),
        }
    }

    /// Counts a failed reconcile.
    pub fn reconcile_failed(&self, err: &Error) {
        self.errors
            .get_or_create(&ErrorLabels {
                error: err.metric_label().to_string(),
            })
            .inc();
    }
}

fn condition_labels(namespace: &str, name: &str, condition: &str) -> ConditionLabels {
    ConditionLabels {
        taskstream_namespace: namespace.into(),
        taskstream: name.into(),
        condition: condition.into(),
    }
}

/// Observes the reconcile duration on drop, so every exit path is measured.
pub struct ReconcileTimer {
    start: Instant,
    histogram: Histogram,
}

impl Drop for ReconcileTimer {
    fn drop(&mut self) {
        self.histogram.observe(self.start.elapsed().as_secs_f64());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn metrics_are_prefixed_and_labelled() {
        let (metrics, registry) = Metrics::registered();
        drop(metrics.reconcile_started());
        metrics.reconcile_failed(&Error::InvalidSpec {
            name: "x".into(),
            reason: "y".into(),
        });
        let mut out = String::new();
        prometheus_client::encoding::text::encode(&mut out, &registry).expect("encode");
        assert!(
            out.contains("taskstream_operator_reconciles_total 1"),
            "{out}"
        );
        assert!(
            out.contains(r#"taskstream_operator_reconcile_errors_total{error="invalid_spec"} 1"#),
            "{out}"
        );
        assert!(
            out.contains("taskstream_operator_reconcile_duration_seconds_count 1"),
            "{out}"
        );
    }

    fn condition(type_: &str, status: &str) -> Condition {
        Condition {
            type_: type_.into(),
            status: status.into(),
            reason: "R".into(),
            message: String::new(),
            observed_generation: None,
            last_transition_time: k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(
                k8s_openapi::jiff::Timestamp::UNIX_EPOCH,
            ),
        }
    }

    fn encode(registry: &Registry) -> String {
        let mut out = String::new();
        prometheus_client::encoding::text::encode(&mut out, registry).expect("encode");
        out
    }

    #[test]
    fn conditions_follow_the_written_status_and_vanish_with_the_taskstream() {
        let (metrics, registry) = Metrics::registered();
        let series = |condition: &str| {
            format!(
                r#"taskstream_operator_taskstream_condition{{taskstream_namespace="apps",taskstream="chat",condition="{condition}"}}"#
            )
        };
        metrics.status_written(
            "apps",
            "chat",
            &[
                condition("Ready", "False"),
                condition("Progressing", "Unknown"),
                condition("Degraded", "True"),
                condition("RouteAccepted", "True"),
            ],
        );
        let out = encode(&registry);
        assert!(out.contains(&format!("{} 0", series("Ready"))), "{out}");
        assert!(
            out.contains(&format!("{} 0", series("Progressing"))),
            "{out}"
        );
        assert!(out.contains(&format!("{} 1", series("Degraded"))), "{out}");
        assert!(
            !out.contains("RouteAccepted"),
            "only the exported conditions: {out}"
        );

        metrics.status_written(
            "apps",
            "chat",
            &[condition("Ready", "True"), condition("Degraded", "False")],
        );
        let out = encode(&registry);
        assert!(out.contains(&format!("{} 1", series("Ready"))), "{out}");
        assert!(out.contains(&format!("{} 0", series("Degraded"))), "{out}");
        assert!(
            !out.contains(&series("Progressing")),
            "a condition no longer written: {out}"
        );

        metrics.taskstream_gone("apps", "chat");
        assert!(
            !encode(&registry).contains("chat"),
            "deleted TaskStream still exported"
        );
    }
}
