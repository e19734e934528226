//! Against a real kube-apiserver and etcd built from source
//! (`hostaction_tests::kube_control_plane`): `manifests/crds.yaml` applied as a
//! user applies it, and the CRDs' CEL rules enforced by the API server itself.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use hostaction_crds::{HostAction, HostActionRun};
use hostaction_tests::kube_control_plane::ControlPlane;
use hostaction_tests::workspace;
use kube::api::{Api, DeleteParams, Patch, PatchParams, PostParams};
use serde_json::{Value, json};

/// The CRDs from `manifests/crds.yaml`, applied server-side with kubectl and
/// established (once per test binary).
fn control_plane_with_crds() -> &'static ControlPlane {
    static CRDS: std::sync::OnceLock<()> = std::sync::OnceLock::new();
    let plane = ControlPlane::shared();
    CRDS.get_or_init(|| {
        plane.apply_and_wait_for_crds(&workspace().join("manifests/crds.yaml"));
    });
    plane
}

/// `manifests/examples/cni-install.yaml`, renamed.
fn example_action(name: &str) -> Value {
    let text = std::fs::read_to_string(workspace().join("manifests/examples/cni-install.yaml"))
        .expect("read the example");
    let mut action: Value = serde_yaml_ng::from_str(&text).expect("the example is YAML");
    action["metadata"]["name"] = json!(name);
    action
}

/// The API server's refusal of `result`: its code and message.
fn refusal<T: std::fmt::Debug>(result: Result<T, kube::Error>) -> (u16, String) {
    match result {
        Err(kube::Error::Api(status)) => (status.code, status.message),
        other => panic!("expected the API server to refuse, got {other:?}"),
    }
}

#[tokio::test]
async fn crds_apply_and_the_api_server_enforces_their_cel_rules() {
    let plane = control_plane_with_crds();
    let kubectl_get = plane.kubectl_ok(&["get", "crd", "-o", "name"]);
    assert!(
        kubectl_get
            .contains("customresourcedefinition.apiextensions.k8s.io/hostactions.hostaction.dev")
            && kubectl_get.contains("hostactionruns.hostaction.dev"),
        "{kubectl_get}"
    );
    let actions: Api<HostAction> = Api::all(plane.client());
    let post = PostParams::default();

    // The README's example is accepted as it is.
    let valid: HostAction =
        serde_json::from_value(example_action("real-cel-valid")).expect("a HostAction");
    let created = actions
        .create(&post, &valid)
        .await
        .expect("create the example");
    assert_eq!(created.spec, valid.spec);

    // A CEL rule (rollout.maxConcurrent at least 1), refused with its message.
    let mut invalid = example_action("real-cel-invalid");
    invalid["spec"]["rollout"]["maxConcurrent"] = json!(0);
    let invalid: HostAction = serde_json::from_value(invalid).expect("a HostAction");
    let (code, message) = refusal(actions.create(&post, &invalid).await);
    assert_eq!(code, 422, "{message}");
    assert!(
        message.contains("maxConcurrent is a count of at least 1"),
        "{message}"
    );
    // A module that is a file path (the module pattern's CEL rule).
    let mut path_module = example_action("real-cel-path-module");
    path_module["spec"]["module"] = json!("/tmp/evil.wasm");
    let path_module: HostAction = serde_json::from_value(path_module).expect("a HostAction");
    let (code, message) = refusal(actions.create(&post, &path_module).await);
    assert_eq!(code, 422, "{message}");
    assert!(message.contains("never a file path or URL"), "{message}");

    // A run's spec is immutable (a transition rule: self == oldSelf).
    let runs: Api<HostActionRun> = Api::all(plane.client());
    let digest = "0".repeat(64);
    let run: HostActionRun = serde_json::from_value(json!({
        "apiVersion": "hostaction.dev/v1alpha1",
        "kind": "HostActionRun",
        "metadata": {"name": "real-cel-valid.node-a.g1"},
        "spec": {
            "action": "real-cel-valid",
            "generation": 1,
            "nodeName": "node-a",
            "module": format!("registry.example/actions/cni-install@sha256:{digest}"),
            "timeoutSeconds": 60,
        },
    }))
    .expect("a HostActionRun");
    runs.create(&post, &run).await.expect("create a run");
    let change = Patch::Merge(json!({"spec": {"nodeName": "node-b"}}));
    let (code, message) = refusal(
        runs.patch("real-cel-valid.node-a.g1", &PatchParams::default(), &change)
            .await,
    );
    assert_eq!(code, 422, "{message}");
    assert!(message.contains("a run's spec is immutable"), "{message}");

    // A user without a role binding may not even list them (RBAC is on).
    let nobody = kube::Client::try_from(plane.user_config("nobody", None)).unwrap();
    let (code, message) = refusal(
        Api::<HostAction>::all(nobody)
            .list(&Default::default())
            .await,
    );
    assert_eq!(code, 403, "{message}");

    let delete = DeleteParams::default();
    runs.delete("real-cel-valid.node-a.g1", &delete)
        .await
        .expect("delete the run");
    actions
        .delete("real-cel-valid", &delete)
        .await
        .expect("delete the action");
}

#[test]
fn a_dropped_control_plane_kills_its_processes() {
    let plane = ControlPlane::start();
    let pids = plane.pids();
    assert_eq!(pids.len(), 2, "kube-apiserver and etcd");
    let dir = plane.dir().to_path_buf();
    drop(plane);
    for pid in pids {
        // Reaped by the drop: no process (nor zombie) with that pid is ours.
        let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
        let ppid = status
            .lines()
            .find_map(|l| l.strip_prefix("PPid:"))
            .map(|p| p.trim().to_owned());
        assert_ne!(
            ppid,
            Some(std::process::id().to_string()),
            "pid {pid} is still a child of this test"
        );
    }
    assert!(!dir.exists(), "{} was not removed", dir.display());
}
