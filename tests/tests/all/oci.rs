//! OCI distribution against a real registry (Debian's `docker-registry` on
//! 127.0.0.1, plain and with TLS + htpasswd), driven through the `hostaction`
//! CLI as a user runs it: push and pull round trips, interop with `skopeo`
//! both ways, hostile registries (tampered, truncated and oversized blobs, a
//! moved tag, the registry down, 401, 5xx, a stall) and the node store's
//! bound. The fault proxy (`hostaction_tests::registry::FaultProxy`) sits
//! in front of the real registry only for the faults a registry will not
//! produce on demand. The end-to-end CNI test needs root (CI is root).

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use hostaction_tests::output_text as text;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use hostaction_distribution::ModuleStore;
use hostaction_tests::registry::{Fault, FaultProxy, Registry};
use hostaction_tests::{alone, guest, hostaction_bin, peak_rss, peak_rss_of};
use serde_json::{Value, json};

/// A node: its own cache directory (module store and precompiled code) and
/// a scratch dir.
pub(crate) struct Node {
    dir: tempfile::TempDir,
}

impl Node {
    pub(crate) fn new() -> Self {
        Self {
            dir: tempfile::tempdir().unwrap(),
        }
    }

    pub(crate) fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    /// `hostaction --cache-dir <node cache> ARGS`.
    pub(crate) fn cli(&self, args: &[&str]) -> Output {
        self.cli_with_stdin(args, "")
    }

    fn cli_with_stdin(&self, args: &[&str], stdin: &str) -> Output {
        use std::io::Write;
        let mut child = Command::new(hostaction_bin())
            .arg("--cache-dir")
            .arg(self.path("cache"))
            .args(args)
            .env_remove("DOCKER_CONFIG")
            .env("HOME", self.dir.path())
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        child
            .stdin
            .take()
            .unwrap()
            .write_all(stdin.as_bytes())
            .unwrap();
        child.wait_with_output().unwrap()
    }

    /// Runs and expects exit 0; returns stdout.
    pub(crate) fn ok(&self, args: &[&str]) -> String {
        let out = self.cli(args);
        assert_eq!(out.status.code(), Some(0), "{args:?}:\n{}", text(&out));
        String::from_utf8(out.stdout).unwrap()
    }

    /// Runs and expects exit 5 (a registry error); returns stderr.
    pub(crate) fn registry_error(&self, args: &[&str]) -> String {
        let out = self.cli(args);
        assert_eq!(out.status.code(), Some(5), "{args:?}:\n{}", text(&out));
        String::from_utf8(out.stderr).unwrap()
    }

    /// A grant file for the probe (it imports `files`).
    pub(crate) fn probe_grant(&self) -> String {
        let path = self.path("probe-grant.yaml");
        std::fs::write(&path, "files: {write: [/srv]}").unwrap();
        path.to_str().unwrap().to_owned()
    }

    pub(crate) fn store(&self) -> ModuleStore {
        ModuleStore::open(&self.path("cache/modules"), None, u64::MAX).unwrap()
    }

    /// Whether the store holds no artifact, no blob and no staging leftover.
    fn assert_nothing_cached(&self) {
        let store = self.store();
        assert_eq!(store.list().unwrap(), vec![]);
        for dir in ["blobs/sha256", "staging"] {
            let left: Vec<_> = std::fs::read_dir(store.root().join(dir))
                .unwrap()
                .flatten()
                .map(|e| e.path())
                .collect();
            assert!(left.is_empty(), "{dir} holds {left:?}");
        }
    }
}

fn path_str(p: &Path) -> &str {
    p.to_str().unwrap()
}

/// Pushes a module to a plain registry; returns `repo@digest` and the digest.
pub(crate) fn push(
    node: &Node,
    module: &Path,
    reference: &str,
    extra: &[&str],
) -> (String, String) {
    let mut args = vec!["push", path_str(module), reference, "--plain-http"];
    args.extend_from_slice(extra);
    let pinned = node.ok(&args).trim().to_owned();
    let digest = pinned.rsplit_once('@').unwrap().1.to_owned();
    (pinned, digest)
}

/// The probe's fact `key` of a `--output json` report (facts are
/// `[key, value]` pairs; the probe's values are JSON).
fn fact(report: &Value, key: &str) -> Value {
    let pair = report["report"]["outcome"]["facts"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p[0] == key)
        .unwrap_or_else(|| panic!("no fact {key}: {report:#}"));
    serde_json::from_str(pair[1].as_str().unwrap()).unwrap()
}

/// Pushes the probe with one payload file `name` holding `bytes`.
fn push_probe_with(node: &Node, reference: &str, name: &str, bytes: &[u8]) -> (String, String) {
    let file = node.path(&format!("payload-{name}"));
    std::fs::write(&file, bytes).unwrap();
    let payload = format!("{name}={}", file.display());
    push(node, &guest("probe"), reference, &["--payload", &payload])
}

pub(crate) fn json_of(stdout: &str) -> Value {
    serde_json::from_str(stdout).unwrap_or_else(|e| panic!("{e}: {stdout}"))
}

const CNI_GRANT: &str = "files: {write: [/etc/cni/net.d, /opt/cni/bin]}";

#[test]
fn push_then_pull_round_trips_payload_and_annotations_by_digest() {
    let registry = Registry::plain();
    let node = Node::new();
    let reference = format!("{}/actions/cni-install:v1", registry.addr());
    let extra = [
        "--payload",
        "bridge=/usr/lib/cni/bridge",
        "--payload",
        "loopback=/usr/lib/cni/loopback",
        "--annotation",
        "org.opencontainers.image.version=1.0",
    ];
    let (pinned, digest) = push(&node, &guest("cni-install"), &reference, &extra);
    assert!(pinned.starts_with(&format!("{}/actions/cni-install@sha256:", registry.addr())));

    // The same inputs give the same artifact.
    let (_, again) = push(&node, &guest("cni-install"), &reference, &extra);
    assert_eq!(again, digest);

    // Another node pulls it by tag: the tag resolves to the pushed digest.
    let other = Node::new();
    let pulled = other.ok(&["pull", &reference, "--plain-http"]);
    assert_eq!(pulled.trim(), digest);
    let shown = json_of(&other.ok(&["pull", &pinned, "--plain-http", "--output", "json"]));
    assert_eq!(shown["digest"], digest.as_str());
    assert_eq!(
        shown["annotations"]["org.opencontainers.image.version"],
        "1.0"
    );
    let names: Vec<&str> = shown["payload"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| f["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["bridge", "loopback"]);

    // The stored bytes are the pushed bytes.
    let stored = other.store().get(&digest).unwrap().expect("stored");
    assert_eq!(
        std::fs::read(&stored.module_path).unwrap(),
        std::fs::read(guest("cni-install")).unwrap()
    );
    let bridge = &stored.payload.files()[0];
    assert_eq!(
        std::fs::read(&bridge.path).unwrap(),
        std::fs::read("/usr/lib/cni/bridge").unwrap()
    );

    // inspect takes the reference too.
    let inspected = json_of(&other.ok(&["inspect", &pinned, "--plain-http", "--output", "json"]));
    assert_eq!(inspected["digest"], stored.module_digest.as_str());
    assert!(
        inspected["imports"]
            .as_array()
            .unwrap()
            .iter()
            .any(|i| i["name"] == "hostaction:host/files@0.1.0")
    );
}

#[test]
fn run_by_reference_reads_the_payload_and_reports_the_digest() {
    let registry = Registry::plain();
    let node = Node::new();
    let payload_file = node.path("hello.txt");
    std::fs::write(&payload_file, "hello from the payload").unwrap();
    let reference = format!("{}/tests/probe:latest", registry.addr());
    let (_, digest) = push(
        &node,
        &guest("probe"),
        &reference,
        &[
            "--payload",
            &format!("hello.txt={}", payload_file.display()),
        ],
    );
    let params = json!({"ops": [
        {"op": "payload-files"},
        {"op": "payload-read", "name": "hello.txt"},
        {"op": "payload-read-at", "name": "hello.txt", "offset": 11, "len": 100},
        {"op": "payload-read", "name": "missing"},
    ]});
    let report = json_of(&node.ok(&[
        "run",
        &reference,
        "--plain-http",
        "--grants",
        &node.probe_grant(),
        "--params",
        &params.to_string(),
        "--output",
        "json",
    ]));
    assert_eq!(report["module"]["artifact"]["digest"], digest.as_str());
    assert_eq!(report["report"]["status"], "succeeded", "{report:#}");
    let facts = |i: &str| fact(&report, i);
    assert_eq!(facts("0")["ok"][0]["name"], "hello.txt");
    assert_eq!(facts("0")["ok"][0]["size"], 22);
    assert_eq!(facts("1")["ok"], "hello from the payload");
    assert_eq!(facts("2")["ok"], "the payload");
    assert_eq!(facts("3")["err"]["kind"], "not-found");

    // A module run from a file gets its payload with --payload.
    let local = json_of(&node.ok(&[
        "run",
        path_str(&guest("probe")),
        "--grants",
        &node.probe_grant(),
        "--payload",
        &format!("hello.txt={}", payload_file.display()),
        "--params",
        &json!({"ops": [{"op": "payload-read", "name": "hello.txt"}]}).to_string(),
        "--output",
        "json",
    ]));
    assert_eq!(fact(&local, "0")["ok"], "hello from the payload");
}

#[test]
fn a_tls_registry_with_basic_auth_is_pulled_only_with_its_ca_and_credentials_from_flags_or_docker_config()
 {
    let registry = Registry::tls_with_auth("ci", "s3cret");
    let node = Node::new();
    let ca = path_str(registry.ca_pem().unwrap()).to_owned();
    let reference = format!("{}/secure/probe:v1", registry.addr());
    let probe = guest("probe");

    // Push with basic auth from stdin and the test CA.
    let out = node.cli_with_stdin(
        &[
            "push",
            path_str(&probe),
            &reference,
            "--ca-file",
            &ca,
            "--username",
            "ci",
            "--password-stdin",
        ],
        "s3cret\n",
    );
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    let digest = String::from_utf8(out.stdout)
        .unwrap()
        .trim()
        .rsplit_once('@')
        .unwrap()
        .1
        .to_owned();

    // A wrong password: 401, nothing cached.
    let puller = Node::new();
    let out = puller.cli_with_stdin(
        &[
            "pull",
            &reference,
            "--ca-file",
            &ca,
            "--username",
            "ci",
            "--password-stdin",
        ],
        "wrong\n",
    );
    assert_eq!(out.status.code(), Some(5), "{}", text(&out));
    assert!(text(&out).contains("unauthorized"), "{}", text(&out));
    puller.assert_nothing_cached();

    // No credentials at all: 401 too.
    let err = puller.registry_error(&["pull", &reference, "--ca-file", &ca]);
    assert!(err.contains("unauthorized"), "{err}");

    // Without the CA the certificate is not trusted.
    let err = puller.registry_error(&["pull", &reference, "--retries", "0"]);
    assert!(err.to_lowercase().contains("certificate"), "{err}");
    puller.assert_nothing_cached();

    // Credentials from a docker config.json, given as a file and found
    // through $HOME/.docker.
    let config = registry.write_docker_config(&puller.path(".docker"), "ci", "s3cret");
    let pulled = puller.ok(&[
        "pull",
        &reference,
        "--ca-file",
        &ca,
        "--registry-config",
        path_str(&config),
    ]);
    assert_eq!(pulled.trim(), digest);
    let third = Node::new();
    registry.write_docker_config(&third.path(".docker"), "ci", "s3cret");
    assert_eq!(
        third.ok(&["pull", &reference, "--ca-file", &ca]).trim(),
        digest
    );
}

#[test]
fn skopeo_copies_what_hostaction_pushes_and_hostaction_runs_what_skopeo_pushes() {
    let registry = Registry::plain();
    let node = Node::new();
    let reference = format!("{}/interop/probe:v1", registry.addr());
    let (_, digest) = push(
        &node,
        &guest("probe"),
        &reference,
        &["--payload", "bridge=/usr/lib/cni/bridge"],
    );

    // hostaction → skopeo: an OCI layout with the same manifest and blobs.
    let layout = node.path("layout");
    skopeo(&[
        "copy",
        "--src-tls-verify=false",
        &format!("docker://{reference}"),
        &format!("oci:{}:v1", layout.display()),
    ]);
    let index: Value =
        serde_json::from_slice(&std::fs::read(layout.join("index.json")).unwrap()).unwrap();
    assert_eq!(index["manifests"][0]["digest"], digest.as_str());
    let blob = |d: &str| {
        layout
            .join("blobs/sha256")
            .join(d.trim_start_matches("sha256:"))
    };
    let manifest: Value = serde_json::from_slice(&std::fs::read(blob(&digest)).unwrap()).unwrap();
    assert_eq!(
        manifest["config"]["mediaType"],
        "application/vnd.wasm.config.v0+json"
    );
    assert_eq!(manifest["layers"][0]["mediaType"], "application/wasm");
    assert_eq!(
        std::fs::read(blob(manifest["layers"][0]["digest"].as_str().unwrap())).unwrap(),
        std::fs::read(guest("probe")).unwrap()
    );
    assert_eq!(
        manifest["layers"][1]["annotations"]["org.opencontainers.image.title"],
        "bridge"
    );

    // skopeo → hostaction: an artifact laid out by hand (no hostaction
    // involved), copied by skopeo, run by hostaction by its tag.
    let made = node.path("made");
    let module = std::fs::read(guest("probe")).unwrap();
    let config = br#"{"architecture":"wasm","os":"wasip2"}"#.to_vec();
    let manifest = serde_json::to_vec(&json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {"mediaType": "application/vnd.wasm.config.v0+json", "digest": sha256(&config), "size": config.len()},
        "layers": [{"mediaType": "application/wasm", "digest": sha256(&module), "size": module.len()}],
    }))
    .unwrap();
    std::fs::create_dir_all(made.join("blobs/sha256")).unwrap();
    for bytes in [&module, &config, &manifest] {
        std::fs::write(
            made.join("blobs/sha256").join(&sha256(bytes)[7..]),
            bytes.as_slice(),
        )
        .unwrap();
    }
    std::fs::write(made.join("oci-layout"), r#"{"imageLayoutVersion":"1.0.0"}"#).unwrap();
    let index = json!({"schemaVersion": 2, "manifests": [{
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "digest": sha256(&manifest), "size": manifest.len(),
        "annotations": {"org.opencontainers.image.ref.name": "v1"},
    }]});
    std::fs::write(made.join("index.json"), index.to_string()).unwrap();
    let copied = format!("{}/interop/by-skopeo:v1", registry.addr());
    skopeo(&[
        "copy",
        "--dest-tls-verify=false",
        &format!("oci:{}:v1", made.display()),
        &format!("docker://{copied}"),
    ]);
    let runner = Node::new();
    let report = json_of(&runner.ok(&[
        "run",
        &copied,
        "--plain-http",
        "--grants",
        &runner.probe_grant(),
        "--params",
        r#"{"ops": [{"op": "log", "message": "ran"}]}"#,
        "--output",
        "json",
    ]));
    assert_eq!(
        report["module"]["artifact"]["digest"],
        sha256(&manifest).as_str()
    );
    assert_eq!(report["report"]["status"], "succeeded", "{report:#}");
}

pub(crate) fn skopeo(args: &[&str]) {
    let out = Command::new("skopeo").args(args).output().unwrap();
    assert!(out.status.success(), "skopeo {args:?}:\n{}", text(&out));
}

fn sha256(bytes: &[u8]) -> String {
    hostaction_distribution::artifact::sha256(bytes)
}

#[test]
fn tampered_truncated_and_padded_blobs_are_refused_and_nothing_is_cached() {
    let registry = Registry::plain();
    let node = Node::new();
    let reference = format!("{}/hostile/probe:v1", registry.addr());
    let payload = vec![7u8; 64 << 10];
    push_probe_with(&node, &reference, "data", &payload);
    let data = registry.blob_data(&sha256(&payload));
    let original = std::fs::read(&data).unwrap();

    let cases: [(&str, Vec<u8>, &str); 3] = [
        ("flipped byte", flip(&original), "the content was altered"),
        ("truncated", original[..1000].to_vec(), "truncated"),
        (
            "padded",
            [original.as_slice(), b"extra"].concat(),
            "the manifest declares",
        ),
    ];
    for (case, bytes, expected) in cases {
        std::fs::write(&data, &bytes).unwrap();
        let puller = Node::new();
        let err = puller.registry_error(&["pull", &reference, "--plain-http", "--retries", "1"]);
        assert!(
            err.contains("integrity") && err.contains(expected),
            "{case}: {err}"
        );
        assert!(
            err.contains("data ("),
            "{case}: the error names the blob: {err}"
        );
        puller.assert_nothing_cached();
    }
    std::fs::write(&data, &original).unwrap();
    Node::new().ok(&["pull", &reference, "--plain-http"]);
}

fn flip(bytes: &[u8]) -> Vec<u8> {
    let mut out = bytes.to_vec();
    out[100] ^= 0xff;
    out
}

#[test]
fn an_oversized_blob_is_refused_before_it_is_fetched() {
    let registry = Registry::plain();
    let node = Node::new();
    let reference = format!("{}/hostile/big:v1", registry.addr());
    push_probe_with(&node, &reference, "big", &vec![1u8; 3 << 20]);
    let puller = Node::new();
    let err =
        puller.registry_error(&["pull", &reference, "--plain-http", "--max-payload-mib", "1"]);
    assert!(
        err.contains("payload file \"big\" is 3145728 bytes; the limit is 1048576"),
        "{err}"
    );
    puller.assert_nothing_cached();
}

#[test]
fn a_moved_tag_does_not_change_what_a_digest_runs() {
    let registry = Registry::plain();
    let node = Node::new();
    let reference = format!("{}/moving/action:stable", registry.addr());
    let (first, first_digest) = push(&node, &guest("probe"), &reference, &[]);
    let (_, second_digest) = push(&node, &guest("cni-install"), &reference, &[]);
    assert_ne!(first_digest, second_digest);

    // The tag now names the second; the digest still names the first, also
    // when written beside the tag.
    let puller = Node::new();
    assert_eq!(
        puller.ok(&["pull", &reference, "--plain-http"]).trim(),
        second_digest
    );
    assert_eq!(
        puller.ok(&["pull", &first, "--plain-http"]).trim(),
        first_digest
    );
    let both = format!("{reference}@{first_digest}");
    let report = json_of(&puller.ok(&[
        "run",
        &both,
        "--plain-http",
        "--grants",
        &puller.probe_grant(),
        "--params",
        r#"{"ops": []}"#,
        "--output",
        "json",
    ]));
    assert_eq!(
        report["module"]["artifact"]["digest"],
        first_digest.as_str()
    );
    assert_eq!(
        report["module"]["digest"],
        sha256(&std::fs::read(guest("probe")).unwrap()).as_str()
    );

    // A digest the registry does not have is not found, and nothing is kept.
    let unknown = format!(
        "{}/moving/action@sha256:{}",
        registry.addr(),
        "0".repeat(64)
    );
    let fresh = Node::new();
    let err = fresh.registry_error(&["pull", &unknown, "--plain-http"]);
    assert!(err.contains("not found"), "{err}");
    let err = fresh.registry_error(&[
        "pull",
        &format!("{}/moving/action:nope", registry.addr()),
        "--plain-http",
    ]);
    assert!(err.contains("not found"), "{err}");
    fresh.assert_nothing_cached();
}

#[test]
fn a_cached_digest_runs_with_the_registry_down_and_a_tag_does_not() {
    let mut registry = Registry::plain();
    let node = Node::new();
    let reference = format!("{}/offline/probe:v1", registry.addr());
    let (pinned, _) = push(&node, &guest("probe"), &reference, &[]);
    let puller = Node::new();
    puller.ok(&["pull", &pinned, "--plain-http"]);
    registry.stop();

    let report = json_of(&puller.ok(&[
        "run",
        &pinned,
        "--plain-http",
        "--grants",
        &puller.probe_grant(),
        "--params",
        r#"{"ops": [{"op": "log", "message": "offline"}]}"#,
        "--output",
        "json",
    ]));
    assert_eq!(report["report"]["status"], "succeeded");

    // A tag needs the registry to resolve it: bounded retries, then a clear
    // error naming the registry.
    let err = puller.registry_error(&["run", &reference, "--plain-http", "--retries", "2"]);
    assert!(
        err.contains("unavailable")
            && err.contains(registry.addr())
            && err.contains("after 3 attempts"),
        "{err}"
    );
    let fresh = Node::new();
    fresh.registry_error(&["pull", &pinned, "--plain-http", "--retries", "0"]);
    fresh.assert_nothing_cached();

    registry.start();
    fresh.ok(&["pull", &pinned, "--plain-http"]);
}

#[test]
fn server_errors_are_retried_a_bounded_number_of_times_and_stalls_time_out() {
    let registry = Registry::plain();
    let node = Node::new();
    let reference = format!("{}/flaky/probe:v1", registry.addr());
    push(&node, &guest("probe"), &reference, &[]);
    let proxy = FaultProxy::start(registry.addr());
    let via_proxy = reference.replace(registry.addr(), proxy.addr());

    // Two 503s (the client's /v2/ probe takes the first): retried, pulled.
    proxy.set(Fault::Status {
        code: 503,
        times: 2,
    });
    Node::new().ok(&["pull", &via_proxy, "--plain-http"]);

    // 503 for good: given up after the retries, with the status named.
    proxy.set(Fault::Status {
        code: 503,
        times: 1000,
    });
    let puller = Node::new();
    let err = puller.registry_error(&["pull", &via_proxy, "--plain-http", "--retries", "2"]);
    assert!(err.contains("unavailable") && err.contains("503"), "{err}");
    assert!(err.contains("after 3 attempts"), "{err}");

    // A transfer cut mid-blob (the small responses before the component's
    // blob fit in the first 4 KiB): truncated, retried, refused.
    let cut = Node::new();
    proxy.set(Fault::CutAfter(4096));
    let err = cut.registry_error(&["pull", &via_proxy, "--plain-http", "--retries", "1"]);
    assert!(
        err.contains("truncated") && err.contains("after 2 attempts"),
        "{err}"
    );
    cut.assert_nothing_cached();

    // A registry that accepts and never answers: the time-out ends it.
    proxy.set(Fault::Stall);
    let started = std::time::Instant::now();
    let err = cut.registry_error(&[
        "pull",
        &via_proxy,
        "--plain-http",
        "--retries",
        "0",
        "--registry-timeout",
        "1",
    ]);
    assert!(err.contains("unavailable"), "{err}");
    assert!(
        started.elapsed().as_secs() < 20,
        "took {:?}",
        started.elapsed()
    );
    cut.assert_nothing_cached();
}

/// A registry that sends one byte every 2 s beats any per-read time-out;
/// the pull's deadline and its rate floor end the pull all the same.
#[test]
fn a_trickling_registry_is_cut_by_the_pull_deadline_and_the_rate_floor() {
    let registry = Registry::plain();
    let node = Node::new();
    let reference = format!("{}/trickle/probe:v1", registry.addr());
    push(&node, &guest("probe"), &reference, &[]);
    let proxy = FaultProxy::start(registry.addr());
    let via_proxy = reference.replace(registry.addr(), proxy.addr());
    let grant = node.probe_grant();
    let run = |extra: &[&'static str]| -> Vec<String> {
        let mut args = vec![
            "run",
            via_proxy.as_str(),
            "--plain-http",
            "--grants",
            &grant,
            "--timeout",
            "1",
            "--params",
            r#"{"ops": [{"op": "log", "message": "ran"}]}"#,
        ];
        args.extend_from_slice(extra);
        args.into_iter().map(str::to_owned).collect()
    };
    fn args(owned: &[String]) -> Vec<&str> {
        owned.iter().map(String::as_str).collect()
    }
    proxy.set(Fault::Trickle(Duration::from_secs(2)));

    // The whole pull's deadline (retries and all).
    let started = Instant::now();
    let err = node.registry_error(&args(&run(&["--pull-timeout", "3"])));
    assert!(
        err.contains("unavailable")
            && err.contains("not done within the pull deadline of 3 s (--pull-timeout)"),
        "{err}"
    );
    assert!(
        started.elapsed() < Duration::from_secs(20),
        "took {:?}",
        started.elapsed()
    );
    node.assert_nothing_cached();

    // The rate floor: each attempt is cut at the end of a window that
    // brought too little (the default deadline of this run is 62 s).
    let started = Instant::now();
    let err = node.registry_error(&args(&run(&["--pull-rate-window", "2", "--retries", "1"])));
    assert!(
        err.contains("slower than the minimum rate of 10 KiB/s")
            && err.contains("(--pull-min-rate, --pull-rate-window)")
            && err.contains("after 2 attempts"),
        "{err}"
    );
    assert!(
        started.elapsed() < Duration::from_secs(20),
        "took {:?}",
        started.elapsed()
    );
    node.assert_nothing_cached();

    // The agent (static mode here) ends a run whose pull trickles as a
    // failed run, and goes on.
    let manifests = node.path("manifests");
    std::fs::create_dir_all(&manifests).unwrap();
    std::fs::write(
        manifests.join("trickle.yaml"),
        format!(
            "apiVersion: hostaction.dev/v1alpha1\nkind: HostAction\nmetadata: {{name: trickle}}\n\
             spec: {{module: \"{via_proxy}\", timeoutSeconds: 1}}\n"
        ),
    )
    .unwrap();
    let state = node.path("state.json");
    let started = Instant::now();
    let out = node.cli(&[
        "agent",
        "--manifests",
        path_str(&manifests),
        "--once",
        "--state",
        path_str(&state),
        "--plain-http",
        "--pull-timeout",
        "3",
    ]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert!(
        started.elapsed() < Duration::from_secs(20),
        "took {:?}",
        started.elapsed()
    );
    let state: Value = serde_json::from_slice(&std::fs::read(&state).unwrap()).unwrap();
    let status = &state["actions"]["trickle"]["status"];
    assert_eq!(status["phase"], "Failed", "{state:#}");
    assert!(
        status["message"]
            .as_str()
            .unwrap()
            .contains("not done within the pull deadline of 3 s"),
        "{state:#}"
    );
    node.assert_nothing_cached();

    // At full speed the same bounds let the pull and the run through.
    proxy.set(Fault::None);
    let out = node.ok(&args(&run(&[
        "--pull-timeout",
        "3",
        "--pull-rate-window",
        "2",
    ])));
    assert!(out.contains("status   succeeded"), "{out}");
}

/// Plain HTTP only for the registries named: any other one, loopback
/// included when only another is named, gets HTTPS.
#[test]
fn plain_http_is_scoped_to_the_registries_named() {
    let registry = Registry::plain();
    let node = Node::new();
    let addr = registry.addr();
    let port = addr.rsplit_once(':').unwrap().1;
    let reference = format!("{addr}/scoped/probe:v1");
    let pinned = node
        .ok(&[
            "push",
            path_str(&guest("probe")),
            &reference,
            "--plain-http-registry",
            addr,
        ])
        .trim()
        .to_owned();

    // Another registry named: this one is spoken to over HTTPS, and fails.
    let other = format!("127.0.0.1:{}", if port == "1" { "2" } else { "1" });
    let err = Node::new().registry_error(&[
        "pull",
        &pinned,
        "--plain-http-registry",
        &other,
        "--retries",
        "0",
    ]);
    assert!(err.contains(&format!("https://{addr}/")), "{err}");

    // Named by host alone (any port), or by host and port: plain HTTP.
    Node::new().ok(&["pull", &pinned, "--plain-http-registry", "127.0.0.1"]);
    Node::new().ok(&["pull", &pinned, "--plain-http-registry", addr]);

    // A value that is not a registry is refused as usage.
    let out = node.cli(&["pull", &pinned, "--plain-http-registry", "http://x/y"]);
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
}

#[test]
fn concurrent_pulls_into_one_store_all_succeed_and_store_it_once() {
    use hostaction_distribution::{Registry as Client, RegistryOptions};
    let registry = Registry::plain();
    let node = Node::new();
    let (pinned, digest) = push(
        &node,
        &guest("probe"),
        &format!("{}/shared/probe:v1", registry.addr()),
        &["--payload", "bridge=/usr/lib/cni/bridge"],
    );
    let root = node.path("shared-store");
    let pulls: Vec<_> = (0..4)
        .map(|_| {
            let (root, pinned) = (root.clone(), pinned.clone());
            std::thread::spawn(move || {
                let store = ModuleStore::open(&root, None, u64::MAX).unwrap();
                let client = Client::new(RegistryOptions {
                    plain_http: true,
                    ..RegistryOptions::default()
                })
                .unwrap();
                client.pull(&pinned, &store).map(|a| a.digest)
            })
        })
        .collect();
    for pull in pulls {
        assert_eq!(pull.join().unwrap().unwrap(), digest);
    }
    let store = ModuleStore::open(&root, None, u64::MAX).unwrap();
    assert_eq!(store.list().unwrap().len(), 1);
    assert_eq!(std::fs::read_dir(root.join("staging")).unwrap().count(), 0);
}

#[test]
fn the_store_is_bounded_and_collects_the_least_recently_used_with_their_compiled_code() {
    use hostaction_distribution::{Registry as Client, RegistryOptions};
    let registry = Registry::plain();
    let node = Node::new();
    let mib = |n: u8| {
        let path = node.path(&format!("payload-{n}"));
        std::fs::write(&path, vec![n; 1 << 20]).unwrap();
        format!("data={}", path.display())
    };
    let (a, a_digest) = push(
        &node,
        &guest("probe"),
        &format!("{}/lru/a:v1", registry.addr()),
        &["--payload", &mib(1)],
    );
    let (b, b_digest) = push(
        &node,
        &guest("netprobe"),
        &format!("{}/lru/b:v1", registry.addr()),
        &["--payload", &mib(2)],
    );

    let compiled = node.path("compiled");
    std::fs::create_dir_all(&compiled).unwrap();
    let module_a = sha256(&std::fs::read(guest("probe")).unwrap());
    let compiled_a = compiled.join(format!("{}-engine.cwasm", &module_a[7..]));
    std::fs::write(&compiled_a, vec![0u8; 100_000]).unwrap();

    // Room for one artifact (each is its module, 1 MiB and compiled code).
    let bound = (1 << 20) + 600_000;
    let root = node.path("bounded");
    let store = ModuleStore::open(&root, Some(compiled.clone()), bound).unwrap();
    let client = Client::new(RegistryOptions {
        plain_http: true,
        ..RegistryOptions::default()
    })
    .unwrap();
    client.pull(&a, &store).unwrap();
    assert!(store.get(&a_digest).unwrap().is_some());
    // A crashed pull's leftovers.
    std::fs::create_dir_all(root.join("staging/crashed")).unwrap();
    std::fs::write(root.join("staging/crashed/blob"), b"partial").unwrap();

    client.pull(&b, &store).unwrap();
    assert!(
        store.get(&a_digest).unwrap().is_none(),
        "a was used least recently"
    );
    assert!(store.get(&b_digest).unwrap().is_some());
    assert!(!compiled_a.exists(), "a's compiled code goes with it");
    assert!(!root.join("staging/crashed").exists());
    assert!(store.used_bytes() <= bound);

    // Collecting to zero empties it; a pull fills it again.
    let collected = store.collect(0).unwrap();
    assert_eq!(collected.removed, vec![b_digest.clone()]);
    assert_eq!(store.used_bytes(), 0);
    node.ok(&["cache", "gc", "--max-mib", "0"]);
}

/// A network namespace this test made (`ip netns add`), deleted on drop.
struct Netns(String);

impl Netns {
    fn new(name: String) -> Self {
        let _ = Command::new("ip").args(["netns", "del", &name]).status();
        let ok = Command::new("ip")
            .args(["netns", "add", &name])
            .status()
            .unwrap();
        assert!(ok.success(), "ip netns add {name} (needs root)");
        Self(name)
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = Command::new("ip").args(["netns", "del", &self.0]).status();
    }
}

/// Needs root: it makes network namespaces and runs the CNI bridge plugin.
#[test]
fn cni_install_from_its_artifact_installs_plugins_that_give_a_pod_its_network() {
    let registry = Registry::plain();
    let node = Node::new();
    let reference = format!("{}/cni/install:v1", registry.addr());
    let payload: Vec<String> = ["bridge", "host-local", "loopback"]
        .iter()
        .map(|p| format!("{p}=/usr/lib/cni/{p}"))
        .collect();
    let mut extra = Vec::new();
    for p in &payload {
        extra.extend(["--payload", p.as_str()]);
    }
    push(&node, &guest("cni-install"), &reference, &extra);

    let root = node.path("root");
    std::fs::create_dir_all(&root).unwrap();
    let grants = node.path("grants.yaml");
    std::fs::write(&grants, CNI_GRANT).unwrap();
    let ipam = node.path("ipam");
    let id = std::process::id() % 10_000;
    let params = json!({
        "name": "e2e",
        "bridge": format!("hoa-br{id}"),
        "subnet": "10.99.0.0/24",
        "ipMasq": false,
        "ipamDataDir": ipam,
    })
    .to_string();
    let run = |node: &Node| {
        json_of(&node.ok(&[
            "run",
            &reference,
            "--plain-http",
            "--host-root",
            path_str(&root),
            "--grants",
            path_str(&grants),
            "--params",
            &params,
            "--output",
            "json",
        ]))
    };
    let first = run(&node);
    assert_eq!(first["report"]["status"], "succeeded", "{first:#}");
    assert_eq!(first["report"]["outcome"]["changed"], true);
    let bin = root.join("opt/cni/bin");
    for plugin in ["bridge", "host-local", "loopback"] {
        let installed = bin.join(plugin);
        assert_eq!(
            std::fs::read(&installed).unwrap(),
            std::fs::read(format!("/usr/lib/cni/{plugin}")).unwrap()
        );
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&installed).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o755, "{plugin}");
    }
    // Again: already in place, nothing changes.
    let second = run(&node);
    assert_eq!(second["report"]["outcome"]["changed"], false, "{second:#}");

    // CNI ADD with the installed plugin and conflist, in namespaces of this
    // test: a "host" one for the bridge and a pod's.
    let host = Netns::new(format!("hoa-cni-host-{id}"));
    let pod = Netns::new(format!("hoa-cni-pod-{id}"));
    let conflist: Value =
        serde_json::from_slice(&std::fs::read(root.join("etc/cni/net.d/10-e2e.conflist")).unwrap())
            .unwrap();
    let mut conf = conflist["plugins"][0].clone();
    conf["name"] = conflist["name"].clone();
    conf["cniVersion"] = conflist["cniVersion"].clone();
    let cni = |command: &str| {
        use std::io::Write;
        let mut child = Command::new("ip")
            .args(["netns", "exec", &host.0])
            .arg(bin.join("bridge"))
            .env("CNI_COMMAND", command)
            .env("CNI_CONTAINERID", format!("e2e-{id}"))
            .env("CNI_NETNS", format!("/var/run/netns/{}", pod.0))
            .env("CNI_IFNAME", "eth0")
            .env("CNI_PATH", &bin)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        child
            .stdin
            .take()
            .unwrap()
            .write_all(conf.to_string().as_bytes())
            .unwrap();
        child.wait_with_output().unwrap()
    };
    let added = cni("ADD");
    assert!(
        added.status.success(),
        "CNI ADD:
{}",
        text(&added)
    );
    let result: Value = serde_json::from_slice(&added.stdout).unwrap();
    let address = result["ips"][0]["address"].as_str().unwrap().to_owned();
    assert!(address.starts_with("10.99.0."), "{result:#}");

    let shown = Command::new("ip")
        .args(["-n", &pod.0, "-j", "address", "show", "dev", "eth0"])
        .output()
        .unwrap();
    assert!(shown.status.success(), "{}", text(&shown));
    let shown: Value = serde_json::from_slice(&shown.stdout).unwrap();
    let addresses: Vec<String> = shown[0]["addr_info"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| format!("{}/{}", a["local"].as_str().unwrap(), a["prefixlen"]))
        .collect();
    assert!(
        addresses.contains(&address),
        "{addresses:?} lacks {address}"
    );
    let deleted = cni("DEL");
    assert!(
        deleted.status.success(),
        "CNI DEL:
{}",
        text(&deleted)
    );
}

/// Needs root (to become `nobody`): a pull by an unprivileged user, whose
/// retries start a staged blob over and whose artifact holds the same
/// content under two names.
#[test]
fn an_unprivileged_pull_retries_a_cut_blob_and_fetches_shared_content_once() {
    use std::os::unix::fs::chown;
    let registry = Registry::plain();
    let node = Node::new();
    let same = node.path("same.bin");
    std::fs::write(&same, vec![9u8; 200_000]).unwrap();
    let reference = format!("{}/nobody/probe:v1", registry.addr());
    let (_, digest) = push(
        &node,
        &guest("probe"),
        &reference,
        &[
            "--payload",
            &format!("one={}", same.display()),
            "--payload",
            &format!("two={}", same.display()),
        ],
    );
    let proxy = FaultProxy::start(registry.addr());
    let via_proxy = reference.replace(registry.addr(), proxy.addr());
    let home = tempfile::tempdir().unwrap();
    chown(home.path(), Some(65534), Some(65534)).unwrap();
    // A copy of the binary nobody can reach (the checkout may be under a
    // directory only root may enter).
    let bin = home.path().join("hostaction");
    std::fs::copy(hostaction_bin(), &bin).unwrap();
    let pull = |retries: &str| {
        Command::new("setpriv")
            .args(["--reuid=65534", "--regid=65534", "--clear-groups"])
            .arg(&bin)
            .arg("--cache-dir")
            .arg(home.path().join("cache"))
            .args(["pull", &via_proxy, "--plain-http", "--retries", retries])
            .env("HOME", home.path())
            .output()
            .unwrap()
    };
    // Every connection is cut after 4 KiB: each attempt starts the blob over
    // and fails the same way, as truncated, never as a staging error.
    proxy.set(Fault::CutAfter(4096));
    let out = pull("2");
    assert_eq!(out.status.code(), Some(5), "{}", text(&out));
    assert!(text(&out).contains("truncated"), "{}", text(&out));
    proxy.set(Fault::None);
    let out = pull("2");
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), digest);
}

#[test]
fn a_manifest_over_the_cap_is_refused_while_it_is_read() {
    use hostaction_distribution::{Registry as Client, RegistryOptions, SizeLimits};
    let registry = Registry::plain();
    let node = Node::new();
    let (pinned, _) = push(
        &node,
        &guest("probe"),
        &format!("{}/caps/probe:v1", registry.addr()),
        &[],
    );
    let mut store = ModuleStore::open(&node.path("capped"), None, u64::MAX).unwrap();
    store.set_limits(SizeLimits {
        manifest_bytes: 100,
        ..SizeLimits::default()
    });
    let client = Client::new(RegistryOptions {
        plain_http: true,
        ..RegistryOptions::default()
    })
    .unwrap();
    let err = client.pull(&pinned, &store).unwrap_err().to_string();
    assert!(
        err.contains("more than 100 bytes, the manifest limit"),
        "{err}"
    );
    assert_eq!(store.list().unwrap(), vec![]);
}

#[test]
fn a_stored_component_altered_on_disk_is_refused() {
    let registry = Registry::plain();
    let node = Node::new();
    let (pinned, digest) = push(
        &node,
        &guest("probe"),
        &format!("{}/altered/probe:v1", registry.addr()),
        &[],
    );
    node.ok(&["pull", &pinned, "--plain-http"]);
    let stored = node.store().get(&digest).unwrap().unwrap();
    let mut bytes = std::fs::read(&stored.module_path).unwrap();
    let last = bytes.len() - 1;
    bytes[last] ^= 0xff;
    std::fs::write(&stored.module_path, &bytes).unwrap();
    let out = node.cli(&[
        "run",
        &pinned,
        "--plain-http",
        "--grants",
        &node.probe_grant(),
    ]);
    assert_eq!(out.status.code(), Some(4), "{}", text(&out));
    assert!(
        text(&out).contains("the store was altered"),
        "{}",
        text(&out)
    );
}

/// An HTTP/1.1 server on 127.0.0.1 answering every request with
/// `answer("METHOD PATH")`: a response head and body, then that many more
/// zero bytes (until the client hangs up), for the registries no real one
/// plays: one that redirects where it should not, one that never ends.
/// Records the requests it was sent.
struct Responder {
    addr: String,
    asked: std::sync::Arc<std::sync::Mutex<Vec<String>>>,
}

impl Responder {
    fn start(answer: impl Fn(&str) -> (String, u64) + Send + Sync + 'static) -> Self {
        use std::io::{Read, Write};
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        let asked = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let seen = std::sync::Arc::clone(&asked);
        let answer = std::sync::Arc::new(answer);
        std::thread::spawn(move || {
            for mut conn in listener.incoming().flatten() {
                let (seen, answer) = (std::sync::Arc::clone(&seen), std::sync::Arc::clone(&answer));
                std::thread::spawn(move || {
                    let _ = conn.set_read_timeout(Some(Duration::from_secs(5)));
                    let mut head = Vec::new();
                    let mut buf = [0; 4096];
                    while !head.windows(4).any(|w| w == b"\r\n\r\n") {
                        match conn.read(&mut buf) {
                            Ok(0) | Err(_) => break,
                            Ok(n) => head.extend_from_slice(&buf[..n]),
                        }
                    }
                    let head = String::from_utf8_lossy(&head);
                    let request: Vec<&str> = head.split(' ').take(2).collect();
                    let request = request.join(" ");
                    seen.lock().unwrap().push(request.clone());
                    let (response, mut zeros) = answer(&request);
                    if conn.write_all(response.as_bytes()).is_err() {
                        return;
                    }
                    let chunk = [0u8; 64 << 10];
                    while zeros > 0 {
                        let n = zeros.min(chunk.len() as u64) as usize;
                        if conn.write_all(&chunk[..n]).is_err() {
                            return;
                        }
                        zeros -= n as u64;
                    }
                });
            }
        });
        Self { addr, asked }
    }

    /// The requests so far, as `METHOD PATH`.
    fn asked(&self) -> Vec<String> {
        self.asked.lock().unwrap().clone()
    }
}

/// A registry may redirect (blobs to a CDN), but not to plain HTTP on a
/// host plain HTTP was never allowed for: that is a node on `hostNetwork`
/// sending requests for a registry to any service on its network (cloud
/// metadata, the kubelet) and printing what it answers in the run's status.
#[test]
fn a_registry_cannot_redirect_a_pull_to_plain_http_elsewhere() {
    let internal = Responder::start(|_| {
        let body = "INTERNAL-SECRET-42";
        let head = format!(
            "HTTP/1.1 404 Not Found\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
            body.len()
        );
        (head, 0)
    });
    let target = format!("http://{}/latest/meta-data", internal.addr);
    let registry = Responder::start(move |request| {
        let head = if request == "GET /v2/" {
            "HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: close\r\n\r\n{}".to_owned()
        } else {
            format!(
                "HTTP/1.1 307 Temporary Redirect\r\nLocation: {target}\r\n\
                 Content-Length: 0\r\nConnection: close\r\n\r\n"
            )
        };
        (head, 0)
    });
    let reference = format!("{}/evil/probe:v1", registry.addr);
    // Plain HTTP is allowed for the registry, by name, and for nothing else.
    let err = Node::new().registry_error(&[
        "pull",
        &reference,
        "--plain-http-registry",
        &registry.addr,
        "--retries",
        "0",
    ]);
    assert!(
        registry.asked().iter().any(|r| r.contains("/manifests/")),
        "{:?}",
        registry.asked()
    );
    assert!(!err.contains("INTERNAL-SECRET-42"), "{err}");
    assert_eq!(internal.asked(), Vec::<String>::new(), "{err}");
    assert!(err.contains("redirected to http://"), "{err}");

    // Followed where plain HTTP is allowed; what answers there is not the
    // registry, and its body stays out of the error.
    let err = Node::new().registry_error(&[
        "pull",
        &reference,
        "--plain-http-registry",
        &registry.addr,
        "--plain-http-registry",
        &internal.addr,
        "--retries",
        "0",
    ]);
    assert_eq!(internal.asked(), vec!["GET /latest/meta-data"], "{err}");
    assert!(
        err.contains("404") && !err.contains("INTERNAL-SECRET-42"),
        "{err}"
    );
}

/// The controller resolves a HostAction's tag with the registry its author
/// named: what that registry answers is read up to a manifest's worth, not
/// into memory whole (1 GiB here; at a cluster network's rate over the
/// resolve time-out, more than the controller's memory limit), and a body
/// answered after a redirect, or any error body, is not shown.
#[test]
fn the_controller_reads_a_bounded_answer_when_it_resolves_a_tag() {
    use hostaction_distribution::resolve::{PlainHttp, Resolver};
    const HUGE: u64 = 1 << 30;
    // The peak resident set is the process's: measured with this test alone.
    if !alone(
        module_path!(),
        "the_controller_reads_a_bounded_answer_when_it_resolves_a_tag",
    ) {
        return;
    }
    let registry = Responder::start(|request| {
        let head = if request.starts_with("HEAD ") {
            // No Docker-Content-Digest: the client must GET the manifest.
            "HTTP/1.1 200 OK\r\nContent-Length: 0\r\nConnection: close\r\n\r\n".to_owned()
        } else if request == "GET /v2/" {
            "HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: close\r\n\r\n{}".to_owned()
        } else {
            format!(
                "HTTP/1.1 200 OK\r\nContent-Type: application/vnd.oci.image.manifest.v1+json\r\n\
                 Content-Length: {HUGE}\r\nConnection: close\r\n\r\n"
            )
        };
        let zeros = if head.contains("manifest.v1") {
            HUGE
        } else {
            0
        };
        (head, zeros)
    });
    let resolver = Resolver::new(PlainHttp::loopback(), None).unwrap();
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let before = peak_rss();
    let module = format!("{}/evil/huge:v1", registry.addr);
    let resolved = runtime.block_on(resolver.resolve(&module));
    let grown = peak_rss().saturating_sub(before);
    assert!(
        grown < 256 << 20,
        "resolving grew the peak RSS by {} MiB: {resolved:?}",
        grown >> 20
    );
    let err = resolved.unwrap_err();
    assert!(err.contains("manifest") && err.contains("limit"), "{err}");

    // An error's body stays out of what the HostAction's status will say.
    let refusing = Responder::start(|_| {
        let body = "INTERNAL-SECRET-42";
        let head = format!(
            "HTTP/1.1 403 Forbidden\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
            body.len()
        );
        (head, 0)
    });
    let module = format!("{}/evil/x:v1", refusing.addr);
    let err = runtime.block_on(resolver.resolve(&module)).unwrap_err();
    assert!(err.contains("403") && !err.contains("SECRET"), "{err}");
}

/// A registry that wants a bearer token (as public registries do even for
/// anonymous pulls): the controller gets one from the token service the
/// challenge names, and resolves the tag with it.
#[test]
fn the_controller_resolves_a_tag_with_an_anonymous_token() {
    use hostaction_distribution::resolve::{PlainHttp, Resolver};
    use std::sync::atomic::{AtomicUsize, Ordering};
    let digest = format!("sha256:{}", "cd".repeat(32));
    let tokens = Responder::start(|_| {
        let body = r#"{"token": "t0k3n"}"#;
        let head = format!(
            "HTTP/1.1 200 OK\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
            body.len()
        );
        (head, 0)
    });
    let realm = format!("http://{}/token", tokens.addr);
    let heads = AtomicUsize::new(0);
    let answer = digest.clone();
    let registry = Responder::start(move |request| {
        let head = if request.starts_with("HEAD ") && heads.fetch_add(1, Ordering::SeqCst) == 0 {
            format!(
                "HTTP/1.1 401 Unauthorized\r\nWWW-Authenticate: Bearer realm=\"{realm}\",\
                 service=\"test\",scope=\"repository:evil/x:pull\"\r\n\
                 Content-Length: 0\r\nConnection: close\r\n\r\n"
            )
        } else {
            format!(
                "HTTP/1.1 200 OK\r\nDocker-Content-Digest: {answer}\r\n\
                 Content-Length: 0\r\nConnection: close\r\n\r\n"
            )
        };
        (head, 0)
    });
    let resolver = Resolver::new(PlainHttp::loopback(), None).unwrap();
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let module = format!("{}/evil/x:v1", registry.addr);
    let pinned = runtime.block_on(resolver.resolve(&module)).unwrap();
    assert_eq!(pinned.digest, digest);
    assert_eq!(
        tokens.asked(),
        vec!["GET /token?scope=repository%3Aevil%2Fx%3Apull&service=test"]
    );
}

/// The peak resident set (`VmHWM`) of a child, polled until it exits.
fn child_peak_rss(child: &mut std::process::Child) -> u64 {
    let pid = child.id().to_string();
    let mut peak = 0;
    while child.try_wait().unwrap().is_none() {
        if let Some(bytes) = peak_rss_of(&pid) {
            peak = peak.max(bytes);
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    peak
}

/// A pull authenticates with the token service the registry's challenge
/// names, which the registry picks: its answer is read up to the token cap
/// (64 KiB), not whole into memory as `oci-client` would (1 GiB here), and
/// the pull fails at once naming the cap.
#[test]
fn a_pull_reads_a_bounded_answer_from_the_registry_s_token_service() {
    const HUGE: u64 = 1 << 30;
    // No Content-Length: the answer only ends when the client hangs up.
    let tokens = Responder::start(|_| {
        let head = "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n\
                    Connection: close\r\n\r\n{\"token\": \""
            .to_owned();
        (head, HUGE)
    });
    let realm = format!("http://{}/token", tokens.addr);
    let registry = Responder::start(move |_| {
        let head = format!(
            "HTTP/1.1 401 Unauthorized\r\nWWW-Authenticate: Bearer realm=\"{realm}\",\
             service=\"test\"\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
        );
        (head, 0)
    });
    let node = Node::new();
    let reference = format!("{}/x:v1", registry.addr);
    let started = Instant::now();
    let mut child = Command::new(hostaction_bin())
        .arg("--cache-dir")
        .arg(node.path("cache"))
        .args(["pull", &reference, "--plain-http", "--retries", "0"])
        .env_remove("DOCKER_CONFIG")
        .env("HOME", node.dir.path())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let peak = child_peak_rss(&mut child);
    let out = child.wait_with_output().unwrap();
    let elapsed = started.elapsed();
    assert!(
        peak < 256 << 20,
        "the pull peaked at {} MiB RSS:\n{}",
        peak >> 20,
        text(&out)
    );
    assert_eq!(out.status.code(), Some(5), "{}", text(&out));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("the token from") && err.contains("limit of 65536 bytes"),
        "{err}"
    );
    // Refused as soon as the cap is passed, not cut by the rate floor's
    // 30 s window.
    assert!(elapsed < Duration::from_secs(25), "took {elapsed:?}: {err}");
    assert!(
        tokens.asked().iter().all(|r| r.starts_with("GET /token?")),
        "{:?}",
        tokens.asked()
    );
}
