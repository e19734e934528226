//! The vxlan-overlay sample end to end: two simulated hosts (two network
//! namespaces joined by a veth underlay) each run the sample, and their
//! workload namespaces ping each other across the overlay.
//!
//! Needs root and network namespaces (this machine and CI run as root), and
//! `ping` (iputils-ping, installed by .ci/run).

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::process::Command;

use hostaction_tests::{Host, probe_results};
use serde_json::{Value, json};

/// The sample's own grant file.
fn sample_grant() -> String {
    std::fs::read_to_string(
        hostaction_tests::workspace().join("sample-actions/vxlan-overlay/grants.yaml"),
    )
    .unwrap()
}

/// The sample's params for simulated host `me` (1 or 2) of the pair.
fn params(me: u8) -> Value {
    let peer = 3 - me;
    json!({
        "netns": format!("ovl-h{me}"),
        "bridge": "br-ovl",
        "mtu": 1450,
        "vxlan": {
            "name": "vx-ovl",
            "vni": 42,
            "local": format!("192.168.50.{me}"),
            "remote": format!("192.168.50.{peer}"),
            "port": 4789,
            "device": "ve-ovl-ul",
        },
        "workload": {
            "netns": format!("ovl-w{me}"),
            "hostEnd": "ve-ovl",
            "name": "ve-ovl-w",
            "address": format!("10.244.0.{me}/24"),
        },
    })
}

/// Pings `address` from the namespace file of `netns`: true if one of three
/// echo requests is answered (the first may wait for neighbour resolution).
fn ping(host: &Host, netns: &str, address: &str) -> bool {
    Command::new("nsenter")
        .arg(format!("--net={}", host.netns(netns).display()))
        .args(["ping", "-q", "-c", "3", "-i", "0.2", "-W", "2", address])
        .stdout(std::process::Stdio::null())
        .status()
        .unwrap()
        .success()
}

#[test]
fn two_overlay_hosts_reach_each_other_across_the_vxlan() {
    let host = Host::new();
    // The underlay: two "hosts" joined by a veth pair, with addresses.
    let grant = sample_grant();
    let underlay = json!({"ops": [
        {"op": "ensure-netns", "name": "ovl-h1"},
        {"op": "ensure-netns", "name": "ovl-h2"},
        {"op": "ensure-link", "netns": "ovl-h1", "name": "ve-ovl-ul",
         "kind": {"type": "veth", "peer": "ve-ovl-ul", "peer_netns": "ovl-h2"}, "up": true},
        {"op": "ensure-link", "netns": "ovl-h2", "name": "ve-ovl-ul",
         "kind": {"type": "veth", "peer": "ve-ovl-ul", "peer_netns": "ovl-h1"}, "up": true},
        {"op": "ensure-address", "netns": "ovl-h1", "device": "ve-ovl-ul", "address": "192.168.50.1/24"},
        {"op": "ensure-address", "netns": "ovl-h2", "device": "ve-ovl-ul", "address": "192.168.50.2/24"},
    ]});
    // The test's own grant for the underlay it stands up (the sample's does
    // not give the underlay's addresses).
    let underlay_grant = "network:\n  netns: [ovl-h1, ovl-h2]\n  interfaces: [ve-ovl-ul]\n  \
                          kinds: [veth]\n  addresses: [192.168.50.0/24]\n";
    let report = host.run("netprobe", &underlay, underlay_grant).unwrap();
    for r in probe_results(&report) {
        assert_eq!(r["ok"], true, "{r}");
    }
    assert!(ping(&host, "ovl-h1", "192.168.50.2"), "the underlay works");
    assert!(!ping(&host, "ovl-h1", "10.244.0.2"), "no overlay yet");

    for me in [1, 2] {
        let report = host.run("vxlan-overlay", &params(me), &grant).unwrap();
        assert!(report.status.is_success(), "host {me}: {report:#?}");
        assert!(report.changed());
    }

    // Across the overlay, both ways.
    assert!(ping(&host, "ovl-w1", "10.244.0.2"), "w1 -> w2 over vxlan");
    assert!(ping(&host, "ovl-w2", "10.244.0.1"), "w2 -> w1 over vxlan");
    // The packets went through the tunnel, not around it.
    let (ok, out) = host.ip("ovl-h1", &["-j", "-s", "link", "show", "dev", "vx-ovl"]);
    assert!(ok);
    let stats: Value = serde_json::from_str(&out).unwrap();
    assert!(
        stats[0]["stats64"]["tx"]["packets"].as_u64().unwrap() > 0,
        "{stats}"
    );
    assert!(
        stats[0]["stats64"]["rx"]["packets"].as_u64().unwrap() > 0,
        "{stats}"
    );
    let vx = host.link("ovl-h1", "vx-ovl").unwrap();
    assert_eq!(vx["linkinfo"]["info_data"]["id"], 42);
    assert_eq!(vx["master"], "br-ovl");
    assert_eq!(host.addresses("ovl-w2", "ve-ovl-w"), ["10.244.0.2/24"]);

    // Converged: a second run on each host changes nothing.
    for me in [1, 2] {
        let report = host.run("vxlan-overlay", &params(me), &grant).unwrap();
        assert!(report.status.is_success(), "host {me}: {report:#?}");
        assert!(!report.changed(), "host {me}: {:#?}", report.effects);
    }
    assert!(ping(&host, "ovl-w1", "10.244.0.2"));
}
