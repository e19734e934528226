//! What one run reports: its status, the action's outcome, its log, what it
//! changed, and how long each phase took.

use std::fmt;

use serde::Serialize;

use crate::capabilities::log::LogLine;
use crate::effects::{Effect, Mode};

/// How a run ended.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case", tag = "status", content = "reason")]
pub enum RunStatus {
    /// `run` returned an outcome.
    Succeeded,
    /// `run` returned an error message.
    Failed(String),
    /// The guest trapped (a panic, a broken guest, a host fault).
    Trapped(String),
    /// The run's wall-clock deadline passed.
    DeadlineExceeded(String),
    /// The run hit its memory (or table) limit.
    LimitExceeded(String),
}

impl RunStatus {
    /// Whether the run succeeded.
    pub fn is_success(&self) -> bool {
        *self == RunStatus::Succeeded
    }

    /// The `hostaction` CLI's exit code: 0 on success, 1 when the action failed.
    pub fn exit_code(&self) -> u8 {
        if self.is_success() { 0 } else { 1 }
    }
}

impl fmt::Display for RunStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            RunStatus::Succeeded => f.write_str("succeeded"),
            RunStatus::Failed(m) => write!(f, "failed: {m}"),
            RunStatus::Trapped(m) => write!(f, "trapped: {m}"),
            RunStatus::DeadlineExceeded(m) => write!(f, "deadline exceeded: {m}"),
            RunStatus::LimitExceeded(m) => write!(f, "limit exceeded: {m}"),
        }
    }
}

/// The action's own outcome (`types.outcome` in the contract).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Outcome {
    /// Whether the action says it changed the host.
    pub changed: bool,
    /// Its one-line message.
    pub message: String,
    /// Its structured facts, in order.
    pub facts: Vec<(String, String)>,
}

/// Microseconds spent in each phase of a run.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct Timing {
    /// Creating the store and instantiating the component.
    pub instantiate_us: u64,
    /// The call to `run`.
    pub run_us: u64,
    /// Both, plus collecting the report.
    pub total_us: u64,
}

/// Everything one run reports.
#[derive(Debug, Clone, Serialize)]
pub struct RunReport {
    /// The module's digest (`sha256:...`): what ran.
    pub digest: String,
    /// Apply or plan.
    pub mode: Mode,
    /// How the run ended.
    #[serde(flatten)]
    pub status: RunStatus,
    /// The outcome, when `run` returned one.
    pub outcome: Option<Outcome>,
    /// The host changes made (or, in plan mode, that would be made).
    pub effects: Vec<Effect>,
    /// The run's log: `log` calls, stdout and stderr.
    pub log: Vec<LogLine>,
    /// Bytes of log dropped past the run's log limit.
    pub log_dropped_bytes: usize,
    /// Linear memory the run held at its end, all its memories together
    /// (memories only grow, so this is its peak): what `--memory` bounds.
    pub memory_bytes: usize,
    /// Time per phase.
    pub timing: Timing,
}

impl RunReport {
    /// Whether the host changed: by the effects recorded, whatever the action says.
    pub fn changed(&self) -> bool {
        !self.effects.is_empty()
    }
}
