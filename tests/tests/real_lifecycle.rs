//! A HostAction's end on a real kube-apiserver and etcd, with the garbage
//! collector of a real kube-controller-manager (all built from source,
//! `hostaction_tests::kube_control_plane`): deleting an action while the
//! controller runs deletes its runs first (its finalizer), then the action;
//! and when the controller is gone (uninstalled, or it never comes back), a
//! user who removes the finalizer leaves nothing behind — the garbage
//! collector deletes the runs by their owner reference, which only a real
//! collector can show to be right (uid, kind, apiVersion).

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use hostaction_crds::{HostAction, HostActionRun};
use hostaction_tests::kube_control_plane::{ControlPlane, create_ready_node};
use hostaction_tests::workspace;
use kube::ResourceExt;
use kube::api::{Api, DeleteParams, ListParams, Patch, PatchParams, PostParams};
use serde_json::json;

/// A pinned module: the controller needs no registry, and no agent runs it.
const MODULE: &str = "registry.example/actions/cni-install@sha256:\
                      0000000000000000000000000000000000000000000000000000000000000000";
/// How long a loaded 2-core machine may take for what is waited on here
/// (the garbage collector starts by listing every resource kind).
const PATIENCE: Duration = Duration::from_secs(120);

/// An action on the test's two nodes, both at once.
async fn action(actions: &Api<HostAction>, name: &str) -> HostAction {
    let action: HostAction = serde_json::from_value(json!({
        "apiVersion": "hostaction.dev/v1alpha1",
        "kind": "HostAction",
        "metadata": {"name": name},
        "spec": {
            "module": MODULE,
            "grants": {"files": {"write": ["/opt/cni/bin"]}},
            "nodeSelector": {"matchLabels": {"lifecycle": "yes"}},
            "rollout": {"maxConcurrent": 2},
        },
    }))
    .unwrap();
    actions
        .create(&PostParams::default(), &action)
        .await
        .unwrap()
}

/// The names of `action`'s runs.
async fn runs_of(runs: &Api<HostActionRun>, action: &str) -> Vec<String> {
    let selector = format!("hostaction.dev/action={action}");
    let list = runs
        .list(&ListParams::default().labels(&selector))
        .await
        .unwrap();
    list.items.iter().map(ResourceExt::name_any).collect()
}

/// Polls `done` until it holds, or panics naming `what` after [`PATIENCE`].
async fn wait_until<F: Future<Output = bool>>(what: &str, mut done: impl FnMut() -> F) {
    let started = Instant::now();
    while !done().await {
        assert!(
            started.elapsed() < PATIENCE,
            "not within {PATIENCE:?}: {what}"
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

/// The real controller (`hostaction-controller`), as the admin.
fn controller(plane: &ControlPlane) -> Child {
    let log = std::fs::File::create(plane.dir().join("controller.log")).unwrap();
    Command::new(hostaction_tests::controller_bin())
        .args(["--no-leader-election", "--log-format", "text"])
        .args(["--metrics-addr", "127.0.0.1:0"])
        .env("KUBECONFIG", plane.kubeconfig())
        .stdin(Stdio::null())
        .stdout(log.try_clone().unwrap())
        .stderr(log)
        .spawn()
        .unwrap()
}

#[tokio::test]
async fn deleting_an_action_deletes_its_runs_with_or_without_the_controller() {
    let plane = ControlPlane::start();
    plane.apply_and_wait_for_crds(&workspace().join("manifests/crds.yaml"));
    plane.start_controller_manager();
    let client = plane.client();
    let (actions, runs): (Api<HostAction>, Api<HostActionRun>) =
        (Api::all(client.clone()), Api::all(client.clone()));
    for name in ["life-a", "life-b"] {
        create_ready_node(&client, name, json!({"lifecycle": "yes"}))
            .await
            .unwrap();
    }
    let mut controller = controller(&plane);

    // With the controller: its finalizer holds the action until the runs
    // are gone.
    action(&actions, "with-controller").await;
    wait_until("the controller creates a run per node", || async {
        runs_of(&runs, "with-controller").await.len() == 2
    })
    .await;
    actions
        .delete("with-controller", &DeleteParams::default())
        .await
        .unwrap();
    wait_until("the runs and then the action are gone", || async {
        runs_of(&runs, "with-controller").await.is_empty()
            && actions.get_opt("with-controller").await.unwrap().is_none()
    })
    .await;

    // Without it: the runs it made name their action as owner.
    let owner = action(&actions, "orphaned").await;
    wait_until("the controller creates a run per node", || async {
        runs_of(&runs, "orphaned").await.len() == 2
    })
    .await;
    controller.kill().unwrap();
    controller.wait().unwrap();
    for name in runs_of(&runs, "orphaned").await {
        let run = runs.get(&name).await.unwrap();
        let owners = run.owner_references();
        assert_eq!(owners.len(), 1, "{name}: {owners:?}");
        assert_eq!(owners[0].uid, owner.uid().unwrap(), "{name}");
        assert_eq!(owners[0].kind, "HostAction", "{name}");
        assert_eq!(owners[0].api_version, "hostaction.dev/v1alpha1", "{name}");
    }
    actions
        .delete("orphaned", &DeleteParams::default())
        .await
        .unwrap();
    // The finalizer holds it while no controller runs…
    tokio::time::sleep(Duration::from_secs(2)).await;
    let held = actions.get("orphaned").await.unwrap();
    assert!(held.metadata.deletion_timestamp.is_some());
    assert_eq!(runs_of(&runs, "orphaned").await.len(), 2);
    // …until a user removes it (README: uninstalling); then the garbage
    // collector deletes the runs.
    actions
        .patch(
            "orphaned",
            &PatchParams::default(),
            &Patch::Merge(json!({"metadata": {"finalizers": null}})),
        )
        .await
        .unwrap();
    wait_until(
        "the garbage collector deletes the orphaned runs",
        || async {
            actions.get_opt("orphaned").await.unwrap().is_none()
                && runs_of(&runs, "orphaned").await.is_empty()
        },
    )
    .await;
}
