//! C actions built with clang, wasi-libc and the C SDK (`scripts/guests/c.sh`):
//! the `host-facts` sample on a scratch host root, its capabilities as
//! `hostaction inspect` lists them, and the SDK's JSON unit tests. What the
//! runtime promises every guest, the C probe shows in `languages`.

// Test code: a failed unwrap is a failed test, with its message.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::process::Command;

use hostaction_runtime::{Error, RunStatus};
use hostaction_tests::{Host, fact, imports_by, inspect, workspace};
use serde_json::{Value, json};

const SAMPLE: &str = "host-facts";
const PROBE: &str = "c-probe";
const SAMPLE_GRANT: &str = "files: {read: [/etc, /usr/lib], write: [/var/lib/hostaction]}";
const FACTS_FILE: &str = "/var/lib/hostaction/host-facts.json";

const OS_RELEASE: &str = "\
PRETTY_NAME=\"Debian GNU/Linux 12 (bookworm)\"
NAME=\"Debian GNU/Linux\"
VERSION_ID=\"12\"
ID=debian
";

#[test]
fn sample_reports_the_host_and_a_second_run_changes_nothing() {
    // As on Debian: /etc/os-release links to ../usr/lib/os-release, which the
    // files capability does not follow out of /etc; the sample falls back to
    // the file it points at.
    let host = Host::new();
    host.write("/usr/lib/os-release", OS_RELEASE);
    host.write("/etc/hostname", "# set by the installer\nnode-1\n");
    std::os::unix::fs::symlink("../usr/lib/os-release", host.path("/etc/os-release")).unwrap();
    host.write("/etc/machine-id", "0123456789abcdef0123456789abcdef\n");

    let report = host.run(SAMPLE, &json!({}), SAMPLE_GRANT).unwrap();
    assert!(report.status.is_success(), "{}", report.status);
    assert!(report.outcome.as_ref().unwrap().changed);
    for (key, value) in [
        ("os-id", "debian"),
        ("os-version-id", "12"),
        ("os-pretty-name", "Debian GNU/Linux 12 (bookworm)"),
        ("hostname", "node-1"),
        ("machine-id", "0123456789abcdef0123456789abcdef"),
        ("path", FACTS_FILE),
    ] {
        assert_eq!(fact(&report, key), value, "{key}");
    }
    let written: Value =
        serde_json::from_slice(&std::fs::read(host.path(FACTS_FILE)).unwrap()).unwrap();
    assert_eq!(
        written,
        json!({
            "hostname": "node-1",
            "machineId": "0123456789abcdef0123456789abcdef",
            "os": {"id": "debian", "versionId": "12", "prettyName": "Debian GNU/Linux 12 (bookworm)"},
        })
    );
    assert_eq!(host.mode(FACTS_FILE), 0o644);
    assert_eq!(host.mode("/var/lib/hostaction"), 0o755);

    let before = host.snapshot();
    let again = host.run(SAMPLE, &json!({}), SAMPLE_GRANT).unwrap();
    assert!(again.status.is_success(), "{}", again.status);
    let outcome = again.outcome.as_ref().unwrap();
    assert!(!outcome.changed, "{outcome:?}");
    assert!(
        outcome.message.contains("already in"),
        "{}",
        outcome.message
    );
    assert!(again.effects.is_empty(), "{:?}", again.effects);
    assert_eq!(host.snapshot(), before);
}

#[test]
fn sample_reads_etc_os_release_first_and_reports_a_missing_machine_id() {
    let host = Host::new();
    // Quoting as os-release(5) allows it; a comment; no VERSION_ID (rolling).
    host.write(
        "/etc/os-release",
        "# rolling\nID='arch'\nPRETTY_NAME=\"Arch \\\"Linux\\\"\"\n",
    );
    host.write("/usr/lib/os-release", OS_RELEASE);
    host.write("/etc/hostname", "edge-7\n");
    let path = "/var/lib/hostaction/facts/host.json";

    let report = host
        .run(SAMPLE, &json!({ "path": path }), SAMPLE_GRANT)
        .unwrap();
    assert!(report.status.is_success(), "{}", report.status);
    assert_eq!(fact(&report, "os-id"), "arch");
    assert_eq!(fact(&report, "os-pretty-name"), "Arch \"Linux\"");
    assert_eq!(fact(&report, "os-version-id"), "absent");
    assert_eq!(fact(&report, "machine-id"), "absent");
    let written: Value = serde_json::from_slice(&std::fs::read(host.path(path)).unwrap()).unwrap();
    assert_eq!(written["machineId"], Value::Null);
    assert_eq!(written["os"]["versionId"], Value::Null);
    assert_eq!(written["hostname"], "edge-7");
}

#[test]
fn sample_params_are_checked_naming_the_field_before_anything_is_touched() {
    let host = Host::new();
    host.write("/etc/os-release", OS_RELEASE);
    host.write("/etc/hostname", "node-1\n");
    let before = host.snapshot();
    for (params, expected) in [
        (
            json!({"path": 3}),
            "field \"path\": expected a string, got 3",
        ),
        (
            json!({"path": "facts.json"}),
            "field \"path\": \"facts.json\" is not an absolute path to a file",
        ),
        (
            json!({"paht": "/x"}),
            "unknown field \"paht\", expected one of \"path\"",
        ),
        (json!([]), "expected a JSON object, got an array"),
    ] {
        let report = host.run(SAMPLE, &params, SAMPLE_GRANT).unwrap();
        match &report.status {
            RunStatus::Failed(m) => assert_eq!(*m, format!("invalid params: {expected}")),
            other => panic!("{params}: expected a failed run, got {other}"),
        }
    }
    // A path outside the grant: denied, named, nothing written.
    let report = host
        .run(SAMPLE, &json!({"path": "/etc/facts.json"}), SAMPLE_GRANT)
        .unwrap();
    assert!(
        matches!(&report.status, RunStatus::Failed(m) if m.starts_with("creating /etc: permission-denied: ")),
        "{}",
        report.status
    );
    assert_eq!(host.snapshot(), before);
}

/// The imports `hostaction inspect --output json` lists as capabilities.
fn capabilities(name: &str) -> Vec<String> {
    let report = inspect(name);
    assert_eq!(report["exports"], json!(["run"]));
    assert_eq!(report["runnable"], true);
    let imports = report["imports"].as_array().unwrap();
    for import in imports {
        // Everything else is the contract's types or the locked-down WASI
        // (wasi-libc's stdio through the preview1 adapter).
        let by = import["provided"]["by"].as_str().unwrap();
        assert!(
            matches!(by, "capability" | "always" | "locked-down-wasi"),
            "{import}"
        );
    }
    imports_by(&report, "capability")
}

#[test]
fn sample_and_probe_import_files_as_their_only_capability() {
    // The log interface is in the world but neither component calls it, so
    // neither imports it: a C component imports only the functions it uses.
    for name in [SAMPLE, PROBE] {
        assert_eq!(
            capabilities(name),
            ["hostaction:host/files@0.1.0"],
            "{name}"
        );
    }
}

#[test]
fn sample_without_files_in_its_grant_is_refused() {
    let host = Host::new();
    host.write("/etc/hostname", "node-1\n");
    let err = host
        .run(SAMPLE, &json!({}), "services: {units: [x.service]}")
        .unwrap_err();
    match &err {
        Error::Refused(missing) => assert!(missing[0].contains("`files`"), "{missing:?}"),
        other => panic!("expected a refusal, got {other:?}"),
    }
}

#[test]
fn sdk_json_unit_tests_pass_under_the_sanitizers() {
    // Built for this machine with the clang that builds the guests.
    let dir = tempfile::tempdir().unwrap();
    let exe = dir.path().join("json_test");
    let sdk = workspace().join("sdk/c");
    let build = Command::new("clang-19")
        .args(["-std=c11", "-Wall", "-Wextra", "-Werror", "-g", "-O1"])
        .arg("-fsanitize=address,undefined")
        .arg("-fno-sanitize-recover=all")
        .arg(sdk.join("tests/json_test.c"))
        .arg(sdk.join("hostaction_json.c"))
        .arg("-o")
        .arg(&exe)
        .output()
        .expect("clang-19 (scripts/guests/c.sh installs it)");
    assert!(
        build.status.success(),
        "{}",
        String::from_utf8_lossy(&build.stderr)
    );
    let run = Command::new(&exe).output().unwrap();
    let stdout = String::from_utf8_lossy(&run.stdout);
    assert!(
        run.status.success() && stdout.contains(" passed, 0 failed"),
        "{stdout}{}",
        String::from_utf8_lossy(&run.stderr)
    );
}
