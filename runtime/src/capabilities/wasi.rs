//! The locked-down WASI a component gets when it imports WASI (as every
//! `wasm32-wasip2` Rust, Python or JavaScript component does): no preopened
//! directories, no environment, no arguments, no sockets, no name lookups,
//! stdin closed; stdout and stderr go into the run's log.
//!
//! **Waits end at the run's deadline.** The epoch deadline interrupts only
//! Wasm code; a guest blocked in a host call is not running any. The one
//! WASI call a guest can wait in is `wasi:io/poll` (`poll`, and
//! `pollable.block`): `sleep()`, `nanosleep`, `std::thread::sleep` and
//! every wait on a clock (even `Deadline::Never`, a sleep past what an
//! `Instant` can hold) come down to it. We link our own `wasi:io/poll` over
//! wasmtime-wasi's: the same wait, raced in the same blocking `block_on`
//! against the run's deadline (`tokio::time::timeout_at`); at the deadline
//! the call traps with [`RunEnd::Deadline`], and the run ends as `deadline
//! exceeded` at once, without waiting for the guest to reach an epoch check.
//!
//! Why this and not async wasmtime with a timeout around each run: the engine
//! stays sync (no fiber per run, no async runtime in the CLI), and what is
//! dropped at the deadline is only the pollables' readiness futures, which
//! `poll` itself drops for every pollable that is not ready — never a
//! suspended call into Wasm, which is what wasmtime's advisories warn about
//! dropping. Bounding `poll` rather than clamping the clock's pollables alone
//! also covers any pollable a component could hold.
//!
//! The other calls that could block, checked in this context
//! (`tests/tests/all/hostile.rs` makes the hostile ones): `blocking-read` and
//! `blocking-skip` on stdin see a closed stream at once; writes and flushes
//! of stdout and stderr go into the log, which never pushes back
//! ([`LogStream`]); TCP and UDP sockets cannot be created and name lookups
//! are refused before any resolver runs; with no preopens there is no file
//! descriptor to read or write; `poll` on an empty list traps.

use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Instant;

use wasmtime::component::{HasData, Linker, Resource, ResourceTable};
use wasmtime_wasi::cli::{IsTerminal, StdoutStream};
use wasmtime_wasi::p2::bindings::io::poll as async_poll;
use wasmtime_wasi::p2::bindings::sync::io::poll as sync_poll;
use wasmtime_wasi::p2::{DynPollable, OutputStream, Pollable, StreamError};
use wasmtime_wasi::{WasiCtx, WasiCtxView, WasiView};

use super::RunEnd;
use super::log::{LogCtx, RunLog, Source};

/// The WASI state of a run: the locked-down context and the resource table
/// its streams and pollables live in.
pub struct WasiState {
    pub(crate) ctx: WasiCtx,
    pub(crate) table: ResourceTable,
}

impl WasiState {
    /// A WASI context that gives nothing but clocks, randomness and the
    /// run's log, and a table bounded by [`super::MAX_RESOURCES`].
    pub(crate) fn locked_down(log: &LogCtx) -> Self {
        Self {
            ctx: locked_down(log.shared()),
            table: super::resource_table(),
        }
    }

    /// What wasmtime-wasi's own interfaces are linked with.
    pub(crate) fn view(&mut self) -> WasiCtxView<'_> {
        WasiCtxView {
            ctx: &mut self.ctx,
            table: &mut self.table,
        }
    }
}

/// `wasi:io/poll` as a call sees it: the table its pollables are in, and the
/// run's deadline its waits end at.
pub struct PollView<'a> {
    pub(crate) table: &'a mut ResourceTable,
    pub(crate) deadline: Instant,
}

struct HasPoll;

impl HasData for HasPoll {
    type Data<'a> = PollView<'a>;
}

/// Links wasmtime-wasi's WASI 0.2 interfaces, with `wasi:io/poll` replaced by
/// one whose waits end at the run's deadline (on the view `poll` gives).
pub(crate) fn add_to_linker<T: WasiView + Send + 'static>(
    linker: &mut Linker<T>,
    poll: fn(&mut T) -> PollView<'_>,
) -> wasmtime::Result<()> {
    wasmtime_wasi::p2::add_to_linker_sync(linker)?;
    linker.allow_shadowing(true);
    let shadowed = sync_poll::add_to_linker::<T, HasPoll>(linker, poll);
    linker.allow_shadowing(false);
    shadowed
}

impl sync_poll::Host for PollView<'_> {
    fn poll(&mut self, pollables: Vec<Resource<DynPollable>>) -> wasmtime::Result<Vec<u32>> {
        until_deadline(
            self.deadline,
            async_poll::Host::poll(&mut *self.table, pollables),
        )
    }
}

impl sync_poll::HostPollable for PollView<'_> {
    fn ready(&mut self, pollable: Resource<DynPollable>) -> wasmtime::Result<bool> {
        // Never waits: it looks once.
        sync_poll::HostPollable::ready(&mut *self.table, pollable)
    }

    fn block(&mut self, pollable: Resource<DynPollable>) -> wasmtime::Result<()> {
        until_deadline(
            self.deadline,
            async_poll::HostPollable::block(&mut *self.table, pollable),
        )
    }

    fn drop(&mut self, pollable: Resource<DynPollable>) -> wasmtime::Result<()> {
        sync_poll::HostPollable::drop(&mut *self.table, pollable)
    }
}

/// Waits for `wait`, or traps once the run's `deadline` has passed.
fn until_deadline<T>(
    deadline: Instant,
    wait: impl Future<Output = wasmtime::Result<T>>,
) -> wasmtime::Result<T> {
    let deadline = tokio::time::Instant::from_std(deadline);
    // The timer is made inside the runtime `in_tokio` enters: it needs its clock.
    match wasmtime_wasi::runtime::in_tokio(
        async move { tokio::time::timeout_at(deadline, wait).await },
    ) {
        Ok(done) => done,
        Err(_elapsed) => Err(wasmtime::Error::new(RunEnd::Deadline("in a WASI wait"))),
    }
}

/// The most random bytes one call may ask for (a larger ask traps).
pub const MAX_RANDOM_BYTES: u64 = 1 << 20;

/// A WASI context that gives nothing but clocks, randomness and a log.
fn locked_down(log: &Arc<Mutex<RunLog>>) -> WasiCtx {
    WasiCtx::builder()
        .stdout(LogStream::new(log, Source::Stdout))
        .stderr(LogStream::new(log, Source::Stderr))
        .allow_tcp(false)
        .allow_udp(false)
        .allow_ip_name_lookup(false)
        .socket_addr_check(|_, _| Box::pin(async { false }))
        // The host allocates what a guest asks for before copying it over:
        // wasmtime's default (64 MiB a call) is more than a run's memory.
        .max_random_size(MAX_RANDOM_BYTES)
        .build()
}

/// stdout or stderr of a guest, written into the run's log.
#[derive(Clone)]
struct LogStream {
    log: Arc<Mutex<RunLog>>,
    source: Source,
}

impl LogStream {
    fn new(log: &Arc<Mutex<RunLog>>, source: Source) -> Self {
        Self {
            log: Arc::clone(log),
            source,
        }
    }

    fn write(&self, bytes: &[u8]) -> Result<(), String> {
        self.log
            .lock()
            .map_err(|_| "run log lock poisoned".to_owned())?
            .write_stream(self.source, bytes);
        Ok(())
    }
}

impl IsTerminal for LogStream {
    fn is_terminal(&self) -> bool {
        false
    }
}

impl StdoutStream for LogStream {
    fn p2_stream(&self) -> Box<dyn OutputStream> {
        Box::new(self.clone())
    }

    fn async_stream(&self) -> Box<dyn tokio::io::AsyncWrite + Send + Sync> {
        Box::new(self.clone())
    }
}

/// The log never pushes back: a full log drops and counts, it does not block
/// or fail the guest's writes.
const ALWAYS_WRITABLE: usize = 64 * 1024;

impl OutputStream for LogStream {
    fn write(&mut self, bytes: bytes::Bytes) -> Result<(), StreamError> {
        LogStream::write(self, &bytes).map_err(|e| StreamError::Trap(wasmtime::format_err!(e)))
    }

    fn flush(&mut self) -> Result<(), StreamError> {
        Ok(())
    }

    fn check_write(&mut self) -> Result<usize, StreamError> {
        Ok(ALWAYS_WRITABLE)
    }
}

#[wasmtime_wasi::async_trait]
impl Pollable for LogStream {
    async fn ready(&mut self) {}
}

impl tokio::io::AsyncWrite for LogStream {
    fn poll_write(
        self: Pin<&mut Self>,
        _cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Poll::Ready(
            LogStream::write(&self, buf)
                .map(|()| buf.len())
                .map_err(std::io::Error::other),
        )
    }

    fn poll_flush(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Poll::Ready(Ok(()))
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[test]
    fn wait_that_never_ends_traps_at_the_deadline() {
        let deadline = Instant::now() + Duration::from_millis(20);
        let err = until_deadline(deadline, std::future::pending::<wasmtime::Result<()>>())
            .expect_err("the deadline ends it");
        assert!(
            matches!(err.downcast_ref::<RunEnd>(), Some(RunEnd::Deadline(_))),
            "{err:?}"
        );
    }

    #[test]
    fn wait_that_is_ready_returns_its_value() {
        let deadline = Instant::now() + Duration::from_secs(60);
        let value = until_deadline(deadline, async { Ok(7) }).expect("ready");
        assert_eq!(value, 7);
    }

    #[test]
    fn stdout_and_stderr_go_into_the_log_and_never_push_back() {
        let log = LogCtx::new(1000);
        let mut out = LogStream::new(log.shared(), Source::Stdout);
        let mut err = LogStream::new(log.shared(), Source::Stderr);
        assert_eq!(
            OutputStream::check_write(&mut out).expect("writable"),
            ALWAYS_WRITABLE
        );
        OutputStream::write(&mut out, bytes::Bytes::from_static(b"out\n")).expect("stdout");
        OutputStream::write(&mut err, bytes::Bytes::from_static(b"err\n")).expect("stderr");
        drop((out, err));
        let (lines, _) = log.finish();
        let seen: Vec<_> = lines
            .iter()
            .map(|l| (l.source, l.message.as_str()))
            .collect();
        assert_eq!(seen, [(Source::Stdout, "out"), (Source::Stderr, "err")]);
    }
}
