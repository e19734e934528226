//! Python actions built with componentize-py (`scripts/guests/python.sh`):
//! the `cni-conflist` sample on a scratch host root, its capabilities as
//! `hostaction inspect` lists them. What the runtime promises every guest,
//! the Python probe shows in `languages`.
//!
//! Each Python component takes seconds to compile; the tests of this process
//! share one precompiled cache, so each is compiled once.

// Test code: a failed unwrap is a failed test, with its message.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::sync::OnceLock;

use hostaction_runtime::capabilities::log::Source;
use hostaction_runtime::engine::LoadSource;
use hostaction_runtime::{Error, RunStatus};
use hostaction_tests::{Host, fact, imports_by, inspect};
use serde_json::{Value, json};

const SAMPLE: &str = "cni-conflist";
const PROBE: &str = "python-probe";
const CONF_GRANT: &str = "files: {write: [/etc/cni/net.d]}";

/// A scratch host whose runtime finds both Python components precompiled in
/// the process's shared cache: the first call compiles them, one at a time,
/// while tests starting together wait, instead of each compiling them at once.
pub(crate) fn host() -> Host {
    static COMPILED: OnceLock<()> = OnceLock::new();
    COMPILED.get_or_init(|| {
        let host = Host::new();
        host.load(SAMPLE);
        host.load(PROBE);
    });
    Host::new()
}

#[test]
fn sample_writes_the_conflist_and_a_second_run_changes_nothing() {
    let host = host();
    let params =
        json!({"name": "pods", "bridge": "br-pods", "subnet": "10.22.0.0/16", "mtu": 1400});
    let report = host.run(SAMPLE, &params, CONF_GRANT).unwrap();
    assert!(report.status.is_success(), "{}", report.status);
    assert!(report.outcome.as_ref().unwrap().changed);
    let path = "/etc/cni/net.d/10-pods.conflist";
    assert_eq!(fact(&report, "path"), path);

    let bytes = std::fs::read(host.path(path)).unwrap();
    assert_eq!(fact(&report, "bytes"), bytes.len().to_string());
    assert_eq!(host.mode(path), 0o644);
    assert_eq!(host.mode("/etc/cni/net.d"), 0o755);
    let conf: Value = serde_json::from_slice(&bytes).unwrap();
    assert_eq!(conf["cniVersion"], "1.0.0");
    assert_eq!(conf["name"], "pods");
    let bridge = &conf["plugins"][0];
    assert_eq!(bridge["type"], "bridge");
    assert_eq!(bridge["bridge"], "br-pods");
    assert_eq!(bridge["mtu"], 1400);
    assert_eq!(bridge["ipam"]["type"], "host-local");
    assert_eq!(bridge["ipam"]["ranges"][0][0]["subnet"], "10.22.0.0/16");
    assert_eq!(conf["plugins"][1]["type"], "portmap");
    // print() is the sample's log.
    let wrote = format!("wrote {path} ({} bytes)", bytes.len());
    assert!(
        report
            .log
            .iter()
            .any(|l| l.message == wrote && l.source == Source::Stdout),
        "{:?}",
        report.log
    );

    let before = host.snapshot();
    let again = host.run(SAMPLE, &params, CONF_GRANT).unwrap();
    assert!(again.status.is_success(), "{}", again.status);
    assert!(!again.outcome.as_ref().unwrap().changed);
    assert!(again.effects.is_empty(), "{:?}", again.effects);
    assert_eq!(host.snapshot(), before);
}

#[test]
fn sample_writes_the_same_bytes_as_the_rust_cni_install() {
    // The same conflist for the same params: switching between the two
    // actions changes nothing on a node.
    let host = host();
    let params = json!({"name": "pods", "subnet": "fd00:22::/64"});
    let rust = host
        .run(
            "cni-install",
            &params,
            "files: {write: [/etc/cni/net.d, /opt/cni/bin]}",
        )
        .unwrap();
    assert!(rust.status.is_success(), "{}", rust.status);
    let report = host.run(SAMPLE, &params, CONF_GRANT).unwrap();
    assert!(report.status.is_success(), "{}", report.status);
    assert!(report.effects.is_empty(), "{:?}", report.effects);
}

#[test]
fn sample_with_bad_params_fails_naming_the_field_and_changes_nothing() {
    let host = host();
    for (params, expected) in [
        (json!({"nmae": "pods"}), "unknown field \"nmae\""),
        (json!({"subnet": "10.22.0.0/33"}), "subnet \"10.22.0.0/33\""),
        (json!({"subnet": "10.22.0.1/16"}), "has host bits set"),
        (json!({"mtu": 9}), "mtu 9"),
        (json!({"mtu": "1400"}), "mtu \"1400\""),
        (json!({"name": "a b"}), "name \"a b\""),
        (json!({"confDir": "etc/cni"}), "confDir \"etc/cni\""),
    ] {
        let report = host.run(SAMPLE, &params, CONF_GRANT).unwrap();
        assert!(
            matches!(&report.status, RunStatus::Failed(m)
                if m.starts_with("invalid params: ") && m.contains(expected)),
            "{params}: {}",
            report.status
        );
    }
    assert!(host.snapshot().is_empty());
}

#[test]
fn sample_imports_only_files_among_the_capabilities() {
    let doc = inspect(SAMPLE);
    let imports = doc["imports"].as_array().unwrap();
    assert_eq!(
        imports_by(&doc, "capability"),
        ["hostaction:host/files@0.1.0"]
    );
    // componentize-py imports all of WASI 0.2, sockets included: the runtime
    // provides it locked down, so it needs no grant.
    for name in [
        "wasi:filesystem/preopens@",
        "wasi:sockets/tcp@",
        "wasi:cli/stdout@",
    ] {
        let import = imports
            .iter()
            .find(|i| i["name"].as_str().unwrap().starts_with(name))
            .unwrap_or_else(|| panic!("no {name} import: {imports:?}"));
        assert_eq!(import["provided"]["by"], "locked-down-wasi", "{import}");
    }
    assert_eq!(doc["runnable"], true);
}

#[test]
fn sample_without_its_capability_is_refused_and_outside_its_grant_is_denied() {
    let host = host();
    let err = host.run(SAMPLE, &json!({}), "{}").unwrap_err();
    assert!(matches!(&err, Error::Refused(_)), "{err}");

    // Granted somewhere else: the capability error becomes the run's error.
    let report = host
        .run(SAMPLE, &json!({}), "files: {write: [/opt/cni/bin]}")
        .unwrap();
    assert!(
        matches!(&report.status, RunStatus::Failed(m)
            if m.starts_with("creating /etc/cni/net.d: permission denied: ")),
        "{}",
        report.status
    );
    assert!(host.snapshot().is_empty());

    // A directory where the conflist goes: the error names the kind.
    std::fs::create_dir_all(host.path("/etc/cni/net.d/10-hostaction.conflist")).unwrap();
    let report = host.run(SAMPLE, &json!({}), CONF_GRANT).unwrap();
    assert!(
        matches!(&report.status, RunStatus::Failed(m)
            if m.starts_with("writing /etc/cni/net.d/10-hostaction.conflist: conflict: ")),
        "{}",
        report.status
    );
}

#[test]
fn sample_is_loaded_precompiled_by_a_new_runtime() {
    // `host()` compiled it once in this process; a new runtime (as a new
    // agent process) reads the precompiled code instead of compiling 18 MB.
    let host = host();
    let module = host.load(SAMPLE);
    assert_eq!(module.source, LoadSource::DiskCache);
    let report = host
        .run(SAMPLE, &json!({}), CONF_GRANT)
        .expect("run from the precompiled code");
    assert_eq!(report.status, RunStatus::Succeeded, "{report:#?}");
}
