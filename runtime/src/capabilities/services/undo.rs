//! What reverses a services effect, and reversing it.
//!
//! A start of a stopped unit is undone by stopping it, a stop of a running
//! unit by starting it — but only while the unit is still as the run left
//! it. The journal is written before the job, so it cannot hold what the
//! job made (the new `InvocationID`); it holds the unit's state before and
//! the job's window instead: this boot, and the `CLOCK_MONOTONIC` span from
//! just before the job was submitted to the end of its wait (plus
//! [`WINDOW_SLACK`]). systemd stamps each state change on the same clock, so
//! a unit whose current activation (start: `InactiveExitTimestampMonotonic`)
//! or deactivation (stop: `InactiveEnterTimestampMonotonic`) falls outside
//! that window was changed by someone else since: a `conflict`, left alone.
//! A unit already back as before (stopped again, running again) is
//! `unchanged`.
//!
//! A restart, reload, try-restart or daemon-reload cannot be reversed (a
//! process restarted stays restarted): they are journaled as irreversible,
//! and the effect's diff says the state before and after.

use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use super::Units;
use super::systemd::{JobEnd, JobKind, Status};
use crate::undo::{UndoCtx, Undone};

/// Added to the end of a job's window: the time between systemd's state
/// change and the end of the wait the capability saw (the reply's way back).
pub const WINDOW_SLACK: Duration = Duration::from_secs(1);

/// A unit's state as journaled before a job.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct UnitState {
    /// `active`, `inactive`, `failed`, ...
    pub active_state: String,
    /// `running`, `dead`, ...
    pub sub_state: String,
    /// The current (or last) start's `InvocationID` (hex; empty: none).
    pub invocation_id: String,
    /// When it last became active, µs since the epoch.
    pub active_since_us: Option<u64>,
}

impl UnitState {
    /// The journaled part of a live status.
    pub fn of(status: &Status) -> Self {
        Self {
            active_state: status.active_state.clone(),
            sub_state: status.sub_state.clone(),
            invocation_id: status.invocation_id.clone(),
            active_since_us: status.active_since_us,
        }
    }
}

/// When the run's job could change the unit: a span of `CLOCK_MONOTONIC`
/// µs in one boot.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Window {
    /// The kernel's boot id (monotonic time starts again at each boot).
    pub boot_id: String,
    /// Just before the job was submitted.
    pub from_us: u64,
    /// The end of the job's wait, plus [`WINDOW_SLACK`].
    pub to_us: u64,
}

impl Window {
    /// The window of a job submitted now and waited for up to `wait`.
    pub fn starting_now(wait: Duration) -> Self {
        let from_us = monotonic_us();
        Self {
            boot_id: boot_id(),
            from_us,
            to_us: from_us
                .saturating_add(u64::try_from((wait + WINDOW_SLACK).as_micros()).unwrap_or(0)),
        }
    }

    /// Whether a state change stamped `at_us` was the job's.
    fn holds(&self, at_us: u64) -> bool {
        !self.boot_id.is_empty()
            && self.boot_id == boot_id()
            && (self.from_us..=self.to_us).contains(&at_us)
    }
}

/// `CLOCK_MONOTONIC` now, in µs: the clock systemd stamps state changes
/// with (`...TimestampMonotonic`).
fn monotonic_us() -> u64 {
    let t = rustix::time::clock_gettime(rustix::time::ClockId::Monotonic);
    u64::try_from(t.tv_sec)
        .unwrap_or(0)
        .saturating_mul(1_000_000)
        .saturating_add(u64::try_from(t.tv_nsec).unwrap_or(0) / 1000)
}

/// The kernel's boot id (empty when unreadable: then no change is
/// attributed to the run, and undo reports conflicts rather than guess).
fn boot_id() -> String {
    std::fs::read_to_string("/proc/sys/kernel/random/boot_id")
        .map(|s| s.trim().to_owned())
        .unwrap_or_default()
}

/// What reverses one services effect.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "kebab-case")]
pub enum ServiceUndo {
    /// The run started `unit`: undone by stopping it.
    Started {
        /// The canonical unit name.
        unit: String,
        /// Its state before the job.
        before: UnitState,
        /// When the job could change it.
        window: Window,
    },
    /// The run stopped `unit`: undone by starting it.
    Stopped {
        /// The canonical unit name.
        unit: String,
        /// Its state before the job.
        before: UnitState,
        /// When the job could change it.
        window: Window,
    },
}

/// Whether an `ActiveState` is a running unit (or one on its way up).
pub fn running(active_state: &str) -> bool {
    matches!(
        active_state,
        "active" | "activating" | "reloading" | "refreshing"
    )
}

/// Whether an `ActiveState` is a stopped unit.
pub fn stopped(active_state: &str) -> bool {
    matches!(active_state, "inactive" | "failed")
}

impl ServiceUndo {
    /// Reverses the effect, if the unit is still as the run left it.
    pub(crate) fn undo(&self, ctx: &UndoCtx<'_>) -> Undone {
        self.undo_on(ctx.host.systemd.as_ref(), ctx.deadline)
    }

    /// [`Self::undo`] against `units`, waiting no later than `deadline`.
    pub(crate) fn undo_on(&self, units: &dyn Units, deadline: Instant) -> Undone {
        let (unit, before, window, started) = match self {
            ServiceUndo::Started {
                unit,
                before,
                window,
            } => (unit, before, window, true),
            ServiceUndo::Stopped {
                unit,
                before,
                window,
            } => (unit, before, window, false),
        };
        // Nothing to reverse: the unit was already as the job left it.
        if (started && running(&before.active_state)) || (!started && stopped(&before.active_state))
        {
            return Undone::Unchanged;
        }
        let now = match units
            .resolve(unit, deadline)
            .and_then(|resolved| units.status(&resolved, deadline))
        {
            Ok(now) => now,
            Err(e) => return Undone::Failed(format!("{unit}: {e}")),
        };
        let state = format!("{} ({})", now.active_state, now.sub_state);
        let (as_before, as_left, changed_at, reverse) = if started {
            (
                stopped(&now.active_state),
                running(&now.active_state),
                now.inactive_exit_mono_us,
                JobKind::Stop,
            )
        } else {
            (
                running(&now.active_state),
                stopped(&now.active_state),
                now.inactive_enter_mono_us,
                JobKind::Start,
            )
        };
        if as_before {
            return Undone::Unchanged;
        }
        if !as_left {
            return Undone::Conflict(format!(
                "{unit} is {state} now, on its way elsewhere; left as it is"
            ));
        }
        if !window.holds(changed_at) {
            return Undone::Conflict(format!(
                "{unit} is {state}, but by a {} after the run's (invocation {}); left as it is",
                if started { "start" } else { "stop" },
                if now.invocation_id.is_empty() {
                    "none"
                } else {
                    now.invocation_id.get(..12).unwrap_or(&now.invocation_id)
                }
            ));
        }
        let wait = deadline.saturating_duration_since(Instant::now());
        match units.job(reverse, unit, wait, deadline) {
            Ok(JobEnd::Finished { result, .. }) if result == "done" => Undone::Restored,
            Ok(JobEnd::Finished { result, .. }) => Undone::Failed(format!(
                "the {} job of {unit} ended {result}",
                reverse.name()
            )),
            Ok(JobEnd::Running(waited)) => Undone::Failed(format!(
                "the {} job of {unit} did not finish in {} ms; it was left to finish",
                reverse.name(),
                waited.as_millis()
            )),
            Ok(JobEnd::Lost) => Undone::Failed(format!(
                "the D-Bus connection closed during the {} job of {unit}",
                reverse.name()
            )),
            Err(e) => Undone::Failed(format!("{unit}: {e}")),
        }
    }
}
