//! The `network` capability: links, addresses, routes and named network
//! namespaces, through netlink.
//!
//! Every call checks its arguments ([`scope`]: names, numbers, addresses)
//! and the grant's and node policy's scopes before the backend ([`netlink`])
//! sends a single request. Named namespaces live under the host root's
//! `/var/run/netns`, like `ip netns`. In plan mode the backend makes every read
//! and no change; a call that builds on something only planned (a link in a
//! namespace not made) is planned without asking the kernel.

pub mod netlink;
pub mod scope;

use std::collections::HashSet;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustix::io::Errno;

use super::{CapError, RunState};
use crate::bindings::hostaction::host::network::{self, LinkInfo, LinkKind, LinkSettings};
use crate::effects::Mode;
use crate::grant::EffectiveGrant;
use netlink::{Call, IpNetwork, LinkSpec, MacvlanMode, NetError, Netns};
use scope::Scopes;

/// Where named network namespaces live, relative to the host root.
pub const NETNS_DIR: &str = "var/run/netns";

impl From<NetError> for CapError {
    fn from(e: NetError) -> Self {
        match e {
            NetError::InvalidArgument(m) => CapError::InvalidArgument(m),
            NetError::PermissionDenied(m) => CapError::PermissionDenied(m),
            NetError::NotFound(m) => CapError::NotFound(m),
            NetError::Conflict(m) => CapError::Conflict(m),
            NetError::Unsupported(m) => CapError::Unsupported(m),
            NetError::Timeout(m) => CapError::Timeout(m),
            NetError::Io(m) => CapError::Io(m),
        }
    }
}

/// What one run's network calls remember.
#[derive(Debug, Default)]
pub(crate) struct NetRun {
    /// The named-namespace directory, once resolved (or made).
    netns_dir: Option<PathBuf>,
    /// Plan mode: what was recorded as created but not made, so that calls
    /// building on it are planned too.
    planned: Planned,
}

/// Plan mode: namespaces and links recorded as created but not made.
#[derive(Debug, Default)]
struct Planned {
    netns: HashSet<String>,
    /// (namespace, link name); `None` is the host's own namespace.
    links: HashSet<(Option<String>, String)>,
}

impl Planned {
    fn link(&self, netns: Option<&str>, name: &str) -> bool {
        netns.is_some_and(|n| self.netns.contains(n))
            || self
                .links
                .contains(&(netns.map(str::to_owned), name.to_owned()))
    }
}

/// How a namespace reads in effects: `host` or `netns NAME`.
fn place(netns: Option<&str>) -> String {
    netns.map_or_else(|| "host".to_owned(), |n| format!("netns {n}"))
}

impl RunState {
    /// The run's grant, after the deadline check (held apart from `self`, so
    /// that its [`scopes`] can be used while the run's state changes).
    fn grant(&self) -> Result<Arc<EffectiveGrant>, CapError> {
        self.check_deadline()?;
        Ok(Arc::clone(&self.grant))
    }

    /// The directory of named namespaces on this machine; `None` when it does
    /// not exist and `create` is false. Resolved once per run.
    fn netns_dir(&mut self, create: bool) -> Result<Option<PathBuf>, CapError> {
        if self.network.netns_dir.is_none() {
            self.network.netns_dir =
                self.host_root
                    .resolve_dir(NETNS_DIR, create)
                    .map_err(|e: Errno| {
                        CapError::Io(format!(
                            "cannot resolve {} under the host root {}: {e}",
                            NETNS_DIR,
                            self.host_root.path().display()
                        ))
                    })?;
        }
        Ok(self.network.netns_dir.clone())
    }

    /// The file of the named namespace `name` (which need not exist).
    fn netns_file(&mut self, name: &str) -> Result<PathBuf, CapError> {
        match self.netns_dir(false)? {
            Some(dir) => Ok(dir.join(name)),
            None => Err(CapError::NotFound(format!(
                "network namespace {name} does not exist (no {} under the host root)",
                NETNS_DIR
            ))),
        }
    }

    /// A backend call in `netns` as the grant and the run's mode say.
    fn call<'a>(&self, scopes: &Scopes<'_>, ns: Option<&'a Path>) -> Call<'a> {
        Call {
            ns: Netns(ns),
            deadline: self.deadline,
            dry_run: self.effects.mode() == Mode::Plan,
            owned_only: scopes.owned_only(),
        }
    }

    /// Checks a namespace from the guest and resolves its file.
    fn scoped_netns(
        &mut self,
        scopes: &Scopes<'_>,
        netns: Option<&str>,
    ) -> Result<Option<PathBuf>, CapError> {
        if let Some(name) = netns {
            scope::netns_name(name)?;
        }
        scopes.netns(netns)?;
        match netns {
            // Plan mode: a namespace only planned has no file yet, and no
            // call reaches the kernel for it.
            Some(n) if self.network.planned.netns.contains(n) => {
                Ok(Some(self.host_root.path().join(NETNS_DIR).join(n)))
            }
            Some(n) => self.netns_file(n).map(Some),
            None => Ok(None),
        }
    }

    /// Records a change the backend made (or, in plan mode, would make).
    fn record(&mut self, action: &'static str, target: String, detail: String) {
        self.effects.record("network", action, &target, detail);
    }
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

/// Maps the contract's link kind to the backend's, checking every value. A
/// veth's peer namespace is checked here and resolved by the caller after
/// the scope checks.
fn link_spec(kind: LinkKind) -> Result<LinkSpec, CapError> {
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
fn cidr(what: &str, s: &str) -> Result<IpNetwork, CapError> {
    s.parse().map_err(|_| {
        CapError::InvalidArgument(format!(
            "{what} {s:?} is not an address with a prefix length (like 10.0.0.1/24 or fd00::1/64)"
        ))
    })
}

/// Maps and checks a route from the guest. The device is required: it is what
/// the grant's interface patterns scope.
fn route(r: network::Route) -> Result<netlink::Route, CapError> {
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
    netlink::check_route(&route)?;
    Ok(route)
}

impl network::Host for RunState {
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
        if let Some(n) = &netns {
            scope::netns_name(n)?;
        }
        let peer = match &kind {
            LinkKind::Veth(v) => Some((v.peer_name.clone(), v.peer_netns.clone())),
            _ => None,
        };
        let mut spec = link_spec(kind)?;
        netlink::check_spec(&spec)?;
        // Everything the call changes must be in scope: the link, the bridge
        // it joins, a veth's peer and the namespace the peer goes to.
        scopes.kind(spec.kind_name())?;
        scopes.interface(&name)?;
        if let Some(master) = &settings.master {
            scopes.interface(master)?;
        }
        if let Some((peer_name, peer_netns)) = &peer {
            scopes.interface(peer_name)?;
            if let Some(peer_netns) = peer_netns {
                scopes.netns(Some(peer_netns))?;
            }
        }
        let ns = self.scoped_netns(&scopes, netns.as_deref())?;
        if let (LinkSpec::Veth { peer_netns, .. }, Some((_, Some(name)))) = (&mut spec, &peer) {
            *peer_netns = match name.as_str() {
                // The host's own: this process's namespace (its main thread
                // never changes namespace).
                scope::HOST_NETNS => Some(PathBuf::from("/proc/self/ns/net")),
                named => self.scoped_netns(&scopes, Some(named))?,
            };
        }
        let call = self.call(&scopes, ns.as_deref());
        let target = format!("link {name} ({})", place(netns.as_deref()));

        // Plan mode: a link that depends on something only planned is planned.
        let peer_ns_planned =
            matches!(&peer, Some((_, Some(p))) if self.network.planned.netns.contains(p));
        let depends_on_planned = netns
            .as_deref()
            .is_some_and(|n| self.network.planned.netns.contains(n))
            || peer_ns_planned
            || [settings.master.as_deref(), spec.lower()]
                .into_iter()
                .flatten()
                .any(|l| self.network.planned.link(netns.as_deref(), l));
        if call.dry_run
            && (depends_on_planned || self.network.planned.link(netns.as_deref(), &name))
        {
            let mut changes = Vec::new();
            if !self.network.planned.link(netns.as_deref(), &name) {
                changes.push(format!("create {}", spec.kind_name()));
                self.network
                    .planned
                    .links
                    .insert((netns.clone(), name.clone()));
            }
            changes.extend(settings.mtu.map(|m| format!("mtu {m}")));
            changes.extend(settings.master.map(|m| format!("master {m}")));
            changes.extend(
                settings
                    .up
                    .map(|up| if up { "up" } else { "down" }.to_owned()),
            );
            if changes.is_empty() {
                return Ok(false);
            }
            self.record("ensure-link", target, changes.join(", "));
            return Ok(true);
        }

        let settings = netlink::LinkSettings {
            mtu: settings.mtu,
            up: settings.up,
            master: settings.master,
        };
        let changes = netlink::ensure_link(call, &name, &spec, &settings)?;
        if changes.is_empty() {
            return Ok(false);
        }
        if call.dry_run && changes.first().is_some_and(|c| c.starts_with("create")) {
            self.network
                .planned
                .links
                .insert((netns.clone(), name.clone()));
            if let Some((peer_name, peer_netns)) = peer {
                let peer_ns = match peer_netns.as_deref() {
                    Some(scope::HOST_NETNS) => None,
                    Some(named) => Some(named.to_owned()),
                    None => netns.clone(),
                };
                self.network.planned.links.insert((peer_ns, peer_name));
            }
        }
        self.record("ensure-link", target, changes.join(", "));
        Ok(true)
    }

    fn delete_link(&mut self, netns: Option<String>, name: String) -> Result<bool, CapError> {
        let grant = self.grant()?;
        let scopes = scopes(&grant)?;
        scope::interface_name(&name)?;
        let ns = self.scoped_netns(&scopes, netns.as_deref())?;
        scopes.interface(&name)?;
        let target = format!("link {name} ({})", place(netns.as_deref()));
        let call = self.call(&scopes, ns.as_deref());
        let planned = self
            .network
            .planned
            .links
            .remove(&(netns.clone(), name.clone()));
        let deleted = planned || netlink::delete_link(call, &name)?;
        if deleted {
            self.record("delete-link", target, String::new());
        }
        Ok(deleted)
    }

    fn list_links(&mut self, netns: Option<String>) -> Result<Vec<LinkInfo>, CapError> {
        let grant = self.grant()?;
        let scopes = scopes(&grant)?;
        if netns
            .as_deref()
            .is_some_and(|n| self.network.planned.netns.contains(n))
        {
            return Ok(Vec::new());
        }
        let ns = self.scoped_netns(&scopes, netns.as_deref())?;
        let links = netlink::list_links(Netns(ns.as_deref()), self.deadline)?;
        Ok(links
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
            .collect())
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
        if self.effects.mode() == Mode::Plan {
            if self.network.planned.netns.contains(&name) {
                return Ok(false);
            }
            let exists = match self.netns_dir(false)? {
                Some(dir) => netlink::is_netns(&dir.join(&name))?,
                None => false,
            };
            if !exists {
                self.network.planned.netns.insert(name);
                self.record("ensure-netns", target, String::new());
            }
            return Ok(!exists);
        }
        let dir = self.netns_dir(true)?.ok_or_else(|| {
            CapError::Io(format!("{NETNS_DIR} under the host root was not created"))
        })?;
        let made = netlink::ensure_netns(&dir, &name)?;
        if made {
            self.record("ensure-netns", target, String::new());
        }
        Ok(made)
    }

    fn delete_netns(&mut self, name: String) -> Result<bool, CapError> {
        let grant = self.grant()?;
        let scopes = scopes(&grant)?;
        scope::netns_name(&name)?;
        scopes.netns(Some(&name))?;
        let target = format!("netns {name}");
        let deleted = if self.network.planned.netns.remove(&name) {
            true
        } else {
            match self.netns_dir(false)? {
                None => false,
                Some(dir) if self.effects.mode() == Mode::Plan => {
                    netlink::is_netns(&dir.join(&name))?
                }
                Some(dir) => netlink::delete_netns(&dir, &name)?,
            }
        };
        if deleted {
            self.record("delete-netns", target, String::new());
        }
        Ok(deleted)
    }

    fn list_netns(&mut self) -> Result<Vec<String>, CapError> {
        let grant = self.grant()?;
        let scopes = scopes(&grant)?;
        let mut names = match self.netns_dir(false)? {
            Some(dir) => netlink::list_netns(&dir)?,
            None => Vec::new(),
        };
        names.extend(self.network.planned.netns.iter().cloned());
        names.sort();
        names.dedup();
        names.retain(|n| scopes.netns(Some(n)).is_ok());
        Ok(names)
    }
}

impl RunState {
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
        let ns = self.scoped_netns(&scopes, netns.as_deref())?;
        scopes.interface(&device)?;
        let action = if add {
            "ensure-address"
        } else {
            "remove-address"
        };
        let target = format!("address {addr} on {device} ({})", place(netns.as_deref()));
        let changed = if self.network.planned.link(netns.as_deref(), &device) {
            add
        } else {
            let call = self.call(&scopes, ns.as_deref());
            if add {
                netlink::ensure_address(call, &device, addr)?
            } else {
                netlink::remove_address(call, &device, addr)?
            }
        };
        if changed {
            self.record(action, target, String::new());
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
        let r = route(r)?;
        let device = r.device.clone().unwrap_or_default();
        let ns = self.scoped_netns(&scopes, netns.as_deref())?;
        scopes.interface(&device)?;
        let action = if add { "ensure-route" } else { "remove-route" };
        let mut target = format!(
            "route {}",
            r.destination
                .map_or_else(|| "default".to_owned(), |d| d.to_string())
        );
        if let Some(gw) = r.gateway {
            target.push_str(&format!(" via {gw}"));
        }
        target.push_str(&format!(" dev {device} ({})", place(netns.as_deref())));
        let changed = if self.network.planned.link(netns.as_deref(), &device) {
            add
        } else {
            let call = self.call(&scopes, ns.as_deref());
            if add {
                netlink::ensure_route(call, &r)?
            } else {
                netlink::remove_route(call, &r)?
            }
        };
        if changed {
            self.record(action, target, String::new());
        }
        Ok(changed)
    }
}
