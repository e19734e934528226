//! What the node keeps on disk and must trust: the directories of the
//! module store and the compile cache, and files replaced whole.

use std::path::{Path, PathBuf};

/// Why a directory (owner `dir_uid`, mode `dir_mode`) holding an entry
/// owned by `entry_uid` lets someone other than root or this process's user
/// replace that entry; `None` when it does not.
pub fn untrusted_dir(dir_uid: u32, dir_mode: u32, entry_uid: Option<u32>) -> Option<String> {
    let me = rustix::process::geteuid().as_raw();
    let trusted = |uid: u32| uid == 0 || uid == me;
    if !trusted(dir_uid) {
        Some(format!("is owned by uid {dir_uid}"))
    } else if dir_mode & 0o022 != 0 && !(dir_mode & 0o1000 != 0 && entry_uid.is_some_and(trusted)) {
        Some(format!(
            "is writable by {} (mode {dir_mode:04o})",
            if dir_mode & 0o002 != 0 {
                "others"
            } else {
                "its group"
            },
        ))
    } else {
        None
    }
}

/// `dir` resolved (symlinks followed), after checking that every directory
/// above it passes the rule granted directories do (the files capability's walk):
/// code or artifacts kept there are trusted, so no other user may be able
/// to swap a directory on the way for their own. The directory itself is
/// its opener's to check.
pub fn trusted_directory(dir: &Path) -> Result<PathBuf, String> {
    use std::os::unix::fs::MetadataExt;
    let resolved = std::fs::canonicalize(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    let mut entry_uid = None;
    for ancestor in resolved.ancestors() {
        let meta = std::fs::symlink_metadata(ancestor)
            .map_err(|e| format!("{}: {e}", ancestor.display()))?;
        if ancestor != resolved
            && let Some(why) = untrusted_dir(meta.uid(), meta.mode() & 0o7777, entry_uid)
        {
            return Err(format!(
                "{} {why}: whoever can write there can replace {} (only root or this user \
                 may, or a sticky directory whose entry is theirs)",
                ancestor.display(),
                resolved.display()
            ));
        }
        entry_uid = Some(meta.uid());
    }
    Ok(resolved)
}

/// Replaces `path` with a file of `bytes`, all or nothing, also across a
/// crash: written to `staging` (in the same directory), synced, renamed over
/// `path`, then the directory synced so the rename itself is durable. On
/// failure `staging` is removed and `path` is as it was.
///
/// `staging` is always a new file: whatever is there (a crash's leftover, a
/// symlink or a hard link someone planted, another writer's half-written
/// file) is unlinked first and the file made with `O_EXCL`, so no other
/// file is ever written through it, and of two writers using the same
/// staging name only one renames a whole file into place. A directory that
/// cannot be synced after the rename is logged, not returned: the file is
/// in place.
///
/// The one way hostaction replaces a file whole: the module store's
/// manifests, precompiled code, the agent's run journal and static state.
/// (The files capability writes beneath a directory fd, its own way.)
pub fn write_atomically(staging: &Path, path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let written = write_synced(staging, bytes).and_then(|()| std::fs::rename(staging, path));
    if written.is_err() {
        let _ = std::fs::remove_file(staging);
        return written;
    }
    let dir = match path.parent() {
        Some(dir) if !dir.as_os_str().is_empty() => dir,
        _ => Path::new("."),
    };
    if let Err(error) = std::fs::File::open(dir).and_then(|d| d.sync_all()) {
        tracing::warn!(dir = %dir.display(), %error, "could not sync the directory after a rename");
    }
    Ok(())
}

fn write_synced(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    match std::fs::remove_file(path) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(e),
        _ => {}
    }
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o644)
        .custom_flags(rustix::fs::OFlags::NOFOLLOW.bits() as i32)
        .open(path)?;
    file.write_all(bytes)?;
    file.sync_all()
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn write_atomically_replaces_the_file_and_leaves_no_staging() {
        let dir = tempfile::tempdir().unwrap();
        let (staging, path) = (dir.path().join("f.tmp"), dir.path().join("f"));
        std::fs::write(&path, b"old").unwrap();
        // A staging file a crash left behind is replaced, not an obstacle.
        std::fs::write(&staging, b"half").unwrap();
        write_atomically(&staging, &path, b"new").unwrap();
        assert_eq!(std::fs::read(&path).unwrap(), b"new");
        assert!(!staging.exists());
    }

    #[test]
    fn write_atomically_writes_neither_through_a_symlink_nor_a_hard_link_at_staging() {
        let dir = tempfile::tempdir().unwrap();
        let victim = dir.path().join("victim");
        std::fs::write(&victim, b"keep").unwrap();
        let (staging, path) = (dir.path().join("f.tmp"), dir.path().join("f"));
        std::os::unix::fs::symlink(&victim, &staging).unwrap();
        write_atomically(&staging, &path, b"new").unwrap();
        assert_eq!(std::fs::read(&victim).unwrap(), b"keep");
        std::fs::hard_link(&victim, &staging).unwrap();
        write_atomically(&staging, &path, b"newer").unwrap();
        assert_eq!(std::fs::read(&victim).unwrap(), b"keep");
        assert_eq!(std::fs::read(&path).unwrap(), b"newer");
    }
}
