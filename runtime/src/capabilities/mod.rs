//! Host capabilities: one module per WIT interface of `hostaction:host`.
//!
//! Each capability checks its scope on every call, treats every argument as
//! hostile, and sends every mutation through [`crate::effects`]. Expected
//! failures go back to the guest as WIT `error` values ([`CapError`]); host
//! faults and the run's deadline become traps.

pub mod files;
pub mod log;
pub mod network;
pub mod payload;
pub mod services;
pub mod wasi;

use std::path::Path;
use std::sync::Arc;
use std::time::Instant;

use wasmtime::component::{HasData, ResourceTable};
use wasmtime::{ResourceLimiter, Store};

use crate::bindings::hostaction::host::types;
use crate::effects::{Effects, Mode, Recorded};
use crate::grant::EffectiveGrant;
use crate::host::HostRoot;
use crate::undo::journal::JournalWriter;
use log::LogLine;

/// An expected failure of a capability call, or a trap.
#[derive(Debug, thiserror::Error)]
pub enum CapError {
    /// The effective grant does not cover the call.
    #[error("permission denied: {0}")]
    PermissionDenied(String),
    /// A guest-supplied value was refused before anything was touched.
    #[error("invalid argument: {0}")]
    InvalidArgument(String),
    /// The named object does not exist.
    #[error("not found: {0}")]
    NotFound(String),
    /// The object exists in a shape the call will not replace.
    #[error("conflict: {0}")]
    Conflict(String),
    /// The host cannot do this.
    #[error("unsupported: {0}")]
    Unsupported(String),
    /// The call ran out of time.
    #[error("timeout: {0}")]
    Timeout(String),
    /// Any other host failure.
    #[error("io: {0}")]
    Io(String),
    /// Not an error value: the guest traps (host fault, deadline passed).
    #[error("{0}")]
    Trap(wasmtime::Error),
}

/// Why a host call ended the run: the trap's error, which the engine reads
/// to report the run as `deadline exceeded` or `limit exceeded`, not as a
/// trap.
#[derive(Debug, thiserror::Error)]
pub(crate) enum RunEnd {
    /// The run's wall-clock deadline passed (where: "during a host call").
    #[error("the run's deadline passed {0}")]
    Deadline(&'static str),
    /// A host-side budget of the run was used up (which, and how).
    #[error("{0}")]
    Limit(String),
}

/// What a run's store holds: each capability's own context, and what they
/// all share. Each capability is linked with a view that borrows its context
/// and the shared part ([`files::FilesView`], ...), so a capability sees only
/// its own state and the run's effects, deadline and limits.
pub struct RunState {
    pub(crate) shared: Shared,
    pub(crate) log: log::LogCtx,
    pub(crate) payload: payload::PayloadCtx,
    pub(crate) files: files::FilesCtx,
    pub(crate) network: network::NetworkCtx,
    pub(crate) services: services::ServicesCtx,
    pub(crate) wasi: wasi::WasiState,
}

/// What every capability of a run shares: its effects, its deadline and
/// its limits.
pub(crate) struct Shared {
    pub(crate) effects: Effects,
    pub(crate) deadline: Instant,
    pub(crate) limits: StoreLimits,
}

impl Shared {
    /// What a run starts with: no effects, nothing of its limits used.
    pub(crate) fn new(
        mode: Mode,
        effects_bytes: usize,
        deadline: Instant,
        memory_bytes: usize,
        journal: Option<JournalWriter>,
    ) -> Self {
        Self {
            effects: Effects::new(mode, effects_bytes, journal),
            deadline,
            limits: StoreLimits {
                memory_bytes,
                memory_used: 0,
                hit: None,
            },
        }
    }

    /// Fails the call with a trap once the run's wall-clock deadline has passed,
    /// so no host call runs past it.
    pub(crate) fn check_deadline(&self) -> Result<(), CapError> {
        if Instant::now() >= self.deadline {
            return Err(CapError::Trap(wasmtime::Error::new(RunEnd::Deadline(
                "during a host call",
            ))));
        }
        Ok(())
    }
}

/// The host backends the capabilities hold for the life of a runtime (its
/// process): the host root, held open, and the client of systemd's bus.
pub(crate) struct Backends {
    host_root: Arc<HostRoot>,
    systemd: Arc<services::systemd::Systemd>,
}

impl Backends {
    /// Opens the host root; `system_bus` is the D-Bus address of systemd's
    /// bus (none: the host root's `/run/dbus/system_bus_socket`).
    pub(crate) fn open(host_root: &Path, system_bus: Option<String>) -> std::io::Result<Self> {
        Ok(Self {
            host_root: Arc::new(HostRoot::open(host_root)?),
            systemd: Arc::new(services::systemd::Systemd::for_host(host_root, system_bus)),
        })
    }

    /// The host root, held open.
    pub(crate) fn root(&self) -> &HostRoot {
        &self.host_root
    }
}

/// What one run gets: its grant, its mode, its payload and its budgets.
pub(crate) struct RunSetup {
    pub(crate) grant: Arc<EffectiveGrant>,
    pub(crate) mode: Mode,
    pub(crate) payload: Arc<payload::Payload>,
    pub(crate) deadline: Instant,
    pub(crate) memory_bytes: usize,
    pub(crate) log_bytes: usize,
    pub(crate) effects_bytes: usize,
    /// Apply mode: the run's undo journal.
    pub(crate) journal: Option<JournalWriter>,
}

/// What a finished run leaves: its effects, its journal and its log (with
/// the bytes it dropped).
pub(crate) struct RunRecord {
    pub(crate) effects: Recorded,
    pub(crate) journal: Option<JournalWriter>,
    pub(crate) log: Vec<LogLine>,
    pub(crate) log_dropped_bytes: usize,
}

impl RunState {
    /// A fresh store's state: each capability's context built by its own
    /// module from the run's grant, over the runtime's backends.
    pub(crate) fn new(host: &Backends, run: RunSetup) -> Self {
        let log = log::LogCtx::new(run.log_bytes);
        Self {
            wasi: wasi::WasiState::locked_down(&log),
            log,
            payload: payload::PayloadCtx::new(Arc::clone(&run.payload)),
            files: files::FilesCtx::new(
                Arc::clone(&run.grant),
                Arc::clone(&host.host_root),
                run.payload,
            ),
            network: network::NetworkCtx::new(Arc::clone(&run.grant), Arc::clone(&host.host_root)),
            services: services::ServicesCtx::new(run.grant, Arc::clone(&host.systemd) as _),
            shared: Shared::new(
                run.mode,
                run.effects_bytes,
                run.deadline,
                run.memory_bytes,
                run.journal,
            ),
        }
    }

    /// The first memory or table limit the run hit, if any.
    pub(crate) fn limit_hit(&self) -> Option<&str> {
        self.shared.limits.hit.as_deref()
    }

    /// Bytes of linear memory the run holds.
    pub(crate) fn memory_used(&self) -> usize {
        self.shared.limits.memory_used
    }

    /// Ends the run's state: its effects and its log. The WASI context (which
    /// writes into the log) goes first, so the log is the run's alone.
    pub(crate) fn finish(self) -> RunRecord {
        let Self {
            shared, log, wasi, ..
        } = self;
        drop(wasi);
        let (log, log_dropped_bytes) = log.finish();
        let (effects, journal) = shared.effects.finish();
        RunRecord {
            effects,
            journal,
            log,
            log_dropped_bytes,
        }
    }
}

/// What plan mode may remember of what it would have made, per structure
/// (directories; network namespaces, links, addresses and routes): each
/// entry costs its names plus a fixed overhead. Past it the run ends as
/// `limit exceeded` — the plan cannot drop what later calls build on.
pub const PLAN_BYTES: usize = 1 << 20;

/// Fails the call, ending the run as `limit exceeded`, when a plan-mode
/// structure holds more than [`PLAN_BYTES`].
pub(crate) fn check_plan(what: &str, bytes: usize) -> Result<(), CapError> {
    if bytes > PLAN_BYTES {
        return Err(CapError::Trap(wasmtime::Error::new(RunEnd::Limit(
            format!(
                "plan mode's record of {what} reached its limit of {} KiB",
                PLAN_BYTES >> 10
            ),
        ))));
    }
    Ok(())
}

/// The `types` interface: no functions, only the error variant every
/// capability's [`CapError`] becomes (a trap stays a trap).
pub(crate) fn convert_error(err: CapError) -> wasmtime::Result<types::Error> {
    Ok(match err {
        CapError::PermissionDenied(m) => types::Error::PermissionDenied(m),
        CapError::InvalidArgument(m) => types::Error::InvalidArgument(m),
        CapError::NotFound(m) => types::Error::NotFound(m),
        CapError::Conflict(m) => types::Error::Conflict(m),
        CapError::Unsupported(m) => types::Error::Unsupported(m),
        CapError::Timeout(m) => types::Error::Timeout(m),
        CapError::Io(m) => types::Error::Io(m),
        CapError::Trap(e) => return Err(e),
    })
}

/// Implements `types::Host` (the error conversion every capability's
/// bindings need) for a capability's view.
macro_rules! types_host {
    ($($view:ty),* $(,)?) => {$(
        impl crate::bindings::hostaction::host::types::Host for $view {
            fn convert_error(
                &mut self,
                err: crate::capabilities::CapError,
            ) -> wasmtime::Result<crate::bindings::hostaction::host::types::Error> {
                crate::capabilities::convert_error(err)
            }
        }
    )*};
}
pub(crate) use types_host;

/// The `types` interface's own link: it has no functions, so its view holds
/// nothing.
struct TypesView;

types_host!(TypesView);

struct HasTypes;

impl HasData for HasTypes {
    type Data<'a> = TypesView;
}

/// Memory and table caps of one run; records the first refusal so the report
/// can say "memory limit reached" instead of a bare trap.
pub(crate) struct StoreLimits {
    /// The cap on all of the run's linear memories together.
    pub(crate) memory_bytes: usize,
    /// Bytes of linear memory the run holds now, over all its memories.
    pub(crate) memory_used: usize,
    pub(crate) hit: Option<String>,
}

/// Table elements one table may have (guards against a table bomb).
pub(crate) const MAX_TABLE_ELEMENTS: usize = 100_000;
/// Resources (WASI pollables, streams, a guest's own resources) one run may
/// hold at once: each is host memory — a handle, table entries, the object
/// (~600 bytes for a pollable: wasmtime's default of 100 000 handles let a
/// guest hold 60 MiB of the host per run). Language runtimes hold a few
/// dozen.
pub const MAX_RESOURCES: usize = 10_000;

/// A run's resource table, bounded with [`MAX_RESOURCES`] (a resource can
/// take two entries: a pollable and what it waits on).
pub(crate) fn resource_table() -> ResourceTable {
    let mut table = ResourceTable::new();
    table.set_max_capacity(2 * MAX_RESOURCES + 64);
    table
}

/// How wasmtime 48 says a run's resources hit their bounds (its error types
/// are private or plain strings).
pub(crate) const RESOURCES_EXHAUSTED: [&str; 2] = [
    "store handle limit exceeded",
    "resource table has no free keys",
];

/// Instances, memories and tables one run may create (a component is a few
/// core instances; Python and JavaScript ones a few dozen).
const MAX_INSTANCES: usize = 1_000;

impl ResourceLimiter for StoreLimits {
    fn memory_growing(
        &mut self,
        current: usize,
        desired: usize,
        _maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        // A component has several core memories: the cap is on their sum.
        let total = self
            .memory_used
            .saturating_sub(current)
            .saturating_add(desired);
        if total > self.memory_bytes {
            let msg = format!(
                "linear memory limit of {} MiB reached (the action asked for {} MiB)",
                self.memory_bytes >> 20,
                total.div_ceil(1 << 20)
            );
            self.hit.get_or_insert(msg.clone());
            return Err(wasmtime::format_err!(msg));
        }
        self.memory_used = total;
        Ok(true)
    }

    fn instances(&self) -> usize {
        MAX_INSTANCES
    }

    fn memories(&self) -> usize {
        MAX_INSTANCES
    }

    fn tables(&self) -> usize {
        MAX_INSTANCES
    }

    fn table_growing(
        &mut self,
        _current: usize,
        desired: usize,
        _maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        if desired > MAX_TABLE_ELEMENTS {
            let msg = format!("table limit of {MAX_TABLE_ELEMENTS} elements reached");
            self.hit.get_or_insert(msg.clone());
            return Err(wasmtime::format_err!(msg));
        }
        Ok(true)
    }
}

/// Links every capability this runtime implements into `linker`, each with
/// its view of the run's state.
///
/// Linking more than a component imports gives it nothing: the engine refuses,
/// before instantiation, any component whose imports the effective grant does
/// not cover, and each call checks its scope again.
pub(crate) fn add_to_linker(
    linker: &mut wasmtime::component::Linker<RunState>,
) -> wasmtime::Result<()> {
    crate::bindings::hostaction::host::types::add_to_linker::<RunState, HasTypes>(linker, |_| {
        TypesView
    })?;
    log::add_to_linker(linker, |s| &mut s.log)?;
    payload::add_to_linker(linker, |s| payload::PayloadView {
        ctx: &mut s.payload,
        shared: &mut s.shared,
    })?;
    files::add_to_linker(linker, |s| files::FilesView {
        ctx: &mut s.files,
        shared: &mut s.shared,
    })?;
    network::add_to_linker(linker, |s| network::NetworkView {
        ctx: &mut s.network,
        shared: &mut s.shared,
    })?;
    services::add_to_linker(linker, |s| services::ServicesView {
        ctx: &mut s.services,
        shared: &mut s.shared,
    })?;
    wasi::add_to_linker(linker, |s| wasi::PollView {
        table: &mut s.wasi.table,
        deadline: s.shared.deadline,
    })
}

impl wasmtime_wasi::WasiView for RunState {
    fn ctx(&mut self) -> wasmtime_wasi::WasiCtxView<'_> {
        self.wasi.view()
    }
}

/// Gives a store its limiter.
pub(crate) fn install_limiter(store: &mut Store<RunState>) {
    store.limiter(|s| &mut s.shared.limits);
}

/// What the capabilities' host-level tests share: a run's shared part and a
/// grant from its YAML document.
#[cfg(test)]
pub(crate) mod testing {
    use std::sync::Arc;
    use std::time::{Duration, Instant};

    use super::{CapError, RunEnd, Shared};
    use crate::effects::{Effect, Mode};
    use crate::grant::{EffectiveGrant, Grant};

    /// A run's shared part with a minute to go and a 1 MiB effects budget.
    pub(crate) fn shared(mode: Mode) -> Shared {
        Shared::new(
            mode,
            1 << 20,
            Instant::now() + Duration::from_secs(60),
            64 << 20,
            None,
        )
    }

    /// A run's shared part whose deadline has passed.
    pub(crate) fn past_deadline(mode: Mode) -> Shared {
        Shared::new(mode, 1 << 20, Instant::now(), 64 << 20, None)
    }

    /// The effective grant of a grant document under a node policy document.
    pub(crate) fn grant(grant: &str, policy: Option<&str>) -> Arc<EffectiveGrant> {
        let parse = |doc: &str| serde_yaml_ng::from_str::<Grant>(doc).expect("grant document");
        let policy = policy.map(parse);
        Arc::new(EffectiveGrant::new(&parse(grant), policy.as_ref()).expect("effective grant"))
    }

    /// The effects the run recorded.
    pub(crate) fn effects(shared: &mut Shared) -> Vec<Effect> {
        let mode = shared.effects.mode();
        std::mem::replace(
            &mut shared.effects,
            crate::effects::Effects::new(mode, 0, None),
        )
        .finish()
        .0
        .kept
    }

    /// Whether `err` ends the run at its deadline.
    pub(crate) fn is_deadline(err: &CapError) -> bool {
        matches!(err, CapError::Trap(e) if matches!(e.downcast_ref::<RunEnd>(), Some(RunEnd::Deadline(_))))
    }

    /// Whether `err` ends the run as `limit exceeded`.
    pub(crate) fn is_limit(err: &CapError) -> bool {
        matches!(err, CapError::Trap(e) if matches!(e.downcast_ref::<RunEnd>(), Some(RunEnd::Limit(_))))
    }
}
