//! The `memory` suite: resident memory (RSS) of the node agent and of each
//! concurrent run, against what a DaemonSet costs instead.
//!
//! - Idle agent: `hostaction agent --manifests DIR` (static mode) after it
//!   applied `cni-install`, idle between passes: once right after compiling
//!   it (a node's first run of a module), once restarted, loading it from the
//!   precompiled cache (a node's steady state); beside the processes a
//!   DaemonSet's container keeps per action for the same change (`sh` making
//!   the change, then `sleep` to stay up). The container runtime's per-pod
//!   shim comes on top of those and is not measured here.
//! - Per concurrent run: this process's RSS while `--concurrent` probe runs
//!   spin in one runtime, over its RSS before, per run, beside each run's own
//!   linear memory (the report's `memory_bytes`).

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use hostaction_runtime::grant::{EffectiveGrant, Grant, GrantDocument};
use hostaction_runtime::{RunRequest, RunStatus, Runtime, RuntimeConfig};

use crate::{BenchResult, write_json};

/// Budget: the idle agent's RSS.
const BUDGET_IDLE_MIB: f64 = 30.0;
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
    /// Runs measured at once.
    pub concurrent: usize,
    /// Where the JSON goes.
    pub out: PathBuf,
}

pub fn run(cfg: &Config) -> BenchResult<()> {
    let scratch = tempfile::tempdir()?;
    let compiled_rss = idle_agent_rss(&cfg.module, scratch.path(), "compiled")?;
    let agent_rss = idle_agent_rss(&cfg.module, scratch.path(), "precompiled")?;
    let daemonset_rss = daemonset_container_rss(scratch.path())?;
    let (per_run_rss, per_run_memory) = concurrent_runs(cfg, scratch.path())?;
    let beyond_memory = per_run_rss - per_run_memory;

    let result = serde_json::json!({
        "suite": "memory",
        "idle_agent_rss_mib": agent_rss,
        "idle_agent_rss_after_compiling_mib": compiled_rss,
        "daemonset_container_rss_mib": daemonset_rss,
        "concurrent_runs": cfg.concurrent,
        "per_run_rss_mib": per_run_rss,
        "per_run_linear_memory_mib": per_run_memory,
        "per_run_rss_beyond_linear_memory_mib": beyond_memory,
        "budgets": {
            "idle_agent_rss_le_30mib": agent_rss <= BUDGET_IDLE_MIB,
            "idle_agent_rss_le_30mib_after_compiling": compiled_rss <= BUDGET_IDLE_MIB,
            "per_run_le_1mib_plus_linear_memory": beyond_memory <= BUDGET_PER_RUN_MIB,
        },
    });
    println!("hostaction bench: memory (RSS)");
    println!(
        "  idle agent (static mode, cni-install applied): {agent_rss:.1} MiB loaded precompiled ({:.2}x the \
         {BUDGET_IDLE_MIB} MiB budget), {compiled_rss:.1} MiB right after compiling it ({:.2}x)",
        agent_rss / BUDGET_IDLE_MIB,
        compiled_rss / BUDGET_IDLE_MIB
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

/// RSS of a static-mode agent that applied `module` and went idle; `pass`
/// names its state file (the module cache is shared between passes).
fn idle_agent_rss(module: &Path, scratch: &Path, pass: &str) -> BenchResult<f64> {
    let (manifests, root) = (scratch.join("manifests"), scratch.join("root"));
    std::fs::create_dir_all(&manifests)?;
    std::fs::create_dir_all(&root)?;
    std::fs::write(
        manifests.join("cni.yaml"),
        format!(
            "apiVersion: hostaction.dev/v1alpha1\nkind: HostAction\nmetadata: {{name: cni}}\n\
             spec:\n  module: {}\n  params: {{name: bench}}\n  \
             grants: {{files: {{write: [/etc/cni/net.d, /opt/cni/bin]}}}}\n",
            module.display()
        ),
    )?;
    let state = scratch.join(format!("state-{pass}.json"));
    // The CLI built beside this binary (same profile).
    let cli = std::env::current_exe()?.with_file_name("hostaction");
    if !cli.exists() {
        return Err(format!(
            "{} is missing: cargo build --release -p hostaction-runtime",
            cli.display()
        )
        .into());
    }
    let agent = Command::new(cli)
        .args(["agent", "--unbounded-grants", "--manifests"])
        .arg(&manifests)
        .arg("--state")
        .arg(&state)
        .arg("--host-root")
        .arg(&root)
        .arg("--cache-dir")
        .arg(scratch.join("cache"))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()?;
    let mut agent = Killed(agent);
    let applied = Instant::now();
    loop {
        let done = std::fs::read_to_string(&state)
            .ok()
            .and_then(|s| serde_json::from_str::<serde_json::Value>(&s).ok())
            .is_some_and(|s| s["actions"]["cni"]["status"]["phase"] == "Succeeded");
        if done {
            break;
        }
        if applied.elapsed() > Duration::from_secs(60) {
            return Err("the static agent did not apply cni-install within 60 s".into());
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
