//! The `hostaction-controller` command line.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use hostaction_telemetry::{LogFormat, seconds, serve_metrics, shutdown_signal};
use prometheus_client::registry::Registry;

use crate::lease::LeaseConfig;
use crate::metrics::ControllerMetrics;
use crate::{Error, Options};
use hostaction_distribution::resolve::{PlainHttp, Resolver};

/// `hostaction-controller` flags.
#[derive(clap::Args, Debug, Clone)]
pub struct ControllerArgs {
    /// Serve Prometheus metrics (`/metrics`) and `/healthz` here.
    #[arg(long, value_name = "ADDR", default_value = "0.0.0.0:9090")]
    pub metrics_addr: SocketAddr,
    /// Reconcile without holding the leader Lease (one replica only).
    #[arg(long)]
    pub no_leader_election: bool,
    /// The leader Lease's name.
    #[arg(long, value_name = "NAME", default_value = crate::NAME)]
    pub lease_name: String,
    /// The leader Lease's namespace.
    #[arg(
        long,
        value_name = "NS",
        env = "POD_NAMESPACE",
        default_value = "hostaction-system"
    )]
    pub lease_namespace: String,
    /// How long the Lease's record must stay unchanged before another
    /// replica takes it over (the longest a dead leader blocks rollouts).
    #[arg(long, value_name = "SECONDS", default_value_t = 15.0)]
    pub lease_duration: f64,
    /// How long the leader keeps failing to renew before it stops
    /// reconciling and exits; shorter than --lease-duration.
    #[arg(long, value_name = "SECONDS", default_value_t = 10.0)]
    pub renew_deadline: f64,
    /// The pause between two attempts to acquire or renew the Lease;
    /// shorter than --renew-deadline.
    #[arg(long, value_name = "SECONDS", default_value_t = 2.0)]
    pub retry_period: f64,
    /// This replica's identity in the Lease and in Events [default: host name and process id].
    #[arg(long, value_name = "ID", env = "POD_NAME")]
    pub identity: Option<String>,
    /// Resolve module tags over plain HTTP for registries on loopback
    /// (127.0.0.0/8, ::1, localhost); any other registry gets HTTPS.
    #[arg(long)]
    pub plain_http: bool,
    /// Resolve module tags over plain HTTP for this registry: HOST (any
    /// port) or HOST:PORT (repeatable).
    #[arg(long, value_name = "HOST[:PORT]", value_parser = PlainHttp::parse_registry)]
    pub plain_http_registry: Vec<String>,
    /// PEM file of CA certificates to trust besides the system's.
    #[arg(long, value_name = "FILE")]
    pub ca_file: Option<PathBuf>,
    /// Log format.
    #[arg(long, value_enum, default_value_t = LogFormat::Json)]
    pub log_format: LogFormat,
}

/// Runs the controller until SIGTERM or Ctrl-C; the exit code says how it
/// ended (1: lost the lease or failed).
pub fn main(args: ControllerArgs) -> ExitCode {
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(runtime) => runtime,
        Err(e) => return fail(&Error::Config(format!("tokio: {e}"))),
    };
    match runtime.block_on(serve(args)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => fail(&e),
    }
}

async fn serve(args: ControllerArgs) -> Result<(), Error> {
    let client = kube::Client::try_default().await?;
    let identity = args.identity.clone().unwrap_or_else(default_identity);
    let mut registry = Registry::default();
    let metrics = ControllerMetrics::register(&mut registry);
    serve_metrics(args.metrics_addr, registry)
        .await
        .map_err(Error::Config)?;
    let lease = if args.no_leader_election {
        None
    } else {
        let config = LeaseConfig {
            lease_duration: seconds("lease-duration", args.lease_duration)
                .map_err(Error::Config)?,
            renew_deadline: seconds("renew-deadline", args.renew_deadline)
                .map_err(Error::Config)?,
            retry_period: seconds("retry-period", args.retry_period).map_err(Error::Config)?,
            ..LeaseConfig::new(
                args.lease_name.clone(),
                args.lease_namespace.clone(),
                identity.clone(),
            )
        };
        // Refused here, before serving anything, rather than at acquire.
        config.check()?;
        Some(config)
    };
    let options = Options {
        lease,
        resolver: Resolver::new(
            PlainHttp {
                loopback: args.plain_http,
                registries: args.plain_http_registry.clone(),
            },
            args.ca_file.as_deref(),
        )
        .map_err(Error::Config)?,
        metrics,
        instance: identity,
    };
    tracing::info!(
        leader_election = options.lease.is_some(),
        "controller starting"
    );
    crate::serve(client, options, shutdown_signal()).await
}

/// Host name and process id: unique enough among replicas.
pub fn default_identity() -> String {
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_owned())
        .unwrap_or_else(|_| "unknown".to_owned());
    format!("{host}-{}", std::process::id())
}

fn fail(error: &Error) -> ExitCode {
    tracing::error!(%error, "controller stopped");
    ExitCode::FAILURE
}
