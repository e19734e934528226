//! `hostaction inspect --grants --policy` as a user runs it, on the real
//! guest components: the effective powers per capability, what the node
//! policy takes away, and — run through `hostaction run` with the same
//! documents — the engine refusing exactly what inspect says it refuses.

use std::process::Output;

use super::{Scratch, guest, stderr, stdout};

use serde_json::{Value, json};

impl Scratch {
    /// `hostaction inspect GUEST --grants G --policy P [--output json]`.
    fn inspect(&self, guest_name: &str, grant: &str, policy: Option<&str>, json: bool) -> Output {
        let module = guest(guest_name);
        let grants = self.file("grants.yaml", grant);
        let mut args: Vec<&dyn AsRef<std::ffi::OsStr>> =
            vec![&"inspect", &module, &"--grants", &grants];
        let policy_file = policy.map(|p| self.file("policy.yaml", p));
        if let Some(p) = &policy_file {
            args.extend_from_slice(&[&"--policy", p]);
        }
        if json {
            args.extend_from_slice(&[&"--output", &"json"]);
        }
        self.hostaction(&args)
    }

    /// `hostaction run GUEST --grants G --policy P EXTRA...`: the same
    /// documents through the engine.
    fn run_with(
        &self,
        guest_name: &str,
        grant: &str,
        policy: &str,
        extra: &[&dyn AsRef<std::ffi::OsStr>],
    ) -> Output {
        let module = guest(guest_name);
        let grants = self.file("grants.yaml", grant);
        let policy = self.file("policy.yaml", policy);
        let mut args: Vec<&dyn AsRef<std::ffi::OsStr>> =
            vec![&"run", &module, &"--grants", &grants, &"--policy", &policy];
        args.extend_from_slice(extra);
        self.hostaction(&args)
    }

    fn inspect_json(&self, guest_name: &str, grant: &str, policy: Option<&str>) -> Value {
        let out = self.inspect(guest_name, grant, policy, true);
        assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
        serde_json::from_slice(&out.stdout).unwrap()
    }
}

fn capability<'a>(json: &'a Value, name: &str) -> &'a Value {
    json["powers"]["capabilities"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["capability"] == name)
        .unwrap()
}

/// `(field, requested, kept)` of each entry the policy took away.
fn taken(cap: &Value) -> Vec<(String, String, Vec<String>)> {
    cap["takenAway"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| {
            (
                t["field"].as_str().unwrap().to_owned(),
                t["requested"].as_str().unwrap().to_owned(),
                t["kept"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .map(|k| k.as_str().unwrap().to_owned())
                    .collect(),
            )
        })
        .collect()
}

fn t(field: &str, requested: &str, kept: &[&str]) -> (String, String, Vec<String>) {
    (
        field.to_owned(),
        requested.to_owned(),
        kept.iter().map(|k| (*k).to_owned()).collect(),
    )
}

const FILES_GRANT: &str = "files: {read: [/etc], write: [/etc/cni/net.d, /opt/cni/bin], \
                           groupWritable: true}";
const FILES_POLICY: &str = "files: {read: [/etc/cni], write: [/opt/cni], executable: false}";

#[test]
fn files_powers_are_the_intersection_and_name_what_the_policy_took() {
    let s = Scratch::new();
    let json = s.inspect_json("cni-install", FILES_GRANT, Some(FILES_POLICY));
    assert_eq!(json["powers"]["run"]["starts"], true, "{json}");
    let files = capability(&json, "files");
    assert_eq!(files["status"], "allowed");
    assert_eq!(
        files["files"],
        json!({
            "read": [
                {"path": "/etc/cni"},
                {"path": "/etc/cni/net.d", "resolvedBeneath": "/etc/cni"},
                {"path": "/opt/cni/bin", "resolvedBeneath": "/opt/cni"},
            ],
            "write": [{"path": "/opt/cni/bin", "resolvedBeneath": "/opt/cni"}],
            "kernelPaths": [],
            "groupWritable": false,
            "payloadExecutablesOnly": true,
        }),
        "{json}"
    );
    assert_eq!(
        taken(files),
        [
            t("files.read", "/etc", &["/etc/cni"]),
            t("files.write", "/etc/cni/net.d", &[]),
            t("files.groupWritable", "true", &[]),
            t("files.executable", "true", &[]),
        ]
    );
    // cni-install imports only files.
    assert_eq!(capability(&json, "network")["status"], "none");

    let out = s.inspect("cni-install", FILES_GRANT, Some(FILES_POLICY), false);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let text = stdout(&out);
    for line in [
        "  run       starts: every capability it imports is granted",
        "  files: imported, granted",
        "    write       /opt/cni/bin (resolved beneath /opt/cni)",
        "    modes       group-writable no; execute bits only on payload files' contents",
        "      files.write /etc/cni/net.d: not under any of the node policy's write directories \
         (/opt/cni); still readable",
        "      files.read /etc: wider than the node policy's read (or write) directories: only \
         /etc/cni within it",
    ] {
        assert!(text.contains(line), "{line:?} not in\n{text}");
    }
}

#[test]
fn kernel_paths_are_intersected_too() {
    let s = Scratch::new();
    let json = s.inspect_json(
        "probe",
        "files: {read: [/sys, /proc], kernelPaths: [/sys, /proc/meminfo]}",
        Some("files: {read: [/sys, /proc], kernelPaths: [/sys/class/net]}"),
    );
    let files = capability(&json, "files");
    assert_eq!(
        files["files"]["kernelPaths"],
        json!([{"path": "/sys/class/net"}]),
        "{json}"
    );
    assert_eq!(
        taken(files),
        [
            t("files.kernelPaths", "/sys", &["/sys/class/net"]),
            t("files.kernelPaths", "/proc/meminfo", &[]),
        ]
    );
}

const NET_GRANT: &str = "network: {netns: [host, \"*\"], interfaces: [\"*\"], \
                         kinds: [dummy, bridge], addresses: [10.0.0.0/8], \
                         routes: [default, 10.244.0.0/16]}";
const NET_POLICY: &str = "network: {netns: [\"ovl-*\"], interfaces: [\"vx-*\"], \
                          kinds: [dummy, vxlan], addresses: [10.244.0.0/16], \
                          routes: [10.0.0.0/8], ownedOnly: true}";

#[test]
fn network_powers_are_kept_as_pairs_and_say_what_both_allow() {
    let s = Scratch::new();
    let json = s.inspect_json("netprobe", NET_GRANT, Some(NET_POLICY));
    let net = capability(&json, "network");
    assert_eq!(net["status"], "allowed");
    assert_eq!(net["network"]["hostNetns"], false);
    assert_eq!(net["network"]["netns"]["matching"], json!(["ovl-*"]));
    assert_eq!(net["network"]["interfaces"]["matching"], json!(["vx-*"]));
    assert_eq!(net["network"]["interfaces"]["grant"], json!(["*"]));
    assert_eq!(net["network"]["interfaces"]["policy"], json!(["vx-*"]));
    assert_eq!(net["network"]["kinds"], json!(["dummy"]));
    assert_eq!(net["network"]["addresses"], json!(["10.244.0.0/16"]));
    assert_eq!(net["network"]["routes"], json!(["10.244.0.0/16"]));
    assert_eq!(net["network"]["ownedOnly"], true);
    assert_eq!(
        taken(net),
        [
            t("network.netns", "host", &[]),
            t("network.netns", "*", &["ovl-*"]),
            t("network.interfaces", "*", &["vx-*"]),
            t("network.kinds", "bridge", &[]),
            t("network.addresses", "10.0.0.0/8", &["10.244.0.0/16"]),
            t("network.routes", "default", &[]),
            t("network.ownedOnly", "false", &[]),
        ]
    );
    let example = net["takenAway"][2]["example"].as_str().unwrap();
    assert!(!example.starts_with("vx-"), "{example}");

    let text = stdout(&s.inspect("netprobe", NET_GRANT, Some(NET_POLICY), false));
    for line in [
        "    interfaces  matching vx-*",
        "    kinds       dummy",
        "      network.kinds bridge: not in the node policy's network.kinds (dummy, vxlan)",
    ] {
        assert!(text.contains(line), "{line:?} not in\n{text}");
    }
}

#[test]
fn patterns_neither_side_contains_are_shown_as_both() {
    let s = Scratch::new();
    let json = s.inspect_json(
        "netprobe",
        "network: {interfaces: [\"vx*\"]}",
        Some("network: {interfaces: [\"*-0\"]}"),
    );
    let interfaces = &capability(&json, "network")["network"]["interfaces"];
    assert_eq!(interfaces["matching"], Value::Null, "{json}");
    let text = stdout(&s.inspect(
        "netprobe",
        "network: {interfaces: [\"vx*\"]}",
        Some("network: {interfaces: [\"*-0\"]}"),
        false,
    ));
    assert!(
        text.contains(
            "    interfaces  matching both: one of the grant's vx* and one of the node policy's *-0"
        ),
        "{text}"
    );
}

#[test]
fn services_powers_are_kept_as_pairs() {
    let s = Scratch::new();
    let json = s.inspect_json(
        "svcprobe",
        "services: {units: [\"*.service\", kubelet.service], daemonReload: true}",
        Some("services: {units: [containerd.service, \"kube*\"]}"),
    );
    let svc = capability(&json, "services");
    assert_eq!(svc["status"], "allowed");
    assert_eq!(svc["services"]["daemonReload"], false);
    assert_eq!(svc["services"]["units"]["matching"], Value::Null);
    assert_eq!(
        taken(svc),
        [
            t(
                "services.units",
                "*.service",
                &["containerd.service", "kube*"]
            ),
            t("services.daemonReload", "true", &[]),
        ]
    );
}

#[test]
fn a_policy_without_the_section_refuses_the_run_as_the_engine_does() {
    let s = Scratch::new();
    let grant = "network: {interfaces: [\"*\"]}";
    let policy = "files: {read: [/etc]}";
    let json = s.inspect_json("netprobe", grant, Some(policy));
    let net = capability(&json, "network");
    assert_eq!(net["status"], "refused");
    assert_eq!(taken(net), [t("network", "section", &[])]);
    let run = &json["powers"]["run"];
    assert_eq!(
        (run["starts"].clone(), run["exitCode"].clone()),
        (json!(false), json!(3))
    );
    // `hostaction run` with the same documents: refused, exit 3, the same error.
    let out = s.run_with("netprobe", grant, policy, &[]);
    assert_eq!(out.status.code(), Some(3), "{}", stderr(&out));
    assert_eq!(
        stderr(&out).trim_end(),
        format!("hostaction: {}", run["error"].as_str().unwrap())
    );
}

/// A module without the `run` export: `run` fails with a bad module (exit 2)
/// once the grant checks pass, so inspect does not say it starts.
#[test]
fn a_module_run_cannot_call_does_not_start() {
    let s = Scratch::new();
    let (grant, policy) = ("files: {read: [/etc]}", "files: {read: [/etc]}");
    let json = s.inspect_json("wrong-export", grant, Some(policy));
    let run = &json["powers"]["run"];
    assert_eq!(
        (run["starts"].clone(), run["exitCode"].clone()),
        (json!(false), json!(2)),
        "{json}"
    );
    let out = s.run_with("wrong-export", grant, policy, &[&"--plan"]);
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    assert_eq!(
        stderr(&out).trim_end(),
        format!("hostaction: {}", run["error"].as_str().unwrap())
    );
}

/// Hostile documents: 64 grant patterns against policy patterns whose
/// comparison explodes (`*a` then 200 `?`: a name whose 201st character from
/// the end is `a`). Each comparison is bounded, and all of them together too:
/// once the budget is spent, the remaining entries say they were not
/// compared (each call is still checked by the engine against both).
#[test]
fn hostile_patterns_spend_one_bounded_budget() {
    let s = Scratch::new();
    let hostile: Vec<String> = (1..=12)
        .map(|i| format!("\"*a{}{}\"", "?".repeat(200), "b".repeat(i)))
        .collect();
    let grant = format!("network: {{netns: [{}]}}", vec!["\"*\""; 64].join(", "));
    let policy = format!("network: {{netns: [z, {}]}}", hostile.join(", "));
    let json = s.inspect_json("netprobe", &grant, Some(&policy));
    let taken = capability(&json, "network")["takenAway"]
        .as_array()
        .unwrap();
    assert_eq!(taken.len(), 64, "{json}");
    let last = taken.last().unwrap()["why"].as_str().unwrap();
    assert!(last.starts_with("not compared"), "{last}");
}

#[test]
fn a_granted_capability_the_module_does_not_import_is_unused() {
    let s = Scratch::new();
    let json = s.inspect_json(
        "cni-install",
        "files: {write: [/opt/cni/bin]}\nservices: {units: [x.service]}",
        None,
    );
    assert_eq!(capability(&json, "services")["status"], "unused");
    assert_eq!(capability(&json, "files")["status"], "allowed");
}

#[test]
fn without_a_policy_the_grant_stands_as_run_takes_it() {
    let s = Scratch::new();
    let json = s.inspect_json("cni-install", "files: {write: [/opt/cni/bin]}", None);
    assert_eq!(json["powers"]["policy"], Value::Null);
    let bound = json["powers"]["bound"].as_str().unwrap();
    assert!(
        bound.contains("unbounded") && bound.contains("agent"),
        "{bound}"
    );
    let files = capability(&json, "files");
    assert_eq!(files["files"]["write"], json!([{"path": "/opt/cni/bin"}]));
    assert_eq!(files["takenAway"], json!([]));
}

#[test]
fn bad_documents_fail_as_run_fails() {
    let s = Scratch::new();
    let good = s.file("good.yaml", "files: {read: [/etc]}");
    let bad = s.file("bad.yaml", "network: {kinds: [tunnel]}");
    let missing = s.dir.path().join("missing.yaml");
    let module = guest("cni-install");
    for (grants, policy) in [
        (&missing, &good),
        (&bad, &good),
        (&good, &bad),
        (&good, &missing),
    ] {
        let args = |cmd: &'static &'static str| -> Vec<&dyn AsRef<std::ffi::OsStr>> {
            vec![cmd, &module, &"--grants", grants, &"--policy", policy]
        };
        let inspect = s.hostaction(&args(&"inspect"));
        let run = s.hostaction(&args(&"run"));
        assert_eq!(inspect.status.code(), Some(2), "{}", stderr(&inspect));
        assert_eq!(inspect.status.code(), run.status.code());
        assert_eq!(stderr(&inspect), stderr(&run));
        assert!(
            stderr(&inspect).contains("bad grant"),
            "{}",
            stderr(&inspect)
        );
    }
    // The engine's check of the pair itself: writing where systemd loads
    // units, with services (no policy to narrow the write).
    let units = s.file(
        "units.yaml",
        "files: {write: [/etc/systemd/system]}\nservices: {units: [x.service]}",
    );
    let args = |cmd: &'static &'static str| -> Vec<&dyn AsRef<std::ffi::OsStr>> {
        vec![cmd, &module, &"--grants", &units]
    };
    let inspect = s.hostaction(&args(&"inspect"));
    let run = s.hostaction(&args(&"run"));
    assert_eq!(inspect.status.code(), Some(2), "{}", stderr(&inspect));
    assert_eq!(stderr(&inspect), stderr(&run));
    assert!(
        stderr(&inspect).contains("systemd loads units"),
        "{}",
        stderr(&inspect)
    );
}

#[test]
fn names_from_the_documents_are_shown_escaped() {
    let s = Scratch::new();
    let out = s.inspect(
        "netprobe",
        "network: {interfaces: [\"\\e]0;x*\"]}",
        Some("network: {interfaces: [\"vx-*\"]}"),
        false,
    );
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let text = stdout(&out);
    assert!(
        !text.contains('\u{1b}') && text.contains("\\x1b]0;x*"),
        "{text}"
    );
}

/// The probe's result of op `i`: its fact `"i"` (facts are `[key, value]`
/// pairs, in order).
fn fact(report: &Value, i: usize) -> Value {
    let facts = report["report"]["outcome"]["facts"].as_array().unwrap();
    let value = facts
        .iter()
        .find(|f| f[0] == i.to_string().as_str())
        .unwrap_or_else(|| panic!("no fact {i}: {report}"));
    serde_json::from_str(value[1].as_str().unwrap()).unwrap()
}

/// The engine refuses a files write exactly where inspect says the policy
/// took it away, and allows what inspect says is left.
#[test]
fn run_refuses_files_calls_exactly_where_inspect_says() {
    let s = Scratch::new();
    let json = s.inspect_json("probe", FILES_GRANT, Some(FILES_POLICY));
    let files = capability(&json, "files");
    let write = &files["files"]["write"];
    assert_eq!(
        write,
        &json!([{"path": "/opt/cni/bin", "resolvedBeneath": "/opt/cni"}])
    );
    let taken_write = &files["takenAway"][1];
    assert_eq!(taken_write["requested"], "/etc/cni/net.d");

    let root = s.dir.path().join("root");
    for dir in ["etc/cni/net.d", "opt/cni/bin", "etc/other"] {
        std::fs::create_dir_all(root.join(dir)).unwrap();
    }
    std::fs::write(root.join("etc/cni/net.d/10.conf"), "old").unwrap();
    std::fs::write(root.join("etc/other/x"), "x").unwrap();
    let params = json!({"ops": [
        {"op": "ensure-file", "path": "/etc/cni/net.d/10.conf", "contents": "new", "mode": 0o644},
        {"op": "read-file", "path": "/etc/cni/net.d/10.conf"},
        {"op": "ensure-file", "path": "/opt/cni/bin/tool", "contents": "t", "mode": 0o644},
        {"op": "read-file", "path": "/etc/other/x"},
        {"op": "ensure-file", "path": "/opt/cni/bin/g", "contents": "g", "mode": 0o664},
    ]})
    .to_string();
    let out = s.run_with(
        "probe",
        FILES_GRANT,
        FILES_POLICY,
        &[
            &"--host-root",
            &root,
            &"--params",
            &params,
            &"--output",
            &"json",
        ],
    );
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let report: Value = serde_json::from_slice(&out.stdout).unwrap();
    let fact = |i: usize| fact(&report, i);
    // Taken away (write): refused; still readable: read.
    assert_eq!(fact(0)["err"]["kind"], "permission-denied", "{report}");
    assert_eq!(fact(1)["ok"], "old", "{report}");
    // Left (write beneath /opt/cni): allowed.
    assert!(fact(2).get("ok").is_some(), "{report}");
    // `/etc` narrowed to /etc/cni: /etc/other is refused.
    assert_eq!(fact(3)["err"]["kind"], "permission-denied", "{report}");
    // groupWritable taken away: a g+w mode is refused.
    assert_eq!(fact(4)["err"]["kind"], "permission-denied", "{report}");
    assert_eq!(
        std::fs::read_to_string(root.join("etc/cni/net.d/10.conf")).unwrap(),
        "old"
    );
}

/// The engine refuses network calls (in plan mode: nothing reaches the
/// kernel) exactly where inspect says the policy took them away, using the
/// example name inspect gives.
#[test]
fn run_refuses_network_calls_exactly_where_inspect_says() {
    let s = Scratch::new();
    let json = s.inspect_json("netprobe", NET_GRANT, Some(NET_POLICY));
    let net = capability(&json, "network");
    let refused_ns = net["takenAway"][1]["example"].as_str().unwrap().to_owned();
    let refused_if = net["takenAway"][2]["example"].as_str().unwrap().to_owned();
    let root = s.dir.path().join("root");
    std::fs::create_dir_all(&root).unwrap();
    let link = |name: &str, kind: &str| json!({"op": "ensure-link", "netns": "ovl-a", "name": name, "kind": {"type": kind}});
    let params = json!({"ops": [
        {"op": "ensure-netns", "name": "ovl-a"},
        {"op": "ensure-netns", "name": refused_ns},
        link("vx-0", "dummy"),
        link(&refused_if, "dummy"),
        link("vx-1", "bridge"),
        {"op": "list-links"},
    ]})
    .to_string();
    let out = s.run_with(
        "netprobe",
        NET_GRANT,
        NET_POLICY,
        &[
            &"--host-root",
            &root,
            &"--params",
            &params,
            &"--plan",
            &"--output",
            &"json",
        ],
    );
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let report: Value = serde_json::from_slice(&out.stdout).unwrap();
    let fact = |i: usize| fact(&report, i);
    assert!(fact(0).get("ok").is_some(), "{report}");
    assert_eq!(fact(1)["err"]["kind"], "permission-denied", "{report}");
    assert!(fact(2).get("ok").is_some(), "{report}");
    assert_eq!(fact(3)["err"]["kind"], "permission-denied", "{report}");
    // bridge: taken away from the kinds.
    assert_eq!(fact(4)["err"]["kind"], "permission-denied", "{report}");
    // The host's own namespace: taken away.
    assert_eq!(fact(5)["err"]["kind"], "permission-denied", "{report}");
}
