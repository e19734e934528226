//! What a run reports when it returns normally.

use crate::bindings::hostaction::host::types as wit;

/// What a run reports: whether it changed the host, one line for humans, and
/// structured facts for machines (dashboards, the HostActionRun status).
///
/// Built with a small builder so that the common case is one expression:
/// `Outcome::changed(changed).message("...").fact("k", "v")`.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
#[must_use = "an Outcome does nothing until it is returned from the action"]
pub struct Outcome {
    changed: bool,
    message: String,
    facts: Vec<(String, String)>,
}

impl Outcome {
    /// A run that changed nothing on the host (the idempotent re-run).
    pub fn unchanged() -> Self {
        Self::default()
    }

    /// A run that changed the host when `changed` is true; pass the "anything
    /// changed" result of the ensure-calls straight through.
    pub fn changed(changed: bool) -> Self {
        Self {
            changed,
            ..Self::default()
        }
    }

    /// Sets the one human-readable line (replacing an earlier one).
    pub fn message(mut self, message: impl Into<String>) -> Self {
        self.message = message.into();
        self
    }

    /// Adds one structured fact; facts keep the order they were added in.
    pub fn fact(mut self, key: impl Into<String>, value: impl Into<String>) -> Self {
        self.facts.push((key.into(), value.into()));
        self
    }

    /// Whether the run changed the host.
    pub fn is_changed(&self) -> bool {
        self.changed
    }

    /// The human-readable line.
    pub fn message_text(&self) -> &str {
        &self.message
    }

    /// The facts, in the order they were added.
    pub fn facts(&self) -> &[(String, String)] {
        &self.facts
    }
}

impl From<Outcome> for wit::Outcome {
    fn from(o: Outcome) -> Self {
        wit::Outcome {
            changed: o.changed,
            message: o.message,
            facts: o
                .facts
                .into_iter()
                .map(|(key, value)| wit::Fact { key, value })
                .collect(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::{Outcome, wit};

    #[test]
    fn builder_converts_to_wit() {
        let o: wit::Outcome = Outcome::changed(true)
            .message("done")
            .fact("a", "1")
            .fact("b", "2")
            .into();
        assert!(o.changed);
        assert_eq!(o.message, "done");
        let keys: Vec<_> = o.facts.iter().map(|f| f.key.as_str()).collect();
        assert_eq!(keys, ["a", "b"]);
        assert!(!Outcome::unchanged().is_changed());
    }
}
