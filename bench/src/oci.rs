//! The `oci` suite: the start of the same action — `cni-install` with the
//! real CNI plugins of `containernetworking-plugins` as its payload, pushed
//! to a real `docker-registry` on 127.0.0.1 — cold (pull into an empty store
//! and compile), warm (artifact and precompiled code on disk, a new runtime
//! as a new process would have) and hot (in memory in the same runtime), each
//! up to the action's result; beside them, `skopeo copy` of the same artifact,
//! the pull a user would otherwise script. Writes `target/bench/oci.json`.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

use hostaction_distribution::{ModuleStore, PushRequest, Registry, RegistryOptions};
use hostaction_runtime::engine::LoadSource;
use hostaction_runtime::grant::{EffectiveGrant, Grant, GrantDocument};
use hostaction_runtime::{RunRequest, Runtime, RuntimeConfig};
use hostaction_tests::registry::Registry as DockerRegistry;

use crate::{BenchResult, Stats, micros, stats, write_json};

const GRANT: &str = "files: {write: [/etc/cni/net.d, /opt/cni/bin]}";
const PLUGINS: [&str; 3] = ["bridge", "host-local", "loopback"];

/// Most hot starts a run measures.
pub const MAX_ITERATIONS: usize = 1000;

/// Runs of each kind (cold runs compile, so they are fewer).
pub struct Config {
    /// Hot runs; warm runs are a fifth of them, cold runs a twentieth.
    pub iterations: usize,
    /// The cni-install component.
    pub module: PathBuf,
    /// Where to write the JSON results.
    pub out: PathBuf,
}

/// The parts of one start, in microseconds.
#[derive(Default)]
struct Samples {
    pull: Vec<f64>,
    load: Vec<f64>,
    run: Vec<f64>,
    total: Vec<f64>,
}

impl Samples {
    fn json(self) -> (Stats, serde_json::Value) {
        let total = stats(self.total);
        let json = serde_json::json!({
            "pull": stats(self.pull),
            "load": stats(self.load),
            "instantiate_and_run": stats(self.run),
            "total": total,
        });
        (total, json)
    }
}

pub fn run(cfg: &Config) -> BenchResult<()> {
    let module = std::fs::read(&cfg.module).map_err(|e| {
        format!(
            "{}: {e} (run scripts/build-guests.sh)",
            cfg.module.display()
        )
    })?;
    let registry = DockerRegistry::plain();
    let options = RegistryOptions {
        plain_http: true,
        ..RegistryOptions::default()
    };
    let scratch = tempfile::tempdir()?;
    let root = scratch.path().join("root");
    std::fs::create_dir_all(&root)?;

    // Push once, with the payload; every start below runs this digest.
    let pusher = Runtime::new(RuntimeConfig {
        host_root: root.clone(),
        cache_dir: None,
        system_bus: None,
        ..RuntimeConfig::default()
    })?;
    let loaded = pusher.load(&module)?;
    let pushed = Registry::new(options.clone())?.push(
        &format!("{}/bench/cni-install:v1", registry.addr()),
        &PushRequest {
            module: module.clone(),
            imports: loaded.imports.iter().map(|i| i.name.clone()).collect(),
            exports: loaded.exports.clone(),
            payload: PLUGINS
                .iter()
                .map(|p| (p.to_string(), PathBuf::from(format!("/usr/lib/cni/{p}"))))
                .collect(),
            ..PushRequest::default()
        },
    )?;
    let artifact_bytes: u64 = module.len() as u64
        + PLUGINS
            .iter()
            .map(|p| std::fs::metadata(format!("/usr/lib/cni/{p}")).map_or(0, |m| m.len()))
            .sum::<u64>();
    let base = RunRequest::new(
        "{}",
        EffectiveGrant::new(&Grant::parse(GRANT, "grant")?, None)?,
    );

    // One start: pull (or find in the store), load, run. A new process
    // makes its registry client too; an agent keeps one.
    let start = |client: Option<&Registry>,
                 runtime: &Runtime,
                 store: &ModuleStore,
                 expect: LoadSource,
                 samples: &mut Samples|
     -> BenchResult<()> {
        let t0 = Instant::now();
        let artifact = match client {
            Some(client) => client.pull(&pushed.reference, store)?,
            None => Registry::new(options.clone())?.pull(&pushed.reference, store)?,
        };
        let pulled = micros(t0);
        let loaded = runtime.load_stored(&artifact)?;
        let t_load = micros(t0) - pulled;
        if loaded.source != expect {
            return Err(format!("expected a {expect:?} load, got {:?}", loaded.source).into());
        }
        let mut request = base.clone();
        request.payload = std::sync::Arc::new(artifact.payload.clone());
        let report = runtime.run(&loaded, request)?;
        if !report.status.is_success() {
            return Err(format!("cni-install failed: {}", report.status).into());
        }
        let total = micros(t0);
        samples.pull.push(pulled);
        samples.load.push(t_load);
        samples.run.push(total - pulled - t_load);
        samples.total.push(total);
        Ok(())
    };
    let node = |dir: &Path| -> BenchResult<(Runtime, ModuleStore)> {
        let runtime = Runtime::new(RuntimeConfig {
            host_root: root.clone(),
            cache_dir: Some(dir.join("compiled")),
            system_bus: None,
            ..RuntimeConfig::default()
        })?;
        let store = ModuleStore::open(&dir.join("modules"), Some(dir.join("compiled")), u64::MAX)?;
        Ok((runtime, store))
    };

    let (cold_runs, warm_runs) = ((cfg.iterations / 20).max(5), (cfg.iterations / 5).max(10));
    let (mut cold, mut warm, mut hot) =
        (Samples::default(), Samples::default(), Samples::default());
    let mut skopeo = Vec::new();
    for i in 0..cold_runs {
        let dir = scratch.path().join(format!("cold-{i}"));
        let (runtime, store) = node(&dir)?;
        start(None, &runtime, &store, LoadSource::Compiled, &mut cold)?;
        // The pull a user would script instead, interleaved.
        let target = scratch.path().join(format!("skopeo-{i}"));
        let t0 = Instant::now();
        let status = Command::new("skopeo")
            .args(["copy", "-q", "--src-tls-verify=false"])
            .arg(format!("docker://{}", pushed.reference))
            .arg(format!("dir:{}", target.display()))
            .status()?;
        skopeo.push(micros(t0));
        if !status.success() {
            return Err("skopeo copy failed".into());
        }
        std::fs::remove_dir_all(&dir)?;
        std::fs::remove_dir_all(&target)?;
    }
    let warm_dir = scratch.path().join("warm");
    let (runtime, store) = node(&warm_dir)?;
    start(
        None,
        &runtime,
        &store,
        LoadSource::Compiled,
        &mut Samples::default(),
    )?;
    for _ in 0..warm_runs {
        let (runtime, store) = node(&warm_dir)?;
        start(None, &runtime, &store, LoadSource::DiskCache, &mut warm)?;
    }
    let client = Registry::new(options.clone())?;
    for _ in 0..cfg.iterations {
        start(
            Some(&client),
            &runtime,
            &store,
            LoadSource::Memory,
            &mut hot,
        )?;
    }

    let cold_pull = stats(cold.pull.clone());
    let (cold_total, cold) = cold.json();
    let (warm_total, warm) = warm.json();
    let (hot_total, hot) = hot.json();
    let skopeo = stats(skopeo);
    let result = serde_json::json!({
        "suite": "oci",
        "artifact": pushed.reference,
        "artifact_bytes": artifact_bytes,
        "module_bytes": module.len(),
        "cold": cold,
        "warm": warm,
        "hot": hot,
        "skopeo_copy": skopeo,
        "ratios_p50": {
            "cold_over_hot": cold_total.p50_us / hot_total.p50_us,
            "warm_over_hot": warm_total.p50_us / hot_total.p50_us,
            "cold_pull_over_skopeo_copy": cold_pull.p50_us / skopeo.p50_us,
        },
    });
    println!(
        "hostaction bench: oci (cni-install + {} plugins, {:.1} MiB; {cold_runs} cold, {warm_runs} warm, {} hot starts)",
        PLUGINS.len(),
        artifact_bytes as f64 / f64::from(1 << 20),
        cfg.iterations
    );
    println!(
        "  {:<44} {:>10} {:>10}",
        "start (p50/p99, ms)", "p50", "p99"
    );
    for (name, s) in [
        ("cold: pull + compile + run", &cold_total),
        ("warm: store + precompiled code + run", &warm_total),
        ("hot: in memory + run", &hot_total),
        ("skopeo copy of the artifact (pull only)", &skopeo),
    ] {
        println!(
            "  {:<44} {:>10.2} {:>10.2}",
            name,
            s.p50_us / 1e3,
            s.p99_us / 1e3
        );
    }
    println!(
        "  cold/hot {:.1}x, warm/hot {:.1}x; the cold pull alone {:.2} ms, {:.2}x skopeo copy",
        cold_total.p50_us / hot_total.p50_us,
        warm_total.p50_us / hot_total.p50_us,
        cold_pull.p50_us / 1e3,
        cold_pull.p50_us / skopeo.p50_us
    );
    write_json(&cfg.out, &result)
}
