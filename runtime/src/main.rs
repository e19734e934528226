//! `hostaction`: run a host action on the machine you are on, or inspect one.
//!
//! Exit codes: 0 the action succeeded; 1 the action failed (returned an error,
//! trapped, hit its deadline or a limit); 2 bad input (usage, module, params,
//! grant, policy); 3 refused by the grant (the module imports a capability the
//! effective grant does not give; it never started); 4 a host error.

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use clap::{Parser, Subcommand, ValueEnum};
use hostaction_runtime::effects::Mode;
use hostaction_runtime::engine::{Limits, LoadSource, Provided};
use hostaction_runtime::grant::{EffectiveGrant, Grant};
use hostaction_runtime::{Error, LoadedModule, RunReport, RunRequest, Runtime, RuntimeConfig};

/// Appends a formatted line to the output buffer.
macro_rules! outln {
    ($out:expr, $($arg:tt)*) => {{
        use std::fmt::Write as _;
        let _ = writeln!($out, $($arg)*);
    }};
}

#[derive(Parser)]
#[command(
    name = "hostaction",
    version,
    about = "Run host actions: Wasm components with granted host capabilities"
)]
struct Cli {
    /// Directory of precompiled modules [default: $HOSTACTION_CACHE_DIR, else ~/.cache/hostaction]
    #[arg(long, global = true, value_name = "DIR")]
    cache_dir: Option<PathBuf>,
    /// Do not read or write precompiled modules on disk.
    #[arg(long, global = true)]
    no_cache: bool,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run an action on this host and print its outcome, log, changes and timing.
    Run(RunArgs),
    /// List the capabilities a module imports and what it exports.
    Inspect {
        /// The module (a component .wasm file).
        module: PathBuf,
        /// Output format.
        #[arg(long, value_enum, default_value_t = Output::Text)]
        output: Output,
    },
}

#[derive(clap::Args)]
struct RunArgs {
    /// The module (a component .wasm file).
    module: PathBuf,
    /// Params: a JSON document, or @FILE to read one.
    #[arg(long, default_value = "{}")]
    params: String,
    /// Grant document (YAML or JSON). Without it the action gets no capability.
    #[arg(long, value_name = "FILE")]
    grants: Option<PathBuf>,
    /// Node policy bounding the grant (YAML or JSON); effective grant = grant ∩ policy.
    #[arg(long, value_name = "FILE")]
    policy: Option<PathBuf>,
    /// Where the host's filesystem is seen.
    #[arg(long, value_name = "DIR", default_value = "/")]
    host_root: PathBuf,
    /// D-Bus address of systemd's system bus (`services`); the host root's
    /// /run/dbus/system_bus_socket by default.
    #[arg(long, value_name = "ADDRESS")]
    system_bus: Option<String>,
    /// Wall-clock deadline of the run, in seconds (host calls included).
    #[arg(long, value_name = "SECONDS", default_value_t = 30.0)]
    timeout: f64,
    /// Linear memory limit, in MiB.
    #[arg(long, value_name = "MIB", default_value_t = 64)]
    memory: usize,
    /// Log limit, in KiB; lines past it are dropped and counted.
    #[arg(long, value_name = "KIB", default_value_t = 1024)]
    log_limit: usize,
    /// Outcome limit (its message and facts), in KiB.
    #[arg(long, value_name = "KIB", default_value_t = 64)]
    outcome_limit: usize,
    /// Plan: reads are real, changes are only reported.
    #[arg(long)]
    plan: bool,
    /// Output format.
    #[arg(long, value_enum, default_value_t = Output::Text)]
    output: Output,
}

#[derive(Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Output {
    Text,
    Json,
}

fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => {
            let _ = e.print();
            return ExitCode::from(if e.use_stderr() { 2 } else { 0 });
        }
    };
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_env("HOSTACTION_LOG"))
        .with_writer(std::io::stderr)
        .init();
    let output = match &cli.command {
        Command::Run(args) => args.output,
        Command::Inspect { output, .. } => *output,
    };
    match execute(cli) {
        Ok(code) => ExitCode::from(code),
        Err(e) => {
            if output == Output::Json {
                let json =
                    serde_json::json!({"error": {"kind": e.label(), "message": e.to_string()}});
                emit(&format!("{json}\n"));
            } else {
                eprintln!("hostaction: {e}");
            }
            ExitCode::from(e.exit_code())
        }
    }
}

fn execute(cli: Cli) -> Result<u8, Error> {
    let cache_dir = if cli.no_cache {
        None
    } else {
        cli.cache_dir
            .or_else(hostaction_runtime::engine::default_cache_dir)
    };
    match cli.command {
        Command::Inspect { module, output } => {
            let runtime = Runtime::new(RuntimeConfig {
                host_root: PathBuf::from("/"),
                cache_dir,
                system_bus: None,
            })?;
            let module = runtime.load_file(&module)?;
            print_inspect(&module, output);
            Ok(0)
        }
        Command::Run(args) => run(args, cache_dir),
    }
}

fn run(args: RunArgs, cache_dir: Option<PathBuf>) -> Result<u8, Error> {
    let params = match args.params.strip_prefix('@') {
        Some(file) => {
            std::fs::read_to_string(file).map_err(|e| Error::BadParams(format!("{file}: {e}")))?
        }
        None => args.params.clone(),
    };
    let grant = match &args.grants {
        Some(path) => Grant::from_file(path, "grant")?,
        None => Grant::default(),
    };
    let policy = args
        .policy
        .as_deref()
        .map(|p| Grant::from_file(p, "policy"))
        .transpose()?;
    let timeout = Duration::try_from_secs_f64(args.timeout)
        .ok()
        .filter(|t| !t.is_zero())
        .ok_or_else(|| {
            Error::BadParams(format!(
                "--timeout {}: not a positive number of seconds",
                args.timeout
            ))
        })?;
    let bytes = |flag: &str, n: usize, unit: usize| {
        n.checked_mul(unit)
            .ok_or_else(|| Error::BadParams(format!("--{flag} {n}: too large")))
    };
    let limits = Limits {
        memory_bytes: bytes("memory", args.memory, 1 << 20)?,
        timeout,
        log_bytes: bytes("log-limit", args.log_limit, 1 << 10)?,
        output_bytes: bytes("outcome-limit", args.outcome_limit, 1 << 10)?,
    };
    let runtime = Runtime::new(RuntimeConfig {
        host_root: args.host_root.clone(),
        cache_dir,
        system_bus: args.system_bus.clone(),
    })?;
    let module = runtime.load_file(&args.module)?;
    let mut request = RunRequest::new(params, EffectiveGrant::new(&grant, policy.as_ref())?);
    request.mode = if args.plan { Mode::Plan } else { Mode::Apply };
    request.limits = limits;
    let report = runtime.run(&module, request)?;
    match args.output {
        Output::Json => {
            let json = serde_json::json!({
                "module": {"path": args.module, "digest": module.digest, "source": module.source, "loadUs": module.load_us},
                "hostRoot": args.host_root,
                "report": report,
            });
            emit(&format!("{json:#}\n"));
        }
        Output::Text => print_report(&args.module, &module, &report),
    }
    Ok(report.status.exit_code())
}

fn print_report(path: &Path, module: &LoadedModule, report: &RunReport) {
    let mut out = String::new();
    outln!(out, "action   {} ({})", path.display(), module.digest);
    let mode = if report.mode == Mode::Plan {
        " (plan)"
    } else {
        ""
    };
    outln!(out, "status   {}{mode}", report.status);
    if let Some(outcome) = &report.outcome {
        outln!(
            out,
            "outcome  changed={} {}",
            outcome.changed,
            outcome.message
        );
        for (k, v) in &outcome.facts {
            outln!(out, "  fact   {k} = {v}");
        }
    }
    if report.effects.is_empty() {
        outln!(out, "changes  none");
    } else {
        outln!(out, "changes  {}", report.effects.len());
        for e in &report.effects {
            let planned = if e.applied { "" } else { " [planned]" };
            outln!(
                out,
                "  {} {} {} ({}){planned}",
                e.capability,
                e.action,
                e.target,
                e.detail
            );
        }
    }
    if !report.log.is_empty() {
        outln!(out, "log");
        for line in &report.log {
            outln!(out, "  {:<5} {}", line.level, line.message);
        }
    }
    if report.log_dropped_bytes > 0 {
        outln!(
            out,
            "  [log truncated: {} bytes dropped]",
            report.log_dropped_bytes
        );
    }
    let t = &report.timing;
    outln!(
        out,
        "timing   load {} µs ({}), instantiate {} µs, run {} µs, total {} µs",
        module.load_us,
        match module.source {
            LoadSource::Compiled => "compiled",
            LoadSource::DiskCache => "precompiled, from the disk cache",
            LoadSource::Memory => "in memory",
        },
        t.instantiate_us,
        t.run_us,
        t.total_us
    );
    emit(&out);
}

fn print_inspect(module: &LoadedModule, output: Output) {
    let mut out = String::new();
    if output == Output::Json {
        let json = serde_json::json!({
            "digest": module.digest,
            "imports": module.imports,
            "exports": module.exports,
            "runnable": module.unrunnable().is_none(),
            "unrunnableReason": module.unrunnable(),
        });
        outln!(out, "{json:#}");
        emit(&out);
        return;
    }
    outln!(out, "digest  {}", module.digest);
    outln!(out, "capabilities (need a grant):");
    let caps: Vec<_> = module
        .imports
        .iter()
        .filter_map(|i| match i.provided {
            Provided::Capability(c) => Some(format!("  {:<9} {}", c.name(), i.name)),
            _ => None,
        })
        .collect();
    if caps.is_empty() {
        outln!(out, "  none");
    }
    for line in caps {
        outln!(out, "{line}");
    }
    outln!(out, "always provided:");
    for i in &module.imports {
        match i.provided {
            Provided::Always => outln!(out, "  {}", i.name),
            Provided::LockedDownWasi => outln!(out, "  {} (locked-down WASI)", i.name),
            _ => {}
        }
    }
    outln!(out, "exports:");
    for e in &module.exports {
        outln!(out, "  {e}");
    }
    if let Some(why) = module.unrunnable() {
        outln!(out, "not runnable: {why}");
    }
    emit(&out);
}

/// Writes the output at once; a closed pipe (`| head`) is not an error.
fn emit(out: &str) {
    use std::io::Write as _;
    let _ = std::io::stdout().lock().write_all(out.as_bytes());
}
