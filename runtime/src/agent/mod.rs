//! The node agent: [`cluster`] runs the HostActionRuns of its node from the
//! API server. Its parts that need no API server: loading a HostAction's
//! module (a file, or an OCI reference run by digest), running it with its
//! grants bounded by the node's policy, and summing the report up as a
//! `HostActionRun` status. [`static_dir`] applies HostAction manifests from a
//! directory with them, as the kubelet runs static pods.

pub mod cluster;
pub mod static_dir;

use std::sync::Arc;
use std::time::Duration;

use hostaction_crds::action::Mode as SpecMode;
use hostaction_crds::run::{EFFECTS_LISTED, EffectSummary, LOG_TAIL_LINES};
use hostaction_crds::{Grant, HostActionRunStatus, RunPhase};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;

use crate::effects::Mode;
use crate::engine::Limits;
use crate::grant::EffectiveGrant;
use crate::oci::{self, ModuleStore, Registry, StoredArtifact};
use crate::{Error, LoadedModule, RunReport, RunRequest, Runtime};

/// Loads modules as a node does: files as they are, OCI references through
/// the node's module store, by digest.
pub struct Loader<'a> {
    /// The runtime that compiles and runs them.
    pub runtime: &'a Runtime,
    /// The registry client for references.
    pub registry: &'a Registry,
    /// The node's module store.
    pub store: &'a ModuleStore,
}

impl Loader<'_> {
    /// The module `module` names (a `.wasm` file or an OCI reference), and
    /// its artifact when it came from one; a pull for a run has a deadline
    /// tied to `run_timeout` ([`oci::RegistryOptions::pull_deadline`]).
    pub fn load(
        &self,
        module: &str,
        run_timeout: Option<Duration>,
    ) -> Result<(Arc<LoadedModule>, Option<StoredArtifact>), Error> {
        let path = module.strip_prefix("file://").unwrap_or(module);
        if !oci::is_reference(path) {
            return Ok((self.runtime.load_file(path.as_ref())?, None));
        }
        let artifact = self
            .registry
            .pull_for_run(module, self.store, run_timeout)?;
        Ok((self.runtime.load_stored(&artifact)?, Some(artifact)))
    }

    /// Runs `module` with `params` and `grants` bounded by `policy`, in
    /// `mode`, within `timeout`; a failure to load or to start is the run's
    /// failure, not the caller's.
    pub fn run(
        &self,
        module: &str,
        params: Option<&serde_json::Map<String, serde_json::Value>>,
        grants: &Grant,
        policy: Option<&Grant>,
        mode: SpecMode,
        timeout: Duration,
    ) -> Result<(RunReport, String), Error> {
        let (loaded, artifact) = self.load(module, Some(timeout))?;
        let digest = artifact
            .as_ref()
            .map_or_else(|| loaded.digest.clone(), |a| a.digest.clone());
        let params = serde_json::to_string(&params.cloned().unwrap_or_default())
            .map_err(|e| Error::BadParams(e.to_string()))?;
        let mut request = RunRequest::new(params, EffectiveGrant::new(grants, policy)?);
        request.mode = match mode {
            SpecMode::Apply => Mode::Apply,
            SpecMode::Plan => Mode::Plan,
        };
        request.limits = Limits {
            timeout,
            ..Limits::default()
        };
        if let Some(artifact) = &artifact {
            request.payload = Arc::new(artifact.payload.clone());
        }
        Ok((self.runtime.run(&loaded, request)?, digest))
    }
}

/// The `HostActionRun` status of a finished run.
pub fn finished_status(report: &RunReport, started: Time, attempts: i32) -> HostActionRunStatus {
    let succeeded = report.status.is_success();
    let log = &report.log;
    HostActionRunStatus {
        phase: if succeeded {
            RunPhase::Succeeded
        } else {
            RunPhase::Failed
        },
        started_at: Some(started),
        finished_at: Some(now()),
        changed: Some(report.changed()),
        message: Some(cut(match &report.outcome {
            Some(outcome) if succeeded => outcome.message.clone(),
            _ => report.status.to_string(),
        })),
        log_tail: log[log.len().saturating_sub(LOG_TAIL_LINES)..]
            .iter()
            .map(|l| cut(format!("{} {}", l.level, l.message)))
            .collect(),
        effects: report
            .effects
            .iter()
            .take(EFFECTS_LISTED)
            .map(|e| EffectSummary {
                capability: e.capability.to_owned(),
                action: e.action.to_owned(),
                target: e.target.clone(),
            })
            .collect(),
        effect_count: i32::try_from(report.effects.len()).unwrap_or(i32::MAX),
        attempts,
    }
}

/// The status of a run that could not start (bad module, refused, registry).
pub fn failed_status(error: &Error, started: Time, attempts: i32) -> HostActionRunStatus {
    HostActionRunStatus {
        phase: RunPhase::Failed,
        started_at: Some(started),
        finished_at: Some(now()),
        message: Some(cut(error.to_string())),
        attempts,
        ..HostActionRunStatus::default()
    }
}

/// Now, as Kubernetes writes times.
pub fn now() -> Time {
    Time(k8s_openapi::jiff::Timestamp::now())
}

/// A status string cut to the 4 KiB the CRD allows.
fn cut(mut text: String) -> String {
    const MAX: usize = 4096;
    if text.len() > MAX {
        let mut end = MAX - 3;
        while !text.is_char_boundary(end) {
            end -= 1;
        }
        text.truncate(end);
        text.push_str("...");
    }
    text
}
