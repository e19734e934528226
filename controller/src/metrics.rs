//! The controller's Prometheus metrics (served by
//! `hostaction_telemetry::serve_metrics`).

use prometheus_client::encoding::{EncodeLabel, EncodeLabelSet, LabelSetEncoder};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::{Registry, Unit};

/// Reconcile durations: 1 ms to 10 s.
const RECONCILE_BUCKETS: [f64; 13] = [
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];

/// The controller's metrics. Clones share the same series.
#[derive(Clone, Debug)]
pub struct ControllerMetrics {
    /// `hostaction_controller_reconciles_total{result="ok"}` and
    /// `{result="error",reason="kube|resolve|spec|finalizer|undo-pending"}`.
    pub reconciles: Family<ResultLabels, Counter>,
    /// `hostaction_controller_reconcile_duration_seconds`.
    pub reconcile_duration: Histogram,
    /// `hostaction_controller_runs_created_total`.
    pub runs_created: Counter,
    /// `hostaction_controller_runs_deleted_total`.
    pub runs_deleted: Counter,
    /// `hostaction_controller_leader`: 1 while this replica holds the lease.
    pub leader: Gauge,
}

impl ControllerMetrics {
    /// Creates the metrics and registers them in `registry`.
    pub fn register(registry: &mut Registry) -> Self {
        let metrics = Self {
            reconciles: Family::default(),
            reconcile_duration: Histogram::new(RECONCILE_BUCKETS),
            runs_created: Counter::default(),
            runs_deleted: Counter::default(),
            leader: Gauge::default(),
        };
        registry.register(
            "hostaction_controller_reconciles",
            "HostAction reconciles, by result",
            metrics.reconciles.clone(),
        );
        registry.register_with_unit(
            "hostaction_controller_reconcile_duration",
            "Time spent in one HostAction reconcile",
            Unit::Seconds,
            metrics.reconcile_duration.clone(),
        );
        registry.register(
            "hostaction_controller_runs_created",
            "HostActionRuns created",
            metrics.runs_created.clone(),
        );
        registry.register(
            "hostaction_controller_runs_deleted",
            "HostActionRuns deleted",
            metrics.runs_deleted.clone(),
        );
        registry.register(
            "hostaction_controller_leader",
            "1 while this replica holds the leader lease",
            metrics.leader.clone(),
        );
        metrics
    }
}

/// The `result` label of a reconcile, and for a failed one its `reason`
/// ([`crate::reconcile::Error::metric_label`]).
#[derive(Clone, Debug, Hash, PartialEq, Eq)]
pub struct ResultLabels {
    /// `ok` or `error`.
    pub result: &'static str,
    /// Why it failed; none for `ok` (the series stays `{result="ok"}`).
    pub reason: Option<&'static str>,
}

impl ResultLabels {
    /// A reconcile that succeeded.
    pub const OK: Self = Self {
        result: "ok",
        reason: None,
    };

    /// A reconcile that failed, for `reason`.
    pub fn error(reason: &'static str) -> Self {
        Self {
            result: "error",
            reason: Some(reason),
        }
    }
}

/// By hand, not derived: a derived set would write `reason=""` on every `ok`
/// series, which would rename the series dashboards already use.
impl EncodeLabelSet for ResultLabels {
    fn encode(&self, encoder: &mut LabelSetEncoder) -> Result<(), std::fmt::Error> {
        ("result", self.result).encode(encoder.encode_label())?;
        if let Some(reason) = self.reason {
            ("reason", reason).encode(encoder.encode_label())?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn controller_metrics_are_named_and_labelled_as_documented() {
        let mut registry = Registry::default();
        let controller = ControllerMetrics::register(&mut registry);
        controller
            .reconciles
            .get_or_create(&ResultLabels::OK)
            .inc_by(3);
        controller
            .reconciles
            .get_or_create(&ResultLabels::error("resolve"))
            .inc();
        controller
            .reconciles
            .get_or_create(&ResultLabels::error("kube"))
            .inc_by(2);
        controller.clone().runs_created.inc();
        controller.leader.set(1);
        controller.reconcile_duration.observe(0.02);
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, &registry).expect("encode");
        for line in [
            "hostaction_controller_reconciles_total{result=\"ok\"} 3",
            "hostaction_controller_reconciles_total{result=\"error\",reason=\"resolve\"} 1",
            "hostaction_controller_reconciles_total{result=\"error\",reason=\"kube\"} 2",
            "hostaction_controller_runs_created_total 1",
            "hostaction_controller_runs_deleted_total 0",
            "hostaction_controller_leader 1",
            "hostaction_controller_reconcile_duration_seconds_count 1",
            "hostaction_controller_reconcile_duration_seconds_bucket{le=\"10.0\"} 1",
            "# EOF",
        ] {
            assert!(text.contains(line), "missing {line:?} in\n{text}");
        }
    }
}
