//! `manifests/` against a real kube-apiserver and etcd built from source
//! (`hostaction_tests::kube_control_plane`): applied as a user applies it
//! (one `kubectl apply --server-side -f manifests/` on a fresh cluster), then
//! what only a real server can prove — each service account's rights, tried
//! verb by verb with real ServiceAccount tokens (TokenRequest API); the
//! ValidatingAdmissionPolicy keeping an agent to its own node's runs, with a
//! token bound to a Pod on a node; and what `kubectl get` and `kubectl
//! describe` show a user. Each test uses its own name prefix and nodes.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::sync::OnceLock;
use std::time::{Duration, Instant};

use futures_util::StreamExt;
use hostaction_crds::{HostAction, HostActionRun, HostActionStatus};
use hostaction_tests::kube_control_plane::{
    ControlPlane, create_ready_node, now, service_account_token,
};
use hostaction_tests::workspace;
use k8s_openapi::api::authentication::v1::{SelfSubjectReview, TokenRequest};
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::{Node, Pod, Secret, ServiceAccount};
use k8s_openapi::jiff::Timestamp;
use kube::api::{Api, DeleteParams, ListParams, Patch, PatchParams, PostParams, WatchEvent};
use kube::runtime::events::{Event, EventType, Recorder, Reporter};
use kube::{Resource, ResourceExt};
use serde_json::{Value, json};

/// The namespace `manifests/00-namespace.yaml` creates.
const NAMESPACE: &str = "hostaction-system";
const AGENT: &str = "hostaction-agent";
const CONTROLLER: &str = "hostaction-controller";
/// The ValidatingAdmissionPolicy's message (`manifests/admission-policy.yaml`).
const POLICY_MESSAGE: &str = "an agent may write the status of its own node's runs only";
/// How long the API server may take to start enforcing a new policy.
const POLICY_ACTIVE_TIMEOUT: Duration = Duration::from_secs(60);

/// This module's control plane with `manifests/` applied by one kubectl apply,
/// and kubectl's output of that apply.
fn cluster() -> (&'static ControlPlane, &'static str) {
    static APPLIED: OnceLock<String> = OnceLock::new();
    // This module's own: the other modules' objects and policies stay out.
    static PLANE: OnceLock<ControlPlane> = OnceLock::new();
    let plane = PLANE.get_or_init(ControlPlane::start);
    let applied = APPLIED.get_or_init(|| {
        // One apply, as the README says; kubectl exits 1 if any object
        // fails (it goes on with the others).
        plane.apply_and_wait_for_crds(&workspace().join("manifests"))
    });
    (plane, applied)
}

/// A client for the admin (every right).
fn admin(plane: &ControlPlane) -> kube::Client {
    plane.client()
}

/// A token of `account`, bound to `pod` when given.
async fn token(plane: &ControlPlane, account: &str, pod: Option<&Pod>) -> String {
    service_account_token(&admin(plane), NAMESPACE, account, pod)
        .await
        .unwrap_or_else(|e| panic!("{e}"))
}

/// A client authenticated by `account`'s token (bound to `pod` if given).
async fn client_as(plane: &ControlPlane, account: &str, pod: Option<&Pod>) -> kube::Client {
    let token = token(plane, account, pod).await;
    kube::Client::try_from(plane.token_config(&token)).unwrap()
}

/// A Node object (no kubelet behind it), Ready.
async fn node(plane: &ControlPlane, name: &str) {
    create_ready_node(&admin(plane), name, json!({"kubernetes.io/os": "linux"}))
        .await
        .unwrap();
}

/// An agent Pod scheduled on `node_name` (it stays Pending: no kubelet
/// runs it), as the DaemonSet would make it.
async fn agent_pod(plane: &ControlPlane, name: &str, node_name: &str) -> Pod {
    let pod: Pod = serde_json::from_value(json!({
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name, "namespace": NAMESPACE},
        "spec": {
            "serviceAccountName": AGENT,
            "nodeName": node_name,
            "containers": [{"name": "agent", "image": "registry.example/hostaction/hostaction:0.1.0"}],
        },
    }))
    .unwrap();
    Api::<Pod>::namespaced(admin(plane), NAMESPACE)
        .create(&PostParams::default(), &pod)
        .await
        .unwrap()
}

/// A run of `action` for `node_name`, created by the admin.
async fn run(plane: &ControlPlane, action: &str, node_name: &str) -> HostActionRun {
    let digest = "0".repeat(64);
    let run: HostActionRun = serde_json::from_value(json!({
        "apiVersion": "hostaction.dev/v1alpha1",
        "kind": "HostActionRun",
        "metadata": {
            "name": format!("{action}.{node_name}.g1"),
            "labels": {"hostaction.dev/node": node_name, "hostaction.dev/action": action},
        },
        "spec": {
            "action": action,
            "generation": 1,
            "nodeName": node_name,
            "module": format!("registry.example/actions/cni-install@sha256:{digest}"),
            "timeoutSeconds": 60,
        },
    }))
    .unwrap();
    Api::<HostActionRun>::all(admin(plane))
        .create(&PostParams::default(), &run)
        .await
        .unwrap()
}

/// `manifests/examples/cni-install.yaml`, renamed.
fn example_action(name: &str) -> HostAction {
    let text = std::fs::read_to_string(workspace().join("manifests/examples/cni-install.yaml"))
        .expect("read the example");
    let mut action: Value = serde_yaml_ng::from_str(&text).expect("the example is YAML");
    action["metadata"]["name"] = json!(name);
    serde_json::from_value(action).unwrap()
}

/// The status an agent writes when a run ends.
fn finished(phase: &str, message: &str) -> Patch<Value> {
    Patch::Merge(json!({"status": {
        "phase": phase,
        "changed": phase == "Succeeded",
        "message": message,
        "attempts": 1,
        "startedAt": now(),
        "finishedAt": now(),
    }}))
}

/// Asserts that the API server refused `result` with 403; returns its message.
#[track_caller]
fn forbidden<T: std::fmt::Debug>(what: &str, result: Result<T, kube::Error>) -> String {
    match result {
        Err(kube::Error::Api(status)) if status.code == 403 => status.message,
        other => panic!("{what}: expected 403 Forbidden, got {other:?}"),
    }
}

/// Asserts that the API server allowed `result`.
#[track_caller]
fn allowed<T>(what: &str, result: Result<T, kube::Error>) -> T {
    result.unwrap_or_else(|e| panic!("{what}: expected it to be allowed, got {e}"))
}

#[test]
fn one_apply_of_manifests_succeeds_on_a_fresh_cluster() {
    let (plane, applied) = cluster();
    // Every object of every file, created by that one apply (kubectl_ok:
    // it exited 0).
    for object in [
        "namespace/hostaction-system serverside-applied",
        "customresourcedefinition.apiextensions.k8s.io/hostactions.hostaction.dev serverside-applied",
        "customresourcedefinition.apiextensions.k8s.io/hostactionruns.hostaction.dev serverside-applied",
        "serviceaccount/hostaction-agent serverside-applied",
        "serviceaccount/hostaction-controller serverside-applied",
        "clusterrole.rbac.authorization.k8s.io/hostaction-agent serverside-applied",
        "clusterrole.rbac.authorization.k8s.io/hostaction-controller serverside-applied",
        "clusterrolebinding.rbac.authorization.k8s.io/hostaction-agent serverside-applied",
        "clusterrolebinding.rbac.authorization.k8s.io/hostaction-controller serverside-applied",
        "role.rbac.authorization.k8s.io/hostaction-controller-leader serverside-applied",
        "rolebinding.rbac.authorization.k8s.io/hostaction-controller-leader serverside-applied",
        "validatingadmissionpolicy.admissionregistration.k8s.io/hostaction-agent-own-node serverside-applied",
        "validatingadmissionpolicybinding.admissionregistration.k8s.io/hostaction-agent-own-node serverside-applied",
        "configmap/hostaction-node-policy serverside-applied",
        "daemonset.apps/hostaction-agent serverside-applied",
        "deployment.apps/hostaction-controller serverside-applied",
    ] {
        assert!(applied.contains(object), "{object} in:\n{applied}");
    }
    // The namespace comes first: kubectl applies files in name order.
    let first = applied.lines().next().unwrap_or_default();
    assert!(
        first.starts_with("namespace/hostaction-system"),
        "{applied}"
    );
    let workloads =
        plane.kubectl_ok(&["get", "daemonset,deployment", "-n", NAMESPACE, "-o", "name"]);
    assert!(
        workloads.contains("daemonset.apps/hostaction-agent")
            && workloads.contains("deployment.apps/hostaction-controller"),
        "{workloads}"
    );
    // Applying again changes nothing and still succeeds.
    let manifests = format!("{}/", workspace().join("manifests").display());
    plane.kubectl_ok(&["apply", "--server-side", "-f", &manifests]);
}

#[tokio::test]
async fn the_agent_account_may_read_runs_and_write_their_status_and_nothing_else() {
    let (plane, _) = cluster();
    node(plane, "rbac-node").await;
    let pod = agent_pod(plane, "rbac-agent", "rbac-node").await;
    let agent = client_as(plane, AGENT, Some(&pod)).await;
    let own = run(plane, "rbac-agent-action", "rbac-node").await;
    run(plane, "rbac-agent-action", "rbac-other-node").await;
    let own_name = own.name_any();
    let runs: Api<HostActionRun> = Api::all(agent.clone());

    // What it needs: its node's runs (by the selectable field it watches
    // with), one by name, a watch, and their status.
    let mine = ListParams::default().fields("spec.nodeName=rbac-node");
    let listed = allowed("list own runs", runs.list(&mine).await);
    let names: Vec<String> = listed.items.iter().map(ResourceExt::name_any).collect();
    assert_eq!(names, vec![own_name.clone()]);
    allowed("get a run", runs.get(&own_name).await);
    let watch = kube::api::WatchParams::default().fields("spec.nodeName=rbac-node");
    let stream = allowed("watch runs", runs.watch(&watch, "0").await);
    let mut stream = std::pin::pin!(stream);
    let first = tokio::time::timeout(Duration::from_secs(30), stream.next())
        .await
        .expect("a watch event in time")
        .expect("the watch goes on")
        .expect("a watch event");
    assert!(
        matches!(&first, WatchEvent::Added(run) if run.name_any() == own_name),
        "{first:?}"
    );
    let written = allowed(
        "patch its run's status",
        runs.patch_status(
            &own_name,
            &PatchParams::default(),
            &finished("Succeeded", "ok"),
        )
        .await,
    );
    assert_eq!(
        written.status.map(|s| s.message),
        Some(Some("ok".to_owned()))
    );

    // What it must not do.
    let post = PostParams::default();
    let mut new_run = own.clone();
    new_run.metadata = kube::api::ObjectMeta {
        name: Some("rbac-agent-action.rbac-node.g2".into()),
        ..Default::default()
    };
    forbidden("create a run", runs.create(&post, &new_run).await);
    forbidden(
        "delete a run",
        runs.delete(&own_name, &DeleteParams::default()).await,
    );
    let relabel = Patch::Merge(json!({"metadata": {"labels": {"hostaction.dev/node": "x"}}}));
    forbidden(
        "patch a run",
        runs.patch(&own_name, &PatchParams::default(), &relabel)
            .await,
    );
    let secrets: Api<Secret> = Api::namespaced(agent.clone(), NAMESPACE);
    forbidden(
        "list secrets in its namespace",
        secrets.list(&ListParams::default()).await,
    );
    forbidden("get a secret", secrets.get("anything").await);
    forbidden(
        "list secrets everywhere",
        Api::<Secret>::all(agent.clone())
            .list(&ListParams::default())
            .await,
    );
    admin_action(plane, "rbac-agent-action").await;
    let actions: Api<HostAction> = Api::all(agent.clone());
    forbidden("list actions", actions.list(&ListParams::default()).await);
    forbidden("get an action", actions.get("rbac-agent-action").await);
    forbidden(
        "create an action",
        actions
            .create(&post, &example_action("rbac-agent-new"))
            .await,
    );
    let pause = Patch::Merge(json!({"spec": {"rollout": {"paused": true}}}));
    forbidden(
        "patch an action",
        actions
            .patch("rbac-agent-action", &PatchParams::default(), &pause)
            .await,
    );
    forbidden(
        "patch an action's status",
        actions
            .patch_status(
                "rbac-agent-action",
                &PatchParams::default(),
                &Patch::Merge(json!({"status": {"selectedNodes": 0}})),
            )
            .await,
    );
    forbidden(
        "delete an action",
        actions
            .delete("rbac-agent-action", &DeleteParams::default())
            .await,
    );
    // Nor make itself a pod on another node, or a token (the way to
    // another node's identity).
    let pods: Api<Pod> = Api::namespaced(agent.clone(), NAMESPACE);
    let mut other_pod = pod.clone();
    other_pod.metadata = kube::api::ObjectMeta {
        name: Some("rbac-agent-elsewhere".into()),
        ..Default::default()
    };
    forbidden("create a pod", pods.create(&post, &other_pod).await);
    let accounts: Api<ServiceAccount> = Api::namespaced(agent.clone(), NAMESPACE);
    forbidden(
        "request a token",
        accounts
            .create_token_request(AGENT, &post, &TokenRequest::default())
            .await,
    );
}

/// The example HostAction as `name`, created by the admin.
async fn admin_action(plane: &ControlPlane, name: &str) -> HostAction {
    Api::<HostAction>::all(admin(plane))
        .create(&PostParams::default(), &example_action(name))
        .await
        .unwrap()
}

#[tokio::test]
async fn the_controller_account_may_roll_out_and_may_not_write_run_status() {
    let (plane, _) = cluster();
    node(plane, "rbac-ctl-node").await;
    let controller = client_as(plane, CONTROLLER, None).await;
    let action = admin_action(plane, "rbac-ctl-action").await;
    let post = PostParams::default();

    // What it needs: nodes, actions (and their finalizer and status), runs
    // created and deleted, Events, its Lease.
    let nodes: Api<Node> = Api::all(controller.clone());
    allowed("list nodes", nodes.list(&ListParams::default()).await);
    allowed("get a node", nodes.get("rbac-ctl-node").await);
    let actions: Api<HostAction> = Api::all(controller.clone());
    allowed("list actions", actions.list(&ListParams::default()).await);
    let finalizer = Patch::Merge(json!({"metadata": {"finalizers": ["hostaction.dev/runs"]}}));
    allowed(
        "add its finalizer",
        actions
            .patch("rbac-ctl-action", &PatchParams::default(), &finalizer)
            .await,
    );
    let status = Patch::Merge(json!({"status": {"observedGeneration": 1, "selectedNodes": 1}}));
    allowed(
        "patch an action's status",
        actions
            .patch_status("rbac-ctl-action", &PatchParams::default(), &status)
            .await,
    );
    let runs: Api<HostActionRun> = Api::all(controller.clone());
    let template = run(plane, "rbac-ctl-action", "rbac-ctl-template").await;
    let mut new_run = template.clone();
    new_run.metadata = kube::api::ObjectMeta {
        name: Some("rbac-ctl-action.rbac-ctl-node.g1".into()),
        owner_references: action.controller_owner_ref(&()).map(|o| vec![o]),
        ..Default::default()
    };
    new_run.spec.node_name = "rbac-ctl-node".into();
    allowed("create a run", runs.create(&post, &new_run).await);
    allowed("list runs", runs.list(&ListParams::default()).await);
    // The Recorder the controller publishes with: a new Event is created,
    // the same one again patched (its series).
    let recorder = Recorder::new(
        controller.clone(),
        Reporter {
            controller: hostaction_controller::NAME.to_owned(),
            instance: Some("rbac-test".into()),
        },
    );
    let event = Event {
        type_: EventType::Normal,
        reason: "Resolved".into(),
        note: Some("rbac-ctl-action's module resolved".into()),
        action: "Reconcile".into(),
        secondary: None,
    };
    let reference = action.object_ref(&());
    allowed(
        "create an Event",
        recorder.publish(&event, &reference).await,
    );
    allowed("patch an Event", recorder.publish(&event, &reference).await);
    // The controller's own leader election, on the manifests' Lease.
    let elector = hostaction_controller::lease::LeaderElector::new(
        controller.clone(),
        hostaction_controller::lease::LeaseConfig::new(CONTROLLER, NAMESPACE, "rbac-test"),
    );
    // It retries refused requests until it holds the Lease: a timeout here
    // is RBAC refusing it.
    let leadership = tokio::time::timeout(Duration::from_secs(60), elector.acquire())
        .await
        .expect("the controller's account acquires its Lease")
        .unwrap();
    assert!(leadership.is_leader());
    leadership.release().await;
    let lease = Api::<Lease>::namespaced(admin(plane), NAMESPACE)
        .get(CONTROLLER)
        .await
        .unwrap();
    assert!(lease.spec.is_some());

    // What it must not do: write a run's status (the agent's), change a
    // run, read secrets, create or delete actions, hold Leases elsewhere.
    let run_name = "rbac-ctl-action.rbac-ctl-node.g1";
    forbidden(
        "patch a run's status",
        runs.patch_status(run_name, &PatchParams::default(), &finished("Failed", "x"))
            .await,
    );
    let mut stored = runs.get(run_name).await.unwrap();
    stored.status = Some(Default::default());
    forbidden(
        "replace a run's status",
        runs.replace_status(run_name, &post, &stored).await,
    );
    // It may patch a run (the onDelete: undo annotation), not its spec
    // (immutable: the CRD's rule) nor its status (above).
    let annotate =
        Patch::Merge(json!({"metadata": {"annotations": {"hostaction.dev/undo": "requested"}}}));
    allowed(
        "annotate a run",
        runs.patch(run_name, &PatchParams::default(), &annotate)
            .await,
    );
    let respec = Patch::Merge(json!({"spec": {"timeoutSeconds": 1}}));
    let refused = runs.patch(run_name, &PatchParams::default(), &respec).await;
    assert!(
        matches!(&refused, Err(kube::Error::Api(s)) if s.code == 422),
        "{refused:?}"
    );
    forbidden(
        "list secrets",
        Api::<Secret>::namespaced(controller.clone(), NAMESPACE)
            .list(&ListParams::default())
            .await,
    );
    forbidden(
        "create an action",
        actions.create(&post, &example_action("rbac-ctl-new")).await,
    );
    forbidden(
        "delete an action",
        actions
            .delete("rbac-ctl-action", &DeleteParams::default())
            .await,
    );
    let mut lease_elsewhere = lease.clone();
    lease_elsewhere.metadata = kube::api::ObjectMeta {
        name: Some(CONTROLLER.into()),
        ..Default::default()
    };
    forbidden(
        "create a Lease in another namespace",
        Api::<Lease>::namespaced(controller.clone(), "kube-system")
            .create(&post, &lease_elsewhere)
            .await,
    );
    forbidden(
        "create a pod",
        Api::<Pod>::namespaced(controller.clone(), NAMESPACE)
            .create(&post, &Pod::default())
            .await,
    );
    // Deleting its runs is its job too (last: the run above is used).
    allowed(
        "delete a run",
        runs.delete(run_name, &DeleteParams::background()).await,
    );
    // The admin lets the action go.
    Api::<HostAction>::all(admin(plane))
        .patch(
            "rbac-ctl-action",
            &PatchParams::default(),
            &Patch::Merge(json!({"metadata": {"finalizers": null}})),
        )
        .await
        .unwrap();
}

#[tokio::test]
async fn the_admission_policy_keeps_an_agent_to_its_own_nodes_runs() {
    let (plane, _) = cluster();
    node(plane, "vap-node-a").await;
    node(plane, "vap-node-b").await;
    let pod_a = agent_pod(plane, "vap-agent-a", "vap-node-a").await;
    let pod_b = agent_pod(plane, "vap-agent-b", "vap-node-b").await;
    let agent_a = client_as(plane, AGENT, Some(&pod_a)).await;
    let run_a = run(plane, "vap-action", "vap-node-a").await.name_any();
    let run_b = run(plane, "vap-action", "vap-node-b").await.name_any();

    // The identity the policy reads: the node of the pod the token is
    // bound to.
    let review = allowed(
        "review itself",
        Api::<SelfSubjectReview>::all(agent_a.clone())
            .create(&PostParams::default(), &SelfSubjectReview::default())
            .await,
    );
    let user = review.status.unwrap().user_info.unwrap();
    assert_eq!(
        user.username.as_deref(),
        Some("system:serviceaccount:hostaction-system:hostaction-agent")
    );
    assert_eq!(
        user.extra.unwrap_or_default()["authentication.kubernetes.io/node-name"],
        vec!["vap-node-a".to_owned()]
    );

    // A policy is enforced a moment after it is created: wait until it
    // refuses agent A on node B's run.
    let runs_a: Api<HostActionRun> = Api::all(agent_a.clone());
    let started = Instant::now();
    let message = loop {
        let result = runs_a
            .patch_status(
                &run_b,
                &PatchParams::default(),
                &finished("Failed", "written by node A's agent"),
            )
            .await;
        match result {
            Err(kube::Error::Api(status)) if status.code == 403 => break status.message,
            other => {
                assert!(
                    started.elapsed() < POLICY_ACTIVE_TIMEOUT,
                    "the policy did not refuse in {POLICY_ACTIVE_TIMEOUT:?}: {:?}",
                    other.map(|_| "the write was allowed")
                );
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
        }
    };
    assert!(message.contains(POLICY_MESSAGE), "{message}");
    assert!(message.contains("hostaction-agent-own-node"), "{message}");

    // Its own node's run: allowed.
    let written = allowed(
        "agent A writes its own run's status",
        runs_a
            .patch_status(
                &run_a,
                &PatchParams::default(),
                &finished("Succeeded", "done on A"),
            )
            .await,
    );
    assert_eq!(
        written.status.unwrap().message.as_deref(),
        Some("done on A")
    );
    // A whole-status PUT on node B's run: refused the same way.
    let mut stored = runs_a.get(&run_b).await.unwrap();
    stored.status = Some(Default::default());
    let message = forbidden(
        "agent A replaces node B's run status",
        runs_a
            .replace_status(&run_b, &PostParams::default(), &stored)
            .await,
    );
    assert!(message.contains(POLICY_MESSAGE), "{message}");

    // Node B's agent writes node B's run, and not node A's.
    let runs_b: Api<HostActionRun> = Api::all(client_as(plane, AGENT, Some(&pod_b)).await);
    allowed(
        "agent B writes its own run's status",
        runs_b
            .patch_status(
                &run_b,
                &PatchParams::default(),
                &finished("Succeeded", "done on B"),
            )
            .await,
    );
    let message = forbidden(
        "agent B writes node A's run status",
        runs_b
            .patch_status(
                &run_a,
                &PatchParams::default(),
                &finished("Failed", "written by node B's agent"),
            )
            .await,
    );
    assert!(message.contains(POLICY_MESSAGE), "{message}");

    // The agent's account with a token bound to no pod has no node: refused
    // on every run.
    let unbound: Api<HostActionRun> = Api::all(client_as(plane, AGENT, None).await);
    let message = forbidden(
        "an unbound agent token writes a run's status",
        unbound
            .patch_status(
                &run_a,
                &PatchParams::default(),
                &finished("Failed", "written with no node"),
            )
            .await,
    );
    assert!(message.contains(POLICY_MESSAGE), "{message}");

    // Nothing the refused writes said reached a run.
    let admin_runs: Api<HostActionRun> = Api::all(admin(plane));
    let a = admin_runs.get(&run_a).await.unwrap().status.unwrap();
    let b = admin_runs.get(&run_b).await.unwrap().status.unwrap();
    assert_eq!(a.message.as_deref(), Some("done on A"));
    assert_eq!(b.message.as_deref(), Some("done on B"));
}

#[tokio::test]
async fn kubectl_shows_printer_columns_conditions_and_events() {
    let (plane, _) = cluster();
    let nodes = ["show-node-1", "show-node-2", "show-node-3"];
    for name in nodes {
        node(plane, name).await;
    }
    let admin_client = admin(plane);
    let action = admin_action(plane, "show-cni").await;
    let digest = format!("sha256:{}", "ab".repeat(32));

    // Three runs as the controller makes them, finished as agents report:
    // two succeeded, one failed (the example allows no failure).
    let runs: Api<HostActionRun> = Api::all(admin_client.clone());
    for (node_name, phase, message) in [
        ("show-node-1", "Succeeded", "installed 3 plugins"),
        ("show-node-2", "Succeeded", "installed 3 plugins"),
        (
            "show-node-3",
            "Failed",
            "write /opt/cni/bin/bridge: disk full",
        ),
    ] {
        let name = run(plane, "show-cni", node_name).await.name_any();
        runs.patch_status(&name, &PatchParams::default(), &finished(phase, message))
            .await
            .unwrap();
    }
    // The status the controller computes from them (its pure planner), as
    // it writes it.
    let node_objects: Vec<Node> = {
        let api: Api<Node> = Api::all(admin_client.clone());
        let mut list = Vec::new();
        for name in nodes {
            list.push(api.get(name).await.unwrap());
        }
        list
    };
    let run_objects = runs
        .list(&ListParams::default().labels("hostaction.dev/action=show-cni"))
        .await
        .unwrap()
        .items;
    let step = hostaction_controller::rollout::next_step(
        &action,
        &digest,
        &node_objects.iter().collect::<Vec<_>>(),
        &run_objects.iter().collect::<Vec<_>>(),
        false,
        Timestamp::now(),
    )
    .unwrap();
    let mut status: HostActionStatus = step.status;
    hostaction_controller::rollout::with_transition_times(
        &mut status.conditions,
        &[],
        Timestamp::now(),
    );
    let actions: Api<HostAction> = Api::all(admin_client.clone());
    actions
        .patch_status(
            "show-cni",
            &PatchParams::default(),
            &Patch::Merge(json!({"status": status})),
        )
        .await
        .unwrap();
    // And its Events, by the Recorder it publishes with.
    let recorder = Recorder::new(
        admin_client.clone(),
        Reporter {
            controller: hostaction_controller::NAME.to_owned(),
            instance: Some("show-test".into()),
        },
    );
    let reference = action.object_ref(&());
    for (type_, reason, note) in [
        (
            EventType::Normal,
            "Resolved",
            format!("registry.example/actions/cni-install:v1 is {digest}"),
        ),
        (
            EventType::Warning,
            "FailureBudgetExceeded",
            "1 runs failed; rollout.maxFailures is 0".to_owned(),
        ),
    ] {
        let event = Event {
            type_,
            reason: reason.into(),
            note: Some(note),
            action: "Reconcile".into(),
            secondary: None,
        };
        recorder.publish(&event, &reference).await.unwrap();
    }

    // kubectl get ha: the columns, and the counts.
    let get = plane.kubectl_ok(&["get", "ha", "show-cni"]);
    let (header, row) = two_lines(&get);
    assert_eq!(
        words(header),
        [
            "NAME",
            "MODULE",
            "MODE",
            "SELECTED",
            "SUCCEEDED",
            "FAILED",
            "AGE"
        ],
        "{get}"
    );
    assert_eq!(
        words(row)[..6],
        [
            "show-cni",
            "registry.example/actions/cni-install:v1",
            "apply",
            "3",
            "2",
            "1"
        ],
        "{get}"
    );
    // -o wide adds the resolved digest.
    let wide = plane.kubectl_ok(&["get", "ha", "show-cni", "-o", "wide"]);
    let (header, row) = two_lines(&wide);
    assert_eq!(
        words(header),
        [
            "NAME",
            "MODULE",
            "MODE",
            "SELECTED",
            "SUCCEEDED",
            "FAILED",
            "DIGEST",
            "AGE"
        ],
        "{wide}"
    );
    assert_eq!(words(row)[6], digest, "{wide}");

    // kubectl get har -o wide: node, action, phase, changed; and wide, the
    // generation, attempts and the message.
    let har = plane.kubectl_ok(&[
        "get",
        "har",
        "-o",
        "wide",
        "-l",
        "hostaction.dev/action=show-cni",
    ]);
    let mut lines = har.lines();
    assert_eq!(
        words(lines.next().unwrap()),
        [
            "NAME",
            "NODE",
            "ACTION",
            "PHASE",
            "CHANGED",
            "AGE",
            "GENERATION",
            "ATTEMPTS",
            "MESSAGE"
        ],
        "{har}"
    );
    let rows: Vec<Vec<String>> = lines.map(words).collect();
    assert_eq!(rows.len(), 3, "{har}");
    let failed = rows
        .iter()
        .find(|r| r[0] == "show-cni.show-node-3.g1")
        .unwrap_or_else(|| panic!("node 3's run in:\n{har}"));
    assert_eq!(failed[1..5], ["show-node-3", "show-cni", "Failed", "false"]);
    assert_eq!(failed[6..8], ["1", "1"]);
    assert_eq!(
        failed[8..].join(" "),
        "write /opt/cni/bin/bridge: disk full"
    );
    let succeeded = rows
        .iter()
        .find(|r| r[0] == "show-cni.show-node-1.g1")
        .unwrap_or_else(|| panic!("node 1's run in:\n{har}"));
    assert_eq!(succeeded[3..5], ["Succeeded", "true"]);

    // kubectl describe ha: the status with its conditions, and the Events.
    let describe = plane.kubectl_ok(&["describe", "ha", "show-cni"]);
    // Each line with its spacing collapsed; a condition's fields are
    // printed in name order, one a line.
    let flat: String = describe
        .lines()
        .map(|l| words(l).join(" "))
        .collect::<Vec<_>>()
        .join("\n");
    for expected in [
        "Name: show-cni".to_owned(),
        "Kind: HostAction".to_owned(),
        format!("Resolved Digest: {digest}"),
        "Selected Nodes: 3".to_owned(),
        "Conditions:".to_owned(),
        "Message: 1 runs failed; rollout.maxFailures is 0\nObserved Generation: 1\n\
         Reason: FailureBudgetExceeded\nStatus: True\nType: Failed"
            .to_owned(),
        "Message: 2 of 3 selected nodes succeeded\nObserved Generation: 1\n\
         Reason: RunsFailed\nStatus: False\nType: Complete"
            .to_owned(),
        "Events:".to_owned(),
    ] {
        assert!(flat.contains(&expected), "{expected:?} in:\n{describe}");
    }
    let events = describe.split("Events:").nth(1).unwrap_or_default();
    let event_rows: Vec<Vec<String>> = events.lines().map(words).collect();
    let has_event = |type_: &str, reason: &str, note: &str| {
        event_rows.iter().any(|r| {
            r.first().map(String::as_str) == Some(type_)
                && r.get(1).map(String::as_str) == Some(reason)
                && r.iter().any(|w| w.starts_with(hostaction_controller::NAME))
                && r.join(" ").ends_with(note)
        })
    };
    assert!(
        has_event(
            "Warning",
            "FailureBudgetExceeded",
            "1 runs failed; rollout.maxFailures is 0"
        ),
        "{describe}"
    );
    assert!(
        has_event("Normal", "Resolved", &format!("is {digest}")),
        "{describe}"
    );
}

/// Now, in whole seconds (as Kubernetes writes times).
/// A table's header and its one row.
fn two_lines(table: &str) -> (&str, &str) {
    let lines: Vec<&str> = table.lines().collect();
    assert_eq!(lines.len(), 2, "a header and one row:\n{table}");
    (lines[0], lines[1])
}

fn words(line: &str) -> Vec<String> {
    line.split_whitespace().map(str::to_owned).collect()
}

/// Kills the processes it holds by pid when dropped.
struct Children(Vec<std::process::Child>);

impl Drop for Children {
    fn drop(&mut self) {
        for child in &mut self.0 {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// The real `hostaction-controller` and `hostaction agent`, each with its
/// manifests' ServiceAccount token only (the agent's bound to a Pod on its
/// node), on a cluster of their own: the controller takes its Lease, adds
/// its finalizer, creates the node's run, and reports; the agent watches
/// the run and writes its status past the admission policy; the controller
/// turns that into conditions and an Event; deleting the action, it deletes
/// the run and lets the action go. No request of either is refused.
#[tokio::test]
async fn the_real_controller_and_agent_do_their_jobs_with_the_manifests_accounts() {
    let plane = ControlPlane::start();
    plane.apply_and_wait_for_crds(&workspace().join("manifests"));
    node(&plane, "e2e-node").await;
    let pod = agent_pod(&plane, "e2e-agent", "e2e-node").await;
    let agent_config = plane.token_kubeconfig("agent", &token(&plane, AGENT, Some(&pod)).await);
    let controller_config =
        plane.token_kubeconfig("controller", &token(&plane, CONTROLLER, None).await);

    // A module on a registry that refuses connections: the agent's run
    // fails fast, and says why in the run's status.
    let mut action = example_action("e2e-action");
    action.spec.module = format!("127.0.0.1:1/actions/cni-install@sha256:{}", "1".repeat(64));
    action.spec.grants = Default::default();
    let admin_actions: Api<HostAction> = Api::all(admin(&plane));
    admin_actions
        .create(&PostParams::default(), &action)
        .await
        .unwrap();

    let work = plane.dir().join("e2e");
    std::fs::create_dir_all(work.join("root")).unwrap();
    let start =
        |program: std::path::PathBuf, args: &[&str], kubeconfig: &std::path::Path, log: &str| {
            let log = std::fs::File::create(work.join(log)).unwrap();
            std::process::Command::new(program)
                .args(args)
                .env("KUBECONFIG", kubeconfig)
                .env("HOSTACTION_LOG", "info,kube=warn,hyper=warn")
                .stdin(std::process::Stdio::null())
                .stdout(log.try_clone().unwrap())
                .stderr(log)
                .spawn()
                .unwrap()
        };
    let root = work.join("root").display().to_string();
    let cache = work.join("cache").display().to_string();
    let _children = Children(vec![
        // The controller is its own binary, as its Deployment runs it.
        start(
            hostaction_tests::controller_bin(),
            &[
                "--lease-namespace",
                NAMESPACE,
                "--identity",
                "e2e-0",
                "--plain-http",
                "--metrics-addr",
                "127.0.0.1:0",
                "--log-format",
                "text",
            ],
            &controller_config,
            "controller.log",
        ),
        start(
            hostaction_tests::hostaction_bin(),
            &[
                "agent",
                "--node-name",
                "e2e-node",
                "--plain-http",
                "--metrics-addr",
                "127.0.0.1:0",
                "--host-root",
                &root,
                "--cache-dir",
                &cache,
                "--log-format",
                "text",
            ],
            &agent_config,
            "agent.log",
        ),
    ]);
    let logs = || {
        let read = |name: &str| std::fs::read_to_string(work.join(name)).unwrap_or_default();
        format!(
            "controller:\n{}\nagent:\n{}",
            read("controller.log"),
            read("agent.log")
        )
    };

    // The run fails on the node; the controller reports the failure budget
    // spent.
    let started = Instant::now();
    let status = loop {
        let stored = admin_actions.get("e2e-action").await.unwrap();
        let done = stored.status.as_ref().is_some_and(|s| {
            s.counts.failed == 1
                && s.conditions
                    .iter()
                    .any(|c| c.type_ == "Failed" && c.status == "True")
        });
        if done {
            break stored.status.unwrap();
        }
        assert!(
            started.elapsed() < Duration::from_secs(120),
            "no failed run reported in 120 s: {:?}\n{}",
            stored.status,
            logs()
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    };
    assert_eq!(status.selected_nodes, 1);
    let stored = admin_actions.get("e2e-action").await.unwrap();
    assert_eq!(
        stored.metadata.finalizers.as_deref(),
        Some(&["hostaction.dev/runs".to_owned()][..])
    );
    let runs: Api<HostActionRun> = Api::all(admin(&plane));
    let run = runs.get("e2e-action.e2e-node.g1").await.unwrap();
    let run_status = run.status.unwrap();
    assert_eq!(run_status.phase, hostaction_crds::RunPhase::Failed);
    assert!(
        run_status
            .message
            .as_deref()
            .unwrap_or_default()
            .contains("127.0.0.1:1"),
        "{run_status:?}"
    );
    // Written through the status subresource (the admin wrote none here;
    // the controller's account may not).
    let writers: Vec<(String, Option<String>)> = run
        .metadata
        .managed_fields
        .unwrap_or_default()
        .into_iter()
        .map(|f| (f.manager.unwrap_or_default(), f.subresource))
        .collect();
    assert!(
        writers
            .iter()
            .any(|(_, sub)| sub.as_deref() == Some("status")),
        "{writers:?}"
    );
    let lease = Api::<Lease>::namespaced(admin(&plane), NAMESPACE)
        .get(CONTROLLER)
        .await
        .unwrap();
    assert_eq!(
        lease.spec.and_then(|s| s.holder_identity).as_deref(),
        Some("e2e-0")
    );
    let events = plane.kubectl_ok(&["get", "events", "-n", "default"]);
    assert!(events.contains("FailureBudgetExceeded"), "{events}");

    // Deleting the action: the controller deletes its run, then lets it go.
    admin_actions
        .delete("e2e-action", &DeleteParams::default())
        .await
        .unwrap();
    let started = Instant::now();
    loop {
        let action_gone = matches!(
            admin_actions.get("e2e-action").await,
            Err(kube::Error::Api(s)) if s.code == 404
        );
        let run_gone = matches!(
            runs.get("e2e-action.e2e-node.g1").await,
            Err(kube::Error::Api(s)) if s.code == 404
        );
        if action_gone && run_gone {
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "the action or its run is still there after 60 s\n{}",
            logs()
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    let logs = logs();
    for refused in ["forbidden", "Forbidden", "403"] {
        assert!(!logs.contains(refused), "{refused:?} in:\n{logs}");
    }
}
