//! The node agent on a cluster: watches the HostActionRuns of its node
//! (field selector `spec.nodeName`), runs each by digest with its grants
//! bounded by the node's policy, and writes the run's status.
//!
//! API writes per run: one — the final status — for a run that finishes
//! within [`ClusterAgent::mark_running_after`]; two when it runs longer (it
//! is marked `Running` first, so people see it). What survives a restart is
//! kept in a local journal instead, one small file per run written before
//! it starts: a run the journal says was started but never reported is run
//! again (actions are idempotent), up to three attempts, and then reported
//! `Interrupted`; a result the journal holds but the API server never got
//! (it was down) is written when the agent is back. Nothing is lost
//! silently.
//!
//! A status write the API server refuses never holds the node: transient
//! failures (5xx, 429, 409, 408, 401, no connection) are retried with
//! jittered exponential back-off ([`WRITE_BACKOFF`] doubling to
//! [`WRITE_BACKOFF_MAX`]) *after* the run has given up its slot, so other
//! runs go on; a permanent refusal (another 4xx: 403 from an admission
//! policy, 422 invalid or too large) gets one shrunk status that says why
//! (no log tail, no effects), and if that is refused too the agent gives up
//! on the run and records so in the journal. A journaled result is replayed
//! by at most [`MAX_REPLAYS`] agent starts and for at most
//! [`MAX_REPORT_AGE`], then given up the same way.
//!
//! A failed watch (the API server restarting, say) is retried with the
//! controller's bounded back-off ([`watch_backoff`]: at most 5 s,
//! not kube's default growing to 30 s), so the node resumes within seconds
//! of the server's return.
//!
//! Undo: each run gets an id ([`run_id`]: its name, part of its uid, the
//! attempt) and its HostAction's uid as owner, both kept in the run's undo
//! journal in the node's journal directory. A failed run is rolled back as
//! its spec's `onFailure` says, and the status carries `runId`, `undoable`
//! and the rollback's summary. When the controller annotates a run
//! [`UNDO_ANNOTATION`] (its HostAction, with `onDelete: undo`, is being
//! deleted), the agent undoes every applied run of that HostAction on the
//! node, newest first, and reports phase `Undone` with the summary (one
//! write). A run's journals go when the run is deleted — except, with
//! `onDelete: undo`, those of applied runs (a later generation replaced
//! them, and undoing the action needs them); those go once the action is
//! undone.
//!
//! On SIGTERM or SIGINT the agent starts no more runs, lets the one in
//! flight finish and be reported for up to [`SHUTDOWN_GRACE`], and returns;
//! what did not finish by then is in the journal for the next start.

use std::collections::HashSet;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use crate::metrics::{AgentMetrics, PhaseLabels};
use backon::BackoffBuilder;
use futures_util::StreamExt;
use hostaction_crds::action::{Journal, Mode as SpecMode, OnDelete};
use hostaction_crds::run::{DRIFTED, UNDO_ANNOTATION};
use hostaction_crds::{Grant, HostActionRun, HostActionRunSpec, HostActionRunStatus, RunPhase};
use hostaction_runtime::RunReport;
use hostaction_runtime::undo::UndoReport;
use hostaction_runtime::undo::journal::EndState;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;
use kube::api::{Patch, PatchParams};
use kube::runtime::watcher::ExponentialBackoff;
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Api, Client, ResourceExt};
use serde::{Deserialize, Serialize};
use tokio::sync::{Semaphore, watch};

use crate::{Error, RuntimeError};
use crate::{Loader, RunInput, drift_summary, failed_status, now, shrunk_status, undo_summary};
use hostaction_distribution::{ModuleStore, Registry};
use hostaction_runtime::Runtime;

/// Attempts a run gets when the agent stops during it each time.
const MAX_ATTEMPTS: i32 = 3;
/// First wait before retrying a status write that failed for a reason that
/// may pass; doubled after each failure, up to [`WRITE_BACKOFF_MAX`], each
/// wait drawn between half and all of it (so that many nodes spread out).
pub const WRITE_BACKOFF: Duration = Duration::from_secs(1);
/// The longest wait between two tries of a status write.
pub const WRITE_BACKOFF_MAX: Duration = Duration::from_secs(300);

/// The waits between tries of a status write: backon's jittered exponential
/// back-off, without end. backon's jitter adds 0–100 % to a step, so the
/// steps are halved: each wait is half to all of [`WRITE_BACKOFF`] doubling
/// to [`WRITE_BACKOFF_MAX`] (a thousand agents retrying a restarted API
/// server spread out instead of writing in lockstep).
fn write_backoff() -> backon::ExponentialBuilder {
    backon::ExponentialBuilder::new()
        .with_min_delay(WRITE_BACKOFF / 2)
        .with_max_delay(WRITE_BACKOFF_MAX / 2)
        .with_factor(2.0)
        .with_jitter()
        .without_max_times()
}
/// Agent starts that may replay one journaled result; the next gives up.
pub const MAX_REPLAYS: u32 = 5;
/// How long a journaled result is tried; then it is given up.
pub const MAX_REPORT_AGE: Duration = Duration::from_secs(24 * 3600);
/// How long a stopping agent waits for the run in flight (and status
/// writes) before it returns: under Kubernetes' default 30 s grace period.
pub const SHUTDOWN_GRACE: Duration = Duration::from_secs(20);

/// One node's agent.
pub struct ClusterAgent {
    /// The API client.
    pub client: Client,
    /// This node's name (runs with `spec.nodeName` equal to it are its own).
    pub node_name: String,
    /// Compiles and runs modules.
    pub runtime: Arc<Runtime>,
    /// Fetches modules by digest.
    pub registry: Arc<Registry>,
    /// The node's module store.
    pub store: Arc<ModuleStore>,
    /// This node's policy, bounding every grant; `None` takes every grant
    /// as it is (only with the explicit opt-out: see
    /// [`super::node_policy`], which gives an empty policy when there is no
    /// file).
    pub policy: Option<Grant>,
    /// The journal directory (one file per run in progress).
    pub journal: PathBuf,
    /// A run still going after this long is marked `Running` in the API.
    pub mark_running_after: Duration,
    /// The agent's metrics.
    pub metrics: AgentMetrics,
}

/// What the journal keeps of a run until its status is written.
#[derive(Debug, Default, Serialize, Deserialize)]
struct Entry {
    /// The run's name.
    name: String,
    /// Times it was started on this node.
    attempts: i32,
    /// Its result, when it finished but was not yet reported.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    result: Option<HostActionRunStatus>,
    /// When the result was journaled (seconds since the Unix epoch).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    since: Option<u64>,
    /// Agent starts that replayed the result.
    #[serde(default)]
    replays: u32,
    /// Why the agent gave up writing the run's status: it neither runs nor
    /// reports the run again.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    gave_up: Option<String>,
}

/// How a status write ended.
enum Delivery {
    /// The API server took it, or the run is gone (nobody waits for it).
    Done,
    /// The API server refused it for a reason that will not pass.
    Refused(String),
    /// The agent is stopping; the journal keeps the result.
    Stopping,
}

impl ClusterAgent {
    /// Watches and runs this node's runs until `shutdown` resolves, then
    /// stops as the module docs say. Runs execute one at a time (two
    /// actions shaping one host at once could interfere); the watch goes on
    /// meanwhile.
    pub async fn serve(
        self: Arc<Self>,
        shutdown: impl std::future::Future<Output = ()>,
    ) -> Result<(), Error> {
        std::fs::create_dir_all(&self.journal)
            .map_err(|e| Error::io(self.journal.display().to_string(), e))?;
        let api = Api::<HostActionRun>::all(self.client.clone());
        let config =
            watcher::Config::default().fields(&format!("spec.nodeName={}", self.node_name));
        let mut events = std::pin::pin!(watcher(api, config).backoff(watch_backoff()));
        // Runs this process took on (running, or done): each is handled
        // once, whatever events about it arrive later or again.
        let mut taken = HashSet::<String>::new();
        let one_at_a_time = Arc::new(Semaphore::new(1));
        let (stop, stopping) = watch::channel(false);
        let mut tasks = tokio::task::JoinSet::new();
        let mut listed = HashSet::new();
        // The listed runs' journal-name prefixes and owners: what the undo
        // journals found at start may still belong to.
        let mut known = Known::default();
        let mut pruned = false;
        // Runs whose action is being undone: their pending run does not start.
        let undoing = Arc::new(std::sync::Mutex::new(HashSet::<String>::new()));
        // Runs whose drift is being checked (a task each); a run leaves it
        // when it is deleted or undone, and its task stops.
        let drifting = Arc::new(std::sync::Mutex::new(HashSet::<String>::new()));
        let mut shutdown = std::pin::pin!(shutdown);
        loop {
            let event = tokio::select! {
                event = events.next() => event,
                () = &mut shutdown => break,
                Some(_) = tasks.join_next(), if !tasks.is_empty() => continue,
            };
            let run = match event {
                None => break,
                Some(Err(error)) => {
                    tracing::warn!(%error, "watching runs");
                    continue;
                }
                Some(Ok(watcher::Event::Init)) => {
                    listed.clear();
                    known = Known::default();
                    continue;
                }
                Some(Ok(watcher::Event::InitDone)) => {
                    if !pruned {
                        // Entries of runs deleted while the agent was away.
                        self.prune_journal(&listed);
                        // Undo journals of runs deleted meanwhile: their
                        // Delete events were missed, and a leaked journal
                        // holds the node's journal budget for good.
                        let runtime = self.runtime.clone();
                        let known = std::mem::take(&mut known);
                        tasks.spawn_blocking(move || prune_undo_journals(&runtime, &known));
                        pruned = true;
                    }
                    continue;
                }
                Some(Ok(watcher::Event::Delete(run))) => {
                    let uid = run.uid().unwrap_or_default();
                    taken.remove(&uid);
                    lock(&undoing).remove(&uid);
                    lock(&drifting).remove(&uid);
                    if run.spec.node_name == self.node_name {
                        let runtime = self.runtime.clone();
                        tasks.spawn_blocking(move || collect_journals(&runtime, &run));
                    }
                    continue;
                }
                Some(Ok(watcher::Event::Apply(run) | watcher::Event::InitApply(run))) => run,
            };
            if run.spec.node_name != self.node_name {
                // The watch selects this node's runs; a server or proxy that
                // ignored the selector must not make this node run another's.
                tracing::warn!(run = %run.name_any(), node = %run.spec.node_name, "ignoring another node's run");
                continue;
            }
            let uid = run.uid().unwrap_or_default();
            listed.insert(uid.clone());
            if !pruned {
                known.prefixes.push(run_id_prefix(&run.name_any(), &uid));
                known.owners.extend(owner_uid(&run));
            }
            let phase = run.status.as_ref().map(|s| s.phase).unwrap_or_default();
            if run.annotations().contains_key(UNDO_ANNOTATION) && phase != RunPhase::Undone {
                lock(&drifting).remove(&uid);
                if lock(&undoing).insert(uid.clone()) {
                    let agent = self.clone();
                    let slot = one_at_a_time.clone();
                    let stopping = stopping.clone();
                    tasks.spawn(async move { agent.undo_action(&run, slot, stopping).await });
                }
                continue;
            }
            let checks_drift = phase == RunPhase::Succeeded
                && run.spec.mode == SpecMode::Apply
                && run.spec.drift.is_some();
            if checks_drift && lock(&drifting).insert(uid.clone()) {
                let agent = self.clone();
                let slot = one_at_a_time.clone();
                let stopping = stopping.clone();
                let drifting = drifting.clone();
                tasks.spawn(async move {
                    agent.watch_drift(run, uid, slot, drifting, stopping).await;
                });
                continue;
            }
            if !matches!(phase, RunPhase::Pending | RunPhase::Running) {
                continue;
            }
            if !taken.insert(uid.clone()) {
                continue;
            }
            let agent = self.clone();
            let slot = one_at_a_time.clone();
            let stopping = stopping.clone();
            let undoing = undoing.clone();
            tasks.spawn(async move { agent.handle(&run, &uid, slot, undoing, stopping).await });
        }
        // No run starts from now on; the one in flight may finish and be
        // reported within the grace period.
        let _ = stop.send(true);
        let drained = tokio::time::timeout(SHUTDOWN_GRACE, async {
            while tasks.join_next().await.is_some() {}
        })
        .await;
        if drained.is_err() {
            tracing::warn!(
                grace = ?SHUTDOWN_GRACE,
                "a run is still going; the journal has it for the next start"
            );
        }
        tracing::info!("agent stopped");
        Ok(())
    }

    /// Runs (or re-runs, or reports) one run and writes its status: the run
    /// holds `slot` while it executes, not while its status is written.
    async fn handle(
        &self,
        run: &HostActionRun,
        uid: &str,
        slot: Arc<Semaphore>,
        undoing: Arc<std::sync::Mutex<HashSet<String>>>,
        mut stopping: watch::Receiver<bool>,
    ) {
        let name = run.name_any();
        let mut entry = self.read_entry(uid).unwrap_or_default();
        if let Some(why) = &entry.gave_up {
            tracing::warn!(run = %name, reason = %why, "not run or reported again: the agent gave up on its status");
            return;
        }
        let result = if let Some(result) = entry.result.clone() {
            // Finished before the agent stopped; only the report was
            // missing. Replayed a bounded number of times.
            entry.replays = entry.replays.saturating_add(1);
            let since = *entry.since.get_or_insert_with(unix_now);
            let age = unix_now().saturating_sub(since);
            if entry.replays > MAX_REPLAYS || age > MAX_REPORT_AGE.as_secs() {
                let why = format!(
                    "its status could not be written by {} agent starts over {age} s",
                    entry.replays.saturating_sub(1)
                );
                self.give_up(&name, uid, &mut entry, why).await;
                return;
            }
            self.write_entry(uid, &entry).await;
            result
        } else {
            let permit = tokio::select! {
                permit = slot.acquire_owned() => permit,
                () = stopped(&mut stopping) => return,
            };
            let Ok(permit) = permit else {
                return;
            };
            if lock(&undoing).contains(uid) {
                // Its action is being undone meanwhile: not run.
                return;
            }
            let reported = run.status.as_ref().map_or(0, |s| s.attempts);
            let result = if entry.attempts.max(reported) >= MAX_ATTEMPTS {
                tracing::warn!(run = %name, attempts = entry.attempts.max(reported), "interrupted every time; not run again");
                HostActionRunStatus {
                    phase: RunPhase::Interrupted,
                    finished_at: Some(now()),
                    message: Some(format!(
                        "the agent stopped during each of {MAX_ATTEMPTS} attempts; not run again"
                    )),
                    attempts: entry.attempts.max(reported),
                    ..run.status.clone().unwrap_or_default()
                }
            } else {
                entry = Entry {
                    name: name.clone(),
                    attempts: entry.attempts.max(reported) + 1,
                    ..Entry::default()
                };
                self.write_entry(uid, &entry).await;
                self.execute(run, entry.attempts).await
            };
            entry.name.clone_from(&name);
            entry.result = Some(result.clone());
            entry.since = Some(unix_now());
            self.write_entry(uid, &entry).await;
            drop(permit);
            result
        };
        let phase = format!("{:?}", result.phase);
        let delivered = match self.deliver(&name, &result, &mut stopping).await {
            Delivery::Refused(refusal) => {
                tracing::warn!(run = %name, %refusal, "the API server refused the run's status for good; writing a shrunk one");
                let shrunk = shrunk_status(&result, &refusal);
                entry.result = Some(shrunk.clone());
                self.write_entry(uid, &entry).await;
                match self.deliver(&name, &shrunk, &mut stopping).await {
                    Delivery::Refused(why) => {
                        let why = format!(
                            "the API server refused its status ({refusal}) and the shrunk one ({why})"
                        );
                        self.give_up(&name, uid, &mut entry, why).await;
                        Delivery::Done
                    }
                    other => other,
                }
            }
            other => other,
        };
        if let Delivery::Done = delivered {
            self.metrics
                .runs
                .get_or_create(&PhaseLabels { phase })
                .inc();
            if entry.gave_up.is_none() {
                self.remove_entry(uid);
            }
        }
    }

    /// Records in the journal that the run's status is given up on.
    async fn give_up(&self, name: &str, uid: &str, entry: &mut Entry, why: String) {
        entry.name = name.to_owned();
        entry.result = None;
        entry.gave_up = Some(why.clone());
        // Journaled first: the line says it is recorded.
        self.write_entry(uid, entry).await;
        tracing::error!(run = %name, reason = %why, "giving up on the run's status; the run journal records it");
    }

    /// Runs the module on a blocking thread; marks the run `Running` in
    /// the API if it takes long.
    async fn execute(&self, run: &HostActionRun, attempts: i32) -> HostActionRunStatus {
        let started = now();
        let clock = Instant::now();
        self.metrics.runs_in_flight.inc();
        let run_id = run_id(&run.name_any(), &run.uid().unwrap_or_default(), attempts);
        let owner = owner_uid(run);
        tracing::info!(run = %run.name_any(), module = %run.spec.module, attempts, %run_id, "running");
        let spec = run.spec.clone();
        let (runtime, registry, store, policy) = (
            self.runtime.clone(),
            self.registry.clone(),
            self.store.clone(),
            self.policy.clone(),
        );
        let job = tokio::task::spawn_blocking(move || {
            let loader = Loader {
                runtime: &runtime,
                registry: &registry,
                store: &store,
            };
            let timeout =
                Duration::from_secs(u64::try_from(spec.timeout_seconds.max(1)).unwrap_or(1));
            let input = RunInput {
                params: spec.params.as_ref(),
                grants: &spec.grants,
                policy: policy.as_ref(),
                mode: spec.mode,
                timeout,
                run_id: Some(&run_id),
                owner: owner.as_deref(),
                on_failure: spec.on_failure,
                journal: spec.journal,
            };
            // A registry reference pinned by digest, never a file.
            loader
                .load_pinned_and_run(&spec.module, input)
                .map(|(report, _digest)| report)
        });
        let mut job = std::pin::pin!(job);
        let joined = tokio::select! {
            joined = &mut job => joined,
            () = tokio::time::sleep(self.mark_running_after) => {
                let running = HostActionRunStatus {
                    phase: RunPhase::Running,
                    started_at: Some(started.clone()),
                    attempts,
                    ..HostActionRunStatus::default()
                };
                // Best effort: the journal, not this mark, keeps the run
                // from being lost.
                if let Err(error) = self.patch_status(&run.name_any(), &running).await {
                    tracing::warn!(run = %run.name_any(), %error, "could not mark the run Running");
                }
                job.await
            }
        };
        self.metrics.runs_in_flight.dec();
        self.metrics
            .run_duration
            .observe(clock.elapsed().as_secs_f64());
        let status = match joined {
            // Room for the Drifted condition its drift checks write later.
            Ok(Ok(report)) => crate::finished_status_leaving(
                &report,
                started,
                attempts,
                if run.spec.drift.is_some() {
                    crate::DRIFT_CONDITION_BYTES
                } else {
                    0
                },
            ),
            Ok(Err(error)) => failed_status(&error, started, attempts),
            Err(join) => failed_status(
                &RuntimeError::Host(format!("the run's thread: {join}")),
                started,
                attempts,
            ),
        };
        tracing::info!(run = %run.name_any(), phase = ?status.phase, "finished");
        status
    }

    /// Checks `run`'s drift every `spec.drift.intervalSeconds` while the
    /// run is in `drifting`: a plan run (no journal) in the run slot; a plan
    /// that is not empty sets the run's `Drifted` condition True with what
    /// it would change, and with `remediate` is applied (journaled, with a
    /// run id of its own and the action as owner) instead. API writes: only
    /// on change — drift found or its diff changed, a remediation, or drift
    /// gone after it was reported; a node in sync writes nothing.
    async fn watch_drift(
        &self,
        run: HostActionRun,
        uid: String,
        slot: Arc<Semaphore>,
        drifting: Arc<std::sync::Mutex<HashSet<String>>>,
        mut stopping: watch::Receiver<bool>,
    ) {
        let Some(drift) = run.spec.drift else {
            return;
        };
        let every =
            Duration::from_secs(u64::try_from(drift.interval_seconds.max(10)).unwrap_or(10));
        let name = run.name_any();
        let owner = owner_uid(&run);
        let prefix = run_id_prefix(&name, &uid);
        // What the API holds: (status, message) of the condition.
        let mut last: Option<(String, String)> = run
            .status
            .as_ref()
            .and_then(|s| s.conditions.iter().find(|c| c.type_ == DRIFTED))
            .map(|c| (c.status.clone(), c.message.clone()));
        let mut remediations = 0u32;
        loop {
            tokio::select! {
                () = tokio::time::sleep(every) => {}
                () = stopped(&mut stopping) => return,
            }
            let permit = tokio::select! {
                permit = slot.clone().acquire_owned() => permit,
                () = stopped(&mut stopping) => return,
            };
            let Ok(permit) = permit else {
                return;
            };
            if !lock(&drifting).contains(&uid) {
                return;
            }
            let report = match self
                .run_once(&run.spec, SpecMode::Plan, None, None, Journal::Off)
                .await
            {
                Ok(report) if report.status.is_success() => report,
                Ok(report) => {
                    tracing::warn!(run = %name, status = %report.status, "drift check failed");
                    continue;
                }
                Err(error) => {
                    tracing::warn!(run = %name, %error, "drift check failed");
                    continue;
                }
            };
            let drifted = report.changed();
            let summary = drift_summary(&report);
            let mut remediated = None;
            if drifted && drift.remediate {
                let id = format!("{prefix}d{}", unix_now());
                let applied = self
                    .run_once(
                        &run.spec,
                        SpecMode::Apply,
                        Some(id),
                        owner.clone(),
                        run.spec.journal,
                    )
                    .await;
                remediated = Some(match applied {
                    Ok(r) if r.status.is_success() => {
                        remediations = remediations.saturating_add(1);
                        Ok(())
                    }
                    Ok(r) => Err(r.status.to_string()),
                    Err(e) => Err(e.to_string()),
                });
            }
            drop(permit);
            let (status, reason, message) = match remediated {
                Some(Ok(())) => (
                    "False",
                    "Remediated",
                    format!(
                        "drift put back ({remediations} times since the agent started); the plan was:\n{summary}"
                    ),
                ),
                Some(Err(why)) => (
                    "True",
                    "RemediationFailed",
                    format!("remediation failed: {why}\n{summary}"),
                ),
                None if drifted => ("True", "PlanNotEmpty", summary),
                None => ("False", "InSync", "the plan is empty".to_owned()),
            };
            // Bounded as JSON (the run's status left room for that much),
            // before it is compared with what the API holds.
            let message = crate::drift_message(message);
            let write = match &last {
                // In sync and never reported drifted, or already reported in sync.
                _ if reason == "InSync" => last.as_ref().is_some_and(|(s, _)| s == "True"),
                Some((s, m)) => !(s == status && *m == message),
                None => true,
            };
            if !write {
                continue;
            }
            if reason != "InSync" {
                tracing::warn!(run = %name, reason, "drift");
            }
            let condition = Condition {
                type_: DRIFTED.to_owned(),
                status: status.to_owned(),
                reason: reason.to_owned(),
                message: message.clone(),
                observed_generation: Some(run.spec.generation),
                last_transition_time: now(),
            };
            let patch = serde_json::json!({ "status": { "conditions": [condition] } });
            match self.patch_status_value(&name, patch).await {
                Ok(()) => last = Some((status.to_owned(), message)),
                Err(error) => tracing::warn!(run = %name, %error, "could not report drift"),
            }
        }
    }

    /// One run of `spec` on a blocking thread, as `mode`, with an id and
    /// owner for its journal.
    async fn run_once(
        &self,
        spec: &HostActionRunSpec,
        mode: SpecMode,
        run_id: Option<String>,
        owner: Option<String>,
        journal: Journal,
    ) -> Result<RunReport, RuntimeError> {
        let spec = spec.clone();
        let (runtime, registry, store, policy) = (
            self.runtime.clone(),
            self.registry.clone(),
            self.store.clone(),
            self.policy.clone(),
        );
        tokio::task::spawn_blocking(move || {
            let loader = Loader {
                runtime: &runtime,
                registry: &registry,
                store: &store,
            };
            let input = RunInput {
                params: spec.params.as_ref(),
                grants: &spec.grants,
                policy: policy.as_ref(),
                mode,
                timeout: Duration::from_secs(
                    u64::try_from(spec.timeout_seconds.max(1)).unwrap_or(1),
                ),
                run_id: run_id.as_deref(),
                owner: owner.as_deref(),
                on_failure: spec.on_failure,
                journal,
            };
            loader
                .load_pinned_and_run(&spec.module, input)
                .map(|(report, _digest)| report)
        })
        .await
        .unwrap_or_else(|join| Err(RuntimeError::Host(format!("the run's thread: {join}"))))
    }

    /// Undoes every applied run of `run`'s HostAction on this node, newest
    /// first (holding the run slot), and reports phase `Undone` with what
    /// came of it; then the action's journals go.
    async fn undo_action(
        &self,
        run: &HostActionRun,
        slot: Arc<Semaphore>,
        mut stopping: watch::Receiver<bool>,
    ) {
        let name = run.name_any();
        let owner = owner_uid(run);
        let permit = tokio::select! {
            permit = slot.acquire_owned() => permit,
            () = stopped(&mut stopping) => return,
        };
        let Ok(permit) = permit else {
            return;
        };
        tracing::info!(run = %name, action = %run.spec.action, "undoing the action on this node");
        let runtime = self.runtime.clone();
        let of = owner.clone();
        let undone = tokio::task::spawn_blocking(move || undo_owner(&runtime, of.as_deref()))
            .await
            .unwrap_or_else(|join| (Vec::new(), vec![format!("the undo's thread: {join}")]));
        drop(permit);
        let (reports, errors) = undone;
        let mut summary = undo_summary(&reports);
        summary.failed = summary
            .failed
            .saturating_add(i32::try_from(errors.len()).unwrap_or(i32::MAX));
        for error in &errors {
            if summary.problems.len() < hostaction_crds::run::UNDO_PROBLEMS_LISTED {
                summary.problems.push(crate::cut(
                    format!("failed {error}"),
                    hostaction_crds::run::LINE_BYTES,
                ));
            }
        }
        let complete = errors.is_empty() && reports.iter().all(UndoReport::complete);
        let message = format!(
            "onDelete undo: {} runs of {} undone on this node ({} restored{}){}",
            reports.len(),
            run.spec.action,
            summary.restored,
            if complete { "" } else { ", some effects not" },
            if owner.is_none() {
                "; the run names no HostAction owner"
            } else {
                ""
            },
        );
        tracing::info!(run = %name, %message, "undone");
        let status = crate::undone_status(run.status.clone().unwrap_or_default(), message, summary);
        if let Delivery::Done = self.deliver(&name, &status, &mut stopping).await {
            let runtime = self.runtime.clone();
            let _ = tokio::task::spawn_blocking(move || {
                forget_owner(&runtime, owner.as_deref());
            })
            .await;
        }
    }

    /// Writes a run's status, retrying failures that may pass with jittered
    /// exponential back-off until it is written, refused for good, or the
    /// agent stops (the journal keeps it meanwhile).
    async fn deliver(
        &self,
        name: &str,
        status: &HostActionRunStatus,
        stopping: &mut watch::Receiver<bool>,
    ) -> Delivery {
        // backon's schedule, its waits taken one by one: a stop must cut a
        // wait short but never a write in flight.
        let mut waits = write_backoff().build();
        loop {
            let error = match self.patch_status(name, status).await {
                Ok(()) => return Delivery::Done,
                // The run was deleted meanwhile: nobody waits for it.
                Err(kube::Error::Api(e)) if e.code == 404 => return Delivery::Done,
                Err(error) => error,
            };
            if let Some(refusal) = permanent(&error) {
                return Delivery::Refused(refusal);
            }
            let wait = waits.next().unwrap_or(WRITE_BACKOFF_MAX);
            tracing::warn!(run = %name, %error, retry_in = ?wait, "could not write the run's status; retrying");
            tokio::select! {
                () = tokio::time::sleep(wait) => {}
                () = stopped(stopping) => return Delivery::Stopping,
            }
        }
    }

    async fn patch_status(
        &self,
        name: &str,
        status: &HostActionRunStatus,
    ) -> Result<(), kube::Error> {
        self.patch_status_value(name, serde_json::json!({ "status": status }))
            .await
    }

    /// Merge-patches a run's status subresource with `patch`.
    async fn patch_status_value(
        &self,
        name: &str,
        patch: serde_json::Value,
    ) -> Result<(), kube::Error> {
        let api = Api::<HostActionRun>::all(self.client.clone());
        let patch = Patch::Merge(patch);
        match api
            .patch_status(name, &PatchParams::default(), &patch)
            .await
        {
            Ok(_) => {
                self.metrics.status_writes.inc();
                Ok(())
            }
            Err(e) => {
                self.metrics.status_write_errors.inc();
                Err(e)
            }
        }
    }

    fn entry_path(&self, uid: &str) -> PathBuf {
        // A uid is the API server's (letters, digits, dashes); anything else
        // is kept out of the path.
        let safe: String = uid
            .chars()
            .filter(|c| c.is_ascii_alphanumeric() || *c == '-')
            .collect();
        self.journal.join(format!("{safe}.json"))
    }

    fn read_entry(&self, uid: &str) -> Option<Entry> {
        let bytes = std::fs::read(self.entry_path(uid)).ok()?;
        serde_json::from_slice(&bytes).ok()
    }

    /// Written before a run starts and when it ends (temp file, fsync,
    /// rename, fsync of the directory) on a blocking thread: a crash leaves
    /// the old entry or the new one.
    async fn write_entry(&self, uid: &str, entry: &Entry) {
        let path = self.entry_path(uid);
        let bytes = match serde_json::to_vec(entry) {
            Ok(bytes) => bytes,
            Err(error) => {
                tracing::warn!(%error, "could not encode the run journal");
                return;
            }
        };
        let target = path.clone();
        let written = tokio::task::spawn_blocking(move || {
            hostaction_distribution::disk::write_atomically(
                &target.with_extension("tmp"),
                &target,
                &bytes,
            )
        })
        .await
        .unwrap_or_else(|join| Err(std::io::Error::other(join)));
        if let Err(error) = written {
            tracing::warn!(path = %path.display(), %error, "could not write the run journal");
        }
    }

    fn remove_entry(&self, uid: &str) {
        let _ = std::fs::remove_file(self.entry_path(uid));
    }

    fn prune_journal(&self, listed: &HashSet<String>) {
        let Ok(dir) = std::fs::read_dir(&self.journal) else {
            return;
        };
        for file in dir.flatten() {
            let name = file.file_name().to_string_lossy().into_owned();
            let uid = name.trim_end_matches(".json").trim_end_matches(".tmp");
            if !listed.contains(uid) {
                let _ = std::fs::remove_file(file.path());
            }
        }
    }
}

/// Why a failed status write will fail again whatever the wait: a 4xx
/// other than 401 (credentials rotate), 404 (handled apart), 408, 409 and
/// 429, or a request that cannot be built. `None`: it may pass.
fn permanent(error: &kube::Error) -> Option<String> {
    match error {
        kube::Error::Api(status) => match status.code {
            401 | 404 | 408 | 409 | 429 => None,
            code @ 400..=499 => Some(format!("{code} {}: {}", status.reason, status.message)),
            _ => None,
        },
        kube::Error::BuildRequest(_) | kube::Error::HttpError(_) => Some(error.to_string()),
        _ => None,
    }
}

/// The id of attempt `attempt` of a run: its name (a hash of it past 64
/// bytes), 8 characters of its uid (a re-run of one generation keeps the
/// name), and the attempt — a valid journal name (`[A-Za-z0-9._-]`).
pub fn run_id(name: &str, uid: &str, attempt: i32) -> String {
    format!("{}a{attempt}", run_id_prefix(name, uid))
}

/// What the ids of every attempt of a run start with.
fn run_id_prefix(name: &str, uid: &str) -> String {
    use sha2::Digest;
    let plain = name.len() <= 64
        && !name.starts_with('.')
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'-' | b'_'));
    let base = if plain {
        name.to_owned()
    } else {
        let hash = format!("{:x}", sha2::Sha256::digest(name.as_bytes()));
        format!("run-{}", &hash[..32])
    };
    let uid: String = uid
        .chars()
        .filter(char::is_ascii_alphanumeric)
        .take(8)
        .collect();
    format!("{base}-{uid}.")
}

/// Whether `run_id` is an attempt (`a<n>`) or a drift remediation
/// (`d<time>`) of the run whose ids start with `prefix` — exactly, not a
/// prefix match: run `x` with uid `12345678…` has prefix `x-12345678.`,
/// which another action's run named `x-12345678.n1.g1` also starts with.
fn of_run(run_id: &str, prefix: &str) -> bool {
    run_id.strip_prefix(prefix).is_some_and(|rest| {
        let mut bytes = rest.bytes();
        matches!(bytes.next(), Some(b'a' | b'd'))
            && rest.len() > 1
            && bytes.all(|b| b.is_ascii_digit())
    })
}

/// The uid of the HostAction that owns a run (its journal's owner).
fn owner_uid(run: &HostActionRun) -> Option<String> {
    run.metadata
        .owner_references
        .as_ref()?
        .iter()
        .find(|o| o.kind == "HostAction")
        .map(|o| o.uid.clone())
}

/// Undoes the applied runs of `owner` on this node, newest first: the
/// reports, and the runs that could not be undone at all (why).
fn undo_owner(runtime: &Runtime, owner: Option<&str>) -> (Vec<UndoReport>, Vec<String>) {
    let Some(owner) = owner else {
        return (Vec::new(), Vec::new());
    };
    let journals = match runtime.journal_list() {
        Ok(journals) => journals,
        Err(error) => return (Vec::new(), vec![error.to_string()]),
    };
    let (mut reports, mut errors) = (Vec::new(), Vec::new());
    for journal in journals
        .iter()
        .rev()
        .filter(|j| j.run.owner.as_deref() == Some(owner) && j.end == Some(EndState::Applied))
    {
        match runtime.undo(&journal.run.run_id) {
            Ok(report) => {
                tracing::info!(run = %journal.run.run_id, result = %report.summary(), "undone");
                reports.push(report);
            }
            Err(error) => {
                tracing::warn!(run = %journal.run.run_id, %error, "could not undo");
                errors.push(format!("run {}: {error}", journal.run.run_id));
            }
        }
    }
    (reports, errors)
}

/// The runs listed at the agent's start, as their undo journals name them.
#[derive(Default)]
struct Known {
    /// [`run_id_prefix`] of each run.
    prefixes: Vec<String>,
    /// The HostAction uid of each run that names one.
    owners: HashSet<String>,
}

/// Deletes the finished undo journals that no listed run accounts for: a
/// HostAction's journal (it names an owner, not `static:…`) whose run is
/// gone and whose owner has no run left on this node — the runs were
/// deleted while the agent was away. Journals without an owner (`hostaction
/// run` on the node), static mode's, and unfinished ones (recovery's) stay.
fn prune_undo_journals(runtime: &Runtime, known: &Known) {
    let Some(dir) = runtime.journals() else {
        return;
    };
    for journal in runtime.journal_list().unwrap_or_default() {
        let Some(owner) = journal.run.owner.as_deref() else {
            continue;
        };
        let listed = known
            .prefixes
            .iter()
            .any(|p| of_run(&journal.run.run_id, p));
        if journal.end.is_none() || owner.starts_with("static:") || listed {
            continue;
        }
        if known.owners.contains(owner) {
            continue;
        }
        match dir.remove(&journal.run.run_id) {
            Ok(()) => {
                tracing::info!(run = %journal.run.run_id, "deleted the journal of a run deleted while the agent was away");
            }
            Err(error) => {
                tracing::warn!(run = %journal.run.run_id, %error, "could not delete a journal");
            }
        }
    }
}

/// Deletes the finished journals of `owner` (its action is undone).
fn forget_owner(runtime: &Runtime, owner: Option<&str>) {
    let (Some(owner), Some(dir)) = (owner, runtime.journals()) else {
        return;
    };
    for journal in runtime.journal_list().unwrap_or_default() {
        if journal.run.owner.as_deref() == Some(owner)
            && journal.end.is_some()
            && let Err(error) = dir.remove(&journal.run.run_id)
        {
            tracing::warn!(run = %journal.run.run_id, %error, "could not delete a journal");
        }
    }
}

/// Deletes the journals of a deleted run: its record is gone, so are they
/// — except, with `onDelete: undo`, an applied run's (undoing the action
/// needs it; [`forget_owner`] deletes it then). A journal without an end
/// (a run going on) is left to recovery.
fn collect_journals(runtime: &Runtime, run: &HostActionRun) {
    let Some(dir) = runtime.journals() else {
        return;
    };
    let prefix = run_id_prefix(&run.name_any(), &run.uid().unwrap_or_default());
    let undone = run.status.as_ref().map(|s| s.phase) == Some(RunPhase::Undone);
    let keep_applied = run.spec.on_delete == OnDelete::Undo && !undone;
    for journal in runtime.journal_list().unwrap_or_default() {
        let ended = journal.end.is_some();
        let needed = keep_applied && journal.end == Some(EndState::Applied);
        if of_run(&journal.run.run_id, &prefix)
            && ended
            && !needed
            && let Err(error) = dir.remove(&journal.run.run_id)
        {
            tracing::warn!(run = %journal.run.run_id, %error, "could not delete a journal");
        }
    }
}

/// A lock, poisoned or not (a set of uids stays consistent either way).
fn lock<T>(mutex: &std::sync::Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// Resolves once the agent is stopping.
async fn stopped(stopping: &mut watch::Receiver<bool>) {
    // An error: the sender is gone, which also means stopping.
    let _ = stopping.wait_for(|stop| *stop).await;
}

/// Seconds since the Unix epoch (0 for a clock before it).
fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// The watches' back-off (`hostaction_telemetry::backoff`) as kube takes it.
fn watch_backoff() -> ExponentialBackoff {
    hostaction_telemetry::backoff::watch_backoff().into()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A run's journals are its attempts and remediations only, not those
    /// of a run whose name starts with its id prefix.
    #[test]
    fn a_runs_journals_are_not_another_runs_whose_name_extends_its_prefix() {
        let prefix = run_id_prefix("x.n1.g1", "12345678-aaaa");
        assert!(of_run(&run_id("x.n1.g1", "12345678-aaaa", 2), &prefix));
        assert!(of_run(&format!("{prefix}d1765000000"), &prefix));
        let other = run_id("x.n1.g1-12345678.n1.g1", "87654321-bbbb", 1);
        assert!(other.starts_with(&prefix), "{other}");
        assert!(!of_run(&other, &prefix), "{other}");
        assert!(!of_run(&format!("{prefix}a"), &prefix));
    }

    /// Each wait is half to all of a step doubling from 1 s to 5 min, and
    /// the waits of two agents differ (jitter).
    #[test]
    fn status_write_waits_are_jittered_within_the_steps() {
        let waits: Vec<Duration> = write_backoff().build().take(14).collect();
        let mut step = WRITE_BACKOFF;
        for wait in &waits {
            assert!(*wait >= step / 2 && *wait <= step, "{wait:?} for {step:?}");
            step = step.saturating_mul(2).min(WRITE_BACKOFF_MAX);
        }
        assert!(waits[10..].iter().all(|w| *w >= WRITE_BACKOFF_MAX / 2));
        let other: Vec<Duration> = write_backoff().build().take(14).collect();
        assert_ne!(waits, other);
    }
}
