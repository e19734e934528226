//! Grants: an ungranted import never starts; a call outside its scope is
//! denied and changes nothing; the node policy bounds the grant.

// Test code: a failed unwrap is a failed test, with its message.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use hostaction_runtime::grant::{Capability, EffectiveGrant, Grant, GrantDocument};
use hostaction_runtime::{Error, RunRequest};
use hostaction_tests::{Host, err_kind, probe_results};
use serde_json::json;

#[test]
fn ungranted_files_import_is_refused_before_the_component_starts() {
    let host = Host::new();
    let params = json!({"ops": [
        {"op": "log", "message": "started"},
        {"op": "ensure-dir", "path": "/opt/cni", "mode": 493},
    ]});
    // A grant with another capability only: `files` is missing.
    let err = host
        .run("probe", &params, "services: {units: [x.service]}")
        .unwrap_err();
    match &err {
        Error::Refused(missing) => {
            assert_eq!(missing.len(), 1, "{missing:?}");
            assert!(missing[0].contains("`files`"), "{missing:?}");
        }
        other => panic!("expected a refusal, got {other:?}"),
    }
    assert_eq!(err.exit_code(), 3);
    assert!(
        host.snapshot().is_empty(),
        "the refused action changed the host"
    );
}

#[test]
fn call_outside_the_granted_directories_is_denied_and_changes_nothing() {
    let host = Host::new();
    host.write("/etc/passwd", "root:x:0:0\n");
    let before = host.snapshot();
    let report = host
        .run(
            "probe",
            &json!({"ops": [
                {"op": "ensure-file", "path": "/etc/passwd", "contents": "pwned", "mode": 420},
                {"op": "read-file", "path": "/etc/passwd"},
                {"op": "remove", "path": "/etc/passwd"},
                {"op": "ensure-dir", "path": "/etc/cron.d", "mode": 493},
                {"op": "ensure-file", "path": "/opt/cni/binary", "contents": "x", "mode": 420},
            ]}),
            "files: {write: [/opt/cni/bin]}",
        )
        .unwrap();
    let results = probe_results(&report);
    for (i, r) in results.iter().enumerate() {
        assert_eq!(err_kind(r), Some("permission-denied"), "op {i}: {r}");
    }
    // The message names what is granted, so the author knows what to ask for.
    assert!(
        results[0]["err"]["message"]
            .as_str()
            .unwrap()
            .contains("/opt/cni/bin")
    );
    assert_eq!(host.snapshot(), before);
    assert!(report.effects.is_empty());
}

#[test]
fn read_grant_does_not_allow_writes() {
    let host = Host::new();
    host.write("/etc/cni/net.d/10-x.conflist", "{}");
    let before = host.snapshot();
    let report = host
        .run(
            "probe",
            &json!({"ops": [
                {"op": "read-file", "path": "/etc/cni/net.d/10-x.conflist"},
                {"op": "ensure-file", "path": "/etc/cni/net.d/10-x.conflist", "contents": "[]", "mode": 420},
            ]}),
            "files: {read: [/etc/cni]}",
        )
        .unwrap();
    let results = probe_results(&report);
    assert_eq!(results[0]["ok"], "{}");
    assert_eq!(err_kind(&results[1]), Some("permission-denied"));
    assert_eq!(host.snapshot(), before);
}

#[test]
fn node_policy_bounds_the_grant() {
    let host = Host::new();
    let grant = Grant::parse("files: {write: [/opt, /etc]}", "grant").unwrap();
    let policy = Grant::parse("files: {write: [/opt/cni/bin]}", "policy").unwrap();
    let module = host.load("probe");
    let params = json!({"ops": [
        {"op": "ensure-dir", "path": "/opt/cni/bin", "mode": 493},
        {"op": "ensure-dir", "path": "/opt/other", "mode": 493},
        {"op": "ensure-dir", "path": "/etc/cni", "mode": 493},
    ]});
    let request = RunRequest::new(
        params.to_string(),
        EffectiveGrant::new(&grant, Some(&policy)).unwrap(),
    );
    let report = host.runtime.run(&module, request).unwrap();
    let results = probe_results(&report);
    assert_eq!(results[0]["ok"], true);
    assert_eq!(err_kind(&results[1]), Some("permission-denied"));
    assert_eq!(err_kind(&results[2]), Some("permission-denied"));
    assert!(host.path("/opt/cni/bin").is_dir());
    assert!(!host.path("/opt/other").exists() && !host.path("/etc").exists());
}

#[test]
fn policy_that_leaves_nothing_of_the_files_grant_refuses_the_module() {
    let host = Host::new();
    let grant = Grant::parse("files: {write: [/opt/cni/bin]}", "grant").unwrap();
    let policy = Grant::parse("files: {write: [/var/lib/x]}", "policy").unwrap();
    let module = host.load("probe");
    let request = RunRequest::new(
        "{\"ops\": []}",
        EffectiveGrant::new(&grant, Some(&policy)).unwrap(),
    );
    let err = host.runtime.run(&module, request).unwrap_err();
    assert!(
        matches!(&err, Error::Refused(m) if m[0].contains("node policy")),
        "{err}"
    );
}

#[test]
fn grant_through_a_symlink_in_the_policy_directory_cannot_leave_it() {
    let host = Host::new();
    std::fs::create_dir_all(host.path("/var/lib/foo")).unwrap();
    host.write("/etc/passwd", "root:x:0:0\n");
    std::os::unix::fs::symlink("/", host.path("/var/lib/foo/abs")).unwrap();
    std::os::unix::fs::symlink("../../..", host.path("/var/lib/foo/rel")).unwrap();
    let policy = Grant::parse("files: {write: [/var/lib/foo]}", "policy").unwrap();
    let module = host.load("probe");
    let before = host.snapshot();
    for link in ["abs", "rel"] {
        let grant_doc = format!("files: {{write: [/var/lib/foo/{link}/etc]}}");
        let grant = Grant::parse(&grant_doc, "grant").unwrap();
        let params = json!({"ops": [
            {"op": "ensure-file", "path": format!("/var/lib/foo/{link}/etc/passwd"), "contents": "pwned", "mode": 420},
            {"op": "read-file", "path": format!("/var/lib/foo/{link}/etc/passwd")},
            {"op": "ensure-dir", "path": format!("/var/lib/foo/{link}/etc/cron.d"), "mode": 493},
        ]});
        let request = RunRequest::new(
            params.to_string(),
            EffectiveGrant::new(&grant, Some(&policy)).unwrap(),
        );
        let report = host.runtime.run(&module, request).unwrap();
        for r in probe_results(&report) {
            assert_eq!(err_kind(&r), Some("permission-denied"), "{link}: {r}");
        }
    }
    assert_eq!(host.snapshot(), before);
}

#[test]
fn every_grant_file_in_the_repository_parses() {
    let root = hostaction_tests::workspace();
    let mut files = vec![root.join("manifests/grants/example-grant.yaml")];
    for entry in std::fs::read_dir(root.join("sample-actions")).unwrap() {
        let grants = entry.unwrap().path().join("grants.yaml");
        if grants.exists() {
            files.push(grants);
        }
    }
    assert!(files.len() >= 3, "{files:?}");
    for file in files {
        let text = std::fs::read_to_string(&file).unwrap();
        let grant =
            Grant::parse(&text, "grant").unwrap_or_else(|e| panic!("{}: {e}", file.display()));
        EffectiveGrant::new(&grant, None).unwrap_or_else(|e| panic!("{}: {e}", file.display()));
    }
}

/// The grants of the example HostActions and the agent's node policy are
/// valid grant documents, and the policy leaves each example what it needs
/// (restart-on-change's config directory is the administrator's to add).
#[test]
fn manifest_grants_and_the_node_policy_validate() {
    use hostaction_crds::HostAction;
    let root = hostaction_tests::workspace().join("manifests");
    let daemonset = std::fs::read_to_string(root.join("agent-daemonset.yaml")).unwrap();
    let config_map: serde_json::Value =
        serde_yaml_ng::from_str(daemonset.split("\n---\n").next().unwrap()).unwrap();
    let policy = Grant::parse(
        config_map["data"]["policy.yaml"].as_str().unwrap(),
        "policy",
    )
    .unwrap_or_else(|e| panic!("node policy: {e}"));
    for example in ["cni-install", "vxlan-overlay", "restart-on-change"] {
        let path = root.join(format!("examples/{example}.yaml"));
        let action: HostAction =
            serde_yaml_ng::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
        action.spec.grants.validate().unwrap();
        let effective = EffectiveGrant::new(&action.spec.grants, Some(&policy)).unwrap();
        if example != "restart-on-change" {
            assert!(
                effective.capability(Capability::Files).is_ok()
                    == action.spec.grants.files.is_some(),
                "{example}"
            );
        }
    }
}

#[test]
fn services_with_writes_where_systemd_loads_units_is_refused() {
    for write in [
        "/etc",
        "/etc/systemd/system",
        "/usr/lib/systemd/system/x.service.d",
        "/etc/init.d",
        "/etc/rc.d/init.d",
    ] {
        let grant = Grant::parse(
            &format!("files: {{write: [{write}]}}\nservices: {{units: [x.service]}}"),
            "grant",
        )
        .unwrap();
        let err = EffectiveGrant::new(&grant, None).unwrap_err().to_string();
        assert!(err.contains("systemd loads units"), "{write}: {err}");
    }
    let fine = Grant::parse(
        "files: {write: [/etc/containerd]}\nservices: {units: [containerd.service]}",
        "grant",
    )
    .unwrap();
    EffectiveGrant::new(&fine, None).unwrap();
}

/// Runs the probe with `ops` under a grant (YAML) and no policy.
fn run_probe(
    host: &Host,
    ops: serde_json::Value,
    grant: &str,
) -> Result<Vec<serde_json::Value>, Error> {
    host.run("probe", &json!({ "ops": ops }), grant)
        .map(|report| probe_results(&report))
}

#[test]
fn services_with_writes_reaching_systemd_units_through_a_symlink_is_refused() {
    let host = Host::new();
    std::fs::create_dir_all(host.path("/run/systemd/system")).unwrap();
    std::fs::create_dir_all(host.path("/var")).unwrap();
    std::fs::create_dir_all(host.path("/opt")).unwrap();
    std::os::unix::fs::symlink("../run", host.path("/var/run")).unwrap();
    // A symlink in a middle component, made for the attack.
    std::os::unix::fs::symlink("/run", host.path("/opt/state")).unwrap();
    let before = host.snapshot();
    for dir in ["/var/run/systemd/system", "/opt/state/systemd/system"] {
        let unit = format!("{dir}/evil.service");
        let ops = json!([{"op": "ensure-file", "path": unit,
            "contents": "[Service]\nExecStart=/bin/sh -c 'id > /pwned'\n", "mode": 420}]);
        let grant = format!("files: {{write: [{dir}]}}\nservices: {{units: [evil.service]}}");
        let err = run_probe(&host, ops, &grant).unwrap_err();
        assert!(matches!(err, Error::BadGrant(_)), "{dir}: {err}");
        assert_eq!(err.exit_code(), 2);
        let err = err.to_string();
        assert!(
            err.contains(dir)
                && err.contains("/run/systemd")
                && err.contains("systemd loads units"),
            "{dir}: {err}"
        );
    }
    assert_eq!(host.snapshot(), before, "a unit file was written");
    // Writes elsewhere under /var/run still go with services.
    let ops = json!([{"op": "ensure-dir", "path": "/var/run/containerd", "mode": 493}]);
    let grant = "files: {write: [/var/run/containerd]}\nservices: {units: [containerd.service]}";
    let results = run_probe(&host, ops, grant).unwrap();
    assert_eq!(results[0]["ok"], true);
    assert!(host.path("/run/containerd").is_dir());
}

#[test]
fn a_granted_directory_others_could_redirect_is_refused_at_run_start() {
    use std::os::unix::fs::PermissionsExt;
    let host = Host::new();
    std::fs::create_dir_all(host.path("/opt/cni/bin")).unwrap();
    std::fs::create_dir_all(host.path("/home/user/evil")).unwrap();
    std::os::unix::fs::chown(host.path("/home/user"), Some(1000), Some(1000)).unwrap();
    std::fs::set_permissions(host.path("/opt"), std::fs::Permissions::from_mode(0o777)).unwrap();
    let ops =
        json!([{"op": "ensure-file", "path": "/opt/cni/bin/x", "contents": "x", "mode": 420}]);
    let policy = Grant::parse("files: {write: [/opt/cni/bin]}", "policy").unwrap();
    let grant = Grant::parse("files: {write: [/opt/cni/bin]}", "grant").unwrap();
    let module = host.load("probe");
    let request = RunRequest::new(
        json!({ "ops": ops }).to_string(),
        EffectiveGrant::new(&grant, Some(&policy)).unwrap(),
    );
    let err = host.runtime.run(&module, request).unwrap_err();
    assert!(matches!(err, Error::Host(_)), "{err}");
    let err = err.to_string();
    assert!(
        err.contains("/opt/cni/bin") && err.contains("/opt (on its way) is writable by others"),
        "{err}"
    );
    assert!(!host.path("/opt/cni/bin/x").exists());
    // A directory the policy names through a user's directory.
    std::fs::set_permissions(host.path("/opt"), std::fs::Permissions::from_mode(0o755)).unwrap();
    std::os::unix::fs::symlink("/home/user/evil", host.path("/opt/plugins")).unwrap();
    let err = run_probe(&host, ops, "files: {write: [/opt/plugins]}").unwrap_err();
    assert!(
        err.to_string()
            .contains("/home/user (on its way) is owned by uid 1000"),
        "{err}"
    );
}
