//! `HostActionRun`: one HostAction on one node for one generation of it.
//! The controller creates it (owned by its HostAction, labelled with its
//! node); only that node's agent writes its status.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::{CustomResource, KubeSchema};
use schemars::Schema;
use serde::{Deserialize, Serialize};

use crate::action::Mode;
use crate::grant::Grant;

/// Log lines a run's status keeps (its last ones).
pub const LOG_TAIL_LINES: usize = 50;
/// Effects a run's status lists (its first ones; the count says how many).
pub const EFFECTS_LISTED: usize = 100;

/// What one node must run: a pinned module, its params and grants.
#[derive(CustomResource, KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[kube(
    group = "hostaction.dev",
    version = "v1alpha1",
    kind = "HostActionRun",
    doc = "One HostAction on one node for one generation of it; its status is written by that node's agent only.",
    status = "HostActionRunStatus",
    shortname = "har",
    category = "hostaction",
    selectable = ".spec.nodeName",
    printcolumn = r#"{"name":"Node","type":"string","jsonPath":".spec.nodeName"}"#,
    printcolumn = r#"{"name":"Action","type":"string","jsonPath":".spec.action"}"#,
    printcolumn = r#"{"name":"Phase","type":"string","jsonPath":".status.phase"}"#,
    printcolumn = r#"{"name":"Changed","type":"boolean","jsonPath":".status.changed"}"#,
    printcolumn = r#"{"name":"Age","type":"date","jsonPath":".metadata.creationTimestamp"}"#
)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("self == oldSelf").message("a run's spec is immutable: a new generation gets a new run"))]
pub struct HostActionRunSpec {
    /// The HostAction this run belongs to.
    pub action: String,
    /// The HostAction's generation it runs.
    pub generation: i64,
    /// The node that runs it (also its `hostaction.dev/node` label).
    pub node_name: String,
    /// The module by digest: `registry/repository@sha256:...`.
    #[x_kube(validation = Rule::new("self.matches('^[^@]+@sha256:[0-9a-f]{64}$')").message("module must be pinned by digest (registry/repository@sha256:...)"))]
    pub module: String,
    /// The action's params.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(schema_with = "any_object")]
    pub params: Option<serde_json::Map<String, serde_json::Value>>,
    /// The grants (the agent bounds them with its node's policy).
    #[serde(default)]
    pub grants: Grant,
    /// Apply or plan.
    #[serde(default)]
    pub mode: Mode,
    /// The run's deadline.
    pub timeout_seconds: i32,
}

/// Where a run is.
#[derive(
    Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq, schemars::JsonSchema,
)]
pub enum RunPhase {
    /// Created; the agent has not started it.
    #[default]
    Pending,
    /// The agent started it.
    Running,
    /// It finished with success.
    Succeeded,
    /// It failed, was refused, or the module could not be fetched.
    Failed,
    /// Its agent stopped while it ran and will not run it again.
    Interrupted,
}

/// What the node's agent reports.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct HostActionRunStatus {
    /// Where the run is.
    #[serde(default)]
    pub phase: RunPhase,
    /// When the agent started it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub started_at: Option<Time>,
    /// When it finished.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub finished_at: Option<Time>,
    /// Whether it changed the node (in plan mode: whether it would).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub changed: Option<bool>,
    /// The outcome's message, or why it failed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 4096))]
    pub message: Option<String>,
    /// The last lines of its log.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 50))]
    pub log_tail: Vec<String>,
    /// What it changed (or, in plan mode, would change): the first ones.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 100))]
    pub effects: Vec<EffectSummary>,
    /// How many effects it had in all.
    #[serde(default)]
    pub effect_count: i32,
    /// Times the agent started it (a run left Running by a restarted agent
    /// is started again).
    #[serde(default)]
    pub attempts: i32,
}

/// One change a run made.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct EffectSummary {
    /// The capability (`files`, `network`, `services`).
    pub capability: String,
    /// What it did (`write-file`, `create-link`, `restart`, ...).
    pub action: String,
    /// What it did it to.
    pub target: String,
}

/// The schema of a free-form JSON object (`params`).
pub(crate) fn any_object(_: &mut schemars::SchemaGenerator) -> Schema {
    schemars::json_schema!({
        "type": "object",
        "x-kubernetes-preserve-unknown-fields": true,
    })
}
