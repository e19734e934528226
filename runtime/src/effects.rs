//! The one place every mutation of the host goes through.
//!
//! A capability first works out, with real reads, whether a call would change
//! the host; then it hands the mutation to [`Effects::apply`], which carries it
//! out in apply mode or only records it in plan mode. Either way the effect is
//! recorded, so the report lists exactly what changed (or would have).

use serde::Serialize;

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
    /// False in plan mode: the effect was recorded, not applied.
    pub applied: bool,
}

/// The effects of one run.
#[derive(Debug, Default)]
pub struct Effects {
    mode: Mode,
    recorded: Vec<Effect>,
}

impl Effects {
    /// Effects in the given mode.
    pub fn new(mode: Mode) -> Self {
        Self {
            mode,
            recorded: Vec::new(),
        }
    }

    /// The mode of this run.
    pub fn mode(&self) -> Mode {
        self.mode
    }

    /// Applies a mutation (apply mode) or skips it (plan mode), and records it.
    /// A mutation that fails is not recorded.
    pub fn apply<E>(
        &mut self,
        capability: &'static str,
        action: &'static str,
        target: &str,
        detail: String,
        mutate: impl FnOnce() -> Result<(), E>,
    ) -> Result<(), E> {
        let applied = self.mode == Mode::Apply;
        if applied {
            mutate()?;
        }
        self.recorded.push(Effect {
            capability,
            action,
            target: target.to_owned(),
            detail,
            applied,
        });
        Ok(())
    }

    /// Records a mutation that a backend carried out itself, or in plan mode
    /// only worked out: backends whose check and change are one kernel
    /// conversation (netlink) take the mode and report what they changed.
    pub fn record(
        &mut self,
        capability: &'static str,
        action: &'static str,
        target: &str,
        detail: String,
    ) {
        self.recorded.push(Effect {
            capability,
            action,
            target: target.to_owned(),
            detail,
            applied: self.mode == Mode::Apply,
        });
    }

    /// Everything recorded so far, in order.
    pub fn into_recorded(self) -> Vec<Effect> {
        self.recorded
    }
}
