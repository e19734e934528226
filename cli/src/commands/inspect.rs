//! `hostaction inspect`: what a module imports and exports.

use std::fmt;

use hostaction_runtime::engine::{Import, Provided};
use hostaction_runtime::report::printable;
use hostaction_runtime::{Error, LoadedModule};
use serde::Serialize;

use crate::common::{self, HostArgs, NodeCache, Output, RegistryArgs};

/// `hostaction inspect` flags.
#[derive(clap::Args)]
pub struct InspectCommand {
    /// The module: a component .wasm file, or an OCI reference.
    module: String,
    #[command(flatten)]
    registry: RegistryArgs,
    /// Output format.
    #[arg(long, value_enum, default_value_t = Output::Text)]
    pub output: Output,
}

impl InspectCommand {
    /// Loads the module (pulling a reference) and prints what it imports.
    pub fn execute(self, node: &NodeCache) -> Result<u8, Error> {
        let runtime = node.runtime(&HostArgs::none())?;
        let (module, _) = node.load(&runtime, &self.module, &self.registry, None)?;
        common::print(self.output, &InspectOutput::new(&module));
        Ok(0)
    }
}

/// A module's imports (each with what provides it) and exports.
#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct InspectOutput {
    digest: String,
    imports: Vec<Import>,
    exports: Vec<String>,
    runnable: bool,
    unrunnable_reason: Option<String>,
}

impl InspectOutput {
    fn new(module: &LoadedModule) -> Self {
        Self {
            digest: module.digest.clone(),
            imports: module.imports.clone(),
            exports: module.exports.clone(),
            runnable: module.unrunnable().is_none(),
            unrunnable_reason: module.unrunnable().map(str::to_owned),
        }
    }
}

/// Names from the module go through [`printable`].
impl fmt::Display for InspectOutput {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "digest  {}", self.digest)?;
        writeln!(f, "capabilities (need a grant):")?;
        let mut capabilities = 0;
        for i in &self.imports {
            if let Provided::Capability(c) = i.provided {
                writeln!(f, "  {:<9} {}", c.name(), printable(&i.name))?;
                capabilities += 1;
            }
        }
        if capabilities == 0 {
            writeln!(f, "  none")?;
        }
        writeln!(f, "always provided:")?;
        for i in &self.imports {
            match i.provided {
                Provided::Always => writeln!(f, "  {}", printable(&i.name))?,
                Provided::LockedDownWasi => {
                    writeln!(f, "  {} (locked-down WASI)", printable(&i.name))?;
                }
                _ => {}
            }
        }
        writeln!(f, "exports:")?;
        for e in &self.exports {
            writeln!(f, "  {}", printable(e))?;
        }
        if let Some(why) = &self.unrunnable_reason {
            writeln!(f, "not runnable: {}", printable(why))?;
        }
        Ok(())
    }
}
