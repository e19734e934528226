//! The files capability end to end: ensure semantics, atomic replacement,
//! idempotence of cni-install, plan mode, reads.

// Test code: a failed unwrap is a failed test, with its message.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Barrier};

use hostaction_runtime::effects::Mode;
use hostaction_tests::{Host, err_kind, probe_results, request};
use serde_json::json;

const CNI_GRANT: &str = "files: {write: [/etc/cni/net.d, /opt/cni/bin]}";

#[test]
fn ensure_file_writes_bytes_and_mode_then_reports_unchanged() {
    let host = Host::new();
    let ops = json!({"ops": [
        {"op": "ensure-dir", "path": "/opt/cni/bin", "mode": 0o755},
        {"op": "ensure-file", "path": "/opt/cni/bin/tool", "contents": "#!/bin/sh\n", "mode": 0o750},
    ]});
    let first = host
        .run("probe", &ops, "files: {write: [/opt/cni/bin]}")
        .unwrap();
    assert_eq!(probe_results(&first)[1]["ok"], true);
    let meta = std::fs::metadata(host.path("/opt/cni/bin/tool")).unwrap();
    assert_eq!(meta.permissions().mode() & 0o7777, 0o750);
    assert_eq!(
        std::fs::read_to_string(host.path("/opt/cni/bin/tool")).unwrap(),
        "#!/bin/sh\n"
    );
    assert_eq!(
        std::fs::metadata(host.path("/opt/cni/bin")).unwrap().mode() & 0o777,
        0o755
    );

    let before = host.snapshot();
    let second = host
        .run("probe", &ops, "files: {write: [/opt/cni/bin]}")
        .unwrap();
    assert_eq!(
        probe_results(&second),
        [json!({"ok": false}), json!({"ok": false})]
    );
    assert!(second.effects.is_empty());
    assert_eq!(host.snapshot(), before);

    // A mode change alone is a change.
    let chmod = json!({"ops": [
        {"op": "ensure-file", "path": "/opt/cni/bin/tool", "contents": "#!/bin/sh\n", "mode": 0o755},
    ]});
    let third = host
        .run("probe", &chmod, "files: {write: [/opt/cni/bin]}")
        .unwrap();
    assert_eq!(probe_results(&third)[0]["ok"], true);
    let mode = std::fs::metadata(host.path("/opt/cni/bin/tool"))
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(mode & 0o7777, 0o755);
}

#[test]
fn ensure_file_without_its_parent_is_not_found_and_creates_nothing() {
    let host = Host::new();
    let report = host
        .run(
            "probe",
            &json!({"ops": [{"op": "ensure-file", "path": "/opt/cni/bin/x", "contents": "x", "mode": 420}]}),
            "files: {write: [/opt/cni/bin]}",
        )
        .unwrap();
    assert_eq!(err_kind(&probe_results(&report)[0]), Some("not-found"));
    assert!(host.snapshot().is_empty());
}

#[test]
fn ensure_file_over_a_directory_is_a_conflict() {
    let host = Host::new();
    std::fs::create_dir_all(host.path("/opt/cni/bin/dir")).unwrap();
    let report = host
        .run(
            "probe",
            &json!({"ops": [{"op": "ensure-file", "path": "/opt/cni/bin/dir", "contents": "x", "mode": 420}]}),
            "files: {write: [/opt/cni/bin]}",
        )
        .unwrap();
    assert_eq!(err_kind(&probe_results(&report)[0]), Some("conflict"));
}

#[test]
fn reads_list_and_stat_see_the_files() {
    let host = Host::new();
    host.write("/etc/cni/net.d/10-a.conflist", "a");
    host.write("/etc/cni/net.d/20-b.conflist", "bb");
    std::fs::create_dir(host.path("/etc/cni/net.d/sub")).unwrap();
    let report = host
        .run(
            "probe",
            &json!({"ops": [
                {"op": "list-dir", "path": "/etc/cni/net.d"},
                {"op": "read-file", "path": "/etc/cni/net.d/20-b.conflist"},
                {"op": "stat", "path": "/etc/cni/net.d/20-b.conflist"},
                {"op": "stat", "path": "/etc/cni/net.d/missing"},
                {"op": "read-file", "path": "/etc/cni/net.d/missing"},
                {"op": "read-file", "path": "/etc/cni/net.d/sub"},
            ]}),
            "files: {read: [/etc/cni/net.d]}",
        )
        .unwrap();
    let r = probe_results(&report);
    let names: Vec<_> = r[0]["ok"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["name"].clone())
        .collect();
    assert_eq!(
        names,
        [json!("10-a.conflist"), json!("20-b.conflist"), json!("sub")]
    );
    assert_eq!(r[0]["ok"][2]["kind"], "directory");
    assert_eq!(r[1]["ok"], "bb");
    assert_eq!(r[2]["ok"]["size"], 2);
    assert_eq!(r[2]["ok"]["kind"], "file");
    assert_eq!(r[3]["ok"], json!(null));
    assert_eq!(err_kind(&r[4]), Some("not-found"));
    assert_eq!(err_kind(&r[5]), Some("conflict"));
}

#[test]
fn remove_reports_whether_something_was_removed() {
    let host = Host::new();
    host.write("/opt/cni/bin/old", "x");
    std::fs::create_dir_all(host.path("/opt/cni/bin/full/inner")).unwrap();
    let report = host
        .run(
            "probe",
            &json!({"ops": [
                {"op": "remove", "path": "/opt/cni/bin/old"},
                {"op": "remove", "path": "/opt/cni/bin/old"},
                {"op": "remove", "path": "/opt/cni/bin/full"},
                {"op": "remove", "path": "/opt/cni/bin/full/inner"},
            ]}),
            "files: {write: [/opt/cni/bin]}",
        )
        .unwrap();
    let r = probe_results(&report);
    assert_eq!(r[0]["ok"], true);
    assert_eq!(r[1]["ok"], false);
    assert_eq!(err_kind(&r[2]), Some("conflict"));
    assert_eq!(r[3]["ok"], true);
    assert!(!host.path("/opt/cni/bin/old").exists());
}

#[test]
fn readers_never_see_a_mix_during_repeated_rewrites() {
    let host = Arc::new(Host::new());
    std::fs::create_dir_all(host.path("/opt/cni/bin")).unwrap();
    const SIZE: usize = 256 * 1024;
    const REWRITES: usize = 60;
    let (a, b) = ("a".repeat(SIZE), "b".repeat(SIZE));
    host.write("/opt/cni/bin/plugin", &a);
    let ops: Vec<_> = (0..REWRITES)
        .map(|i| {
            let contents = if i % 2 == 0 { &b } else { &a };
            json!({"op": "ensure-file", "path": "/opt/cni/bin/plugin", "contents": contents, "mode": 420})
        })
        .collect();
    // One round: the probe rewrites the file while a reader reads it.
    let round = || {
        let done = Arc::new(AtomicBool::new(false));
        let start = Arc::new(Barrier::new(2));
        let reader = {
            let (path, done, start) = (
                host.path("/opt/cni/bin/plugin"),
                done.clone(),
                start.clone(),
            );
            std::thread::spawn(move || {
                start.wait();
                let mut reads = 0;
                let mut seen = [false; 2];
                while !done.load(Ordering::Relaxed) {
                    let bytes = std::fs::read(&path).unwrap();
                    assert_eq!(bytes.len(), SIZE, "a reader saw a partial file");
                    let first = bytes[0];
                    assert!(
                        bytes.iter().all(|&c| c == first),
                        "a reader saw a mix of two versions"
                    );
                    seen[usize::from(first == b'b')] = true;
                    reads += 1;
                }
                (reads, seen)
            })
        };
        start.wait();
        let report = host
            .run(
                "probe",
                &json!({ "ops": ops }),
                "files: {write: [/opt/cni/bin]}",
            )
            .unwrap();
        done.store(true, Ordering::Relaxed);
        let read = reader.join().unwrap();
        assert!(report.status.is_success(), "{}", report.status);
        assert_eq!(report.effects.len(), REWRITES);
        read
    };
    // The reader must have overlapped the rewrites for the check to mean
    // anything; a loaded machine may keep it off the CPU for a whole round,
    // so rounds repeat (a bounded number of times) until it saw both.
    let (mut reads, mut seen) = (0, [false; 2]);
    for _ in 0..20 {
        let (round_reads, round_seen) = round();
        reads += round_reads;
        seen = [seen[0] || round_seen[0], seen[1] || round_seen[1]];
        if reads > 10 && seen[0] && seen[1] {
            break;
        }
    }
    assert!(reads > 10, "the reader only read {reads} times");
    assert!(
        seen[0] && seen[1],
        "the reader never saw both versions: {seen:?}"
    );
    // No temp files are left behind.
    let left: Vec<_> = std::fs::read_dir(host.path("/opt/cni/bin"))
        .unwrap()
        .collect();
    assert_eq!(left.len(), 1);
}

#[test]
fn cni_install_second_run_changes_nothing_and_keeps_mtimes() {
    let host = Host::new();
    let params = json!({"name": "demo", "subnet": "10.22.0.0/16"});
    let first = host.run("cni-install", &params, CNI_GRANT).unwrap();
    assert!(first.status.is_success(), "{}", first.status);
    assert!(first.outcome.as_ref().unwrap().changed);
    let conflist = host.path("/etc/cni/net.d/10-demo.conflist");
    let json: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&conflist).unwrap()).unwrap();
    assert_eq!(json["name"], "demo");
    assert!(json.to_string().contains("10.22.0.0/16"), "{json}");
    let installed: Vec<_> = std::fs::read_dir(host.path("/opt/cni/bin"))
        .unwrap()
        .collect();
    assert!(!installed.is_empty());

    let before = host.snapshot();
    let second = host.run("cni-install", &params, CNI_GRANT).unwrap();
    assert!(second.status.is_success(), "{}", second.status);
    assert!(
        !second.outcome.as_ref().unwrap().changed,
        "{:?}",
        second.outcome
    );
    assert!(second.effects.is_empty(), "{:?}", second.effects);
    // The snapshot includes every mtime (to the nanosecond) and inode.
    assert_eq!(host.snapshot(), before);
}

#[test]
fn cni_install_with_bad_params_fails_naming_the_field_and_changes_nothing() {
    let host = Host::new();
    let report = host
        .run("cni-install", &json!({"subnet": "10.22.0.0/99"}), CNI_GRANT)
        .unwrap();
    assert!(!report.status.is_success());
    assert!(
        report.status.to_string().contains("subnet"),
        "{}",
        report.status
    );
    assert!(host.snapshot().is_empty());
}

#[test]
fn plan_mode_reports_changes_without_making_them() {
    let host = Host::new();
    let module = host.load("cni-install");
    let mut req = request(&json!({}), CNI_GRANT);
    req.mode = Mode::Plan;
    let report = host.runtime.run(&module, req).unwrap();
    assert!(report.status.is_success(), "{}", report.status);
    assert!(!report.effects.is_empty());
    assert!(report.effects.iter().all(|e| !e.applied));
    assert!(host.snapshot().is_empty(), "plan mode changed the host");
}

/// The probe's results for `ops` under `grant` (no policy), with `payload`
/// files (`NAME=FILE`) given as `hostaction run --payload` gives them.
fn probe_with_payload(
    host: &Host,
    ops: serde_json::Value,
    grant: &str,
    payload: &[(String, std::path::PathBuf)],
) -> Vec<serde_json::Value> {
    use hostaction_runtime::capabilities::payload::Payload;
    let mut req = request(&json!({ "ops": ops }), grant);
    req.payload = Arc::new(Payload::from_files(payload).unwrap());
    let module = host.load("probe");
    probe_results(&host.runtime.run(&module, req).unwrap())
}

#[test]
fn world_writable_modes_are_refused_and_group_writable_needs_the_grant() {
    let host = Host::new();
    host.write("/opt/cni/bin/bridge", "plugin");
    let before = host.snapshot();
    let ops = json!([
        {"op": "ensure-file", "path": "/opt/cni/bin/bridge", "contents": "evil", "mode": 0o777},
        {"op": "ensure-file", "path": "/opt/cni/bin/new", "contents": "x", "mode": 0o646},
        {"op": "ensure-dir", "path": "/opt/cni/bin/d", "mode": 0o777},
        {"op": "ensure-dir", "path": "/opt/cni/bin", "mode": 0o757},
        {"op": "ensure-file", "path": "/opt/cni/bin/bridge", "contents": "evil", "mode": 0o775},
        {"op": "ensure-dir", "path": "/opt/cni/bin/d", "mode": 0o770},
    ]);
    let results = probe_with_payload(&host, ops.clone(), "files: {write: [/opt/cni/bin]}", &[]);
    for (i, r) in results.iter().enumerate() {
        let (kind, mode) = if i < 4 {
            ("invalid-argument", ["0777", "0646", "0777", "0757"][i])
        } else {
            ("permission-denied", ["0775", "0770"][i - 4])
        };
        assert_eq!(err_kind(r), Some(kind), "op {i}: {r}");
        let message = r["err"]["message"].as_str().unwrap();
        assert!(message.contains(mode), "op {i}: {r}");
    }
    assert_eq!(host.snapshot(), before);
    // The node allows group-writable modes: g+w goes, o+w still never does.
    let grant = "files: {write: [/opt/cni/bin], groupWritable: true}";
    let results = probe_with_payload(&host, ops, grant, &[]);
    assert_eq!(
        err_kind(&results[0]),
        Some("invalid-argument"),
        "{}",
        results[0]
    );
    assert_eq!(results[4]["ok"], true, "{}", results[4]);
    assert_eq!(results[5]["ok"], true, "{}", results[5]);
    assert_eq!(host.mode("/opt/cni/bin/bridge"), 0o775);
}

#[test]
fn a_granted_directory_keeps_its_mode() {
    let host = Host::new();
    std::fs::create_dir_all(host.path("/opt/cni/bin")).unwrap();
    std::fs::set_permissions(
        host.path("/opt/cni/bin"),
        std::fs::Permissions::from_mode(0o700),
    )
    .unwrap();
    let ops = json!([
        {"op": "ensure-dir", "path": "/opt/cni/bin", "mode": 0o755},
        {"op": "ensure-dir", "path": "/opt/cni/bin", "mode": 0o700},
        {"op": "ensure-dir", "path": "/opt/cni/bin/sub", "mode": 0o750},
    ]);
    let report = host
        .run(
            "probe",
            &json!({ "ops": ops }),
            "files: {write: [/opt/cni/bin]}",
        )
        .unwrap();
    let results = probe_results(&report);
    assert_eq!(
        err_kind(&results[0]),
        Some("permission-denied"),
        "{}",
        results[0]
    );
    let message = results[0]["err"]["message"].as_str().unwrap();
    assert!(
        message.contains("granted directory") && message.contains("0700"),
        "{message}"
    );
    assert_eq!(results[1]["ok"], false);
    assert_eq!(results[2]["ok"], true);
    assert_eq!(host.mode("/opt/cni/bin"), 0o700);
    assert_eq!(host.mode("/opt/cni/bin/sub"), 0o750);
    // One the action creates gets the mode asked.
    let ops = json!([{"op": "ensure-dir", "path": "/etc/cni/net.d", "mode": 0o750}]);
    let report = host
        .run(
            "probe",
            &json!({ "ops": ops }),
            "files: {write: [/etc/cni/net.d]}",
        )
        .unwrap();
    assert_eq!(probe_results(&report)[0]["ok"], true);
    assert_eq!(host.mode("/etc/cni/net.d"), 0o750);
    assert_eq!(host.mode("/etc/cni"), 0o755);
}

#[test]
fn executable_false_allows_execute_bits_only_on_payload_contents() {
    let host = Host::new();
    std::fs::create_dir_all(host.path("/opt/cni/bin")).unwrap();
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("bridge"), "#!/bin/sh\necho shipped\n").unwrap();
    let payload = [("bridge".to_owned(), dir.path().join("bridge"))];
    let ops = json!([
        {"op": "ensure-file", "path": "/opt/cni/bin/bridge", "contents": "#!/bin/sh\necho shipped\n", "mode": 0o755},
        {"op": "ensure-file", "path": "/opt/cni/bin/mine", "contents": "#!/bin/sh\nid\n", "mode": 0o755},
        {"op": "ensure-file", "path": "/opt/cni/bin/mine", "contents": "#!/bin/sh\nid\n", "mode": 0o700},
        {"op": "ensure-file", "path": "/opt/cni/bin/conf", "contents": "{}", "mode": 0o644},
    ]);
    let grant = "files: {write: [/opt/cni/bin], executable: false}";
    let results = probe_with_payload(&host, ops.clone(), grant, &payload);
    assert_eq!(results[0]["ok"], true, "{}", results[0]);
    for r in &results[1..3] {
        assert_eq!(err_kind(r), Some("permission-denied"), "{r}");
        assert!(
            r["err"]["message"].as_str().unwrap().contains("executable"),
            "{r}"
        );
    }
    assert_eq!(results[3]["ok"], true, "{}", results[3]);
    assert!(!host.path("/opt/cni/bin/mine").exists());
    // The default allows them.
    let results = probe_with_payload(&host, ops, "files: {write: [/opt/cni/bin]}", &[]);
    assert_eq!(results[1]["ok"], true, "{}", results[1]);
}
