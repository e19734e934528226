//! The controller's and the node agent's Prometheus metrics, and the HTTP
//! endpoint that serves them (`/metrics` in OpenMetrics text, `/healthz`).

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use http_body_util::Full;
use hyper::body::{Bytes, Incoming};
use hyper::header::{ALLOW, CONTENT_TYPE};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::{Registry, Unit};
use tokio::net::TcpListener;
use tokio::task::JoinSet;

/// Reconcile durations: 1 ms to 10 s.
const RECONCILE_BUCKETS: [f64; 13] = [
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];
/// Action run durations: 1 ms to 60 s.
const RUN_BUCKETS: [f64; 15] = [
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0,
];

/// The content type of OpenMetrics text, which `encode` writes.
const OPENMETRICS: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";
/// A client must send its request headers within this, so idle sockets
/// cannot pile up.
const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(10);

/// The controller's metrics. Clones share the same series.
#[derive(Clone, Debug)]
pub struct ControllerMetrics {
    /// `hostaction_controller_reconciles_total{result="ok|error"}`.
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

/// The `result` label of a reconcile.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ResultLabels {
    /// `ok` or `error`.
    pub result: &'static str,
}

impl ResultLabels {
    /// A reconcile that succeeded.
    pub const OK: Self = Self { result: "ok" };
    /// A reconcile that failed.
    pub const ERROR: Self = Self { result: "error" };
}

/// The `phase` label of a finished run.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct PhaseLabels {
    /// The run's final phase: `Succeeded`, `Failed` or `Interrupted`.
    pub phase: String,
}

/// Serves `GET /metrics` (OpenMetrics text) and `GET /healthz` (`ok`) on
/// `listener` until the future is dropped, which also closes the open
/// connections; other paths get 404, other methods 405.
///
/// Accept errors (a peer gone before we accepted, descriptors exhausted)
/// are logged and retried, so this does not return in practice; the
/// `Result` is kept for callers that `?` it.
pub async fn serve(listener: TcpListener, registry: Arc<Registry>) -> std::io::Result<()> {
    // Owned by this future: dropping it aborts every connection task.
    let mut connections = JoinSet::new();
    loop {
        let accepted = tokio::select! {
            accepted = listener.accept() => accepted,
            Some(_) = connections.join_next(), if !connections.is_empty() => continue,
        };
        let (stream, peer) = match accepted {
            Ok(accepted) => accepted,
            Err(e) => {
                tracing::warn!(error = %e, "metrics endpoint: accept failed");
                // Out of descriptors fails again at once; give others time
                // to close theirs.
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let registry = registry.clone();
        connections.spawn(async move {
            let service = service_fn(move |request| {
                let registry = registry.clone();
                async move { Ok::<_, Infallible>(respond(&request, &registry)) }
            });
            let served = http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(HEADER_READ_TIMEOUT)
                .serve_connection(TokioIo::new(stream), service)
                .await;
            if let Err(e) = served {
                tracing::debug!(%peer, error = %e, "metrics endpoint: connection failed");
            }
        });
    }
}

/// Routes one request.
fn respond(request: &Request<Incoming>, registry: &Registry) -> Response<Full<Bytes>> {
    let path = request.uri().path();
    if path != "/metrics" && path != "/healthz" {
        return plain(StatusCode::NOT_FOUND, "not found\n");
    }
    if request.method() != Method::GET {
        let mut response = plain(StatusCode::METHOD_NOT_ALLOWED, "method not allowed\n");
        response
            .headers_mut()
            .insert(ALLOW, hyper::header::HeaderValue::from_static("GET"));
        return response;
    }
    if path == "/healthz" {
        return plain(StatusCode::OK, "ok\n");
    }
    let mut text = String::new();
    if let Err(e) = prometheus_client::encoding::text::encode(&mut text, registry) {
        tracing::warn!(error = %e, "metrics endpoint: encoding failed");
        return plain(StatusCode::INTERNAL_SERVER_ERROR, "encoding failed\n");
    }
    let mut response = Response::new(Full::new(Bytes::from(text)));
    response.headers_mut().insert(
        CONTENT_TYPE,
        hyper::header::HeaderValue::from_static(OPENMETRICS),
    );
    response
}

fn plain(status: StatusCode, body: &'static str) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(Bytes::from_static(body.as_bytes())));
    *response.status_mut() = status;
    response.headers_mut().insert(
        CONTENT_TYPE,
        hyper::header::HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    response
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpStream;

    /// Sends one HTTP/1.1 request and returns the whole response as text.
    async fn request(addr: std::net::SocketAddr, method: &str, path: &str) -> String {
        let mut stream = TcpStream::connect(addr).await.expect("connect");
        let head = format!("{method} {path} HTTP/1.1\r\nHost: test\r\nConnection: close\r\n\r\n");
        stream.write_all(head.as_bytes()).await.expect("write");
        let mut response = String::new();
        stream.read_to_string(&mut response).await.expect("read");
        response
    }

    async fn endpoint() -> (
        std::net::SocketAddr,
        ControllerMetrics,
        AgentMetrics,
        tokio::task::JoinHandle<std::io::Result<()>>,
    ) {
        let mut registry = Registry::default();
        let controller = ControllerMetrics::register(&mut registry);
        let agent = AgentMetrics::register(&mut registry);
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("address");
        let server = tokio::spawn(serve(listener, Arc::new(registry)));
        (addr, controller, agent, server)
    }

    #[tokio::test]
    async fn metrics_page_shows_recorded_values() {
        let (addr, controller, agent, server) = endpoint().await;
        controller
            .reconciles
            .get_or_create(&ResultLabels::OK)
            .inc_by(3);
        controller
            .reconciles
            .get_or_create(&ResultLabels::ERROR)
            .inc();
        controller.clone().runs_created.inc();
        controller.leader.set(1);
        controller.reconcile_duration.observe(0.02);
        let phase = PhaseLabels {
            phase: "Succeeded".into(),
        };
        agent.runs.get_or_create(&phase).inc();
        agent.run_duration.observe(42.0);

        let response = request(addr, "GET", "/metrics").await;
        assert!(response.starts_with("HTTP/1.1 200"), "{response}");
        assert!(
            response
                .to_ascii_lowercase()
                .contains(&format!("content-type: {OPENMETRICS}")),
            "{response}"
        );
        for line in [
            "hostaction_controller_reconciles_total{result=\"ok\"} 3",
            "hostaction_controller_reconciles_total{result=\"error\"} 1",
            "hostaction_controller_runs_created_total 1",
            "hostaction_controller_runs_deleted_total 0",
            "hostaction_controller_leader 1",
            "hostaction_controller_reconcile_duration_seconds_count 1",
            "hostaction_controller_reconcile_duration_seconds_bucket{le=\"10.0\"} 1",
            "hostaction_agent_runs_total{phase=\"Succeeded\"} 1",
            "hostaction_agent_run_duration_seconds_bucket{le=\"60.0\"} 1",
            "hostaction_agent_runs_in_flight 0",
            "hostaction_agent_status_write_errors_total 0",
            "# EOF",
        ] {
            assert!(response.contains(line), "missing {line:?} in\n{response}");
        }
        server.abort();
    }

    #[tokio::test]
    async fn healthz_answers_ok() {
        let (addr, _, _, server) = endpoint().await;
        let response = request(addr, "GET", "/healthz").await;
        assert!(response.starts_with("HTTP/1.1 200"), "{response}");
        assert!(response.ends_with("\r\n\r\nok\n"), "{response}");
        server.abort();
    }

    #[tokio::test]
    async fn unknown_paths_and_other_methods_are_refused() {
        let (addr, _, _, server) = endpoint().await;
        let response = request(addr, "GET", "/nope").await;
        assert!(response.starts_with("HTTP/1.1 404"), "{response}");
        let response = request(addr, "POST", "/metrics").await;
        assert!(response.starts_with("HTTP/1.1 405"), "{response}");
        assert!(
            response.to_ascii_lowercase().contains("allow: get"),
            "{response}"
        );
        server.abort();
    }
}
