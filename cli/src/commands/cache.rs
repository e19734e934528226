//! `hostaction cache list|gc`: the node's module store.

use std::fmt;

use hostaction_distribution::store::{Collected, Listed};
use hostaction_runtime::Error;
use serde::Serialize;

use crate::common::{self, NodeCache, Output};

/// `hostaction cache` subcommands.
#[derive(clap::Subcommand)]
pub enum CacheCommand {
    /// List stored artifacts, most recently used first.
    List {
        /// Output format.
        #[arg(long, value_enum, default_value_t = Output::Text)]
        output: Output,
    },
    /// Remove least recently used artifacts (and their precompiled code)
    /// until the store holds at most --max-mib.
    Gc {
        /// What the store may keep [default: --cache-max-mib].
        #[arg(long, value_name = "MIB")]
        max_mib: Option<u64>,
        /// Output format.
        #[arg(long, value_enum, default_value_t = Output::Text)]
        output: Output,
    },
}

impl CacheCommand {
    /// The output format asked for.
    pub fn output(&self) -> Output {
        match self {
            CacheCommand::List { output } | CacheCommand::Gc { output, .. } => *output,
        }
    }

    /// Lists or collects.
    pub fn execute(self, node: &NodeCache) -> Result<u8, Error> {
        let store = node.store(None)?;
        match self {
            CacheCommand::List { output } => {
                common::print(output, &ListOutput(store.list()?));
            }
            CacheCommand::Gc { max_mib, output } => {
                let max = max_mib.map_or(node.max_bytes, |m| m.saturating_mul(1 << 20));
                common::print(output, &GcOutput(store.collect(max)?));
            }
        }
        Ok(0)
    }
}

/// The stored artifacts, most recently used first.
#[derive(Serialize)]
#[serde(transparent)]
struct ListOutput(Vec<Listed>);

impl fmt::Display for ListOutput {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for a in &self.0 {
            let payload = if a.payload.is_empty() {
                "-".to_owned()
            } else {
                a.payload.join(",")
            };
            writeln!(f, "{}  {:>10} bytes  payload: {payload}", a.digest, a.bytes)?;
        }
        Ok(())
    }
}

/// What a collection removed and kept.
#[derive(Serialize)]
#[serde(transparent)]
struct GcOutput(Collected);

impl fmt::Display for GcOutput {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            f,
            "removed {} artifacts, freed {} bytes, {} bytes kept",
            self.0.removed.len(),
            self.0.freed_bytes,
            self.0.kept_bytes
        )
    }
}
