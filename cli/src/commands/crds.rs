//! `hostaction crds`: the CustomResourceDefinitions, as YAML.

use hostaction_runtime::Error;

/// `hostaction crds` (no flags).
#[derive(clap::Args)]
pub struct CrdsCommand {}

impl CrdsCommand {
    /// Prints the CRDs generated from the types (`manifests/crds.yaml`).
    pub fn execute(self) -> Result<u8, Error> {
        let yaml = hostaction_crds::crds_yaml()
            .map_err(|e| Error::Host(format!("rendering the CRDs: {e}")))?;
        crate::common::emit(&yaml);
        Ok(0)
    }
}
