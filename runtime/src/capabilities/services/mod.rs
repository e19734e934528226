//! The `services` capability: systemd units restarted, started, stopped,
//! reloaded and queried over D-Bus ([`systemd`]).
//!
//! Every call checks the unit name the guest gave, asks systemd what unit it
//! names (an alias resolves to the unit it stands for, `x@y.service` to its
//! instance), and checks the grant's unit patterns against that canonical
//! name, so no alias reaches an ungranted unit. Jobs wait for systemd's
//! `JobRemoved` up to the guest's timeout and the run's deadline.

pub mod systemd;
#[cfg(test)]
mod tests;
pub mod undo;

use std::sync::Arc;
use std::time::{Duration, Instant};

use wasmtime::component::{HasData, Linker};

use super::{CapError, Shared};
use crate::bindings::hostaction::host::services::{self, JobResult, UnitStatus};
use crate::effects::Mode;
use crate::grant::{EffectiveGrant, ServicesScope, glob};
use crate::undo::{Undo, diff};
use systemd::{JobEnd, JobKind, ResolvedUnit, Status, Systemd};
use undo::{ServiceUndo, UnitState, Window};

/// Longest unit name systemd takes.
pub const MAX_UNIT_NAME_BYTES: usize = 255;

/// Unit types a name may end with.
const UNIT_SUFFIXES: &[&str] = &[
    ".service",
    ".socket",
    ".target",
    ".timer",
    ".path",
    ".mount",
    ".automount",
    ".swap",
    ".slice",
    ".scope",
    ".device",
];

/// Why `name` is not a unit name systemd would take (its rules, checked here
/// before the name goes on the bus).
pub fn unit_name_problem(name: &str) -> Option<String> {
    let why = if name.is_empty() {
        "is empty".to_owned()
    } else if name.len() > MAX_UNIT_NAME_BYTES {
        format!(
            "is {} bytes; the limit is {MAX_UNIT_NAME_BYTES}",
            name.len()
        )
    } else if let Some(c) = name
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || ":-_.\\@".contains(*c)))
    {
        format!("contains {c:?} (allowed: letters, digits and `:-_.\\@`)")
    } else if !UNIT_SUFFIXES
        .iter()
        .any(|s| name.len() > s.len() && name.ends_with(s))
    {
        format!(
            "does not end with a unit type ({})",
            UNIT_SUFFIXES.join(", ")
        )
    } else if name.matches('@').count() > 1 || name.starts_with('@') {
        "has a misplaced '@'".to_owned()
    } else if name.contains("@.") {
        "is a template without an instance (name one, as in x@instance.service)".to_owned()
    } else {
        return None;
    };
    Some(format!("unit name {name:?} {why}"))
}

/// The grant's and the policy's services scopes.
fn scopes(grant: &EffectiveGrant) -> Result<(&ServicesScope, Option<&ServicesScope>), CapError> {
    match &grant.services {
        Some((grant, policy)) => Ok((grant, policy.as_ref())),
        None => Err(CapError::PermissionDenied(
            "services: the grant has no services section".into(),
        )),
    }
}

/// What the `services` capability asks of systemd; [`Systemd`] over D-Bus
/// on a host, a stand-in in tests.
pub trait Units: Send + Sync {
    /// What `name` is: its canonical name and load state.
    fn resolve(&self, name: &str, deadline: Instant) -> Result<ResolvedUnit, CapError>;
    /// Runs a job on the canonical `unit`, waiting up to `wait`.
    fn job(
        &self,
        kind: JobKind,
        unit: &str,
        wait: Duration,
        deadline: Instant,
    ) -> Result<JobEnd, CapError>;
    /// The unit's live state.
    fn status(&self, unit: &ResolvedUnit, deadline: Instant) -> Result<Status, CapError>;
    /// `systemctl daemon-reload`.
    fn daemon_reload(&self, deadline: Instant) -> Result<(), CapError>;
}

impl Units for Systemd {
    fn resolve(&self, name: &str, deadline: Instant) -> Result<ResolvedUnit, CapError> {
        Systemd::resolve(self, name, deadline)
    }

    fn job(
        &self,
        kind: JobKind,
        unit: &str,
        wait: Duration,
        deadline: Instant,
    ) -> Result<JobEnd, CapError> {
        Systemd::job(self, kind, unit, wait, deadline)
    }

    fn status(&self, unit: &ResolvedUnit, deadline: Instant) -> Result<Status, CapError> {
        Systemd::status(self, unit, deadline)
    }

    fn daemon_reload(&self, deadline: Instant) -> Result<(), CapError> {
        Systemd::daemon_reload(self, deadline)
    }
}

/// The `services` capability's state in a run: the grant it checks and
/// the systemd it asks.
pub struct ServicesCtx {
    grant: Arc<EffectiveGrant>,
    units: Arc<dyn Units>,
}

impl ServicesCtx {
    /// The context of one run under `grant`, asking `units`.
    pub fn new(grant: Arc<EffectiveGrant>, units: Arc<dyn Units>) -> Self {
        Self { grant, units }
    }
}

/// The `services` capability as a call sees it: its own state and what all
/// capabilities of the run share.
pub struct ServicesView<'a> {
    pub(crate) ctx: &'a mut ServicesCtx,
    pub(crate) shared: &'a mut Shared,
}

super::types_host!(ServicesView<'_>);

struct HasServices;

impl HasData for HasServices {
    type Data<'a> = ServicesView<'a>;
}

/// Links `hostaction:host/services`, each call made on the view `view` gives.
pub(crate) fn add_to_linker<T: Send + 'static>(
    linker: &mut Linker<T>,
    view: fn(&mut T) -> ServicesView<'_>,
) -> wasmtime::Result<()> {
    services::add_to_linker::<T, HasServices>(linker, view)
}

impl ServicesView<'_> {
    /// Checks `unit`, resolves it with systemd, and checks the canonical name
    /// against the grant and the node policy.
    fn scoped_unit(&mut self, unit: &str) -> Result<ResolvedUnit, CapError> {
        self.shared.check_deadline()?;
        let grant = Arc::clone(&self.ctx.grant);
        let (grant_scope, policy_scope) = scopes(&grant)?;
        if let Some(why) = unit_name_problem(unit) {
            return Err(CapError::InvalidArgument(why));
        }
        let resolved = self.ctx.units.resolve(unit, self.shared.deadline)?;
        let shown = if resolved.id == unit {
            format!("unit {unit}")
        } else {
            format!("unit {unit} (systemd's {})", resolved.id)
        };
        for (scope, whose) in
            std::iter::once((grant_scope, "grant")).chain(policy_scope.map(|p| (p, "node policy")))
        {
            if !scope.units.iter().any(|p| glob(p, &resolved.id)) {
                return Err(CapError::PermissionDenied(format!(
                    "services: {shown} is not in the {whose}'s services.units {:?}",
                    scope.units
                )));
            }
        }
        if resolved.load_state == "not-found" {
            return Err(CapError::NotFound(format!("{shown} does not exist")));
        }
        Ok(resolved)
    }

    /// A job on a granted unit, waited for up to `timeout_ms` (and never past
    /// the run's deadline); recorded as an effect.
    fn job(&mut self, kind: JobKind, unit: String, timeout_ms: u32) -> Result<JobResult, CapError> {
        if timeout_ms == 0 {
            return Err(CapError::InvalidArgument(
                "timeout-ms is 0; give the job time to finish".into(),
            ));
        }
        let resolved = self.scoped_unit(&unit)?;
        // The state before: the diff's left side and the journal's record.
        let before = self.ctx.units.status(&resolved, self.shared.deadline)?;
        if self.shared.effects.mode() == Mode::Plan {
            let after = planned_state(kind, &before.active_state);
            self.shared.effects.record(
                "services",
                kind.name(),
                &resolved.id,
                "planned".into(),
                Some(state_diff(&before.active_state, after)),
            );
            return Ok(JobResult::Done);
        }
        let wait = Duration::from_millis(u64::from(timeout_ms)).min(
            self.shared
                .deadline
                .saturating_duration_since(Instant::now()),
        );
        let state = UnitState::of(&before);
        let undo = match kind {
            JobKind::Start => Undo::Services(ServiceUndo::Started {
                unit: resolved.id.clone(),
                before: state,
                window: Window::starting_now(wait),
            }),
            JobKind::Stop => Undo::Services(ServiceUndo::Stopped {
                unit: resolved.id.clone(),
                before: state,
                window: Window::starting_now(wait),
            }),
            JobKind::Restart | JobKind::TryRestart | JobKind::Reload => Undo::Irreversible {
                why: format!(
                    "{}; recorded: the state before ({} ({}), invocation {}) and after (the \
                     effect's diff)",
                    match kind {
                        JobKind::Reload => "a reload cannot be un-reloaded",
                        _ => "a restart cannot be un-restarted",
                    },
                    state.active_state,
                    state.sub_state,
                    if state.invocation_id.is_empty() {
                        "none"
                    } else {
                        &state.invocation_id
                    }
                ),
            },
        };
        // Write-ahead: journaled before systemd gets the job.
        self.shared
            .effects
            .journal("services", kind.name(), &resolved.id, undo, &[])?;
        let end = self
            .ctx
            .units
            .job(kind, &resolved.id, wait, self.shared.deadline);
        // Whatever came of the wait, a job systemd took is an effect: record
        // it before anything else can end the call.
        let (detail, outcome) = match end {
            Ok(JobEnd::Finished { result, unit }) if unit == resolved.id => {
                (format!("result {result}"), job_result(&result))
            }
            Ok(JobEnd::Finished { result, unit }) => (
                format!("result {result} on {unit}"),
                Err(CapError::Conflict(format!(
                    "systemd ran the {} job on {unit}, not on {} as checked (a daemon-reload \
                     in between?)",
                    kind.name(),
                    resolved.id
                ))),
            ),
            Ok(JobEnd::Running(waited)) => (
                format!("still running after {} ms", waited.as_millis()),
                Err(CapError::Timeout(format!(
                    "the {} job of {} did not finish in {} ms; it was left to finish",
                    kind.name(),
                    resolved.id,
                    waited.as_millis()
                ))),
            ),
            Ok(JobEnd::Lost) => (
                "end not seen (the bus connection closed)".to_owned(),
                Err(CapError::Io(format!(
                    "the D-Bus connection closed during the {} job of {}",
                    kind.name(),
                    resolved.id
                ))),
            ),
            Err(e @ CapError::Timeout(_)) => (
                "no answer from systemd before the run's deadline; the job may have been queued"
                    .to_owned(),
                Err(e),
            ),
            Err(e) => return Err(e),
        };
        // The state after, read live (none once the deadline has passed).
        let diff = self
            .ctx
            .units
            .status(&resolved, self.shared.deadline)
            .ok()
            .map(|after| state_diff(&before.active_state, &after.active_state));
        self.shared
            .effects
            .record("services", kind.name(), &resolved.id, detail, diff);
        self.shared.check_deadline()?;
        outcome
    }
}

/// What a job leaves a unit's `ActiveState` at, as far as plan mode can
/// tell from the state before: a start or restart runs it, a stop stops
/// it, a try-restart leaves a stopped unit stopped, a reload changes none.
fn planned_state(kind: JobKind, before: &str) -> &str {
    match kind {
        JobKind::Start | JobKind::Restart => "active",
        JobKind::Stop => "inactive",
        JobKind::TryRestart if undo::running(before) => "active",
        JobKind::TryRestart | JobKind::Reload => before,
    }
}

/// A services effect's diff: `active-state inactive → active`.
fn state_diff(before: &str, after: &str) -> String {
    diff::attribute("active-state", before, after)
}

/// What a daemon-reload's effect says changed.
const DAEMON_RELOAD_DIFF: &str = "unit files reread";

/// Maps `JobRemoved`'s result string.
fn job_result(result: &str) -> Result<JobResult, CapError> {
    Ok(match result {
        "done" => JobResult::Done,
        "failed" => JobResult::Failed,
        "timeout" => JobResult::Timeout,
        "canceled" => JobResult::Canceled,
        "dependency" => JobResult::Dependency,
        "skipped" => JobResult::Skipped,
        "invalid" => JobResult::Invalid,
        "assert" => JobResult::Assert,
        "unsupported" => JobResult::Unsupported,
        "collected" => JobResult::Collected,
        "once" => JobResult::Once,
        "frozen" => JobResult::Frozen,
        other => {
            return Err(CapError::Io(format!(
                "systemd reported a job result hostaction does not know: {other:?}"
            )));
        }
    })
}

impl services::Host for ServicesView<'_> {
    fn restart(&mut self, unit: String, timeout_ms: u32) -> Result<JobResult, CapError> {
        self.job(JobKind::Restart, unit, timeout_ms)
    }

    fn start(&mut self, unit: String, timeout_ms: u32) -> Result<JobResult, CapError> {
        self.job(JobKind::Start, unit, timeout_ms)
    }

    fn stop(&mut self, unit: String, timeout_ms: u32) -> Result<JobResult, CapError> {
        self.job(JobKind::Stop, unit, timeout_ms)
    }

    fn reload(&mut self, unit: String, timeout_ms: u32) -> Result<JobResult, CapError> {
        self.job(JobKind::Reload, unit, timeout_ms)
    }

    fn try_restart(&mut self, unit: String, timeout_ms: u32) -> Result<JobResult, CapError> {
        self.job(JobKind::TryRestart, unit, timeout_ms)
    }

    fn status(&mut self, unit: String) -> Result<UnitStatus, CapError> {
        let resolved = self.scoped_unit(&unit)?;
        let status = self.ctx.units.status(&resolved, self.shared.deadline)?;
        Ok(UnitStatus {
            name: resolved.id,
            active_state: status.active_state,
            sub_state: status.sub_state,
            main_pid: status.main_pid,
            active_since_us: status.active_since_us,
        })
    }

    fn daemon_reload(&mut self) -> Result<(), CapError> {
        self.shared.check_deadline()?;
        let grant = Arc::clone(&self.ctx.grant);
        let (grant_scope, policy_scope) = scopes(&grant)?;
        if !grant_scope.daemon_reload || policy_scope.is_some_and(|p| !p.daemon_reload) {
            return Err(CapError::PermissionDenied(format!(
                "services: daemon-reload needs services.daemonReload: true in the {}",
                if grant_scope.daemon_reload {
                    "node policy"
                } else {
                    "grant"
                }
            )));
        }
        let done = match self.shared.effects.mode() {
            Mode::Plan => Ok(()),
            Mode::Apply => {
                self.shared.effects.journal(
                    "services",
                    "daemon-reload",
                    "systemd",
                    Undo::Irreversible {
                        why: "a daemon-reload cannot be undone (systemd rereads its unit files \
                              as they are); recorded: that it ran"
                            .into(),
                    },
                    &[],
                )?;
                self.ctx.units.daemon_reload(self.shared.deadline)
            }
        };
        // A reload that did not answer in time may still have happened.
        if matches!(done, Ok(()) | Err(CapError::Timeout(_))) {
            self.shared.effects.record(
                "services",
                "daemon-reload",
                "systemd",
                String::new(),
                Some(DAEMON_RELOAD_DIFF.into()),
            );
        }
        done
    }
}
