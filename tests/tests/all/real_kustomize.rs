//! The kustomize base (`manifests/Kustomization`) and the example
//! overlay (`deploy/overlays/example/`), rendered by the control plane's own
//! kubectl (`kubectl kustomize` is built into it; the same release as the
//! kube-apiserver) and checked against a real kube-apiserver
//! (`hostaction_tests::kube_control_plane`):
//!
//! - the base renders the plain manifests, object for object, and lists
//!   every file of `manifests/`;
//! - the overlay passes `kubectl apply --dry-run=server`, is applied, and
//!   what the server stores has the overlay's namespace (RBAC subjects
//!   included, cluster-scoped objects left cluster-scoped), images and node
//!   policy; the controller, started with the rendered Deployment's
//!   arguments and environment and the overlay's service-account token,
//!   takes its Lease in the overlay's namespace;
//! - an overlay with an invalid namespace is refused by the server, with
//!   nothing stored; one with a policy the agent cannot read passes the
//!   server (a ConfigMap's data is not read there) and is refused by the
//!   agent's own parser, naming the field.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::path::{Component, Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use hostaction_tests::kube_control_plane::{ControlPlane, bin_dir, service_account_token};
use hostaction_tests::{controller_bin, hostaction_bin, workspace};
use k8s_openapi::api::coordination::v1::Lease;
use kube::api::Api;
use serde::Deserialize;
use serde_json::{Value, json};

/// The example overlay, from the workspace root.
const OVERLAY: &str = "deploy/overlays/example";
/// What the example overlay sets.
const OVERLAY_NAMESPACE: &str = "platform-hostaction";
const AGENT_IMAGE: &str = "registry.internal.example:5000/hostaction/hostaction:0.1.0";
const CONTROLLER_IMAGE: &str =
    "registry.internal.example:5000/hostaction/hostaction-controller:0.1.0";
/// The base's namespace and node policy ConfigMap.
const BASE_NAMESPACE: &str = "hostaction-system";
const POLICY_CONFIGMAP: &str = "hostaction-node-policy";
/// How long the controller may take to hold its Lease.
const LEASE_TIMEOUT: Duration = Duration::from_secs(60);

/// `kubectl kustomize DIR` with the control plane's kubectl: the rendered
/// YAML, or kubectl's error.
fn kustomize(dir: &Path) -> Result<String, String> {
    let out = Command::new(bin_dir().join("kubectl"))
        .arg("kustomize")
        .arg(dir)
        .stdin(Stdio::null())
        .output()
        .expect("run kubectl kustomize");
    if out.status.success() {
        Ok(String::from_utf8(out.stdout).expect("UTF-8"))
    } else {
        Err(String::from_utf8_lossy(&out.stderr).into_owned())
    }
}

/// The objects of a multi-document YAML text (empty documents skipped).
fn objects(yaml: &str) -> Vec<Value> {
    serde_yaml_ng::Deserializer::from_str(yaml)
        .map(|doc| Value::deserialize(doc).expect("a YAML document"))
        .filter(|object| !object.is_null())
        .collect()
}

/// An object's identity: apiVersion, kind, namespace, name.
fn id(object: &Value) -> String {
    let text = |v: &Value| v.as_str().unwrap_or_default().to_owned();
    format!(
        "{} {} {}/{}",
        text(&object["apiVersion"]),
        text(&object["kind"]),
        text(&object["metadata"]["namespace"]),
        text(&object["metadata"]["name"])
    )
}

/// The one object of `kind` in `objects`.
fn only<'a>(objects: &'a [Value], kind: &str) -> &'a Value {
    let found: Vec<&Value> = objects.iter().filter(|o| o["kind"] == kind).collect();
    assert_eq!(found.len(), 1, "one {kind} in {objects:#?}");
    found[0]
}

/// `path` relative to `from` (both absolute): kustomize takes only relative
/// paths to a base.
fn relative(path: &Path, from: &Path) -> PathBuf {
    let path = path.canonicalize().expect("canonical path");
    let from = from.canonicalize().expect("canonical path");
    let mut up = PathBuf::new();
    for component in from.components() {
        if matches!(component, Component::Normal(_)) {
            up.push("..");
        }
    }
    up.join(path.strip_prefix("/").expect("absolute"))
}

/// A temporary overlay on the base: the example's kustomization.yaml with
/// `namespace` and `policy` as given.
fn overlay(namespace: &str, policy: &str) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    let example = workspace().join(OVERLAY);
    let text = std::fs::read_to_string(example.join("kustomization.yaml")).unwrap();
    let base = relative(&workspace().join("manifests"), dir.path());
    let text = text
        .replace(
            "  - ../../../manifests\n",
            &format!("  - {}\n", base.display()),
        )
        .replace(
            &format!("namespace: {OVERLAY_NAMESPACE}\n"),
            &format!("namespace: {namespace}\n"),
        );
    std::fs::write(dir.path().join("kustomization.yaml"), text).unwrap();
    std::fs::write(dir.path().join("policy.yaml"), policy).unwrap();
    dir
}

/// `hostaction agent --once` in static mode with no manifests and `policy`
/// as its node policy: how the agent reads the policy when it starts.
fn agent_reads_policy(policy: &str) -> Output {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("policy.yaml");
    std::fs::write(&file, policy).unwrap();
    std::fs::create_dir(dir.path().join("manifests")).unwrap();
    Command::new(hostaction_bin())
        .args(["agent", "--once", "--manifests"])
        .arg(dir.path().join("manifests"))
        .arg("--policy")
        .arg(&file)
        .arg("--cache-dir")
        .arg(dir.path().join("cache"))
        .stdin(Stdio::null())
        .output()
        .expect("run hostaction agent")
}

/// The node policy a rendered overlay gives the agents: the ConfigMap the
/// DaemonSet mounts (checked to be the rendered one) and its `policy.yaml`.
fn rendered_policy(rendered: &[Value]) -> (String, String) {
    let configmap = only(rendered, "ConfigMap");
    let name = configmap["metadata"]["name"].as_str().unwrap().to_owned();
    let daemonset = only(rendered, "DaemonSet");
    let volumes = daemonset["spec"]["template"]["spec"]["volumes"]
        .as_array()
        .unwrap();
    let policy_volume = volumes
        .iter()
        .find(|v| v["name"] == "policy")
        .expect("the policy volume");
    assert_eq!(policy_volume["configMap"]["name"], name.as_str());
    let policy = configmap["data"]["policy.yaml"]
        .as_str()
        .expect("the key the agent's --policy reads")
        .to_owned();
    (name, policy)
}

#[test]
fn the_base_renders_the_plain_manifests_object_for_object() {
    let manifests = workspace().join("manifests");
    // Every manifest file is in the base, and nothing else is.
    let base: Value =
        serde_yaml_ng::from_str(&std::fs::read_to_string(manifests.join("Kustomization")).unwrap())
            .unwrap();
    let mut listed: Vec<String> = base["resources"]
        .as_array()
        .expect("resources")
        .iter()
        .map(|r| r.as_str().unwrap().to_owned())
        .collect();
    listed.sort();
    let mut files: Vec<String> = std::fs::read_dir(&manifests)
        .unwrap()
        .map(|entry| entry.unwrap())
        .filter(|entry| entry.file_type().unwrap().is_file())
        .map(|entry| entry.file_name().to_string_lossy().into_owned())
        // What `kubectl apply -f manifests/` reads.
        .filter(|name| {
            [".yaml", ".yml", ".json"]
                .iter()
                .any(|ext| name.ends_with(ext))
        })
        .collect();
    files.sort();
    assert_eq!(listed, files, "the base's resources and manifests/*.yaml");

    let mut plain: Vec<Value> = files
        .iter()
        .flat_map(|file| objects(&std::fs::read_to_string(manifests.join(file)).unwrap()))
        .collect();
    let mut rendered = objects(&kustomize(&manifests).unwrap_or_else(|e| panic!("{e}")));
    plain.sort_by_key(id);
    rendered.sort_by_key(id);
    let ids = |objects: &[Value]| objects.iter().map(id).collect::<Vec<_>>();
    assert_eq!(ids(&rendered), ids(&plain));
    for (rendered, plain) in rendered.iter().zip(&plain) {
        assert_eq!(rendered, plain, "{} as kustomize renders it", id(plain));
    }
}

/// Kills the process by pid when dropped.
struct Killed(std::process::Child);

impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// `kubectl get ARGS -o json` as the admin.
fn get(plane: &ControlPlane, args: &[&str]) -> Value {
    let mut all = vec!["get"];
    all.extend_from_slice(args);
    all.extend_from_slice(&["-o", "json"]);
    serde_json::from_str(&plane.kubectl_ok(&all)).unwrap()
}

/// `kubectl auth can-i QUESTION... --as USER`: yes or no.
fn can_i(plane: &ControlPlane, user: &str, question: &[&str]) -> bool {
    let mut args = vec!["auth", "can-i", "--as", user];
    args.extend_from_slice(question);
    let out = plane.kubectl(&args);
    match String::from_utf8_lossy(&out.stdout).trim() {
        "yes" => true,
        "no" => false,
        other => panic!(
            "kubectl {args:?}: {other:?} {}",
            String::from_utf8_lossy(&out.stderr)
        ),
    }
}

/// The controller as the rendered Deployment runs it: its arguments (the
/// metrics address moved to a free loopback port) and its environment, the
/// downward API's fields resolved for pod `pod` in the Deployment's
/// namespace.
fn controller_command(deployment: &Value, pod: &str) -> Command {
    let namespace = deployment["metadata"]["namespace"].as_str().unwrap();
    let container = &deployment["spec"]["template"]["spec"]["containers"][0];
    let mut command = Command::new(controller_bin());
    for arg in container["args"].as_array().unwrap() {
        let arg = arg.as_str().unwrap();
        if arg.starts_with("--metrics-addr") {
            command.arg("--metrics-addr=127.0.0.1:0");
        } else {
            command.arg(arg);
        }
    }
    for var in container["env"].as_array().unwrap() {
        let name = var["name"].as_str().unwrap();
        let value = match var["valueFrom"]["fieldRef"]["fieldPath"].as_str() {
            Some("metadata.name") => pod,
            Some("metadata.namespace") => namespace,
            _ => var["value"]
                .as_str()
                .unwrap_or_else(|| panic!("env {name}: a value this test can resolve: {var}")),
        };
        command.env(name, value);
    }
    command
}

#[tokio::test]
async fn the_example_overlay_installs_with_its_namespace_images_and_policy() {
    let text = kustomize(&workspace().join(OVERLAY)).unwrap_or_else(|e| panic!("{e}"));
    let rendered = objects(&text);

    // What the overlay sets, in the rendered objects: nothing is left in the
    // base's namespace, the bindings' subjects moved too.
    assert_eq!(
        only(&rendered, "Namespace")["metadata"]["name"],
        OVERLAY_NAMESPACE
    );
    for object in &rendered {
        assert_ne!(
            object["metadata"]["namespace"],
            BASE_NAMESPACE,
            "{}",
            id(object)
        );
        for subject in object["subjects"].as_array().into_iter().flatten() {
            assert_eq!(subject["namespace"], OVERLAY_NAMESPACE, "{}", id(object));
        }
    }
    let image = |kind: &str| {
        only(&rendered, kind)["spec"]["template"]["spec"]["containers"][0]["image"].clone()
    };
    assert_eq!(image("DaemonSet"), AGENT_IMAGE);
    assert_eq!(image("Deployment"), CONTROLLER_IMAGE);
    // The node policy: the overlay's file, in a ConfigMap named by its
    // content's hash, which the DaemonSet mounts; one the agent reads.
    let (configmap, policy) = rendered_policy(&rendered);
    let expected_policy =
        std::fs::read_to_string(workspace().join(OVERLAY).join("policy.yaml")).unwrap();
    assert_eq!(policy, expected_policy);
    let suffix = configmap
        .strip_prefix(&format!("{POLICY_CONFIGMAP}-"))
        .unwrap_or_else(|| panic!("{configmap}: the generated name"));
    assert!(
        suffix.len() >= 8 && suffix.bytes().all(|b| b.is_ascii_alphanumeric()),
        "{configmap}"
    );
    let read = agent_reads_policy(&policy);
    assert!(
        read.status.success(),
        "the agent refuses the example's policy: {}",
        String::from_utf8_lossy(&read.stderr)
    );

    // The real API server: the namespace first (a server-side dry run
    // stores nothing, so the namespaced objects would find none), then a
    // dry run of everything, then the apply.
    let plane = ControlPlane::start();
    let file = plane.dir().join("example-overlay.yaml");
    std::fs::write(&file, &text).unwrap();
    let file = file.display().to_string();
    let namespace_file = plane.dir().join("example-namespace.json");
    std::fs::write(&namespace_file, only(&rendered, "Namespace").to_string()).unwrap();
    plane.kubectl_ok(&[
        "apply",
        "--server-side",
        "-f",
        &namespace_file.display().to_string(),
    ]);
    let dry = plane.kubectl_ok(&["apply", "--server-side", "--dry-run=server", "-f", &file]);
    assert!(
        dry.contains("daemonset.apps/hostaction-agent serverside-applied (server dry run)"),
        "{dry}"
    );
    let applied = plane.apply_and_wait_for_crds(Path::new(&file));
    assert_eq!(applied.lines().count(), rendered.len(), "{applied}");

    // What the server stores.
    let daemonset = get(
        &plane,
        &["daemonset", "hostaction-agent", "-n", OVERLAY_NAMESPACE],
    );
    let pod = &daemonset["spec"]["template"]["spec"];
    assert_eq!(pod["containers"][0]["image"], AGENT_IMAGE);
    assert_eq!(pod["serviceAccountName"], "hostaction-agent");
    let stored = get(&plane, &["configmap", &configmap, "-n", OVERLAY_NAMESPACE]);
    assert_eq!(stored["data"]["policy.yaml"], expected_policy.as_str());
    let deployment = get(
        &plane,
        &[
            "deployment",
            "hostaction-controller",
            "-n",
            OVERLAY_NAMESPACE,
        ],
    );
    assert_eq!(
        deployment["spec"]["template"]["spec"]["containers"][0]["image"],
        CONTROLLER_IMAGE
    );
    // Cluster-scoped objects stay so (kustomize wrote the namespace into
    // the admission policy and its binding; the server dropped it).
    for kind in [
        "validatingadmissionpolicy",
        "validatingadmissionpolicybinding",
    ] {
        let stored = get(&plane, &[kind, "hostaction-agent-own-node"]);
        assert_eq!(
            stored["metadata"].get("namespace"),
            None,
            "{kind}: {stored}"
        );
    }
    let namespaces = plane.kubectl_ok(&["get", "namespaces", "-o", "name"]);
    assert!(!namespaces.contains(BASE_NAMESPACE), "{namespaces}");
    // The renamed namespace keeps the base's Pod Security level (the agent
    // needs `privileged`), and only the generated policy ConfigMap exists.
    let namespace = get(&plane, &["namespace", OVERLAY_NAMESPACE]);
    assert_eq!(
        namespace["metadata"]["labels"]["pod-security.kubernetes.io/enforce"],
        "privileged"
    );
    let configmaps =
        plane.kubectl_ok(&["get", "configmaps", "-n", OVERLAY_NAMESPACE, "-o", "name"]);
    assert!(
        configmaps
            .lines()
            .any(|l| l == format!("configmap/{configmap}"))
            && !configmaps
                .lines()
                .any(|l| l == format!("configmap/{POLICY_CONFIGMAP}")),
        "{configmaps}"
    );
    // The accounts' rights follow them to the overlay's namespace.
    let account = |name: &str| format!("system:serviceaccount:{OVERLAY_NAMESPACE}:{name}");
    let agent = account("hostaction-agent");
    let controller = account("hostaction-controller");
    const RUNS: &str = "hostactionruns.hostaction.dev";
    const LEASES: &str = "leases.coordination.k8s.io";
    assert!(can_i(&plane, &agent, &["watch", RUNS]));
    assert!(can_i(
        &plane,
        &agent,
        &["patch", RUNS, "--subresource=status"]
    ));
    assert!(can_i(&plane, &controller, &["create", RUNS]));
    assert!(can_i(
        &plane,
        &controller,
        &["update", LEASES, "-n", OVERLAY_NAMESPACE]
    ));
    assert!(!can_i(
        &plane,
        &controller,
        &["update", LEASES, "-n", BASE_NAMESPACE]
    ));

    // The controller, run as the rendered Deployment runs it with the
    // overlay's account, holds its Lease in the overlay's namespace.
    let token = service_account_token(
        &plane.client(),
        OVERLAY_NAMESPACE,
        "hostaction-controller",
        None,
    )
    .await
    .unwrap_or_else(|e| panic!("{e}"));
    let kubeconfig = plane.token_kubeconfig("controller", &token);
    let log_path = plane.dir().join("controller.log");
    let log = std::fs::File::create(&log_path).unwrap();
    let stored_deployment = get(
        &plane,
        &[
            "deployment",
            "hostaction-controller",
            "-n",
            OVERLAY_NAMESPACE,
        ],
    );
    let _controller = Killed(
        controller_command(&stored_deployment, "hostaction-controller-kustomized")
            .env("KUBECONFIG", &kubeconfig)
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .unwrap(),
    );
    let leases: Api<Lease> = Api::namespaced(plane.client(), OVERLAY_NAMESPACE);
    let started = Instant::now();
    loop {
        let holder = leases
            .get_opt("hostaction-controller")
            .await
            .unwrap()
            .and_then(|lease| lease.spec)
            .and_then(|spec| spec.holder_identity);
        if holder.as_deref() == Some("hostaction-controller-kustomized") {
            break;
        }
        assert!(
            started.elapsed() < LEASE_TIMEOUT,
            "no Lease held in {OVERLAY_NAMESPACE} after {LEASE_TIMEOUT:?} (holder {holder:?}); the controller's log:\n{}",
            std::fs::read_to_string(&log_path).unwrap_or_default()
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

/// A control plane for the refusals: nothing of hostaction is stored in it.
fn refusals_plane() -> &'static ControlPlane {
    static PLANE: OnceLock<ControlPlane> = OnceLock::new();
    PLANE.get_or_init(ControlPlane::start)
}

#[test]
fn an_overlay_with_an_invalid_namespace_is_refused_by_the_api_server() {
    let plane = refusals_plane();
    let policy = std::fs::read_to_string(workspace().join(OVERLAY).join("policy.yaml")).unwrap();
    let dir = overlay("Platform_Hostaction", &policy);
    // kustomize renders it: it does not check names.
    let text = kustomize(dir.path()).unwrap_or_else(|e| panic!("{e}"));
    let file = plane.dir().join("invalid-namespace.yaml");
    std::fs::write(&file, text).unwrap();
    let out = plane.kubectl(&[
        "apply",
        "--server-side",
        "--dry-run=server",
        "-f",
        &file.display().to_string(),
    ]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{stderr}");
    assert!(
        stderr.contains(
            r#"metadata.name: Invalid value: "Platform_Hostaction": a lowercase RFC 1123 label"#
        ),
        "{stderr}"
    );
    // Nothing stored.
    let stored = plane.kubectl_ok(&[
        "get",
        "namespaces,crd,clusterroles,clusterrolebindings,validatingadmissionpolicies",
        "-o",
        "name",
    ]);
    assert!(!stored.contains("hostaction"), "{stored}");
    assert!(
        !stored.to_lowercase().contains("platform_hostaction"),
        "{stored}"
    );
}

#[test]
fn an_overlay_policy_the_agent_cannot_read_passes_the_api_server_and_not_the_agent() {
    let plane = refusals_plane();
    let bad = "files:\n  write: [opt/cni/bin]\n";
    let dir = overlay(OVERLAY_NAMESPACE, bad);
    let rendered = objects(&kustomize(dir.path()).unwrap_or_else(|e| panic!("{e}")));
    let (_, policy) = rendered_policy(&rendered);
    assert_eq!(policy, bad);
    // The API server stores a ConfigMap's data unread: a dry run of the
    // rendered ConfigMap (in `default`, which exists) passes.
    let mut configmap = only(&rendered, "ConfigMap").clone();
    configmap["metadata"]["namespace"] = json!("default");
    let file = plane.dir().join("bad-policy-configmap.json");
    std::fs::write(&file, configmap.to_string()).unwrap();
    plane.kubectl_ok(&[
        "apply",
        "--server-side",
        "--dry-run=server",
        "-f",
        &file.display().to_string(),
    ]);
    // The agent refuses it when it starts (bad input: exit 2), naming the
    // entry: a DaemonSet rollout with it stops at its first pods.
    let read = agent_reads_policy(&policy);
    let stderr = String::from_utf8_lossy(&read.stderr);
    assert_eq!(read.status.code(), Some(2), "{stderr}");
    assert!(
        stderr.contains(r#"files.write[0]: path "opt/cni/bin" is not absolute"#),
        "{stderr}"
    );
}
