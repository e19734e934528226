//! `hostaction inspect`: what a module imports and exports, and with
//! `--grants`/`--policy`, what it may do under them ([`powers`]).

mod patterns;
mod powers;
mod ranges;

use std::fmt;
use std::path::PathBuf;

use hostaction_runtime::engine::{Import, Provided};

use hostaction_runtime::report::printable;
use hostaction_runtime::{Error, LoadedModule};
use serde::Serialize;

use powers::Powers;

use crate::common::{self, HostArgs, NodeCache, Output, RegistryArgs};

/// `hostaction inspect` flags.
#[derive(clap::Args)]
pub struct InspectCommand {
    /// The module: a component .wasm file, or an OCI reference.
    module: String,
    #[command(flatten)]
    registry: RegistryArgs,
    /// Grant document (YAML or JSON), as `hostaction run --grants` takes:
    /// print the module's effective powers under it.
    #[arg(long, value_name = "FILE")]
    grants: Option<PathBuf>,
    /// Node policy (YAML or JSON), as `hostaction run --policy` takes: print
    /// the effective powers under grant ∩ policy, and what the policy takes
    /// away.
    #[arg(long, value_name = "FILE")]
    policy: Option<PathBuf>,
    /// Output format.
    #[arg(long, value_enum, default_value_t = Output::Text)]
    pub output: Output,
}

impl InspectCommand {
    /// Loads the module (pulling a reference) and prints what it imports;
    /// with a grant or a policy, its effective powers. The documents are
    /// read and checked first, as `hostaction run` does (same errors, same
    /// exit codes).
    pub fn execute(self, node: &NodeCache) -> Result<u8, Error> {
        let documents = if self.grants.is_some() || self.policy.is_some() {
            let (grant, policy) =
                common::read_grants(self.grants.as_deref(), self.policy.as_deref())?;
            // The engine's own checks of the pair (as `run` makes them).
            hostaction_runtime::grant::EffectiveGrant::new(&grant, policy.as_ref())?;
            Some((grant, policy))
        } else {
            None
        };
        let runtime = node.runtime(&HostArgs::none())?;
        let (module, _) = node.load(
            &runtime,
            &self.module,
            &self.registry,
            None,
            &hostaction_distribution::Policy::none(),
        )?;
        let mut output = InspectOutput::new(&module);
        if let Some((grant, policy)) = documents {
            let imported: Vec<_> = module
                .imports
                .iter()
                .filter_map(|i| match i.provided {
                    Provided::Capability(c) => Some(c),
                    _ => None,
                })
                .collect();
            let name = |p: &Option<PathBuf>| p.as_ref().map(|p| p.display().to_string());
            let mut powers = Powers::new(
                &imported,
                &grant,
                name(&self.grants),
                policy.as_ref(),
                name(&self.policy),
            )?;
            // The engine refuses a module it cannot call after the grant
            // checks pass (bad module, exit 2): say so rather than `starts`.
            if let (true, Some(why)) = (powers.run.starts, module.unrunnable()) {
                let error = Error::BadModule(why.to_owned());
                powers.run = powers::RunVerdict {
                    starts: false,
                    exit_code: Some(error.exit_code()),
                    error: Some(error.to_string()),
                };
            }
            output.powers = Some(powers);
        }
        common::print(self.output, &output);
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
    /// With `--grants` or `--policy`: what the module may do under them.
    #[serde(skip_serializing_if = "Option::is_none")]
    powers: Option<Powers>,
}

impl InspectOutput {
    fn new(module: &LoadedModule) -> Self {
        Self {
            digest: module.digest.clone(),
            imports: module.imports.clone(),
            exports: module.exports.clone(),
            runnable: module.unrunnable().is_none(),
            unrunnable_reason: module.unrunnable().map(str::to_owned),
            powers: None,
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
        if let Some(powers) = &self.powers {
            write!(f, "{powers}")?;
        }
        Ok(())
    }
}
