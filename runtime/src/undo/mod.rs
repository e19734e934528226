//! Undo: what reverses each mutation of a run, written to the run's journal
//! durably *before* the mutation is made (write-ahead), and the code that
//! reads a journal back and reverses it, newest effect first.
//!
//! A journal is one file per run in the node's journal directory
//! ([`journal`]). It outlives the process: a run killed midway leaves one
//! without an end record, which [`crate::Runtime::recover`] rolls back at the
//! next start; a finished run's journal lets `hostaction undo RUN` reverse it
//! later.
//!
//! Every undo is checked against the host as it is now. An effect whose
//! target is still what the run left is restored; one already as it was
//! before is left (the mutation never happened, or was undone); anything
//! else is a `conflict` — someone changed it since — and is left alone.
//! What cannot be reversed (a service restart) is journaled as such and
//! reported, never pretended.

pub mod diff;
pub mod files;
pub mod journal;
mod syncer;

pub(crate) use journal::Record;
use serde::{Deserialize, Serialize};

use crate::capabilities::{network, services};

/// What reverses one effect: enough of the state before it, and of what
/// the run made, to restore the first only while the second is still there.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "kebab-case")]
pub enum Undo {
    /// A file or directory the run wrote, made, changed or removed.
    Files(files::FileUndo),
    /// A link, address, route or namespace the run made or changed.
    Network(network::undo::NetworkUndo),
    /// A unit whose state the run changed.
    Services(services::undo::ServiceUndo),
    /// Recorded, not reversible: why, and what was recorded instead.
    Irreversible {
        /// What cannot be undone and why.
        why: String,
    },
}

/// What undoing one effect came to.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case", tag = "result", content = "detail")]
pub enum Undone {
    /// The state before the effect is back.
    Restored,
    /// The target was already as before the effect (it never happened, or
    /// was undone already): nothing to do.
    Unchanged,
    /// Someone changed the target since the run: left as it is.
    Conflict(String),
    /// The effect cannot be reversed (what was recorded instead).
    Irreversible(String),
    /// Undoing it failed (the host refused, a backend is gone).
    Failed(String),
}

impl Undone {
    /// Whether the target is now as before the run.
    pub fn is_ok(&self) -> bool {
        matches!(self, Undone::Restored | Undone::Unchanged)
    }
}

/// One effect of an undo or rollback: which, and what came of it.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct UndoEntry {
    /// The capability that made the effect (`files`, `network`, `services`).
    pub capability: String,
    /// What the effect was (`write-file`, `ensure-link`, ...).
    pub action: String,
    /// What it was done to.
    pub target: String,
    /// What undoing it came to.
    #[serde(flatten)]
    pub undone: Undone,
}

/// What undoing a run (a rollback, a recovery or `hostaction undo`) did.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct UndoReport {
    /// The run undone.
    pub run_id: String,
    /// Each effect journaled, newest first, with what came of undoing it.
    pub entries: Vec<UndoEntry>,
    /// Microseconds the undo took.
    pub undo_us: u64,
}

impl UndoReport {
    /// Whether every effect is now as before the run.
    pub fn complete(&self) -> bool {
        self.entries.iter().all(|e| e.undone.is_ok())
    }

    /// How many effects ended each way: restored (or unchanged), conflicts,
    /// irreversible, failed.
    pub fn counts(&self) -> UndoCounts {
        let mut c = UndoCounts::default();
        for e in &self.entries {
            match e.undone {
                Undone::Restored | Undone::Unchanged => c.restored += 1,
                Undone::Conflict(_) => c.conflicts += 1,
                Undone::Irreversible(_) => c.irreversible += 1,
                Undone::Failed(_) => c.failed += 1,
            }
        }
        c
    }

    /// One line: `3 restored, 1 conflict (/opt/cni/bin/x: ...)`.
    pub fn summary(&self) -> String {
        let c = self.counts();
        let mut out = format!("{} restored", c.restored);
        for (n, word) in [
            (c.conflicts, "conflict"),
            (c.irreversible, "irreversible"),
            (c.failed, "failed"),
        ] {
            if n > 0 {
                out.push_str(&format!(", {n} {word}"));
            }
        }
        out
    }
}

/// Effects of an undo by outcome.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct UndoCounts {
    /// Restored, or already as before.
    pub restored: usize,
    /// Changed by someone else since: left.
    pub conflicts: usize,
    /// Not reversible.
    pub irreversible: usize,
    /// The undo itself failed.
    pub failed: usize,
}

/// What a failed run does with the changes it made.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum OnFailure {
    /// Roll the host back to how it was before the run (the default).
    #[default]
    Rollback,
    /// Leave the changes (the journal is kept: `hostaction undo` later).
    Keep,
}

/// Whether a run keeps an undo journal, and what happens when its undo data
/// would pass the journal's budget.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum JournalMode {
    /// Every mutation is journaled; one whose undo data would pass the
    /// budget ends the run before it is made (`limit exceeded`, and the
    /// run is rolled back as `onFailure` says). The default.
    #[default]
    Required,
    /// Past the budget the run goes on unjournaled and is marked not
    /// undoable: no rollback, no undo (all or nothing, never half).
    BestEffort,
    /// No journal: the run cannot be rolled back or undone.
    Off,
}

/// Where undoing happens: the host's backends and a deadline for calls
/// that wait (netlink, D-Bus).
pub struct UndoCtx<'a> {
    pub(crate) host: &'a crate::capabilities::Backends,
    #[allow(dead_code)] // network and services undo wait on their backends
    pub(crate) deadline: std::time::Instant,
}

impl Undo {
    /// Reverses the effect, if the host is still as the run left it; `blob`
    /// is the bytes journaled with it (a file's previous contents).
    pub(crate) fn undo(&self, ctx: &UndoCtx<'_>, blob: &[u8]) -> Undone {
        match self {
            Undo::Files(f) => f.undo(ctx.host.root(), blob),
            Undo::Network(n) => n.undo(ctx),
            Undo::Services(s) => s.undo(ctx),
            Undo::Irreversible { why } => Undone::Irreversible(why.clone()),
        }
    }
}
