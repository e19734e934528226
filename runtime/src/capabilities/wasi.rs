//! The locked-down WASI a component gets when it imports WASI (as every
//! `wasm32-wasip2` Rust, Python or JavaScript component does): no preopened
//! directories, no environment, no arguments, no sockets, no name lookups,
//! stdin closed; stdout and stderr go into the run's log.

use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};

use wasmtime_wasi::cli::{IsTerminal, StdoutStream};
use wasmtime_wasi::p2::{OutputStream, Pollable, StreamError};
use wasmtime_wasi::{WasiCtx, WasiCtxView, WasiView};

use super::RunState;
use super::log::{RunLog, Source};

impl WasiView for RunState {
    fn ctx(&mut self) -> WasiCtxView<'_> {
        WasiCtxView {
            ctx: &mut self.wasi,
            table: &mut self.table,
        }
    }
}

/// A WASI context that gives nothing but clocks, randomness and a log.
pub(crate) fn locked_down(log: &Arc<Mutex<RunLog>>) -> WasiCtx {
    WasiCtx::builder()
        .stdout(LogStream::new(log, Source::Stdout))
        .stderr(LogStream::new(log, Source::Stderr))
        .allow_tcp(false)
        .allow_udp(false)
        .allow_ip_name_lookup(false)
        .socket_addr_check(|_, _| Box::pin(async { false }))
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
