//! `hostaction push`: a module and its payload as an OCI artifact.

use std::fmt;
use std::path::PathBuf;

use hostaction_distribution::{PushRequest, Pushed, Registry};
use hostaction_runtime::Error;
use serde::Serialize;

use crate::common::{
    self, HostArgs, NodeCache, Output, RegistryArgs, key_and_value, name_and_path,
};

/// `hostaction push` flags.
#[derive(clap::Args)]
pub struct PushCommand {
    /// The component .wasm file.
    module: PathBuf,
    /// Where to: registry/repository[:tag].
    reference: String,
    /// A payload file shipped beside the module, read by the action
    /// through `payload` (repeatable).
    #[arg(long, value_name = "NAME=FILE", value_parser = name_and_path)]
    payload: Vec<(String, PathBuf)>,
    /// An annotation of the manifest (repeatable).
    #[arg(long, value_name = "KEY=VALUE", value_parser = key_and_value)]
    annotation: Vec<(String, String)>,
    #[command(flatten)]
    registry: RegistryArgs,
    /// Output format.
    #[arg(long, value_enum, default_value_t = Output::Text)]
    pub output: Output,
}

impl PushCommand {
    /// Loads the module (only a runnable hostaction component is pushed),
    /// then pushes it.
    pub fn execute(self, node: &NodeCache) -> Result<u8, Error> {
        let runtime = node.runtime(&HostArgs::none())?;
        let loaded = runtime.load_file(&self.module)?;
        if let Some(why) = loaded.unrunnable() {
            return Err(Error::BadModule(why.to_owned()));
        }
        let bytes = std::fs::read(&self.module)
            .map_err(|e| Error::BadModule(format!("{}: {e}", self.module.display())))?;
        let request = PushRequest {
            module: bytes,
            imports: loaded.imports.iter().map(|i| i.name.clone()).collect(),
            exports: loaded.exports.clone(),
            payload: self.payload,
            annotations: self.annotation.into_iter().collect(),
        };
        let pushed = Registry::new(self.registry.options()?)?.push(&self.reference, &request)?;
        common::print(self.output, &PushOutput(pushed));
        Ok(0)
    }
}

/// What was pushed; the text form is the reference by digest.
#[derive(Serialize)]
#[serde(transparent)]
struct PushOutput(Pushed);

impl fmt::Display for PushOutput {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "{}", self.0.reference)
    }
}
