//! Crash recovery end to end: one multi-effect action (txprobe: files and
//! network interleaved — a directory, files made, replaced and removed, a
//! namespace, links made and changed, addresses and routes added and
//! removed), run through the
//! `hostaction` binary and killed (SIGKILL, the `HOSTACTION_TEST_CRASH`
//! hook) right before and right after each of its mutations in turn; after
//! each kill `hostaction recover` must bring the host back exactly as it was
//! before the run: files byte for byte with their modes and owners, and the
//! network attribute for attribute (links, IPv4 addresses and routes of each
//! namespace involved, the named namespaces and hostaction's marks of them).
//! Recovering again is a no-op; a recover killed midway is recovered by the
//! next; a run that completes is undone by `hostaction undo RUN`.
//!
//! Needs root and network namespaces (this machine and CI run as root): the
//! runs happen in a named namespace standing in for the host's own, under a
//! scratch host root, and a workload namespace the action makes there.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::collections::BTreeMap;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::os::unix::process::ExitStatusExt;
use std::path::Path;
use std::process::{Command, Output};
use std::time::Duration;

use hostaction_tests::{Host, guest, hostaction_bin, output_text, probe_results};
use serde_json::{Value, json};

/// The stand-in for the host's own namespace, and the workload namespace
/// the action makes.
const HOST_NS: &str = "cr-host";
const WORK_NS: &str = "cr-w";

const GRANT: &str = r#"
files:
  write: [/etc/crash]
network:
  netns: [host, "cr-*"]
  interfaces: ["br-cr", "ve-cr", "ve-crp", "d-cr", "d-crp"]
  kinds: [bridge, veth]
  addresses: [10.77.0.0/16]
  routes: [10.78.0.0/16, 10.79.0.0/16]
"#;

/// Files and network interleaved: a directory and a file made in it, a
/// namespace, a bridge, a file replaced (bytes and mode), a veth into the
/// namespace with an address there, a file removed, an existing link's
/// settings changed, an address and a route added and ones removed (on the
/// veth `d-cr`, which the test made).
fn ops() -> Value {
    json!({"ops": [
        {"op": "ensure-dir", "path": "/etc/crash/d", "mode": 0o750},
        {"op": "ensure-netns", "name": WORK_NS},
        {"op": "ensure-file", "path": "/etc/crash/d/a.conf", "contents": "a\n", "mode": 0o644},
        {"op": "ensure-link", "name": "br-cr", "kind": "bridge", "mtu": 1400, "up": true},
        {"op": "ensure-file", "path": "/etc/crash/b.conf", "contents": "new b\n", "mode": 0o600},
        {"op": "ensure-link", "name": "ve-cr", "kind": "veth", "peer": "ve-crp",
         "peer_netns": WORK_NS, "master": "br-cr", "up": true},
        {"op": "ensure-address", "netns": WORK_NS, "device": "ve-crp", "address": "10.77.0.2/24"},
        {"op": "remove", "path": "/etc/crash/c.conf"},
        {"op": "ensure-link", "name": "d-cr", "kind": "veth", "peer": "d-crp", "mtu": 1300, "up": true},
        {"op": "ensure-address", "device": "d-cr", "address": "10.77.1.1/24"},
        {"op": "ensure-route", "destination": "10.78.0.0/16", "gateway": "10.77.1.254", "device": "d-cr"},
        {"op": "remove-route", "destination": "10.79.0.0/16", "gateway": "10.77.3.254", "device": "d-cr"},
        {"op": "ensure-file", "path": "/etc/crash/d/e.conf", "contents": "e\n", "mode": 0o644},
        {"op": "remove-address", "device": "d-cr", "address": "10.77.2.1/24"},
    ]})
}

/// The scratch host: its root, the namespace standing in for the host's
/// own, the CLI's cache (journals in `<cache>/undo`) and the grant file.
struct Scratch {
    host: Host,
    cache: tempfile::TempDir,
    grant: tempfile::NamedTempFile,
}

impl Scratch {
    fn new() -> Self {
        let host = Host::new();
        let made = host
            .run(
                "netprobe",
                &json!({"ops": [{"op": "ensure-netns", "name": HOST_NS}]}),
                "network:\n  netns: [cr-host]\n",
            )
            .unwrap();
        assert_eq!(probe_results(&made)[0]["ok"], true, "{made:#?}");
        for args in [
            &["link", "set", "lo", "up"][..],
            &[
                "link", "add", "d-cr", "type", "veth", "peer", "name", "d-crp",
            ],
            &["link", "set", "d-crp", "up"],
            &["address", "add", "10.77.2.1/24", "dev", "d-cr"],
            &["address", "add", "10.77.3.1/24", "dev", "d-cr"],
            &["link", "set", "d-cr", "up"],
            &[
                "route",
                "add",
                "10.79.0.0/16",
                "via",
                "10.77.3.254",
                "dev",
                "d-cr",
            ],
        ] {
            let (ok, _) = host.ip(HOST_NS, args);
            assert!(ok, "ip {args:?}");
        }
        host.write("/etc/crash/b.conf", "old b\n");
        host.write("/etc/crash/c.conf", "old c\n");
        std::fs::set_permissions(
            host.path("/etc/crash/b.conf"),
            std::fs::Permissions::from_mode(0o644),
        )
        .unwrap();
        let grant = tempfile::NamedTempFile::new().unwrap();
        std::fs::write(grant.path(), GRANT).unwrap();
        Self {
            host,
            cache: tempfile::tempdir().unwrap(),
            grant,
        }
    }

    /// `hostaction ARGS --host-root R` in the host's stand-in namespace,
    /// with the scratch cache and `crash` as the test hook.
    fn cli(&self, args: &[&str], crash: Option<&str>) -> Command {
        let mut cmd = Command::new("nsenter");
        cmd.arg(format!("--net={}", self.host.netns(HOST_NS).display()))
            .arg(hostaction_bin())
            .args(args)
            .arg("--host-root")
            .arg(self.host.root.path())
            .args(["--output", "json"])
            .env("HOSTACTION_CACHE_DIR", self.cache.path())
            .env_remove("HOSTACTION_TEST_CRASH");
        if let Some(crash) = crash {
            cmd.env("HOSTACTION_TEST_CRASH", crash);
        }
        cmd
    }

    /// Runs the action; `None` when the hook killed it, else its JSON.
    fn run(&self, crash: Option<&str>) -> Option<Value> {
        let params = ops().to_string();
        let grant = self.grant.path().to_str().unwrap();
        let module = guest("txprobe");
        let args = [
            "run",
            module.to_str().unwrap(),
            "--params",
            params.as_str(),
            "--grants",
            grant,
        ];
        let out = self.cli(&args, crash).output().unwrap();
        if out.status.signal() == Some(9) {
            return None;
        }
        Some(json_of(&out))
    }

    /// `hostaction recover`: the runs it rolled back.
    fn recover(&self) -> Vec<Value> {
        let out = self.cli(&["recover"], None).output().unwrap();
        let v = json_of(&out);
        v["recovered"].as_array().cloned().unwrap_or_default()
    }

    /// The host as the test compares it.
    fn state(&self) -> State {
        let root = self.host.root.path();
        let mut files = BTreeMap::new();
        tree(root, root, &mut files);
        let names = |dir: &str| -> Vec<String> {
            let mut names: Vec<String> = std::fs::read_dir(self.host.path(dir))
                .into_iter()
                .flatten()
                .flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect();
            names.sort();
            names
        };
        let netns = names("/var/run/netns");
        let net = [HOST_NS, WORK_NS]
            .iter()
            .filter(|ns| netns.iter().any(|n| n == *ns))
            .map(|ns| (ns.to_string(), self.dump(ns)))
            .collect();
        State {
            files,
            netns,
            marks: names("/var/run/hostaction/netns"),
            net,
        }
    }

    /// Links (name, index, kind, MTU, flags, master, MAC, alias), IPv4
    /// addresses and IPv4 routes of every table in `ns`, as `ip -j` shows them.
    fn dump(&self, ns: &str) -> Value {
        let json = |args: &[&str]| -> Value {
            let (ok, out) = self.host.ip(ns, args);
            assert!(ok, "ip {args:?} in {ns}");
            serde_json::from_str(&out).unwrap()
        };
        let links: Vec<Value> = json(&["-j", "-d", "link", "show"])
            .as_array()
            .unwrap()
            .iter()
            .map(|l| {
                json!({
                    "ifname": l["ifname"], "ifindex": l["ifindex"],
                    "kind": l["linkinfo"]["info_kind"], "mtu": l["mtu"],
                    "flags": admin_flags(&l["flags"]), "master": l["master"],
                    "address": l["address"], "ifalias": l["ifalias"],
                })
            })
            .collect();
        json!({
            "links": links,
            "addresses": sorted_addresses(json(&["-j", "-4", "address", "show"])),
            "routes": json(&["-j", "-4", "route", "show", "table", "all"]),
        })
    }
}

/// What the test compares: every file under the root but `/var/run` (the
/// namespaces' mounts) with its mode, owner and bytes; the named namespaces
/// and hostaction's marks of them; each namespace's links, addresses and
/// routes.
#[derive(Debug, PartialEq, Eq)]
struct State {
    files: BTreeMap<String, String>,
    netns: Vec<String>,
    marks: Vec<String>,
    net: BTreeMap<String, Value>,
}

fn tree(root: &Path, dir: &Path, out: &mut BTreeMap<String, String>) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        let rel = path.strip_prefix(root).unwrap().display().to_string();
        if rel == "var/run" {
            continue;
        }
        let meta = std::fs::symlink_metadata(&path).unwrap();
        let who = format!("{:o} {}:{}", meta.mode(), meta.uid(), meta.gid());
        let what = if meta.is_symlink() {
            format!(
                "link {who} -> {}",
                std::fs::read_link(&path).unwrap().display()
            )
        } else if meta.is_dir() {
            tree(root, &path, out);
            format!("dir {who}")
        } else {
            let bytes = std::fs::read(&path).unwrap();
            format!("file {who} {:?}", String::from_utf8_lossy(&bytes))
        };
        out.insert(rel, what);
    }
}

/// `ip -j address show` with each link's addresses in address order (an
/// address added back comes last; the order of addresses of different
/// subnets means nothing), without the IPv4 broadcast `ip` sets and the
/// network capability neither sets nor journals.
/// A link's flags without those the kernel derives from its carrier
/// (`NO-CARRIER`, `LOWER_UP`, ...), which change on their own some time
/// after a link is made or a port leaves a bridge: what a run sets is the
/// rest (`UP` among them).
fn admin_flags(flags: &Value) -> Value {
    const CARRIER: &[&str] = &["NO-CARRIER", "LOWER_UP", "DORMANT", "M-DOWN"];
    let kept = flags.as_array().into_iter().flatten();
    Value::Array(
        kept.filter(|f| !f.as_str().is_some_and(|f| CARRIER.contains(&f)))
            .cloned()
            .collect(),
    )
}

fn sorted_addresses(mut v: Value) -> Value {
    for link in v.as_array_mut().into_iter().flatten() {
        if let Some(link) = link.as_object_mut() {
            let flags = link.get("flags").map(admin_flags);
            if let Some(flags) = flags {
                link.insert("flags".into(), flags);
            }
            link.remove("operstate");
        }
        if let Some(addrs) = link["addr_info"].as_array_mut() {
            addrs.sort_by_key(|a| a["local"].to_string());
            for a in addrs {
                if let Some(a) = a.as_object_mut() {
                    a.remove("broadcast");
                }
            }
        }
    }
    v
}

fn json_of(out: &Output) -> Value {
    serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("not JSON ({e}): {}", output_text(out)))
}

/// Every effect of every recovered run is as before it.
fn assert_all_restored(recovered: &[Value], what: &str) {
    for run in recovered {
        for e in run["entries"].as_array().unwrap() {
            assert!(
                e["result"] == "restored" || e["result"] == "unchanged",
                "{what}: {e}"
            );
        }
    }
}

#[test]
fn a_run_killed_at_any_mutation_is_recovered_exactly_to_before() {
    let s = Scratch::new();
    let before = s.state();
    let mut mutations = 0;
    for when in ["before", "after"] {
        for n in 1.. {
            assert!(n < 100, "the run never completed");
            let crash = format!("{when}:{n}");
            let Some(report) = s.run(Some(&crash)) else {
                if when == "after" {
                    assert_ne!(
                        s.state(),
                        before,
                        "{crash}: killed mid-run, the host changed"
                    );
                }
                let recovered = s.recover();
                assert_eq!(recovered.len(), 1, "{crash}: {recovered:#?}");
                assert_all_restored(&recovered, &crash);
                assert_eq!(s.state(), before, "{crash}: recovered to before the run");
                assert!(
                    s.recover().is_empty(),
                    "{crash}: recovering twice is a no-op"
                );
                assert_eq!(s.state(), before, "{crash}: recovered twice");
                continue;
            };
            // Past the last mutation: the run completed.
            assert_eq!(
                report["report"]["status"], "succeeded",
                "{crash}: {report:#}"
            );
            let after = s.state();
            assert_ne!(after, before);
            assert!(s.recover().is_empty(), "a complete run is not recovered");
            assert_eq!(s.state(), after);
            // Undone, the host is as before (and ready for the next round).
            let run_id = report["report"]["runId"].as_str().unwrap().to_owned();
            let out = s.cli(&["undo", run_id.as_str()], None).output().unwrap();
            assert!(out.status.success(), "{}", output_text(&out));
            assert_eq!(s.state(), before, "undone");
            mutations = n - 1;
            break;
        }
    }
    assert!(
        mutations >= 14,
        "each op changed the host: {mutations} mutations"
    );

    // A recover killed midway (at whatever point: the kill is not timed to
    // a mutation) leaves a journal the next recover finishes.
    for delay_ms in [0, 5, 20, 50, 100] {
        assert!(s.run(Some(&format!("after:{mutations}"))).is_none());
        let mut recover = s
            .cli(&["recover"], None)
            .stdout(std::process::Stdio::null())
            .spawn()
            .unwrap();
        std::thread::sleep(Duration::from_millis(delay_ms));
        let _ = recover.kill();
        let _ = recover.wait();
        let recovered = s.recover();
        assert!(recovered.len() <= 1, "{recovered:#?}");
        assert_all_restored(&recovered, &format!("recover killed after {delay_ms} ms"));
        assert_eq!(
            s.state(),
            before,
            "recover killed after {delay_ms} ms, recovered again"
        );
    }
}
