//! Prometheus metrics (`taskstream_operator_*`), served on the admin port's `/metrics`.

use std::time::Instant;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

use crate::error::Error;

/// Label set of the error counter: one label, the error's `metric_label()`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ErrorLabels {
    pub error: String,
}

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
}

impl Default for Metrics {
    fn default() -> Self {
        Self {
            reconciles: Counter::default(),
            errors: Family::default(),
            // 5 ms .. ~20 s: a reconcile is a handful of API round trips.
            duration: Histogram::new(exponential_buckets(0.005, 2.0, 12)),
            leader: Gauge::default(),
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
        (metrics, registry)
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
}
