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

use std::sync::{Arc, Mutex};
use std::time::Instant;

use wasmtime::component::ResourceTable;
use wasmtime::{ResourceLimiter, Store};

use crate::bindings::hostaction::host::types;
use crate::effects::Effects;
use crate::grant::EffectiveGrant;
use files::HostRoot;
use log::RunLog;

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

/// What a run's store holds: the effective grant, the host, the run's log,
/// its effects and its limits.
pub struct RunState {
    pub(crate) grant: Arc<EffectiveGrant>,
    pub(crate) host_root: Arc<HostRoot>,
    pub(crate) effects: Effects,
    /// Plan mode: directories recorded as created but not made.
    pub(crate) planned_dirs: PlannedDirs,
    /// What the run's network calls remember (plan mode's planned links).
    pub(crate) network: network::NetRun,
    /// systemd, for the `services` capability (connected on first use).
    pub(crate) systemd: Arc<services::systemd::Systemd>,
    /// The files shipped with the action (`payload`).
    pub(crate) payload: Arc<payload::Payload>,
    pub(crate) log: Arc<Mutex<RunLog>>,
    pub(crate) deadline: Instant,
    pub(crate) limits: StoreLimits,
    pub(crate) wasi: wasmtime_wasi::WasiCtx,
    pub(crate) table: ResourceTable,
}

impl RunState {
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

/// Plan mode's directories recorded as created but not made, charged
/// against [`PLAN_BYTES`].
#[derive(Debug, Default)]
pub(crate) struct PlannedDirs {
    dirs: Vec<files::HostPath>,
    bytes: usize,
}

/// What a planned directory costs besides its components' bytes, and what
/// each component costs besides its bytes (a `String` of its own).
const PLANNED_DIR_OVERHEAD: usize = 64;
const PLANNED_PART_OVERHEAD: usize = 32;

impl PlannedDirs {
    /// Remembers `dir`, or ends the run when the budget is used up.
    pub(crate) fn push(&mut self, dir: files::HostPath) -> Result<(), CapError> {
        let cost = PLANNED_DIR_OVERHEAD
            + dir
                .components()
                .iter()
                .map(|c| c.len() + PLANNED_PART_OVERHEAD)
                .sum::<usize>();
        check_plan("planned directories", self.bytes + cost)?;
        self.bytes += cost;
        self.dirs.push(dir);
        Ok(())
    }

    /// The planned directories, in the order they were planned.
    pub(crate) fn iter(&self) -> std::slice::Iter<'_, files::HostPath> {
        self.dirs.iter()
    }
}

impl types::Host for RunState {
    fn convert_error(&mut self, err: CapError) -> wasmtime::Result<types::Error> {
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

/// Links every capability this runtime implements into `linker`.
///
/// Linking more than a component imports gives it nothing: the engine refuses,
/// before instantiation, any component whose imports the effective grant does
/// not cover, and each call checks its scope again.
pub(crate) fn add_to_linker(
    linker: &mut wasmtime::component::Linker<RunState>,
) -> wasmtime::Result<()> {
    use crate::bindings::hostaction::host;
    use wasmtime::component::HasSelf;
    host::types::add_to_linker::<RunState, HasSelf<RunState>>(linker, |s| s)?;
    host::log::add_to_linker::<RunState, HasSelf<RunState>>(linker, |s| s)?;
    host::payload::add_to_linker::<RunState, HasSelf<RunState>>(linker, |s| s)?;
    host::files::add_to_linker::<RunState, HasSelf<RunState>>(linker, |s| s)?;
    host::network::add_to_linker::<RunState, HasSelf<RunState>>(linker, |s| s)?;
    host::services::add_to_linker::<RunState, HasSelf<RunState>>(linker, |s| s)?;
    wasi::add_to_linker(linker)
}

/// Gives a store its limiter.
pub(crate) fn install_limiter(store: &mut Store<RunState>) {
    store.limiter(|s| &mut s.limits);
}
