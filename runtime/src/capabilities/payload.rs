//! The `payload` capability (always allowed): read-only access to the files
//! shipped with the action — the payload layers of its artifact, or the
//! files given with `hostaction run --payload`.

use std::os::unix::fs::FileExt;
use std::sync::Arc;

pub use hostaction_distribution::payload::{Payload, PayloadFile};

use wasmtime::component::{HasData, Linker};

use super::{CapError, Shared};
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

/// The `payload` capability's state in a run: the action's files.
pub struct PayloadCtx {
    payload: Arc<Payload>,
}

impl PayloadCtx {
    /// The context of a run shipped with `payload`.
    pub fn new(payload: Arc<Payload>) -> Self {
        Self { payload }
    }
}

/// The `payload` capability as a call sees it.
pub struct PayloadView<'a> {
    pub(crate) ctx: &'a mut PayloadCtx,
    pub(crate) shared: &'a mut Shared,
}

super::types_host!(PayloadView<'_>);

struct HasPayload;

impl HasData for HasPayload {
    type Data<'a> = PayloadView<'a>;
}

/// Links `hostaction:host/payload`, each call made on the view `view` gives.
pub(crate) fn add_to_linker<T: Send + 'static>(
    linker: &mut Linker<T>,
    view: fn(&mut T) -> PayloadView<'_>,
) -> wasmtime::Result<()> {
    payload::add_to_linker::<T, HasPayload>(linker, view)
}

impl payload::Host for PayloadView<'_> {
    fn files(&mut self) -> wasmtime::Result<Vec<payload::PayloadFile>> {
        Ok(self
            .ctx
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
        self.shared.check_deadline()?;
        let file = find(&self.ctx.payload, &name)?;
        if file.size > MAX_READ_BYTES {
            return Err(CapError::InvalidArgument(format!(
                "payload {name:?} is {} bytes; read returns at most {MAX_READ_BYTES}: use read-at",
                file.size
            )));
        }
        read_range(file, 0, file.size)
    }

    fn read_at(&mut self, name: String, offset: u64, len: u32) -> Result<Vec<u8>, CapError> {
        self.shared.check_deadline()?;
        let file = find(&self.ctx.payload, &name)?;
        if u64::from(len) > MAX_READ_BYTES {
            return Err(CapError::InvalidArgument(format!(
                "read-at of {len} bytes; at most {MAX_READ_BYTES} per call"
            )));
        }
        read_range(file, offset, u64::from(len))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::capabilities::testing::{self, past_deadline};
    use crate::effects::Mode;
    use payload::Host as _;

    /// A payload of `files` (name, contents) in a temporary directory.
    fn payload(files: &[(&str, &[u8])]) -> (tempfile::TempDir, Payload) {
        let dir = tempfile::tempdir().expect("tempdir");
        let given: Vec<_> = files
            .iter()
            .map(|(name, bytes)| {
                let path = dir.path().join(name);
                std::fs::write(&path, bytes).expect("payload file");
                ((*name).to_owned(), path)
            })
            .collect();
        let payload = Payload::from_files(&given).expect("payload");
        (dir, payload)
    }

    fn ctx(payload: Payload) -> (PayloadCtx, Shared) {
        (
            PayloadCtx::new(Arc::new(payload)),
            testing::shared(Mode::Apply),
        )
    }

    #[test]
    fn files_are_listed_sorted_by_name_with_their_digests() {
        let (_dir, p) = payload(&[("b", b"2"), ("a", b"1")]);
        let (mut ctx, mut shared) = ctx(p);
        let mut view = PayloadView {
            ctx: &mut ctx,
            shared: &mut shared,
        };
        let files = view.files().expect("files");
        let seen: Vec<_> = files.iter().map(|f| (f.name.as_str(), f.size)).collect();
        assert_eq!(seen, [("a", 1), ("b", 1)]);
        assert_eq!(
            files[0].digest,
            hostaction_distribution::artifact::sha256(b"1")
        );
    }

    #[test]
    fn unknown_name_is_not_found() {
        let (_dir, p) = payload(&[("a", b"1")]);
        let (mut ctx, mut shared) = ctx(p);
        let mut view = PayloadView {
            ctx: &mut ctx,
            shared: &mut shared,
        };
        assert!(matches!(
            view.read("../a".into()),
            Err(CapError::NotFound(_))
        ));
        assert!(matches!(
            view.read_at("b".into(), 0, 1),
            Err(CapError::NotFound(_))
        ));
    }

    #[test]
    fn read_at_is_clamped_to_the_end_of_the_file() {
        let (_dir, p) = payload(&[("a", b"hello")]);
        let (mut ctx, mut shared) = ctx(p);
        let mut view = PayloadView {
            ctx: &mut ctx,
            shared: &mut shared,
        };
        assert_eq!(view.read_at("a".into(), 3, 100).expect("tail"), b"lo");
        assert!(
            view.read_at("a".into(), 99, 10)
                .expect("past the end")
                .is_empty()
        );
        assert!(
            view.read_at("a".into(), u64::MAX, u32::MAX >> 8)
                .expect("far past")
                .is_empty()
        );
        assert_eq!(view.read("a".into()).expect("whole"), b"hello");
    }

    #[test]
    fn read_at_longer_than_the_per_call_limit_is_an_invalid_argument() {
        let (_dir, p) = payload(&[("a", b"hello")]);
        let (mut ctx, mut shared) = ctx(p);
        let mut view = PayloadView {
            ctx: &mut ctx,
            shared: &mut shared,
        };
        let len = u32::try_from(MAX_READ_BYTES + 1).expect("fits");
        assert!(matches!(
            view.read_at("a".into(), 0, len),
            Err(CapError::InvalidArgument(_))
        ));
    }

    #[test]
    fn read_of_a_file_over_the_per_call_limit_is_an_invalid_argument() {
        let (_dir, small) = payload(&[("big", b"x")]);
        // The limit is judged by the recorded size, before any byte is read.
        let p = Payload::new(vec![PayloadFile {
            size: MAX_READ_BYTES + 1,
            ..small.files()[0].clone()
        }]);
        let (mut ctx, mut shared) = ctx(p);
        let mut view = PayloadView {
            ctx: &mut ctx,
            shared: &mut shared,
        };
        match view.read("big".into()) {
            Err(CapError::InvalidArgument(m)) => assert!(m.contains("read-at"), "{m}"),
            other => panic!("expected invalid-argument, got {other:?}"),
        }
    }

    #[test]
    fn read_after_the_deadline_traps() {
        let (_dir, p) = payload(&[("a", b"1")]);
        let mut ctx = PayloadCtx::new(Arc::new(p));
        let mut shared = past_deadline(Mode::Apply);
        let mut view = PayloadView {
            ctx: &mut ctx,
            shared: &mut shared,
        };
        let err = view.read("a".into()).expect_err("past the deadline");
        assert!(testing::is_deadline(&err), "{err:?}");
    }
}
