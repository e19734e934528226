//! Compiling a component in a short-lived child process, within bounds.
//!
//! Cranelift compiling a Python or JavaScript component (an interpreter of
//! 12–18 MB inside) takes seconds and a few hundred MiB, more with more
//! threads, and a process keeps much of that resident after it is done
//! (allocator arenas, touched pages). So the `hostaction` binary compiles in
//! a child: itself re-executed with the hidden `__compile` subcommand, which
//!
//! 1. limits itself before it reads anything: `RLIMIT_DATA` (its heap and
//!    other private writable mappings — not `RLIMIT_AS`, since the address
//!    space wasmtime reserves but never commits would count against that),
//!    `RLIMIT_CPU` as a backstop to the parent's wall-clock limit,
//!    `RLIMIT_CORE` 0, and death with its parent;
//! 2. reads the module's bytes from its stdin (never from a path, which could
//!    change under it) and checks they hash to the digest it was given;
//! 3. compiles them with [`super::compile_config`], the settings of the
//!    runtime's own engine, so the code loads there (wasmtime checks the
//!    settings on load, and the cache key hashes them), on at most
//!    `--threads` threads (`RAYON_NUM_THREADS`, set by the parent);
//! 4. writes the code to a staging file the parent named, fsyncs it and
//!    renames it into the disk cache, then prints its peak RSS and exits.
//!
//! The parent kills it past the wall-clock limit, removes the staging file
//! whatever happened (so nothing half-written is left), and maps each way
//! it can end to an error that names the bound. It then loads the code
//! precompiled, as a restarted process would: its own RSS is the same as
//! after a restart. Within a process, [`Compiler::InProcess`] compiles with
//! no bound at all; it is for embedding the runtime and for tests.

use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use sha2::{Digest, Sha256};

use crate::error::{Error, Result};

/// The hidden subcommand of the `hostaction` binary that compiles.
pub const CHILD_SUBCOMMAND: &str = "__compile";

/// Bounds of one compile in a child process. Defaults: 448 MiB, 120 s,
/// 1 thread (see [`Default`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CompileLimits {
    /// The child's `RLIMIT_DATA`: heap and private writable mappings.
    pub memory_bytes: u64,
    /// Wall clock from spawning the child to its exit.
    pub timeout: Duration,
    /// Compiler threads (1: no thread pool at all).
    pub threads: u32,
}

impl Default for CompileLimits {
    /// Measured on the Python and JavaScript probes (18 and 12 MB): on one
    /// thread they compile within an `RLIMIT_DATA` of 352 MiB (peak RSS
    /// ~330 MiB), on two they need ~448 MiB (each thread's malloc arena
    /// holds its own free space); 448 MiB leaves a quarter of room over
    /// them on one thread. Each takes ~12–15 s of CPU time.
    fn default() -> Self {
        Self {
            memory_bytes: 448 << 20,
            timeout: Duration::from_secs(120),
            threads: 1,
        }
    }
}

/// Where a runtime compiles a module it has no precompiled code for.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum Compiler {
    /// In this process, without bounds: for embedding and tests.
    #[default]
    InProcess,
    /// In a child process, `program __compile ...`, within `limits`:
    /// what the `hostaction` binary (CLI and agent) always does.
    Child {
        /// The `hostaction` binary.
        program: PathBuf,
        /// Its bounds.
        limits: CompileLimits,
    },
}

/// What a compile in a child process cost.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct CompileStats {
    /// The child's peak resident set (`VmHWM`), in bytes.
    pub peak_rss_bytes: u64,
    /// The CPU time it used (user and system, all threads), in microseconds.
    pub cpu_us: u64,
    /// Time from spawning the child to its exit, in microseconds.
    pub wall_us: u64,
}

/// What the child is told: the JSON argument of the hidden `__compile`
/// subcommand (the module comes on stdin). The parent writes it and the
/// child reads it, both here, so the CLI only hands it over.
#[derive(Debug, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ChildArgs {
    /// `sha256:<hex>` the module's bytes must hash to.
    digest: String,
    /// Where the code goes (in the disk cache).
    #[serde(with = "path_bytes")]
    out: PathBuf,
    /// The file the code is written to first, then renamed to `out`.
    #[serde(with = "path_bytes")]
    staging: PathBuf,
    /// `RLIMIT_DATA`, in bytes.
    memory_bytes: u64,
    /// `RLIMIT_CPU`, in seconds: a backstop to the parent's wall clock.
    cpu_seconds: u64,
    /// Compiler threads.
    threads: u32,
    /// Largest module read from stdin.
    max_module_bytes: u64,
    /// The parent's pid: the child ends if it is no longer its parent.
    parent: u32,
}

/// Paths as their bytes (a JSON array of numbers): a Linux path need not be
/// UTF-8, and a cache directory whose name is not must still work.
mod path_bytes {
    use std::ffi::OsString;
    use std::os::unix::ffi::{OsStrExt, OsStringExt};
    use std::path::{Path, PathBuf};

    pub fn serialize<S: serde::Serializer>(path: &Path, s: S) -> Result<S::Ok, S::Error> {
        s.collect_seq(path.as_os_str().as_bytes())
    }

    pub fn deserialize<'de, D: serde::Deserializer<'de>>(d: D) -> Result<PathBuf, D::Error> {
        let bytes: Vec<u8> = serde::Deserialize::deserialize(d)?;
        Ok(PathBuf::from(OsString::from_vec(bytes)))
    }
}

/// Exit code of a child whose module is not a valid component.
const EXIT_INVALID: u8 = 2;
/// Exit code of a child that failed for lack of memory (an error, not an abort).
const EXIT_NO_MEMORY: u8 = 3;
/// Exit code of any other failure of the child (its message on stderr).
const EXIT_FAILED: u8 = 4;
/// What the child's stdout and stderr may be; more is dropped.
const OUTPUT_CAP: usize = 64 << 10;

/// The child: `hostaction __compile <ChildArgs as JSON>`. Returns its exit
/// code; the message of a failure is on stderr, the [`CompileStats`] on
/// stdout.
pub fn child_main(spec: &str) -> u8 {
    let args = match serde_json::from_str::<ChildArgs>(spec) {
        Ok(args) => args,
        Err(e) => {
            let _ = writeln!(std::io::stderr(), "{CHILD_SUBCOMMAND}: its argument: {e}");
            return EXIT_FAILED;
        }
    };
    match child(&args) {
        Ok(peak_rss_bytes) => {
            let stats = serde_json::json!({
                "peakRssBytes": peak_rss_bytes,
                "cpuUs": cpu_us().unwrap_or(0),
            });
            let _ = writeln!(std::io::stdout(), "{stats}");
            0
        }
        Err((code, message)) => {
            let _ = writeln!(std::io::stderr(), "{message}");
            code
        }
    }
}

fn child(args: &ChildArgs) -> std::result::Result<u64, (u8, String)> {
    use rustix::process::{Resource, Rlimit, Signal, setrlimit};
    let failed = |what: &str, e: &dyn std::fmt::Display| (EXIT_FAILED, format!("{what}: {e}"));
    // An agent killed mid-compile takes its compiler with it.
    rustix::process::set_parent_process_death_signal(Some(Signal::KILL))
        .map_err(|e| failed("parent death signal", &e))?;
    if rustix::process::getppid().map(|p| p.as_raw_nonzero().get())
        != i32::try_from(args.parent).ok()
    {
        return Err((EXIT_FAILED, "the parent process is gone".into()));
    }
    let limit = |resource, n: u64| {
        setrlimit(
            resource,
            Rlimit {
                current: Some(n),
                maximum: Some(n),
            },
        )
    };
    limit(Resource::Core, 0).map_err(|e| failed("RLIMIT_CORE", &e))?;
    limit(Resource::Data, args.memory_bytes).map_err(|e| failed("RLIMIT_DATA", &e))?;
    setrlimit(
        Resource::Cpu,
        Rlimit {
            current: Some(args.cpu_seconds),
            maximum: Some(args.cpu_seconds.saturating_add(5)),
        },
    )
    .map_err(|e| failed("RLIMIT_CPU", &e))?;

    let mut bytes = Vec::new();
    std::io::stdin()
        .lock()
        .take(args.max_module_bytes.saturating_add(1))
        .read_to_end(&mut bytes)
        .map_err(|e| no_memory_or(EXIT_FAILED, format!("reading the module: {e}"), &e))?;
    if bytes.len() as u64 > args.max_module_bytes {
        return Err((
            EXIT_INVALID,
            format!("the module exceeds {} bytes", args.max_module_bytes),
        ));
    }
    let digest = format!("sha256:{}", hex::encode(Sha256::digest(&bytes)));
    if digest != args.digest {
        return Err((
            EXIT_FAILED,
            format!("the module read has digest {digest}, not {}", args.digest),
        ));
    }

    let mut config = super::compile_config();
    // Not part of the code's compatibility: only how many threads make it.
    config.parallel_compilation(args.threads > 1);
    let engine = wasmtime::Engine::new(&config).map_err(|e| failed("engine", &e))?;
    let code = engine.precompile_component(&bytes).map_err(|e| {
        let out_of_memory = e.is::<wasmtime::OutOfMemory>()
            || e.chain().any(|c| {
                c.downcast_ref::<std::io::Error>()
                    .is_some_and(|io| io.kind() == std::io::ErrorKind::OutOfMemory)
            });
        if out_of_memory {
            (EXIT_NO_MEMORY, format!("{e:#}"))
        } else {
            (EXIT_INVALID, format!("{e:#}"))
        }
    })?;
    drop(bytes);
    hostaction_distribution::disk::write_atomically(&args.staging, &args.out, &code).map_err(
        |e| {
            no_memory_or(
                EXIT_FAILED,
                format!("writing {}: {e}", args.out.display()),
                &e,
            )
        },
    )?;
    Ok(peak_rss_bytes().unwrap_or(0))
}

fn no_memory_or(code: u8, message: String, e: &std::io::Error) -> (u8, String) {
    if e.kind() == std::io::ErrorKind::OutOfMemory {
        (EXIT_NO_MEMORY, message)
    } else {
        (code, message)
    }
}

/// This process's peak resident set (`VmHWM`), in bytes.
fn peak_rss_bytes() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let kib: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))?
        .trim()
        .strip_suffix("kB")?
        .trim()
        .parse()
        .ok()?;
    Some(kib * 1024)
}

/// The CPU time this process used (`/proc/self/stat`'s utime + stime), in
/// microseconds.
fn cpu_us() -> Option<u64> {
    let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
    // After the command name (which may hold spaces), from field 3 on.
    let fields: Vec<&str> = stat
        .get(stat.rfind(')')? + 1..)?
        .split_whitespace()
        .collect();
    let ticks = fields.get(11)?.parse::<u64>().ok()? + fields.get(12)?.parse::<u64>().ok()?;
    let per_second = rustix::param::clock_ticks_per_second();
    Some(ticks.saturating_mul(1_000_000) / per_second.max(1))
}

/// The parent: compiles `bytes` (whose digest is `digest`) in a child of
/// `program` within `limits`, into the cache file `out`. On any failure
/// nothing is left at `out` or beside it.
pub(super) fn in_child(
    program: &Path,
    limits: &CompileLimits,
    bytes: &[u8],
    digest: &str,
    out: &Path,
) -> Result<CompileStats> {
    static COUNTER: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let n = COUNTER.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let staging = out.with_extension(format!("compiling{}-{n}", std::process::id()));
    let result = run_child(program, limits, bytes, digest, out, &staging);
    // Gone after a success (renamed); a killed or failed child may leave it.
    let _ = std::fs::remove_file(&staging);
    result
}

fn run_child(
    program: &Path,
    limits: &CompileLimits,
    bytes: &[u8],
    digest: &str,
    out: &Path,
    staging: &Path,
) -> Result<CompileStats> {
    let host = |what: &str, e| Error::io(format!("compiling the module: {what}"), e);
    let json = |what: &str, source| Error::Json {
        what: format!("compiling the module: {what}"),
        source,
    };
    let threads = limits.threads.max(1);
    // A backstop only: the wall clock below ends the child first.
    let cpu_seconds = limits
        .timeout
        .as_secs()
        .saturating_add(1)
        .saturating_mul(u64::from(threads))
        .saturating_add(1);
    let start = Instant::now();
    let spec = serde_json::to_string(&ChildArgs {
        digest: digest.to_owned(),
        out: out.to_owned(),
        staging: staging.to_owned(),
        memory_bytes: limits.memory_bytes,
        cpu_seconds,
        threads,
        max_module_bytes: bytes.len() as u64,
        parent: std::process::id(),
    })
    .map_err(|e| json("its argument", e))?;
    let mut child = Command::new(program)
        .arg(CHILD_SUBCOMMAND)
        .arg(spec)
        .env_clear()
        .env("RAYON_NUM_THREADS", threads.to_string())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| host(&format!("starting {}", program.display()), e))?;
    let (stdin, stdout, stderr) = (child.stdin.take(), child.stdout.take(), child.stderr.take());
    let (waited, stdout, stderr) = std::thread::scope(|scope| {
        // A child that dies early closes the pipe: the write fails, and its
        // exit status says why.
        scope.spawn(move || stdin.map(|mut s| s.write_all(bytes)));
        let stdout = scope.spawn(move || read_capped(stdout));
        let stderr = scope.spawn(move || read_capped(stderr));
        let waited = wait_until(&mut child, start + limits.timeout);
        let output = |h: std::thread::ScopedJoinHandle<'_, String>| h.join().unwrap_or_default();
        (waited, output(stdout), output(stderr))
    });
    let wall_us = start.elapsed().as_micros() as u64;
    let status = match waited {
        Ok(Some(status)) => status,
        Ok(None) => return Err(time_limit(limits)),
        Err(e) => return Err(host("waiting for the compiler process", e)),
    };
    if status.success() {
        let stats: serde_json::Value = serde_json::from_str(stdout.trim())
            .map_err(|e| json("the compiler process's report", e))?;
        return Ok(CompileStats {
            peak_rss_bytes: stats["peakRssBytes"].as_u64().unwrap_or(0),
            cpu_us: stats["cpuUs"].as_u64().unwrap_or(0),
            wall_us,
        });
    }
    Err(failure(status, stderr.trim(), limits))
}

/// Waits for `child` until `deadline`; past it, kills it and returns `None`.
/// Polls from every 1 ms, doubling to every 20 ms (backon's exponential
/// schedule, without jitter: one local child, no herd to spread).
fn wait_until(
    child: &mut std::process::Child,
    deadline: Instant,
) -> std::io::Result<Option<ExitStatus>> {
    use backon::BackoffBuilder;
    const LONGEST_PAUSE: Duration = Duration::from_millis(20);
    let mut pauses = backon::ExponentialBuilder::new()
        .with_min_delay(Duration::from_millis(1))
        .with_max_delay(LONGEST_PAUSE)
        .with_factor(2.0)
        .without_max_times()
        .build();
    loop {
        if let Some(status) = child.try_wait()? {
            return Ok(Some(status));
        }
        let now = Instant::now();
        if now >= deadline {
            child.kill()?;
            child.wait()?;
            return Ok(None);
        }
        let pause = pauses.next().unwrap_or(LONGEST_PAUSE);
        std::thread::sleep(pause.min(deadline - now));
    }
}

fn read_capped(pipe: Option<impl Read>) -> String {
    let mut kept = Vec::new();
    if let Some(mut pipe) = pipe {
        let mut buf = [0u8; 8192];
        while let Ok(n) = pipe.read(&mut buf) {
            if n == 0 {
                break;
            }
            let room = OUTPUT_CAP.saturating_sub(kept.len());
            kept.extend_from_slice(&buf[..n.min(room)]);
        }
    }
    String::from_utf8_lossy(&kept).into_owned()
}

fn time_limit(limits: &CompileLimits) -> Error {
    Error::BadModule(format!(
        "compiling the module exceeded its {} s time limit (--compile-timeout)",
        limits.timeout.as_secs_f64()
    ))
}

fn memory_limit(limits: &CompileLimits) -> Error {
    Error::BadModule(format!(
        "compiling the module exceeded its {} MiB memory limit (--compile-memory-mib)",
        limits.memory_bytes >> 20
    ))
}

/// Why a child that did not succeed failed, naming the bound it hit.
fn failure(status: ExitStatus, stderr: &str, limits: &CompileLimits) -> Error {
    use rustix::process::Signal;
    use std::os::unix::process::ExitStatusExt;
    let last = stderr.lines().last().unwrap_or_default();
    let code = status.code();
    let signal = status.signal();
    // Rust aborts when an allocation fails ("memory allocation of N bytes
    // failed"); a thread that cannot get its stack panics (exit 101).
    let allocation_failed = (signal == Some(Signal::ABORT.as_raw()) || code == Some(101))
        && (stderr.contains("memory allocation") || stderr.contains("Cannot allocate"));
    if code == Some(EXIT_INVALID.into()) {
        Error::BadModule(format!("not a valid component: {last}"))
    } else if code == Some(EXIT_NO_MEMORY.into()) || allocation_failed {
        memory_limit(limits)
    } else if signal == Some(Signal::XCPU.as_raw()) {
        time_limit(limits)
    } else if signal == Some(Signal::KILL.as_raw()) {
        Error::Host(
            "compiling the module: the compiler process was killed (SIGKILL), by the \
             kernel's out-of-memory killer (the container's memory limit?) or past its CPU \
             time limit"
                .into(),
        )
    } else {
        Error::Host(format!(
            "compiling the module: the compiler process failed ({status}): {last}"
        ))
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use std::ffi::OsString;
    use std::os::unix::ffi::OsStringExt;

    use super::*;

    #[test]
    fn child_args_carry_paths_that_are_not_utf8() {
        let odd = PathBuf::from(OsString::from_vec(b"/var/cache/\xffhostaction/x".to_vec()));
        let args = ChildArgs {
            digest: "sha256:0".into(),
            out: odd.clone(),
            staging: odd.with_extension("tmp"),
            memory_bytes: 1,
            cpu_seconds: 1,
            threads: 1,
            max_module_bytes: 1,
            parent: 1,
        };
        let json = serde_json::to_string(&args).unwrap();
        let back: ChildArgs = serde_json::from_str(&json).unwrap();
        assert_eq!(
            (back.out, back.staging),
            (odd.clone(), odd.with_extension("tmp"))
        );
    }
}
