//! The `files` capability: files beneath the granted directories.
//!
//! Every path is resolved by the kernel, never by comparing strings: the
//! granted directory is opened under the host root (`RESOLVE_IN_ROOT`), and the
//! rest of the path beneath it (`openat2` with `RESOLVE_BENEATH |
//! RESOLVE_NO_MAGICLINKS`), so `..`, symlinks that leave the directory and
//! `/proc/self/fd` magic links fail in the kernel. Writes never follow a leaf
//! symlink and never touch a file with other hard links; files are replaced
//! atomically (temp file in the same directory, fsync, rename).
//!
//! Modes are never writable by others, group-writable only where the grant
//! says so, and a granted directory's own mode (and owner) is never changed.
//! Files on procfs, sysfs and the other kernel filesystems (told by the
//! filesystem's magic number of the opened file, never by its path) are
//! refused unless `kernelPaths` lists them: `/proc/self` is the agent.
//!
//! Plan mode sees its own planned writes: a planned directory exists for the
//! calls after it, a planned file reads back its planned bytes (and `stat`,
//! `list-dir` and a second identical `ensure-file` see it), a planned
//! removal hides the path — so a plan lists what the following apply does.
//! Planned contents are host memory a guest grows: they are charged to
//! [`PLAN_FILE_BYTES`], past which the run ends as `limit exceeded`.
//!
//! Limits: paths up to [`MAX_PATH_BYTES`], files up to [`MAX_FILE_BYTES`],
//! listings up to [`MAX_DIR_ENTRIES`] entries, planned contents up to
//! [`PLAN_FILE_BYTES`] in all.

#[cfg(test)]
mod tests;

use std::os::fd::{AsFd, OwnedFd};
use std::sync::atomic::{AtomicU64, Ordering};

use rustix::fs::{AtFlags, FileType, Mode, OFlags};
use rustix::io::Errno;

pub use crate::host::{HostPath, HostRoot, MAX_NAME_BYTES, MAX_PATH_BYTES, PathError};
use crate::host::{kernel_fs, make_dir, open_beneath};

use super::{CapError, Shared};
use crate::bindings::hostaction::host::files::{self, DirEntry, FileKind, FileStat};
use crate::capabilities::payload::Payload;
use crate::effects::Mode::Plan;
use crate::grant::{EffectiveGrant, GrantedDir};
use crate::undo::files::{After, Before, FileUndo, Place, before_at, digest};
use crate::undo::journal::Barrier;
use crate::undo::{Undo, diff};
use std::sync::Arc;
use wasmtime::component::{HasData, Linker};

/// Largest file `ensure-file` writes or `read-file` reads.
pub const MAX_FILE_BYTES: usize = 16 << 20;
/// Most entries `list-dir` returns.
pub const MAX_DIR_ENTRIES: usize = 10_000;
/// Most bytes plan mode keeps of the files it plans to write (their
/// contents, paths and [`PLANNED_FILE_OVERHEAD`] each), all together: what a
/// plan that writes files and reads them back costs the host. Past it the
/// run ends as `limit exceeded` (a plan cannot forget what later calls
/// read): room for three files at [`MAX_FILE_BYTES`] and many small ones.
pub const PLAN_FILE_BYTES: usize = 64 << 20;
/// Permission bits an action may set: no setuid, setgid or sticky bits.
const ALLOWED_MODE_BITS: u32 = 0o777;

/// The `files` capability's state in a run: the grant it checks, the host
/// it works on, the payload whose contents may be made executable, and plan
/// mode's directories.
pub struct FilesCtx {
    grant: Arc<EffectiveGrant>,
    host_root: Arc<HostRoot>,
    payload: Arc<Payload>,
    /// Plan mode: directories recorded as created but not made.
    planned_dirs: PlannedDirs,
    /// Plan mode: files recorded as written or removed, not touched.
    planned_files: PlannedFiles,
}

impl FilesCtx {
    /// The context of one run under `grant`, on `host_root`.
    pub fn new(
        grant: Arc<EffectiveGrant>,
        host_root: Arc<HostRoot>,
        payload: Arc<Payload>,
    ) -> Self {
        Self {
            grant,
            host_root,
            payload,
            planned_dirs: PlannedDirs::default(),
            planned_files: PlannedFiles::default(),
        }
    }
}

/// The `files` capability as a call sees it: its own state and what all
/// capabilities of the run share.
pub struct FilesView<'a> {
    pub(crate) ctx: &'a mut FilesCtx,
    pub(crate) shared: &'a mut Shared,
}

super::types_host!(FilesView<'_>);

struct HasFiles;

impl HasData for HasFiles {
    type Data<'a> = FilesView<'a>;
}

/// Links `hostaction:host/files`, each call made on the view `view` gives.
pub(crate) fn add_to_linker<T: Send + 'static>(
    linker: &mut Linker<T>,
    view: fn(&mut T) -> FilesView<'_>,
) -> wasmtime::Result<()> {
    files::add_to_linker::<T, HasFiles>(linker, view)
}

/// Plan mode's directories recorded as created but not made, charged
/// against [`super::PLAN_BYTES`]: each `ensure-dir` planned is a chain, the
/// deepest directory and the depth of its first missing ancestor (every
/// directory between them is planned too).
#[derive(Debug, Default)]
pub(crate) struct PlannedDirs {
    chains: Vec<(HostPath, usize, u32)>,
    bytes: usize,
}

/// What a planned directory costs besides its components' bytes, and what
/// each component costs besides its bytes (a `String` of its own).
const PLANNED_DIR_OVERHEAD: usize = 64;
const PLANNED_PART_OVERHEAD: usize = 32;

impl PlannedDirs {
    /// Remembers the directories of `dir` from depth `first_missing` down
    /// (`dir` itself with `mode`, the others 0755), or ends the run when the
    /// budget is used up.
    pub(crate) fn push(
        &mut self,
        dir: HostPath,
        first_missing: usize,
        mode: u32,
    ) -> Result<(), CapError> {
        let cost = PLANNED_DIR_OVERHEAD
            + dir
                .components()
                .iter()
                .map(|c| c.len() + PLANNED_PART_OVERHEAD)
                .sum::<usize>();
        super::check_plan("planned directories", self.bytes + cost)?;
        self.bytes += cost;
        self.chains.push((dir, first_missing, mode));
        Ok(())
    }

    /// The mode of `path` if it is a planned directory itself.
    fn mode_of(&self, path: &HostPath) -> Option<u32> {
        let depth = path.components().len();
        (self.planned_depth(path)? == depth).then(|| {
            self.chains
                .iter()
                .find(|(deepest, _, _)| deepest == path)
                .map_or(0o755, |(_, _, mode)| *mode)
        })
    }

    /// The names of the planned directories directly in `dir`.
    fn children(&self, dir: &HostPath) -> Vec<String> {
        let depth = dir.components().len();
        let mut names: Vec<String> = self
            .chains
            .iter()
            .filter(|(deepest, first, _)| {
                deepest.components().len() > depth
                    && *first <= depth + 1
                    && deepest.starts_with(dir)
            })
            .map(|(deepest, _, _)| deepest.components()[depth].clone())
            .collect();
        names.sort();
        names.dedup();
        names
    }

    /// Whether `path` is a planned directory or lies beneath one.
    fn beneath(&self, path: &HostPath) -> bool {
        self.planned_depth(path).is_some()
    }

    /// The depth of `path`'s deepest ancestor (or itself) that is planned:
    /// it would exist once the plan is applied. One pass over the chains,
    /// comparing components, so a guest's deep paths and many plans cost
    /// no more than the plan budget allows.
    fn planned_depth(&self, path: &HostPath) -> Option<usize> {
        self.chains
            .iter()
            .filter_map(|(deepest, first, _)| {
                let common = path
                    .components()
                    .iter()
                    .zip(deepest.components())
                    .take_while(|(a, b)| a == b)
                    .count();
                (common >= *first).then_some(common)
            })
            .max()
    }
}

/// Plan mode's files recorded as written (their planned bytes and mode) or
/// removed, but not touched: what later calls of the run see at those
/// paths instead of the host. Charged against [`PLAN_FILE_BYTES`].
#[derive(Debug, Default)]
pub(crate) struct PlannedFiles {
    paths: std::collections::HashMap<HostPath, PlannedFile>,
    bytes: usize,
}

/// A path as plan mode left it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum PlannedFile {
    /// Written with these bytes and mode, at this time (ns since the epoch).
    Written {
        contents: Vec<u8>,
        mode: u32,
        at_ns: u64,
    },
    /// Removed.
    Removed,
}

/// What each planned path costs besides its bytes and contents.
const PLANNED_FILE_OVERHEAD: usize = 128;

impl PlannedFiles {
    fn cost(path: &HostPath, planned: &PlannedFile) -> usize {
        PLANNED_FILE_OVERHEAD
            + path.components().iter().map(String::len).sum::<usize>()
            + match planned {
                PlannedFile::Written { contents, .. } => contents.len(),
                PlannedFile::Removed => 0,
            }
    }

    /// Remembers `path` as `planned` (replacing what was planned there), or
    /// ends the run when [`PLAN_FILE_BYTES`] would be passed.
    pub(crate) fn set(&mut self, path: HostPath, planned: PlannedFile) -> Result<(), CapError> {
        let old = self.paths.get(&path).map_or(0, |p| Self::cost(&path, p));
        let bytes = self.bytes - old + Self::cost(&path, &planned);
        if bytes > PLAN_FILE_BYTES {
            return Err(CapError::Trap(wasmtime::Error::new(super::RunEnd::Limit(
                format!(
                    "plan mode's record of planned files reached its limit of {} MiB \
                     (files.PLAN_FILE_BYTES)",
                    PLAN_FILE_BYTES >> 20
                ),
            ))));
        }
        self.bytes = bytes;
        self.paths.insert(path, planned);
        Ok(())
    }

    /// Forgets `path`.
    fn forget(&mut self, path: &HostPath) {
        if let Some(p) = self.paths.remove(path) {
            self.bytes -= Self::cost(path, &p);
        }
    }

    fn get(&self, path: &HostPath) -> Option<&PlannedFile> {
        self.paths.get(path)
    }

    /// The planned paths directly in `dir`.
    fn children<'a>(
        &'a self,
        dir: &'a HostPath,
    ) -> impl Iterator<Item = (&'a str, &'a PlannedFile)> + 'a {
        let depth = dir.components().len();
        self.paths
            .iter()
            .filter(move |(path, _)| path.components().len() == depth + 1 && path.starts_with(dir))
            .map(move |(path, planned)| (path.components()[depth].as_str(), planned))
    }
}

/// Nanoseconds since the epoch now: a planned file's modification time.
fn now_ns() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX))
}

/// Read or write access, for scope checks and messages.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Access {
    Read,
    Write,
}

/// A path the grant covers, with the granted directory it lies beneath.
struct Scoped {
    path: HostPath,
    granted: HostPath,
    /// Where `granted` is resolved beneath (see [`GrantedDir`]).
    anchor: HostPath,
}

impl Scoped {
    /// Where `path` (this path or one of its ancestors) is, for the journal.
    fn place(&self, path: &HostPath) -> Place {
        Place {
            anchor: self.anchor.to_string(),
            granted: self.granted.to_string(),
            path: path.to_string(),
        }
    }

    /// What undoes making the directory `dir` with `mode`: it did not exist.
    fn dir_made(&self, dir: &HostPath, mode: u32) -> Undo {
        Undo::Files(FileUndo {
            place: self.place(dir),
            before: None,
            after: Some(After::Dir { mode }),
        })
    }

    /// The path below the granted directory (`.` for the directory itself).
    fn rel(&self) -> String {
        self.path.relative_to(&self.granted)
    }

    /// Parent (relative to the granted directory) and name of a path strictly
    /// below its granted directory.
    fn parent_and_name(&self) -> Result<(String, &str), CapError> {
        match (self.path.parent(), self.path.file_name()) {
            (Some(parent), Some(name)) if self.path != self.granted => {
                Ok((parent.relative_to(&self.granted), name))
            }
            _ => Err(CapError::PermissionDenied(format!(
                "files: {} is a granted directory itself; it cannot be replaced or removed",
                self.path
            ))),
        }
    }

    /// Maps a failed syscall on this path to the error the guest sees.
    fn err(&self, errno: Errno) -> CapError {
        let p = &self.path;
        match errno {
            Errno::XDEV => CapError::PermissionDenied(format!(
                "files: {p} resolves outside the granted directory {} (through `..` or a symlink)",
                self.granted
            )),
            Errno::LOOP => CapError::PermissionDenied(format!(
                "files: {p} goes through a magic link, a symlink where none is allowed, or too many symlinks"
            )),
            Errno::NOENT => {
                CapError::NotFound(format!("{p} (or one of its parents) does not exist"))
            }
            Errno::NOTDIR => CapError::Conflict(format!("a parent of {p} is not a directory")),
            Errno::ISDIR => CapError::Conflict(format!("{p} is a directory")),
            Errno::NOTEMPTY => CapError::Conflict(format!("directory {p} is not empty")),
            Errno::ACCESS | Errno::PERM | Errno::ROFS => CapError::PermissionDenied(format!(
                "files: the host refuses access to {p}: {errno}"
            )),
            Errno::NOSYS => CapError::Unsupported(format!(
                "this kernel has no openat2(2), which hostaction needs to resolve {p} safely"
            )),
            other => CapError::Io(format!("{p}: {other}")),
        }
    }
}

impl FilesView<'_> {
    /// Checks the deadline, parses the path and finds the granted directory
    /// that covers it for this access, or says which grant is missing.
    fn scope(&self, path: &str, access: Access) -> Result<Scoped, CapError> {
        self.shared.check_deadline()?;
        // `path` is guest-controlled: refuse malformed paths before any syscall.
        let path = HostPath::parse(path).map_err(|e| CapError::InvalidArgument(e.to_string()))?;
        let (dirs, word) = match access {
            Access::Read => (&self.ctx.grant.files_read, "read"),
            Access::Write => (&self.ctx.grant.files_write, "write"),
        };
        // The most specific granted directory that contains the path.
        let granted = dirs
            .iter()
            .filter(|d| path.starts_with(&d.path))
            .max_by_key(|d| d.path.components().len())
            .cloned();
        match granted {
            Some(GrantedDir {
                path: granted,
                anchor,
            }) => Ok(Scoped {
                path,
                granted,
                anchor,
            }),
            None => Err(CapError::PermissionDenied(format!(
                "files: {path} is outside the directories granted for {word} ({})",
                if dirs.is_empty() {
                    "none".to_owned()
                } else {
                    dirs.iter()
                        .map(|d| d.path.to_string())
                        .collect::<Vec<_>>()
                        .join(", ")
                }
            ))),
        }
    }

    fn open_granted(&self, scoped: &Scoped) -> Result<OwnedFd, CapError> {
        self.ctx
            .host_root
            .open_dir(&scoped.anchor, &scoped.granted)
            .map_err(|e| match e {
                Errno::NOENT => CapError::NotFound(format!(
                    "granted directory {} does not exist on this host (ensure-dir creates it)",
                    scoped.granted
                )),
                other => scoped.err(other),
            })
    }

    /// Opens the parent directory of a path strictly below its granted
    /// directory, for writing entries in it.
    fn open_parent(&self, scoped: &Scoped) -> Result<(OwnedFd, String), CapError> {
        let (parent, name) = scoped.parent_and_name()?;
        let granted = self.open_granted(scoped)?;
        let fd = open_beneath(&granted, &parent, OFlags::RDONLY | OFlags::DIRECTORY)
            .map_err(|e| scoped.err(e))?;
        Ok((fd, name.to_owned()))
    }

    /// Refuses `fd` (what the call operates on: the file, the directory, or
    /// the parent an entry is made or removed in, named `at`) when it lies on
    /// a kernel filesystem, unless `kernelPaths` allows it: `at` lies beneath
    /// an allowed path and, opened beneath it, is the same file. `follow`:
    /// whether `fd` was opened following a leaf symlink.
    fn check_kernel_fs(
        &self,
        scoped: &Scoped,
        fd: impl AsFd,
        at: &HostPath,
        follow: bool,
    ) -> Result<(), CapError> {
        let Some(fs) = kernel_fs(&fd).map_err(|e| scoped.err(e))? else {
            return Ok(());
        };
        let refused = |why: String| {
            CapError::PermissionDenied(format!(
                "files: {} is on {fs}{why}; kernel filesystems expose the agent's own process \
                 (/proc/self) and the kernel's controls, so only the paths the node policy \
                 lists in files.kernelPaths are reachable",
                scoped.path
            ))
        };
        let Some(allowed) = self
            .ctx
            .grant
            .files_kernel
            .iter()
            .filter(|d| at.starts_with(&d.path))
            .max_by_key(|d| d.path.components().len())
        else {
            return Err(refused(String::new()));
        };
        let leaf = if follow {
            OFlags::empty()
        } else {
            OFlags::NOFOLLOW
        };
        let seen = (|| {
            let fd = if at == &allowed.path {
                self.ctx.host_root.open_under(
                    &allowed.anchor,
                    &allowed.path,
                    OFlags::PATH | leaf,
                )?
            } else {
                let base =
                    self.ctx
                        .host_root
                        .open_under(&allowed.anchor, &allowed.path, OFlags::PATH)?;
                open_beneath(&base, &at.relative_to(&allowed.path), OFlags::PATH | leaf)?
            };
            rustix::fs::fstat(&fd)
        })();
        let opened = rustix::fs::fstat(&fd).map_err(|e| scoped.err(e))?;
        match seen {
            Ok(st) if (st.st_dev, st.st_ino) == (opened.st_dev, opened.st_ino) => Ok(()),
            _ => Err(refused(format!(
                " and does not resolve beneath the allowed {}",
                allowed.path
            ))),
        }
    }

    /// Refuses modes wider than the grant allows: never writable by others,
    /// group-writable only with `groupWritable`.
    fn check_mode(&self, mode: u32, path: &HostPath) -> Result<(), CapError> {
        check_mode_bits(mode)?;
        if mode & 0o002 != 0 {
            return Err(CapError::InvalidArgument(format!(
                "mode {mode:04o} for {path} is writable by others (o+w): every local user could \
                 change it, and whatever root runs from it; hostaction never sets it"
            )));
        }
        if mode & 0o020 != 0 && !self.ctx.grant.files_group_writable {
            return Err(CapError::PermissionDenied(format!(
                "mode {mode:04o} for {path} is group-writable (g+w), which the effective grant \
                 does not allow (files.groupWritable)"
            )));
        }
        Ok(())
    }

    /// With `executable: false`, execute bits only on contents that are one
    /// of the action's payload files (verified by digest when they were
    /// pulled or given): the action cannot install a program of its making.
    fn check_executable(
        &self,
        mode: u32,
        contents: &[u8],
        path: &HostPath,
    ) -> Result<(), CapError> {
        if mode & 0o111 == 0 || !self.ctx.grant.files_payload_executables_only {
            return Ok(());
        }
        let digest = hostaction_distribution::artifact::sha256(contents);
        if self.ctx.payload.files().iter().any(|f| f.digest == digest) {
            return Ok(());
        }
        Err(CapError::PermissionDenied(format!(
            "mode {mode:04o} for {path} is executable, and the effective grant \
             (files.executable: false) allows execute bits only on a payload file's contents"
        )))
    }

    /// Creates the granted directory and its missing ancestors (beneath the
    /// host root), recording each creation. Returns false in plan mode, where
    /// the whole missing chain down to the path was recorded instead.
    fn create_granted(&mut self, scoped: &Scoped, mode: u32) -> Result<bool, CapError> {
        for (i, part) in scoped.granted.components().iter().enumerate() {
            let dir = scoped.granted.ancestor(i + 1);
            match self.ctx.host_root.open_dir(&scoped.anchor, &dir) {
                Ok(_) => continue,
                Err(Errno::NOENT) => {}
                Err(e) => return Err(scoped.err(e)),
            }
            if self.shared.effects.mode() == Plan {
                self.plan_dirs(&dir, &scoped.path, mode)?;
                return Ok(false);
            }
            let parent = self
                .ctx
                .host_root
                .open_dir(&scoped.anchor, &scoped.granted.ancestor(i))
                .map_err(|e| scoped.err(e))?;
            self.check_kernel_fs(scoped, &parent, &scoped.granted.ancestor(i), true)?;
            // The granted directory gets the mode asked when it is the path
            // (it is made now, so nothing is widened); anything else 0755.
            let dir_mode = if dir == scoped.path { mode } else { 0o755 };
            self.shared.effects.apply(
                "files",
                "create-dir",
                &dir.to_string(),
                format!("mode {dir_mode:04o}"),
                Some(format!("directory created, mode {dir_mode:04o}")),
                (scoped.dir_made(&dir, dir_mode), &[]),
                // Synced at the next barrier: a power cut before it may
                // leave this directory, empty, where recovery does not
                // know of it (a flush per directory is most of a fresh
                // run's cost).
                |_| make_dir(&parent, part, dir_mode).map_err(|e| scoped.err(e)),
            )?;
        }
        Ok(true)
    }

    /// Plan mode: records the creation of `missing` and of every directory
    /// below it down to `path`, and remembers `missing` so later calls beneath
    /// it are planned without looking for what was never made.
    fn plan_dirs(
        &mut self,
        missing: &HostPath,
        path: &HostPath,
        mode: u32,
    ) -> Result<(), CapError> {
        for depth in missing.components().len()..=path.components().len() {
            let dir_mode = if depth == path.components().len() {
                mode
            } else {
                0o755
            };
            let target = path.ancestor(depth).to_string();
            self.shared.effects.record(
                "files",
                "create-dir",
                &target,
                format!("mode {dir_mode:04o}"),
                Some(format!("directory created, mode {dir_mode:04o}")),
            );
        }
        self.ctx
            .planned_dirs
            .push(path.clone(), missing.components().len(), mode)
    }

    /// Plan mode: whether `path` lies beneath a directory planned, not made.
    fn planned(&self, path: &HostPath) -> bool {
        self.shared.effects.mode() == Plan && self.ctx.planned_dirs.beneath(path)
    }

    /// Plan mode: `ensure-file` of a path the plan wrote or removed, or
    /// beneath a planned directory — worked out from the plan alone, as
    /// apply mode would find it. None: the host decides (apply mode, or a
    /// path the plan has not touched).
    fn plan_file(
        &mut self,
        scoped: &Scoped,
        contents: &[u8],
        mode: u32,
    ) -> Result<Option<bool>, CapError> {
        if self.shared.effects.mode() != Plan {
            return Ok(None);
        }
        let before = match self.ctx.planned_files.get(&scoped.path) {
            Some(PlannedFile::Written {
                contents: old,
                mode: old_mode,
                ..
            }) => {
                if *old == contents && *old_mode == mode {
                    return Ok(Some(false));
                }
                Some((old.clone(), *old_mode))
            }
            Some(PlannedFile::Removed) => None,
            None if self.planned(&scoped.path) => {
                // Beneath a planned directory: its parent must be one too
                // (apply mode would find no parent otherwise).
                let depth = scoped.path.components().len();
                if self.ctx.planned_dirs.planned_depth(&scoped.path) < Some(depth - 1) {
                    return Err(scoped.err(Errno::NOENT));
                }
                None
            }
            None => return Ok(None),
        };
        let target = scoped.path.to_string();
        let diff = diff::contents(
            &target,
            before.as_ref().map(|(old, m)| (&old[..], *m)),
            Some((contents, mode)),
        );
        self.shared.effects.record(
            "files",
            "write-file",
            &target,
            format!("{} bytes, mode {mode:04o}", contents.len()),
            Some(diff),
        );
        self.remember_written(&scoped.path, contents.to_vec(), mode)?;
        Ok(Some(true))
    }

    /// Plan mode: remembers the bytes and mode planned for `path`.
    fn remember_written(
        &mut self,
        path: &HostPath,
        contents: Vec<u8>,
        mode: u32,
    ) -> Result<(), CapError> {
        if self.shared.effects.mode() != Plan {
            return Ok(());
        }
        self.ctx.planned_files.set(
            path.clone(),
            PlannedFile::Written {
                contents,
                mode,
                at_ns: now_ns(),
            },
        )
    }

    /// Plan mode: `remove` of a path the plan wrote or removed. A planned
    /// file is removed as apply mode would remove the file it wrote (the
    /// effect is recorded); it is then forgotten, or hidden when the host
    /// has a file there. None: the host decides.
    fn plan_remove(&mut self, scoped: &Scoped) -> Result<Option<bool>, CapError> {
        if self.shared.effects.mode() != Plan {
            return Ok(None);
        }
        let (contents, mode) = match self.ctx.planned_files.get(&scoped.path) {
            None => return Ok(None),
            Some(PlannedFile::Removed) => return Ok(Some(false)),
            Some(PlannedFile::Written { contents, mode, .. }) => (contents.clone(), *mode),
        };
        let target = scoped.path.to_string();
        self.shared.effects.record(
            "files",
            "remove",
            &target,
            String::new(),
            Some(diff::contents(&target, Some((&contents, mode)), None)),
        );
        let on_host = !self.planned(&scoped.path)
            && self
                .open_parent(scoped)
                .ok()
                .is_some_and(|(dir, name)| matches!(before_at(&dir, &name), Ok((Some(_), _))));
        if on_host {
            self.ctx
                .planned_files
                .set(scoped.path.clone(), PlannedFile::Removed)?;
        } else {
            self.ctx.planned_files.forget(&scoped.path);
        }
        Ok(Some(true))
    }

    /// Plan mode: what `stat` sees at a planned file or directory (`Some(None)`:
    /// a planned removal). None: the host decides.
    fn plan_stat(&self, scoped: &Scoped) -> Option<Option<FileStat>> {
        if self.shared.effects.mode() != Plan {
            return None;
        }
        match self.ctx.planned_files.get(&scoped.path) {
            Some(PlannedFile::Written {
                contents,
                mode,
                at_ns,
            }) => {
                return Some(Some(FileStat {
                    kind: FileKind::File,
                    size: contents.len() as u64,
                    mode: *mode,
                    modified_ns: *at_ns,
                }));
            }
            Some(PlannedFile::Removed) => return Some(None),
            None => {}
        }
        let mode = self.ctx.planned_dirs.mode_of(&scoped.path)?;
        Some(Some(FileStat {
            kind: FileKind::Directory,
            size: 0,
            mode,
            modified_ns: 0,
        }))
    }

    /// Plan mode: a listing of `scoped` with what the plan made or removed
    /// in it, sorted, within [`MAX_DIR_ENTRIES`].
    fn with_planned(
        &self,
        scoped: &Scoped,
        mut entries: Vec<DirEntry>,
    ) -> Result<Vec<DirEntry>, CapError> {
        let files = &self.ctx.planned_files;
        entries.retain(|e| files.children(&scoped.path).all(|(name, _)| name != e.name));
        for (name, planned) in files.children(&scoped.path) {
            if matches!(planned, PlannedFile::Written { .. }) {
                entries.push(DirEntry {
                    name: name.to_owned(),
                    kind: FileKind::File,
                });
            }
        }
        for name in self.ctx.planned_dirs.children(&scoped.path) {
            if entries.iter().all(|e| e.name != name) {
                entries.push(DirEntry {
                    name,
                    kind: FileKind::Directory,
                });
            }
        }
        if entries.len() > MAX_DIR_ENTRIES {
            return Err(CapError::InvalidArgument(format!(
                "{} has more than {MAX_DIR_ENTRIES} entries",
                scoped.path
            )));
        }
        entries.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(entries)
    }
}

/// The parent of a path strictly below its granted directory (else itself).
fn parent_of(path: &HostPath) -> HostPath {
    path.parent().unwrap_or_else(|| path.clone())
}

/// Refuses modes with bits beyond `rwxrwxrwx`.
fn check_mode_bits(mode: u32) -> Result<(), CapError> {
    // `mode` is guest-controlled: setuid/setgid/sticky bits would widen what
    // the file lets others do on the host.
    if mode & !ALLOWED_MODE_BITS != 0 {
        return Err(CapError::InvalidArgument(format!(
            "mode {mode:#o} has bits beyond 0o777 (setuid, setgid and sticky are not allowed)"
        )));
    }
    Ok(())
}

/// Refuses anything but a regular file with a single link: a symlink is never
/// written through, another hard link could be a file outside the grant, and a
/// directory, device or FIFO is not a file to read or replace.
fn check_single_file(stat: &rustix::fs::Stat, path: &HostPath) -> Result<(), CapError> {
    match FileType::from_raw_mode(stat.st_mode) {
        FileType::RegularFile if stat.st_nlink > 1 => Err(CapError::PermissionDenied(format!(
            "files: {path} has {} hard links; another could be a file outside the grant",
            stat.st_nlink
        ))),
        FileType::RegularFile => Ok(()),
        FileType::Symlink => Err(CapError::PermissionDenied(format!(
            "files: {path} is a symlink; hostaction neither writes through nor replaces symlinks"
        ))),
        FileType::Directory => Err(CapError::Conflict(format!("{path} is a directory"))),
        _ => Err(CapError::Conflict(format!("{path} is not a regular file"))),
    }
}

/// Reads a whole regular file from an open fd, refusing files over the cap.
pub(crate) fn read_all(fd: &OwnedFd, what: &HostPath) -> Result<Vec<u8>, CapError> {
    let stat = rustix::fs::fstat(fd).map_err(|e| CapError::Io(format!("{what}: {e}")))?;
    check_single_file(&stat, what)?;
    let too_big = |size: usize| {
        CapError::InvalidArgument(format!(
            "{what} is {size} bytes or more; the limit is {MAX_FILE_BYTES}"
        ))
    };
    let size = usize::try_from(stat.st_size).unwrap_or(usize::MAX);
    if size > MAX_FILE_BYTES {
        return Err(too_big(size));
    }
    // Read to the end, not to `st_size`: /proc and /sys files report size 0.
    let mut buf = Vec::with_capacity(size);
    let mut chunk = [0u8; 64 * 1024];
    loop {
        match rustix::io::read(fd, &mut chunk) {
            Ok(0) => return Ok(buf),
            Ok(n) if buf.len() + n > MAX_FILE_BYTES => return Err(too_big(buf.len() + n)),
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
            Err(Errno::INTR) => {}
            Err(e) => return Err(CapError::Io(format!("{what}: {e}"))),
        }
    }
}

/// Replaces `name` in `dir` atomically: a temp file in the same directory,
/// written, chmod'ed and fsync'ed (while `journal` syncs the run's undo
/// journal), then renamed over the old one.
pub(crate) fn write_atomically(
    dir: &OwnedFd,
    name: &str,
    contents: &[u8],
    mode: u32,
    owner: Option<(u32, u32)>,
    journal: &Barrier<'_>,
) -> Result<(), Errno> {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let (tmp, fd) = loop {
        let n = COUNTER.fetch_add(1, Ordering::Relaxed);
        let tmp = format!(".hostaction-{}-{n}.tmp", std::process::id());
        match rustix::fs::openat(
            dir,
            &tmp,
            OFlags::WRONLY | OFlags::CREATE | OFlags::EXCL | OFlags::NOFOLLOW | OFlags::CLOEXEC,
            Mode::from_raw_mode(0o600),
        ) {
            Ok(fd) => break (tmp, fd),
            Err(Errno::EXIST) => continue,
            Err(e) => return Err(e),
        }
    };
    let written = (|| {
        let mut rest = contents;
        while !rest.is_empty() {
            match rustix::io::write(&fd, rest) {
                Ok(n) => rest = &rest[n..],
                Err(Errno::INTR) => {}
                Err(e) => return Err(e),
            }
        }
        // Owner before mode, on the descriptor: a chown clears setuid and
        // setgid, and the file is never another's with root's bits, nor
        // named before it is whole.
        if let Some((uid, gid)) = owner {
            rustix::fs::fchown(
                &fd,
                Some(rustix::fs::Uid::from_raw(uid)),
                Some(rustix::fs::Gid::from_raw(gid)),
            )?;
        }
        rustix::fs::fchmod(&fd, Mode::from_raw_mode(mode))?;
        journal.sync_with(|| rustix::fs::fsync(&fd))?;
        rustix::fs::renameat(dir, &tmp, dir, name)
    })();
    if let Err(e) = written {
        // Leave nothing behind; the old file is untouched.
        let _ = rustix::fs::unlinkat(dir, &tmp, AtFlags::empty());
        return Err(e);
    }
    rustix::fs::fsync(dir)
}

fn kind_of(file_type: FileType) -> FileKind {
    match file_type {
        FileType::RegularFile => FileKind::File,
        FileType::Directory => FileKind::Directory,
        FileType::Symlink => FileKind::Symlink,
        _ => FileKind::Other,
    }
}

fn stat_of(stat: &rustix::fs::Stat) -> FileStat {
    let secs = u64::try_from(stat.st_mtime).unwrap_or(0);
    let nanos = stat.st_mtime_nsec;
    FileStat {
        kind: kind_of(FileType::from_raw_mode(stat.st_mode)),
        size: u64::try_from(stat.st_size).unwrap_or(0),
        mode: stat.st_mode & 0o7777,
        modified_ns: secs.saturating_mul(1_000_000_000).saturating_add(nanos),
    }
}

impl files::Host for FilesView<'_> {
    fn ensure_file(
        &mut self,
        path: String,
        contents: Vec<u8>,
        mode: u32,
    ) -> Result<bool, CapError> {
        let scoped = self.scope(&path, Access::Write)?;
        self.check_mode(mode, &scoped.path)?;
        if contents.len() > MAX_FILE_BYTES {
            return Err(CapError::InvalidArgument(format!(
                "contents for {} are {} bytes; the limit is {MAX_FILE_BYTES}",
                scoped.path,
                contents.len()
            )));
        }
        self.check_executable(mode, &contents, &scoped.path)?;
        if let Some(changed) = self.plan_file(&scoped, &contents, mode)? {
            return Ok(changed);
        }
        let (dir, name) = self.open_parent(&scoped)?;
        self.check_kernel_fs(&scoped, &dir, &parent_of(&scoped.path), true)?;
        // What is there now: refused unless a single regular file, read
        // whole (it is the journal's record of what to restore, and the
        // diff's left side).
        let before = match rustix::fs::statat(&dir, name.as_str(), AtFlags::SYMLINK_NOFOLLOW) {
            Err(Errno::NOENT) => None,
            Err(e) => return Err(scoped.err(e)),
            Ok(st) => {
                check_single_file(&st, &scoped.path)?;
                let flags = OFlags::RDONLY | OFlags::NOFOLLOW | OFlags::NONBLOCK;
                let fd =
                    open_beneath(&dir, &name, flags | OFlags::NOCTTY).map_err(|e| scoped.err(e))?;
                let old = read_all(&fd, &scoped.path)?;
                if st.st_mode & 0o7777 == mode && old == contents {
                    return Ok(false);
                }
                Some((st, old))
            }
        };
        let detail = format!("{} bytes, mode {mode:04o}", contents.len());
        let target = scoped.path.to_string();
        let diff = diff::contents(
            &target,
            before
                .as_ref()
                .map(|(st, old)| (&old[..], st.st_mode & 0o7777)),
            Some((&contents, mode)),
        );
        let undo = Undo::Files(FileUndo {
            place: scoped.place(&scoped.path),
            before: before.as_ref().map(|(st, old)| Before::File {
                mode: st.st_mode & 0o7777,
                uid: st.st_uid,
                gid: st.st_gid,
                sha256: digest(old),
            }),
            after: Some(After::File {
                mode,
                sha256: digest(&contents),
            }),
        });
        let blob = before.as_ref().map_or(&[][..], |(_, old)| &old[..]);
        self.shared.effects.apply(
            "files",
            "write-file",
            &target,
            detail,
            Some(diff),
            (undo, blob),
            |journal| {
                write_atomically(&dir, &name, &contents, mode, None, journal)
                    .map_err(|e| scoped.err(e))
            },
        )?;
        self.remember_written(&scoped.path, contents, mode)?;
        Ok(true)
    }

    fn read_file(&mut self, path: String) -> Result<Vec<u8>, CapError> {
        let scoped = self.scope(&path, Access::Read)?;
        if self.shared.effects.mode() == Plan {
            match self.ctx.planned_files.get(&scoped.path) {
                Some(PlannedFile::Written { contents, .. }) => return Ok(contents.clone()),
                Some(PlannedFile::Removed) => return Err(scoped.err(Errno::NOENT)),
                None => {}
            }
        }
        let granted = self.open_granted(&scoped)?;
        // Look before opening for reading: opening a device or a FIFO can have
        // effects of its own, and a hard link could name a file outside.
        let probe =
            open_beneath(&granted, &scoped.rel(), OFlags::PATH).map_err(|e| scoped.err(e))?;
        self.check_kernel_fs(&scoped, &probe, &scoped.path, true)?;
        let seen = rustix::fs::fstat(&probe).map_err(|e| scoped.err(e))?;
        check_single_file(&seen, &scoped.path)?;
        let fd = open_beneath(
            &granted,
            &scoped.rel(),
            OFlags::RDONLY | OFlags::NONBLOCK | OFlags::NOCTTY,
        )
        .map_err(|e| scoped.err(e))?;
        let opened = rustix::fs::fstat(&fd).map_err(|e| scoped.err(e))?;
        if (opened.st_dev, opened.st_ino) != (seen.st_dev, seen.st_ino) {
            return Err(CapError::Conflict(format!(
                "{} was replaced while being opened; try again",
                scoped.path
            )));
        }
        read_all(&fd, &scoped.path)
    }

    fn remove(&mut self, path: String) -> Result<bool, CapError> {
        let scoped = self.scope(&path, Access::Write)?;
        if let Some(removed) = self.plan_remove(&scoped)? {
            return Ok(removed);
        }
        let (dir, name) = match self.open_parent(&scoped) {
            Err(CapError::NotFound(_)) => return Ok(false),
            other => other?,
        };
        self.check_kernel_fs(&scoped, &dir, &parent_of(&scoped.path), true)?;
        let (before, blob) = before_at(&dir, &name).map_err(|e| scoped.err(e))?;
        let flags = match &before {
            None => return Ok(false),
            Some(Before::Dir { .. }) => AtFlags::REMOVEDIR,
            Some(_) => AtFlags::empty(),
        };
        let target = scoped.path.to_string();
        let diff = match &before {
            Some(Before::File { mode, .. }) => diff::contents(&target, Some((&blob, *mode)), None),
            Some(Before::Dir { mode, .. }) => format!("directory removed, mode {mode:04o}"),
            Some(Before::Symlink { target }) => format!("symlink to {target} removed"),
            _ => "removed".to_owned(),
        };
        let undo = Undo::Files(FileUndo {
            place: scoped.place(&scoped.path),
            before,
            after: None,
        });
        self.shared.effects.apply(
            "files",
            "remove",
            &target,
            String::new(),
            Some(diff),
            (undo, &blob),
            |journal| {
                // Only the journal keeps what is removed: durable first.
                journal.sync().map_err(|e| scoped.err(e))?;
                rustix::fs::unlinkat(&dir, name.as_str(), flags).map_err(|e| scoped.err(e))
            },
        )?;
        if self.shared.effects.mode() == Plan {
            self.ctx
                .planned_files
                .set(scoped.path.clone(), PlannedFile::Removed)?;
        }
        Ok(true)
    }

    fn ensure_dir(&mut self, path: String, mode: u32) -> Result<bool, CapError> {
        let scoped = self.scope(&path, Access::Write)?;
        self.check_mode(mode, &scoped.path)?;
        if self.planned(&scoped.path) {
            // Beneath a directory planned, not made: a planned directory
            // is there already (as apply mode would find it); below the
            // deepest planned one, the rest is planned now.
            let depth = scoped.path.components().len();
            return match self.ctx.planned_dirs.planned_depth(&scoped.path) {
                Some(d) if d == depth => Ok(false),
                Some(d) => {
                    let missing = scoped.path.ancestor(d + 1);
                    self.plan_dirs(&missing, &scoped.path, mode)?;
                    Ok(true)
                }
                None => Ok(true),
            };
        }
        let mut changed = false;
        let granted = match self.ctx.host_root.open_dir(&scoped.anchor, &scoped.granted) {
            Ok(fd) => fd,
            Err(Errno::NOENT) => {
                if !self.create_granted(&scoped, mode)? {
                    return Ok(true);
                }
                changed = true;
                self.open_granted(&scoped)?
            }
            Err(e) => return Err(scoped.err(e)),
        };
        // Walk down from the granted directory, creating what is missing; each
        // step is resolved from the granted directory so it cannot leave it.
        let below = scoped.path.components()[scoped.granted.components().len()..].to_vec();
        let mut prefix = String::from(".");
        for (i, part) in below.iter().enumerate() {
            let last = i + 1 == below.len();
            let parent = open_beneath(&granted, &prefix, OFlags::RDONLY | OFlags::DIRECTORY)
                .map_err(|e| scoped.err(e))?;
            prefix = format!("{prefix}/{part}");
            match rustix::fs::statat(&parent, part.as_str(), AtFlags::SYMLINK_NOFOLLOW) {
                Ok(_) => continue,
                Err(Errno::NOENT) => {}
                Err(e) => return Err(scoped.err(e)),
            }
            let depth = scoped.granted.components().len() + i + 1;
            self.check_kernel_fs(&scoped, &parent, &scoped.path.ancestor(depth - 1), true)?;
            if self.shared.effects.mode() == Plan {
                self.plan_dirs(&scoped.path.ancestor(depth), &scoped.path, mode)?;
                return Ok(true);
            }
            let dir_mode = if last { mode } else { 0o755 };
            let made = scoped.path.ancestor(depth);
            let target = made.to_string();
            self.shared.effects.apply(
                "files",
                "create-dir",
                &target,
                format!("mode {dir_mode:04o}"),
                Some(format!("directory created, mode {dir_mode:04o}")),
                (scoped.dir_made(&made, dir_mode), &[]),
                // Synced at the next barrier: a power cut before it may
                // leave this directory, empty, where recovery does not
                // know of it (a flush per directory is most of a fresh
                // run's cost).
                |_| make_dir(&parent, part, dir_mode).map_err(|e| scoped.err(e)),
            )?;
            changed = true;
        }
        let fd = open_beneath(&granted, &prefix, OFlags::RDONLY | OFlags::DIRECTORY)
            .map_err(|e| scoped.err(e))?;
        self.check_kernel_fs(&scoped, &fd, &scoped.path, true)?;
        let st = rustix::fs::fstat(&fd).map_err(|e| scoped.err(e))?;
        if st.st_mode & 0o7777 != mode && scoped.path == scoped.granted {
            // The node's directory: its mode (and owner) are the node's.
            return Err(CapError::PermissionDenied(format!(
                "files: {} is a granted directory; hostaction never changes its mode or owner \
                 (it is {:04o}, the action asked {mode:04o})",
                scoped.path,
                st.st_mode & 0o7777
            )));
        }
        if st.st_mode & 0o7777 != mode {
            let target = scoped.path.to_string();
            let old = st.st_mode & 0o7777;
            let undo = Undo::Files(FileUndo {
                place: scoped.place(&scoped.path),
                before: Some(Before::Dir {
                    mode: old,
                    uid: st.st_uid,
                    gid: st.st_gid,
                }),
                after: Some(After::Dir { mode }),
            });
            self.shared.effects.apply(
                "files",
                "chmod",
                &target,
                format!("mode {mode:04o}"),
                Some(diff::attribute(
                    "mode",
                    format!("{old:04o}"),
                    format!("{mode:04o}"),
                )),
                (undo, &[]),
                |journal| {
                    journal.sync().map_err(|e| scoped.err(e))?;
                    rustix::fs::fchmod(&fd, Mode::from_raw_mode(mode)).map_err(|e| scoped.err(e))
                },
            )?;
            changed = true;
        }
        Ok(changed)
    }

    fn list_dir(&mut self, path: String) -> Result<Vec<DirEntry>, CapError> {
        let scoped = self.scope(&path, Access::Read)?;
        if self.shared.effects.mode() == Plan
            && self.ctx.planned_dirs.mode_of(&scoped.path).is_some()
        {
            // A planned directory: only what the plan put in it.
            return self.with_planned(&scoped, Vec::new());
        }
        let granted = self.open_granted(&scoped)?;
        let fd = open_beneath(&granted, &scoped.rel(), OFlags::RDONLY | OFlags::DIRECTORY)
            .map_err(|e| scoped.err(e))?;
        self.check_kernel_fs(&scoped, &fd, &scoped.path, true)?;
        let dir = rustix::fs::Dir::read_from(&fd).map_err(|e| scoped.err(e))?;
        let mut entries = Vec::new();
        for entry in dir {
            let entry = entry.map_err(|e| scoped.err(e))?;
            let name = entry.file_name().to_string_lossy().into_owned();
            if name == "." || name == ".." {
                continue;
            }
            if entries.len() == MAX_DIR_ENTRIES {
                return Err(CapError::InvalidArgument(format!(
                    "{} has more than {MAX_DIR_ENTRIES} entries",
                    scoped.path
                )));
            }
            entries.push(DirEntry {
                name,
                kind: kind_of(entry.file_type()),
            });
        }
        if self.shared.effects.mode() == Plan {
            return self.with_planned(&scoped, entries);
        }
        entries.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(entries)
    }

    fn stat(&mut self, path: String) -> Result<Option<FileStat>, CapError> {
        let scoped = self.scope(&path, Access::Read)?;
        if let Some(planned) = self.plan_stat(&scoped) {
            return Ok(planned);
        }
        let granted = match self.open_granted(&scoped) {
            Err(CapError::NotFound(_)) => return Ok(None),
            other => other?,
        };
        let result = match scoped.parent_and_name() {
            // The granted directory itself.
            Err(_) => {
                self.check_kernel_fs(&scoped, &granted, &scoped.path, true)?;
                rustix::fs::fstat(&granted)
            }
            Ok((parent, name)) => {
                match open_beneath(&granted, &parent, OFlags::PATH | OFlags::DIRECTORY) {
                    Ok(dir) => match open_beneath(&dir, name, OFlags::PATH | OFlags::NOFOLLOW) {
                        Ok(fd) => {
                            self.check_kernel_fs(&scoped, &fd, &scoped.path, false)?;
                            rustix::fs::fstat(&fd)
                        }
                        Err(Errno::NOENT) => {
                            // Even absence tells something (`/proc/<pid>`).
                            self.check_kernel_fs(&scoped, &dir, &parent_of(&scoped.path), true)?;
                            Err(Errno::NOENT)
                        }
                        Err(e) => Err(e),
                    },
                    Err(e) => Err(e),
                }
            }
        };
        match result {
            Ok(st) => Ok(Some(stat_of(&st))),
            Err(Errno::NOENT) => Ok(None),
            Err(e) => Err(scoped.err(e)),
        }
    }
}
