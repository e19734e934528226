//! hostaction on a cluster, end to end: the real controller (`hostaction
//! controller`, with its Lease) and several real agents (`hostaction agent
//! --node-name`, each with its own node name, host root and module cache)
//! run as processes against a real kube-apiserver and etcd built from
//! source (`hostaction_tests::kube_control_plane`, a private control plane
//! per test: the CRDs are cluster-scoped and tests run in parallel) with
//! `manifests/crds.yaml` applied, and a real OCI registry on 127.0.0.1
//! (Debian's docker-registry). Node objects are created through the API
//! (their Ready condition through the status subresource); write counts
//! come from kube-apiserver's audit log; an API outage is kube-apiserver
//! killed and started again over the same etcd; refused status writes are
//! the server's own admission (a ValidatingAdmissionPolicy for 403/422, an
//! unreachable validating webhook for 500). Two controller replicas elect
//! a leader on a real Lease.
//!
//! The vxlan-overlay test needs root (network namespaces; CI runs as root).

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use hostaction_tests::kube_control_plane::ControlPlane;
use hostaction_tests::registry::Registry;
use hostaction_tests::{Host, guest, hostaction_bin, probe_results, workspace};
use kube::api::{
    ApiResource, DeleteParams, DynamicObject, GroupVersionKind, ListParams, Patch, PatchParams,
    PostParams,
};
use serde_json::{Value, json};

/// Undo journals, rollback and `onDelete` on the cluster (issue 17).
mod signatures;
mod undo;

const GROUP_VERSION: &str = "hostaction.dev/v1alpha1";
const CNI_GRANT: &str = r#"{"files": {"write": ["/etc/cni/net.d", "/opt/cni/bin"]}}"#;
/// A node policy that allows what the CNI grant asks (agents without a
/// policy grant nothing).
const CNI_POLICY: &str = "files: {write: [/etc/cni/net.d, /opt/cni/bin]}\n";

/// The leader election's timings of the controller replicas in
/// [`two_controller_replicas_hand_the_rollout_over_through_a_real_lease`]:
/// shorter than the defaults (15/10/2 s) and as legal (retry period <
/// renew deadline < lease duration).
struct LeaseTimings {
    duration: Duration,
    renew_deadline: Duration,
    retry_period: Duration,
}

const LEASE: LeaseTimings = LeaseTimings {
    duration: Duration::from_secs(10),
    renew_deadline: Duration::from_secs(6),
    retry_period: Duration::from_secs(1),
};

/// How soon after kube-apiserver's return an interrupted rollout of three
/// short runs completes: the watches' back-off (at most 5 s) twice (a
/// failed watch, then the 410 that makes the watcher re-list) and the runs,
/// with room for a loaded machine; kube's default back-off took 25-75 s.
const RESUME_BOUND: Duration = Duration::from_secs(20);

/// A private control plane (the CRDs are cluster-scoped and tests run in
/// parallel, so each test gets its own), with an admin client.
struct Api {
    plane: ControlPlane,
    runtime: tokio::runtime::Runtime,
    client: kube::Client,
}

/// How the API server refuses writes to one run's status (see
/// [`Api::refuse_status_writes`]).
#[derive(Clone, Copy, Debug)]
struct Refusal {
    /// The HTTP code answered: 403 or 422 (an admission policy), 500 (a
    /// validating webhook that cannot be reached).
    code: u16,
    /// Refuse only a status carrying a log tail (the part that makes one
    /// large), else every status write.
    only_with_log_tail: bool,
}

impl Api {
    /// A control plane of its own with `crds` applied (as a user applies
    /// them) and the controller's namespace (its Lease).
    fn start(crds: &Path) -> Api {
        let plane = ControlPlane::start();
        plane.apply_and_wait_for_crds(crds);
        plane.kubectl_ok(&["create", "namespace", "hostaction-system"]);
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .unwrap();
        let client = {
            let _in_runtime = runtime.enter();
            plane.client()
        };
        Api {
            plane,
            runtime,
            client,
        }
    }

    /// The kubeconfig the controller and the agents use: the admin's
    /// (`system:masters`): these tests are about the rollout, not RBAC (the
    /// manifests' service accounts are tested in real_apiserver.rs).
    fn write_kubeconfig(&self, path: &Path) {
        std::fs::copy(self.plane.kubeconfig(), path).unwrap();
    }

    /// The dynamic API of `kind` (cluster-wide, or in `namespace`), and
    /// whether the kind is namespaced.
    fn dynamic(
        &self,
        api_version: &str,
        kind: &str,
        namespace: Option<&str>,
    ) -> kube::Api<DynamicObject> {
        let (plural, namespaced) = match kind {
            "Node" => ("nodes", false),
            "HostAction" => ("hostactions", false),
            "HostActionRun" => ("hostactionruns", false),
            "Event" => ("events", true),
            "Lease" => ("leases", true),
            "ValidatingAdmissionPolicy" => ("validatingadmissionpolicies", false),
            "ValidatingAdmissionPolicyBinding" => ("validatingadmissionpolicybindings", false),
            "ValidatingWebhookConfiguration" => ("validatingwebhookconfigurations", false),
            other => panic!("no resource known for kind {other}"),
        };
        let (group, version) = api_version.split_once('/').unwrap_or(("", api_version));
        let resource =
            ApiResource::from_gvk_with_plural(&GroupVersionKind::gvk(group, version, kind), plural);
        match (namespaced, namespace) {
            (true, Some(ns)) => kube::Api::namespaced_with(self.client.clone(), ns, &resource),
            (true, None) if kind != "Event" => {
                kube::Api::namespaced_with(self.client.clone(), "default", &resource)
            }
            _ => kube::Api::all_with(self.client.clone(), &resource),
        }
    }

    /// Creates `object` (its `status` too, through the status subresource,
    /// as the admin).
    fn insert(&self, object: Value) -> Value {
        let api = self.dynamic(
            object["apiVersion"].as_str().unwrap(),
            object["kind"].as_str().unwrap(),
            object["metadata"]["namespace"].as_str(),
        );
        let name = object["metadata"]["name"].as_str().unwrap();
        let typed: DynamicObject = serde_json::from_value(object.clone()).unwrap();
        self.runtime.block_on(async {
            let created = api.create(&PostParams::default(), &typed).await;
            let created = created.unwrap_or_else(|e| panic!("create {name}: {e}"));
            let Some(status) = object.get("status") else {
                return serde_json::to_value(created).unwrap();
            };
            let patch = Patch::Merge(json!({"status": status}));
            let patched = api
                .patch_status(name, &PatchParams::default(), &patch)
                .await;
            serde_json::to_value(patched.unwrap_or_else(|e| panic!("status of {name}: {e}")))
                .unwrap()
        })
    }

    fn remove(&self, api_version: &str, kind: &str, namespace: Option<&str>, name: &str) -> bool {
        let api = self.dynamic(api_version, kind, namespace);
        match self
            .runtime
            .block_on(api.delete(name, &DeleteParams::default()))
        {
            Ok(_) => true,
            Err(kube::Error::Api(status)) if status.code == 404 => false,
            Err(e) => panic!("delete {kind} {name}: {e}"),
        }
    }

    fn get(
        &self,
        api_version: &str,
        kind: &str,
        namespace: Option<&str>,
        name: &str,
    ) -> Option<Value> {
        let api = self.dynamic(api_version, kind, namespace);
        let object = self.runtime.block_on(api.get_opt(name));
        let object = object.unwrap_or_else(|e| panic!("get {kind} {name}: {e}"));
        object.map(|o| serde_json::to_value(o).unwrap())
    }

    fn list(&self, api_version: &str, kind: &str) -> Vec<Value> {
        let api = self.dynamic(api_version, kind, None);
        let list = self.runtime.block_on(api.list(&ListParams::default()));
        let list = list.unwrap_or_else(|e| panic!("list {kind}: {e}"));
        list.items
            .into_iter()
            .map(|o| serde_json::to_value(o).unwrap())
            .collect()
    }

    /// Write requests to one hostaction object so far (answered 2xx or
    /// not), per `"{verb} {resource}[/status] {name}"`, from kube-apiserver's
    /// audit log.
    fn writes_to(&self) -> BTreeMap<String, u64> {
        let mut writes = BTreeMap::new();
        for write in audited_writes(&self.plane) {
            *writes.entry(write.key).or_default() += 1;
        }
        writes
    }

    /// Write requests answered 2xx, of `"{verb} {resource}[/status]"` (any
    /// object), from the audit log.
    fn writes(&self, of: &str) -> u64 {
        let of = format!("{of} ");
        let writes = audited_writes(&self.plane).into_iter();
        writes.filter(|w| w.ok && w.key.starts_with(&of)).count() as u64
    }

    /// From now on, refuses writes to the status of run `name` as `refusal`
    /// says (`None`: takes them again), by kube-apiserver's own admission
    /// mechanisms: a 403 or 422 by a ValidatingAdmissionPolicy, a 500 by a validating webhook that cannot be
    /// reached (`failurePolicy: Fail`). Returns once a canary run's status
    /// write is answered so.
    fn refuse_status_writes(&self, resource: &str, name: &str, refusal: Option<Refusal>) {
        assert_eq!(resource, "hostactionruns");
        const ADMISSION: &str = "admissionregistration.k8s.io/v1";
        let canary = format!("{name}-canary");
        if self
            .get(GROUP_VERSION, "HostActionRun", None, &canary)
            .is_none()
        {
            self.insert(run_object(
                &canary,
                "canary",
                &format!("registry.test/canary@sha256:{}", "0".repeat(64)),
                json!({}),
                30,
            ));
        }
        let object = format!("refuse-{name}");
        for kind in [
            "ValidatingAdmissionPolicyBinding",
            "ValidatingAdmissionPolicy",
            "ValidatingWebhookConfiguration",
        ] {
            self.remove(ADMISSION, kind, None, &object);
        }
        let named = format!("object.metadata.name in ['{name}', '{canary}']");
        let expected = match refusal {
            None => None,
            Some(Refusal { code: 500, .. }) => {
                self.insert(json!({
                    "apiVersion": ADMISSION,
                    "kind": "ValidatingWebhookConfiguration",
                    "metadata": {"name": object},
                    "webhooks": [{
                        "name": "refuse.hostaction.test",
                        // Nothing listens on port 1: every call fails.
                        "clientConfig": {"url": "https://127.0.0.1:1/refuse"},
                        "rules": [{
                            "apiGroups": ["hostaction.dev"],
                            "apiVersions": ["v1alpha1"],
                            "operations": ["UPDATE"],
                            "resources": ["hostactionruns/status"],
                        }],
                        "matchConditions": [{"name": "named", "expression": named}],
                        "failurePolicy": "Fail",
                        "sideEffects": "None",
                        "admissionReviewVersions": ["v1"],
                        "timeoutSeconds": 1,
                    }],
                }));
                Some(500)
            }
            Some(Refusal {
                code,
                only_with_log_tail,
            }) => {
                let reason = match code {
                    403 => "Forbidden",
                    422 => "Invalid",
                    413 => "RequestEntityTooLarge",
                    other => panic!("no admission policy answers {other}"),
                };
                let allowed = if only_with_log_tail {
                    format!("!({named}) || !has(object.status.logTail)")
                } else {
                    format!("!({named})")
                };
                self.insert(json!({
                    "apiVersion": ADMISSION,
                    "kind": "ValidatingAdmissionPolicy",
                    "metadata": {"name": object},
                    "spec": {
                        "failurePolicy": "Fail",
                        "matchConstraints": {"resourceRules": [{
                            "apiGroups": ["hostaction.dev"],
                            "apiVersions": ["v1alpha1"],
                            "operations": ["UPDATE"],
                            "resources": ["hostactionruns/status"],
                        }]},
                        "validations": [{
                            "expression": allowed,
                            "reason": reason,
                            "message": format!("the test refuses this status ({code})"),
                        }],
                    },
                }));
                self.insert(json!({
                    "apiVersion": ADMISSION,
                    "kind": "ValidatingAdmissionPolicyBinding",
                    "metadata": {"name": object},
                    "spec": {"policyName": object, "validationActions": ["Deny"]},
                }));
                Some(code)
            }
        };
        let runs = self.dynamic(GROUP_VERSION, "HostActionRun", None);
        let patch = Patch::Merge(json!({"status": {"logTail": ["canary"]}}));
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let answer =
                self.runtime
                    .block_on(runs.patch_status(&canary, &PatchParams::default(), &patch));
            let code = match &answer {
                Ok(_) => None,
                Err(kube::Error::Api(status)) => Some(status.code),
                Err(e) => panic!("the canary's status write: {e}"),
            };
            if code == expected {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "the refusal of {name} did not take effect: {answer:?}"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

/// One write in kube-apiserver's audit log.
struct Write {
    /// `"{verb} {resource}[/status] {name}"`.
    key: String,
    /// Answered 2xx.
    ok: bool,
    /// Who sent it (a client certificate's common name).
    user: String,
}

/// The writes in `plane`'s audit log, in the order they were answered.
fn audited_writes(plane: &ControlPlane) -> Vec<Write> {
    plane
        .audit_events()
        .into_iter()
        .filter(|e| e["stage"] == "ResponseComplete")
        .map(|e| {
            let object = &e["objectRef"];
            let mut resource = object["resource"].as_str().unwrap_or_default().to_owned();
            if let Some(sub) = object["subresource"].as_str() {
                resource = format!("{resource}/{sub}");
            }
            let name = object["name"].as_str().unwrap_or_default();
            let code = e["responseStatus"]["code"].as_u64().unwrap_or(0);
            let key = format!(
                "{} {resource} {name}",
                e["verb"].as_str().unwrap_or_default()
            );
            let user = e["user"]["username"]
                .as_str()
                .unwrap_or_default()
                .to_owned();
            Write {
                key,
                ok: (200..300).contains(&code),
                user,
            }
        })
        .collect()
}

/// One control plane, one registry, the controller, and agents.
struct Cluster {
    api: Api,
    registry: Registry,
    dir: tempfile::TempDir,
    kubeconfig: PathBuf,
    controller: Option<Child>,
    /// Node agents by node name, and controller replicas by identity.
    agents: BTreeMap<String, Child>,
    /// Agents started from now on mark a run `Running` after this many
    /// seconds (`--mark-running-after`; the agent's default is 1).
    mark_running_after: &'static str,
}

impl Cluster {
    /// A real control plane, the registry and the controller.
    fn new() -> Cluster {
        let mut cluster = Cluster::bare();
        cluster.start_controller();
        cluster
    }

    /// A real control plane and the registry, no controller: tests of one
    /// agent put runs in the API themselves ([`Cluster::insert_run`]).
    fn bare() -> Cluster {
        Cluster::on(Api::start(&workspace().join("manifests/crds.yaml")))
    }

    fn on(api: Api) -> Cluster {
        let dir = tempfile::tempdir().unwrap();
        let kubeconfig = dir.path().join("kubeconfig");
        api.write_kubeconfig(&kubeconfig);
        Cluster {
            api,
            registry: Registry::plain(),
            dir,
            kubeconfig,
            controller: None,
            agents: BTreeMap::new(),
            mark_running_after: "1",
        }
    }

    fn command(&self, log: &str) -> Command {
        self.command_of(&hostaction_bin(), log)
    }

    /// `program` with the admin's kubeconfig, logging to `log`.
    fn command_of(&self, program: &Path, log: &str) -> Command {
        let mut command = Command::new(program);
        let log = std::fs::File::create(self.dir.path().join(log)).unwrap();
        command
            .env("KUBECONFIG", &self.kubeconfig)
            .env("HOSTACTION_LOG", "info,kube=warn,hyper=warn")
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log);
        command
    }

    fn start_controller(&mut self) {
        let child = self
            .command_of(&hostaction_tests::controller_bin(), "controller.log")
            .args(["--plain-http", "--log-format", "text"])
            .args([
                "--metrics-addr",
                "127.0.0.1:0",
                "--identity",
                "controller-0",
            ])
            .spawn()
            .unwrap();
        self.controller = Some(child);
    }

    /// Starts a replica of the controller (the `hostaction-controller`
    /// binary, as its Deployment runs it) as `identity`, authenticated as
    /// user `identity` (in `system:masters`) so the audit log tells the
    /// replicas' writes apart, with the election's timings of [`LEASE`].
    fn start_replica(&mut self, identity: &str) {
        let binary = hostaction_tests::controller_bin();
        let config = self.api.plane.user_config(identity, Some("system:masters"));
        let kubeconfig = self.dir.path().join(format!("{identity}.kubeconfig"));
        let ca = self.api.plane.dir().join("serving-ca.crt");
        let user = &config.auth_info;
        let kubeconfig_json = json!({
            "apiVersion": "v1",
            "kind": "Config",
            "clusters": [{"name": "test", "cluster": {
                "server": self.api.plane.url(), "certificate-authority": ca,
            }}],
            "users": [{"name": identity, "user": {
                "client-certificate": user.client_certificate,
                "client-key": user.client_key,
            }}],
            "contexts": [{"name": "test", "context": {"cluster": "test", "user": identity}}],
            "current-context": "test",
        });
        std::fs::write(&kubeconfig, kubeconfig_json.to_string()).unwrap();
        let mut command = self.command_of(&binary, &format!("{identity}.log"));
        command
            .env("KUBECONFIG", &kubeconfig)
            .args(["--plain-http", "--log-format", "text"])
            .args(["--metrics-addr", "127.0.0.1:0", "--identity", identity])
            .args([
                "--lease-duration",
                &LEASE.duration.as_secs_f64().to_string(),
            ])
            .args([
                "--renew-deadline",
                &LEASE.renew_deadline.as_secs_f64().to_string(),
            ])
            .args([
                "--retry-period",
                &LEASE.retry_period.as_secs_f64().to_string(),
            ]);
        self.spawn_agent(identity, command);
    }

    /// The holder of the controller's Lease (`None`: released or absent).
    fn lease_holder(&self) -> Option<String> {
        let lease = self.api.get(
            "coordination.k8s.io/v1",
            "Lease",
            Some("hostaction-system"),
            "hostaction-controller",
        )?;
        lease["spec"]["holderIdentity"].as_str().map(str::to_owned)
    }

    /// Polls until `identity` holds the Lease (up to `secs`); how long that took.
    fn wait_for_holder(&self, identity: &str, secs: u64) -> Duration {
        let started = Instant::now();
        self.wait_for(secs, &format!("{identity} holding the lease"), |c| {
            c.lease_holder().as_deref() == Some(identity)
        });
        started.elapsed()
    }

    /// Starts the controller again if it exited (as its Deployment would).
    fn restart_exited_controller(&mut self) {
        let exited = self
            .controller
            .as_mut()
            .is_some_and(|c| c.try_wait().unwrap().is_some());
        if exited {
            eprintln!("the controller exited; starting it again");
            let log = self.dir.path().join("controller.log");
            let old = self.dir.path().join("controller-exited.log");
            std::fs::rename(&log, old).unwrap();
            self.start_controller();
        }
    }

    /// Pushes a guest with a one-file payload; returns the tag reference.
    fn push(&self, name: &str) -> String {
        self.push_both(name).0
    }

    /// Pushes a guest; returns its reference by digest, as runs carry it.
    fn push_pinned(&self, name: &str) -> String {
        self.push_both(name).1
    }

    /// Pushes a guest with a one-file payload; returns the tag reference
    /// and the reference by digest.
    fn push_both(&self, name: &str) -> (String, String) {
        let reference = format!("{}/actions/{name}:v1", self.registry.addr());
        let payload = self.dir.path().join("hello-plugin");
        std::fs::write(&payload, "#!/bin/sh\necho hello\n").unwrap();
        let out = Command::new(hostaction_bin())
            .args([
                "push",
                guest(name).to_str().unwrap(),
                &reference,
                "--plain-http",
            ])
            .arg("--payload")
            .arg(format!("hello-plugin={}", payload.display()))
            .output()
            .unwrap();
        assert!(out.status.success(), "push: {out:?}");
        let pinned = String::from_utf8(out.stdout).unwrap().trim().to_owned();
        assert!(pinned.contains("@sha256:"), "{pinned}");
        (reference, pinned)
    }

    /// A Node object, Ready or not, with `labels`.
    fn add_node(&self, name: &str, labels: Value, ready: bool) {
        self.api.insert(json!({
            "apiVersion": "v1",
            "kind": "Node",
            "metadata": {"name": name, "labels": labels},
            "status": {"conditions": [
                {"type": "Ready", "status": if ready { "True" } else { "False" }}
            ]},
        }));
    }

    /// The host root of node `name`'s agent.
    fn root(&self, name: &str) -> PathBuf {
        self.dir.path().join(format!("root-{name}"))
    }

    /// Starts node `name`'s agent over `root` (else its own scratch root),
    /// bounded by `policy` when given (else with no --policy: it grants
    /// nothing).
    fn start_agent(&mut self, name: &str, root: Option<&Path>, policy: Option<&str>) {
        let command = self.agent_command(name, root, policy);
        self.spawn_agent(name, command);
    }

    fn spawn_agent(&mut self, name: &str, mut command: Command) {
        self.agents
            .insert(name.to_owned(), command.spawn().unwrap());
    }

    /// The command that starts node `name`'s agent (see [`Cluster::start_agent`]).
    fn agent_command(&self, name: &str, root: Option<&Path>, policy: Option<&str>) -> Command {
        let root = root.map_or_else(|| self.root(name), Path::to_owned);
        std::fs::create_dir_all(&root).unwrap();
        let mut command = self.command(&format!("agent-{name}.log"));
        command
            .args([
                "agent",
                "--node-name",
                name,
                "--plain-http",
                "--log-format",
                "json",
            ])
            .args(["--metrics-addr", "127.0.0.1:0"])
            .args(["--mark-running-after", self.mark_running_after])
            .arg("--host-root")
            .arg(&root)
            .arg("--cache-dir")
            .arg(self.dir.path().join(format!("cache-{name}")));
        if let Some(policy) = policy {
            let file = self.dir.path().join(format!("policy-{name}.yaml"));
            std::fs::write(&file, policy).unwrap();
            command.arg("--policy").arg(file);
        }
        command
    }

    /// Puts a run for `node` in the API directly (as the controller would),
    /// of the probe `module` with `params`, granted /opt/cni/bin.
    fn insert_run(&self, name: &str, node: &str, module: &str, params: Value, timeout: i64) {
        self.api
            .insert(run_object(name, node, module, params, timeout));
    }

    /// Node `node`'s /opt/cni/bin (made), where the probe runs of the
    /// agent tests write.
    fn bin(&self, node: &str) -> PathBuf {
        let bin = self.root(node).join("opt/cni/bin");
        std::fs::create_dir_all(&bin).unwrap();
        bin
    }

    /// The run `name`.
    fn run(&self, name: &str) -> Value {
        self.api
            .get(GROUP_VERSION, "HostActionRun", None, name)
            .unwrap()
    }

    /// Write requests (taken or refused) to run `name`'s status.
    fn status_writes(&self, name: &str) -> u64 {
        let key = format!("patch hostactionruns/status {name}");
        self.api.writes_to().get(&key).copied().unwrap_or(0)
    }

    /// Polls `done` every 20 ms for up to `secs`; on time-out fails with
    /// every run and the logs.
    fn wait_for(&self, secs: u64, what: &str, mut done: impl FnMut(&Cluster) -> bool) {
        let deadline = Instant::now() + Duration::from_secs(secs);
        while Instant::now() < deadline {
            if done(self) {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        panic!(
            "timed out waiting for {what}\nruns: {:#?}\nwrites: {:#?}\n{}",
            self.api.list(GROUP_VERSION, "HostActionRun"),
            self.api.writes_to(),
            self.logs()
        );
    }

    /// Sends `signal` (`TERM`, `INT`) to node `name`'s agent and waits up
    /// to `secs` for it to exit; its exit status.
    fn signal_agent(&mut self, name: &str, signal: &str, secs: u64) -> std::process::ExitStatus {
        let mut child = self.agents.remove(name).unwrap();
        let sent = Command::new("kill")
            .arg(format!("-{signal}"))
            .arg(child.id().to_string())
            .status()
            .unwrap();
        assert!(sent.success());
        let deadline = Instant::now() + Duration::from_secs(secs);
        loop {
            if let Some(status) = child.try_wait().unwrap() {
                return status;
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                panic!(
                    "the agent did not exit within {secs} s of SIG{signal}\n{}",
                    self.logs()
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Kills node `name`'s agent at once (no chance to clean up).
    fn kill_agent(&mut self, name: &str) {
        let mut child = self.agents.remove(name).unwrap();
        child.kill().unwrap();
        child.wait().unwrap();
    }

    fn apply(&self, name: &str, spec: Value) {
        self.api.insert(json!({
            "apiVersion": GROUP_VERSION,
            "kind": "HostAction",
            "metadata": {"name": name},
            "spec": spec,
        }));
    }

    fn action(&self, name: &str) -> Value {
        self.api
            .get(GROUP_VERSION, "HostAction", None, name)
            .unwrap()
    }

    /// `name`'s runs by node.
    fn runs(&self, action: &str) -> BTreeMap<String, Value> {
        self.api
            .list(GROUP_VERSION, "HostActionRun")
            .into_iter()
            .filter(|r| r["spec"]["action"] == action)
            .map(|r| (r["spec"]["nodeName"].as_str().unwrap().to_owned(), r))
            .collect()
    }

    /// Polls `done` every 20 ms for up to `secs`; on time-out fails with the
    /// runs, the action and the logs.
    fn wait(&self, action: &str, secs: u64, what: &str, mut done: impl FnMut(&Cluster) -> bool) {
        let deadline = Instant::now() + Duration::from_secs(secs);
        while Instant::now() < deadline {
            if done(self) {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        panic!(
            "timed out waiting for {what}\naction: {:#}\nruns: {:#?}\n{}",
            self.action(action),
            self.runs(action),
            self.logs()
        );
    }

    fn logs(&self) -> String {
        let mut all = String::new();
        for entry in std::fs::read_dir(self.dir.path()).unwrap().flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            if name.ends_with(".log") {
                let text = std::fs::read_to_string(entry.path()).unwrap_or_default();
                let tail: Vec<&str> = text.lines().rev().take(30).collect();
                all += &format!("--- {name} (last lines)\n");
                for line in tail.into_iter().rev() {
                    all += line;
                    all.push('\n');
                }
            }
        }
        all
    }

    /// The reasons of the Events recorded for the action.
    fn event_reasons(&self) -> Vec<String> {
        self.api
            .list("events.k8s.io/v1", "Event")
            .into_iter()
            .map(|e| e["reason"].as_str().unwrap_or_default().to_owned())
            .collect()
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        for child in self.agents.values_mut().chain(self.controller.as_mut()) {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

fn phase(run: &Value) -> &str {
    run["status"]["phase"].as_str().unwrap_or("Pending")
}

fn finished(run: &Value) -> bool {
    matches!(phase(run), "Succeeded" | "Failed" | "Interrupted")
}

fn condition<'a>(action: &'a Value, type_: &str) -> &'a Value {
    action["status"]["conditions"]
        .as_array()
        .and_then(|c| c.iter().find(|c| c["type"] == type_))
        .unwrap_or(&Value::Null)
}

fn cni_spec(module: &str, max_concurrent: Value, max_failures: i64) -> Value {
    json!({
        "module": module,
        "params": {"name": "pods", "bridge": "cni0", "subnet": "10.244.0.0/16"},
        "grants": serde_json::from_str::<Value>(CNI_GRANT).unwrap(),
        "nodeSelector": {"matchLabels": {"role": "worker"}},
        "rollout": {"maxConcurrent": max_concurrent, "maxFailures": max_failures},
        "timeoutSeconds": 30,
    })
}

#[test]
fn cni_install_rolls_out_one_node_at_a_time_and_reaches_a_node_that_joins_later() {
    let mut cluster = Cluster::new();
    // Longer than any run here takes, even on a loaded machine (a first run
    // compiles the module), so that each run costs exactly one status write;
    // the mark itself is tested with a spinning run below.
    cluster.mark_running_after = "60";
    let module = cluster.push("cni-install");
    for node in ["n1", "n2", "n3"] {
        cluster.add_node(node, json!({"role": "worker"}), true);
        cluster.start_agent(node, None, Some(CNI_POLICY));
    }
    cluster.add_node("db", json!({"role": "database"}), true);
    cluster.add_node("down", json!({"role": "worker"}), false);
    cluster.apply("cni", cni_spec(&module, json!(1), 0));

    // Never more than one unfinished run at a time.
    let mut most_active = 0;
    cluster.wait("cni", 60, "3 runs Succeeded", |c| {
        let runs = c.runs("cni");
        most_active = most_active.max(runs.values().filter(|r| !finished(r)).count());
        runs.len() == 3 && runs.values().all(|r| phase(r) == "Succeeded")
    });
    assert_eq!(most_active, 1, "maxConcurrent 1 paces the rollout");
    cluster.wait("cni", 20, "status Complete", |c| {
        condition(&c.action("cni"), "Complete")["status"] == "True"
    });

    let action = cluster.action("cni");
    let status = &action["status"];
    assert_eq!(status["selectedNodes"], 3, "{status:#}");
    assert_eq!(status["counts"]["succeeded"], 3, "{status:#}");
    assert_eq!(status["observedGeneration"], 1);
    let digest = status["resolvedDigest"].as_str().unwrap().to_owned();
    assert!(digest.starts_with("sha256:"), "{digest}");
    let runs = cluster.runs("cni");
    assert_eq!(
        runs.keys().collect::<Vec<_>>(),
        ["n1", "n2", "n3"],
        "not db, not the NotReady node"
    );
    for (node, run) in &runs {
        // Pinned by the digest resolved once, labelled, owned.
        assert_eq!(
            run["spec"]["module"],
            format!("{}/actions/cni-install@{digest}", cluster.registry.addr())
        );
        assert_eq!(
            run["metadata"]["labels"]["hostaction.dev/node"],
            node.as_str()
        );
        assert_eq!(run["metadata"]["ownerReferences"][0]["name"], "cni");
        assert_eq!(run["status"]["attempts"], 1);
        assert_eq!(run["status"]["changed"], true);
        // The node's own host root got the plugin and the conflist.
        let root = cluster.root(node);
        assert_eq!(
            std::fs::read_to_string(root.join("opt/cni/bin/hello-plugin")).unwrap(),
            "#!/bin/sh\necho hello\n"
        );
        assert!(root.join("etc/cni/net.d").read_dir().unwrap().count() >= 1);
    }
    // One status write per short run (no separate Running mark).
    assert_eq!(cluster.api.writes("patch hostactionruns/status"), 3);
    let reasons = cluster.event_reasons();
    assert!(reasons.contains(&"Resolved".to_owned()), "{reasons:?}");
    assert!(reasons.contains(&"Complete".to_owned()), "{reasons:?}");
    // The controller held its Lease.
    let lease = cluster
        .api
        .get(
            "coordination.k8s.io/v1",
            "Lease",
            Some("hostaction-system"),
            "hostaction-controller",
        )
        .expect("the controller's lease");
    assert_eq!(lease["spec"]["holderIdentity"], "controller-0");

    // A node joining later gets its run, at the same digest.
    cluster.add_node("n4", json!({"role": "worker"}), true);
    cluster.start_agent("n4", None, Some(CNI_POLICY));
    cluster.wait("cni", 60, "n4's run Succeeded", |c| {
        c.runs("cni")
            .get("n4")
            .is_some_and(|r| phase(r) == "Succeeded")
    });
    cluster.wait("cni", 20, "4 selected and succeeded", |c| {
        let status = &c.action("cni")["status"];
        status["selectedNodes"] == 4 && status["counts"]["succeeded"] == 4
    });
    assert!(cluster.root("n4").join("opt/cni/bin/hello-plugin").exists());

    // A node that leaves takes its run with it.
    cluster.api.remove("v1", "Node", None, "n4");
    cluster.wait("cni", 20, "n4's run deleted", |c| {
        !c.runs("cni").contains_key("n4")
    });
    cluster.wait("cni", 20, "3 selected again", |c| {
        c.action("cni")["status"]["selectedNodes"] == 3
    });
}

#[test]
fn max_failures_stops_the_rollout() {
    let mut cluster = Cluster::new();
    let module = cluster.push("cni-install");
    // The node administrators allow only /etc/cni/net.d: every run is
    // refused (it needs /opt/cni/bin too) and fails.
    let policy = "files: {write: [/etc/cni/net.d]}\n";
    for node in ["n1", "n2", "n3", "n4"] {
        cluster.add_node(node, json!({"role": "worker"}), true);
        cluster.start_agent(node, None, Some(policy));
    }
    cluster.apply("cni", cni_spec(&module, json!(1), 1));
    cluster.wait("cni", 60, "the Failed condition", |c| {
        condition(&c.action("cni"), "Failed")["status"] == "True"
    });
    // Give the controller time it would use to go on, if it did.
    std::thread::sleep(Duration::from_secs(2));
    let runs = cluster.runs("cni");
    assert_eq!(
        runs.len(),
        2,
        "one failure tolerated, the second stops it: {runs:#?}"
    );
    for run in runs.values() {
        assert_eq!(phase(run), "Failed");
        let message = run["status"]["message"].as_str().unwrap();
        assert!(message.contains("/opt/cni/bin"), "{message}");
    }
    let action = cluster.action("cni");
    assert_eq!(action["status"]["counts"]["failed"], 2);
    assert_eq!(
        condition(&action, "Failed")["reason"],
        "FailureBudgetExceeded"
    );
    assert_eq!(condition(&action, "Progressing")["status"], "False");
    assert!(
        cluster
            .event_reasons()
            .contains(&"FailureBudgetExceeded".to_owned())
    );
    // Nothing was written outside the policy.
    for node in ["n1", "n2"] {
        assert!(!cluster.root(node).join("opt/cni/bin").exists());
    }
}

#[test]
fn an_agent_killed_mid_run_and_an_api_outage_lose_nothing() {
    let mut cluster = Cluster::new();
    // A run that takes its whole 8 s deadline: the probe spinning (long
    // enough to be killed mid-run after it is marked Running, even on a
    // loaded machine).
    let probe = cluster.push("probe");
    cluster.add_node("slow", json!({"role": "batch"}), true);
    cluster.start_agent("slow", None, Some(CNI_POLICY));
    cluster.apply(
        "spin",
        json!({
            "module": probe,
            "params": {"ops": [{"op": "spin"}]},
            // The probe imports `files`; it must be granted for it to start.
            "grants": {"files": {"write": ["/opt/cni/bin"]}},
            "nodeSelector": {"matchLabels": {"role": "batch"}},
            "timeoutSeconds": 8,
        }),
    );
    // Marked Running after a second; then the agent is killed.
    cluster.wait("spin", 30, "the run marked Running", |c| {
        c.runs("spin")
            .get("slow")
            .is_some_and(|r| phase(r) == "Running")
    });
    cluster.kill_agent("slow");
    cluster.start_agent("slow", None, Some(CNI_POLICY));
    // The restarted agent runs it again (attempt 2) to its end.
    cluster.wait("spin", 30, "the re-run finished", |c| {
        c.runs("spin").get("slow").is_some_and(finished)
    });
    let run = &cluster.runs("spin")["slow"];
    assert_eq!(run["status"]["attempts"], 2, "{run:#}");
    assert_eq!(phase(run), "Failed", "the deadline ends a spinning run");

    // A rollout across an API outage: kube-apiserver is killed mid-rollout
    // (every watch and request fails), stays down 3 s, and is started again
    // over the same etcd (resourceVersions go on).
    let module = cluster.push("cni-install");
    for node in ["n1", "n2", "n3"] {
        cluster.add_node(node, json!({"role": "worker"}), true);
        cluster.start_agent(node, None, Some(CNI_POLICY));
    }
    cluster.apply("cni", cni_spec(&module, json!(1), 0));
    cluster.wait("cni", 60, "the first run", |c| !c.runs("cni").is_empty());
    cluster.api.plane.stop_apiserver();
    std::thread::sleep(Duration::from_secs(3));
    cluster.api.plane.restart_apiserver();
    let restarted = Instant::now();
    // Watches fail while it is down, and on its return kube-apiserver
    // answers watches from before its restart with 410 Expired (its watch
    // cache starts afresh): the controller and the agents re-list after
    // their watch back-off, at most 5 s (kube's default grows to 30 s,
    // which held the rollout 25-75 s). If the outage plus kube-apiserver's
    // start-up outlast the controller's renew deadline (10 s, a loaded
    // machine), it gives up its Lease and exits, as documented; its
    // Deployment would start it again, and so does this.
    let deadline = restarted + Duration::from_secs(180);
    loop {
        let runs = cluster.runs("cni");
        if runs.len() == 3 && runs.values().all(|r| phase(r) == "Succeeded") {
            break;
        }
        cluster.restart_exited_controller();
        if Instant::now() > deadline {
            panic!(
                "all 3 Succeeded after the outage\nruns: {runs:#?}\n{}",
                cluster.logs()
            );
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let resumed = restarted.elapsed();
    eprintln!("the rollout completed {resumed:?} after kube-apiserver was back");
    // What remains of the rollout (two or three short runs, one at a time)
    // takes a few seconds; the rest is the watches' back-off.
    assert!(
        resumed <= RESUME_BOUND,
        "the rollout completed {resumed:?} after kube-apiserver was back\n{}",
        cluster.logs()
    );
    cluster.wait("cni", 30, "status caught up", |c| {
        c.action("cni")["status"]["counts"]["succeeded"] == 3
    });
    for (node, run) in cluster.runs("cni") {
        assert_eq!(run["status"]["attempts"], 1, "{node} ran once");
        assert!(
            cluster
                .root(&node)
                .join("opt/cni/bin/hello-plugin")
                .exists()
        );
    }
}

/// Two controller replicas on one Lease, each its own identity and user:
/// only the holder creates runs; SIGKILLed mid-rollout, the other takes the
/// lease over once it has expired (not before) and completes the rollout,
/// no run created twice or lost; SIGTERM releases the lease, so a third
/// replica takes over at once.
#[test]
fn two_controller_replicas_hand_the_rollout_over_through_a_real_lease() {
    let mut cluster = Cluster::bare();
    // Longer than any run takes: one status write per run.
    cluster.mark_running_after = "60";
    let module = cluster.push("cni-install");
    for node in ["n1", "n2", "n3", "n4"] {
        cluster.add_node(node, json!({"role": "worker"}), true);
        cluster.start_agent(node, None, Some(CNI_POLICY));
    }
    cluster.start_replica("ctl-a");
    cluster.wait_for_holder("ctl-a", 60);
    cluster.start_replica("ctl-b");
    cluster.apply("cni", cni_spec(&module, json!(1), 0));

    // Mid-rollout (one run at a time, four to go): the leader dies.
    cluster.wait("cni", 60, "the first run Succeeded", |c| {
        c.runs("cni").values().any(|r| phase(r) == "Succeeded")
    });
    let runs_before = cluster.runs("cni").len();
    assert!(runs_before < 4, "not mid-rollout: {runs_before} runs");
    assert_eq!(cluster.lease_holder().as_deref(), Some("ctl-a"));
    let writes = audited_writes(&cluster.api.plane);
    assert!(
        writes.iter().any(|w| w.user == "ctl-a" && w.ok),
        "the leader wrote nothing"
    );
    let standby: Vec<&String> = writes
        .iter()
        .filter(|w| w.user == "ctl-b")
        .map(|w| &w.key)
        .collect();
    assert!(standby.is_empty(), "the standby wrote {standby:?}");
    cluster.kill_agent("ctl-a");
    let took = cluster.wait_for_holder("ctl-b", 90);
    // Not before the lease expired: its last renewal was at most a retry
    // period (and a request) before the kill, and the standby waits a
    // whole lease duration after it saw the last change.
    assert!(
        took >= LEASE.duration - 2 * LEASE.retry_period,
        "took over a live lease after {took:?}"
    );
    // Soon after: a lease duration and a retry period, plus slack for a
    // loaded machine.
    assert!(
        took <= LEASE.duration + LEASE.retry_period + Duration::from_secs(15),
        "took over after {took:?}\n{}",
        cluster.logs()
    );
    cluster.wait("cni", 120, "4 runs Succeeded", |c| {
        let runs = c.runs("cni");
        runs.len() == 4 && runs.values().all(|r| phase(r) == "Succeeded")
    });
    cluster.wait("cni", 30, "status Complete", |c| {
        condition(&c.action("cni"), "Complete")["status"] == "True"
    });

    // Every run created once, by the leader of the moment; none lost.
    let creates: Vec<Write> = audited_writes(&cluster.api.plane)
        .into_iter()
        .filter(|w| w.key.starts_with("create hostactionruns "))
        .collect();
    let refused: Vec<&String> = creates.iter().filter(|w| !w.ok).map(|w| &w.key).collect();
    assert!(refused.is_empty(), "creates refused (twice?): {refused:?}");
    let mut names: Vec<&str> = creates.iter().map(|w| w.key.as_str()).collect();
    names.sort_unstable();
    names.dedup();
    assert_eq!(names.len(), 4, "{names:?}");
    assert_eq!(creates.len(), 4, "a run created twice");
    let by_a = creates.iter().filter(|w| w.user == "ctl-a").count();
    let by_b = creates.iter().filter(|w| w.user == "ctl-b").count();
    assert!(by_a >= 1 && by_a <= runs_before, "ctl-a created {by_a}");
    assert_eq!(by_a + by_b, 4, "only the replicas created runs");
    for (node, run) in cluster.runs("cni") {
        assert_eq!(run["status"]["attempts"], 1, "{node} ran once: {run:#}");
    }

    // Graceful: SIGTERM makes the leader release the lease; a standby
    // takes it over at its next attempt, well within a lease duration.
    cluster.start_replica("ctl-c");
    // The standby has seen the lease held (it logs so) before the hand-over.
    cluster.wait_for(60, "ctl-c waiting on the lease", |c| {
        std::fs::read_to_string(c.dir.path().join("ctl-c.log"))
            .unwrap_or_default()
            .contains("lease held by another replica")
    });
    let terminated = Instant::now();
    let exited = cluster.signal_agent("ctl-b", "TERM", 30);
    assert!(exited.success(), "ctl-b on SIGTERM: {exited:?}");
    let took = terminated.elapsed() + cluster.wait_for_holder("ctl-c", 60);
    assert!(
        took < LEASE.duration - 2 * LEASE.retry_period,
        "a released lease taken over after {took:?}"
    );
    // The new leader acts: a node joining gets its run, from ctl-c.
    cluster.add_node("n5", json!({"role": "worker"}), true);
    cluster.start_agent("n5", None, Some(CNI_POLICY));
    cluster.wait("cni", 60, "n5's run Succeeded", |c| {
        c.runs("cni")
            .get("n5")
            .is_some_and(|r| phase(r) == "Succeeded")
    });
    let n5: Vec<String> = audited_writes(&cluster.api.plane)
        .into_iter()
        .filter(|w| w.key.starts_with("create hostactionruns ") && w.key.contains(".n5."))
        .map(|w| w.user)
        .collect();
    assert_eq!(n5, ["ctl-c"]);
}

/// The vxlan-overlay sample on two nodes, each agent with its own host root
/// whose network namespaces are its own.
#[test]
fn vxlan_overlay_reaches_two_nodes_each_in_its_own_namespaces() {
    let mut cluster = Cluster::new();
    let module = cluster.push("vxlan-overlay");
    let hosts = [Host::new(), Host::new()];
    // Each node: a "host" namespace with an underlay device and address.
    let underlay = json!({"ops": [
        {"op": "ensure-netns", "name": "ovl-h"},
        {"op": "ensure-link", "netns": "ovl-h", "name": "ve-ovl-ul",
         "kind": {"type": "veth", "peer": "ve-ovl-up", "peer_netns": "ovl-h"}, "up": true},
        {"op": "ensure-address", "netns": "ovl-h", "device": "ve-ovl-ul", "address": "192.168.50.1/24"},
    ]});
    let underlay_grant = "network:\n  netns: [ovl-h]\n  interfaces: [ve-ovl-ul, ve-ovl-up]\n  \
                          kinds: [veth]\n  addresses: [192.168.50.0/24]\n";
    // The nodes' policy allows what the sample's grant asks.
    let grants_yaml = std::fs::read_to_string(
        hostaction_tests::workspace().join("sample-actions/vxlan-overlay/grants.yaml"),
    )
    .unwrap();
    for (i, host) in hosts.iter().enumerate() {
        let report = host.run("netprobe", &underlay, underlay_grant).unwrap();
        for r in probe_results(&report) {
            assert_eq!(r["ok"], true, "{r}");
        }
        let node = format!("o{i}");
        cluster.add_node(&node, json!({"hostaction.dev/overlay": ""}), true);
        cluster.start_agent(&node, Some(host.root.path()), Some(&grants_yaml));
    }
    let grants: Value = serde_yaml_ng::from_str(&grants_yaml).unwrap();
    cluster.apply(
        "overlay",
        json!({
            "module": module,
            "params": {
                "netns": "ovl-h",
                "bridge": "br-ovl",
                "mtu": 1450,
                "vxlan": {"name": "vx-ovl", "vni": 42, "local": "192.168.50.1",
                          "remote": "192.168.50.2", "port": 4789, "device": "ve-ovl-ul"},
                "workload": {"netns": "ovl-w", "hostEnd": "ve-ovl", "name": "ve-ovl-w",
                             "address": "10.244.0.1/24"},
            },
            "grants": grants,
            "nodeSelector": {"matchExpressions": [{"key": "hostaction.dev/overlay", "operator": "Exists"}]},
            "rollout": {"maxConcurrent": "50%"},
        }),
    );
    cluster.wait("overlay", 60, "both runs Succeeded", |c| {
        let runs = c.runs("overlay");
        runs.len() == 2 && runs.values().all(|r| phase(r) == "Succeeded")
    });
    for host in &hosts {
        let vx = host
            .link("ovl-h", "vx-ovl")
            .expect("vx-ovl in the node's namespace");
        assert_eq!(vx["linkinfo"]["info_data"]["id"], 42);
        assert_eq!(vx["master"], "br-ovl");
        assert_eq!(host.addresses("ovl-w", "ve-ovl-w"), ["10.244.0.1/24"]);
    }
}

/// A run for `node` as the controller would create it, of the probe
/// `module` with `params`, granted /opt/cni/bin.
fn run_object(name: &str, node: &str, module: &str, params: Value, timeout: i64) -> Value {
    json!({
        "apiVersion": GROUP_VERSION,
        "kind": "HostActionRun",
        "metadata": {"name": name, "labels": {"hostaction.dev/node": node}},
        "spec": {
            "action": "direct",
            "generation": 1,
            "nodeName": node,
            "module": module,
            "params": params,
            "grants": {"files": {"write": ["/opt/cni/bin"]}},
            "timeoutSeconds": timeout,
        },
    })
}

/// Writes `manifests/crds.yaml` to `path` (as a JSON list) without the
/// CEL rule on HostActionRun's `spec.module`: the CRDs of a release that
/// did not have it.
fn write_crds_without_run_module_rule(path: &Path) {
    let text = std::fs::read_to_string(workspace().join("manifests/crds.yaml")).unwrap();
    let mut removed = 0;
    let mut items = Vec::new();
    let documents = text.split("\n---\n").filter(|d| !d.trim().is_empty());
    for document in documents {
        let mut crd: Value = serde_yaml_ng::from_str(document).unwrap();
        if crd["spec"]["names"]["kind"] == "HostActionRun" {
            for version in crd["spec"]["versions"].as_array_mut().unwrap() {
                let spec = &mut version["schema"]["openAPIV3Schema"]["properties"]["spec"];
                let module = spec["properties"]["module"].as_object_mut().unwrap();
                removed += usize::from(module.remove("x-kubernetes-validations").is_some());
            }
        }
        items.push(crd);
    }
    assert!(removed > 0, "no CEL rule on HostActionRun's spec.module");
    let list = json!({"apiVersion": "v1", "kind": "List", "items": items});
    std::fs::write(path, list.to_string()).unwrap();
}

/// The probe params of a run that writes `file` under /opt/cni/bin.
fn writes_file(file: &str) -> Value {
    json!({"ops": [{"op": "ensure-file", "path": format!("/opt/cni/bin/{file}"), "contents": "x", "mode": 420}]})
}

/// A status the API server refuses for good (422: invalid, here a status
/// with a log tail; 403: an admission policy) does not hold the node: the agent writes a shrunk
/// status that says why, once, or gives up and records it in its journal,
/// so that a restarted agent neither re-runs nor re-reports the run.
#[test]
fn a_status_refused_for_good_is_shrunk_or_given_up_and_the_node_goes_on() {
    let mut cluster = Cluster::bare();
    cluster.mark_running_after = "60";
    let probe = cluster.push_pinned("probe");
    let api = &cluster.api;
    // The full status of `big` (a long log) is refused as invalid (an
    // admission policy refusing a status with a log tail, as a too large
    // one would be); a small one passes. Every status write of `forbidden`
    // is refused by an admission policy.
    api.refuse_status_writes(
        "hostactionruns",
        "big",
        Some(Refusal {
            code: 422,
            only_with_log_tail: true,
        }),
    );
    api.refuse_status_writes(
        "hostactionruns",
        "forbidden",
        Some(Refusal {
            code: 403,
            only_with_log_tail: false,
        }),
    );
    cluster.insert_run(
        "big",
        "n1",
        &probe,
        json!({"ops": [{"op": "log-flood", "bytes": 20000}]}),
        30,
    );
    cluster.insert_run("forbidden", "n1", &probe, writes_file("forbidden"), 30);
    cluster.bin("n1");
    cluster.start_agent("n1", None, Some(CNI_POLICY));
    cluster.insert_run("after", "n1", &probe, writes_file("after"), 30);
    cluster.wait_for(60, "the run after the refused ones", |c| {
        phase(&c.run("after")) == "Succeeded"
    });
    cluster.wait_for(30, "big's shrunk status", |c| {
        phase(&c.run("big")) == "Succeeded"
    });
    let big = cluster.run("big");
    let message = big["status"]["message"].as_str().unwrap();
    assert!(
        message.contains("refused") && message.contains("422"),
        "{message}"
    );
    assert!(big["status"]["logTail"].is_null(), "{big:#}");
    assert!(
        big["status"]["logLinesDropped"].as_i64().unwrap() >= 19,
        "{big:#}"
    );
    cluster.wait_for(30, "forbidden given up", |c| {
        c.logs().contains("giving up on the run's status")
    });
    // One full write and one shrunk write each, no more.
    assert_eq!(cluster.status_writes("big"), 2);
    assert_eq!(cluster.status_writes("forbidden"), 2);
    assert_eq!(phase(&cluster.run("forbidden")), "Pending");

    // A restarted agent neither runs `forbidden` again nor writes it.
    cluster.kill_agent("n1");
    std::fs::remove_file(cluster.root("n1").join("opt/cni/bin/forbidden")).unwrap();
    cluster.bin("n1");
    cluster.start_agent("n1", None, Some(CNI_POLICY));
    cluster.insert_run("later", "n1", &probe, writes_file("later"), 30);
    cluster.wait_for(60, "a run after the restart", |c| {
        phase(&c.run("later")) == "Succeeded"
    });
    std::thread::sleep(Duration::from_secs(2));
    assert_eq!(cluster.status_writes("forbidden"), 2);
    assert!(!cluster.root("n1").join("opt/cni/bin/forbidden").exists());
}

/// A status write that fails for a while (500s: a validating webhook that
/// cannot be reached) is retried with growing
/// back-off after the run has given up the node's run slot: the next run
/// goes on meanwhile, and the status is written once the API takes it.
#[test]
fn a_status_write_that_keeps_failing_backs_off_outside_the_run_slot() {
    let mut cluster = Cluster::bare();
    cluster.mark_running_after = "60";
    let probe = cluster.push_pinned("probe");
    cluster.api.refuse_status_writes(
        "hostactionruns",
        "flaky",
        Some(Refusal {
            code: 500,
            only_with_log_tail: false,
        }),
    );
    cluster.insert_run("flaky", "n1", &probe, writes_file("flaky"), 30);
    cluster.bin("n1");
    cluster.start_agent("n1", None, Some(CNI_POLICY));
    cluster.wait_for(60, "flaky's first status write", |c| {
        c.status_writes("flaky") >= 1
    });
    cluster.insert_run("next", "n1", &probe, writes_file("next"), 30);
    cluster.wait_for(60, "the next run, while flaky's status is refused", |c| {
        phase(&c.run("next")) == "Succeeded"
    });
    // Back-off 1, 2, 4, 8 s (each drawn down to half at most): no more than
    // 5 tries in 10 s, where a retry every second made 10.
    let before = cluster.status_writes("flaky");
    std::thread::sleep(Duration::from_secs(10));
    let tries = cluster.status_writes("flaky") - before;
    assert!(tries <= 5, "{tries} status writes in 10 s");
    cluster
        .api
        .refuse_status_writes("hostactionruns", "flaky", None);
    cluster.wait_for(90, "flaky's status once the API takes it", |c| {
        phase(&c.run("flaky")) == "Succeeded"
    });
    assert_eq!(cluster.run("flaky")["status"]["attempts"], 1);
}

/// A result in the run journal that the API never takes is replayed by a
/// bounded number of agent starts (5), then given up: the 6th start does
/// not write it, and the node goes on.
#[test]
fn a_journaled_status_is_replayed_by_a_bounded_number_of_agent_starts() {
    let mut cluster = Cluster::bare();
    cluster.mark_running_after = "60";
    let probe = cluster.push_pinned("probe");
    cluster.api.refuse_status_writes(
        "hostactionruns",
        "stuck",
        Some(Refusal {
            code: 500,
            only_with_log_tail: false,
        }),
    );
    cluster.insert_run("stuck", "n1", &probe, writes_file("stuck"), 30);
    cluster.bin("n1");
    cluster.start_agent("n1", None, Some(CNI_POLICY));
    cluster.wait_for(60, "stuck's first status write", |c| {
        c.status_writes("stuck") >= 1
    });
    for replay in 1..=5 {
        let before = cluster.status_writes("stuck");
        cluster.kill_agent("n1");
        cluster.bin("n1");
        cluster.start_agent("n1", None, Some(CNI_POLICY));
        cluster.wait_for(60, &format!("replay {replay} of stuck's status"), |c| {
            c.status_writes("stuck") > before
        });
    }
    cluster.kill_agent("n1");
    let before = cluster.status_writes("stuck");
    cluster.bin("n1");
    cluster.start_agent("n1", None, Some(CNI_POLICY));
    cluster.insert_run("marker", "n1", &probe, writes_file("marker"), 30);
    cluster.wait_for(60, "a run after the last start", |c| {
        phase(&c.run("marker")) == "Succeeded"
    });
    std::thread::sleep(Duration::from_secs(2));
    assert_eq!(cluster.status_writes("stuck"), before, "given up");
    assert!(cluster.logs().contains("giving up on the run's status"));
}

/// A cluster agent runs a registry reference pinned by digest and nothing
/// else: not a node-local file named like one (`/path/x@sha256:...`), not a
/// `file://` URL, not a tag, not a reference without a registry host.
///
/// The CRD's CEL rule on `spec.module` refuses such runs at creation; the
/// agent's own check stands behind it for a cluster whose CRD lacks the
/// rule (an older CRD): here `manifests/crds.yaml` with that one rule taken
/// out, applied over the real one.
#[test]
fn a_cluster_agent_runs_only_registry_references_pinned_by_digest() {
    let mut cluster = Cluster::bare();
    cluster.mark_running_after = "60";
    let (tagged, pinned) = cluster.push_both("probe");
    let zeros = format!("sha256:{}", "0".repeat(64));
    // A file on the node named like a pinned reference.
    let local = cluster.dir.path().join(format!("evil@{zeros}"));
    std::fs::copy(guest("probe"), &local).unwrap();
    let digest = pinned.rsplit_once('@').unwrap().1.to_owned();
    let refused = [
        ("path", local.display().to_string()),
        ("url", format!("file://{}", local.display())),
        ("tag", tagged),
        ("nohost", format!("actions/probe@{digest}")),
    ];
    // The real CRD refuses every one of them.
    let runs = cluster.api.dynamic(GROUP_VERSION, "HostActionRun", None);
    let create = |name: &str, module: &str| {
        let run = run_object(name, "n1", module, writes_file("pwned"), 30);
        let run: DynamicObject = serde_json::from_value(run).unwrap();
        cluster
            .api
            .runtime
            .block_on(runs.create(&PostParams::default(), &run))
    };
    for (name, module) in &refused {
        match create(name, module) {
            Err(kube::Error::Api(status)) => {
                assert_eq!(status.code, 422, "{module}: {status:?}");
                assert!(status.message.contains("pinned by digest"), "{status:?}");
            }
            other => panic!("{module} was not refused: {other:?}"),
        }
    }
    // An older CRD, without that rule: they get through to the agent.
    let relaxed = cluster.dir.path().join("crds-without-module-rule.json");
    write_crds_without_run_module_rule(&relaxed);
    cluster.api.plane.apply_and_wait_for_crds(&relaxed);
    for (name, module) in &refused {
        // The API server takes a moment to serve the changed schema.
        let deadline = Instant::now() + Duration::from_secs(60);
        while let Err(e) = create(name, module) {
            assert!(Instant::now() < deadline, "{module} still refused: {e}");
            std::thread::sleep(Duration::from_millis(200));
        }
    }
    cluster.insert_run("pinned", "n1", &pinned, writes_file("fine"), 30);
    cluster.bin("n1");
    cluster.start_agent("n1", None, Some(CNI_POLICY));
    cluster.wait_for(60, "every run finished", |c| {
        refused
            .iter()
            .map(|(name, _)| *name)
            .chain(["pinned"])
            .all(|name| finished(&c.run(name)))
    });
    for (name, module) in &refused {
        let run = cluster.run(name);
        assert_eq!(phase(&run), "Failed", "{module}: {run:#}");
        let message = run["status"]["message"].as_str().unwrap();
        assert!(
            message.contains("spec.module") && message.contains("registry reference"),
            "{module}: {message}"
        );
    }
    assert_eq!(phase(&cluster.run("pinned")), "Succeeded");
    let bin = cluster.root("n1").join("opt/cni/bin");
    assert!(bin.join("fine").exists());
    assert!(!bin.join("pwned").exists(), "a refused module ran");
}

/// An agent started without --policy grants nothing, in cluster mode and
/// in static mode; --unbounded-grants is the explicit opt-out, logged.
#[test]
fn an_agent_without_a_policy_grants_nothing_unless_told_to_be_unbounded() {
    let mut cluster = Cluster::bare();
    cluster.mark_running_after = "60";
    let probe = cluster.push_pinned("probe");
    cluster.bin("strict");
    cluster.bin("open");
    cluster.start_agent("strict", None, None);
    let mut open = cluster.agent_command("open", None, None);
    open.arg("--unbounded-grants");
    cluster.spawn_agent("open", open);
    cluster.insert_run("strict-run", "strict", &probe, writes_file("x"), 30);
    cluster.insert_run("open-run", "open", &probe, writes_file("x"), 30);
    cluster.wait_for(60, "both runs finished", |c| {
        finished(&c.run("strict-run")) && finished(&c.run("open-run"))
    });
    let strict = cluster.run("strict-run");
    assert_eq!(phase(&strict), "Failed", "{strict:#}");
    let message = strict["status"]["message"].as_str().unwrap();
    assert!(
        message.contains("refused") && message.contains("--policy"),
        "{message}"
    );
    assert!(!cluster.root("strict").join("opt/cni/bin/x").exists());
    assert_eq!(phase(&cluster.run("open-run")), "Succeeded");
    assert!(cluster.root("open").join("opt/cni/bin/x").exists());
    let log = std::fs::read_to_string(cluster.dir.path().join("agent-open.log")).unwrap();
    assert!(
        log.matches("unbounded").count() >= 2,
        "warned at start and on the run: {log}"
    );

    // Static mode: the same rule.
    let manifests = cluster.dir.path().join("manifests");
    std::fs::create_dir_all(&manifests).unwrap();
    let action = json!({
        "apiVersion": GROUP_VERSION,
        "kind": "HostAction",
        "metadata": {"name": "write"},
        "spec": {
            "module": guest("probe"),
            "params": writes_file("static"),
            "grants": {"files": {"write": ["/opt/cni/bin"]}},
        },
    });
    std::fs::write(manifests.join("write.json"), action.to_string()).unwrap();
    let root = cluster.root("static");
    cluster.bin("static");
    let once = |extra: &[&str], state: &str| {
        Command::new(hostaction_bin())
            .args(["agent", "--once", "--manifests"])
            .arg(&manifests)
            .arg("--host-root")
            .arg(&root)
            .arg("--state")
            .arg(cluster.dir.path().join(state))
            .arg("--cache-dir")
            .arg(cluster.dir.path().join("cache-static"))
            .args(extra)
            .output()
            .unwrap()
    };
    let out = once(&[], "state-strict.json");
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    assert!(!root.join("opt/cni/bin/static").exists());
    let state = std::fs::read_to_string(cluster.dir.path().join("state-strict.json")).unwrap();
    assert!(state.contains("--policy"), "{state}");
    let out = once(&["--unbounded-grants"], "state-open.json");
    assert_eq!(out.status.code(), Some(0), "{out:?}");
    assert!(root.join("opt/cni/bin/static").exists());
    assert!(String::from_utf8_lossy(&out.stderr).contains("unbounded"));
}

/// A run's status fits its byte budget whatever the run logs and changes:
/// the log tail and effects are shortened to fit and say how many were
/// dropped.
#[test]
fn a_run_status_fits_its_byte_budget() {
    use hostaction_crds::run::{LINE_BYTES, STATUS_BYTES};
    let mut cluster = Cluster::bare();
    cluster.mark_running_after = "60";
    let probe = cluster.push_pinned("probe");
    // 196 log lines of 1 KiB and a last one, 100 effects with 200-byte names.
    let mut ops = vec![json!({"op": "log-flood", "bytes": 200_000})];
    for i in 0..100 {
        let file = format!("{i:03}{}", "f".repeat(197));
        ops.push(json!({"op": "ensure-file", "path": format!("/opt/cni/bin/{file}"), "contents": "x", "mode": 420}));
    }
    ops.push(json!({"op": "log", "message": "the last line"}));
    cluster.insert_run("noisy", "n1", &probe, json!({"ops": ops}), 60);
    cluster.bin("n1");
    cluster.start_agent("n1", None, Some(CNI_POLICY));
    cluster.wait_for(90, "the noisy run", |c| finished(&c.run("noisy")));
    let status = &cluster.run("noisy")["status"];
    assert_eq!(phase(&cluster.run("noisy")), "Succeeded", "{status:#}");
    let bytes = serde_json::to_vec(status).unwrap().len();
    assert!(bytes <= STATUS_BYTES, "{bytes} bytes: {status:#}");
    let tail = status["logTail"].as_array().unwrap();
    assert!(!tail.is_empty());
    assert!(tail.iter().all(|l| l.as_str().unwrap().len() <= LINE_BYTES));
    assert!(
        tail.last()
            .unwrap()
            .as_str()
            .unwrap()
            .ends_with("the last line")
    );
    let logged = tail.len() as i64 + status["logLinesDropped"].as_i64().unwrap();
    assert_eq!(logged, 197, "{status:#}");
    assert_eq!(status["effectCount"], 100);
    let effects = status["effects"].as_array().unwrap();
    assert!(!effects.is_empty());
    assert_eq!(
        effects.len() as i64 + status["effectsDropped"].as_i64().unwrap(),
        100
    );
}

/// SIGTERM and SIGINT stop the agent cleanly (exit 0): idle at once, and
/// mid-run after the run in flight finished and was reported.
#[test]
fn the_agent_stops_cleanly_on_sigterm_and_sigint() {
    let mut cluster = Cluster::bare();
    let probe = cluster.push_pinned("probe");
    // Idle, after a first run (its watch and client are up).
    cluster.bin("n1");
    cluster.start_agent("n1", None, Some(CNI_POLICY));
    cluster.insert_run("first", "n1", &probe, writes_file("first"), 30);
    cluster.wait_for(60, "the first run", |c| {
        phase(&c.run("first")) == "Succeeded"
    });
    let status = cluster.signal_agent("n1", "TERM", 30);
    assert_eq!(status.code(), Some(0), "{status:?}\n{}", cluster.logs());

    cluster.bin("n1");
    cluster.start_agent("n1", None, Some(CNI_POLICY));
    cluster.insert_run("second", "n1", &probe, writes_file("second"), 30);
    cluster.wait_for(60, "the second run", |c| {
        phase(&c.run("second")) == "Succeeded"
    });
    let status = cluster.signal_agent("n1", "INT", 30);
    assert_eq!(status.code(), Some(0), "{status:?}\n{}", cluster.logs());

    // Mid-run: a 3 s spin, marked Running after 1 s, finishes (at its
    // deadline) and is reported before the agent exits.
    cluster.bin("n1");
    cluster.start_agent("n1", None, Some(CNI_POLICY));
    cluster.insert_run("spin", "n1", &probe, json!({"ops": [{"op": "spin"}]}), 3);
    cluster.wait_for(60, "the spin marked Running", |c| {
        phase(&c.run("spin")) == "Running"
    });
    let status = cluster.signal_agent("n1", "TERM", 40);
    assert_eq!(status.code(), Some(0), "{status:?}\n{}", cluster.logs());
    let spin = cluster.run("spin");
    assert_eq!(phase(&spin), "Failed", "the deadline ends it: {spin:#}");
    assert_eq!(spin["status"]["attempts"], 1);
}
