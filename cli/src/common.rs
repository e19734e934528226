//! What several commands share: the node cache (global flags), how to reach
//! a registry, where the host is, loading a module, and writing output as
//! text or JSON.

use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use clap::ValueEnum;
use hostaction_distribution::{
    self as oci, Credentials, ModuleStore, Registry, RegistryOptions, SizeLimits, StoredArtifact,
};
use hostaction_runtime::engine::{CompileLimits, Compiler};
use hostaction_runtime::grant::{Grant, GrantDocument};
use hostaction_runtime::{Error, LoadedModule, Runtime, RuntimeConfig};
use serde::Serialize;

/// The node cache's flags (global: every command takes them).
#[derive(clap::Args)]
pub struct CacheOptions {
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
}

impl CacheOptions {
    /// The node cache these flags describe, loading modules of at most
    /// `max_module_bytes`.
    pub fn node_cache(&self, max_module_bytes: u64) -> Result<NodeCache, Error> {
        let root = self
            .cache_dir
            .clone()
            .or_else(hostaction_runtime::engine::default_cache_dir)
            .unwrap_or_else(|| PathBuf::from("/var/cache/hostaction"));
        // Always in a bounded child process (see engine/compile.rs): this very
        // binary, even if the file it came from was replaced since.
        let compiler = Compiler::Child {
            program: PathBuf::from("/proc/self/exe"),
            limits: CompileLimits {
                memory_bytes: self.compile_memory_mib.saturating_mul(1 << 20),
                timeout: seconds("compile-timeout", self.compile_timeout)?,
                threads: self.compile_threads.max(1),
            },
        };
        Ok(NodeCache {
            compiled: (!self.no_cache).then(|| root.join("compiled")),
            store: root.join("modules"),
            journals: root.join("undo"),
            max_bytes: self.cache_max_mib.saturating_mul(1 << 20),
            compiler,
            max_module_bytes,
        })
    }
}

/// Where the node cache keeps what: precompiled code and the module store.
pub struct NodeCache {
    compiled: Option<PathBuf>,
    /// The module store's directory.
    pub store: PathBuf,
    /// The module store's bound, in bytes.
    pub max_bytes: u64,
    /// The runs' undo journals.
    pub journals: PathBuf,
    compiler: Compiler,
    max_module_bytes: u64,
}

impl NodeCache {
    /// The module store, with the registry flags' size limits when given.
    pub fn store(&self, registry: Option<&RegistryArgs>) -> Result<ModuleStore, Error> {
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

    /// A runtime for this host (or for no host: `HostArgs::none()`).
    pub fn runtime(&self, host: &HostArgs) -> Result<Runtime, Error> {
        self.runtime_journaling_to(host, &self.journals)
    }

    /// [`Self::runtime`] with its undo journals in `journals`.
    pub fn runtime_journaling_to(
        &self,
        host: &HostArgs,
        journals: &std::path::Path,
    ) -> Result<Runtime, Error> {
        Runtime::new(RuntimeConfig {
            host_root: host.host_root.clone(),
            cache_dir: self.compiled.clone(),
            system_bus: host.system_bus.clone(),
            compiler: self.compiler.clone(),
            max_module_bytes: self.max_module_bytes,
            journal_dir: Some(journals.to_owned()),
            ..RuntimeConfig::default()
        })
    }

    /// Loads a module from a file or, for an OCI reference, from the module
    /// store (pulling it by digest first if the store lacks it, within a
    /// deadline tied to `run_timeout` when it is for a run).
    pub fn load(
        &self,
        runtime: &Runtime,
        module: &str,
        registry: &RegistryArgs,
        run_timeout: Option<Duration>,
        verify: &oci::Policy,
    ) -> Result<(Arc<LoadedModule>, Option<StoredArtifact>), Error> {
        if !oci::is_reference(module) && !verify.required() {
            return Ok((runtime.load_file(module.as_ref())?, None));
        }
        let store = self.store(Some(registry))?;
        let registry = Registry::new(registry.options()?)?;
        hostaction_agent::Loader {
            runtime,
            registry: &registry,
            store: &store,
        }
        .load(module, run_timeout, verify)
    }
}

/// Where the host is: the flags of the commands that act on it (`run`,
/// `agent`).
#[derive(clap::Args, Clone)]
pub struct HostArgs {
    /// Where the host's filesystem is seen.
    #[arg(long, value_name = "DIR", default_value = "/")]
    pub host_root: PathBuf,
    /// D-Bus address of systemd's system bus (`services`); the host root's
    /// /run/dbus/system_bus_socket by default.
    #[arg(long, value_name = "ADDRESS")]
    pub system_bus: Option<String>,
}

impl HostArgs {
    /// For commands that load modules but run none (`inspect`, `push`).
    pub fn none() -> Self {
        Self {
            host_root: PathBuf::from("/"),
            system_bus: None,
        }
    }
}

/// How to reach a registry.
#[derive(clap::Args)]
pub struct RegistryArgs {
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

impl RegistryArgs {
    /// The registry client's options; reads the password from stdin when
    /// `--password-stdin` says so.
    pub fn options(&self) -> Result<RegistryOptions, Error> {
        let credentials = if let Some(username) = &self.username {
            let mut password = String::new();
            std::io::stdin()
                .read_line(&mut password)
                .map_err(|source| Error::Input {
                    what: "--password-stdin".to_owned(),
                    source,
                })?;
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

/// Output format.
#[derive(Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Output {
    /// For people.
    Text,
    /// One JSON document (the field names are a public interface).
    Json,
}

/// Writes `value` as its JSON form or its text form (`Display`), at once.
pub fn print<T: Serialize + fmt::Display>(output: Output, value: &T) {
    let text = match output {
        Output::Json => match serde_json::to_string_pretty(value) {
            Ok(json) => json + "\n",
            Err(e) => {
                eprintln!("hostaction: writing the output: {e}");
                return;
            }
        },
        Output::Text => value.to_string(),
    };
    emit(&text);
}

/// Writes `text` to stdout at once; a closed pipe (`| head`) is not an
/// error (`print!` would panic).
pub fn emit(text: &str) {
    use std::io::Write as _;
    let _ = std::io::stdout().lock().write_all(text.as_bytes());
}

/// An error, as `--output json` reports it: `{"error": {"kind", "message"}}`.
#[derive(Serialize)]
pub struct ErrorOutput {
    error: ErrorBody,
}

#[derive(Serialize)]
struct ErrorBody {
    kind: &'static str,
    message: String,
}

impl From<&hostaction_agent::Error> for ErrorOutput {
    fn from(e: &hostaction_agent::Error) -> Self {
        Self {
            error: ErrorBody {
                kind: e.label(),
                message: e.to_string(),
            },
        }
    }
}

/// A stored artifact, as `pull` and `run` report it.
#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ArtifactOutput {
    /// The reference it was asked for by.
    pub reference: String,
    /// The manifest's digest.
    pub digest: String,
    module_digest: String,
    payload: Vec<PayloadFileOutput>,
    annotations: BTreeMap<String, String>,
}

#[derive(Serialize)]
struct PayloadFileOutput {
    name: String,
    size: u64,
    digest: String,
}

impl ArtifactOutput {
    /// What `artifact`, pulled as `reference`, holds.
    pub fn new(reference: &str, artifact: &StoredArtifact) -> Self {
        Self {
            reference: reference.to_owned(),
            digest: artifact.digest.clone(),
            module_digest: artifact.module_digest.clone(),
            payload: artifact
                .payload
                .files()
                .iter()
                .map(|f| PayloadFileOutput {
                    name: f.name.clone(),
                    size: f.size,
                    digest: f.digest.clone(),
                })
                .collect(),
            annotations: artifact.annotations.clone(),
        }
    }
}

impl fmt::Display for ArtifactOutput {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "{}", self.digest)
    }
}

/// A flag's positive number of seconds.
/// The grant (none: the empty grant) and the node policy, read and
/// validated as `run` and `inspect` both take them.
pub fn read_grants(
    grants: Option<&Path>,
    policy: Option<&Path>,
) -> Result<(Grant, Option<Grant>), Error> {
    let grant = match grants {
        Some(path) => Grant::from_file(path, "grant")?,
        None => Grant::default(),
    };
    let policy = policy.map(|p| Grant::from_file(p, "policy")).transpose()?;
    Ok((grant, policy))
}

pub fn seconds(flag: &str, value: f64) -> Result<Duration, Error> {
    hostaction_telemetry::seconds(flag, value).map_err(Error::BadParams)
}

/// `NAME=FILE` of `--payload`.
pub fn name_and_path(arg: &str) -> Result<(String, PathBuf), String> {
    match arg.split_once('=') {
        Some((name, path)) if !name.is_empty() && !path.is_empty() => {
            Ok((name.to_owned(), PathBuf::from(path)))
        }
        _ => Err(format!("{arg:?}: expected NAME=FILE")),
    }
}

/// `KEY=VALUE` of `--annotation` and `--node-label`.
pub fn key_and_value(arg: &str) -> Result<(String, String), String> {
    match arg.split_once('=') {
        Some((key, value)) if !key.is_empty() => Ok((key.to_owned(), value.to_owned())),
        _ => Err(format!("{arg:?}: expected KEY=VALUE")),
    }
}
