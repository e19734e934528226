//! `hostaction pull`: an artifact into the module store, by digest.

use hostaction_distribution::Registry;
use hostaction_runtime::Error;

use crate::common::{self, ArtifactOutput, NodeCache, Output, RegistryArgs};

/// `hostaction pull` flags.
#[derive(clap::Args)]
pub struct PullCommand {
    /// registry/repository:tag or registry/repository@sha256:...
    reference: String,
    #[command(flatten)]
    registry: RegistryArgs,
    /// Output format.
    #[arg(long, value_enum, default_value_t = Output::Text)]
    pub output: Output,
}

impl PullCommand {
    /// Pulls the artifact (resolving a tag once) and prints its digest.
    pub fn execute(self, node: &NodeCache) -> Result<u8, Error> {
        let store = node.store(Some(&self.registry))?;
        let artifact = Registry::new(self.registry.options()?)?.pull(&self.reference, &store)?;
        common::print(
            self.output,
            &ArtifactOutput::new(&self.reference, &artifact),
        );
        Ok(0)
    }
}
