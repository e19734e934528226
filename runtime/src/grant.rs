//! Grants, node policies, and the effective grant a run gets.
//!
//! A **grant** gives one action scopes per capability; a **node policy** (same
//! document shape, written by the node administrator) bounds every grant on that
//! node. The effective grant is grant ∩ policy: a capability is granted only if
//! both give it, and only within both scopes. The document is the one the
//! HostAction CRD embeds (camelCase, unknown fields rejected so a typo never
//! silently widens or narrows a grant):
//!
//! ```yaml
//! files:
//!   read: [/etc/cni]
//!   write: [/opt/cni/bin, /etc/cni/net.d]   # write implies read
//! network:
//!   netns: [host, "overlay-*"]
//!   interfaces: ["vx-*", "br-*"]
//!   kinds: [bridge, vxlan, veth]
//!   addresses: [10.244.0.0/16]
//!   routes: [10.244.0.0/16]
//!   ownedOnly: true
//! services:
//!   units: [containerd.service]
//!   daemonReload: false
//! ```

use std::path::Path;

use crate::capabilities::files::HostPath;
use crate::error::{Error, Result};

pub use hostaction_crds::grant::{FilesScope, Grant, NetworkScope, ServicesScope};

/// Where systemd loads unit files and drop-ins from.
const SYSTEMD_UNIT_DIRS: &[&str] = &[
    "/etc/systemd",
    "/run/systemd",
    "/lib/systemd",
    "/usr/lib/systemd",
    "/usr/local/lib/systemd",
];

/// Link kinds the contract knows (`wit/network.wit`).
const LINK_KINDS: &[&str] = &[
    "bridge",
    "veth",
    "vxlan",
    "macvlan",
    "dummy",
    "vlan",
    "wireguard",
];

/// Reading and checking grant documents (the type lives in
/// `hostaction-crds`, which the controller uses without the runtime).
pub trait GrantDocument: Sized {
    /// Parses a grant or policy document (YAML, which includes JSON) and
    /// validates it. `what` names the document in errors ("grant", "policy").
    fn parse(text: &str, what: &str) -> Result<Self>;
    /// Reads and parses a grant or policy file.
    fn from_file(path: &Path, what: &str) -> Result<Self>;
    /// Checks every field; the error names the first bad one.
    fn validate(&self, what: &str) -> Result<()>;
}

impl GrantDocument for Grant {
    fn parse(text: &str, what: &str) -> Result<Self> {
        let grant: Grant =
            serde_yaml_ng::from_str(text).map_err(|e| Error::BadGrant(format!("{what}: {e}")))?;
        grant.validate(what)?;
        Ok(grant)
    }

    fn from_file(path: &Path, what: &str) -> Result<Self> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| Error::BadGrant(format!("{what} {}: {e}", path.display())))?;
        Self::parse(&text, &format!("{what} {}", path.display()))
    }

    fn validate(&self, what: &str) -> Result<()> {
        let bad = |field: String, msg: String| Error::BadGrant(format!("{what}: {field}: {msg}"));
        if let Some(files) = &self.files {
            for (list, dirs) in [("read", &files.read), ("write", &files.write)] {
                for (i, dir) in dirs.iter().enumerate() {
                    HostPath::parse(dir)
                        .map_err(|e| bad(format!("files.{list}[{i}]"), e.to_string()))?;
                }
            }
        }
        if let Some(net) = &self.network {
            for (list, items) in [("netns", &net.netns), ("interfaces", &net.interfaces)] {
                for (i, pattern) in items.iter().enumerate() {
                    if pattern.is_empty() || pattern.chars().any(|c| c.is_whitespace() || c == '/')
                    {
                        return Err(bad(
                            format!("network.{list}[{i}]"),
                            format!("{pattern:?} is not a name pattern"),
                        ));
                    }
                }
            }
            for (list, items) in [("addresses", &net.addresses), ("routes", &net.routes)] {
                for (i, cidr) in items.iter().enumerate() {
                    let ok = (list == "routes" && cidr == "default")
                        || cidr.parse::<ipnet::IpNet>().is_ok_and(|n| n == n.trunc());
                    if !ok {
                        return Err(bad(
                            format!("network.{list}[{i}]"),
                            format!(
                                "{cidr:?} is not a network in CIDR notation (like 10.244.0.0/16){}",
                                if list == "routes" {
                                    " or `default`"
                                } else {
                                    ""
                                }
                            ),
                        ));
                    }
                }
            }
            for (i, kind) in net.kinds.iter().enumerate() {
                if !LINK_KINDS.contains(&kind.as_str()) {
                    return Err(bad(
                        format!("network.kinds[{i}]"),
                        format!(
                            "unknown link kind {kind:?} (known: {})",
                            LINK_KINDS.join(", ")
                        ),
                    ));
                }
            }
        }
        if let Some(services) = &self.services {
            for (i, pattern) in services.units.iter().enumerate() {
                if pattern.is_empty() || pattern.chars().any(|c| c.is_whitespace() || c == '/') {
                    return Err(bad(
                        format!("services.units[{i}]"),
                        format!("{pattern:?} is not a unit-name pattern"),
                    ));
                }
            }
        }
        Ok(())
    }
}

/// One directory the effective grant covers, with the directory it must be
/// resolved beneath.
///
/// Only the node policy's directory (or, with no policy, the grant's own) is
/// resolved trusting symlinks; the rest of a deeper grant is resolved beneath
/// it in the kernel, so a symlink inside the policy's directory cannot carry a
/// grant outside it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GrantedDir {
    /// The directory the scope covers, as actions name paths.
    pub path: HostPath,
    /// The directory it is resolved beneath (`path` or one of its ancestors).
    pub anchor: HostPath,
}

impl GrantedDir {
    /// A directory resolved on its own (no policy above it).
    fn own(path: HostPath) -> Self {
        Self {
            anchor: path.clone(),
            path,
        }
    }
}

/// A grant bounded by a node policy: what one run may actually do.
#[derive(Debug, Clone, Default)]
pub struct EffectiveGrant {
    /// Directories readable (including the writable ones).
    pub files_read: Vec<GrantedDir>,
    /// Directories writable.
    pub files_write: Vec<GrantedDir>,
    /// Why `files` is not granted, when the grant asked for it but the policy
    /// left nothing of it.
    files_denied_by_policy: bool,
    /// The grant's and the policy's network scopes (both must allow a call).
    pub network: Option<(NetworkScope, Option<NetworkScope>)>,
    /// The grant's and the policy's services scopes (both must allow a call).
    pub services: Option<(ServicesScope, Option<ServicesScope>)>,
}

impl EffectiveGrant {
    /// grant ∩ policy. With no policy, the grant stands as it is (the CLI on a
    /// machine the user owns); the agent always has one.
    pub fn new(grant: &Grant, policy: Option<&Grant>) -> Result<Self> {
        grant.validate("grant")?;
        if let Some(policy) = policy {
            policy.validate("policy")?;
        }
        let parse_all = |dirs: &[&String]| -> Result<Vec<HostPath>> {
            dirs.iter()
                .map(|d| HostPath::parse(d).map_err(|e| Error::BadGrant(e.to_string())))
                .collect()
        };
        let (mut read, mut write) = (Vec::new(), Vec::new());
        let mut files_denied_by_policy = false;
        if let Some(files) = &grant.files {
            let g_write = parse_all(&files.write.iter().collect::<Vec<_>>())?;
            let g_read = parse_all(&files.read.iter().chain(&files.write).collect::<Vec<_>>())?;
            let asked = !g_read.is_empty();
            match policy.map(|p| p.files.as_ref()) {
                None => {
                    read = g_read.into_iter().map(GrantedDir::own).collect();
                    write = g_write.into_iter().map(GrantedDir::own).collect();
                }
                Some(None) => {}
                Some(Some(p)) => {
                    let p_write = parse_all(&p.write.iter().collect::<Vec<_>>())?;
                    let p_read = parse_all(&p.read.iter().chain(&p.write).collect::<Vec<_>>())?;
                    read = intersect(&g_read, &p_read);
                    write = intersect(&g_write, &p_write);
                }
            }
            files_denied_by_policy = read.is_empty() && asked;
        }
        let network = bounded(grant.network.as_ref(), policy.map(|p| p.network.as_ref()));
        let services = bounded(grant.services.as_ref(), policy.map(|p| p.services.as_ref()));
        if services.is_some() {
            // Writing where systemd loads units from, and starting units, is
            // defining what runs as root: the two never go together.
            for dir in &write {
                for units in SYSTEMD_UNIT_DIRS {
                    let units = HostPath::parse(units)
                        .map_err(|e| Error::BadGrant(format!("{units}: {e}")))?;
                    if dir.path.starts_with(&units) || units.starts_with(&dir.path) {
                        return Err(Error::BadGrant(format!(
                            "grant: files.write {} covers {units}, where systemd loads units \
                             from; with services that would let the action define the units it \
                             starts. Grant one or the other.",
                            dir.path
                        )));
                    }
                }
            }
        }
        Ok(Self {
            files_read: read,
            files_write: write,
            files_denied_by_policy,
            network,
            services,
        })
    }

    /// Whether a capability is granted at all; when not, why, in words that
    /// name the missing grant.
    pub fn capability(&self, capability: Capability) -> Result<(), String> {
        let granted = match capability {
            Capability::Files => !self.files_read.is_empty(),
            Capability::Network => self.network.is_some(),
            Capability::Services => self.services.is_some(),
        };
        if granted {
            return Ok(());
        }
        let name = capability.name();
        Err(
            if capability == Capability::Files && self.files_denied_by_policy {
                format!(
                    "`{name}`: the grant names directories but the node policy allows none of them"
                )
            } else {
                format!(
                    "`{name}` (hostaction:host/{name}): no `{name}` section in the effective grant"
                )
            },
        )
    }
}

/// A name-pattern scope bounded by the policy's: granted when the grant has it
/// and the policy is absent or has it too. Calls must satisfy both.
fn bounded<T: Clone>(grant: Option<&T>, policy: Option<Option<&T>>) -> Option<(T, Option<T>)> {
    match (grant, policy) {
        (Some(g), None) => Some((g.clone(), None)),
        (Some(g), Some(Some(p))) => Some((g.clone(), Some(p.clone()))),
        _ => None,
    }
}

/// The directories covered by both lists: for each pair where one contains the
/// other, the deeper one, anchored at the policy's directory.
fn intersect(grant: &[HostPath], policy: &[HostPath]) -> Vec<GrantedDir> {
    let mut out: Vec<GrantedDir> = Vec::new();
    for g in grant {
        for p in policy {
            let dir = if g.starts_with(p) {
                GrantedDir {
                    path: g.clone(),
                    anchor: p.clone(),
                }
            } else if p.starts_with(g) {
                GrantedDir::own(p.clone())
            } else {
                continue;
            };
            if !out.contains(&dir) {
                out.push(dir);
            }
        }
    }
    out
}

/// Matches `name` against a pattern where `*` is any run of characters and
/// `?` any one character.
pub fn glob(pattern: &str, name: &str) -> bool {
    let (p, n): (Vec<char>, Vec<char>) = (pattern.chars().collect(), name.chars().collect());
    // systemd escapes (`\x2f` is `/`) carry arbitrary bytes into template
    // instances: a wildcard matches them only where the pattern itself has one.
    if n.contains(&'\\') && !p.contains(&'\\') {
        return false;
    }
    // Iterative matcher with one backtrack point: linear in practice, no recursion.
    let (mut pi, mut ni, mut star, mut mark) = (0, 0, None, 0);
    while ni < n.len() {
        if pi < p.len() && (p[pi] == '?' || p[pi] == n[ni]) {
            pi += 1;
            ni += 1;
        } else if pi < p.len() && p[pi] == '*' {
            star = Some(pi);
            mark = ni;
            pi += 1;
        } else if let Some(s) = star {
            pi = s + 1;
            mark += 1;
            ni = mark;
        } else {
            return false;
        }
    }
    p[pi..].iter().all(|&c| c == '*')
}

/// A capability a component can import, gated by the grant.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Capability {
    /// `hostaction:host/files`.
    Files,
    /// `hostaction:host/network`.
    Network,
    /// `hostaction:host/services`.
    Services,
}

impl Capability {
    /// The interface name, as in the WIT package and the grant document.
    pub fn name(self) -> &'static str {
        match self {
            Capability::Files => "files",
            Capability::Network => "network",
            Capability::Services => "services",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dirs(dirs: &[GrantedDir]) -> Vec<String> {
        dirs.iter().map(|d| d.path.to_string()).collect()
    }

    #[test]
    fn policy_narrows_grant_to_the_deeper_directory() {
        let grant = Grant::parse("files: {write: [/opt/cni, /etc]}", "grant").unwrap();
        let policy =
            Grant::parse("files: {write: [/opt/cni/bin], read: [/etc/cni]}", "policy").unwrap();
        let eff = EffectiveGrant::new(&grant, Some(&policy)).unwrap();
        assert_eq!(dirs(&eff.files_write), ["/opt/cni/bin"]);
        assert_eq!(dirs(&eff.files_read), ["/opt/cni/bin", "/etc/cni"]);
        // A grant deeper than the policy is resolved beneath the policy's directory.
        let deeper = Grant::parse("files: {write: [/opt/cni/bin/sub]}", "grant").unwrap();
        let eff = EffectiveGrant::new(&deeper, Some(&policy)).unwrap();
        assert_eq!(eff.files_write[0].anchor.to_string(), "/opt/cni/bin");
    }

    #[test]
    fn policy_without_files_denies_files_and_says_why() {
        let grant = Grant::parse("files: {write: [/opt/cni]}", "grant").unwrap();
        let policy = Grant::parse("files: {write: [/var/lib]}", "policy").unwrap();
        let err = EffectiveGrant::new(&grant, Some(&policy))
            .unwrap()
            .capability(Capability::Files)
            .unwrap_err();
        assert!(err.contains("node policy allows none"), "{err}");
    }

    #[test]
    fn grant_with_unknown_field_is_rejected_naming_it() {
        let err = Grant::parse("files: {wirte: [/opt]}", "grant")
            .unwrap_err()
            .to_string();
        assert!(err.contains("wirte"), "{err}");
    }

    #[test]
    fn grant_with_relative_directory_names_the_field() {
        let err = Grant::parse("files: {write: [/opt, opt/cni]}", "grant")
            .unwrap_err()
            .to_string();
        assert!(err.contains("files.write[1]"), "{err}");
    }

    #[test]
    fn grant_with_unknown_link_kind_names_the_field() {
        let err = Grant::parse("network: {kinds: [bridge, tunnel]}", "grant")
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("network.kinds[1]") && err.contains("tunnel"),
            "{err}"
        );
    }
}
