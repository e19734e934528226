//! Shared helpers of the end-to-end tests: real components built from source by
//! `scripts/build-guests.sh`, run through the real engine against scratch host
//! roots.

// Test support: a failed expectation here is a failed test, with its message.
#![allow(clippy::expect_used, clippy::unwrap_used, clippy::panic)]

use std::collections::BTreeMap;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::{Arc, OnceLock};

pub mod kube_control_plane;
pub mod oci_spec;
pub mod registry;
pub mod systemd;

use hostaction_runtime::capabilities::payload::Payload;
use hostaction_runtime::grant::{EffectiveGrant, Grant, GrantDocument};
use hostaction_runtime::{LoadedModule, RunReport, RunRequest, Runtime, RuntimeConfig};
use serde_json::Value;

/// The workspace root.
pub fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// The `hostaction` binary `cargo test --workspace` built beside the tests.
pub fn hostaction_bin() -> PathBuf {
    built_binary("hostaction")
}

/// Path of the `hostaction-controller` binary (what the controller
/// Deployment runs), built by the same `cargo test --workspace`.
pub fn controller_bin() -> PathBuf {
    built_binary("hostaction-controller")
}

fn built_binary(name: &str) -> PathBuf {
    let exe = std::env::current_exe().expect("test binary path");
    let path = exe
        .parent()
        .and_then(Path::parent)
        .expect("target dir")
        .join(name);
    assert!(
        path.exists(),
        "{} is missing: `cargo test --workspace` builds it",
        path.display()
    );
    path
}

/// A finished command's exit code, stdout and stderr, for an assertion's
/// message.
pub fn output_text(out: &std::process::Output) -> String {
    format!(
        "exit {:?}\nstdout:\n{}\nstderr:\n{}",
        out.status.code(),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// Path of a guest component built by `scripts/build-guests.sh`.
///
/// # Panics
/// When the guest has not been built: the test cannot run without it.
pub fn guest(name: &str) -> PathBuf {
    let path = workspace()
        .join("target/guests")
        .join(format!("{name}.wasm"));
    assert!(
        path.exists(),
        "{} is missing: run scripts/build-guests.sh first (scripts/test.sh does)",
        path.display()
    );
    path
}

/// One precompiled-module cache for the whole test process, so each component
/// is compiled once per test run.
fn cache_dir() -> PathBuf {
    static DIR: OnceLock<tempfile::TempDir> = OnceLock::new();
    DIR.get_or_init(|| tempfile::tempdir().expect("temp cache dir"))
        .path()
        .to_owned()
}

/// A scratch host root with a runtime resolving paths under it.
pub struct Host {
    /// The scratch host root (removed on drop).
    pub root: tempfile::TempDir,
    /// A runtime whose host root is `root`.
    pub runtime: Runtime,
}

impl Host {
    /// A fresh, empty host root.
    pub fn new() -> Self {
        Self::with_bus(None)
    }

    /// A fresh, empty host root whose systemd is at the D-Bus `address`
    /// (else the root's own, absent, `/run/dbus/system_bus_socket`).
    pub fn with_bus(address: Option<String>) -> Self {
        let root = tempfile::tempdir().expect("scratch host root");
        let runtime = Runtime::new(RuntimeConfig {
            host_root: root.path().to_owned(),
            cache_dir: Some(cache_dir()),
            system_bus: address,
            ..RuntimeConfig::default()
        })
        .expect("runtime");
        Self { root, runtime }
    }

    /// A path under the host root (`/opt/cni` → `<root>/opt/cni`).
    pub fn path(&self, host_path: &str) -> PathBuf {
        self.root.path().join(host_path.trim_start_matches('/'))
    }

    /// Writes a file under the host root, creating its parents.
    pub fn write(&self, host_path: &str, contents: &str) {
        let path = self.path(host_path);
        std::fs::create_dir_all(path.parent().expect("parent")).expect("create parents");
        std::fs::write(path, contents).expect("write");
    }

    /// The permission bits of a path under the host root.
    pub fn mode(&self, host_path: &str) -> u32 {
        std::fs::metadata(self.path(host_path))
            .expect("stat")
            .permissions()
            .mode()
            & 0o7777
    }

    /// Loads a built guest.
    pub fn load(&self, guest_name: &str) -> Arc<LoadedModule> {
        self.runtime
            .load_file(&guest(guest_name))
            .expect("load guest")
    }

    /// Runs a guest with params and a grant (YAML), no policy.
    pub fn run(
        &self,
        guest_name: &str,
        params: &Value,
        grant_yaml: &str,
    ) -> hostaction_runtime::Result<RunReport> {
        let module = self.load(guest_name);
        self.runtime.run(&module, request(params, grant_yaml))
    }

    /// Every entry under the host root with its kind, mode, size, inode, link
    /// count, mtime and contents: two snapshots are equal only if nothing changed.
    pub fn snapshot(&self) -> BTreeMap<PathBuf, String> {
        let mut out = BTreeMap::new();
        snapshot_into(self.root.path(), self.root.path(), &mut out);
        out
    }
}

impl Host {
    /// The file of the named network namespace `name` under the host root.
    pub fn netns(&self, name: &str) -> PathBuf {
        self.path(&format!("/var/run/netns/{name}"))
    }

    /// Runs `ip ARGS` in the host root's namespace `netns` (the independent
    /// observer; `ip -n` only knows the real /var/run/netns); returns whether
    /// it succeeded and its stdout.
    pub fn ip(&self, netns: &str, args: &[&str]) -> (bool, String) {
        let out = std::process::Command::new("nsenter")
            .arg(format!("--net={}", self.netns(netns).display()))
            .arg("ip")
            .args(args)
            .output()
            .expect("run nsenter ip");
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
        )
    }

    /// `ip -j -d link show dev NAME` in `netns`, if the link is there.
    pub fn link(&self, netns: &str, name: &str) -> Option<Value> {
        let (ok, out) = self.ip(netns, &["-j", "-d", "link", "show", "dev", name]);
        if !ok {
            return None;
        }
        let v: Value = serde_json::from_str(&out).expect("ip -j output");
        v.as_array().and_then(|a| a.first().cloned())
    }

    /// The names of the links in `netns` (`ip -j link show`).
    pub fn links(&self, netns: &str) -> Vec<String> {
        let (ok, out) = self.ip(netns, &["-j", "link", "show"]);
        assert!(ok, "ip link show in {netns}");
        let v: Value = serde_json::from_str(&out).expect("ip -j output");
        v.as_array()
            .expect("array")
            .iter()
            .map(|l| l["ifname"].as_str().expect("ifname").to_owned())
            .collect()
    }

    /// The addresses of `dev` in `netns` as `ADDR/LEN`.
    pub fn addresses(&self, netns: &str, dev: &str) -> Vec<String> {
        let (ok, out) = self.ip(netns, &["-j", "address", "show", "dev", dev]);
        assert!(ok, "ip address show dev {dev} in {netns}");
        let v: Value = serde_json::from_str(&out).expect("ip -j output");
        v[0]["addr_info"]
            .as_array()
            .expect("addr_info")
            .iter()
            .filter(|a| a["scope"] != "link")
            .map(|a| format!("{}/{}", a["local"].as_str().expect("local"), a["prefixlen"]))
            .collect()
    }
}

/// Named network namespaces the runs made under the host root are mounts
/// (and so is their directory, made shared as `ip netns` does): detach them
/// so the namespaces are freed and the scratch root can be removed.
impl Drop for Host {
    fn drop(&mut self) {
        let dir = self.path("/var/run/netns");
        let Ok(entries) = std::fs::read_dir(&dir) else {
            return;
        };
        for entry in entries.flatten() {
            umount(&entry.path());
        }
        umount(&dir);
    }
}

fn umount(path: &Path) {
    let _ = std::process::Command::new("umount")
        .arg("-l")
        .arg(path)
        .stderr(std::process::Stdio::null())
        .status();
}

impl Default for Host {
    fn default() -> Self {
        Self::new()
    }
}

fn snapshot_into(root: &Path, dir: &Path, out: &mut BTreeMap<PathBuf, String>) {
    for entry in std::fs::read_dir(dir).expect("read_dir") {
        let path = entry.expect("entry").path();
        let meta = std::fs::symlink_metadata(&path).expect("lstat");
        let detail = if meta.is_symlink() {
            format!(
                "link -> {}",
                std::fs::read_link(&path).expect("readlink").display()
            )
        } else if meta.is_dir() {
            snapshot_into(root, &path, out);
            format!("dir {:o} {}", meta.mode(), meta.mtime_nsec())
        } else {
            let bytes = std::fs::read(&path).expect("read");
            format!(
                "file {:o} ino={} nlink={} mtime={}.{} {:?}",
                meta.mode(),
                meta.ino(),
                meta.nlink(),
                meta.mtime(),
                meta.mtime_nsec(),
                String::from_utf8_lossy(&bytes)
            )
        };
        out.insert(
            path.strip_prefix(root).expect("under root").to_owned(),
            detail,
        );
    }
}

/// A run request with params and a grant (YAML), no policy, default limits.
pub fn request(params: &Value, grant_yaml: &str) -> RunRequest {
    let grant = Grant::parse(grant_yaml, "grant").expect("test grant parses");
    RunRequest::new(
        params.to_string(),
        EffectiveGrant::new(&grant, None).expect("effective grant"),
    )
}

/// The probe's per-op results, in order (`{"ok": ...}` or `{"err": {...}}`).
pub fn probe_results(report: &RunReport) -> Vec<Value> {
    let outcome = report
        .outcome
        .as_ref()
        .unwrap_or_else(|| panic!("probe returned no outcome: {report:#?}"));
    outcome
        .facts
        .iter()
        .map(|(_, v)| serde_json::from_str(v).expect("probe fact is JSON"))
        .collect()
}

/// The error kind of a probe result, or none when it succeeded.
pub fn err_kind(result: &Value) -> Option<&str> {
    result["err"]["kind"].as_str()
}

/// The value of the outcome's fact `key`.
pub fn fact<'a>(report: &'a RunReport, key: &str) -> &'a str {
    let outcome = report.outcome.as_ref().expect("an outcome");
    outcome
        .facts
        .iter()
        .find(|(k, _)| k == key)
        .map(|(_, v)| v.as_str())
        .unwrap_or_else(|| panic!("no fact {key}: {outcome:?}"))
}

/// One precompiled cache for the `hostaction` CLI runs of this test process,
/// so each large component is compiled once by the CLI too.
pub fn cli_cache() -> &'static Path {
    static DIR: OnceLock<tempfile::TempDir> = OnceLock::new();
    DIR.get_or_init(|| tempfile::tempdir().expect("CLI cache dir"))
        .path()
}

/// `hostaction inspect <guest> --output json`, with this process's CLI cache.
pub fn inspect(guest_name: &str) -> Value {
    let out = std::process::Command::new(hostaction_bin())
        .arg("inspect")
        .arg(guest(guest_name))
        .args(["--output", "json", "--cache-dir"])
        .arg(cli_cache())
        .output()
        .expect("run hostaction inspect");
    assert!(
        out.status.success(),
        "inspect: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).expect("inspect's JSON")
}

/// The names of the imports `inspect` lists as provided `by` (`capability`,
/// `always`, `locked-down-wasi`).
pub fn imports_by(inspected: &Value, by: &str) -> Vec<String> {
    inspected["imports"]
        .as_array()
        .expect("imports")
        .iter()
        .filter(|i| i["provided"]["by"] == by)
        .map(|i| i["name"].as_str().expect("import name").to_owned())
        .collect()
}

/// Checks that a language's probe reads its payload (the `payload-read` op)
/// under `grant`, which gives no more than `files`: `payload` is in every
/// world and always allowed. Ships `hello.txt`; a missing name is `not-found`.
pub fn assert_probe_reads_its_payload(host: &Host, probe: &str, grant: &str) {
    let shipped = tempfile::tempdir().expect("payload dir");
    let file = shipped.path().join("hello.txt");
    std::fs::write(&file, "hello from the payload").expect("write payload file");
    let mut request = request(
        &serde_json::json!({"ops": [
            {"op": "payload-read", "name": "hello.txt"},
            {"op": "payload-read", "name": "missing"},
        ]}),
        grant,
    );
    request.payload =
        Arc::new(Payload::from_files(&[("hello.txt".to_owned(), file)]).expect("payload"));
    let report = host
        .runtime
        .run(&host.load(probe), request)
        .expect("run the probe");
    assert!(report.status.is_success(), "{}", report.status);
    let results = probe_results(&report);
    assert_eq!(results[0]["ok"], "hello from the payload");
    assert_eq!(err_kind(&results[1]), Some("not-found"), "{results:?}");
}

/// A process's peak resident set (`VmHWM` of `/proc/PID/status`, `self` for
/// this one), in bytes; `None` once the process is gone.
pub fn peak_rss_of(pid: &str) -> Option<u64> {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()?
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))?
        .trim()
        .trim_end_matches("kB")
        .trim()
        .parse::<u64>()
        .ok()
        .map(|kib| kib * 1024)
}

/// The variable naming the one test a child process of [`alone`] runs.
const ALONE: &str = "HOSTACTION_TEST_ALONE";

/// Whether the calling test `name` of module `module` (its `module_path!()`)
/// runs its body here: in a child process of this test binary that runs it
/// alone (`--exact`, one thread), so that a measure of the whole process,
/// such as [`peak_rss`], sees this test only and not the others running
/// beside it in the one test binary. Called from the test binary's own run,
/// it runs that child, fails when the child fails, and returns false.
pub fn alone(module: &str, name: &str) -> bool {
    // `all::hostile` names the test `hostile::NAME`: the crate is not part of it.
    let test = match module.split_once("::") {
        Some((_, path)) => format!("{path}::{name}"),
        None => name.to_owned(),
    };
    match std::env::var(ALONE) {
        Ok(running) if running == test => return true,
        Ok(running) => panic!("{test} ran in the child process of {running}"),
        Err(_) => {}
    }
    let exe = std::env::current_exe().expect("test binary path");
    let out = std::process::Command::new(exe)
        .args([test.as_str(), "--exact", "--test-threads=1", "--nocapture"])
        .env(ALONE, &test)
        .output()
        .expect("run the test binary");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success() && stdout.contains(" 1 passed;"),
        "{test}, run alone in a child process:\n{stdout}\n{stderr}"
    );
    false
}

/// This process's peak resident set, in bytes.
pub fn peak_rss() -> u64 {
    peak_rss_of("self").unwrap_or_else(|| panic!("no VmHWM in /proc/self/status"))
}
