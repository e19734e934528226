//! The one validation of a grant ([`Grant::validate`]): what it refuses,
//! naming the field, and that the CRDs' CEL rules use the same character
//! classes (the rules themselves run in `tests/tests/all/real_apiserver.rs`,
//! against a real API server).

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use crate::Grant;
use crate::{INTERFACE_FORBIDDEN, NAME_FORBIDDEN, PathError, UNIT_PATTERN, path_components};

fn grant(yaml: &str) -> Grant {
    serde_yaml_ng::from_str(yaml).unwrap_or_else(|e| panic!("{yaml}: {e}"))
}

#[test]
fn valid_grants_pass() {
    for yaml in [
        "{}",
        "files: {read: [/etc/cni], write: [/opt/cni/bin, //etc//cni/net.d/], kernelPaths: [/proc/meminfo]}",
        "files: {write: [/]}",
        "network: {netns: [host, 'ovl-*'], interfaces: ['vx-*', 'br-*', '*', ul0, 've-ovl-ul?'], kinds: [bridge, vxlan, veth, macvlan, dummy, vlan, wireguard]}",
        "network: {interfaces: ['abcdefghijklmno*']}",
        "network: {addresses: [10.244.0.0/16, 0.0.0.0/0, 10.0.0.1/32, 'fd00::/8', '::/0'], routes: [default, 10.244.0.0/16]}",
        "services: {units: [containerd.service, 'getty@*.service', 'kube*', '*', 'foo\\x2dbar.socket', 'ha-tpl@?.timer']}",
    ] {
        grant(yaml)
            .validate()
            .unwrap_or_else(|e| panic!("{yaml}: {e}"));
    }
}

#[test]
fn each_malformed_grant_is_refused_naming_its_field() {
    let long_component = format!("files: {{write: [/opt/{}]}}", "a".repeat(256));
    let many = format!("files: {{read: [{}]}}", vec!["/x"; 65].join(", "));
    for (yaml, field, says) in [
        (
            "files: {write: [/opt, opt/cni]}",
            "files.write[1]",
            "not absolute",
        ),
        ("files: {read: ['/etc/../root']}", "files.read[0]", "`..`"),
        ("files: {read: ['/etc/./cni']}", "files.read[0]", "`.`"),
        (
            "files: {kernelPaths: [proc]}",
            "files.kernelPaths[0]",
            "not absolute",
        ),
        ("files: {read: [\"/a\\0b\"]}", "files.read[0]", "NUL"),
        (long_component.as_str(), "files.write[0]", "255"),
        (many.as_str(), "files.read", "65 entries"),
        ("network: {netns: ['']}", "network.netns[0]", "empty"),
        (
            "network: {netns: [host, 'a b']}",
            "network.netns[1]",
            "whitespace",
        ),
        (
            "network: {netns: ['..']}",
            "network.netns[0]",
            "not a namespace name",
        ),
        ("network: {netns: ['x/y']}", "network.netns[0]", "'/'"),
        (
            "network: {interfaces: ['eth0:1']}",
            "network.interfaces[0]",
            "':'",
        ),
        (
            "network: {interfaces: ['']}",
            "network.interfaces[0]",
            "empty",
        ),
        (
            "network: {interfaces: [\"br\\u00a0x\"]}",
            "network.interfaces[0]",
            "whitespace",
        ),
        (
            "network: {interfaces: ['a-very-long-name*']}",
            "network.interfaces[0]",
            "never match",
        ),
        (
            "network: {kinds: [bridge, tunnel]}",
            "network.kinds[1]",
            "unknown link kind \"tunnel\"",
        ),
        (
            "network: {kinds: [Bridge]}",
            "network.kinds[0]",
            "unknown link kind",
        ),
        (
            "network: {addresses: [10.244.0.0/33]}",
            "network.addresses[0]",
            "CIDR",
        ),
        (
            "network: {addresses: [10.244.0.0]}",
            "network.addresses[0]",
            "CIDR",
        ),
        (
            "network: {addresses: [10.244.1.1/16]}",
            "network.addresses[0]",
            "host bits",
        ),
        (
            "network: {addresses: [default]}",
            "network.addresses[0]",
            "CIDR",
        ),
        (
            "network: {addresses: ['10.244.0.0/+16']}",
            "network.addresses[0]",
            "CIDR",
        ),
        (
            "network: {addresses: ['10.244.0.0/016']}",
            "network.addresses[0]",
            "CIDR",
        ),
        (
            "network: {addresses: ['fd00::1/8']}",
            "network.addresses[0]",
            "host bits",
        ),
        (
            "network: {addresses: ['::ffff:10.244.0.0/112']}",
            "network.addresses[0]",
            "IPv4-mapped",
        ),
        (
            "network: {routes: [default, 10.0.0.0/8, 300.0.0.0/8]}",
            "network.routes[2]",
            "or `default`",
        ),
        (
            "services: {units: [containerd]}",
            "services.units[0]",
            "no unit type",
        ),
        (
            "services: {units: [containerd.servce]}",
            "services.units[0]",
            "no unit type",
        ),
        ("services: {units: ['']}", "services.units[0]", "empty"),
        (
            "services: {units: ['containerd service']}",
            "services.units[0]",
            "' '",
        ),
        (
            "services: {units: [../x.service]}",
            "services.units[0]",
            "'/'",
        ),
    ] {
        let err = grant(yaml).validate().expect_err(yaml);
        assert_eq!(err.field, field, "{yaml}: {err}");
        assert!(err.to_string().contains(says), "{yaml}: {err}");
    }
}

#[test]
fn path_components_fold_slashes_and_refuse_what_the_runtime_refuses() {
    assert_eq!(
        path_components("//opt/cni//bin/").unwrap(),
        ["opt", "cni", "bin"]
    );
    assert!(path_components("/").unwrap().is_empty());
    assert!(matches!(
        path_components("opt"),
        Err(PathError::NotAbsolute(_))
    ));
    assert!(matches!(
        path_components("/a/.."),
        Err(PathError::DotComponent(_))
    ));
    // Bytes, not characters: 128 two-byte characters are 256 bytes.
    let wide = format!("/{}", "é".repeat(128));
    assert_eq!(path_components(&wide), Err(PathError::NameTooLong(256)));
    let long = format!("/{}", "a/".repeat(2048));
    assert!(matches!(path_components(&long), Err(PathError::TooLong(_))));
}

/// The CEL rules' character classes (RE2, as CEL's `matches`; the `regex`
/// crate reads these classes alike) refuse exactly the characters the Rust
/// check refuses, over all of Unicode.
#[test]
fn cel_character_classes_match_the_rust_checks() {
    let name = regex::Regex::new(NAME_FORBIDDEN).unwrap();
    let interface = regex::Regex::new(INTERFACE_FORBIDDEN).unwrap();
    let unit = regex::Regex::new(UNIT_PATTERN).unwrap();
    for c in (0..=0x10FFFF).filter_map(char::from_u32) {
        let s = c.to_string();
        let netns = Grant {
            network: Some(crate::NetworkScope {
                netns: vec![format!("a{c}b")],
                interfaces: vec![format!("a{c}b")],
                ..Default::default()
            }),
            ..Default::default()
        };
        let rust_netns_ok = !(c.is_whitespace() || c == '/');
        assert_eq!(
            !name.is_match(&s),
            rust_netns_ok,
            "{c:?} (U+{:04X})",
            c as u32
        );
        let rust_if_ok = rust_netns_ok && c != ':';
        assert_eq!(
            !interface.is_match(&s),
            rust_if_ok,
            "{c:?} (U+{:04X})",
            c as u32
        );
        let err = netns.validate().err().map(|e| e.field);
        let expected = if !rust_netns_ok {
            Some("network.netns[0]".to_owned())
        } else if !rust_if_ok {
            Some("network.interfaces[0]".to_owned())
        } else {
            None
        };
        assert_eq!(err, expected, "{c:?} (U+{:04X})", c as u32);
        let units = Grant {
            services: Some(crate::ServicesScope {
                units: vec![format!("a{c}b.service")],
                ..Default::default()
            }),
            ..Default::default()
        };
        assert_eq!(
            unit.is_match(&format!("a{c}b.service")),
            units.validate().is_ok(),
            "{c:?} (U+{:04X})",
            c as u32
        );
    }
}
