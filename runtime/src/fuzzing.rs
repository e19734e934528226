//! Entry points of the fuzz targets in `fuzz/` (`scripts/fuzz.sh`): each takes
//! arbitrary bytes, hands them to one parser of untrusted input through the
//! functions production calls, and asserts what must hold for any input. A
//! panic, here or in the parser, is a finding. Not a public API.
//!
//! These are the runtime's (distribution and the agent have their own). The
//! targets live here, not in `fuzz/`, because several parsers are private
//! to the runtime; and so that `cargo test` replays every committed corpus
//! input (crash regressions included) without a fuzzing toolchain.
//!
//! Inputs of the argument checks are text, one field per line, so that corpus
//! files are readable and the fuzzer mutates values, not an encoding.

use std::path::PathBuf;

use hostaction_distribution::fuzzing::Target;
use ipnet::IpNet;

use crate::bindings::hostaction::host::network::{
    LinkKind, MacvlanSpec, Route, VethSpec, VlanSpec, VxlanSpec,
};
use crate::capabilities::files::{HostPath, MAX_NAME_BYTES, MAX_PATH_BYTES};
use crate::capabilities::network::scope::{self, HOST_NETNS, Scopes};
use crate::capabilities::network::{cidr, link_spec, netlink, route};
use crate::capabilities::services::{MAX_UNIT_NAME_BYTES, unit_name_problem};
use crate::grant::{Capability, EffectiveGrant, Grant, GrantDocument, NetworkScope, glob};

/// The targets by name (the names of `fuzz/fuzz_targets/*.rs` and of the
/// corpus directories).
pub const TARGETS: &[(&str, Target)] = &[
    ("grant", grant),
    ("network_args", network_args),
    ("files_path", files_path),
    ("files_ops", files_ops),
    ("unit_name", unit_name),
];

/// Lines of a text input; missing ones read as empty.
struct Fields<'a>(std::str::Split<'a, char>);

impl<'a> Fields<'a> {
    fn new(text: &'a str) -> Self {
        Self(text.split('\n'))
    }

    fn text(&mut self) -> &'a str {
        self.0.next().unwrap_or_default()
    }

    /// An optional value: an empty line is none.
    fn opt(&mut self) -> Option<String> {
        Some(self.text())
            .filter(|s| !s.is_empty())
            .map(str::to_owned)
    }

    /// A number, or none when the line is not one.
    fn num<T: std::str::FromStr>(&mut self) -> Option<T> {
        self.text().parse().ok()
    }

    /// A comma-separated list (empty items dropped).
    fn list(&mut self) -> Vec<String> {
        self.text()
            .split(',')
            .filter(|s| !s.is_empty())
            .map(str::to_owned)
            .collect()
    }
}

/// A grant document, then optionally a line `---` and a node policy: both
/// parsed as `--grants`/`--policy` files are, then intersected.
pub fn grant(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let (grant_text, policy_text) = match text.split_once("\n---\n") {
        Some((g, p)) => (g, Some(p)),
        None => (text, None),
    };
    let policy = match policy_text.map(|p| Grant::parse(p, "policy")) {
        Some(Ok(p)) => Some(p),
        Some(Err(_)) => return,
        None => None,
    };
    let Ok(grant) = Grant::parse(grant_text, "grant") else {
        return;
    };
    // What the controller writes into a run (JSON) reads back the same.
    if let Ok(json) = serde_json::to_string(&grant) {
        let back: Result<Grant, _> = serde_json::from_str(&json);
        assert!(
            back.is_ok_and(|b| b == grant),
            "grant JSON round trip: {json}"
        );
    }
    for scope in [
        grant.network.as_ref(),
        policy.as_ref().and_then(|p| p.network.as_ref()),
    ]
    .into_iter()
    .flatten()
    {
        for p in scope.netns.iter().chain(&scope.interfaces) {
            assert!(glob(p, p), "a pattern matches itself: {p:?}");
        }
    }
    let Ok(eff) = EffectiveGrant::new(&grant, policy.as_ref()) else {
        return;
    };
    for dir in eff.files_read.iter().chain(&eff.files_write) {
        assert!(dir.path.starts_with(&dir.anchor), "{dir:?}");
    }
    for dir in &eff.files_write {
        assert!(eff.files_read.contains(dir), "write implies read: {dir:?}");
    }
    let under = |dirs: Option<&[String]>, path: &HostPath| {
        dirs.into_iter()
            .flatten()
            .filter_map(|d| HostPath::parse(d).ok())
            .any(|d| path.starts_with(&d))
    };
    fn files(g: &Grant) -> Option<[&[String]; 2]> {
        g.files
            .as_ref()
            .map(|f| [f.read.as_slice(), f.write.as_slice()])
    }
    for dir in &eff.files_read {
        // Within the grant and, when there is one, within the policy.
        for doc in std::iter::once(&grant).chain(policy.as_ref()) {
            let [read, write] = files(doc).unwrap_or_default();
            assert!(
                under(Some(read), &dir.path) || under(Some(write), &dir.path),
                "{} is outside a document's files",
                dir.path
            );
        }
    }
    for dir in &eff.files_write {
        for doc in std::iter::once(&grant).chain(policy.as_ref()) {
            let [_, write] = files(doc).unwrap_or_default();
            assert!(under(Some(write), &dir.path), "{} not writable", dir.path);
        }
    }
    let has = |section: fn(&Grant) -> bool| section(&grant) && policy.as_ref().is_none_or(section);
    assert_eq!(
        eff.capability(Capability::Network).is_ok(),
        has(|g| g.network.is_some())
    );
    assert_eq!(
        eff.capability(Capability::Services).is_ok(),
        has(|g| g.services.is_some())
    );
}

/// The network capability's argument and scope checks, in the order its calls
/// make them, on values a guest chose. Lines: link kind (bridge, veth, vxlan,
/// macvlan, dummy, vlan, wireguard) and its fields; link name, mtu, master;
/// route destination, gateway, device, metric; an address's device and
/// address; a netns name; then the grant's network scope (netns, interfaces,
/// kinds, addresses, routes as comma-separated lists).
pub fn network_args(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let mut f = Fields::new(text);
    let kind = match f.text() {
        "veth" => LinkKind::Veth(VethSpec {
            peer_name: f.text().to_owned(),
            peer_netns: f.opt(),
        }),
        "vxlan" => LinkKind::Vxlan(VxlanSpec {
            vni: f.num().unwrap_or(0),
            local: f.opt(),
            remote: f.opt(),
            group: f.opt(),
            port: f.num(),
            device: f.opt(),
        }),
        "macvlan" => LinkKind::Macvlan(MacvlanSpec {
            parent: f.text().to_owned(),
            mode: f.opt(),
        }),
        "vlan" => LinkKind::Vlan(VlanSpec {
            parent: f.text().to_owned(),
            id: f.num().unwrap_or(0),
        }),
        "dummy" => LinkKind::Dummy,
        "wireguard" => LinkKind::Wireguard,
        _ => LinkKind::Bridge,
    };
    let peer = match &kind {
        LinkKind::Veth(v) => Some(v.peer_name.clone()),
        _ => None,
    };
    let name = f.text().to_owned();
    let mtu: Option<u32> = f.num();
    let master = f.opt();
    let r = Route {
        destination: f.text().to_owned(),
        gateway: f.opt(),
        device: f.opt(),
        metric: f.num(),
    };
    let (device, address) = (f.text().to_owned(), f.text().to_owned());
    let netns = f.text().to_owned();
    let network = NetworkScope {
        netns: f.list(),
        interfaces: f.list(),
        kinds: f.list(),
        owned_only: false,
        addresses: f.list(),
        routes: f.list(),
    };
    let grant = Grant {
        network: Some(network.clone()),
        ..Grant::default()
    };
    // Only a grant that passed its checks reaches a call.
    let scopes = grant.check("grant").is_ok().then_some(Scopes {
        grant: &network,
        policy: None,
    });

    // ensure-link
    let link_ok = scope::interface_name(&name).is_ok();
    if link_ok {
        assert_valid_ifname(&name);
    }
    let _ = mtu.map(scope::mtu);
    if let Some(master) = &master
        && scope::interface_name(master).is_ok()
    {
        assert_valid_ifname(master);
    }
    if let Ok(spec) = link_spec(kind) {
        let _ = netlink::check_spec(&spec);
        for lower in spec.lower().into_iter().chain(peer.as_deref()) {
            assert_valid_ifname(lower);
        }
        if let Some(scopes) = &scopes {
            if scopes.kind(spec.kind_name()).is_ok() {
                assert!(network.kinds.iter().any(|k| k == spec.kind_name()));
            }
            for link in std::iter::once(name.as_str())
                .chain(master.as_deref())
                .chain(spec.lower())
                .chain(peer.as_deref())
            {
                if scopes.interface(link).is_ok() {
                    assert!(network.interfaces.iter().any(|p| glob(p, link)));
                }
            }
        }
    }

    // ensure-route
    if let Ok((checked, v6)) = route(r) {
        let dev = checked.device.as_deref().unwrap_or_default();
        assert_valid_ifname(dev);
        if let Some(dest) = checked.destination {
            assert_eq!(dest, dest.trunc(), "a route destination with host bits");
            assert_eq!(matches!(dest, IpNet::V6(_)), v6);
        }
        if let Some(gw) = checked.gateway {
            assert_eq!(gw.is_ipv6(), v6);
        }
        if let Some(scopes) = &scopes
            && scopes.route(checked.destination.as_ref(), v6).is_ok()
        {
            assert!(!network.routes.is_empty());
        }
    }

    // ensure-address
    if scope::interface_name(&device).is_ok()
        && let Ok(addr) = cidr("address", &address)
        && let Some(scopes) = &scopes
        && scopes.address(&addr).is_ok()
    {
        let net = addr.trunc();
        assert!(
            network
                .addresses
                .iter()
                .filter_map(|r| r.parse::<IpNet>().ok())
                .any(|r| r.contains(&net)),
            "{addr} granted outside {:?}",
            network.addresses
        );
    }

    // ensure-netns and the namespace of every call
    if scope::netns_name(&netns).is_ok() {
        assert!(!netns.is_empty() && netns != "." && netns != ".." && netns != HOST_NETNS);
        assert!(!netns.contains('/') && netns.len() <= scope::MAX_NETNS_BYTES);
    }
    if let Some(scopes) = &scopes {
        if scopes.netns(None).is_ok() {
            assert!(
                network.netns.iter().any(|p| p == HOST_NETNS),
                "host by a pattern"
            );
        }
        if scope::netns_name(&netns).is_ok() && scopes.netns(Some(&netns)).is_ok() {
            assert!(network.netns.iter().any(|p| glob(p, &netns)));
        }
    }
}

/// What every interface name that passed the capability's checks is.
fn assert_valid_ifname(name: &str) {
    assert!(
        !name.is_empty()
            && name.len() <= scope::MAX_IFNAME_BYTES
            && name != "."
            && name != ".."
            && name
                .bytes()
                .all(|b| b.is_ascii_graphic() && !b"/%:".contains(&b)),
        "interface name {name:?} passed the checks"
    );
}

/// A path from a guest (first line) and granted directories (the others).
pub fn files_path(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let mut lines = text.split('\n');
    let raw = lines.next().unwrap_or_default();
    let Ok(path) = HostPath::parse(raw) else {
        return;
    };
    let shown = path.to_string();
    assert!(shown.starts_with('/') && shown.len() <= raw.len().max(1));
    assert!(shown.len() <= MAX_PATH_BYTES);
    assert!(!shown.contains("//") && !shown.contains('\0'));
    assert!(shown == "/" || !shown.ends_with('/'));
    for part in path.components() {
        assert!(!part.is_empty() && part != "." && part != "..");
        assert!(!part.contains('/') && part.len() <= MAX_NAME_BYTES);
    }
    assert_eq!(HostPath::parse(&shown).ok().as_ref(), Some(&path));
    let depth = path.components().len();
    for d in 0..=depth + 1 {
        assert!(path.starts_with(&path.ancestor(d)));
    }
    if let Some(parent) = path.parent() {
        assert!(path.starts_with(&parent) && parent != path);
        assert_eq!(parent.components().len() + 1, depth);
        assert!(path.file_name().is_some());
    } else {
        assert_eq!(shown, "/");
    }
    for dir in lines.filter_map(|l| HostPath::parse(l).ok()) {
        let inside = path.starts_with(&dir);
        // Component-wise, never a string prefix (`/opt/cni/binary` is not
        // under `/opt/cni/bin`).
        let dir_shown = dir.to_string();
        let by_text =
            shown == dir_shown || dir_shown == "/" || shown.starts_with(&format!("{dir_shown}/"));
        assert_eq!(inside, by_text, "{shown} under {dir_shown}");
        if inside {
            let rel = path.relative_to(&dir);
            let joined = if rel == "." {
                dir_shown.clone()
            } else {
                format!("{dir_shown}/{rel}")
            };
            assert_eq!(HostPath::parse(&joined).ok().as_ref(), Some(&path));
        }
    }
}

/// What `files_ops` keeps for the whole process: the runtime, the probe
/// component, and the scratch host root.
struct FilesHost {
    runtime: crate::Runtime,
    probe: std::sync::Arc<crate::LoadedModule>,
    root: tempfile::TempDir,
}

/// The test probe component (`tests/actions/probe`, built by
/// `scripts/build-guests.sh`), or `HOSTACTION_FUZZ_PROBE`.
pub fn probe_path() -> PathBuf {
    std::env::var_os("HOSTACTION_FUZZ_PROBE").map_or_else(
        || {
            PathBuf::from(concat!(
                env!("CARGO_MANIFEST_DIR"),
                "/../target/guests/probe.wasm"
            ))
        },
        PathBuf::from,
    )
}

fn files_host() -> &'static FilesHost {
    static HOST: std::sync::OnceLock<FilesHost> = std::sync::OnceLock::new();
    HOST.get_or_init(|| {
        let root = must(tempfile::tempdir(), "a scratch host root");
        let runtime = must(
            crate::Runtime::new(crate::RuntimeConfig {
                host_root: root.path().to_owned(),
                cache_dir: None,
                ..crate::RuntimeConfig::default()
            }),
            "a runtime",
        );
        let probe = must(
            runtime.load_file(&probe_path()),
            "the probe component (scripts/build-guests.sh builds it)",
        );
        FilesHost {
            runtime,
            probe,
            root,
        }
    })
}

/// The value, or the harness cannot go on.
#[allow(clippy::panic)] // a fuzz harness: its own failure is a panic too
fn must<T, E: std::fmt::Debug>(result: Result<T, E>, what: &str) -> T {
    match result {
        Ok(value) => value,
        Err(e) => panic!("{what}: {e:?}"),
    }
}

/// Everything under `dir` but `skip`: path, type, mode, size, contents or
/// link target.
fn snapshot(dir: &std::path::Path, skip: &std::path::Path, out: &mut Vec<String>) {
    use std::os::unix::fs::PermissionsExt;
    let Ok(entries) = std::fs::read_dir(dir) else {
        out.push(format!("{}: unreadable", dir.display()));
        return;
    };
    let mut paths: Vec<PathBuf> = entries.flatten().map(|e| e.path()).collect();
    paths.sort();
    for path in paths {
        if path == skip {
            continue;
        }
        let Ok(meta) = std::fs::symlink_metadata(&path) else {
            continue;
        };
        let what = if meta.is_symlink() {
            format!("-> {:?}", std::fs::read_link(&path).ok())
        } else if meta.is_file() {
            format!("{:?}", std::fs::read(&path).ok())
        } else {
            String::new()
        };
        // Not the link count: removing the granted directory's hard link to
        // a file outside it is allowed.
        out.push(format!(
            "{} {:o} {what}",
            path.display(),
            meta.permissions().mode()
        ));
        if meta.is_dir() {
            snapshot(&path, skip, out);
        }
    }
}

/// File operations a guest chose, run by the test probe component through
/// the real engine on a scratch host root whose granted directory
/// (`/granted`) holds symlinks and a hard link leading out of it: nothing
/// outside it may change. One op per line: `OP PATH [MODE [CONTENTS]]`, OP
/// one of `file`, `dir`, `remove`, `read`, `list`, `stat`; a PATH not
/// starting with `/` is under `/granted`.
pub fn files_ops(data: &[u8]) {
    use std::os::unix::fs::{PermissionsExt, symlink};
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let host = files_host();
    let root = host.root.path();
    let granted = root.join("granted");
    let outside = root.join("outside");
    // The same tree before every input.
    let _ = std::fs::remove_dir_all(&granted);
    let made = (|| -> std::io::Result<()> {
        if !outside.exists() {
            std::fs::create_dir_all(outside.join("dir"))?;
            std::fs::write(outside.join("secret"), "secret")?;
            std::fs::set_permissions(outside.join("secret"), PermissionsExt::from_mode(0o600))?;
        }
        std::fs::create_dir_all(granted.join("sub"))?;
        std::fs::write(granted.join("sub/file"), "file")?;
        symlink("..", granted.join("up"))?;
        symlink("../outside", granted.join("out"))?;
        symlink("/outside", granted.join("abs"))?;
        symlink("/outside/secret", granted.join("sub/secret"))?;
        std::fs::hard_link(outside.join("secret"), granted.join("hard"))?;
        Ok(())
    })();
    assert!(made.is_ok(), "the scratch tree: {made:?}");
    let mut before = Vec::new();
    snapshot(root, &granted, &mut before);

    let ops: Vec<serde_json::Value> = text
        .lines()
        .take(32)
        .map(|line| {
            let mut f = line.splitn(4, ' ');
            let (op, raw) = (f.next().unwrap_or_default(), f.next().unwrap_or_default());
            let path = if raw.starts_with('/') {
                raw.to_owned()
            } else {
                format!("/granted/{raw}")
            };
            let mode = f.next().and_then(|m| u32::from_str_radix(m, 8).ok()).unwrap_or(0o644);
            let contents = f.next().unwrap_or_default();
            match op {
                "file" => serde_json::json!({"op": "ensure-file", "path": path, "contents": contents, "mode": mode}),
                "dir" => serde_json::json!({"op": "ensure-dir", "path": path, "mode": mode}),
                "remove" => serde_json::json!({"op": "remove", "path": path}),
                "read" => serde_json::json!({"op": "read-file", "path": path}),
                "list" => serde_json::json!({"op": "list-dir", "path": path}),
                _ => serde_json::json!({"op": "stat", "path": path}),
            }
        })
        .collect();
    let params = serde_json::json!({ "ops": ops }).to_string();
    let grant = Grant {
        files: Some(crate::grant::FilesScope {
            read: Vec::new(),
            write: vec!["/granted".to_owned()],
            ..Default::default()
        }),
        ..Grant::default()
    };
    let effective = must(EffectiveGrant::new(&grant, None), "the grant of /granted");
    let mut request = crate::RunRequest::new(params, effective);
    request.limits.timeout = std::time::Duration::from_secs(30);
    let report = host.runtime.run(&host.probe, request);
    // Refused calls come back to the probe as errors; its run succeeds.
    assert!(
        report.as_ref().is_ok_and(|r| r.status.is_success()),
        "the probe's run: {report:?}"
    );
    let mut after = Vec::new();
    snapshot(root, &granted, &mut after);
    assert!(
        before == after,
        "outside the granted directory, {:?} became {:?} (the run: {report:?})",
        before
            .iter()
            .filter(|b| !after.contains(b))
            .collect::<Vec<_>>(),
        after
            .iter()
            .filter(|a| !before.contains(a))
            .collect::<Vec<_>>(),
    );
}

/// A unit name from a guest (first line) and the grant's unit patterns (the
/// others).
pub fn unit_name(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let mut lines = text.split('\n');
    let name = lines.next().unwrap_or_default();
    let ok = unit_name_problem(name).is_none();
    if ok {
        assert!(!name.is_empty() && name.len() <= MAX_UNIT_NAME_BYTES);
        assert!(
            name.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b":-_.\\@".contains(&b)),
            "{name:?}"
        );
        assert!(name.matches('@').count() <= 1 && !name.starts_with('@'));
        assert!(!name.contains("@."));
    }
    let units: Vec<String> = lines.map(str::to_owned).collect();
    let grant = Grant {
        services: Some(crate::grant::ServicesScope {
            units,
            daemon_reload: false,
        }),
        ..Grant::default()
    };
    if grant.check("grant").is_err() {
        return;
    }
    for pattern in grant.services.iter().flat_map(|s| &s.units) {
        assert!(glob(pattern, pattern));
        let matched = glob(pattern, name);
        if matched && !pattern.contains(['*', '?']) {
            assert_eq!(pattern, name, "a literal pattern matched another name");
        }
        if matched && name.contains('\\') {
            assert!(pattern.contains('\\'), "a wildcard matched an escape");
        }
    }
}

#[cfg(test)]
mod tests {
    use hostaction_distribution::fuzzing::replay_corpus;

    use super::*;

    #[test]
    fn the_fuzz_corpus_passes_every_runtime_target() {
        let skip = |name: &str| {
            let skip = name == "files_ops" && !probe_path().exists();
            if skip {
                eprintln!("files_ops corpus skipped: no {}", probe_path().display());
            }
            skip
        };
        let inputs = replay_corpus(TARGETS, skip);
        assert!(inputs >= TARGETS.len() * 3, "{inputs} corpus inputs");
    }
}
