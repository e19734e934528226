//! The host's filesystem as the runtime sees it: the host root, held open
//! ([`HostRoot`]); paths under it, normalized ([`HostPath`]); and how the
//! kernel resolves one, step by step ([`Walk`]). The grant checks and the
//! `files` capability both build on it; it knows neither.

mod path;
mod walk;

use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::os::unix::ffi::OsStringExt;
use std::path::{Path, PathBuf};

use rustix::fs::{Mode, OFlags, ResolveFlags};
use rustix::io::Errno;

pub use path::{HostPath, MAX_NAME_BYTES, MAX_PATH_BYTES, PathError};
pub use walk::{FileId, Lookup, Walk, kernel_fs};

/// Where the host's filesystem is seen (`/` on the host, `/host` in a pod),
/// held open so every resolution starts from the same directory.
#[derive(Debug)]
pub struct HostRoot {
    path: PathBuf,
    fd: OwnedFd,
}

impl HostRoot {
    /// Opens the host root directory.
    pub fn open(path: &Path) -> std::io::Result<Self> {
        let fd = rustix::fs::open(
            path,
            OFlags::PATH | OFlags::DIRECTORY | OFlags::CLOEXEC,
            Mode::empty(),
        )?;
        Ok(Self {
            path: path.to_owned(),
            fd,
        })
    }

    /// The host root's path on this machine.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The path on this machine of the directory `rel` (relative, `/`
    /// separated) under the host root, with symlinks resolved as if the host
    /// root were `/` (on a node `/var/run` is a symlink to `/run`). With
    /// `create`, missing directories are made (mode 0755, like `mkdir -p`);
    /// without, a missing one gives `None`.
    pub fn resolve_dir(&self, rel: &str, create: bool) -> Result<Option<PathBuf>, Errno> {
        let mut at = String::new();
        let mut fd = None;
        for part in rel.split('/').filter(|p| !p.is_empty()) {
            let parent = at.clone();
            if !at.is_empty() {
                at.push('/');
            }
            at.push_str(part);
            let open = || {
                rustix::fs::openat2(
                    &self.fd,
                    at.as_str(),
                    OFlags::PATH | OFlags::DIRECTORY | OFlags::CLOEXEC,
                    Mode::empty(),
                    ResolveFlags::IN_ROOT | ResolveFlags::NO_MAGICLINKS,
                )
            };
            fd = Some(match open() {
                Err(Errno::NOENT) if create => {
                    let parent = rustix::fs::openat2(
                        &self.fd,
                        if parent.is_empty() {
                            "."
                        } else {
                            parent.as_str()
                        },
                        OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC,
                        Mode::empty(),
                        ResolveFlags::IN_ROOT | ResolveFlags::NO_MAGICLINKS,
                    )?;
                    match make_dir(&parent, part, 0o755) {
                        Ok(()) | Err(Errno::EXIST) => {}
                        Err(e) => return Err(e),
                    }
                    open()?
                }
                Err(Errno::NOENT) => return Ok(None),
                other => other?,
            });
        }
        let Some(fd) = fd else {
            return Ok(Some(self.path.clone()));
        };
        // The kernel's name for what was resolved.
        let path = rustix::fs::readlink(format!("/proc/self/fd/{}", fd.as_raw_fd()), Vec::new())?;
        Ok(Some(PathBuf::from(std::ffi::OsString::from_vec(
            path.into_bytes(),
        ))))
    }

    /// Opens `dir`, a granted directory or one of its ancestors. Up to
    /// `anchor` (the directory the node administrator named) symlinks are
    /// resolved as if the host root were `/`; below it, beneath `anchor`.
    pub(crate) fn open_dir(&self, anchor: &HostPath, dir: &HostPath) -> Result<OwnedFd, Errno> {
        self.open_under(anchor, dir, OFlags::RDONLY | OFlags::DIRECTORY)
    }

    /// [`Self::open_dir`] with other open flags (`dir` need not be one).
    pub(crate) fn open_under(
        &self,
        anchor: &HostPath,
        dir: &HostPath,
        flags: OFlags,
    ) -> Result<OwnedFd, Errno> {
        let in_root = |d: &HostPath, flags: OFlags| {
            rustix::fs::openat2(
                &self.fd,
                d.relative_to(&HostPath::root()),
                flags | OFlags::CLOEXEC,
                Mode::empty(),
                ResolveFlags::IN_ROOT | ResolveFlags::NO_MAGICLINKS,
            )
        };
        if anchor.starts_with(dir) {
            return in_root(dir, flags);
        }
        let anchor_fd = in_root(anchor, OFlags::PATH | OFlags::DIRECTORY)?;
        open_beneath(&anchor_fd, &dir.relative_to(anchor), flags)
    }
}

/// Opens `rel` beneath `dir`; the kernel refuses anything that would leave it.
pub(crate) fn open_beneath(dir: impl AsFd, rel: &str, flags: OFlags) -> Result<OwnedFd, Errno> {
    rustix::fs::openat2(
        dir,
        rel,
        flags | OFlags::CLOEXEC,
        Mode::empty(),
        ResolveFlags::BENEATH | ResolveFlags::NO_MAGICLINKS,
    )
}

/// `mkdirat` then `fchmod`, so the mode is exact whatever the umask.
pub(crate) fn make_dir(parent: impl AsFd, name: &str, mode: u32) -> Result<(), Errno> {
    rustix::fs::mkdirat(&parent, name, Mode::from_raw_mode(mode))?;
    // NOFOLLOW: if the new directory was swapped for a symlink meanwhile, the
    // chmod must not land on whatever it points to.
    let fd = open_beneath(
        &parent,
        name,
        OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW,
    )?;
    rustix::fs::fchmod(&fd, Mode::from_raw_mode(mode))
}
