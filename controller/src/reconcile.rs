//! The reconciler: for each HostAction, resolve its module once per
//! generation, create the runs its rollout allows, delete the ones it no
//! longer needs, and report counts and conditions. It reads nodes and runs
//! from the controller's caches (reflectors), so a reconcile costs API
//! calls only for what it changes.

use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_util::{StreamExt, TryStreamExt, stream};
use hostaction_crds::action::OnDelete;
use hostaction_crds::run::UNDO_ANNOTATION;
use hostaction_crds::{
    ACTION_LABEL, HostAction, HostActionRun, HostActionRunSpec, HostActionStatus, NODE_LABEL,
    RunPhase,
};
use k8s_openapi::api::core::v1::Node;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, ObjectMeta};
use k8s_openapi::jiff::Timestamp;
use kube::api::{DeleteParams, Patch, PatchParams, PostParams};
use kube::runtime::controller::Action;
use kube::runtime::events::{Event, EventType, Recorder};
use kube::runtime::finalizer::{self, finalizer};
use kube::runtime::reflector::Store;
use kube::{Api, Client, Resource, ResourceExt};

use crate::metrics::{ControllerMetrics, ResultLabels};
use crate::rollout::{self, condition};
use hostaction_distribution::resolve::{self, Resolver};

/// The finalizer that lets the controller delete an action's runs first.
pub const FINALIZER: &str = "hostaction.dev/runs";
/// Requests in flight at once when creating or deleting many runs.
const PARALLEL_WRITES: usize = 32;
/// Look again this often even when nothing changes (a lost event, a node
/// turning Ready without a label change is seen anyway, but cheaply).
const RESYNC: Duration = Duration::from_secs(300);

/// A reconcile's failure; the object is looked at again after a back-off.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The API server refused or could not be reached.
    #[error("kubernetes API: {0}")]
    Kube(#[from] kube::Error),
    /// The module could not be resolved to a digest.
    #[error("{0}")]
    Resolve(String),
    /// The spec cannot be acted on (a field the schema could not check).
    #[error("invalid spec: {0}")]
    Spec(String),
    /// Adding or removing the finalizer failed.
    #[error("finalizer: {0}")]
    Finalizer(#[source] Box<finalizer::Error<Error>>),
    /// An action deleted with `onDelete: undo` waits for its nodes to undo it.
    #[error("{0}")]
    UndoPending(String),
}

impl Error {
    /// The `reason` label of a failed reconcile on
    /// `hostaction_controller_reconciles_total` (the README lists them).
    pub fn metric_label(&self) -> &'static str {
        match self {
            Error::Kube(_) => "kube",
            Error::Resolve(_) => "resolve",
            Error::Spec(_) => "spec",
            Error::Finalizer(_) => "finalizer",
            Error::UndoPending(_) => "undo-pending",
        }
    }
}

/// What every reconcile shares.
pub struct Context {
    /// The API client.
    pub client: Client,
    /// All nodes (a reflector's cache).
    pub nodes: Store<Node>,
    /// All HostActionRuns (a reflector's cache).
    pub runs: Store<HostActionRun>,
    /// Resolves tags to digests.
    pub resolver: Resolver,
    /// Publishes Events.
    pub recorder: Recorder,
    /// The controller's metrics.
    pub metrics: ControllerMetrics,
}

/// Reconciles one HostAction (the kube-rs `Controller` calls this).
pub async fn reconcile(action: Arc<HostAction>, ctx: Arc<Context>) -> Result<Action, Error> {
    let started = Instant::now();
    // Until both caches hold a full list, a reconcile would see no runs and
    // no nodes and act on that.
    ctx.nodes.wait_until_ready().await.ok();
    ctx.runs.wait_until_ready().await.ok();
    let api = Api::<HostAction>::all(ctx.client.clone());
    let shared = ctx.clone();
    let result = finalizer(&api, FINALIZER, action, |event| async move {
        match event {
            finalizer::Event::Apply(action) => apply(&action, &shared).await,
            finalizer::Event::Cleanup(action) => cleanup(&action, &shared).await,
        }
    })
    .await
    .map_err(|e| match e {
        finalizer::Error::ApplyFailed(e) | finalizer::Error::CleanupFailed(e) => e,
        other => Error::Finalizer(Box::new(other)),
    });
    let labels = match &result {
        Ok(_) => ResultLabels::OK,
        Err(e) => ResultLabels::error(e.metric_label()),
    };
    ctx.metrics.reconciles.get_or_create(&labels).inc();
    ctx.metrics
        .reconcile_duration
        .observe(started.elapsed().as_secs_f64());
    result
}

/// Looks again after a failed reconcile.
pub fn error_policy(action: Arc<HostAction>, error: &Error, _: Arc<Context>) -> Action {
    if let Error::UndoPending(why) = error {
        // Not a failure: each run's status change triggers a reconcile too.
        tracing::info!(action = %action.name_any(), %why, "deleting");
        return Action::requeue(Duration::from_secs(10));
    }
    tracing::warn!(action = %action.name_any(), %error, "reconcile failed");
    Action::requeue(Duration::from_secs(10))
}

async fn apply(action: &HostAction, ctx: &Context) -> Result<Action, Error> {
    let name = action.name_any();
    let generation = action.metadata.generation.unwrap_or(1);
    let old = action.status.clone().unwrap_or_default();
    let this_generation = old.observed_generation == Some(generation);

    // A malformed grant would fail on every node and spend the failure
    // budget there: it is reported here, once, and nothing runs until the
    // spec changes (a new generation reconciles again).
    if let Err(invalid) = action.spec.grants.validate() {
        report_grant_invalid(action, ctx, &old, generation, &invalid.to_string()).await?;
        return Ok(Action::await_change());
    }

    // The digest: resolved once per generation, then read from the status.
    let known = old.resolved_digest.as_deref().filter(|_| this_generation);
    let pinned = match known {
        Some(digest) => resolve::pin(&action.spec.module, digest),
        None => ctx.resolver.resolve(&action.spec.module).await,
    };
    let pinned = match pinned {
        Ok(pinned) => pinned,
        Err(why) => {
            report_unresolved(action, ctx, &old, generation, &why).await?;
            return Err(Error::Resolve(why));
        }
    };
    if known.is_none() {
        publish(
            ctx,
            action,
            EventType::Normal,
            "Resolved",
            format!("{} is {}", action.spec.module, pinned.digest),
        )
        .await;
    }

    let nodes = ctx.nodes.state();
    let nodes: Vec<&Node> = nodes.iter().map(Arc::as_ref).collect();
    let runs: Vec<Arc<HostActionRun>> = ctx
        .runs
        .state()
        .into_iter()
        .filter(|r| r.spec.action == name)
        .collect();
    let runs: Vec<&HostActionRun> = runs.iter().map(Arc::as_ref).collect();
    let completed = this_generation
        && old.conditions.iter().any(|c| {
            c.type_ == condition::COMPLETE
                && c.status == "True"
                && c.observed_generation == Some(generation)
        });
    let mut step = rollout::next_step(
        action,
        &pinned.digest,
        &nodes,
        &runs,
        completed,
        Timestamp::now(),
    )
    .map_err(Error::Spec)?;

    let run_api = Api::<HostActionRun>::all(ctx.client.clone());
    let new_runs: Vec<HostActionRun> = step
        .create
        .iter()
        .map(|node| new_run(action, node, generation, &pinned.reference))
        .collect();
    let created = stream::iter(new_runs)
        .map(|run| {
            let api = run_api.clone();
            async move { create(&api, &run).await }
        })
        .buffer_unordered(PARALLEL_WRITES)
        .try_collect::<Vec<()>>()
        .await?;
    ctx.metrics.runs_created.inc_by(created.len() as u64);
    if !step.create.is_empty() {
        // Created runs are Pending from now on.
        step.status.counts.pending += i32::try_from(step.create.len()).unwrap_or(i32::MAX);
    }
    delete_runs(&run_api, &step.delete, ctx).await?;

    rollout::with_transition_times(
        &mut step.status.conditions,
        &old.conditions,
        Timestamp::now(),
    );
    if rollout::differs(&step.status, &old) {
        announce_transitions(action, ctx, &old, &step.status).await;
        patch_status(ctx, action, serde_json::json!({ "status": step.status })).await?;
    }
    Ok(Action::requeue(
        step.requeue_after.map_or(RESYNC, |d| d.min(RESYNC)),
    ))
}

/// The action is being deleted: its runs go first (the API server's
/// garbage collector would take them too, but later and unseen). With
/// `onDelete: undo`, each run is first annotated [`UNDO_ANNOTATION`] (one
/// write per run) and the runs stay until every one whose node still exists
/// reports phase `Undone` (its agent undid the action on that node); until
/// then the cleanup fails with [`Error::UndoPending`] and is tried again, so
/// the finalizer holds the action.
async fn cleanup(action: &HostAction, ctx: &Context) -> Result<Action, Error> {
    let name = action.name_any();
    let runs: Vec<Arc<HostActionRun>> = ctx
        .runs
        .state()
        .into_iter()
        .filter(|r| r.spec.action == name)
        .collect();
    let api = Api::<HostActionRun>::all(ctx.client.clone());
    if action.spec.on_delete == OnDelete::Undo {
        let nodes: std::collections::HashSet<String> = ctx
            .nodes
            .state()
            .iter()
            .filter_map(|n| n.metadata.name.clone())
            .collect();
        let mut waiting = Vec::new();
        let mut requested = 0usize;
        for run in runs.iter().filter(|r| nodes.contains(&r.spec.node_name)) {
            let undone = run.status.as_ref().map(|s| s.phase) == Some(RunPhase::Undone);
            if undone {
                continue;
            }
            waiting.push(run.spec.node_name.clone());
            if !run.annotations().contains_key(UNDO_ANNOTATION) {
                let patch = serde_json::json!({
                    "metadata": { "annotations": { UNDO_ANNOTATION: "requested" } }
                });
                match api
                    .patch(
                        &run.name_any(),
                        &PatchParams::default(),
                        &Patch::Merge(patch),
                    )
                    .await
                {
                    Ok(_) => requested += 1,
                    Err(kube::Error::Api(status)) if status.code == 404 => {}
                    Err(e) => return Err(e.into()),
                }
            }
        }
        if requested > 0 {
            publish(
                ctx,
                action,
                EventType::Normal,
                "Undoing",
                format!("onDelete is undo: {requested} nodes asked to undo the action"),
            )
            .await;
        }
        if !waiting.is_empty() {
            waiting.sort();
            waiting.dedup();
            let shown = waiting
                .iter()
                .take(5)
                .cloned()
                .collect::<Vec<_>>()
                .join(", ");
            return Err(Error::UndoPending(format!(
                "waiting for {} nodes to undo the action ({shown}); a node whose agent \
                 is gone for good can be deleted (kubectl delete node) to stop waiting",
                waiting.len()
            )));
        }
    }
    let names: Vec<String> = runs.iter().map(|r| r.name_any()).collect();
    delete_runs(&api, &names, ctx).await?;
    Ok(Action::await_change())
}

fn new_run(action: &HostAction, node: &str, generation: i64, module: &str) -> HostActionRun {
    let name = action.name_any();
    let spec = &action.spec;
    // Labels are for people and kubectl (`-l hostaction.dev/node=...`);
    // agents select by the `spec.nodeName` field, which has no 63-character
    // limit.
    let labels = [(NODE_LABEL, node), (ACTION_LABEL, name.as_str())]
        .into_iter()
        .filter(|(_, value)| value.len() <= 63)
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect();
    HostActionRun {
        metadata: ObjectMeta {
            name: Some(rollout::run_name(&name, node, generation)),
            labels: Some(labels),
            owner_references: action.controller_owner_ref(&()).map(|o| vec![o]),
            ..ObjectMeta::default()
        },
        spec: HostActionRunSpec {
            action: name,
            generation,
            node_name: node.to_owned(),
            module: module.to_owned(),
            params: spec.params.clone(),
            grants: spec.grants.clone(),
            mode: spec.mode,
            timeout_seconds: spec.timeout_seconds,
            on_failure: spec.on_failure,
            on_delete: spec.on_delete,
            journal: spec.journal,
            drift: spec.drift,
        },
        status: None,
    }
}

/// Creates a run; one that exists already (a cache behind the API) is fine.
async fn create(api: &Api<HostActionRun>, run: &HostActionRun) -> Result<(), Error> {
    match api.create(&PostParams::default(), run).await {
        Ok(_) => Ok(()),
        Err(kube::Error::Api(status)) if status.code == 409 => Ok(()),
        Err(e) => Err(e.into()),
    }
}

async fn delete_runs(
    api: &Api<HostActionRun>,
    names: &[String],
    ctx: &Context,
) -> Result<(), Error> {
    let deleted = stream::iter(names.to_vec())
        .map(|name| {
            let api = api.clone();
            async move {
                match api.delete(&name, &DeleteParams::background()).await {
                    Ok(_) => Ok(()),
                    Err(kube::Error::Api(status)) if status.code == 404 => Ok(()),
                    Err(e) => Err(e),
                }
            }
        })
        .buffer_unordered(PARALLEL_WRITES)
        .try_collect::<Vec<()>>()
        .await?;
    ctx.metrics.runs_deleted.inc_by(deleted.len() as u64);
    Ok(())
}

/// Records an unresolvable module in the status (once) and as an Event.
async fn report_unresolved(
    action: &HostAction,
    ctx: &Context,
    old: &HostActionStatus,
    generation: i64,
    why: &str,
) -> Result<(), Error> {
    let resolved = rollout::condition(
        condition::RESOLVED,
        false,
        "ResolveFailed",
        why.chars().take(1024).collect(),
        generation,
    );
    // A resolve failure replaces a stale GrantInvalid too.
    let refusal = Refusal {
        conditions: vec![resolved],
        clears: &[condition::GRANT_INVALID],
        reason: "ResolveFailed",
        note: why.to_owned(),
    };
    report_refusal(action, ctx, old, generation, refusal).await
}

/// Records a malformed grant in the status (once, with `why` naming the
/// field) and as an Event. Runs of earlier generations stay as they are.
async fn report_grant_invalid(
    action: &HostAction,
    ctx: &Context,
    old: &HostActionStatus,
    generation: i64,
    why: &str,
) -> Result<(), Error> {
    let message = format!("spec.grants.{why}; no runs until the grant is fixed");
    let message: String = message.chars().take(1024).collect();
    let conditions = vec![
        rollout::condition(
            condition::GRANT_INVALID,
            true,
            "GrantInvalid",
            message.clone(),
            generation,
        ),
        rollout::condition(
            condition::PROGRESSING,
            false,
            "GrantInvalid",
            "no runs: the grant is invalid".to_owned(),
            generation,
        ),
    ];
    let refusal = Refusal {
        conditions,
        clears: &[],
        reason: "GrantInvalid",
        note: message,
    };
    report_refusal(action, ctx, old, generation, refusal).await
}

/// Why a generation gets no runs: conditions that replace those of their
/// types (and of `clears`), and a Warning Event's reason and note.
struct Refusal {
    conditions: Vec<Condition>,
    clears: &'static [&'static str],
    reason: &'static str,
    note: String,
}

/// Writes `refusal` into the status with this generation and no digest,
/// and publishes its Event — both only when the status changes, so a
/// refusal is reported once, not on every reconcile.
async fn report_refusal(
    action: &HostAction,
    ctx: &Context,
    old: &HostActionStatus,
    generation: i64,
    refusal: Refusal,
) -> Result<(), Error> {
    let Refusal {
        mut conditions,
        clears,
        reason,
        note,
    } = refusal;
    let mut status = old.clone();
    status.observed_generation = Some(generation);
    status.resolved_digest = None;
    rollout::with_transition_times(&mut conditions, &old.conditions, Timestamp::now());
    status.conditions.retain(|c| {
        !clears.contains(&c.type_.as_str()) && !conditions.iter().any(|n| n.type_ == c.type_)
    });
    status.conditions.extend(conditions);
    if rollout::differs(&status, old) {
        publish(ctx, action, EventType::Warning, reason, note).await;
        let mut patch = serde_json::json!({ "status": status });
        // A merge patch keeps what it does not name: the old digest must go
        // explicitly, or the next reconcile would take it for this
        // generation's.
        patch["status"]["resolvedDigest"] = serde_json::Value::Null;
        patch_status(ctx, action, patch).await?;
    }
    Ok(())
}

/// Merge-patches the action's status subresource.
async fn patch_status(
    ctx: &Context,
    action: &HostAction,
    patch: serde_json::Value,
) -> Result<(), Error> {
    Api::<HostAction>::all(ctx.client.clone())
        .patch_status(
            &action.name_any(),
            &PatchParams::default(),
            &Patch::Merge(patch),
        )
        .await?;
    Ok(())
}

/// Events for the transitions people wait for: complete, or stopped.
async fn announce_transitions(
    action: &HostAction,
    ctx: &Context,
    old: &HostActionStatus,
    new: &HostActionStatus,
) {
    if is_true(new, condition::COMPLETE) && !is_true(old, condition::COMPLETE) {
        let message = message(new, condition::COMPLETE);
        publish(ctx, action, EventType::Normal, "Complete", message).await;
    }
    if is_true(new, condition::FAILED) && !is_true(old, condition::FAILED) {
        let message = message(new, condition::FAILED);
        publish(
            ctx,
            action,
            EventType::Warning,
            "FailureBudgetExceeded",
            message,
        )
        .await;
    }
}

async fn publish(ctx: &Context, action: &HostAction, type_: EventType, reason: &str, note: String) {
    let event = Event {
        type_,
        reason: reason.to_owned(),
        note: Some(event_note(note)),
        action: "Reconcile".to_owned(),
        secondary: None,
    };
    // An Event is for people; failing to record one does not fail the
    // reconcile.
    if let Err(error) = ctx.recorder.publish(&event, &action.object_ref(&())).await {
        tracing::warn!(action = %action.name_any(), %error, "could not publish an event");
    }
}

/// `note` cut to what events.k8s.io accepts (1 KiB; a longer one is
/// refused, and the Event lost), at a character boundary, marked as cut.
fn event_note(mut note: String) -> String {
    const MAX: usize = 1024;
    const CUT: &str = " [cut]";
    if note.len() > MAX {
        let mut end = MAX - CUT.len();
        while !note.is_char_boundary(end) {
            end -= 1;
        }
        note.truncate(end);
        note.push_str(CUT);
    }
    note
}

fn is_true(status: &HostActionStatus, type_: &str) -> bool {
    status
        .conditions
        .iter()
        .any(|c| c.type_ == type_ && c.status == "True")
}

fn message(status: &HostActionStatus, type_: &str) -> String {
    status
        .conditions
        .iter()
        .find(|c| c.type_ == type_)
        .map(|c| c.message.clone())
        .unwrap_or_default()
}

/// The reconciler against a scripted API server.
#[cfg(test)]
mod scenarios;

#[cfg(test)]
mod tests {
    use super::event_note;

    #[test]
    fn event_notes_fit_what_the_api_server_accepts() {
        assert_eq!(event_note("short".into()), "short");
        let long = event_note("é".repeat(1000));
        assert!(long.len() <= 1024, "{}", long.len());
        assert!(long.ends_with(" [cut]"));
        assert_eq!(event_note("x".repeat(1024)).len(), 1024);
    }
}
