//! The `languages` suite: the same action written in Rust, Python,
//! JavaScript and C (each language's test probe ensuring one file), side by
//! side: component size, the first compile (in the compiler process, under
//! the default bounds, as the `hostaction` binary compiles: its time and
//! peak RSS), a load of the precompiled code by a new runtime (as a new
//! process does), and the per-run instantiate and run times. Writes
//! `target/bench/languages.json`.

use std::path::{Path, PathBuf};
use std::time::Instant;

use hostaction_runtime::engine::{CompileLimits, Compiler, LoadSource};
use hostaction_runtime::grant::{EffectiveGrant, Grant, GrantDocument};
use hostaction_runtime::{RunRequest, Runtime, RuntimeConfig};

use crate::{BenchResult, Stats, micros, stats, write_json};

/// The probes, by language: the same ops in each.
const PROBES: &[(&str, &str)] = &[
    ("rust", "probe"),
    ("c", "c-probe"),
    ("javascript", "js-probe"),
    ("python", "python-probe"),
];
const GRANT: &str = "files: {write: [/var/lib/bench]}";
const PARAMS: &str = r#"{"ops": [{"op": "ensure-file", "path": "/var/lib/bench/state", "contents": "ready\n", "mode": 420}]}"#;
/// Loads of the precompiled code measured per language (each a new runtime).
const CACHE_LOADS: usize = 10;

/// What the suite needs.
pub struct Config {
    /// Runs per language.
    pub iterations: usize,
    /// Where the guests are (`<probe>.wasm`).
    pub guests: PathBuf,
    /// Where the JSON goes.
    pub out: PathBuf,
}

/// One language's figures.
struct Figures {
    language: &'static str,
    module_bytes: usize,
    compile_us: f64,
    compile_peak_rss_bytes: u64,
    cache_load: Stats,
    instantiate: Stats,
    run: Stats,
}

/// Runs the suite.
pub fn run(config: &Config) -> BenchResult<()> {
    let mut all = Vec::new();
    for &(language, probe) in PROBES {
        let module = config.guests.join(format!("{probe}.wasm"));
        all.push(measure(language, &module, config.iterations)?);
    }
    // Rust is the first of PROBES: every ratio is over it.
    let rust = &all[0];
    let rust_per_run = rust.instantiate.p50_us + rust.run.p50_us;
    println!(
        "hostaction bench: languages (the probe ensuring one file; {} runs each)",
        config.iterations
    );
    println!(
        "  {:<11} {:>9} {:>11} {:>9} {:>16} {:>16} {:>13} {:>9}",
        "language",
        "KiB",
        "compile ms",
        "peak MiB",
        "cached load µs",
        "instantiate µs",
        "run µs",
        "run/rust"
    );
    let mut rows = Vec::new();
    for f in &all {
        let per_run = f.instantiate.p50_us + f.run.p50_us;
        println!(
            "  {:<11} {:>9} {:>11.1} {:>9.0} {:>7.0}/{:<8.0} {:>7.0}/{:<8.0} {:>6.0}/{:<6.0} {:>8.1}x",
            f.language,
            f.module_bytes / 1024,
            f.compile_us / 1000.0,
            f.compile_peak_rss_bytes as f64 / f64::from(1 << 20),
            f.cache_load.p50_us,
            f.cache_load.p99_us,
            f.instantiate.p50_us,
            f.instantiate.p99_us,
            f.run.p50_us,
            f.run.p99_us,
            per_run / rust_per_run,
        );
        rows.push(serde_json::json!({
            "language": f.language,
            "module_bytes": f.module_bytes,
            "compile_us": f.compile_us,
            "compile_peak_rss_bytes": f.compile_peak_rss_bytes,
            "cache_load": f.cache_load,
            "instantiate": f.instantiate,
            "run": f.run,
            "compile_over_rust": f.compile_us / rust.compile_us,
            "cache_load_over_rust_p50": f.cache_load.p50_us / rust.cache_load.p50_us,
            "instantiate_and_run_over_rust_p50": per_run / rust_per_run,
            // What a large component saves on every process after the first.
            "compile_over_cache_load_p50": f.compile_us / f.cache_load.p50_us,
        }));
    }
    println!(
        "  (p50/p99; compile is the first load, in the compiler process, peak its RSS; cached \
         load a new runtime's)"
    );
    write_json(
        &config.out,
        &serde_json::json!({
            "suite": "languages",
            "action": "the test probe of each language ensuring one file",
            "iterations": config.iterations,
            "languages": rows,
        }),
    )
}

/// Compiles `module` in a fresh cache, loads it precompiled from new
/// runtimes, then runs it `iterations` times.
fn measure(language: &'static str, module: &Path, iterations: usize) -> BenchResult<Figures> {
    let bytes = std::fs::read(module)
        .map_err(|e| format!("{}: {e} (run scripts/build-guests.sh)", module.display()))?;
    let scratch = tempfile::tempdir()?;
    let root = scratch.path().join("root");
    std::fs::create_dir_all(root.join("var/lib/bench"))?;
    // The CLI built beside this binary compiles, as a node's agent does.
    let program = std::env::current_exe()?.with_file_name("hostaction");
    if !program.exists() {
        return Err(format!(
            "{} is missing: cargo build --release -p hostaction-cli",
            program.display()
        )
        .into());
    }
    let config = RuntimeConfig {
        host_root: root,
        cache_dir: Some(scratch.path().join("cache")),
        system_bus: None,
        compiler: Compiler::Child {
            program,
            limits: CompileLimits::default(),
        },
        ..RuntimeConfig::default()
    };

    let start = Instant::now();
    let runtime = Runtime::new(config.clone())?;
    let loaded = runtime.load(&bytes)?;
    let compile_us = micros(start);
    if loaded.source != LoadSource::Compiled {
        return Err(format!("{language}: the first load did not compile").into());
    }
    let mut cache_load = Vec::new();
    for _ in 0..CACHE_LOADS {
        let fresh = Runtime::new(config.clone())?;
        let again = fresh.load(&bytes)?;
        if again.source != LoadSource::DiskCache {
            return Err(format!("{language}: a new runtime did not load the cached code").into());
        }
        cache_load.push(again.load_us as f64);
    }

    let grant = EffectiveGrant::new(&Grant::parse(GRANT, "grant")?, None)?;
    let request = RunRequest::new(PARAMS, grant);
    let (mut instantiate, mut run) = (Vec::new(), Vec::new());
    // The first runs warm the allocator and the page cache: not counted.
    for i in 0..iterations + 5 {
        let report = runtime.run(&loaded, request.clone())?;
        let op = report.outcome.as_ref().and_then(|o| o.facts.first());
        if !report.status.is_success() || !op.is_some_and(|(_, v)| v.starts_with(r#"{"ok""#)) {
            return Err(format!("{language}: the probe failed: {} {op:?}", report.status).into());
        }
        if i >= 5 {
            instantiate.push(report.timing.instantiate_us as f64);
            run.push(report.timing.run_us as f64);
        }
    }
    Ok(Figures {
        language,
        module_bytes: bytes.len(),
        compile_us,
        compile_peak_rss_bytes: loaded.compile.map_or(0, |c| c.peak_rss_bytes),
        cache_load: stats(cache_load),
        instantiate: stats(instantiate),
        run: stats(run),
    })
}
