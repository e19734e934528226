//! A test action that runs the operations its params list and reports the
//! result of each one, so that the end-to-end tests can drive every capability
//! call and every misbehaviour (a panic, an endless loop, a memory hog, a log
//! flood) from one component.
//!
//! Params: `{"ops": [{"op": "ensure-file", "path": "...", "contents": "...",
//! "mode": 420}, ...]}`. Ops run in order; a capability error does not stop the
//! run. Fact `"<index>"` holds `{"ok": value}` or
//! `{"err": {"kind": "...", "message": "..."}}` for the op at that index.

use hostaction_sdk::files::{self, FileKind};
use hostaction_sdk::{Error, Outcome, log, payload};
use serde::Deserialize;
use serde_json::{Value, json};
use wasi::clocks::monotonic_clock;

/// The probe's params.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Params {
    /// The operations, run in order.
    #[serde(default)]
    ops: Vec<Op>,
}

/// One operation, tagged by `"op"`.
#[derive(Deserialize)]
#[serde(tag = "op", rename_all = "kebab-case", deny_unknown_fields)]
enum Op {
    /// `files.ensure-file` with UTF-8 contents.
    EnsureFile {
        path: String,
        contents: String,
        mode: u32,
    },
    /// `files.read-file`; the contents are reported as (lossy) UTF-8.
    ReadFile { path: String },
    /// `files.remove`.
    Remove { path: String },
    /// `files.ensure-dir`.
    EnsureDir { path: String, mode: u32 },
    /// `files.list-dir`.
    ListDir { path: String },
    /// `files.stat`.
    Stat { path: String },
    /// One info line in the run's log.
    Log { message: String },
    /// One line on stdout.
    Print { message: String },
    /// One line on stderr.
    Eprint { message: String },
    /// Info lines of 1 KiB until `bytes` have been written.
    LogFlood { bytes: u64 },
    /// Loops forever: the run's deadline must end it.
    Spin,
    /// Allocates and touches `mib` MiB, kept alive until the run ends.
    Alloc { mib: u64 },
    /// Panics with `message`.
    Panic { message: String },
    /// Ends the run at once with `Err(message)`.
    Fail { message: String },
    /// What WASI shows of the environment: `{"vars": n, "args": n}`.
    Env,
    /// Reads a file through WASI's filesystem (not the `files` capability).
    WasiRead { path: String },
    /// `payload.files`: `[{"name", "size", "digest"}]`.
    PayloadFiles,
    /// `payload.read`, reported as (lossy) UTF-8.
    PayloadRead { name: String },
    /// `payload.read-at`, reported as (lossy) UTF-8.
    PayloadReadAt { name: String, offset: u64, len: u32 },
    /// `std::thread::sleep` (wasi-libc's `clock_nanosleep`); reports the
    /// milliseconds it really slept.
    Sleep { ms: u64 },
    /// `wasi:io/poll.poll` on one `monotonic-clock.subscribe-duration`
    /// pollable; reports the milliseconds it waited.
    Poll { ms: u64 },
    /// `pollable.block` on one `monotonic-clock.subscribe-instant` pollable
    /// `ms` from now; reports the milliseconds it waited.
    Block { ms: u64 },
    /// `wasi:io/poll.poll` on an empty list (a trap, not a wait).
    PollEmpty,
    /// Reads stdin to its end with `blocking-read`; reports the bytes read.
    ReadStdin,
    /// `wasi:sockets` `create-tcp-socket`; reports its error code.
    TcpSocket,
    /// `wasi:sockets` `resolve-addresses`; reports its error code.
    ResolveName { name: String },
    /// `files.ensure-file` `times` times with the same contents, the mode
    /// alternating between 0644 and 0755; reports how many calls changed it.
    ModeChurn {
        path: String,
        contents: String,
        times: u32,
    },
    /// Adds `count` facts with an empty key and value to the outcome.
    EmptyFacts { count: u32 },
    /// Makes `count` `monotonic-clock.subscribe-duration` pollables and
    /// holds them all (host resources, each a handle and table entries);
    /// reports how many it made.
    Pollables { count: u32 },
    /// `wasi:random/random.get-random-bytes` of `len` bytes; reports how
    /// many came back.
    Random { len: u64 },
}

/// What one op did: `Ok(value)`, or the capability error.
type OpResult = Result<Value, Error>;

fn run(params: Params) -> Result<Outcome, String> {
    let mut changed = false;
    let mut outcome_facts = Vec::with_capacity(params.ops.len());
    // Memory the `alloc` ops hold until the run ends.
    let mut hoard: Vec<Vec<u8>> = Vec::new();
    let mut empty_facts = 0u32;

    for (index, op) in params.ops.into_iter().enumerate() {
        let result = match op {
            Op::Fail { message } => return Err(message),
            Op::EmptyFacts { count } => {
                empty_facts = empty_facts.saturating_add(count);
                Ok(Value::Null)
            }
            op => run_op(op, &mut hoard),
        };
        if let Ok(Value::Bool(true)) = result {
            // Only the mutating calls report a bool.
            changed = true;
        }
        let fact = match result {
            Ok(value) => json!({ "ok": value }),
            Err(e) => json!({ "err": { "kind": e.kind(), "message": e.message() } }),
        };
        outcome_facts.push((index.to_string(), fact.to_string()));
    }

    let count = outcome_facts.len();
    let outcome = outcome_facts
        .into_iter()
        .chain((0..empty_facts).map(|_| (String::new(), String::new())))
        .fold(Outcome::changed(changed), |o, (k, v)| o.fact(k, v));
    Ok(outcome.message(format!("ran {count} ops ({} MiB held)", hoard.len())))
}

fn run_op(op: Op, hoard: &mut Vec<Vec<u8>>) -> OpResult {
    match op {
        Op::EnsureFile {
            path,
            contents,
            mode,
        } => files::ensure_file(&path, contents.as_bytes(), mode).map(Value::Bool),
        Op::ReadFile { path } => files::read_file(&path)
            .map(|bytes| Value::String(String::from_utf8_lossy(&bytes).into_owned())),
        Op::Remove { path } => files::remove(&path).map(Value::Bool),
        Op::EnsureDir { path, mode } => files::ensure_dir(&path, mode).map(Value::Bool),
        Op::ListDir { path } => files::list_dir(&path).map(|entries| {
            entries
                .iter()
                .map(|e| json!({ "name": e.name, "kind": kind_name(e.kind) }))
                .collect()
        }),
        Op::Stat { path } => files::stat(&path).map(|stat| match stat {
            Some(s) => json!({ "kind": kind_name(s.kind), "size": s.size, "mode": s.mode }),
            None => Value::Null,
        }),
        Op::Log { message } => {
            log::info(&message);
            Ok(Value::Null)
        }
        Op::Print { message } => {
            println!("{message}");
            Ok(Value::Null)
        }
        Op::Env => Ok(json!({
            "vars": std::env::vars_os().count(),
            "args": std::env::args_os().count(),
        })),
        // Reports std's error as an io error: the WASI layer, not a hostaction
        // capability, refused it.
        Op::WasiRead { path } => std::fs::read(&path)
            .map(|b| Value::from(b.len()))
            .map_err(|e| Error::Io(e.to_string())),
        Op::Eprint { message } => {
            eprintln!("{message}");
            Ok(Value::Null)
        }
        Op::LogFlood { bytes } => {
            log_flood(bytes);
            Ok(Value::Null)
        }
        Op::PayloadFiles => Ok(payload::files()
            .iter()
            .map(|f| json!({ "name": f.name, "size": f.size, "digest": f.digest }))
            .collect()),
        Op::PayloadRead { name } => payload::read(&name)
            .map(|bytes| Value::String(String::from_utf8_lossy(&bytes).into_owned())),
        Op::PayloadReadAt { name, offset, len } => payload::read_at(&name, offset, len)
            .map(|bytes| Value::String(String::from_utf8_lossy(&bytes).into_owned())),
        Op::Spin => spin(),
        Op::Alloc { mib } => {
            alloc(hoard, mib);
            Ok(Value::Null)
        }
        Op::Panic { message } => {
            #[allow(clippy::panic)] // Panicking on request is this op's job.
            {
                panic!("{message}")
            }
        }
        Op::Sleep { ms } => Ok(waited(|| {
            std::thread::sleep(std::time::Duration::from_millis(ms));
        })),
        Op::Poll { ms } => Ok(waited(|| {
            let pollable = monotonic_clock::subscribe_duration(ms.saturating_mul(1_000_000));
            wasi::io::poll::poll(&[&pollable]);
        })),
        Op::Block { ms } => Ok(waited(|| {
            let when = monotonic_clock::now().saturating_add(ms.saturating_mul(1_000_000));
            monotonic_clock::subscribe_instant(when).block();
        })),
        Op::PollEmpty => Ok(Value::from(wasi::io::poll::poll(&[]))),
        Op::ReadStdin => {
            let stdin = wasi::cli::stdin::get_stdin();
            let mut read = 0usize;
            loop {
                match stdin.blocking_read(4096) {
                    Ok(bytes) => read += bytes.len(),
                    Err(wasi::io::streams::StreamError::Closed) => break Ok(Value::from(read)),
                    Err(e) => break Err(Error::Io(format!("{e:?}"))),
                }
            }
        }
        Op::TcpSocket => {
            use wasi::sockets::network::IpAddressFamily;
            wasi::sockets::tcp_create_socket::create_tcp_socket(IpAddressFamily::Ipv4)
                .map(|_| Value::from("created"))
                .map_err(|e| Error::Io(format!("{e:?}")))
        }
        Op::ResolveName { name } => {
            let network = wasi::sockets::instance_network::instance_network();
            wasi::sockets::ip_name_lookup::resolve_addresses(&network, &name)
                .map(|_| Value::from("resolving"))
                .map_err(|e| Error::Io(format!("{e:?}")))
        }
        Op::ModeChurn {
            path,
            contents,
            times,
        } => {
            let mut changes = 0u32;
            for i in 0..times {
                let mode = if i % 2 == 0 { 0o755 } else { 0o644 };
                if files::ensure_file(&path, contents.as_bytes(), mode)? {
                    changes += 1;
                }
            }
            Ok(Value::from(changes))
        }
        Op::Pollables { count } => {
            let held: Vec<_> = (0..count)
                .map(|_| monotonic_clock::subscribe_duration(u64::MAX))
                .collect();
            Ok(Value::from(core::hint::black_box(held).len()))
        }
        Op::Random { len } => Ok(Value::from(
            wasi::random::random::get_random_bytes(len).len(),
        )),
        // Handled by the caller: they end the run, or shape the outcome.
        Op::Fail { message } => Err(Error::InvalidArgument(message)),
        Op::EmptyFacts { .. } => Ok(Value::Null),
    }
}

/// Runs `wait` and returns the milliseconds it took by the monotonic clock.
fn waited(wait: impl FnOnce()) -> Value {
    let start = monotonic_clock::now();
    wait();
    Value::from(monotonic_clock::now().saturating_sub(start) / 1_000_000)
}

/// The WIT name of a file kind.
fn kind_name(kind: FileKind) -> &'static str {
    match kind {
        FileKind::File => "file",
        FileKind::Directory => "directory",
        FileKind::Symlink => "symlink",
        FileKind::Other => "other",
    }
}

/// Writes info lines of 1 KiB (1023 bytes of text plus the line's end) until
/// `bytes` have been written.
fn log_flood(bytes: u64) {
    const LINE: usize = 1024;
    let line = "x".repeat(LINE - 1);
    let mut written = 0u64;
    while written < bytes {
        log::info(&line);
        written += LINE as u64;
    }
}

/// Never returns; `black_box` keeps the optimizer from removing the loop.
fn spin() -> ! {
    let mut n = 0u64;
    loop {
        n = core::hint::black_box(n.wrapping_add(1));
    }
}

/// Grows `hoard` by `mib` chunks of 1 MiB, writing every page so that the
/// memory is really committed.
fn alloc(hoard: &mut Vec<Vec<u8>>, mib: u64) {
    const MIB: usize = 1 << 20;
    for i in 0..mib {
        let mut chunk = vec![0u8; MIB];
        for page in chunk.iter_mut().step_by(4096) {
            *page = (i as u8) | 1;
        }
        hoard.push(core::hint::black_box(chunk));
    }
}

hostaction_sdk::action!(run);
