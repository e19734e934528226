//! What reverses a network effect (placeholder: filled in with the network
//! capability's journal records).

use serde::{Deserialize, Serialize};

use crate::undo::{UndoCtx, Undone};

/// What reverses one network effect.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "kebab-case")]
pub enum NetworkUndo {}

impl NetworkUndo {
    /// Reverses the effect, if the host is still as the run left it.
    pub(crate) fn undo(&self, _ctx: &UndoCtx<'_>) -> Undone {
        match *self {}
    }
}
