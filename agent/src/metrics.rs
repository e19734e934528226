//! The node agent's Prometheus metrics (served by
//! `hostaction_telemetry::serve_metrics`).

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::{Registry, Unit};

/// Action run durations: 1 ms to 60 s.
const RUN_BUCKETS: [f64; 15] = [
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0,
];

/// The node agent's metrics. Clones share the same series.
#[derive(Clone, Debug)]
pub struct AgentMetrics {
    /// `hostaction_agent_runs_total{phase="Succeeded|Failed|Interrupted"}`.
    pub runs: Family<PhaseLabels, Counter>,
    /// `hostaction_agent_run_duration_seconds`.
    pub run_duration: Histogram,
    /// `hostaction_agent_runs_in_flight`.
    pub runs_in_flight: Gauge,
    /// `hostaction_agent_status_writes_total`.
    pub status_writes: Counter,
    /// `hostaction_agent_status_write_errors_total`.
    pub status_write_errors: Counter,
}

impl AgentMetrics {
    /// Creates the metrics and registers them in `registry`.
    pub fn register(registry: &mut Registry) -> Self {
        let metrics = Self {
            runs: Family::default(),
            run_duration: Histogram::new(RUN_BUCKETS),
            runs_in_flight: Gauge::default(),
            status_writes: Counter::default(),
            status_write_errors: Counter::default(),
        };
        registry.register(
            "hostaction_agent_runs",
            "Action runs finished on this node, by final phase",
            metrics.runs.clone(),
        );
        registry.register_with_unit(
            "hostaction_agent_run_duration",
            "Time one action run took on this node",
            Unit::Seconds,
            metrics.run_duration.clone(),
        );
        registry.register(
            "hostaction_agent_runs_in_flight",
            "Action runs executing on this node now",
            metrics.runs_in_flight.clone(),
        );
        registry.register(
            "hostaction_agent_status_writes",
            "HostActionRun status writes attempted",
            metrics.status_writes.clone(),
        );
        registry.register(
            "hostaction_agent_status_write_errors",
            "HostActionRun status writes that failed",
            metrics.status_write_errors.clone(),
        );
        metrics
    }
}

/// The `phase` label of a finished run.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct PhaseLabels {
    /// The run's final phase: `Succeeded`, `Failed` or `Interrupted`.
    pub phase: String,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn agent_metrics_are_named_and_labelled_as_documented() {
        let mut registry = Registry::default();
        let agent = AgentMetrics::register(&mut registry);
        let phase = PhaseLabels {
            phase: "Succeeded".into(),
        };
        agent.runs.get_or_create(&phase).inc();
        agent.run_duration.observe(42.0);
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, &registry).expect("encode");
        for line in [
            "hostaction_agent_runs_total{phase=\"Succeeded\"} 1",
            "hostaction_agent_run_duration_seconds_bucket{le=\"60.0\"} 1",
            "hostaction_agent_runs_in_flight 0",
            "hostaction_agent_status_write_errors_total 0",
            "# EOF",
        ] {
            assert!(text.contains(line), "missing {line:?} in\n{text}");
        }
    }
}
