//! The action's params and their checks.
//!
//! The host checks every value again; checking here too means bad params end
//! the run with a message that names the params field, before any link is made.

use std::net::IpAddr;

use serde::Deserialize;

/// The overlay to build (JSON, camelCase; unknown fields are rejected).
#[derive(Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Params {
    /// Named network namespace that plays the host; `None` is the host's own.
    #[serde(default)]
    pub netns: Option<String>,
    /// Name of the bridge the vxlan and the veth's host end are enslaved to.
    #[serde(default = "default_bridge")]
    pub bridge: String,
    /// MTU of every link of the overlay (the underlay's minus VXLAN's 50 bytes).
    #[serde(default = "default_mtu")]
    pub mtu: u32,
    /// The tunnel.
    pub vxlan: Vxlan,
    /// Address (CIDR) for the bridge, e.g. a gateway for the workloads.
    #[serde(default)]
    pub bridge_address: Option<String>,
    /// The workload namespace and the veth pair into it.
    pub workload: Workload,
}

/// The vxlan link.
#[derive(Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Vxlan {
    /// Link name.
    #[serde(default = "default_vxlan_name")]
    pub name: String,
    /// VXLAN network identifier, 1 to 16777215.
    pub vni: u32,
    /// Local tunnel address.
    #[serde(default)]
    pub local: Option<String>,
    /// Unicast remote tunnel endpoint (exclusive with `group`).
    #[serde(default)]
    pub remote: Option<String>,
    /// Multicast group (exclusive with `remote`).
    #[serde(default)]
    pub group: Option<String>,
    /// UDP destination port.
    #[serde(default = "default_port")]
    pub port: u16,
    /// Underlying device the tunnel's packets leave by.
    #[serde(default)]
    pub device: Option<String>,
}

/// The workload side: a namespace, and a veth pair with one end in it.
#[derive(Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Workload {
    /// Named network namespace of the workload (created when missing).
    #[serde(default = "default_workload_netns")]
    pub netns: String,
    /// The veth end that stays beside the bridge.
    #[serde(default = "default_host_end")]
    pub host_end: String,
    /// The veth end inside the workload namespace.
    #[serde(default = "default_workload_name")]
    pub name: String,
    /// Address (CIDR) of the workload's end.
    pub address: String,
}

fn default_bridge() -> String {
    "br-ovl".into()
}
fn default_mtu() -> u32 {
    1450
}
fn default_vxlan_name() -> String {
    "vx-ovl".into()
}
/// IANA's VXLAN port; the kernel's own default (8472) predates it.
fn default_port() -> u16 {
    4789
}
fn default_workload_netns() -> String {
    "ovl-work".into()
}
fn default_host_end() -> String {
    "ve-ovl".into()
}
fn default_workload_name() -> String {
    "ve-ovl-w".into()
}

/// Longest interface name the kernel takes (`IFNAMSIZ` - 1).
const MAX_IFNAME_BYTES: usize = 15;
/// Largest VXLAN network identifier (24 bits).
const MAX_VNI: u32 = (1 << 24) - 1;

/// Checks the params before anything is touched; each error names its field.
pub fn validate(p: &Params) -> Result<(), String> {
    if let Some(netns) = &p.netns {
        check_netns("netns", netns)?;
    }
    check_netns("workload.netns", &p.workload.netns)?;
    if p.netns.as_deref() == Some(p.workload.netns.as_str()) {
        return Err(format!(
            "invalid params: workload.netns {:?}: must differ from netns, or the veth's peer \
             would not leave it",
            p.workload.netns
        ));
    }
    // Links that live side by side in `netns` need distinct names.
    let side_by_side = [
        ("bridge", &p.bridge),
        ("vxlan.name", &p.vxlan.name),
        ("workload.hostEnd", &p.workload.host_end),
    ];
    for (field, name) in side_by_side {
        check_ifname(field, name)?;
    }
    check_ifname("workload.name", &p.workload.name)?;
    for (i, (field, name)) in side_by_side.iter().enumerate() {
        if let Some((other, _)) = side_by_side[..i].iter().find(|(_, n)| n == name) {
            return Err(format!(
                "invalid params: {field} {name:?}: the same name as {other}"
            ));
        }
    }
    if let Some(device) = &p.vxlan.device {
        check_ifname("vxlan.device", device)?;
        if let Some((other, _)) = side_by_side.iter().find(|(_, n)| *n == device) {
            return Err(format!(
                "invalid params: vxlan.device {device:?}: the underlay device cannot be the \
                 overlay's own {other}"
            ));
        }
    }
    if !(68..=65535).contains(&p.mtu) {
        return Err(format!(
            "invalid params: mtu {}: must be within 68..=65535",
            p.mtu
        ));
    }
    check_vxlan(&p.vxlan)?;
    if let Some(cidr) = &p.bridge_address {
        check_cidr("bridgeAddress", cidr)?;
    }
    check_cidr("workload.address", &p.workload.address)?;
    Ok(())
}

/// The tunnel's numbers and addresses.
fn check_vxlan(v: &Vxlan) -> Result<(), String> {
    if v.vni == 0 || v.vni > MAX_VNI {
        return Err(format!(
            "invalid params: vxlan.vni {}: must be within 1..={MAX_VNI}",
            v.vni
        ));
    }
    if v.port == 0 {
        return Err("invalid params: vxlan.port 0: not a port".into());
    }
    let local = v
        .local
        .as_deref()
        .map(|a| parse_ip("vxlan.local", a))
        .transpose()?;
    let peer = match (&v.remote, &v.group) {
        (Some(remote), None) => {
            let ip = parse_ip("vxlan.remote", remote)?;
            if ip.is_multicast() {
                return Err(format!(
                    "invalid params: vxlan.remote {remote:?}: a multicast address (use vxlan.group)"
                ));
            }
            ("vxlan.remote", ip)
        }
        (None, Some(group)) => {
            let ip = parse_ip("vxlan.group", group)?;
            if !ip.is_multicast() {
                return Err(format!(
                    "invalid params: vxlan.group {group:?}: not a multicast address (use \
                     vxlan.remote)"
                ));
            }
            ("vxlan.group", ip)
        }
        (Some(_), Some(_)) => {
            return Err("invalid params: vxlan: give remote or group, not both".into());
        }
        (None, None) => {
            return Err("invalid params: vxlan: give remote (unicast) or group (multicast)".into());
        }
    };
    if let Some(local) = local
        && local.is_ipv4() != peer.1.is_ipv4()
    {
        return Err(format!(
            "invalid params: vxlan.local {local} and {} {}: different address families",
            peer.0, peer.1
        ));
    }
    Ok(())
}

/// A Linux interface name: 1 to 15 bytes, no '/', '%', ':', whitespace or
/// control characters, not `.` or `..` (the host's rules).
fn check_ifname(field: &str, name: &str) -> Result<(), String> {
    let bad = name.is_empty()
        || name.len() > MAX_IFNAME_BYTES
        || name == "."
        || name == ".."
        || name
            .chars()
            .any(|c| matches!(c, '/' | '%' | ':') || c.is_whitespace() || c.is_control());
    if bad {
        return Err(format!(
            "invalid params: {field} {name:?}: not a valid interface name (1-15 bytes, no '/', \
             '%', ':' or spaces)"
        ));
    }
    Ok(())
}

/// A named network namespace: a plain file name under /var/run/netns, and
/// not `host`, which grants reserve for the host's own namespace.
fn check_netns(field: &str, name: &str) -> Result<(), String> {
    if name == "host" {
        return Err(format!(
            "invalid params: {field} \"host\": reserved for the host's own namespace (leave \
             netns out, or null, for that)"
        ));
    }
    let bad = name.is_empty()
        || name.len() > 255
        || name == "."
        || name == ".."
        || name
            .chars()
            .any(|c| c == '/' || c.is_whitespace() || c.is_control());
    if bad {
        return Err(format!(
            "invalid params: {field} {name:?}: not a valid namespace name (a plain file name, \
             no '/' or spaces)"
        ));
    }
    Ok(())
}

fn parse_ip(field: &str, s: &str) -> Result<IpAddr, String> {
    s.parse()
        .map_err(|_| format!("invalid params: {field} {s:?}: not an IPv4 or IPv6 address"))
}

/// An address with its prefix length, e.g. `10.244.0.1/24`.
fn check_cidr(field: &str, cidr: &str) -> Result<(), String> {
    let problem = |why: String| format!("invalid params: {field} {cidr:?}: {why}");
    let (addr, prefix) = cidr
        .split_once('/')
        .ok_or_else(|| problem("expected an address with a prefix, like 10.244.0.1/24".into()))?;
    let addr: IpAddr = addr
        .parse()
        .map_err(|_| problem(format!("{addr:?} is not an IPv4 or IPv6 address")))?;
    let prefix: u8 = prefix
        .parse()
        .map_err(|_| problem(format!("prefix {prefix:?} is not a number")))?;
    let max = if addr.is_ipv4() { 32 } else { 128 };
    if prefix > max {
        return Err(problem(format!("prefix /{prefix} is longer than /{max}")));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = r#"{
        "netns": "hostA",
        "vxlan": {"vni": 42, "local": "192.168.50.1", "remote": "192.168.50.2", "device": "ul0"},
        "workload": {"address": "10.244.0.1/24"}
    }"#;

    fn params(json: &str) -> Params {
        serde_json::from_str(json).unwrap()
    }

    /// GOOD with the field at `pointer` (`/a/b`) set to `value`.
    fn with(pointer: &str, value: serde_json::Value) -> Params {
        let mut doc: serde_json::Value = serde_json::from_str(GOOD).unwrap();
        let (parent, key) = pointer.rsplit_once('/').unwrap();
        let object = doc.pointer_mut(parent).unwrap().as_object_mut().unwrap();
        object.insert(key.to_owned(), value);
        serde_json::from_value(doc).unwrap()
    }

    fn err(p: &Params) -> String {
        validate(p).unwrap_err()
    }

    #[test]
    fn defaults_fill_in_and_validate() {
        let p = params(GOOD);
        validate(&p).unwrap();
        assert_eq!(p.bridge, "br-ovl");
        assert_eq!(p.mtu, 1450);
        assert_eq!(p.vxlan.name, "vx-ovl");
        assert_eq!(p.vxlan.port, 4789);
        assert_eq!(p.workload.netns, "ovl-work");
        assert_eq!(p.workload.host_end, "ve-ovl");
        assert_eq!(p.workload.name, "ve-ovl-w");
        validate(&params(
            r#"{"vxlan": {"vni": 7, "group": "239.1.1.1", "device": "eth0"},
                "bridgeAddress": "fd00::1/64", "workload": {"address": "fd00::2/64"}}"#,
        ))
        .unwrap();
    }

    #[test]
    fn bad_params_name_the_field() {
        use serde_json::json;
        let cases = [
            ("/netns", json!("host"), "netns"),
            ("/netns", json!("ovl-work"), "workload.netns"),
            ("/workload/hostEnd", json!("br-ovl"), "workload.hostEnd"),
            (
                "/vxlan/name",
                json!("a-name-that-is-too-long"),
                "vxlan.name",
            ),
            ("/vxlan/device", json!("vx-ovl"), "vxlan.device"),
            ("/vxlan/vni", json!(0), "vxlan.vni"),
            ("/vxlan/vni", json!(1 << 24), "vxlan.vni"),
            ("/vxlan/port", json!(0), "vxlan.port"),
            ("/vxlan/remote", json!("239.1.1.1"), "vxlan.remote"),
            (
                "/vxlan/remote",
                json!("fd00::2"),
                "different address families",
            ),
            ("/vxlan/local", json!("nope"), "vxlan.local"),
            ("/workload/address", json!("10.244.0.1"), "workload.address"),
            (
                "/workload/address",
                json!("10.244.0.1/33"),
                "workload.address",
            ),
        ];
        for (pointer, value, want) in cases {
            let e = err(&with(pointer, value.clone()));
            assert!(e.contains(want), "{pointer}={value}: {e}");
        }
        let mut p = params(GOOD);
        p.vxlan.group = Some("239.1.1.1".into());
        assert!(err(&p).contains("not both"));
        p.vxlan.remote = None;
        p.vxlan.group = None;
        assert!(err(&p).contains("remote (unicast) or group"));
        p.mtu = 67;
        assert!(err(&p).contains("mtu"));
        assert!(serde_json::from_str::<Params>(r#"{"bogus": 1}"#).is_err());
    }
}
