//! `HostActionRun`: one HostAction on one node for one generation of it.
//! The controller creates it (owned by its HostAction, labelled with its
//! node); only that node's agent writes its status.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::{CustomResource, KubeSchema};
use schemars::Schema;
use serde::{Deserialize, Serialize};

use crate::action::{Drift, Journal, Mode, OnDelete, OnFailure};
use crate::grant::Grant;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;

/// Bytes a run's status may take, serialized as JSON. The agent shrinks the
/// log tail and the effects list to fit (and says how many it dropped): the
/// controller caches every run of every node, and etcd refuses large
/// objects; 500 nodes cost the controller 8 MiB of statuses.
pub const STATUS_BYTES: usize = 16 * 1024;
/// Log lines a run's status keeps at most (its last ones).
pub const LOG_TAIL_LINES: usize = 50;
/// Effects a run's status lists at most (its first ones; `effectCount`
/// says how many there were).
pub const EFFECTS_LISTED: usize = 100;
/// Bytes of the status message; longer ones are cut.
pub const MESSAGE_BYTES: usize = 2048;
/// Bytes of one log line, effect target or other free text in a status;
/// longer ones are cut.
pub const LINE_BYTES: usize = 512;
/// Bytes of an object name (`metadata.name`, a node name): a DNS subdomain.
pub const NAME_BYTES: usize = 253;
/// Bytes of a module reference.
pub const MODULE_BYTES: usize = 1024;

/// A registry host: `localhost`, a name with a dot, or a name with a port
/// (IPv6 literals are not accepted). No `\` so that it reads the same in a
/// CEL string as in RE2 and ECMAScript.
macro_rules! registry_repository {
    () => {
        "^(localhost|[a-zA-Z0-9]([a-zA-Z0-9-]*[a-zA-Z0-9])?([.][a-zA-Z0-9]([a-zA-Z0-9-]*[a-zA-Z0-9])?)+(:[0-9]+)?|[a-zA-Z0-9]([a-zA-Z0-9-]*[a-zA-Z0-9])?:[0-9]+)/[a-z0-9]+(([.]|_|__|-+)[a-z0-9]+)*(/[a-z0-9]+(([.]|_|__|-+)[a-z0-9]+)*)*(:[a-zA-Z0-9_][a-zA-Z0-9_.-]{0,127})?"
    };
}

/// A run's module: a registry reference pinned by digest,
/// `registry/repository[:tag]@sha256:<64 hex>`, and nothing else — never a
/// file path or a URL with a scheme (a node would run a local file).
pub const PINNED_MODULE_PATTERN: &str = concat!(registry_repository!(), "@sha256:[0-9a-f]{64}$");
/// A HostAction's module: a registry reference by tag or digest,
/// `registry/repository[:tag][@sha256:<64 hex>]`.
pub const MODULE_PATTERN: &str = concat!(registry_repository!(), "(@sha256:[0-9a-f]{64})?$");

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
    printcolumn = r#"{"name":"Age","type":"date","jsonPath":".metadata.creationTimestamp"}"#,
    // `-o wide` (priority 1): which generation, how many starts, and why.
    printcolumn = r#"{"name":"Generation","type":"integer","priority":1,"jsonPath":".spec.generation"}"#,
    printcolumn = r#"{"name":"Attempts","type":"integer","priority":1,"jsonPath":".status.attempts"}"#,
    printcolumn = r#"{"name":"Message","type":"string","priority":1,"jsonPath":".status.message"}"#
)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("self == oldSelf").message("a run's spec is immutable: a new generation gets a new run"))]
pub struct HostActionRunSpec {
    /// The HostAction this run belongs to.
    #[schemars(length(max = NAME_BYTES))]
    pub action: String,
    /// The HostAction's generation it runs.
    pub generation: i64,
    /// The node that runs it (also its `hostaction.dev/node` label).
    #[schemars(length(max = NAME_BYTES))]
    pub node_name: String,
    /// The module by digest: `registry/repository[:tag]@sha256:<64 hex>`,
    /// never a file or a URL.
    #[schemars(length(max = MODULE_BYTES))]
    #[x_kube(validation = Rule::new(format!("self.matches('{PINNED_MODULE_PATTERN}')")).message("module must be a registry reference pinned by digest (registry.example/repository@sha256:<64 hex>), never a file path or URL"))]
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
    /// The HostAction's `onFailure`.
    #[serde(default)]
    pub on_failure: OnFailure,
    /// The HostAction's `onDelete` (with `undo`, the agent keeps the run's
    /// journal after the run is replaced, for undoing the action later).
    #[serde(default)]
    pub on_delete: OnDelete,
    /// The HostAction's `journal`.
    #[serde(default)]
    pub journal: Journal,
    /// The HostAction's `drift`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub drift: Option<Drift>,
}

/// The condition type of a drift check's result on a run.
pub const DRIFTED: &str = "Drifted";
/// Bytes of a `Drifted` condition's message (what the plan would change).
pub const DRIFT_MESSAGE_BYTES: usize = 4096;

/// The annotation the controller puts on a HostAction's runs when the
/// HostAction (with `onDelete: undo`) is being deleted: each run's agent
/// undoes the action's applied runs on its node and reports phase `Undone`.
pub const UNDO_ANNOTATION: &str = "hostaction.dev/undo";

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
    /// Its HostAction is being deleted with `onDelete: undo`: the agent
    /// undid the action's runs on the node (`status.undo` says how far).
    Undone,
}

/// What the node's agent reports.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct HostActionRunStatus {
    /// Where the run is.
    #[serde(default)]
    pub phase: RunPhase,
    /// When the agent started it (none when unreadable: see [`lenient_time`]).
    #[serde(
        default,
        deserialize_with = "lenient_time",
        skip_serializing_if = "Option::is_none"
    )]
    pub started_at: Option<Time>,
    /// When it finished (none when unreadable: see [`lenient_time`]).
    #[serde(
        default,
        deserialize_with = "lenient_time",
        skip_serializing_if = "Option::is_none"
    )]
    pub finished_at: Option<Time>,
    /// Whether it changed the node (in plan mode: whether it would).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub changed: Option<bool>,
    /// The outcome's message, or why it failed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = MESSAGE_BYTES))]
    pub message: Option<String>,
    /// The last lines of its log (as many as fit the status's size budget).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = LOG_TAIL_LINES), inner(length(max = LINE_BYTES)))]
    pub log_tail: Vec<String>,
    /// Log lines of the run not in `logTail`.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub log_lines_dropped: i32,
    /// What it changed (or, in plan mode, would change): the first ones (as
    /// many as fit the status's size budget).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = EFFECTS_LISTED))]
    pub effects: Vec<EffectSummary>,
    /// How many effects it had in all (`effects` lists the first ones).
    #[serde(default)]
    pub effect_count: i32,
    /// Effects of the run not in `effects`.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub effects_dropped: i32,
    /// Times the agent started it (a run left Running by a restarted agent
    /// is started again).
    #[serde(default)]
    pub attempts: i32,
    /// The run's id on its node: its undo journal's name (`hostaction undo
    /// RUN` there).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = RUN_ID_BYTES))]
    pub run_id: Option<String>,
    /// Whether the run's changes can be undone later (journaled in full).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub undoable: Option<bool>,
    /// Whether the module's signature was verified (`Verified`, by the key
    /// `signatureKey` names) or the node's policy did not require one
    /// (`NotRequired`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub verification: Option<Verification>,
    /// The fingerprint (`sha256:` of its SubjectPublicKeyInfo) of the key
    /// whose signature of the module was verified.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 71))]
    pub signature_key: Option<String>,
    /// The run failed and was rolled back (`onFailure: rollback`): what
    /// was restored and what could not be.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rollback: Option<UndoSummary>,
    /// Phase `Undone`: what undoing the action's runs on the node came to.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub undo: Option<UndoSummary>,
    /// `Drifted` (with `spec.drift`): True when the last check's plan was
    /// not empty, its message what it would change (at most
    /// [`DRIFT_MESSAGE_BYTES`]); written only when it changes.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 4), extend("x-kubernetes-list-type" = "map", "x-kubernetes-list-map-keys" = ["type"]))]
    pub conditions: Vec<Condition>,
}

/// Whether a run's module was verified to come from a trusted key.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, schemars::JsonSchema)]
pub enum Verification {
    /// Signed by the key `signatureKey` names.
    Verified,
    /// The node's policy (and the action's grant) did not require a
    /// signature: none was checked.
    NotRequired,
}

/// Bytes of a run id (the runtime's bound).
pub const RUN_ID_BYTES: usize = 128;
/// Effects an [`UndoSummary`] names at most (the first that were not restored).
pub const UNDO_PROBLEMS_LISTED: usize = 5;

/// What a rollback or undo came to: counts, and the first effects it could
/// not restore (a conflict: someone changed the target since; irreversible;
/// failed), each one line of at most [`LINE_BYTES`].
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct UndoSummary {
    /// Effects now as before the run (restored, or already so).
    #[serde(default)]
    pub restored: i32,
    /// Effects left because someone changed their target since.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub conflicts: i32,
    /// Effects that cannot be reversed (a service restart).
    #[serde(default, skip_serializing_if = "is_zero")]
    pub irreversible: i32,
    /// Effects whose undo failed.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub failed: i32,
    /// The first effects not restored, one line each (`conflict files
    /// write-file /etc/x: ...`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = UNDO_PROBLEMS_LISTED), inner(length(max = LINE_BYTES)))]
    pub problems: Vec<String>,
}

/// One change a run made.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct EffectSummary {
    /// The capability (`files`, `network`, `services`).
    #[schemars(length(max = WORD_BYTES))]
    pub capability: String,
    /// What it did (`write-file`, `create-link`, `restart`, ...).
    #[schemars(length(max = WORD_BYTES))]
    pub action: String,
    /// What it did it to.
    #[schemars(length(max = LINE_BYTES))]
    pub target: String,
}

/// Bytes of a capability or effect name in a status.
pub const WORD_BYTES: usize = 64;

/// A time the agent wrote, or none when k8s-openapi cannot parse it. The
/// CRD refuses such times ([`crate::DATE_TIME_PATTERN`]), but a run stored
/// under an older CRD may hold one, and one run the controller cannot read
/// would fail its list of every run, and so every rollout.
fn lenient_time<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<Time>, D::Error> {
    let value = Option::<serde_json::Value>::deserialize(d)?;
    Ok(value.and_then(|v| serde_json::from_value(v).ok()))
}

fn is_zero(n: &i32) -> bool {
    *n == 0
}

/// The schema of a free-form JSON object (`params`).
pub(crate) fn any_object(_: &mut schemars::SchemaGenerator) -> Schema {
    schemars::json_schema!({
        "type": "object",
        "x-kubernetes-preserve-unknown-fields": true,
    })
}
