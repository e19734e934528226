//! Guest input checks and grant scopes of the network capability. Every value
//! here comes from the guest: it is checked before any netlink call.

use ipnet::IpNet;

use crate::capabilities::CapError;
use crate::grant::{NetworkScope, glob};

/// Longest interface name the kernel takes (`IFNAMSIZ` - 1).
pub const MAX_IFNAME_BYTES: usize = 15;
/// Longest network namespace name (a file name).
pub const MAX_NETNS_BYTES: usize = 255;
/// MTU range accepted (IPv4's minimum to the largest jumbo frame Linux takes).
pub const MTU_RANGE: std::ops::RangeInclusive<u32> = 68..=65535;
/// Largest VXLAN network identifier (24 bits).
pub const MAX_VNI: u32 = (1 << 24) - 1;

/// How grants name the host's own network namespace.
pub const HOST_NETNS: &str = "host";
/// VLAN ids an action may use (0 and 4095 are reserved by 802.1Q).
pub const VLAN_IDS: std::ops::RangeInclusive<u16> = 1..=4094;

/// The alias that marks links hostaction created, for `ownedOnly` grants.
pub const OWNED_ALIAS: &str = "hostaction";

/// Why `name` is not an acceptable interface name: the kernel's rules
/// (`dev_valid_name`) and more strictly, no '%' or control characters.
pub fn interface_name_problem(name: &str) -> Option<String> {
    let why = if name.is_empty() {
        "is empty".to_owned()
    } else if name.len() > MAX_IFNAME_BYTES {
        format!("is {} bytes; the limit is {MAX_IFNAME_BYTES}", name.len())
    } else if name == "." || name == ".." {
        "is not allowed".to_owned()
    } else if name
        .chars()
        .any(|c| !c.is_ascii_graphic() || c == '/' || c == '%' || c == ':')
    {
        "contains '/', '%', ':', or a character that is not printable ASCII".to_owned()
    } else {
        return None;
    };
    Some(format!("interface name {name:?} {why}"))
}

/// Why `name` is not an acceptable network namespace name: it becomes a file
/// name under the namespace directory, so it must be one plain component.
pub fn netns_name_problem(name: &str) -> Option<String> {
    let why = if name.is_empty() || name == "." || name == ".." {
        "is not a file name".to_owned()
    } else if name == HOST_NETNS {
        format!("is reserved: {HOST_NETNS:?} names the host's own namespace in grants")
    } else if name.len() > MAX_NETNS_BYTES {
        format!("is {} bytes; the limit is {MAX_NETNS_BYTES}", name.len())
    } else if name.chars().any(|c| !c.is_ascii_graphic() || c == '/') {
        "contains '/' or a character that is not printable ASCII".to_owned()
    } else {
        return None;
    };
    Some(format!("netns name {name:?} {why}"))
}

/// Checks an interface name from the guest.
pub fn interface_name(name: &str) -> Result<(), CapError> {
    interface_name_problem(name).map_or(Ok(()), |why| Err(CapError::InvalidArgument(why)))
}

/// Checks a named network namespace from the guest (a file under `/var/run/netns`).
pub fn netns_name(name: &str) -> Result<(), CapError> {
    netns_name_problem(name).map_or(Ok(()), |why| Err(CapError::InvalidArgument(why)))
}

/// Whether `net` lies inside the granted range `range` (CIDR text).
fn within(range: &str, net: &IpNet) -> bool {
    range.parse::<IpNet>().is_ok_and(|r| r.contains(net))
}

/// Checks an MTU.
pub fn mtu(mtu: u32) -> Result<(), CapError> {
    if !MTU_RANGE.contains(&mtu) {
        return Err(CapError::InvalidArgument(format!(
            "mtu {mtu} is outside {}..={}",
            MTU_RANGE.start(),
            MTU_RANGE.end()
        )));
    }
    Ok(())
}

/// Checks a VXLAN network identifier.
pub fn vni(vni: u32) -> Result<(), CapError> {
    if vni == 0 || vni > MAX_VNI {
        return Err(CapError::InvalidArgument(format!(
            "vni {vni} is outside 1..={MAX_VNI}"
        )));
    }
    Ok(())
}

/// Checks an 802.1Q VLAN id.
pub fn vlan_id(id: u16) -> Result<(), CapError> {
    if !VLAN_IDS.contains(&id) {
        return Err(CapError::InvalidArgument(format!(
            "vlan id {id} is outside {}..={}",
            VLAN_IDS.start(),
            VLAN_IDS.end()
        )));
    }
    Ok(())
}

/// The grant's scope and the node policy's: a call must satisfy both.
pub struct Scopes<'a> {
    /// The grant's network scope.
    pub grant: &'a NetworkScope,
    /// The node policy's, when there is one.
    pub policy: Option<&'a NetworkScope>,
}

impl Scopes<'_> {
    fn each(&self) -> impl Iterator<Item = (&NetworkScope, &'static str)> {
        std::iter::once((self.grant, "grant")).chain(self.policy.map(|p| (p, "node policy")))
    }

    /// Whether the namespace is in scope. The host's own (`None`) is only by
    /// the literal entry `host`: no pattern (`*`, `h*`) reaches it.
    pub fn netns(&self, netns: Option<&str>) -> Result<(), CapError> {
        let name = netns.unwrap_or(HOST_NETNS);
        for (scope, whose) in self.each() {
            let granted = match netns {
                None => scope.netns.iter().any(|p| p == HOST_NETNS),
                Some(n) => scope.netns.iter().any(|p| p != HOST_NETNS && glob(p, n)),
            };
            if !granted {
                return Err(CapError::PermissionDenied(format!(
                    "network: netns {name:?} is not in the {whose}'s network.netns {:?}",
                    scope.netns
                )));
            }
        }
        Ok(())
    }

    /// Whether the interface name is in scope.
    pub fn interface(&self, name: &str) -> Result<(), CapError> {
        for (scope, whose) in self.each() {
            if !scope.interfaces.iter().any(|p| glob(p, name)) {
                return Err(CapError::PermissionDenied(format!(
                    "network: interface {name:?} is not in the {whose}'s network.interfaces {:?}",
                    scope.interfaces
                )));
            }
        }
        Ok(())
    }

    /// Whether links of this kind may be created.
    pub fn kind(&self, kind: &str) -> Result<(), CapError> {
        for (scope, whose) in self.each() {
            if !scope.kinds.iter().any(|k| k == kind) {
                return Err(CapError::PermissionDenied(format!(
                    "network: link kind {kind:?} is not in the {whose}'s network.kinds {:?}",
                    scope.kinds
                )));
            }
        }
        Ok(())
    }

    /// Whether an address (with its prefix length) lies in a granted range.
    pub fn address(&self, addr: &IpNet) -> Result<(), CapError> {
        for (scope, whose) in self.each() {
            if !scope.addresses.iter().any(|r| within(r, &addr.trunc())) {
                return Err(CapError::PermissionDenied(format!(
                    "network: address {addr} is not in the {whose}'s network.addresses {:?}",
                    scope.addresses
                )));
            }
        }
        Ok(())
    }

    /// Whether a route's destination (`None`: the default route) lies in a
    /// granted range.
    pub fn route(&self, destination: Option<&IpNet>, v6: bool) -> Result<(), CapError> {
        let dest = match destination {
            Some(d) => *d,
            None if v6 => IpNet::V6(ipnet::Ipv6Net::default()),
            None => IpNet::V4(ipnet::Ipv4Net::default()),
        };
        for (scope, whose) in self.each() {
            let granted = scope
                .routes
                .iter()
                .any(|r| (r == "default" && dest.prefix_len() == 0) || within(r, &dest));
            if !granted {
                return Err(CapError::PermissionDenied(format!(
                    "network: a route to {} is not in the {whose}'s network.routes {:?}",
                    destination.map_or_else(|| "default".to_owned(), ToString::to_string),
                    scope.routes
                )));
            }
        }
        Ok(())
    }

    /// Whether only links hostaction created may be changed or deleted.
    pub fn owned_only(&self) -> bool {
        self.each().any(|(s, _)| s.owned_only)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn glob_matches_stars_and_question_marks() {
        assert!(glob("vx-*", "vx-blue"));
        assert!(glob("*", ""));
        assert!(glob("br?", "br0"));
        assert!(glob("a*b*c", "axxbyyc"));
        assert!(!glob("vx-*", "vxlan0"));
        assert!(!glob("br?", "br10"));
        assert!(!glob("host", "hostile"));
        // systemd's escapes are matched only by patterns that spell them.
        assert!(!glob("modprobe@*.service", "modprobe@\\x2e\\x2e.service"));
        assert!(glob("a\\x2db.mount", "a\\x2db.mount"));
    }

    #[test]
    fn hostile_interface_names_are_refused() {
        for bad in [
            "",
            "a/b",
            "a b",
            "a%d",
            ".",
            "..",
            "sixteen-chars-xx",
            "eth0:1",
            "a\nb",
            "br\u{200b}0",
            "é0",
        ] {
            assert!(interface_name(bad).is_err(), "{bad:?}");
        }
        interface_name("vx-blue").unwrap();
        interface_name("fifteen-chars-x").unwrap();
    }

    #[test]
    fn numbers_outside_their_ranges_are_refused() {
        assert!(vni(0).is_err() && vni(1 << 24).is_err());
        vni(42).unwrap();
        assert!(mtu(67).is_err() && mtu(65536).is_err());
        mtu(1450).unwrap();
        assert!(netns_name("a/b").is_err() && netns_name("..").is_err());
        assert!(netns_name("host").is_err());
        assert!(vlan_id(0).is_err() && vlan_id(4095).is_err());
        vlan_id(100).unwrap();
    }

    #[test]
    fn the_host_is_only_granted_by_name_and_ranges_contain_what_they_allow() {
        let scope = NetworkScope {
            netns: vec!["*".into()],
            addresses: vec!["10.244.0.0/16".into(), "fd00::/8".into()],
            routes: vec!["10.244.0.0/16".into(), "default".into()],
            ..NetworkScope::default()
        };
        let scopes = Scopes {
            grant: &scope,
            policy: None,
        };
        assert!(scopes.netns(None).is_err(), "`*` does not reach the host");
        scopes.netns(Some("ovl")).unwrap();
        let net = |s: &str| s.parse::<IpNet>().unwrap();
        scopes.address(&net("10.244.3.1/24")).unwrap();
        scopes.address(&net("fd00:1::1/64")).unwrap();
        assert!(
            scopes.address(&net("10.244.3.1/8")).is_err(),
            "wider than the range"
        );
        assert!(scopes.address(&net("10.245.0.1/24")).is_err());
        scopes.route(Some(&net("10.244.8.0/24")), false).unwrap();
        scopes.route(None, false).unwrap();
        assert!(scopes.route(Some(&net("0.0.0.0/1")), false).is_err());
        let no_default = NetworkScope {
            routes: vec!["10.0.0.0/8".into()],
            ..NetworkScope::default()
        };
        let scopes = Scopes {
            grant: &no_default,
            policy: Some(&scope),
        };
        assert!(scopes.route(None, false).is_err());
        assert!(scopes.netns(None).is_err());
    }
}
