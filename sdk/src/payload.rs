//! The action's payload: read-only files shipped in its own artifact
//! (`hostaction push --payload NAME=FILE`), such as the plugin binaries a
//! CNI installer puts in place.
//!
//! Always allowed: reading what the action was shipped with needs no grant
//! and changes nothing.

use crate::Error;
use crate::bindings::hostaction::host::payload as wit;

pub use wit::PayloadFile;

/// Bytes one [`read`] or [`read_at`] returns at most (16 MiB).
pub const MAX_READ_BYTES: u64 = 16 << 20;

/// The payload files, sorted by name.
pub fn files() -> Vec<PayloadFile> {
    wit::files()
}

/// A whole payload file (at most [`MAX_READ_BYTES`]); [`Error::NotFound`]
/// for a name the payload lacks.
pub fn read(name: &str) -> Result<Vec<u8>, Error> {
    wit::read(name)
}

/// Up to `len` bytes from `offset`; fewer at the end of the file.
pub fn read_at(name: &str, offset: u64, len: u32) -> Result<Vec<u8>, Error> {
    wit::read_at(name, offset, len)
}
