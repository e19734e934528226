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

use std::collections::HashSet;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_util::StreamExt;
use hostaction_controller::metrics::{AgentMetrics, PhaseLabels};
use hostaction_crds::{Grant, HostActionRun, HostActionRunStatus, RunPhase};
use kube::api::{Patch, PatchParams};
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Api, Client, ResourceExt};
use serde::{Deserialize, Serialize};

use super::{Loader, failed_status, finished_status, now};
use crate::oci::{ModuleStore, Registry};
use crate::{Error, Runtime};

/// Attempts a run gets when the agent stops during it each time.
const MAX_ATTEMPTS: i32 = 3;
/// Back-off between tries of a status write the API server refused.
const WRITE_RETRY: Duration = Duration::from_secs(1);

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
    /// This node's policy, bounding every grant.
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
}

impl ClusterAgent {
    /// Watches and runs this node's runs until `shutdown` resolves. Runs
    /// execute one at a time (two actions shaping one host at once could
    /// interfere); the watch goes on meanwhile.
    pub async fn run(
        self: Arc<Self>,
        shutdown: impl std::future::Future<Output = ()>,
    ) -> Result<(), Error> {
        std::fs::create_dir_all(&self.journal)
            .map_err(|e| Error::Host(format!("{}: {e}", self.journal.display())))?;
        let api = Api::<HostActionRun>::all(self.client.clone());
        let config =
            watcher::Config::default().fields(&format!("spec.nodeName={}", self.node_name));
        let mut events = std::pin::pin!(watcher(api, config).default_backoff());
        // Runs this process took on (running, or done): each is handled
        // once, whatever events about it arrive later or again.
        let mut taken = HashSet::<String>::new();
        let one_at_a_time = Arc::new(tokio::sync::Semaphore::new(1));
        let mut listed = HashSet::new();
        let mut pruned = false;
        let mut shutdown = std::pin::pin!(shutdown);
        loop {
            let event = tokio::select! {
                event = events.next() => event,
                () = &mut shutdown => return Ok(()),
            };
            let run = match event {
                None => return Ok(()),
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
            let permit = one_at_a_time.clone();
            tokio::spawn(async move {
                let Ok(_permit) = permit.acquire_owned().await else {
                    return;
                };
                agent.handle(&run, &uid).await;
            });
        }
    }

    /// Runs (or re-runs, or reports) one run and writes its status.
    async fn handle(&self, run: &HostActionRun, uid: &str) {
        let name = run.name_any();
        let mut entry = self.read_entry(uid).unwrap_or_default();
        let reported = run.status.as_ref().map_or(0, |s| s.attempts);
        let result = if let Some(result) = entry.result.take() {
            // Finished before the agent stopped; only the report was missing.
            result
        } else if entry.attempts.max(reported) >= MAX_ATTEMPTS {
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
                result: None,
            };
            self.write_entry(uid, &entry).await;
            let result = self.execute(run, entry.attempts).await;
            entry.result = Some(result.clone());
            self.write_entry(uid, &entry).await;
            result
        };
        let phase = format!("{:?}", result.phase);
        self.write_status(&name, &result).await;
        self.metrics
            .runs
            .get_or_create(&PhaseLabels { phase })
            .inc();
        self.remove_entry(uid);
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
            if !spec.module.contains("@sha256:") {
                return Err(Error::BadParams(format!(
                    "spec.module {:?} is not pinned by digest; nodes run modules by digest only",
                    spec.module
                )));
            }
            let loader = Loader {
                runtime: &runtime,
                registry: &registry,
                store: &store,
            };
            let timeout =
                Duration::from_secs(u64::try_from(spec.timeout_seconds.max(1)).unwrap_or(1));
            loader
                .run(
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

    /// Writes a run's final status, retrying while the API server is away
    /// (the journal keeps it meanwhile).
    async fn write_status(&self, name: &str, status: &HostActionRunStatus) {
        loop {
            match self.patch_status(name, status).await {
                Ok(()) => return,
                // The run was deleted meanwhile: nobody waits for it.
                Err(kube::Error::Api(e)) if e.code == 404 => return,
                Err(error) => {
                    tracing::warn!(run = %name, %error, "could not write the run's status; retrying");
                    tokio::time::sleep(WRITE_RETRY).await;
                }
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
        let written = tokio::task::spawn_blocking(move || -> std::io::Result<()> {
            use std::io::Write;
            let tmp = target.with_extension("tmp");
            let mut file = std::fs::File::create(&tmp)?;
            file.write_all(&bytes)?;
            file.sync_all()?;
            std::fs::rename(&tmp, &target)?;
            match target.parent() {
                Some(dir) => std::fs::File::open(dir)?.sync_all(),
                None => Ok(()),
            }
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
