//! Path escapes: every way out of a granted directory is denied, and the host
//! tree is unchanged afterwards.

// Test code: a failed unwrap is a failed test, with its message.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::os::unix::fs::symlink;

use hostaction_runtime::{Runtime, RuntimeConfig};
use hostaction_tests::{Host, err_kind, probe_results, request};
use serde_json::{Value, json};

const GRANT: &str = "files: {write: [/opt/cni/bin]}";

/// A host root with a granted `/opt/cni/bin` and secrets outside it.
fn host_with_secrets() -> Host {
    let host = Host::new();
    host.write("/opt/cni/bin/bridge", "real plugin");
    host.write("/etc/secret", "top secret");
    host.write("/etc/cron.d/keep", "keep me");
    host
}

/// Runs the probe's ops against the host and asserts each was refused with
/// one of `kinds`, and that nothing under the host root changed.
fn assert_denied(host: &Host, ops: Value, kinds: &[&str]) {
    let before = host.snapshot();
    let report = host.run("probe", &json!({ "ops": ops }), GRANT).unwrap();
    for (i, r) in probe_results(&report).iter().enumerate() {
        let kind = err_kind(r).unwrap_or_else(|| panic!("op {i} was allowed: {r}"));
        assert!(kinds.contains(&kind), "op {i}: {r}");
    }
    assert_eq!(host.snapshot(), before, "the host tree changed");
    assert!(report.effects.is_empty(), "{:?}", report.effects);
}

/// Every file operation on `path`.
fn every_op(path: &str) -> Value {
    json!([
        {"op": "ensure-file", "path": path, "contents": "pwned", "mode": 420},
        {"op": "read-file", "path": path},
        {"op": "remove", "path": path},
        {"op": "ensure-dir", "path": format!("{path}/d"), "mode": 493},
        {"op": "list-dir", "path": path},
        {"op": "stat", "path": format!("{path}/x")},
    ])
}

#[test]
fn dot_dot_is_refused() {
    let host = host_with_secrets();
    assert_denied(
        &host,
        every_op("/opt/cni/bin/../../../etc/secret"),
        &["invalid-argument"],
    );
    assert_denied(&host, every_op("/opt/cni/bin/.."), &["invalid-argument"]);
}

#[test]
fn absolute_path_outside_the_grant_is_denied() {
    let host = host_with_secrets();
    assert_denied(&host, every_op("/etc/secret"), &["permission-denied"]);
    assert_denied(&host, every_op("/opt/cni/binary"), &["permission-denied"]);
}

#[test]
fn leaf_symlink_pointing_outside_is_denied() {
    let host = host_with_secrets();
    symlink("/etc/secret", host.path("/opt/cni/bin/abs")).unwrap();
    symlink("../../../etc/secret", host.path("/opt/cni/bin/rel")).unwrap();
    for link in ["/opt/cni/bin/abs", "/opt/cni/bin/rel"] {
        assert_denied(
            &host,
            json!([
                {"op": "ensure-file", "path": link, "contents": "pwned", "mode": 420},
                {"op": "read-file", "path": link},
                {"op": "list-dir", "path": link},
            ]),
            &["permission-denied"],
        );
    }
}

#[test]
fn middle_directory_symlink_pointing_outside_is_denied() {
    let host = host_with_secrets();
    symlink("../../../etc", host.path("/opt/cni/bin/rel")).unwrap();
    symlink("/etc", host.path("/opt/cni/bin/abs")).unwrap();
    for dir in ["/opt/cni/bin/rel", "/opt/cni/bin/abs"] {
        assert_denied(
            &host,
            every_op(&format!("{dir}/secret")),
            &["permission-denied"],
        );
        assert_denied(
            &host,
            json!([
                {"op": "ensure-file", "path": format!("{dir}/cron.d/keep"), "contents": "x", "mode": 420},
                {"op": "ensure-dir", "path": format!("{dir}/new"), "mode": 493},
                {"op": "list-dir", "path": format!("{dir}/cron.d")},
            ]),
            &["permission-denied"],
        );
    }
}

#[test]
fn proc_self_fd_paths_and_links_are_denied() {
    let host = host_with_secrets();
    assert_denied(&host, every_op("/proc/self/fd/0"), &["permission-denied"]);
    symlink("/proc/self/fd/0", host.path("/opt/cni/bin/fd0")).unwrap();
    symlink("/proc/self/root/etc", host.path("/opt/cni/bin/hostetc")).unwrap();
    assert_denied(
        &host,
        json!([
            {"op": "ensure-file", "path": "/opt/cni/bin/fd0", "contents": "x", "mode": 420},
            {"op": "read-file", "path": "/opt/cni/bin/fd0"},
            {"op": "read-file", "path": "/opt/cni/bin/hostetc/hostname"},
            {"op": "list-dir", "path": "/opt/cni/bin/hostetc"},
        ]),
        &["permission-denied"],
    );
}

#[test]
fn magic_links_are_denied_even_inside_a_granted_directory() {
    // The real /proc, read-only: with /proc/self granted (and allowed as a
    // kernel path), `root` and `fd/N` are magic links that would lead
    // anywhere; the kernel refuses them.
    let runtime = Runtime::new(RuntimeConfig {
        host_root: "/".into(),
        cache_dir: None,
        system_bus: None,
        ..RuntimeConfig::default()
    })
    .unwrap();
    let module = runtime
        .load_file(&hostaction_tests::guest("probe"))
        .unwrap();
    let params = json!({"ops": [
        {"op": "read-file", "path": "/proc/self/root/etc/hostname"},
        {"op": "read-file", "path": "/proc/self/fd/0"},
        {"op": "list-dir", "path": "/proc/self/cwd"},
        {"op": "read-file", "path": "/proc/self/status"},
    ]});
    let report = runtime
        .run(
            &module,
            request(
                &params,
                "files: {read: [/proc/self], kernelPaths: [/proc/self]}",
            ),
        )
        .unwrap();
    let results = probe_results(&report);
    for r in &results[..3] {
        assert_eq!(err_kind(r), Some("permission-denied"), "{r}");
    }
    // A plain file beneath the same grant reads fine: the denial is the link.
    assert!(
        results[3]["ok"].as_str().unwrap().contains("Name:"),
        "{}",
        results[3]
    );
}

#[test]
fn nul_byte_is_refused() {
    let host = host_with_secrets();
    assert_denied(
        &host,
        every_op("/opt/cni/bin/a\u{0}b"),
        &["invalid-argument"],
    );
}

#[test]
fn over_long_path_and_name_are_refused() {
    let host = host_with_secrets();
    let long_path = format!("/opt/cni/bin/{}", "a/".repeat(2100));
    assert_denied(&host, every_op(&long_path), &["invalid-argument"]);
    let long_name = format!("/opt/cni/bin/{}", "a".repeat(256));
    assert_denied(&host, every_op(&long_name), &["invalid-argument"]);
}

#[test]
fn write_to_a_hard_link_of_a_file_outside_the_grant_is_denied() {
    let host = host_with_secrets();
    std::fs::hard_link(host.path("/etc/secret"), host.path("/opt/cni/bin/hl")).unwrap();
    assert_denied(
        &host,
        json!([
            {"op": "ensure-file", "path": "/opt/cni/bin/hl", "contents": "pwned", "mode": 420},
            {"op": "ensure-file", "path": "/opt/cni/bin/hl", "contents": "top secret", "mode": 0o700},
            {"op": "read-file", "path": "/opt/cni/bin/hl"},
        ]),
        &["permission-denied"],
    );
    assert_eq!(
        std::fs::read_to_string(host.path("/etc/secret")).unwrap(),
        "top secret"
    );
}

#[test]
fn setuid_mode_is_refused() {
    let host = host_with_secrets();
    assert_denied(
        &host,
        json!([
            {"op": "ensure-file", "path": "/opt/cni/bin/suid", "contents": "x", "mode": 0o4755},
            {"op": "ensure-dir", "path": "/opt/cni/bin/sticky", "mode": 0o1777},
        ]),
        &["invalid-argument"],
    );
}

#[test]
fn granted_directory_itself_cannot_be_removed_or_replaced() {
    let host = host_with_secrets();
    assert_denied(
        &host,
        json!([
            {"op": "remove", "path": "/opt/cni/bin"},
            {"op": "ensure-file", "path": "/opt/cni/bin", "contents": "x", "mode": 420},
        ]),
        &["permission-denied"],
    );
}

/// A runtime whose host root is the real `/`.
fn real_root() -> Runtime {
    Runtime::new(RuntimeConfig {
        host_root: "/".into(),
        cache_dir: None,
        ..RuntimeConfig::default()
    })
    .unwrap()
}

#[test]
fn procfs_and_sysfs_are_refused_unless_the_policy_lists_the_path() {
    let runtime = real_root();
    let module = runtime
        .load_file(&hostaction_tests::guest("probe"))
        .unwrap();
    let run = |ops: Value, grant: &str| {
        probe_results(
            &runtime
                .run(&module, request(&json!({ "ops": ops }), grant))
                .unwrap(),
        )
    };
    // The agent's own environment, through a grant of /proc or of all of /.
    let self_ops = json!([
        {"op": "read-file", "path": "/proc/self/environ"},
        {"op": "read-file", "path": "/proc/meminfo"},
        {"op": "list-dir", "path": "/proc"},
        {"op": "stat", "path": "/proc/self"},
        {"op": "stat", "path": "/proc/1"},
        {"op": "stat", "path": "/proc"},
        {"op": "read-file", "path": "/sys/kernel/uevent_seqnum"},
        {"op": "list-dir", "path": "/sys/class"},
    ]);
    for grant in ["files: {read: [/proc, /sys]}", "files: {read: [/]}"] {
        for (i, r) in run(self_ops.clone(), grant).iter().enumerate() {
            assert_eq!(
                err_kind(r),
                Some("permission-denied"),
                "{grant}: op {i}: {r}"
            );
            let message = r["err"]["message"].as_str().unwrap();
            assert!(
                message.contains("procfs") || message.contains("sysfs"),
                "{grant}: op {i}: {message}"
            );
        }
    }
    // Listed files read; everything else on procfs is still refused.
    let grant = "files: {read: [/proc], kernelPaths: [/proc/meminfo]}";
    let results = run(
        json!([
            {"op": "read-file", "path": "/proc/meminfo"},
            {"op": "stat", "path": "/proc/meminfo"},
            {"op": "read-file", "path": "/proc/self/environ"},
            {"op": "read-file", "path": "/proc/self/status"},
            {"op": "list-dir", "path": "/proc"},
        ]),
        grant,
    );
    assert!(
        results[0]["ok"].as_str().unwrap().contains("MemTotal"),
        "{}",
        results[0]
    );
    assert_eq!(results[1]["ok"]["kind"], "file", "{}", results[1]);
    for r in &results[2..] {
        assert_eq!(err_kind(r), Some("permission-denied"), "{r}");
    }
}

#[test]
fn a_procfs_mounted_anywhere_in_a_grant_is_refused() {
    // Told by the filesystem, not the path: a procfs mounted at an innocent
    // name inside the granted directory.
    let host = host_with_secrets();
    let mnt = host.path("/opt/cni/bin/state");
    std::fs::create_dir_all(&mnt).unwrap();
    let mounted = std::process::Command::new("mount")
        .args(["-t", "proc", "proc"])
        .arg(&mnt)
        .status()
        .unwrap();
    assert!(mounted.success(), "mount -t proc");
    struct Unmount(std::path::PathBuf);
    impl Drop for Unmount {
        fn drop(&mut self) {
            let _ = std::process::Command::new("umount")
                .arg("-l")
                .arg(&self.0)
                .status();
        }
    }
    let _unmount = Unmount(mnt);
    let report = host
        .run(
            "probe",
            &json!({"ops": [
                {"op": "read-file", "path": "/opt/cni/bin/state/self/environ"},
                {"op": "read-file", "path": "/opt/cni/bin/state/1/cmdline"},
                {"op": "list-dir", "path": "/opt/cni/bin/state"},
                {"op": "ensure-dir", "path": "/opt/cni/bin/state/sys/x", "mode": 493},
                {"op": "remove", "path": "/opt/cni/bin/state/self"},
            ]}),
            GRANT,
        )
        .unwrap();
    for (i, r) in probe_results(&report).iter().enumerate() {
        assert_eq!(err_kind(r), Some("permission-denied"), "op {i}: {r}");
    }
    assert!(report.effects.is_empty(), "{:?}", report.effects);
}
