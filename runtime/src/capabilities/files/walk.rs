//! Resolving a path under the host root one component at a time, as the
//! kernel does with `RESOLVE_IN_ROOT` (symlinks followed, `..` stopping at the
//! root), recording every directory an entry was looked up in. Run-start
//! checks compare what they find by identity (device and inode), never by
//! path strings: whether a granted directory lies where systemd loads units,
//! and whether anyone but root could redirect a granted directory.

use std::os::fd::{AsFd, OwnedFd};

use rustix::fs::{FileType, Mode, OFlags, ResolveFlags};
use rustix::io::Errno;

use hostaction_distribution::disk::untrusted_dir;

use super::{HostPath, HostRoot};

/// Symlinks followed in one walk at most (the kernel's own limit).
const MAX_SYMLINKS: usize = 40;

/// A file's identity: device and inode.
pub type FileId = (u64, u64);

/// One lookup of the walk: an entry named in a directory.
#[derive(Debug, Clone)]
pub struct Lookup {
    /// The directory looked in.
    pub dir: FileId,
    /// Its owner.
    pub dir_uid: u32,
    /// Its mode bits (`st_mode & 0o7777`).
    pub dir_mode: u32,
    /// The directory's path under the host root, as the walk resolved it
    /// (for messages).
    pub dir_path: String,
    /// The entry's owner, when it exists.
    pub entry_uid: Option<u32>,
}

/// Where a path leads under the host root.
#[derive(Debug)]
pub struct Walk {
    /// The deepest existing directory the path reaches.
    pub reached: FileId,
    /// Its path under the host root, as the walk resolved it (for
    /// messages).
    pub reached_path: String,
    /// The components below `reached` that do not exist (yet), `.` and `..`
    /// folded lexically (a `..` among them ends the list, which only makes
    /// the place reached shallower).
    pub rest: Vec<String>,
    /// Every lookup made, in order, symlink targets included.
    pub lookups: Vec<Lookup>,
}

impl Walk {
    /// Whether every directory in `lookups` is one only root (or this
    /// process's user) can change: owned by one of them, and not writable by
    /// group or others unless sticky with the entry owned by one of them.
    /// Returns the first directory that is not, with why.
    pub fn untrusted(&self) -> Option<(&Lookup, String)> {
        self.lookups
            .iter()
            .find_map(|l| untrusted_dir(l.dir_uid, l.dir_mode, l.entry_uid).map(|why| (l, why)))
    }

    /// Whether this place and `other` can overlap: one is the other or lies
    /// beneath it, or one holds an entry the other's resolution goes through
    /// (whoever can write there can redirect the other). Missing components
    /// are compared by name below the deepest directory both reach.
    pub fn overlaps(&self, other: &Walk) -> bool {
        let covers = |a: &Walk, b: &Walk| {
            a.rest.is_empty()
                && (a.reached == b.reached || b.lookups.iter().any(|l| l.dir == a.reached))
        };
        let prefix = |a: &[String], b: &[String]| a.iter().zip(b).all(|(x, y)| x == y);
        covers(self, other)
            || covers(other, self)
            || (self.reached == other.reached && prefix(&self.rest, &other.rest))
    }
}

impl HostRoot {
    /// Walks `path` from the host root (see the module's docs). Errors other
    /// than a missing component (or a file where a directory should be) are
    /// returned: a caller that cannot see the path must not assume it is safe.
    pub fn walk(&self, path: &HostPath) -> Result<Walk, Errno> {
        let root = rustix::fs::openat2(
            &self.fd,
            ".",
            OFlags::PATH | OFlags::DIRECTORY | OFlags::CLOEXEC,
            Mode::empty(),
            ResolveFlags::BENEATH,
        )?;
        let mut stack: Vec<OwnedFd> = vec![root];
        // The names of the directories on the stack below the root: the
        // resolved path, for messages, without asking the kernel (a readlink
        // of /proc/self/fd per lookup cost more than the walk itself, at
        // every run's start).
        let mut names: Vec<String> = Vec::new();
        let mut pending: Vec<String> = path.components().iter().rev().cloned().collect();
        let mut lookups = Vec::new();
        let mut links = 0;
        let mut rest = Vec::new();
        while let Some(name) = pending.pop() {
            if name.is_empty() || name == "." {
                continue;
            }
            if name == ".." {
                if stack.len() > 1 {
                    stack.pop();
                    names.pop();
                }
                continue;
            }
            let Some(dir) = stack.last() else {
                return Err(Errno::NOENT);
            };
            let dir_stat = rustix::fs::fstat(dir)?;
            let entry = rustix::fs::openat(
                dir,
                name.as_str(),
                OFlags::PATH | OFlags::NOFOLLOW | OFlags::CLOEXEC,
                Mode::empty(),
            );
            let entry_stat = match &entry {
                Ok(fd) => Some(rustix::fs::fstat(fd)?),
                Err(Errno::NOENT) => None,
                Err(e) => return Err(*e),
            };
            lookups.push(Lookup {
                dir: (dir_stat.st_dev, dir_stat.st_ino),
                dir_uid: dir_stat.st_uid,
                dir_mode: dir_stat.st_mode & 0o7777,
                dir_path: joined(&names),
                entry_uid: entry_stat.as_ref().map(|s| s.st_uid),
            });
            let (Ok(fd), Some(st)) = (entry, entry_stat) else {
                rest.push(name);
                break;
            };
            match FileType::from_raw_mode(st.st_mode) {
                FileType::Directory => {
                    stack.push(fd);
                    names.push(name);
                }
                FileType::Symlink => {
                    links += 1;
                    if links > MAX_SYMLINKS {
                        return Err(Errno::LOOP);
                    }
                    let target = rustix::fs::readlinkat(dir, name.as_str(), Vec::new())?;
                    let target = target.to_string_lossy().into_owned();
                    if target.starts_with('/') {
                        stack.truncate(1);
                        names.clear();
                    }
                    pending.extend(target.split('/').rev().map(str::to_owned));
                }
                _ => {
                    rest.push(name);
                    break;
                }
            }
        }
        // What is left, folded lexically.
        while let Some(name) = pending.pop() {
            match name.as_str() {
                "" | "." => {}
                ".." => break,
                _ => rest.push(name),
            }
        }
        let Some(dir) = stack.last() else {
            return Err(Errno::NOENT);
        };
        let st = rustix::fs::fstat(dir)?;
        Ok(Walk {
            reached: (st.st_dev, st.st_ino),
            reached_path: joined(&names),
            rest,
            lookups,
        })
    }
}

/// `/a/b` from `[a, b]`; `/` from none.
fn joined(names: &[String]) -> String {
    format!("/{}", names.join("/"))
}

/// Whether an open file is on a kernel filesystem (procfs, sysfs and the
/// interfaces mounted beside them), by the filesystem's magic number.
pub fn kernel_fs(fd: impl AsFd) -> Result<Option<&'static str>, Errno> {
    const KERNEL_FS: &[(u32, &str)] = &[
        (0x9fa0, "procfs"),
        (0x6265_6572, "sysfs"),
        (0x0027_e0eb, "cgroupfs"),
        (0x6367_7270, "cgroup2"),
        (0x6462_6720, "debugfs"),
        (0x7472_6163, "tracefs"),
        (0x7363_6673, "securityfs"),
        (0xcafe_4a11, "bpffs"),
        (0xde5e_81e4, "efivarfs"),
        (0x6265_6570, "configfs"),
        (0x6165_676c, "pstore"),
        (0xf97c_ff8c, "selinuxfs"),
        (0x4341_5d53, "smackfs"),
        (0x4249_4e4d, "binfmt_misc"),
        (0x6573_5543, "fusectl"),
    ];
    let st = rustix::fs::fstatfs(fd)?;
    // f_type is a C long holding a 32-bit magic number.
    let magic = st.f_type as u32;
    Ok(KERNEL_FS
        .iter()
        .find(|(m, _)| *m == magic)
        .map(|(_, name)| *name))
}
