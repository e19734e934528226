//! The `network` capability: links, addresses, routes and named network
//! namespaces, through netlink.
//!
//! Every call checks its arguments ([`scope`]: names, numbers, addresses) and
//! the grant's and node policy's scopes before the backend ([`netlink`]) sends
//! a single request. Named namespaces live under the host root's
//! `/var/run/netns`, like `ip netns`; each is opened once per call, checked
//! (a namespace, not through a symlink, and not the host's own unless `host`
//! is granted), and entered by that handle. In plan mode the backend makes
//! every read and no change; what builds on something only planned is answered
//! from the plan ([`planned`]).

pub mod netlink;
mod planned;
pub mod scope;
#[cfg(test)]
mod tests;
pub mod undo;
#[cfg(test)]
mod undo_tests;

use std::collections::HashMap;
use std::fs::File;
use std::net::IpAddr;
use std::os::fd::{AsRawFd, OwnedFd};
use std::path::PathBuf;
use std::sync::Arc;

use rustix::fs::{Mode, OFlags};
use rustix::io::Errno;

use wasmtime::component::{HasData, Linker};

use super::{CapError, Shared};
use crate::bindings::hostaction::host::network::{self, LinkInfo, LinkKind, LinkSettings};
use crate::effects::Mode as RunMode;
use crate::grant::EffectiveGrant;
use crate::host::HostRoot;
use crate::undo::Undo;
use crate::undo::diff::attribute;
use netlink::{Call, IpNetwork, LinkSpec, LinkState, MacvlanMode, Netns, PROCESS_NETNS, Step};
use planned::{Ns, Planned};
use scope::{HOST_NETNS, Scopes};
use undo::{Change, JournaledRoute, NetworkUndo};

/// Where named namespaces live, relative to the host root.
pub const NETNS_DIR: &str = "var/run/netns";
/// Where hostaction marks the namespaces it made (for `ownedOnly`), relative
/// to the host root; a tmpfs on a node, like the namespaces themselves.
pub const OWNED_NETNS_DIR: &str = "var/run/hostaction/netns";

/// The `network` capability's state in a run: the grant it checks, the
/// host root named namespaces are found under, and what the run's calls
/// remember.
pub struct NetworkCtx {
    grant: Arc<EffectiveGrant>,
    host_root: Arc<HostRoot>,
    /// The named-namespace directory, once resolved (or made).
    netns_dir: Option<PathBuf>,
    /// Named namespaces opened and checked by this run, by name: each is
    /// opened once (and again after this run deletes or makes it).
    opened: HashMap<String, Arc<Opened>>,
    /// Plan mode: what the run would have made.
    planned: Planned,
}

impl NetworkCtx {
    /// The context of one run under `grant`, on `host_root`.
    pub fn new(grant: Arc<EffectiveGrant>, host_root: Arc<HostRoot>) -> Self {
        Self {
            grant,
            host_root,
            netns_dir: None,
            opened: HashMap::new(),
            planned: Planned::default(),
        }
    }
}

/// The `network` capability as a call sees it: its own state and what all
/// capabilities of the run share.
pub struct NetworkView<'a> {
    pub(crate) ctx: &'a mut NetworkCtx,
    pub(crate) shared: &'a mut Shared,
}

super::types_host!(NetworkView<'_>);

struct HasNetwork;

impl HasData for HasNetwork {
    type Data<'a> = NetworkView<'a>;
}

/// Links `hostaction:host/network`, each call made on the view `view` gives.
pub(crate) fn add_to_linker<T: Send + 'static>(
    linker: &mut Linker<T>,
    view: fn(&mut T) -> NetworkView<'_>,
) -> wasmtime::Result<()> {
    network::add_to_linker::<T, HasNetwork>(linker, view)
}

/// A named namespace, opened and checked: the backend enters it through
/// `/proc/self/fd/N`, whatever its name points to meanwhile.
#[derive(Debug)]
struct Opened {
    _fd: OwnedFd,
    path: PathBuf,
}

/// The namespace a call works in, resolved and checked.
enum Place {
    /// The host's own (this process's).
    Host,
    /// A named namespace.
    Named(Arc<Opened>),
    /// Plan mode: a namespace only planned; no call reaches the kernel.
    Planned,
}

impl Place {
    /// Where the backend works; never a planned namespace.
    fn netns(&self) -> Result<Netns<'_>, CapError> {
        match self {
            Place::Host => Ok(Netns(None)),
            Place::Named(opened) => Ok(Netns(Some(&opened.path))),
            Place::Planned => Err(CapError::Io(
                "network: a planned namespace reached the kernel".into(),
            )),
        }
    }

    /// The namespace file a veth's peer is moved into.
    fn peer_path(&self) -> Result<PathBuf, CapError> {
        match self {
            Place::Host => Ok(PathBuf::from(PROCESS_NETNS)),
            Place::Named(opened) => Ok(opened.path.clone()),
            Place::Planned => Err(CapError::Io(
                "network: a planned namespace reached the kernel".into(),
            )),
        }
    }
}

/// How a namespace reads in effects: `host` or `netns NAME`.
fn place_name(netns: Option<&str>) -> String {
    netns.map_or_else(|| "host".to_owned(), |n| format!("netns {n}"))
}

/// The grant's and the policy's network scopes.
fn scopes(grant: &EffectiveGrant) -> Result<Scopes<'_>, CapError> {
    match &grant.network {
        Some((grant, policy)) => Ok(Scopes {
            grant,
            policy: policy.as_ref(),
        }),
        None => Err(CapError::PermissionDenied(
            "network: the grant has no network section".into(),
        )),
    }
}

impl NetworkView<'_> {
    /// The run's grant, after the deadline and plan-budget checks (held apart from `self`, so
    /// that its [`scopes`] can be used while the run's state changes).
    fn grant(&self) -> Result<Arc<EffectiveGrant>, CapError> {
        self.shared.check_deadline()?;
        // Checked before each call, so the plan outgrows its budget by at
        // most one call's entries.
        super::check_plan(
            "network namespaces, links, addresses and routes",
            self.ctx.planned.bytes(),
        )?;
        Ok(Arc::clone(&self.ctx.grant))
    }

    fn dry_run(&self) -> bool {
        self.shared.effects.mode() == RunMode::Plan
    }

    /// The directory of named namespaces on this machine; `None` when it does
    /// not exist and `create` is false. Resolved once per run.
    fn netns_dir(&mut self, create: bool) -> Result<Option<PathBuf>, CapError> {
        if self.ctx.netns_dir.is_none() {
            self.ctx.netns_dir = self.resolve(NETNS_DIR, create)?;
        }
        Ok(self.ctx.netns_dir.clone())
    }

    /// A directory under the host root (symlinks resolved inside it).
    fn resolve(&self, rel: &str, create: bool) -> Result<Option<PathBuf>, CapError> {
        self.ctx
            .host_root
            .resolve_dir(rel, create)
            .map_err(|e: Errno| {
                CapError::Io(format!(
                    "cannot resolve {rel} under the host root {}: {e}",
                    self.ctx.host_root.path().display()
                ))
            })
    }

    /// Checks a namespace from the guest against the scopes and opens it.
    fn place(&mut self, scopes: &Scopes<'_>, netns: Option<&str>) -> Result<Place, CapError> {
        let Some(name) = netns else {
            scopes.netns(None)?;
            return Ok(Place::Host);
        };
        scope::netns_name(name)?;
        scopes.netns(Some(name))?;
        if self.ctx.planned.has_netns(name) {
            return Ok(Place::Planned);
        }
        if let Some(opened) = self.ctx.opened.get(name) {
            return Ok(Place::Named(Arc::clone(opened)));
        }
        let Some(dir) = self.netns_dir(false)? else {
            return Err(CapError::NotFound(format!(
                "network namespace {name} does not exist (no {NETNS_DIR} under the host root)"
            )));
        };
        let fd = netlink::open_netns(&dir.join(name))?;
        // A name bound to the host's own namespace (`ip netns attach NAME 1`)
        // is the host: only a grant of `host` reaches it.
        let own = File::open(PROCESS_NETNS)
            .map_err(|e| CapError::Io(format!("cannot open {PROCESS_NETNS}: {e}")))?;
        if netlink::same_netns(&fd, &own)? && scopes.netns(None).is_err() {
            return Err(CapError::PermissionDenied(format!(
                "network: netns {name:?} is the host's own namespace, and `host` is not granted"
            )));
        }
        let path = PathBuf::from(format!("/proc/self/fd/{}", fd.as_raw_fd()));
        let opened = Arc::new(Opened { _fd: fd, path });
        self.ctx.opened.insert(name.to_owned(), Arc::clone(&opened));
        Ok(Place::Named(opened))
    }

    /// A backend call as the grant and the run's mode say.
    fn call<'a>(&self, scopes: &Scopes<'_>, ns: Netns<'a>) -> Call<'a> {
        Call {
            ns,
            deadline: self.shared.deadline,
            dry_run: self.dry_run(),
            owned_only: scopes.owned_only(),
        }
    }

    /// Records a change the backend made (or, in plan mode, would make),
    /// with its diff.
    fn record(
        &mut self,
        action: &'static str,
        target: String,
        detail: String,
        diff: Option<String>,
    ) {
        self.shared
            .effects
            .record("network", action, &target, detail, diff);
    }

    /// The mark of a namespace hostaction made (for `ownedOnly`).
    fn netns_mark(&self, name: &str, create: bool) -> Result<Option<PathBuf>, CapError> {
        Ok(self.resolve(OWNED_NETNS_DIR, create)?.map(|d| d.join(name)))
    }
}

/// Maps the contract's link kind to the backend's, checking every value. A
/// veth's peer namespace is checked here and resolved by the caller after
/// the scope checks.
pub(crate) fn link_spec(kind: LinkKind) -> Result<LinkSpec, CapError> {
    let ip = |what: &str, s: &str| -> Result<IpAddr, CapError> {
        s.parse()
            .map_err(|_| CapError::InvalidArgument(format!("{what} {s:?} is not an IP address")))
    };
    let opt_ip = |what: &str, s: Option<String>| s.map(|s| ip(what, &s)).transpose();
    Ok(match kind {
        LinkKind::Bridge => LinkSpec::Bridge,
        LinkKind::Dummy => LinkSpec::Dummy,
        LinkKind::Wireguard => LinkSpec::Wireguard,
        LinkKind::Veth(v) => {
            scope::interface_name(&v.peer_name)?;
            if let Some(peer_netns) = v.peer_netns.as_deref().filter(|n| *n != scope::HOST_NETNS) {
                scope::netns_name(peer_netns)?;
            }
            LinkSpec::Veth {
                peer: v.peer_name,
                peer_netns: None,
            }
        }
        LinkKind::Vxlan(v) => {
            scope::vni(v.vni)?;
            if v.port == Some(0) {
                return Err(CapError::InvalidArgument(
                    "vxlan port 0 is not a port".into(),
                ));
            }
            if let Some(device) = &v.device {
                scope::interface_name(device)?;
            }
            LinkSpec::Vxlan {
                vni: v.vni,
                local: opt_ip("vxlan local", v.local)?,
                remote: opt_ip("vxlan remote", v.remote)?,
                group: opt_ip("vxlan group", v.group)?,
                port: v.port,
                device: v.device,
            }
        }
        LinkKind::Macvlan(m) => {
            scope::interface_name(&m.parent)?;
            let mode = match m.mode.as_deref() {
                None | Some("bridge") => MacvlanMode::Bridge,
                Some("private") => MacvlanMode::Private,
                Some("vepa") => MacvlanMode::Vepa,
                Some("passthru") => MacvlanMode::Passthru,
                Some(other) => {
                    return Err(CapError::InvalidArgument(format!(
                        "macvlan mode {other:?} is not one of bridge, private, vepa, passthru"
                    )));
                }
            };
            LinkSpec::Macvlan {
                parent: m.parent,
                mode,
            }
        }
        LinkKind::Vlan(v) => {
            scope::interface_name(&v.parent)?;
            scope::vlan_id(v.id)?;
            LinkSpec::Vlan {
                parent: v.parent,
                id: v.id,
            }
        }
    })
}

/// Parses an address with its prefix length (`10.0.0.1/24`, `fd00::1/64`).
pub(crate) fn cidr(what: &str, s: &str) -> Result<IpNetwork, CapError> {
    s.parse().map_err(|_| {
        CapError::InvalidArgument(format!(
            "{what} {s:?} is not an address with a prefix length (like 10.0.0.1/24 or fd00::1/64)"
        ))
    })
}

/// Maps and checks a route from the guest; also says whether it is IPv6. The
/// device is required: it is what the grant's interface patterns scope.
pub(crate) fn route(r: network::Route) -> Result<(netlink::Route, bool), CapError> {
    let destination = match r.destination.as_str() {
        "default" => None,
        d => Some(cidr("route destination", d)?),
    };
    let gateway = r
        .gateway
        .map(|g| {
            g.parse::<IpAddr>().map_err(|_| {
                CapError::InvalidArgument(format!("route gateway {g:?} is not an IP address"))
            })
        })
        .transpose()?;
    let Some(device) = r.device else {
        return Err(CapError::InvalidArgument(format!(
            "route to {}: a route must name its device (the grant scopes interfaces)",
            r.destination
        )));
    };
    scope::interface_name(&device)?;
    let route = netlink::Route {
        destination,
        gateway,
        device: Some(device),
        metric: r.metric,
    };
    let v6 = netlink::check_route(&route)?;
    Ok((route, v6))
}

impl network::Host for NetworkView<'_> {
    fn ensure_link(
        &mut self,
        netns: Option<String>,
        name: String,
        kind: LinkKind,
        settings: LinkSettings,
    ) -> Result<bool, CapError> {
        let grant = self.grant()?;
        let scopes = scopes(&grant)?;
        // The guest's values first, then the scopes, then the kernel.
        scope::interface_name(&name)?;
        if let Some(mtu) = settings.mtu {
            scope::mtu(mtu)?;
        }
        if let Some(master) = &settings.master {
            scope::interface_name(master)?;
        }
        let peer = match &kind {
            LinkKind::Veth(v) => Some((v.peer_name.clone(), v.peer_netns.clone())),
            _ => None,
        };
        let mut spec = link_spec(kind)?;
        netlink::check_spec(&spec)?;
        // Everything the call changes or builds on must be in scope: the
        // link, the bridge it joins, the parent or device it sits on, a
        // veth's peer and the namespace the peer goes to.
        scopes.kind(spec.kind_name())?;
        for link in std::iter::once(name.as_str())
            .chain(settings.master.as_deref())
            .chain(spec.lower())
            .chain(peer.as_ref().map(|(p, _)| p.as_str()))
        {
            scopes.interface(link)?;
        }
        let place = self.place(&scopes, netns.as_deref())?;
        let peer_place = match peer.as_ref().and_then(|(_, n)| n.as_deref()) {
            None => None,
            Some(HOST_NETNS) => Some(self.place(&scopes, None)?),
            Some(named) => Some(self.place(&scopes, Some(named))?),
        };
        let ns: Ns = netns.clone();
        let peer_ns: Ns = match peer.as_ref().and_then(|(_, n)| n.as_deref()) {
            None => ns.clone(),
            Some(HOST_NETNS) => None,
            Some(named) => Some(named.to_owned()),
        };
        let target = format!("link {name} ({})", place_name(netns.as_deref()));
        // How a new link is described, plan and apply alike: a veth's peer
        // namespace by the name the guest gave.
        let created = match &peer {
            Some((peer, Some(in_ns))) => format!("create veth (peer {peer} in {in_ns})"),
            _ => netlink::describe(&spec),
        };
        let backend_settings = netlink::LinkSettings {
            mtu: settings.mtu,
            up: settings.up,
            master: settings.master.clone(),
        };
        let kind = spec.kind_name();
        let want = planned::Link {
            kind: kind.to_owned(),
            mtu: settings.mtu,
            up: settings.up,
            master: settings.master.clone(),
        };

        // Plan mode: what builds on something only planned is planned.
        let planned = &self.ctx.planned;
        let from_plan = matches!(place, Place::Planned)
            || matches!(peer_place, Some(Place::Planned))
            || planned.has_link(&ns, &name)
            || [settings.master.as_deref(), spec.lower()]
                .into_iter()
                .flatten()
                .any(|l| planned.has_link(&ns, l));
        let peer = peer.map(|(peer_name, _)| (peer_ns, peer_name));
        if from_plan {
            let before = planned.link(&ns, &name).cloned();
            let changes = self
                .ctx
                .planned
                .ensure_link(&ns, &name, want, &created, peer);
            if changes.is_empty() {
                return Ok(false);
            }
            // Diffed as apply diffs it, where the plan knows the link's
            // settings (a veth's peer: as the kernel makes it).
            let diff = match before {
                None => Some(link_created(&netns, &name, kind, &backend_settings).1),
                Some(planned::Link {
                    mtu: Some(mtu),
                    up: Some(up),
                    master,
                    ..
                }) => {
                    let before = LinkState { mtu, up, master };
                    Some(link_changed(&netns, &name, &before, &backend_settings).1)
                }
                Some(_) => None,
            };
            self.record("ensure-link", target, changes.join(", "), diff);
            return Ok(true);
        }

        if let (LinkSpec::Veth { peer_netns, .. }, Some(p)) = (&mut spec, &peer_place) {
            *peer_netns = Some(p.peer_path()?);
        }
        let call = self.call(&scopes, place.netns()?);
        let effects = &mut self.shared.effects;
        let mut diff = None;
        let mut changes =
            netlink::ensure_link_with(call, &name, &spec, &backend_settings, &mut |step| {
                let (undo, d) = match step {
                    Step::CreateLink => link_created(&netns, &name, kind, &backend_settings),
                    Step::ChangeLink { before } => {
                        link_changed(&netns, &name, &before, &backend_settings)
                    }
                    _ => return Ok(()),
                };
                diff = Some(d);
                effects.journal("network", "ensure-link", &target, Undo::Network(undo), &[])
            })?;
        if changes.is_empty() {
            return Ok(false);
        }
        if let Some(first) = changes.first_mut().filter(|c| c.starts_with("create")) {
            *first = created;
            if call.dry_run {
                self.ctx.planned.ensure_link(&ns, &name, want, first, peer);
            }
        }
        self.record("ensure-link", target, changes.join(", "), diff);
        Ok(true)
    }

    fn delete_link(&mut self, netns: Option<String>, name: String) -> Result<bool, CapError> {
        let grant = self.grant()?;
        let scopes = scopes(&grant)?;
        scope::interface_name(&name)?;
        scopes.interface(&name)?;
        let place = self.place(&scopes, netns.as_deref())?;
        let target = format!("link {name} ({})", place_name(netns.as_deref()));
        let deleted = if self.ctx.planned.covers(&netns, &name) {
            self.ctx.planned.remove_link(&netns, &name)
        } else {
            let call = self.call(&scopes, place.netns()?);
            let effects = &mut self.shared.effects;
            netlink::delete_link_with(
                call,
                &name,
                &|other| scopes.interface(other).is_ok(),
                &mut |step| {
                    let Step::DeleteLink { info } = step else {
                        return Ok(());
                    };
                    let why = link_deleted(&info);
                    effects.journal(
                        "network",
                        "delete-link",
                        &target,
                        Undo::Irreversible { why },
                        &[],
                    )
                },
            )?
        };
        if deleted {
            self.record(
                "delete-link",
                target,
                String::new(),
                Some("link deleted".into()),
            );
        }
        Ok(deleted)
    }

    fn list_links(&mut self, netns: Option<String>) -> Result<Vec<LinkInfo>, CapError> {
        let grant = self.grant()?;
        let scopes = scopes(&grant)?;
        let place = self.place(&scopes, netns.as_deref())?;
        let mut links: Vec<LinkInfo> = match place {
            Place::Planned => Vec::new(),
            _ => netlink::list_links(place.netns()?, self.shared.deadline)?
                .into_iter()
                .map(|l| LinkInfo {
                    owned: l.alias.as_deref() == Some(scope::OWNED_ALIAS),
                    name: l.name,
                    index: l.index,
                    kind: l.kind,
                    mtu: l.mtu,
                    up: l.up,
                    master: l.master,
                    mac: l.mac,
                })
                .collect(),
        };
        // Plan mode: what this run would have made is listed too.
        for (name, link) in self.ctx.planned.links_in(&netns) {
            if !links.iter().any(|l| &l.name == name) {
                links.push(LinkInfo {
                    name: name.clone(),
                    index: 0,
                    kind: Some(link.kind.clone()),
                    mtu: link.mtu.unwrap_or(0),
                    up: link.up.unwrap_or(false),
                    master: link.master.clone(),
                    mac: None,
                    owned: true,
                });
            }
        }
        Ok(links)
    }

    fn ensure_address(
        &mut self,
        netns: Option<String>,
        device: String,
        address: String,
    ) -> Result<bool, CapError> {
        self.address(netns, device, address, true)
    }

    fn remove_address(
        &mut self,
        netns: Option<String>,
        device: String,
        address: String,
    ) -> Result<bool, CapError> {
        self.address(netns, device, address, false)
    }

    fn ensure_route(
        &mut self,
        netns: Option<String>,
        route: network::Route,
    ) -> Result<bool, CapError> {
        self.route(netns, route, true)
    }

    fn remove_route(
        &mut self,
        netns: Option<String>,
        route: network::Route,
    ) -> Result<bool, CapError> {
        self.route(netns, route, false)
    }

    fn ensure_netns(&mut self, name: String) -> Result<bool, CapError> {
        let grant = self.grant()?;
        let scopes = scopes(&grant)?;
        scope::netns_name(&name)?;
        scopes.netns(Some(&name))?;
        let target = format!("netns {name}");
        if self.dry_run() {
            if self.ctx.planned.has_netns(&name) {
                return Ok(false);
            }
            let exists = match self.netns_dir(false)? {
                Some(dir) => netlink::is_netns(&dir.join(&name))?,
                None => false,
            };
            if !exists {
                self.ctx.planned.add_netns(&name);
                self.record(
                    "ensure-netns",
                    target,
                    String::new(),
                    Some("namespace created".into()),
                );
            }
            return Ok(!exists);
        }
        let dir = self.netns_dir(true)?.ok_or_else(|| {
            CapError::Io(format!("{NETNS_DIR} under the host root was not created"))
        })?;
        let effects = &mut self.shared.effects;
        let made = netlink::ensure_netns_with(&dir, &name, &mut |_| {
            let undo = NetworkUndo::NetnsCreated { name: name.clone() };
            effects.journal("network", "ensure-netns", &target, Undo::Network(undo), &[])
        })?;
        if made {
            self.ctx.opened.remove(&name);
            if let Some(mark) = self.netns_mark(&name, true)? {
                // Without its mark an ownedOnly grant cannot delete it later;
                // the namespace itself is in place either way.
                let _ = rustix::fs::open(
                    &mark,
                    OFlags::CREATE | OFlags::WRONLY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
                    Mode::from_raw_mode(0o600),
                );
            }
            self.record(
                "ensure-netns",
                target,
                String::new(),
                Some("namespace created".into()),
            );
        }
        Ok(made)
    }

    fn delete_netns(&mut self, name: String) -> Result<bool, CapError> {
        let grant = self.grant()?;
        let scopes = scopes(&grant)?;
        scope::netns_name(&name)?;
        scopes.netns(Some(&name))?;
        let target = format!("netns {name}");
        let diff = Some("namespace deleted".to_owned());
        if self.ctx.planned.remove_netns(&name) {
            self.record("delete-netns", target, String::new(), diff);
            return Ok(true);
        }
        let Some(dir) = self.netns_dir(false)? else {
            return Ok(false);
        };
        let path = dir.join(&name);
        if !netlink::is_netns(&path)? {
            if std::fs::symlink_metadata(&path).is_ok() {
                return Err(CapError::Conflict(format!(
                    "{NETNS_DIR}/{name} is not a network namespace; it is left alone"
                )));
            }
            return Ok(false);
        }
        let mark = self.netns_mark(&name, false)?;
        if scopes.owned_only() && !mark.as_ref().is_some_and(|m| m.exists()) {
            return Err(CapError::PermissionDenied(format!(
                "network: netns {name} was not made by hostaction; the grant's ownedOnly \
                 forbids deleting it"
            )));
        }
        if !self.dry_run() {
            // Irreversible: everything in it goes with it.
            let why = format!(
                "netns {name} was deleted: its links, addresses and routes went with it \
                 and are not recreated"
            );
            self.shared.effects.journal(
                "network",
                "delete-netns",
                &target,
                Undo::Irreversible { why },
                &[],
            )?;
            self.ctx.opened.remove(&name);
            netlink::delete_netns(&dir, &name)?;
            if let Some(mark) = mark {
                let _ = std::fs::remove_file(mark);
            }
        }
        self.record("delete-netns", target, String::new(), diff);
        Ok(true)
    }

    fn list_netns(&mut self) -> Result<Vec<String>, CapError> {
        let grant = self.grant()?;
        let scopes = scopes(&grant)?;
        let mut names = match self.netns_dir(false)? {
            Some(dir) => netlink::list_netns(&dir)?,
            None => Vec::new(),
        };
        names.extend(self.ctx.planned.netns_names().cloned());
        names.sort();
        names.dedup();
        names.retain(|n| scopes.netns(Some(n)).is_ok());
        Ok(names)
    }
}

impl NetworkView<'_> {
    /// ensure-address (`add`) and remove-address.
    fn address(
        &mut self,
        netns: Option<String>,
        device: String,
        address: String,
        add: bool,
    ) -> Result<bool, CapError> {
        let grant = self.grant()?;
        let scopes = scopes(&grant)?;
        scope::interface_name(&device)?;
        let addr = cidr("address", &address)?;
        scopes.interface(&device)?;
        scopes.address(&addr)?;
        let place = self.place(&scopes, netns.as_deref())?;
        let action = if add {
            "ensure-address"
        } else {
            "remove-address"
        };
        let target = format!(
            "address {addr} on {device} ({})",
            place_name(netns.as_deref())
        );
        let changed = if self.ctx.planned.covers(&netns, &device) {
            self.ctx
                .planned
                .on_link(&netns, &device, format!("address {addr}"), add)
        } else {
            let call = self.call(&scopes, place.netns()?);
            let effects = &mut self.shared.effects;
            let (netns, device2, address) = (netns.clone(), device.clone(), addr.to_string());
            let undo = if add {
                NetworkUndo::AddressAdded {
                    netns,
                    device: device2,
                    address,
                }
            } else {
                NetworkUndo::AddressRemoved {
                    netns,
                    device: device2,
                    address,
                }
            };
            let mut hook = |_: Step| {
                effects.journal("network", action, &target, Undo::Network(undo.clone()), &[])
            };
            if add {
                netlink::ensure_address_with(call, &device, addr, &mut hook)?
            } else {
                netlink::remove_address_with(call, &device, addr, &mut hook)?
            }
        };
        if changed {
            let diff = if add {
                "address added"
            } else {
                "address removed"
            };
            self.record(action, target, String::new(), Some(diff.into()));
        }
        Ok(changed)
    }

    /// ensure-route (`add`) and remove-route.
    fn route(
        &mut self,
        netns: Option<String>,
        r: network::Route,
        add: bool,
    ) -> Result<bool, CapError> {
        let grant = self.grant()?;
        let scopes = scopes(&grant)?;
        let (r, v6) = route(r)?;
        let device = r.device.clone().unwrap_or_default();
        scopes.interface(&device)?;
        scopes.route(r.destination.as_ref(), v6)?;
        let place = self.place(&scopes, netns.as_deref())?;
        let action = if add { "ensure-route" } else { "remove-route" };
        let mut target = format!(
            "route {}",
            r.destination
                .map_or_else(|| "default".to_owned(), |d| d.to_string())
        );
        if let Some(gw) = r.gateway {
            target.push_str(&format!(" via {gw}"));
        }
        target.push_str(&format!(" dev {device}"));
        let place_target = format!("{target} ({})", place_name(netns.as_deref()));
        let changed = if self.ctx.planned.covers(&netns, &device) {
            self.ctx
                .planned
                .on_link(&netns, &device, target.clone(), add)
        } else {
            let call = self.call(&scopes, place.netns()?);
            let effects = &mut self.shared.effects;
            let mut hook = |step: Step| {
                let undo = match step {
                    Step::AddRoute => NetworkUndo::RouteAdded {
                        netns: netns.clone(),
                        route: JournaledRoute::of(&r),
                    },
                    Step::RemoveRoutes { routes } => NetworkUndo::RoutesRemoved {
                        netns: netns.clone(),
                        routes: routes
                            .iter()
                            .map(|(r, protocol)| JournaledRoute {
                                protocol: Some(*protocol),
                                ..JournaledRoute::of(r)
                            })
                            .collect(),
                    },
                    _ => return Ok(()),
                };
                effects.journal("network", action, &place_target, Undo::Network(undo), &[])
            };
            if add {
                netlink::ensure_route_with(call, &r, &mut hook)?
            } else {
                netlink::remove_route_with(call, &r, &mut hook)?
            }
        };
        if changed {
            let diff = if add { "route added" } else { "route removed" };
            self.record(action, place_target, String::new(), Some(diff.into()));
        }
        Ok(changed)
    }
}

/// What undoes creating a link, and its diff.
fn link_created(
    netns: &Option<String>,
    name: &str,
    kind: &str,
    settings: &netlink::LinkSettings,
) -> (NetworkUndo, String) {
    let mut diff = vec![attribute("link", "none", kind)];
    if let Some(mtu) = settings.mtu {
        diff.push(attribute("mtu", "default", mtu));
    }
    if let Some(master) = &settings.master {
        diff.push(attribute("master", "none", master));
    }
    if settings.up == Some(true) {
        diff.push(attribute("state", "down", "up"));
    }
    let undo = NetworkUndo::LinkCreated {
        netns: netns.clone(),
        name: name.to_owned(),
        link_kind: kind.to_owned(),
        mtu: settings.mtu,
        up: settings.up,
        master: settings.master.clone(),
    };
    (undo, diff.join("\n"))
}

/// What undoes changing an existing link's settings from `before`, and its
/// diff: only the settings that change.
fn link_changed(
    netns: &Option<String>,
    name: &str,
    before: &LinkState,
    settings: &netlink::LinkSettings,
) -> (NetworkUndo, String) {
    let mut diff = Vec::new();
    let mtu = settings.mtu.filter(|m| *m != before.mtu).map(|after| {
        diff.push(attribute("mtu", before.mtu, after));
        Change {
            before: before.mtu,
            after,
        }
    });
    let master = settings
        .master
        .as_ref()
        .filter(|m| before.master.as_ref() != Some(*m))
        .map(|after| {
            let was = before.master.clone();
            diff.push(attribute("master", was.as_deref().unwrap_or("none"), after));
            Change {
                before: was,
                after: Some(after.clone()),
            }
        });
    let state = |up: bool| if up { "up" } else { "down" };
    let up = settings.up.filter(|u| *u != before.up).map(|after| {
        diff.push(attribute("state", state(before.up), state(after)));
        Change {
            before: before.up,
            after,
        }
    });
    let undo = NetworkUndo::LinkChanged {
        netns: netns.clone(),
        name: name.to_owned(),
        mtu,
        up,
        master,
    };
    (undo, diff.join("\n"))
}

/// Why deleting a link is not undone, with what the link was (journaled
/// instead of an undo).
fn link_deleted(info: &netlink::LinkInfo) -> String {
    format!(
        "link {} ({}, mtu {}, {}{}{}) was deleted: a link is not recreated (a new one would \
         get another index and MAC, and its addresses, routes, ports, a veth's peer and the \
         links on it went with it)",
        info.name,
        info.kind.as_deref().unwrap_or("device"),
        info.mtu,
        if info.up { "up" } else { "down" },
        info.master
            .as_ref()
            .map_or_else(String::new, |m| format!(", master {m}")),
        info.mac
            .as_ref()
            .map_or_else(String::new, |m| format!(", mac {m}")),
    )
}
