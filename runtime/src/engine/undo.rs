//! The runtime's side of undo: ending a run's journal (rolling a failed run
//! back), undoing a finished run, and recovering runs a crash cut short.

use std::time::{Duration, Instant};

use super::Runtime;
use crate::error::{Error, Result};
use crate::report::RunStatus;
use crate::undo::journal::{EndState, HostId, JournalDir, JournalInfo, JournalWriter, ReadJournal};
use crate::undo::{JournalMode, OnFailure, Record, UndoCtx, UndoEntry, UndoReport, Undone};

/// How long undoing one run may wait on the host's backends in all
/// (netlink answers, systemd jobs).
pub const UNDO_TIMEOUT: Duration = Duration::from_secs(60);

impl Runtime {
    /// The node's journal directory, if this runtime has one.
    pub fn journals(&self) -> Option<&JournalDir> {
        self.journals.as_ref()
    }

    /// Ends a run's journal: a run that succeeded (or fails with `keep`)
    /// keeps its changes and its journal; one that failed is rolled back.
    /// Returns whether the run can be undone later, and the rollback.
    pub(super) fn end_journal(
        &self,
        journal: Option<JournalWriter>,
        status: &RunStatus,
        on_failure: OnFailure,
        mode: JournalMode,
    ) -> Result<(bool, Option<UndoReport>)> {
        let Some(writer) = journal else {
            return Ok((false, None));
        };
        let undoable = writer.undoable() && mode != JournalMode::Off;
        if status.is_success() || on_failure == OnFailure::Keep || !undoable {
            writer.end_applied()?;
            return Ok((undoable && self.journals.is_some(), None));
        }
        let Some(mut read) = writer.into_read()? else {
            // Nothing journaled: nothing changed, nothing to roll back.
            return Ok((false, None));
        };
        let report = self.undo_journal(&mut read)?;
        read.end(EndState::RolledBack)?;
        Ok((false, Some(report)))
    }

    /// Undoes a finished run by its id: each effect journaled, newest first,
    /// as far as the host is still as the run left it.
    pub fn undo(&self, run_id: &str) -> Result<UndoReport> {
        let dir = self.journal_dir()?;
        let mut read = dir.read(run_id, true)?;
        if let Some(theirs) = self.other_host(&read.info) {
            return Err(Error::BadParams(format!(
                "run {run_id} changed the host root {theirs}, not {}: undo it with \
                 --host-root {theirs}",
                self.host.root().path().display()
            )));
        }
        if let Some(end @ (EndState::RolledBack | EndState::Undone)) = read.info.end {
            // Its changes are gone already; what is there now as the run
            // left it may be a later run's, which this must not take away.
            let how = if end == EndState::Undone {
                "undone"
            } else {
                "rolled back"
            };
            return Err(Error::BadParams(format!(
                "run {run_id} was {how} already: nothing of it is left to undo"
            )));
        }
        if read.info.overflowed {
            return Err(Error::BadParams(format!(
                "run {run_id} is not undoable: its undo data passed the journal's budget \
                 (journal: best-effort), so only part of it was journaled"
            )));
        }
        let report = self.undo_journal(&mut read)?;
        read.end(EndState::Undone)?;
        Ok(report)
    }

    /// Rolls back every run a crash cut short (a journal with no end record
    /// that no live process holds), oldest first. What to call first on a
    /// start, before any run.
    pub fn recover(&self) -> Result<Vec<UndoReport>> {
        let Some(dir) = &self.journals else {
            return Ok(Vec::new());
        };
        let mut reports = Vec::new();
        for run_id in dir.open_runs()? {
            let mut read = match dir.read(&run_id, true) {
                Ok(read) => read,
                // Held by a live process: a run still going.
                Err(_) if dir.busy(&run_id) => continue,
                Err(error) => {
                    // Unreadable from its first record (a power cut before
                    // any of it was synced, so before any change to files
                    // was durable; or damage): said, and set aside.
                    let why = match dir.set_aside(&run_id) {
                        Ok(path) => format!(
                            "its journal cannot be read ({error}): nothing of it is undone; \
                             set aside as {}",
                            path.display()
                        ),
                        Err(e) => format!(
                            "its journal cannot be read ({error}), nor set aside ({e}): \
                             nothing of it is undone"
                        ),
                    };
                    tracing::warn!(run = %run_id, "{why}");
                    reports.push(not_recovered(&run_id, Undone::Failed(why)));
                    continue;
                }
            };
            // Another host root's run: recovered by a start on that root.
            if self.other_host(&read.info).is_some() {
                continue;
            }
            if let Some(state) = read.info.end {
                // Ended, but the rename was lost to a crash: redo it.
                read.end(state)?;
                continue;
            }
            if read.info.overflowed {
                // Only part of it was journaled: undoing that part would
                // leave the host between before and after. Its changes stay.
                let why = "the run passed its journal's budget (journal: best-effort): only \
                           part of it was journaled, so none of it is undone; its changes stay";
                tracing::warn!(run = %run_id, "{why}");
                read.end(EndState::Applied)?;
                reports.push(not_recovered(&run_id, Undone::Irreversible(why.into())));
                continue;
            }
            let report = self.undo_journal(&mut read)?;
            tracing::warn!(run = %run_id, result = %report.summary(),
                "rolled back a run that did not finish (the process running it was killed)");
            read.end(EndState::RolledBack)?;
            reports.push(report);
        }
        Ok(reports)
    }

    /// The journals on this node, oldest first (unreadable ones left out).
    pub fn journal_list(&self) -> Result<Vec<JournalInfo>> {
        Ok(self.journal_dir()?.list()?.into_iter().flatten().collect())
    }

    /// The host root a journaled run changed, when it is not this
    /// runtime's (a journal that does not say is taken as ours).
    fn other_host(&self, info: &JournalInfo) -> Option<String> {
        let theirs = info.run.host.as_ref()?;
        match HostId::of(self.host.root().path()) {
            Some(ours) if ours.same(theirs) => None,
            _ => Some(theirs.path.clone()),
        }
    }

    fn journal_dir(&self) -> Result<&JournalDir> {
        self.journals.as_ref().ok_or_else(|| {
            Error::BadParams("this runtime keeps no journal directory (no cache directory)".into())
        })
    }

    /// Undoes a journal's effects, newest first.
    fn undo_journal(&self, read: &mut ReadJournal) -> Result<UndoReport> {
        let start = Instant::now();
        let ctx = UndoCtx {
            host: &self.host,
            deadline: start + UNDO_TIMEOUT,
        };
        let mut entries = Vec::with_capacity(read.effects.len() + 1);
        if let Some(why) = &read.info.damaged {
            // What was journaled past the damage is newer than every effect
            // read: first in the report, and not undone.
            entries.push(UndoEntry {
                capability: "journal".into(),
                action: "read".into(),
                target: read.info.run.run_id.clone(),
                undone: Undone::Failed(format!("the journal is damaged: {why}; not undone")),
            });
        }
        let effects = std::mem::take(&mut read.effects);
        for (record, blob_at, blob_len) in effects.iter().rev() {
            let Record::Effect {
                capability,
                action,
                target,
                undo,
            } = record
            else {
                continue;
            };
            // Past the deadline nothing more is tried: a backend's waits
            // are bounded by it, and so is the loop.
            let undone = if Instant::now() >= ctx.deadline {
                Undone::Failed(format!(
                    "not undone: the undo's {} s passed first",
                    UNDO_TIMEOUT.as_secs()
                ))
            } else {
                match read.blob(*blob_at, *blob_len) {
                    Ok(blob) => undo.undo(&ctx, &blob),
                    Err(e) => Undone::Failed(e.to_string()),
                }
            };
            entries.push(UndoEntry {
                capability: capability.clone(),
                action: action.clone(),
                target: target.clone(),
                undone,
            });
        }
        read.effects = effects;
        Ok(UndoReport {
            run_id: read.info.run.run_id.clone(),
            entries,
            undo_us: start.elapsed().as_micros() as u64,
        })
    }
}

/// The report of a run recovery left as it is, and why.
fn not_recovered(run_id: &str, why: Undone) -> UndoReport {
    UndoReport {
        run_id: run_id.to_owned(),
        entries: vec![UndoEntry {
            capability: "journal".into(),
            action: "recover".into(),
            target: run_id.to_owned(),
            undone: why,
        }],
        undo_us: 0,
    }
}
