//! `hostaction-bench`: measures hostaction against what users would do instead,
//! side by side in one run, and prints and writes the figures as JSON.
//!
//! Suites (`--suite`, all by default):
//! - `files` ([`files`]): `cni-install` against the same change made by a
//!   shell script (`mkdir -p`, `install`); writes `target/bench/files.json`.
//! - `network` ([`network`], needs root): `vxlan-overlay` against the same
//!   topology made by `overlay.sh` (`ip`) and by the same netlink calls made
//!   natively from Rust; writes `target/bench/network.json`.
//! - `services` ([`services`], needs root): a unit restart by an action
//!   against `systemctl restart` and `busctl`; writes
//!   `target/bench/services.json`.
//! - `oci` ([`oci`]): cold, warm and hot starts of an action pulled from a
//!   real registry on 127.0.0.1, beside `skopeo copy`; writes
//!   `target/bench/oci.json`.
//! - `cluster` ([`cluster`]): one HostAction fanned out to each of
//!   `--nodes` (100 and 1000) simulated nodes — a real kube-apiserver and
//!   etcd, the controller process, one real node agent per node in this
//!   process — timed until every run Succeeded, with the API writes per node
//!   and the control plane's CPU seconds; writes `target/bench/cluster.json`.
//! - `languages` ([`languages`]): the same action in Rust, Python,
//!   JavaScript and C side by side — size, first compile, precompiled-cache
//!   load, instantiate and run; writes `target/bench/languages.json`.
//! - `memory` ([`memory`]): the compiler process's peak RSS per language,
//!   the idle agent's RSS beside a DaemonSet container's processes and
//!   against the agent DaemonSet's memory limit, and the RSS each
//!   concurrent run adds beside its linear memory; writes
//!   `target/bench/memory.json`.
//! - `undo` ([`undo`]): cni-install (and, as root, vxlan-overlay) with the
//!   undo journal against without it, fresh and in shape, and the rollback
//!   of a 100-file action, against its budget (≤ 1.3× and ≤ 1 ms added
//!   on cni-install); writes `target/bench/undo.json`.

mod cluster;
mod files;
mod languages;
mod memory;
mod network;
mod oci;
mod services;
mod undo;

use std::path::{Path, PathBuf};
use std::time::Instant;

use clap::{Parser, ValueEnum};
use serde::Serialize;

#[derive(Parser)]
#[command(
    about = "Benchmarks hostaction against shell scripts and native Rust; prints and writes JSON"
)]
struct Args {
    /// Which suite to run.
    #[arg(long, value_enum, default_value_t = Suite::All)]
    suite: Suite,
    /// Runs per measured variant (the network suite uses at most 100, since
    /// each fresh run needs new network namespaces).
    #[arg(long, default_value_t = 1000)]
    iterations: usize,
    /// The cni-install component (files suite).
    #[arg(long, default_value = "target/guests/cni-install.wasm")]
    module: PathBuf,
    /// The vxlan-overlay component (network suite).
    #[arg(long, default_value = "target/guests/vxlan-overlay.wasm")]
    overlay_module: PathBuf,
    /// The `ip` script that makes the same overlay (network suite).
    #[arg(long, default_value = "sample-actions/vxlan-overlay/overlay.sh")]
    overlay_script: PathBuf,
    /// The component whose `restart` op the services suite runs.
    #[arg(long, default_value = "target/guests/svcprobe.wasm")]
    services_module: PathBuf,
    /// The probe component the cluster suite's action runs (and the memory
    /// suite's concurrent runs).
    #[arg(long, default_value = "target/guests/probe.wasm")]
    cluster_module: PathBuf,
    /// Where the built guests are (languages and memory suites: each
    /// language's probe).
    #[arg(long, default_value = "target/guests")]
    guests: PathBuf,
    /// Runs measured at once (memory suite).
    #[arg(long, default_value_t = 16)]
    concurrent: usize,
    /// Simulated nodes (cluster suite): one fan-out per size, each on a
    /// control plane of its own.
    #[arg(long, value_delimiter = ',', default_value = "100,1000")]
    nodes: Vec<usize>,
    /// Where to write the JSON results (`<suite>.json`).
    #[arg(long, default_value = "target/bench")]
    out_dir: PathBuf,
}

/// The suites `--suite` picks from.
#[derive(Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Suite {
    /// cni-install against `install`.
    Files,
    /// vxlan-overlay against `ip` and native netlink calls (root only).
    Network,
    /// A unit restart against `systemctl` and `busctl` (root only).
    Services,
    /// Cold, warm and hot starts from a registry, beside `skopeo copy`.
    Oci,
    /// One HostAction to `--nodes` simulated nodes on a real kube-apiserver:
    /// time, API writes and CPU.
    Cluster,
    /// The same action in Rust, Python, JavaScript and C.
    Languages,
    /// RSS of the idle agent and of each concurrent run.
    Memory,
    /// The undo journal's cost, and a 100-file rollback.
    Undo,
    /// All; the root-only suites are skipped with a note when not root.
    All,
}

/// p50 and p99 of one measured variant, in microseconds.
#[derive(Clone, Copy, Serialize)]
struct Stats {
    p50_us: f64,
    p99_us: f64,
    runs: usize,
}

/// p50 and p99 of `samples` (nearest rank); zeros when there are none.
fn stats(mut samples: Vec<f64>) -> Stats {
    samples.sort_by(f64::total_cmp);
    let at = |q: f64| {
        let last = samples.len().saturating_sub(1);
        samples
            .get((last as f64 * q).round() as usize)
            .copied()
            .unwrap_or(0.0)
    };
    Stats {
        p50_us: at(0.50),
        p99_us: at(0.99),
        runs: samples.len(),
    }
}

fn micros(start: Instant) -> f64 {
    start.elapsed().as_secs_f64() * 1e6
}

type BenchResult<T> = Result<T, Box<dyn std::error::Error>>;

/// Writes a suite's results as pretty JSON, making the directory if needed.
fn write_json(path: &Path, value: &serde_json::Value) -> BenchResult<()> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    std::fs::write(path, serde_json::to_string_pretty(value)?)?;
    println!("  wrote {}", path.display());
    Ok(())
}

fn main() -> BenchResult<()> {
    let args = Args::parse();
    if matches!(args.suite, Suite::Files | Suite::All) {
        files::run(
            args.iterations,
            &args.module,
            &args.out_dir.join("files.json"),
        )?;
    }
    if matches!(args.suite, Suite::Oci | Suite::All) {
        oci::run(&oci::Config {
            iterations: args.iterations.min(oci::MAX_ITERATIONS),
            module: args.module.clone(),
            out: args.out_dir.join("oci.json"),
        })?;
    }
    if matches!(args.suite, Suite::Cluster | Suite::All) {
        cluster::run(&cluster::Config {
            nodes: args.nodes.clone(),
            module: args.cluster_module.clone(),
            out: args.out_dir.join("cluster.json"),
        })?;
    }
    if matches!(args.suite, Suite::Languages | Suite::All) {
        languages::run(&languages::Config {
            iterations: args.iterations,
            guests: args.guests.clone(),
            out: args.out_dir.join("languages.json"),
        })?;
    }
    if matches!(args.suite, Suite::Memory | Suite::All) {
        memory::run(&memory::Config {
            module: args.module.clone(),
            probe: args.cluster_module.clone(),
            guests: args.guests.clone(),
            concurrent: args.concurrent,
            out: args.out_dir.join("memory.json"),
        })?;
    }
    if matches!(args.suite, Suite::Undo | Suite::All) {
        undo::run(&undo::Config {
            iterations: args.iterations,
            module: args.module.clone(),
            overlay_module: args.overlay_module.clone(),
            probe: args.cluster_module.clone(),
            out: args.out_dir.join("undo.json"),
        })?;
    }
    if matches!(args.suite, Suite::Network | Suite::Services | Suite::All)
        && !rustix::process::geteuid().is_root()
    {
        // Namespaces, links and a booted systemd need root: without it, `all`
        // leaves those suites out rather than failing the files one.
        if args.suite != Suite::All {
            return Err("the network and services suites need root".into());
        }
        println!("hostaction bench: network and services skipped (need root)");
        return Ok(());
    }
    if matches!(args.suite, Suite::Network | Suite::All) {
        network::run(&network::Config {
            iterations: args.iterations.min(network::MAX_ITERATIONS),
            module: args.overlay_module.clone(),
            script: args.overlay_script.clone(),
            out: args.out_dir.join("network.json"),
        })?;
    }
    if matches!(args.suite, Suite::Services | Suite::All) {
        services::run(&services::Config {
            iterations: args.iterations.min(services::MAX_ITERATIONS),
            module: args.services_module.clone(),
            out: args.out_dir.join("services.json"),
        })?;
    }
    Ok(())
}
