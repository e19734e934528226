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
use hostaction_crds::{Grant, HostActionRun, HostActionRunStatus, RunPhase};
use kube::api::{Patch, PatchParams};
use kube::runtime::watcher::ExponentialBackoff;
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Api, Client, ResourceExt};
use serde::{Deserialize, Serialize};
use tokio::sync::{Semaphore, watch};

use crate::{Loader, failed_status, finished_status, now, shrunk_status};
use hostaction_distribution::{ModuleStore, Registry};
use hostaction_runtime::{Error, Runtime};

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
    pub async fn run(
        self: Arc<Self>,
        shutdown: impl std::future::Future<Output = ()>,
    ) -> Result<(), Error> {
        std::fs::create_dir_all(&self.journal)
            .map_err(|e| Error::Host(format!("{}: {e}", self.journal.display())))?;
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
        let mut pruned = false;
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
                    continue;
                }
                Some(Ok(watcher::Event::InitDone)) => {
                    if !pruned {
                        // Entries of runs deleted while the agent was away.
                        self.prune_journal(&listed);
                        pruned = true;
                    }
                    continue;
                }
                Some(Ok(watcher::Event::Delete(run))) => {
                    taken.remove(&run.uid().unwrap_or_default());
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
            let phase = run.status.as_ref().map(|s| s.phase).unwrap_or_default();
            if !matches!(phase, RunPhase::Pending | RunPhase::Running) {
                continue;
            }
            if !taken.insert(uid.clone()) {
                continue;
            }
            let agent = self.clone();
            let slot = one_at_a_time.clone();
            let stopping = stopping.clone();
            tasks.spawn(async move { agent.handle(&run, &uid, slot, stopping).await });
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
        tracing::info!(run = %run.name_any(), module = %run.spec.module, attempts, "running");
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
            // A registry reference pinned by digest, never a file.
            loader
                .run_pinned(
                    &spec.module,
                    spec.params.as_ref(),
                    &spec.grants,
                    policy.as_ref(),
                    spec.mode,
                    timeout,
                )
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
            Ok(Ok(report)) => finished_status(&report, started, attempts),
            Ok(Err(error)) => failed_status(&error, started, attempts),
            Err(join) => failed_status(
                &Error::Host(format!("the run's thread: {join}")),
                started,
                attempts,
            ),
        };
        tracing::info!(run = %run.name_any(), phase = ?status.phase, "finished");
        status
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
        let api = Api::<HostActionRun>::all(self.client.clone());
        let patch = Patch::Merge(serde_json::json!({ "status": status }));
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
