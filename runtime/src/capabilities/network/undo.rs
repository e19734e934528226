//! What reverses a network effect, and reversing it.
//!
//! Each record names its namespace as the run did (`None`: the host's own,
//! which is the undoing process's; else a name under the host root's
//! `/var/run/netns`), and the namespace is found again as the capability
//! finds it: the name checked, the directory resolved inside the host root,
//! the file opened without following symlinks and only if it is a network
//! namespace. A journal cannot point an undo anywhere the run could not go.
//!
//! What is reversed, and only while the target is still as the run left it
//! (else `conflict`, and it is left alone):
//! - a link the run created is deleted, while it is the same kind, carries
//!   hostaction's alias, has the settings the run gave it, and nothing else
//!   depends on it (a port, a macvlan or vlan on it);
//! - settings the run changed on an existing link (MTU, master, up/down)
//!   are set back, while each is what the run set (or already as before);
//! - an address or route added is removed, one removed is added back (a
//!   route with its gateway, device, metric and protocol; an address with
//!   its prefix length. Other attributes — a route's preferred source, an
//!   IPv4 address's broadcast — are not journaled: one added back has the
//!   kernel's default);
//! - a namespace the run created is deleted, while no link but loopback is
//!   in it (the run's own links in it are undone first, newest first).
//!
//! What is not ([`crate::undo::Undo::Irreversible`], journaled by the
//! capability with what it saw): deleting a link (a new one would get
//! another index and MAC, and what went with it — its addresses and routes,
//! a bridge's ports, a veth's peer, the links on a parent — is not
//! recreated), and deleting a namespace (everything in it is gone with it).

use std::net::IpAddr;
use std::os::fd::{AsRawFd, OwnedFd};
use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use super::netlink::{self, Call, LinkState, Netns};
use super::scope::{self, OWNED_ALIAS};
use super::{NETNS_DIR, OWNED_NETNS_DIR};
use crate::capabilities::CapError;
use crate::undo::{UndoCtx, Undone};

/// A value the run changed: what it was, and what the run set.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Change<T> {
    /// Before the run.
    pub before: T,
    /// As the run set it.
    pub after: T,
}

/// A route as journaled: each field as the run gave it (added) or as the
/// kernel had it (removed).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct JournaledRoute {
    /// Destination network; none is the default route.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub destination: Option<String>,
    /// Next hop.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gateway: Option<String>,
    /// Output device.
    pub device: String,
    /// Metric; for an added route without one, any metric matches.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub metric: Option<u32>,
    /// A removed route's protocol (`RTPROT_*`: who added it), which it is
    /// added back with.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub protocol: Option<u8>,
}

impl JournaledRoute {
    /// The journal's form of a backend route.
    pub(crate) fn of(r: &netlink::Route) -> Self {
        Self {
            destination: r.destination.map(|d| d.to_string()),
            gateway: r.gateway.map(|g| g.to_string()),
            device: r.device.clone().unwrap_or_default(),
            metric: r.metric,
            protocol: None,
        }
    }

    /// The backend route again, every field checked as a guest's would be.
    fn route(&self) -> Result<netlink::Route, CapError> {
        scope::interface_name(&self.device)?;
        let route = netlink::Route {
            destination: self
                .destination
                .as_deref()
                .map(|d| super::cidr("journaled route destination", d))
                .transpose()?,
            gateway: self
                .gateway
                .as_deref()
                .map(|g| {
                    g.parse::<IpAddr>().map_err(|_| {
                        CapError::InvalidArgument(format!(
                            "journaled route gateway {g:?} is not an IP address"
                        ))
                    })
                })
                .transpose()?,
            device: Some(self.device.clone()),
            metric: self.metric,
        };
        netlink::check_route(&route)?;
        Ok(route)
    }
}

/// What reverses one network effect. `netns` is the namespace's name, none
/// for the host's own.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "kebab-case")]
pub enum NetworkUndo {
    /// The run created this link, of this kind, with these settings (the
    /// ones it gave; none: the kernel's default).
    LinkCreated {
        /// Its namespace.
        netns: Option<String>,
        /// Its name.
        name: String,
        /// Its kind (`bridge`, `veth`, ...); not `kind`, which tags the
        /// journal's record.
        link_kind: String,
        /// The MTU the run set.
        mtu: Option<u32>,
        /// The state the run set.
        up: Option<bool>,
        /// The master the run set.
        master: Option<String>,
    },
    /// The run changed these settings of an existing link.
    LinkChanged {
        /// Its namespace.
        netns: Option<String>,
        /// Its name.
        name: String,
        /// Its MTU.
        mtu: Option<Change<u32>>,
        /// Whether it is up.
        up: Option<Change<bool>>,
        /// Its master (none: no master).
        master: Option<Change<Option<String>>>,
    },
    /// The run added this address (`10.0.0.1/24`) to the device.
    AddressAdded {
        /// Its namespace.
        netns: Option<String>,
        /// The link it is on.
        device: String,
        /// The address and prefix length.
        address: String,
    },
    /// The run removed this address from the device.
    AddressRemoved {
        /// Its namespace.
        netns: Option<String>,
        /// The link it was on.
        device: String,
        /// The address and prefix length.
        address: String,
    },
    /// The run added this route.
    RouteAdded {
        /// Its namespace.
        netns: Option<String>,
        /// The route as the run gave it.
        route: JournaledRoute,
    },
    /// The run removed these routes (as the kernel had them).
    RoutesRemoved {
        /// Their namespace.
        netns: Option<String>,
        /// Each route removed.
        routes: Vec<JournaledRoute>,
    },
    /// The run created this named namespace.
    NetnsCreated {
        /// Its name under `/var/run/netns`.
        name: String,
    },
}

/// A namespace found again for an undo.
enum Found {
    /// Here it is; the handle keeps it open while the undo works in it.
    Ns(Option<(OwnedFd, PathBuf)>),
    /// The named namespace is gone (and with it what was in it).
    Gone,
}

impl Found {
    fn netns(&self) -> Netns<'_> {
        match self {
            Found::Ns(Some((_, path))) => Netns(Some(path)),
            _ => Netns(None),
        }
    }
}

/// Finds the namespace `netns` names, as the capability does.
fn find(ctx: &UndoCtx<'_>, netns: Option<&str>) -> Result<Found, CapError> {
    let Some(name) = netns else {
        return Ok(Found::Ns(None));
    };
    scope::netns_name(name)?;
    let Some(dir) = netns_dir(ctx)? else {
        return Ok(Found::Gone);
    };
    match netlink::open_netns(&dir.join(name)) {
        Ok(fd) => {
            let path = PathBuf::from(format!("/proc/self/fd/{}", fd.as_raw_fd()));
            Ok(Found::Ns(Some((fd, path))))
        }
        Err(CapError::NotFound(_)) => Ok(Found::Gone),
        Err(e) => Err(e),
    }
}

/// The host root's `/var/run/netns`, if it exists.
fn netns_dir(ctx: &UndoCtx<'_>) -> Result<Option<PathBuf>, CapError> {
    ctx.host.root().resolve_dir(NETNS_DIR, false).map_err(|e| {
        CapError::Io(format!(
            "cannot resolve {NETNS_DIR} under the host root: {e}"
        ))
    })
}

/// A call that makes its changes, bounded by the undo's deadline.
fn apply<'a>(ns: Netns<'a>, ctx: &UndoCtx<'_>) -> Call<'a> {
    Call::apply(ns, ctx.deadline)
}

/// A call that only looks (the backend's plan mode).
fn look<'a>(ns: Netns<'a>, ctx: &UndoCtx<'_>) -> Call<'a> {
    Call {
        dry_run: true,
        ..apply(ns, ctx)
    }
}

impl NetworkUndo {
    /// Reverses the effect, if the host is still as the run left it.
    pub(crate) fn undo(&self, ctx: &UndoCtx<'_>) -> Undone {
        self.try_undo(ctx)
            .unwrap_or_else(|e| Undone::Failed(e.to_string()))
    }

    fn try_undo(&self, ctx: &UndoCtx<'_>) -> Result<Undone, CapError> {
        match self {
            NetworkUndo::LinkCreated {
                netns,
                name,
                link_kind: kind,
                mtu,
                up,
                master,
            } => {
                let found = find(ctx, netns.as_deref())?;
                if matches!(found, Found::Gone) {
                    return Ok(Undone::Unchanged);
                }
                let ns = found.netns();
                let Some((info, dependents)) = netlink::inspect_link(ns, ctx.deadline, name)?
                else {
                    return Ok(Undone::Unchanged);
                };
                let mut differs = Vec::new();
                if info.kind.as_deref() != Some(kind.as_str()) {
                    differs.push(format!(
                        "it is {} now, not the {kind} the run made",
                        info.kind
                            .as_deref()
                            .map_or_else(|| "a device without a kind".into(), |k| format!("a {k}"))
                    ));
                }
                if info.alias.as_deref() != Some(OWNED_ALIAS) {
                    differs.push("it does not carry hostaction's alias".into());
                }
                if let Some(mtu) = mtu
                    && info.mtu != *mtu
                {
                    differs.push(format!("its mtu is {}, the run set {mtu}", info.mtu));
                }
                if let Some(up) = up
                    && info.up != *up
                {
                    differs.push(format!(
                        "it is {}, the run set it {}",
                        state(info.up),
                        state(*up)
                    ));
                }
                if master.is_some() && info.master != *master {
                    differs.push(format!(
                        "its master is {}, the run set {}",
                        show(&info.master),
                        show(master)
                    ));
                }
                if !dependents.is_empty() {
                    differs.push(format!(
                        "{} depend on it (ports, links on it)",
                        dependents.join(", ")
                    ));
                }
                if !differs.is_empty() {
                    return Ok(Undone::Conflict(format!(
                        "link {name} is not as the run left it: {}; it is left",
                        differs.join("; ")
                    )));
                }
                Ok(if netlink::delete_link(apply(ns, ctx), name, &|_| true)? {
                    Undone::Restored
                } else {
                    Undone::Unchanged
                })
            }
            NetworkUndo::LinkChanged {
                netns,
                name,
                mtu,
                up,
                master,
            } => {
                let found = find(ctx, netns.as_deref())?;
                let gone = || {
                    Undone::Conflict(format!(
                        "link {name} is gone: its settings cannot be set back"
                    ))
                };
                if matches!(found, Found::Gone) {
                    return Ok(gone());
                }
                let ns = found.netns();
                let Some((info, _)) = netlink::inspect_link(ns, ctx.deadline, name)? else {
                    return Ok(gone());
                };
                let now = LinkState {
                    mtu: info.mtu,
                    up: info.up,
                    master: info.master,
                };
                let mut differs = Vec::new();
                // Each setting: back to `before` if it is `after`; left if
                // it is `before` already; else someone changed it.
                fn back<T: PartialEq + Clone>(
                    c: &Option<Change<T>>,
                    now: &T,
                    what: &str,
                    show: impl Fn(&T) -> String,
                    differs: &mut Vec<String>,
                ) -> Option<T> {
                    let c = c.as_ref()?;
                    if *now == c.after {
                        Some(c.before.clone())
                    } else {
                        if *now != c.before {
                            differs.push(format!(
                                "its {what} is {}, the run set {} (it was {})",
                                show(now),
                                show(&c.after),
                                show(&c.before)
                            ));
                        }
                        None
                    }
                }
                let mtu = back(mtu, &now.mtu, "mtu", u32::to_string, &mut differs);
                let up = back(up, &now.up, "state", |u| state(*u).into(), &mut differs);
                let master = back(master, &now.master, "master", show, &mut differs);
                if !differs.is_empty() {
                    return Ok(Undone::Conflict(format!(
                        "link {name} changed since the run: {}; it is left",
                        differs.join("; ")
                    )));
                }
                if mtu.is_none() && up.is_none() && master.is_none() {
                    return Ok(Undone::Unchanged);
                }
                netlink::set_link(
                    ns,
                    ctx.deadline,
                    name,
                    mtu,
                    master.as_ref().map(Option::as_deref),
                    up,
                )?;
                Ok(Undone::Restored)
            }
            NetworkUndo::AddressAdded {
                netns,
                device,
                address,
            } => {
                scope::interface_name(device)?;
                let addr = super::cidr("journaled address", address)?;
                let found = find(ctx, netns.as_deref())?;
                if matches!(found, Found::Gone) {
                    return Ok(Undone::Unchanged);
                }
                let ns = found.netns();
                match netlink::ensure_address(look(ns, ctx), device, addr) {
                    // Absent (with the device, or the device is gone).
                    Ok(true) | Err(CapError::NotFound(_)) => Ok(Undone::Unchanged),
                    Ok(false) => Ok(removed(netlink::remove_address(
                        apply(ns, ctx),
                        device,
                        addr,
                    )?)),
                    Err(CapError::Conflict(why)) => Ok(Undone::Conflict(why)),
                    Err(e) => Err(e),
                }
            }
            NetworkUndo::AddressRemoved {
                netns,
                device,
                address,
            } => {
                scope::interface_name(device)?;
                let addr = super::cidr("journaled address", address)?;
                let found = find(ctx, netns.as_deref())?;
                let gone = |what: &str| {
                    Undone::Conflict(format!("{what} is gone: {address} cannot be added back"))
                };
                if matches!(found, Found::Gone) {
                    return Ok(gone(&format!("netns {}", show(netns))));
                }
                let ns = found.netns();
                match netlink::ensure_address(look(ns, ctx), device, addr) {
                    Ok(false) => Ok(Undone::Unchanged),
                    Ok(true) => match netlink::ensure_address(apply(ns, ctx), device, addr) {
                        Ok(true) => Ok(Undone::Restored),
                        Ok(false) => Ok(Undone::Unchanged),
                        Err(CapError::Conflict(why)) => Ok(Undone::Conflict(why)),
                        Err(e) => Err(e),
                    },
                    Err(CapError::NotFound(_)) => Ok(gone(&format!("device {device}"))),
                    Err(CapError::Conflict(why)) => Ok(Undone::Conflict(why)),
                    Err(e) => Err(e),
                }
            }
            NetworkUndo::RouteAdded { netns, route } => {
                let route = route.route()?;
                let found = find(ctx, netns.as_deref())?;
                if matches!(found, Found::Gone) {
                    return Ok(Undone::Unchanged);
                }
                let ns = found.netns();
                if !netlink::remove_route(look(ns, ctx), &route)? {
                    return Ok(Undone::Unchanged);
                }
                Ok(removed(netlink::remove_route(apply(ns, ctx), &route)?))
            }
            NetworkUndo::RoutesRemoved { netns, routes } => {
                let routes = routes
                    .iter()
                    .map(|r| Ok((r.route()?, r.protocol)))
                    .collect::<Result<Vec<_>, CapError>>()?;
                let found = find(ctx, netns.as_deref())?;
                if matches!(found, Found::Gone) {
                    return Ok(Undone::Conflict(format!(
                        "netns {} is gone: its routes cannot be added back",
                        show(netns)
                    )));
                }
                let ns = found.netns();
                let mut missing = Vec::new();
                for (route, protocol) in &routes {
                    match netlink::ensure_route(look(ns, ctx), route) {
                        Ok(true) => missing.push((route, protocol)),
                        Ok(false) => {}
                        Err(CapError::NotFound(why)) => {
                            return Ok(Undone::Conflict(format!(
                                "{why}: the route cannot be added back"
                            )));
                        }
                        Err(e) => return Err(e),
                    }
                }
                if missing.is_empty() {
                    return Ok(Undone::Unchanged);
                }
                for (route, protocol) in missing {
                    let added = match protocol {
                        Some(p) => netlink::ensure_route_as(apply(ns, ctx), route, *p),
                        None => netlink::ensure_route(apply(ns, ctx), route),
                    };
                    match added {
                        Ok(_) => {}
                        Err(CapError::Conflict(why)) => return Ok(Undone::Conflict(why)),
                        Err(e) => return Err(e),
                    }
                }
                Ok(Undone::Restored)
            }
            NetworkUndo::NetnsCreated { name } => {
                scope::netns_name(name)?;
                let Some(dir) = netns_dir(ctx)? else {
                    return Ok(Undone::Unchanged);
                };
                let found = find(ctx, Some(name.as_str()))?;
                if matches!(found, Found::Gone) {
                    forget_mark(ctx, name);
                    return Ok(Undone::Unchanged);
                }
                let others: Vec<String> = netlink::list_links(found.netns(), ctx.deadline)?
                    .into_iter()
                    .map(|l| l.name)
                    .filter(|n| n != "lo")
                    .collect();
                if !others.is_empty() {
                    return Ok(Undone::Conflict(format!(
                        "netns {name} holds links the run did not leave there ({}); it is left",
                        others.join(", ")
                    )));
                }
                drop(found);
                let deleted = netlink::delete_netns(&dir, name)?;
                forget_mark(ctx, name);
                Ok(if deleted {
                    Undone::Restored
                } else {
                    Undone::Unchanged
                })
            }
        }
    }
}

/// Removes hostaction's mark of a namespace it made (for `ownedOnly`).
fn forget_mark(ctx: &UndoCtx<'_>, name: &str) {
    if let Ok(Some(dir)) = ctx.host.root().resolve_dir(OWNED_NETNS_DIR, false) {
        let _ = std::fs::remove_file(dir.join(name));
    }
}

/// Whether a removal undid the effect (false: it went meanwhile).
fn removed(done: bool) -> Undone {
    if done {
        Undone::Restored
    } else {
        Undone::Unchanged
    }
}

fn state(up: bool) -> &'static str {
    if up { "up" } else { "down" }
}

fn show(v: &Option<String>) -> String {
    v.clone().unwrap_or_else(|| "none".into())
}
