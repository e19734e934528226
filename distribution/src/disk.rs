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

/// Writes `bytes` to `staging` (a new file), fsyncs it and renames it to
/// `path` (in the same directory): readers see the whole file or none. On
/// failure `staging` is removed.
pub fn write_atomically(staging: &Path, path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let written = write_synced(staging, bytes).and_then(|()| std::fs::rename(staging, path));
    if written.is_err() {
        let _ = std::fs::remove_file(staging);
    }
    written
}

fn write_synced(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    use std::io::Write;
    let mut file = std::fs::File::create_new(path)?;
    file.write_all(bytes)?;
    file.sync_all()
}
