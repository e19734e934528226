//! What reverses a services effect (placeholder: filled in with the services
//! capability's journal records).

use serde::{Deserialize, Serialize};

use crate::undo::{UndoCtx, Undone};

/// What reverses one services effect.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "kebab-case")]
pub enum ServiceUndo {}

impl ServiceUndo {
    /// Reverses the effect, if the unit is still as the run left it.
    pub(crate) fn undo(&self, _ctx: &UndoCtx<'_>) -> Undone {
        match *self {}
    }
}
