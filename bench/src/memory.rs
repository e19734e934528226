//! The `memory` suite: resident memory (RSS) of the node agent, of its
//! compiler process and of each concurrent run, against what a DaemonSet
//! costs instead and against the agent DaemonSet's memory limit.
//!
//! - Compiling: the peak RSS, CPU and wall time of the compiler process the
//!   `hostaction` binary starts for each module it has no code for (the
//!   Rust, Python and JavaScript probes), under the default bounds and, for
//!   Python and JavaScript, on two threads.
//! - Idle agent: `hostaction agent --manifests DIR` (static mode) after it
//!   applied `cni-install` (Rust) or `cni-conflist` (Python), idle between
//!   passes: once right after compiling it (a node's first run of a module),
//!   once restarted, loading it from the precompiled cache (a node's steady
//!   state); beside the processes a DaemonSet's container keeps per action
//!   for the same change (`sh` making the change, then `sleep` to stay up).
//!   The container runtime's per-pod shim comes on top of those and is not
//!   measured here.
//! - The agent's container while it compiles (the agent with a Python
//!   action loaded plus the compiler process) against the memory limit of
//!   `manifests/agent-daemonset.yaml`.
//! - Per concurrent run: this process's RSS while `--concurrent` probe runs
//!   spin in one runtime, over its RSS before, per run, beside each run's own
//!   linear memory (the report's `memory_bytes`).

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use hostaction_runtime::engine::{CompileLimits, CompileStats, Compiler};
use hostaction_runtime::grant::{EffectiveGrant, Grant, GrantDocument};
use hostaction_runtime::{RunRequest, RunStatus, Runtime, RuntimeConfig};

use crate::{BenchResult, write_json};

/// Budget: the idle agent's RSS (DESIGN.md), also right after compiling.
const BUDGET_IDLE_MIB: f64 = 20.0;
/// The agent DaemonSet, whose memory limit the compile must fit.
const DAEMONSET: &str = "manifests/agent-daemonset.yaml";
/// The modules compiled, by language (probes built by build-guests.sh).
const COMPILED: &[(&str, &str)] = &[
    ("rust", "probe"),
    ("python", "python-probe"),
    ("javascript", "js-probe"),
];
/// Budget: RSS each concurrent run adds beyond its own linear memory.
const BUDGET_PER_RUN_MIB: f64 = 1.0;
/// How long each concurrent run spins (they are measured halfway).
const SPIN: Duration = Duration::from_secs(2);

/// What the suite needs.
pub struct Config {
    /// The cni-install component (the idle agent applies it).
    pub module: PathBuf,
    /// The probe component (the concurrent runs spin in it).
    pub probe: PathBuf,
    /// Where the built guests are (the compiled probes, `cni-conflist`).
    pub guests: PathBuf,
    /// Runs measured at once.
    pub concurrent: usize,
    /// Where the JSON goes.
    pub out: PathBuf,
}

pub fn run(cfg: &Config) -> BenchResult<()> {
    let scratch = tempfile::tempdir()?;
    let cli = cli_path()?;
    let limits = CompileLimits::default();
    let mut compiles = Vec::new();
    for &(language, probe) in COMPILED {
        let module = cfg.guests.join(format!("{probe}.wasm"));
        compiles.push(compile(&cli, language, &module, limits, scratch.path())?);
        if language != "rust" {
            let two = CompileLimits {
                threads: 2,
                memory_bytes: 640 << 20,
                ..limits
            };
            compiles.push(compile(&cli, language, &module, two, scratch.path())?);
        }
    }
    let rust_agent = Agent {
        name: "cni-install",
        module: &cfg.module,
        params: "{name: bench}",
        grants: "{files: {write: [/etc/cni/net.d, /opt/cni/bin]}}",
    };
    let python_agent = Agent {
        name: "cni-conflist",
        module: &cfg.guests.join("cni-conflist.wasm"),
        params: "{name: bench, bridge: br-bench, subnet: 10.22.0.0/16}",
        grants: "{files: {write: [/etc/cni/net.d]}}",
    };
    let compiled_rss = rust_agent.idle_rss(&cli, scratch.path(), "compiled")?;
    let agent_rss = rust_agent.idle_rss(&cli, scratch.path(), "precompiled")?;
    let python_compiled_rss = python_agent.idle_rss(&cli, scratch.path(), "compiled")?;
    let python_rss = python_agent.idle_rss(&cli, scratch.path(), "precompiled")?;
    let daemonset_rss = daemonset_container_rss(scratch.path())?;
    let (per_run_rss, per_run_memory) = concurrent_runs(cfg, scratch.path())?;
    let beyond_memory = per_run_rss - per_run_memory;
    // While it compiles, the agent's container holds the agent and its
    // compiler process: measured (the largest compile under the default
    // bounds) and at worst (the compiler at its memory limit).
    let limit_mib = daemonset_memory_limit_mib()?;
    let largest_compile = compiles
        .iter()
        .filter(|c| c.limits == limits)
        .map(|c| mib(c.stats.peak_rss_bytes))
        .fold(0.0, f64::max);
    let compiling_mib = python_rss.max(agent_rss) + largest_compile;
    let worst_mib = python_rss.max(agent_rss) + mib(limits.memory_bytes);

    let result = serde_json::json!({
        "suite": "memory",
        "compiles": compiles.iter().map(|c| serde_json::json!({
            "language": c.language,
            "module_bytes": c.module_bytes,
            "threads": c.limits.threads,
            "memory_limit_mib": mib(c.limits.memory_bytes),
            "peak_rss_mib": mib(c.stats.peak_rss_bytes),
            "cpu_s": c.stats.cpu_us as f64 / 1e6,
            "wall_s": c.stats.wall_us as f64 / 1e6,
        })).collect::<Vec<_>>(),
        "idle_agent_rss_mib": agent_rss,
        "idle_agent_rss_after_compiling_mib": compiled_rss,
        "idle_agent_python_rss_mib": python_rss,
        "idle_agent_python_rss_after_compiling_mib": python_compiled_rss,
        "agent_container_while_compiling_mib": compiling_mib,
        "agent_container_at_the_compile_memory_limit_mib": worst_mib,
        "daemonset_memory_limit_mib": limit_mib,
        "daemonset_container_rss_mib": daemonset_rss,
        "concurrent_runs": cfg.concurrent,
        "per_run_rss_mib": per_run_rss,
        "per_run_linear_memory_mib": per_run_memory,
        "per_run_rss_beyond_linear_memory_mib": beyond_memory,
        "budgets": {
            "idle_agent_rss_le_20mib": agent_rss <= BUDGET_IDLE_MIB,
            "idle_agent_rss_le_20mib_after_compiling": compiled_rss <= BUDGET_IDLE_MIB,
            "per_run_le_1mib_plus_linear_memory": beyond_memory <= BUDGET_PER_RUN_MIB,
            "compiling_fits_the_daemonset_limit": worst_mib <= limit_mib,
        },
    });
    println!("hostaction bench: memory (RSS)");
    println!(
        "  compiling, in the compiler process (defaults: {} MiB, {} s, {} thread):",
        mib(limits.memory_bytes),
        limits.timeout.as_secs(),
        limits.threads
    );
    println!(
        "    {:<11} {:>9} {:>8} {:>10} {:>13} {:>7} {:>7}",
        "language", "KiB", "threads", "limit MiB", "peak RSS MiB", "CPU s", "wall s"
    );
    for c in &compiles {
        println!(
            "    {:<11} {:>9} {:>8} {:>10.0} {:>13.1} {:>7.1} {:>7.1}",
            c.language,
            c.module_bytes / 1024,
            c.limits.threads,
            mib(c.limits.memory_bytes),
            mib(c.stats.peak_rss_bytes),
            c.stats.cpu_us as f64 / 1e6,
            c.stats.wall_us as f64 / 1e6
        );
    }
    println!(
        "  idle agent (static mode, cni-install applied): {agent_rss:.1} MiB loaded precompiled ({:.2}x the \
         {BUDGET_IDLE_MIB} MiB budget), {compiled_rss:.1} MiB right after compiling it ({:.2}x)",
        agent_rss / BUDGET_IDLE_MIB,
        compiled_rss / BUDGET_IDLE_MIB
    );
    println!(
        "  idle agent with the Python cni-conflist applied: {python_rss:.1} MiB loaded precompiled, \
         {python_compiled_rss:.1} MiB right after compiling it"
    );
    println!(
        "  the agent's container while compiling: {compiling_mib:.0} MiB measured, {worst_mib:.0} MiB with \
         the compiler at its limit; the DaemonSet's limit: {limit_mib:.0} MiB"
    );
    println!(
        "  a DaemonSet container's sh + sleep for the same change: {daemonset_rss:.1} MiB per action, \
         plus its pod's shim (agent precompiled / that: {:.1}x)",
        agent_rss / daemonset_rss
    );
    println!(
        "  {} concurrent runs: {per_run_rss:.2} MiB RSS each (budget: {BUDGET_PER_RUN_MIB} MiB plus the run's \
         linear memory, here {per_run_memory:.2} MiB, of which only the touched pages are resident)",
        cfg.concurrent
    );
    println!("  budgets: {}", result["budgets"]);
    write_json(&cfg.out, &result)
}

fn mib(bytes: u64) -> f64 {
    bytes as f64 / f64::from(1 << 20)
}

/// The CLI built beside this binary (same profile).
fn cli_path() -> BenchResult<PathBuf> {
    let cli = std::env::current_exe()?.with_file_name("hostaction");
    if !cli.exists() {
        return Err(format!(
            "{} is missing: cargo build --release -p hostaction-cli",
            cli.display()
        )
        .into());
    }
    Ok(cli)
}

/// One compile in the compiler process.
struct Compile {
    language: &'static str,
    module_bytes: u64,
    limits: CompileLimits,
    stats: CompileStats,
}

/// Compiles `module` with a fresh cache through `cli`'s compiler process.
fn compile(
    cli: &Path,
    language: &'static str,
    module: &Path,
    limits: CompileLimits,
    scratch: &Path,
) -> BenchResult<Compile> {
    let cache = tempfile::tempdir_in(scratch)?;
    let runtime = Runtime::new(RuntimeConfig {
        host_root: scratch.to_owned(),
        cache_dir: Some(cache.path().to_owned()),
        compiler: Compiler::Child {
            program: cli.to_owned(),
            limits,
        },
        ..RuntimeConfig::default()
    })?;
    let loaded = runtime
        .load_file(module)
        .map_err(|e| format!("{}: {e} (run scripts/build-guests.sh)", module.display()))?;
    let stats = loaded
        .compile
        .ok_or_else(|| format!("{language}: the module was not compiled"))?;
    Ok(Compile {
        language,
        module_bytes: std::fs::metadata(module)?.len(),
        limits,
        stats,
    })
}

/// The memory limit of the agent DaemonSet's container, in MiB.
fn daemonset_memory_limit_mib() -> BenchResult<f64> {
    let manifest = std::fs::read_to_string(DAEMONSET)?;
    let limit = manifest
        .split("limits: {memory: ")
        .nth(1)
        .and_then(|rest| rest.split_once("Mi}"))
        .and_then(|(n, _)| n.trim().parse::<f64>().ok())
        .ok_or_else(|| format!("{DAEMONSET}: no `limits: {{memory: NMi}}`"))?;
    Ok(limit)
}

/// A HostAction a static-mode agent applies (with its grants as the policy).
struct Agent<'a> {
    name: &'a str,
    module: &'a Path,
    params: &'a str,
    grants: &'a str,
}

impl Agent<'_> {
    /// RSS of a static-mode agent that applied the action and went idle;
    /// `pass` names its state file (the module cache is shared between
    /// passes).
    fn idle_rss(&self, cli: &Path, scratch: &Path, pass: &str) -> BenchResult<f64> {
        let dir = scratch.join(self.name);
        let (manifests, root) = (dir.join("manifests"), dir.join("root"));
        std::fs::create_dir_all(&manifests)?;
        std::fs::create_dir_all(&root)?;
        std::fs::write(
            manifests.join("action.yaml"),
            format!(
                "apiVersion: hostaction.dev/v1alpha1\nkind: HostAction\nmetadata: {{name: {}}}\n\
                 spec:\n  module: {}\n  params: {}\n  grants: {}\n",
                self.name,
                self.module.display(),
                self.params,
                self.grants
            ),
        )?;
        let policy = dir.join("policy.yaml");
        std::fs::write(&policy, self.grants)?;
        let state = dir.join(format!("state-{pass}.json"));
        let agent = Command::new(cli)
            .args(["agent", "--manifests"])
            .arg(&manifests)
            .arg("--state")
            .arg(&state)
            .arg("--host-root")
            .arg(&root)
            .arg("--policy")
            .arg(&policy)
            .arg("--cache-dir")
            .arg(dir.join("cache"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()?;
        let mut agent = Killed(agent);
        let applied = Instant::now();
        loop {
            let status = std::fs::read_to_string(&state)
                .ok()
                .and_then(|s| serde_json::from_str::<serde_json::Value>(&s).ok())
                .map(|s| s["actions"][self.name]["status"]["phase"].clone());
            match status.as_ref().and_then(|p| p.as_str()) {
                Some("Succeeded") => break,
                Some("Failed") => {
                    return Err(format!("the static agent failed to apply {}", self.name).into());
                }
                _ => {}
            }
            // A Python compile takes ~15 s of CPU, more on a busy machine.
            if applied.elapsed() > Duration::from_secs(300) {
                return Err(
                    format!("the static agent did not apply {} within 300 s", self.name).into(),
                );
            }
            if let Some(status) = agent.0.try_wait()? {
                return Err(format!("the static agent exited: {status}").into());
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        // Idle: past the pass, before the next (every 5 s).
        std::thread::sleep(Duration::from_secs(1));
        rss_mib(agent.0.id())
    }
}

/// RSS of what a DaemonSet's container keeps running per action: the shell
/// that made the change and the `sleep` that keeps the container up.
fn daemonset_container_rss(scratch: &Path) -> BenchResult<f64> {
    let dir = scratch.join("daemonset");
    let shell = Command::new("sh")
        .arg("-c")
        .arg("mkdir -p \"$D/opt/cni/bin\" && install -m 0755 /bin/true \"$D/opt/cni/bin/bench\"; sleep 600; :")
        .env("D", &dir)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()?;
    let shell = Killed(shell);
    let pid = shell.0.id();
    let started = Instant::now();
    loop {
        let children = std::fs::read_to_string(format!("/proc/{pid}/task/{pid}/children"))?;
        if let Some(sleep) = children.split_whitespace().next() {
            let sleep: u32 = sleep.parse()?;
            let comm = std::fs::read_to_string(format!("/proc/{sleep}/comm")).unwrap_or_default();
            if comm.trim() == "sleep" {
                let rss = rss_mib(pid)? + rss_mib(sleep)?;
                // Killing the shell leaves its sleep: end that first.
                let _ = Command::new("kill").arg(sleep.to_string()).status();
                return Ok(rss);
            }
        }
        if started.elapsed() > Duration::from_secs(10) {
            return Err("the DaemonSet stand-in shell did not reach its sleep".into());
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// RSS per run while `cfg.concurrent` runs spin at once, and the linear
/// memory each run held.
fn concurrent_runs(cfg: &Config, scratch: &Path) -> BenchResult<(f64, f64)> {
    let root = scratch.join("runs-root");
    std::fs::create_dir_all(&root)?;
    let runtime = Runtime::new(RuntimeConfig {
        host_root: root,
        cache_dir: None,
        system_bus: None,
        ..RuntimeConfig::default()
    })?;
    let module = runtime.load_file(&cfg.probe)?;
    let grant = EffectiveGrant::new(
        &Grant::parse("files: {write: [/opt/probe]}", "grant")?,
        None,
    )?;
    let spin = |timeout: Duration| {
        let mut request = RunRequest::new(r#"{"ops": [{"op": "spin"}]}"#, grant.clone());
        request.limits.timeout = timeout;
        request
    };
    // Warm: one run first, so that what is measured is the runs alone.
    runtime.run(&module, spin(Duration::from_millis(100)))?;
    let before = rss_mib(std::process::id())?;
    let (during, reports) = std::thread::scope(|scope| {
        let runs: Vec<_> = (0..cfg.concurrent)
            .map(|_| scope.spawn(|| runtime.run(&module, spin(SPIN))))
            .collect();
        std::thread::sleep(SPIN / 2);
        let during = rss_mib(std::process::id());
        let reports: Vec<_> = runs.into_iter().map(|r| r.join()).collect();
        (during, reports)
    });
    let mut memory = 0.0;
    for report in reports {
        let report = report.map_err(|_| "a run panicked")??;
        if !matches!(report.status, RunStatus::DeadlineExceeded(_)) {
            return Err(format!("a spinning run ended otherwise: {}", report.status).into());
        }
        memory += report.memory_bytes as f64 / f64::from(1 << 20);
    }
    let n = cfg.concurrent as f64;
    Ok(((during? - before) / n, memory / n))
}

/// A process's resident set, in MiB.
fn rss_mib(pid: u32) -> BenchResult<f64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    let kib: f64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().strip_suffix("kB"))
        .ok_or("no VmRSS in /proc/PID/status")?
        .trim()
        .parse()?;
    Ok(kib / 1024.0)
}

/// A child process killed (and reaped) when dropped.
struct Killed(Child);

impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}
