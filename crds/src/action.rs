//! `HostAction`: a module, its params and grants, the nodes it runs on and
//! the pace of its rollout. Cluster-scoped: it shapes nodes, not a namespace.

use std::collections::BTreeMap;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, LabelSelector};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use kube::core::{Selector, SelectorExt};
use kube::{CustomResource, KubeSchema};
use serde::{Deserialize, Serialize};

use crate::grant::Grant;

/// What the action runs, where, with which grants, at what pace.
#[derive(CustomResource, KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[kube(
    group = "hostaction.dev",
    version = "v1alpha1",
    kind = "HostAction",
    doc = "A host action: a Wasm component run on the nodes a selector picks, with only the capabilities its grants give (bounded by each node's policy).",
    status = "HostActionStatus",
    shortname = "ha",
    category = "hostaction",
    printcolumn = r#"{"name":"Module","type":"string","jsonPath":".spec.module"}"#,
    printcolumn = r#"{"name":"Mode","type":"string","jsonPath":".spec.mode"}"#,
    printcolumn = r#"{"name":"Selected","type":"integer","jsonPath":".status.selectedNodes"}"#,
    printcolumn = r#"{"name":"Succeeded","type":"integer","jsonPath":".status.counts.succeeded"}"#,
    printcolumn = r#"{"name":"Failed","type":"integer","jsonPath":".status.counts.failed"}"#,
    printcolumn = r#"{"name":"Digest","type":"string","priority":1,"jsonPath":".status.resolvedDigest"}"#,
    printcolumn = r#"{"name":"Age","type":"date","jsonPath":".metadata.creationTimestamp"}"#
)]
#[serde(rename_all = "camelCase")]
pub struct HostActionSpec {
    /// The module: a registry reference (`registry/repository:tag` or
    /// `registry/repository@sha256:...`), never a file path or URL. A tag is
    /// resolved to a digest once per generation; nodes run that digest.
    #[schemars(length(max = crate::run::MODULE_BYTES))]
    #[x_kube(validation = Rule::new(format!("self.matches('{}')", crate::run::MODULE_PATTERN)).message("module must be a registry reference like registry.example/actions/cni-install:v1 (or @sha256:<64 hex>), never a file path or URL"))]
    pub module: String,
    /// The action's params: any JSON object, passed to its `run`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(schema_with = "crate::run::any_object")]
    pub params: Option<serde_json::Map<String, serde_json::Value>>,
    /// What the action may do; each node bounds it with its policy.
    #[serde(default)]
    pub grants: Grant,
    /// The nodes to run on (a label selector over Node labels); all Ready
    /// nodes when empty.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node_selector: Option<LabelSelector>,
    /// How fast the action reaches the selected nodes.
    #[serde(default)]
    pub rollout: Rollout,
    /// `apply` changes the nodes; `plan` reads and reports what would change.
    #[serde(default)]
    pub mode: Mode,
    /// Each run's deadline, host calls included.
    #[serde(default = "default_timeout")]
    #[x_kube(validation = Rule::new("self >= 1 && self <= 3600").message("timeoutSeconds must be 1 to 3600"))]
    pub timeout_seconds: i32,
    /// When a node runs the action again.
    #[serde(default)]
    pub rerun: Rerun,
    /// What a failed run does with the changes it made: `rollback` (the
    /// default) restores the node as it was before the run; `keep` leaves them.
    #[serde(default)]
    pub on_failure: OnFailure,
    /// What deleting the HostAction does on its nodes: `keep` (the default)
    /// leaves them as the runs made them; `undo` makes each node's agent
    /// undo the action's applied runs, newest first, before the HostAction
    /// goes (a finalizer holds it until every node has reported).
    #[serde(default)]
    pub on_delete: OnDelete,
    /// The runs' undo journal: `required` (the default; a change whose undo
    /// data would pass the node's journal budget fails the run before it is
    /// made), `best-effort` (past the budget the run goes on and is not
    /// undoable) or `off` (no rollback, no undo).
    #[serde(default)]
    pub journal: Journal,
    /// Drift detection: each node re-runs the applied action in plan mode
    /// this often and reports a `Drifted` condition when the plan is not
    /// empty (and, with `remediate`, applies it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub drift: Option<Drift>,
}

/// How a node checks that what the action applied is still there.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct Drift {
    /// Seconds between two checks (a plan run) on a node.
    #[x_kube(validation = Rule::new("self >= 10 && self <= 86400").message("drift.intervalSeconds must be 10 to 86400"))]
    pub interval_seconds: i32,
    /// Apply (journaled, as any run) when the plan is not empty, rather
    /// than only report it.
    #[serde(default)]
    pub remediate: bool,
}

impl HostActionSpec {
    /// Its node selector as kube's [`Selector`] (no selector: one that
    /// selects every node). An unknown operator is an error naming it; `In`
    /// or `NotIn` without values has an empty set (selects no node and
    /// every node), as before kube parsed selectors here.
    pub fn node_selector(&self) -> Result<Selector, String> {
        let Some(selector) = &self.node_selector else {
            return Ok(Selector::default());
        };
        let mut selector = selector.clone();
        for expr in selector.match_expressions.iter_mut().flatten() {
            match expr.operator.as_str() {
                "In" | "NotIn" => {
                    expr.values.get_or_insert_with(Vec::new);
                }
                "Exists" | "DoesNotExist" => {}
                other => {
                    return Err(format!(
                        "nodeSelector: unknown operator {other:?} (In, NotIn, Exists, DoesNotExist)"
                    ));
                }
            }
        }
        Selector::try_from(selector).map_err(|e| format!("nodeSelector: {e}"))
    }

    /// Whether its node selector picks a node with `labels` (no selector
    /// picks every node); an invalid selector is [`Self::node_selector`]'s
    /// error. Parses the selector on each call: matching many nodes, parse
    /// it once with [`Self::node_selector`].
    pub fn selects(&self, labels: &BTreeMap<String, String>) -> Result<bool, String> {
        Ok(self.node_selector()?.matches(labels))
    }

    /// Nodes running at once out of `selected`: the count, or the
    /// percentage rounded up (at least one).
    pub fn max_concurrent(&self, selected: usize) -> Result<usize, String> {
        match &self.rollout.max_concurrent {
            IntOrString::Int(n) if *n >= 1 => Ok(*n as usize),
            IntOrString::String(p) => match p.strip_suffix('%').map(str::parse::<u32>) {
                Some(Ok(percent)) if percent >= 1 => {
                    Ok((selected * percent as usize).div_ceil(100).max(1))
                }
                _ => Err(format!(
                    "rollout.maxConcurrent: {p:?} is not a percentage like \"25%\""
                )),
            },
            IntOrString::Int(n) => Err(format!("rollout.maxConcurrent: {n} is below 1")),
        }
    }
}

/// The pace of a rollout.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct Rollout {
    /// Nodes running at once: a count (`5`) or a percentage of the selected
    /// nodes (`"25%"`, at least one node).
    #[serde(
        default = "default_max_concurrent",
        deserialize_with = "null_is_default_max_concurrent"
    )]
    #[x_kube(validation = Rule::new("type(self) == int ? self >= 1 : self.matches('^[0-9]+%$')").message("maxConcurrent is a count of at least 1 or a percentage like \"25%\""))]
    pub max_concurrent: IntOrString,
    /// Failed runs tolerated; one more stops the rollout (no new runs).
    #[serde(default)]
    #[x_kube(validation = Rule::new("self >= 0").message("maxFailures must not be negative"))]
    pub max_failures: i32,
    /// No new runs while paused; running ones finish.
    #[serde(default)]
    pub paused: bool,
}

impl Default for Rollout {
    fn default() -> Self {
        Self {
            max_concurrent: default_max_concurrent(),
            max_failures: 0,
            paused: false,
        }
    }
}

/// Apply or plan.
#[derive(
    Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq, schemars::JsonSchema,
)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    /// Change the nodes.
    #[default]
    Apply,
    /// Read for real, change nothing, report what would change.
    Plan,
}

/// What a failed run does with the changes it made.
#[derive(
    Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq, schemars::JsonSchema,
)]
#[serde(rename_all = "lowercase")]
pub enum OnFailure {
    /// Roll the node back to how it was before the run.
    #[default]
    Rollback,
    /// Leave the changes.
    Keep,
}

/// What deleting a HostAction does on its nodes.
#[derive(
    Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq, schemars::JsonSchema,
)]
#[serde(rename_all = "lowercase")]
pub enum OnDelete {
    /// Leave the nodes as the runs made them.
    #[default]
    Keep,
    /// Undo the action's applied runs on each node, newest first.
    Undo,
}

/// Whether runs keep an undo journal.
#[derive(
    Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq, schemars::JsonSchema,
)]
#[serde(rename_all = "kebab-case")]
pub enum Journal {
    /// Every change journaled; one past the budget fails the run first.
    #[default]
    Required,
    /// Past the budget the run goes on, not undoable.
    BestEffort,
    /// No journal: no rollback, no undo.
    Off,
}

/// When a node runs the action again (actions are idempotent, so a re-run
/// of an unchanged action changes nothing).
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct Rerun {
    /// Run again on every node when the spec changes (a new generation).
    #[serde(default = "yes")]
    pub on_spec_change: bool,
    /// Run on nodes that join (or start matching the selector) later.
    #[serde(default = "yes")]
    pub on_node_join: bool,
    /// Also run again this often, to put back what drifted.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[x_kube(validation = Rule::new("self >= 60").message("intervalSeconds must be at least 60"))]
    pub interval_seconds: Option<i32>,
}

impl Default for Rerun {
    fn default() -> Self {
        Self {
            on_spec_change: true,
            on_node_join: true,
            interval_seconds: None,
        }
    }
}

/// What the controller observed and did.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct HostActionStatus {
    /// The generation this status describes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// The module's manifest digest for this generation (`sha256:...`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 71))]
    pub resolved_digest: Option<String>,
    /// Nodes the selector picks.
    #[serde(default)]
    pub selected_nodes: i32,
    /// Runs of this generation per phase.
    #[serde(default)]
    pub counts: PhaseCounts,
    /// `Resolved`, `Progressing`, `Complete`, `Failed` (Kubernetes API
    /// conventions: status True/False/Unknown, reason, message).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 8), extend("x-kubernetes-list-type" = "map", "x-kubernetes-list-map-keys" = ["type"]))]
    pub conditions: Vec<Condition>,
}

/// Runs per phase.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct PhaseCounts {
    /// Created, not started.
    #[serde(default)]
    pub pending: i32,
    /// Started by their agent.
    #[serde(default)]
    pub running: i32,
    /// Finished with success.
    #[serde(default)]
    pub succeeded: i32,
    /// Finished with failure (or refused, or interrupted and not re-run).
    #[serde(default)]
    pub failed: i32,
    /// Nodes whose last drift check found the action's changes gone (a
    /// `Drifted` condition True on their run).
    #[serde(default, skip_serializing_if = "is_zero")]
    pub drifted: i32,
}

fn is_zero(n: &i32) -> bool {
    *n == 0
}

fn default_timeout() -> i32 {
    60
}

fn default_max_concurrent() -> IntOrString {
    IntOrString::Int(1)
}

/// The schema lets `maxConcurrent: null` through (CEL skips nulls): read it
/// as the default rather than failing to decode the whole object.
fn null_is_default_max_concurrent<'de, D: serde::Deserializer<'de>>(
    d: D,
) -> Result<IntOrString, D::Error> {
    Ok(Option::<IntOrString>::deserialize(d)?.unwrap_or_else(default_max_concurrent))
}

fn yes() -> bool {
    true
}
