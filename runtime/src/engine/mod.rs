//! The engine: one wasmtime [`Engine`] per process, each module compiled once
//! per digest (by a bounded child process in the `hostaction` binary: see
//! [`compile`]; kept precompiled on disk and as an `InstancePre` in memory),
//! and a fresh [`Store`] per run with its limits. A component whose imports the
//! effective grant does not cover is refused before it is instantiated.
//!
//! A run's deadline holds wherever the guest is: in Wasm code (epoch
//! interruption), in a host call (each checks it, and bounds its own waits by
//! it), and in a WASI wait (a `wasi:io/poll` of our own that ends at it; see
//! [`crate::capabilities::wasi`] for why that shape, and not async calls).
//! Everything a guest can fill on the host side is charged to a budget
//! ([`Limits`]).

mod cache;
pub mod compile;
mod imports;
mod pool;
mod undo;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use sha2::{Digest, Sha256};
use wasmtime::component::{Component, Linker};
use wasmtime::{Config, Engine, Store, Trap};

pub use compile::{CompileLimits, CompileStats, Compiler};
pub use imports::{Import, Provided};
pub use pool::MAX_CONCURRENT_RUNS;

use crate::bindings::ActionPre;
use crate::bindings::hostaction::host::types;
use crate::capabilities::log::{LogLine, Source};
use crate::capabilities::payload::Payload;
use crate::capabilities::{self, RunEnd, RunSetup, RunState};
use crate::effects::Mode;
use crate::error::{Error, Result};
use crate::grant::EffectiveGrant;
use crate::report::{Outcome, RunReport, RunStatus, Timing};
use crate::undo::journal::{JournalDir, JournalLimits, JournalWriter, RunInfo};
use crate::undo::{JournalMode, OnFailure};
use cache::DiskCache;
use hostaction_distribution::StoredArtifact;

/// Largest module file the runtime reads, by default (the agent's default is
/// [`AGENT_MAX_MODULE_BYTES`]).
pub use hostaction_distribution::MAX_MODULE_BYTES;
/// Largest module an agent loads, by default (`--max-module-mib`): the
/// Python and JavaScript components built here are 12–18 MB.
pub const AGENT_MAX_MODULE_BYTES: u64 = 32 << 20;
/// How often the deadline clock ticks; a run ends at most this late.
const EPOCH_TICK: Duration = Duration::from_millis(10);

/// Per-run limits. Defaults: 64 MiB of linear memory, 30 s, 1 MiB of log,
/// 1 MiB of recorded effects, 64 KiB of outcome.
///
/// Every host-side structure a guest fills is charged to a budget in bytes,
/// with a fixed overhead per item so that empty items are not free: the log
/// (lines past it dropped and counted), the effects (likewise), the outcome
/// (past it the run ends as `limit exceeded`), and plan mode's record of what
/// it would have made ([`crate::capabilities::PLAN_BYTES`], likewise).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Linear memory, in bytes.
    pub memory_bytes: usize,
    /// Wall-clock deadline of the whole run, host calls included.
    pub timeout: Duration,
    /// Log bytes kept; the rest are counted as dropped.
    pub log_bytes: usize,
    /// Bytes of effects kept (targets and details, plus
    /// [`crate::effects::EFFECT_OVERHEAD`] each); the rest are counted.
    pub effects_bytes: usize,
    /// Bytes of the outcome's message and facts, plus [`FACT_OVERHEAD`] per
    /// fact (or of the failure message).
    pub output_bytes: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            memory_bytes: 64 << 20,
            timeout: Duration::from_secs(30),
            log_bytes: 1 << 20,
            effects_bytes: 1 << 20,
            output_bytes: 64 << 10,
        }
    }
}

/// What each fact costs against the outcome limit besides its key and
/// value, so that a guest returning empty facts cannot grow the report.
pub const FACT_OVERHEAD: usize = 64;

/// How a runtime is set up.
#[derive(Debug, Clone)]
pub struct RuntimeConfig {
    /// Where the host's filesystem is seen: `/` on the host, `/host` in a pod.
    pub host_root: PathBuf,
    /// Directory of precompiled modules; none keeps them in memory only.
    pub cache_dir: Option<PathBuf>,
    /// D-Bus address of systemd's system bus; none is the host root's
    /// `/run/dbus/system_bus_socket`.
    pub system_bus: Option<String>,
    /// Where modules are compiled: in this process (the default, unbounded)
    /// or in a bounded child process (what the `hostaction` binary does).
    pub compiler: Compiler,
    /// Largest module loaded, in bytes.
    pub max_module_bytes: u64,
    /// Directory of the runs' undo journals; none keeps each run's in a
    /// temporary file (rollback works, `undo` and crash recovery do not).
    pub journal_dir: Option<PathBuf>,
    /// How much the journals may hold.
    pub journal_limits: JournalLimits,
}

impl Default for RuntimeConfig {
    fn default() -> Self {
        Self {
            host_root: PathBuf::from("/"),
            cache_dir: default_cache_dir(),
            system_bus: None,
            compiler: Compiler::InProcess,
            max_module_bytes: MAX_MODULE_BYTES,
            journal_dir: None,
            journal_limits: JournalLimits::default(),
        }
    }
}

/// The settings that decide the code Cranelift makes. The runtime's engine
/// and the compile child's are both made from them, so the child's code
/// loads in the runtime (wasmtime checks these settings on load, and the
/// disk cache's key hashes them). The instance allocator, which the runtime
/// adds, is not among them.
fn compile_config() -> Config {
    let mut wasm = Config::new();
    wasm.wasm_component_model(true).epoch_interruption(true);
    wasm
}

/// `$HOSTACTION_CACHE_DIR`, else `$XDG_CACHE_HOME/hostaction`, else
/// `~/.cache/hostaction`, else `/var/cache/hostaction`.
pub fn default_cache_dir() -> Option<PathBuf> {
    let env = |k| {
        std::env::var_os(k)
            .filter(|v| !v.is_empty())
            .map(PathBuf::from)
    };
    Some(
        env("HOSTACTION_CACHE_DIR")
            .or_else(|| env("XDG_CACHE_HOME").map(|d| d.join("hostaction")))
            .or_else(|| env("HOME").map(|d| d.join(".cache/hostaction")))
            .unwrap_or_else(|| PathBuf::from("/var/cache/hostaction")),
    )
}

/// Where a loaded module's compiled code came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum LoadSource {
    /// Compiled now (and written to the disk cache).
    Compiled,
    /// Loaded precompiled from the disk cache.
    DiskCache,
    /// Already loaded in this process.
    Memory,
}

/// A module ready to run: compiled, its imports classified, pre-instantiated.
pub struct LoadedModule {
    /// `sha256:<hex>` of the module's bytes.
    pub digest: String,
    /// What it imports, each with what provides it.
    pub imports: Vec<Import>,
    /// The names it exports.
    pub exports: Vec<String>,
    /// Where the compiled code came from.
    pub source: LoadSource,
    /// Time to load it, in microseconds.
    pub load_us: u64,
    /// What compiling it in a child process cost, when it was compiled so
    /// now.
    pub compile: Option<CompileStats>,
    /// Pre-instantiated, or why it cannot run (a wrong export, say).
    pre: std::result::Result<ActionPre<RunState>, String>,
}

/// One run to do.
#[derive(Debug, Clone)]
pub struct RunRequest {
    /// The params, a JSON document.
    pub params: String,
    /// What the run may do.
    pub grant: Arc<EffectiveGrant>,
    /// Apply or plan.
    pub mode: Mode,
    /// The run's limits.
    pub limits: Limits,
    /// The files shipped with the action (its artifact's payload).
    pub payload: Arc<Payload>,
    /// The run's id (none: a new one); its journal's name.
    pub run_id: Option<String>,
    /// Who starts it (the agent: its HostAction's uid), kept in its journal.
    pub owner: Option<String>,
    /// Whether it keeps an undo journal.
    pub journal: JournalMode,
    /// What a failure does with the changes made.
    pub on_failure: OnFailure,
}

impl RunRequest {
    /// A run in apply mode with default limits.
    pub fn new(params: impl Into<String>, grant: EffectiveGrant) -> Self {
        Self {
            params: params.into(),
            grant: Arc::new(grant),
            mode: Mode::Apply,
            limits: Limits::default(),
            payload: Arc::default(),
            run_id: None,
            owner: None,
            journal: JournalMode::default(),
            on_failure: OnFailure::default(),
        }
    }
}

/// The per-process runtime.
pub struct Runtime {
    engine: Engine,
    linker: Linker<RunState>,
    /// What the capabilities hold for the runtime's life (host root, bus).
    host: capabilities::Backends,
    cache: Option<DiskCache>,
    loaded: Mutex<HashMap<String, Arc<LoadedModule>>>,
    ticker_stop: Arc<AtomicBool>,
    slots: pool::RunSlots,
    compiler: Compiler,
    max_module_bytes: u64,
    journals: Option<JournalDir>,
}

impl Runtime {
    /// Creates the engine, links the capabilities, opens the host root and the
    /// cache directory, and starts the deadline clock.
    pub fn new(config: RuntimeConfig) -> Result<Self> {
        let mut wasm = compile_config();
        wasm.allocation_strategy(pool::allocation_strategy());
        let engine = Engine::new(&wasm).map_err(|e| Error::Host(format!("engine: {e:#}")))?;
        let mut linker = Linker::new(&engine);
        capabilities::add_to_linker(&mut linker)
            .map_err(|e| Error::Host(format!("linking capabilities: {e:#}")))?;
        let host = capabilities::Backends::open(&config.host_root, config.system_bus.clone())
            .map_err(|e| Error::io(format!("host root {}", config.host_root.display()), e))?;
        let cache = match config.cache_dir {
            Some(dir) => Some(DiskCache::open(&dir, &engine)?),
            None => None,
        };
        let journals = match &config.journal_dir {
            Some(dir) => Some(JournalDir::open(dir, config.journal_limits)?),
            None => None,
        };
        let ticker_stop = Arc::new(AtomicBool::new(false));
        let (stop, ticking) = (Arc::clone(&ticker_stop), engine.clone());
        std::thread::Builder::new()
            .name("hostaction-epoch".into())
            .spawn(move || {
                while !stop.load(Ordering::Relaxed) {
                    std::thread::sleep(EPOCH_TICK);
                    ticking.increment_epoch();
                }
            })
            .map_err(|e| Error::io("starting the deadline clock", e))?;
        Ok(Self {
            engine,
            linker,
            host,
            cache,
            loaded: Mutex::new(HashMap::new()),
            ticker_stop,
            slots: pool::RunSlots::default(),
            compiler: config.compiler,
            max_module_bytes: config.max_module_bytes,
            journals,
        })
    }

    /// The host root this runtime resolves paths under.
    pub fn host_root(&self) -> &Path {
        self.host.root().path()
    }

    /// Reads and loads a module file.
    pub fn load_file(&self, path: &Path) -> Result<Arc<LoadedModule>> {
        let bad = |source| Error::ModuleFile {
            path: path.to_owned(),
            source,
        };
        let size = std::fs::metadata(path).map_err(bad)?.len();
        self.check_size(&path.display(), size)?;
        let bytes = std::fs::read(path).map_err(bad)?;
        self.load(&bytes)
    }

    /// Loads the component of an artifact from the module store (from
    /// memory, without reading it, when this process has it). Bytes that do
    /// not hash to the digest the manifest gives are refused.
    pub fn load_stored(&self, artifact: &StoredArtifact) -> Result<Arc<LoadedModule>> {
        use std::os::unix::fs::FileExt;
        if let Some(module) = self.loaded(&artifact.module_digest) {
            return Ok(module);
        }
        let path = artifact.module_path.display();
        self.check_size(&path, artifact.module_size)?;
        let mut bytes = vec![0; usize::try_from(artifact.module_size).unwrap_or(0)];
        artifact
            .module_file
            .read_exact_at(&mut bytes, 0)
            .map_err(|e| Error::io(format!("module store: {path}"), e))?;
        let digest = format!("sha256:{}", hex::encode(Sha256::digest(&bytes)));
        if digest != artifact.module_digest {
            return Err(Error::Host(format!(
                "module store: {path} has digest {digest}, not {}: the store was altered",
                artifact.module_digest
            )));
        }
        self.load(&bytes)
    }

    fn check_size(&self, name: &dyn std::fmt::Display, size: u64) -> Result<()> {
        if size > self.max_module_bytes {
            return Err(Error::BadModule(format!(
                "{name} is {size} bytes; the limit is {}",
                self.max_module_bytes
            )));
        }
        Ok(())
    }

    /// A module this process has loaded, by digest: how the agent runs a
    /// module it already holds (nodes run by digest), without hashing again.
    pub fn loaded(&self, digest: &str) -> Option<Arc<LoadedModule>> {
        let start = Instant::now();
        let loaded = self.lock_loaded().ok()?;
        let module = loaded.get(digest)?;
        Some(Arc::new(LoadedModule {
            digest: module.digest.clone(),
            imports: module.imports.clone(),
            exports: module.exports.clone(),
            source: LoadSource::Memory,
            load_us: micros(start),
            compile: None,
            pre: module.pre.clone(),
        }))
    }

    /// Loads a module: from memory if this process has it, else precompiled
    /// from the disk cache, else compiled (and cached) by the runtime's
    /// [`Compiler`].
    pub fn load(&self, bytes: &[u8]) -> Result<Arc<LoadedModule>> {
        let start = Instant::now();
        self.check_size(&"the module", bytes.len() as u64)?;
        check_header(bytes)?;
        let digest = format!("sha256:{}", hex::encode(Sha256::digest(bytes)));
        if let Some(mut module) = self.loaded(&digest) {
            if let Some(m) = Arc::get_mut(&mut module) {
                m.load_us = micros(start);
            }
            return Ok(module);
        }
        let cached = self
            .cache
            .as_ref()
            .and_then(|c| c.load(&self.engine, &digest));
        let (component, source, compile) = match cached {
            Some(component) => (component, LoadSource::DiskCache, None),
            None => {
                let (component, stats) = self.compile(bytes, &digest)?;
                (component, LoadSource::Compiled, stats)
            }
        };
        let imports = imports::classify(&self.engine, &component);
        let unknown: Vec<String> = imports
            .iter()
            .filter_map(|i| match &i.provided {
                Provided::No(why) => Some(format!("{} ({why})", i.name)),
                _ => None,
            })
            .collect();
        if !unknown.is_empty() {
            return Err(Error::BadModule(format!(
                "it imports what hostaction does not provide: {}",
                unknown.join("; ")
            )));
        }
        let exports = component
            .component_type()
            .exports(&self.engine)
            .map(|(name, _)| name.to_owned())
            .collect();
        let pre = self
            .linker
            .instantiate_pre(&component)
            .and_then(ActionPre::new)
            .map_err(|e| {
                format!(
                    "it does not export `run: func(params: string) -> result<outcome, string>` \
                     of hostaction:host@0.1.0: {e:#}"
                )
            });
        let module = Arc::new(LoadedModule {
            digest: digest.clone(),
            imports,
            exports,
            source,
            load_us: micros(start),
            compile,
            pre,
        });
        self.lock_loaded()?.insert(digest, Arc::clone(&module));
        Ok(module)
    }

    /// Compiles a module the disk cache lacks: in this process, or in a
    /// bounded child that writes the code into the disk cache (a private
    /// temporary one without a cache), loaded from there as precompiled.
    fn compile(&self, bytes: &[u8], digest: &str) -> Result<(Component, Option<CompileStats>)> {
        let Compiler::Child { program, limits } = &self.compiler else {
            let component = Component::new(&self.engine, bytes)
                .map_err(|e| Error::BadModule(format!("not a valid component: {e:#}")))?;
            if let Some(cache) = &self.cache {
                cache.store(digest, &component);
            }
            return Ok((component, None));
        };
        let scratch;
        let cache = match &self.cache {
            Some(cache) => cache,
            None => {
                let dir = tempfile::Builder::new()
                    .prefix("hostaction-compile-")
                    .tempdir()
                    .map_err(|e| {
                        Error::io(
                            "compiling the module: a temporary directory for its code",
                            e,
                        )
                    })?;
                scratch = (DiskCache::open(dir.path(), &self.engine)?, dir);
                &scratch.0
            }
        };
        let out = cache.path(digest);
        let stats = compile::in_child(program, limits, bytes, digest, &out)?;
        // The code is mapped now: a temporary directory may go.
        let component = cache.load(&self.engine, digest).ok_or_else(|| {
            Error::Host(format!(
                "compiling the module: the compiler process wrote no code this engine can \
                 load at {}",
                out.display()
            ))
        })?;
        Ok((component, Some(stats)))
    }

    fn lock_loaded(&self) -> Result<std::sync::MutexGuard<'_, HashMap<String, Arc<LoadedModule>>>> {
        self.loaded
            .lock()
            .map_err(|_| Error::Host("module table lock poisoned".into()))
    }

    /// Runs a loaded module: checks its imports against the effective grant,
    /// then instantiates it in a fresh store and calls `run`.
    pub fn run(&self, module: &LoadedModule, request: RunRequest) -> Result<RunReport> {
        let start = Instant::now();
        let refused: Vec<String> = module
            .imports
            .iter()
            .filter_map(|i| match i.provided {
                Provided::Capability(c) => request.grant.capability(c).err(),
                _ => None,
            })
            .collect();
        if !refused.is_empty() {
            return Err(Error::Refused(refused));
        }
        request.grant.check_host(self.host.root())?;
        let pre = module
            .pre
            .as_ref()
            .map_err(|e| Error::BadModule(e.clone()))?;
        serde_json::from_str::<serde::de::IgnoredAny>(&request.params)
            .map_err(|e| Error::BadParams(format!("params are not a JSON document: {e}")))?;

        let limits = request.limits;
        let deadline = start.checked_add(limits.timeout).ok_or_else(|| {
            Error::BadParams(format!("timeout {:?} is too large", limits.timeout))
        })?;
        let run_id = match request.run_id {
            Some(id) => {
                crate::undo::journal::check_run_id(&id)?;
                id
            }
            None => crate::undo::journal::new_run_id(),
        };
        let journal =
            (request.mode == Mode::Apply && request.journal != JournalMode::Off).then(|| {
                JournalWriter::new(
                    self.journals.clone(),
                    RunInfo {
                        run_id: run_id.clone(),
                        digest: module.digest.clone(),
                        owner: request.owner.clone(),
                        started_ms: crate::undo::journal::now_ms(),
                        host: crate::undo::journal::HostId::of(self.host.root().path()),
                    },
                    request.journal,
                )
            });
        let state = RunState::new(
            &self.host,
            RunSetup {
                grant: request.grant,
                mode: request.mode,
                payload: request.payload,
                deadline,
                memory_bytes: limits.memory_bytes,
                log_bytes: limits.log_bytes,
                effects_bytes: limits.effects_bytes,
                journal,
            },
        );
        let slot = self.slots.take()?;
        let mut store = Store::new(&self.engine, state);
        capabilities::install_limiter(&mut store);
        let fuel = hostcall_fuel(&limits);
        store.set_hostcall_fuel(fuel);
        store.set_max_component_handles(capabilities::MAX_RESOURCES);
        store.set_epoch_deadline(ticks(limits.timeout));
        store.epoch_deadline_trap();

        let instance = pre.instantiate(&mut store);
        let instantiated = Instant::now();
        let result = instance.and_then(|i| i.call_run(&mut store, &request.params));
        let ran = Instant::now();

        let status_and_outcome = match result {
            Ok(Ok(outcome)) => check_output(outcome, limits.output_bytes),
            Ok(Err(message)) => (
                RunStatus::Failed(truncate(message, limits.output_bytes)),
                None,
            ),
            Err(trap) => {
                let ended = trap.downcast_ref::<RunEnd>();
                let status = if let Some(hit) = store.data().limit_hit() {
                    RunStatus::LimitExceeded(hit.to_owned())
                } else if let Some(RunEnd::Limit(why)) = ended {
                    RunStatus::LimitExceeded(why.clone())
                } else if format!("{trap:#}").contains(HOSTCALL_FUEL_EXHAUSTED) {
                    RunStatus::LimitExceeded(format!(
                        "the action passed more than {} MiB to the host at once (in a call's \
                         arguments or in its outcome)",
                        fuel >> 20
                    ))
                } else if capabilities::RESOURCES_EXHAUSTED
                    .iter()
                    .any(|m| format!("{trap:#}").contains(m))
                {
                    RunStatus::LimitExceeded(format!(
                        "the action held more than {} resources at once (WASI pollables, \
                         streams, its own resources)",
                        capabilities::MAX_RESOURCES
                    ))
                } else if matches!(ended, Some(RunEnd::Deadline(_)))
                    || trap.downcast_ref::<Trap>() == Some(&Trap::Interrupt)
                    || ran >= deadline
                {
                    RunStatus::DeadlineExceeded(format!(
                        "the run did not finish within its {} s deadline",
                        limits.timeout.as_secs_f64()
                    ))
                } else {
                    RunStatus::Trapped(format!("{trap:#}"))
                };
                (status, None)
            }
        };
        let (status, outcome) = status_and_outcome;
        let memory_bytes = store.data().memory_used();
        let record = store.into_data().finish();
        // The store (and with it the instance) is gone: its slot is free.
        drop(slot);
        let (effects, log, log_dropped_bytes) =
            (record.effects, record.log, record.log_dropped_bytes);
        let (undoable, rollback) =
            self.end_journal(record.journal, &status, request.on_failure, request.journal)?;
        let status = match status {
            RunStatus::Trapped(trap) => {
                RunStatus::Trapped(with_last_words(trap, &log, limits.output_bytes))
            }
            other => other,
        };
        Ok(RunReport {
            run_id,
            digest: module.digest.clone(),
            mode: request.mode,
            status,
            undoable,
            rollback,
            outcome,
            effects: effects.kept,
            effects_dropped: effects.dropped,
            log,
            log_dropped_bytes,
            memory_bytes,
            timing: Timing {
                instantiate_us: (instantiated - start).as_micros() as u64,
                run_us: (ran - instantiated).as_micros() as u64,
                total_us: micros(start),
            },
            provenance: None,
        })
    }
}

impl Drop for Runtime {
    fn drop(&mut self) {
        self.ticker_stop.store(true, Ordering::Relaxed);
    }
}

impl LoadedModule {
    /// Why this module cannot run at all, if it cannot (a wrong export).
    pub fn unrunnable(&self) -> Option<&str> {
        self.pre.as_ref().err().map(String::as_str)
    }
}

/// Tells a non-Wasm file and a core module from a component, with a hint.
fn check_header(bytes: &[u8]) -> Result<()> {
    match bytes.get(..8) {
        Some([0, b'a', b's', b'm', 1, 0, 0, 0]) => Err(Error::BadModule(
            "this is a core WebAssembly module, not a component; build for wasm32-wasip2 \
             or wrap it with `wasm-tools component new`"
                .into(),
        )),
        Some([0, b'a', b's', b'm', 0x0d, 0, 1, 0]) => Ok(()),
        Some([0, b'a', b's', b'm', ..]) => Err(Error::BadModule(
            "a WebAssembly binary of an unknown version (not a component of this engine)".into(),
        )),
        _ => Err(Error::BadModule(
            "not a WebAssembly file (it does not start with \\0asm)".into(),
        )),
    }
}

/// Converts the guest's outcome, failing the run when it exceeds the cap
/// (each fact counted with [`FACT_OVERHEAD`]).
fn check_output(outcome: types::Outcome, cap: usize) -> (RunStatus, Option<Outcome>) {
    let size = outcome.message.len()
        + outcome
            .facts
            .iter()
            .map(|f| f.key.len() + f.value.len() + FACT_OVERHEAD)
            .sum::<usize>();
    if size > cap {
        return (
            RunStatus::LimitExceeded(format!(
                "the outcome is {size} bytes ({} facts, each counted with {FACT_OVERHEAD} \
                 bytes of overhead); the outcome limit is {cap}",
                outcome.facts.len()
            )),
            None,
        );
    }
    let outcome = Outcome {
        changed: outcome.changed,
        message: outcome.message,
        facts: outcome
            .facts
            .into_iter()
            .map(|f| (f.key, f.value))
            .collect(),
    };
    (RunStatus::Succeeded, Some(outcome))
}

/// A trap alone says little about why (`unreachable` executed): the guest's
/// last lines on stderr or logged at error level — a Rust panic's message, the
/// end of a Python traceback, a C program's complaint before `abort()` — go in
/// front of it, so that the failure names the guest's own reason. Several
/// lines, since language runtimes print a line or two of their own after it.
fn with_last_words(trap: String, log: &[LogLine], cap: usize) -> String {
    let mut words: Vec<&str> = log
        .iter()
        .rev()
        .filter(|l| l.source == Source::Stderr || l.level == "error")
        .map(|l| l.message.trim())
        // Blank lines, and the hint Rust's panic handler always adds.
        .filter(|m| !m.is_empty() && !m.starts_with("note: run with `RUST_BACKTRACE=1`"))
        .take(LAST_WORDS)
        .collect();
    if words.is_empty() {
        return trap;
    }
    words.reverse();
    // The guest's words get half the room: the trap itself always stays.
    let words = truncate(words.join(" / "), cap / 2);
    truncate(format!("{words} ({trap})"), cap)
}

/// Lines of the guest's last words a trap's message carries.
const LAST_WORDS: usize = 3;

/// Cuts a guest-supplied message to `cap` bytes at a character boundary.
fn truncate(mut message: String, cap: usize) -> String {
    if message.len() > cap {
        let mut end = cap;
        while !message.is_char_boundary(end) {
            end -= 1;
        }
        message.truncate(end);
        message.push_str(" [truncated]");
    }
    message
}

/// What one transfer from the guest to the host (a call's arguments, the
/// outcome) may make the host allocate, counted by wasmtime as it lifts
/// (`Store::set_hostcall_fuel`), before anything is allocated: room for the
/// largest argument a capability takes (a file's contents) and for an
/// outcome at its limit. Without it, a list of empty facts costs the host
/// three times what it costs the guest (48 bytes each against 16), before the
/// outcome limit can look at it.
fn hostcall_fuel(limits: &Limits) -> usize {
    (capabilities::files::MAX_FILE_BYTES + (1 << 20))
        .max(limits.output_bytes.saturating_add(1 << 20))
}

/// How wasmtime 48 says a lift ran out of hostcall fuel (its error type is
/// private).
const HOSTCALL_FUEL_EXHAUSTED: &str = "fuel allocated for hostcalls has been exhausted";

fn ticks(timeout: Duration) -> u64 {
    u64::try_from(timeout.as_millis() / EPOCH_TICK.as_millis())
        .unwrap_or(u64::MAX - 1)
        .saturating_add(1)
}

fn micros(since: Instant) -> u64 {
    since.elapsed().as_micros() as u64
}
