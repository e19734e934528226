//! The `undo` suite: what the write-ahead undo journal costs, in one run.
//!
//! - `cni-install` end to end with the journal (`JournalMode::Required`, a
//!   journal directory on the scratch root's filesystem) against the same
//!   run with `JournalMode::Off`, on a fresh host root (every file written,
//!   so every mutation journaled and fdatasync'ed first) and on one already
//!   in shape (nothing changes, nothing is journaled). Budget (issue 17): on
//!   the files action, ≤ 1.3× and ≤ 1 ms added per run, at p50.
//! - `vxlan-overlay` the same way (root only): fresh namespaces and in shape.
//! - The rollback of a 100-file action: the probe writes 100 files then
//!   fails; rolled back (the default) against the same run with
//!   `--on-failure keep`; the rollback's own µs as the report gives them.
//!
//! The two variants of each pair alternate run by run, so background work
//! falls on both alike. Journals of finished runs are removed between runs,
//! untimed. Writes `target/bench/undo.json`.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use hostaction_runtime::grant::{EffectiveGrant, Grant, GrantDocument};
use hostaction_runtime::undo::{JournalMode, OnFailure};
use hostaction_runtime::{RunRequest, Runtime, RuntimeConfig};
use serde_json::json;

use crate::network::scratch::Scratch;
use crate::{BenchResult, Stats, micros, stats, write_json};

/// Most runs per variant (fsyncs are slow on some disks; the suite runs in CI).
pub const MAX_ITERATIONS: usize = 200;
/// Most network runs per variant: each fresh one remakes two namespaces.
const MAX_NETWORK_ITERATIONS: usize = 30;
/// Runs of the 100-file action per variant.
const ROLLBACK_ITERATIONS: usize = 20;
/// Files the rollback action writes.
const ROLLBACK_FILES: usize = 100;

const CNI_GRANT: &str = "files: {write: [/etc/cni/net.d, /opt/cni/bin]}";
const CNI_PARAMS: &str = r#"{"name": "bench", "subnet": "10.88.0.0/16"}"#;

/// What the suite runs and where it writes.
pub struct Config {
    /// Runs per variant (at most [`MAX_ITERATIONS`]).
    pub iterations: usize,
    /// cni-install.
    pub module: PathBuf,
    /// vxlan-overlay.
    pub overlay_module: PathBuf,
    /// The probe (the 100-file rollback).
    pub probe: PathBuf,
    /// The JSON results.
    pub out: PathBuf,
}

/// p50/p99 of a pair: with the journal and without.
struct Pair {
    on: Stats,
    off: Stats,
}

impl Pair {
    fn new(on: Vec<f64>, off: Vec<f64>) -> Self {
        Self {
            on: stats(on),
            off: stats(off),
        }
    }

    fn ratio(&self) -> f64 {
        self.on.p50_us / self.off.p50_us
    }

    fn added_us(&self) -> f64 {
        self.on.p50_us - self.off.p50_us
    }

    fn json(&self) -> serde_json::Value {
        json!({
            "journal_required": self.on,
            "journal_off": self.off,
            "ratio_p50": self.ratio(),
            "added_p50_us": self.added_us(),
        })
    }

    fn print(&self, name: &str) {
        println!(
            "  {name:<30} {:>7.0}/{:<7.0} {:>7.0}/{:<7.0} {:>6.2}x {:>+8.0}",
            self.on.p50_us,
            self.on.p99_us,
            self.off.p50_us,
            self.off.p99_us,
            self.ratio(),
            self.added_us()
        );
    }
}

/// A runtime on `root` keeping journals in `journals`.
fn runtime(root: &Path, cache: &Path, journals: &Path) -> BenchResult<Runtime> {
    Ok(Runtime::new(RuntimeConfig {
        host_root: root.to_owned(),
        cache_dir: Some(cache.to_owned()),
        journal_dir: Some(journals.to_owned()),
        ..RuntimeConfig::default()
    })?)
}

/// Removes every journal (untimed, between runs).
fn clear_journals(runtime: &Runtime) -> BenchResult<()> {
    if let Some(dir) = runtime.journals() {
        for entry in std::fs::read_dir(dir.path())? {
            std::fs::remove_file(entry?.path())?;
        }
    }
    Ok(())
}

/// Empties a scratch host root (untimed).
fn clear_root(root: &Path) -> std::io::Result<()> {
    for entry in std::fs::read_dir(root)? {
        std::fs::remove_dir_all(entry?.path())?;
    }
    Ok(())
}

/// Runs the suite and writes its results to `cfg.out`.
pub fn run(cfg: &Config) -> BenchResult<()> {
    let iterations = cfg.iterations.min(MAX_ITERATIONS);
    let scratch = tempfile::tempdir()?;
    let root = scratch.path().join("root");
    let cache = scratch.path().join("cache");
    std::fs::create_dir_all(&root)?;
    let rt = runtime(&root, &cache, &scratch.path().join("undo"))?;

    // cni-install, fresh and in shape, journal on and off in turns.
    let bytes = std::fs::read(&cfg.module).map_err(|e| {
        format!(
            "{}: {e} (run scripts/build-guests.sh)",
            cfg.module.display()
        )
    })?;
    let grant = EffectiveGrant::new(&Grant::parse(CNI_GRANT, "grant")?, None)?;
    let cni = |mode: JournalMode, fresh: bool| -> BenchResult<f64> {
        if fresh {
            clear_root(&root)?;
        }
        let mut request = RunRequest::new(CNI_PARAMS, grant.clone());
        request.journal = mode;
        let start = Instant::now();
        let module = rt.load(&bytes)?;
        let report = rt.run(&module, request)?;
        let us = micros(start);
        if !report.status.is_success() || report.changed() != fresh {
            return Err(format!(
                "cni-install: {} changed={}",
                report.status,
                report.changed()
            )
            .into());
        }
        if mode == JournalMode::Required && fresh && !report.undoable {
            return Err("cni-install with a journal is not undoable".into());
        }
        clear_journals(&rt)?;
        Ok(us)
    };
    for _ in 0..20 {
        cni(JournalMode::Required, true)?;
        cni(JournalMode::Off, true)?;
    }
    let mut cni_pairs = Vec::new();
    for fresh in [true, false] {
        let (mut on, mut off) = (Vec::new(), Vec::new());
        cni(JournalMode::Off, true)?;
        for i in 0..iterations {
            // Alternate which goes first.
            if i % 2 == 0 {
                on.push(cni(JournalMode::Required, fresh)?);
                off.push(cni(JournalMode::Off, fresh)?);
            } else {
                off.push(cni(JournalMode::Off, fresh)?);
                on.push(cni(JournalMode::Required, fresh)?);
            }
        }
        cni_pairs.push(Pair::new(on, off));
    }

    // Where a fresh journaled run's time goes: fdatasyncs per mutation.
    clear_root(&root)?;
    let mut request = RunRequest::new(CNI_PARAMS, grant.clone());
    request.journal = JournalMode::Required;
    let report = rt.run(&*rt.load(&bytes)?, request)?;
    let mutations = report.effect_count();
    clear_journals(&rt)?;
    let fsync_us = fdatasync_cost(scratch.path())?;

    // The 100-file action: rolled back against kept.
    let probe = std::fs::read(&cfg.probe)
        .map_err(|e| format!("{}: {e} (run scripts/build-guests.sh)", cfg.probe.display()))?;
    let probe_grant =
        EffectiveGrant::new(&Grant::parse("files: {write: [/opt/many]}", "grant")?, None)?;
    let mut ops: Vec<_> = (0..ROLLBACK_FILES)
        .map(|i| {
            json!({"op": "ensure-file", "path": format!("/opt/many/f{i}"),
                   "contents": format!("file {i}\n"), "mode": 0o644})
        })
        .collect();
    // Makes /opt and /opt/many: 102 effects in all.
    ops.insert(
        0,
        json!({"op": "ensure-dir", "path": "/opt/many", "mode": 0o755}),
    );
    ops.push(json!({"op": "fail", "message": "fails after writing 100 files"}));
    let params = json!({ "ops": ops }).to_string();
    let hundred = |on_failure: OnFailure| -> BenchResult<(f64, f64)> {
        clear_root(&root)?;
        let mut request = RunRequest::new(params.clone(), probe_grant.clone());
        request.on_failure = on_failure;
        let start = Instant::now();
        let report = rt.run(&*rt.load(&probe)?, request)?;
        let us = micros(start);
        let rollback_us = match (&report.rollback, on_failure) {
            (Some(r), OnFailure::Rollback)
                if r.complete() && r.entries.len() == ROLLBACK_FILES + 2 =>
            {
                r.undo_us as f64
            }
            (None, OnFailure::Keep) => 0.0,
            (r, _) => return Err(format!("100-file action: unexpected rollback {r:?}").into()),
        };
        clear_journals(&rt)?;
        Ok((us, rollback_us))
    };
    hundred(OnFailure::Rollback)?;
    let (mut rolled, mut kept, mut rollback_only) = (Vec::new(), Vec::new(), Vec::new());
    for _ in 0..ROLLBACK_ITERATIONS {
        let (us, undo_us) = hundred(OnFailure::Rollback)?;
        rolled.push(us);
        rollback_only.push(undo_us);
        kept.push(hundred(OnFailure::Keep)?.0);
    }
    let hundred_pair = Pair::new(rolled, kept);
    let rollback_only = stats(rollback_only);

    // vxlan-overlay (root only).
    let network = if rustix::process::geteuid().is_root() {
        Some(overlay(cfg, scratch.path())?)
    } else {
        None
    };

    let [cni_fresh, cni_conv] = [&cni_pairs[0], &cni_pairs[1]];
    let within = |p: &Pair| p.ratio() <= 1.3 && p.added_us() <= 1000.0;
    let budgets = json!({
        "cni_install_fresh_le_1_3x_and_1ms_added": within(cni_fresh),
        "cni_install_in_shape_le_1_3x_and_1ms_added": within(cni_conv),
    });
    let result = json!({
        "suite": "undo",
        "iterations": iterations,
        "cni_install": {
            "fresh_root": cni_fresh.json(),
            "in_shape": cni_conv.json(),
            "mutations_per_fresh_run": mutations,
            "fdatasync_p50_us": fsync_us,
        },
        "vxlan_overlay": network.as_ref().map(|[f, c]| json!({
            "fresh_namespaces": f.json(),
            "in_shape": c.json(),
        })),
        "rollback_100_files": {
            "run_rolled_back": hundred_pair.on,
            "run_kept": hundred_pair.off,
            "added_p50_us": hundred_pair.added_us(),
            "rollback_us": rollback_only,
        },
        "budgets": budgets,
    });

    println!(
        "hostaction bench: undo (journal required vs off, {iterations} runs per variant; \
         network {} per variant; {ROLLBACK_ITERATIONS} runs of the 100-file action)",
        iterations.min(MAX_NETWORK_ITERATIONS)
    );
    println!(
        "  {:<30} {:>15} {:>15} {:>7} {:>8}",
        "", "journal", "no journal", "ratio", "µs added"
    );
    cni_fresh.print("cni-install fresh root");
    cni_conv.print("cni-install already in shape");
    if let Some([f, c]) = &network {
        f.print("vxlan-overlay fresh netns");
        c.print("vxlan-overlay already in shape");
    }
    hundred_pair.print("100 files then fail: rollback/keep");
    println!(
        "  (µs, p50/p99) {mutations} mutations per fresh cni-install run, fdatasync p50 {fsync_us:.0} µs \
         here; the rollback of 100 files itself: p50 {:.0} µs p99 {:.0} µs",
        rollback_only.p50_us, rollback_only.p99_us
    );
    let ok = within(cni_fresh) && within(cni_conv);
    println!(
        "  budgets: {budgets} (≤ 1.3× and ≤ 1 ms added on cni-install): within budget: {}",
        if ok { "yes" } else { "NO" }
    );
    // Like the other suites: the budget is reported (JSON and "within
    // budget: NO"), not an error that would stop the suites after this one.
    write_json(&cfg.out, &result)
}

/// p50 of one 4 KiB append + fdatasync in `dir`: what each journaled
/// mutation waits for.
fn fdatasync_cost(dir: &Path) -> BenchResult<f64> {
    use std::io::Write;
    let path = dir.join("fsync-probe");
    let mut file = std::fs::File::create(&path)?;
    let mut samples = Vec::new();
    for _ in 0..50 {
        let start = Instant::now();
        file.write_all(&[0u8; 4096])?;
        file.sync_data()?;
        samples.push(micros(start));
    }
    std::fs::remove_file(&path)?;
    Ok(stats(samples).p50_us)
}

/// vxlan-overlay with the journal and without, fresh namespaces and in
/// shape, in namespaces of its own.
fn overlay(cfg: &Config, scratch_dir: &Path) -> BenchResult<[Pair; 2]> {
    use crate::network::{grant, params};
    let iterations = cfg.iterations.min(MAX_NETWORK_ITERATIONS);
    let bytes = std::fs::read(&cfg.overlay_module).map_err(|e| {
        format!(
            "{}: {e} (run scripts/build-guests.sh)",
            cfg.overlay_module.display()
        )
    })?;
    // Host root `/`, as the network suite: named namespaces in /var/run/netns.
    let rt = runtime(
        Path::new("/"),
        &scratch_dir.join("net-cache"),
        &scratch_dir.join("net-undo"),
    )?;
    let mut scratch = Scratch::new()?;
    let grant = EffectiveGrant::new(&Grant::parse(&grant(&scratch.pattern()), "grant")?, None)?;
    let places = [scratch.place("undo-on"), scratch.place("undo-off")];
    let once = |i: usize, mode: JournalMode, fresh: bool| -> BenchResult<f64> {
        let mut request = RunRequest::new(params(&places[i]).to_string(), grant.clone());
        request.journal = mode;
        let start = Instant::now();
        let report = rt.run(&*rt.load(&bytes)?, request)?;
        let us = micros(start);
        if !report.status.is_success() || report.changed() != fresh {
            return Err(format!(
                "vxlan-overlay: {} changed={}",
                report.status,
                report.changed()
            )
            .into());
        }
        clear_journals(&rt)?;
        Ok(us)
    };
    let modes = [JournalMode::Required, JournalMode::Off];
    let (mut fresh, mut conv) = ([Vec::new(), Vec::new()], [Vec::new(), Vec::new()]);
    for round in 0..iterations + 2 {
        for place in &places {
            scratch.delete(place)?;
        }
        std::thread::sleep(Duration::from_millis(50));
        for k in 0..2 {
            let i = (round + k) % 2;
            scratch.reset(&places[i])?;
            let us = once(i, modes[i], true)?;
            if round >= 2 {
                fresh[i].push(us);
            }
        }
    }
    std::thread::sleep(Duration::from_secs(1));
    for round in 0..iterations + 2 {
        for k in 0..2 {
            let i = (round + k) % 2;
            let us = once(i, modes[i], false)?;
            if round >= 2 {
                conv[i].push(us);
            }
        }
    }
    scratch.cleanup()?;
    let [f_on, f_off] = fresh;
    let [c_on, c_off] = conv;
    Ok([Pair::new(f_on, f_off), Pair::new(c_on, c_off)])
}
