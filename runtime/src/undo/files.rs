//! What reverses a `files` effect, and reversing it.
//!
//! The target is found again as the capability found it: the granted
//! directory opened under the host root, the rest resolved beneath it by the
//! kernel (`RESOLVE_BENEATH`), the leaf never followed. An undo cannot reach
//! further than the run could.

use rustix::fs::{AtFlags, FileType, Mode, OFlags};
use rustix::io::Errno;
use serde::{Deserialize, Serialize};

use super::Undone;
use crate::capabilities::files::{read_all, write_atomically};
use crate::host::{HostPath, HostRoot, make_dir, open_beneath};
use crate::undo::journal::Barrier;

/// A path as the run reached it: beneath `granted`, itself resolved under
/// the host root up to `anchor`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Place {
    /// The directory the node administrator named (resolved in the root).
    pub anchor: String,
    /// The granted directory.
    pub granted: String,
    /// The path itself.
    pub path: String,
}

/// What a path was before the effect (journaled); a regular file's bytes
/// are the record's blob.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "kebab-case")]
pub enum Before {
    /// A regular file: its mode, owner and the digest of its bytes.
    File {
        /// Permission bits.
        mode: u32,
        /// Owner.
        uid: u32,
        /// Group.
        gid: u32,
        /// `sha256:<hex>` of its bytes (the blob).
        sha256: String,
    },
    /// A directory.
    Dir {
        /// Permission bits.
        mode: u32,
        /// Owner.
        uid: u32,
        /// Group.
        gid: u32,
    },
    /// A symbolic link and where it pointed.
    Symlink {
        /// The link's contents.
        target: String,
    },
    /// A device, FIFO or socket: not recreated.
    Other,
}

/// What the run left at the path.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "kebab-case")]
pub enum After {
    /// A regular file with these bytes (digest) and mode.
    File {
        /// Permission bits.
        mode: u32,
        /// `sha256:<hex>` of its bytes.
        sha256: String,
    },
    /// A directory with this mode.
    Dir {
        /// Permission bits.
        mode: u32,
    },
}

/// What reverses one `files` effect: the path, what it was (none: it did
/// not exist) and what the run left (none: it removed it).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FileUndo {
    /// Where.
    #[serde(flatten)]
    pub place: Place,
    /// Before the effect.
    pub before: Option<Before>,
    /// After it.
    pub after: Option<After>,
}

/// What is at a path now.
#[derive(Debug, PartialEq, Eq)]
enum Now {
    Missing,
    File { mode: u32, sha256: String },
    Dir { mode: u32 },
    Symlink { target: String },
    Other,
}

/// `sha256:<hex>` of bytes.
pub(crate) fn digest(bytes: &[u8]) -> String {
    hostaction_distribution::artifact::sha256(bytes)
}

impl FileUndo {
    /// Restores what was before, if the path is still what the run left.
    pub(crate) fn undo(&self, root: &HostRoot, blob: &[u8]) -> Undone {
        match self.try_undo(root, blob) {
            Ok(undone) => undone,
            Err(e) => Undone::Failed(format!("{}: {e}", self.place.path)),
        }
    }

    fn try_undo(&self, root: &HostRoot, blob: &[u8]) -> Result<Undone, Errno> {
        let p = &self.place;
        let parse = |s: &str| HostPath::parse(s).map_err(|_| Errno::INVAL);
        let (anchor, granted, path) = (parse(&p.anchor)?, parse(&p.granted)?, parse(&p.path)?);
        // The path is beneath its granted directory, or is that directory
        // or an ancestor the run made (it never changes one that was there).
        let made_above = granted.starts_with(&path);
        if (!made_above && !path.starts_with(&granted)) || (made_above && self.before.is_some()) {
            return Ok(Undone::Failed(format!(
                "{}: not a path a run under the grant {} could have changed; not undone",
                p.path, p.granted
            )));
        }
        let (dir, name) = if made_above {
            // The granted directory or one of its ancestors (made by the
            // run): reached as the run reached it, from its parent.
            let (Some(parent), Some(name)) = (path.parent(), path.file_name()) else {
                return Err(Errno::INVAL);
            };
            match root.open_dir(&anchor, &parent) {
                Ok(fd) => (fd, name.to_owned()),
                Err(Errno::NOENT) if self.before.is_none() => return Ok(Undone::Unchanged),
                Err(e) => return Err(e),
            }
        } else {
            let granted_fd = match root.open_dir(&anchor, &granted) {
                Ok(fd) => fd,
                // The granted directory is gone: only a path the run made
                // (and everything in it) is as before.
                Err(Errno::NOENT) if self.before.is_none() => return Ok(Undone::Unchanged),
                Err(Errno::NOENT) => {
                    return Ok(Undone::Conflict(format!(
                        "{}: its granted directory {} is gone",
                        p.path, p.granted
                    )));
                }
                Err(e) => return Err(e),
            };
            let (Some(parent), Some(name)) = (path.parent(), path.file_name()) else {
                return Err(Errno::INVAL);
            };
            let rel = parent.relative_to(&granted);
            match open_beneath(&granted_fd, &rel, OFlags::RDONLY | OFlags::DIRECTORY) {
                Ok(fd) => (fd, name.to_owned()),
                Err(Errno::NOENT) if self.before.is_none() => return Ok(Undone::Unchanged),
                Err(e) => return Err(e),
            }
        };
        let now = now_at(&dir, &name)?;
        if self.matches_before(&now) {
            return Ok(Undone::Unchanged);
        }
        if !self.matches_after(&now) {
            return Ok(Undone::Conflict(format!(
                "{} is {} now, not what the run left ({}): changed since; left as it is",
                p.path,
                describe_now(&now),
                describe_after(self.after.as_ref()),
            )));
        }
        match &self.before {
            None => {
                let flags = if matches!(now, Now::Dir { .. }) {
                    AtFlags::REMOVEDIR
                } else {
                    AtFlags::empty()
                };
                match rustix::fs::unlinkat(&dir, name.as_str(), flags) {
                    Ok(()) => {}
                    Err(Errno::NOTEMPTY | Errno::EXIST) => {
                        return Ok(Undone::Conflict(format!(
                            "directory {} holds entries the run did not make; left as it is",
                            p.path
                        )));
                    }
                    Err(e) => return Err(e),
                }
            }
            Some(Before::File {
                mode,
                uid,
                gid,
                sha256,
            }) => {
                if digest(blob) != *sha256 {
                    return Ok(Undone::Failed(format!(
                        "{}: the journaled contents do not match their digest",
                        p.path
                    )));
                }
                // Owner and mode set on the staged file before its rename:
                // a user's setuid file is never root's, even for a moment.
                write_atomically(
                    &dir,
                    &name,
                    blob,
                    *mode,
                    Some((*uid, *gid)),
                    &Barrier::none(),
                )?;
            }
            Some(Before::Dir { mode, uid, gid }) => {
                if matches!(now, Now::Missing) {
                    // Root's and closed to others until it is the owner's.
                    make_dir(&dir, &name, 0o700)?;
                }
                // By descriptor: the name may be swapped meanwhile.
                let fd = open_beneath(
                    &dir,
                    &name,
                    OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW,
                )?;
                rustix::fs::fchown(
                    &fd,
                    Some(rustix::fs::Uid::from_raw(*uid)),
                    Some(rustix::fs::Gid::from_raw(*gid)),
                )?;
                rustix::fs::fchmod(&fd, Mode::from_raw_mode(*mode))?;
            }
            Some(Before::Symlink { target }) => {
                rustix::fs::symlinkat(target.as_str(), &dir, name.as_str())?;
            }
            Some(Before::Other) => {
                return Ok(Undone::Irreversible(format!(
                    "{} was a device, FIFO or socket; hostaction does not recreate those",
                    p.path
                )));
            }
        }
        rustix::fs::fsync(&dir)?;
        Ok(Undone::Restored)
    }

    fn matches_before(&self, now: &Now) -> bool {
        match (&self.before, now) {
            (None, Now::Missing) => true,
            (Some(Before::File { mode, sha256, .. }), Now::File { mode: m, sha256: s }) => {
                mode == m && sha256 == s
            }
            (Some(Before::Dir { mode, .. }), Now::Dir { mode: m }) => mode == m,
            (Some(Before::Symlink { target }), Now::Symlink { target: t }) => target == t,
            (Some(Before::Other), Now::Other) => true,
            _ => false,
        }
    }

    fn matches_after(&self, now: &Now) -> bool {
        match (&self.after, now) {
            (None, Now::Missing) => true,
            (Some(After::File { mode, sha256 }), Now::File { mode: m, sha256: s }) => {
                mode == m && sha256 == s
            }
            (Some(After::Dir { mode }), Now::Dir { mode: m }) => mode == m,
            _ => false,
        }
    }
}

/// What is at `name` in `dir`, never following it.
fn now_at(dir: &impl rustix::fd::AsFd, name: &str) -> Result<Now, Errno> {
    let st = match rustix::fs::statat(dir, name, AtFlags::SYMLINK_NOFOLLOW) {
        Ok(st) => st,
        Err(Errno::NOENT) => return Ok(Now::Missing),
        Err(e) => return Err(e),
    };
    let mode = st.st_mode & 0o7777;
    Ok(match FileType::from_raw_mode(st.st_mode) {
        FileType::RegularFile => {
            let fd = open_beneath(
                dir,
                name,
                OFlags::RDONLY | OFlags::NOFOLLOW | OFlags::NONBLOCK | OFlags::NOCTTY,
            )?;
            let what = HostPath::root();
            match read_all(&fd, &what) {
                Ok(bytes) => Now::File {
                    mode,
                    sha256: digest(&bytes),
                },
                // Too big, or more than one link: not what the run wrote.
                Err(_) => Now::Other,
            }
        }
        FileType::Directory => Now::Dir { mode },
        FileType::Symlink => Now::Symlink {
            target: rustix::fs::readlinkat(dir, name, Vec::new())?
                .to_string_lossy()
                .into_owned(),
        },
        _ => Now::Other,
    })
}

/// Gives `name` back its journaled owner, never following a symlink.
fn describe_now(now: &Now) -> String {
    match now {
        Now::Missing => "missing".into(),
        Now::File { mode, sha256 } => format!("a file ({}, mode {mode:04o})", short(sha256)),
        Now::Dir { mode } => format!("a directory (mode {mode:04o})"),
        Now::Symlink { target } => format!("a symlink to {target}"),
        Now::Other => "another kind of file".into(),
    }
}

fn describe_after(after: Option<&After>) -> String {
    match after {
        None => "removed".into(),
        Some(After::File { mode, sha256 }) => {
            format!("a file ({}, mode {mode:04o})", short(sha256))
        }
        Some(After::Dir { mode }) => format!("a directory (mode {mode:04o})"),
    }
}

/// `sha256:0123456789ab`: enough of a digest to tell two apart.
pub(crate) fn short(digest: &str) -> &str {
    digest.get(..19).unwrap_or(digest)
}

/// What is at `name` in `dir` before an effect, for the journal: the state
/// and, for a regular file, its bytes (the record's blob).
pub(crate) fn before_at(
    dir: &impl rustix::fd::AsFd,
    name: &str,
) -> Result<(Option<Before>, Vec<u8>), Errno> {
    let st = match rustix::fs::statat(dir, name, AtFlags::SYMLINK_NOFOLLOW) {
        Ok(st) => st,
        Err(Errno::NOENT) => return Ok((None, Vec::new())),
        Err(e) => return Err(e),
    };
    let (mode, uid, gid) = (st.st_mode & 0o7777, st.st_uid, st.st_gid);
    Ok(match FileType::from_raw_mode(st.st_mode) {
        FileType::RegularFile => {
            let fd = open_beneath(
                dir,
                name,
                OFlags::RDONLY | OFlags::NOFOLLOW | OFlags::NONBLOCK | OFlags::NOCTTY,
            )?;
            let bytes = read_all(&fd, &HostPath::root()).map_err(|_| Errno::FBIG)?;
            (
                Some(Before::File {
                    mode,
                    uid,
                    gid,
                    sha256: digest(&bytes),
                }),
                bytes,
            )
        }
        FileType::Directory => (Some(Before::Dir { mode, uid, gid }), Vec::new()),
        FileType::Symlink => (
            Some(Before::Symlink {
                target: rustix::fs::readlinkat(dir, name, Vec::new())?
                    .to_string_lossy()
                    .into_owned(),
            }),
            Vec::new(),
        ),
        _ => (Some(Before::Other), Vec::new()),
    })
}
