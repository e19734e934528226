//! The grant document: scopes per capability. A HostAction embeds one
//! (`spec.grants`), `hostaction run --grants` reads one, and a node policy
//! has the same shape. Field names are camelCase and unknown fields are
//! refused, so a typo never silently widens or narrows a grant.
//! [`Grant::validate`] checks the values (paths, patterns, ranges): the
//! controller, static mode, the agent and `hostaction run --grants` all call
//! it, and the CRDs carry the same rules as CEL where CEL can express them
//! (see [`Grant::validate`] for which), so the API server refuses most typos
//! before anything runs.
//!
//! ```yaml
//! files:
//!   read: [/etc/cni]
//!   write: [/opt/cni/bin, /etc/cni/net.d]   # write implies read
//!   kernelPaths: [/proc/meminfo]            # procfs/sysfs paths allowed
//!   groupWritable: false                    # g+w modes (never o+w)
//!   executable: true                        # false: x bits only for payload files
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

use std::fmt;
use std::net::IpAddr;

use schemars::{JsonSchema, Schema, SchemaGenerator};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

/// The one validation, and the CEL rules' character classes.
#[cfg(test)]
mod tests;

/// Entries of one list of a grant (in the CRDs; a bound for the API server).
pub const LIST_ITEMS: usize = 64;
/// Bytes of a granted directory (Linux's `PATH_MAX`).
pub const PATH_BYTES: usize = 4096;
/// Bytes of a name pattern (netns, interface, unit).
pub const PATTERN_BYTES: usize = 256;
/// Bytes of one component of a granted path (Linux's `NAME_MAX`).
pub const NAME_BYTES: usize = 255;
/// Bytes of an interface name (Linux's `IFNAMSIZ` less its NUL): a
/// pattern needing more can never match.
pub const INTERFACE_BYTES: usize = 15;
/// Bytes of a CIDR (or `default`).
pub const CIDR_BYTES: usize = 64;
/// Link kinds the contract knows (`wit/network.wit`).
pub const LINK_KINDS: &[&str] = &[
    "bridge",
    "veth",
    "vxlan",
    "macvlan",
    "dummy",
    "vlan",
    "wireguard",
];
/// systemd's unit types: a unit pattern ends in one of them (canonical
/// names always do) or in `*`.
pub const UNIT_TYPES: &[&str] = &[
    "service",
    "socket",
    "target",
    "device",
    "mount",
    "automount",
    "swap",
    "timer",
    "path",
    "slice",
    "scope",
];

/// Scopes per capability. A missing section means the capability is not granted.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Grant {
    /// Directories the action may read or write.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub files: Option<FilesScope>,
    /// Namespaces, interface names and link kinds the action may touch.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub network: Option<NetworkScope>,
    /// systemd units the action may act on.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub services: Option<ServicesScope>,
    /// Whose signature the module must carry. In a node policy, the keys
    /// the node trusts; in an action's grant, the keys it narrows them to.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub verify: Option<Verify>,
}

/// Most keys one `verify` section lists.
pub const MAX_VERIFY_KEYS: usize = 16;
/// Largest PEM text of one key.
pub const MAX_KEY_PEM_BYTES: usize = 1024;

/// Signature verification (cosign format): the public keys (PEM, ECDSA
/// P-256 or Ed25519) whose signature of a module's artifact is accepted.
/// Keys or `required` on either side require a signature. With a node
/// policy `verify` section only its keys are accepted (those the grant
/// lists too, if it lists any); without one, a grant's keys are its own
/// opt-in.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Verify {
    /// Refuse a module without a signature by one of `keys`.
    #[serde(default)]
    pub required: bool,
    /// Public keys, each a PEM `PUBLIC KEY` (SubjectPublicKeyInfo).
    #[serde(default)]
    #[schemars(length(max = 16))]
    pub keys: Vec<String>,
}

/// The `files` scope: host-absolute directories (each covers its whole subtree).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct FilesScope {
    /// Directories the action may read.
    #[serde(default)]
    #[schemars(schema_with = "paths_schema")]
    pub read: Vec<String>,
    /// Directories the action may write (and read).
    #[serde(default)]
    #[schemars(schema_with = "paths_schema")]
    pub write: Vec<String>,
    /// Paths on procfs, sysfs and the other kernel filesystems the action may
    /// reach (each covers its subtree, within `read`/`write`); all others on
    /// those filesystems are refused. A policy knob.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(schema_with = "paths_schema")]
    pub kernel_paths: Vec<String>,
    /// Whether modes may be group-writable (g+w); world-writable never is.
    /// A policy knob: both grant and policy must say yes.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub group_writable: bool,
    /// `false`: files get execute bits only when their contents are one of
    /// the action's payload files (digest-verified). A policy knob.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub executable: Option<bool>,
}

/// The `network` scope.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct NetworkScope {
    /// Named network namespaces (patterns with `*`), `host` for the host's own.
    #[serde(default)]
    #[schemars(schema_with = "netns_schema")]
    pub netns: Vec<String>,
    /// Interface-name patterns (`*` matches any run of characters).
    #[serde(default)]
    #[schemars(schema_with = "interfaces_schema")]
    pub interfaces: Vec<String>,
    /// Link kinds the action may create.
    #[serde(default)]
    #[schemars(schema_with = "kinds_schema")]
    pub kinds: Vec<String>,
    /// Only links (and namespaces) hostaction created may be changed or deleted.
    #[serde(default)]
    pub owned_only: bool,
    /// Address ranges (CIDR) addresses may be put in: `10.244.0.0/16` allows
    /// `10.244.1.1/24`, not `10.0.0.1/8`.
    #[serde(default)]
    #[schemars(schema_with = "addresses_schema")]
    pub addresses: Vec<String>,
    /// Route destinations (CIDR) routes may go to; `default` allows default
    /// routes (which `0.0.0.0/0` and `::/0` also cover).
    #[serde(default)]
    #[schemars(schema_with = "routes_schema")]
    pub routes: Vec<String>,
}

/// The `services` scope.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ServicesScope {
    /// Unit-name patterns, matched against systemd's canonical names.
    #[serde(default)]
    #[schemars(schema_with = "units_schema")]
    pub units: Vec<String>,
    /// Whether the action may make systemd reread its unit files.
    #[serde(default)]
    pub daemon_reload: bool,
}

/// Characters no name pattern may hold, as RE2 (CEL's `matches`): Rust's
/// `char::is_whitespace` (`\s` is only ASCII's in RE2) and `/`.
pub const NAME_FORBIDDEN: &str = r"[\s\v\x{85}\p{Z}/]";
/// As [`NAME_FORBIDDEN`], and `:` (the kernel refuses it in interface names).
pub const INTERFACE_FORBIDDEN: &str = r"[\s\v\x{85}\p{Z}/:]";
/// A unit-name pattern's characters (systemd's, and the wildcards `*`, `?`).
pub const UNIT_PATTERN: &str = r"^[A-Za-z0-9:_.\\@*?-]+$";
/// A `.` or `..` component of a path.
pub const DOT_COMPONENT: &str = "(^|/)[.][.]?(/|$)";

/// Why a grant is refused: the field (`files.write[1]`, relative to the
/// grant) and what is wrong with its value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GrantError {
    /// The field, like `network.addresses[0]`.
    pub field: String,
    /// What is wrong, naming the value.
    pub message: String,
}

impl fmt::Display for GrantError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.field, self.message)
    }
}

impl std::error::Error for GrantError {}

/// Why a path was refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PathError {
    /// Not starting with `/`.
    NotAbsolute(String),
    /// Contains a NUL byte.
    Nul,
    /// Longer than [`PATH_BYTES`].
    TooLong(usize),
    /// A component longer than [`NAME_BYTES`].
    NameTooLong(usize),
    /// Contains `.` or `..`.
    DotComponent(String),
}

impl fmt::Display for PathError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::NotAbsolute(p) => write!(f, "path {p:?} is not absolute"),
            Self::Nul => write!(f, "path contains a NUL byte"),
            Self::TooLong(n) => write!(f, "path is {n} bytes long; the limit is {PATH_BYTES}"),
            Self::NameTooLong(n) => write!(
                f,
                "a path component is {n} bytes long; the limit is {NAME_BYTES}"
            ),
            Self::DotComponent(p) => write!(f, "path {p:?} contains a `.` or `..` component"),
        }
    }
}

impl std::error::Error for PathError {}

/// The components of a host-absolute path (repeated and trailing slashes
/// folded), checked lexically: absolute, no NUL, no `.` or `..`, within
/// [`PATH_BYTES`] and [`NAME_BYTES`]. The runtime's paths (granted ones and
/// those actions pass) are parsed by this too.
pub fn path_components(path: &str) -> Result<Vec<&str>, PathError> {
    if path.len() > PATH_BYTES {
        return Err(PathError::TooLong(path.len()));
    }
    if path.contains('\0') {
        return Err(PathError::Nul);
    }
    if !path.starts_with('/') {
        return Err(PathError::NotAbsolute(path.to_owned()));
    }
    let mut parts = Vec::new();
    for part in path.split('/').filter(|p| !p.is_empty()) {
        if part == "." || part == ".." {
            return Err(PathError::DotComponent(path.to_owned()));
        }
        if part.len() > NAME_BYTES {
            return Err(PathError::NameTooLong(part.len()));
        }
        parts.push(part);
    }
    Ok(parts)
}

impl Grant {
    /// Checks every value; the error names the first bad field. The one
    /// check of a grant (and of a node policy, the same document): the
    /// controller, static mode, the agent and the CLI call it.
    ///
    /// The CRDs' CEL rules say the same, except what CEL cannot say or
    /// count within its cost budget: a path component's length in bytes
    /// (`NAME_BYTES`) and NUL bytes in paths. A HostAction with those passes the API server and is
    /// marked `GrantInvalid` by the controller instead.
    pub fn validate(&self) -> Result<(), GrantError> {
        if let Some(verify) = &self.verify {
            if verify.keys.len() > MAX_VERIFY_KEYS {
                return Err(GrantError {
                    field: "verify.keys".into(),
                    message: format!("{} keys; at most {MAX_VERIFY_KEYS}", verify.keys.len()),
                });
            }
            each("verify.keys", &verify.keys, |key| {
                if key.len() > MAX_KEY_PEM_BYTES {
                    return Err(format!(
                        "a key of {} bytes; at most {MAX_KEY_PEM_BYTES}",
                        key.len()
                    ));
                }
                if !key.contains("-----BEGIN PUBLIC KEY-----") {
                    return Err("not a PEM public key (-----BEGIN PUBLIC KEY-----)".into());
                }
                Ok(())
            })?;
        }
        if let Some(files) = &self.files {
            for (list, dirs) in [
                ("read", &files.read),
                ("write", &files.write),
                ("kernelPaths", &files.kernel_paths),
            ] {
                each(&format!("files.{list}"), dirs, |dir| {
                    path_components(dir).map(drop).map_err(|e| e.to_string())
                })?;
            }
        }
        if let Some(net) = &self.network {
            each("network.netns", &net.netns, |p| {
                name_pattern(p, "namespace", &['/'])?;
                if p == "." || p == ".." {
                    return Err(format!("{p:?} is not a namespace name"));
                }
                Ok(())
            })?;
            each("network.interfaces", &net.interfaces, |p| {
                name_pattern(p, "interface-name", &['/', ':'])?;
                // The kernel counts bytes; `*` is one.
                let bytes = p.len() - p.matches('*').count();
                if bytes > INTERFACE_BYTES {
                    return Err(format!(
                        "{p:?} needs {bytes} bytes; interface names have at most \
                         {INTERFACE_BYTES}, so it can never match"
                    ));
                }
                Ok(())
            })?;
            each("network.kinds", &net.kinds, |kind| {
                if LINK_KINDS.contains(&kind) {
                    return Ok(());
                }
                Err(format!(
                    "unknown link kind {kind:?} (known: {})",
                    LINK_KINDS.join(", ")
                ))
            })?;
            each("network.addresses", &net.addresses, |c| network(c, false))?;
            each("network.routes", &net.routes, |c| network(c, true))?;
        }
        if let Some(services) = &self.services {
            each("services.units", &services.units, unit_pattern)?;
        }
        Ok(())
    }
}

/// Checks a list's length and each of its entries.
fn each(
    field: &str,
    items: &[String],
    check: impl Fn(&str) -> Result<(), String>,
) -> Result<(), GrantError> {
    if items.len() > LIST_ITEMS {
        return Err(GrantError {
            field: field.to_owned(),
            message: format!("{} entries; the limit is {LIST_ITEMS}", items.len()),
        });
    }
    for (i, item) in items.iter().enumerate() {
        check(item).map_err(|message| GrantError {
            field: format!("{field}[{i}]"),
            message,
        })?;
    }
    Ok(())
}

/// A name pattern: not empty, within [`PATTERN_BYTES`], no whitespace nor
/// any of `forbidden`.
fn name_pattern(pattern: &str, what: &str, forbidden: &[char]) -> Result<(), String> {
    if pattern.is_empty() {
        return Err(format!("an empty {what} pattern matches nothing"));
    }
    if pattern.len() > PATTERN_BYTES {
        return Err(format!(
            "the {what} pattern is {} bytes long; the limit is {PATTERN_BYTES}",
            pattern.len()
        ));
    }
    match pattern
        .chars()
        .find(|c| c.is_whitespace() || forbidden.contains(c))
    {
        Some(c) => Err(format!(
            "{pattern:?} is not a {what} pattern: it has {c:?} (no whitespace or {})",
            forbidden.iter().collect::<String>()
        )),
        None => Ok(()),
    }
}

/// A unit-name pattern: systemd's characters and `*`, `?`, ending in a unit
/// type or `*` (canonical names always have their type, so
/// `containerd` would match nothing).
fn unit_pattern(pattern: &str) -> Result<(), String> {
    if pattern.is_empty() {
        return Err("an empty unit-name pattern matches nothing".to_owned());
    }
    if pattern.len() > PATTERN_BYTES {
        return Err(format!(
            "the unit-name pattern is {} bytes long; the limit is {PATTERN_BYTES}",
            pattern.len()
        ));
    }
    if let Some(c) = pattern
        .chars()
        .find(|&c| !(c.is_ascii_alphanumeric() || ":_.\\@*?-".contains(c)))
    {
        return Err(format!(
            "{pattern:?} is not a unit-name pattern: it has {c:?} (letters, digits, \
             `:-_.\\@` and the wildcards `*` `?`)"
        ));
    }
    let typed = pattern
        .rsplit_once('.')
        .is_some_and(|(_, suffix)| UNIT_TYPES.contains(&suffix));
    if !(typed || pattern.ends_with('*')) {
        return Err(format!(
            "{pattern:?} has no unit type: systemd's canonical names always end in one \
             (.service, .socket, .timer, ...), so end the pattern in one or in `*`"
        ));
    }
    Ok(())
}

/// A network in CIDR notation with no host bits set (as Go's
/// `netip.ParsePrefix` and CEL's `isCIDR` read it: a decimal prefix length
/// without sign or leading zeros), or `default` where `default_ok`.
fn network(cidr: &str, default_ok: bool) -> Result<(), String> {
    if default_ok && cidr == "default" {
        return Ok(());
    }
    let expected = || {
        format!(
            "{cidr:?} is not a network in CIDR notation (like 10.244.0.0/16){}",
            if default_ok { " or `default`" } else { "" }
        )
    };
    let Some((addr, bits)) = cidr.split_once('/') else {
        return Err(expected());
    };
    let canonical_bits = !bits.is_empty()
        && bits.bytes().all(|b| b.is_ascii_digit())
        && (bits == "0" || !bits.starts_with('0'));
    let (Ok(addr), Ok(bits), true) = (addr.parse::<IpAddr>(), bits.parse::<u32>(), canonical_bits)
    else {
        return Err(expected());
    };
    let (value, width) = match addr {
        IpAddr::V4(a) => (u128::from(u32::from(a)), 32),
        // As Kubernetes' isCIDR: `::ffff:10.0.0.0/104` would be an IPv6
        // range no IPv4 address falls in.
        IpAddr::V6(a) if a.to_ipv4_mapped().is_some() => {
            return Err(format!(
                "{cidr:?} is an IPv4-mapped IPv6 network: name the IPv4 network"
            ));
        }
        IpAddr::V6(a) => (u128::from(a), 128),
    };
    if bits > width {
        return Err(expected());
    }
    let host_bits = width - bits;
    let host_mask = if host_bits == 0 {
        0
    } else {
        u128::MAX >> (128 - host_bits)
    };
    if value & host_mask != 0 {
        return Err(format!(
            "{cidr:?} has host bits set: a network is named by its first address \
             (like 10.244.0.0/16, not 10.244.1.1/16)"
        ));
    }
    Ok(())
}

/// A CEL rule with its message.
fn rule(rule: String, message: &str) -> Value {
    json!({ "rule": rule, "message": message })
}

/// A bounded list of strings, each checked by `rules` (CEL, run by the API
/// server on each entry, so a refusal names the entry: `files.write[1]`).
/// `maxLength` counts characters; the bytes are counted by a rule of their
/// own, as the Rust check counts them.
fn list(max_bytes: usize, mut rules: Vec<Value>) -> Schema {
    rules.push(rule(
        format!("bytes(self).size() <= {max_bytes}"),
        &format!("at most {max_bytes} bytes"),
    ));
    schemars::json_schema!({
        "type": "array",
        "maxItems": LIST_ITEMS,
        "items": {
            "type": "string",
            "maxLength": max_bytes,
            "x-kubernetes-validations": rules,
        },
    })
}

fn paths_schema(_: &mut SchemaGenerator) -> Schema {
    list(
        PATH_BYTES,
        vec![
            rule(
                "self.startsWith('/')".into(),
                "must be an absolute path (starting with /)",
            ),
            rule(
                format!("!self.matches('{DOT_COMPONENT}')"),
                "must not have . or .. components",
            ),
        ],
    )
}

fn netns_schema(_: &mut SchemaGenerator) -> Schema {
    list(
        PATTERN_BYTES,
        vec![
            rule(
                format!("self != '' && !self.matches(r'{NAME_FORBIDDEN}')"),
                "a namespace pattern: not empty, no whitespace or /",
            ),
            rule(
                "self != '.' && self != '..'".into(),
                "a namespace pattern: not . or ..",
            ),
        ],
    )
}

fn interfaces_schema(_: &mut SchemaGenerator) -> Schema {
    list(
        PATTERN_BYTES,
        vec![
            rule(
                format!("self != '' && !self.matches(r'{INTERFACE_FORBIDDEN}')"),
                "an interface-name pattern: not empty, no whitespace, / or :",
            ),
            rule(
                format!("bytes(self.replace('*', '')).size() <= {INTERFACE_BYTES}"),
                "interface names have at most 15 bytes: this pattern can never match",
            ),
        ],
    )
}

fn kinds_schema(_: &mut SchemaGenerator) -> Schema {
    schemars::json_schema!({
        "type": "array",
        "maxItems": LIST_ITEMS,
        "items": { "type": "string", "enum": LINK_KINDS },
    })
}

/// `cidr(self) == cidr(self).masked()`: no host bits set.
const CEL_NETWORK: &str = "(isCIDR(self) && cidr(self) == cidr(self).masked())";

fn addresses_schema(_: &mut SchemaGenerator) -> Schema {
    list(
        CIDR_BYTES,
        vec![rule(
            CEL_NETWORK.into(),
            "must be a network in CIDR notation with no host bits set, like 10.244.0.0/16",
        )],
    )
}

fn routes_schema(_: &mut SchemaGenerator) -> Schema {
    list(
        CIDR_BYTES,
        vec![rule(
            format!("self == 'default' || {CEL_NETWORK}"),
            "must be default or a network in CIDR notation with no host bits set, like 10.244.0.0/16",
        )],
    )
}

fn units_schema(_: &mut SchemaGenerator) -> Schema {
    list(
        PATTERN_BYTES,
        vec![
            rule(
                format!("self.matches(r'{UNIT_PATTERN}')"),
                "a unit-name pattern: letters, digits, :-_.\\@ and the wildcards * and ?",
            ),
            rule(
                format!(
                    "self.endsWith('*') || self.matches('[.]({})$')",
                    UNIT_TYPES.join("|")
                ),
                "must end in a unit type (.service, .socket, .timer, ...) or *: systemd's canonical names always have one",
            ),
        ],
    )
}
