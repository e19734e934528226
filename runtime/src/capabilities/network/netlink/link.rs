//! Links: ensure (create or check, then converge settings), delete, list.

use std::collections::HashMap;
use std::net::IpAddr;
use std::os::fd::{AsRawFd, OwnedFd};
use std::time::Instant;

use futures_util::TryStreamExt;
use rtnetlink::packet_route::link::{
    InfoData, InfoKind, InfoMacVlan, InfoVeth, InfoVlan, InfoVxlan, LinkAttribute, LinkFlags,
    LinkInfo as NlLinkInfo, LinkMessage, MacVlanMode as NlMacVlanMode,
};
use rtnetlink::{
    Handle, LinkBridge, LinkDummy, LinkMacVlan, LinkMessageBuilder, LinkUnspec, LinkVeth, LinkVlan,
    LinkVxlan, LinkWireguard,
};
use rustix::io::Errno;

use super::{
    Call, Hook, LinkInfo, LinkSettings, LinkSpec, LinkState, MacvlanMode, Netns, Step,
    check_ifname, connect_in, errno, in_netns, is_current_netns, nl_error, open_netns,
};
use crate::capabilities::CapError;
use crate::capabilities::network::scope::OWNED_ALIAS;

/// Ensures a link `name` of kind `spec` exists in `call.ns` with `settings`;
/// returns what changed (empty: nothing). Equal to `ip link add NAME type
/// KIND ...` when it is missing, then `ip link set NAME mtu M master B up|down`.
///
/// A link of another kind or with other kind attributes (VNI, peer, parent,
/// ...) is a `Conflict` and is never replaced. A link this call creates (and a
/// veth's peer) gets the alias [`OWNED_ALIAS`], which marks it as
/// hostaction's. Settings are applied as separate steps after creation: a
/// bridge's MTU given at creation is reset by its first port, one set
/// afterwards is kept.
pub fn ensure_link(
    call: Call<'_>,
    name: &str,
    spec: &LinkSpec,
    settings: &LinkSettings,
) -> Result<Vec<String>, CapError> {
    ensure_link_with(call, name, spec, settings, &mut super::no_hook)
}

/// [`ensure_link`], handing `hook` a [`Step::CreateLink`] right before the
/// link is created, or a [`Step::ChangeLink`] before an existing one's
/// settings change (in plan mode: where it would be).
pub fn ensure_link_with(
    call: Call<'_>,
    name: &str,
    spec: &LinkSpec,
    settings: &LinkSettings,
    hook: &mut Hook<'_>,
) -> Result<Vec<String>, CapError> {
    check_ifname(name)?;
    check_spec(spec)?;
    if let Some(master) = &settings.master {
        check_ifname(master)?;
    }
    in_netns(call.ns, call.deadline, |h| async move {
        let Some(link) = get_link(&h, name).await? else {
            // Missing references fail before anything is made; with
            // `owned_only`, the bridge joined and the parent taken over must
            // be hostaction's too.
            if let Some(master) = &settings.master {
                require(&h, master, "master", call.owned_only).await?;
            }
            if let LinkSpec::Macvlan { parent, .. } | LinkSpec::Vlan { parent, .. } = spec {
                require(&h, parent, "parent", call.owned_only).await?;
            }
            let mut changes = vec![describe(spec)];
            hook(Step::CreateLink)?;
            if call.dry_run {
                check_references(&h, spec).await?;
                changes.extend(settings_changes(settings));
                return Ok(changes);
            }
            create(&h, name, spec).await?;
            let link = get_link(&h, name)
                .await?
                .ok_or_else(|| CapError::Io(format!("link {name} vanished after creation")))?;
            if let Err(e) = mark_owned(&h, &link, spec).await {
                // Without its mark the link would pass for someone else's:
                // take it away again.
                let _ = h.link().del(link.header.index).execute().await;
                return Err(e);
            }
            // A new link is reported with the settings it is made with, as
            // plan mode reports it (which cannot know the kernel's defaults,
            // e.g. that an MTU of 1500 needs no change).
            match converge(&h, name, &link, settings, false).await {
                Ok(_) => changes.extend(settings_changes(settings)),
                Err(e) => {
                    // Half made is not made: take it away, report the error.
                    let _ = h.link().del(link.header.index).execute().await;
                    return Err(e);
                }
            }
            return Ok(changes);
        };
        check_existing(&h, call.ns, name, &link, spec).await?;
        let pending = converge(&h, name, &link, settings, true).await?;
        if !pending.is_empty() && call.owned_only {
            check_owned(&link, name, "changed")?;
            if let Some(master) = &settings.master {
                require(&h, master, "master", true).await?;
            }
        }
        if pending.is_empty() {
            return Ok(pending);
        }
        let before = link_state(&h, &link).await?;
        hook(Step::ChangeLink { before })?;
        if call.dry_run {
            return Ok(pending);
        }
        converge(&h, name, &link, settings, false).await
    })
}

/// Deletes the link `name` in `call.ns`; returns false when it did not exist.
/// Equal to `ip link delete NAME`.
///
/// Deleting a link also changes others: a bridge's ports are released, the
/// macvlans and vlans on a parent and a veth's peer go with it. Each of those
/// in the same namespace must pass `may_touch` (and, with `owned_only`, be
/// hostaction's). A veth's peer in another namespace cannot be named from
/// here: it goes with the link, which is why creating the pair needed both
/// names and namespaces in scope.
pub fn delete_link(
    call: Call<'_>,
    name: &str,
    may_touch: &(dyn Fn(&str) -> bool + Sync),
) -> Result<bool, CapError> {
    delete_link_with(call, name, may_touch, &mut super::no_hook)
}

/// [`delete_link`], handing `hook` a [`Step::DeleteLink`] with the link as
/// it is right before it is deleted (in plan mode: where it would be).
pub fn delete_link_with(
    call: Call<'_>,
    name: &str,
    may_touch: &(dyn Fn(&str) -> bool + Sync),
    hook: &mut Hook<'_>,
) -> Result<bool, CapError> {
    check_ifname(name)?;
    in_netns(call.ns, call.deadline, |h| async move {
        let Some(link) = get_link(&h, name).await? else {
            return Ok(false);
        };
        if call.owned_only {
            check_owned(&link, name, "deleted")?;
        }
        let index = link.header.index;
        let all = all_links(&h).await?;
        for other in &all {
            let here = !other
                .attributes
                .iter()
                .any(|a| matches!(a, LinkAttribute::LinkNetNsId(_)));
            let port = link_master(other) == Some(index);
            let on_it = here && link_lower(other) == Some(index) && other.header.index != index;
            if !(port || on_it) {
                continue;
            }
            let other_name = link_name(other).unwrap_or("?");
            let what = if port {
                "released from it"
            } else {
                "deleted with it"
            };
            if !may_touch(other_name) {
                return Err(CapError::PermissionDenied(format!(
                    "deleting {name} would leave {other_name} {what}, and {other_name} is not in scope"
                )));
            }
            if call.owned_only {
                check_owned(other, other_name, what)?;
            }
        }
        let names = names_of(&all);
        hook(Step::DeleteLink {
            info: link_info(&link, &names),
        })?;
        if call.dry_run {
            return Ok(true);
        }
        match h.link().del(link.header.index).execute().await {
            Ok(()) => Ok(true),
            // Gone between the lookup and the delete: someone else deleted it.
            Err(e) if errno(&e) == Some(Errno::NODEV) => Ok(false),
            Err(e) => Err(nl_error(&format!("delete link {name}"), None, &e)),
        }
    })
}

/// The link `name` must exist (`NotFound` names its `role`) and, with
/// `owned_only`, be hostaction's.
async fn require(h: &Handle, name: &str, role: &str, owned_only: bool) -> Result<(), CapError> {
    let link = get_link(h, name)
        .await?
        .ok_or_else(|| CapError::NotFound(format!("{role} {name} does not exist")))?;
    if owned_only {
        check_owned(&link, name, &format!("used as a {role}"))?;
    }
    Ok(())
}

/// Refuses to touch a link hostaction did not create (`ownedOnly` grants).
pub(super) fn check_owned(link: &LinkMessage, name: &str, what: &str) -> Result<(), CapError> {
    let alias = link.attributes.iter().find_map(|a| match a {
        LinkAttribute::IfAlias(s) => Some(s.as_str()),
        _ => None,
    });
    if alias == Some(OWNED_ALIAS) {
        return Ok(());
    }
    Err(CapError::PermissionDenied(format!(
        "link {name} was not created by hostaction (its alias is not {OWNED_ALIAS:?}); \
         the grant's ownedOnly forbids it to be {what}"
    )))
}

/// Marks a link this call created, and a veth's peer, as hostaction's.
async fn mark_owned(h: &Handle, link: &LinkMessage, spec: &LinkSpec) -> Result<(), CapError> {
    let set_alias = |h: Handle, index: u32, what: String| async move {
        let msg = LinkUnspec::new_with_index(index).alias(OWNED_ALIAS).build();
        h.link()
            .set(msg)
            .execute()
            .await
            .map_err(|e| nl_error(&format!("set the alias of {what}"), None, &e))
    };
    let name = link_name(link).unwrap_or("?").to_string();
    set_alias(h.clone(), link.header.index, name.clone()).await?;
    if let LinkSpec::Veth { peer, peer_netns } = spec {
        let there = match peer_netns {
            Some(path) => connect_in(path)?,
            None => h.clone(),
        };
        let peer_link = get_link(&there, peer)
            .await?
            .ok_or_else(|| CapError::Io(format!("the peer {peer} of {name} vanished")))?;
        set_alias(
            there,
            peer_link.header.index,
            format!("{peer} (peer of {name})"),
        )
        .await?;
    }
    Ok(())
}

/// Checks, without creating anything, that what `spec` refers to exists
/// (plan mode's stand-in for the checks creation makes).
async fn check_references(h: &Handle, spec: &LinkSpec) -> Result<(), CapError> {
    match spec {
        LinkSpec::Veth {
            peer_netns: Some(path),
            ..
        } => {
            open_netns(path)?;
        }
        LinkSpec::Vxlan {
            device: Some(device),
            ..
        } => {
            index_of(h, device, "vxlan device").await?;
        }
        LinkSpec::Macvlan { parent, .. } => {
            index_of(h, parent, "macvlan parent").await?;
        }
        LinkSpec::Vlan { parent, .. } => {
            index_of(h, parent, "vlan parent").await?;
        }
        _ => {}
    }
    Ok(())
}

/// A short description of the link `spec` makes, for the run's effects (a
/// veth's peer namespace is the caller's to name: here it is only a path).
pub fn describe(spec: &LinkSpec) -> String {
    match spec {
        LinkSpec::Veth { peer, .. } => format!("create veth (peer {peer})"),
        LinkSpec::Vxlan {
            vni,
            remote,
            group,
            device,
            ..
        } => {
            let mut s = format!("create vxlan (vni {vni}");
            if let Some(peer) = remote.or(*group) {
                s.push_str(&format!(", remote {peer}"));
            }
            if let Some(device) = device {
                s.push_str(&format!(", dev {device}"));
            }
            s + ")"
        }
        LinkSpec::Macvlan { parent, .. } => format!("create macvlan (parent {parent})"),
        LinkSpec::Vlan { parent, id } => format!("create vlan {id} (parent {parent})"),
        other => format!("create {}", other.kind_name()),
    }
}

/// The changes `settings` makes to a link that does not exist yet.
fn settings_changes(settings: &LinkSettings) -> Vec<String> {
    let mut changes = Vec::new();
    if let Some(mtu) = settings.mtu {
        changes.push(format!("mtu {mtu}"));
    }
    if let Some(master) = &settings.master {
        changes.push(format!("master {master}"));
    }
    if settings.up == Some(true) {
        changes.push("up".to_string());
    }
    changes
}

/// Lists the links of `ns` with their attributes. Equal to `ip -d link show`.
pub fn list_links(ns: Netns<'_>, deadline: Instant) -> Result<Vec<LinkInfo>, CapError> {
    in_netns(ns, deadline, |h| async move {
        let links = all_links(&h).await?;
        let names = names_of(&links);
        Ok(links.iter().map(|l| link_info(l, &names)).collect())
    })
}

/// The link `name` in `ns` as the kernel has it, and the names of the links
/// in `ns` that depend on it: its ports, and the links on it (macvlans,
/// vlans, vxlans) other than a veth's own peer. `None` when it is missing.
pub fn inspect_link(
    ns: Netns<'_>,
    deadline: Instant,
    name: &str,
) -> Result<Option<(LinkInfo, Vec<String>)>, CapError> {
    check_ifname(name)?;
    in_netns(ns, deadline, |h| async move {
        let links = all_links(&h).await?;
        let Some(link) = links.iter().find(|l| link_name(l) == Some(name)) else {
            return Ok(None);
        };
        let index = link.header.index;
        let peer = link_lower(link);
        let dependents = links
            .iter()
            .filter(|other| {
                let here = !other
                    .attributes
                    .iter()
                    .any(|a| matches!(a, LinkAttribute::LinkNetNsId(_)));
                let on_it = here
                    && link_lower(other) == Some(index)
                    && other.header.index != index
                    && Some(other.header.index) != peer;
                link_master(other) == Some(index) || on_it
            })
            .filter_map(|l| link_name(l).map(str::to_owned))
            .collect();
        Ok(Some((link_info(link, &names_of(&links)), dependents)))
    })
}

/// Sets the MTU, the master (`Some(None)`: none) and the state of the link
/// `name` in `ns`, each given one. Equal to `ip link set NAME mtu M
/// master B|nomaster up|down`.
pub fn set_link(
    ns: Netns<'_>,
    deadline: Instant,
    name: &str,
    mtu: Option<u32>,
    master: Option<Option<&str>>,
    up: Option<bool>,
) -> Result<(), CapError> {
    check_ifname(name)?;
    in_netns(ns, deadline, |h| async move {
        let index = index_of(&h, name, "link").await?;
        let set = |msg: LinkMessage, what: &'static str| {
            let h = h.clone();
            async move {
                h.link()
                    .set(msg)
                    .execute()
                    .await
                    .map_err(|e| nl_error(&format!("set the {what} of {name}"), None, &e))
            }
        };
        if let Some(mtu) = mtu {
            set(LinkUnspec::new_with_index(index).mtu(mtu).build(), "MTU").await?;
        }
        if let Some(master) = master {
            let to = match master {
                Some(m) => index_of(&h, m, "master").await?,
                None => 0,
            };
            set(
                LinkUnspec::new_with_index(index).controller(to).build(),
                "master",
            )
            .await?;
        }
        if let Some(up) = up {
            let b = LinkUnspec::new_with_index(index);
            set(if up { b.up() } else { b.down() }.build(), "state").await?;
        }
        Ok(())
    })
}

/// The names of `links` by index.
fn names_of(links: &[LinkMessage]) -> HashMap<u32, String> {
    links
        .iter()
        .filter_map(|l| link_name(l).map(|n| (l.header.index, n.to_string())))
        .collect()
}

/// A link as [`list_links`] reports it; `names` resolves its master.
fn link_info(l: &LinkMessage, names: &HashMap<u32, String>) -> LinkInfo {
    LinkInfo {
        name: link_name(l).unwrap_or_default().to_string(),
        index: l.header.index,
        kind: link_kind(l).map(|k| k.to_string()),
        mtu: link_attr(l, |a| match a {
            LinkAttribute::Mtu(m) => Some(*m),
            _ => None,
        })
        .unwrap_or(0),
        up: l.header.flags.contains(LinkFlags::Up),
        master: link_master(l).and_then(|i| names.get(&i).cloned()),
        mac: link_attr(l, |a| match a {
            LinkAttribute::Address(mac) if !mac.is_empty() => Some(format_mac(mac)),
            _ => None,
        }),
        alias: link_attr(l, |a| match a {
            LinkAttribute::IfAlias(s) => Some(s.clone()),
            _ => None,
        }),
    }
}

/// The settings of `link` as they are (its master by name).
async fn link_state(h: &Handle, link: &LinkMessage) -> Result<LinkState, CapError> {
    let master = match link_master(link) {
        Some(i) => get_link_by_index(h, i)
            .await?
            .as_ref()
            .and_then(link_name)
            .map(str::to_owned),
        None => None,
    };
    Ok(LinkState {
        mtu: link_attr(link, |a| match a {
            LinkAttribute::Mtu(m) => Some(*m),
            _ => None,
        })
        .unwrap_or(0),
        up: link.header.flags.contains(LinkFlags::Up),
        master,
    })
}

/// Refuses kind attributes that cannot describe a link, before any request.
pub fn check_spec(spec: &LinkSpec) -> Result<(), CapError> {
    match spec {
        LinkSpec::Veth { peer, .. } => check_ifname(peer),
        LinkSpec::Macvlan { parent, .. } | LinkSpec::Vlan { parent, .. } => check_ifname(parent),
        LinkSpec::Vxlan {
            vni,
            local,
            remote,
            group,
            device,
            ..
        } => {
            if *vni >= 1 << 24 {
                return Err(CapError::InvalidArgument(format!(
                    "VNI {vni} is out of range (0 to 16777215)"
                )));
            }
            if let Some(device) = device {
                check_ifname(device)?;
            }
            if remote.is_some() && group.is_some() {
                return Err(CapError::InvalidArgument(
                    "a vxlan has a remote or a group, not both".into(),
                ));
            }
            if let Some(remote) = remote
                && remote.is_multicast()
            {
                return Err(CapError::InvalidArgument(format!(
                    "vxlan remote {remote} is a multicast address (use group)"
                )));
            }
            if let Some(group) = group
                && !group.is_multicast()
            {
                return Err(CapError::InvalidArgument(format!(
                    "vxlan group {group} is not a multicast address (use remote)"
                )));
            }
            let peer = remote.or(*group);
            if let (Some(local), Some(peer)) = (local, peer)
                && local.is_ipv4() != peer.is_ipv4()
            {
                return Err(CapError::InvalidArgument(format!(
                    "vxlan local {local} and remote {peer} are of different address families"
                )));
            }
            Ok(())
        }
        LinkSpec::Bridge | LinkSpec::Dummy | LinkSpec::Wireguard => Ok(()),
    }
}

/// Creates the link; `Unsupported` names the kind when the kernel lacks it.
async fn create(h: &Handle, name: &str, spec: &LinkSpec) -> Result<(), CapError> {
    let kind = spec.kind_name();
    // Kept open until the request is sent: the peer's IFLA_NET_NS_FD refers to it.
    let mut _peer_ns: Option<OwnedFd> = None;
    let msg = match spec {
        LinkSpec::Bridge => LinkMessageBuilder::<LinkBridge>::new(name).build(),
        LinkSpec::Veth { peer, peer_netns } => {
            let mut peer_msg = LinkUnspec::new_with_name(peer);
            if let Some(path) = peer_netns {
                let file = open_netns(path)?;
                peer_msg = peer_msg.setns_by_fd(file.as_raw_fd());
                _peer_ns = Some(file);
            }
            LinkMessageBuilder::<LinkVeth>::new_with_info_kind(InfoKind::Veth)
                .name(name)
                .set_info_data(InfoData::Veth(InfoVeth::Peer(peer_msg.build())))
                .build()
        }
        LinkSpec::Vxlan {
            vni,
            local,
            remote,
            group,
            port,
            device,
        } => {
            let mut b = LinkVxlan::new(name, *vni);
            match local {
                Some(IpAddr::V4(a)) => b = b.local(*a),
                Some(IpAddr::V6(a)) => b = b.local6(*a),
                None => {}
            }
            match remote.or(*group) {
                Some(IpAddr::V4(a)) => b = b.group(a),
                Some(IpAddr::V6(a)) => b = b.group6(a),
                None => {}
            }
            if let Some(port) = port {
                b = b.port(*port);
            }
            if let Some(device) = device {
                b = b.dev(index_of(h, device, "vxlan device").await?);
            }
            b.build()
        }
        LinkSpec::Macvlan { parent, mode } => {
            let parent = index_of(h, parent, "macvlan parent").await?;
            LinkMacVlan::new(name, parent, nl_macvlan_mode(*mode)).build()
        }
        LinkSpec::Dummy => LinkDummy::new(name).build(),
        LinkSpec::Vlan { parent, id } => {
            let parent = index_of(h, parent, "vlan parent").await?;
            LinkVlan::new(name, parent, *id).build()
        }
        LinkSpec::Wireguard => LinkWireguard::new(name).build(),
    };
    let res = h.link().add(msg).execute().await;
    drop(_peer_ns);
    res.map_err(|e| {
        if errno(&e) == Some(Errno::EXIST) {
            // The link itself was not there a moment ago: the name is taken
            // by a veth's peer, or someone raced this call.
            let peer = match spec {
                LinkSpec::Veth { peer, .. } => format!(" or its peer {peer}"),
                _ => String::new(),
            };
            CapError::Conflict(format!(
                "cannot create {kind} link {name}: {name}{peer} already exists"
            ))
        } else {
            nl_error(&format!("create {kind} link {name}"), Some(kind), &e)
        }
    })
}

/// Checks that an existing link is what `spec` asks for; `Conflict` says how it differs.
async fn check_existing(
    h: &Handle,
    ns: Netns<'_>,
    name: &str,
    link: &LinkMessage,
    spec: &LinkSpec,
) -> Result<(), CapError> {
    let want = spec.kind_name();
    let kind = link_kind(link).map(|k| k.to_string());
    if kind.as_deref() != Some(want) {
        return Err(CapError::Conflict(format!(
            "link {name} exists as {}, not a {want}; it is not replaced",
            kind.map_or_else(
                || "a device without a kind".to_string(),
                |k| format!("a {k}")
            )
        )));
    }
    let conflict = |what: String| Err(CapError::Conflict(format!("{want} link {name} {what}")));
    match spec {
        LinkSpec::Bridge | LinkSpec::Dummy | LinkSpec::Wireguard => Ok(()),
        LinkSpec::Veth { peer, peer_netns } => {
            // A peer "moved" into the link's own namespace stayed beside it.
            let peer_netns = match peer_netns {
                Some(path) if is_current_netns(path)? => None,
                other => other.as_ref(),
            };
            let peer_index = link_lower(link);
            let peer_elsewhere = link_attr(link, |a| match a {
                LinkAttribute::LinkNetNsId(id) => Some(*id),
                _ => None,
            })
            .is_some();
            match peer_netns {
                None => {
                    if peer_elsewhere {
                        return conflict(format!(
                            "has its peer in another namespace, not {peer} in {ns}"
                        ));
                    }
                    let found = match peer_index {
                        Some(i) => get_link_by_index(h, i).await?,
                        None => None,
                    };
                    match found.as_ref().and_then(link_name) {
                        Some(n) if n == peer => Ok(()),
                        Some(n) => conflict(format!("has peer {n}, not {peer}")),
                        None => conflict(format!("has no peer {peer}")),
                    }
                }
                Some(path) => {
                    if !peer_elsewhere {
                        return conflict(format!(
                            "has its peer in its own namespace, not in {}",
                            path.display()
                        ));
                    }
                    let there = connect_in(path)?;
                    let Some(peer_link) = get_link(&there, peer).await? else {
                        return conflict(format!("has no peer {peer} in {}", path.display()));
                    };
                    let paired = link_kind(&peer_link).map(|k| k.to_string()).as_deref()
                        == Some("veth")
                        && peer_index == Some(peer_link.header.index)
                        && link_lower(&peer_link) == Some(link.header.index);
                    if paired {
                        Ok(())
                    } else {
                        conflict(format!("is not paired with {peer} in {}", path.display()))
                    }
                }
            }
        }
        LinkSpec::Vxlan {
            vni,
            local,
            remote,
            group,
            port,
            device,
        } => {
            let info = vxlan_info(link);
            let has_vni = info.iter().find_map(|i| match i {
                InfoVxlan::Id(v) => Some(*v),
                _ => None,
            });
            if has_vni != Some(*vni) {
                return conflict(format!("has VNI {}, not {vni}", show(has_vni)));
            }
            if let Some(local) = local {
                let has = info.iter().find_map(|i| match i {
                    InfoVxlan::Local(a) => Some(IpAddr::V4(*a)),
                    InfoVxlan::Local6(a) => Some(IpAddr::V6(*a)),
                    _ => None,
                });
                if has != Some(*local) {
                    return conflict(format!("has local {}, not {local}", show(has)));
                }
            }
            if let Some(peer) = remote.or(*group) {
                let has = info.iter().find_map(|i| match i {
                    InfoVxlan::Group(a) => Some(IpAddr::V4(*a)),
                    InfoVxlan::Group6(a) => Some(IpAddr::V6(*a)),
                    _ => None,
                });
                if has != Some(peer) {
                    return conflict(format!("has remote/group {}, not {peer}", show(has)));
                }
            }
            if let Some(port) = port {
                let has = info.iter().find_map(|i| match i {
                    InfoVxlan::Port(p) => Some(*p),
                    _ => None,
                });
                if has != Some(*port) {
                    return conflict(format!("has port {}, not {port}", show(has)));
                }
            }
            if let Some(device) = device {
                let want = index_of(h, device, "vxlan device").await?;
                let has = info.iter().find_map(|i| match i {
                    InfoVxlan::Link(l) => Some(*l),
                    _ => None,
                });
                if has != Some(want) {
                    return conflict(format!("is not on device {device}"));
                }
            }
            Ok(())
        }
        LinkSpec::Macvlan { parent, mode } => {
            let want = index_of(h, parent, "macvlan parent").await?;
            if link_lower(link) != Some(want) {
                return conflict(format!("is not on parent {parent}"));
            }
            let has = link_data(link).and_then(|d| match d {
                InfoData::MacVlan(infos) => infos.iter().find_map(|i| match i {
                    InfoMacVlan::Mode(m) => Some(*m),
                    _ => None,
                }),
                _ => None,
            });
            if has != Some(nl_macvlan_mode(*mode)) {
                return conflict(format!("has mode {has:?}, not {mode:?}"));
            }
            Ok(())
        }
        LinkSpec::Vlan { parent, id } => {
            let want = index_of(h, parent, "vlan parent").await?;
            if link_lower(link) != Some(want) {
                return conflict(format!("is not on parent {parent}"));
            }
            let has = link_data(link).and_then(|d| match d {
                InfoData::Vlan(infos) => infos.iter().find_map(|i| match i {
                    InfoVlan::Id(v) => Some(*v),
                    _ => None,
                }),
                _ => None,
            });
            if has != Some(*id) {
                return conflict(format!("has id {}, not {id}", show(has)));
            }
            Ok(())
        }
    }
}

/// Brings MTU, master and up/down to `settings`, one `ip link set` each;
/// returns the changes made, or with `dry_run` the changes it would make.
async fn converge(
    h: &Handle,
    name: &str,
    link: &LinkMessage,
    settings: &LinkSettings,
    dry_run: bool,
) -> Result<Vec<String>, CapError> {
    let index = link.header.index;
    let mut changes = Vec::new();
    let set = |msg: LinkMessage, what: &'static str| async move {
        if dry_run {
            return Ok(());
        }
        h.link()
            .set(msg)
            .execute()
            .await
            .map_err(|e| nl_error(&format!("set the {what} of {name}"), None, &e))
    };
    if let Some(mtu) = settings.mtu {
        let has = link_attr(link, |a| match a {
            LinkAttribute::Mtu(m) => Some(*m),
            _ => None,
        });
        if has != Some(mtu) {
            set(LinkUnspec::new_with_index(index).mtu(mtu).build(), "MTU").await?;
            changes.push(format!("mtu {mtu}"));
        }
    }
    if let Some(master) = &settings.master {
        let want = index_of(h, master, "master").await?;
        if link_master(link) != Some(want) {
            set(
                LinkUnspec::new_with_index(index).controller(want).build(),
                "master",
            )
            .await?;
            changes.push(format!("master {master}"));
        }
    }
    if let Some(up) = settings.up
        && link.header.flags.contains(LinkFlags::Up) != up
    {
        let b = LinkUnspec::new_with_index(index);
        let msg = if up { b.up() } else { b.down() }.build();
        set(msg, "state").await?;
        changes.push(if up { "up" } else { "down" }.to_string());
    }
    Ok(changes)
}

/// Every link of the namespace. Equal to `ip link show`.
async fn all_links(h: &Handle) -> Result<Vec<LinkMessage>, CapError> {
    h.link()
        .get()
        .execute()
        .try_collect()
        .await
        .map_err(|e| nl_error("list links", None, &e))
}

/// The link named `name`, or `None` when there is none. Equal to `ip link show NAME`.
pub(super) async fn get_link(h: &Handle, name: &str) -> Result<Option<LinkMessage>, CapError> {
    let found = std::pin::pin!(h.link().get().match_name(name).execute())
        .try_next()
        .await;
    match found {
        // The kernel also finds a link by an alternative name: only the
        // primary name counts here.
        Ok(Some(link)) if link_name(&link) == Some(name) => Ok(Some(link)),
        Ok(Some(link)) => Err(CapError::Conflict(format!(
            "{name} is an alternative name of link {}",
            link_name(&link).unwrap_or("?")
        ))),
        Ok(None) => Ok(None),
        Err(e) if errno(&e) == Some(Errno::NODEV) => Ok(None),
        Err(e) => Err(nl_error(&format!("look up link {name}"), None, &e)),
    }
}

/// The link with index `index`, or `None`.
async fn get_link_by_index(h: &Handle, index: u32) -> Result<Option<LinkMessage>, CapError> {
    let found = std::pin::pin!(h.link().get().match_index(index).execute())
        .try_next()
        .await;
    match found {
        Ok(link) => Ok(link),
        Err(e) if errno(&e) == Some(Errno::NODEV) => Ok(None),
        Err(e) => Err(nl_error(&format!("look up link #{index}"), None, &e)),
    }
}

/// The index of the link `name`; `NotFound` says which `role` it was to play.
pub(super) async fn index_of(h: &Handle, name: &str, role: &str) -> Result<u32, CapError> {
    check_ifname(name)?;
    get_link(h, name)
        .await?
        .map(|l| l.header.index)
        .ok_or_else(|| CapError::NotFound(format!("{role} {name} does not exist")))
}

/// The index of the link `name` a call is about to change (its addresses or
/// routes); with `owned_only`, it must be hostaction's.
pub(super) async fn target_index(
    h: &Handle,
    name: &str,
    role: &str,
    owned_only: bool,
) -> Result<u32, CapError> {
    check_ifname(name)?;
    let link = get_link(h, name)
        .await?
        .ok_or_else(|| CapError::NotFound(format!("{role} {name} does not exist")))?;
    if owned_only {
        check_owned(&link, name, "given addresses or routes")?;
    }
    Ok(link.header.index)
}

/// The first attribute of `link` that `pick` accepts.
fn link_attr<T>(link: &LinkMessage, pick: impl Fn(&LinkAttribute) -> Option<T>) -> Option<T> {
    link.attributes.iter().find_map(pick)
}

/// The link's name (IFLA_IFNAME).
fn link_name(link: &LinkMessage) -> Option<&str> {
    link.attributes.iter().find_map(|a| match a {
        LinkAttribute::IfName(n) => Some(n.as_str()),
        _ => None,
    })
}

/// The link's master index (IFLA_MASTER).
fn link_master(link: &LinkMessage) -> Option<u32> {
    link_attr(link, |a| match a {
        LinkAttribute::Controller(i) => Some(*i),
        _ => None,
    })
}

/// The link's lower link index (IFLA_LINK): a veth's peer, a macvlan's parent.
fn link_lower(link: &LinkMessage) -> Option<u32> {
    link_attr(link, |a| match a {
        LinkAttribute::Link(i) => Some(*i),
        _ => None,
    })
}

/// The link's kind (IFLA_INFO_KIND).
fn link_kind(link: &LinkMessage) -> Option<&InfoKind> {
    link_infos(link).iter().find_map(|i| match i {
        NlLinkInfo::Kind(k) => Some(k),
        _ => None,
    })
}

/// The link's kind attributes (IFLA_INFO_DATA).
fn link_data(link: &LinkMessage) -> Option<&InfoData> {
    link_infos(link).iter().find_map(|i| match i {
        NlLinkInfo::Data(d) => Some(d),
        _ => None,
    })
}

/// The link's IFLA_LINKINFO entries.
fn link_infos(link: &LinkMessage) -> &[NlLinkInfo] {
    link.attributes
        .iter()
        .find_map(|a| match a {
            LinkAttribute::LinkInfo(infos) => Some(infos.as_slice()),
            _ => None,
        })
        .unwrap_or(&[])
}

/// A vxlan link's attributes; empty for other links.
fn vxlan_info(link: &LinkMessage) -> &[InfoVxlan] {
    match link_data(link) {
        Some(InfoData::Vxlan(infos)) => infos.as_slice(),
        _ => &[],
    }
}

/// The netlink value of a macvlan mode.
fn nl_macvlan_mode(mode: MacvlanMode) -> NlMacVlanMode {
    match mode {
        MacvlanMode::Bridge => NlMacVlanMode::Bridge,
        MacvlanMode::Private => NlMacVlanMode::Private,
        MacvlanMode::Vepa => NlMacVlanMode::Vepa,
        MacvlanMode::Passthru => NlMacVlanMode::Passthrough,
    }
}

/// A hardware address as `aa:bb:cc:dd:ee:ff`.
fn format_mac(bytes: &[u8]) -> String {
    bytes
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect::<Vec<_>>()
        .join(":")
}

/// An optional kernel value for a conflict message.
fn show<T: std::fmt::Display>(value: Option<T>) -> String {
    value.map_or_else(|| "none".to_string(), |v| v.to_string())
}
