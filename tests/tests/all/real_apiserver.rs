//! Against a real kube-apiserver and etcd built from source
//! (`hostaction_tests::kube_control_plane`): `manifests/crds.yaml` applied as a
//! user applies it, and the CRDs' CEL rules enforced by the API server itself.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::sync::OnceLock;

use hostaction_crds::{Grant, HostAction, HostActionRun};
use hostaction_tests::kube_control_plane::{ControlPlane, create_ready_node};
use hostaction_tests::workspace;
use kube::api::{Api, DeleteParams, Patch, PatchParams, PostParams};
use serde_json::{Value, json};

/// The CRDs from `manifests/crds.yaml`, applied server-side with kubectl and
/// established (once, on this module's own control plane).
fn control_plane_with_crds() -> &'static ControlPlane {
    static CRDS: OnceLock<()> = OnceLock::new();
    // This module's own: the other modules' objects and policies stay out.
    static PLANE: OnceLock<ControlPlane> = OnceLock::new();
    let plane = PLANE.get_or_init(ControlPlane::start);
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

    // The undo fields: defaults filled in, `off` taken as the word it is
    // (quoted in crds.yaml), another word refused naming the field.
    let mut undo = example_action("real-undo-fields");
    undo["spec"]["journal"] = json!("off");
    let undo: HostAction = serde_json::from_value(undo).expect("a HostAction");
    let created = actions.create(&post, &undo).await.expect("create");
    assert_eq!(created.spec.journal, hostaction_crds::action::Journal::Off);
    assert_eq!(
        created.spec.on_failure,
        hostaction_crds::action::OnFailure::Rollback
    );
    let mut bad = example_action("real-undo-bad");
    bad["spec"]["onDelete"] = json!("later");
    let api = Api::<kube::api::DynamicObject>::all_with(
        plane.client(),
        &kube::discovery::ApiResource::erase::<HostAction>(&()),
    );
    let bad: kube::api::DynamicObject = serde_json::from_value(bad).unwrap();
    let (code, message) = refusal(api.create(&post, &bad).await);
    assert_eq!(code, 422, "{message}");
    assert!(message.contains("spec.onDelete"), "{message}");
    let mut fast = example_action("real-drift-fast");
    fast["spec"]["drift"] = json!({"intervalSeconds": 5});
    let fast: kube::api::DynamicObject = serde_json::from_value(fast).unwrap();
    let (code, message) = refusal(api.create(&post, &fast).await);
    assert_eq!(code, 422, "{message}");
    assert!(
        message.contains("drift.intervalSeconds must be 10 to 86400"),
        "{message}"
    );
    actions
        .delete("real-undo-fields", &DeleteParams::default())
        .await
        .expect("delete");

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

/// Valid grants, as the README and the sample actions write them: each
/// accepted by the API server and by [`Grant::validate`].
const VALID_GRANTS: &[&str] = &[
    "{}",
    "files: {read: [/], write: ['//opt//cni/bin/'], kernelPaths: [/proc/meminfo, /sys/class/net]}",
    "network: {netns: [host, 'ovl-*'], interfaces: ['br-ovl', 'vx-*', '*', 'abcdefghijklmno*'], kinds: [bridge, veth, vxlan, macvlan, dummy, vlan, wireguard]}",
    "network: {addresses: [10.244.0.0/16, 10.0.0.1/32, 0.0.0.0/0, 'fd00::/8', '::/0'], routes: [default, 10.244.0.0/16]}",
    "services: {units: [containerd.service, 'getty@*.service', 'kube*', 'foo\\x2dbar.socket', 'a?.timer']}",
];

/// Malformed grants: (grant, the field the refusal names, words of the
/// CEL rule's message). Each is refused by the API server and, naming the
/// same field, by [`Grant::validate`].
const BAD_GRANTS: &[(&str, &str, &str)] = &[
    (
        "files: {write: [/opt, opt/cni]}",
        "files.write[1]",
        "must be an absolute path",
    ),
    (
        "files: {read: [/etc/../root]}",
        "files.read[0]",
        "must not have . or .. components",
    ),
    (
        "files: {read: [/etc/cni/..]}",
        "files.read[0]",
        "must not have . or .. components",
    ),
    (
        "files: {write: [/opt/./cni]}",
        "files.write[0]",
        "must not have . or .. components",
    ),
    (
        "files: {kernelPaths: [proc/meminfo]}",
        "files.kernelPaths[0]",
        "must be an absolute path",
    ),
    (
        "network: {netns: ['']}",
        "network.netns[0]",
        "a namespace pattern",
    ),
    (
        "network: {netns: [host, 'ovl *']}",
        "network.netns[1]",
        "a namespace pattern",
    ),
    (
        "network: {netns: ['..']}",
        "network.netns[0]",
        "not . or ..",
    ),
    (
        "network: {interfaces: ['']}",
        "network.interfaces[0]",
        "an interface-name pattern",
    ),
    (
        "network: {interfaces: ['eth0:1']}",
        "network.interfaces[0]",
        "an interface-name pattern",
    ),
    (
        "network: {interfaces: [\"br\\u00a0x\"]}",
        "network.interfaces[0]",
        "an interface-name pattern",
    ),
    (
        "network: {interfaces: ['a-very-long-name*']}",
        "network.interfaces[0]",
        "at most 15 bytes",
    ),
    (
        // 200 characters (under maxLength, which counts characters), 400 bytes.
        "network: {netns: ['éééééééééééééééééééééééééééééééééééééééééééééééééééééééééééééééééééééééééééééééééééééééééééééééééééééééééééééééééééééééééééééééééééééééééééééééééééééééééééééééééééééééééééééééééééééééééééééééééééééééé']}",
        "network.netns[0]",
        "at most 256 bytes",
    ),
    (
        // 8 characters, 16 bytes: the kernel counts bytes.
        "network: {interfaces: ['éééééééé*']}",
        "network.interfaces[0]",
        "at most 15 bytes",
    ),
    (
        "network: {kinds: [bridge, tunnel]}",
        "network.kinds[1]",
        "Unsupported value: \"tunnel\"",
    ),
    (
        "network: {addresses: [10.244.0.0/33]}",
        "network.addresses[0]",
        "network in CIDR notation",
    ),
    (
        "network: {addresses: [10.244.0.0]}",
        "network.addresses[0]",
        "network in CIDR notation",
    ),
    (
        "network: {addresses: [10.244.1.1/16]}",
        "network.addresses[0]",
        "no host bits set",
    ),
    (
        "network: {addresses: ['fd00::1/8']}",
        "network.addresses[0]",
        "no host bits set",
    ),
    (
        "network: {addresses: ['::ffff:10.244.0.0/112']}",
        "network.addresses[0]",
        "network in CIDR notation",
    ),
    (
        "network: {addresses: [default]}",
        "network.addresses[0]",
        "network in CIDR notation",
    ),
    (
        "network: {routes: [default, 300.0.0.0/8]}",
        "network.routes[1]",
        "must be default or a network",
    ),
    (
        "services: {units: [containerd]}",
        "services.units[0]",
        "must end in a unit type",
    ),
    (
        "services: {units: [containerd.servce]}",
        "services.units[0]",
        "must end in a unit type",
    ),
    (
        "services: {units: ['']}",
        "services.units[0]",
        "a unit-name pattern",
    ),
    (
        "services: {units: [../evil.service]}",
        "services.units[0]",
        "a unit-name pattern",
    ),
];

/// Every grant rule of the CRD, through the API: the valid grants are
/// stored, each malformed one refused (422) with a message naming its field
/// (`spec.grants.files.write[1]`), in a HostAction and in a HostActionRun
/// alike, and the shared Rust check refuses the same field.
#[tokio::test]
async fn the_api_server_refuses_malformed_grants_naming_the_field() {
    let plane = control_plane_with_crds();
    let actions: Api<HostAction> = Api::all(plane.client());
    let runs: Api<HostActionRun> = Api::all(plane.client());
    let post = PostParams::default();
    let with_grants = |name: &str, grants: &str| {
        let mut action = example_action(name);
        action["spec"]["grants"] = serde_yaml_ng::from_str(grants).unwrap();
        action
    };
    for (i, grants) in VALID_GRANTS.iter().enumerate() {
        let parsed: Grant = serde_yaml_ng::from_str(grants).unwrap();
        parsed
            .validate()
            .unwrap_or_else(|e| panic!("{grants}: {e}"));
        let name = format!("grant-valid-{i}");
        let action: HostAction = serde_json::from_value(with_grants(&name, grants)).unwrap();
        let created = actions
            .create(&post, &action)
            .await
            .unwrap_or_else(|e| panic!("{grants}: {e}"));
        assert_eq!(created.spec.grants, parsed, "{grants}");
        actions
            .delete(&name, &DeleteParams::default())
            .await
            .unwrap();
    }
    let digest = "0".repeat(64);
    for (i, (grants, field, says)) in BAD_GRANTS.iter().enumerate() {
        let parsed: Grant = serde_yaml_ng::from_str(grants).unwrap();
        let err = parsed.validate().expect_err(grants);
        assert_eq!(&err.field, field, "{grants}: {err}");

        let name = format!("grant-bad-{i}");
        let action: HostAction = serde_json::from_value(with_grants(&name, grants)).unwrap();
        let (code, message) = refusal(actions.create(&post, &action).await);
        assert_eq!(code, 422, "{grants}: {message}");
        let path = format!("spec.grants.{field}");
        assert!(
            message.contains(&format!("{path}: ")) && message.contains(says),
            "{grants}: {message}"
        );

        let run: HostActionRun = serde_json::from_value(json!({
            "apiVersion": "hostaction.dev/v1alpha1",
            "kind": "HostActionRun",
            "metadata": {"name": format!("{name}.node-a.g1")},
            "spec": {
                "action": name,
                "generation": 1,
                "nodeName": "node-a",
                "module": format!("registry.example/actions/cni-install@sha256:{digest}"),
                "grants": serde_yaml_ng::from_str::<Value>(grants).unwrap(),
                "timeoutSeconds": 60,
            },
        }))
        .unwrap();
        let (code, message) = refusal(runs.create(&post, &run).await);
        assert_eq!(code, 422, "{grants}: {message}");
        assert!(
            message.contains(&format!("{path}: ")),
            "{grants}: {message}"
        );
    }
}

/// The real controller on a control plane of its own, with one Ready node:
/// a grant the CRD's rules cannot judge (a path component of 300 bytes;
/// CEL has no byte counts) is marked `GrantInvalid` with an Event naming
/// the field, and no run is created; once the user fixes the grant (a new
/// generation), the condition goes and the node gets its run.
#[tokio::test]
async fn the_controller_marks_a_grant_the_api_server_let_through_and_runs_nothing() {
    let plane = ControlPlane::start();
    plane.apply_and_wait_for_crds(&workspace().join("manifests/crds.yaml"));
    let client = plane.client();
    create_ready_node(&client, "grant-node", json!({"kubernetes.io/os": "linux"}))
        .await
        .unwrap();

    let mut action = example_action("grant-typo");
    // Pinned by digest: the controller resolves it without a registry.
    action["spec"]["module"] = json!(format!(
        "127.0.0.1:1/actions/cni-install@sha256:{}",
        "1".repeat(64)
    ));
    let long = format!("/opt/{}", "a".repeat(300));
    action["spec"]["grants"] = json!({"files": {"write": ["/opt/cni", long]}});
    let action: HostAction = serde_json::from_value(action).unwrap();
    let actions: Api<HostAction> = Api::all(client.clone());
    actions
        .create(&PostParams::default(), &action)
        .await
        .expect("CEL cannot count a component's bytes: the API server stores it");

    let log_path = plane.dir().join("controller.log");
    let log = std::fs::File::create(&log_path).unwrap();
    let _controller = Child(
        std::process::Command::new(hostaction_tests::controller_bin())
            .args([
                "--no-leader-election",
                "--plain-http",
                "--metrics-addr",
                "127.0.0.1:0",
                "--log-format",
                "text",
            ])
            .env("KUBECONFIG", plane.kubeconfig())
            .env("HOSTACTION_LOG", "info,kube=warn,hyper=warn")
            .stdin(std::process::Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .unwrap(),
    );
    let logs = || std::fs::read_to_string(&log_path).unwrap_or_default();
    let condition = |action: &HostAction, type_: &str| {
        action
            .status
            .as_ref()
            .and_then(|s| s.conditions.iter().find(|c| c.type_ == type_).cloned())
    };

    // Marked once: the condition, naming the field, for generation 1.
    let started = std::time::Instant::now();
    let invalid = loop {
        let stored = actions.get("grant-typo").await.unwrap();
        if let Some(c) = condition(&stored, "GrantInvalid") {
            break c;
        }
        assert!(
            started.elapsed() < std::time::Duration::from_secs(60),
            "no GrantInvalid condition in 60 s: {:?}\n{}",
            stored.status,
            logs()
        );
        tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    };
    assert_eq!(invalid.status, "True");
    assert_eq!(invalid.reason, "GrantInvalid");
    assert_eq!(invalid.observed_generation, Some(1));
    assert!(
        invalid.message.contains("spec.grants.files.write[1]")
            && invalid.message.contains("300 bytes"),
        "{}",
        invalid.message
    );
    // ... and an Event saying the same.
    let started = std::time::Instant::now();
    loop {
        let events = plane.kubectl_ok(&[
            "get",
            "events",
            "-A",
            "--field-selector",
            "involvedObject.name=grant-typo,reason=GrantInvalid",
            "-o",
            "jsonpath={range .items[*]}{.type} {.message}{\"\\n\"}{end}",
        ]);
        if !events.trim().is_empty() {
            assert!(
                events.starts_with("Warning ") && events.contains("spec.grants.files.write[1]"),
                "{events}"
            );
            break;
        }
        assert!(
            started.elapsed() < std::time::Duration::from_secs(30),
            "no GrantInvalid Event in 30 s\n{}",
            logs()
        );
        tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    }
    // No run for it: the failure budget of no node is spent.
    let runs: Api<HostActionRun> = Api::all(client.clone());
    assert!(
        runs.list(&Default::default())
            .await
            .unwrap()
            .items
            .is_empty()
    );

    // The user fixes the grant: generation 2 runs on the node.
    let fix = Patch::Merge(json!({"spec": {"grants": {"files": {"write": ["/opt/cni"]}}}}));
    actions
        .patch("grant-typo", &PatchParams::default(), &fix)
        .await
        .unwrap();
    let started = std::time::Instant::now();
    loop {
        let stored = actions.get("grant-typo").await.unwrap();
        let created = runs.get_opt("grant-typo.grant-node.g2").await.unwrap();
        if created.is_some() && condition(&stored, "GrantInvalid").is_none() {
            assert_eq!(
                condition(&stored, "Resolved").map(|c| c.status),
                Some("True".to_owned())
            );
            break;
        }
        assert!(
            started.elapsed() < std::time::Duration::from_secs(60),
            "no run after fixing the grant in 60 s: {:?}\n{}",
            stored.status,
            logs()
        );
        tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    }
    // Only that run: none was ever made for generation 1.
    let names: Vec<String> = runs
        .list(&Default::default())
        .await
        .unwrap()
        .items
        .iter()
        .map(|r| r.metadata.name.clone().unwrap_or_default())
        .collect();
    assert_eq!(names, ["grant-typo.grant-node.g2"]);
}

/// Kills the process it holds (by its pid) when dropped.
struct Child(std::process::Child);

impl Drop for Child {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
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
