//! hostaction on a cluster, end to end: the real controller (`hostaction
//! controller`, with its Lease) and several real agents (`hostaction agent
//! --node-name`, each with its own node name, host root and module cache)
//! run as processes against the Kubernetes API-server test double
//! (`tests/src/apiserver.rs`; no kube-apiserver can run here) and a real
//! OCI registry on 127.0.0.1 (Debian's docker-registry).
//!
//! The vxlan-overlay test needs root (network namespaces; CI runs as root).

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use hostaction_tests::apiserver::ApiServer;
use hostaction_tests::registry::Registry;
use hostaction_tests::{Host, guest, hostaction_bin, probe_results};
use serde_json::{Value, json};

const GROUP_VERSION: &str = "hostaction.dev/v1alpha1";
const CNI_GRANT: &str = r#"{"files": {"write": ["/etc/cni/net.d", "/opt/cni/bin"]}}"#;

/// One API server double, one registry, the controller, and agents.
struct Cluster {
    api: ApiServer,
    registry: Registry,
    dir: tempfile::TempDir,
    kubeconfig: PathBuf,
    controller: Option<Child>,
    agents: BTreeMap<String, Child>,
    /// Agents started from now on mark a run `Running` after this many
    /// seconds (`--mark-running-after`; the agent's default is 1).
    mark_running_after: &'static str,
}

impl Cluster {
    fn new() -> Cluster {
        let dir = tempfile::tempdir().unwrap();
        let api = ApiServer::start().unwrap();
        let kubeconfig = dir.path().join("kubeconfig");
        api.write_kubeconfig(&kubeconfig).unwrap();
        let mut cluster = Cluster {
            api,
            registry: Registry::plain(),
            dir,
            kubeconfig,
            controller: None,
            agents: BTreeMap::new(),
            mark_running_after: "1",
        };
        cluster.start_controller();
        cluster
    }

    fn command(&self, log: &str) -> Command {
        let mut command = Command::new(hostaction_bin());
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
            .command("controller.log")
            .args(["controller", "--plain-http", "--log-format", "text"])
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

    /// Pushes a guest with a one-file payload; returns the tag reference.
    fn push(&self, name: &str) -> String {
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
        reference
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
    /// bounded by `policy` when given.
    fn start_agent(&mut self, name: &str, root: Option<&Path>, policy: Option<&str>) {
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
        self.agents
            .insert(name.to_owned(), command.spawn().unwrap());
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
        cluster.start_agent(node, None, None);
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
    assert_eq!(cluster.api.writes().get("patch hostactionruns/status"), 3);
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
    cluster.start_agent("n4", None, None);
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
    cluster.start_agent("slow", None, None);
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
    cluster.start_agent("slow", None, None);
    // The restarted agent runs it again (attempt 2) to its end.
    cluster.wait("spin", 30, "the re-run finished", |c| {
        c.runs("spin").get("slow").is_some_and(finished)
    });
    let run = &cluster.runs("spin")["slow"];
    assert_eq!(run["status"]["attempts"], 2, "{run:#}");
    assert_eq!(phase(run), "Failed", "the deadline ends a spinning run");

    // A rollout across an API outage: the double refuses everything and
    // ends every watch for 3 s mid-rollout, then comes back.
    let module = cluster.push("cni-install");
    for node in ["n1", "n2", "n3"] {
        cluster.add_node(node, json!({"role": "worker"}), true);
        cluster.start_agent(node, None, None);
    }
    cluster.apply("cni", cni_spec(&module, json!(1), 0));
    cluster.wait("cni", 60, "the first run", |c| !c.runs("cni").is_empty());
    cluster.api.set_available(false);
    std::thread::sleep(Duration::from_secs(3));
    cluster.api.set_available(true);
    cluster.wait("cni", 90, "all 3 Succeeded after the outage", |c| {
        let runs = c.runs("cni");
        runs.len() == 3 && runs.values().all(|r| phase(r) == "Succeeded")
    });
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
    for (i, host) in hosts.iter().enumerate() {
        let report = host.run("netprobe", &underlay, underlay_grant).unwrap();
        for r in probe_results(&report) {
            assert_eq!(r["ok"], true, "{r}");
        }
        let node = format!("o{i}");
        cluster.add_node(&node, json!({"hostaction.dev/overlay": ""}), true);
        cluster.start_agent(&node, Some(host.root.path()), None);
    }
    let grants: Value = serde_yaml_ng::from_str(
        &std::fs::read_to_string(
            hostaction_tests::workspace().join("sample-actions/vxlan-overlay/grants.yaml"),
        )
        .unwrap(),
    )
    .unwrap();
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
