//! The `payload` capability (always allowed): read-only access to the files
//! shipped with the action — the payload layers of its artifact, or the
//! files given with `hostaction run --payload`.

use std::os::unix::fs::FileExt;

pub use hostaction_distribution::payload::{Payload, PayloadFile};

use super::{CapError, RunState};
use crate::bindings::hostaction::host::payload;

/// Bytes one `read` or `read-at` returns at most.
pub const MAX_READ_BYTES: u64 = 16 << 20;

/// The payload file named `name`.
fn find<'a>(payload: &'a Payload, name: &str) -> Result<&'a PayloadFile, CapError> {
    let files = payload.files();
    files
        .binary_search_by(|f| f.name.as_str().cmp(name))
        .map(|i| &files[i])
        .map_err(|_| CapError::NotFound(format!("no payload file named {name:?}")))
}

fn read_range(file: &PayloadFile, offset: u64, len: u64) -> Result<Vec<u8>, CapError> {
    let io = |e: std::io::Error| CapError::Io(format!("payload {}: {e}", file.name));
    let len = len.min(file.size.saturating_sub(offset));
    let mut buf = vec![0; usize::try_from(len).unwrap_or(0)];
    file.file.read_exact_at(&mut buf, offset).map_err(io)?;
    Ok(buf)
}

impl payload::Host for RunState {
    fn files(&mut self) -> wasmtime::Result<Vec<payload::PayloadFile>> {
        Ok(self
            .payload
            .files()
            .iter()
            .map(|f| payload::PayloadFile {
                name: f.name.clone(),
                size: f.size,
                digest: f.digest.clone(),
            })
            .collect())
    }

    fn read(&mut self, name: String) -> Result<Vec<u8>, CapError> {
        self.check_deadline()?;
        let file = find(&self.payload, &name)?;
        if file.size > MAX_READ_BYTES {
            return Err(CapError::InvalidArgument(format!(
                "payload {name:?} is {} bytes; read returns at most {MAX_READ_BYTES}: use read-at",
                file.size
            )));
        }
        read_range(file, 0, file.size)
    }

    fn read_at(&mut self, name: String, offset: u64, len: u32) -> Result<Vec<u8>, CapError> {
        self.check_deadline()?;
        let file = find(&self.payload, &name)?;
        if u64::from(len) > MAX_READ_BYTES {
            return Err(CapError::InvalidArgument(format!(
                "read-at of {len} bytes; at most {MAX_READ_BYTES} per call"
            )));
        }
        read_range(file, offset, u64::from(len))
    }
}
