//! Static mode: HostAction manifests from a directory, applied with no API
//! server (as the kubelet runs static pods) — the embedded default on one
//! machine, and a way to shape a node before its cluster exists.
//!
//! Each pass reads every `*.yaml`, `*.yml` and `*.json` file of the
//! directory (several documents per file allowed), and runs each HostAction
//! whose node selector matches this node's labels when it is due: never run,
//! its spec changed (`rerun.onSpecChange`), its interval passed
//! (`rerun.intervalSeconds`), or it was left `Running` by an agent that
//! stopped (actions are idempotent: it runs again, up to three times; then it
//! is `Interrupted` until its spec changes). A paused rollout runs nothing. Results go to a JSON
//! state file, written atomically before and after each run, so nothing is
//! lost when the agent stops. A bad manifest is recorded with its error and
//! the others still run.
//!
//! Neither input is trusted to be sane: a manifest is capped in size
//! ([`MAX_MANIFEST_BYTES`]), JSON ones are parsed by the JSON parser (linear,
//! nesting limited), and YAML ones are refused past [`MAX_YAML_FLOW_OPENS`]
//! flow collections (libyaml's scanner takes time in their nesting times
//! the file's size: 600 KB of nested `{` took a minute per pass). A state file with
//! values no agent writes (negative counts) is set aside, and times after
//! now are taken as now, so no stored value makes arithmetic overflow.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use hostaction_crds::{Grant, HostAction, HostActionRunStatus, RunPhase};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::Error;
use crate::{Loader, RunInput, drift_summary, failed_status, finished_status, now};
use hostaction_crds::action::{Journal, Mode as SpecMode};

/// Seconds since the Unix epoch (0 for a clock before it).
fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// Attempts a run gets when the agent stops during it each time.
const MAX_INTERRUPTED: i32 = 3;
/// The largest manifest file read; a larger one is refused, by name.
pub const MAX_MANIFEST_BYTES: u64 = 256 << 10;
/// The most flow collections (`{` or `[`, counted wherever they appear) a
/// YAML manifest may open; more are refused before the YAML parser sees
/// them. JSON manifests, parsed by the JSON parser, have no such bound.
pub const MAX_YAML_FLOW_OPENS: usize = 256;

/// What static mode remembers between passes and restarts.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct StaticState {
    /// Per HostAction name.
    #[serde(default)]
    pub actions: BTreeMap<String, ActionState>,
    /// Manifests that could not be applied, per file: why.
    #[serde(default)]
    pub errors: BTreeMap<String, String>,
}

/// One HostAction's last run.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ActionState {
    /// The manifest file it came from.
    pub file: PathBuf,
    /// sha256 of its spec: a change makes a new generation.
    pub spec_hash: String,
    /// The digest that ran (artifact manifest or module file).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub digest: Option<String>,
    /// Whether this node's labels match its selector.
    pub selected: bool,
    /// Its last run, as a HostActionRun's status.
    #[serde(default)]
    pub status: HostActionRunStatus,
    /// Its drift checks (`spec.drift`), once one ran.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub drift: Option<DriftState>,
}

/// What static mode's drift checks of one HostAction found: a plan run of
/// the applied action every `spec.drift.intervalSeconds`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct DriftState {
    /// When it was last checked (seconds since the Unix epoch).
    pub checked_at: u64,
    /// Whether the last check's plan was not empty (and not put back).
    pub drifted: bool,
    /// What the plan would change, or what was put back (bounded, see
    /// [`crate::drift_summary`]).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub message: String,
    /// Times the drift was put back (`remediate: true`).
    #[serde(default)]
    pub remediations: u32,
}

/// What one pass did.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Pass {
    /// Names of the actions run in this pass.
    pub ran: Vec<String>,
    /// Whether every selected action's last run succeeded and every manifest
    /// was readable.
    pub all_succeeded: bool,
}

/// Applies a directory of HostAction manifests on this node.
pub struct StaticAgent<'a> {
    /// Loads and runs modules.
    pub loader: Loader<'a>,
    /// The manifests directory.
    pub dir: PathBuf,
    /// The state file.
    pub state_path: PathBuf,
    /// This node's policy, bounding every grant.
    pub policy: Option<Grant>,
    /// This node's labels, for node selectors.
    pub labels: BTreeMap<String, String>,
}

impl StaticAgent<'_> {
    /// One pass over the directory: runs what is due, records everything.
    pub fn pass(&self) -> Result<Pass, Error> {
        let mut state = self.read_state()?;
        let (actions, errors) = self.read_manifests()?;
        // Actions of a file that does not parse right now (an edit in
        // progress, say) keep their state; those of removed files go.
        state.actions.retain(|name, a| {
            actions.contains_key(name) || errors.contains_key(&a.file.display().to_string())
        });
        state.errors = errors;
        let mut ran = Vec::new();
        for (name, (file, action)) in &actions {
            let spec_hash = spec_hash(action);
            let selected = match action.spec.selects(&self.labels) {
                Ok(selected) => selected,
                Err(why) => {
                    state
                        .errors
                        .insert(file.display().to_string(), format!("{name}: {why}"));
                    continue;
                }
            };
            let previous = state.actions.get(name).cloned();
            let mut entry = ActionState {
                file: file.clone(),
                spec_hash: spec_hash.clone(),
                selected,
                ..previous.clone().unwrap_or_default()
            };
            if previous.as_ref().is_some_and(|p| p.spec_hash != spec_hash) {
                // A new generation counts its own attempts.
                entry.status.attempts = 0;
            }
            if entry.status.phase == RunPhase::Running && entry.status.attempts >= MAX_INTERRUPTED {
                // It stopped the agent every time (it restarts the agent's
                // own unit, say): no more attempts until its spec changes.
                entry.status.phase = RunPhase::Interrupted;
                entry.status.finished_at = Some(now());
                entry.status.message = Some(format!(
                    "the agent stopped during each of {MAX_INTERRUPTED} attempts; not run again until the spec changes"
                ));
            }
            if !selected || !due(action, previous.as_ref(), &spec_hash) {
                if selected {
                    self.check_drift(name, action, &mut entry);
                }
                state.actions.insert(name.clone(), entry);
                continue;
            }
            // Recorded as running first: if the agent stops now, the next
            // start sees it and runs it again.
            let started = now();
            let attempts = entry.status.attempts.saturating_add(1);
            let mut running = entry.clone();
            running.status = HostActionRunStatus {
                phase: RunPhase::Running,
                started_at: Some(started.clone()),
                attempts,
                ..HostActionRunStatus::default()
            };
            state.actions.insert(name.clone(), running);
            self.write_state(&state)?;
            tracing::info!(action = %name, module = %action.spec.module, "running");
            let owner = format!("static:{name}");
            let input = RunInput {
                owner: Some(&owner),
                ..RunInput::of(&action.spec, self.policy.as_ref())
            };
            let (status, digest) = match self.loader.load_and_run(&action.spec.module, input) {
                Ok((report, digest)) => (finished_status(&report, started, attempts), Some(digest)),
                Err(e) => (failed_status(&e, started, attempts), None),
            };
            tracing::info!(action = %name, phase = ?status.phase, message = ?status.message, "finished");
            state.actions.insert(
                name.clone(),
                ActionState {
                    status,
                    digest,
                    ..entry
                },
            );
            self.write_state(&state)?;
            ran.push(name.clone());
        }
        self.write_state(&state)?;
        let all_succeeded = state.errors.is_empty()
            && state
                .actions
                .values()
                .filter(|a| a.selected)
                .all(|a| a.status.phase == RunPhase::Succeeded);
        Ok(Pass { ran, all_succeeded })
    }

    /// Checks an applied action's drift when its interval passed: a plan
    /// run; a plan that is not empty is logged (a warning) and recorded in
    /// the state file, and with `remediate` applied (journaled, the action
    /// as owner). A change of state is logged; a node in sync logs nothing.
    fn check_drift(&self, name: &str, action: &HostAction, entry: &mut ActionState) {
        let Some(drift) = action.spec.drift else {
            entry.drift = None;
            return;
        };
        if action.spec.mode != SpecMode::Apply || entry.status.phase != RunPhase::Succeeded {
            return;
        }
        let now = unix_now();
        let last = entry.drift.as_ref().map_or(0, |d| d.checked_at.min(now));
        let every = u64::try_from(drift.interval_seconds.max(10)).unwrap_or(10);
        if now.saturating_sub(last) < every {
            return;
        }
        let mut state = entry.drift.clone().unwrap_or_default();
        state.checked_at = now;
        let plan = RunInput {
            mode: SpecMode::Plan,
            journal: Journal::Off,
            ..RunInput::of(&action.spec, self.policy.as_ref())
        };
        match self.loader.load_and_run(&action.spec.module, plan) {
            Ok((report, _)) if report.status.is_success() => {
                let summary = drift_summary(&report);
                let drifted = report.changed();
                if drifted && drift.remediate {
                    let owner = format!("static:{name}");
                    let apply = RunInput {
                        owner: Some(&owner),
                        ..RunInput::of(&action.spec, self.policy.as_ref())
                    };
                    match self.loader.load_and_run(&action.spec.module, apply) {
                        Ok((r, _)) if r.status.is_success() => {
                            state.remediations = state.remediations.saturating_add(1);
                            state.drifted = false;
                            state.message = format!("put back:\n{summary}");
                            tracing::warn!(action = %name, diff = %summary, "drift put back");
                        }
                        other => {
                            let why = match other {
                                Ok((r, _)) => r.status.to_string(),
                                Err(e) => e.to_string(),
                            };
                            state.drifted = true;
                            state.message = format!("remediation failed: {why}\n{summary}");
                            tracing::warn!(action = %name, %why, diff = %summary, "drift not put back");
                        }
                    }
                } else {
                    if drifted && (!state.drifted || state.message != summary) {
                        tracing::warn!(action = %name, diff = %summary, "drifted");
                    } else if !drifted && state.drifted {
                        tracing::info!(action = %name, "no longer drifted");
                    }
                    state.drifted = drifted;
                    state.message = if drifted { summary } else { String::new() };
                }
            }
            Ok((report, _)) => {
                tracing::warn!(action = %name, status = %report.status, "drift check failed");
            }
            Err(error) => tracing::warn!(action = %name, %error, "drift check failed"),
        }
        entry.drift = Some(state);
    }

    /// Passes every `interval` until the process ends; a pass that fails
    /// (an unreadable directory) is logged and the next one tries again.
    pub fn watch(&self, interval: Duration) -> ! {
        loop {
            if let Err(e) = self.pass() {
                tracing::error!(error = %e, dir = %self.dir.display(), "static pass failed");
            }
            std::thread::sleep(interval);
        }
    }

    /// The HostActions of the directory by name, and the files that failed.
    #[allow(clippy::type_complexity)]
    fn read_manifests(
        &self,
    ) -> Result<
        (
            BTreeMap<String, (PathBuf, HostAction)>,
            BTreeMap<String, String>,
        ),
        Error,
    > {
        let entries = std::fs::read_dir(&self.dir).map_err(|source| Error::ManifestsDir {
            dir: self.dir.clone(),
            source,
        })?;
        let mut files: Vec<PathBuf> = entries
            .flatten()
            .map(|e| e.path())
            .filter(|p| {
                p.is_file()
                    && *p != self.state_path
                    && !p
                        .file_name()
                        .is_some_and(|n| n.to_string_lossy().starts_with('.'))
                    && p.extension()
                        .is_some_and(|x| x == "yaml" || x == "yml" || x == "json")
            })
            .collect();
        files.sort();
        let (mut actions, mut errors) = (BTreeMap::new(), BTreeMap::new());
        for file in files {
            match parse_file(&file) {
                Ok(found) => {
                    for action in found {
                        let name = action.metadata.name.clone().unwrap_or_default();
                        if let Some((first, _)) = actions.get(&name) {
                            let first: &PathBuf = first;
                            errors.insert(
                                file.display().to_string(),
                                format!(
                                    "HostAction {name:?} is also defined in {}",
                                    first.display()
                                ),
                            );
                        } else {
                            actions.insert(name, (file.clone(), action));
                        }
                    }
                }
                Err(why) => {
                    tracing::warn!(file = %file.display(), error = %why, "manifest refused");
                    errors.insert(file.display().to_string(), why);
                }
            }
        }
        Ok((actions, errors))
    }

    /// The state; an unreadable one, or one with values no agent writes, is
    /// moved aside (`.corrupt`) and started afresh, since running
    /// idempotent actions again is safe.
    fn read_state(&self) -> Result<StaticState, Error> {
        match std::fs::read(&self.state_path) {
            Ok(bytes) => match serde_json::from_slice(&bytes)
                .map_err(|e| e.to_string())
                .and_then(sane)
            {
                Ok(state) => Ok(state),
                Err(e) => {
                    let aside = suffixed(&self.state_path, ".corrupt");
                    tracing::warn!(state = %self.state_path.display(), error = %e,
                        aside = %aside.display(), "unreadable state file moved aside; starting afresh");
                    std::fs::rename(&self.state_path, &aside).map_err(|e| {
                        Error::io(format!("state file {}", self.state_path.display()), e)
                    })?;
                    Ok(StaticState::default())
                }
            },
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(StaticState::default()),
            Err(e) => Err(Error::io(
                format!("state file {}", self.state_path.display()),
                e,
            )),
        }
    }

    /// Writes the state atomically (temp file, fsync, rename, fsync of the
    /// directory).
    fn write_state(&self, state: &StaticState) -> Result<(), Error> {
        let bytes = serde_json::to_vec_pretty(state).map_err(Error::State)?;
        let tmp = suffixed(&self.state_path, ".tmp");
        hostaction_distribution::disk::write_atomically(&tmp, &self.state_path, &bytes)
            .map_err(|e| Error::io(format!("state file {}", self.state_path.display()), e))
    }
}

/// `state` as read, when its values are ones an agent writes: counts are
/// not negative, and a time after now (a clock set back, or a hand-edited
/// file) is taken as now, so an interval counts from now.
fn sane(mut state: StaticState) -> Result<StaticState, String> {
    let now = now();
    for (name, action) in &mut state.actions {
        let status = &mut action.status;
        if status.attempts < 0 || status.effect_count < 0 {
            return Err(format!(
                "actions.{name}.status: negative attempts ({}) or effectCount ({})",
                status.attempts, status.effect_count
            ));
        }
        for time in [&mut status.started_at, &mut status.finished_at]
            .into_iter()
            .flatten()
        {
            if time.0 > now.0 {
                *time = now.clone();
            }
        }
    }
    Ok(state)
}

/// `path` with `suffix` appended to its file name.
fn suffixed(path: &Path, suffix: &str) -> PathBuf {
    let mut name = path.file_name().unwrap_or_default().to_os_string();
    name.push(suffix);
    path.with_file_name(name)
}

/// The HostActions of one file; the error names the file's problem. A
/// `.json` file is one or more JSON documents, read by the JSON parser; a
/// YAML one, one or more YAML documents.
pub(crate) fn parse_file(path: &Path) -> Result<Vec<HostAction>, String> {
    use std::io::Read;
    let file = std::fs::File::open(path).map_err(|e| e.to_string())?;
    let mut text = String::new();
    file.take(MAX_MANIFEST_BYTES.saturating_add(1))
        .read_to_string(&mut text)
        .map_err(|e| e.to_string())?;
    if text.len() as u64 > MAX_MANIFEST_BYTES {
        return Err(format!(
            "larger than {} KiB, the cap of a manifest file",
            MAX_MANIFEST_BYTES >> 10
        ));
    }
    // Both iterators stop at the first error (serde_yaml_ng's would repeat
    // it for ever).
    let documents: Vec<serde_json::Value> = if path.extension().is_some_and(|x| x == "json") {
        serde_json::Deserializer::from_str(&text)
            .into_iter::<serde_json::Value>()
            .enumerate()
            .map(|(i, doc)| doc.map_err(|e| format!("document {i}: {e}")))
            .collect::<Result<_, _>>()?
    } else {
        check_yaml_flow(&text)?;
        serde_yaml_ng::Deserializer::from_str(&text)
            .enumerate()
            .map(|(i, doc)| {
                serde_json::Value::deserialize(doc).map_err(|e| format!("document {i}: {e}"))
            })
            .collect::<Result<_, _>>()?
    };
    let mut found = Vec::new();
    for (i, value) in documents.into_iter().enumerate() {
        if value.is_null() {
            continue;
        }
        let (api, kind) = (&value["apiVersion"], &value["kind"]);
        if api != "hostaction.dev/v1alpha1" || kind != "HostAction" {
            return Err(format!(
                "document {i}: expected apiVersion hostaction.dev/v1alpha1, kind HostAction (found {api}, {kind})"
            ));
        }
        let action: HostAction =
            serde_json::from_value(value).map_err(|e| format!("document {i}: {e}"))?;
        check(&action).map_err(|why| format!("document {i}: {why}"))?;
        found.push(action);
    }
    Ok(found)
}

/// Refuses YAML that opens more than [`MAX_YAML_FLOW_OPENS`] flow
/// collections. Every `{` and `[` counts, quoted or not: telling which ones
/// libyaml takes as flow indicators takes its parser, and an undercount
/// would let a nesting through; a count of all of them bounds the nesting.
fn check_yaml_flow(text: &str) -> Result<(), String> {
    let opens = text.bytes().filter(|b| matches!(b, b'{' | b'[')).count();
    if opens > MAX_YAML_FLOW_OPENS {
        return Err(format!(
            "{opens} `{{` and `[` in YAML, more than {MAX_YAML_FLOW_OPENS}: write the manifest in block style, or as JSON"
        ));
    }
    Ok(())
}

/// What the CRD's schema and rules would refuse at the API server.
fn check(action: &HostAction) -> Result<(), String> {
    let name = action.metadata.name.as_deref().unwrap_or_default();
    if name.is_empty() || name.len() > 253 {
        return Err("metadata.name: 1 to 253 characters".into());
    }
    let spec = &action.spec;
    if spec.module.is_empty() || spec.module.len() > 1024 {
        return Err("spec.module: an OCI reference or a .wasm file".into());
    }
    if !(1..=3600).contains(&spec.timeout_seconds) {
        return Err(format!(
            "spec.timeoutSeconds: {} is not within 1 to 3600",
            spec.timeout_seconds
        ));
    }
    if spec.rerun.interval_seconds.is_some_and(|s| s < 60) {
        return Err("spec.rerun.intervalSeconds: at least 60".into());
    }
    hostaction_runtime::grant::GrantDocument::check(&spec.grants, "spec.grants")
        .map_err(|e| e.to_string())
}

/// Whether `action` must run now.
pub(crate) fn due(action: &HostAction, previous: Option<&ActionState>, spec_hash: &str) -> bool {
    if action.spec.rollout.paused {
        return false;
    }
    let Some(previous) = previous else {
        return true;
    };
    let status = &previous.status;
    let never = status.phase == RunPhase::Pending && status.attempts == 0;
    let interrupted = status.phase == RunPhase::Running && status.attempts < MAX_INTERRUPTED;
    let changed = previous.spec_hash != spec_hash && action.spec.rerun.on_spec_change;
    let interval_passed = match (action.spec.rerun.interval_seconds, &status.finished_at) {
        // Past the last representable time: not yet.
        (Some(every), Some(finished)) => finished
            .0
            .checked_add(k8s_openapi::jiff::SignedDuration::from_secs(i64::from(
                every,
            )))
            .is_ok_and(|next| next <= k8s_openapi::jiff::Timestamp::now()),
        _ => false,
    };
    never || interrupted || changed || interval_passed
}

fn spec_hash(action: &HostAction) -> String {
    let json = serde_json::to_vec(&action.spec).unwrap_or_default();
    format!("sha256:{}", hex::encode(Sha256::digest(json)))
}
