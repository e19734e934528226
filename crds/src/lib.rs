//! The hostaction Kubernetes API, group `hostaction.dev`, version `v1alpha1`:
//!
//! - [`HostAction`] (cluster-scoped): which module runs where, with which
//!   grants, at what pace;
//! - [`HostActionRun`]: one action on one node for one generation of it;
//!   only that node's agent writes its status;
//! - [`grant`]: the grant document a HostAction embeds (and a node policy
//!   has the same shape).
//!
//! This crate links neither wasmtime nor the runtime: the controller uses it
//! alone. `hostaction crds` prints the CustomResourceDefinitions generated
//! from these types (`manifests/crds.yaml`).

pub mod action;
pub use hostaction_grant as grant;
pub mod run;
/// The generated CRDs against `manifests/`.
#[cfg(test)]
mod tests;

pub use action::{HostAction, HostActionSpec, HostActionStatus};
pub use grant::Grant;
pub use run::{HostActionRun, HostActionRunSpec, HostActionRunStatus, RunPhase, UndoSummary};

use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::CustomResourceExt;
use serde_json::Value;

/// The API group.
pub const GROUP: &str = "hostaction.dev";
/// The label naming a run's node (agents select their runs by it).
pub const NODE_LABEL: &str = "hostaction.dev/node";
/// The label naming a run's HostAction.
pub const ACTION_LABEL: &str = "hostaction.dev/action";

/// Bytes of a string the types above leave unbounded (those of the
/// Kubernetes types they embed: label selectors, times).
pub const DEFAULT_STRING_BYTES: u64 = 1024;
/// Entries of a list or map the types above leave unbounded.
pub const DEFAULT_LIST_ITEMS: u64 = 64;
/// Bytes of a condition's message (Kubernetes' own bound for `Condition`).
pub const CONDITION_MESSAGE_BYTES: u64 = 32768;
/// What a `format: date-time` string must also match: RFC 3339 in UTC as
/// k8s-openapi writes it (an optional fraction of up to 9 digits), before
/// year 9000. The API server's `date-time` alone takes `t`/`z`, any
/// character for the fraction's dot, offsets like `+99:99` and year 9999's
/// last day, none of which k8s-openapi (jiff) parses; and an agent writes
/// its run's times, which the controller lists with every other run.
pub const DATE_TIME_PATTERN: &str =
    "^[0-8][0-9]{3}-[0-9]{2}-[0-9]{2}T[0-9]{2}:[0-9]{2}:[0-9]{2}([.][0-9]{1,9})?Z$";

/// Both CustomResourceDefinitions, every string, list and map in them
/// bounded so that the API server itself refuses oversized objects; only
/// `params` (free-form JSON) is bounded by the API server's request size.
pub fn crds() -> Result<[CustomResourceDefinition; 2], serde_json::Error> {
    Ok([bounded(HostAction::crd())?, bounded(HostActionRun::crd())?])
}

/// Both CustomResourceDefinitions as one YAML stream, as `hostaction crds`
/// prints them.
pub fn crds_yaml() -> Result<String, String> {
    let [action, run] = crds().map_err(|e| e.to_string())?;
    let yaml =
        |crd: &CustomResourceDefinition| serde_yaml_ng::to_string(crd).map_err(|e| e.to_string());
    Ok(quote_yaml_11_booleans(&format!(
        "{}---\n{}",
        yaml(&action)?,
        yaml(&run)?
    )))
}

/// The YAML with the enum value `off` (`journal: off`) quoted: YAML 1.2
/// (what serde_yaml_ng writes) reads `off` as a string, but kubectl's YAML
/// parser follows YAML 1.1, where a bare `off` is the boolean false.
fn quote_yaml_11_booleans(yaml: &str) -> String {
    let mut out = String::with_capacity(yaml.len() + 16);
    for line in yaml.split_inclusive('\n') {
        match line.trim_end().strip_suffix("- off") {
            Some(indent) if indent.trim().is_empty() => {
                out.push_str(indent);
                out.push_str("- 'off'\n");
            }
            _ => out.push_str(line),
        }
    }
    out
}

/// `crd` with defaults for the bounds its schema lacks.
fn bounded(crd: CustomResourceDefinition) -> Result<CustomResourceDefinition, serde_json::Error> {
    let mut value = serde_json::to_value(crd)?;
    if let Some(versions) = value
        .pointer_mut("/spec/versions")
        .and_then(Value::as_array_mut)
    {
        for version in versions {
            if let Some(schema) = version.pointer_mut("/schema/openAPIV3Schema") {
                if let Some(message) = schema.pointer_mut(
                    "/properties/status/properties/conditions/items/properties/message",
                ) {
                    message["maxLength"] = CONDITION_MESSAGE_BYTES.into();
                }
                bound(schema);
            }
        }
    }
    serde_json::from_value(value)
}

/// Gives every string without a `maxLength` (or `enum`) a default one, and
/// every list and map without a `maxItems` (`maxProperties`) a default one;
/// every `date-time` string [`DATE_TIME_PATTERN`].
fn bound(schema: &mut Value) {
    let Some(map) = schema.as_object_mut() else {
        return;
    };
    if map.get("x-kubernetes-preserve-unknown-fields") == Some(&Value::Bool(true)) {
        return;
    }
    match map.get("type").and_then(Value::as_str) {
        Some("string") if !map.contains_key("enum") => {
            map.entry("maxLength")
                .or_insert(DEFAULT_STRING_BYTES.into());
            if map.get("format").and_then(Value::as_str) == Some("date-time") {
                map.entry("pattern").or_insert(DATE_TIME_PATTERN.into());
            }
        }
        Some("array") => {
            map.entry("maxItems").or_insert(DEFAULT_LIST_ITEMS.into());
        }
        Some("object")
            if map
                .get("additionalProperties")
                .is_some_and(Value::is_object) =>
        {
            map.entry("maxProperties")
                .or_insert(DEFAULT_LIST_ITEMS.into());
        }
        _ => {}
    }
    for key in ["items", "additionalProperties"] {
        if let Some(inner) = map.get_mut(key) {
            bound(inner);
        }
    }
    if let Some(properties) = map.get_mut("properties").and_then(Value::as_object_mut) {
        properties.values_mut().for_each(bound);
    }
    for key in ["allOf", "anyOf", "oneOf"] {
        if let Some(list) = map.get_mut(key).and_then(Value::as_array_mut) {
            list.iter_mut().for_each(bound);
        }
    }
}
