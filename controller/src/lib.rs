//! The hostaction controller: for every HostAction it resolves the module
//! to a digest once per generation, creates a HostActionRun per selected
//! Ready node at the rollout's pace (`maxConcurrent`, stopping past
//! `maxFailures`), follows nodes joining and leaving, aggregates the runs'
//! phases into the action's status and conditions, and emits Events. One
//! replica reconciles at a time (a Lease); Prometheus metrics on `/metrics`.
//!
//! It links neither wasmtime nor the runtime: nodes run modules, the
//! controller only decides where and when.
//!
//! - [`plan`]: the rollout rules, as a pure function;
//! - [`reconcile`]: the kube-rs reconciler that carries a plan out;
//! - [`lease`]: leader election; [`metrics`]: its Prometheus metrics;
//! - [`cli`]: the `hostaction-controller` command line.
//!
//! Tags are resolved to digests by `hostaction_distribution::resolve`; logs,
//! the metrics endpoint and the watches' back-off are
//! `hostaction_telemetry`'s, shared with the node agent.

pub mod cli;
pub mod lease;
pub mod metrics;
pub mod nodes;
pub mod plan;
pub mod reconcile;

use std::future::Future;
use std::hash::{Hash, Hasher};
use std::sync::Arc;
use std::time::Duration;

use futures_util::{StreamExt, future};
use hostaction_crds::{HostAction, HostActionRun};
use k8s_openapi::api::core::v1::Node;
use kube::runtime::events::{Recorder, Reporter};
use kube::runtime::reflector::{self, ObjectRef};
use kube::runtime::{Controller, WatchStreamExt, controller, watcher};
use kube::{Api, Client};

use crate::lease::{LeaderElector, LeaseConfig};
use crate::metrics::ControllerMetrics;
use crate::reconcile::Context;
use hostaction_distribution::resolve::Resolver;
use kube::runtime::watcher::ExponentialBackoff;

/// The controller's name in Events and field managers.
pub const NAME: &str = "hostaction-controller";

/// Why the controller stopped.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The API server could not be reached or refused.
    #[error("kubernetes API: {0}")]
    Kube(#[from] kube::Error),
    /// Leader election failed.
    #[error("leader election: {0}")]
    Lease(#[from] lease::LeaseError),
    /// Another replica took the lease (this one stops; it is restarted and
    /// waits its turn).
    #[error("lost the leader lease")]
    LostLease,
    /// A flag or the environment is wrong.
    #[error("{0}")]
    Config(String),
}

/// How the controller runs.
pub struct Options {
    /// Hold this Lease while reconciling; none: reconcile at once (a single
    /// replica, or tests).
    pub lease: Option<LeaseConfig>,
    /// Resolves module tags.
    pub resolver: Resolver,
    /// The metrics registry (the caller serves it).
    pub metrics: ControllerMetrics,
    /// Who publishes Events (the pod's name, say).
    pub instance: String,
}

/// Runs the controller until `shutdown` resolves (or the lease is lost).
pub async fn run(
    client: Client,
    options: Options,
    shutdown: impl Future<Output = ()> + Send,
) -> Result<(), Error> {
    let Options {
        lease,
        resolver,
        metrics,
        instance,
    } = options;
    let mut shutdown = std::pin::pin!(shutdown);
    let mut leadership = match lease {
        Some(config) => {
            let elector = LeaderElector::new(client.clone(), config);
            tokio::select! {
                held = elector.acquire() => Some(held?),
                () = &mut shutdown => return Ok(()),
            }
        }
        None => None,
    };
    metrics.leader.set(1);

    let (nodes, node_writer) = reflector::store::<Node>();
    let (runs, run_writer) = reflector::store::<HostActionRun>();
    // Nodes are read as `ReadNode`s (name, labels, readiness): see
    // `nodes` for why not whole.
    let node_events = reflector::reflector(
        node_writer,
        watcher(
            Api::<nodes::ReadNode>::all(client.clone()),
            watcher::Config::default(),
        )
        .backoff(watch_backoff())
        .map(|event| event.map(nodes::node_event)),
    );
    let run_events = reflector::reflector(
        run_writer,
        watcher(
            Api::<HostActionRun>::all(client.clone()),
            watcher::Config::default(),
        )
        .backoff(watch_backoff()),
    );
    let controller = Controller::new(
        Api::<HostAction>::all(client.clone()),
        watcher::Config::default(),
    )
    .with_config(controller::Config::default().debounce(Duration::from_millis(250)))
    // The HostAction watch and the merged trigger streams: bounded too.
    .trigger_backoff(watch_backoff());
    let actions = controller.store();
    let context = Arc::new(Context {
        client: client.clone(),
        nodes,
        runs,
        resolver,
        recorder: Recorder::new(
            client,
            Reporter {
                controller: NAME.to_owned(),
                instance: Some(instance),
            },
        ),
        metrics: metrics.clone(),
    });
    let reconciling = controller
        // A run's change concerns its action.
        .watches_stream(run_events.touched_objects(), |run: HostActionRun| {
            Some(ObjectRef::new(&run.spec.action))
        })
        // A node that joins, leaves, turns Ready or not, or changes labels
        // may concern every action; its status heartbeats concern none.
        .watches_stream(node_changes(node_events), move |_: Node| {
            actions
                .state()
                .iter()
                .map(|a| ObjectRef::from_obj(a.as_ref()))
                .collect::<Vec<_>>()
        })
        .run(reconcile::reconcile, reconcile::error_policy, context)
        .for_each(|result| {
            if let Err(error) = result {
                tracing::debug!(%error, "controller event");
            }
            future::ready(())
        });

    let outcome = tokio::select! {
        () = reconciling => Ok(()),
        () = &mut shutdown => Ok(()),
        () = async {
            match leadership.as_mut() {
                Some(held) => held.lost().await,
                None => future::pending().await,
            }
        } => Err(Error::LostLease),
    };
    metrics.leader.set(0);
    if let (Ok(()), Some(held)) = (&outcome, leadership) {
        held.release().await;
    }
    outcome
}

/// Node events that matter to rollouts: joins, leaves, and changes of
/// labels or readiness (not the kubelet's periodic status updates).
fn node_changes(
    events: impl futures_util::Stream<Item = Result<watcher::Event<Node>, watcher::Error>>
    + Send
    + 'static,
) -> impl futures_util::Stream<Item = Result<Node, watcher::Error>> + Send + 'static {
    let mut seen = std::collections::HashMap::<String, u64>::new();
    events.filter_map(move |event| {
        let node = match event {
            Err(e) => Some(Err(e)),
            Ok(watcher::Event::Apply(node) | watcher::Event::InitApply(node)) => {
                let name = node.metadata.name.clone().unwrap_or_default();
                let fingerprint = fingerprint(&node);
                (seen.insert(name, fingerprint) != Some(fingerprint)).then_some(Ok(node))
            }
            Ok(watcher::Event::Delete(node)) => {
                seen.remove(node.metadata.name.as_deref().unwrap_or_default());
                Some(Ok(node))
            }
            Ok(watcher::Event::Init | watcher::Event::InitDone) => None,
        };
        future::ready(node)
    })
}

fn fingerprint(node: &Node) -> u64 {
    let mut hasher = std::collections::hash_map::DefaultHasher::new();
    node.metadata.labels.hash(&mut hasher);
    plan::is_ready(node).hash(&mut hasher);
    hasher.finish()
}

/// The watches' back-off (`hostaction_telemetry::backoff`) as kube takes it.
fn watch_backoff() -> ExponentialBackoff {
    hostaction_telemetry::backoff::watch_backoff().into()
}
