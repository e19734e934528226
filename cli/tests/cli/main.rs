//! The `hostaction` CLI as a user runs it: outputs and exit codes.

// Test code: a failed unwrap is a failed test, with its message.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod inspect;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

fn guest(name: &str) -> PathBuf {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../target/guests")
        .join(format!("{name}.wasm"));
    assert!(
        path.exists(),
        "{} is missing: run scripts/build-guests.sh",
        path.display()
    );
    path
}

struct Scratch {
    dir: tempfile::TempDir,
}

impl Scratch {
    fn new() -> Self {
        Self {
            dir: tempfile::tempdir().unwrap(),
        }
    }

    fn file(&self, name: &str, contents: &str) -> PathBuf {
        let path = self.dir.path().join(name);
        std::fs::write(&path, contents).unwrap();
        path
    }

    fn root(&self) -> PathBuf {
        let root = self.dir.path().join("root");
        std::fs::create_dir_all(&root).unwrap();
        root
    }

    /// Runs cni-install under `root()` with the grant it needs, plus `extra` args.
    fn run_cni(&self, extra: &[&dyn AsRef<std::ffi::OsStr>]) -> Output {
        let grants = self.file(
            "grants.yaml",
            "files: {write: [/etc/cni/net.d, /opt/cni/bin]}",
        );
        let (module, root) = (guest("cni-install"), self.root());
        let mut args: Vec<&dyn AsRef<std::ffi::OsStr>> =
            vec![&"run", &module, &"--grants", &grants, &"--host-root", &root];
        args.extend_from_slice(extra);
        self.hostaction(&args)
    }

    /// Runs `hostaction` with a cache directory of its own.
    fn hostaction(&self, args: &[&dyn AsRef<std::ffi::OsStr>]) -> Output {
        Command::new(env!("CARGO_BIN_EXE_hostaction"))
            .arg("--cache-dir")
            .arg(self.dir.path().join("cache"))
            .args(args.iter().map(|a| a.as_ref()))
            .output()
            .unwrap()
    }
}

fn stdout(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

#[test]
fn run_prints_outcome_changes_and_timing_and_exits_zero() {
    let s = Scratch::new();
    let out = s.run_cni(&[&"--params", &r#"{"name": "cli"}"#]);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}{}",
        stdout(&out),
        stderr(&out)
    );
    let text = stdout(&out);
    assert!(text.contains("status   succeeded"), "{text}");
    assert!(text.contains("/etc/cni/net.d/10-cli.conflist"), "{text}");
    assert!(text.contains("timing"), "{text}");
    assert!(s.root().join("etc/cni/net.d/10-cli.conflist").is_file());
}

#[test]
fn second_process_loads_from_the_disk_cache_and_reports_no_change() {
    let s = Scratch::new();
    let run = || {
        let out = s.run_cni(&[&"--output", &"json"]);
        assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
        serde_json::from_slice::<serde_json::Value>(&out.stdout).unwrap()
    };
    let first = run();
    let second = run();
    assert_eq!(first["module"]["source"], "compiled");
    assert_eq!(second["module"]["source"], "disk-cache");
    assert_eq!(second["report"]["outcome"]["changed"], false);
    assert_eq!(second["report"]["effects"], serde_json::json!([]));
}

#[test]
fn params_at_a_file_are_read_from_that_file() {
    let s = Scratch::new();
    let params = s.file("params.json", r#"{"name": "fromfile"}"#);
    let out = s.run_cni(&[&"--params", &format!("@{}", params.display())]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert!(
        s.root()
            .join("etc/cni/net.d/10-fromfile.conflist")
            .is_file()
    );
}

#[test]
fn exit_codes_tell_failure_bad_input_and_refusal_apart() {
    let s = Scratch::new();
    let root = s.root();
    let grants = s.file("grants.yaml", "files: {write: [/opt/cni/bin]}");

    // 1: the action failed (its own error).
    let out = s.hostaction(&[
        &"run",
        &guest("probe"),
        &"--grants",
        &grants,
        &"--host-root",
        &root,
        &"--params",
        &r#"{"ops": [{"op": "fail", "message": "nope"}]}"#,
    ]);
    assert_eq!(out.status.code(), Some(1), "{}", stdout(&out));
    assert!(stdout(&out).contains("failed: nope"));

    // 1: the deadline.
    let out = s.hostaction(&[
        &"run",
        &guest("probe"),
        &"--grants",
        &grants,
        &"--host-root",
        &root,
        &"--timeout",
        &"0.3",
        &"--params",
        &r#"{"ops": [{"op": "spin"}]}"#,
    ]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stdout(&out).contains("deadline exceeded"),
        "{}",
        stdout(&out)
    );

    // 2: not a Wasm file, malformed params, malformed grant.
    let junk = s.file("junk.wasm", "hello");
    let out = s.hostaction(&[&"run", &junk]);
    assert_eq!(out.status.code(), Some(2));
    assert!(
        stderr(&out).contains("not a WebAssembly file"),
        "{}",
        stderr(&out)
    );
    let out = s.hostaction(&[
        &"run",
        &guest("probe"),
        &"--grants",
        &grants,
        &"--params",
        &"{nope",
    ]);
    assert_eq!(out.status.code(), Some(2));
    assert!(stderr(&out).contains("bad params"), "{}", stderr(&out));
    let bad_grant = s.file("bad.yaml", "files: {write: [opt]}");
    let out = s.hostaction(&[&"run", &guest("probe"), &"--grants", &bad_grant]);
    assert_eq!(out.status.code(), Some(2));
    assert!(stderr(&out).contains("files.write[0]"), "{}", stderr(&out));
    let out = s.hostaction(&[&"run", &guest("probe"), &"--bogus-flag"]);
    assert_eq!(out.status.code(), Some(2));

    // 3: refused by the grant (no grant given: no capability).
    let out = s.hostaction(&[&"run", &guest("probe"), &"--host-root", &root]);
    assert_eq!(out.status.code(), Some(3), "{}", stderr(&out));
    assert!(stderr(&out).contains("`files`"), "{}", stderr(&out));
    assert_eq!(std::fs::read_dir(&root).unwrap().count(), 0);
}

/// `--output json` errors: `{"error": {"kind", "message"}}`, the kind and
/// the exit code derived from the error's variant.
#[test]
fn json_errors_name_a_stable_kind_per_cause() {
    let s = Scratch::new();
    let error = |out: &Output| -> (Option<i32>, String, String) {
        let json: serde_json::Value = serde_json::from_str(&stdout(out))
            .unwrap_or_else(|e| panic!("{e}: {}{}", stdout(out), stderr(out)));
        let field = |name: &str| json["error"][name].as_str().unwrap().to_owned();
        (out.status.code(), field("kind"), field("message"))
    };
    // An unreadable CA file is the registry configuration's fault: its own
    // kind (it was `bad-params`), still exit 2, naming the file.
    let missing = s.dir.path().join("missing-ca.pem");
    let out = s.hostaction(&[
        &"pull",
        &"127.0.0.1:1/hostaction/none:1",
        &"--ca-file",
        &missing,
        &"--output",
        &"json",
    ]);
    let (code, kind, message) = error(&out);
    assert_eq!((code, kind.as_str()), (Some(2), "bad-config"), "{message}");
    assert!(
        message.starts_with(&format!("bad params: CA file {}: ", missing.display())),
        "{message}"
    );
    // An unreadable params file is bad params; an unreadable grant file a
    // bad grant; an unreadable module file a bad module.
    let params = format!("@{}", s.dir.path().join("missing.json").display());
    let grants = s.dir.path().join("missing.yaml");
    let probe = guest("probe");
    let with_params: [&dyn AsRef<std::ffi::OsStr>; 2] = [&"--params", &params];
    let with_grants: [&dyn AsRef<std::ffi::OsStr>; 2] = [&"--grants", &grants];
    for (extra, want) in [(with_params, "bad-params"), (with_grants, "bad-grant")] {
        let mut args: Vec<&dyn AsRef<std::ffi::OsStr>> = vec![&"run", &probe, &"--output", &"json"];
        args.extend(extra);
        let (code, kind, message) = error(&s.hostaction(&args));
        assert_eq!((code, kind.as_str()), (Some(2), want), "{message}");
        assert!(message.contains("missing."), "{message}");
    }
    let module = s.dir.path().join("missing.wasm");
    let (code, kind, message) = error(&s.hostaction(&[&"run", &module, &"--output", &"json"]));
    assert_eq!((code, kind.as_str()), (Some(2), "bad-module"), "{message}");
}

#[test]
fn an_error_naming_a_file_with_escape_sequences_shows_them_escaped() {
    let s = Scratch::new();
    let out = s.run_cni(&[&"--params", &"@/nonexistent/\x1b]0;pwned\x07\x1b[2J"]);
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    let err = stderr(&out);
    assert!(!err.contains('\x1b') && !err.contains('\x07'), "{err:?}");
    assert!(err.contains("\\x1b]0;pwned"), "{err:?}");
}

#[test]
fn inspect_lists_capabilities_and_exports() {
    let s = Scratch::new();
    let out = s.hostaction(&[&"inspect", &guest("cni-install")]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let text = stdout(&out);
    assert!(
        text.contains("files     hostaction:host/files@0.1.0"),
        "{text}"
    );
    assert!(text.contains("hostaction:host/log@0.1.0"), "{text}");
    assert!(text.contains("run"), "{text}");

    let out = s.hostaction(&[&"inspect", &guest("wrong-export"), &"--output", &"json"]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let json: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(json["runnable"], false);
}

/// Detaches the named namespaces a run made under `root` (and their
/// directory's own mount) when dropped, so the scratch root can be removed.
struct NetnsGuard(PathBuf);

impl Drop for NetnsGuard {
    fn drop(&mut self) {
        let dir = self.0.join("var/run/netns");
        for entry in std::fs::read_dir(&dir).into_iter().flatten().flatten() {
            let _ = Command::new("umount").arg("-l").arg(entry.path()).status();
        }
        let _ = Command::new("umount").arg("-l").arg(&dir).status();
    }
}

/// `ip -j -d link show dev NAME` inside the namespace file `ns`.
fn observed_link(ns: &Path, name: &str) -> serde_json::Value {
    let out = Command::new("nsenter")
        .arg(format!("--net={}", ns.display()))
        .args(["ip", "-j", "-d", "link", "show", "dev", name])
        .output()
        .unwrap();
    assert!(out.status.success(), "{name}: {}", stderr(&out));
    serde_json::from_slice::<serde_json::Value>(&out.stdout).unwrap()[0].clone()
}

/// Needs root: the CLI runs vxlan-overlay in "the host's own" namespace,
/// which here is a namespace the test made (the CLI runs under `nsenter`), so
/// the workload end's peer is named as `host`.
#[test]
fn vxlan_overlay_runs_on_this_hosts_own_namespace() {
    let s = Scratch::new();
    let root = s.root();
    let _guard = NetnsGuard(root.clone());
    let grants = hostaction_root().join("sample-actions/vxlan-overlay/grants.yaml");
    let made = s.hostaction(&[
        &"run",
        &guest("netprobe"),
        &"--grants",
        &grants,
        &"--host-root",
        &root,
        &"--params",
        &r#"{"ops": [{"op": "ensure-netns", "name": "ovl-h"}]}"#,
    ]);
    assert_eq!(made.status.code(), Some(0), "{}", stderr(&made));
    let host_ns = root.join("var/run/netns/ovl-h");
    let params = r#"{"vxlan": {"vni": 7, "remote": "192.0.2.2"},
                     "workload": {"netns": "ovl-w", "address": "10.244.0.1/24"}}"#;
    let run = || {
        let out = Command::new("nsenter")
            .arg(format!("--net={}", host_ns.display()))
            .arg(env!("CARGO_BIN_EXE_hostaction"))
            .arg("--cache-dir")
            .arg(s.dir.path().join("cache"))
            .args(["run", "--output", "json", "--params", params, "--grants"])
            .arg(&grants)
            .arg("--host-root")
            .arg(&root)
            .arg(guest("vxlan-overlay"))
            .output()
            .unwrap();
        assert_eq!(
            out.status.code(),
            Some(0),
            "{}{}",
            stdout(&out),
            stderr(&out)
        );
        serde_json::from_slice::<serde_json::Value>(&out.stdout).unwrap()
    };
    assert_eq!(run()["report"]["outcome"]["changed"], true);
    let host_end = observed_link(&host_ns, "ve-ovl");
    assert_eq!(host_end["master"], "br-ovl");
    let far_end = observed_link(&root.join("var/run/netns/ovl-w"), "ve-ovl-w");
    assert_eq!(far_end["mtu"], 1450);
    assert!(far_end["flags"].as_array().unwrap().contains(&"UP".into()));
    let second = run();
    assert_eq!(second["report"]["outcome"]["changed"], false, "{second}");
}

fn hostaction_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}
