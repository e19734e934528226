//! The `network` capability end to end: the netprobe component, built from
//! source, drives every call through the real engine; the kernel is checked
//! with `ip -j` run inside the namespaces (an independent observer).
//!
//! Needs root and network namespaces (this machine and CI run as root). Each
//! test has its own scratch host root, so its named namespaces live in its own
//! `<root>/var/run/netns` and tests run in parallel; the `Host` guard detaches
//! them when the test ends, pass or fail.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use hostaction_runtime::Error;
use hostaction_runtime::effects::Mode;
use hostaction_runtime::grant::{EffectiveGrant, Grant, GrantDocument};
use hostaction_tests::{Host, err_kind, probe_results, request};
use serde_json::{Value, json};

/// A grant covering everything the tests build (`t-*` namespaces).
const GRANT: &str = r#"
network:
  netns: ["t-*"]
  interfaces: ["br-*", "vx-*", "ve-*", "mv-*", "du-*"]
  kinds: [bridge, veth, vxlan, macvlan, dummy, vlan, wireguard]
  addresses: [10.0.0.0/8, 192.168.0.0/16, "fd00::/8"]
  routes: [10.0.0.0/8]
"#;

/// Runs netprobe with `ops` and returns the per-op results.
fn probe(host: &Host, ops: Value, grant: &str) -> Vec<Value> {
    let report = host
        .run("netprobe", &json!({ "ops": ops }), grant)
        .expect("netprobe runs");
    assert!(report.status.is_success(), "{report:#?}");
    probe_results(&report)
}

/// Asserts every result is `{"ok": want}`.
fn assert_all(results: &[Value], want: Value) {
    for (i, r) in results.iter().enumerate() {
        assert_eq!(r["ok"], want, "op {i}: {r}");
    }
}

/// The ops of a small overlay host: namespaces, a bridge, a veth into a
/// workload namespace, an underlay veth, a vxlan on it, addresses and a route.
fn topology() -> Value {
    json!([
        {"op": "ensure-netns", "name": "t-a"},
        {"op": "ensure-netns", "name": "t-w"},
        {"op": "ensure-link", "netns": "t-a", "name": "br-0", "kind": {"type": "bridge"}, "mtu": 1400, "up": true},
        {"op": "ensure-link", "netns": "t-a", "name": "ve-0", "kind": {"type": "veth", "peer": "ve-1", "peer_netns": "t-w"}, "master": "br-0", "up": true},
        {"op": "ensure-link", "netns": "t-w", "name": "ve-1", "kind": {"type": "veth", "peer": "ve-0", "peer_netns": "t-a"}, "up": true},
        {"op": "ensure-link", "netns": "t-a", "name": "ve-u", "kind": {"type": "veth", "peer": "ve-v"}, "up": true},
        {"op": "ensure-address", "netns": "t-a", "device": "ve-u", "address": "192.168.7.1/24"},
        {"op": "ensure-link", "netns": "t-a", "name": "vx-0", "kind": {"type": "vxlan", "vni": 42, "local": "192.168.7.1", "remote": "192.168.7.2", "port": 4789, "device": "ve-u"}, "master": "br-0", "mtu": 1400, "up": true},
        {"op": "ensure-address", "netns": "t-w", "device": "ve-1", "address": "10.9.0.1/24"},
        {"op": "ensure-address", "netns": "t-w", "device": "ve-1", "address": "fd00:9::1/64"},
        {"op": "ensure-route", "netns": "t-w", "destination": "10.10.0.0/16", "gateway": "10.9.0.254", "device": "ve-1"},
        {"op": "ensure-link", "netns": "t-a", "name": "mv-0", "kind": {"type": "macvlan", "parent": "ve-u", "mode": "private"}, "up": true},
    ])
}

#[test]
fn a_topology_is_built_once_and_a_second_run_changes_nothing() {
    let host = Host::new();
    let report = host
        .run("netprobe", &json!({ "ops": topology() }), GRANT)
        .unwrap();
    assert!(report.status.is_success(), "{report:#?}");
    // Every op changed something (ve-1 came with ve-0, down: it was set up).
    assert_all(&probe_results(&report), json!(true));
    assert!(
        report
            .effects
            .iter()
            .all(|e| e.capability == "network" && e.applied)
    );
    assert!(
        report
            .effects
            .iter()
            .any(|e| e.action == "ensure-link" && e.target == "link vx-0 (netns t-a)"),
        "{:#?}",
        report.effects
    );

    let br = host.link("t-a", "br-0").unwrap();
    assert_eq!(br["linkinfo"]["info_kind"], "bridge");
    assert_eq!(br["mtu"], 1400);
    assert_eq!(br["ifalias"], "hostaction");
    assert_eq!(host.link("t-a", "ve-0").unwrap()["master"], "br-0");
    let vx = host.link("t-a", "vx-0").unwrap();
    let info = &vx["linkinfo"]["info_data"];
    assert_eq!(
        (info["id"].clone(), info["remote"].clone()),
        (json!(42), json!("192.168.7.2"))
    );
    assert_eq!(
        (info["port"].clone(), info["link"].clone()),
        (json!(4789), json!("ve-u"))
    );
    assert_eq!(vx["master"], "br-0");
    let mv = host.link("t-a", "mv-0").unwrap();
    assert_eq!(mv["linkinfo"]["info_data"]["mode"], "private");
    assert_eq!(mv["link"], "ve-u");
    let peer = host.link("t-w", "ve-1").unwrap();
    assert_eq!(peer["linkinfo"]["info_kind"], "veth");
    assert_eq!(peer["ifalias"], "hostaction");
    assert_eq!(
        host.addresses("t-w", "ve-1"),
        ["10.9.0.1/24", "fd00:9::1/64"]
    );
    let (ok, routes) = host.ip("t-w", &["-j", "route", "show", "10.10.0.0/16"]);
    assert!(ok && routes.contains("10.9.0.254"), "{routes}");

    // Everything is in shape: the same run changes nothing and says so.
    let again = host
        .run("netprobe", &json!({ "ops": topology() }), GRANT)
        .unwrap();
    assert!(!again.changed(), "{again:#?}");
    assert_all(&probe_results(&again), json!(false));
    assert!(again.effects.is_empty());

    // Reads: links with the mark, namespaces in scope.
    let listed = probe(
        &host,
        json!([{"op": "list-links", "netns": "t-w"}, {"op": "list-netns"}]),
        GRANT,
    );
    let links = listed[0]["ok"].as_array().unwrap();
    let ve1 = links.iter().find(|l| l["name"] == "ve-1").unwrap();
    assert_eq!(
        (ve1["kind"].clone(), ve1["owned"].clone()),
        (json!("veth"), json!(true))
    );
    let lo = links.iter().find(|l| l["name"] == "lo").unwrap();
    assert_eq!(lo["owned"], false);
    assert_eq!(listed[1]["ok"], json!(["t-a", "t-w"]));

    // Deletes happen once.
    let deleted = probe(
        &host,
        json!([
            {"op": "delete-link", "netns": "t-a", "name": "vx-0"},
            {"op": "delete-link", "netns": "t-a", "name": "vx-0"},
            {"op": "remove-address", "netns": "t-w", "device": "ve-1", "address": "10.9.0.1/24"},
            {"op": "remove-address", "netns": "t-w", "device": "ve-1", "address": "10.9.0.1/24"},
            {"op": "delete-netns", "name": "t-w"},
            {"op": "delete-netns", "name": "t-w"},
        ]),
        GRANT,
    );
    let oks: Vec<Value> = deleted.iter().map(|r| r["ok"].clone()).collect();
    assert_eq!(
        oks,
        [true, false, true, false, true, false].map(Value::from)
    );
    assert!(host.link("t-a", "vx-0").is_none());
    assert!(!host.netns("t-w").exists());
}

#[test]
fn existing_links_in_another_shape_are_conflicts_and_stay_as_they_are() {
    let host = Host::new();
    assert_all(
        &probe(&host, json!([{"op": "ensure-netns", "name": "t-a"}]), GRANT),
        json!(true),
    );
    // Made by someone else, with `ip`.
    assert!(host.ip("t-a", &["link", "add", "vx-1", "type", "bridge"]).0);
    assert!(
        host.ip(
            "t-a",
            &[
                "link", "add", "ve-0", "type", "veth", "peer", "name", "ve-9"
            ]
        )
        .0
    );
    assert!(
        host.ip("t-a", &["address", "add", "10.8.0.1/24", "dev", "ve-0"])
            .0
    );
    let results = probe(
        &host,
        json!([
            {"op": "ensure-link", "netns": "t-a", "name": "vx-1", "kind": {"type": "vxlan", "vni": 7}},
            {"op": "ensure-link", "netns": "t-a", "name": "ve-0", "kind": {"type": "veth", "peer": "ve-1"}},
            {"op": "ensure-address", "netns": "t-a", "device": "ve-0", "address": "10.8.0.1/16"},
            {"op": "ensure-link", "netns": "t-a", "name": "ve-9", "kind": {"type": "bridge"}},
        ]),
        GRANT,
    );
    for (i, r) in results.iter().enumerate() {
        assert_eq!(err_kind(r), Some("conflict"), "op {i}: {r}");
    }
    assert!(
        results[0]["err"]["message"]
            .as_str()
            .unwrap()
            .contains("bridge")
    );
    assert_eq!(
        host.link("t-a", "vx-1").unwrap()["linkinfo"]["info_kind"],
        "bridge"
    );
    assert_eq!(host.addresses("t-a", "ve-0"), ["10.8.0.1/24"]);
    assert_eq!(host.links("t-a"), ["lo", "vx-1", "ve-9", "ve-0"]);
}

#[test]
fn calls_outside_the_grant_or_the_node_policy_are_denied_and_change_nothing() {
    let host = Host::new();
    assert_all(
        &probe(
            &host,
            json!([{"op": "ensure-netns", "name": "t-a"}, {"op": "ensure-netns", "name": "t-b"}]),
            GRANT,
        ),
        json!(true),
    );
    let narrow = r#"
network:
  netns: ["t-a"]
  interfaces: ["br-*"]
  kinds: [bridge]
"#;
    let results = probe(
        &host,
        json!([
            {"op": "ensure-link", "netns": "t-b", "name": "br-0", "kind": {"type": "bridge"}},
            {"op": "ensure-link", "name": "br-0", "kind": {"type": "bridge"}},
            {"op": "ensure-link", "netns": "t-a", "name": "vx-0", "kind": {"type": "bridge"}},
            {"op": "ensure-link", "netns": "t-a", "name": "br-1", "kind": {"type": "veth", "peer": "br-2"}},
            {"op": "ensure-link", "netns": "t-a", "name": "br-1", "kind": {"type": "bridge"}, "master": "ve-0"},
            {"op": "ensure-netns", "name": "t-c"},
            {"op": "delete-netns", "name": "t-b"},
            {"op": "list-links", "netns": "t-b"},
            {"op": "ensure-address", "netns": "t-a", "device": "ve-0", "address": "10.0.0.1/24"},
            {"op": "ensure-route", "netns": "t-a", "destination": "default", "gateway": "10.0.0.254", "device": "ve-0"},
        ]),
        narrow,
    );
    for (i, r) in results.iter().enumerate() {
        assert_eq!(err_kind(r), Some("permission-denied"), "op {i}: {r}");
    }
    let message = |i: usize| results[i]["err"]["message"].as_str().unwrap().to_owned();
    assert!(message(0).contains("\"t-b\"") && message(0).contains("network.netns"));
    assert!(message(1).contains("\"host\""));
    assert!(message(2).contains("vx-0") && message(2).contains("network.interfaces"));
    assert!(message(3).contains("veth") && message(3).contains("network.kinds"));
    // Only the namespaces in scope are listed.
    let listed = probe(&host, json!([{"op": "list-netns"}]), narrow);
    assert_eq!(listed[0]["ok"], json!(["t-a"]));

    // The node policy bounds the grant: t-b is granted but not allowed here.
    let policy = Grant::parse(
        "network: {netns: [t-a], interfaces: ['*'], kinds: [bridge]}",
        "policy",
    )
    .unwrap();
    let grant = Grant::parse(GRANT, "grant").unwrap();
    let mut req = request(
        &json!({ "ops": [
            {"op": "ensure-link", "netns": "t-b", "name": "br-0", "kind": {"type": "bridge"}},
            {"op": "ensure-link", "netns": "t-a", "name": "br-0", "kind": {"type": "veth", "peer": "br-1"}},
        ]}),
        GRANT,
    );
    req.grant = EffectiveGrant::new(&grant, Some(&policy)).unwrap().into();
    let report = host.runtime.run(&host.load("netprobe"), req).unwrap();
    for r in probe_results(&report) {
        assert_eq!(err_kind(&r), Some("permission-denied"), "{r}");
        assert!(
            r["err"]["message"]
                .as_str()
                .unwrap()
                .contains("node policy"),
            "{r}"
        );
    }

    assert_eq!(host.links("t-a"), ["lo"]);
    assert_eq!(host.links("t-b"), ["lo"]);
    assert!(!host.netns("t-c").exists());
}

#[test]
fn hostile_input_is_refused_before_any_netlink_call() {
    let host = Host::new();
    let link = |name: &str, kind: Value| json!({"op": "ensure-link", "netns": "t-a", "name": name, "kind": kind});
    let bridge = json!({"type": "bridge"});
    let results = probe(
        &host,
        json!([
            link("br-sixteen-bytes", bridge.clone()),
            link("br/0", bridge.clone()),
            link("br 0", bridge.clone()),
            link("br-%d", bridge.clone()),
            link("..", bridge.clone()),
            link("vx-0", json!({"type": "vxlan", "vni": 0})),
            link("vx-0", json!({"type": "vxlan", "vni": 16777216})),
            link("vx-0", json!({"type": "vxlan", "vni": 5, "remote": "not-an-ip"})),
            link("vx-0", json!({"type": "vxlan", "vni": 5, "remote": "10.0.0.1", "group": "239.1.1.1"})),
            link("vx-0", json!({"type": "vxlan", "vni": 5, "port": 0})),
            link("ve-0", json!({"type": "veth", "peer": "ve-with-a-long-name"})),
            link("mv-0", json!({"type": "macvlan", "parent": "ve-0", "mode": "sideways"})),
            link("mv-0", json!({"type": "vlan", "parent": "ve-0", "id": 4095})),
            {"op": "ensure-link", "netns": "t-a", "name": "br-0", "kind": bridge.clone(), "mtu": 20},
            {"op": "ensure-link", "netns": "t-a", "name": "br-0", "kind": bridge.clone(), "mtu": 70000},
            {"op": "ensure-address", "netns": "t-a", "device": "br-0", "address": "10.0.0.1"},
            {"op": "ensure-address", "netns": "t-a", "device": "br-0", "address": "10.0.0.300/24"},
            {"op": "ensure-address", "netns": "t-a", "device": "br-0", "address": "10.0.0.1/33"},
            {"op": "ensure-route", "netns": "t-a", "destination": "10.1.0.0/16", "gateway": "10.0.0.254"},
            {"op": "ensure-route", "netns": "t-a", "destination": "10.1.0.1/16", "device": "br-0"},
            {"op": "ensure-netns", "name": ".."},
            {"op": "ensure-netns", "name": "t-a/b"},
            {"op": "ensure-netns", "name": "host"},
        ]),
        GRANT,
    );
    for (i, r) in results.iter().enumerate() {
        assert_eq!(err_kind(r), Some("invalid-argument"), "op {i}: {r}");
    }
    assert!(
        results[0]["err"]["message"]
            .as_str()
            .unwrap()
            .contains("15")
    );
    // Nothing was made: not even the namespace directory.
    assert!(!host.path("/var/run/netns").exists());
}

#[test]
fn plan_mode_records_the_whole_topology_and_makes_nothing() {
    let host = Host::new();
    let mut req = request(&json!({ "ops": topology() }), GRANT);
    req.mode = Mode::Plan;
    let report = host.runtime.run(&host.load("netprobe"), req).unwrap();
    assert!(report.status.is_success(), "{report:#?}");
    assert!(report.status.is_success(), "{report:#?}");
    assert_all(&probe_results(&report), json!(true));
    assert_eq!(report.effects.len(), 12, "{:#?}", report.effects);
    assert!(report.effects.iter().all(|e| !e.applied));
    let detail = |target: &str| {
        report
            .effects
            .iter()
            .find(|e| e.target == target)
            .map(|e| e.detail.clone())
    };
    assert_eq!(
        detail("link br-0 (netns t-a)").unwrap(),
        "create bridge, mtu 1400, up"
    );
    assert_eq!(detail("link ve-1 (netns t-w)").unwrap(), "up");
    assert!(
        !host.path("/var/run/netns").exists(),
        "plan mode made nothing"
    );

    // Planned twice: the second time changes nothing, as a real run would.
    let mut twice = topology().as_array().unwrap().clone();
    twice.extend(topology().as_array().unwrap().clone());
    twice.push(
        json!({"op": "ensure-link", "netns": "t-a", "name": "br-9", "kind": {"type": "bridge"}}),
    );
    twice.push(json!({"op": "delete-link", "netns": "t-a", "name": "br-8"}));
    let mut req = request(&json!({ "ops": twice }), GRANT);
    req.mode = Mode::Plan;
    let report = host.runtime.run(&host.load("netprobe"), req).unwrap();
    let results = probe_results(&report);
    let n = topology().as_array().unwrap().len();
    assert_all(&results[..n], json!(true));
    assert_all(&results[n..2 * n], json!(false));
    assert_eq!(
        results[2 * n]["ok"],
        true,
        "a link with no settings is still made"
    );
    assert_eq!(results[2 * n + 1]["ok"], false, "nothing to delete");
}

#[test]
fn plan_mode_on_a_host_in_shape_plans_only_the_difference() {
    let host = Host::new();
    probe(&host, topology(), GRANT);
    assert!(host.ip("t-a", &["link", "set", "br-0", "mtu", "1300"]).0);
    let mut req = request(&json!({ "ops": topology() }), GRANT);
    req.mode = Mode::Plan;
    let report = host.runtime.run(&host.load("netprobe"), req).unwrap();
    assert!(report.status.is_success(), "{report:#?}");
    for (i, r) in probe_results(&report).iter().enumerate() {
        assert_eq!(r["ok"], json!(i == 2), "op {i}: {r}");
    }
    let planned: Vec<_> = report
        .effects
        .iter()
        .map(|e| (e.target.as_str(), e.detail.as_str()))
        .collect();
    assert_eq!(planned, [("link br-0 (netns t-a)", "mtu 1400")]);
    assert_eq!(host.link("t-a", "br-0").unwrap()["mtu"], 1300);
}

#[test]
fn owned_only_grants_touch_only_links_hostaction_made() {
    let host = Host::new();
    probe(&host, json!([{"op": "ensure-netns", "name": "t-a"}]), GRANT);
    assert!(host.ip("t-a", &["link", "add", "br-x", "type", "bridge"]).0);
    let owned = format!("{GRANT}  ownedOnly: true\n");
    let results = probe(
        &host,
        json!([
            {"op": "ensure-link", "netns": "t-a", "name": "br-x", "kind": {"type": "bridge"}},
            {"op": "ensure-link", "netns": "t-a", "name": "br-x", "kind": {"type": "bridge"}, "up": true},
            {"op": "ensure-address", "netns": "t-a", "device": "br-x", "address": "10.6.0.1/24"},
            {"op": "delete-link", "netns": "t-a", "name": "br-x"},
            {"op": "ensure-link", "netns": "t-a", "name": "br-y", "kind": {"type": "bridge"}, "up": true},
            {"op": "ensure-address", "netns": "t-a", "device": "br-y", "address": "10.6.0.1/24"},
            {"op": "delete-link", "netns": "t-a", "name": "br-y"},
        ]),
        &owned,
    );
    assert_eq!(results[0]["ok"], false, "nothing to change is fine");
    for r in &results[1..4] {
        assert_eq!(err_kind(r), Some("permission-denied"), "{r}");
        assert!(
            r["err"]["message"].as_str().unwrap().contains("ownedOnly"),
            "{r}"
        );
    }
    assert_all(&results[4..], json!(true));
    let theirs = host.link("t-a", "br-x").unwrap();
    assert!(!theirs["flags"].as_array().unwrap().contains(&"UP".into()));
    assert!(host.addresses("t-a", "br-x").is_empty());
}

#[test]
fn kinds_the_kernel_lacks_are_unsupported_and_leave_nothing_behind() {
    let host = Host::new();
    probe(&host, json!([{"op": "ensure-netns", "name": "t-a"}]), GRANT);
    assert!(
        host.ip(
            "t-a",
            &[
                "link", "add", "ve-p", "type", "veth", "peer", "name", "ve-q"
            ]
        )
        .0
    );
    for (name, kind, ip_args) in [
        ("du-0", json!({"type": "dummy"}), vec!["type", "dummy"]),
        (
            "du-1",
            json!({"type": "wireguard"}),
            vec!["type", "wireguard"],
        ),
        (
            "du-2",
            json!({"type": "vlan", "parent": "ve-p", "id": 10}),
            vec!["link", "ve-p", "type", "vlan", "id", "10"],
        ),
    ] {
        // What `ip` says about this kind here decides what the action must see.
        let mut args = vec!["link", "add", "du-x"];
        args.extend(ip_args);
        let kernel_has_it = host.ip("t-a", &args).0;
        let _ = host.ip("t-a", &["link", "delete", "du-x"]);
        let r = &probe(
            &host,
            json!([{"op": "ensure-link", "netns": "t-a", "name": name, "kind": kind}]),
            GRANT,
        )[0];
        if kernel_has_it {
            assert_eq!(r["ok"], true, "{name}: {r}");
            assert!(host.link("t-a", name).is_some());
        } else {
            assert_eq!(err_kind(r), Some("unsupported"), "{name}: {r}");
            assert!(host.link("t-a", name).is_none());
        }
    }
}

#[test]
fn a_component_importing_network_is_refused_without_a_network_grant() {
    let host = Host::new();
    let err = host
        .run("netprobe", &json!({"ops": []}), "files: {read: [/etc]}")
        .unwrap_err();
    match err {
        Error::Refused(missing) => {
            assert!(missing.iter().any(|m| m.contains("network")), "{missing:?}");
        }
        other => panic!("expected a refusal, got {other:?}"),
    }
}

#[test]
fn plan_mode_plans_links_built_on_planned_links() {
    let host = Host::new();
    probe(&host, json!([{"op": "ensure-netns", "name": "t-a"}]), GRANT);
    let mut req = request(
        &json!({ "ops": [
            {"op": "ensure-link", "netns": "t-a", "name": "ve-n", "kind": {"type": "veth", "peer": "ve-m"}, "up": true},
            {"op": "ensure-link", "netns": "t-a", "name": "vx-n", "kind": {"type": "vxlan", "vni": 9, "device": "ve-n"}},
            {"op": "ensure-link", "netns": "t-a", "name": "mv-n", "kind": {"type": "macvlan", "parent": "ve-m"}},
            {"op": "ensure-address", "netns": "t-a", "device": "ve-m", "address": "10.5.0.1/24"},
            {"op": "ensure-link", "netns": "t-a", "name": "mv-x", "kind": {"type": "macvlan", "parent": "ve-gone"}},
        ]}),
        GRANT,
    );
    req.mode = Mode::Plan;
    let report = host.runtime.run(&host.load("netprobe"), req).unwrap();
    let results = probe_results(&report);
    assert_all(&results[..4], json!(true));
    // What is neither there nor planned is still not found.
    assert_eq!(err_kind(&results[4]), Some("not-found"), "{}", results[4]);
    assert_eq!(report.effects.len(), 4, "{:#?}", report.effects);
    assert_eq!(host.links("t-a"), ["lo"]);
}

#[test]
fn a_name_in_the_namespace_directory_never_leads_to_the_host() {
    let host = Host::new();
    probe(&host, json!([{"op": "ensure-netns", "name": "t-a"}]), GRANT);
    let dir = host.path("/var/run/netns");
    // What a hostile or careless hand could leave there.
    std::os::unix::fs::symlink("/proc/1/ns/net", dir.join("t-link")).unwrap();
    let fifo = dir.join("t-fifo");
    assert!(
        std::process::Command::new("mkfifo")
            .arg(&fifo)
            .status()
            .unwrap()
            .success()
    );
    // `ip netns attach t-hostie 1`: the host's own namespace under a name.
    std::fs::write(dir.join("t-hostie"), b"").unwrap();
    assert!(
        std::process::Command::new("mount")
            .args(["--bind", "/proc/self/ns/net"])
            .arg(dir.join("t-hostie"))
            .status()
            .unwrap()
            .success()
    );
    let start = std::time::Instant::now();
    let results = probe(
        &host,
        json!([
            {"op": "ensure-link", "netns": "t-link", "name": "br-pwn", "kind": {"type": "bridge"}},
            {"op": "list-links", "netns": "t-fifo"},
            {"op": "ensure-link", "netns": "t-hostie", "name": "br-pwn", "kind": {"type": "bridge"}},
            {"op": "ensure-link", "netns": "t-a", "name": "ve-0", "kind": {"type": "veth", "peer": "ve-1", "peer_netns": "t-hostie"}},
            {"op": "ensure-link", "netns": "t-a", "name": "ve-2", "kind": {"type": "veth", "peer": "ve-3", "peer_netns": "host"}},
            {"op": "list-netns"},
        ]),
        GRANT,
    );
    assert!(
        start.elapsed() < std::time::Duration::from_secs(30),
        "nothing blocks"
    );
    assert_eq!(err_kind(&results[0]), Some("not-found"), "{}", results[0]);
    assert_eq!(err_kind(&results[1]), Some("not-found"), "{}", results[1]);
    for i in [2, 3, 4] {
        assert_eq!(
            err_kind(&results[i]),
            Some("permission-denied"),
            "op {i}: {}",
            results[i]
        );
    }
    assert!(
        results[2]["err"]["message"]
            .as_str()
            .unwrap()
            .contains("host's own")
    );
    // Only namespaces are listed (t-hostie is one: it is listed, not reachable).
    assert_eq!(results[5]["ok"], json!(["t-a", "t-hostie"]));
    assert_eq!(host.links("t-a"), ["lo"]);
    let (ok, _) = host.ip("t-hostie", &["link", "show", "br-pwn"]);
    assert!(!ok, "nothing was made in the host's namespace");
}

#[test]
fn what_a_link_builds_on_must_be_in_scope_and_owned() {
    let host = Host::new();
    probe(&host, json!([{"op": "ensure-netns", "name": "t-a"}]), GRANT);
    // Links someone else made, with `ip`.
    assert!(
        host.ip(
            "t-a",
            &[
                "link", "add", "eth9", "type", "veth", "peer", "name", "eth8"
            ]
        )
        .0
    );
    assert!(
        host.ip("t-a", &["link", "add", "br-theirs", "type", "bridge"])
            .0
    );
    let owned = format!("{GRANT}  ownedOnly: true\n");
    let results = probe(
        &host,
        json!([
            // The parent is out of scope.
            {"op": "ensure-link", "netns": "t-a", "name": "mv-0", "kind": {"type": "macvlan", "parent": "eth9", "mode": "passthru"}},
            // In scope but not hostaction's: not under ownedOnly.
            {"op": "ensure-link", "netns": "t-a", "name": "ve-a", "kind": {"type": "veth", "peer": "ve-b"}, "mtu": 1280, "master": "br-theirs"},
        ]),
        &owned,
    );
    assert_eq!(
        err_kind(&results[0]),
        Some("permission-denied"),
        "{}",
        results[0]
    );
    assert!(
        results[0]["err"]["message"]
            .as_str()
            .unwrap()
            .contains("eth9")
    );
    assert_eq!(
        err_kind(&results[1]),
        Some("permission-denied"),
        "{}",
        results[1]
    );
    assert!(
        results[1]["err"]["message"]
            .as_str()
            .unwrap()
            .contains("br-theirs")
    );
    assert_eq!(host.link("t-a", "br-theirs").unwrap()["mtu"], 1500);
    assert_eq!(host.links("t-a"), ["lo", "eth8", "eth9", "br-theirs"]);
}

#[test]
fn the_host_namespace_is_only_granted_by_name() {
    let host = Host::new();
    let any = "network: {netns: ['*'], interfaces: ['br-*'], kinds: [bridge]}";
    let results = probe(
        &host,
        json!([{"op": "ensure-link", "name": "br-0", "kind": {"type": "bridge"}}]),
        any,
    );
    assert_eq!(
        err_kind(&results[0]),
        Some("permission-denied"),
        "{}",
        results[0]
    );
}

#[test]
fn addresses_and_routes_must_lie_in_granted_ranges() {
    let host = Host::new();
    probe(
        &host,
        json!([
            {"op": "ensure-netns", "name": "t-a"},
            {"op": "ensure-link", "netns": "t-a", "name": "ve-0", "kind": {"type": "veth", "peer": "ve-1"}, "up": true},
        ]),
        GRANT,
    );
    let results = probe(
        &host,
        json!([
            {"op": "ensure-address", "netns": "t-a", "device": "ve-0", "address": "172.16.0.1/24"},
            {"op": "ensure-address", "netns": "t-a", "device": "ve-0", "address": "10.0.0.1/1"},
            {"op": "ensure-route", "netns": "t-a", "destination": "default", "device": "ve-0"},
            {"op": "ensure-route", "netns": "t-a", "destination": "0.0.0.0/1", "device": "ve-0"},
            {"op": "ensure-address", "netns": "t-a", "device": "ve-0", "address": "10.1.0.1/24"},
            {"op": "ensure-route", "netns": "t-a", "destination": "10.2.0.0/16", "device": "ve-0"},
        ]),
        GRANT,
    );
    for (i, r) in results[..4].iter().enumerate() {
        assert_eq!(err_kind(r), Some("permission-denied"), "op {i}: {r}");
    }
    assert_all(&results[4..], json!(true));
    assert_eq!(host.addresses("t-a", "ve-0"), ["10.1.0.1/24"]);
}

#[test]
fn owned_only_grants_delete_only_namespaces_hostaction_made() {
    let host = Host::new();
    probe(
        &host,
        json!([{"op": "ensure-netns", "name": "t-mine"}]),
        GRANT,
    );
    // A namespace made by someone else (`unshare --net=FILE` binds it).
    let theirs = host.path("/var/run/netns/t-theirs");
    std::fs::write(&theirs, b"").unwrap();
    assert!(
        std::process::Command::new("unshare")
            .arg(format!("--net={}", theirs.display()))
            .arg("true")
            .status()
            .unwrap()
            .success()
    );
    let owned = format!("{GRANT}  ownedOnly: true\n");
    let results = probe(
        &host,
        json!([
            {"op": "delete-netns", "name": "t-theirs"},
            {"op": "delete-netns", "name": "t-mine"},
        ]),
        &owned,
    );
    assert_eq!(
        err_kind(&results[0]),
        Some("permission-denied"),
        "{}",
        results[0]
    );
    assert_eq!(results[1]["ok"], true);
    assert!(host.netns("t-theirs").exists() && !host.netns("t-mine").exists());
}
