//! The one place every mutation of the host goes through.
//!
//! A capability first works out, with real reads, whether a call would change
//! the host; then it hands the mutation to [`Effects::apply`], which carries it
//! out in apply mode or only records it in plan mode. Either way the effect is
//! recorded, so the report lists exactly what changed (or would have). In
//! apply mode, what undoes the mutation is journaled first, durably
//! ([`crate::undo`]): no mutation is made that the run could not roll back.
//!
//! The record is bounded: each effect costs its target and detail plus
//! [`EFFECT_OVERHEAD`] bytes against the run's effects budget; past it,
//! effects are still applied (apply mode) but only counted, and the report
//! says how many were dropped. A guest repeating a cheap call cannot grow the
//! host's memory with it.

use serde::Serialize;

use crate::capabilities::{CapError, RunEnd};
use crate::undo::Undo;
use crate::undo::journal::{Barrier, JournalRefusal, JournalWriter};

/// Whether mutations are carried out or only recorded.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    /// Mutations are carried out.
    #[default]
    Apply,
    /// Reads are real; mutations are only recorded and reported.
    Plan,
}

/// One change to the host, as the report lists it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Effect {
    /// The capability that made it (`files`, ...).
    pub capability: &'static str,
    /// What was done (`write-file`, `create-dir`, `chmod`, `remove`).
    pub action: &'static str,
    /// What it was done to, as the action named it (`/opt/cni/bin/bridge`).
    pub target: String,
    /// A short human detail (`412 bytes, mode 0644`).
    pub detail: String,
    /// What changed: a unified diff for text, sizes and digests for binary
    /// contents, `before → after` for attributes (capped, see
    /// [`crate::undo::diff::MAX_DIFF_BYTES`]).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub diff: Option<String>,
    /// False in plan mode: the effect was recorded, not applied.
    pub applied: bool,
}

/// What each recorded effect costs against the effects budget besides its
/// target, detail and diff: the record itself and its allocations, so that
/// effects with empty strings are not free.
pub const EFFECT_OVERHEAD: usize = 128;

/// What a run's effects became: the ones kept, and how many were dropped
/// past the budget.
#[derive(Debug, Default)]
pub struct Recorded {
    /// The effects kept, in order.
    pub kept: Vec<Effect>,
    /// Effects made (or planned) but not kept, past the budget.
    pub dropped: usize,
}

/// The effects of one run, and (apply mode) its undo journal.
pub struct Effects {
    mode: Mode,
    recorded: Recorded,
    /// Bytes charged so far, and the budget.
    bytes: usize,
    limit: usize,
    /// What undoes each mutation, written before it is made; none in plan
    /// mode.
    journal: Option<JournalWriter>,
    /// Mutations made so far, and the test hook's crash point.
    mutations: usize,
    crash: Option<Crash>,
}

/// The test hook `HOSTACTION_TEST_CRASH=before:N|after:N`: the process
/// kills itself (SIGKILL) once the Nth mutation of a run is journaled but
/// not made (`before`), or made (`after`) — how the crash-recovery tests
/// stop a run at every point. Unset, nothing happens.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Crash {
    Before(usize),
    After(usize),
}

impl Crash {
    fn from_env() -> Option<Self> {
        let v = std::env::var("HOSTACTION_TEST_CRASH").ok()?;
        let (when, n) = v.split_once(':')?;
        let n = n.parse().ok()?;
        match when {
            "before" => Some(Crash::Before(n)),
            "after" => Some(Crash::After(n)),
            _ => None,
        }
    }
}

fn crash_now() {
    let _ = rustix::process::kill_process(rustix::process::getpid(), rustix::process::Signal::KILL);
}

impl Effects {
    /// Effects in the given mode, keeping at most `limit` bytes of records
    /// (each costs its strings plus [`EFFECT_OVERHEAD`]), journaling to
    /// `journal` in apply mode.
    pub(crate) fn new(mode: Mode, limit: usize, journal: Option<JournalWriter>) -> Self {
        Self {
            mode,
            recorded: Recorded::default(),
            bytes: 0,
            limit,
            journal: journal.filter(|_| mode == Mode::Apply),
            mutations: 0,
            crash: Crash::from_env(),
        }
    }

    /// The mode of this run.
    pub fn mode(&self) -> Mode {
        self.mode
    }

    /// Journals what undoes the mutation about to be made (apply mode;
    /// plan mode makes nothing), before it is made. A mutation whose undo cannot be
    /// journaled must not be made: the error says why (past the journal's
    /// budget, the run ends as `limit exceeded`).
    pub(crate) fn journal(
        &mut self,
        capability: &'static str,
        action: &'static str,
        target: &str,
        undo: Undo,
        blob: &[u8],
    ) -> Result<(), CapError> {
        if self.mode == Mode::Plan {
            return Ok(());
        }
        if let Some(journal) = &mut self.journal {
            journal
                .write(capability, action, target, undo, blob)
                .map_err(|refused| match refused {
                    JournalRefusal::Budget(why) => {
                        CapError::Trap(wasmtime::Error::new(RunEnd::Limit(why)))
                    }
                    JournalRefusal::Io(why) => CapError::Io(format!(
                        "the undo journal cannot be written ({why}); {target} was not changed"
                    )),
                })?;
        }
        if self.crash == Some(Crash::Before(self.mutations + 1)) {
            crash_now();
        }
        Ok(())
    }

    /// Journals the mutation's undo, applies it (apply mode) or skips it
    /// (plan mode), and records it. A mutation that fails is not recorded.
    ///
    /// `mutate` gets the journal's [`Barrier`]: a mutation the file system
    /// may make durable (a file's fsync before its rename, a file removed,
    /// a mode changed) syncs the journal first, or with it. Records of
    /// other mutations (a directory made, which at worst is left empty;
    /// netlink, systemd: state a reboot resets) are written before the
    /// mutation — a killed process always leaves them — and synced at the
    /// next barrier or the run's end.
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn apply<E: From<CapError>>(
        &mut self,
        capability: &'static str,
        action: &'static str,
        target: &str,
        detail: String,
        diff: Option<String>,
        undo: (Undo, &[u8]),
        mutate: impl FnOnce(&Barrier<'_>) -> Result<(), E>,
    ) -> Result<(), E> {
        if self.mode == Mode::Apply {
            self.journal(capability, action, target, undo.0, undo.1)?;
            match self.journal.as_mut() {
                Some(journal) => mutate(&journal.barrier())?,
                None => mutate(&Barrier::none())?,
            }
        }
        self.record(capability, action, target, detail, diff);
        Ok(())
    }

    /// Records a mutation that a backend carried out itself (after
    /// [`Self::journal`]), or in plan mode only worked out: backends whose
    /// check and change are one kernel conversation (netlink) take the mode
    /// and report what they changed.
    pub fn record(
        &mut self,
        capability: &'static str,
        action: &'static str,
        target: &str,
        detail: String,
        diff: Option<String>,
    ) {
        if self.mode == Mode::Apply {
            self.mutations += 1;
            if self.crash == Some(Crash::After(self.mutations)) {
                crash_now();
            }
        }
        let cost =
            target.len() + detail.len() + diff.as_ref().map_or(0, String::len) + EFFECT_OVERHEAD;
        if self.bytes + cost > self.limit {
            self.recorded.dropped += 1;
            return;
        }
        self.bytes += cost;
        self.recorded.kept.push(Effect {
            capability,
            action,
            target: target.to_owned(),
            detail,
            diff,
            applied: self.mode == Mode::Apply,
        });
    }

    /// What was recorded, in order, how many effects were dropped, and the
    /// run's journal.
    pub(crate) fn finish(self) -> (Recorded, Option<JournalWriter>) {
        (self.recorded, self.journal)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn effects_past_the_budget_are_applied_and_counted_not_kept() {
        // Room for two: "/a" and "0644" plus the overhead each.
        let mut effects = Effects::new(Mode::Apply, 2 * (EFFECT_OVERHEAD + 6), None);
        let mut applied = 0;
        for _ in 0..5 {
            let undo = Undo::Irreversible { why: String::new() };
            effects
                .apply(
                    "files",
                    "chmod",
                    "/a",
                    "0644".into(),
                    None,
                    (undo, &[]),
                    |_| {
                        applied += 1;
                        Ok::<(), CapError>(())
                    },
                )
                .ok();
        }
        let recorded = effects.finish().0;
        assert_eq!(applied, 5);
        assert_eq!(recorded.kept.len(), 2);
        assert_eq!(recorded.dropped, 3);
    }

    #[test]
    fn empty_effects_are_not_free() {
        let mut effects = Effects::new(Mode::Plan, 10 * EFFECT_OVERHEAD, None);
        for _ in 0..1000 {
            effects.record("files", "chmod", "", String::new(), None);
        }
        let recorded = effects.finish().0;
        assert_eq!((recorded.kept.len(), recorded.dropped), (10, 990));
    }
}
