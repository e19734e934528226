//! Host-level tests of the `network` capability: the host functions called
//! on a view, without any Wasm guest and without netlink. Each call here is
//! refused by its argument and scope checks, or answered from plan mode's
//! record, before a request could reach the kernel (the host root is an
//! empty temporary directory: there is no namespace to enter). What needs
//! netlink runs end to end in `tests/tests/all/network.rs`.

use std::sync::Arc;

use super::*;
use crate::bindings::hostaction::host::network::{Host as _, Route, VethSpec};
use crate::capabilities::testing::{self, effects, past_deadline};

const GRANT: &str = r#"
network:
  netns: ["t-*"]
  interfaces: ["br-*", "ve-*"]
  kinds: [bridge, veth]
  addresses: [10.0.0.0/8]
  routes: [10.0.0.0/8]
"#;

struct Fixture {
    root: tempfile::TempDir,
    ctx: NetworkCtx,
    shared: Shared,
}

impl Fixture {
    fn new(grant: &str, policy: Option<&str>, mode: RunMode) -> Self {
        let root = tempfile::tempdir().expect("tempdir");
        let host_root = Arc::new(HostRoot::open(root.path()).expect("host root"));
        Self {
            ctx: NetworkCtx::new(testing::grant(grant, policy), host_root),
            root,
            shared: testing::shared(mode),
        }
    }

    fn apply(grant: &str) -> Self {
        Self::new(grant, None, RunMode::Apply)
    }

    fn plan() -> Self {
        Self::new(GRANT, None, RunMode::Plan)
    }

    fn view(&mut self) -> NetworkView<'_> {
        NetworkView {
            ctx: &mut self.ctx,
            shared: &mut self.shared,
        }
    }
}

fn bridge() -> LinkKind {
    LinkKind::Bridge
}

fn settings() -> LinkSettings {
    LinkSettings {
        mtu: None,
        up: None,
        master: None,
    }
}

fn ns(name: &str) -> Option<String> {
    Some(name.to_owned())
}

fn denied<T: std::fmt::Debug>(result: Result<T, CapError>) -> String {
    match result {
        Err(CapError::PermissionDenied(m)) => m,
        other => panic!("expected permission-denied, got {other:?}"),
    }
}

fn invalid<T: std::fmt::Debug>(result: Result<T, CapError>) -> String {
    match result {
        Err(CapError::InvalidArgument(m)) => m,
        other => panic!("expected invalid-argument, got {other:?}"),
    }
}

// Scope checks.

#[test]
fn grant_without_a_network_section_is_denied() {
    let mut f = Fixture::apply("files: {read: [/etc]}");
    let why = denied(f.view().list_netns());
    assert!(why.contains("no network section"), "{why}");
}

#[test]
fn interface_outside_the_patterns_is_denied() {
    let mut f = Fixture::apply(GRANT);
    let why = denied(
        f.view()
            .ensure_link(ns("t-a"), "eth0".into(), bridge(), settings()),
    );
    assert!(why.contains("network.interfaces"), "{why}");
}

#[test]
fn link_kind_not_granted_is_denied() {
    let mut f = Fixture::apply(GRANT);
    let why = denied(
        f.view()
            .ensure_link(ns("t-a"), "br-0".into(), LinkKind::Dummy, settings()),
    );
    assert!(why.contains("network.kinds"), "{why}");
}

#[test]
fn veth_peer_outside_the_patterns_is_denied() {
    let mut f = Fixture::apply(GRANT);
    let kind = LinkKind::Veth(VethSpec {
        peer_name: "eth9".into(),
        peer_netns: None,
    });
    let why = denied(
        f.view()
            .ensure_link(ns("t-a"), "ve-0".into(), kind, settings()),
    );
    assert!(why.contains("\"eth9\""), "{why}");
}

#[test]
fn master_outside_the_patterns_is_denied() {
    let mut f = Fixture::apply(GRANT);
    let with_master = LinkSettings {
        master: Some("docker0".into()),
        ..settings()
    };
    denied(
        f.view()
            .ensure_link(ns("t-a"), "br-0".into(), bridge(), with_master),
    );
}

#[test]
fn namespace_outside_the_patterns_is_denied() {
    let mut f = Fixture::apply(GRANT);
    denied(f.view().ensure_netns("prod".into()));
    denied(
        f.view()
            .ensure_link(ns("prod"), "br-0".into(), bridge(), settings()),
    );
}

#[test]
fn host_namespace_is_denied_unless_granted_by_name() {
    let mut f = Fixture::apply(GRANT);
    let why = denied(
        f.view()
            .ensure_link(None, "br-0".into(), bridge(), settings()),
    );
    assert!(why.contains("\"host\""), "{why}");
}

#[test]
fn node_policy_narrows_the_grant() {
    let policy = "network: {netns: [t-a], interfaces: [br-*], kinds: [bridge]}";
    let mut f = Fixture::new(GRANT, Some(policy), RunMode::Plan);
    let why = denied(f.view().ensure_netns("t-b".into()));
    assert!(why.contains("node policy"), "{why}");
    let veth = LinkKind::Veth(VethSpec {
        peer_name: "ve-1".into(),
        peer_netns: None,
    });
    denied(
        f.view()
            .ensure_link(ns("t-a"), "ve-0".into(), veth, settings()),
    );
}

#[test]
fn address_outside_the_granted_ranges_is_denied() {
    let mut f = Fixture::apply(GRANT);
    let why = denied(
        f.view()
            .ensure_address(ns("t-a"), "br-0".into(), "192.168.1.1/24".into()),
    );
    assert!(why.contains("network.addresses"), "{why}");
}

#[test]
fn address_wider_than_its_granted_range_is_denied() {
    let mut f = Fixture::apply(GRANT);
    denied(
        f.view()
            .ensure_address(ns("t-a"), "br-0".into(), "10.0.0.1/7".into()),
    );
}

#[test]
fn default_route_is_denied_unless_granted() {
    let mut f = Fixture::apply(GRANT);
    let route = Route {
        destination: "default".into(),
        gateway: Some("10.0.0.1".into()),
        device: Some("br-0".into()),
        metric: None,
    };
    denied(f.view().ensure_route(ns("t-a"), route));
}

#[test]
fn route_without_a_device_is_an_invalid_argument() {
    let mut f = Fixture::apply(GRANT);
    let route = Route {
        destination: "10.1.0.0/16".into(),
        gateway: None,
        device: None,
        metric: None,
    };
    let why = invalid(f.view().ensure_route(ns("t-a"), route));
    assert!(why.contains("must name its device"), "{why}");
}

// Hostile arguments, refused before the scopes are consulted.

#[test]
fn hostile_interface_name_is_an_invalid_argument() {
    let mut f = Fixture::apply(GRANT);
    invalid(
        f.view()
            .ensure_link(ns("t-a"), "br-0/../x".into(), bridge(), settings()),
    );
    invalid(f.view().delete_link(ns("t-a"), "br-0-sixteen-chars".into()));
}

#[test]
fn hostile_namespace_name_is_an_invalid_argument() {
    let mut f = Fixture::apply(GRANT);
    invalid(f.view().ensure_netns("t-../../etc".into()));
    invalid(
        f.view()
            .ensure_link(ns("t-a/b"), "br-0".into(), bridge(), settings()),
    );
}

#[test]
fn address_without_a_prefix_length_is_an_invalid_argument() {
    let mut f = Fixture::apply(GRANT);
    invalid(
        f.view()
            .ensure_address(ns("t-a"), "br-0".into(), "10.0.0.1".into()),
    );
}

#[test]
fn mtu_out_of_range_is_an_invalid_argument() {
    let mut f = Fixture::apply(GRANT);
    let huge = LinkSettings {
        mtu: Some(1 << 20),
        ..settings()
    };
    invalid(
        f.view()
            .ensure_link(ns("t-a"), "br-0".into(), bridge(), huge),
    );
}

#[test]
fn call_after_the_deadline_traps() {
    let mut f = Fixture::apply(GRANT);
    f.shared = past_deadline(RunMode::Apply);
    let err = f
        .view()
        .ensure_netns("t-a".into())
        .expect_err("past the deadline");
    assert!(testing::is_deadline(&err), "{err:?}");
}

#[test]
fn missing_named_namespace_is_not_found_without_entering_anything() {
    let mut f = Fixture::apply(GRANT);
    match f.view().list_links(ns("t-a")) {
        Err(CapError::NotFound(m)) => assert!(m.contains("t-a"), "{m}"),
        other => panic!("expected not-found, got {other:?}"),
    }
}

// Plan mode: what builds on something only planned is answered from the plan.

#[test]
fn plan_mode_namespace_is_planned_and_made_nowhere() {
    let mut f = Fixture::plan();
    assert!(f.view().ensure_netns("t-a".into()).expect("plan"));
    assert!(!f.view().ensure_netns("t-a".into()).expect("again"));
    assert!(!f.root.path().join(NETNS_DIR).exists());
    assert_eq!(f.view().list_netns().expect("list"), ["t-a"]);
    let effects = effects(&mut f.shared);
    assert_eq!(effects.len(), 1);
    assert_eq!(
        (
            effects[0].action,
            effects[0].target.as_str(),
            effects[0].applied
        ),
        ("ensure-netns", "netns t-a", false)
    );
}

#[test]
fn plan_mode_link_in_a_planned_namespace_is_planned_and_listed() {
    let mut f = Fixture::plan();
    let mut view = f.view();
    view.ensure_netns("t-a".into()).expect("netns");
    let up = LinkSettings {
        mtu: Some(1400),
        up: Some(true),
        master: None,
    };
    assert!(
        view.ensure_link(ns("t-a"), "br-0".into(), bridge(), up.clone())
            .expect("link")
    );
    assert!(
        !view
            .ensure_link(ns("t-a"), "br-0".into(), bridge(), up)
            .expect("again")
    );
    let links = view.list_links(ns("t-a")).expect("list");
    assert_eq!(links.len(), 1);
    assert_eq!(
        (
            links[0].name.as_str(),
            links[0].mtu,
            links[0].up,
            links[0].owned
        ),
        ("br-0", 1400, true, true)
    );
}

#[test]
fn plan_mode_address_and_route_on_a_planned_link_are_planned_once() {
    let mut f = Fixture::plan();
    let mut view = f.view();
    view.ensure_netns("t-a".into()).expect("netns");
    view.ensure_link(ns("t-a"), "br-0".into(), bridge(), settings())
        .expect("link");
    let addr = || "10.1.0.1/24".to_owned();
    assert!(
        view.ensure_address(ns("t-a"), "br-0".into(), addr())
            .expect("address")
    );
    assert!(
        !view
            .ensure_address(ns("t-a"), "br-0".into(), addr())
            .expect("again")
    );
    let route = || Route {
        destination: "10.2.0.0/16".into(),
        gateway: None,
        device: Some("br-0".into()),
        metric: None,
    };
    assert!(view.ensure_route(ns("t-a"), route()).expect("route"));
    assert!(view.remove_route(ns("t-a"), route()).expect("remove"));
    assert!(!view.remove_route(ns("t-a"), route()).expect("removed"));
    let actions: Vec<_> = effects(&mut f.shared)
        .into_iter()
        .map(|e| e.action)
        .collect();
    assert_eq!(
        actions,
        [
            "ensure-netns",
            "ensure-link",
            "ensure-address",
            "ensure-route",
            "remove-route"
        ]
    );
}

#[test]
fn plan_mode_deleting_a_planned_namespace_forgets_it() {
    let mut f = Fixture::plan();
    let mut view = f.view();
    view.ensure_netns("t-a".into()).expect("netns");
    view.ensure_link(ns("t-a"), "br-0".into(), bridge(), settings())
        .expect("link");
    assert!(view.delete_netns("t-a".into()).expect("delete"));
    assert!(view.list_netns().expect("list").is_empty());
    assert!(!view.delete_netns("t-a".into()).expect("again"));
}

#[test]
fn plan_mode_scope_is_checked_as_in_apply_mode() {
    let mut f = Fixture::plan();
    let mut view = f.view();
    view.ensure_netns("t-a".into()).expect("netns");
    denied(view.ensure_link(ns("t-a"), "eth0".into(), bridge(), settings()));
    denied(view.ensure_address(ns("t-a"), "br-0".into(), "172.16.0.1/24".into()));
}

#[test]
fn plan_mode_record_past_its_budget_ends_the_run() {
    let mut f = Fixture::plan();
    let mut view = f.view();
    let ended = (0..crate::capabilities::PLAN_BYTES)
        .map(|i| view.ensure_netns(format!("t-{i:0>12}")))
        .find_map(Result::err)
        .expect("the plan's budget ends");
    assert!(testing::is_limit(&ended), "{ended:?}");
}

// Through netlink: these need root, and make their namespaces under their own
// host root (never the machine's `/var/run/netns`).

/// Detaches, pass or fail, the namespace mounts a test made under its host
/// root, and the directory's own mount (made shared as `ip netns` does).
struct Unmount(std::path::PathBuf);

impl Drop for Unmount {
    fn drop(&mut self) {
        let flags = rustix::mount::UnmountFlags::DETACH;
        if let Ok(entries) = std::fs::read_dir(&self.0) {
            for entry in entries.flatten() {
                let _ = rustix::mount::unmount(entry.path(), flags);
            }
        }
        let _ = rustix::mount::unmount(&self.0, flags);
    }
}

impl Fixture {
    fn unmount_at_end(&self) -> Unmount {
        Unmount(self.root.path().join(NETNS_DIR))
    }
}

#[test]
fn namespace_and_bridge_are_made_once_and_the_namespace_deleted() {
    let mut f = Fixture::apply(GRANT);
    let _unmount = f.unmount_at_end();
    let mut view = f.view();
    assert!(view.ensure_netns("t-a".into()).expect("netns"));
    assert!(!view.ensure_netns("t-a".into()).expect("again"));
    let up = LinkSettings {
        mtu: Some(1400),
        up: Some(true),
        master: None,
    };
    assert!(
        view.ensure_link(ns("t-a"), "br-0".into(), bridge(), up.clone())
            .expect("bridge")
    );
    assert!(
        !view
            .ensure_link(ns("t-a"), "br-0".into(), bridge(), up)
            .expect("again")
    );
    let links = view.list_links(ns("t-a")).expect("links");
    let br = links
        .iter()
        .find(|l| l.name == "br-0")
        .expect("br-0 listed");
    assert_eq!((br.mtu, br.up, br.owned), (1400, true, true));
    assert!(view.delete_netns("t-a".into()).expect("delete"));
    assert!(view.list_netns().expect("list").is_empty());
    let applied: Vec<_> = effects(&mut f.shared)
        .into_iter()
        .map(|e| (e.action, e.applied))
        .collect();
    assert_eq!(
        applied,
        [
            ("ensure-netns", true),
            ("ensure-link", true),
            ("delete-netns", true)
        ]
    );
}

#[test]
fn owned_only_grant_does_not_delete_a_namespace_hostaction_did_not_mark() {
    let owned_only = format!("{GRANT}  ownedOnly: true\n");
    let mut f = Fixture::apply(&owned_only);
    let _unmount = f.unmount_at_end();
    f.view().ensure_netns("t-a".into()).expect("netns");
    std::fs::remove_file(f.root.path().join(OWNED_NETNS_DIR).join("t-a")).expect("mark");
    let why = denied(f.view().delete_netns("t-a".into()));
    assert!(why.contains("ownedOnly"), "{why}");
    assert_eq!(f.view().list_netns().expect("list"), ["t-a"]);
}

#[test]
fn name_bound_to_the_hosts_own_namespace_is_denied_without_host() {
    // `ip netns attach t-h 1`: a name for the host's namespace.
    let mut f = Fixture::apply(GRANT);
    let _unmount = f.unmount_at_end();
    let dir = f.root.path().join(NETNS_DIR);
    std::fs::create_dir_all(&dir).expect("netns dir");
    std::fs::write(dir.join("t-h"), b"").expect("mount point");
    rustix::mount::mount_bind(PROCESS_NETNS, dir.join("t-h")).expect("bind the host's netns");
    let why = denied(f.view().list_links(ns("t-h")));
    assert!(why.contains("host's own namespace"), "{why}");
    denied(
        f.view()
            .ensure_link(ns("t-h"), "br-0".into(), bridge(), settings()),
    );
}
