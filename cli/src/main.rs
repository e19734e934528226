//! `hostaction`: run a host action on the machine you are on, inspect one,
//! push and pull action artifacts, and tend the node's module store.
//!
//! Exit codes: 0 the action succeeded; 1 the action failed (returned an error,
//! trapped, hit its deadline or a limit); 2 bad input (usage, module, params,
//! grant, policy); 3 refused by the grant (the module imports a capability the
//! effective grant does not give; it never started); 4 a host error; 5 a
//! registry error (unreachable, unauthorized, not found, content that does not
//! match its digest).

mod scaffold;

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use clap::{Parser, Subcommand, ValueEnum};
use hostaction_distribution::{
    self as oci, Credentials, ModuleStore, Payload, PushRequest, Registry, RegistryOptions,
    SizeLimits, StoredArtifact,
};
use hostaction_runtime::effects::Mode;
use hostaction_runtime::engine::{
    AGENT_MAX_MODULE_BYTES, CompileLimits, Compiler, Limits, LoadSource, MAX_MODULE_BYTES,
    Provided, compile,
};
use hostaction_runtime::grant::{EffectiveGrant, Grant, GrantDocument};
use hostaction_runtime::report::printable;
use hostaction_runtime::{Error, LoadedModule, RunReport, RunRequest, Runtime, RuntimeConfig};
use hostaction_telemetry::LogFormat;

/// Appends a formatted line to the output buffer.
macro_rules! outln {
    ($out:expr, $($arg:tt)*) => {{
        use std::fmt::Write as _;
        let _ = writeln!($out, $($arg)*);
    }};
}

#[derive(Parser)]
#[command(
    name = "hostaction",
    version,
    about = "Run host actions: Wasm components with granted host capabilities"
)]
struct Cli {
    /// The node cache: pulled artifacts (`modules/`) and precompiled code
    /// (`compiled/`) [default: $HOSTACTION_CACHE_DIR, else ~/.cache/hostaction]
    #[arg(long, global = true, value_name = "DIR")]
    cache_dir: Option<PathBuf>,
    /// Do not keep precompiled modules on disk (a compile's code goes
    /// through a private temporary directory, removed once loaded).
    #[arg(long, global = true)]
    no_cache: bool,
    /// Bound of the module store; least recently used artifacts beyond it
    /// are collected after a pull.
    #[arg(long, global = true, value_name = "MIB", default_value_t = 2048)]
    cache_max_mib: u64,
    /// Memory a module's compile may use (the compiler process's RLIMIT_DATA).
    #[arg(long, global = true, value_name = "MIB", default_value_t = CompileLimits::default().memory_bytes >> 20)]
    compile_memory_mib: u64,
    /// Seconds a module's compile may take (the compiler process is killed past them).
    #[arg(long, global = true, value_name = "SECONDS", default_value_t = CompileLimits::default().timeout.as_secs_f64())]
    compile_timeout: f64,
    /// Threads a module's compile may use.
    #[arg(long, global = true, value_name = "N", default_value_t = CompileLimits::default().threads)]
    compile_threads: u32,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run an action on this host and print its outcome, log, changes and timing.
    Run(RunArgs),
    /// List the capabilities a module imports and what it exports.
    Inspect {
        /// The module: a component .wasm file, or an OCI reference.
        module: String,
        #[command(flatten)]
        registry: RegistryArgs,
        /// Output format.
        #[arg(long, value_enum, default_value_t = Output::Text)]
        output: Output,
    },
    /// Push a module, with payload files, as an OCI artifact; prints its
    /// reference by digest.
    Push {
        /// The component .wasm file.
        module: PathBuf,
        /// Where to: registry/repository[:tag].
        reference: String,
        /// A payload file shipped beside the module, read by the action
        /// through `payload` (repeatable).
        #[arg(long, value_name = "NAME=FILE", value_parser = name_and_path)]
        payload: Vec<(String, PathBuf)>,
        /// An annotation of the manifest (repeatable).
        #[arg(long, value_name = "KEY=VALUE", value_parser = key_and_value)]
        annotation: Vec<(String, String)>,
        #[command(flatten)]
        registry: RegistryArgs,
        /// Output format.
        #[arg(long, value_enum, default_value_t = Output::Text)]
        output: Output,
    },
    /// Pull an artifact into the module store by digest (resolving a tag
    /// once); prints its digest.
    Pull {
        /// registry/repository:tag or registry/repository@sha256:...
        reference: String,
        #[command(flatten)]
        registry: RegistryArgs,
        /// Output format.
        #[arg(long, value_enum, default_value_t = Output::Text)]
        output: Output,
    },
    /// Write a new action project: its world, typed params, a grant, and a
    /// README saying how to build, inspect, run and push it.
    New {
        /// The language to write it in.
        #[arg(long, value_enum)]
        lang: crate::scaffold::Lang,
        /// The action's name: lowercase letters, digits and `-`.
        name: String,
        /// Where to write it (must not exist, or be empty) [default: ./NAME].
        #[arg(long, value_name = "DIR")]
        dir: Option<PathBuf>,
    },
    /// Print the HostAction and HostActionRun CustomResourceDefinitions (YAML).
    Crds,
    /// The node agent: run this node's HostActionRuns from the API server
    /// (--node-name), or apply HostAction manifests from a directory with no
    /// API server (--manifests, static mode).
    Agent(AgentArgs),
    /// List the module store's artifacts, or collect unused ones.
    Cache {
        #[command(subcommand)]
        command: CacheCommand,
    },
    /// Compiles a module read from stdin into the disk cache, within the
    /// limits it sets on itself: the compiler process the others start.
    #[command(name = compile::CHILD_SUBCOMMAND, hide = true)]
    Compile {
        /// What to compile, with which limits (JSON, written by the parent).
        spec: String,
    },
}

#[derive(Subcommand)]
enum CacheCommand {
    /// List stored artifacts, most recently used first.
    List {
        /// Output format.
        #[arg(long, value_enum, default_value_t = Output::Text)]
        output: Output,
    },
    /// Remove least recently used artifacts (and their precompiled code)
    /// until the store holds at most --max-mib.
    Gc {
        /// What the store may keep [default: --cache-max-mib].
        #[arg(long, value_name = "MIB")]
        max_mib: Option<u64>,
        /// Output format.
        #[arg(long, value_enum, default_value_t = Output::Text)]
        output: Output,
    },
}

#[derive(clap::Args)]
#[group(id = "source", required = true, multiple = false, args = ["node_name", "manifests"])]
struct AgentArgs {
    /// This node's name: run the HostActionRuns whose spec.nodeName it is,
    /// from the API server (kubeconfig from $KUBECONFIG, else in-cluster).
    #[arg(long, value_name = "NAME", env = "NODE_NAME")]
    node_name: Option<String>,
    /// Serve Prometheus metrics (`/metrics`) and `/healthz` here (with
    /// --node-name). Loopback by default: the agent's pod is on the host
    /// network, where 0.0.0.0 is every address of the node.
    #[arg(long, value_name = "ADDR", default_value = "127.0.0.1:9091")]
    metrics_addr: std::net::SocketAddr,
    /// A run still going after this long is marked Running in the API (with
    /// --node-name; shorter runs cost one status write).
    #[arg(long, value_name = "SECONDS", default_value_t = 1.0)]
    mark_running_after: f64,
    /// Log format.
    #[arg(long, value_enum, default_value_t = LogFormat::Text)]
    log_format: LogFormat,
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
    /// Where the host's filesystem is seen.
    #[arg(long, value_name = "DIR", default_value = "/")]
    host_root: PathBuf,
    /// D-Bus address of systemd's system bus.
    #[arg(long, value_name = "ADDRESS")]
    system_bus: Option<String>,
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

/// How to reach a registry.
#[derive(clap::Args)]
struct RegistryArgs {
    /// Speak plain HTTP to registries on loopback (127.0.0.0/8, ::1,
    /// localhost); any other registry gets HTTPS.
    #[arg(long)]
    plain_http: bool,
    /// Speak plain HTTP to this registry: HOST (any port) or HOST:PORT
    /// (repeatable).
    #[arg(long, value_name = "HOST[:PORT]", value_parser = oci::PlainHttp::parse_registry)]
    plain_http_registry: Vec<String>,
    /// PEM file of CA certificates to trust besides the system's.
    #[arg(long, value_name = "FILE")]
    ca_file: Option<PathBuf>,
    /// User for basic auth; the password is read from stdin.
    #[arg(long, value_name = "USER", requires = "password_stdin")]
    username: Option<String>,
    /// Read the password (one line) from stdin.
    #[arg(long, requires = "username")]
    password_stdin: bool,
    /// Docker config.json with registry credentials [default: $DOCKER_CONFIG/config.json, else ~/.docker/config.json].
    #[arg(long, value_name = "FILE", conflicts_with = "username")]
    registry_config: Option<PathBuf>,
    /// Retries of a failed request that may pass (unreachable, time-out, 5xx).
    #[arg(long, value_name = "N", default_value_t = 3)]
    retries: u32,
    /// Time-out to connect and for each read, in seconds.
    #[arg(long, value_name = "SECONDS", default_value_t = 30)]
    registry_timeout: u64,
    /// Deadline of a whole pull (manifest, blobs, retries), in seconds
    /// [default: 60 + 2 × the run's timeout for `run` and the agent; 600 for
    /// `pull` and `inspect`].
    #[arg(long, value_name = "SECONDS", value_parser = clap::value_parser!(u64).range(1..))]
    pull_timeout: Option<u64>,
    /// Least rate of each request of a pull, in KiB/s averaged over
    /// --pull-rate-window; a slower one is cut and retried (0: no floor).
    #[arg(long, value_name = "KIB", default_value_t = 10)]
    pull_min_rate: u64,
    /// The window --pull-min-rate is averaged over, in seconds.
    #[arg(long, value_name = "SECONDS", default_value_t = 30, value_parser = clap::value_parser!(u64).range(1..))]
    pull_rate_window: u64,
    /// Largest payload file a pull accepts, in MiB.
    #[arg(long, value_name = "MIB", default_value_t = 256)]
    max_payload_mib: u64,
}

#[derive(clap::Args)]
struct RunArgs {
    /// The module: a component .wasm file, or an OCI reference
    /// (registry/repository:tag or @sha256:...), pulled into the node's
    /// module store and run by digest.
    module: String,
    /// A payload file for a module run from a file (repeatable); an
    /// artifact brings its own.
    #[arg(long, value_name = "NAME=FILE", value_parser = name_and_path)]
    payload: Vec<(String, PathBuf)>,
    #[command(flatten)]
    registry: RegistryArgs,
    /// Params: a JSON document, or @FILE to read one.
    #[arg(long, default_value = "{}")]
    params: String,
    /// Grant document (YAML or JSON). Without it the action gets no capability.
    #[arg(long, value_name = "FILE")]
    grants: Option<PathBuf>,
    /// Node policy bounding the grant (YAML or JSON); effective grant = grant ∩ policy.
    #[arg(long, value_name = "FILE")]
    policy: Option<PathBuf>,
    /// Where the host's filesystem is seen.
    #[arg(long, value_name = "DIR", default_value = "/")]
    host_root: PathBuf,
    /// D-Bus address of systemd's system bus (`services`); the host root's
    /// /run/dbus/system_bus_socket by default.
    #[arg(long, value_name = "ADDRESS")]
    system_bus: Option<String>,
    /// Wall-clock deadline of the run, in seconds (host calls included).
    #[arg(long, value_name = "SECONDS", default_value_t = 30.0)]
    timeout: f64,
    /// Linear memory limit, in MiB.
    #[arg(long, value_name = "MIB", default_value_t = 64)]
    memory: usize,
    /// Log limit, in KiB; lines past it are dropped and counted.
    #[arg(long, value_name = "KIB", default_value_t = 1024)]
    log_limit: usize,
    /// Limit of the effects listed, in KiB; effects past it are counted.
    #[arg(long, value_name = "KIB", default_value_t = 1024)]
    effects_limit: usize,
    /// Outcome limit (its message and facts), in KiB.
    #[arg(long, value_name = "KIB", default_value_t = 64)]
    outcome_limit: usize,
    /// Plan: reads are real, changes are only reported.
    #[arg(long)]
    plan: bool,
    /// Output format.
    #[arg(long, value_enum, default_value_t = Output::Text)]
    output: Output,
}

#[derive(Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Output {
    Text,
    Json,
}

fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => {
            let _ = e.print();
            return ExitCode::from(if e.use_stderr() { 2 } else { 0 });
        }
    };
    if let Command::Compile { spec } = &cli.command {
        return ExitCode::from(compile::child_main(spec));
    }
    let (format, default) = match &cli.command {
        Command::Agent(args) => (args.log_format, "info"),
        // A CLI run reports through its output; logs only for errors.
        _ => (LogFormat::Text, "error"),
    };
    hostaction_telemetry::init_logging(format, default);
    let output = match &cli.command {
        Command::Run(args) => args.output,
        Command::Crds | Command::New { .. } | Command::Agent(_) | Command::Compile { .. } => {
            Output::Text
        }
        Command::Inspect { output, .. }
        | Command::Push { output, .. }
        | Command::Pull { output, .. }
        | Command::Cache {
            command: CacheCommand::List { output } | CacheCommand::Gc { output, .. },
        } => *output,
    };
    match execute(cli) {
        Ok(code) => ExitCode::from(code),
        Err(e) => {
            if output == Output::Json {
                let json =
                    serde_json::json!({"error": {"kind": e.label(), "message": e.to_string()}});
                emit(&format!("{json}\n"));
            } else {
                eprintln!("hostaction: {e}");
            }
            ExitCode::from(e.exit_code())
        }
    }
}

/// Where the node cache keeps what: precompiled code and the module store.
struct CacheDirs {
    compiled: Option<PathBuf>,
    store: PathBuf,
    max_bytes: u64,
    compiler: Compiler,
    max_module_bytes: u64,
}

impl CacheDirs {
    fn store(&self, registry: Option<&RegistryArgs>) -> Result<ModuleStore, Error> {
        let mut store = ModuleStore::open(&self.store, self.compiled.clone(), self.max_bytes)?;
        if let Some(args) = registry {
            store.set_limits(SizeLimits {
                payload_file_bytes: args.max_payload_mib.saturating_mul(1 << 20),
                module_bytes: self.max_module_bytes,
                ..SizeLimits::default()
            });
        }
        Ok(store)
    }

    fn runtime(&self, host_root: PathBuf, system_bus: Option<String>) -> Result<Runtime, Error> {
        Runtime::new(RuntimeConfig {
            host_root,
            cache_dir: self.compiled.clone(),
            system_bus,
            compiler: self.compiler.clone(),
            max_module_bytes: self.max_module_bytes,
        })
    }
}

fn execute(cli: Cli) -> Result<u8, Error> {
    let root = cli
        .cache_dir
        .or_else(hostaction_runtime::engine::default_cache_dir)
        .unwrap_or_else(|| PathBuf::from("/var/cache/hostaction"));
    // Always in a bounded child process (see engine/compile.rs): this very
    // binary, even if the file it came from was replaced since.
    let compiler = Compiler::Child {
        program: PathBuf::from("/proc/self/exe"),
        limits: CompileLimits {
            memory_bytes: cli.compile_memory_mib.saturating_mul(1 << 20),
            timeout: seconds("compile-timeout", cli.compile_timeout)?,
            threads: cli.compile_threads.max(1),
        },
    };
    let dirs = CacheDirs {
        compiled: (!cli.no_cache).then(|| root.join("compiled")),
        store: root.join("modules"),
        max_bytes: cli.cache_max_mib.saturating_mul(1 << 20),
        compiler,
        max_module_bytes: match &cli.command {
            Command::Agent(args) => args.max_module_mib.saturating_mul(1 << 20),
            _ => MAX_MODULE_BYTES,
        },
    };
    match cli.command {
        Command::Inspect {
            module,
            registry,
            output,
        } => {
            let runtime = dirs.runtime(PathBuf::from("/"), None)?;
            let (module, _) = load(&runtime, &dirs, &module, &registry, None)?;
            print_inspect(&module, output);
            Ok(0)
        }
        Command::Run(args) => run(args, &dirs),
        Command::Push {
            module,
            reference,
            payload,
            annotation,
            registry,
            output,
        } => {
            // Load it first: only a runnable hostaction component is pushed.
            let runtime = dirs.runtime(PathBuf::from("/"), None)?;
            let loaded = runtime.load_file(&module)?;
            if let Some(why) = loaded.unrunnable() {
                return Err(Error::BadModule(why.to_owned()));
            }
            let bytes = std::fs::read(&module)
                .map_err(|e| Error::BadModule(format!("{}: {e}", module.display())))?;
            let request = PushRequest {
                module: bytes,
                imports: loaded.imports.iter().map(|i| i.name.clone()).collect(),
                exports: loaded.exports.clone(),
                payload,
                annotations: annotation.into_iter().collect(),
            };
            let pushed = Registry::new(registry.options()?)?.push(&reference, &request)?;
            match output {
                Output::Json => emit(&format!("{:#}\n", serde_json::json!(pushed))),
                Output::Text => emit(&format!("{}\n", pushed.reference)),
            }
            Ok(0)
        }
        Command::Pull {
            reference,
            registry,
            output,
        } => {
            let store = dirs.store(Some(&registry))?;
            let artifact = Registry::new(registry.options()?)?.pull(&reference, &store)?;
            match output {
                Output::Json => emit(&format!("{:#}\n", artifact_json(&reference, &artifact))),
                Output::Text => emit(&format!("{}\n", artifact.digest)),
            }
            Ok(0)
        }
        Command::Agent(args) => agent(args, &dirs),
        Command::Compile { .. } => Ok(0),
        Command::New { lang, name, dir } => {
            let dir = dir.unwrap_or_else(|| PathBuf::from(&name));
            let written = crate::scaffold::create(lang, &name, &dir)?;
            emit(&format!(
                "wrote {} files to {}\nnext: its README.md says how to build, inspect, run and push it\n",
                written.len(),
                dir.display()
            ));
            Ok(0)
        }
        Command::Crds => {
            let yaml = hostaction_crds::crds_yaml()
                .map_err(|e| Error::Host(format!("rendering the CRDs: {e}")))?;
            emit(&yaml);
            Ok(0)
        }
        Command::Cache { command } => {
            let store = dirs.store(None)?;
            match command {
                CacheCommand::List { output } => {
                    let listed = store.list()?;
                    let mut out = String::new();
                    if output == Output::Json {
                        outln!(out, "{:#}", serde_json::json!(listed));
                    }
                    for a in listed.iter().filter(|_| output == Output::Text) {
                        outln!(
                            out,
                            "{}  {:>10} bytes  payload: {}",
                            a.digest,
                            a.bytes,
                            if a.payload.is_empty() {
                                "-".into()
                            } else {
                                a.payload.join(",")
                            }
                        );
                    }
                    emit(&out);
                }
                CacheCommand::Gc { max_mib, output } => {
                    let max = max_mib.map_or(dirs.max_bytes, |m| m.saturating_mul(1 << 20));
                    let collected = store.collect(max)?;
                    match output {
                        Output::Json => emit(&format!("{:#}\n", serde_json::json!(collected))),
                        Output::Text => emit(&format!(
                            "removed {} artifacts, freed {} bytes, {} bytes kept\n",
                            collected.removed.len(),
                            collected.freed_bytes,
                            collected.kept_bytes
                        )),
                    }
                }
            }
            Ok(0)
        }
    }
}

fn agent(args: AgentArgs, dirs: &CacheDirs) -> Result<u8, Error> {
    use hostaction_agent::{Loader, static_dir::StaticAgent};
    let interval = seconds("interval", args.interval)?;
    let runtime = dirs.runtime(args.host_root.clone(), args.system_bus.clone())?;
    let registry = Registry::new(args.registry.options()?)?;
    let store = dirs.store(Some(&args.registry))?;
    let policy = hostaction_agent::node_policy(args.policy.as_deref(), args.unbounded_grants)?;
    let Some(manifests) = args.manifests.clone() else {
        return cluster_agent(args, dirs, runtime, registry, store, policy);
    };
    let agent = StaticAgent {
        loader: Loader {
            runtime: &runtime,
            registry: &registry,
            store: &store,
        },
        dir: manifests,
        state_path: args
            .state
            .clone()
            .unwrap_or_else(|| dirs.store.with_file_name("static-state.json")),
        policy,
        labels: args.node_labels.into_iter().collect(),
    };
    if args.once {
        let pass = agent.pass()?;
        return Ok(if pass.all_succeeded { 0 } else { 1 });
    }
    agent.watch(interval)
}

/// `hostaction agent --node-name`: runs until SIGTERM.
fn cluster_agent(
    args: AgentArgs,
    dirs: &CacheDirs,
    runtime: Runtime,
    registry: Registry,
    store: ModuleStore,
    policy: Option<Grant>,
) -> Result<u8, Error> {
    use hostaction_agent::cluster::ClusterAgent;
    use hostaction_agent::metrics::AgentMetrics;
    use hostaction_telemetry::{serve_metrics, shutdown_signal};
    let node_name = args.node_name.clone().unwrap_or_default();
    let mark_running_after = seconds("mark-running-after", args.mark_running_after)?;
    let tokio = tokio::runtime::Runtime::new().map_err(|e| Error::Host(format!("tokio: {e}")))?;
    // Held here so that they are dropped last, outside the async runtime:
    // each owns a tokio runtime of its own, which must not be dropped inside
    // another (a panic, exit 101, on every SIGTERM).
    let (runtime, registry, store) = (Arc::new(runtime), Arc::new(registry), Arc::new(store));
    let stopped = tokio.block_on(async {
        let mut metrics_registry = prometheus_client::registry::Registry::default();
        let metrics = AgentMetrics::register(&mut metrics_registry);
        serve_metrics(args.metrics_addr, metrics_registry)
            .await
            .map_err(Error::Host)?;
        let client = kube::Client::try_default()
            .await
            .map_err(|e| Error::Host(format!("kubernetes API: {e}")))?;
        let agent = Arc::new(ClusterAgent {
            client,
            node_name,
            runtime: runtime.clone(),
            registry: registry.clone(),
            store: store.clone(),
            policy,
            journal: args
                .state
                .clone()
                .unwrap_or_else(|| dirs.store.with_file_name("agent-runs")),
            mark_running_after,
            metrics,
        });
        tracing::info!(node = %agent.node_name, "agent starting");
        agent.run(shutdown_signal()).await?;
        Ok(0)
    });
    // A run still going past the shutdown grace keeps its thread: the
    // process does not wait for it (the run journal brings it back).
    tokio.shutdown_timeout(Duration::from_millis(100));
    drop((runtime, registry, store));
    stopped
}

impl RegistryArgs {
    fn options(&self) -> Result<RegistryOptions, Error> {
        let credentials = if let Some(username) = &self.username {
            let mut password = String::new();
            std::io::stdin()
                .read_line(&mut password)
                .map_err(|e| Error::BadParams(format!("--password-stdin: {e}")))?;
            Credentials::Basic {
                username: username.clone(),
                password: password.trim_end_matches(['\r', '\n']).to_owned(),
            }
        } else if let Some(file) = &self.registry_config {
            Credentials::DockerConfigFile(file.clone())
        } else {
            Credentials::DockerConfig
        };
        Ok(RegistryOptions {
            credentials,
            plain_http: self.plain_http,
            plain_http_registries: self.plain_http_registry.clone(),
            ca_file: self.ca_file.clone(),
            retries: self.retries,
            timeout: Duration::from_secs(self.registry_timeout.max(1)),
            progress: true,
            pull_timeout: self.pull_timeout.map(Duration::from_secs),
            min_rate: self.pull_min_rate.saturating_mul(1 << 10),
            rate_window: Duration::from_secs(self.pull_rate_window),
            ..RegistryOptions::default()
        })
    }
}

/// Loads a module from a file or, for an OCI reference, from the module
/// store (pulling it by digest first if the store lacks it, within a
/// deadline tied to `run_timeout` when it is for a run).
fn load(
    runtime: &Runtime,
    dirs: &CacheDirs,
    module: &str,
    registry: &RegistryArgs,
    run_timeout: Option<Duration>,
) -> Result<(Arc<LoadedModule>, Option<StoredArtifact>), Error> {
    if !oci::is_reference(module) {
        return Ok((runtime.load_file(module.as_ref())?, None));
    }
    let store = dirs.store(Some(registry))?;
    let registry = Registry::new(registry.options()?)?;
    hostaction_agent::Loader {
        runtime,
        registry: &registry,
        store: &store,
    }
    .load(module, run_timeout)
}

fn artifact_json(reference: &str, artifact: &StoredArtifact) -> serde_json::Value {
    serde_json::json!({
        "reference": reference,
        "digest": artifact.digest,
        "moduleDigest": artifact.module_digest,
        "payload": artifact.payload.files().iter().map(|f| serde_json::json!({
            "name": f.name, "size": f.size, "digest": f.digest,
        })).collect::<Vec<_>>(),
        "annotations": artifact.annotations,
    })
}

/// A flag's positive number of seconds.
fn seconds(flag: &str, value: f64) -> Result<Duration, Error> {
    hostaction_telemetry::seconds(flag, value).map_err(Error::BadParams)
}

fn name_and_path(arg: &str) -> Result<(String, PathBuf), String> {
    match arg.split_once('=') {
        Some((name, path)) if !name.is_empty() && !path.is_empty() => {
            Ok((name.to_owned(), PathBuf::from(path)))
        }
        _ => Err(format!("{arg:?}: expected NAME=FILE")),
    }
}

fn key_and_value(arg: &str) -> Result<(String, String), String> {
    match arg.split_once('=') {
        Some((key, value)) if !key.is_empty() => Ok((key.to_owned(), value.to_owned())),
        _ => Err(format!("{arg:?}: expected KEY=VALUE")),
    }
}

fn run(args: RunArgs, dirs: &CacheDirs) -> Result<u8, Error> {
    let params = match args.params.strip_prefix('@') {
        Some(file) => {
            std::fs::read_to_string(file).map_err(|e| Error::BadParams(format!("{file}: {e}")))?
        }
        None => args.params.clone(),
    };
    let grant = match &args.grants {
        Some(path) => Grant::from_file(path, "grant")?,
        None => Grant::default(),
    };
    let policy = args
        .policy
        .as_deref()
        .map(|p| Grant::from_file(p, "policy"))
        .transpose()?;
    let timeout = seconds("timeout", args.timeout)?;
    let bytes = |flag: &str, n: usize, unit: usize| {
        n.checked_mul(unit)
            .ok_or_else(|| Error::BadParams(format!("--{flag} {n}: too large")))
    };
    let limits = Limits {
        memory_bytes: bytes("memory", args.memory, 1 << 20)?,
        timeout,
        log_bytes: bytes("log-limit", args.log_limit, 1 << 10)?,
        effects_bytes: bytes("effects-limit", args.effects_limit, 1 << 10)?,
        output_bytes: bytes("outcome-limit", args.outcome_limit, 1 << 10)?,
    };
    let effective = EffectiveGrant::new(&grant, policy.as_ref())?;
    let runtime = dirs.runtime(args.host_root.clone(), args.system_bus.clone())?;
    let (module, artifact) = load(&runtime, dirs, &args.module, &args.registry, Some(timeout))?;
    let payload = match &artifact {
        Some(_) if !args.payload.is_empty() => {
            return Err(Error::BadParams(
                "--payload is for a module run from a file; an artifact brings its own".into(),
            ));
        }
        Some(artifact) => artifact.payload.clone(),
        None => Payload::from_files(&args.payload)?,
    };
    let mut request = RunRequest::new(params, effective);
    request.mode = if args.plan { Mode::Plan } else { Mode::Apply };
    request.limits = limits;
    request.payload = Arc::new(payload);
    let report = runtime.run(&module, request)?;
    match args.output {
        Output::Json => {
            let mut json = serde_json::json!({
                "module": {"digest": module.digest, "source": module.source, "loadUs": module.load_us, "compile": module.compile},
                "hostRoot": args.host_root,
                "report": report,
            });
            match &artifact {
                Some(a) => json["module"]["artifact"] = artifact_json(&args.module, a),
                None => json["module"]["path"] = serde_json::json!(args.module),
            }
            emit(&format!("{json:#}\n"));
        }
        Output::Text => print_report(&args.module, artifact.as_ref(), &module, &report),
    }
    Ok(report.status.exit_code())
}

/// Prints a run's report as text. Every string from the guest (or made
/// from what it passed) goes through [`printable`]: its escape sequences
/// are shown, not obeyed.
fn print_report(
    name: &str,
    artifact: Option<&StoredArtifact>,
    module: &LoadedModule,
    report: &RunReport,
) {
    let mut out = String::new();
    let name = printable(name);
    match artifact {
        Some(a) => outln!(
            out,
            "action   {name} ({}, module {})",
            a.digest,
            module.digest
        ),
        None => outln!(out, "action   {name} ({})", module.digest),
    }
    let mode = if report.mode == Mode::Plan {
        " (plan)"
    } else {
        ""
    };
    outln!(
        out,
        "status   {}{mode}",
        printable(&report.status.to_string())
    );
    if let Some(outcome) = &report.outcome {
        outln!(
            out,
            "outcome  changed={} {}",
            outcome.changed,
            printable(&outcome.message)
        );
        for (k, v) in &outcome.facts {
            outln!(out, "  fact   {} = {}", printable(k), printable(v));
        }
    }
    if report.effect_count() == 0 {
        outln!(out, "changes  none");
    } else {
        outln!(out, "changes  {}", report.effect_count());
        for e in &report.effects {
            let planned = if e.applied { "" } else { " [planned]" };
            outln!(
                out,
                "  {} {} {} ({}){planned}",
                e.capability,
                e.action,
                printable(&e.target),
                printable(&e.detail)
            );
        }
        if report.effects_dropped > 0 {
            outln!(
                out,
                "  [{} more not listed: past the effects limit]",
                report.effects_dropped
            );
        }
    }
    if !report.log.is_empty() {
        outln!(out, "log");
        for line in &report.log {
            outln!(out, "  {:<5} {}", line.level, printable(&line.message));
        }
    }
    if report.log_dropped_bytes > 0 {
        outln!(
            out,
            "  [log truncated: {} bytes dropped]",
            report.log_dropped_bytes
        );
    }
    outln!(
        out,
        "memory   {:.1} MiB of linear memory",
        report.memory_bytes as f64 / f64::from(1 << 20)
    );
    let t = &report.timing;
    outln!(
        out,
        "timing   load {} µs ({}), instantiate {} µs, run {} µs, total {} µs",
        module.load_us,
        match (module.source, module.compile) {
            (LoadSource::Compiled, Some(c)) => format!(
                "compiled by a process that peaked at {:.0} MiB",
                c.peak_rss_bytes as f64 / f64::from(1 << 20)
            ),
            (LoadSource::Compiled, None) => "compiled".to_owned(),
            (LoadSource::DiskCache, _) => "precompiled, from the disk cache".to_owned(),
            (LoadSource::Memory, _) => "in memory".to_owned(),
        },
        t.instantiate_us,
        t.run_us,
        t.total_us
    );
    emit(&out);
}

fn print_inspect(module: &LoadedModule, output: Output) {
    let mut out = String::new();
    if output == Output::Json {
        let json = serde_json::json!({
            "digest": module.digest,
            "imports": module.imports,
            "exports": module.exports,
            "runnable": module.unrunnable().is_none(),
            "unrunnableReason": module.unrunnable(),
        });
        outln!(out, "{json:#}");
        emit(&out);
        return;
    }
    outln!(out, "digest  {}", module.digest);
    outln!(out, "capabilities (need a grant):");
    let caps: Vec<_> = module
        .imports
        .iter()
        .filter_map(|i| match i.provided {
            Provided::Capability(c) => Some(format!("  {:<9} {}", c.name(), printable(&i.name))),
            _ => None,
        })
        .collect();
    if caps.is_empty() {
        outln!(out, "  none");
    }
    for line in caps {
        outln!(out, "{line}");
    }
    outln!(out, "always provided:");
    for i in &module.imports {
        match i.provided {
            Provided::Always => outln!(out, "  {}", printable(&i.name)),
            Provided::LockedDownWasi => {
                outln!(out, "  {} (locked-down WASI)", printable(&i.name));
            }
            _ => {}
        }
    }
    outln!(out, "exports:");
    for e in &module.exports {
        outln!(out, "  {}", printable(e));
    }
    if let Some(why) = module.unrunnable() {
        outln!(out, "not runnable: {}", printable(why));
    }
    emit(&out);
}

/// Writes the output at once; a closed pipe (`| head`) is not an error.
fn emit(out: &str) {
    use std::io::Write as _;
    let _ = std::io::stdout().lock().write_all(out.as_bytes());
}
