//! The `log` capability (always allowed) and the run's bounded log, which also
//! receives the guest's stdout and stderr through [`super::wasi`].

use std::sync::{Arc, Mutex};

use serde::Serialize;
use wasmtime::component::{HasData, Linker};

use crate::bindings::hostaction::host::log::{self, Level};

/// Where a log line came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Source {
    /// `hostaction:host/log`.
    Log,
    /// The guest's WASI stdout.
    Stdout,
    /// The guest's WASI stderr.
    Stderr,
}

/// One line of a run's log.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct LogLine {
    /// Severity (`info` for stdout, `warn` for stderr).
    pub level: &'static str,
    /// Where it came from.
    pub source: Source,
    /// The text (guest-supplied; never interpreted).
    pub message: String,
}

/// What each line costs against the log limit besides its text, so that a
/// guest writing empty lines cannot grow the log without bound.
const LINE_OVERHEAD: usize = 64;

/// A run's log, capped at a number of bytes; what does not fit is counted.
#[derive(Debug)]
pub struct RunLog {
    lines: Vec<LogLine>,
    bytes: usize,
    limit: usize,
    dropped_bytes: usize,
    /// Unterminated output of stdout and stderr, completed by later writes.
    partial: [Vec<u8>; 2],
}

impl RunLog {
    /// An empty log holding at most `limit` bytes of messages.
    pub fn new(limit: usize) -> Self {
        Self {
            lines: Vec::new(),
            bytes: 0,
            limit,
            dropped_bytes: 0,
            partial: [Vec::new(), Vec::new()],
        }
    }

    /// Appends a line, or counts it as dropped once the log is full.
    pub fn push(&mut self, level: &'static str, source: Source, message: String) {
        // The guest controls the size and number of messages: never hold more
        // than the cap.
        let cost = message.len() + LINE_OVERHEAD;
        if self.bytes + cost > self.limit {
            self.dropped_bytes += message.len();
            return;
        }
        self.bytes += cost;
        self.lines.push(LogLine {
            level,
            source,
            message,
        });
    }

    /// Appends raw stdout/stderr bytes, one line per newline.
    pub fn write_stream(&mut self, source: Source, bytes: &[u8]) {
        let (i, level) = match source {
            Source::Stderr => (1, "warn"),
            _ => (0, "info"),
        };
        if self.bytes >= self.limit {
            self.dropped_bytes += bytes.len();
            return;
        }
        let mut partial = std::mem::take(&mut self.partial[i]);
        partial.extend_from_slice(bytes);
        let mut rest = partial.as_slice();
        while let Some(nl) = rest.iter().position(|&b| b == b'\n') {
            self.push(
                level,
                source,
                String::from_utf8_lossy(&rest[..nl]).into_owned(),
            );
            rest = &rest[nl + 1..];
        }
        // A guest printing without newlines must not grow this buffer past the cap.
        if rest.len() > self.limit {
            self.dropped_bytes += rest.len();
            rest = &[];
        }
        self.partial[i] = rest.to_vec();
    }

    /// Flushes unterminated output and returns the lines and the dropped count.
    pub fn finish(mut self) -> (Vec<LogLine>, usize) {
        for (i, source) in [(0, Source::Stdout), (1, Source::Stderr)] {
            let rest = std::mem::take(&mut self.partial[i]);
            if !rest.is_empty() {
                self.write_stream(source, &rest);
                self.write_stream(source, b"\n");
            }
        }
        (self.lines, self.dropped_bytes)
    }
}

/// The `log` capability's state in a run: the run's log, which WASI's
/// stdout and stderr write into too.
pub struct LogCtx {
    log: Arc<Mutex<RunLog>>,
}

impl LogCtx {
    /// An empty log of at most `limit` bytes.
    pub fn new(limit: usize) -> Self {
        Self {
            log: Arc::new(Mutex::new(RunLog::new(limit))),
        }
    }

    /// The log, for what else writes into it (WASI's stdout and stderr).
    pub(crate) fn shared(&self) -> &Arc<Mutex<RunLog>> {
        &self.log
    }

    /// The lines and the bytes dropped, once nothing else holds the log
    /// (else none: a writer outlived the run).
    pub fn finish(self) -> (Vec<LogLine>, usize) {
        Arc::try_unwrap(self.log)
            .ok()
            .and_then(|m| m.into_inner().ok())
            .map(RunLog::finish)
            .unwrap_or_default()
    }
}

struct HasLog;

impl HasData for HasLog {
    type Data<'a> = &'a mut LogCtx;
}

/// Links `hostaction:host/log`, each call made on the context `ctx` gives
/// (the log needs nothing the capabilities share).
pub(crate) fn add_to_linker<T: Send + 'static>(
    linker: &mut Linker<T>,
    ctx: fn(&mut T) -> &mut LogCtx,
) -> wasmtime::Result<()> {
    log::add_to_linker::<T, HasLog>(linker, ctx)
}

impl log::Host for LogCtx {
    fn write(&mut self, level: Level, message: String) -> wasmtime::Result<()> {
        let level = match level {
            Level::Trace => "trace",
            Level::Debug => "debug",
            Level::Info => "info",
            Level::Warn => "warn",
            Level::Error => "error",
        };
        self.log
            .lock()
            .map_err(|_| wasmtime::format_err!("run log lock poisoned"))?
            .push(level, Source::Log, message);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn log_call_is_kept_with_its_level() {
        let mut ctx = LogCtx::new(1000);
        log::Host::write(&mut ctx, Level::Warn, "careful".into()).expect("write");
        let (lines, dropped) = ctx.finish();
        assert_eq!(
            lines,
            [LogLine {
                level: "warn",
                source: Source::Log,
                message: "careful".into()
            }]
        );
        assert_eq!(dropped, 0);
    }

    #[test]
    fn log_calls_past_the_limit_are_dropped_and_counted() {
        let mut ctx = LogCtx::new(LINE_OVERHEAD + 4);
        for _ in 0..3 {
            log::Host::write(&mut ctx, Level::Info, "abcd".into()).expect("write");
        }
        let (lines, dropped) = ctx.finish();
        assert_eq!((lines.len(), dropped), (1, 8));
    }

    #[test]
    fn log_still_shared_at_the_end_gives_nothing_rather_than_waiting() {
        let ctx = LogCtx::new(1000);
        let writer = Arc::clone(ctx.shared());
        assert_eq!(ctx.finish(), (Vec::new(), 0));
        drop(writer);
    }

    #[test]
    fn unterminated_stream_output_past_the_limit_is_dropped_not_buffered() {
        let mut log = RunLog::new(100);
        log.write_stream(Source::Stdout, &[b'x'; 150]);
        assert!(log.partial[0].is_empty());
        let (lines, dropped) = log.finish();
        assert!(lines.is_empty());
        assert_eq!(dropped, 150);
    }

    #[test]
    fn unterminated_stream_output_becomes_a_line_at_the_end() {
        let mut log = RunLog::new(1000);
        log.write_stream(Source::Stderr, b"last words");
        let (lines, _) = log.finish();
        assert_eq!(
            lines,
            [LogLine {
                level: "warn",
                source: Source::Stderr,
                message: "last words".into()
            }]
        );
    }

    #[test]
    fn log_past_its_limit_counts_dropped_bytes() {
        let mut log = RunLog::new(10 + 2 * LINE_OVERHEAD);
        log.push("info", Source::Log, "12345".into());
        log.push("info", Source::Log, "123456".into());
        log.push("info", Source::Log, "12345".into());
        let (lines, dropped) = log.finish();
        assert_eq!(lines.len(), 2);
        assert_eq!(dropped, 6);
    }

    #[test]
    fn empty_lines_count_against_the_limit() {
        let mut log = RunLog::new(10 * LINE_OVERHEAD);
        for _ in 0..1000 {
            log.push("info", Source::Log, String::new());
        }
        assert_eq!(log.finish().0.len(), 10);
    }

    #[test]
    fn stream_output_is_split_into_lines_across_writes() {
        let mut log = RunLog::new(1000);
        log.write_stream(Source::Stdout, b"hel");
        log.write_stream(Source::Stdout, b"lo\nwor");
        log.write_stream(Source::Stderr, b"oops\n");
        let (lines, _) = log.finish();
        let text: Vec<_> = lines
            .iter()
            .map(|l| (l.source, l.message.as_str()))
            .collect();
        assert_eq!(
            text,
            [
                (Source::Stdout, "hello"),
                (Source::Stderr, "oops"),
                (Source::Stdout, "wor")
            ]
        );
    }
}
