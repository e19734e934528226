//! Addresses on links, and routes in the main table.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use futures_util::TryStreamExt;
use rtnetlink::packet_route::address::{AddressAttribute, AddressMessage};
use rtnetlink::packet_route::route::{
    RouteAddress, RouteAttribute, RouteHeader, RouteMessage, RouteProtocol, RouteScope, RouteType,
};
use rtnetlink::{Handle, RouteMessageBuilder};
use rustix::io::Errno;

use super::link::target_index;
use super::{Call, Hook, IpNetwork, Route, Step, check_ifname, errno, in_netns, nl_error};
use crate::capabilities::CapError;

/// Ensures `addr` (address and prefix length) is on `device`; returns whether
/// it was added. Equal to `ip address add ADDR dev DEVICE`.
pub fn ensure_address(call: Call<'_>, device: &str, addr: IpNetwork) -> Result<bool, CapError> {
    ensure_address_with(call, device, addr, &mut super::no_hook)
}

/// [`ensure_address`], handing `hook` a [`Step::AddAddress`] right before
/// the address is added.
pub fn ensure_address_with(
    call: Call<'_>,
    device: &str,
    addr: IpNetwork,
    hook: &mut Hook<'_>,
) -> Result<bool, CapError> {
    check_ifname(device)?;
    in_netns(call.ns, call.deadline, |h| async move {
        let index = target_index(&h, device, "device", call.owned_only).await?;
        for m in addresses(&h, index).await? {
            if address_of(&m) != Some(addr.addr()) {
                continue;
            }
            if m.header.prefix_len == addr.prefix_len() {
                return Ok(false);
            }
            // IPv4 would take the address twice; neither is what was asked.
            return Err(CapError::Conflict(format!(
                "{} is on {device} as /{}, not /{}; it is not replaced",
                addr.addr(),
                m.header.prefix_len,
                addr.prefix_len()
            )));
        }
        hook(Step::AddAddress)?;
        if call.dry_run {
            return Ok(true);
        }
        h.address()
            .add(index, addr.addr(), addr.prefix_len())
            .execute()
            .await
            .map_err(|e| {
                if errno(&e) == Some(Errno::EXIST) {
                    CapError::Conflict(format!(
                        "{} is on {device} with another prefix length",
                        addr.addr()
                    ))
                } else {
                    nl_error(&format!("add address {addr} to {device}"), None, &e)
                }
            })?;
        Ok(true)
    })
}

/// Removes `addr` from `device`; returns false when it was not there.
/// Equal to `ip address delete ADDR dev DEVICE`.
pub fn remove_address(call: Call<'_>, device: &str, addr: IpNetwork) -> Result<bool, CapError> {
    remove_address_with(call, device, addr, &mut super::no_hook)
}

/// [`remove_address`], handing `hook` a [`Step::RemoveAddress`] right
/// before the address is removed.
pub fn remove_address_with(
    call: Call<'_>,
    device: &str,
    addr: IpNetwork,
    hook: &mut Hook<'_>,
) -> Result<bool, CapError> {
    check_ifname(device)?;
    in_netns(call.ns, call.deadline, |h| async move {
        let index = target_index(&h, device, "device", call.owned_only).await?;
        let Some(found) = find_address(&h, index, addr).await? else {
            return Ok(false);
        };
        hook(Step::RemoveAddress)?;
        if call.dry_run {
            return Ok(true);
        }
        match h.address().del(found).execute().await {
            Ok(()) => Ok(true),
            // Removed between the lookup and the delete.
            Err(e) if errno(&e) == Some(Errno::ADDRNOTAVAIL) => Ok(false),
            Err(e) => Err(nl_error(
                &format!("remove address {addr} from {device}"),
                None,
                &e,
            )),
        }
    })
}

/// Ensures `route` is in the main table; returns whether it was added.
/// Equal to `ip route add DEST [via GATEWAY] [dev DEVICE] [metric METRIC]`.
///
/// A route that matches every given field counts as present. A route to the
/// same destination and metric with another gateway or device is a
/// `Conflict`; it is never replaced.
pub fn ensure_route(call: Call<'_>, route: &Route) -> Result<bool, CapError> {
    ensure_route_with(call, route, &mut super::no_hook)
}

/// [`ensure_route`], handing `hook` a [`Step::AddRoute`] right before the
/// route is added.
pub fn ensure_route_with(
    call: Call<'_>,
    route: &Route,
    hook: &mut Hook<'_>,
) -> Result<bool, CapError> {
    add_route(call, route, None, hook)
}

/// [`ensure_route`] with the protocol (`RTPROT_*`) the route is added as:
/// a removed route added back as it was.
pub fn ensure_route_as(call: Call<'_>, route: &Route, protocol: u8) -> Result<bool, CapError> {
    add_route(call, route, Some(protocol), &mut super::no_hook)
}

fn add_route(
    call: Call<'_>,
    route: &Route,
    protocol: Option<u8>,
    hook: &mut Hook<'_>,
) -> Result<bool, CapError> {
    let v6 = check_route(route)?;
    in_netns(call.ns, call.deadline, |h| async move {
        let oif = match &route.device {
            Some(device) => Some(target_index(&h, device, "route device", call.owned_only).await?),
            None => None,
        };
        if !find_routes(&h, route, v6, oif).await?.is_empty() {
            return Ok(false);
        }
        let mut msg = build_route(route, v6, oif)?;
        if let Some(protocol) = protocol {
            msg.header.protocol = RouteProtocol::from(protocol);
        }
        hook(Step::AddRoute)?;
        if call.dry_run {
            return Ok(true);
        }
        h.route().add(msg).execute().await.map_err(|e| {
            if errno(&e) == Some(Errno::EXIST) {
                CapError::Conflict(format!(
                    "a route to {} with another gateway or device exists",
                    show_dest(route)
                ))
            } else {
                nl_error(&format!("add route to {}", show_dest(route)), None, &e)
            }
        })?;
        Ok(true)
    })
}

/// Removes every main-table route that matches each given field of `route`;
/// returns false when there was none. Equal to `ip route delete DEST ...`.
pub fn remove_route(call: Call<'_>, route: &Route) -> Result<bool, CapError> {
    remove_route_with(call, route, &mut super::no_hook)
}

/// [`remove_route`], handing `hook` a [`Step::RemoveRoutes`] with each
/// route found, as the kernel has it, right before they are removed.
pub fn remove_route_with(
    call: Call<'_>,
    route: &Route,
    hook: &mut Hook<'_>,
) -> Result<bool, CapError> {
    let v6 = check_route(route)?;
    in_netns(call.ns, call.deadline, |h| async move {
        let oif = match &route.device {
            Some(device) => match target_index(&h, device, "route device", call.owned_only).await {
                Ok(index) => Some(index),
                // No such device, so no route through it.
                Err(CapError::NotFound(_)) => return Ok(false),
                Err(e) => return Err(e),
            },
            None => None,
        };
        let found = find_routes(&h, route, v6, oif).await?;
        if found.is_empty() {
            return Ok(false);
        }
        let routes = found
            .iter()
            .map(|m| (found_route(route, m), u8::from(m.header.protocol)))
            .collect();
        hook(Step::RemoveRoutes { routes })?;
        if call.dry_run {
            return Ok(true);
        }
        let mut removed = false;
        for found in found {
            let mut msg = RouteMessage::default();
            msg.header = found.header.clone();
            msg.attributes = found
                .attributes
                .into_iter()
                .filter(|a| {
                    matches!(
                        a,
                        RouteAttribute::Destination(_)
                            | RouteAttribute::Gateway(_)
                            | RouteAttribute::Oif(_)
                            | RouteAttribute::Priority(_)
                            | RouteAttribute::Table(_)
                    )
                })
                .collect();
            match h.route().del(msg).execute().await {
                Ok(()) => removed = true,
                // Removed between the lookup and the delete.
                Err(e) if errno(&e) == Some(Errno::SRCH) => {}
                Err(e) => {
                    return Err(nl_error(
                        &format!("remove route to {}", show_dest(route)),
                        None,
                        &e,
                    ));
                }
            }
        }
        Ok(removed)
    })
}

/// A route `remove_route` found for `route`, each field as the kernel has it.
fn found_route(route: &Route, m: &RouteMessage) -> Route {
    Route {
        destination: route.destination,
        gateway: m.attributes.iter().find_map(|a| match a {
            RouteAttribute::Gateway(g) => route_ip(g),
            _ => None,
        }),
        device: route.device.clone(),
        metric: Some(
            m.attributes
                .iter()
                .find_map(|a| match a {
                    RouteAttribute::Priority(p) => Some(*p),
                    _ => None,
                })
                .unwrap_or(0),
        ),
    }
}

/// The address message for `addr` on link `index`, if it is there.
async fn find_address(
    h: &Handle,
    index: u32,
    addr: IpNetwork,
) -> Result<Option<AddressMessage>, CapError> {
    Ok(addresses(h, index)
        .await?
        .into_iter()
        .find(|m| m.header.prefix_len == addr.prefix_len() && address_of(m) == Some(addr.addr())))
}

/// The addresses on link `index`.
async fn addresses(h: &Handle, index: u32) -> Result<Vec<AddressMessage>, CapError> {
    h.address()
        .get()
        .set_link_index_filter(index)
        .execute()
        .try_collect()
        .await
        .map_err(|e| nl_error("list addresses", None, &e))
}

/// The local address of an address message: IFA_LOCAL for IPv4 (IFA_ADDRESS
/// is the peer on point-to-point links), IFA_ADDRESS for IPv6.
fn address_of(m: &AddressMessage) -> Option<IpAddr> {
    let local = m.attributes.iter().find_map(|a| match a {
        AddressAttribute::Local(ip) => Some(*ip),
        _ => None,
    });
    local.or_else(|| {
        m.attributes.iter().find_map(|a| match a {
            AddressAttribute::Address(ip) => Some(*ip),
            _ => None,
        })
    })
}

/// Checks a route's fields; returns whether it is IPv6.
pub fn check_route(route: &Route) -> Result<bool, CapError> {
    if let Some(device) = &route.device {
        check_ifname(device)?;
    }
    if let Some(dest) = route.destination
        && dest.addr() != dest.network()
    {
        return Err(CapError::InvalidArgument(format!(
            "route destination {dest} has host bits set (did you mean {}?)",
            dest.trunc()
        )));
    }
    let dest_v6 = route.destination.map(|d| matches!(d, IpNetwork::V6(_)));
    let gw_v6 = route.gateway.map(|g| g.is_ipv6());
    match (dest_v6, gw_v6) {
        (Some(d), Some(g)) if d != g => Err(CapError::InvalidArgument(format!(
            "route to {} via {}: the addresses are of different families",
            show_dest(route),
            route.gateway.map_or_else(String::new, |g| g.to_string())
        ))),
        (Some(v6), _) | (None, Some(v6)) => Ok(v6),
        // A default route with only a device: IPv4, as `ip route add default dev X`.
        (None, None) => Ok(false),
    }
}

/// The main-table unicast routes that match every given field of `route`.
async fn find_routes(
    h: &Handle,
    route: &Route,
    v6: bool,
    oif: Option<u32>,
) -> Result<Vec<RouteMessage>, CapError> {
    let filter = if v6 {
        RouteMessageBuilder::<Ipv6Addr>::new().build()
    } else {
        RouteMessageBuilder::<Ipv4Addr>::new().build()
    };
    let all: Vec<RouteMessage> = h
        .route()
        .get(filter)
        .execute()
        .try_collect()
        .await
        .map_err(|e| nl_error("list routes", None, &e))?;
    let (dest, dest_len) = match route.destination {
        Some(d) => (Some(d.network()), d.prefix_len()),
        None => (None, 0),
    };
    Ok(all
        .into_iter()
        .filter(|m| {
            let table = m
                .attributes
                .iter()
                .find_map(|a| match a {
                    RouteAttribute::Table(t) => Some(*t),
                    _ => None,
                })
                .unwrap_or(u32::from(m.header.table));
            let has_dest = m.attributes.iter().find_map(|a| match a {
                RouteAttribute::Destination(d) => route_ip(d),
                _ => None,
            });
            let has_gw = m.attributes.iter().find_map(|a| match a {
                RouteAttribute::Gateway(g) => route_ip(g),
                _ => None,
            });
            let has_oif = m.attributes.iter().find_map(|a| match a {
                RouteAttribute::Oif(i) => Some(*i),
                _ => None,
            });
            let has_metric = m.attributes.iter().find_map(|a| match a {
                RouteAttribute::Priority(p) => Some(*p),
                _ => None,
            });
            table == u32::from(RouteHeader::RT_TABLE_MAIN)
                && m.header.kind == RouteType::Unicast
                && m.header.destination_prefix_length == dest_len
                && (dest_len == 0 || has_dest == dest)
                && route.gateway.is_none_or(|g| has_gw == Some(g))
                && oif.is_none_or(|i| has_oif == Some(i))
                && route.metric.is_none_or(|p| has_metric.unwrap_or(0) == p)
        })
        .collect())
}

/// The RTM_NEWROUTE message for `route`, as `ip route add` builds it: a
/// static unicast route, scope link when there is no gateway.
fn build_route(route: &Route, v6: bool, oif: Option<u32>) -> Result<RouteMessage, CapError> {
    fn bad(e: impl std::fmt::Display) -> CapError {
        CapError::InvalidArgument(format!("route: {e}"))
    }
    let mut b = RouteMessageBuilder::<IpAddr>::new();
    b.get_mut().header.address_family = if v6 {
        rtnetlink::packet_route::AddressFamily::Inet6
    } else {
        rtnetlink::packet_route::AddressFamily::Inet
    };
    if let Some(dest) = route.destination {
        b = b
            .destination_prefix(dest.network(), dest.prefix_len())
            .map_err(bad)?;
    }
    match route.gateway {
        Some(gw) => b = b.gateway(gw).map_err(bad)?,
        None => b = b.scope(RouteScope::Link),
    }
    if let Some(oif) = oif {
        b = b.output_interface(oif);
    }
    if let Some(metric) = route.metric {
        b = b.priority(metric);
    }
    Ok(b.build())
}

/// An IP address of a route attribute.
fn route_ip(addr: &RouteAddress) -> Option<IpAddr> {
    match addr {
        RouteAddress::Inet(a) => Some(IpAddr::V4(*a)),
        RouteAddress::Inet6(a) => Some(IpAddr::V6(*a)),
        _ => None,
    }
}

/// A route's destination for messages.
fn show_dest(route: &Route) -> String {
    route
        .destination
        .map_or_else(|| "default".to_string(), |d| d.to_string())
}
