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

use std::path::Path;

use crate::capabilities::files::{HostPath, HostRoot};
use crate::error::{Error, Result};

pub use hostaction_grant::{FilesScope, Grant, NetworkScope, ServicesScope};

/// Where systemd loads unit files, drop-ins and generators from, and the
/// SysV init scripts its generator turns into units (a script written to
/// `/etc/init.d` is a unit after the next daemon-reload).
const SYSTEMD_UNIT_DIRS: &[&str] = &[
    "/etc/systemd",
    "/run/systemd",
    "/lib/systemd",
    "/usr/lib/systemd",
    "/usr/local/lib/systemd",
    "/etc/init.d",
    "/etc/rc.d",
];

/// Reading and checking grant documents (the type lives in
/// `hostaction-crds`, which the controller uses without the runtime).
pub trait GrantDocument: Sized {
    /// Parses a grant or policy document (YAML, which includes JSON) and
    /// validates it. `what` names the document in errors ("grant", "policy").
    fn parse(text: &str, what: &str) -> Result<Self>;
    /// Reads and parses a grant or policy file.
    fn from_file(path: &Path, what: &str) -> Result<Self>;
    /// [`Grant::validate`] (the one check of a grant, shared with the
    /// controller), its error prefixed with `what`.
    fn check(&self, what: &str) -> Result<()>;
}

impl GrantDocument for Grant {
    fn parse(text: &str, what: &str) -> Result<Self> {
        let grant: Grant =
            serde_yaml_ng::from_str(text).map_err(|e| Error::BadGrant(format!("{what}: {e}")))?;
        grant.check(what)?;
        Ok(grant)
    }

    fn from_file(path: &Path, what: &str) -> Result<Self> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| Error::BadGrant(format!("{what} {}: {e}", path.display())))?;
        Self::parse(&text, &format!("{what} {}", path.display()))
    }

    fn check(&self, what: &str) -> Result<()> {
        self.validate()
            .map_err(|e| Error::BadGrant(format!("{what}: {e}")))
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
    /// Paths on kernel filesystems (procfs, sysfs, ...) the run may reach;
    /// everything else on them is refused.
    pub files_kernel: Vec<GrantedDir>,
    /// Whether modes may be group-writable (both grant and policy said so).
    pub files_group_writable: bool,
    /// Whether execute bits are allowed only on payload files' contents
    /// (grant or policy said `executable: false`).
    pub files_payload_executables_only: bool,
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
        grant.check("grant")?;
        if let Some(policy) = policy {
            policy.check("policy")?;
        }
        let parse_all = |dirs: &[&String]| -> Result<Vec<HostPath>> {
            dirs.iter()
                .map(|d| HostPath::parse(d).map_err(|e| Error::BadGrant(e.to_string())))
                .collect()
        };
        let (mut read, mut write, mut kernel) = (Vec::new(), Vec::new(), Vec::new());
        let mut files_denied_by_policy = false;
        let (mut group_writable, mut payload_executables_only) = (false, false);
        if let Some(files) = &grant.files {
            let g_write = parse_all(&files.write.iter().collect::<Vec<_>>())?;
            let g_read = parse_all(&files.read.iter().chain(&files.write).collect::<Vec<_>>())?;
            let g_kernel = parse_all(&files.kernel_paths.iter().collect::<Vec<_>>())?;
            let asked = !g_read.is_empty();
            group_writable = files.group_writable;
            payload_executables_only = files.executable == Some(false);
            match policy.map(|p| p.files.as_ref()) {
                None => {
                    read = g_read.into_iter().map(GrantedDir::own).collect();
                    write = g_write.into_iter().map(GrantedDir::own).collect();
                    kernel = g_kernel.into_iter().map(GrantedDir::own).collect();
                }
                Some(None) => {}
                Some(Some(p)) => {
                    let p_write = parse_all(&p.write.iter().collect::<Vec<_>>())?;
                    let p_read = parse_all(&p.read.iter().chain(&p.write).collect::<Vec<_>>())?;
                    let p_kernel = parse_all(&p.kernel_paths.iter().collect::<Vec<_>>())?;
                    read = intersect(&g_read, &p_read);
                    write = intersect(&g_write, &p_write);
                    kernel = intersect(&g_kernel, &p_kernel);
                    group_writable &= p.group_writable;
                    payload_executables_only |= p.executable == Some(false);
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
            files_kernel: kernel,
            files_group_writable: group_writable,
            files_payload_executables_only: payload_executables_only,
            files_denied_by_policy,
            network,
            services,
        })
    }

    /// The checks that need the host, made when a run starts (the host may
    /// have changed since the grant was read):
    ///
    /// - every directory named by the node policy (or by the grant, without
    ///   one) is resolved trusting its symlinks, so every directory its
    ///   resolution looks in must be one only root can change: owned by root
    ///   (or this process's user) and not writable by group or others (a
    ///   sticky one only if the entry is root's). Else anyone who could write
    ///   there could point the grant elsewhere.
    /// - with `services`, no writable directory may be, contain, lie in or
    ///   redirect a directory systemd loads units from, compared by identity
    ///   (device and inode) after resolving both under the host root, so a
    ///   symlink (`/var/run` → `/run`) changes nothing.
    pub fn check_host(&self, root: &HostRoot) -> Result<()> {
        let host_err = |path: &HostPath, e: rustix::io::Errno| {
            Error::Host(format!("resolving {path} under the host root: {e}"))
        };
        let mut anchors: Vec<&HostPath> = Vec::new();
        for dir in self
            .files_read
            .iter()
            .chain(&self.files_write)
            .chain(&self.files_kernel)
        {
            if !anchors.contains(&&dir.anchor) {
                anchors.push(&dir.anchor);
            }
        }
        for anchor in anchors {
            let walk = root.walk(anchor).map_err(|e| host_err(anchor, e))?;
            if let Some((dir, why)) = walk.untrusted() {
                return Err(Error::Host(format!(
                    "granted directory {anchor}: {} (on its way) {why}: whoever can write it \
                     could point the grant elsewhere. Make it root's and not group- or \
                     world-writable, or grant another directory.",
                    dir.dir_path
                )));
            }
        }
        if self.services.is_none() {
            return Ok(());
        }
        let mut units = Vec::new();
        for dir in SYSTEMD_UNIT_DIRS {
            let path = HostPath::parse(dir).map_err(|e| Error::Host(format!("{dir}: {e}")))?;
            units.push((
                path.clone(),
                root.walk(&path).map_err(|e| host_err(&path, e))?,
            ));
        }
        for dir in &self.files_write {
            let walk = root.walk(&dir.path).map_err(|e| host_err(&dir.path, e))?;
            if let Some((unit_dir, unit_walk)) = units.iter().find(|(_, u)| u.overlaps(&walk)) {
                return Err(Error::BadGrant(format!(
                    "grant: files.write {} (on this host {}) and {unit_dir} (on this host {}), \
                     where systemd loads units from, overlap; with services that would let \
                     the action define the units it starts. Grant one or the other.",
                    dir.path,
                    place(&walk),
                    place(unit_walk),
                )));
            }
        }
        Ok(())
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

/// Where a walk led, for messages: the directory reached and what is missing.
fn place(walk: &crate::capabilities::files::Walk) -> String {
    let mut place = walk.reached_path.clone();
    for part in &walk.rest {
        if !place.ends_with('/') {
            place.push('/');
        }
        place.push_str(part);
    }
    place
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

    /// A scratch host root laid out as a node: `var/run` → `../run`, and the
    /// directories systemd loads units from.
    fn node_root() -> tempfile::TempDir {
        let root = tempfile::tempdir().unwrap();
        for dir in [
            "run/systemd/system",
            "etc/systemd/system",
            "usr/lib/systemd",
            "var",
        ] {
            std::fs::create_dir_all(root.path().join(dir)).unwrap();
        }
        std::os::unix::fs::symlink("../run", root.path().join("var/run")).unwrap();
        std::os::unix::fs::symlink("usr/lib", root.path().join("lib")).unwrap();
        root
    }

    fn check(root: &tempfile::TempDir, grant: &str) -> Result<()> {
        let grant = Grant::parse(grant, "grant").unwrap();
        let host = HostRoot::open(root.path()).unwrap();
        EffectiveGrant::new(&grant, None)?.check_host(&host)
    }

    #[test]
    fn services_with_writes_reaching_systemd_dirs_through_symlinks_is_refused() {
        let root = node_root();
        std::fs::create_dir_all(root.path().join("opt")).unwrap();
        // A symlink in a middle component, to a unit directory's parent.
        std::os::unix::fs::symlink("/etc", root.path().join("opt/etc")).unwrap();
        std::os::unix::fs::symlink("../usr/lib", root.path().join("opt/usrlib")).unwrap();
        // A unit directory that is itself a symlink to an innocent-looking place.
        std::fs::create_dir_all(root.path().join("data/units")).unwrap();
        std::fs::create_dir_all(root.path().join("usr/local/lib")).unwrap();
        std::os::unix::fs::symlink("/data/units", root.path().join("usr/local/lib/systemd"))
            .unwrap();
        for (write, units) in [
            ("/var/run/systemd/system", "/run/systemd"),
            ("/var/run/systemd", "/run/systemd"),
            ("/var/run", "/run/systemd"),
            ("/var/run/systemd/transient/x", "/run/systemd"),
            ("/opt/etc/systemd/system", "/etc/systemd"),
            ("/opt/etc", "/etc/systemd"),
            ("/opt/usrlib/systemd/system", "/usr/lib/systemd"),
            // The directory a unit directory's symlink points to.
            ("/data", "/usr/local/lib/systemd"),
            ("/data/units/x.service.d", "/usr/local/lib/systemd"),
        ] {
            let grant = format!("files: {{write: [{write}]}}\nservices: {{units: [x.service]}}");
            let err = check(&root, &grant).unwrap_err().to_string();
            assert!(
                err.contains(write) && err.contains(units) && err.contains("systemd loads units"),
                "{write}: {err}"
            );
        }
        for write in [
            "/var/run/containerd",
            "/opt/cni/bin",
            "/etc/containerd",
            "/data/other",
        ] {
            let grant = format!("files: {{write: [{write}]}}\nservices: {{units: [x.service]}}");
            check(&root, &grant).unwrap_or_else(|e| panic!("{write}: {e}"));
        }
        // Without services, writing there is only writing files.
        check(&root, "files: {write: [/var/run/systemd/system]}").unwrap();
    }

    #[test]
    fn a_missing_systemd_dir_is_judged_by_its_deepest_existing_parent() {
        let root = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(root.path().join("run")).unwrap();
        std::fs::create_dir_all(root.path().join("var")).unwrap();
        std::os::unix::fs::symlink("../run", root.path().join("var/run")).unwrap();
        // Neither /run/systemd nor the write directory exists yet.
        let services = "\nservices: {units: [x.service]}";
        let err = check(
            &root,
            &format!("files: {{write: [/var/run/systemd/system]}}{services}"),
        )
        .unwrap_err()
        .to_string();
        assert!(err.contains("/run/systemd"), "{err}");
        check(
            &root,
            &format!("files: {{write: [/var/run/other]}}{services}"),
        )
        .unwrap();
    }

    #[test]
    fn granted_directories_must_not_be_redirectable_by_others() {
        use std::os::unix::fs::PermissionsExt;
        let root = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(root.path().join("opt/cni/bin")).unwrap();
        let grant = "files: {write: [/opt/cni/bin]}";
        check(&root, grant).unwrap();
        let opt = root.path().join("opt");
        for (mode, why) in [
            (0o777, "writable by others"),
            (0o775, "writable by its group"),
        ] {
            std::fs::set_permissions(&opt, std::fs::Permissions::from_mode(mode)).unwrap();
            let err = check(&root, grant).unwrap_err();
            assert!(matches!(err, Error::Host(_)), "{err}");
            let err = err.to_string();
            assert!(
                err.contains("/opt/cni/bin") && err.contains("/opt ") && err.contains(why),
                "{err}"
            );
        }
        // Sticky (like /tmp) with the entry root's: nobody else can swap it.
        std::fs::set_permissions(&opt, std::fs::Permissions::from_mode(0o1777)).unwrap();
        check(&root, grant).unwrap();
        // ... but a missing entry there could be made by anyone first.
        let err = check(&root, "files: {write: [/opt/new]}")
            .unwrap_err()
            .to_string();
        assert!(err.contains("/opt "), "{err}");
        std::fs::set_permissions(&opt, std::fs::Permissions::from_mode(0o755)).unwrap();
        // Owned by another user.
        std::os::unix::fs::chown(root.path().join("opt/cni"), Some(1000), Some(1000)).unwrap();
        let err = check(&root, grant).unwrap_err().to_string();
        assert!(
            err.contains("/opt/cni ") && err.contains("uid 1000"),
            "{err}"
        );
        // Through a symlink: the directories of its target count too.
        std::os::unix::fs::chown(root.path().join("opt/cni"), Some(0), Some(0)).unwrap();
        std::fs::create_dir_all(root.path().join("srv/open/cni")).unwrap();
        std::fs::set_permissions(
            root.path().join("srv/open"),
            std::fs::Permissions::from_mode(0o777),
        )
        .unwrap();
        std::os::unix::fs::symlink("/srv/open/cni", root.path().join("opt/link")).unwrap();
        let err = check(&root, "files: {read: [/opt/link]}")
            .unwrap_err()
            .to_string();
        assert!(err.contains("/srv/open "), "{err}");
    }

    #[test]
    fn file_knobs_take_the_stricter_of_grant_and_policy() {
        let grant = Grant::parse(
            "files: {write: [/opt], groupWritable: true, kernelPaths: [/proc/meminfo, /sys]}",
            "grant",
        )
        .unwrap();
        let eff = EffectiveGrant::new(&grant, None).unwrap();
        assert!(eff.files_group_writable && !eff.files_payload_executables_only);
        assert_eq!(dirs(&eff.files_kernel), ["/proc/meminfo", "/sys"]);
        let policy = Grant::parse(
            "files: {write: [/opt], executable: false, kernelPaths: [/sys/class/net]}",
            "policy",
        )
        .unwrap();
        let eff = EffectiveGrant::new(&grant, Some(&policy)).unwrap();
        assert!(!eff.files_group_writable && eff.files_payload_executables_only);
        assert_eq!(dirs(&eff.files_kernel), ["/sys/class/net"]);
        let err = Grant::parse("files: {kernelPaths: [proc]}", "grant")
            .unwrap_err()
            .to_string();
        assert!(err.contains("files.kernelPaths[0]"), "{err}");
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
