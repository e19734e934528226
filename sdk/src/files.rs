//! The `files` capability: files beneath the directories the grant names.
//!
//! Paths are host-absolute as the action sees them (`/opt/cni/bin/bridge`);
//! the host resolves them beneath the granted directories and refuses any
//! path outside them with [`Error::PermissionDenied`]. These are thin
//! wrappers over the generated bindings that take borrowed arguments.

use crate::Error;
use crate::bindings::hostaction::host::files as wit;

pub use wit::{DirEntry, FileKind, FileStat};

/// Ensures `path` is a regular file holding exactly `contents` with permission
/// bits `mode` (`0o644`), replacing it atomically. Returns whether anything
/// changed: identical bytes and mode leave the file untouched, which is what
/// makes an action idempotent. Needs write access to the path.
pub fn ensure_file(path: &str, contents: &[u8], mode: u32) -> Result<bool, Error> {
    wit::ensure_file(path, contents, mode)
}

/// Reads a whole regular file. Needs read access to the path.
pub fn read_file(path: &str) -> Result<Vec<u8>, Error> {
    wit::read_file(path)
}

/// Removes a file, a symlink or an empty directory. Returns false when there
/// was nothing to remove. Needs write access to the path.
pub fn remove(path: &str) -> Result<bool, Error> {
    wit::remove(path)
}

/// Ensures `path` is a directory (creating missing parents beneath the granted
/// directory) with permission bits `mode` on the last one. Returns whether
/// anything changed. Needs write access to the path.
pub fn ensure_dir(path: &str, mode: u32) -> Result<bool, Error> {
    wit::ensure_dir(path, mode)
}

/// Lists a directory, sorted by name. Needs read access to the path.
pub fn list_dir(path: &str) -> Result<Vec<DirEntry>, Error> {
    wit::list_dir(path)
}

/// Describes a path without following a final symlink, or returns `None` when
/// it does not exist. Needs read access to the path.
pub fn stat(path: &str) -> Result<Option<FileStat>, Error> {
    wit::stat(path)
}
