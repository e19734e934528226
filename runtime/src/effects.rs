//! The one place every mutation of the host goes through.
//!
//! A capability first works out, with real reads, whether a call would change
//! the host; then it hands the mutation to [`Effects::apply`], which carries it
//! out in apply mode or only records it in plan mode. Either way the effect is
//! recorded, so the report lists exactly what changed (or would have).
//!
//! The record is bounded: each effect costs its target and detail plus
//! [`EFFECT_OVERHEAD`] bytes against the run's effects budget; past it,
//! effects are still applied (apply mode) but only counted, and the report
//! says how many were dropped. A guest repeating a cheap call cannot grow the
//! host's memory with it.

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

/// What each recorded effect costs against the effects budget besides its
/// target and detail: the record itself and its two allocations, so that
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

/// The effects of one run.
#[derive(Debug)]
pub struct Effects {
    mode: Mode,
    recorded: Recorded,
    /// Bytes charged so far, and the budget.
    bytes: usize,
    limit: usize,
}

impl Effects {
    /// Effects in the given mode, keeping at most `limit` bytes of records
    /// (each costs its strings plus [`EFFECT_OVERHEAD`]).
    pub fn new(mode: Mode, limit: usize) -> Self {
        Self {
            mode,
            recorded: Recorded::default(),
            bytes: 0,
            limit,
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
        if self.mode == Mode::Apply {
            mutate()?;
        }
        self.record(capability, action, target, detail);
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
        let cost = target.len() + detail.len() + EFFECT_OVERHEAD;
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
            applied: self.mode == Mode::Apply,
        });
    }

    /// What was recorded, in order, and how many effects were dropped.
    pub fn into_recorded(self) -> Recorded {
        self.recorded
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn effects_past_the_budget_are_applied_and_counted_not_kept() {
        // Room for two: "/a" and "0644" plus the overhead each.
        let mut effects = Effects::new(Mode::Apply, 2 * (EFFECT_OVERHEAD + 6));
        let mut applied = 0;
        for _ in 0..5 {
            effects
                .apply("files", "chmod", "/a", "0644".into(), || {
                    applied += 1;
                    Ok::<(), ()>(())
                })
                .ok();
        }
        let recorded = effects.into_recorded();
        assert_eq!(applied, 5);
        assert_eq!(recorded.kept.len(), 2);
        assert_eq!(recorded.dropped, 3);
    }

    #[test]
    fn empty_effects_are_not_free() {
        let mut effects = Effects::new(Mode::Plan, 10 * EFFECT_OVERHEAD);
        for _ in 0..1000 {
            effects.record("files", "chmod", "", String::new());
        }
        let recorded = effects.into_recorded();
        assert_eq!((recorded.kept.len(), recorded.dropped), (10, 990));
    }
}
