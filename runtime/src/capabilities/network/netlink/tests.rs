//! The netlink backend of the network capability against the real kernel.
//!
//! Needs root (this machine and CI run as root). Each test makes its own
//! network namespaces, with unique names, in its own temp directory through
//! the backend's `ensure_netns`, and a guard deletes them even when the test
//! fails, so tests run in parallel. `nsenter --net=FILE ip -j ...` is the
//! independent observer (`ip -n` only knows /var/run/netns).

// Test code: a failed unwrap is a failed test, with its message.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use super::{
    Call, IpNetwork, LinkSettings, LinkSpec, MacvlanMode, Netns, Route, delete_link, delete_netns,
    ensure_address, ensure_link, ensure_netns, ensure_route, list_links, list_netns,
    remove_address, remove_route,
};
use crate::capabilities::CapError;
use serde_json::Value;

/// Network namespaces of one test, deleted when the test ends (pass or fail).
struct Namespaces {
    dir: tempfile::TempDir,
    names: Vec<String>,
}

impl Namespaces {
    fn new() -> Self {
        Namespaces {
            dir: tempfile::tempdir().unwrap(),
            names: Vec::new(),
        }
    }

    /// Makes one more namespace and returns its file.
    fn add(&mut self) -> PathBuf {
        static NEXT: AtomicUsize = AtomicUsize::new(0);
        let name = format!(
            "ha-test-{}-{}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed)
        );
        assert!(ensure_netns(self.dir.path(), &name).unwrap());
        self.names.push(name.clone());
        self.dir.path().join(name)
    }
}

impl Drop for Namespaces {
    fn drop(&mut self) {
        for name in &self.names {
            let _ = delete_netns(self.dir.path(), name);
        }
        unmount(self.dir.path());
    }
}

/// Detaches the bind mount `ensure_netns` makes of a namespace directory
/// (as `ip netns add` does), so the temp directory can be removed.
fn unmount(dir: &Path) {
    let _ = Command::new("umount").arg("-l").arg(dir).status();
}

fn deadline() -> Instant {
    Instant::now() + Duration::from_secs(20)
}

fn ns(path: &Path) -> Netns<'_> {
    Netns(Some(path))
}

/// A call in the namespace file `path` that makes its changes.
fn call(path: &Path) -> Call<'_> {
    Call::apply(ns(path), deadline())
}

/// `ensure_link` in `path`; whether anything changed.
fn ensure(
    path: &Path,
    name: &str,
    spec: &LinkSpec,
    settings: &LinkSettings,
) -> Result<bool, CapError> {
    ensure_link(call(path), name, spec, settings).map(|changes| !changes.is_empty())
}

fn net(s: &str) -> IpNetwork {
    s.parse().unwrap()
}

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

/// Runs `ip ARGS` inside the namespace file `ns`; returns its success and stdout.
fn ip_in(ns: &Path, args: &[&str]) -> (bool, String) {
    let out = Command::new("nsenter")
        .arg(format!("--net={}", ns.display()))
        .arg("ip")
        .args(args)
        .output()
        .unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
    )
}

/// The observer's view of link `name` in `ns` (`ip -j -d link show dev NAME`), if present.
fn observed_link(ns: &Path, name: &str) -> Option<Value> {
    let (ok, out) = ip_in(ns, &["-j", "-d", "link", "show", "dev", name]);
    if !ok {
        return None;
    }
    let v: Value = serde_json::from_str(&out).unwrap();
    v.as_array().and_then(|a| a.first().cloned())
}

/// The observer's view of the addresses of `dev` in `ns`, as `ADDR/LEN` strings.
fn observed_addresses(ns: &Path, dev: &str) -> Vec<String> {
    let (ok, out) = ip_in(ns, &["-j", "address", "show", "dev", dev]);
    assert!(ok);
    let v: Value = serde_json::from_str(&out).unwrap();
    v[0]["addr_info"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| format!("{}/{}", a["local"].as_str().unwrap(), a["prefixlen"]))
        .collect()
}

/// The observer's view of the routes in `ns` (`ip -j [-6] route show`).
fn observed_routes(ns: &Path, v6: bool) -> Vec<Value> {
    let mut args = vec!["-j"];
    if v6 {
        args.push("-6");
    }
    args.extend(["route", "show"]);
    let (ok, out) = ip_in(ns, &args);
    assert!(ok);
    serde_json::from_str::<Value>(&out)
        .unwrap()
        .as_array()
        .unwrap()
        .clone()
}

fn veth(peer: &str, peer_netns: Option<&Path>) -> LinkSpec {
    LinkSpec::Veth {
        peer: peer.into(),
        peer_netns: peer_netns.map(Path::to_path_buf),
    }
}

fn up() -> LinkSettings {
    LinkSettings {
        up: Some(true),
        ..LinkSettings::default()
    }
}

fn none() -> LinkSettings {
    LinkSettings::default()
}

#[test]
fn bridge_is_created_once_with_alias_and_settings_converge() {
    let mut nss = Namespaces::new();
    let a = nss.add();
    let settings = LinkSettings {
        mtu: Some(1400),
        up: Some(true),
        master: None,
    };
    let spec = LinkSpec::Bridge;
    assert!(ensure(&a, "br0", &spec, &settings).unwrap());
    let seen = observed_link(&a, "br0").unwrap();
    assert_eq!(seen["linkinfo"]["info_kind"], "bridge");
    assert_eq!(seen["mtu"], 1400);
    assert_eq!(seen["ifalias"], "hostaction");
    assert!(seen["flags"].as_array().unwrap().contains(&"UP".into()));

    // The same call again changes nothing.
    assert!(!ensure(&a, "br0", &spec, &settings).unwrap());

    // A port enslaved afterwards keeps the bridge's MTU.
    let port = LinkSettings {
        master: Some("br0".into()),
        up: Some(true),
        mtu: None,
    };
    assert!(ensure(&a, "p0", &veth("p1", None), &port).unwrap());
    assert!(!ensure(&a, "p0", &veth("p1", None), &port).unwrap());
    assert_eq!(observed_link(&a, "p0").unwrap()["master"], "br0");
    assert_eq!(observed_link(&a, "br0").unwrap()["mtu"], 1400);

    // A different setting converges, and only that.
    let lower = LinkSettings {
        mtu: Some(1300),
        ..settings.clone()
    };
    assert!(ensure(&a, "br0", &spec, &lower).unwrap());
    assert_eq!(observed_link(&a, "br0").unwrap()["mtu"], 1300);
    let down = LinkSettings {
        up: Some(false),
        ..LinkSettings::default()
    };
    assert!(ensure(&a, "br0", &spec, &down).unwrap());
    let flags = observed_link(&a, "br0").unwrap()["flags"].clone();
    assert!(!flags.as_array().unwrap().contains(&"UP".into()));

    let links = list_links(ns(&a), deadline()).unwrap();
    let br = links.iter().find(|l| l.name == "br0").unwrap();
    assert_eq!(br.kind.as_deref(), Some("bridge"));
    assert_eq!(br.mtu, 1300);
    assert!(!br.up);
    assert_eq!(br.alias.as_deref(), Some("hostaction"));
    assert!(br.mac.as_deref().is_some_and(|m| m.len() == 17));
    let p0 = links.iter().find(|l| l.name == "p0").unwrap();
    assert_eq!(p0.master.as_deref(), Some("br0"));
    // Both ends of a veth the backend made carry the mark.
    assert_eq!(p0.alias.as_deref(), Some("hostaction"));
    let p1 = links.iter().find(|l| l.name == "p1").unwrap();
    assert_eq!(p1.alias.as_deref(), Some("hostaction"));
    let lo = links.iter().find(|l| l.name == "lo").unwrap();
    assert_eq!(lo.kind, None);
}

#[test]
fn veth_peer_moves_into_another_netns_and_a_different_peer_conflicts() {
    let mut nss = Namespaces::new();
    let a = nss.add();
    let b = nss.add();
    let spec = veth("vb", Some(&b));
    assert!(ensure(&a, "va", &spec, &up()).unwrap());
    let seen = observed_link(&a, "va").unwrap();
    assert_eq!(seen["linkinfo"]["info_kind"], "veth");
    assert!(seen.get("link_netnsid").is_some());
    assert_eq!(
        observed_link(&b, "vb").unwrap()["linkinfo"]["info_kind"],
        "veth"
    );
    assert!(observed_link(&a, "vb").is_none());

    assert!(!ensure(&a, "va", &spec, &up()).unwrap());

    let other_peer = veth("vc", Some(&b));
    let err = ensure(&a, "va", &other_peer, &up()).unwrap_err();
    assert!(matches!(err, CapError::Conflict(_)), "{err:?}");
    let same_ns = veth("vb", None);
    let err = ensure(&a, "va", &same_ns, &up()).unwrap_err();
    assert!(matches!(err, CapError::Conflict(_)), "{err:?}");
    // Nothing was replaced.
    assert!(observed_link(&b, "vb").is_some());

    // A peer name taken in the peer's namespace is a conflict, and no half pair is left.
    let taken = veth("vb", Some(&b));
    let err = ensure(&a, "vz", &taken, &none()).unwrap_err();
    assert!(matches!(err, CapError::Conflict(_)), "{err:?}");
    assert!(observed_link(&a, "vz").is_none());

    // A veth pair inside one namespace: the peer is checked by name.
    assert!(ensure(&a, "x0", &veth("x1", None), &none()).unwrap());
    assert!(!ensure(&a, "x0", &veth("x1", None), &none()).unwrap());
    // A peer "moved" into the link's own namespace is the same as no move.
    let own = veth("y1", Some(&a));
    assert!(ensure(&a, "y0", &own, &none()).unwrap());
    assert!(!ensure(&a, "y0", &own, &none()).unwrap());
    assert!(observed_link(&a, "y1").is_some());
    let err = ensure(&a, "x0", &veth("x9", None), &none()).unwrap_err();
    assert!(matches!(err, CapError::Conflict(_)), "{err:?}");
}

#[test]
fn vxlan_has_its_attributes_and_another_vni_or_kind_conflicts() {
    let mut nss = Namespaces::new();
    let a = nss.add();
    assert!(ensure(&a, "under0", &veth("under1", None), &up()).unwrap());
    let spec = LinkSpec::Vxlan {
        vni: 42,
        local: Some(ip("192.0.2.1")),
        remote: Some(ip("192.0.2.2")),
        group: None,
        port: Some(4789),
        device: Some("under0".into()),
    };
    assert!(ensure(&a, "vx0", &spec, &up()).unwrap());
    let seen = observed_link(&a, "vx0").unwrap();
    let info = &seen["linkinfo"]["info_data"];
    assert_eq!(seen["linkinfo"]["info_kind"], "vxlan");
    assert_eq!(info["id"], 42);
    assert_eq!(info["local"], "192.0.2.1");
    assert_eq!(info["remote"], "192.0.2.2");
    assert_eq!(info["port"], 4789);
    assert_eq!(info["link"], "under0");

    assert!(!ensure(&a, "vx0", &spec, &up()).unwrap());

    let LinkSpec::Vxlan {
        local,
        remote,
        port,
        device,
        ..
    } = spec.clone()
    else {
        unreachable!()
    };
    let other_vni = LinkSpec::Vxlan {
        vni: 43,
        local,
        remote,
        group: None,
        port,
        device,
    };
    let err = ensure(&a, "vx0", &other_vni, &up()).unwrap_err();
    assert!(matches!(err, CapError::Conflict(_)), "{err:?}");
    assert_eq!(
        observed_link(&a, "vx0").unwrap()["linkinfo"]["info_data"]["id"],
        42
    );

    // Same name, other kind: conflict, and the bridge is left alone.
    assert!(ensure(&a, "br0", &LinkSpec::Bridge, &none()).unwrap());
    let err = ensure(&a, "br0", &spec, &none()).unwrap_err();
    assert!(matches!(err, CapError::Conflict(_)), "{err:?}");
    let err = ensure(&a, "vx0", &LinkSpec::Bridge, &none()).unwrap_err();
    assert!(matches!(err, CapError::Conflict(_)), "{err:?}");
    assert_eq!(
        observed_link(&a, "br0").unwrap()["linkinfo"]["info_kind"],
        "bridge"
    );

    // A vxlan on a device that does not exist is NotFound, and nothing is made.
    let missing = LinkSpec::Vxlan {
        vni: 7,
        local: None,
        remote: None,
        group: None,
        port: None,
        device: Some("nope0".into()),
    };
    let err = ensure(&a, "vx1", &missing, &none()).unwrap_err();
    assert!(matches!(err, CapError::NotFound(_)), "{err:?}");
    assert!(observed_link(&a, "vx1").is_none());
    // So is a missing master.
    let orphan = LinkSettings {
        master: Some("nobr0".into()),
        ..LinkSettings::default()
    };
    let err = ensure(&a, "br1", &LinkSpec::Bridge, &orphan).unwrap_err();
    assert!(matches!(err, CapError::NotFound(_)), "{err:?}");
    assert!(observed_link(&a, "br1").is_none());
}

#[test]
fn macvlan_on_a_veth_parent_and_another_mode_conflicts() {
    let mut nss = Namespaces::new();
    let a = nss.add();
    assert!(ensure(&a, "p0", &veth("p1", None), &up()).unwrap());
    let spec = LinkSpec::Macvlan {
        parent: "p0".into(),
        mode: MacvlanMode::Bridge,
    };
    assert!(ensure(&a, "mv0", &spec, &up()).unwrap());
    let seen = observed_link(&a, "mv0").unwrap();
    assert_eq!(seen["linkinfo"]["info_kind"], "macvlan");
    assert_eq!(seen["linkinfo"]["info_data"]["mode"], "bridge");
    assert_eq!(seen["link"], "p0");
    assert!(!ensure(&a, "mv0", &spec, &up()).unwrap());

    let private = LinkSpec::Macvlan {
        parent: "p0".into(),
        mode: MacvlanMode::Private,
    };
    let err = ensure(&a, "mv0", &private, &up()).unwrap_err();
    assert!(matches!(err, CapError::Conflict(_)), "{err:?}");
    let other_parent = LinkSpec::Macvlan {
        parent: "p1".into(),
        mode: MacvlanMode::Bridge,
    };
    let err = ensure(&a, "mv0", &other_parent, &up()).unwrap_err();
    assert!(matches!(err, CapError::Conflict(_)), "{err:?}");

    assert!(ensure(&a, "mv1", &private, &none()).unwrap());
    assert_eq!(
        observed_link(&a, "mv1").unwrap()["linkinfo"]["info_data"]["mode"],
        "private"
    );
}

#[test]
fn addresses_v4_and_v6_are_ensured_and_removed_once() {
    let mut nss = Namespaces::new();
    let a = nss.add();
    assert!(ensure(&a, "e0", &veth("e1", None), &up()).unwrap());
    for addr in ["10.1.0.1/24", "2001:db8::1/64"] {
        assert!(ensure_address(call(&a), "e0", net(addr)).unwrap());
        assert!(!ensure_address(call(&a), "e0", net(addr)).unwrap());
        assert!(observed_addresses(&a, "e0").contains(&addr.to_string()));
    }
    // The same IPv6 address with another prefix is a conflict.
    let err = ensure_address(call(&a), "e0", net("2001:db8::1/48")).unwrap_err();
    assert!(matches!(err, CapError::Conflict(_)), "{err:?}");
    // Another prefix length is another address: removing it changes nothing.
    assert!(!remove_address(call(&a), "e0", net("10.1.0.1/16")).unwrap());
    for addr in ["10.1.0.1/24", "2001:db8::1/64"] {
        assert!(remove_address(call(&a), "e0", net(addr)).unwrap());
        assert!(!remove_address(call(&a), "e0", net(addr)).unwrap());
        assert!(!observed_addresses(&a, "e0").contains(&addr.to_string()));
    }
    let err = ensure_address(call(&a), "nope0", net("10.9.0.1/24")).unwrap_err();
    assert!(matches!(err, CapError::NotFound(_)), "{err:?}");
}

#[test]
fn routes_are_ensured_once_conflict_on_another_gateway_and_are_removed() {
    let mut nss = Namespaces::new();
    let a = nss.add();
    assert!(ensure(&a, "r0", &veth("r1", None), &up()).unwrap());
    assert!(ensure(&a, "r1", &veth("r0", None), &up()).is_ok());
    assert!(ensure_address(call(&a), "r0", net("10.2.0.1/24")).unwrap());
    assert!(ensure_address(call(&a), "r0", net("2001:db8:2::1/64")).unwrap());

    let via = Route {
        destination: Some(net("10.3.0.0/16")),
        gateway: Some(ip("10.2.0.2")),
        device: None,
        metric: None,
    };
    let dev_only = Route {
        destination: Some(net("10.4.0.0/16")),
        gateway: None,
        device: Some("r0".into()),
        metric: Some(50),
    };
    let default = Route {
        destination: None,
        gateway: Some(ip("10.2.0.254")),
        device: Some("r0".into()),
        metric: None,
    };
    let v6 = Route {
        destination: Some(net("2001:db8:3::/48")),
        gateway: None,
        device: Some("r0".into()),
        metric: None,
    };
    for route in [&via, &dev_only, &default, &v6] {
        assert!(ensure_route(call(&a), route).unwrap(), "{route:?}");
        assert!(!ensure_route(call(&a), route).unwrap(), "{route:?}");
    }
    let routes = observed_routes(&a, false);
    let find = |dst: &str| routes.iter().find(|r| r["dst"] == dst).cloned();
    assert_eq!(find("10.3.0.0/16").unwrap()["gateway"], "10.2.0.2");
    let r = find("10.4.0.0/16").unwrap();
    assert_eq!(r["dev"], "r0");
    assert_eq!(r["metric"], 50);
    assert_eq!(r["scope"], "link");
    assert_eq!(find("default").unwrap()["gateway"], "10.2.0.254");
    assert!(
        observed_routes(&a, true)
            .iter()
            .any(|r| r["dst"] == "2001:db8:3::/48" && r["dev"] == "r0")
    );

    // The same destination and metric through another gateway: conflict, not replaced.
    let other = Route {
        gateway: Some(ip("10.2.0.3")),
        ..via.clone()
    };
    let err = ensure_route(call(&a), &other).unwrap_err();
    assert!(matches!(err, CapError::Conflict(_)), "{err:?}");
    assert!(!remove_route(call(&a), &other).unwrap());

    let host_bits = Route {
        destination: Some(net("10.5.0.1/16")),
        ..dev_only.clone()
    };
    let err = ensure_route(call(&a), &host_bits).unwrap_err();
    assert!(matches!(err, CapError::InvalidArgument(_)), "{err:?}");

    for route in [&via, &dev_only, &default, &v6] {
        assert!(remove_route(call(&a), route).unwrap(), "{route:?}");
        assert!(!remove_route(call(&a), route).unwrap(), "{route:?}");
    }
    let routes = observed_routes(&a, false);
    assert!(
        !routes.iter().any(|r| r["dst"] == "10.3.0.0/16"
            || r["dst"] == "10.4.0.0/16"
            || r["dst"] == "default")
    );
}

#[test]
fn delete_link_removes_it_once() {
    let mut nss = Namespaces::new();
    let a = nss.add();
    assert!(ensure(&a, "br9", &LinkSpec::Bridge, &none()).unwrap());
    assert!(delete_link(call(&a), "br9", &any).unwrap());
    assert!(observed_link(&a, "br9").is_none());
    assert!(!delete_link(call(&a), "br9", &any).unwrap());
}

/// Whether the kernel makes a link of `kind` (`ip link add ...` in a scratch namespace).
fn kernel_supports(extra: &[&str]) -> bool {
    let mut nss = Namespaces::new();
    let scratch = nss.add();
    let (_, _) = ip_in(
        &scratch,
        &["link", "add", "k0", "type", "veth", "peer", "name", "k1"],
    );
    let mut args = vec!["link", "add"];
    args.extend_from_slice(extra);
    ip_in(&scratch, &args).0
}

#[test]
fn kinds_missing_from_the_kernel_are_unsupported_and_others_work() {
    let mut nss = Namespaces::new();
    let a = nss.add();
    assert!(ensure(&a, "k0", &veth("k1", None), &none()).unwrap());
    let cases: [(LinkSpec, &str, &[&str]); 3] = [
        (LinkSpec::Dummy, "d0", &["d0", "type", "dummy"]),
        (LinkSpec::Wireguard, "wg0", &["wg0", "type", "wireguard"]),
        (
            LinkSpec::Vlan {
                parent: "k0".into(),
                id: 10,
            },
            "k0.10",
            &["link", "k0", "name", "k0.10", "type", "vlan", "id", "10"],
        ),
    ];
    for (spec, name, ip_args) in cases {
        let result = ensure(&a, name, &spec, &none());
        if kernel_supports(ip_args) {
            assert!(result.unwrap(), "{spec:?}");
            assert!(!ensure(&a, name, &spec, &none()).unwrap());
            let seen = observed_link(&a, name).unwrap();
            assert_eq!(seen["linkinfo"]["info_kind"], spec.kind_name());
        } else {
            match result {
                Err(CapError::Unsupported(msg)) => assert!(msg.contains(spec.kind_name()), "{msg}"),
                other => panic!("{spec:?}: expected Unsupported, got {other:?}"),
            }
            assert!(observed_link(&a, name).is_none());
        }
    }
}

#[test]
fn netns_is_made_once_listed_and_deleted_once() {
    let dir = tempfile::tempdir().unwrap();
    let nested = dir.path().join("run/netns");
    let name = format!("ha-test-{}-own", std::process::id());
    assert!(ensure_netns(&nested, &name).unwrap());
    let _unmount = Unmount(&nested);
    let path = nested.join(&name);
    let cleanup = scopeguard(&nested, &name);
    // Like `ip netns add`, the directory is made a shared mount point, so the
    // namespace mounts propagate to other mount namespaces.
    let out = Command::new("findmnt")
        .args(["-n", "-o", "PROPAGATION", "--mountpoint"])
        .arg(&nested)
        .output()
        .unwrap();
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "shared");
    assert!(!ensure_netns(&nested, &name).unwrap());
    assert_eq!(list_netns(&nested).unwrap(), vec![name.clone()]);
    // The new namespace is empty but for lo, and links made in it stay there.
    let (ok, out) = ip_in(&path, &["-j", "link", "show"]);
    assert!(ok);
    let links: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(links.as_array().unwrap().len(), 1);
    assert!(ensure(&path, "br0", &LinkSpec::Bridge, &none()).unwrap());
    assert!(observed_link(&path, "br0").is_some());

    // A plain file is not listed as a namespace.
    std::fs::write(nested.join("stray"), b"").unwrap();
    assert_eq!(list_netns(&nested).unwrap(), vec![name.clone()]);

    // A plain file left by an interrupted `ip netns add` becomes the
    // namespace; a symlink is never mounted through.
    let stale = format!("{name}-stale");
    std::fs::write(nested.join(&stale), b"").unwrap();
    let stale_guard = scopeguard(&nested, &stale);
    assert!(ensure_netns(&nested, &stale).unwrap());
    assert!(!ensure_netns(&nested, &stale).unwrap());
    assert!(delete_netns(&nested, &stale).unwrap());
    // A plain file is not a namespace to delete.
    std::fs::write(nested.join("plain"), b"").unwrap();
    let err = delete_netns(&nested, "plain").unwrap_err();
    assert!(matches!(err, CapError::Conflict(_)), "{err:?}");
    assert!(nested.join("plain").exists());
    drop(stale_guard);
    std::os::unix::fs::symlink(dir.path(), nested.join("link")).unwrap();
    let err = ensure_netns(&nested, "link").unwrap_err();
    assert!(matches!(err, CapError::Conflict(_)), "{err:?}");

    assert!(delete_netns(&nested, &name).unwrap());
    assert!(!delete_netns(&nested, &name).unwrap());
    assert!(!path.exists());
    assert_eq!(list_netns(&nested).unwrap(), Vec::<String>::new());
    drop(cleanup);

    for bad in ["", ".", "..", "a/b"] {
        let err = ensure_netns(Path::new("/nonexistent-dir"), bad).unwrap_err();
        assert!(
            matches!(err, CapError::InvalidArgument(_)),
            "{bad:?}: {err:?}"
        );
    }
    assert_eq!(
        list_netns(Path::new("/nonexistent-dir")).unwrap(),
        Vec::<String>::new()
    );
}

/// Detaches a namespace directory's bind mount when dropped.
struct Unmount<'a>(&'a Path);

impl Drop for Unmount<'_> {
    fn drop(&mut self) {
        unmount(self.0);
    }
}

/// Deletes `dir/name` when dropped, so a failed assertion leaves no mount behind.
fn scopeguard<'a>(dir: &'a Path, name: &'a str) -> impl Drop + 'a {
    struct Guard<'a>(&'a Path, &'a str);
    impl Drop for Guard<'_> {
        fn drop(&mut self) {
            let _ = delete_netns(self.0, self.1);
        }
    }
    Guard(dir, name)
}

#[test]
fn a_missing_namespace_is_not_found_and_a_past_deadline_times_out() {
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("missing");
    let err = list_links(ns(&missing), deadline()).unwrap_err();
    assert!(matches!(err, CapError::NotFound(_)), "{err:?}");
    let plain = dir.path().join("plain");
    std::fs::write(&plain, b"").unwrap();
    let err = list_links(ns(&plain), deadline()).unwrap_err();
    assert!(matches!(err, CapError::NotFound(_)), "{err:?}");

    let mut nss = Namespaces::new();
    let a = nss.add();
    let past = Instant::now() - Duration::from_millis(1);
    let err = list_links(ns(&a), past).unwrap_err();
    assert!(matches!(err, CapError::Timeout(_)), "{err:?}");

    let err = ensure(&a, "name-longer-than-15", &LinkSpec::Bridge, &none()).unwrap_err();
    assert!(matches!(err, CapError::InvalidArgument(_)), "{err:?}");
}

#[test]
fn the_callers_namespace_is_never_switched() {
    let before = std::fs::read_link("/proc/thread-self/ns/net").unwrap();
    let mut nss = Namespaces::new();
    let a = nss.add();
    assert!(ensure(&a, "s0", &veth("s1", None), &none()).unwrap());
    list_links(ns(&a), deadline()).unwrap();
    assert_eq!(
        std::fs::read_link("/proc/thread-self/ns/net").unwrap(),
        before
    );
    // The link is in the namespace, not in the caller's.
    assert!(
        !list_links(Netns(None), deadline())
            .unwrap()
            .iter()
            .any(|l| l.name == "s0")
    );
}

#[test]
fn a_dry_run_reports_changes_and_makes_none() {
    let mut nss = Namespaces::new();
    let a = nss.add();
    let dry = Call {
        dry_run: true,
        ..call(&a)
    };
    let settings = LinkSettings {
        mtu: Some(1400),
        up: Some(true),
        master: None,
    };
    let changes = ensure_link(dry, "br0", &LinkSpec::Bridge, &settings).unwrap();
    assert_eq!(changes, ["create bridge", "mtu 1400", "up"]);
    assert!(observed_link(&a, "br0").is_none());
    // A missing reference fails in a dry run as it would for real.
    let err = ensure_link(dry, "mv0", &macvlan("nope0"), &none()).unwrap_err();
    assert!(matches!(err, CapError::NotFound(_)), "{err:?}");

    assert!(ensure(&a, "br0", &LinkSpec::Bridge, &none()).unwrap());
    let changes = ensure_link(dry, "br0", &LinkSpec::Bridge, &settings).unwrap();
    assert_eq!(changes, ["mtu 1400", "up"]);
    assert!(ensure_address(dry, "br0", net("10.3.0.1/24")).unwrap());
    assert!(delete_link(dry, "br0", &any).unwrap());
    let seen = observed_link(&a, "br0").unwrap();
    assert_ne!(seen["mtu"], 1400);
    assert!(observed_addresses(&a, "br0").is_empty());
}

#[test]
fn owned_only_refuses_to_change_links_hostaction_did_not_create() {
    let mut nss = Namespaces::new();
    let a = nss.add();
    // A link someone else made, with `ip`.
    let (ok, _) = ip_in(&a, &["link", "add", "theirs0", "type", "bridge"]);
    assert!(ok);
    let owned = Call {
        owned_only: true,
        ..call(&a)
    };
    // Nothing to change: fine.
    assert!(
        ensure_link(owned, "theirs0", &LinkSpec::Bridge, &none())
            .unwrap()
            .is_empty()
    );
    for err in [
        ensure_link(owned, "theirs0", &LinkSpec::Bridge, &up()).unwrap_err(),
        delete_link(owned, "theirs0", &any).unwrap_err(),
        ensure_address(owned, "theirs0", net("10.4.0.1/24")).unwrap_err(),
    ] {
        assert!(
            matches!(&err, CapError::PermissionDenied(m) if m.contains("theirs0")),
            "{err:?}"
        );
    }
    assert!(observed_link(&a, "theirs0").is_some());
    assert!(observed_addresses(&a, "theirs0").is_empty());

    // Its own links it may change, delete, and give addresses.
    assert!(
        !ensure_link(owned, "mine0", &LinkSpec::Bridge, &up())
            .unwrap()
            .is_empty()
    );
    assert!(ensure_address(owned, "mine0", net("10.4.0.1/24")).unwrap());
    assert!(delete_link(owned, "mine0", &any).unwrap());
}

fn macvlan(parent: &str) -> LinkSpec {
    LinkSpec::Macvlan {
        parent: parent.into(),
        mode: MacvlanMode::Bridge,
    }
}

#[test]
fn vxlan_with_a_multicast_group_converges_and_other_groups_are_refused() {
    let mut nss = Namespaces::new();
    let a = nss.add();
    assert!(ensure(&a, "under0", &veth("under1", None), &up()).unwrap());
    assert!(ensure_address(call(&a), "under0", net("192.0.2.1/24")).unwrap());
    let spec = LinkSpec::Vxlan {
        vni: 100,
        local: None,
        remote: None,
        group: Some(ip("239.1.1.1")),
        port: None,
        device: Some("under0".into()),
    };
    assert!(ensure(&a, "vxg", &spec, &up()).unwrap());
    assert!(!ensure(&a, "vxg", &spec, &up()).unwrap());
    let info = observed_link(&a, "vxg").unwrap()["linkinfo"]["info_data"].clone();
    assert_eq!(info["group"], "239.1.1.1");
    assert_eq!(info["link"], "under0");
    // Another group is a conflict; a unicast "group" is refused up front.
    let LinkSpec::Vxlan { device, .. } = spec.clone() else {
        unreachable!()
    };
    let other = LinkSpec::Vxlan {
        vni: 100,
        local: None,
        remote: None,
        group: Some(ip("239.1.1.2")),
        port: None,
        device: device.clone(),
    };
    let err = ensure(&a, "vxg", &other, &up()).unwrap_err();
    assert!(matches!(err, CapError::Conflict(_)), "{err:?}");
    let unicast = LinkSpec::Vxlan {
        vni: 100,
        local: None,
        remote: None,
        group: Some(ip("192.0.2.9")),
        port: None,
        device,
    };
    let err = ensure(&a, "vxh", &unicast, &up()).unwrap_err();
    assert!(matches!(err, CapError::InvalidArgument(_)), "{err:?}");
}

/// A scope that lets every link be touched.
fn any(_: &str) -> bool {
    true
}

#[test]
fn deleting_a_link_that_would_take_out_of_scope_links_with_it_is_refused() {
    let mut nss = Namespaces::new();
    let a = nss.add();
    assert!(ensure(&a, "br0", &LinkSpec::Bridge, &none()).unwrap());
    let port = LinkSettings {
        master: Some("br0".into()),
        ..none()
    };
    assert!(ensure(&a, "keep0", &veth("keep1", None), &port).unwrap());
    let only_br = |n: &str| n.starts_with("br");
    let err = delete_link(call(&a), "br0", &only_br).unwrap_err();
    assert!(
        matches!(&err, CapError::PermissionDenied(m) if m.contains("keep0")),
        "{err:?}"
    );
    // A veth's peer in the same namespace goes with it.
    let only_keep0 = |n: &str| n == "keep0";
    let err = delete_link(call(&a), "keep0", &only_keep0).unwrap_err();
    assert!(
        matches!(&err, CapError::PermissionDenied(m) if m.contains("keep1")),
        "{err:?}"
    );
    assert!(observed_link(&a, "br0").is_some() && observed_link(&a, "keep1").is_some());
    assert!(delete_link(call(&a), "br0", &any).unwrap());
    assert_eq!(observed_link(&a, "keep0").unwrap().get("master"), None);
}

#[test]
fn a_failure_after_creating_a_link_takes_it_away_again() {
    let mut nss = Namespaces::new();
    let a = nss.add();
    assert!(ensure(&a, "p0", &veth("p1", None), &none()).unwrap());
    // A veth is no bridge: enslaving to it fails after the link is made.
    let bad = LinkSettings {
        master: Some("p0".into()),
        ..none()
    };
    assert!(ensure(&a, "c0", &veth("c1", None), &bad).is_err());
    assert!(observed_link(&a, "c0").is_none() && observed_link(&a, "c1").is_none());
}

#[test]
fn namespace_files_are_never_followed_or_blocked_on() {
    let dir = tempfile::tempdir().unwrap();
    let link = dir.path().join("link");
    std::os::unix::fs::symlink("/proc/self/ns/net", &link).unwrap();
    let fifo = dir.path().join("fifo");
    assert!(
        Command::new("mkfifo")
            .arg(&fifo)
            .status()
            .unwrap()
            .success()
    );
    let plain = dir.path().join("plain");
    std::fs::write(&plain, b"").unwrap();
    for path in [&link, &fifo, &plain] {
        let start = Instant::now();
        let err = list_links(ns(path), deadline()).unwrap_err();
        assert!(
            matches!(err, CapError::NotFound(_)),
            "{}: {err:?}",
            path.display()
        );
        assert!(start.elapsed() < Duration::from_secs(30), "nothing blocks");
        assert!(!super::is_netns(path).unwrap());
    }
}
