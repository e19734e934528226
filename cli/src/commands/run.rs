//! `hostaction run`: one action on this host.

use std::fmt::{self, Write as _};
use std::path::PathBuf;
use std::sync::Arc;

use hostaction_distribution::{self as oci, Payload, StoredArtifact};
use hostaction_runtime::effects::Mode;
use hostaction_runtime::engine::{CompileStats, Limits, LoadSource};
use hostaction_runtime::grant::EffectiveGrant;
use hostaction_runtime::report::printable;
use hostaction_runtime::undo::{JournalMode, OnFailure, UndoReport};
use hostaction_runtime::{Error, LoadedModule, RunReport, RunRequest};
use serde::Serialize;

use crate::common::{
    self, ArtifactOutput, HostArgs, NodeCache, Output, RegistryArgs, name_and_path, seconds,
};

/// `hostaction run` flags.
#[derive(clap::Args)]
pub struct RunCommand {
    /// The module: a component .wasm file, or an OCI reference
    /// (registry/repository:tag or @sha256:...), pulled into the node's
    /// module store and run by digest.
    module: String,
    /// A payload file for a module run from a file (repeatable); an
    /// artifact brings its own.
    #[arg(long, value_name = "NAME=FILE", value_parser = name_and_path)]
    payload: Vec<(String, PathBuf)>,
    #[command(flatten)]
    registry: RegistryArgs,
    /// Params: a JSON document, or @FILE to read one.
    #[arg(long, default_value = "{}")]
    params: String,
    /// Grant document (YAML or JSON). Without it the action gets no capability.
    #[arg(long, value_name = "FILE")]
    grants: Option<PathBuf>,
    /// Node policy bounding the grant (YAML or JSON); effective grant = grant ∩ policy.
    #[arg(long, value_name = "FILE")]
    policy: Option<PathBuf>,
    /// A public key (PEM, ECDSA P-256 or Ed25519) the module's artifact must
    /// be signed by (cosign format); repeatable. Added to the grant's
    /// `verify.keys`: it requires a signature, and narrows the policy's keys.
    #[arg(long, value_name = "FILE")]
    verify_key: Vec<PathBuf>,
    /// Refuse a module whose artifact is not signed by a key the policy
    /// (or --verify-key) trusts.
    #[arg(long)]
    require_signature: bool,
    #[command(flatten)]
    host: HostArgs,
    /// Wall-clock deadline of the run, in seconds (host calls included).
    #[arg(long, value_name = "SECONDS", default_value_t = 30.0)]
    timeout: f64,
    /// Linear memory limit, in MiB.
    #[arg(long, value_name = "MIB", default_value_t = 64)]
    memory: usize,
    /// Log limit, in KiB; lines past it are dropped and counted.
    #[arg(long, value_name = "KIB", default_value_t = 1024)]
    log_limit: usize,
    /// Limit of the effects listed, in KiB; effects past it are counted.
    #[arg(long, value_name = "KIB", default_value_t = 1024)]
    effects_limit: usize,
    /// Outcome limit (its message and facts), in KiB.
    #[arg(long, value_name = "KIB", default_value_t = 64)]
    outcome_limit: usize,
    /// Plan: reads are real, changes are only reported (with their diffs).
    #[arg(long)]
    plan: bool,
    /// What a failed run (failed, trapped, past its deadline or a limit)
    /// does with the changes it made: roll them back, or keep them
    /// (`hostaction undo RUN` later).
    #[arg(long, value_enum, default_value_t = OnFailureArg::Rollback)]
    on_failure: OnFailureArg,
    /// The undo journal: `required` (a change whose undo data would pass
    /// the journal's budget ends the run before it is made),
    /// `best-effort` (past the budget the run goes on and cannot be
    /// undone), or `off` (no rollback, no undo).
    #[arg(long, value_enum, default_value_t = JournalArg::Required)]
    journal: JournalArg,
    /// Output format.
    #[arg(long, value_enum, default_value_t = Output::Text)]
    pub output: Output,
}

impl RunCommand {
    /// Runs the action; the exit code is its status's.
    pub fn execute(self, node: &NodeCache) -> Result<u8, Error> {
        let params = match self.params.strip_prefix('@') {
            Some(file) => std::fs::read_to_string(file).map_err(|source| Error::Input {
                what: file.to_owned(),
                source,
            })?,
            None => self.params.clone(),
        };
        let (mut grant, policy) =
            common::read_grants(self.grants.as_deref(), self.policy.as_deref())?;
        if self.require_signature || !self.verify_key.is_empty() {
            let verify = grant.verify.get_or_insert_default();
            verify.required |= self.require_signature;
            for path in &self.verify_key {
                let pem = std::fs::read_to_string(path).map_err(|source| Error::Input {
                    what: format!("--verify-key {}", path.display()),
                    source,
                })?;
                oci::signature::PublicKey::from_pem(&pem).map_err(|why| {
                    Error::BadParams(format!("--verify-key {}: {why}", path.display()))
                })?;
                verify.keys.push(pem);
            }
        }
        let verify = oci::Policy::new(
            policy.as_ref().and_then(|p| p.verify.as_ref()),
            grant.verify.as_ref(),
        )
        .map_err(Error::BadGrant)?;
        let timeout = seconds("timeout", self.timeout)?;
        let bytes = |flag: &str, n: usize, unit: usize| {
            n.checked_mul(unit)
                .ok_or_else(|| Error::BadParams(format!("--{flag} {n}: too large")))
        };
        let limits = Limits {
            memory_bytes: bytes("memory", self.memory, 1 << 20)?,
            timeout,
            log_bytes: bytes("log-limit", self.log_limit, 1 << 10)?,
            effects_bytes: bytes("effects-limit", self.effects_limit, 1 << 10)?,
            output_bytes: bytes("outcome-limit", self.outcome_limit, 1 << 10)?,
        };
        let effective = EffectiveGrant::new(&grant, policy.as_ref())?;
        let runtime = node.runtime(&self.host)?;
        let (module, artifact) = node.load(
            &runtime,
            &self.module,
            &self.registry,
            Some(timeout),
            &verify,
        )?;
        let payload = match &artifact {
            Some(_) if !self.payload.is_empty() => {
                return Err(Error::BadParams(
                    "--payload is for a module run from a file; an artifact brings its own".into(),
                ));
            }
            Some(artifact) => artifact.payload.clone(),
            None => Payload::from_files(&self.payload)?,
        };
        // Runs a crash cut short are rolled back before anything else.
        let recovered = runtime.recover()?;
        let mut request = RunRequest::new(params, effective);
        request.mode = if self.plan { Mode::Plan } else { Mode::Apply };
        request.limits = limits;
        request.payload = Arc::new(payload);
        request.on_failure = self.on_failure.into();
        request.journal = self.journal.into();
        let mut report = runtime.run(&module, request)?;
        report.provenance = artifact.as_ref().map(|a| a.provenance.clone());
        if let Some(dir) = runtime.journals() {
            dir.collect(KEEP_JOURNALS)?;
        }
        let code = report.status.exit_code();
        let mut output = RunOutput::new(
            &self.module,
            artifact.as_ref(),
            &module,
            self.host.host_root,
            report,
        );
        output.recovered = recovered;
        common::print(self.output, &output);
        Ok(code)
    }
}

/// Finished runs' journals kept on a node by the CLI (the newest; older
/// ones are collected at each run).
pub const KEEP_JOURNALS: usize = 64;

/// `--on-failure`.
#[derive(Clone, Copy, clap::ValueEnum)]
enum OnFailureArg {
    Rollback,
    Keep,
}

impl From<OnFailureArg> for OnFailure {
    fn from(arg: OnFailureArg) -> Self {
        match arg {
            OnFailureArg::Rollback => OnFailure::Rollback,
            OnFailureArg::Keep => OnFailure::Keep,
        }
    }
}

/// `--journal`.
#[derive(Clone, Copy, clap::ValueEnum)]
enum JournalArg {
    Required,
    BestEffort,
    Off,
}

impl From<JournalArg> for JournalMode {
    fn from(arg: JournalArg) -> Self {
        match arg {
            JournalArg::Required => JournalMode::Required,
            JournalArg::BestEffort => JournalMode::BestEffort,
            JournalArg::Off => JournalMode::Off,
        }
    }
}

/// What `run` reports: the module, where the host was, runs a crash had
/// cut short (rolled back first), and the run's report.
#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct RunOutput {
    module: ModuleOutput,
    host_root: PathBuf,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    recovered: Vec<UndoReport>,
    report: RunReport,
}

/// The module run: its digest, how it was loaded, and where it came from
/// (`artifact` for a reference, `path` for a file).
#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct ModuleOutput {
    digest: String,
    source: LoadSource,
    load_us: u64,
    compile: Option<CompileStats>,
    #[serde(skip_serializing_if = "Option::is_none")]
    artifact: Option<ArtifactOutput>,
    #[serde(skip_serializing_if = "Option::is_none")]
    path: Option<String>,
}

impl RunOutput {
    fn new(
        name: &str,
        artifact: Option<&StoredArtifact>,
        module: &LoadedModule,
        host_root: PathBuf,
        report: RunReport,
    ) -> Self {
        Self {
            module: ModuleOutput {
                digest: module.digest.clone(),
                source: module.source,
                load_us: module.load_us,
                compile: module.compile,
                artifact: artifact.map(|a| ArtifactOutput::new(name, a)),
                path: artifact.is_none().then(|| name.to_owned()),
            },
            host_root,
            recovered: Vec::new(),
            report,
        }
    }
}

/// The report as text. Every string from the guest (or made from what it
/// passed) goes through [`printable`]: its escape sequences are shown, not
/// obeyed.
impl fmt::Display for RunOutput {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let (module, report) = (&self.module, &self.report);
        for r in &self.recovered {
            writeln!(
                f,
                "recovered run {} (cut short by a crash), rolled back: {}",
                r.run_id,
                r.summary()
            )?;
            super::undo::write_entries(f, r)?;
        }
        match &module.artifact {
            Some(a) => writeln!(
                f,
                "action   {} ({}, module {})",
                printable(&a.reference),
                a.digest,
                module.digest
            )?,
            None => writeln!(
                f,
                "action   {} ({})",
                printable(module.path.as_deref().unwrap_or_default()),
                module.digest
            )?,
        }
        let mode = if report.mode == Mode::Plan {
            " (plan)"
        } else {
            ""
        };
        writeln!(
            f,
            "status   {}{mode}",
            printable(&report.status.to_string())
        )?;
        writeln!(
            f,
            "run      {}{}",
            report.run_id,
            if report.undoable {
                " (undoable: hostaction undo RUN)"
            } else {
                ""
            }
        )?;
        if let Some(outcome) = &report.outcome {
            writeln!(
                f,
                "outcome  changed={} {}",
                outcome.changed,
                printable(&outcome.message)
            )?;
            for (k, v) in &outcome.facts {
                writeln!(f, "  fact   {} = {}", printable(k), printable(v))?;
            }
        }
        if report.effect_count() == 0 {
            writeln!(f, "changes  none")?;
        } else {
            writeln!(f, "changes  {}", report.effect_count())?;
            for e in &report.effects {
                let planned = if e.applied { "" } else { " [planned]" };
                writeln!(
                    f,
                    "  {} {} {} ({}){planned}",
                    e.capability,
                    e.action,
                    printable(&e.target),
                    printable(&e.detail)
                )?;
                if report.mode == Mode::Plan {
                    for line in e.diff.as_deref().unwrap_or_default().lines() {
                        writeln!(f, "      {}", printable(line))?;
                    }
                }
            }
            if report.effects_dropped > 0 {
                writeln!(
                    f,
                    "  [{} more not listed: past the effects limit]",
                    report.effects_dropped
                )?;
            }
        }
        if let Some(r) = &report.rollback {
            writeln!(f, "rollback {}", r.summary())?;
            super::undo::write_entries(f, r)?;
        }
        if !report.log.is_empty() {
            writeln!(f, "log")?;
            for line in &report.log {
                writeln!(f, "  {:<5} {}", line.level, printable(&line.message))?;
            }
        }
        if report.log_dropped_bytes > 0 {
            writeln!(
                f,
                "  [log truncated: {} bytes dropped]",
                report.log_dropped_bytes
            )?;
        }
        writeln!(
            f,
            "memory   {:.1} MiB of linear memory",
            report.memory_bytes as f64 / f64::from(1 << 20)
        )?;
        let mut loaded = String::new();
        let _ = match (module.source, module.compile) {
            (LoadSource::Compiled, Some(c)) => write!(
                loaded,
                "compiled by a process that peaked at {:.0} MiB",
                c.peak_rss_bytes as f64 / f64::from(1 << 20)
            ),
            (LoadSource::Compiled, None) => write!(loaded, "compiled"),
            (LoadSource::DiskCache, _) => write!(loaded, "precompiled, from the disk cache"),
            (LoadSource::Memory, _) => write!(loaded, "in memory"),
        };
        let t = &report.timing;
        writeln!(
            f,
            "timing   load {} µs ({loaded}), instantiate {} µs, run {} µs, total {} µs",
            module.load_us, t.instantiate_us, t.run_us, t.total_us
        )
    }
}
