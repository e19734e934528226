//! The `services` suite (root only): one unit restarted, waiting for the
//! restart to finish, side by side in one run:
//!
//! - by an action (the svcprobe test component's `restart`, end to end as the
//!   agent runs a module it holds: look it up by digest, instantiate, run,
//!   with the runtime's D-Bus connection already made);
//! - by `systemctl restart`, what users run, inside the container with
//!   `nsenter` (whose own cost is measured apart and reported);
//! - by `busctl call ... RestartUnit`, which returns once the job is queued,
//!   without waiting for it: a floor for any command-line way.
//!
//! systemd runs in a container booted with systemd-nspawn (the tests' harness),
//! so the machine's own units are never touched. Writes
//! `target/bench/services.json`.

use std::path::PathBuf;
use std::process::Command;
use std::time::Instant;

use hostaction_runtime::grant::{EffectiveGrant, Grant, GrantDocument};
use hostaction_runtime::{RunRequest, Runtime, RuntimeConfig};
use hostaction_tests::systemd::{Systemd, Unit};
use serde_json::json;

use crate::{BenchResult, micros, stats, write_json};

/// Measured runs per variant at most: each restart forks a process in the container.
pub const MAX_ITERATIONS: usize = 200;
/// Untimed runs per variant first.
const WARMUP: usize = 10;
/// The unit restarted.
const UNIT: &str = "ha-bench.service";

/// The suite's inputs.
pub struct Config {
    /// Measured runs per variant.
    pub iterations: usize,
    /// The svcprobe component.
    pub module: PathBuf,
    /// The JSON results.
    pub out: PathBuf,
}

/// Runs the suite and writes its results to `cfg.out`.
pub fn run(cfg: &Config) -> BenchResult<()> {
    let bytes = std::fs::read(&cfg.module).map_err(|e| {
        format!(
            "{}: {e} (run scripts/build-guests.sh)",
            cfg.module.display()
        )
    })?;
    let systemd = Systemd::boot(
        &[Unit {
            name: UNIT,
            // No start rate limit: the suite restarts it hundreds of times.
            contents: "[Unit]\nStartLimitIntervalSec=0\n[Service]\nExecStart=/bin/sleep infinity\n",
            enabled: true,
        }],
        &[],
    );
    let leader = systemd
        .leader_pid()
        .ok_or("cannot find the container's systemd")?
        .to_string();
    let cache = tempfile::tempdir()?;
    let runtime = Runtime::new(RuntimeConfig {
        host_root: PathBuf::from("/"),
        cache_dir: Some(cache.path().to_path_buf()),
        system_bus: Some(systemd.address()),
        ..RuntimeConfig::default()
    })?;
    let digest = runtime.load(&bytes)?.digest.clone();
    let grant = EffectiveGrant::new(
        &Grant::parse(&format!("services: {{units: [{UNIT}]}}"), "bench grant")?,
        None,
    )?;
    let params = json!({"ops": [{"op": "restart", "unit": UNIT, "timeout_ms": 30000}]});
    let request = RunRequest::new(params.to_string(), grant);

    let action = || -> BenchResult<f64> {
        let start = Instant::now();
        let module = runtime
            .loaded(&digest)
            .ok_or("the module is no longer held in memory")?;
        let report = runtime.run(&module, request.clone())?;
        let took = micros(start);
        let fact = report
            .outcome
            .as_ref()
            .and_then(|o| o.facts.first())
            .map(|(_, v)| v.clone())
            .unwrap_or_default();
        if !report.status.is_success() || !fact.contains("\"done\"") {
            return Err(format!("the action's restart failed: {} {fact}", report.status).into());
        }
        Ok(took)
    };
    let inside = |args: &[&str]| -> BenchResult<f64> {
        timed(
            Command::new("nsenter")
                .args(["-t", &leader, "-m", "-u", "-i", "-n", "-p"])
                .args(args),
        )
    };
    let busctl = || -> BenchResult<f64> {
        timed(
            Command::new("busctl")
                .env("DBUS_SYSTEM_BUS_ADDRESS", systemd.address())
                .args(["--system", "call", "org.freedesktop.systemd1"])
                .args([
                    "/org/freedesktop/systemd1",
                    "org.freedesktop.systemd1.Manager",
                ])
                .args(["RestartUnit", "ss", UNIT, "replace"]),
        )
    };

    // In turns, so that whatever else the machine does falls on all alike.
    let mut samples: [Vec<f64>; 4] = Default::default();
    for round in 0..WARMUP + cfg.iterations {
        let took = [
            action()?,
            inside(&["systemctl", "restart", UNIT])?,
            busctl()?,
            inside(&["true"])?,
        ];
        if round >= WARMUP {
            for (s, t) in samples.iter_mut().zip(took) {
                s.push(t);
            }
        }
    }
    let [action, systemctl, busctl, nsenter] = samples.map(stats);
    let systemctl_net = systemctl.p50_us - nsenter.p50_us;
    let result = json!({
        "suite": "services",
        "unit": UNIT,
        "action_restart": action,
        "systemctl_restart_via_nsenter": systemctl,
        "nsenter_true": nsenter,
        "systemctl_restart_p50_without_nsenter_us": systemctl_net,
        "busctl_restart_unit_no_wait": busctl,
        "systemctl_over_action_p50": systemctl_net / action.p50_us,
        "budgets": {
            "action_p50_below_systemctl_p50": action.p50_us < systemctl_net,
        },
    });
    println!(
        "hostaction bench: services (restart of {UNIT} in a systemd booted with systemd-nspawn, {} runs each)",
        cfg.iterations
    );
    println!("  {:<40} {:>10} {:>10}", "way", "p50 µs", "p99 µs");
    for (name, s) in [
        ("action (waits for JobRemoved)", &action),
        ("systemctl restart (via nsenter)", &systemctl),
        ("  of which nsenter alone", &nsenter),
        ("busctl RestartUnit (does not wait)", &busctl),
    ] {
        println!("  {name:<40} {:>10.0} {:>10.0}", s.p50_us, s.p99_us);
    }
    println!(
        "  systemctl without nsenter p50 {systemctl_net:.0} µs: {:.1}x the action's",
        systemctl_net / action.p50_us
    );
    println!("  budgets: {}", result["budgets"]);
    write_json(&cfg.out, &result)
}

/// Runs a command to completion and times it; fails on a failed exit.
fn timed(cmd: &mut Command) -> BenchResult<f64> {
    let start = Instant::now();
    let out = cmd.output()?;
    let took = micros(start);
    if !out.status.success() {
        return Err(format!(
            "{:?} failed: {}",
            cmd,
            String::from_utf8_lossy(&out.stderr).trim()
        )
        .into());
    }
    Ok(took)
}
