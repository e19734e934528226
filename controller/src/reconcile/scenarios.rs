//! The reconciler against a scripted API server (tower-test's mock service,
//! as kube-rs's controller-rs tests do): the caches are filled by hand, and
//! each test answers the requests one reconcile should make, in order,
//! checking their method, path and body. Modules are pinned by digest, so
//! no registry is asked.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::sync::Arc;
use std::time::Duration;

use crate::metrics::{ControllerMetrics, ResultLabels};
use crate::reconcile::{self, Context, FINALIZER};
use hostaction_crds::action::Rollout;
use hostaction_crds::{
    HostAction, HostActionRun, HostActionRunSpec, HostActionRunStatus, HostActionSpec,
    HostActionStatus, RunPhase,
};
use hostaction_distribution::resolve::{PlainHttp, Resolver};
use http::{Method, Request, Response, StatusCode};
use k8s_openapi::api::core::v1::{Node, NodeCondition, NodeStatus};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, ObjectMeta, Time};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use k8s_openapi::jiff::{SignedDuration, Timestamp};
use kube::client::Body;
use kube::runtime::controller::Action;
use kube::runtime::events::{Recorder, Reporter};
use kube::runtime::reflector::{self, store::Writer};
use kube::runtime::watcher;
use prometheus_client::registry::Registry;
use serde_json::{Value, json};
use tokio::task::JoinHandle;

type ApiHandle = tower_test::mock::Handle<Request<Body>, Response<Body>>;
type Reply = tower_test::mock::SendResponse<Response<Body>>;

/// How long the server waits for each expected request.
const WAIT: Duration = Duration::from_secs(10);
const ACTIONS: &str = "/apis/hostaction.dev/v1alpha1/hostactions";
const RUNS: &str = "/apis/hostaction.dev/v1alpha1/hostactionruns";
/// Events of cluster-scoped objects go to `default`.
const EVENTS: &str = "/apis/events.k8s.io/v1/namespaces/default/events";
const NAME: &str = "cni";
const UID: &str = "0b1c2d3e-0000-4000-8000-000000000001";
const REGISTRY_MODULE: &str = "127.0.0.1:5000/actions/x";

fn digest() -> String {
    format!("sha256:{}", "ab".repeat(32))
}

fn module() -> String {
    format!("{REGISTRY_MODULE}@{}", digest())
}

/// One request the reconciler made, and the way to answer it.
struct Call {
    method: Method,
    path: String,
    content_type: String,
    body: Value,
    reply: Reply,
}

impl Call {
    fn respond(self, status: StatusCode, body: &Value) {
        let response = Response::builder()
            .status(status)
            .header("content-type", "application/json")
            .body(Body::from(serde_json::to_vec(body).unwrap()))
            .unwrap();
        self.reply.send_response(response);
    }

    /// Answers with what was sent, as a create does.
    fn echo(self, status: StatusCode) {
        let body = self.body.clone();
        self.respond(status, &body);
    }

    fn assert(&self, method: Method, path: &str) {
        assert_eq!(
            (&self.method, self.path.as_str()),
            (&method, path),
            "body: {}",
            self.body
        );
    }
}

/// The reconciler's world: its caches, its client's other end, and the
/// reconcile under test.
struct Harness {
    api: ApiHandle,
    ctx: Arc<Context>,
    reconciling: Option<JoinHandle<Result<Action, reconcile::Error>>>,
    // The caches stay ready while their writers live.
    _writers: (Writer<Node>, Writer<HostActionRun>),
}

impl Harness {
    fn new(nodes: Vec<Node>, runs: Vec<HostActionRun>) -> Self {
        let (service, api) = tower_test::mock::pair::<Request<Body>, Response<Body>>();
        let client = kube::Client::new(service, "default");
        let (node_store, mut node_writer) = reflector::store::<Node>();
        let (run_store, mut run_writer) = reflector::store::<HostActionRun>();
        node_writer.apply_watcher_event(&watcher::Event::Init);
        for node in nodes {
            node_writer.apply_watcher_event(&watcher::Event::InitApply(node));
        }
        node_writer.apply_watcher_event(&watcher::Event::InitDone);
        run_writer.apply_watcher_event(&watcher::Event::Init);
        for run in runs {
            run_writer.apply_watcher_event(&watcher::Event::InitApply(run));
        }
        run_writer.apply_watcher_event(&watcher::Event::InitDone);
        let ctx = Context {
            client: client.clone(),
            nodes: node_store,
            runs: run_store,
            resolver: Resolver::new(PlainHttp::loopback(), None).unwrap(),
            recorder: Recorder::new(
                client,
                Reporter {
                    controller: "hostaction-controller".into(),
                    instance: Some("test".into()),
                },
            ),
            metrics: ControllerMetrics::register(&mut Registry::default()),
        };
        Self {
            api,
            ctx: Arc::new(ctx),
            reconciling: None,
            _writers: (node_writer, run_writer),
        }
    }

    /// Starts reconciling `action`.
    fn reconcile(&mut self, action: HostAction) {
        let ctx = self.ctx.clone();
        self.reconciling = Some(tokio::spawn(reconcile::reconcile(Arc::new(action), ctx)));
    }

    /// The next request, which should be `expected`; fails clearly if the
    /// reconcile ends or nothing comes within `WAIT`.
    async fn next(&mut self, expected: &str) -> Call {
        let reconciling = self.reconciling.as_mut().expect("a reconcile started");
        let (request, reply) = tokio::select! {
            request = self.api.next_request() => request.expect("the client is gone"),
            ended = reconciling => {
                panic!("the reconcile ended ({ended:?}) while the server expected {expected}")
            }
            () = tokio::time::sleep(WAIT) => {
                panic!("no request within {WAIT:?}: the server expected {expected}")
            }
        };
        let (parts, body) = request.into_parts();
        let bytes = body.collect_bytes().await.unwrap();
        let body = if bytes.is_empty() {
            Value::Null
        } else {
            serde_json::from_slice(&bytes).unwrap_or_else(|e| {
                panic!("{expected}: body is not JSON ({e}): {bytes:?}");
            })
        };
        let content_type = parts
            .headers
            .get(http::header::CONTENT_TYPE)
            .map(|v| v.to_str().unwrap().to_owned())
            .unwrap_or_default();
        Call {
            method: parts.method,
            path: parts.uri.path().to_owned(),
            content_type,
            body,
            reply,
        }
    }

    /// The next `n` requests, in whatever order they came (concurrent
    /// creates and deletes), sorted by `key`.
    async fn next_group(
        &mut self,
        n: usize,
        expected: &str,
        key: fn(&Call) -> String,
    ) -> Vec<Call> {
        let mut calls = Vec::new();
        for i in 0..n {
            calls.push(self.next(&format!("{expected} ({} of {n})", i + 1)).await);
        }
        calls.sort_by_key(key);
        calls
    }

    /// The reconcile's result, once it made no other request.
    async fn finish(&mut self) -> Result<Action, reconcile::Error> {
        let reconciling = self.reconciling.take().expect("a reconcile started");
        tokio::select! {
            request = self.api.next_request() => {
                let (request, _) = request.expect("the client is gone");
                panic!("unexpected request: {} {}", request.method(), request.uri())
            }
            ended = reconciling => ended.expect("the reconcile panicked"),
            () = tokio::time::sleep(WAIT) => panic!("the reconcile did not end within {WAIT:?}"),
        }
    }

    fn reconciles(&self, labels: ResultLabels) -> u64 {
        self.ctx.metrics.reconciles.get_or_create(&labels).get()
    }
}

fn ready_node(name: &str) -> Node {
    Node {
        metadata: ObjectMeta {
            name: Some(name.into()),
            ..ObjectMeta::default()
        },
        spec: None,
        status: Some(NodeStatus {
            conditions: Some(vec![NodeCondition {
                type_: "Ready".into(),
                status: "True".into(),
                ..NodeCondition::default()
            }]),
            ..NodeStatus::default()
        }),
    }
}

/// The action `NAME` at generation 1, pinned by digest, 2 nodes at once.
fn action(finalizers: &[&str]) -> HostAction {
    let mut action = HostAction::new(
        NAME,
        HostActionSpec {
            module: module(),
            params: Some(serde_json::Map::from_iter([(
                "mtu".to_owned(),
                json!(1450),
            )])),
            grants: Default::default(),
            node_selector: None,
            rollout: Rollout {
                max_concurrent: IntOrString::Int(2),
                ..Rollout::default()
            },
            mode: Default::default(),
            timeout_seconds: 30,
            rerun: Default::default(),
            on_failure: Default::default(),
            on_delete: Default::default(),
            journal: Default::default(),
            drift: None,
        },
    );
    action.metadata.uid = Some(UID.into());
    action.metadata.generation = Some(1);
    action.metadata.resource_version = Some("10".into());
    action.metadata.finalizers =
        (!finalizers.is_empty()).then(|| finalizers.iter().map(|f| (*f).to_owned()).collect());
    action
}

fn run_of(action: &str, node: &str, phase: RunPhase, finished_ago: Option<i64>) -> HostActionRun {
    let mut run = HostActionRun::new(
        &format!("{action}.{node}.g1"),
        HostActionRunSpec {
            action: action.into(),
            generation: 1,
            node_name: node.into(),
            module: module(),
            params: None,
            grants: Default::default(),
            mode: Default::default(),
            timeout_seconds: 30,
            on_failure: Default::default(),
            on_delete: Default::default(),
            journal: Default::default(),
            drift: None,
        },
    );
    run.status = Some(HostActionRunStatus {
        phase,
        finished_at: finished_ago.map(|secs| {
            Time(
                Timestamp::now()
                    .checked_sub(SignedDuration::from_secs(secs))
                    .unwrap(),
            )
        }),
        ..HostActionRunStatus::default()
    });
    run
}

fn condition(status: &Value, type_: &str) -> Value {
    status["conditions"]
        .as_array()
        .and_then(|c| c.iter().find(|c| c["type"] == type_))
        .cloned()
        .unwrap_or_else(|| panic!("no {type_} condition in {status}"))
}

/// `action` as the API server would return it after a status patch.
fn with_status(mut action: HostAction, patch: &Value) -> Value {
    action.status = Some(serde_json::from_value(patch["status"].clone()).unwrap());
    serde_json::to_value(action).unwrap()
}

#[tokio::test]
async fn the_finalizer_is_added_first() {
    let mut server = Harness::new(vec![ready_node("a")], vec![]);
    server.reconcile(action(&[]));

    let call = server.next("the finalizer patch").await;
    call.assert(Method::PATCH, &format!("{ACTIONS}/{NAME}"));
    assert_eq!(call.content_type, "application/json-patch+json");
    assert_eq!(
        call.body,
        json!([
            { "op": "test", "path": "/metadata/finalizers", "value": null },
            { "op": "add", "path": "/metadata/finalizers", "value": [FINALIZER] },
        ])
    );
    call.respond(
        StatusCode::OK,
        &serde_json::to_value(action(&[FINALIZER])).unwrap(),
    );

    // The patch triggers the next reconcile: nothing else now.
    assert_eq!(server.finish().await.unwrap(), Action::await_change());
    assert_eq!(server.reconciles(ResultLabels::OK), 1);
}

#[tokio::test]
async fn a_new_action_gets_runs_at_its_pace_an_event_and_a_status() {
    let nodes = ["c", "a", "b"].map(ready_node).to_vec();
    // Another action's run is none of this one's business.
    let other = run_of("other", "a", RunPhase::Running, None);
    let mut server = Harness::new(nodes, vec![other]);
    server.reconcile(action(&[FINALIZER]));

    // The module resolved (here: pinned already) → an Event.
    let call = server.next("the Resolved event").await;
    call.assert(Method::POST, EVENTS);
    let event = &call.body;
    assert_eq!(event["apiVersion"], "events.k8s.io/v1");
    assert_eq!(event["reason"], "Resolved");
    assert_eq!(event["type"], "Normal");
    assert_eq!(event["action"], "Reconcile");
    assert_eq!(event["reportingController"], "hostaction-controller");
    assert_eq!(event["regarding"]["kind"], "HostAction");
    assert_eq!(event["regarding"]["name"], NAME);
    assert_eq!(event["regarding"]["uid"], UID);
    assert!(
        event["note"].as_str().unwrap().contains(&digest()),
        "{event}"
    );
    call.echo(StatusCode::CREATED);

    // maxConcurrent 2 of 3 nodes: a and b (lowest names), in any order.
    let calls = server
        .next_group(2, "a run create", |c| {
            c.body["spec"]["nodeName"].to_string()
        })
        .await;
    for (call, node) in calls.into_iter().zip(["a", "b"]) {
        call.assert(Method::POST, RUNS);
        let run = &call.body;
        assert_eq!(run["apiVersion"], "hostaction.dev/v1alpha1");
        assert_eq!(run["kind"], "HostActionRun");
        assert_eq!(run["metadata"]["name"], format!("{NAME}.{node}.g1"));
        assert_eq!(
            run["metadata"]["labels"],
            json!({ "hostaction.dev/node": node, "hostaction.dev/action": NAME })
        );
        assert_eq!(
            run["metadata"]["ownerReferences"],
            json!([{
                "apiVersion": "hostaction.dev/v1alpha1",
                "kind": "HostAction",
                "name": NAME,
                "uid": UID,
                "controller": true,
            }])
        );
        assert_eq!(
            run["spec"],
            json!({
                "action": NAME,
                "generation": 1,
                "nodeName": node,
                "module": module(),
                "params": { "mtu": 1450 },
                "grants": serde_json::to_value(hostaction_crds::Grant::default()).unwrap(),
                "mode": "apply",
                "timeoutSeconds": 30,
                "onFailure": "rollback",
                "onDelete": "keep",
                "journal": "required",
            })
        );
        assert!(run.get("status").is_none_or(Value::is_null), "{run}");
        call.echo(StatusCode::CREATED);
    }

    let call = server.next("the status patch").await;
    call.assert(Method::PATCH, &format!("{ACTIONS}/{NAME}/status"));
    assert_eq!(call.content_type, "application/merge-patch+json");
    let status = &call.body["status"];
    assert_eq!(status["observedGeneration"], 1);
    assert_eq!(status["resolvedDigest"], digest());
    assert_eq!(status["selectedNodes"], 3);
    assert_eq!(
        status["counts"],
        json!({ "pending": 2, "running": 0, "succeeded": 0, "failed": 0 })
    );
    let progressing = condition(status, "Progressing");
    assert_eq!(progressing["status"], "True");
    assert_eq!(progressing["reason"], "RollingOut");
    assert_eq!(progressing["observedGeneration"], 1);
    assert_ne!(progressing["lastTransitionTime"], "1970-01-01T00:00:00Z");
    assert_eq!(condition(status, "Resolved")["status"], "True");
    assert_eq!(condition(status, "Complete")["status"], "False");
    assert_eq!(condition(status, "Failed")["status"], "False");
    let body = with_status(action(&[FINALIZER]), &call.body);
    call.respond(StatusCode::OK, &body);

    // Nothing to wait for but changes (and the resync).
    assert_eq!(
        server.finish().await.unwrap(),
        Action::requeue(Duration::from_secs(300))
    );
    assert_eq!(server.ctx.metrics.runs_created.get(), 2);
    assert_eq!(server.ctx.metrics.runs_deleted.get(), 0);
    assert_eq!(server.reconciles(ResultLabels::OK), 1);
}

#[tokio::test]
async fn a_run_that_exists_already_is_no_error() {
    let mut server = Harness::new(vec![ready_node("a")], vec![]);
    server.reconcile(action(&[FINALIZER]));
    server
        .next("the Resolved event")
        .await
        .echo(StatusCode::CREATED);
    let call = server.next("a run create").await;
    call.assert(Method::POST, RUNS);
    // The cache was behind: the API server has it.
    call.respond(
        StatusCode::CONFLICT,
        &json!({
            "kind": "Status", "apiVersion": "v1", "status": "Failure",
            "reason": "AlreadyExists", "code": 409, "message": "exists",
        }),
    );
    let call = server.next("the status patch").await;
    call.assert(Method::PATCH, &format!("{ACTIONS}/{NAME}/status"));
    assert_eq!(call.body["status"]["counts"]["pending"], 1);
    let body = with_status(action(&[FINALIZER]), &call.body);
    call.respond(StatusCode::OK, &body);
    assert!(server.finish().await.is_ok());
}

#[tokio::test]
async fn a_deleted_action_deletes_its_runs_then_drops_its_finalizer() {
    let runs = vec![
        run_of(NAME, "a", RunPhase::Succeeded, Some(10)),
        run_of(NAME, "b", RunPhase::Running, None),
        run_of("other", "a", RunPhase::Running, None),
    ];
    let store = runs.clone();
    let mut server = Harness::new(vec![ready_node("a"), ready_node("b")], runs);
    let mut deleting = action(&[FINALIZER]);
    deleting.metadata.deletion_timestamp = Some(Time(Timestamp::now()));
    server.reconcile(deleting.clone());

    let calls = server
        .next_group(2, "a run delete", |c| c.path.clone())
        .await;
    for (call, node) in calls.into_iter().zip(["a", "b"]) {
        let name = format!("{NAME}.{node}.g1");
        call.assert(Method::DELETE, &format!("{RUNS}/{name}"));
        assert_eq!(
            call.body["propagationPolicy"], "Background",
            "{}",
            call.body
        );
        let run = store
            .iter()
            .find(|r| r.metadata.name.as_deref() == Some(&name));
        call.respond(StatusCode::OK, &serde_json::to_value(run.unwrap()).unwrap());
    }

    let call = server.next("the finalizer removal").await;
    call.assert(Method::PATCH, &format!("{ACTIONS}/{NAME}"));
    assert_eq!(call.content_type, "application/json-patch+json");
    assert_eq!(
        call.body,
        json!([
            { "op": "test", "path": "/metadata/finalizers/0", "value": FINALIZER },
            { "op": "remove", "path": "/metadata/finalizers/0" },
        ])
    );
    deleting.metadata.finalizers = None;
    call.respond(StatusCode::OK, &serde_json::to_value(&deleting).unwrap());

    assert_eq!(server.finish().await.unwrap(), Action::await_change());
    assert_eq!(server.ctx.metrics.runs_deleted.get(), 2);
    assert_eq!(server.reconciles(ResultLabels::OK), 1);
}

#[tokio::test]
async fn a_failed_run_delete_keeps_the_finalizer() {
    let runs = vec![run_of(NAME, "a", RunPhase::Succeeded, Some(10))];
    let mut server = Harness::new(vec![ready_node("a")], runs);
    let mut deleting = action(&[FINALIZER]);
    deleting.metadata.deletion_timestamp = Some(Time(Timestamp::now()));
    server.reconcile(deleting);

    let call = server.next("a run delete").await;
    call.assert(Method::DELETE, &format!("{RUNS}/{NAME}.a.g1"));
    call.respond(
        StatusCode::FORBIDDEN,
        &json!({
            "kind": "Status", "apiVersion": "v1", "status": "Failure",
            "reason": "Forbidden", "code": 403, "message": "no",
        }),
    );
    // No finalizer removal: the error is returned for a retry.
    let error = server.finish().await.unwrap_err();
    assert!(matches!(error, reconcile::Error::Kube(_)), "{error:?}");
    assert_eq!(server.reconciles(ResultLabels::error("kube")), 1);
}

/// The status the API server holds after generation 1 completed.
fn complete_status() -> HostActionStatus {
    let condition = |type_: &str, status: &str, reason: &str| Condition {
        type_: type_.into(),
        status: status.into(),
        reason: reason.into(),
        message: String::new(),
        observed_generation: Some(1),
        last_transition_time: Time(Timestamp::from_second(1_700_000_000).unwrap()),
    };
    HostActionStatus {
        observed_generation: Some(1),
        resolved_digest: Some(digest()),
        selected_nodes: 2,
        counts: hostaction_crds::action::PhaseCounts {
            succeeded: 2,
            ..Default::default()
        },
        conditions: vec![
            condition("Resolved", "True", "Resolved"),
            condition("Progressing", "False", "Done"),
            condition("Complete", "True", "AllSucceeded"),
            condition("Failed", "False", "WithinFailureBudget"),
        ],
    }
}

#[tokio::test]
async fn an_interval_rerun_deletes_the_old_run_first() {
    let runs = vec![
        run_of(NAME, "a", RunPhase::Succeeded, Some(7200)),
        run_of(NAME, "b", RunPhase::Succeeded, Some(600)),
    ];
    let store = runs.clone();
    let mut server = Harness::new(vec![ready_node("a"), ready_node("b")], runs);
    let mut rerunning = action(&[FINALIZER]);
    rerunning.spec.rerun.interval_seconds = Some(3600);
    rerunning.status = Some(complete_status());
    server.reconcile(rerunning.clone());

    // The digest is known for this generation: no Event. The new run of a
    // has the old one's name: the old one goes, and no create collides
    // with it (the deletion's watch event brings the next reconcile).
    let call = server.next("a's run delete").await;
    call.assert(Method::DELETE, &format!("{RUNS}/{NAME}.a.g1"));
    call.respond(StatusCode::OK, &serde_json::to_value(&store[0]).unwrap());

    let call = server.next("the status patch").await;
    call.assert(Method::PATCH, &format!("{ACTIONS}/{NAME}/status"));
    let status = &call.body["status"];
    assert_eq!(condition(status, "Complete")["status"], "False");
    assert_eq!(condition(status, "Progressing")["status"], "True");
    // The transition time of an unchanged condition is kept.
    assert_eq!(
        condition(status, "Resolved")["lastTransitionTime"],
        "2023-11-14T22:13:20Z"
    );
    let body = with_status(rerunning, &call.body);
    call.respond(StatusCode::OK, &body);

    assert_eq!(
        server.finish().await.unwrap(),
        Action::requeue(Duration::from_secs(300))
    );
    assert_eq!(server.ctx.metrics.runs_created.get(), 0);
    assert_eq!(server.ctx.metrics.runs_deleted.get(), 1);
}

#[tokio::test]
async fn an_unchanged_status_is_not_written() {
    let runs = vec![
        run_of(NAME, "a", RunPhase::Succeeded, Some(60)),
        run_of(NAME, "b", RunPhase::Succeeded, Some(60)),
    ];
    let mut server = Harness::new(vec![ready_node("a"), ready_node("b")], runs);
    let mut done = action(&[FINALIZER]);
    let mut status = complete_status();
    status.conditions[0].message = format!("{} runs {}", module(), digest());
    status.conditions[1].message =
        "2 of 2 selected nodes done, 0 running, 0 waiting (at most 2 at once)".into();
    status.conditions[2].message = "2 of 2 selected nodes succeeded".into();
    status.conditions[3].message = "0 runs failed; rollout.maxFailures is 0".into();
    done.status = Some(status);
    server.reconcile(done);
    assert_eq!(
        server.finish().await.unwrap(),
        Action::requeue(Duration::from_secs(300))
    );
}

/// A module that is not an OCI reference: resolving fails without asking
/// a registry.
fn unresolvable(generation: i64) -> HostAction {
    let mut action = action(&[FINALIZER]);
    action.spec.module = "127.0.0.1:5000/actions/Not A Reference:v2".into();
    action.metadata.generation = Some(generation);
    action.status = Some(complete_status());
    action
}

#[tokio::test]
async fn an_unresolvable_module_is_reported() {
    let mut server = Harness::new(vec![ready_node("a")], vec![]);
    server.reconcile(unresolvable(2));

    let call = server.next("the ResolveFailed event").await;
    call.assert(Method::POST, EVENTS);
    assert_eq!(call.body["reason"], "ResolveFailed");
    assert_eq!(call.body["type"], "Warning");
    call.echo(StatusCode::CREATED);

    let call = server.next("the status patch").await;
    call.assert(Method::PATCH, &format!("{ACTIONS}/{NAME}/status"));
    let status = &call.body["status"];
    assert_eq!(status["observedGeneration"], 2);
    let resolved = condition(status, "Resolved");
    assert_eq!(resolved["status"], "False");
    assert_eq!(resolved["reason"], "ResolveFailed");
    assert!(
        resolved["message"]
            .as_str()
            .unwrap()
            .contains("Not A Reference"),
        "{resolved}"
    );
    let body = with_status(unresolvable(2), &call.body);
    call.respond(StatusCode::OK, &body);

    let error = server.finish().await.unwrap_err();
    assert!(matches!(error, reconcile::Error::Resolve(_)), "{error:?}");
    assert_eq!(server.reconciles(ResultLabels::error("resolve")), 1);
    assert_eq!(server.ctx.metrics.runs_created.get(), 0);
}

/// The status patch is a JSON merge patch, where an absent field is kept:
/// the previous generation's `resolvedDigest` must be removed with `null`,
/// or the next reconcile (observedGeneration now matches) takes it for this
/// generation's digest and pins the new module to the old digest.
#[tokio::test]
async fn an_unresolvable_module_clears_the_previous_digest() {
    let mut server = Harness::new(vec![ready_node("a")], vec![]);
    server.reconcile(unresolvable(2));
    server
        .next("the ResolveFailed event")
        .await
        .echo(StatusCode::CREATED);
    let call = server.next("the status patch").await;
    call.assert(Method::PATCH, &format!("{ACTIONS}/{NAME}/status"));
    let status = call.body["status"].clone();
    let body = with_status(unresolvable(2), &call.body);
    call.respond(StatusCode::OK, &body);
    assert!(server.finish().await.is_err());
    assert_eq!(
        status.get("resolvedDigest"),
        Some(&Value::Null),
        "the merge patch keeps the old digest: {status}"
    );
}
