//! The `cluster` suite: one HostAction fanned out to many simulated nodes
//! (1000 by default). The real controller (`hostaction_controller::run`) and
//! one real node agent (`ClusterAgent`) per node run in this process against
//! the tests' Kubernetes API-server double; the action is the probe component
//! doing a small files change (`ensure-dir` + `ensure-file`), pushed to a
//! real `docker-registry` on 127.0.0.1 and named by its tag, so the
//! controller resolves it as in real use. Measured: the time from creating
//! the HostAction until every HostActionRun is `Succeeded`, then until the
//! action's status counts them all, and the API writes per node. Budget
//! (DESIGN.md): ≤ 10 s and ≤ 3 writes per node. Writes
//! `target/bench/cluster.json`.
//!
//! The nodes' module cache is warm (the artifact is in the shared store and
//! compiled before the clock starts): the suite measures the control plane's
//! fan-out, not pulls. All agents share one runtime, store, registry client,
//! host root and `kube::Client`; each has its own watch and run journal.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use hostaction_controller::metrics::{AgentMetrics, ControllerMetrics};
use hostaction_controller::resolve::{PlainHttp, Resolver};
use hostaction_crds::Grant;
use hostaction_crds::action::Mode as SpecMode;
use hostaction_runtime::agent::Loader;
use hostaction_runtime::agent::cluster::ClusterAgent;
use hostaction_runtime::oci::{ModuleStore, PushRequest, Registry, RegistryOptions};
use hostaction_runtime::{Runtime, RuntimeConfig};
use hostaction_tests::apiserver::{ApiServer, Writes};
use hostaction_tests::registry::Registry as DockerRegistry;
use serde_json::{Value, json};

use crate::{BenchResult, write_json};

/// The budget of DESIGN.md "Budgets": all runs done within this…
const BUDGET_SECONDS: f64 = 10.0;
/// …with at most this many API writes per node.
const BUDGET_WRITES_PER_NODE: f64 = 3.0;
/// The bench fails when the runs are not all Succeeded by then.
const GIVE_UP: Duration = Duration::from_secs(60);
/// How often the API writes are looked at.
const POLL: Duration = Duration::from_millis(5);
/// How often the runs are listed even when the writes say nothing new.
const LIST_EVERY: Duration = Duration::from_secs(1);
/// The agent's default (`hostaction agent --mark-running-after`).
const MARK_RUNNING_AFTER: Duration = Duration::from_secs(1);
/// The HostAction's name.
const ACTION: &str = "bench-fanout";
const GROUP_VERSION: &str = "hostaction.dev/v1alpha1";
/// The file the action makes on every node.
const DIR: &str = "/etc/bench";
const FILE: &str = "/etc/bench/ready";
const CONTENTS: &str = "ok\n";

/// What the suite runs.
pub struct Config {
    /// Simulated nodes (one agent each).
    pub nodes: usize,
    /// The probe component (`target/guests/probe.wasm`).
    pub module: PathBuf,
    /// Where to write the JSON results.
    pub out: PathBuf,
}

/// What one fan-out measured.
struct Measured {
    /// Until the controller had created a run, and every run (by the
    /// double's write counts, looked at every 5 ms).
    first_created: Duration,
    all_created: Duration,
    all_succeeded: Duration,
    status_converged: Duration,
    complete_condition: bool,
    writes: Writes,
}

pub fn run(cfg: &Config) -> BenchResult<()> {
    if cfg.nodes == 0 {
        return Err("--nodes must be at least 1".into());
    }
    let module = std::fs::read(&cfg.module).map_err(|e| {
        format!(
            "{}: {e} (run scripts/build-guests.sh)",
            cfg.module.display()
        )
    })?;
    // Each agent's watch is a connection, seen from both ends here.
    raise_open_files(3 * cfg.nodes as u64 + 1024)?;

    let scratch = tempfile::tempdir()?;
    let root = scratch.path().join("root");
    // The nodes' /etc; the action makes /etc/bench and the file in it.
    std::fs::create_dir_all(root.join("etc"))?;
    let compiled = scratch.path().join("compiled");
    let runtime = Arc::new(Runtime::new(RuntimeConfig {
        host_root: root.clone(),
        cache_dir: Some(compiled.clone()),
        system_bus: None,
        ..RuntimeConfig::default()
    })?);
    let store = Arc::new(ModuleStore::open(
        &scratch.path().join("modules"),
        Some(compiled),
        u64::MAX,
    )?);
    let registry = Arc::new(Registry::new(RegistryOptions {
        plain_http: true,
        ..RegistryOptions::default()
    })?);

    // Push the probe by tag; the HostAction names the tag.
    let docker = DockerRegistry::plain();
    let tag = format!("{}/bench/probe:v1", docker.addr());
    let loaded = runtime.load(&module)?;
    let pushed = registry.push(
        &tag,
        &PushRequest {
            module: module.clone(),
            imports: loaded.imports.iter().map(|i| i.name.clone()).collect(),
            exports: loaded.exports.clone(),
            ..PushRequest::default()
        },
    )?;
    let params = json!({"ops": [
        {"op": "ensure-dir", "path": DIR, "mode": 0o755},
        {"op": "ensure-file", "path": FILE, "contents": CONTENTS, "mode": 0o644},
    ]});
    let grants = json!({"files": {"write": [DIR]}});

    // Warm the node cache: pull by digest into the shared store, compile,
    // and run once as an agent would, to fail here (with the probe's own
    // word) rather than 1000 times below.
    warm_up(
        &runtime,
        &registry,
        &store,
        &pushed.reference,
        &params,
        &grants,
    )?;
    std::fs::remove_dir_all(root.join(DIR.trim_start_matches('/')))?;

    let api = ApiServer::start()?;
    for i in 0..cfg.nodes {
        api.insert(node(i));
    }
    let tokio = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .thread_name("bench-cluster")
        .build()?;
    let shared = Shared {
        api: &api,
        runtime: runtime.clone(),
        registry: registry.clone(),
        store: store.clone(),
        journals: scratch.path().join("journals"),
    };
    let mut metrics = prometheus_client::registry::Registry::default();
    let controller_metrics = ControllerMetrics::register(&mut metrics);
    let agent_metrics = AgentMetrics::register(&mut metrics);
    let measured = tokio.block_on(fan_out(
        cfg,
        &shared,
        &tag,
        &params,
        &grants,
        controller_metrics,
        agent_metrics.clone(),
    ));
    tokio.shutdown_timeout(Duration::from_secs(5));
    let measured = measured?;
    let on_disk = std::fs::read_to_string(root.join(FILE.trim_start_matches('/')))
        .map_err(|e| format!("{FILE} on the nodes' host root after the runs: {e}"))?;
    if on_disk != CONTENTS {
        return Err(format!("{FILE} holds {on_disk:?} after the runs, not {CONTENTS:?}").into());
    }
    let mut exposition = String::new();
    prometheus_client::encoding::text::encode(&mut exposition, &metrics)?;
    report(
        cfg,
        &pushed.reference,
        &scratch.path().join("journals"),
        &measured,
        &agent_metrics,
        &exposition,
    )?;
    // Stop the agents' and controller's API server, then the registry.
    drop(api);
    drop(docker);
    Ok(())
}

/// What the agents share (the registry client is dropped outside the
/// tokio runtime, after it: it owns a runtime of its own).
struct Shared<'a> {
    api: &'a ApiServer,
    runtime: Arc<Runtime>,
    registry: Arc<Registry>,
    store: Arc<ModuleStore>,
    journals: PathBuf,
}

/// Starts the controller and the agents, creates the HostAction, and times
/// the runs and the status; stops everything again.
async fn fan_out(
    cfg: &Config,
    shared: &Shared<'_>,
    module: &str,
    params: &Value,
    grants: &Value,
    controller_metrics: ControllerMetrics,
    agent_metrics: AgentMetrics,
) -> BenchResult<Measured> {
    let api = shared.api;
    let client = api.client();
    let (stop, stopped) = tokio::sync::watch::channel(false);
    let shutdown = move || {
        let mut stopped = stopped.clone();
        async move {
            let _ = stopped.wait_for(|stop| *stop).await;
        }
    };
    let controller = tokio::spawn(hostaction_controller::run(
        client.clone(),
        hostaction_controller::Options {
            lease: None,
            resolver: Resolver::new(PlainHttp::loopback(), None)?,
            metrics: controller_metrics,
            instance: "bench".into(),
        },
        shutdown(),
    ));
    let mut agents = tokio::task::JoinSet::new();
    for i in 0..cfg.nodes {
        let agent = Arc::new(ClusterAgent {
            client: client.clone(),
            node_name: node_name(i),
            runtime: shared.runtime.clone(),
            registry: shared.registry.clone(),
            store: shared.store.clone(),
            policy: None,
            journal: shared.journals.join(node_name(i)),
            mark_running_after: MARK_RUNNING_AFTER,
            metrics: agent_metrics.clone(),
        });
        agents.spawn(agent.run(shutdown()));
    }
    // Let the controller's and agents' lists and watches settle.
    tokio::time::sleep(Duration::from_millis(1000 + cfg.nodes as u64)).await;

    let measured = measure(cfg, api, module, params, grants).await;

    let _ = stop.send(true);
    let stopping = async {
        let controller = controller.await;
        let mut failed = 0;
        while let Some(agent) = agents.join_next().await {
            if !matches!(agent, Ok(Ok(()))) {
                failed += 1;
            }
        }
        (controller, failed)
    };
    match tokio::time::timeout(Duration::from_secs(10), stopping).await {
        Err(_) => eprintln!("  cluster: controller or agents did not stop within 10 s"),
        Ok((controller, failed)) => {
            match controller {
                Ok(Ok(())) => {}
                Ok(Err(error)) => eprintln!("  cluster: the controller stopped with: {error}"),
                Err(error) => eprintln!("  cluster: the controller's task: {error}"),
            }
            if failed > 0 {
                eprintln!("  cluster: {failed} agents stopped with an error");
            }
        }
    }
    measured
}

/// Creates the HostAction and waits for its runs and its status.
async fn measure(
    cfg: &Config,
    api: &ApiServer,
    module: &str,
    params: &Value,
    grants: &Value,
) -> BenchResult<Measured> {
    let baseline = api.writes();
    let clock = Instant::now();
    api.insert(json!({
        "apiVersion": GROUP_VERSION,
        "kind": "HostAction",
        "metadata": {"name": ACTION},
        "spec": {
            "module": module,
            "params": params,
            "grants": grants,
            "rollout": {"maxConcurrent": "100%", "maxFailures": 0},
            "timeoutSeconds": 60,
        },
    }));

    // Cheap looks at the write counts every 5 ms; the runs themselves are
    // listed (1000 objects copied under the double's lock) only when every
    // node has written a run status since the last look, and every second.
    let (mut first_created, mut all_created) = (None, None);
    let (mut listed_at, mut listed_with) = (Duration::ZERO, 0);
    let all_succeeded = loop {
        let writes = since(&baseline, &api.writes());
        let created = writes.get("create hostactionruns");
        let reported = writes
            .by
            .iter()
            .filter(|(key, _)| {
                !key.starts_with("rejected ") && key.ends_with(" hostactionruns/status")
            })
            .map(|(_, n)| n)
            .sum::<u64>();
        let now = clock.elapsed();
        if first_created.is_none() && created > 0 {
            first_created = Some(now);
        }
        if all_created.is_none() && created >= cfg.nodes as u64 {
            all_created = Some(now);
        }
        let everyone_reported = reported >= cfg.nodes as u64 && reported > listed_with;
        if everyone_reported || now >= listed_at + LIST_EVERY {
            (listed_at, listed_with) = (now, reported);
            let (phases, failure) = run_phases(api);
            if phases.get("Succeeded").copied().unwrap_or(0) == cfg.nodes {
                break now;
            }
            if let Some(message) = failure {
                return Err(format!(
                    "a run did not succeed after {:.2} s: {message} (phases: {phases:?})",
                    now.as_secs_f64()
                )
                .into());
            }
            if now > GIVE_UP {
                return Err(format!(
                    "not all {} runs Succeeded within {} s; phases seen: {phases:?}",
                    cfg.nodes,
                    GIVE_UP.as_secs()
                )
                .into());
            }
        }
        tokio::time::sleep(POLL).await;
    };

    let (status_converged, complete_condition) = loop {
        let status = api
            .get(GROUP_VERSION, "HostAction", None, ACTION)
            .map(|a| a["status"].clone())
            .unwrap_or_default();
        if status["counts"]["succeeded"].as_u64() == Some(cfg.nodes as u64) {
            let complete = status["conditions"].as_array().is_some_and(|conditions| {
                conditions
                    .iter()
                    .any(|c| c["type"] == "Complete" && c["status"] == "True")
            });
            break (clock.elapsed(), complete);
        }
        if clock.elapsed() > all_succeeded + GIVE_UP {
            return Err(format!(
                "the HostAction's status did not count all {} runs Succeeded within {} s of them; its status: {status}",
                cfg.nodes,
                GIVE_UP.as_secs()
            )
            .into());
        }
        tokio::time::sleep(POLL).await;
    };
    // Writes still in flight (an Event, the last status patch) land.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let writes = since(&baseline, &api.writes());
    Ok(Measured {
        first_created: first_created.unwrap_or(all_succeeded),
        all_created: all_created.unwrap_or(all_succeeded),
        all_succeeded,
        status_converged,
        complete_condition,
        writes,
    })
}

/// The action's runs by phase (`none` before an agent writes one), and
/// the first that failed (with `maxFailures: 0` the rollout stops there).
fn run_phases(api: &ApiServer) -> (BTreeMap<String, usize>, Option<String>) {
    let mut phases = BTreeMap::new();
    let mut failure = None;
    for run in api.list(GROUP_VERSION, "HostActionRun") {
        if run["spec"]["action"] != ACTION {
            continue;
        }
        let phase = run["status"]["phase"].as_str().unwrap_or("none");
        if failure.is_none() && matches!(phase, "Failed" | "Interrupted") {
            failure = Some(format!(
                "{} is {phase}: {}",
                run["metadata"]["name"].as_str().unwrap_or_default(),
                run["status"]["message"].as_str().unwrap_or_default()
            ));
        }
        *phases.entry(phase.to_owned()).or_insert(0) += 1;
    }
    (phases, failure)
}

/// The writes made since `before`.
fn since(before: &Writes, after: &Writes) -> Writes {
    Writes {
        total: after.total.saturating_sub(before.total),
        by: after
            .by
            .iter()
            .map(|(key, n)| (key.clone(), n.saturating_sub(before.get(key))))
            .filter(|(_, n)| *n > 0)
            .collect(),
    }
}

fn node_name(i: usize) -> String {
    format!("node-{i:04}")
}

/// A Ready node, as a kubelet would have registered it.
fn node(i: usize) -> Value {
    json!({
        "apiVersion": "v1",
        "kind": "Node",
        "metadata": {
            "name": node_name(i),
            "labels": {
                "kubernetes.io/hostname": node_name(i),
                "kubernetes.io/os": "linux",
                "hostaction.dev/bench": "true",
            },
        },
        "status": {"conditions": [{"type": "Ready", "status": "True", "reason": "KubeletReady"}]},
    })
}

/// Pulls the artifact into the store by digest, compiles it and runs it
/// once through the agent's own loader; the probe must report every op ok.
fn warm_up(
    runtime: &Runtime,
    registry: &Registry,
    store: &ModuleStore,
    reference: &str,
    params: &Value,
    grants: &Value,
) -> BenchResult<()> {
    let grants: Grant = serde_json::from_value(grants.clone())?;
    let loader = Loader {
        runtime,
        registry,
        store,
    };
    let (report, _digest) = loader.run(
        reference,
        params.as_object(),
        &grants,
        None,
        SpecMode::Apply,
        Duration::from_secs(60),
    )?;
    if !report.status.is_success() {
        return Err(format!("the warm-up run of the probe failed: {}", report.status).into());
    }
    for (index, fact) in report.outcome.iter().flat_map(|o| o.facts.iter()) {
        let result: Value = serde_json::from_str(fact)?;
        if result.get("ok").is_none() {
            return Err(format!("the warm-up run's op {index} failed: {result}").into());
        }
    }
    Ok(())
}

/// Raises the soft limit of open files to `want` (at most the hard limit).
fn raise_open_files(want: u64) -> BenchResult<()> {
    use rustix::process::{Resource, getrlimit, setrlimit};
    let mut limit = getrlimit(Resource::Nofile);
    let current = limit.current.unwrap_or(u64::MAX);
    if current >= want {
        return Ok(());
    }
    let max = limit.maximum.unwrap_or(u64::MAX);
    if max < want {
        return Err(format!(
            "the cluster suite needs about {want} open files; the hard limit is {max} (use fewer --nodes)"
        )
        .into());
    }
    limit.current = Some(want);
    setrlimit(Resource::Nofile, limit)?;
    Ok(())
}

/// `name_sum` / `name_count` of a histogram in the text exposition.
fn histogram_mean(exposition: &str, name: &str) -> Option<f64> {
    let value = |suffix: &str| {
        exposition.lines().find_map(|line| {
            let rest = line.strip_prefix(&format!("{name}{suffix}"))?;
            rest.split_whitespace().last()?.parse::<f64>().ok()
        })
    };
    let (sum, count) = (value("_sum")?, value("_count")?);
    (count > 0.0).then(|| sum / count)
}

fn report(
    cfg: &Config,
    reference: &str,
    journals: &std::path::Path,
    measured: &Measured,
    agent_metrics: &AgentMetrics,
    exposition: &str,
) -> BenchResult<()> {
    let nodes = cfg.nodes as f64;
    let seconds = measured.all_succeeded.as_secs_f64();
    let converged = measured.status_converged.as_secs_f64();
    let writes_per_node = measured.writes.total as f64 / nodes;
    let within_budget = seconds <= BUDGET_SECONDS && writes_per_node <= BUDGET_WRITES_PER_NODE;
    let rejected: u64 = measured
        .writes
        .by
        .iter()
        .filter(|(key, _)| key.starts_with("rejected "))
        .map(|(_, n)| n)
        .sum();
    let run_mean = histogram_mean(exposition, "hostaction_agent_run_duration_seconds");
    let reconcile_mean = histogram_mean(
        exposition,
        "hostaction_controller_reconcile_duration_seconds",
    );
    let note = format!(
        "{} simulated nodes, each a real hostaction node agent (ClusterAgent) in one process, with the real controller, against the tests' in-memory Kubernetes API-server double (no etcd, no admission, no network hops) on {} CPUs. Warm node cache: the artifact was pulled into the shared module store and compiled before the clock started, so this measures the control plane's fan-out, not pulls. The agents share one runtime, store, host root and tokio runtime (a worker per CPU), so the first run writes {FILE} and the rest find it in place; each agent's run journal (written and fsynced twice per run) is under 'journals', all on one filesystem, where real nodes have a disk each. Writes are client requests the double answered 2xx, counted from just before the HostAction was created (its own creation is not a client write) until 0.5 s after its status converged; 'rejected ...' keys are refused writes, not in the total.",
        cfg.nodes,
        std::thread::available_parallelism().map_or(1, usize::from),
    );
    let result = json!({
        "suite": "cluster",
        "nodes": cfg.nodes,
        "artifact": reference,
        "journals": journals,
        "seconds_to_first_run_created": measured.first_created.as_secs_f64(),
        "seconds_to_all_runs_created": measured.all_created.as_secs_f64(),
        "seconds_to_all_succeeded": seconds,
        "seconds_to_status_converged": converged,
        "complete_condition_true": measured.complete_condition,
        "writes_total": measured.writes.total,
        "writes_per_node": writes_per_node,
        "writes_rejected": rejected,
        "writes_by": measured.writes.by,
        "agent_status_writes": agent_metrics.status_writes.get(),
        "agent_status_write_errors": agent_metrics.status_write_errors.get(),
        "agent_run_seconds_mean": run_mean,
        "controller_reconcile_seconds_mean": reconcile_mean,
        "budget": {"seconds": BUDGET_SECONDS, "writes_per_node": BUDGET_WRITES_PER_NODE},
        "within_budget": within_budget,
        "note": note,
    });
    println!(
        "hostaction bench: cluster (one HostAction to {} simulated nodes: real controller and agents in one process, API-server double, warm node cache)",
        cfg.nodes
    );
    println!(
        "  {} nodes: all Succeeded in {seconds:.2} s ({:.2}× the {BUDGET_SECONDS} s budget), {writes_per_node:.2} API writes per node ({:.2}× the budget of {BUDGET_WRITES_PER_NODE})",
        cfg.nodes,
        seconds / BUDGET_SECONDS,
        writes_per_node / BUDGET_WRITES_PER_NODE
    );
    println!(
        "  runs created from {:.2} s to {:.2} s; the HostAction's status counted them all after {converged:.2} s (Complete condition: {})",
        measured.first_created.as_secs_f64(),
        measured.all_created.as_secs_f64(),
        measured.complete_condition
    );
    let by: Vec<String> = measured
        .writes
        .by
        .iter()
        .map(|(key, n)| format!("{key} {n}"))
        .collect();
    println!("  {} writes: {}", measured.writes.total, by.join(", "));
    if let (Some(run), Some(reconcile)) = (run_mean, reconcile_mean) {
        println!(
            "  mean agent run {:.2} ms, mean reconcile {:.2} ms",
            run * 1e3,
            reconcile * 1e3
        );
    }
    println!(
        "  within budget: {}",
        if within_budget { "yes" } else { "NO" }
    );
    write_json(&cfg.out, &result)
}
