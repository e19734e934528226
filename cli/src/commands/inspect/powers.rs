//! What a module may do under a grant and a node policy, computed as the
//! engine computes and enforces it (`runtime/src/grant.rs`,
//! `EffectiveGrant`): `files` directories are intersected when the grant is
//! read; `network` and `services` keep the grant's scope and the policy's,
//! and every call must satisfy both. What the policy takes away is said per
//! entry of the grant.

use std::fmt;

use hostaction_runtime::Error;
use hostaction_runtime::grant::{
    Capability, EffectiveGrant, FilesScope, Grant, GrantedDir, NetworkScope, ServicesScope,
};
use hostaction_runtime::host::HostPath;
use hostaction_runtime::report::printable;
use serde::Serialize;

use super::patterns::{self, Coverage};
use super::ranges::{self, Left};

/// The capabilities, in the order they are shown.
const CAPABILITIES: [Capability; 3] =
    [Capability::Files, Capability::Network, Capability::Services];

/// How the host's own network namespace is named in grants.
const HOST_NETNS: &str = "host";

/// The effective powers of a module under a grant and a node policy.
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Powers {
    /// The grant file (none: no `--grants`, so nothing is granted).
    pub grant: Option<String>,
    /// The node policy file (none: `hostaction run`'s default, see `bound`).
    pub policy: Option<String>,
    /// How the grant is bounded, in words.
    pub bound: String,
    /// What `hostaction run` with this grant and policy does.
    pub run: RunVerdict,
    /// Per capability, in a fixed order (files, network, services).
    pub capabilities: Vec<CapabilityPowers>,
    /// What the engine also checks when a run starts.
    pub notes: Vec<String>,
}

/// Whether `hostaction run` starts the module.
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct RunVerdict {
    /// Whether the module starts (every capability it imports is granted).
    pub starts: bool,
    /// The exit code when it does not: 3, a capability it imports is not
    /// granted; 2, a module the engine cannot call (no `run` export).
    pub exit_code: Option<u8>,
    /// The engine's error when it does not.
    pub error: Option<String>,
}

/// One capability: whether the module imports it, whether the effective
/// grant gives it, what scope, and what the policy took from the grant.
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct CapabilityPowers {
    /// `files`, `network` or `services`.
    pub capability: Capability,
    /// Whether the module imports it.
    pub imported: bool,
    /// Whether the grant has its section.
    pub requested: bool,
    /// Whether the effective grant gives it.
    pub granted: bool,
    /// `allowed` (imported and granted), `refused` (imported, not granted:
    /// the run is refused), `unused` (granted or requested, not imported),
    /// `none` (neither).
    pub status: Status,
    /// Why the engine does not give it (its own words), when it does not.
    pub reason: Option<String>,
    /// The effective `files` scope, when granted.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub files: Option<FilesPowers>,
    /// The effective `network` scope, when granted.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub network: Option<NetworkPowers>,
    /// The effective `services` scope, when granted.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub services: Option<ServicesPowers>,
    /// What the node policy takes from the grant's section.
    pub taken_away: Vec<TakenAway>,
}

/// A capability's standing for this module.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub enum Status {
    /// Imported and granted: its calls are checked against the scope.
    Allowed,
    /// Imported and not granted: the run is refused before the module starts.
    Refused,
    /// Requested by the grant but not imported: the section has no effect.
    Unused,
    /// Neither imported nor requested.
    None,
}

/// The effective `files` scope.
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct FilesPowers {
    /// Directories readable (the writable ones included).
    pub read: Vec<Dir>,
    /// Directories writable.
    pub write: Vec<Dir>,
    /// The only paths on procfs, sysfs and the other kernel filesystems that
    /// may be reached (and only where also readable or writable).
    pub kernel_paths: Vec<Dir>,
    /// Whether modes may be group-writable.
    pub group_writable: bool,
    /// Whether execute bits are allowed only on payload files' contents.
    pub payload_executables_only: bool,
}

/// One effective directory.
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Dir {
    /// The directory (its whole subtree).
    pub path: String,
    /// The policy's directory it is resolved beneath, when deeper than it
    /// (a symlink inside cannot lead out of that).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub resolved_beneath: Option<String>,
}

/// The effective `network` scope: a call must match both the grant and the
/// policy.
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct NetworkPowers {
    /// Whether the host's own namespace may be used (both name `host`).
    pub host_netns: bool,
    /// Named namespaces.
    pub netns: Names,
    /// Interface names.
    pub interfaces: Names,
    /// Link kinds that may be created.
    pub kinds: Vec<String>,
    /// Ranges an address's network must lie within.
    pub addresses: Vec<String>,
    /// Route destinations allowed.
    pub routes: Vec<String>,
    /// Whether only links and namespaces hostaction created may be changed
    /// or deleted (the grant or the policy said so).
    pub owned_only: bool,
}

/// The effective `services` scope: a unit must match both.
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ServicesPowers {
    /// Unit names (systemd's canonical names: an alias is resolved first).
    pub units: Names,
    /// Whether `daemon-reload` is allowed (both said so).
    pub daemon_reload: bool,
}

/// Names allowed by patterns: a name must match one of `grant` and, with a
/// policy, one of `policy`. `matching` is one list that says exactly the
/// same, when one side's patterns all lie within the other's.
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Names {
    /// Exactly the names matching one of these, when one list says it.
    pub matching: Option<Vec<String>>,
    /// The grant's patterns.
    pub grant: Vec<String>,
    /// The policy's patterns (none: no policy).
    pub policy: Option<Vec<String>>,
}

/// What the node policy takes from one entry of the grant.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct TakenAway {
    /// The grant's field, as in the document: `files.write`, `network.kinds`.
    pub field: String,
    /// The grant's entry (`/etc`, `vx-*`, `true`, or `section` for all of it).
    pub requested: String,
    /// What of it is still allowed (empty: nothing).
    pub kept: Vec<String>,
    /// A name the grant allows and the policy refuses, when patterns are
    /// compared.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub example: Option<String>,
    /// Why, in words.
    pub why: String,
}

impl TakenAway {
    fn new(field: &str, requested: &str, kept: Vec<String>, why: String) -> Self {
        Self {
            field: field.to_owned(),
            requested: requested.to_owned(),
            kept,
            example: None,
            why,
        }
    }
}

impl Powers {
    /// The powers of a module importing `imported` under `grant` and `policy`
    /// (`None`: no `--policy`), as `hostaction run` computes them.
    pub fn new(
        imported: &[Capability],
        grant: &Grant,
        grant_file: Option<String>,
        policy: Option<&Grant>,
        policy_file: Option<String>,
    ) -> Result<Self, Error> {
        patterns::with_budget(patterns::MAX_TOTAL_STEPS, || {
            Self::within_budget(imported, grant, grant_file, policy, policy_file)
        })
    }

    fn within_budget(
        imported: &[Capability],
        grant: &Grant,
        grant_file: Option<String>,
        policy: Option<&Grant>,
        policy_file: Option<String>,
    ) -> Result<Self, Error> {
        let effective = EffectiveGrant::new(grant, policy)?;
        let mut capabilities = Vec::new();
        let mut refused = Vec::new();
        for capability in CAPABILITIES {
            let is_imported = imported.contains(&capability);
            let verdict = effective.capability(capability);
            let requested = match capability {
                Capability::Files => grant.files.is_some(),
                Capability::Network => grant.network.is_some(),
                Capability::Services => grant.services.is_some(),
            };
            let granted = verdict.is_ok();
            let status = match (is_imported, granted) {
                (true, true) => Status::Allowed,
                (true, false) => Status::Refused,
                (false, _) if requested || granted => Status::Unused,
                (false, _) => Status::None,
            };
            if let (true, Err(why)) = (is_imported, &verdict) {
                refused.push(why.clone());
            }
            let mut powers = CapabilityPowers {
                capability,
                imported: is_imported,
                requested,
                granted,
                status,
                reason: verdict.err(),
                files: None,
                network: None,
                services: None,
                taken_away: Vec::new(),
            };
            match capability {
                Capability::Files => {
                    if let Some(g) = &grant.files {
                        powers.taken_away = files_taken(g, policy.map(|p| p.files.as_ref()))?;
                    }
                    if granted {
                        powers.files = Some(files_powers(&effective));
                    }
                }
                Capability::Network => {
                    if let Some(g) = &grant.network {
                        powers.taken_away = network_taken(g, policy.map(|p| p.network.as_ref()));
                    }
                    powers.network = effective
                        .network
                        .as_ref()
                        .map(|(g, p)| network_powers(g, p.as_ref()));
                }
                Capability::Services => {
                    if let Some(g) = &grant.services {
                        powers.taken_away = services_taken(g, policy.map(|p| p.services.as_ref()));
                    }
                    powers.services = effective
                        .services
                        .as_ref()
                        .map(|(g, p)| services_powers(g, p.as_ref()));
                }
            }
            capabilities.push(powers);
        }
        let run = if refused.is_empty() {
            RunVerdict {
                starts: true,
                exit_code: None,
                error: None,
            }
        } else {
            let error = Error::Refused(refused);
            RunVerdict {
                starts: false,
                exit_code: Some(error.exit_code()),
                error: Some(error.to_string()),
            }
        };
        let bound = match policy {
            Some(_) => "grant ∩ node policy: files directories are intersected; network and \
                        services calls must match both the grant and the policy"
                .to_owned(),
            None => "no node policy (--policy): as `hostaction run` without one, the grant \
                     stands as it is, unbounded. The agent without --policy grants nothing \
                     (every run that imports a capability is refused), unless started with \
                     --unbounded-grants"
                .to_owned(),
        };
        let mut notes = Vec::new();
        if !effective.files_read.is_empty() {
            notes.push(
                "when a run starts, the engine also checks this host: each directory the node \
                 policy names (or the grant, without one) and every directory on its way must \
                 be root's and not group- or world-writable, else the run fails (exit 4)"
                    .to_owned(),
            );
        }
        if effective.services.is_some() && !effective.files_write.is_empty() {
            notes.push(
                "when a run starts, a writable directory that is, contains, lies in or leads by \
                 a symlink to a directory systemd loads units from refuses the run (exit 2)"
                    .to_owned(),
            );
        }
        Ok(Self {
            grant: grant_file,
            policy: policy_file,
            bound,
            run,
            capabilities,
            notes,
        })
    }
}

fn dirs(list: &[GrantedDir]) -> Vec<Dir> {
    list.iter()
        .map(|d| Dir {
            path: d.path.to_string(),
            resolved_beneath: (d.anchor != d.path).then(|| d.anchor.to_string()),
        })
        .collect()
}

fn files_powers(effective: &EffectiveGrant) -> FilesPowers {
    FilesPowers {
        read: dirs(&effective.files_read),
        write: dirs(&effective.files_write),
        kernel_paths: dirs(&effective.files_kernel),
        group_writable: effective.files_group_writable,
        payload_executables_only: effective.files_payload_executables_only,
    }
}

/// What a list of directories leaves of one directory.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DirLeft {
    /// All of it: one of them contains it.
    All,
    /// Only these directories within it.
    Part(Vec<HostPath>),
    /// None of it.
    Nothing,
}

/// What `policy` leaves of the granted directory `dir`, as the engine
/// intersects them: a directory within one of the policy's stays whole; else
/// the policy's directories within it stay.
pub fn dir_left(dir: &HostPath, policy: &[HostPath]) -> DirLeft {
    if policy.iter().any(|p| dir.starts_with(p)) {
        return DirLeft::All;
    }
    let inside: Vec<HostPath> = policy
        .iter()
        .filter(|p| p.starts_with(dir))
        .cloned()
        .collect();
    if inside.is_empty() {
        DirLeft::Nothing
    } else {
        DirLeft::Part(inside)
    }
}

fn parse_dirs<'a>(dirs: impl Iterator<Item = &'a String>) -> Result<Vec<HostPath>, Error> {
    dirs.map(|d| HostPath::parse(d).map_err(|e| Error::BadGrant(format!("{d}: {e}"))))
        .collect()
}

fn joined(list: &[String]) -> String {
    if list.is_empty() {
        "none".to_owned()
    } else {
        list.join(", ")
    }
}

/// What a policy's `files` section (`None`: no policy; `Some(None)`: a
/// policy without one) takes from the grant's.
pub fn files_taken(
    grant: &FilesScope,
    policy: Option<Option<&FilesScope>>,
) -> Result<Vec<TakenAway>, Error> {
    let Some(policy) = policy else {
        return Ok(Vec::new());
    };
    let Some(p) = policy else {
        return Ok(vec![TakenAway::new(
            "files",
            "section",
            Vec::new(),
            "the node policy has no files section: no directory is granted".to_owned(),
        )]);
    };
    let p_read = parse_dirs(p.read.iter().chain(&p.write))?;
    let p_write = parse_dirs(p.write.iter())?;
    let p_kernel = parse_dirs(p.kernel_paths.iter())?;
    let names = |l: &[HostPath]| l.iter().map(ToString::to_string).collect::<Vec<_>>();
    let mut out = Vec::new();
    for (field, list, bound, word) in [
        ("files.read", &grant.read, &p_read, "read (or write)"),
        ("files.write", &grant.write, &p_write, "write"),
        (
            "files.kernelPaths",
            &grant.kernel_paths,
            &p_kernel,
            "kernelPaths",
        ),
    ] {
        for text in list {
            let dir = HostPath::parse(text).map_err(|e| Error::BadGrant(format!("{text}: {e}")))?;
            let kept = match dir_left(&dir, bound) {
                DirLeft::All => continue,
                DirLeft::Part(inside) => names(&inside),
                DirLeft::Nothing => Vec::new(),
            };
            let mut why = if kept.is_empty() {
                format!(
                    "not under any of the node policy's {word} directories ({})",
                    joined(&names(bound))
                )
            } else {
                format!(
                    "wider than the node policy's {word} directories: only {} within it",
                    kept.join(", ")
                )
            };
            if field == "files.write" {
                match dir_left(&dir, &p_read) {
                    DirLeft::All => why.push_str("; still readable"),
                    DirLeft::Part(r) => {
                        why.push_str(&format!("; readable only in {}", names(&r).join(", ")));
                    }
                    DirLeft::Nothing => why.push_str("; not readable either"),
                }
            }
            out.push(TakenAway::new(field, &dir.to_string(), kept, why));
        }
    }
    if grant.group_writable && !p.group_writable {
        out.push(TakenAway::new(
            "files.groupWritable",
            "true",
            Vec::new(),
            "the node policy does not allow group-writable modes (g+w)".to_owned(),
        ));
    }
    if grant.executable != Some(false) && p.executable == Some(false) {
        out.push(TakenAway::new(
            "files.executable",
            "true",
            Vec::new(),
            "the node policy says executable: false: execute bits only on a payload file's \
             contents"
                .to_owned(),
        ));
    }
    Ok(out)
}

/// What the policy's patterns leave of each of the grant's.
pub fn patterns_taken(field: &str, grant: &[String], policy: &[String]) -> Vec<TakenAway> {
    let theirs: Vec<&str> = policy.iter().map(String::as_str).collect();
    let mut out = Vec::new();
    for pattern in grant {
        let overlapping = || {
            policy
                .iter()
                .filter(|p| !matches!(patterns::coverage(p, &[pattern]), Coverage::Nothing { .. }))
                .cloned()
                .collect::<Vec<_>>()
        };
        let (kept, example, why) = match patterns::coverage(pattern, &theirs) {
            Coverage::Covered => continue,
            Coverage::Partly { refused, .. } => {
                let kept = overlapping();
                let why = format!(
                    "wider than the node policy's {field} ({}): only names matching both it and \
                     one of {} are allowed",
                    joined(policy),
                    kept.join(", ")
                );
                (kept, Some(refused), why)
            }
            Coverage::Nothing { refused } => (
                Vec::new(),
                refused,
                format!(
                    "no name it matches is in the node policy's {field} ({})",
                    joined(policy)
                ),
            ),
            Coverage::Undecided => (
                policy.to_vec(),
                None,
                format!(
                    "not compared (more than {} steps, or the {} of all comparisons spent): each \
                     call is allowed only when its name also matches one of the node policy's \
                     {field} ({})",
                    patterns::MAX_STEPS,
                    patterns::MAX_TOTAL_STEPS,
                    joined(policy)
                ),
            ),
        };
        out.push(TakenAway {
            field: field.to_owned(),
            requested: pattern.clone(),
            kept,
            example,
            why,
        });
    }
    out
}

/// The named-namespace patterns of a list (`host` names the host's own).
fn named(netns: &[String]) -> Vec<String> {
    netns.iter().filter(|n| *n != HOST_NETNS).cloned().collect()
}

/// What a policy's `network` section takes from the grant's.
pub fn network_taken(
    grant: &NetworkScope,
    policy: Option<Option<&NetworkScope>>,
) -> Vec<TakenAway> {
    let Some(policy) = policy else {
        return Vec::new();
    };
    let Some(p) = policy else {
        return vec![TakenAway::new(
            "network",
            "section",
            Vec::new(),
            "the node policy has no network section: the capability is not granted".to_owned(),
        )];
    };
    let mut out = Vec::new();
    if grant.netns.iter().any(|n| n == HOST_NETNS) && !p.netns.iter().any(|n| n == HOST_NETNS) {
        out.push(TakenAway::new(
            "network.netns",
            HOST_NETNS,
            Vec::new(),
            "the node policy's network.netns has no `host`: the host's own namespace is refused"
                .to_owned(),
        ));
    }
    out.extend(patterns_taken(
        "network.netns",
        &named(&grant.netns),
        &named(&p.netns),
    ));
    out.extend(patterns_taken(
        "network.interfaces",
        &grant.interfaces,
        &p.interfaces,
    ));
    for kind in &grant.kinds {
        if !p.kinds.contains(kind) {
            out.push(TakenAway::new(
                "network.kinds",
                kind,
                Vec::new(),
                format!(
                    "not in the node policy's network.kinds ({})",
                    joined(&p.kinds)
                ),
            ));
        }
    }
    for (field, list, bound, route) in [
        ("network.addresses", &grant.addresses, &p.addresses, false),
        ("network.routes", &grant.routes, &p.routes, true),
    ] {
        for entry in list {
            let (kept, why) = match ranges::left(entry, bound, route) {
                Left::All => continue,
                Left::Part(kept) => {
                    let kept: Vec<String> = kept.iter().map(ToString::to_string).collect();
                    let why = format!(
                        "wider than the node policy's {field} ({}): only {} within it",
                        joined(bound),
                        kept.join(", ")
                    );
                    (kept, why)
                }
                Left::Nothing => (
                    Vec::new(),
                    format!("not within the node policy's {field} ({})", joined(bound)),
                ),
            };
            out.push(TakenAway::new(field, entry, kept, why));
        }
    }
    if !grant.owned_only && p.owned_only {
        out.push(TakenAway::new(
            "network.ownedOnly",
            "false",
            Vec::new(),
            "the node policy says ownedOnly: only links and namespaces hostaction created may \
             be changed or deleted"
                .to_owned(),
        ));
    }
    out
}

/// What a policy's `services` section takes from the grant's.
pub fn services_taken(
    grant: &ServicesScope,
    policy: Option<Option<&ServicesScope>>,
) -> Vec<TakenAway> {
    let Some(policy) = policy else {
        return Vec::new();
    };
    let Some(p) = policy else {
        return vec![TakenAway::new(
            "services",
            "section",
            Vec::new(),
            "the node policy has no services section: the capability is not granted".to_owned(),
        )];
    };
    let mut out = patterns_taken("services.units", &grant.units, &p.units);
    if grant.daemon_reload && !p.daemon_reload {
        out.push(TakenAway::new(
            "services.daemonReload",
            "true",
            Vec::new(),
            "the node policy does not allow daemon-reload".to_owned(),
        ));
    }
    out
}

/// The names both lists allow, as one list when one side says it alone.
pub fn names(grant: &[String], policy: Option<&[String]>) -> Names {
    let within = |a: &[String], b: &[String]| {
        let b: Vec<&str> = b.iter().map(String::as_str).collect();
        a.iter()
            .all(|p| patterns::coverage(p, &b) == Coverage::Covered)
    };
    let matching = match policy {
        None => Some(grant.to_vec()),
        Some(p) if within(grant, p) => Some(grant.to_vec()),
        Some(p) if within(p, grant) => Some(p.to_vec()),
        Some(_) => None,
    };
    Names {
        matching,
        grant: grant.to_vec(),
        policy: policy.map(<[String]>::to_vec),
    }
}

fn network_powers(grant: &NetworkScope, policy: Option<&NetworkScope>) -> NetworkPowers {
    let has_host = |s: &NetworkScope| s.netns.iter().any(|n| n == HOST_NETNS);
    let shown = |l: Vec<ranges::Dest>| l.iter().map(ToString::to_string).collect();
    let policy_named = policy.map(|p| named(&p.netns));
    NetworkPowers {
        host_netns: has_host(grant) && policy.is_none_or(has_host),
        netns: names(&named(&grant.netns), policy_named.as_deref()),
        interfaces: names(&grant.interfaces, policy.map(|p| p.interfaces.as_slice())),
        kinds: grant
            .kinds
            .iter()
            .filter(|k| policy.is_none_or(|p| p.kinds.contains(k)))
            .cloned()
            .collect(),
        addresses: shown(ranges::effective(
            &grant.addresses,
            policy.map(|p| p.addresses.as_slice()),
            false,
        )),
        routes: shown(ranges::effective(
            &grant.routes,
            policy.map(|p| p.routes.as_slice()),
            true,
        )),
        owned_only: grant.owned_only || policy.is_some_and(|p| p.owned_only),
    }
}

fn services_powers(grant: &ServicesScope, policy: Option<&ServicesScope>) -> ServicesPowers {
    ServicesPowers {
        units: names(&grant.units, policy.map(|p| p.units.as_slice())),
        daemon_reload: grant.daemon_reload && policy.is_none_or(|p| p.daemon_reload),
    }
}

/// A list for the terminal: each entry through [`printable`].
fn list(items: &[String]) -> String {
    if items.is_empty() {
        return "none".to_owned();
    }
    items
        .iter()
        .map(|i| printable(i).into_owned())
        .collect::<Vec<_>>()
        .join(", ")
}

fn dir_list(items: &[Dir]) -> String {
    if items.is_empty() {
        return "none".to_owned();
    }
    items
        .iter()
        .map(|d| match &d.resolved_beneath {
            Some(a) => format!("{} (resolved beneath {})", printable(&d.path), printable(a)),
            None => printable(&d.path).into_owned(),
        })
        .collect::<Vec<_>>()
        .join(", ")
}

impl fmt::Display for Names {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match (&self.matching, &self.policy) {
            (Some(m), _) if m.is_empty() => f.write_str("none"),
            (Some(m), _) => write!(f, "matching {}", list(m)),
            (None, Some(p)) => write!(
                f,
                "matching both: one of the grant's {} and one of the node policy's {}",
                list(&self.grant),
                list(p)
            ),
            (None, None) => write!(f, "matching {}", list(&self.grant)),
        }
    }
}

impl fmt::Display for Powers {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let file = |f: &Option<String>| -> String {
            f.as_deref()
                .map_or_else(|| "none".to_owned(), |f| printable(f).into_owned())
        };
        writeln!(
            f,
            "effective powers (grant {}, node policy {}):",
            file(&self.grant),
            file(&self.policy)
        )?;
        writeln!(f, "  bound     {}", self.bound)?;
        match &self.run.error {
            None => writeln!(
                f,
                "  run       starts: every capability it imports is granted"
            )?,
            Some(e) => writeln!(
                f,
                "  run       refused before the module starts (exit {}): {}",
                self.run.exit_code.unwrap_or_default(),
                printable(e)
            )?,
        }
        for c in &self.capabilities {
            let name = c.capability.name();
            let status = match c.status {
                Status::Allowed => "imported, granted: calls are checked against the scope below",
                Status::Refused => "imported, NOT granted: the run is refused",
                Status::Unused => "not imported: the grant's section is unused",
                Status::None => "not imported, not granted",
            };
            writeln!(f, "  {name}: {status}")?;
            if let (Some(why), true) = (&c.reason, c.imported || c.requested) {
                writeln!(f, "    why         {}", printable(why))?;
            }
            if let Some(files) = &c.files {
                writeln!(f, "    read        {}", dir_list(&files.read))?;
                writeln!(f, "    write       {}", dir_list(&files.write))?;
                if files.kernel_paths.is_empty() {
                    writeln!(
                        f,
                        "    kernel fs   none: files on procfs, sysfs and the other kernel \
                         filesystems are refused"
                    )?;
                } else {
                    writeln!(
                        f,
                        "    kernel fs   {} (the only paths reachable on procfs, sysfs, ...; \
                         where also readable or writable)",
                        dir_list(&files.kernel_paths)
                    )?;
                }
                writeln!(
                    f,
                    "    modes       group-writable {}; execute bits {}",
                    if files.group_writable { "yes" } else { "no" },
                    if files.payload_executables_only {
                        "only on payload files' contents"
                    } else {
                        "allowed"
                    }
                )?;
            }
            if let Some(n) = &c.network {
                writeln!(
                    f,
                    "    host netns  {}",
                    if n.host_netns { "yes" } else { "no" }
                )?;
                writeln!(f, "    named netns {}", n.netns)?;
                writeln!(f, "    interfaces  {}", n.interfaces)?;
                writeln!(f, "    kinds       {}", list(&n.kinds))?;
                writeln!(f, "    addresses   within {}", list(&n.addresses))?;
                writeln!(f, "    routes      to {}", list(&n.routes))?;
                writeln!(
                    f,
                    "    ownedOnly   {}",
                    if n.owned_only {
                        "yes: only links and namespaces hostaction created may be changed or deleted"
                    } else {
                        "no"
                    }
                )?;
            }
            if let Some(s) = &c.services {
                writeln!(f, "    units       {} (systemd's canonical names)", s.units)?;
                writeln!(
                    f,
                    "    daemon-reload {}",
                    if s.daemon_reload { "yes" } else { "no" }
                )?;
            }
            if !c.taken_away.is_empty() {
                writeln!(f, "    taken away by the node policy:")?;
                for t in &c.taken_away {
                    write!(
                        f,
                        "      {} {}: {}",
                        t.field,
                        printable(&t.requested),
                        printable(&t.why)
                    )?;
                    match &t.example {
                        Some(e) => writeln!(f, " (e.g. \"{}\" is refused)", printable(e))?,
                        None => writeln!(f)?,
                    }
                }
            }
        }
        for note in &self.notes {
            writeln!(f, "  note      {note}")?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::panic)]
    use super::*;
    use hostaction_runtime::grant::GrantDocument;

    fn path(p: &str) -> HostPath {
        HostPath::parse(p).unwrap()
    }

    fn grant(text: &str) -> Grant {
        Grant::parse(text, "test").unwrap()
    }

    fn fields(taken: &[TakenAway]) -> Vec<(String, String, Vec<String>)> {
        taken
            .iter()
            .map(|t| (t.field.clone(), t.requested.clone(), t.kept.clone()))
            .collect()
    }

    fn s(list: &[&str]) -> Vec<String> {
        list.iter().map(|s| (*s).to_owned()).collect()
    }

    #[test]
    fn a_directory_is_kept_narrowed_or_taken_as_the_engine_intersects() {
        let policy = [path("/opt/cni"), path("/etc/cni/net.d")];
        assert_eq!(dir_left(&path("/opt/cni/bin"), &policy), DirLeft::All);
        assert_eq!(
            dir_left(&path("/etc"), &policy),
            DirLeft::Part(vec![path("/etc/cni/net.d")])
        );
        assert_eq!(dir_left(&path("/var"), &policy), DirLeft::Nothing);
        // Component-wise: /opt/cnibin is not under /opt/cni.
        assert_eq!(dir_left(&path("/opt/cnibin"), &policy), DirLeft::Nothing);
    }

    #[test]
    fn files_taken_names_each_entry_and_knob_the_policy_refuses() {
        let g = grant(
            "files: {read: [/etc], write: [/opt/cni/bin, /var/lib/x], groupWritable: true, \
             kernelPaths: [/sys]}",
        );
        let p = grant(
            "files: {read: [/var/lib], write: [/opt/cni], executable: false, \
             kernelPaths: [/sys/class/net]}",
        );
        let taken = files_taken(g.files.as_ref().unwrap(), Some(p.files.as_ref())).unwrap();
        assert_eq!(
            fields(&taken),
            [
                ("files.read".into(), "/etc".into(), vec![]),
                ("files.write".into(), "/var/lib/x".into(), vec![]),
                (
                    "files.kernelPaths".into(),
                    "/sys".into(),
                    s(&["/sys/class/net"])
                ),
                ("files.groupWritable".into(), "true".into(), vec![]),
                ("files.executable".into(), "true".into(), vec![]),
            ]
        );
        assert!(taken[1].why.ends_with("still readable"), "{}", taken[1].why);
        // A policy without `files` takes the section; no policy takes nothing.
        let none = files_taken(g.files.as_ref().unwrap(), Some(None)).unwrap();
        assert_eq!(fields(&none), [("files".into(), "section".into(), vec![])]);
        assert!(
            files_taken(g.files.as_ref().unwrap(), None)
                .unwrap()
                .is_empty()
        );
    }

    #[test]
    fn network_taken_compares_patterns_kinds_ranges_and_owned_only() {
        let g = grant(
            "network: {netns: [host, \"ovl-*\"], interfaces: [\"*\"], kinds: [vxlan, macvlan], \
             addresses: [10.0.0.0/8], routes: [default, 192.168.0.0/16]}",
        );
        let p = grant(
            "network: {netns: [\"ovl-*\"], interfaces: [\"vx-*\"], kinds: [vxlan], \
             addresses: [10.244.0.0/16], routes: [0.0.0.0/0], ownedOnly: true}",
        );
        let taken = network_taken(g.network.as_ref().unwrap(), Some(p.network.as_ref()));
        assert_eq!(
            fields(&taken),
            [
                ("network.netns".into(), "host".into(), vec![]),
                ("network.interfaces".into(), "*".into(), s(&["vx-*"])),
                ("network.kinds".into(), "macvlan".into(), vec![]),
                (
                    "network.addresses".into(),
                    "10.0.0.0/8".into(),
                    s(&["10.244.0.0/16"])
                ),
                (
                    "network.routes".into(),
                    "default".into(),
                    s(&["default (IPv4)"])
                ),
                ("network.ownedOnly".into(), "false".into(), vec![]),
            ]
        );
        let example = taken[1].example.as_deref().unwrap();
        assert!(
            !hostaction_runtime::grant::glob("vx-*", example),
            "{example}"
        );
        let none = network_taken(g.network.as_ref().unwrap(), Some(None));
        assert_eq!(
            fields(&none),
            [("network".into(), "section".into(), vec![])]
        );
    }

    #[test]
    fn services_taken_compares_units_and_daemon_reload() {
        let g = grant("services: {units: [\"*.service\", kubelet.service], daemonReload: true}");
        let p = grant("services: {units: [\"containerd.service\", \"kube*\"]}");
        let taken = services_taken(g.services.as_ref().unwrap(), Some(p.services.as_ref()));
        assert_eq!(
            fields(&taken),
            [
                (
                    "services.units".into(),
                    "*.service".into(),
                    s(&["containerd.service", "kube*"])
                ),
                ("services.daemonReload".into(), "true".into(), vec![]),
            ]
        );
    }

    #[test]
    fn names_are_one_list_when_one_side_lies_within_the_other() {
        let n = names(&s(&["*"]), Some(&s(&["vx-*"])));
        assert_eq!(n.matching, Some(s(&["vx-*"])));
        let n = names(&s(&["vx-*"]), Some(&s(&["v*"])));
        assert_eq!(n.matching, Some(s(&["vx-*"])));
        let n = names(&s(&["a*"]), Some(&s(&["*b"])));
        assert_eq!(n.matching, None);
        assert_eq!(
            n.to_string(),
            "matching both: one of the grant's a* and one of the node policy's *b"
        );
        assert_eq!(names(&s(&["a*"]), None).matching, Some(s(&["a*"])));
    }

    #[test]
    fn an_imported_capability_not_granted_refuses_the_run_in_the_engines_words() {
        let g = grant("network: {interfaces: [\"*\"]}");
        let p = grant("files: {read: [/etc]}");
        let powers = Powers::new(&[Capability::Network], &g, None, Some(&p), None).unwrap();
        assert!(!powers.run.starts);
        assert_eq!(powers.run.exit_code, Some(3));
        let err = powers.run.error.unwrap();
        assert!(
            err.starts_with("refused:") && err.contains("`network`"),
            "{err}"
        );
        assert_eq!(powers.capabilities[1].status, Status::Refused);
        // files: neither imported nor requested.
        assert_eq!(powers.capabilities[0].status, Status::None);
        // Granted without a policy, not imported: unused.
        let powers = Powers::new(&[], &g, None, None, None).unwrap();
        assert!(powers.run.starts);
        assert_eq!(powers.capabilities[1].status, Status::Unused);
        assert!(powers.capabilities[1].network.is_some());
    }
}
