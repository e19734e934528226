//! Static mode (`hostaction agent --manifests DIR`): HostAction manifests
//! applied from a directory with no API server, through the CLI as a node
//! runs it — selected by node labels, run once per spec, again after a
//! change or an agent that stopped mid-run, bad manifests recorded by name.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::{Duration, Instant};

use hostaction_tests::{guest, hostaction_bin};
use serde_json::Value;

struct Node {
    dir: tempfile::TempDir,
}

impl Node {
    fn new() -> Self {
        let node = Self {
            dir: tempfile::tempdir().unwrap(),
        };
        for d in ["manifests", "root"] {
            std::fs::create_dir_all(node.path(d)).unwrap();
        }
        node
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    fn manifest(&self, file: &str, text: &str) {
        std::fs::write(self.path("manifests").join(file), text).unwrap();
    }

    fn args(&self) -> Vec<String> {
        [
            "--cache-dir",
            path_str(&self.path("cache")),
            "agent",
            "--manifests",
            path_str(&self.path("manifests")),
            "--host-root",
            path_str(&self.path("root")),
            "--state",
            path_str(&self.path("state.json")),
            "--node-label",
            "role=worker",
            "--unbounded-grants", // a scratch root: no node policy needed
        ]
        .map(str::to_owned)
        .to_vec()
    }

    fn once(&self) -> Output {
        Command::new(hostaction_bin())
            .args(self.args())
            .arg("--once")
            .output()
            .unwrap()
    }

    fn state(&self) -> Value {
        serde_json::from_slice(&std::fs::read(self.path("state.json")).unwrap()).unwrap()
    }
}

fn path_str(p: &Path) -> &str {
    p.to_str().unwrap()
}

fn cni_install(name: &str) -> String {
    format!(
        r#"apiVersion: hostaction.dev/v1alpha1
kind: HostAction
metadata:
  name: cni
spec:
  module: {module}
  params:
    name: {name}
  grants:
    files:
      write: [/etc/cni/net.d, /opt/cni/bin]
  nodeSelector:
    matchLabels:
      role: worker
"#,
        module = guest("cni-install").display()
    )
}

fn attempts(state: &Value) -> i64 {
    state["actions"]["cni"]["status"]["attempts"]
        .as_i64()
        .unwrap()
}

#[test]
fn manifests_run_once_per_spec_and_again_after_a_change_or_an_interrupted_run() {
    let node = Node::new();
    node.manifest("cni.yaml", &cni_install("first"));
    node.manifest(
        "gpu.yaml",
        &cni_install("gpu")
            .replace("name: cni", "name: gpu-only")
            .replace("role: worker", "role: gpu"),
    );
    node.manifest(
        "bad.yaml",
        "apiVersion: hostaction.dev/v1alpha1\nkind: HostAction\nmetadata: {name: bad}\nspec: {module: registry.example/a:v1, timeoutSeconds: 0}\n",
    );

    // A bad manifest fails the pass (exit 1) but not the others.
    let out = node.once();
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    let state = node.state();
    assert_eq!(
        state["actions"]["cni"]["status"]["phase"], "Succeeded",
        "{state:#}"
    );
    assert_eq!(state["actions"]["cni"]["status"]["changed"], true);
    assert_eq!(attempts(&state), 1);
    assert!(node.path("root/etc/cni/net.d/10-first.conflist").is_file());
    let bad = state["errors"].as_object().unwrap();
    assert!(
        bad.iter().any(|(file, why)| file.ends_with("bad.yaml")
            && why.as_str().unwrap().contains("spec.timeoutSeconds")),
        "{state:#}"
    );
    // Not selected by this node's labels: recorded, never run.
    assert_eq!(state["actions"]["gpu-only"]["selected"], false);
    assert_eq!(state["actions"]["gpu-only"]["status"]["attempts"], 0);

    // The same specs again: nothing runs.
    std::fs::remove_file(node.path("manifests/bad.yaml")).unwrap();
    let out = node.once();
    assert_eq!(out.status.code(), Some(0), "{out:?}");
    assert_eq!(attempts(&node.state()), 1);

    // A changed spec runs again (a new generation: its first attempt).
    node.manifest("cni.yaml", &cni_install("second"));
    assert_eq!(node.once().status.code(), Some(0));
    assert_eq!(attempts(&node.state()), 1);
    assert!(node.path("root/etc/cni/net.d/10-second.conflist").is_file());

    // An agent that stopped mid-run left it Running: it runs again.
    let mut state = node.state();
    state["actions"]["cni"]["status"]["phase"] = "Running".into();
    std::fs::write(node.path("state.json"), state.to_string()).unwrap();
    assert_eq!(node.once().status.code(), Some(0));
    let state = node.state();
    assert_eq!(state["actions"]["cni"]["status"]["phase"], "Succeeded");
    assert_eq!(attempts(&state), 2);
    assert_eq!(state["actions"]["cni"]["status"]["changed"], false);
}

#[test]
fn paused_actions_wait_a_corrupt_state_is_set_aside_and_a_run_that_keeps_stopping_the_agent_ends() {
    let node = Node::new();
    node.manifest(
        "cni.yaml",
        &cni_install("paused").replace("  grants:", "  rollout: {paused: true}\n  grants:"),
    );
    assert_eq!(
        node.once().status.code(),
        Some(1),
        "a paused action has not succeeded"
    );
    assert_eq!(attempts(&node.state()), 0);
    assert!(!node.path("root/etc/cni/net.d/10-paused.conflist").exists());

    node.manifest("cni.yaml", &cni_install("resumed"));
    std::fs::write(node.path("state.json"), "{not json").unwrap();
    assert_eq!(node.once().status.code(), Some(0));
    assert!(node.path("state.json.corrupt").is_file());
    assert_eq!(attempts(&node.state()), 1);

    // Left Running three times (the agent stopped during each attempt).
    let mut state = node.state();
    state["actions"]["cni"]["status"]["phase"] = "Running".into();
    state["actions"]["cni"]["status"]["attempts"] = 3.into();
    std::fs::write(node.path("state.json"), state.to_string()).unwrap();
    assert_eq!(node.once().status.code(), Some(1));
    let state = node.state();
    assert_eq!(
        state["actions"]["cni"]["status"]["phase"], "Interrupted",
        "{state:#}"
    );
    assert_eq!(attempts(&state), 3);
}

/// A state file with values no agent writes (far-future or far-past
/// times, negative or huge counts) is clamped or set aside: never a panic
/// (a far-future `finishedAt` plus an interval overflowed on every pass).
#[test]
fn a_hostile_state_file_is_clamped_or_set_aside_never_a_panic() {
    let node = Node::new();
    node.manifest(
        "cni.yaml",
        &cni_install("hourly").replace("  grants:", "  rerun: {intervalSeconds: 3600}\n  grants:"),
    );
    assert_eq!(node.once().status.code(), Some(0));
    let write = |edit: &dyn Fn(&mut Value)| {
        let mut state = node.state();
        edit(&mut state["actions"]["cni"]["status"]);
        std::fs::write(node.path("state.json"), state.to_string()).unwrap();
    };

    // The last representable time (an hour more overflows): taken as now,
    // so the interval counts from now and nothing runs.
    write(&|s| {
        s["finishedAt"] = "9999-12-30T22:00:00Z".into();
        s["startedAt"] = "9999-12-30T22:00:00Z".into();
    });
    let out = node.once();
    assert_eq!(out.status.code(), Some(0), "{out:?}");
    assert!(!node.path("state.json.corrupt").exists());
    let state = node.state();
    let finished = state["actions"]["cni"]["status"]["finishedAt"]
        .as_str()
        .unwrap();
    assert!(finished.starts_with("20"), "{state:#}");
    assert_eq!(attempts(&state), 1);

    // The first representable time: the interval passed, it runs again.
    write(&|s| s["finishedAt"] = "-009999-01-03T00:00:00Z".into());
    let out = node.once();
    assert_eq!(out.status.code(), Some(0), "{out:?}");
    assert!(!node.path("state.json.corrupt").exists());
    let state = node.state();
    assert_eq!(attempts(&state), 2);
    let finished = state["actions"]["cni"]["status"]["finishedAt"]
        .as_str()
        .unwrap();
    assert!(finished.starts_with("20"), "{state:#}");

    // Counts no agent writes: the file is set aside and the action runs
    // afresh.
    for (field, value) in [
        ("attempts", Value::from(-5)),
        ("attempts", Value::from(i64::MAX)),
        ("effectCount", Value::from(-1)),
        ("attempts", Value::from(1e300)),
    ] {
        let _ = std::fs::remove_file(node.path("state.json.corrupt"));
        write(&|s| s[field] = value.clone());
        let out = node.once();
        assert_eq!(out.status.code(), Some(0), "{field} {value}: {out:?}");
        assert!(node.path("state.json.corrupt").is_file(), "{field} {value}");
        assert_eq!(attempts(&node.state()), 1, "{field} {value}");
    }
}

/// Manifests are capped in size, JSON ones parsed as JSON, and YAML ones
/// with too many flow collections refused before the YAML parser (whose
/// time is quadratic in their nesting: 600 KB took 57 s a pass); the
/// others in the directory still run.
#[test]
fn oversized_and_deeply_nested_manifests_are_refused_quickly_and_the_others_run() {
    let node = Node::new();
    node.manifest("cni.yaml", &cni_install("yaml"));
    let json = serde_json::json!({
        "apiVersion": "hostaction.dev/v1alpha1",
        "kind": "HostAction",
        "metadata": {"name": "cni-json"},
        "spec": {
            "module": guest("cni-install"),
            "params": {"name": "json"},
            "grants": {"files": {"write": ["/etc/cni/net.d", "/opt/cni/bin"]}},
        },
    });
    node.manifest("cni-json.json", &json.to_string());
    let nested = |depth: usize| {
        format!(
            "apiVersion: hostaction.dev/v1alpha1\nkind: HostAction\nmetadata: {{name: deep}}\n\
             spec: {{module: x.wasm, params: {}{}}}\n",
            "{a: ".repeat(depth),
            "}".repeat(depth)
        )
    };
    node.manifest("deep.yaml", &nested(150_000)); // 750 KB
    node.manifest(
        "deep-small.yaml",
        &nested(40_000).replace("deep}", "deep-small}"),
    ); // 200 KB
    node.manifest(
        "deep.json",
        &format!("{}{}", r#"{"a":"#.repeat(40_000), "}".repeat(40_000)),
    );

    let started = Instant::now();
    let out = node.once();
    assert!(
        started.elapsed() < Duration::from_secs(20),
        "took {:?}",
        started.elapsed()
    );
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    let state = node.state();
    for name in ["cni", "cni-json"] {
        assert_eq!(
            state["actions"][name]["status"]["phase"], "Succeeded",
            "{name}: {state:#}"
        );
    }
    assert!(node.path("root/etc/cni/net.d/10-yaml.conflist").is_file());
    assert!(node.path("root/etc/cni/net.d/10-json.conflist").is_file());
    let error = |file: &str| {
        let errors = state["errors"].as_object().unwrap();
        let (_, why) = errors
            .iter()
            .find(|(path, _)| path.ends_with(&format!("/{file}")))
            .unwrap_or_else(|| panic!("no error for {file}: {state:#}"));
        why.as_str().unwrap().to_owned()
    };
    assert!(
        error("deep.yaml").contains("larger than 256 KiB, the cap of a manifest file"),
        "{state:#}"
    );
    assert!(
        error("deep-small.yaml").contains("more than 256"),
        "{state:#}"
    );
    assert!(error("deep.json").contains("recursion limit"), "{state:#}");
}

#[test]
fn the_watching_agent_reapplies_a_changed_manifest() {
    let node = Node::new();
    node.manifest("cni.yaml", &cni_install("watched"));
    let agent = Command::new(hostaction_bin())
        .args(node.args())
        .args(["--interval", "0.2"])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let _agent = Killed(agent);
    let wait_for = |what: &str, done: &dyn Fn(&Value) -> bool| {
        let start = Instant::now();
        loop {
            let state = std::fs::read(node.path("state.json"))
                .ok()
                .and_then(|b| serde_json::from_slice::<Value>(&b).ok());
            if state.as_ref().is_some_and(done) {
                return;
            }
            assert!(
                start.elapsed() < Duration::from_secs(30),
                "{what}: {state:?}"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    };
    wait_for("first run", &|s| {
        s["actions"]["cni"]["status"]["phase"] == "Succeeded"
    });
    let first_hash = node.state()["actions"]["cni"]["specHash"].clone();
    // Written whole (rename), as an editor or a config tool would.
    let tmp = node.path("cni.yaml.new");
    std::fs::write(&tmp, cni_install("rewatched")).unwrap();
    std::fs::rename(&tmp, node.path("manifests/cni.yaml")).unwrap();
    wait_for("run after the change", &|s| {
        s["actions"]["cni"]["specHash"] != first_hash
            && s["actions"]["cni"]["status"]["phase"] == "Succeeded"
    });
    assert!(
        node.path("root/etc/cni/net.d/10-rewatched.conflist")
            .is_file()
    );
}

/// A child process killed when the test ends, passed or not.
struct Killed(std::process::Child);

impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// `spec.drift` in static mode: a pass after the interval re-runs the
/// applied action in plan mode and records in the state file whether the
/// node drifted and what the plan would change; `remediate: true` puts it
/// back. (The interval is passed by setting the last check's time back in
/// the state file.)
#[test]
fn drift_is_recorded_in_the_state_file_and_remediated_when_asked() {
    let node = Node::new();
    let manifest = |action: &str, name: &str, remediate: bool| {
        cni_install(name)
            .replace("name: cni\n", &format!("name: {action}\n"))
            .replace(
                "  nodeSelector:",
                &format!(
                    "  drift: {{intervalSeconds: 10, remediate: {remediate}}}\n  nodeSelector:"
                ),
            )
    };
    node.manifest("watch.yaml", &manifest("watch", "watched", false));
    node.manifest("fix.yaml", &manifest("fix", "fixed", true));
    let once = |what: &str| {
        let out = node.once();
        assert!(
            out.status.success(),
            "{what}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    };
    once("the first pass applies both");
    let watched = node.path("root/etc/cni/net.d/10-watched.conflist");
    let fixed = node.path("root/etc/cni/net.d/10-fixed.conflist");
    let (watched_bytes, fixed_bytes) = (
        std::fs::read(&watched).unwrap(),
        std::fs::read(&fixed).unwrap(),
    );
    once("the second pass checks drift");
    let state = node.state();
    for action in ["watch", "fix"] {
        assert_eq!(
            state["actions"][action]["drift"]["drifted"], false,
            "{state:#}"
        );
    }

    std::fs::write(&watched, "tampered\n").unwrap();
    std::fs::write(&fixed, "tampered\n").unwrap();
    // A pass before the interval passed checks nothing.
    once("a pass within the interval");
    assert_eq!(node.state()["actions"]["watch"]["drift"]["drifted"], false);
    let mut state = node.state();
    for action in ["watch", "fix"] {
        state["actions"][action]["drift"]["checkedAt"] = 0.into();
    }
    std::fs::write(node.path("state.json"), state.to_string()).unwrap();
    once("a pass after the interval");
    let state = node.state();
    let watch = &state["actions"]["watch"]["drift"];
    assert_eq!(watch["drifted"], true, "{state:#}");
    let message = watch["message"].as_str().unwrap();
    assert!(
        message.contains("/etc/cni/net.d/10-watched.conflist") && message.contains("-tampered"),
        "{message}"
    );
    assert_eq!(
        std::fs::read(&watched).unwrap(),
        b"tampered\n",
        "only recorded"
    );
    let fix = &state["actions"]["fix"]["drift"];
    assert_eq!(fix["drifted"], false, "{state:#}");
    assert_eq!(fix["remediations"], 1, "{state:#}");
    assert!(
        fix["message"].as_str().unwrap().starts_with("put back:"),
        "{state:#}"
    );
    assert_eq!(std::fs::read(&fixed).unwrap(), fixed_bytes, "put back");
    assert_ne!(watched_bytes, b"tampered\n");
}

/// An agent killed mid-run (SIGKILL, by the `HOSTACTION_TEST_CRASH` hook
/// right after the run's 7th change: six directories and the conflist made)
/// leaves its run's journal open; the next start rolls that run back before
/// anything else, then runs the action again (its second attempt, as the
/// attempts rule says), which completes.
#[test]
fn an_agent_killed_mid_run_rolls_it_back_at_its_next_start_then_runs_it_again() {
    use std::os::unix::process::ExitStatusExt;
    let node = Node::new();
    node.manifest("cni.yaml", &cni_install("crashed"));
    let out = Command::new(hostaction_bin())
        .args(node.args())
        .arg("--once")
        .env("HOSTACTION_TEST_CRASH", "after:7")
        .output()
        .unwrap();
    assert_eq!(
        out.status.signal(),
        Some(9),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(node.state()["actions"]["cni"]["status"]["phase"], "Running");
    let conflist = node.path("root/etc/cni/net.d/10-crashed.conflist");
    assert!(conflist.is_file(), "killed after the conflist was written");
    let journals = || {
        let out = Command::new(hostaction_bin())
            .args(["--cache-dir", path_str(&node.path("cache"))])
            .args(["undo", "--list", "--output", "json"])
            .output()
            .unwrap();
        serde_json::from_slice::<Value>(&out.stdout).unwrap()
    };
    let open = journals();
    assert_eq!(open.as_array().map(Vec::len), Some(1), "{open:#}");
    assert!(open[0]["end"].is_null(), "{open:#}");

    let out = node.once();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert!(stderr.contains("did not finish"), "{stderr}");
    let state = node.state();
    assert_eq!(
        state["actions"]["cni"]["status"]["phase"], "Succeeded",
        "{state:#}"
    );
    assert_eq!(attempts(&state), 2, "{state:#}");
    assert!(conflist.is_file());
    let ended: Vec<Value> = journals().as_array().cloned().unwrap_or_default();
    let rolled_back = ended.iter().find(|j| j["runId"] == open[0]["runId"]);
    assert_eq!(
        rolled_back.map(|j| &j["end"]),
        Some(&Value::from("rolled-back")),
        "{ended:#?}"
    );
}
