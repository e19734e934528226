//! What hostaction's long-running processes share — the controller and the
//! node agent: logs ([`init_logging`]), the metrics endpoint ([`metrics`],
//! [`serve_metrics`]), shutdown on SIGTERM ([`shutdown_signal`]), the
//! watches' back-off ([`backoff`]) and the
//! checks of their duration flags ([`seconds`]).
//!
//! It links neither wasmtime nor a Kubernetes client: each process registers
//! its own metrics and hands the registry here.

pub mod backoff;
pub mod metrics;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use prometheus_client::registry::Registry;

/// How logs are written (to stderr).
#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum LogFormat {
    /// For people.
    Text,
    /// One JSON object per line, for log collectors.
    Json,
}

/// Logs to stderr, filtered by `HOSTACTION_LOG` (else `default`, like
/// `info`).
pub fn init_logging(format: LogFormat, default: &str) {
    let filter = tracing_subscriber::EnvFilter::try_from_env("HOSTACTION_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    // A second initialisation (tests, the all-in-one CLI) keeps the first.
    let _ = match format {
        LogFormat::Text => builder.try_init(),
        LogFormat::Json => builder.json().flatten_event(true).try_init(),
    };
}

/// Binds `addr` and serves `registry` there in the background; the error
/// names the flag (`--metrics-addr`) and the address.
pub async fn serve_metrics(addr: SocketAddr, registry: Registry) -> Result<(), String> {
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .map_err(|e| format!("--metrics-addr {addr}: {e}"))?;
    tokio::spawn(async move {
        if let Err(error) = metrics::serve(listener, Arc::new(registry)).await {
            tracing::error!(%error, "the metrics endpoint stopped");
        }
    });
    Ok(())
}

/// Resolves on SIGTERM (Kubernetes stopping the pod) or Ctrl-C.
pub async fn shutdown_signal() {
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut signal) => {
                signal.recv().await;
            }
            Err(_) => std::future::pending().await,
        }
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        () = terminate => {}
    }
    tracing::info!("shutting down");
}

/// `value` seconds of `--flag`, refused unless positive and finite; the
/// error names the flag.
pub fn seconds(flag: &str, value: f64) -> Result<Duration, String> {
    Duration::try_from_secs_f64(value)
        .ok()
        .filter(|t| !t.is_zero())
        .ok_or_else(|| format!("--{flag} {value}: not a positive number of seconds"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seconds_refuses_zero_negative_and_not_finite_naming_the_flag() {
        assert_eq!(seconds("timeout", 1.5), Ok(Duration::from_millis(1500)));
        for bad in [0.0, -1.0, f64::NAN, f64::INFINITY] {
            let err = seconds("timeout", bad).expect_err("refused");
            assert!(err.starts_with("--timeout "), "{err}");
        }
    }
}
