//! JavaScript actions built with componentize-js (`scripts/guests/js.sh`):
//! the `netns-bridge` sample against the kernel, its capabilities as
//! `hostaction inspect` lists them. What the runtime promises every guest,
//! the JavaScript probe shows in `languages`.
//!
//! The sample's tests need root and network namespaces, as tests/tests/all/network.rs
//! and overlay.rs do, and never touch the machine's own namespace: each has a
//! scratch host root whose named namespaces live in its own `<root>/var/run/netns`,
//! and the "host" the sample builds its bridge in is one of them (`hostNetns`,
//! as vxlan-overlay's `netns`), or, for the sample's default of the host's own
//! namespace, the namespace the test runs the `hostaction` CLI in (`nsenter`).
//!
//! Each JavaScript component takes seconds to compile: the in-process runs of
//! the test binary share one precompiled cache, the CLI runs another.

// Test code: a failed unwrap is a failed test, with its message.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::process::Command;

use hostaction_runtime::capabilities::log::Source;
use hostaction_runtime::{Error, RunStatus};
use hostaction_tests::{
    Host, cli_cache, fact, guest, hostaction_bin, imports_by, inspect, probe_results, workspace,
};
use serde_json::{Value, json};

const SAMPLE: &str = "netns-bridge";
const PROBE: &str = "js-probe";

/// The sample's own grant file.
fn sample_grant() -> String {
    std::fs::read_to_string(workspace().join("sample-actions/netns-bridge/grants.yaml")).unwrap()
}

/// Makes the named namespace `name` under the host root, standing in for the
/// host (with netprobe, as overlay.rs makes its simulated hosts).
fn stand_in_host(host: &Host, name: &str) {
    let report = host
        .run(
            "netprobe",
            &json!({"ops": [{"op": "ensure-netns", "name": name}]}),
            &format!("network:\n  netns: [{name}]\n"),
        )
        .unwrap();
    assert_eq!(probe_results(&report), [json!({"ok": true})], "{report:#?}");
}

/// The bridge, the host end enslaved to it, the peer end in `js-demo` up with
/// its address, all marked as hostaction's; `host_ns` is the host's stand-in.
fn assert_topology(host: &Host, host_ns: &str, mtu: u64) {
    let br = host.link(host_ns, "br-js").expect("br-js");
    assert_eq!(br["linkinfo"]["info_kind"], "bridge");
    assert_eq!(br["mtu"], mtu);
    assert_eq!(br["ifalias"], "hostaction");
    let h = host.link(host_ns, "ve-js-h").expect("ve-js-h");
    assert_eq!(h["linkinfo"]["info_kind"], "veth");
    assert_eq!(h["master"], "br-js");
    assert_eq!(h["mtu"], mtu);
    let p = host.link("js-demo", "ve-js-p").expect("ve-js-p in js-demo");
    assert_eq!(p["linkinfo"]["info_kind"], "veth");
    assert_eq!(p["ifalias"], "hostaction");
    // The kernel sets a link's operstate a moment after it is set up.
    let up = (0..500).any(|_| {
        let up = host
            .link("js-demo", "ve-js-p")
            .is_some_and(|p| p["operstate"] == "UP");
        if !up {
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
        up
    });
    assert!(up, "ve-js-p is not UP: {p}");
    assert_eq!(host.addresses("js-demo", "ve-js-p"), ["10.99.0.2/24"]);
}

/// The machine's own namespace has none of the sample's links.
fn assert_real_host_untouched() {
    for link in ["br-js", "ve-js-h", "ve-js-p"] {
        let shown = Command::new("ip")
            .args(["link", "show", "dev", link])
            .stderr(std::process::Stdio::null())
            .status()
            .unwrap();
        assert!(!shown.success(), "{link} is in the machine's own namespace");
    }
}

/// Needs root and CAP_NET_ADMIN (and CAP_SYS_ADMIN for named namespaces).
#[test]
fn sample_builds_the_bridge_and_the_veth_into_the_namespace_once() {
    let host = Host::new();
    stand_in_host(&host, "js-host");
    let params =
        json!({"hostNetns": "js-host", "netns": "js-demo", "address": "10.99.0.2/24", "mtu": 1400});
    let report = host.run(SAMPLE, &params, &sample_grant()).unwrap();
    assert!(report.status.is_success(), "{report:#?}");
    assert!(report.changed());
    assert_eq!(
        fact(&report, "changed"),
        "netns js-demo,bridge br-js (netns js-host),veth ve-js-h (netns js-host),\
         veth ve-js-p (netns js-demo),address 10.99.0.2/24 on ve-js-p (netns js-demo)"
    );
    assert_eq!(fact(&report, "hostNetns"), "js-host");
    assert!(
        report
            .effects
            .iter()
            .all(|e| e.capability == "network" && e.applied)
    );
    // console.log's progress lines are in the run's log.
    assert!(
        report
            .log
            .iter()
            .any(|l| l.message == "bridge br-js (netns js-host): changed"
                && l.source == Source::Stdout),
        "{:?}",
        report.log
    );
    assert_topology(&host, "js-host", 1400);

    // In shape: the same run changes nothing and says so.
    let again = host.run(SAMPLE, &params, &sample_grant()).unwrap();
    assert!(again.status.is_success(), "{again:#?}");
    assert!(!again.changed(), "{:#?}", again.effects);
    assert!(again.effects.is_empty());
    assert_eq!(fact(&again, "changed"), "");
    assert!(
        again
            .outcome
            .unwrap()
            .message
            .ends_with("(nothing changed)")
    );
    assert_real_host_untouched();
}

/// Needs root and CAP_NET_ADMIN (and CAP_SYS_ADMIN for named namespaces). The
/// sample's default, the host's own namespace, is the namespace the CLI runs
/// in: one the test made, entered with `nsenter`.
#[test]
fn sample_defaults_to_the_namespace_it_runs_in_as_the_host() {
    let host = Host::new();
    stand_in_host(&host, "js-host");
    let sample = workspace().join("sample-actions/netns-bridge");
    let out = Command::new("nsenter")
        .arg(format!("--net={}", host.netns("js-host").display()))
        .arg(hostaction_bin())
        .arg("run")
        .arg(guest(SAMPLE))
        .arg("--params")
        .arg(format!("@{}", sample.join("params.json").display()))
        .arg("--grants")
        .arg(sample.join("grants.yaml"))
        .arg("--host-root")
        .arg(host.root.path())
        .arg("--cache-dir")
        .arg(cli_cache())
        .args(["--output", "json"])
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let report: Value = serde_json::from_str(&stdout).unwrap();
    let facts = &report["report"]["outcome"]["facts"];
    assert!(
        facts
            .as_array()
            .unwrap()
            .contains(&json!(["hostNetns", "host"])),
        "{facts}"
    );
    // params.json: mtu 1500, address 10.99.0.2/24.
    assert_topology(&host, "js-host", 1500);
    assert_real_host_untouched();
}

#[test]
fn components_import_their_worlds_capability_and_no_http_sockets_or_environment() {
    for (name, capability) in [
        (SAMPLE, "hostaction:host/network@0.1.0"),
        (PROBE, "hostaction:host/files@0.1.0"),
    ] {
        let inspected = inspect(name);
        assert_eq!(imports_by(&inspected, "capability"), [capability], "{name}");
        assert!(imports_by(&inspected, "always").contains(&"hostaction:host/log@0.1.0".to_owned()));
        let wasi = imports_by(&inspected, "locked-down-wasi");
        assert!(
            wasi.iter().any(|i| i.starts_with("wasi:cli/stdout@")),
            "{wasi:?}"
        );
        for absent in ["wasi:http/", "wasi:sockets/", "wasi:cli/environment@"] {
            assert!(
                !wasi.iter().any(|i| i.starts_with(absent)),
                "{name}: {wasi:?}"
            );
        }
        assert_eq!(inspected["exports"], json!(["run"]));
    }
}

#[test]
fn sample_without_network_in_its_grant_is_refused_before_it_starts() {
    let host = Host::new();
    let err = host
        .run(SAMPLE, &json!({}), "files: {write: [/opt/x]}")
        .unwrap_err();
    match &err {
        Error::Refused(missing) => {
            assert!(missing.iter().any(|m| m.contains("network")), "{missing:?}");
        }
        other => panic!("expected a refusal, got {other:?}"),
    }
    assert_eq!(err.exit_code(), 3);
}

/// Needs root and CAP_NET_ADMIN (and CAP_SYS_ADMIN for named namespaces).
#[test]
fn sample_outside_its_grant_fails_naming_the_call_and_makes_nothing() {
    let host = Host::new();
    stand_in_host(&host, "js-host");
    // js-demo is not granted: the first step is refused.
    let narrow =
        "network:\n  netns: [js-host]\n  interfaces: [br-js, ve-js-*]\n  kinds: [bridge, veth]\n";
    let report = host
        .run(SAMPLE, &json!({"hostNetns": "js-host"}), narrow)
        .unwrap();
    match &report.status {
        RunStatus::Failed(m) => {
            assert!(m.starts_with("netns js-demo: permission-denied: "), "{m}");
            assert!(m.contains("js-demo"), "{m}");
        }
        other => panic!("expected a failed run, got {other}"),
    }
    assert!(!host.netns("js-demo").exists());
    assert_eq!(host.links("js-host"), ["lo"]);
    assert!(report.effects.is_empty());
}

#[test]
fn sample_with_bad_params_fails_naming_the_field_before_any_call() {
    let host = Host::new();
    for (params, want) in [
        (
            json!({"mtu": 5}),
            "invalid params: mtu 5: must be an integer within 68..=65535, or null",
        ),
        (
            json!({"bridge": "br-js-far-too-long"}),
            "invalid params: bridge \"br-js-far-too-long\": ",
        ),
        (json!({"netns": "host"}), "invalid params: netns \"host\": "),
        (
            json!({"address": "10.99.0.2/33"}),
            "invalid params: address \"10.99.0.2/33\": ",
        ),
        (
            json!({"bridgeName": "br-js"}),
            "invalid params: unknown field \"bridgeName\"",
        ),
    ] {
        let report = host.run(SAMPLE, &params, &sample_grant()).unwrap();
        match &report.status {
            RunStatus::Failed(m) => assert!(m.starts_with(want), "{params}: {m}"),
            other => panic!("{params}: expected a failed run, got {other}"),
        }
        assert!(report.effects.is_empty());
    }
    assert!(!host.path("/var/run/netns").exists());
}
