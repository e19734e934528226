//! Compiling in a bounded child process, through the real `hostaction`
//! binary: a compile past its memory or time limit fails naming the limit
//! and leaves nothing in the cache (and no compiler process behind); a
//! module compiled by the child runs as one compiled in process; the idle
//! agent holds none of the compiler's memory; an agent refuses a module
//! over its size cap.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::{Duration, Instant};

use hostaction_tests::{Host, guest, hostaction_bin};
use serde_json::{Value, json};

const PYTHON: &str = "python-probe";
const PROBE_GRANT: &str = "files: {write: [/opt/probe]}";

fn hostaction(args: &[&str]) -> Output {
    hostaction_in(args, &std::env::temp_dir())
}

/// `hostaction ARGS` with `TMPDIR` set to `tmp`.
fn hostaction_in(args: &[&str], tmp: &Path) -> Output {
    Command::new(hostaction_bin())
        .env("TMPDIR", tmp)
        .args(args)
        .output()
        .unwrap()
}

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

/// Every file under `dir` (none when it does not exist).
fn files_under(dir: &Path) -> Vec<PathBuf> {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    entries
        .flatten()
        .flat_map(|e| {
            if e.file_type().unwrap().is_dir() {
                files_under(&e.path())
            } else {
                vec![e.path()]
            }
        })
        .collect()
}

/// Processes whose command line mentions `needle`.
fn processes_mentioning(needle: &str) -> Vec<String> {
    std::fs::read_dir("/proc")
        .unwrap()
        .flatten()
        .filter_map(|e| std::fs::read(e.path().join("cmdline")).ok())
        .map(|c| String::from_utf8_lossy(&c).replace('\0', " "))
        .filter(|c| c.contains(needle))
        .collect()
}

/// `hostaction inspect` of the Python probe with a fresh cache and `limits`:
/// it fails (bad module) naming `expected`, within a generous time, and
/// leaves no file in the cache and no compiler process running.
fn assert_compile_fails(limits: &[&str], expected: &str) {
    let cache = tempfile::tempdir().unwrap();
    let started = Instant::now();
    let mut args = vec!["--cache-dir", s(cache.path())];
    args.extend_from_slice(limits);
    let module = guest(PYTHON);
    args.extend_from_slice(&["inspect", s(&module)]);
    let out = hostaction(&args);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{out:?}");
    assert!(stderr.contains(expected), "{stderr}");
    assert!(
        started.elapsed() < Duration::from_secs(60),
        "{:?}",
        started.elapsed()
    );
    assert_eq!(files_under(cache.path()), Vec::<PathBuf>::new());
    assert_eq!(
        processes_mentioning(s(cache.path())),
        Vec::<String>::new(),
        "a compiler process outlived its parent"
    );
}

#[test]
fn a_compile_over_its_memory_limit_fails_naming_it_and_caches_nothing() {
    assert_compile_fails(
        &["--compile-memory-mib", "64"],
        "compiling the module exceeded its 64 MiB memory limit",
    );
}

#[test]
fn a_compile_past_its_time_limit_is_killed_naming_it_and_caches_nothing() {
    // The Python probe takes seconds of CPU to compile.
    assert_compile_fails(
        &["--compile-timeout", "0.5"],
        "compiling the module exceeded its 0.5 s time limit",
    );
}

/// `hostaction run --output json` of the Rust probe ensuring one file, on a
/// fresh host root, with `TMPDIR` at `tmp`; returns the JSON and the host root.
fn cli_run(cache: &[&str], tmp: &Path) -> (Value, tempfile::TempDir) {
    let root = tempfile::tempdir().unwrap();
    let grants = root.path().join("grants.yaml");
    std::fs::write(&grants, PROBE_GRANT).unwrap();
    let module = guest("probe");
    let mut args = cache.to_vec();
    args.extend_from_slice(&[
        "run",
        s(&module),
        "--host-root",
        s(root.path()),
        "--grants",
        s(&grants),
        "--output",
        "json",
        "--params",
    ]);
    let params = probe_params().to_string();
    args.push(&params);
    let out = hostaction_in(&args, tmp);
    assert_eq!(out.status.code(), Some(0), "{out:?}");
    (serde_json::from_slice(&out.stdout).unwrap(), root)
}

fn probe_params() -> Value {
    json!({"ops": [{"op": "ensure-file", "path": "/opt/probe/state", "contents": "ready\n", "mode": 420}]})
}

#[test]
fn a_module_compiled_by_the_child_runs_as_one_compiled_in_process() {
    let in_process = Host::new()
        .run("probe", &probe_params(), PROBE_GRANT)
        .unwrap();
    let expected = serde_json::to_value(&in_process).unwrap();
    let same = |json: &Value| {
        for field in ["status", "outcome", "effects"] {
            assert_eq!(json["report"][field], expected[field], "{field}: {json:#}");
        }
    };

    let (cache, tmp) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let with_cache = ["--cache-dir", s(cache.path())];
    let (first, _root) = cli_run(&with_cache, tmp.path());
    assert_eq!(first["module"]["source"], "compiled", "{first:#}");
    assert!(first["module"]["compile"]["peakRssBytes"].as_u64().unwrap() > 0);
    same(&first);
    // The child's code is in the cache: the next process loads it.
    let (second, _root) = cli_run(&with_cache, tmp.path());
    assert_eq!(second["module"]["source"], "disk-cache", "{second:#}");
    same(&second);

    // Without a cache, the child writes into a private temporary directory,
    // gone after the load.
    let (third, _root) = cli_run(&["--no-cache"], tmp.path());
    assert_eq!(third["module"]["source"], "compiled", "{third:#}");
    same(&third);
    assert_eq!(
        std::fs::read_dir(tmp.path()).unwrap().count(),
        0,
        "temporary compile files left behind"
    );
}

/// A static agent (not `--once`: it stays up) applying `module` from a
/// manifest; killed when dropped.
struct Agent {
    child: std::process::Child,
    dir: tempfile::TempDir,
}

impl Agent {
    fn start(module: &Path, params: &str, grant: &str, extra: &[&str]) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let p = |n: &str| dir.path().join(n);
        std::fs::create_dir_all(p("manifests")).unwrap();
        std::fs::create_dir_all(p("root")).unwrap();
        std::fs::write(p("policy.yaml"), grant).unwrap();
        std::fs::write(
            p("manifests/action.yaml"),
            format!(
                "apiVersion: hostaction.dev/v1alpha1\nkind: HostAction\nmetadata: {{name: action}}\n\
                 spec:\n  module: {}\n  params: {params}\n  grants: {grant}\n",
                module.display()
            ),
        )
        .unwrap();
        let child = Command::new(hostaction_bin())
            .args(["--cache-dir", s(&p("cache")), "agent", "--manifests"])
            .arg(p("manifests"))
            .args(["--host-root", s(&p("root")), "--state", s(&p("state.json"))])
            .args(["--policy", s(&p("policy.yaml"))])
            .args(extra)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap();
        Self { child, dir }
    }

    /// The action's status once it has one (waiting at most `within`).
    fn status(&mut self, within: Duration) -> Value {
        let started = Instant::now();
        loop {
            let state = std::fs::read(self.dir.path().join("state.json"))
                .ok()
                .and_then(|s| serde_json::from_slice::<Value>(&s).ok());
            let status = state.map(|s| s["actions"]["action"]["status"].clone());
            if let Some(status) =
                status.filter(|s| s["phase"] == "Succeeded" || s["phase"] == "Failed")
            {
                return status;
            }
            assert!(self.child.try_wait().unwrap().is_none(), "the agent exited");
            assert!(started.elapsed() < within, "no outcome within {within:?}");
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    fn rss_mib(&self) -> f64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.child.id())).unwrap();
        let kib: f64 = status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .unwrap()
            .trim()
            .trim_end_matches("kB")
            .trim()
            .parse()
            .unwrap();
        kib / 1024.0
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[test]
fn the_idle_agent_after_compiling_a_python_action_holds_none_of_the_compiler() {
    let sample = guest("cni-conflist");
    let mut agent = Agent::start(
        &sample,
        "{name: pods, bridge: br-pods, subnet: 10.22.0.0/16}",
        "{files: {write: [/etc/cni/net.d]}}",
        &[],
    );
    // A Python compile takes ~15 s of CPU; a loaded machine, many times that.
    let status = agent.status(Duration::from_secs(600));
    assert_eq!(status["phase"], "Succeeded", "{status:#}");
    std::thread::sleep(Duration::from_secs(1));
    // Compiled in process, the agent kept ~340 MiB of the compiler's pages;
    // loading the child's code, it holds what a restarted agent holds
    // (~20 MiB plus the run's memory; README, Benchmarks).
    let rss = agent.rss_mib();
    assert!(rss < 64.0, "the idle agent holds {rss:.1} MiB");
}

#[test]
fn an_agent_refuses_a_module_over_its_size_cap() {
    let sample = guest("cni-conflist");
    let mut agent = Agent::start(
        &sample,
        "{name: pods}",
        "{files: {write: [/etc/cni/net.d]}}",
        &["--max-module-mib", "1"],
    );
    let status = agent.status(Duration::from_secs(60));
    assert_eq!(status["phase"], "Failed", "{status:#}");
    let message = status["message"].as_str().unwrap();
    assert!(message.contains("the limit is 1048576"), "{message}");
}
