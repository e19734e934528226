//! What one run reports: its status, the action's outcome, its log, what it
//! changed, and how long each phase took.

use std::borrow::Cow;
use std::fmt::{self, Write as _};

use serde::Serialize;

use crate::capabilities::log::LogLine;
use crate::effects::{Effect, Mode};
use crate::undo::UndoReport;

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
    /// The run's id: its journal's name, what `hostaction undo` takes.
    #[serde(rename = "runId")]
    pub run_id: String,
    /// The module's digest (`sha256:...`): what ran.
    pub digest: String,
    /// Apply or plan.
    pub mode: Mode,
    /// How the run ended.
    #[serde(flatten)]
    pub status: RunStatus,
    /// Whether the run can be undone later (`hostaction undo`): its changes
    /// are journaled in full in the node's journal directory.
    pub undoable: bool,
    /// A failed run rolled back: what came of each effect.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rollback: Option<UndoReport>,
    /// The outcome, when `run` returned one.
    pub outcome: Option<Outcome>,
    /// The host changes made (or, in plan mode, that would be made), as many
    /// as the run's effects budget keeps.
    pub effects: Vec<Effect>,
    /// Effects made (or planned) past the effects budget: counted, not listed.
    pub effects_dropped: usize,
    /// The run's log: `log` calls, stdout and stderr.
    pub log: Vec<LogLine>,
    /// Bytes of log dropped past the run's log limit.
    pub log_dropped_bytes: usize,
    /// Linear memory the run held at its end, all its memories together
    /// (memories only grow, so this is its peak): what `--memory` bounds.
    pub memory_bytes: usize,
    /// Time per phase.
    pub timing: Timing,
    /// For a module from a registry: whether its signature was verified,
    /// and by which key (set by whoever pulled it).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub provenance: Option<hostaction_distribution::Provenance>,
}

impl RunReport {
    /// Whether the host changed: by the effects recorded, whatever the action says.
    pub fn changed(&self) -> bool {
        self.effect_count() > 0
    }

    /// How many effects the run made (or planned), listed or dropped.
    pub fn effect_count(&self) -> usize {
        self.effects.len().saturating_add(self.effects_dropped)
    }
}

/// `text` made safe to print on a terminal: control characters (C0 — a
/// newline too, so one message stays one line —, DEL and C1) and the
/// bidirectional marks, embeddings, overrides and isolates that reorder what
/// follows them are written as escapes (`\n`, `\x1b`, `\u{202e}`). A guest's
/// text then cannot move the cursor, erase a line or restyle the report
/// around it. For text output only: JSON escapes by itself.
pub fn printable(text: &str) -> Cow<'_, str> {
    if !text.chars().any(needs_escape) {
        return Cow::Borrowed(text);
    }
    let mut out = String::with_capacity(text.len() + 16);
    for c in text.chars() {
        match c {
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if c.is_ascii() && needs_escape(c) => {
                let _ = write!(out, "\\x{:02x}", u32::from(c));
            }
            c if needs_escape(c) => {
                let _ = write!(out, "\\u{{{:04x}}}", u32::from(c));
            }
            c => out.push(c),
        }
    }
    Cow::Owned(out)
}

/// Control characters (Unicode `Cc`: C0, DEL, C1) and bidirectional
/// formatting characters.
fn needs_escape(c: char) -> bool {
    c.is_control()
        || matches!(
            c,
            '\u{061c}' | '\u{200e}' | '\u{200f}' | '\u{202a}'..='\u{202e}' | '\u{2066}'..='\u{2069}'
        )
}

#[cfg(test)]
mod tests {
    use super::printable;

    #[test]
    fn printable_escapes_controls_and_bidi_and_keeps_the_rest() {
        assert_eq!(printable("plain text, ünïcode ✓"), "plain text, ünïcode ✓");
        assert_eq!(printable("\x1b[2K\rsucceeded\n"), "\\x1b[2K\\rsucceeded\\n");
        assert_eq!(printable("a\tb\u{7f}\u{9b}c"), "a\\tb\\x7f\\u{009b}c");
        assert_eq!(printable("x\u{202e}y\u{2066}z"), "x\\u{202e}y\\u{2066}z");
        assert_eq!(printable("nul\0"), "nul\\x00");
    }
}
