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
    /// Sign what was pushed with this private key (see `hostaction sign`).
    #[arg(long, value_name = "FILE")]
    sign_key: Option<PathBuf>,
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
        let bytes = std::fs::read(&self.module).map_err(|source| Error::ModuleFile {
            path: self.module.clone(),
            source,
        })?;
        let request = PushRequest {
            module: bytes,
            imports: loaded.imports.iter().map(|i| i.name.clone()).collect(),
            exports: loaded.exports.clone(),
            payload: self.payload,
            annotations: self.annotation.into_iter().collect(),
        };
        // Read first: a bad key pushes nothing.
        let key = self
            .sign_key
            .as_deref()
            .map(super::sign::read_key)
            .transpose()?;
        let registry = Registry::new(self.registry.options()?)?;
        let pushed = registry.push(&self.reference, &request)?;
        let signed = key
            .map(|key| super::sign::sign(&registry, &pushed.reference, &key))
            .transpose()?;
        common::print(self.output, &PushOutput { pushed, signed });
        Ok(0)
    }
}

/// What was pushed (and its signature); the text form is the reference by
/// digest.
#[derive(Serialize)]
struct PushOutput {
    #[serde(flatten)]
    pushed: Pushed,
    #[serde(skip_serializing_if = "Option::is_none")]
    signed: Option<super::sign::Signed>,
}

impl fmt::Display for PushOutput {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "{}", self.pushed.reference)?;
        if let Some(signed) = &self.signed {
            write!(f, "{signed}")?;
        }
        Ok(())
    }
}
