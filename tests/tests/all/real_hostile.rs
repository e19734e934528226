//! Hostile data against the cluster half, on a real kube-apiserver and etcd
//! (`hostaction_tests::kube_control_plane`) with `manifests/` applied: what a
//! compromised agent (or kubelet) on one node can write, and what the real
//! controller must survive reading.
//!
//! - An agent may write its own run's status; the API server must refuse a
//!   time in it that the controller (k8s-openapi, jiff) cannot read: one
//!   unreadable run fails the controller's list of every run, and with it
//!   every rollout.
//! - A node's kubelet may write its own Node's status: a heartbeat on the
//!   last day of year 9999 (valid for the API server, out of jiff's range)
//!   must not stop the controller either; nor may a run status stored before
//!   the CRD refused bad times.
//! - The admission policy must hold for the agent's account whatever
//!   namespace it is installed in (a kustomize `namespace:` renames it).

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::sync::OnceLock;
use std::time::{Duration, Instant};

use hostaction_crds::{HostAction, HostActionRun};
use hostaction_tests::kube_control_plane::{ControlPlane, now, service_account_token};
use hostaction_tests::workspace;
use k8s_openapi::api::core::v1::{Node, Pod};
use kube::api::{Api, ListParams, Patch, PatchParams, PostParams};
use kube::{Client, ResourceExt};
use serde_json::{Value, json};

const NAMESPACE: &str = "hostaction-system";
const AGENT: &str = "hostaction-agent";
const CONTROLLER: &str = "hostaction-controller";
/// The ValidatingAdmissionPolicy's message (`manifests/admission-policy.yaml`).
const POLICY_MESSAGE: &str = "an agent may write the status of its own node's runs only";
/// How long the API server may take to start enforcing a new policy.
const POLICY_ACTIVE_TIMEOUT: Duration = Duration::from_secs(60);
/// How long the real controller may take to roll a one-run action out.
const ROLLOUT_TIMEOUT: Duration = Duration::from_secs(90);

/// This module's control plane with `manifests/` applied once.
fn cluster() -> &'static ControlPlane {
    static APPLIED: OnceLock<()> = OnceLock::new();
    // This module's own: the other modules' objects and policies stay out.
    static PLANE: OnceLock<ControlPlane> = OnceLock::new();
    let plane = PLANE.get_or_init(ControlPlane::start);
    APPLIED.get_or_init(|| {
        plane.apply_and_wait_for_crds(&workspace().join("manifests"));
    });
    plane
}

/// A Ready Node object (no kubelet behind it) whose Ready condition's
/// heartbeat is `heartbeat` (written by kubectl: k8s-openapi cannot read
/// every heartbeat the API server takes).
async fn node(plane: &ControlPlane, name: &str, heartbeat: &str) {
    let node: Node = serde_json::from_value(json!({
        "apiVersion": "v1", "kind": "Node", "metadata": {"name": name},
    }))
    .unwrap();
    let nodes: Api<Node> = Api::all(plane.client());
    nodes.create(&PostParams::default(), &node).await.unwrap();
    let ready = json!({"status": {"conditions": [{
        "type": "Ready", "status": "True", "reason": "KubeletReady",
        "message": "no kubelet: a test's node",
        "lastHeartbeatTime": heartbeat,
        "lastTransitionTime": now(),
    }]}});
    plane.kubectl_ok(&[
        "patch",
        "node",
        name,
        "--subresource=status",
        "--type=merge",
        &format!("-p={ready}"),
    ]);
}

/// A Pod of `account` in `namespace` scheduled on `node_name` (it stays
/// Pending: no kubelet), and a token of `account` bound to it: the API
/// server puts the pod's node in the token's identity.
async fn pod_token(
    plane: &ControlPlane,
    namespace: &str,
    account: &str,
    node_name: &str,
) -> String {
    let admin = plane.client();
    let pod: Pod = serde_json::from_value(json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": format!("{account}-{node_name}"), "namespace": namespace},
        "spec": {
            "serviceAccountName": account,
            "nodeName": node_name,
            "containers": [{"name": "agent", "image": "registry.example/hostaction/hostaction:0.1.0"}],
        },
    }))
    .unwrap();
    let pod = Api::<Pod>::namespaced(admin.clone(), namespace)
        .create(&PostParams::default(), &pod)
        .await
        .unwrap();
    token(plane, namespace, account, Some(&pod)).await
}

async fn token(plane: &ControlPlane, namespace: &str, account: &str, pod: Option<&Pod>) -> String {
    service_account_token(&plane.client(), namespace, account, pod)
        .await
        .unwrap_or_else(|e| panic!("{e}"))
}

fn client_with(plane: &ControlPlane, token: &str) -> Client {
    Client::try_from(plane.token_config(token)).unwrap()
}

/// A run of `action` for `node_name`, created by the admin.
async fn run(client: &Client, action: &str, node_name: &str) -> String {
    let run: HostActionRun = serde_json::from_value(json!({
        "apiVersion": "hostaction.dev/v1alpha1", "kind": "HostActionRun",
        "metadata": {"name": format!("{action}.{node_name}.g1")},
        "spec": {
            "action": action, "generation": 1, "nodeName": node_name,
            "module": format!("registry.example/actions/cni-install@sha256:{}", "0".repeat(64)),
            "timeoutSeconds": 60,
        },
    }))
    .unwrap();
    Api::<HostActionRun>::all(client.clone())
        .create(&PostParams::default(), &run)
        .await
        .unwrap()
        .name_any()
}

fn finished_at(at: &str) -> Patch<Value> {
    Patch::Merge(json!({"status": {"phase": "Succeeded", "startedAt": at, "finishedAt": at}}))
}

/// Date-times the API server's `format: date-time` takes (or took, before
/// the CRD said which) that k8s-openapi's `Time` cannot parse (all but the
/// lowercase one, which is not the form the CRD asks for either).
const UNREADABLE_TIMES: [&str; 5] = [
    "2024-01-01T00:00:00x5Z",
    "2024-01-01t00:00:00z",
    "2024-01-01T00:00:00+99:99",
    "9999-12-31T23:59:59Z",
    "2024-01-01T00:00:00.1234567890123456789Z",
];

/// An agent writes its own run's status (the policy lets it), but no time
/// there the controller could not read: each is refused as invalid (422),
/// and every run still lists with the crate's types.
#[tokio::test]
async fn an_agent_cannot_store_a_time_the_controller_cannot_read() {
    let plane = cluster();
    let admin = plane.client();
    node(plane, "time-node-a", &now()).await;
    let agent = client_with(
        plane,
        &pod_token(plane, NAMESPACE, AGENT, "time-node-a").await,
    );
    let name = run(&admin, "time-action", "time-node-a").await;
    let runs: Api<HostActionRun> = Api::all(agent);
    runs.patch_status(&name, &PatchParams::default(), &finished_at(&now()))
        .await
        .unwrap_or_else(|e| panic!("the agent writes its own run's status: {e}"));
    for at in UNREADABLE_TIMES {
        match runs
            .patch_status(&name, &PatchParams::default(), &finished_at(at))
            .await
        {
            Err(kube::Error::Api(status)) if status.code == 422 => {}
            other => panic!("finishedAt {at:?}: expected 422 Invalid, got {other:?}"),
        }
    }
    Api::<HostActionRun>::all(admin)
        .list(&ListParams::default())
        .await
        .unwrap_or_else(|e| panic!("the runs no longer list with the crate's types: {e}"));
}

/// The real controller (with the manifests' account) rolls an action out
/// to two nodes while one node's kubelet wrote a heartbeat in year 9999's
/// last day and a run stored before the CRD refused bad times carries one
/// the controller cannot parse.
#[tokio::test]
async fn unreadable_times_do_not_stop_the_controller() {
    let plane = ControlPlane::start();
    plane.apply_and_wait_for_crds(&workspace().join("manifests"));
    let admin = plane.client();
    node(&plane, "far-future", "9999-12-31T23:59:59Z").await;
    node(&plane, "plain", &now()).await;
    // A run status stored under a CRD that took any `format: date-time`
    // (an older one; changed fields are validated, stored ones are kept).
    for field in ["startedAt", "finishedAt"] {
        let _ = plane.kubectl(&[
            "patch",
            "crd",
            "hostactionruns.hostaction.dev",
            "--type=json",
            &format!(
                r#"-p=[{{"op":"remove","path":"/spec/versions/0/schema/openAPIV3Schema/properties/status/properties/{field}/pattern"}}]"#
            ),
        ]);
    }
    let stale = run(&admin, "stale", "plain").await;
    let started = Instant::now();
    loop {
        let written = Api::<HostActionRun>::all(admin.clone())
            .patch_status(
                &stale,
                &PatchParams::default(),
                &finished_at("2024-01-01T00:00:00x5Z"),
            )
            .await;
        match written {
            Ok(_) => break,
            Err(e) => {
                assert!(
                    started.elapsed() < Duration::from_secs(60),
                    "the CRD still refuses the time: {e}"
                );
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
        }
    }
    let token = token(&plane, NAMESPACE, CONTROLLER, None).await;
    let config = plane.token_kubeconfig("controller", &token);
    let log = plane.dir().join("controller.log");
    let _controller = Killed(
        std::process::Command::new(hostaction_tests::controller_bin())
            .args([
                "--lease-namespace",
                NAMESPACE,
                "--identity",
                "hostile-0",
                "--metrics-addr",
                "127.0.0.1:0",
                "--log-format",
                "text",
            ])
            .env("KUBECONFIG", &config)
            .env("HOSTACTION_LOG", "info")
            .stdin(std::process::Stdio::null())
            .stdout(std::fs::File::create(&log).unwrap())
            .stderr(std::fs::File::create(plane.dir().join("controller.err")).unwrap())
            .spawn()
            .unwrap(),
    );

    let action: HostAction = serde_json::from_value(json!({
        "apiVersion": "hostaction.dev/v1alpha1", "kind": "HostAction",
        "metadata": {"name": "fresh"},
        "spec": {
            "module": format!("registry.example/actions/cni-install@sha256:{}", "1".repeat(64)),
            "rollout": {"maxConcurrent": 10},
        },
    }))
    .unwrap();
    let actions: Api<HostAction> = Api::all(admin.clone());
    actions
        .create(&PostParams::default(), &action)
        .await
        .unwrap();
    let runs: Api<HostActionRun> = Api::all(admin.clone());
    let started = Instant::now();
    loop {
        let created = runs
            .list(&ListParams::default())
            .await
            .map(|list| {
                list.items
                    .iter()
                    .filter(|r| r.spec.action == "fresh")
                    .count()
            })
            .unwrap_or(0);
        let selected = actions
            .get("fresh")
            .await
            .ok()
            .and_then(|a| a.status)
            .map(|s| s.selected_nodes);
        if created == 2 && selected == Some(2) {
            break;
        }
        assert!(
            started.elapsed() < ROLLOUT_TIMEOUT,
            "the controller created {created} of 2 runs and reports {selected:?} selected \
             nodes in {ROLLOUT_TIMEOUT:?}; its log:\n{}{}",
            std::fs::read_to_string(&log).unwrap_or_default(),
            std::fs::read_to_string(plane.dir().join("controller.err")).unwrap_or_default()
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

/// The agent's account installed in another namespace (as a kustomize
/// `namespace:` does, with its RBAC): its pod-bound token is still kept to
/// its own node's runs.
#[tokio::test]
async fn the_policy_holds_for_an_agent_account_in_another_namespace() {
    let plane = cluster();
    let admin = plane.client();
    let ns = "renamed-hostaction";
    plane.kubectl_ok(&["create", "namespace", ns]);
    plane.kubectl_ok(&["create", "serviceaccount", AGENT, "-n", ns]);
    plane.kubectl_ok(&[
        "create",
        "clusterrolebinding",
        "renamed-hostaction-agent",
        "--clusterrole=hostaction-agent",
        &format!("--serviceaccount={ns}:{AGENT}"),
    ]);
    node(plane, "ns-node-a", &now()).await;
    node(plane, "ns-node-b", &now()).await;
    let agent = client_with(plane, &pod_token(plane, ns, AGENT, "ns-node-a").await);
    let mine = run(&admin, "ns-action", "ns-node-a").await;
    let theirs = run(&admin, "ns-action", "ns-node-b").await;
    let runs: Api<HostActionRun> = Api::all(agent);
    runs.patch_status(&mine, &PatchParams::default(), &finished_at(&now()))
        .await
        .unwrap_or_else(|e| panic!("the agent writes its own run's status: {e}"));
    // A policy is enforced a moment after it is created: wait until it
    // refuses node B's run (without the fix it never does).
    let started = Instant::now();
    let message = loop {
        match runs
            .patch_status(&theirs, &PatchParams::default(), &finished_at(&now()))
            .await
        {
            Err(kube::Error::Api(status)) if status.code == 403 => break status.message,
            other => assert!(
                started.elapsed() < POLICY_ACTIVE_TIMEOUT,
                "node B's run written by node A's agent of {ns} for {POLICY_ACTIVE_TIMEOUT:?}: {:?}",
                other.map(|_| "allowed")
            ),
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    };
    assert!(message.contains(POLICY_MESSAGE), "{message}");
}

/// Kills the process by pid when dropped.
struct Killed(std::process::Child);

impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}
