//! Address ranges and route destinations of a grant against a node policy's,
//! as the network capability checks them (`runtime/src/capabilities/network/scope.rs`):
//! an address is allowed when its network (the address with its prefix
//! length) lies within one of the grant's ranges and within one of the
//! policy's; a route when its destination does, or when it is a default
//! route (prefix length 0) and both name `default`.
//!
//! Two CIDR ranges are nested or disjoint, so what both allow is, for each
//! nested pair, the narrower one: the effective ranges here are exact.

use std::fmt;

use ipnet::IpNet;

/// One entry of an effective list: a destination range, or one default
/// route only (a route to exactly `0.0.0.0/0` or `::/0`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Dest {
    /// Any network within this range.
    Within(IpNet),
    /// Only the default route of this family.
    Default(IpNet),
}

impl fmt::Display for Dest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Dest::Within(net) => write!(f, "{net}"),
            Dest::Default(IpNet::V4(_)) => f.write_str("default (IPv4)"),
            Dest::Default(IpNet::V6(_)) => f.write_str("default (IPv6)"),
        }
    }
}

impl Dest {
    /// What both `self` and `other` allow.
    fn and(self, other: Dest) -> Option<Dest> {
        match (self, other) {
            (Dest::Within(a), Dest::Within(b)) if a.contains(&b) => Some(Dest::Within(b)),
            (Dest::Within(a), Dest::Within(b)) if b.contains(&a) => Some(Dest::Within(a)),
            (Dest::Default(d), Dest::Within(r)) | (Dest::Within(r), Dest::Default(d))
                if r.contains(&d) =>
            {
                Some(Dest::Default(d))
            }
            (Dest::Default(a), Dest::Default(b)) if a == b => Some(Dest::Default(a)),
            _ => None,
        }
    }

    /// Whether everything `self` allows, `other` allows too.
    fn inside(self, other: Dest) -> bool {
        self.and(other) == Some(self)
    }
}

/// The entries one grant or policy text stands for: a CIDR range, or for a
/// route `default`, the default route of each family. A text the engine
/// cannot parse allows nothing there either (validation refuses it first).
pub fn entries(text: &str, route: bool) -> Vec<Dest> {
    if route && text == "default" {
        return ["0.0.0.0/0", "::/0"]
            .iter()
            .filter_map(|d| d.parse().ok())
            .map(Dest::Default)
            .collect();
    }
    text.parse::<IpNet>()
        .map(|n| vec![Dest::Within(n)])
        .unwrap_or_default()
}

/// What the grant's and the policy's lists allow together (`policy: None`:
/// the grant's as it is).
pub fn effective(grant: &[String], policy: Option<&[String]>, route: bool) -> Vec<Dest> {
    let g: Vec<Dest> = grant.iter().flat_map(|t| entries(t, route)).collect();
    let Some(policy) = policy else {
        return dedup(g);
    };
    let p: Vec<Dest> = policy.iter().flat_map(|t| entries(t, route)).collect();
    dedup(
        g.iter()
            .flat_map(|a| p.iter().filter_map(move |b| a.and(*b)))
            .collect(),
    )
}

fn dedup(list: Vec<Dest>) -> Vec<Dest> {
    let mut out: Vec<Dest> = Vec::new();
    for d in list {
        if !out.contains(&d) {
            out.push(d);
        }
    }
    out
}

/// What the policy leaves of one grant entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Left {
    /// All of it.
    All,
    /// Only these parts.
    Part(Vec<Dest>),
    /// None of it.
    Nothing,
}

/// What the `policy` list leaves of the grant entry `text`.
pub fn left(text: &str, policy: &[String], route: bool) -> Left {
    let mine = entries(text, route);
    let theirs: Vec<Dest> = policy.iter().flat_map(|t| entries(t, route)).collect();
    if mine.iter().all(|m| theirs.iter().any(|t| m.inside(*t))) {
        return Left::All;
    }
    let kept = dedup(
        mine.iter()
            .flat_map(|m| theirs.iter().filter_map(move |t| m.and(*t)))
            .collect(),
    );
    if kept.is_empty() {
        Left::Nothing
    } else {
        Left::Part(kept)
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn strings(list: &[&str]) -> Vec<String> {
        list.iter().map(|s| (*s).to_owned()).collect()
    }

    fn shown(list: &[Dest]) -> Vec<String> {
        list.iter().map(ToString::to_string).collect()
    }

    #[test]
    fn nested_ranges_leave_the_narrower_and_disjoint_ones_nothing() {
        let policy = strings(&["10.244.0.0/16", "fd00::/8"]);
        assert_eq!(left("10.244.1.0/24", &policy, false), Left::All);
        assert_eq!(
            left("10.0.0.0/8", &policy, false),
            Left::Part(vec![Dest::Within("10.244.0.0/16".parse().unwrap())])
        );
        assert_eq!(left("192.168.0.0/16", &policy, false), Left::Nothing);
        let eff = effective(
            &strings(&["10.0.0.0/8", "192.168.0.0/16"]),
            Some(&policy),
            false,
        );
        assert_eq!(shown(&eff), ["10.244.0.0/16"]);
        assert_eq!(
            shown(&effective(&strings(&["10.0.0.0/8"]), None, false)),
            ["10.0.0.0/8"]
        );
    }

    #[test]
    fn default_routes_are_their_own_entries() {
        // `default` allows the default routes; 0.0.0.0/0 allows every IPv4
        // destination, the default route among them.
        let all_v4 = strings(&["0.0.0.0/0"]);
        assert_eq!(
            left("default", &all_v4, true),
            Left::Part(vec![Dest::Default("0.0.0.0/0".parse().unwrap())])
        );
        assert_eq!(
            shown(&effective(&all_v4, Some(&strings(&["default"])), true)),
            ["default (IPv4)"]
        );
        assert_eq!(left("default", &strings(&["default"]), true), Left::All);
        assert_eq!(
            left("10.0.0.0/8", &strings(&["default"]), true),
            Left::Nothing
        );
        assert_eq!(left("0.0.0.0/0", &all_v4, true), Left::All);
        // In an address list, `default` is no range at all.
        assert_eq!(effective(&strings(&["default"]), None, false), []);
    }
}
