//! Named network namespaces as `ip netns` makes them: an empty file with the
//! namespace bind-mounted onto it.

use std::fs;
use std::io::ErrorKind;
use std::path::Path;

use std::os::fd::AsRawFd;

use rustix::fs::{FlockOperation, Mode, OFlags};
use rustix::io::Errno;
use rustix::mount::{MountPropagationFlags, UnmountFlags};

use super::{Hook, Step};
use crate::capabilities::CapError;

/// Ensures `dir/name` is a network namespace; returns whether one was made.
/// Equal to `ip netns add NAME` (with `dir` as `/var/run/netns`).
///
/// Makes `dir` if missing, creates the empty file, and on a dedicated thread
/// unshares a new network namespace and bind-mounts it onto the file.
pub fn ensure_netns(dir: &Path, name: &str) -> Result<bool, CapError> {
    ensure_netns_with(dir, name, &mut super::no_hook)
}

/// [`ensure_netns`], handing `hook` a [`Step::CreateNetns`] right before the
/// namespace is made (under the directory's lock, after the last check).
pub fn ensure_netns_with(dir: &Path, name: &str, hook: &mut Hook<'_>) -> Result<bool, CapError> {
    check_netns_name(name)?;
    fs::create_dir_all(dir)
        .map_err(|e| CapError::Io(format!("cannot create {}: {e}", dir.display())))?;
    let path = dir.join(name);
    if is_netns(&path)? {
        return Ok(false);
    }
    // One maker at a time in this directory (hostaction's, not ip's): two
    // concurrent calls must not stack two mounts on one file.
    let lock = rustix::fs::open(
        dir,
        OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC,
        Mode::empty(),
    )
    .and_then(|fd| rustix::fs::flock(&fd, FlockOperation::LockExclusive).map(|()| fd))
    .map_err(|e| CapError::Io(format!("cannot lock {}: {e}", dir.display())))?;
    if is_netns(&path)? {
        return Ok(false);
    }
    hook(Step::CreateNetns)?;
    make_shared(dir)?;
    let created = match rustix::fs::open(
        &path,
        OFlags::RDONLY | OFlags::CREATE | OFlags::EXCL | OFlags::CLOEXEC,
        Mode::empty(),
    ) {
        Ok(_) => true,
        // A plain file left by an interrupted `ip netns add`: mount onto it
        // (checked below: never through a symlink, never onto anything else).
        Err(e) if e == Errno::EXIST => false,
        Err(e) => {
            return Err(CapError::Io(format!(
                "cannot create {}: {e}",
                path.display()
            )));
        }
    };
    // The mount target, held open: what was checked is what gets mounted on,
    // even if the name is swapped for a symlink meanwhile.
    let target = rustix::fs::open(
        &path,
        OFlags::PATH | OFlags::NOFOLLOW | OFlags::CLOEXEC,
        Mode::empty(),
    )
    .map_err(|e| CapError::Io(format!("cannot open {}: {e}", path.display())))?;
    let st = rustix::fs::fstat(&target)
        .map_err(|e| CapError::Io(format!("cannot stat {}: {e}", path.display())))?;
    if rustix::fs::FileType::from_raw_mode(st.st_mode) != rustix::fs::FileType::RegularFile {
        return Err(CapError::Conflict(format!(
            "{} exists and is not a network namespace",
            path.display()
        )));
    }
    let target = format!("/proc/self/fd/{}", target.as_raw_fd());
    let mounted = std::thread::scope(|scope| {
        std::thread::Builder::new()
            .name("hostaction-netns".into())
            .spawn_scoped(scope, || -> Result<(), Errno> {
                // CLONE_NEWNET only changes this thread's network namespace;
                // rustix deprecated the safe `unshare` because of CLONE_FILES,
                // which is not used here.
                #[allow(deprecated)]
                rustix::thread::unshare(rustix::thread::UnshareFlags::NEWNET)?;
                rustix::mount::mount_bind("/proc/thread-self/ns/net", target.as_str())
            })
            .map_err(|e| CapError::Io(format!("cannot start the netns thread: {e}")))?
            .join()
            .map_err(|_| CapError::Io("the netns thread panicked".into()))
    })?;
    if let Err(e) = mounted {
        if created {
            let _ = fs::remove_file(&path);
        }
        return Err(CapError::Io(format!(
            "cannot make network namespace {}: {e}{}",
            path.display(),
            needs_sys_admin(e)
        )));
    }
    drop(lock);
    Ok(true)
}

/// Makes `dir` a shared mount point, as `ip netns add` does with
/// `/var/run/netns`: namespace mounts made here then propagate to other mount
/// namespaces (a pod's view of the directory, the host's), and an unmount in
/// one reaches all, so a deleted namespace is freed.
fn make_shared(dir: &Path) -> Result<(), CapError> {
    let shared = || {
        rustix::mount::mount_change(
            dir,
            MountPropagationFlags::SHARED | MountPropagationFlags::REC,
        )
    };
    match shared() {
        Ok(()) => return Ok(()),
        // Not a mount point yet: bind it onto itself first, as iproute2 does.
        Err(e) if e == Errno::INVAL => {}
        Err(e) => {
            return Err(CapError::Io(format!(
                "cannot make {} a shared mount: {e}{}",
                dir.display(),
                needs_sys_admin(e)
            )));
        }
    }
    rustix::mount::mount_bind_recursive(dir, dir)
        .and_then(|()| shared())
        .map_err(|e| {
            CapError::Io(format!(
                "cannot make {} a shared mount: {e}{}",
                dir.display(),
                needs_sys_admin(e)
            ))
        })
}

/// What an agent lacking the privilege hears on EPERM: making and entering
/// a named namespace take CAP_SYS_ADMIN (unshare, mount, setns), which the
/// shipped DaemonSet does not give.
pub(crate) fn needs_sys_admin(e: Errno) -> &'static str {
    if e == Errno::PERM {
        " (named network namespaces need CAP_SYS_ADMIN, and /var/run/netns shared with \
         the host: see manifests/patches/agent-named-netns.yaml)"
    } else {
        ""
    }
}

/// Deletes the network namespace `dir/name`; returns false when it did not
/// exist. Equal to `ip netns delete NAME`.
///
/// Detaches the bind mount (the namespace lives on while links or processes
/// use it) and removes the file.
pub fn delete_netns(dir: &Path, name: &str) -> Result<bool, CapError> {
    check_netns_name(name)?;
    let path = dir.join(name);
    match rustix::mount::unmount(&path, UnmountFlags::DETACH | UnmountFlags::NOFOLLOW) {
        Ok(()) => {}
        Err(e) if e == Errno::NOENT => return Ok(false),
        // Not a mount point: nothing this call should remove.
        Err(e) if e == Errno::INVAL => {
            return Err(CapError::Conflict(format!(
                "{} is not a network namespace; it is left alone",
                path.display()
            )));
        }
        Err(e) => {
            return Err(CapError::Io(format!(
                "cannot unmount {}: {e}",
                path.display()
            )));
        }
    }
    // Once unmounted the namespace is deleted; the empty file is what
    // `ip netns add` would reuse, so failing to remove it changes nothing.
    let _ = fs::remove_file(&path);
    Ok(true)
}

/// Lists the names of the network namespaces in `dir`, sorted; files there
/// that are not namespace mounts are left out. Equal to `ip netns list`.
pub fn list_netns(dir: &Path) -> Result<Vec<String>, CapError> {
    let entries = match fs::read_dir(dir) {
        Ok(entries) => entries,
        Err(e) if e.kind() == ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(CapError::Io(format!("cannot read {}: {e}", dir.display()))),
    };
    let mut names = Vec::new();
    for entry in entries {
        let entry =
            entry.map_err(|e| CapError::Io(format!("cannot read {}: {e}", dir.display())))?;
        let Ok(name) = entry.file_name().into_string() else {
            continue;
        };
        if is_netns(&entry.path())? {
            names.push(name);
        }
    }
    names.sort();
    Ok(names)
}

/// Whether `path` is a namespace file (a mount of nsfs, not through a
/// symlink); false when absent or anything else.
pub fn is_netns(path: &Path) -> Result<bool, CapError> {
    match super::open_netns(path) {
        Ok(_) => Ok(true),
        Err(CapError::NotFound(_)) => Ok(false),
        Err(e) => Err(e),
    }
}

/// Refuses a namespace name that is not a single plain path component.
fn check_netns_name(name: &str) -> Result<(), CapError> {
    crate::capabilities::network::scope::netns_name_problem(name)
        .map_or(Ok(()), |why| Err(CapError::InvalidArgument(why)))
}
