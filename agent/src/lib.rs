//! The node agent: [`cluster`] runs the HostActionRuns of its node from the
//! API server. Its parts that need no API server: loading a HostAction's
//! module (a file, or an OCI reference run by digest), running it with its
//! grants bounded by the node's policy, and summing the report up as a
//! `HostActionRun` status. [`static_dir`] applies HostAction manifests from a
//! directory with them, as the kubelet runs static pods.

pub mod cluster;
mod error;
#[doc(hidden)]
pub mod fuzzing;
pub mod metrics;
pub mod static_dir;

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use hostaction_crds::action::{
    Journal as SpecJournal, Mode as SpecMode, OnFailure as SpecOnFailure,
};
use hostaction_crds::run::{DRIFT_MESSAGE_BYTES, UNDO_PROBLEMS_LISTED, Verification};
use hostaction_crds::run::{
    EFFECTS_LISTED, EffectSummary, LINE_BYTES, LOG_TAIL_LINES, MESSAGE_BYTES, RUN_ID_BYTES,
    STATUS_BYTES, WORD_BYTES,
};
use hostaction_crds::{Grant, HostActionRunStatus, RunPhase, UndoSummary};
use hostaction_runtime::undo::{JournalMode, OnFailure, UndoReport, Undone};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;

use hostaction_distribution::RegistryFault;
use hostaction_distribution::{self as oci, ModuleStore, Registry, StoredArtifact};
use hostaction_runtime::effects::Mode;
use hostaction_runtime::engine::Limits;
use hostaction_runtime::grant::{EffectiveGrant, GrantDocument};
use hostaction_runtime::{Error as RuntimeError, LoadedModule, RunReport, RunRequest, Runtime};

pub use error::Error;

/// What an agent logs when it runs with no policy bounding its grants.
const UNBOUNDED: &str = "no node policy: every grant is taken as it is, unbounded \
     (--unbounded-grants); whoever can create a run for this node is root on it";

/// The node policy an agent runs with: the file's, or — with no file — one
/// that grants nothing (fail closed), unless `unbounded` (the explicit
/// opt-out, `--unbounded-grants`) says to take every grant as it is, which
/// is logged loudly here and on every run. `None` is that unbounded case.
pub fn node_policy(file: Option<&Path>, unbounded: bool) -> Result<Option<Grant>, RuntimeError> {
    match (file, unbounded) {
        (Some(_), true) => Err(RuntimeError::Usage(
            "--policy and --unbounded-grants: one or the other".into(),
        )),
        (Some(file), false) => Grant::from_file(file, "policy").map(Some),
        (None, false) => {
            tracing::warn!(
                "no node policy (--policy): nothing is granted; every run that needs a capability is refused"
            );
            Ok(Some(Grant::default()))
        }
        (None, true) => {
            tracing::warn!("{UNBOUNDED}");
            Ok(None)
        }
    }
}

/// Checks that `module` is what a cluster node runs: a registry reference
/// pinned by digest (`registry/repository[:tag]@sha256:<64 hex>`), parsed
/// by the OCI reference parser — never a file path, never a URL with a
/// scheme, never a reference the parser would complete (a default registry).
pub fn pinned_reference(module: &str) -> Result<(), RuntimeError> {
    let refuse = |why: &str| {
        Err(oci::Error::registry(
            RegistryFault::BadReference,
            format!(
                "spec.module {module:?}: {why}; a node runs a registry reference pinned by \
                 digest (registry.example/repository@sha256:<64 hex>) only"
            ),
        )
        .into())
    };
    if module.contains("://") || module.starts_with("file:") {
        return refuse("a URL, not a registry reference");
    }
    if module.starts_with(['/', '.', '~']) || module.contains("/../") || module.contains("/./") {
        return refuse("a file path, not a registry reference");
    }
    let Some((host, _)) = module.split_once('/') else {
        return refuse("no registry host");
    };
    if !(host.contains(['.', ':']) || host == "localhost") {
        return refuse(
            "its first part is not a registry host (one with a '.' or a port, or localhost)",
        );
    }
    let parsed = oci::parse_reference(module)?;
    if parsed.digest().is_none() {
        return refuse("not pinned by digest");
    }
    if parsed.registry() != host
        || !module.starts_with(&format!("{}/{}", parsed.registry(), parsed.repository()))
    {
        return refuse("not a reference in canonical form");
    }
    Ok(())
}

/// What a run of a HostAction's module is given besides the module: its
/// spec's params, grants, mode and timeout, and the node's policy.
#[derive(Clone, Copy)]
pub struct RunInput<'a> {
    /// The spec's params (none: `{}`).
    pub params: Option<&'a serde_json::Map<String, serde_json::Value>>,
    /// The spec's grants.
    pub grants: &'a Grant,
    /// The node policy bounding them (`None`: unbounded, the explicit
    /// opt-out).
    pub policy: Option<&'a Grant>,
    /// Apply or plan.
    pub mode: SpecMode,
    /// The run's deadline.
    pub timeout: Duration,
    /// The run's id (its undo journal's name); none: a new one.
    pub run_id: Option<&'a str>,
    /// Who starts it (the HostAction's uid), kept in its journal so that the
    /// action's runs can be found and undone.
    pub owner: Option<&'a str>,
    /// What a failure does with the changes made.
    pub on_failure: SpecOnFailure,
    /// Whether the run keeps an undo journal.
    pub journal: SpecJournal,
}

impl RunInput<'_> {
    /// The signature policy of the run: the node policy's `verify`,
    /// narrowed by the grant's.
    pub fn verify(&self) -> Result<oci::Policy, RuntimeError> {
        oci::Policy::new(
            self.policy.and_then(|p| p.verify.as_ref()),
            self.grants.verify.as_ref(),
        )
        .map_err(|why| oci::Error::BadParams(why).into())
    }
}

impl<'a> RunInput<'a> {
    /// The input of a run of `spec` bounded by `policy`: no id, no owner
    /// (set them after).
    pub fn of(spec: &'a hostaction_crds::HostActionSpec, policy: Option<&'a Grant>) -> Self {
        Self {
            params: spec.params.as_ref(),
            grants: &spec.grants,
            policy,
            mode: spec.mode,
            timeout: Duration::from_secs(u64::try_from(spec.timeout_seconds.max(1)).unwrap_or(60)),
            run_id: None,
            owner: None,
            on_failure: spec.on_failure,
            journal: spec.journal,
        }
    }
}

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
    ///
    /// With `verify` requiring a signature, a reference is pulled only if
    /// its artifact is signed by one of its keys, and a file is refused.
    pub fn load(
        &self,
        module: &str,
        run_timeout: Option<Duration>,
        verify: &oci::Policy,
    ) -> Result<(Arc<LoadedModule>, Option<StoredArtifact>), RuntimeError> {
        let path = module.strip_prefix("file://").unwrap_or(module);
        if !oci::is_reference(path) {
            if verify.required() {
                return Err(oci::Error::Untrusted(format!(
                    "{module}: a signature is required, and a module file carries none \
                     (signatures are checked on registry artifacts: push it, sign it, run \
                     its reference)"
                ))
                .into());
            }
            return Ok((self.runtime.load_file(path.as_ref())?, None));
        }
        let artifact = self
            .registry
            .pull_for_run(module, self.store, run_timeout, verify)?;
        Ok((self.runtime.load_stored(&artifact)?, Some(artifact)))
    }

    /// The module of a registry reference pinned by digest (see
    /// [`pinned_reference`]), pulled into the store and checked against
    /// its digest: what a cluster node runs; never a file.
    pub fn load_pinned(
        &self,
        module: &str,
        run_timeout: Duration,
        verify: &oci::Policy,
    ) -> Result<(Arc<LoadedModule>, Option<StoredArtifact>), RuntimeError> {
        pinned_reference(module)?;
        let artifact = self
            .registry
            .pull_for_run(module, self.store, Some(run_timeout), verify)?;
        Ok((self.runtime.load_stored(&artifact)?, Some(artifact)))
    }

    /// Loads `module` (a file or a reference, see [`Loader::load`]) and
    /// runs it with `input`; a failure to load or to start is the run's
    /// failure, not the caller's. Returns the report and the digest run.
    pub fn load_and_run(
        &self,
        module: &str,
        input: RunInput<'_>,
    ) -> Result<(RunReport, String), RuntimeError> {
        let loaded = self.load(module, Some(input.timeout), &input.verify()?)?;
        self.run_loaded(loaded, input)
    }

    /// [`Loader::load_and_run`] for a cluster node: `module` must be a
    /// registry reference pinned by digest (see [`Loader::load_pinned`]).
    pub fn load_pinned_and_run(
        &self,
        module: &str,
        input: RunInput<'_>,
    ) -> Result<(RunReport, String), RuntimeError> {
        let loaded = self.load_pinned(module, input.timeout, &input.verify()?)?;
        self.run_loaded(loaded, input)
    }

    fn run_loaded(
        &self,
        (loaded, artifact): (Arc<LoadedModule>, Option<StoredArtifact>),
        RunInput {
            params,
            grants,
            policy,
            mode,
            timeout,
            run_id,
            owner,
            on_failure,
            journal,
        }: RunInput<'_>,
    ) -> Result<(RunReport, String), RuntimeError> {
        let digest = artifact
            .as_ref()
            .map_or_else(|| loaded.digest.clone(), |a| a.digest.clone());
        let params = serde_json::to_string(&params.cloned().unwrap_or_default())
            .map_err(|e| RuntimeError::BadParams(e.to_string()))?;
        if policy.is_none() {
            tracing::warn!("{UNBOUNDED}");
        }
        let mut request = RunRequest::new(params, EffectiveGrant::new(grants, policy)?);
        request.mode = match mode {
            SpecMode::Apply => Mode::Apply,
            SpecMode::Plan => Mode::Plan,
        };
        request.limits = Limits {
            timeout,
            ..Limits::default()
        };
        request.run_id = run_id.map(str::to_owned);
        request.owner = owner.map(str::to_owned);
        request.on_failure = match on_failure {
            SpecOnFailure::Rollback => OnFailure::Rollback,
            SpecOnFailure::Keep => OnFailure::Keep,
        };
        request.journal = match journal {
            SpecJournal::Required => JournalMode::Required,
            SpecJournal::BestEffort => JournalMode::BestEffort,
            SpecJournal::Off => JournalMode::Off,
        };
        if let Some(artifact) = &artifact {
            request.payload = Arc::new(artifact.payload.clone());
        }
        match self.runtime.run(&loaded, request) {
            Ok(mut report) => {
                report.provenance = artifact.map(|a| a.provenance);
                Ok((report, digest))
            }
            // Say why an agent without a policy refused it.
            Err(RuntimeError::Refused(mut why))
                if policy.is_some_and(|p| *p == Grant::default()) =>
            {
                if let Some(last) = why.last_mut() {
                    last.push_str(
                        " (this node's agent runs without a node policy, --policy: it grants nothing)",
                    );
                }
                Err(RuntimeError::Refused(why))
            }
            Err(e) => Err(e),
        }
    }
}

/// The `HostActionRun` status of a finished run, within [`STATUS_BYTES`]:
/// each text cut to its bound, then the log tail (newest lines kept) and
/// the effects (first ones kept) shortened until the whole fits; the counts
/// of what was dropped stay.
pub fn finished_status(report: &RunReport, started: Time, attempts: i32) -> HostActionRunStatus {
    finished_status_leaving(report, started, attempts, 0)
}

/// Bytes of JSON a run's `Drifted` condition takes at most: its message
/// (bounded as JSON by [`drift_message`]) and the rest of the condition.
pub const DRIFT_CONDITION_BYTES: usize = DRIFT_MESSAGE_BYTES + 256;

/// [`finished_status`] leaving `reserve` bytes of [`STATUS_BYTES`] free for
/// what is written into the status later (a run with `spec.drift` leaves
/// [`DRIFT_CONDITION_BYTES`] for its `Drifted` condition), so the status
/// stays within its budget then too.
pub fn finished_status_leaving(
    report: &RunReport,
    started: Time,
    attempts: i32,
    reserve: usize,
) -> HostActionRunStatus {
    let succeeded = report.status.is_success();
    let status = HostActionRunStatus {
        phase: if succeeded {
            RunPhase::Succeeded
        } else {
            RunPhase::Failed
        },
        started_at: Some(started),
        finished_at: Some(now()),
        changed: Some(report.changed()),
        message: Some(cut(
            match &report.outcome {
                Some(outcome) if succeeded => outcome.message.clone(),
                _ => report.status.to_string(),
            },
            MESSAGE_BYTES,
        )),
        effect_count: count(report.effect_count()),
        attempts,
        run_id: Some(cut(report.run_id.clone(), RUN_ID_BYTES)),
        undoable: Some(report.undoable),
        rollback: report.rollback.as_ref().map(|r| undo_summary([r])),
        verification: report.provenance.as_ref().map(|p| match p {
            oci::Provenance::Verified { .. } => Verification::Verified,
            oci::Provenance::NotRequired => Verification::NotRequired,
        }),
        signature_key: match &report.provenance {
            Some(oci::Provenance::Verified { key }) => Some(cut(key.clone(), 71)),
            _ => None,
        },
        ..HostActionRunStatus::default()
    };
    let log = report
        .log
        .iter()
        .rev()
        .take(LOG_TAIL_LINES)
        .map(|l| cut(format!("{} {}", l.level, l.message), LINE_BYTES));
    let effects = report
        .effects
        .iter()
        .take(EFFECTS_LISTED)
        .map(|e| EffectSummary {
            capability: cut(e.capability.to_owned(), WORD_BYTES),
            action: cut(e.action.to_owned(), WORD_BYTES),
            target: cut(e.target.clone(), LINE_BYTES),
        });
    fit(
        status,
        log,
        report.log.len(),
        effects,
        report.effect_count(),
        reserve,
    )
}

/// `text` cut so that its JSON (escapes and quotes counted: a diff of a
/// file full of control characters or quotes grows up to 6× when encoded)
/// takes at most [`DRIFT_MESSAGE_BYTES`] plus the two quotes.
pub fn drift_message(text: String) -> String {
    let mut max = DRIFT_MESSAGE_BYTES;
    let mut text = cut(text, max);
    loop {
        let over = json_len(&text).saturating_sub(DRIFT_MESSAGE_BYTES + 2);
        if over == 0 || max == 0 {
            return text;
        }
        max = max.saturating_sub(over.max(1));
        text = cut(text, max);
    }
}

/// The status of a run whose action was undone on its node: `old` with
/// phase `Undone`, `message` and the undo summary, without its log tail
/// (counted as dropped), and as many of its effects as keep the whole —
/// its `Drifted` condition included — within [`STATUS_BYTES`].
pub fn undone_status(
    old: HostActionRunStatus,
    message: String,
    summary: UndoSummary,
) -> HostActionRunStatus {
    let mut status = HostActionRunStatus {
        phase: RunPhase::Undone,
        finished_at: Some(now()),
        message: Some(cut(message, MESSAGE_BYTES)),
        undo: Some(summary),
        log_tail: Vec::new(),
        log_lines_dropped: old
            .log_lines_dropped
            .saturating_add(count(old.log_tail.len())),
        ..old
    };
    while json_len(&status) > STATUS_BYTES && status.effects.pop().is_some() {
        status.effects_dropped = status.effects_dropped.saturating_add(1);
    }
    status
}

/// What a drift check's plan would change, for a `Drifted` condition: one
/// line per effect with its diff, within [`DRIFT_MESSAGE_BYTES`].
pub fn drift_summary(report: &RunReport) -> String {
    let mut out = String::new();
    for effect in &report.effects {
        if out.len() >= DRIFT_MESSAGE_BYTES {
            break;
        }
        if !out.is_empty() {
            out.push('\n');
        }
        out.push_str(&format!(
            "{} {} {}",
            effect.capability, effect.action, effect.target
        ));
        if let Some(diff) = &effect.diff {
            out.push('\n');
            out.push_str(&cut(diff.clone(), DRIFT_MESSAGE_BYTES / 4));
        }
    }
    if report.effects_dropped > 0 {
        out.push_str(&format!("\n(and {} more effects)", report.effects_dropped));
    }
    drift_message(out)
}

/// What undoing one or more runs came to, bounded as the status wants it:
/// counts, and the first [`UNDO_PROBLEMS_LISTED`] effects not restored.
pub fn undo_summary<'a>(reports: impl IntoIterator<Item = &'a UndoReport>) -> UndoSummary {
    let mut summary = UndoSummary::default();
    for report in reports {
        let c = report.counts();
        summary.restored = summary.restored.saturating_add(count(c.restored));
        summary.conflicts = summary.conflicts.saturating_add(count(c.conflicts));
        summary.irreversible = summary.irreversible.saturating_add(count(c.irreversible));
        summary.failed = summary.failed.saturating_add(count(c.failed));
        for entry in &report.entries {
            if summary.problems.len() >= UNDO_PROBLEMS_LISTED {
                break;
            }
            let (word, why) = match &entry.undone {
                Undone::Restored | Undone::Unchanged => continue,
                Undone::Conflict(why) => ("conflict", why),
                Undone::Irreversible(why) => ("irreversible", why),
                Undone::Failed(why) => ("failed", why),
            };
            summary.problems.push(cut(
                format!(
                    "{word} {} {} {}: {why}",
                    entry.capability, entry.action, entry.target
                ),
                LINE_BYTES,
            ));
        }
    }
    summary
}

/// Fills `status` with as many of `log` (newest first) and `effects` (first
/// first) as fit [`STATUS_BYTES`] — half the room to each, then what one
/// leaves to the other — and sets the counts of the dropped ones.
fn fit(
    mut status: HostActionRunStatus,
    log: impl Iterator<Item = String>,
    log_total: usize,
    effects: impl Iterator<Item = EffectSummary>,
    effects_total: usize,
    reserve: usize,
) -> HostActionRunStatus {
    // The drop counts at their widest, and the two lists' keys and brackets.
    status.log_lines_dropped = i32::MAX;
    status.effects_dropped = i32::MAX;
    let base = json_len(&status).saturating_add(64).saturating_add(reserve);
    let room = STATUS_BYTES.saturating_sub(base);
    let (log, effects): (Vec<String>, Vec<EffectSummary>) = (log.collect(), effects.collect());
    // Each item costs its JSON and a comma.
    let (mut log_used, mut effects_used) = (0usize, 0usize);
    let (mut log_taken, mut effects_taken) = (0usize, 0usize);
    let take_effects = |limit: usize, used: &mut usize, taken: &mut usize| {
        while let Some(effect) = effects.get(*taken) {
            let cost = json_len(effect).saturating_add(1);
            if used.saturating_add(cost) > limit {
                break;
            }
            *used += cost;
            *taken += 1;
        }
    };
    take_effects(room / 2, &mut effects_used, &mut effects_taken);
    for line in &log {
        let cost = json_len(line).saturating_add(1);
        if log_used.saturating_add(cost) > room.saturating_sub(effects_used) {
            break;
        }
        log_used += cost;
        log_taken += 1;
    }
    take_effects(
        room.saturating_sub(log_used),
        &mut effects_used,
        &mut effects_taken,
    );
    status.log_tail = log.into_iter().take(log_taken).collect();
    status.log_tail.reverse();
    status.effects = effects.into_iter().take(effects_taken).collect();
    status.log_lines_dropped = count(log_total.saturating_sub(status.log_tail.len()));
    status.effects_dropped = count(effects_total.saturating_sub(status.effects.len()));
    status
}

/// Bytes of `value`'s JSON (unknowable ones count as too many).
fn json_len<T: serde::Serialize + ?Sized>(value: &T) -> usize {
    serde_json::to_vec(value).map_or(usize::MAX, |bytes| bytes.len())
}

/// The status of a run that could not start (bad module, refused, registry).
pub fn failed_status(error: &RuntimeError, started: Time, attempts: i32) -> HostActionRunStatus {
    HostActionRunStatus {
        phase: RunPhase::Failed,
        started_at: Some(started),
        finished_at: Some(now()),
        message: Some(cut(error.to_string(), MESSAGE_BYTES)),
        attempts,
        ..HostActionRunStatus::default()
    }
}

/// `status` without its log tail and effects, its message saying that the
/// API server refused the whole status and why: what is written once when
/// the full status is refused for good.
pub fn shrunk_status(status: &HostActionRunStatus, refusal: &str) -> HostActionRunStatus {
    let message = format!(
        "the API server refused this run's status ({}); its log and effects are left out. \
         The run's message: {}",
        cut(refusal.to_owned(), MESSAGE_BYTES / 2),
        status.message.as_deref().unwrap_or("-")
    );
    HostActionRunStatus {
        message: Some(cut(message, MESSAGE_BYTES)),
        log_tail: Vec::new(),
        effects: Vec::new(),
        log_lines_dropped: status
            .log_lines_dropped
            .saturating_add(count(status.log_tail.len())),
        effects_dropped: status
            .effects_dropped
            .saturating_add(count(status.effects.len())),
        ..status.clone()
    }
}

/// Now, as Kubernetes writes times.
pub fn now() -> Time {
    Time(k8s_openapi::jiff::Timestamp::now())
}

/// A count as the status's `int32`.
fn count(n: usize) -> i32 {
    i32::try_from(n).unwrap_or(i32::MAX)
}

/// `text` cut to `max` bytes (at a character boundary, `...` marking the cut).
pub(crate) fn cut(mut text: String, max: usize) -> String {
    if text.len() > max {
        let mut end = max.saturating_sub(3);
        while !text.is_char_boundary(end) {
            end -= 1;
        }
        text.truncate(end);
        text.push_str("...");
    }
    text
}

#[cfg(test)]
mod budget_tests {
    use super::*;
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;

    /// Effects whose JSON alone fills more than [`STATUS_BYTES`].
    fn many_effects() -> Vec<EffectSummary> {
        (0..EFFECTS_LISTED)
            .map(|i| EffectSummary {
                capability: "files".to_owned(),
                action: "write-file".to_owned(),
                target: format!("/opt/cni/bin/{i}-{}", "x".repeat(300)),
            })
            .collect()
    }

    /// The widest `Drifted` condition the agent writes: a diff of quotes
    /// and control characters (6 bytes each in JSON).
    fn widest_condition() -> Condition {
        Condition {
            type_: hostaction_crds::run::DRIFTED.to_owned(),
            status: "True".to_owned(),
            reason: "RemediationFailed".to_owned(),
            message: drift_message("\u{1}\"".repeat(DRIFT_MESSAGE_BYTES)),
            observed_generation: Some(i64::MAX),
            last_transition_time: now(),
        }
    }

    /// A run with `spec.drift` keeps its status within the budget once its
    /// `Drifted` condition is written into it, however wide the diff.
    #[test]
    fn a_drifting_runs_status_leaves_room_for_its_condition() {
        let effects = many_effects();
        let total = effects.len();
        let mut status = fit(
            HostActionRunStatus::default(),
            std::iter::empty(),
            0,
            effects.into_iter(),
            total,
            DRIFT_CONDITION_BYTES,
        );
        assert!(status.effects_dropped > 0);
        let condition = widest_condition();
        assert!(
            json_len(&condition.message) <= DRIFT_MESSAGE_BYTES + 2,
            "{}",
            json_len(&condition.message)
        );
        status.conditions = vec![condition];
        assert!(json_len(&status) <= STATUS_BYTES, "{}", json_len(&status));
    }

    /// The `Undone` status (an undo summary at its widest added to a full
    /// status with a `Drifted` condition) stays within the budget too.
    #[test]
    fn an_undone_status_stays_within_the_budget() {
        let effects = many_effects();
        let total = effects.len();
        let mut old = fit(
            HostActionRunStatus::default(),
            std::iter::empty(),
            0,
            effects.into_iter(),
            total,
            DRIFT_CONDITION_BYTES,
        );
        old.conditions = vec![widest_condition()];
        let summary = UndoSummary {
            restored: 1,
            failed: 5,
            problems: vec!["p".repeat(LINE_BYTES); UNDO_PROBLEMS_LISTED],
            ..UndoSummary::default()
        };
        let dropped = old.effects_dropped;
        let status = undone_status(old, "m".repeat(2 * MESSAGE_BYTES), summary);
        assert!(json_len(&status) <= STATUS_BYTES, "{}", json_len(&status));
        assert!(status.effects_dropped > dropped);
        assert_eq!(status.phase, RunPhase::Undone);
    }
}
