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
pub mod grant;
pub mod run;

pub use action::{HostAction, HostActionSpec, HostActionStatus};
pub use grant::Grant;
pub use run::{HostActionRun, HostActionRunSpec, HostActionRunStatus, RunPhase};

use kube::CustomResourceExt;

/// The API group.
pub const GROUP: &str = "hostaction.dev";
/// The label naming a run's node (agents select their runs by it).
pub const NODE_LABEL: &str = "hostaction.dev/node";
/// The label naming a run's HostAction.
pub const ACTION_LABEL: &str = "hostaction.dev/action";

/// Both CustomResourceDefinitions as one YAML stream, as `hostaction crds`
/// prints them.
pub fn crds_yaml() -> Result<String, serde_yaml_ng::Error> {
    Ok(format!(
        "{}---\n{}",
        serde_yaml_ng::to_string(&HostAction::crd())?,
        serde_yaml_ng::to_string(&HostActionRun::crd())?
    ))
}
