//! The grant document: scopes per capability. A HostAction embeds one
//! (`spec.grants`), `hostaction run --grants` reads one, and a node policy
//! has the same shape. Field names are camelCase and unknown fields are
//! refused, so a typo never silently widens or narrows a grant. The runtime
//! validates the values (paths, patterns, ranges) and intersects a grant
//! with its node's policy.
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

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// Entries of one list of a grant (in the CRDs; a bound for the API server).
pub const LIST_ITEMS: usize = 64;
/// Bytes of a granted directory (Linux's `PATH_MAX`).
pub const PATH_BYTES: usize = 4096;
/// Bytes of a name pattern (netns, interface, unit).
pub const PATTERN_BYTES: usize = 256;

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
}

/// The `files` scope: host-absolute directories (each covers its whole subtree).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct FilesScope {
    /// Directories the action may read.
    #[serde(default)]
    #[schemars(length(max = LIST_ITEMS), inner(length(max = PATH_BYTES)))]
    pub read: Vec<String>,
    /// Directories the action may write (and read).
    #[serde(default)]
    #[schemars(length(max = LIST_ITEMS), inner(length(max = PATH_BYTES)))]
    pub write: Vec<String>,
    /// Paths on procfs, sysfs and the other kernel filesystems the action may
    /// reach (each covers its subtree, within `read`/`write`); all others on
    /// those filesystems are refused. A policy knob.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
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
    #[schemars(length(max = LIST_ITEMS), inner(length(max = PATTERN_BYTES)))]
    pub netns: Vec<String>,
    /// Interface-name patterns (`*` matches any run of characters).
    #[serde(default)]
    #[schemars(length(max = LIST_ITEMS), inner(length(max = PATTERN_BYTES)))]
    pub interfaces: Vec<String>,
    /// Link kinds the action may create.
    #[serde(default)]
    #[schemars(length(max = LIST_ITEMS), inner(length(max = 32)))]
    pub kinds: Vec<String>,
    /// Only links (and namespaces) hostaction created may be changed or deleted.
    #[serde(default)]
    pub owned_only: bool,
    /// Address ranges (CIDR) addresses may be put in: `10.244.0.0/16` allows
    /// `10.244.1.1/24`, not `10.0.0.1/8`.
    #[serde(default)]
    #[schemars(length(max = LIST_ITEMS), inner(length(max = 64)))]
    pub addresses: Vec<String>,
    /// Route destinations (CIDR) routes may go to; `default` allows default
    /// routes (which `0.0.0.0/0` and `::/0` also cover).
    #[serde(default)]
    #[schemars(length(max = LIST_ITEMS), inner(length(max = 64)))]
    pub routes: Vec<String>,
}

/// The `services` scope.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ServicesScope {
    /// Unit-name patterns, matched against systemd's canonical names.
    #[serde(default)]
    #[schemars(length(max = LIST_ITEMS), inner(length(max = PATTERN_BYTES)))]
    pub units: Vec<String>,
    /// Whether the action may make systemd reread its unit files.
    #[serde(default)]
    pub daemon_reload: bool,
}
