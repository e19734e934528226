//! `hostaction agent`: the node agent, from the API server (`--node-name`)
//! or from a directory of manifests (`--manifests`, static mode).

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use hostaction_agent::Error;
use hostaction_agent::cluster::ClusterAgent;
use hostaction_agent::metrics::AgentMetrics;
use hostaction_agent::static_dir::StaticAgent;
use hostaction_agent::{Loader, node_policy};
use hostaction_distribution::{ModuleStore, Registry};
use hostaction_runtime::Runtime;
use hostaction_runtime::engine::AGENT_MAX_MODULE_BYTES;
use hostaction_runtime::grant::Grant;
use hostaction_telemetry::{LogFormat, serve_metrics, shutdown_signal};

use crate::common::{HostArgs, NodeCache, RegistryArgs, key_and_value, seconds};

/// `hostaction agent` flags.
#[derive(clap::Args)]
#[group(id = "source", required = true, multiple = false, args = ["node_name", "manifests"])]
pub struct AgentCommand {
    /// This node's name: run the HostActionRuns whose spec.nodeName it is,
    /// from the API server (kubeconfig from $KUBECONFIG, else in-cluster).
    #[arg(long, value_name = "NAME", env = "NODE_NAME")]
    node_name: Option<String>,
    /// Serve Prometheus metrics (`/metrics`) and `/healthz` here (with
    /// --node-name). Loopback by default: the agent's pod is on the host
    /// network, where 0.0.0.0 is every address of the node.
    #[arg(long, value_name = "ADDR", default_value = "127.0.0.1:9091")]
    metrics_addr: SocketAddr,
    /// A run still going after this long is marked Running in the API (with
    /// --node-name; shorter runs cost one status write).
    #[arg(long, value_name = "SECONDS", default_value_t = 1.0)]
    mark_running_after: f64,
    /// Log format.
    #[arg(long, value_enum, default_value_t = LogFormat::Text)]
    pub log_format: LogFormat,
    /// Directory of HostAction manifests (*.yaml, *.yml, *.json): static mode.
    #[arg(long, value_name = "DIR")]
    manifests: Option<PathBuf>,
    /// The state file (static mode) [default: <cache dir>/static-state.json];
    /// with --node-name, the run journal directory [default: <cache dir>/agent-runs].
    #[arg(long, value_name = "PATH")]
    state: Option<PathBuf>,
    /// This node's labels, for node selectors (repeatable; static mode).
    #[arg(long = "node-label", value_name = "KEY=VALUE", value_parser = key_and_value)]
    node_labels: Vec<(String, String)>,
    /// The node policy bounding every grant (YAML or JSON). Without it
    /// nothing is granted: every run that needs a capability is refused.
    #[arg(long, value_name = "FILE")]
    policy: Option<PathBuf>,
    /// With no --policy, take every grant as it is, unbounded: whoever can
    /// create a HostAction (or write a manifest) for this node is root on
    /// it. Logged as a warning at start and on every run.
    #[arg(long, conflicts_with = "policy")]
    unbounded_grants: bool,
    #[command(flatten)]
    host: HostArgs,
    /// The runs' undo journals [default: <cache dir>/undo]. On a node, a
    /// directory that outlives the agent's pod (the DaemonSet mounts
    /// /var/lib/hostaction/undo): a run cut short is rolled back from it at
    /// the next start, and `onDelete: undo` undoes the runs it keeps.
    #[arg(long, value_name = "DIR")]
    journal_dir: Option<PathBuf>,
    /// Largest module the agent loads or pulls, in MiB.
    #[arg(long, value_name = "MIB", default_value_t = AGENT_MAX_MODULE_BYTES >> 20)]
    max_module_mib: u64,
    /// One pass, then exit: 0 when every selected action succeeded.
    #[arg(long)]
    once: bool,
    /// Seconds between passes (re-applies on change).
    #[arg(long, value_name = "SECONDS", default_value_t = 5.0)]
    interval: f64,
    #[command(flatten)]
    registry: RegistryArgs,
}

/// What both kinds of agent run with.
struct Node {
    runtime: Runtime,
    registry: Registry,
    store: ModuleStore,
    policy: Option<Grant>,
}

impl AgentCommand {
    /// The largest module this agent loads, in bytes.
    pub fn max_module_bytes(&self) -> u64 {
        self.max_module_mib.saturating_mul(1 << 20)
    }

    /// Runs the agent: in static mode one pass (`--once`) or until killed;
    /// from the API server until SIGTERM.
    pub fn execute(self, cache: &NodeCache) -> Result<u8, Error> {
        let interval = seconds("interval", self.interval)?;
        let journals = self.journal_dir.as_ref().unwrap_or(&cache.journals);
        let runtime = cache.runtime_journaling_to(&self.host, journals)?;
        // Before anything runs: roll back the runs a crash cut short (the
        // attempts rule then runs them again).
        for report in runtime.recover()? {
            tracing::warn!(run = %report.run_id, result = %report.summary(),
                "rolled back a run the agent was stopped during");
        }
        let node = Node {
            runtime,
            registry: Registry::new(self.registry.options()?)?,
            store: cache.store(Some(&self.registry))?,
            policy: node_policy(self.policy.as_deref(), self.unbounded_grants)?,
        };
        let Some(manifests) = self.manifests.clone() else {
            return self.serve_cluster(cache, node);
        };
        let agent = StaticAgent {
            loader: Loader {
                runtime: &node.runtime,
                registry: &node.registry,
                store: &node.store,
            },
            dir: manifests,
            state_path: self
                .state
                .clone()
                .unwrap_or_else(|| cache.store.with_file_name("static-state.json")),
            policy: node.policy.clone(),
            labels: self.node_labels.into_iter().collect(),
        };
        if self.once {
            let pass = agent.pass()?;
            return Ok(if pass.all_succeeded { 0 } else { 1 });
        }
        agent.watch(interval)
    }

    /// `--node-name`: this node's runs from the API server, until SIGTERM.
    fn serve_cluster(self, cache: &NodeCache, node: Node) -> Result<u8, Error> {
        let node_name = self.node_name.clone().unwrap_or_default();
        let mark_running_after = seconds("mark-running-after", self.mark_running_after)?;
        let tokio = tokio::runtime::Runtime::new().map_err(|e| Error::io("tokio", e))?;
        // Held here so that they are dropped last, outside the async runtime:
        // each owns a tokio runtime of its own, which must not be dropped inside
        // another (a panic, exit 101, on every SIGTERM).
        let (runtime, registry, store) = (
            Arc::new(node.runtime),
            Arc::new(node.registry),
            Arc::new(node.store),
        );
        let stopped = tokio.block_on(async {
            let mut metrics_registry = prometheus_client::registry::Registry::default();
            let metrics = AgentMetrics::register(&mut metrics_registry);
            serve_metrics(self.metrics_addr, metrics_registry)
                .await
                .map_err(hostaction_runtime::Error::Host)?;
            let client = kube::Client::try_default().await?;
            let agent = Arc::new(ClusterAgent {
                client,
                node_name,
                runtime: runtime.clone(),
                registry: registry.clone(),
                store: store.clone(),
                policy: node.policy,
                journal: self
                    .state
                    .clone()
                    .unwrap_or_else(|| cache.store.with_file_name("agent-runs")),
                mark_running_after,
                metrics,
            });
            tracing::info!(node = %agent.node_name, "agent starting");
            agent.serve(shutdown_signal()).await?;
            Ok(0)
        });
        // A run still going past the shutdown grace keeps its thread: the
        // process does not wait for it (the run journal brings it back).
        tokio.shutdown_timeout(Duration::from_millis(100));
        drop((runtime, registry, store));
        stopped
    }
}
