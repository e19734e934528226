//! Undoing network effects against the real kernel, as root: each test makes
//! its own named namespace under a scratch host root, makes a change through
//! the capability (which journals its undo to a temporary journal), reads
//! the journal back and undoes it. The observer is `ip -j` run with
//! `nsenter` in the namespace: links with their attributes, IPv4 addresses
//! and routes (every table) must be exactly as before the change.

// Test code: a failed unwrap is a failed test, with its message.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::path::PathBuf;
use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use serde_json::Value;

use super::*;
use crate::bindings::hostaction::host::network::{Host as _, Route, VethSpec};
use crate::capabilities::{Backends, testing};
use crate::undo::journal::{JournalWriter, Record, RunInfo};
use crate::undo::{JournalMode, UndoCtx, Undone};

const GRANT: &str = r#"
network:
  netns: ["ut-*"]
  interfaces: ["d0", "d1", "br0"]
  kinds: [bridge, veth]
  addresses: [10.0.0.0/8]
  routes: [10.0.0.0/8]
"#;

struct Fixture {
    root: tempfile::TempDir,
    backends: Backends,
    ctx: NetworkCtx,
    shared: Shared,
    /// The test's namespace, under the root's /var/run/netns.
    ns: String,
}

fn shared() -> Shared {
    let run = RunInfo {
        run_id: "undo-test".into(),
        digest: String::new(),
        owner: None,
        started_ms: 0,
        host: None,
    };
    Shared::new(
        RunMode::Apply,
        1 << 20,
        Instant::now() + Duration::from_secs(60),
        64 << 20,
        Some(JournalWriter::new(None, run, JournalMode::Required)),
    )
}

impl Fixture {
    fn new() -> Self {
        static NEXT: AtomicUsize = AtomicUsize::new(0);
        let root = tempfile::tempdir().unwrap();
        let ns = format!(
            "ut-{}-{}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed)
        );
        let dir = root.path().join(NETNS_DIR);
        assert!(netlink::ensure_netns(&dir, &ns).unwrap());
        let host_root = Arc::new(HostRoot::open(root.path()).unwrap());
        let f = Self {
            backends: Backends::open(root.path(), None).unwrap(),
            ctx: NetworkCtx::new(testing::grant(GRANT, None), host_root),
            shared: shared(),
            root,
            ns,
        };
        f.ip(&["link", "set", "lo", "up"]);
        f
    }

    fn view(&mut self) -> NetworkView<'_> {
        NetworkView {
            ctx: &mut self.ctx,
            shared: &mut self.shared,
        }
    }

    fn netns(&self) -> Option<String> {
        Some(self.ns.clone())
    }

    fn path(&self) -> PathBuf {
        self.root.path().join(NETNS_DIR).join(&self.ns)
    }

    /// `ip ARGS` in the test's namespace; must succeed.
    fn ip(&self, args: &[&str]) -> String {
        let out = Command::new("nsenter")
            .arg(format!("--net={}", self.path().display()))
            .arg("ip")
            .args(args)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "ip {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// Links (name, kind, mtu, flags, master, address, alias), IPv4
    /// addresses and IPv4 routes of every table, as `ip -j` shows them.
    fn dump(&self) -> Value {
        let json = |args: &[&str]| -> Value { serde_json::from_str(&self.ip(args)).unwrap() };
        let links: Vec<Value> = json(&["-j", "-d", "link", "show"])
            .as_array()
            .unwrap()
            .iter()
            .map(|l| {
                serde_json::json!({
                    "ifname": l["ifname"], "ifindex": l["ifindex"],
                    "kind": l["linkinfo"]["info_kind"], "mtu": l["mtu"],
                    "flags": l["flags"], "master": l["master"],
                    "address": l["address"], "ifalias": l["ifalias"],
                })
            })
            .collect();
        serde_json::json!({
            "links": links,
            "addresses": sorted_addresses(json(&["-j", "-4", "address", "show"])),
            "routes": json(&["-j", "-4", "route", "show", "table", "all"]),
        })
    }

    /// The undo records journaled so far (oldest first); the run's journal
    /// starts over.
    fn journaled(&mut self) -> Vec<Undo> {
        let effects = std::mem::replace(&mut self.shared, shared()).effects;
        let Some(read) = effects.finish().1.and_then(|j| j.into_read().unwrap()) else {
            return Vec::new();
        };
        read.effects
            .into_iter()
            .filter_map(|(r, _, _)| match r {
                Record::Effect { undo, .. } => Some(undo),
                _ => None,
            })
            .collect()
    }

    /// Undoes `undos` newest first; what each came to.
    fn undo(&self, undos: &[Undo]) -> Vec<Undone> {
        let ctx = UndoCtx {
            host: &self.backends,
            deadline: Instant::now() + Duration::from_secs(20),
        };
        undos.iter().rev().map(|u| u.undo(&ctx, &[])).collect()
    }

    /// Applies `change`, undoes what it journaled, and checks that the host
    /// is as before, and that undoing again changes nothing.
    fn round_trip(&mut self, change: impl FnOnce(&mut NetworkView<'_>) -> Result<bool, CapError>) {
        let before = self.dump();
        assert!(
            change(&mut self.view()).unwrap(),
            "the change changed nothing"
        );
        assert_ne!(self.dump(), before, "the change is visible");
        let undos = self.journaled();
        assert_eq!(undos.len(), 1, "{undos:?}");
        assert_eq!(self.undo(&undos), [Undone::Restored]);
        assert_eq!(self.dump(), before);
        assert_eq!(self.undo(&undos), [Undone::Unchanged], "undone twice");
        assert_eq!(self.dump(), before);
    }

    /// Applies `change`, lets `meddle` change the target, and checks that
    /// the undo is a conflict that leaves the host as it was.
    fn conflict(
        &mut self,
        change: impl FnOnce(&mut NetworkView<'_>) -> Result<bool, CapError>,
        meddle: &[&str],
    ) -> String {
        assert!(change(&mut self.view()).unwrap());
        for command in meddle {
            self.ip(&command.split_whitespace().collect::<Vec<_>>());
        }
        let undos = self.journaled();
        let after = self.dump();
        let undone = self.undo(&undos);
        assert_eq!(self.dump(), after, "a conflict leaves the host alone");
        match undone.as_slice() {
            [Undone::Conflict(why)] => why.clone(),
            other => panic!("expected one conflict, got {other:?}"),
        }
    }
}

/// `ip -j address show` with each link's addresses in address order (an
/// address added back comes last), without the IPv4 broadcast `ip` sets
/// and the capability does not (not journaled, see [`undo`]).
fn sorted_addresses(mut v: Value) -> Value {
    for link in v.as_array_mut().into_iter().flatten() {
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

impl Drop for Fixture {
    fn drop(&mut self) {
        let dir = self.root.path().join(NETNS_DIR);
        for entry in std::fs::read_dir(&dir).into_iter().flatten().flatten() {
            let _ = netlink::delete_netns(&dir, &entry.file_name().to_string_lossy());
        }
        let _ = Command::new("umount").arg("-l").arg(&dir).status();
    }
}

/// The veth `d0` with its peer `d1` beside it (the kernel here may lack
/// the dummy kind).
fn veth() -> LinkKind {
    LinkKind::Veth(VethSpec {
        peer_name: "d1".into(),
        peer_netns: None,
    })
}

fn settings(mtu: Option<u32>, up: Option<bool>, master: Option<&str>) -> LinkSettings {
    LinkSettings {
        mtu,
        up,
        master: master.map(str::to_owned),
    }
}

fn route(dest: &str, gw: &str) -> Route {
    Route {
        destination: dest.into(),
        gateway: Some(gw.into()),
        device: Some("d0".into()),
        metric: None,
    }
}

/// The veth `d0` (peer `d1`), up, with 10.1.0.1/24 (made by the test,
/// not the run).
fn with_d0(f: &Fixture) {
    f.ip(&["link", "add", "d0", "type", "veth", "peer", "name", "d1"]);
    f.ip(&["link", "set", "d1", "up"]);
    f.ip(&["link", "set", "d0", "up"]);
    f.ip(&["address", "add", "10.1.0.1/24", "dev", "d0"]);
}

#[test]
fn a_created_link_is_deleted() {
    let mut f = Fixture::new();
    let ns = f.netns();
    f.round_trip(|v| {
        v.ensure_link(
            ns,
            "br0".into(),
            LinkKind::Bridge,
            settings(Some(1400), Some(true), None),
        )
    });
}

#[test]
fn a_created_link_someone_changed_is_a_conflict() {
    let mut f = Fixture::new();
    let ns = f.netns();
    let why = f.conflict(
        |v| {
            v.ensure_link(
                ns,
                "br0".into(),
                LinkKind::Bridge,
                settings(Some(1400), Some(true), None),
            )
        },
        &["link set br0 mtu 1300"],
    );
    assert!(why.contains("mtu is 1300, the run set 1400"), "{why}");
}

#[test]
fn changed_link_settings_are_set_back() {
    let mut f = Fixture::new();
    // The bridge's address is fixed: a bridge takes its first port's MAC
    // otherwise, and keeps it when the port leaves.
    f.ip(&[
        "link",
        "add",
        "br0",
        "address",
        "02:00:00:00:00:01",
        "type",
        "bridge",
    ]);
    f.ip(&["link", "add", "d0", "type", "veth", "peer", "name", "d1"]);
    let ns = f.netns();
    f.round_trip(|v| {
        v.ensure_link(
            ns,
            "d0".into(),
            veth(),
            settings(Some(1400), Some(true), Some("br0")),
        )
    });
}

#[test]
fn changed_link_settings_someone_changed_again_are_a_conflict() {
    let mut f = Fixture::new();
    f.ip(&["link", "add", "d0", "type", "veth", "peer", "name", "d1"]);
    let ns = f.netns();
    let why = f.conflict(
        |v| {
            v.ensure_link(
                ns,
                "d0".into(),
                veth(),
                settings(Some(1400), Some(true), None),
            )
        },
        &["link set d0 mtu 1300"],
    );
    assert!(
        why.contains("mtu is 1300, the run set 1400 (it was 1500)"),
        "{why}"
    );
}

#[test]
fn an_added_address_is_removed_and_a_removed_one_added_back() {
    let mut f = Fixture::new();
    with_d0(&f);
    let ns = f.netns();
    f.round_trip(|v| v.ensure_address(ns.clone(), "d0".into(), "10.1.1.1/24".into()));
    f.round_trip(|v| v.remove_address(ns, "d0".into(), "10.1.0.1/24".into()));
}

#[test]
fn an_added_address_someone_changed_is_a_conflict() {
    let mut f = Fixture::new();
    with_d0(&f);
    let ns = f.netns();
    let why = f.conflict(
        |v| v.ensure_address(ns, "d0".into(), "10.1.1.1/24".into()),
        &[
            "address del 10.1.1.1/24 dev d0",
            "address add 10.1.1.1/16 dev d0",
        ],
    );
    assert!(why.contains("10.1.1.1 is on d0 as /16"), "{why}");
}

#[test]
fn an_added_route_is_removed_and_a_removed_one_added_back() {
    let mut f = Fixture::new();
    with_d0(&f);
    f.ip(&[
        "route",
        "add",
        "10.8.0.0/16",
        "via",
        "10.1.0.254",
        "metric",
        "7",
    ]);
    let ns = f.netns();
    f.round_trip(|v| v.ensure_route(ns.clone(), route("10.9.0.0/16", "10.1.0.254")));
    f.round_trip(|v| v.remove_route(ns, route("10.8.0.0/16", "10.1.0.254")));
}

#[test]
fn a_removed_route_someone_replaced_is_a_conflict() {
    let mut f = Fixture::new();
    with_d0(&f);
    f.ip(&["route", "add", "10.8.0.0/16", "via", "10.1.0.254"]);
    let ns = f.netns();
    let why = f.conflict(
        |v| v.remove_route(ns, route("10.8.0.0/16", "10.1.0.254")),
        &["route add 10.8.0.0/16 via 10.1.0.253"],
    );
    assert!(why.contains("another gateway or device"), "{why}");
}

#[test]
fn a_created_namespace_is_deleted_unless_someone_put_links_in_it() {
    let mut f = Fixture::new();
    let dir = f.root.path().join(NETNS_DIR);
    let name = format!("{}-new", f.ns);
    let before = netlink::list_netns(&dir).unwrap();
    assert!(f.view().ensure_netns(name.clone()).unwrap());
    let undos = f.journaled();
    assert_eq!(f.undo(&undos), [Undone::Restored]);
    assert_eq!(netlink::list_netns(&dir).unwrap(), before);
    assert_eq!(f.undo(&undos), [Undone::Unchanged], "undone twice");

    assert!(f.view().ensure_netns(name.clone()).unwrap());
    let undos = f.journaled();
    let out = Command::new("nsenter")
        .arg(format!("--net={}", dir.join(&name).display()))
        .args([
            "ip", "link", "add", "d1", "type", "veth", "peer", "name", "d2",
        ])
        .status()
        .unwrap();
    assert!(out.success());
    match f.undo(&undos).as_slice() {
        [Undone::Conflict(why)] => assert!(why.contains("d1"), "{why}"),
        other => panic!("expected a conflict, got {other:?}"),
    }
    assert!(netlink::is_netns(&dir.join(&name)).unwrap(), "left alone");
}

#[test]
fn deleting_a_link_or_a_namespace_is_irreversible_and_says_what_it_was() {
    let mut f = Fixture::new();
    with_d0(&f);
    let ns = f.netns();
    assert!(f.view().delete_link(ns, "d0".into()).unwrap());
    let name = f.ns.clone();
    assert!(f.view().delete_netns(name).unwrap());
    let undos = f.journaled();
    let undone = f.undo(&undos);
    match undone.as_slice() {
        [Undone::Irreversible(netns), Undone::Irreversible(link)] => {
            assert!(netns.contains("was deleted"), "{netns}");
            assert!(link.contains("link d0 (veth, mtu 1500, up"), "{link}");
        }
        other => panic!("expected two irreversible, got {other:?}"),
    }
}

#[test]
fn a_crash_between_journal_and_change_undoes_to_unchanged() {
    // The journal is written before the change: what the run journaled but
    // never made is found as before.
    let f = Fixture::new();
    let undo = Undo::Network(undo::NetworkUndo::LinkCreated {
        netns: f.netns(),
        name: "br0".into(),
        link_kind: "bridge".into(),
        mtu: None,
        up: None,
        master: None,
    });
    assert_eq!(f.undo(&[undo]), [Undone::Unchanged]);
}

#[test]
fn a_journaled_namespace_name_cannot_leave_the_host_root() {
    let f = Fixture::new();
    let undo = Undo::Network(undo::NetworkUndo::NetnsCreated {
        name: "../../../proc/1/ns/net".into(),
    });
    match f.undo(&[undo]).as_slice() {
        [Undone::Failed(why)] => assert!(why.contains("invalid argument"), "{why}"),
        other => panic!("expected a refusal, got {other:?}"),
    }
}
