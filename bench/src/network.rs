//! The `network` suite (root only): one VXLAN overlay (bridge, vxlan on an
//! underlay device, veth pair into a workload namespace with an address) made
//! three ways, side by side in one run:
//!
//! - by the `vxlan-overlay` action (end to end as the agent runs a module it
//!   holds: look it up by digest, instantiate, run);
//! - by `overlay.sh`, the `ip` script users write today;
//! - by the same backend calls made natively from Rust ([`native`]).
//!
//! Each is measured from scratch (both namespaces deleted and the host-side
//! one made again before every run, not timed) and converged (a re-run with
//! nothing to change). Each way works in its own host-side namespace, which
//! stands in for the host, so no link of the machine itself is touched.
//! Runs interleave the three ways, in turns, so that background work (the
//! kernel frees deleted namespaces asynchronously, under the lock netlink
//! changes take) falls on all of them alike.
//! After the first fresh runs and at the end, the three overlays are compared
//! link by link. Writes `target/bench/network.json`.

mod native;
pub(crate) mod scratch;

use std::path::PathBuf;
use std::process::Command;
use std::time::{Duration, Instant};

use hostaction_runtime::grant::{EffectiveGrant, Grant, GrantDocument};
use hostaction_runtime::{RunRequest, Runtime, RuntimeConfig};
use serde_json::json;

use crate::{BenchResult, Stats, micros, stats, write_json};
use native::Native;
use scratch::Scratch;

/// Most runs per variant: each fresh run makes and deletes two namespaces,
/// which takes the kernel far longer than the runs themselves.
pub const MAX_ITERATIONS: usize = 100;
/// Untimed runs per variant before measuring.
const WARMUP: usize = 3;
/// Pause after deleting namespaces, before the next fresh runs.
const SETTLE: Duration = Duration::from_millis(50);
/// Untimed pause between the fresh and the converged runs, for the kernel to
/// free the namespaces the fresh runs deleted.
const SETTLE_BEFORE_CONVERGED: Duration = Duration::from_secs(2);

// The overlay, as sample-actions/vxlan-overlay/params.json has it.
const BRIDGE: &str = "br-ovl";
const MTU: u32 = 1450;
const VXLAN: &str = "vx-ovl";
const VNI: u32 = 42;
const LOCAL: &str = "192.168.50.1";
const REMOTE: &str = "192.168.50.2";
const PORT: u16 = 4789;
/// The underlay device, made by the setup in each host-side namespace.
const DEVICE: &str = "ul0";
/// The other end of the underlay veth.
const UNDERLAY_PEER: &str = "ul0-peer";
const HOST_END: &str = "ve-ovl";
const WORKLOAD_IF: &str = "ve-ovl-w";
const WORKLOAD_ADDRESS: &str = "10.244.0.1/24";

/// What the suite runs and where it writes.
pub struct Config {
    /// Measured runs per variant and mode.
    pub iterations: usize,
    /// The vxlan-overlay component.
    pub module: PathBuf,
    /// overlay.sh.
    pub script: PathBuf,
    /// The JSON results.
    pub out: PathBuf,
}

/// The two namespaces one way of making the overlay works in.
pub struct Place {
    /// Stands in for the host: bridge, vxlan, the veth's host end.
    pub host: String,
    /// The workload's namespace: the veth's other end.
    pub work: String,
}

/// The three ways of making the overlay.
#[derive(Clone, Copy)]
enum Way {
    Action,
    Script,
    Native,
}

const WAYS: [Way; 3] = [Way::Action, Way::Script, Way::Native];

/// The ways in the order of `round`: each goes first, second and third in
/// turn, so none always runs just after the script's processes.
fn order(round: usize) -> [Way; 3] {
    let mut ways = WAYS;
    ways.rotate_left(round % WAYS.len());
    ways
}

impl Way {
    fn tag(self) -> &'static str {
        match self {
            Way::Action => "action",
            Way::Script => "script",
            Way::Native => "native",
        }
    }
}

/// One timed run: end to end, and the action's own split of it.
struct Sample {
    e2e: f64,
    instantiate: f64,
    run: f64,
    /// The action's run without the load (instantiate, run, report).
    total: f64,
}

/// Samples of one way in one mode.
#[derive(Default)]
struct Samples {
    e2e: Vec<f64>,
    instantiate: Vec<f64>,
    run: Vec<f64>,
    total: Vec<f64>,
}

impl Samples {
    fn push(&mut self, s: Sample) {
        self.e2e.push(s.e2e);
        self.instantiate.push(s.instantiate);
        self.run.push(s.run);
        self.total.push(s.total);
    }
}

/// Everything a run needs, made once.
struct Bench {
    runtime: Runtime,
    bytes: Vec<u8>,
    /// The module's digest: the agent runs what it holds by digest.
    digest: String,
    /// The action's run, in the action's namespaces.
    request: RunRequest,
    script: PathBuf,
    native: Native,
    scratch: Scratch,
    places: Vec<Place>,
}

impl Bench {
    /// Makes the overlay in the namespaces of `way` and times it; `fresh`
    /// says whether it must change something (true) or nothing (false).
    fn once(&self, way: Way, fresh: bool) -> BenchResult<Sample> {
        let place = &self.places[way as usize];
        let plain = |e2e| Sample {
            e2e,
            instantiate: 0.0,
            run: 0.0,
            total: 0.0,
        };
        let (sample, changed) = match way {
            Way::Action => {
                let request = self.request.clone();
                let start = Instant::now();
                let module = self
                    .runtime
                    .loaded(&self.digest)
                    .ok_or("the module is no longer held in memory")?;
                let report = self.runtime.run(&module, request)?;
                let e2e = micros(start);
                if !report.status.is_success() {
                    return Err(format!("vxlan-overlay failed: {}", report.status).into());
                }
                let t = &report.timing;
                let sample = Sample {
                    e2e,
                    instantiate: t.instantiate_us as f64,
                    run: t.run_us as f64,
                    total: t.total_us as f64,
                };
                (sample, Some(report.changed()))
            }
            Way::Script => {
                let mut cmd = Command::new("sh");
                cmd.arg(&self.script).envs(script_env(place));
                let start = Instant::now();
                let status = cmd.status()?;
                let e2e = micros(start);
                if !status.success() {
                    return Err(format!("{} failed: {status}", self.script.display()).into());
                }
                (plain(e2e), None)
            }
            Way::Native => {
                let start = Instant::now();
                let changed = self.native.ensure(self.scratch.dir(), place)?;
                (plain(micros(start)), Some(changed))
            }
        };
        if let Some(changed) = changed
            && changed != fresh
        {
            return Err(format!(
                "{}: changed={changed} on a {} run",
                way.tag(),
                if fresh { "fresh" } else { "converged" }
            )
            .into());
        }
        Ok(sample)
    }
}

/// The action's params for `place`.
pub(crate) fn params(place: &Place) -> serde_json::Value {
    json!({
        "netns": place.host,
        "bridge": BRIDGE,
        "mtu": MTU,
        "vxlan": {
            "name": VXLAN, "vni": VNI, "local": LOCAL, "remote": REMOTE,
            "port": PORT, "device": DEVICE,
        },
        "workload": {
            "netns": place.work, "hostEnd": HOST_END, "name": WORKLOAD_IF,
            "address": WORKLOAD_ADDRESS,
        },
    })
}

/// overlay.sh's environment for `place`.
fn script_env(place: &Place) -> Vec<(&'static str, String)> {
    vec![
        ("NETNS", place.host.clone()),
        ("BRIDGE", BRIDGE.into()),
        ("MTU", MTU.to_string()),
        ("VXLAN", VXLAN.into()),
        ("VNI", VNI.to_string()),
        ("LOCAL", LOCAL.into()),
        ("REMOTE", REMOTE.into()),
        ("PORT", PORT.to_string()),
        ("DEVICE", DEVICE.into()),
        ("WORKLOAD_NETNS", place.work.clone()),
        ("HOST_END", HOST_END.into()),
        ("WORKLOAD_IF", WORKLOAD_IF.into()),
        ("WORKLOAD_ADDRESS", WORKLOAD_ADDRESS.into()),
    ]
}

/// The action's grant: this process's namespaces, the overlay's links.
pub(crate) fn grant(netns_pattern: &str) -> String {
    format!(
        "network:\n  netns: [\"{netns_pattern}\"]\n  \
         interfaces: [{BRIDGE}, {VXLAN}, {DEVICE}, \"{HOST_END}*\"]\n  \
         kinds: [bridge, vxlan, veth]\n  addresses: [10.244.0.0/16]\n  ownedOnly: true\n"
    )
}

/// Runs the suite and writes its results to `cfg.out`.
pub fn run(cfg: &Config) -> BenchResult<()> {
    let bytes = std::fs::read(&cfg.module).map_err(|e| {
        format!(
            "{}: {e} (run scripts/build-guests.sh)",
            cfg.module.display()
        )
    })?;
    if !cfg.script.is_file() {
        return Err(format!("{}: not found", cfg.script.display()).into());
    }
    let cache = tempfile::tempdir()?;
    // Host root `/`: the runtime's named namespaces are then /var/run/netns,
    // where `ip netns` keeps them too.
    let runtime = Runtime::new(RuntimeConfig {
        host_root: PathBuf::from("/"),
        cache_dir: Some(cache.path().to_path_buf()),
        system_bus: None,
        ..RuntimeConfig::default()
    })?;
    let compile_start = Instant::now();
    let digest = runtime.load(&bytes)?.digest.clone();
    let compile_us = micros(compile_start);
    let mut scratch = Scratch::new()?;
    let grant_text = grant(&scratch.pattern());
    let places: Vec<Place> = WAYS.iter().map(|w| scratch.place(w.tag())).collect();
    let grant = EffectiveGrant::new(&Grant::parse(&grant_text, "bench grant")?, None)?;
    let request = RunRequest::new(params(&places[Way::Action as usize]).to_string(), grant);
    let mut bench = Bench {
        runtime,
        bytes,
        digest,
        request,
        script: cfg.script.clone(),
        native: Native::new()?,
        scratch,
        places,
    };

    let mut fresh: [Samples; 3] = Default::default();
    let mut converged: [Samples; 3] = Default::default();
    for round in 0..WARMUP + cfg.iterations {
        // Not timed: the kernel frees deleted namespaces in the background,
        // under the locks the runs need; let it finish first.
        for place in &bench.places {
            bench.scratch.delete(place)?;
        }
        std::thread::sleep(SETTLE);
        for way in order(round) {
            bench.scratch.reset(&bench.places[way as usize])?;
            let sample = bench.once(way, true)?;
            if round >= WARMUP {
                fresh[way as usize].push(sample);
            }
        }
        if round == 0 {
            check_same_topology(&bench)?;
        }
    }
    // Each way's namespaces hold its overlay from its last fresh run. The
    // kernel may still be freeing the namespaces the fresh runs deleted (it
    // takes the same lock as every netlink change): give it time, and take
    // the ways in turns here too, so what is left falls on all alike.
    std::thread::sleep(SETTLE_BEFORE_CONVERGED);
    for round in 0..WARMUP + cfg.iterations {
        for way in order(round) {
            let sample = bench.once(way, false)?;
            if round >= WARMUP {
                converged[way as usize].push(sample);
            }
        }
    }
    check_same_topology(&bench)?;
    bench.scratch.cleanup()?;

    let fresh = Mode::new(fresh);
    let conv = Mode::new(converged);
    let le_1_3x_native = |m: &Mode| m.action.p50_us <= 1.3 * m.native.p50_us;
    let below_script = |m: &Mode| m.action.p50_us < m.script.p50_us;
    let result = json!({
        "suite": "network",
        "module": cfg.module,
        "module_bytes": bench.bytes.len(),
        "script": cfg.script,
        "compile_us": compile_us,
        "iterations": cfg.iterations,
        "note": format!(
            "at most {MAX_ITERATIONS} runs per variant: each fresh run makes and deletes two \
             network namespaces"
        ),
        "fresh_namespaces": fresh.json(),
        "converged": conv.json(),
        "budgets": {
            "action_p50_le_1_3x_native": le_1_3x_native(&fresh) && le_1_3x_native(&conv),
            "action_p50_below_script_p50": below_script(&fresh) && below_script(&conv),
        },
    });

    println!(
        "hostaction bench: network (vxlan-overlay, {} runs per variant; at most {MAX_ITERATIONS}, \
         since each fresh run makes and deletes two network namespaces)",
        cfg.iterations
    );
    println!(
        "  {:<16} {:>15} {:>13} {:>13} {:>15} {:>13} {:>9} {:>9}",
        "namespaces",
        "action e2e",
        "instantiate",
        "run",
        "script (ip)",
        "native",
        "a/script",
        "a/native"
    );
    for (name, m) in [("fresh", &fresh), ("already in shape", &conv)] {
        println!(
            "  {:<16} {:>7.0}/{:<7.0} {:>6.0}/{:<6.0} {:>6.0}/{:<6.0} {:>7.0}/{:<7.0} {:>6.0}/{:<6.0} \
             {:>8.2}x {:>8.2}x",
            name,
            m.action.p50_us,
            m.action.p99_us,
            m.instantiate.p50_us,
            m.instantiate.p99_us,
            m.run.p50_us,
            m.run.p99_us,
            m.script.p50_us,
            m.script.p99_us,
            m.native.p50_us,
            m.native.p99_us,
            m.action_over_script(),
            m.action_over_native(),
        );
    }
    println!("  (µs, p50/p99; a/ = action end-to-end p50 over the other's p50)");
    println!(
        "  action without the lookup by digest: p50 {:.0} µs fresh, {:.0} µs already in shape",
        fresh.unloaded.p50_us, conv.unloaded.p50_us
    );
    println!("  budgets: {}", result["budgets"]);
    write_json(&cfg.out, &result)
}

/// The figures of one mode (fresh or converged).
struct Mode {
    action: Stats,
    instantiate: Stats,
    run: Stats,
    /// The action without the lookup by digest.
    unloaded: Stats,
    script: Stats,
    native: Stats,
}

impl Mode {
    fn new([action, script, native]: [Samples; 3]) -> Self {
        Mode {
            instantiate: stats(action.instantiate),
            run: stats(action.run),
            unloaded: stats(action.total),
            action: stats(action.e2e),
            script: stats(script.e2e),
            native: stats(native.e2e),
        }
    }

    fn action_over_script(&self) -> f64 {
        self.action.p50_us / self.script.p50_us
    }

    fn action_over_native(&self) -> f64 {
        self.action.p50_us / self.native.p50_us
    }

    fn json(&self) -> serde_json::Value {
        json!({
            "action_end_to_end": self.action,
            "action_instantiate": self.instantiate,
            "action_run": self.run,
            "action_without_load": self.unloaded,
            "script": self.script,
            "native": self.native,
            "action_over_script_p50": self.action_over_script(),
            "action_over_native_p50": self.action_over_native(),
            "action_without_load_over_native_p50": self.unloaded.p50_us / self.native.p50_us,
        })
    }
}

/// Fails unless the three ways made the same links (names, kinds, MTUs,
/// states, masters), so that the figures compare the same work.
fn check_same_topology(bench: &Bench) -> BenchResult<()> {
    let mut seen: Option<(Way, Vec<String>)> = None;
    for way in WAYS {
        let links = bench.scratch.topology(&bench.places[way as usize])?;
        match &seen {
            None => seen = Some((way, links)),
            Some((first, want)) if *want != links => {
                return Err(format!(
                    "{} and {} made different overlays:\n  {}\nvs\n  {}",
                    first.tag(),
                    way.tag(),
                    want.join("\n  "),
                    links.join("\n  ")
                )
                .into());
            }
            Some(_) => {}
        }
    }
    Ok(())
}
