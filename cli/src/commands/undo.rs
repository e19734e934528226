//! `hostaction undo RUN`: reverse a finished run on this host; `--list`
//! shows the runs whose journals the node keeps; `hostaction recover` rolls
//! back the runs a crash cut short (what every `run` does first).

use std::fmt;

use hostaction_runtime::report::printable;
use hostaction_runtime::undo::UndoReport;
use hostaction_runtime::undo::journal::JournalInfo;
use hostaction_runtime::{Error, undo::Undone};
use serde::Serialize;

use crate::common::{self, HostArgs, NodeCache, Output};

/// `hostaction undo` flags.
#[derive(clap::Args)]
pub struct UndoCommand {
    /// The run to undo (its `runId`, as `hostaction run` reported it).
    #[arg(required_unless_present = "list")]
    run: Option<String>,
    /// List the runs this node keeps journals of, oldest first.
    #[arg(long, conflicts_with = "run")]
    list: bool,
    #[command(flatten)]
    host: HostArgs,
    /// Output format.
    #[arg(long, value_enum, default_value_t = Output::Text)]
    pub output: Output,
}

/// `hostaction recover` flags.
#[derive(clap::Args)]
pub struct RecoverCommand {
    #[command(flatten)]
    host: HostArgs,
    /// Output format.
    #[arg(long, value_enum, default_value_t = Output::Text)]
    pub output: Output,
}

impl UndoCommand {
    /// Undoes the run (exit 0 when every effect is as before it, 1 when
    /// some could not be: conflicts, irreversible, failed), or lists runs.
    pub fn execute(self, node: &NodeCache) -> Result<u8, Error> {
        let runtime = node.runtime(&self.host)?;
        let Some(run) = self.run else {
            let list = Journals(runtime.journal_list()?);
            common::print(self.output, &list);
            return Ok(0);
        };
        let recovered = runtime.recover()?;
        let report = runtime.undo(&run)?;
        let code = u8::from(!report.complete());
        common::print(
            self.output,
            &Undid {
                recovered,
                undone: report,
            },
        );
        Ok(code)
    }
}

impl RecoverCommand {
    /// Rolls back unfinished runs (exit 1 when some effect could not be).
    pub fn execute(self, node: &NodeCache) -> Result<u8, Error> {
        let runtime = node.runtime(&self.host)?;
        let recovered = runtime.recover()?;
        let code = u8::from(recovered.iter().any(|r| !r.complete()));
        common::print(self.output, &Recovered { recovered });
        Ok(code)
    }
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct Undid {
    #[serde(skip_serializing_if = "Vec::is_empty")]
    recovered: Vec<UndoReport>,
    undone: UndoReport,
}

#[derive(Serialize)]
struct Recovered {
    recovered: Vec<UndoReport>,
}

#[derive(Serialize)]
#[serde(transparent)]
struct Journals(Vec<JournalInfo>);

impl fmt::Display for Undid {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for r in &self.recovered {
            writeln!(f, "recovered run {}: {}", r.run_id, r.summary())?;
            write_entries(f, r)?;
        }
        writeln!(
            f,
            "undone run {}: {}",
            self.undone.run_id,
            self.undone.summary()
        )?;
        write_entries(f, &self.undone)
    }
}

impl fmt::Display for Recovered {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.recovered.is_empty() {
            return writeln!(f, "no run to recover");
        }
        for r in &self.recovered {
            writeln!(f, "recovered run {}: {}", r.run_id, r.summary())?;
            write_entries(f, r)?;
        }
        Ok(())
    }
}

impl fmt::Display for Journals {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.0.is_empty() {
            return writeln!(f, "no journals");
        }
        for j in &self.0 {
            let state = match (j.end, j.overflowed) {
                (_, true) => "not undoable (journal over budget)".to_owned(),
                (None, _) => "unfinished (running, or cut short)".to_owned(),
                (Some(end), _) => format!("{end:?}").to_lowercase(),
            };
            writeln!(
                f,
                "{}  {} effects, {} bytes, {state}, module {}",
                j.run.run_id, j.effects, j.bytes, j.run.digest
            )?;
        }
        Ok(())
    }
}

/// Each effect of an undo, one per line, newest first.
pub(super) fn write_entries(f: &mut fmt::Formatter<'_>, r: &UndoReport) -> fmt::Result {
    for e in &r.entries {
        let (word, why) = match &e.undone {
            Undone::Restored => ("restored", ""),
            Undone::Unchanged => ("unchanged", ""),
            Undone::Conflict(m) => ("CONFLICT", m.as_str()),
            Undone::Irreversible(m) => ("irreversible", m.as_str()),
            Undone::Failed(m) => ("FAILED", m.as_str()),
        };
        let why = if why.is_empty() {
            String::new()
        } else {
            format!(": {}", printable(why))
        };
        writeln!(
            f,
            "  {word:<12} {} {} {}{why}",
            e.capability,
            e.action,
            printable(&e.target)
        )?;
    }
    Ok(())
}
