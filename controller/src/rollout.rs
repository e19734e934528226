//! What a HostAction needs next, computed from what the controller sees
//! (the action, the nodes, its runs) with no API calls: which runs to
//! create, which to delete, and the status to report. Pure, so that every
//! rollout rule is tested on its own.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use hostaction_crds::action::PhaseCounts;
use hostaction_crds::{HostAction, HostActionRun, HostActionStatus, RunPhase};
use k8s_openapi::api::core::v1::Node;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use k8s_openapi::jiff::{SignedDuration, Timestamp};
use kube::core::SelectorExt;

/// Condition types of a HostAction's status.
pub mod condition {
    /// The module's tag was resolved to a digest for this generation.
    pub const RESOLVED: &str = "Resolved";
    /// Runs are being created or are running.
    pub const PROGRESSING: &str = "Progressing";
    /// Every selected node ran this generation with success.
    pub const COMPLETE: &str = "Complete";
    /// More runs failed than `rollout.maxFailures` allows: no new runs.
    pub const FAILED: &str = "Failed";
    /// The grant is malformed in a way the CRD's rules could not check:
    /// no runs for this generation (present only while it is True).
    pub const GRANT_INVALID: &str = "GrantInvalid";
}

/// What a reconcile does next.
#[derive(Debug, Default, PartialEq)]
pub struct NextStep {
    /// Nodes that get a run of this generation now (at the rollout's pace).
    pub create: Vec<String>,
    /// Runs to delete: older generations a new run replaces, runs on nodes
    /// gone or no longer selected, finished runs whose interval passed.
    pub delete: Vec<String>,
    /// The status to report (conditions without transition times).
    pub status: HostActionStatus,
    /// When to look again even if nothing changes (the next interval run).
    pub requeue_after: Option<Duration>,
}

/// The next step of `action`'s rollout, whose module resolved to `digest`, given every
/// node and this action's runs. `completed` says whether this generation's
/// rollout was already reported complete (nodes joining after it run only
/// with `rerun.onNodeJoin`).
pub fn next_step(
    action: &HostAction,
    digest: &str,
    nodes: &[&Node],
    runs: &[&HostActionRun],
    completed: bool,
    now: Timestamp,
) -> Result<NextStep, String> {
    let spec = &action.spec;
    let generation = action.metadata.generation.unwrap_or(1);
    // Nodes that exist (ready or not) and match keep their runs: a node
    // that is briefly NotReady finishes what it started. Only Ready ones
    // are selected for new runs.
    let selector = spec.node_selector()?;
    let no_labels = BTreeMap::new();
    let mut matching = BTreeSet::new();
    let mut selected = BTreeSet::new();
    for node in nodes {
        let Some(name) = node.metadata.name.as_deref() else {
            continue;
        };
        if selector.matches(node.metadata.labels.as_ref().unwrap_or(&no_labels)) {
            matching.insert(name);
            if is_ready(node) {
                selected.insert(name.to_owned());
            }
        }
    }
    let max_concurrent = spec.max_concurrent(selected.len())?;

    let mut step = NextStep::default();
    let mut latest: BTreeMap<&str, &HostActionRun> = BTreeMap::new();
    for run in runs {
        let name = run.metadata.name.clone().unwrap_or_default();
        if !matching.contains(run.spec.node_name.as_str()) {
            step.delete.push(name);
            continue;
        }
        match latest.get(run.spec.node_name.as_str()) {
            Some(other) if other.spec.generation >= run.spec.generation => step.delete.push(name),
            Some(other) => {
                step.delete.extend(other.metadata.name.clone());
                latest.insert(&run.spec.node_name, run);
            }
            None => {
                latest.insert(&run.spec.node_name, run);
            }
        }
    }

    let mut counts = PhaseCounts::default();
    let mut waiting = Vec::new();
    let mut requeue: Option<SignedDuration> = None;
    // Nodes whose finished run's interval passed: waiting again.
    let mut rerun = BTreeSet::new();
    for node in &selected {
        let current = latest
            .get(node.as_str())
            .filter(|run| run.spec.generation == generation || !spec.rerun.on_spec_change);
        let Some(run) = current else {
            let joined_later = completed && !latest.contains_key(node.as_str());
            if !joined_later || spec.rerun.on_node_join {
                waiting.push(node.clone());
            }
            continue;
        };
        let status = run.status.clone().unwrap_or_default();
        let drifted = status
            .conditions
            .iter()
            .any(|c| c.type_ == hostaction_crds::run::DRIFTED && c.status == "True");
        if drifted {
            counts.drifted += 1;
        }
        match status.phase {
            RunPhase::Pending => counts.pending += 1,
            RunPhase::Running => counts.running += 1,
            RunPhase::Succeeded => counts.succeeded += 1,
            RunPhase::Failed | RunPhase::Interrupted => counts.failed += 1,
            // Only while the action is being deleted: not a rollout's phase.
            RunPhase::Undone => {}
        }
        let finished = matches!(
            status.phase,
            RunPhase::Succeeded | RunPhase::Failed | RunPhase::Interrupted | RunPhase::Undone
        );
        if let (true, Some(every), Some(at)) =
            (finished, spec.rerun.interval_seconds, &status.finished_at)
        {
            let left = at.0.duration_since(now) + SignedDuration::from_secs(every.into());
            if left <= SignedDuration::ZERO {
                rerun.insert(node.as_str());
                waiting.push(node.clone());
            } else {
                requeue = Some(requeue.map_or(left, |r| r.min(left)));
            }
        }
    }
    // Unfinished runs on matching nodes that are NotReady for now still
    // hold their slots.
    let held = latest
        .iter()
        .filter(|(node, run)| {
            !selected.contains(**node)
                && run.spec.generation == generation
                && matches!(
                    run.status.as_ref().map(|s| s.phase).unwrap_or_default(),
                    RunPhase::Pending | RunPhase::Running
                )
        })
        .count();
    let active = usize::try_from(counts.pending + counts.running).unwrap_or(0) + held;
    let failures = counts.failed;
    let stopped = failures > spec.rollout.max_failures;
    if !stopped && !spec.rollout.paused {
        let slots = max_concurrent.saturating_sub(active);
        for node in waiting.iter().take(slots) {
            let rerun = rerun.contains(node.as_str());
            match latest.get(node.as_str()) {
                // A rerun of this generation has the old run's name: the old
                // run goes first, and the reconcile its deletion triggers
                // creates the new one (the node is still waiting).
                Some(old) if rerun && old.spec.generation == generation => {
                    step.delete.extend(old.metadata.name.clone());
                }
                // A node's older run goes once its new one exists.
                Some(old) if old.spec.generation < generation => {
                    step.create.push(node.clone());
                    step.delete.extend(old.metadata.name.clone());
                }
                _ => step.create.push(node.clone()),
            }
        }
    }
    step.delete.sort();
    step.delete.dedup();

    let (progressing, why) = if stopped {
        (false, "FailureBudgetExceeded")
    } else if spec.rollout.paused && (!waiting.is_empty() || active > 0) {
        (false, "Paused")
    } else if !waiting.is_empty() || active > 0 {
        (true, "RollingOut")
    } else {
        (false, "Done")
    };
    let complete = waiting.is_empty() && active == 0 && failures == 0;
    let selected_count = selected.len();
    step.status = HostActionStatus {
        observed_generation: Some(generation),
        resolved_digest: Some(digest.to_owned()),
        selected_nodes: i32::try_from(selected_count).unwrap_or(i32::MAX),
        conditions: vec![
            condition(
                condition::RESOLVED,
                true,
                "Resolved",
                format!("{} runs {digest}", spec.module),
                generation,
            ),
            condition(
                condition::PROGRESSING,
                progressing,
                why,
                format!(
                    "{} of {selected_count} selected nodes done, {active} running, {} waiting (at most {max_concurrent} at once)",
                    counts.succeeded + counts.failed,
                    waiting.len()
                ),
                generation,
            ),
            condition(
                condition::COMPLETE,
                complete,
                if complete {
                    "AllSucceeded"
                } else if failures > 0 {
                    "RunsFailed"
                } else {
                    "InProgress"
                },
                format!(
                    "{} of {selected_count} selected nodes succeeded",
                    counts.succeeded
                ),
                generation,
            ),
            condition(
                condition::FAILED,
                stopped,
                if stopped {
                    "FailureBudgetExceeded"
                } else {
                    "WithinFailureBudget"
                },
                format!(
                    "{failures} runs failed; rollout.maxFailures is {}",
                    spec.rollout.max_failures
                ),
                generation,
            ),
        ],
        counts,
    };
    step.requeue_after = requeue.and_then(|d| d.try_into().ok());
    Ok(step)
}

/// A node whose Ready condition is True.
pub fn is_ready(node: &Node) -> bool {
    node.status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .is_some_and(|c| c.iter().any(|c| c.type_ == "Ready" && c.status == "True"))
}

/// The run of `action` on `node` for `generation`: a readable name when it
/// fits the 253 characters of a name, a hash of it otherwise.
pub fn run_name(action: &str, node: &str, generation: i64) -> String {
    let name = format!("{action}.{node}.g{generation}");
    if name.len() <= 253 {
        return name;
    }
    use sha2::Digest;
    let hash = hex::encode(sha2::Sha256::digest(name.as_bytes()));
    format!("run-{}.g{generation}", &hash[..32])
}

/// `new` conditions with the transition times of `old` kept where a
/// condition's status did not change (API conventions), now elsewhere.
pub fn with_transition_times(new: &mut [Condition], old: &[Condition], now: Timestamp) {
    for condition in new {
        condition.last_transition_time = old
            .iter()
            .find(|o| o.type_ == condition.type_ && o.status == condition.status)
            .map_or(Time(now), |o| o.last_transition_time.clone());
    }
}

/// Whether two statuses differ in more than transition times.
pub fn differs(a: &HostActionStatus, b: &HostActionStatus) -> bool {
    let strip = |s: &HostActionStatus| {
        let mut s = s.clone();
        for c in &mut s.conditions {
            c.last_transition_time = Time(Timestamp::UNIX_EPOCH);
        }
        s
    };
    strip(a) != strip(b)
}

/// A condition with no transition time yet (see [`with_transition_times`]).
pub fn condition(
    type_: &str,
    status: bool,
    reason: &str,
    message: String,
    generation: i64,
) -> Condition {
    Condition {
        type_: type_.to_owned(),
        status: if status { "True" } else { "False" }.to_owned(),
        reason: reason.to_owned(),
        message,
        observed_generation: Some(generation),
        last_transition_time: Time(Timestamp::UNIX_EPOCH),
    }
}

#[cfg(test)]
mod tests;
