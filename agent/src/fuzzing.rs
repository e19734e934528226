//! Entry points of the fuzz targets in `fuzz/` (`scripts/fuzz.sh`): each takes
//! arbitrary bytes, hands them to one parser of untrusted input through the
//! functions production calls, and asserts what must hold for any input. A
//! panic, here or in the parser, is a finding. Not a public API.
//! These are the node agent's: static mode's manifests and state file.

use std::collections::BTreeMap;
use std::path::PathBuf;

use hostaction_crds::HostAction;
use hostaction_crds::run::RunPhase;
use hostaction_distribution::fuzzing::Target;
use hostaction_distribution::is_reference;
use hostaction_runtime::grant::EffectiveGrant;

use crate::static_dir::{ActionState, StaticState, due, parse_file};

/// The targets by name (the names of `fuzz/fuzz_targets/*.rs` and of the
/// corpus directories).
pub const TARGETS: &[(&str, Target)] = &[
    ("static_manifest", static_manifest),
    ("static_state", static_state),
];

/// A static-mode manifest file (YAML or JSON, several documents), parsed
/// as each pass parses the manifests directory, then the spec's node
/// selector, rollout and rerun logic.
pub fn static_manifest(data: &[u8]) {
    let path = scratch_file("manifest.yaml");
    if std::fs::write(&path, data).is_err() {
        return;
    }
    let Ok(actions) = parse_file(&path) else {
        return;
    };
    let labels = BTreeMap::from([
        ("kubernetes.io/hostname".to_owned(), "node-1".to_owned()),
        ("node-role.kubernetes.io/worker".to_owned(), String::new()),
    ]);
    for action in &actions {
        assert!(action.metadata.name.as_ref().is_some_and(|n| !n.is_empty()));
        assert!((1..=3600).contains(&action.spec.timeout_seconds));
        let _ = action.spec.selects(&labels);
        let _ = action.spec.selects(&BTreeMap::new());
        for nodes in [0, 1, 7, 5000] {
            if let Ok(n) = action.spec.max_concurrent(nodes) {
                assert!(n >= 1, "max_concurrent({nodes}) = 0");
            }
        }
        let _ = is_reference(&action.spec.module);
        let _ = EffectiveGrant::new(&action.spec.grants, None);
        let previous = ActionState {
            status: hostaction_crds::HostActionRunStatus {
                phase: RunPhase::Succeeded,
                finished_at: Some(crate::now()),
                attempts: 1,
                ..Default::default()
            },
            ..Default::default()
        };
        let _ = due(action, Some(&previous), "sha256:0");
        let _ = due(action, None, "sha256:0");
    }
}

/// A static-mode state file, read back as each pass reads it and checked
/// against a HostAction that reruns on an interval.
pub fn static_state(data: &[u8]) {
    let Ok(state) = serde_json::from_slice::<StaticState>(data) else {
        return;
    };
    // What a pass writes, it reads back unchanged.
    if let Ok(written) = serde_json::to_vec_pretty(&state) {
        let back = serde_json::from_slice::<StaticState>(&written);
        assert!(back.is_ok(), "the state written does not read back");
        if let Ok(back) = back {
            let again = serde_json::to_vec_pretty(&back).unwrap_or_default();
            assert_eq!(written, again, "the state changes on each write");
        }
    }
    let Ok(action) = serde_json::from_value::<HostAction>(serde_json::json!({
        "apiVersion": "hostaction.dev/v1alpha1",
        "kind": "HostAction",
        "metadata": {"name": "fuzz"},
        "spec": {"module": "/fuzz.wasm", "rerun": {"intervalSeconds": 3600}},
    })) else {
        return;
    };
    for previous in state.actions.values() {
        let _ = due(&action, Some(previous), &previous.spec_hash);
        let _ = due(&action, Some(previous), "sha256:other");
    }
}

/// A file of this process for one input at a time (fuzzers may run several
/// processes at once).
fn scratch_file(name: &str) -> PathBuf {
    std::env::temp_dir().join(format!("hostaction-fuzz-{}-{name}", std::process::id()))
}

#[cfg(test)]
mod tests {
    use hostaction_distribution::fuzzing::replay_corpus;

    use super::*;

    #[test]
    fn the_fuzz_corpus_passes_every_agent_target() {
        let inputs = replay_corpus(TARGETS, |_| false);
        assert!(inputs >= TARGETS.len() * 3, "{inputs} corpus inputs");
    }
}
