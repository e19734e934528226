//! The Kubernetes API-server test double (`hostaction_tests::apiserver`),
//! driven through kube's own client and runtime (watcher, reflector,
//! Controller, finalizer helper, event Recorder) to show it honours what
//! they rely on: selectors, resourceVersion conflicts, the status
//! subresource, generations, patches, watches with resumption, 410 after
//! compaction, outages, finalizers, owner garbage collection and the write
//! counter.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::collections::BTreeSet;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use futures_util::StreamExt;
use hostaction_crds::{HostAction, HostActionRun};
use hostaction_tests::apiserver::ApiServer;
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::Node;
use kube::api::{
    Api, DeleteParams, ListParams, PartialObjectMeta, Patch, PatchParams, PostParams, WatchEvent,
    WatchParams,
};
use kube::runtime::controller::Action;
use kube::runtime::events::{Event as Publish, EventType, Recorder, Reporter};
use kube::runtime::{Controller, finalizer, reflector, watcher};
use kube::{Client, Resource, ResourceExt};
use serde_json::{Value, json};

const RUN_MODULE: &str =
    "registry.example/a@sha256:0000000000000000000000000000000000000000000000000000000000000000";

fn action(name: &str) -> HostAction {
    serde_json::from_value(json!({
        "apiVersion": "hostaction.dev/v1alpha1",
        "kind": "HostAction",
        "metadata": {"name": name},
        "spec": {"module": "registry.example/actions/a:v1"},
    }))
    .unwrap()
}

fn run_json(name: &str, node: &str) -> Value {
    json!({
        "apiVersion": "hostaction.dev/v1alpha1",
        "kind": "HostActionRun",
        "metadata": {"name": name, "labels": {"hostaction.dev/node": node, "hostaction.dev/action": "a"}},
        "spec": {"action": "a", "generation": 1, "nodeName": node, "module": RUN_MODULE, "timeoutSeconds": 60},
    })
}

fn run(name: &str, node: &str) -> HostActionRun {
    serde_json::from_value(run_json(name, node)).unwrap()
}

fn node(name: &str) -> Node {
    serde_json::from_value(json!({"apiVersion": "v1", "kind": "Node", "metadata": {"name": name}}))
        .unwrap()
}

fn node_json(name: &str) -> Value {
    json!({"apiVersion": "v1", "kind": "Node", "metadata": {"name": name}})
}

fn api_error(result: Result<impl std::fmt::Debug, kube::Error>) -> (u16, String) {
    match result {
        Err(kube::Error::Api(status)) => (status.code, status.reason.clone()),
        other => panic!("expected an API error, got {other:?}"),
    }
}

fn names<K: ResourceExt>(items: impl IntoIterator<Item = K>) -> Vec<String> {
    items.into_iter().map(|o| o.name_any()).collect()
}

/// Polls `check` until it holds (10 s at most).
async fn eventually(what: &str, mut check: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while !check() {
        assert!(Instant::now() < deadline, "timed out waiting for: {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

async fn next<T>(stream: &mut (impl futures_util::Stream<Item = T> + Unpin)) -> T {
    tokio::time::timeout(Duration::from_secs(10), stream.next())
        .await
        .expect("an event within 10 s")
        .expect("the stream goes on")
}

/// A client that does not retry 503s (kube's default one does).
fn client_without_retry(server: &ApiServer) -> Client {
    let mut config = server.config();
    config.default_retry = false;
    Client::try_from(config).unwrap()
}

#[tokio::test]
async fn version_discovery_and_bad_requests() {
    let server = ApiServer::start().unwrap();
    let client = server.client();
    let version = client.apiserver_version().await.unwrap();
    assert_eq!(
        (version.major.as_str(), version.minor.as_str()),
        ("1", "33")
    );

    let groups = client.list_api_groups().await.unwrap();
    assert!(groups.groups.iter().any(|g| g.name == "hostaction.dev"));
    let resources = client
        .list_api_group_resources("hostaction.dev/v1alpha1")
        .await
        .unwrap();
    assert!(
        resources
            .resources
            .iter()
            .any(|r| r.name == "hostactionruns/status")
    );

    let request = |method: &str, path: &str, content_type: &str, body: &str| {
        hyper::Request::builder()
            .method(method)
            .uri(path)
            .header("content-type", content_type)
            .body(body.as_bytes().to_vec())
            .unwrap()
    };
    let unknown = client
        .request_text(request(
            "GET",
            "/apis/nope.example/v1/things",
            "application/json",
            "",
        ))
        .await;
    assert_eq!(api_error(unknown), (404, "NotFound".into()));
    let malformed = client
        .request_text(request(
            "POST",
            "/apis/hostaction.dev/v1alpha1/hostactions",
            "application/json",
            "{not json",
        ))
        .await;
    assert_eq!(api_error(malformed).0, 400);
    let no_manager = client
        .request_text(request(
            "PATCH",
            "/apis/hostaction.dev/v1alpha1/hostactions/x",
            "application/apply-patch+yaml",
            "{\"spec\": {\"module\": \"r.example/a:v1\"}}",
        ))
        .await;
    assert_eq!(api_error(no_manager), (422, "Invalid".into()));
    let yaml_apply = client
        .request_text(request(
            "PATCH",
            "/apis/hostaction.dev/v1alpha1/hostactions/y?fieldManager=t",
            "application/apply-patch+yaml",
            "metadata:\n  name: y\nspec:\n  module: r.example/a:v1\n",
        ))
        .await
        .unwrap();
    assert!(yaml_apply.contains("r.example/a:v1"));
    let bad_selector = Api::<HostActionRun>::all(client.clone())
        .list(&ListParams::default().fields("spec.bogus=1"))
        .await;
    assert_eq!(api_error(bad_selector).0, 400);
    let bad_labels = Api::<HostActionRun>::all(client)
        .list(&ListParams::default().labels("a in (b"))
        .await;
    assert_eq!(api_error(bad_labels).0, 400);
}

#[tokio::test]
async fn create_get_and_list_with_selectors() {
    let server = ApiServer::start().unwrap();
    let runs: Api<HostActionRun> = Api::all(server.client());

    let mut first = run("r1", "n1");
    first.labels_mut().insert("tier".into(), "x".into());
    first.status = Some(Default::default());
    let created = runs.create(&PostParams::default(), &first).await.unwrap();
    assert!(created.status.is_none(), "status is dropped on create");
    assert_eq!(created.metadata.generation, Some(1));
    assert!(created.metadata.uid.is_some());
    assert!(created.metadata.creation_timestamp.is_some());
    assert!(created.resource_version().is_some());
    runs.create(&PostParams::default(), &run("r2", "n2"))
        .await
        .unwrap();
    let mut third = run("r3", "n3");
    third.labels_mut().insert("extra".into(), "1".into());
    runs.create(&PostParams::default(), &third).await.unwrap();

    let duplicate = runs.create(&PostParams::default(), &run("r1", "n1")).await;
    assert_eq!(api_error(duplicate), (409, "AlreadyExists".into()));

    let mut generated = run("", "n4");
    generated.metadata.name = None;
    generated.metadata.generate_name = Some("gen-".into());
    let generated = runs
        .create(&PostParams::default(), &generated)
        .await
        .unwrap();
    assert!(generated.name_any().starts_with("gen-") && generated.name_any().len() == 9);
    runs.delete(&generated.name_any(), &DeleteParams::default())
        .await
        .unwrap();

    assert_eq!(runs.get("r2").await.unwrap().spec.node_name, "n2");
    assert_eq!(api_error(runs.get("nope").await), (404, "NotFound".into()));
    assert!(runs.get_opt("nope").await.unwrap().is_none());

    let list = |labels: &str, fields: &str| {
        let runs = runs.clone();
        let lp = ListParams::default().labels(labels).fields(fields);
        async move { names(runs.list(&lp).await.unwrap()) }
    };
    assert_eq!(list("", "").await, ["r1", "r2", "r3"]);
    assert_eq!(list("hostaction.dev/node=n1", "").await, ["r1"]);
    assert_eq!(list("hostaction.dev/node==n2", "").await, ["r2"]);
    assert_eq!(
        list("hostaction.dev/node in (n1, n3)", "").await,
        ["r1", "r3"]
    );
    assert_eq!(
        list("hostaction.dev/node notin (n1)", "").await,
        ["r2", "r3"]
    );
    assert_eq!(list("hostaction.dev/node!=n2,!extra", "").await, ["r1"]);
    assert_eq!(list("extra", "").await, ["r3"]);
    assert_eq!(list("tier=x,extra", "").await, Vec::<String>::new());
    assert_eq!(list("", "spec.nodeName=n2").await, ["r2"]);
    assert_eq!(list("", "metadata.name!=r1").await, ["r2", "r3"]);
    assert_eq!(
        list("hostaction.dev/action=a", "spec.nodeName==n3").await,
        ["r3"]
    );

    let listed = runs.list(&ListParams::default()).await.unwrap();
    let rv: u64 = listed.metadata.resource_version.unwrap().parse().unwrap();
    assert!(rv >= 5, "the list carries the current resourceVersion");
    let raw = server.list("hostaction.dev/v1alpha1", "HostActionRun");
    assert!(raw.iter().all(|r| r["kind"] == "HostActionRun"));

    let meta = Api::<PartialObjectMeta<HostActionRun>>::all(server.client())
        .list(&ListParams::default().labels("hostaction.dev/node=n1"))
        .await
        .unwrap();
    assert_eq!(names(meta.items), ["r1"]);

    // Namespaced kinds: per namespace and across all.
    let leases_a: Api<Lease> = Api::namespaced(server.client(), "a");
    let leases_b: Api<Lease> = Api::namespaced(server.client(), "b");
    let lease = |name: &str| -> Lease {
        serde_json::from_value(json!({"metadata": {"name": name}, "spec": {}})).unwrap()
    };
    leases_a
        .create(&PostParams::default(), &lease("l"))
        .await
        .unwrap();
    leases_b
        .create(&PostParams::default(), &lease("l"))
        .await
        .unwrap();
    let all = Api::<Lease>::all(server.client())
        .list(&ListParams::default())
        .await
        .unwrap();
    let scoped: Vec<_> = all.items.iter().map(|l| l.namespace().unwrap()).collect();
    assert_eq!(scoped, ["a", "b"]);
    assert_eq!(
        leases_a
            .list(&ListParams::default())
            .await
            .unwrap()
            .items
            .len(),
        1
    );
    let in_namespace = Api::<Lease>::all(server.client())
        .list(&ListParams::default().fields("metadata.namespace=b"))
        .await
        .unwrap();
    assert_eq!(in_namespace.items.len(), 1);
}

#[tokio::test]
async fn stale_resource_version_conflicts() {
    let server = ApiServer::start().unwrap();
    let actions: Api<HostAction> = Api::all(server.client());
    actions
        .create(&PostParams::default(), &action("a"))
        .await
        .unwrap();
    let stale = actions.get("a").await.unwrap();

    let mut changed = stale.clone();
    changed.spec.timeout_seconds = 30;
    let replaced = actions
        .replace("a", &PostParams::default(), &changed)
        .await
        .unwrap();
    assert_eq!(replaced.metadata.generation, Some(2));
    assert_ne!(replaced.resource_version(), stale.resource_version());

    let conflict = actions.replace("a", &PostParams::default(), &stale).await;
    assert_eq!(api_error(conflict), (409, "Conflict".into()));
    let stale_patch = actions
        .patch(
            "a",
            &PatchParams::default(),
            &Patch::Merge(json!({"metadata": {"resourceVersion": stale.resource_version()}, "spec": {"timeoutSeconds": 5}})),
        )
        .await;
    assert_eq!(api_error(stale_patch), (409, "Conflict".into()));

    // Without a resourceVersion a replace is unconditional.
    let mut unconditional = replaced.clone();
    unconditional.metadata.resource_version = None;
    unconditional.spec.timeout_seconds = 40;
    let done = actions
        .replace("a", &PostParams::default(), &unconditional)
        .await
        .unwrap();
    assert_eq!(done.spec.timeout_seconds, 40);

    // Leases, as a leader elector updates them.
    let leases: Api<Lease> = Api::namespaced(server.client(), "kube-system");
    let lease: Lease = serde_json::from_value(json!({
        "metadata": {"name": "hostaction-controller"},
        "spec": {"holderIdentity": "one", "leaseDurationSeconds": 15},
    }))
    .unwrap();
    let held = leases.create(&PostParams::default(), &lease).await.unwrap();
    let mut renewed = held.clone();
    renewed.spec.as_mut().unwrap().holder_identity = Some("two".into());
    leases
        .replace("hostaction-controller", &PostParams::default(), &renewed)
        .await
        .unwrap();
    let taken = leases
        .replace("hostaction-controller", &PostParams::default(), &held)
        .await;
    assert_eq!(api_error(taken), (409, "Conflict".into()));
    assert_eq!(server.writes().get("update leases"), 1);
    assert_eq!(server.writes().get("rejected update leases"), 1);
}

#[tokio::test]
async fn status_subresource_and_generation() {
    let server = ApiServer::start().unwrap();
    let runs: Api<HostActionRun> = Api::all(server.client());
    runs.create(&PostParams::default(), &run("r", "n1"))
        .await
        .unwrap();

    let patched = runs
        .patch_status(
            "r",
            &PatchParams::default(),
            &Patch::Merge(json!({"status": {"phase": "Running"}, "spec": {"nodeName": "evil"}})),
        )
        .await
        .unwrap();
    assert_eq!(
        patched.status.as_ref().unwrap().phase,
        hostaction_crds::RunPhase::Running
    );
    assert_eq!(patched.spec.node_name, "n1", "/status changes only status");
    assert_eq!(
        patched.metadata.generation,
        Some(1),
        "status does not bump generation"
    );

    let main = runs
        .patch(
            "r",
            &PatchParams::default(),
            &Patch::Merge(
                json!({"status": {"phase": "Failed"}, "metadata": {"labels": {"x": "y"}}}),
            ),
        )
        .await
        .unwrap();
    assert_eq!(
        main.status.as_ref().unwrap().phase,
        hostaction_crds::RunPhase::Running,
        "the main resource leaves status alone"
    );
    assert_eq!(main.labels().get("x").map(String::as_str), Some("y"));
    assert_eq!(
        main.metadata.generation,
        Some(1),
        "metadata does not bump generation"
    );

    let spec = runs
        .patch(
            "r",
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"timeoutSeconds": 30}})),
        )
        .await
        .unwrap();
    assert_eq!(spec.metadata.generation, Some(2));

    // A no-op patch stores nothing.
    let same = runs
        .patch(
            "r",
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"timeoutSeconds": 30}})),
        )
        .await
        .unwrap();
    assert_eq!(same.resource_version(), spec.resource_version());

    // replace_status takes only status from the body.
    let mut body = same.clone();
    body.status.as_mut().unwrap().phase = hostaction_crds::RunPhase::Succeeded;
    body.spec.timeout_seconds = 1;
    let replaced = runs
        .replace_status("r", &PostParams::default(), &body)
        .await
        .unwrap();
    assert_eq!(
        replaced.status.as_ref().unwrap().phase,
        hostaction_crds::RunPhase::Succeeded
    );
    assert_eq!(replaced.spec.timeout_seconds, 30);
    // replace of the main resource keeps the stored status.
    let mut body = replaced.clone();
    body.status = None;
    let kept = runs
        .replace("r", &PostParams::default(), &body)
        .await
        .unwrap();
    assert!(kept.status.is_some());

    // A Node keeps the status it is created with (kubelets register so).
    let mut ready = node("n1");
    ready.status = Some(
        serde_json::from_value(json!({"conditions": [{"type": "Ready", "status": "True"}]}))
            .unwrap(),
    );
    let nodes: Api<Node> = Api::all(server.client());
    let created = nodes.create(&PostParams::default(), &ready).await.unwrap();
    assert!(created.status.unwrap().conditions.is_some());
}

#[tokio::test]
async fn json_patch_test_op_and_apply() {
    let server = ApiServer::start().unwrap();
    let actions: Api<HostAction> = Api::all(server.client());
    actions
        .create(&PostParams::default(), &action("a"))
        .await
        .unwrap();

    // The finalizer helper's first patch: test for null on an absent path, add.
    let add: json_patch::Patch = serde_json::from_value(json!([
        {"op": "test", "path": "/metadata/finalizers", "value": null},
        {"op": "add", "path": "/metadata/finalizers", "value": ["hostaction.dev/cleanup"]},
    ]))
    .unwrap();
    let with = actions
        .patch(
            "a",
            &PatchParams::default(),
            &Patch::Json::<()>(add.clone()),
        )
        .await
        .unwrap();
    assert_eq!(with.finalizers(), ["hostaction.dev/cleanup"]);
    let again = actions
        .patch("a", &PatchParams::default(), &Patch::Json::<()>(add))
        .await;
    assert_eq!(api_error(again), (422, "Invalid".into()));
    let wrong: json_patch::Patch = serde_json::from_value(json!([
        {"op": "test", "path": "/metadata/finalizers/0", "value": "someone-else"},
        {"op": "remove", "path": "/metadata/finalizers/0"},
    ]))
    .unwrap();
    let failed = actions
        .patch("a", &PatchParams::default(), &Patch::Json::<()>(wrong))
        .await;
    assert_eq!(api_error(failed), (422, "Invalid".into()));
    assert_eq!(actions.get("a").await.unwrap().finalizers().len(), 1);

    // Server-side apply creates, then merges.
    let applied = actions
        .patch(
            "b",
            &PatchParams::apply("test").force(),
            &Patch::Apply(json!({
                "apiVersion": "hostaction.dev/v1alpha1",
                "kind": "HostAction",
                "metadata": {"name": "b", "labels": {"team": "net"}},
                "spec": {"module": "registry.example/b:v1"},
            })),
        )
        .await
        .unwrap();
    assert_eq!(applied.metadata.generation, Some(1));
    let reapplied = actions
        .patch(
            "b",
            &PatchParams::apply("test"),
            &Patch::Apply(json!({
                "apiVersion": "hostaction.dev/v1alpha1",
                "kind": "HostAction",
                "metadata": {"name": "b"},
                "spec": {"mode": "plan"},
            })),
        )
        .await
        .unwrap();
    assert_eq!(reapplied.metadata.generation, Some(2));
    assert_eq!(reapplied.spec.module, "registry.example/b:v1");
    assert_eq!(
        reapplied.labels().get("team").map(String::as_str),
        Some("net")
    );
    let status_of_missing = actions
        .patch_status(
            "missing",
            &PatchParams::apply("test"),
            &Patch::Apply(json!({"apiVersion": "hostaction.dev/v1alpha1", "kind": "HostAction", "status": {}})),
        )
        .await;
    assert_eq!(api_error(status_of_missing).0, 404);
    let merge_missing = actions
        .patch("missing", &PatchParams::default(), &Patch::Merge(json!({})))
        .await;
    assert_eq!(api_error(merge_missing).0, 404);
}

#[tokio::test]
async fn watcher_sees_added_modified_deleted_and_selector_moves() {
    let server = ApiServer::start().unwrap();
    let client = server.client();
    let runs: Api<HostActionRun> = Api::all(client.clone());
    runs.create(&PostParams::default(), &run("before", "n1"))
        .await
        .unwrap();

    let mut all = watcher(runs.clone(), watcher::Config::default()).boxed();
    assert!(matches!(
        next(&mut all).await.unwrap(),
        watcher::Event::Init
    ));
    match next(&mut all).await.unwrap() {
        watcher::Event::InitApply(r) => assert_eq!(r.name_any(), "before"),
        other => panic!("{other:?}"),
    }
    assert!(matches!(
        next(&mut all).await.unwrap(),
        watcher::Event::InitDone
    ));

    let mut mine = watcher(
        runs.clone(),
        watcher::Config::default().labels("hostaction.dev/node=n2"),
    )
    .boxed();
    assert!(matches!(
        next(&mut mine).await.unwrap(),
        watcher::Event::Init
    ));
    assert!(matches!(
        next(&mut mine).await.unwrap(),
        watcher::Event::InitDone
    ));

    runs.create(&PostParams::default(), &run("r", "n2"))
        .await
        .unwrap();
    runs.patch_status(
        "r",
        &PatchParams::default(),
        &Patch::Merge(json!({"status": {"phase": "Running"}})),
    )
    .await
    .unwrap();
    runs.delete("r", &DeleteParams::default()).await.unwrap();
    for stream in [&mut all, &mut mine] {
        match next(stream).await.unwrap() {
            watcher::Event::Apply(r) => assert!(r.status.is_none()),
            other => panic!("{other:?}"),
        }
        match next(stream).await.unwrap() {
            watcher::Event::Apply(r) => assert!(r.status.is_some()),
            other => panic!("{other:?}"),
        }
        match next(stream).await.unwrap() {
            watcher::Event::Delete(r) => assert_eq!(r.name_any(), "r"),
            other => panic!("{other:?}"),
        }
    }

    // An object that stops matching is deleted for that watch, and added
    // back when it matches again; other nodes' changes never show.
    runs.create(&PostParams::default(), &run("m", "n2"))
        .await
        .unwrap();
    runs.create(&PostParams::default(), &run("other", "n3"))
        .await
        .unwrap();
    let relabel =
        |node: &str| Patch::Merge(json!({"metadata": {"labels": {"hostaction.dev/node": node}}}));
    runs.patch("m", &PatchParams::default(), &relabel("n9"))
        .await
        .unwrap();
    runs.patch("m", &PatchParams::default(), &relabel("n2"))
        .await
        .unwrap();
    let seen: Vec<String> = [
        next(&mut mine).await.unwrap(),
        next(&mut mine).await.unwrap(),
        next(&mut mine).await.unwrap(),
    ]
    .into_iter()
    .map(|e| match e {
        watcher::Event::Apply(r) => format!("apply {}", r.name_any()),
        watcher::Event::Delete(r) => format!("delete {}", r.name_any()),
        other => format!("{other:?}"),
    })
    .collect();
    assert_eq!(seen, ["apply m", "delete m", "apply m"]);

    // Metadata-only watches (what Controller::owns uses).
    let mut meta = watcher(
        Api::<PartialObjectMeta<HostActionRun>>::all(client.clone()),
        watcher::Config::default().fields("spec.nodeName=n3"),
    )
    .boxed();
    assert!(matches!(
        next(&mut meta).await.unwrap(),
        watcher::Event::Init
    ));
    match next(&mut meta).await.unwrap() {
        watcher::Event::InitApply(r) => assert_eq!(r.name_any(), "other"),
        other => panic!("{other:?}"),
    }
    assert!(matches!(
        next(&mut meta).await.unwrap(),
        watcher::Event::InitDone
    ));
    runs.patch("other", &PatchParams::default(), &relabel("n4"))
        .await
        .unwrap();
    match next(&mut meta).await.unwrap() {
        watcher::Event::Apply(r) => {
            assert_eq!(
                r.labels().get("hostaction.dev/node").map(String::as_str),
                Some("n4")
            );
        }
        other => panic!("{other:?}"),
    }

    // Streaming lists: initial events then the initial-events-end bookmark.
    let mut streaming = watcher(runs.clone(), watcher::Config::default().streaming_lists()).boxed();
    assert!(matches!(
        next(&mut streaming).await.unwrap(),
        watcher::Event::Init
    ));
    let mut initial = BTreeSet::new();
    loop {
        match next(&mut streaming).await.unwrap() {
            watcher::Event::InitApply(r) => {
                initial.insert(r.name_any());
            }
            watcher::Event::InitDone => break,
            other => panic!("{other:?}"),
        }
    }
    assert_eq!(
        initial,
        BTreeSet::from(["before".into(), "m".into(), "other".into()])
    );
}

#[tokio::test]
async fn raw_watch_resumes_from_resource_version_and_410_after_compaction() {
    let server = ApiServer::start().unwrap();
    let nodes: Api<Node> = Api::all(server.client());
    let first = nodes
        .create(&PostParams::default(), &node("n1"))
        .await
        .unwrap();
    nodes
        .create(&PostParams::default(), &node("n2"))
        .await
        .unwrap();
    let from = first.resource_version().unwrap();

    let wp = WatchParams::default().disable_bookmarks();
    let mut resumed = nodes.watch(&wp, &from).await.unwrap().boxed();
    match next(&mut resumed).await.unwrap() {
        WatchEvent::Added(n) => assert_eq!(n.name_any(), "n2"),
        other => panic!("{other:?}"),
    }

    server.compact();
    let mut expired = nodes.watch(&wp, &from).await.unwrap().boxed();
    match next(&mut expired).await.unwrap() {
        WatchEvent::Error(status) => {
            assert_eq!(status.code, 410);
            assert_eq!(status.reason, "Expired");
        }
        other => panic!("{other:?}"),
    }
    let end = tokio::time::timeout(Duration::from_secs(5), expired.next()).await;
    assert!(matches!(end, Ok(None)), "the stream ends after the 410");

    // The open watch goes on; a watch from the current version works.
    nodes
        .create(&PostParams::default(), &node("n3"))
        .await
        .unwrap();
    match next(&mut resumed).await.unwrap() {
        WatchEvent::Added(n) => assert_eq!(n.name_any(), "n3"),
        other => panic!("{other:?}"),
    }

    // Timeouts end the stream; bookmarks come when allowed.
    let current = nodes
        .list(&ListParams::default())
        .await
        .unwrap()
        .metadata
        .resource_version
        .unwrap();
    let mut bookmarked = nodes
        .watch(&WatchParams::default().timeout(4), &current)
        .await
        .unwrap()
        .boxed();
    let started = Instant::now();
    match next(&mut bookmarked).await.unwrap() {
        WatchEvent::Bookmark(b) => assert_eq!(b.metadata.resource_version, current),
        other => panic!("{other:?}"),
    }
    while let Some(event) = bookmarked.next().await {
        assert!(matches!(event.unwrap(), WatchEvent::Bookmark(_)));
    }
    // It ends at its 4 s timeout, not the server's default (the bound
    // leaves room for a loaded machine).
    let took = started.elapsed();
    assert!(
        took < Duration::from_secs(60),
        "the watch ended after {took:?}"
    );
}

#[tokio::test]
async fn dropped_watches_are_unregistered() {
    let server = ApiServer::start().unwrap();
    let nodes: Api<Node> = Api::all(server.client());
    let runs: Api<HostActionRun> = Api::all(server.client());
    let wp = WatchParams::default();
    let a = nodes.watch(&wp, "0").await.unwrap().boxed();
    let b = runs
        .watch(&wp.clone().labels("hostaction.dev/node=n1"), "0")
        .await
        .unwrap()
        .boxed();
    let c = runs
        .watch(&wp.clone().fields("spec.nodeName=n2"), "0")
        .await
        .unwrap()
        .boxed();
    assert_eq!(server.watches(), 3);
    drop((a, b));
    eventually("two watches gone", || server.watches() == 1).await;
    drop(c);
    eventually("all watches gone", || server.watches() == 0).await;
}

#[tokio::test]
async fn reflector_relists_after_compaction_and_converges() {
    let server = ApiServer::start().unwrap();
    let nodes: Api<Node> = Api::all(server.client());
    nodes
        .create(&PostParams::default(), &node("n1"))
        .await
        .unwrap();

    let (reader, writer) = reflector::store::<Node>();
    let saw_410 = Arc::new(AtomicBool::new(false));
    let flag = saw_410.clone();
    let stream = reflector(
        writer,
        watcher(
            nodes.clone(),
            watcher::Config::default().disable_bookmarks(),
        ),
    );
    let task = tokio::spawn(stream.for_each(move |event| {
        if let Err(watcher::Error::WatchError(status)) = &event
            && status.code == 410
        {
            flag.store(true, Ordering::SeqCst);
        }
        async {}
    }));
    reader.wait_until_ready().await.unwrap();
    let state = |reader: &reflector::Store<Node>| -> BTreeSet<String> {
        reader.state().iter().map(|n| n.name_any()).collect()
    };
    assert_eq!(state(&reader), BTreeSet::from(["n1".to_owned()]));
    nodes
        .create(&PostParams::default(), &node("n2"))
        .await
        .unwrap();
    eventually("n2 in the store", || state(&reader).contains("n2")).await;

    // The watch ends, history is compacted behind its back: 410, re-list.
    server.set_available(false);
    server.insert(node_json("n3"));
    assert!(server.remove("v1", "Node", None, "n1"));
    server.compact();
    server.set_available(true);
    eventually("the store converges after a re-list", || {
        state(&reader) == BTreeSet::from(["n2".to_owned(), "n3".to_owned()])
    })
    .await;
    assert!(saw_410.load(Ordering::SeqCst), "the watcher got a 410");
    task.abort();
}

#[tokio::test]
async fn unavailable_answers_503_and_ends_watches() {
    let server = ApiServer::start().unwrap();
    let client = client_without_retry(&server);
    let nodes: Api<Node> = Api::all(client);
    nodes
        .create(&PostParams::default(), &node("n1"))
        .await
        .unwrap();
    let mut watch = nodes
        .watch(&WatchParams::default(), "0")
        .await
        .unwrap()
        .boxed();
    assert!(matches!(
        next(&mut watch).await.unwrap(),
        WatchEvent::Added(_)
    ));

    server.set_available(false);
    let ended = tokio::time::timeout(Duration::from_secs(5), async {
        while watch.next().await.is_some() {}
    })
    .await;
    assert!(ended.is_ok(), "the open watch ends at once");
    assert_eq!(
        api_error(nodes.get("n1").await),
        (503, "ServiceUnavailable".into())
    );
    assert_eq!(api_error(nodes.list(&ListParams::default()).await).0, 503);
    assert_eq!(
        api_error(nodes.create(&PostParams::default(), &node("n2")).await).0,
        503
    );
    assert_eq!(server.writes().get("rejected create nodes"), 1);
    // The double itself still answers the test.
    assert!(server.get("v1", "Node", None, "n1").is_some());

    server.set_available(true);
    assert_eq!(nodes.get("n1").await.unwrap().name_any(), "n1");
}

#[tokio::test]
async fn reflector_converges_after_an_outage() {
    let server = ApiServer::start().unwrap();
    // kube's default client: retries the 503s until the server is back.
    let runs: Api<HostActionRun> = Api::all(server.client());
    runs.create(&PostParams::default(), &run("r1", "n1"))
        .await
        .unwrap();
    runs.create(&PostParams::default(), &run("r2", "n1"))
        .await
        .unwrap();
    runs.create(&PostParams::default(), &run("r3", "n2"))
        .await
        .unwrap();
    let (reader, writer) = reflector::store::<HostActionRun>();
    let task = tokio::spawn(
        reflector(
            writer,
            watcher(
                runs.clone(),
                watcher::Config::default().labels("hostaction.dev/node=n1"),
            ),
        )
        .for_each(|_| async {}),
    );
    reader.wait_until_ready().await.unwrap();
    let state = |reader: &reflector::Store<HostActionRun>| -> BTreeSet<String> {
        reader.state().iter().map(|n| n.name_any()).collect()
    };
    assert_eq!(state(&reader), BTreeSet::from(["r1".into(), "r2".into()]));

    server.set_available(false);
    tokio::time::sleep(Duration::from_millis(200)).await;
    server.insert(run_json("r4", "n1"));
    server.insert(run_json("r5", "n2"));
    assert!(server.remove("hostaction.dev/v1alpha1", "HostActionRun", None, "r1"));
    let mut moved = run_json("r3", "n1");
    moved["status"] = json!({"phase": "Succeeded"});
    server.insert(moved);
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(state(&reader), BTreeSet::from(["r1".into(), "r2".into()]));
    server.set_available(true);

    eventually("the store has the changes made while down", || {
        state(&reader) == BTreeSet::from(["r2".into(), "r3".into(), "r4".into()])
    })
    .await;
    let r3 = reader
        .state()
        .into_iter()
        .find(|r| r.name_any() == "r3")
        .unwrap();
    assert_eq!(
        r3.status.as_ref().unwrap().phase,
        hostaction_crds::RunPhase::Succeeded
    );
    task.abort();
}

#[tokio::test]
async fn delete_with_finalizer_waits_for_it() {
    let server = ApiServer::start().unwrap();
    let actions: Api<HostAction> = Api::all(server.client());
    let mut a = action("a");
    a.metadata.finalizers = Some(vec!["hostaction.dev/cleanup".into()]);
    actions.create(&PostParams::default(), &a).await.unwrap();

    let mut events = watcher(actions.clone(), watcher::Config::default()).boxed();
    assert!(matches!(
        next(&mut events).await.unwrap(),
        watcher::Event::Init
    ));
    assert!(matches!(
        next(&mut events).await.unwrap(),
        watcher::Event::InitApply(_)
    ));
    assert!(matches!(
        next(&mut events).await.unwrap(),
        watcher::Event::InitDone
    ));

    let deleted = actions.delete("a", &DeleteParams::default()).await.unwrap();
    let marked = deleted.left().expect("the object, still there");
    assert!(marked.metadata.deletion_timestamp.is_some());
    assert_eq!(marked.metadata.generation, Some(2));
    match next(&mut events).await.unwrap() {
        watcher::Event::Apply(a) => assert!(a.metadata.deletion_timestamp.is_some()),
        other => panic!("{other:?}"),
    }
    // Deleting again changes nothing; no new finalizers while deleting.
    let again = actions.delete("a", &DeleteParams::default()).await.unwrap();
    assert_eq!(
        again.left().unwrap().resource_version(),
        marked.resource_version()
    );
    let added = actions
        .patch(
            "a",
            &PatchParams::default(),
            &Patch::Merge(json!({"metadata": {"finalizers": ["hostaction.dev/cleanup", "other"]}})),
        )
        .await;
    assert_eq!(api_error(added), (422, "Invalid".into()));
    assert!(actions.get_opt("a").await.unwrap().is_some());

    // kube's finalizer helper removes it with test + remove.
    let remove: json_patch::Patch = serde_json::from_value(json!([
        {"op": "test", "path": "/metadata/finalizers/0", "value": "hostaction.dev/cleanup"},
        {"op": "remove", "path": "/metadata/finalizers/0"},
    ]))
    .unwrap();
    actions
        .patch("a", &PatchParams::default(), &Patch::Json::<()>(remove))
        .await
        .unwrap();
    assert!(actions.get_opt("a").await.unwrap().is_none());
    match next(&mut events).await.unwrap() {
        watcher::Event::Delete(a) => assert_eq!(a.name_any(), "a"),
        other => panic!("{other:?}"),
    }

    // Preconditions.
    let b = actions
        .create(&PostParams::default(), &action("b"))
        .await
        .unwrap();
    let wrong = DeleteParams {
        preconditions: Some(kube::api::Preconditions {
            resource_version: Some("1".into()),
            uid: None,
        }),
        ..DeleteParams::default()
    };
    assert_eq!(api_error(actions.delete("b", &wrong).await).0, 409);
    let right = DeleteParams {
        preconditions: Some(kube::api::Preconditions {
            resource_version: b.resource_version(),
            uid: b.uid(),
        }),
        ..DeleteParams::default()
    };
    actions.delete("b", &right).await.unwrap();
    assert_eq!(api_error(actions.delete("b", &right).await).0, 404);
}

#[tokio::test]
async fn owner_garbage_collection() {
    let server = ApiServer::start().unwrap();
    let actions: Api<HostAction> = Api::all(server.client());
    let runs: Api<HostActionRun> = Api::all(server.client());
    let a = actions
        .create(&PostParams::default(), &action("a"))
        .await
        .unwrap();
    let b = actions
        .create(&PostParams::default(), &action("b"))
        .await
        .unwrap();
    let owned = |name: &str, owners: &[&HostAction], finalizer: bool| {
        let mut r = run(name, "n1");
        r.metadata.owner_references = Some(
            owners
                .iter()
                .map(|o| o.controller_owner_ref(&()).unwrap())
                .collect(),
        );
        if finalizer {
            r.metadata.finalizers = Some(vec!["agent".into()]);
        }
        r
    };
    for r in [
        owned("only-a", &[&a], false),
        owned("a-and-b", &[&a, &b], false),
        owned("a-finalized", &[&a], true),
        owned("only-b", &[&b], false),
    ] {
        runs.create(&PostParams::default(), &r).await.unwrap();
    }
    actions.delete("a", &DeleteParams::default()).await.unwrap();

    let left = names(runs.list(&ListParams::default()).await.unwrap());
    assert_eq!(left, ["a-and-b", "a-finalized", "only-b"]);
    let shared = runs.get("a-and-b").await.unwrap();
    assert_eq!(shared.owner_references().len(), 1);
    assert_eq!(shared.owner_references()[0].name, "b");
    let finalized = runs.get("a-finalized").await.unwrap();
    assert!(finalized.metadata.deletion_timestamp.is_some());
    runs.patch(
        "a-finalized",
        &PatchParams::default(),
        &Patch::Merge(json!({"metadata": {"finalizers": null}})),
    )
    .await
    .unwrap();
    assert!(runs.get_opt("a-finalized").await.unwrap().is_none());

    // Orphan leaves dependents; the direct remove collects them.
    let orphan = DeleteParams {
        propagation_policy: Some(kube::api::PropagationPolicy::Orphan),
        ..DeleteParams::default()
    };
    let c = actions
        .create(&PostParams::default(), &action("c"))
        .await
        .unwrap();
    runs.create(&PostParams::default(), &owned("only-c", &[&c], false))
        .await
        .unwrap();
    actions.delete("c", &orphan).await.unwrap();
    assert!(runs.get_opt("only-c").await.unwrap().is_some());
    assert!(server.remove("hostaction.dev/v1alpha1", "HostAction", None, "b"));
    assert_eq!(
        names(runs.list(&ListParams::default()).await.unwrap()),
        ["only-c"]
    );
}

#[tokio::test]
async fn write_counter_counts_client_writes_only() {
    let server = ApiServer::start().unwrap();
    let runs: Api<HostActionRun> = Api::all(server.client());
    server.insert(run_json("seeded", "n0"));
    runs.create(&PostParams::default(), &run("r", "n1"))
        .await
        .unwrap();
    runs.patch_status(
        "r",
        &PatchParams::default(),
        &Patch::Merge(json!({"status": {"phase": "Running"}})),
    )
    .await
    .unwrap();
    runs.get("r").await.unwrap();
    runs.list(&ListParams::default()).await.unwrap();
    let writes = server.writes();
    assert_eq!(writes.total, 2);
    assert_eq!(writes.get("create hostactionruns"), 1);
    assert_eq!(writes.get("patch hostactionruns/status"), 1);
    assert_eq!(writes.by.len(), 2);

    assert!(
        runs.create(&PostParams::default(), &run("r", "n1"))
            .await
            .is_err()
    );
    runs.delete("r", &DeleteParams::default()).await.unwrap();
    let writes = server.writes();
    assert_eq!(writes.total, 3);
    assert_eq!(writes.get("rejected create hostactionruns"), 1);
    assert_eq!(writes.get("delete hostactionruns"), 1);

    // A dry run is answered and stores nothing.
    let dry = runs
        .create(
            &PostParams {
                dry_run: true,
                field_manager: None,
            },
            &run("dry", "n1"),
        )
        .await
        .unwrap();
    assert_eq!(dry.name_any(), "dry");
    assert!(runs.get_opt("dry").await.unwrap().is_none());
}

#[tokio::test]
async fn event_recorder_creates_then_patches_a_series() {
    let server = ApiServer::start().unwrap();
    let client = server.client();
    let n1 = Api::<Node>::all(client.clone())
        .create(&PostParams::default(), &node("n1"))
        .await
        .unwrap();
    let recorder = Recorder::new(
        client.clone(),
        Reporter {
            controller: "hostaction-controller".into(),
            instance: None,
        },
    );
    let event = Publish {
        type_: EventType::Normal,
        reason: "Selected".into(),
        note: Some("selected by a".into()),
        action: "Select".into(),
        secondary: None,
    };
    let reference = n1.object_ref(&());
    recorder.publish(&event, &reference).await.unwrap();
    recorder.publish(&event, &reference).await.unwrap();
    let events: Api<k8s_openapi::api::events::v1::Event> = Api::namespaced(client, "default");
    let listed = events.list(&ListParams::default()).await.unwrap();
    assert_eq!(listed.items.len(), 1);
    assert_eq!(listed.items[0].series.as_ref().unwrap().count, 2);
    assert_eq!(listed.items[0].reason.as_deref(), Some("Selected"));
    let writes = server.writes();
    assert_eq!(writes.get("create events"), 1);
    assert_eq!(writes.get("patch events"), 1);
    let by_regarding = events
        .list(&ListParams::default().fields("regarding.name=n1,regarding.kind=Node"))
        .await
        .unwrap();
    assert_eq!(by_regarding.items.len(), 1);
}

#[tokio::test]
async fn kubeconfig_loads() {
    let server = ApiServer::start().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("kubeconfig");
    server.write_kubeconfig(&path).unwrap();
    let kubeconfig = kube::config::Kubeconfig::read_from(&path).unwrap();
    let config = kube::Config::from_custom_kubeconfig(
        kubeconfig,
        &kube::config::KubeConfigOptions::default(),
    )
    .await
    .unwrap();
    assert_eq!(config.default_namespace, "default");
    assert_eq!(
        config.cluster_url.to_string().trim_end_matches('/'),
        server.url()
    );
    let client = Client::try_from(config).unwrap();
    Api::<Node>::all(client)
        .create(&PostParams::default(), &node("n1"))
        .await
        .unwrap();
    assert!(server.get("v1", "Node", None, "n1").is_some());
}

/// kube's Controller with `owns`, the finalizer helper and the Recorder:
/// what the hostaction controller is built from.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kube_controller_runs_against_the_double() {
    const FINALIZER: &str = "hostaction.dev/test-cleanup";
    struct Ctx {
        client: Client,
        recorder: Recorder,
        cleaned: AtomicBool,
    }
    async fn reconcile(
        obj: Arc<HostAction>,
        ctx: Arc<Ctx>,
    ) -> Result<Action, finalizer::Error<kube::Error>> {
        let api: Api<HostAction> = Api::all(ctx.client.clone());
        finalizer(&api, FINALIZER, obj, |event| async move {
            match event {
                finalizer::Event::Apply(a) => {
                    let mut r = run_json(&format!("{}-n1", a.name_any()), "n1");
                    r["metadata"]["ownerReferences"] =
                        serde_json::to_value([a.controller_owner_ref(&()).unwrap()]).unwrap();
                    Api::<HostActionRun>::all(ctx.client.clone())
                        .patch(
                            &format!("{}-n1", a.name_any()),
                            &PatchParams::apply("test-controller").force(),
                            &Patch::Apply(r),
                        )
                        .await?;
                    ctx.recorder
                        .publish(
                            &Publish {
                                type_: EventType::Normal,
                                reason: "Planned".into(),
                                note: None,
                                action: "Plan".into(),
                                secondary: None,
                            },
                            &a.object_ref(&()),
                        )
                        .await?;
                    Ok(Action::await_change())
                }
                finalizer::Event::Cleanup(_) => {
                    ctx.cleaned.store(true, Ordering::SeqCst);
                    Ok(Action::await_change())
                }
            }
        })
        .await
    }
    fn error_policy(_: Arc<HostAction>, _: &finalizer::Error<kube::Error>, _: Arc<Ctx>) -> Action {
        Action::requeue(Duration::from_millis(100))
    }

    let server = ApiServer::start().unwrap();
    let client = server.client();
    let actions: Api<HostAction> = Api::all(client.clone());
    let runs: Api<HostActionRun> = Api::all(client.clone());
    let ctx = Arc::new(Ctx {
        recorder: Recorder::new(
            client.clone(),
            Reporter {
                controller: "test-controller".into(),
                instance: None,
            },
        ),
        client: client.clone(),
        cleaned: AtomicBool::new(false),
    });
    let controller = tokio::spawn(
        Controller::new(actions.clone(), watcher::Config::default())
            .owns(runs.clone(), watcher::Config::default())
            .run(reconcile, error_policy, ctx.clone())
            .for_each(|_| async {}),
    );

    actions
        .create(&PostParams::default(), &action("a"))
        .await
        .unwrap();
    let api_version = "hostaction.dev/v1alpha1";
    eventually("the finalizer, the run and the event", || {
        server
            .get(api_version, "HostAction", None, "a")
            .is_some_and(|a| a["metadata"]["finalizers"] == json!([FINALIZER]))
            && server
                .get(api_version, "HostActionRun", None, "a-n1")
                .is_some()
            && !server.list("events.k8s.io/v1", "Event").is_empty()
    })
    .await;

    // The controller owns runs: deleting one brings it back.
    runs.delete("a-n1", &DeleteParams::default()).await.unwrap();
    eventually("the run re-created", || {
        server
            .get(api_version, "HostActionRun", None, "a-n1")
            .is_some()
    })
    .await;

    actions.delete("a", &DeleteParams::default()).await.unwrap();
    eventually("cleanup ran, the action and its run are gone", || {
        ctx.cleaned.load(Ordering::SeqCst)
            && server.get(api_version, "HostAction", None, "a").is_none()
            && server
                .get(api_version, "HostActionRun", None, "a-n1")
                .is_none()
    })
    .await;
    controller.abort();
}

/// 1000 label-selected watchers (one per simulated node agent) and 3000
/// writes: each watcher sees only its own run, all of them quickly.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_thousand_watchers_fan_out() {
    const NODES: usize = 1000;
    let server = ApiServer::start().unwrap();
    let client = server.client();
    let runs: Api<HostActionRun> = Api::all(client.clone());
    let started = Instant::now();

    let mut agents = Vec::new();
    let (ready_tx, mut ready_rx) = tokio::sync::mpsc::channel::<()>(NODES);
    let (done_tx, mut done_rx) = tokio::sync::mpsc::channel::<usize>(NODES);
    for i in 0..NODES {
        let runs = runs.clone();
        let ready = ready_tx.clone();
        let done = done_tx.clone();
        agents.push(tokio::spawn(async move {
            let mut events = watcher(
                runs,
                watcher::Config::default().labels(&format!("hostaction.dev/node=node-{i}")),
            )
            .boxed();
            let mut seen = 0usize;
            let mut ready = Some(ready);
            while let Some(event) = events.next().await {
                let Ok(event) = event else {
                    // The watcher recovers (re-watches or re-lists).
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                };
                match event {
                    watcher::Event::InitDone => {
                        if let Some(ready) = ready.take() {
                            let _ = ready.send(()).await;
                        }
                    }
                    watcher::Event::Apply(r) | watcher::Event::InitApply(r) => {
                        assert_eq!(r.spec.node_name, format!("node-{i}"));
                        seen += 1;
                        if r.status.as_ref().is_some_and(|s| s.attempts == 2) {
                            let _ = done.send(seen).await;
                        }
                    }
                    _ => {}
                }
            }
        }));
    }
    for _ in 0..NODES {
        ready_rx.recv().await.unwrap();
    }
    let watching = started.elapsed();

    let writes = Instant::now();
    let mut writers = Vec::new();
    for i in 0..NODES {
        let runs = runs.clone();
        writers.push(tokio::spawn(async move {
            let name = format!("run-{i}");
            runs.create(&PostParams::default(), &run(&name, &format!("node-{i}")))
                .await
                .unwrap();
            for attempts in 1..=2 {
                runs.patch_status(
                    &name,
                    &PatchParams::default(),
                    &Patch::Merge(json!({"status": {"attempts": attempts}})),
                )
                .await
                .unwrap();
            }
        }));
    }
    for w in writers {
        w.await.unwrap();
    }
    let mut seen_total = 0;
    for _ in 0..NODES {
        seen_total += tokio::time::timeout(Duration::from_secs(60), done_rx.recv())
            .await
            .unwrap()
            .unwrap();
    }
    let elapsed = writes.elapsed();
    // Three events each, fewer only if a watch had to re-list.
    assert!(seen_total <= 3 * NODES, "an agent saw another node's run");
    assert_eq!(server.writes().total, 3 * NODES as u64);
    eprintln!(
        "{NODES} watches up in {watching:?}; {} writes seen by all in {elapsed:?}",
        3 * NODES
    );
    // A bound against a hang, not a budget: speed is the cluster
    // benchmark's to measure, on a machine not running other tests.
    assert!(
        elapsed < Duration::from_secs(120),
        "3000 writes to 1000 watchers took {elapsed:?}"
    );
    for a in agents {
        a.abort();
    }
}
