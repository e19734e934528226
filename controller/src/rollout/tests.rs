//! Tests of the rollout rules, one rule at a time.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::collections::BTreeMap;
use std::time::Duration;

use hostaction_crds::action::{PhaseCounts, Rerun, Rollout};
use hostaction_crds::{
    Grant, HostAction, HostActionRun, HostActionRunSpec, HostActionRunStatus, HostActionSpec,
    HostActionStatus, RunPhase,
};
use k8s_openapi::api::core::v1::{Node, NodeCondition, NodeStatus};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{
    Condition, LabelSelector, LabelSelectorRequirement, ObjectMeta, Time,
};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use k8s_openapi::jiff::{SignedDuration, Timestamp};

use super::*;

const ACTION: &str = "act";
const DIGEST: &str = "sha256:aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa";

/// The clock of every step here.
fn now() -> Timestamp {
    Timestamp::from_second(1_750_000_000).unwrap()
}

/// An action at `generation` with default rules, changed by `tweak`.
fn action(generation: i64, tweak: impl FnOnce(&mut HostActionSpec)) -> HostAction {
    let mut spec = HostActionSpec {
        module: "registry.example/actions/x:v1".into(),
        params: None,
        grants: Grant::default(),
        node_selector: None,
        rollout: Rollout::default(),
        mode: Default::default(),
        timeout_seconds: 60,
        rerun: Rerun::default(),
        on_failure: Default::default(),
        on_delete: Default::default(),
        journal: Default::default(),
        drift: None,
    };
    tweak(&mut spec);
    let mut action = HostAction::new(ACTION, spec);
    action.metadata.generation = Some(generation);
    action
}

/// `action(1, ...)` with `maxConcurrent` set to a count.
fn at_most(n: i32) -> HostAction {
    action(1, |s| s.rollout.max_concurrent = IntOrString::Int(n))
}

/// A node with `labels`, Ready or NotReady.
fn node(name: &str, labels: &[(&str, &str)], ready: bool) -> Node {
    Node {
        metadata: ObjectMeta {
            name: Some(name.into()),
            labels: Some(
                labels
                    .iter()
                    .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                    .collect(),
            ),
            ..ObjectMeta::default()
        },
        spec: None,
        status: Some(NodeStatus {
            conditions: Some(vec![NodeCondition {
                type_: "Ready".into(),
                status: if ready { "True" } else { "False" }.into(),
                ..NodeCondition::default()
            }]),
            ..NodeStatus::default()
        }),
    }
}

/// Ready nodes without labels.
fn ready(names: &[&str]) -> Vec<Node> {
    names.iter().map(|n| node(n, &[], true)).collect()
}

/// The name a run of `ACTION` on `node` for `generation` has.
fn name(node: &str, generation: i64) -> String {
    run_name(ACTION, node, generation)
}

/// A run of `ACTION` on `node` for `generation`, in `phase` (no status when
/// `None`), finished `finished_ago` seconds before `now()` when given.
fn run(
    node: &str,
    generation: i64,
    phase: Option<RunPhase>,
    finished_ago: Option<i64>,
) -> HostActionRun {
    let mut run = HostActionRun::new(
        &name(node, generation),
        HostActionRunSpec {
            action: ACTION.into(),
            generation,
            node_name: node.into(),
            module: format!("registry.example/actions/x@{DIGEST}"),
            params: None,
            grants: Grant::default(),
            mode: Default::default(),
            timeout_seconds: 60,
            on_failure: Default::default(),
            on_delete: Default::default(),
            journal: Default::default(),
            drift: None,
        },
    );
    run.status = phase.map(|phase| HostActionRunStatus {
        phase,
        finished_at: finished_ago
            .map(|secs| Time(now().checked_sub(SignedDuration::from_secs(secs)).unwrap())),
        ..HostActionRunStatus::default()
    });
    run
}

fn phase(node: &str, generation: i64, phase: RunPhase) -> HostActionRun {
    run(node, generation, Some(phase), None)
}

fn step_of(
    action: &HostAction,
    nodes: &[Node],
    runs: &[HostActionRun],
    completed: bool,
) -> NextStep {
    try_step(action, nodes, runs, completed).unwrap()
}

fn try_step(
    action: &HostAction,
    nodes: &[Node],
    runs: &[HostActionRun],
    completed: bool,
) -> Result<NextStep, String> {
    let nodes: Vec<&Node> = nodes.iter().collect();
    let runs: Vec<&HostActionRun> = runs.iter().collect();
    next_step(action, DIGEST, &nodes, &runs, completed, now())
}

/// The condition of `type_` in `step`'s status.
fn cond<'a>(step: &'a NextStep, type_: &str) -> &'a Condition {
    step.status
        .conditions
        .iter()
        .find(|c| c.type_ == type_)
        .unwrap_or_else(|| panic!("no {type_} condition in {:?}", step.status.conditions))
}

/// `(status, reason)` of a condition.
fn state<'a>(step: &'a NextStep, type_: &str) -> (&'a str, &'a str) {
    let c = cond(step, type_);
    (c.status.as_str(), c.reason.as_str())
}

fn names(nodes: &[&str]) -> Vec<String> {
    nodes.iter().map(|n| (*n).to_owned()).collect()
}

fn counts(pending: i32, running: i32, succeeded: i32, failed: i32) -> PhaseCounts {
    PhaseCounts {
        pending,
        running,
        succeeded,
        failed,
        drifted: 0,
    }
}

// maxConcurrent

#[test]
fn a_count_caps_the_runs_created_at_once() {
    let nodes = ready(&["a", "b", "c", "d", "e"]);
    for (max, created) in [(1, 1), (2, 2), (5, 5), (9, 5)] {
        let step = step_of(&at_most(max), &nodes, &[], false);
        assert_eq!(step.create.len(), created, "maxConcurrent {max}");
    }
}

#[test]
fn a_percentage_of_the_selected_nodes_rounds_up_and_is_at_least_one() {
    let ten = ready(&["n0", "n1", "n2", "n3", "n4", "n5", "n6", "n7", "n8", "n9"]);
    for (percent, selected, created) in [
        ("25%", 10, 3),
        ("10%", 10, 1),
        ("1%", 10, 1),
        ("50%", 10, 5),
        ("100%", 10, 10),
        ("25%", 4, 1),
        ("26%", 4, 2),
        ("25%", 1, 1),
    ] {
        let a = action(1, |s| {
            s.rollout.max_concurrent = IntOrString::String(percent.into());
        });
        let step = step_of(&a, &ten[..selected], &[], false);
        assert_eq!(step.create.len(), created, "{percent} of {selected}");
    }
}

#[test]
fn a_percentage_counts_selected_nodes_only() {
    // 25% of the 4 Ready nodes, not of the 8 nodes.
    let mut nodes = ready(&["a", "b", "c", "d"]);
    nodes.extend(["e", "f", "g", "h"].map(|n| node(n, &[], false)));
    let a = action(1, |s| {
        s.rollout.max_concurrent = IntOrString::String("25%".into())
    });
    assert_eq!(step_of(&a, &nodes, &[], false).create, names(&["a"]));
}

#[test]
fn an_unusable_max_concurrent_is_an_error() {
    let nodes = ready(&["a"]);
    for bad in [
        IntOrString::Int(0),
        IntOrString::Int(-1),
        IntOrString::String("0%".into()),
        IntOrString::String("25".into()),
        IntOrString::String("x%".into()),
    ] {
        let a = action(1, |s| s.rollout.max_concurrent = bad.clone());
        let err = try_step(&a, &nodes, &[], false).unwrap_err();
        assert!(err.contains("rollout.maxConcurrent"), "{bad:?}: {err}");
    }
}

// Pacing

#[test]
fn no_run_is_created_while_max_concurrent_runs_are_active() {
    let nodes = ready(&["a", "b", "c", "d"]);
    let runs = [
        phase("a", 1, RunPhase::Running),
        run("b", 1, None, None), // no status yet: Pending
    ];
    let step = step_of(&at_most(2), &nodes, &runs, false);
    assert!(step.create.is_empty(), "{step:?}");
    assert!(step.delete.is_empty(), "{step:?}");
    assert_eq!(step.status.counts, counts(1, 1, 0, 0));
    assert_eq!(state(&step, condition::PROGRESSING), ("True", "RollingOut"));
}

#[test]
fn a_free_slot_goes_to_the_lowest_waiting_node_name() {
    // Given out of order: the step goes by name.
    let nodes = ready(&["d", "b", "c", "a"]);
    let runs = [
        phase("a", 1, RunPhase::Running),
        phase("b", 1, RunPhase::Succeeded),
    ];
    let step = step_of(&at_most(2), &nodes, &runs, false);
    assert_eq!(step.create, names(&["c"]));
    assert!(step.delete.is_empty());

    let step = step_of(&at_most(3), &ready(&["n3", "n1", "n2", "n0"]), &[], false);
    assert_eq!(step.create, names(&["n0", "n1", "n2"]));
}

#[test]
fn finished_runs_free_their_slots() {
    let nodes = ready(&["a", "b", "c", "d"]);
    let runs = [
        phase("a", 1, RunPhase::Succeeded),
        phase("b", 1, RunPhase::Failed),
        phase("c", 1, RunPhase::Interrupted),
    ];
    let a = action(1, |s| s.rollout.max_failures = 5);
    assert_eq!(step_of(&a, &nodes, &runs, false).create, names(&["d"]));
}

// maxFailures

#[test]
fn more_failures_than_max_failures_stop_the_rollout() {
    let nodes = ready(&["a", "b", "c", "d"]);
    let runs = [
        phase("a", 1, RunPhase::Failed),
        phase("b", 1, RunPhase::Interrupted),
    ];
    let a = action(1, |s| {
        s.rollout.max_concurrent = IntOrString::Int(4);
        s.rollout.max_failures = 1;
    });
    let step = step_of(&a, &nodes, &runs, false);
    assert!(step.create.is_empty(), "{step:?}");
    assert_eq!(
        state(&step, condition::FAILED),
        ("True", "FailureBudgetExceeded")
    );
    assert_eq!(
        state(&step, condition::PROGRESSING),
        ("False", "FailureBudgetExceeded")
    );
    assert_eq!(state(&step, condition::COMPLETE), ("False", "RunsFailed"));
    assert_eq!(step.status.counts, counts(0, 0, 0, 2));
}

#[test]
fn as_many_failures_as_max_failures_keep_it_going() {
    let nodes = ready(&["a", "b", "c", "d"]);
    let runs = [phase("a", 1, RunPhase::Failed)];
    let a = action(1, |s| {
        s.rollout.max_concurrent = IntOrString::Int(2);
        s.rollout.max_failures = 1;
    });
    let step = step_of(&a, &nodes, &runs, false);
    assert_eq!(step.create, names(&["b", "c"]));
    assert_eq!(
        state(&step, condition::FAILED),
        ("False", "WithinFailureBudget")
    );
    assert_eq!(state(&step, condition::PROGRESSING), ("True", "RollingOut"));

    // maxFailures 0: the first failure stops it.
    let step = step_of(&at_most(2), &nodes, &runs, false);
    assert!(step.create.is_empty());
    assert_eq!(state(&step, condition::FAILED).0, "True");
}

// Paused

#[test]
fn a_paused_rollout_creates_nothing() {
    let nodes = ready(&["a", "b", "c"]);
    let runs = [phase("a", 1, RunPhase::Running)];
    let a = action(1, |s| {
        s.rollout.max_concurrent = IntOrString::Int(3);
        s.rollout.paused = true;
    });
    let step = step_of(&a, &nodes, &runs, false);
    assert!(step.create.is_empty(), "{step:?}");
    assert!(step.delete.is_empty(), "{step:?}");
    assert_eq!(state(&step, condition::PROGRESSING), ("False", "Paused"));
    assert_eq!(step.status.counts, counts(0, 1, 0, 0));

    // Nothing left to do: done, paused or not.
    let runs = ["a", "b", "c"].map(|n| phase(n, 1, RunPhase::Succeeded));
    let step = step_of(&a, &nodes, &runs, false);
    assert_eq!(state(&step, condition::PROGRESSING), ("False", "Done"));
    assert_eq!(state(&step, condition::COMPLETE), ("True", "AllSucceeded"));
}

// Selection

#[test]
fn match_labels_and_match_expressions_select_nodes() {
    let nodes = [
        node("a", &[("role", "worker"), ("zone", "z1")], true),
        node("b", &[("role", "worker"), ("zone", "z2")], true),
        node(
            "c",
            &[("role", "worker"), ("zone", "z3"), ("gpu", "yes")],
            true,
        ),
        node("d", &[("role", "control"), ("zone", "z1")], true),
        node("e", &[("role", "worker")], true),
    ];
    let expr = |key: &str, operator: &str, values: &[&str]| LabelSelectorRequirement {
        key: key.into(),
        operator: operator.into(),
        values: (!values.is_empty()).then(|| names(values)),
    };
    let worker = Some(BTreeMap::from([("role".to_owned(), "worker".to_owned())]));
    let table: Vec<(LabelSelector, &[&str])> = vec![
        (LabelSelector::default(), &["a", "b", "c", "d", "e"]),
        (
            LabelSelector {
                match_labels: worker.clone(),
                match_expressions: None,
            },
            &["a", "b", "c", "e"],
        ),
        (
            LabelSelector {
                match_labels: worker.clone(),
                match_expressions: Some(vec![expr("zone", "In", &["z1", "z2"])]),
            },
            &["a", "b"],
        ),
        (
            LabelSelector {
                match_labels: None,
                match_expressions: Some(vec![expr("zone", "NotIn", &["z1"])]),
            },
            // NotIn matches a node without the label.
            &["b", "c", "e"],
        ),
        (
            LabelSelector {
                match_labels: None,
                match_expressions: Some(vec![expr("gpu", "Exists", &[])]),
            },
            &["c"],
        ),
        (
            LabelSelector {
                match_labels: worker,
                match_expressions: Some(vec![
                    expr("gpu", "DoesNotExist", &[]),
                    expr("zone", "Exists", &[]),
                ]),
            },
            &["a", "b"],
        ),
    ];
    for (selector, selected) in table {
        let a = action(1, |s| {
            s.node_selector = Some(selector.clone());
            s.rollout.max_concurrent = IntOrString::Int(10);
        });
        let step = step_of(&a, &nodes, &[], false);
        assert_eq!(step.create, names(selected), "{selector:?}");
        assert_eq!(
            step.status.selected_nodes,
            i32::try_from(selected.len()).unwrap()
        );
    }
}

#[test]
fn an_unknown_operator_is_an_error() {
    let a = action(1, |s| {
        s.node_selector = Some(LabelSelector {
            match_labels: None,
            match_expressions: Some(vec![LabelSelectorRequirement {
                key: "zone".into(),
                operator: "Gt".into(),
                values: None,
            }]),
        });
    });
    let err = try_step(&a, &ready(&["a"]), &[], false).unwrap_err();
    assert!(err.contains("\"Gt\""), "{err}");
}

/// The selector is parsed once for the whole step: a bad operator is an
/// error whatever the nodes' labels (it was found only on a node that
/// passed the terms before it), and with no nodes at all.
#[test]
fn an_unknown_operator_is_an_error_whatever_the_nodes() {
    let a = action(1, |s| {
        s.node_selector = Some(LabelSelector {
            match_labels: Some(BTreeMap::from([("role".to_owned(), "worker".to_owned())])),
            match_expressions: Some(vec![LabelSelectorRequirement {
                key: "zone".into(),
                operator: "Gt".into(),
                values: Some(names(&["1"])),
            }]),
        });
    });
    for nodes in [vec![node("c", &[("role", "control")], true)], vec![]] {
        let err = try_step(&a, &nodes, &[], false).unwrap_err();
        assert!(
            err.contains("unknown operator \"Gt\" (In, NotIn, Exists, DoesNotExist)"),
            "{err}"
        );
    }
}

/// `In` and `NotIn` without values (the API server refuses them for its
/// own selectors; the CRD's schema does not): an empty set.
#[test]
fn in_and_not_in_without_values_select_no_node_and_every_node() {
    let nodes = [node("a", &[("zone", "z1")], true), node("b", &[], true)];
    for (operator, selected) in [("In", &[][..]), ("NotIn", &["a", "b"][..])] {
        let a = action(1, |s| {
            s.node_selector = Some(LabelSelector {
                match_labels: None,
                match_expressions: Some(vec![LabelSelectorRequirement {
                    key: "zone".into(),
                    operator: operator.into(),
                    values: None,
                }]),
            });
            s.rollout.max_concurrent = IntOrString::Int(10);
        });
        let step = step_of(&a, &nodes, &[], false);
        assert_eq!(step.create, names(selected), "{operator}");
    }
}

#[test]
fn not_ready_nodes_are_not_selected() {
    let mut no_status = node("c", &[], true);
    no_status.status = None;
    let nodes = [node("a", &[], false), node("b", &[], true), no_status];
    let step = step_of(&at_most(3), &nodes, &[], false);
    assert_eq!(step.create, names(&["b"]));
    assert_eq!(step.status.selected_nodes, 1);
    assert!(!is_ready(&nodes[0]));
    assert!(is_ready(&nodes[1]));
    assert!(!is_ready(&nodes[2]));
}

// Nodes leaving

#[test]
fn runs_on_nodes_that_left_or_stopped_matching_are_deleted() {
    let a = action(1, |s| {
        s.node_selector = Some(LabelSelector {
            match_labels: Some(BTreeMap::from([("role".to_owned(), "worker".to_owned())])),
            match_expressions: None,
        });
    });
    let nodes = [
        node("a", &[("role", "worker")], true),
        node("b", &[("role", "control")], true),
    ];
    let runs = [
        phase("a", 1, RunPhase::Succeeded),
        phase("b", 1, RunPhase::Running),
        phase("gone", 1, RunPhase::Succeeded),
    ];
    let step = step_of(&a, &nodes, &runs, false);
    assert_eq!(step.delete, vec![name("b", 1), name("gone", 1)]);
    assert!(step.create.is_empty());
    assert_eq!(step.status.selected_nodes, 1);
    assert_eq!(step.status.counts, counts(0, 0, 1, 0));
    assert_eq!(state(&step, condition::COMPLETE), ("True", "AllSucceeded"));
}

#[test]
fn a_not_ready_node_that_still_matches_keeps_its_run() {
    let nodes = [node("a", &[], false), node("b", &[], true)];
    let runs = [
        phase("a", 1, RunPhase::Running),
        phase("b", 1, RunPhase::Succeeded),
    ];
    let step = step_of(&at_most(1), &nodes, &runs, false);
    assert!(step.delete.is_empty(), "{step:?}");
    assert!(step.create.is_empty(), "{step:?}");
    // Only selected (Ready) nodes are counted.
    assert_eq!(step.status.selected_nodes, 1);
    assert_eq!(step.status.counts, counts(0, 0, 1, 0));
}

// New generations

#[test]
fn a_new_generation_replaces_old_runs_at_the_rollout_pace() {
    let nodes = ready(&["a", "b", "c"]);
    let runs = ["a", "b", "c"].map(|n| phase(n, 1, RunPhase::Succeeded));
    let a = action(2, |s| s.rollout.max_concurrent = IntOrString::Int(2));
    let step = step_of(&a, &nodes, &runs, false);
    assert_eq!(step.create, names(&["a", "b"]));
    // The replaced runs go in the same step; c's stays until its turn.
    assert_eq!(step.delete, vec![name("a", 1), name("b", 1)]);
    // Old-generation runs are not this generation's counts.
    assert_eq!(step.status.counts, counts(0, 0, 0, 0));
    assert_eq!(step.status.observed_generation, Some(2));
    assert_eq!(state(&step, condition::PROGRESSING), ("True", "RollingOut"));
    assert_eq!(state(&step, condition::COMPLETE), ("False", "InProgress"));
    assert!(
        step.status
            .conditions
            .iter()
            .all(|c| c.observed_generation == Some(2))
    );
}

#[test]
fn an_old_run_stays_until_its_node_gets_a_new_one() {
    let nodes = ready(&["a", "b", "c"]);
    // a runs generation 2; b and c wait for a slot.
    let runs = [
        phase("a", 2, RunPhase::Running),
        phase("b", 1, RunPhase::Succeeded),
        phase("c", 1, RunPhase::Succeeded),
    ];
    let a = action(2, |s| s.rollout.max_concurrent = IntOrString::Int(1));
    let step = step_of(&a, &nodes, &runs, false);
    assert!(step.create.is_empty(), "{step:?}");
    assert!(step.delete.is_empty(), "{step:?}");

    // A node with both generations (the old one's delete was missed): the
    // old one goes.
    let runs = [
        phase("a", 2, RunPhase::Succeeded),
        phase("a", 1, RunPhase::Succeeded),
        phase("b", 1, RunPhase::Succeeded),
    ];
    let step = step_of(&a, &ready(&["a", "b"]), &runs, false);
    assert_eq!(step.create, names(&["b"]));
    assert_eq!(step.delete, vec![name("a", 1), name("b", 1)]);
}

#[test]
fn without_on_spec_change_an_old_run_counts_as_current() {
    let nodes = ready(&["a", "b", "c"]);
    let runs = [
        phase("a", 1, RunPhase::Succeeded),
        phase("b", 1, RunPhase::Failed),
    ];
    let a = action(2, |s| {
        s.rerun.on_spec_change = false;
        s.rollout.max_failures = 1;
    });
    let step = step_of(&a, &nodes, &runs, false);
    // Only c, which never ran, gets a (generation 2) run.
    assert_eq!(step.create, names(&["c"]));
    assert!(step.delete.is_empty(), "{step:?}");
    assert_eq!(step.status.counts, counts(0, 0, 1, 1));
}

// Nodes joining

#[test]
fn a_node_joining_after_completion_runs_only_with_on_node_join() {
    let nodes = ready(&["a", "b", "new"]);
    let runs = [
        phase("a", 1, RunPhase::Succeeded),
        phase("b", 1, RunPhase::Succeeded),
    ];
    let without = action(1, |s| s.rerun.on_node_join = false);
    let step = step_of(&without, &nodes, &runs, true);
    assert!(step.create.is_empty(), "{step:?}");
    assert_eq!(state(&step, condition::COMPLETE), ("True", "AllSucceeded"));
    assert_eq!(state(&step, condition::PROGRESSING), ("False", "Done"));

    let with = action(1, |s| s.rerun.on_node_join = true);
    let step = step_of(&with, &nodes, &runs, true);
    assert_eq!(step.create, names(&["new"]));
    assert_eq!(state(&step, condition::COMPLETE), ("False", "InProgress"));

    // Before completion every selected node is part of the rollout.
    let step = step_of(&without, &nodes, &runs, false);
    assert_eq!(step.create, names(&["new"]));
}

// Interval reruns

#[test]
fn a_run_finished_longer_ago_than_the_interval_is_run_again() {
    let nodes = ready(&["a", "b"]);
    let a = action(1, |s| {
        s.rerun.interval_seconds = Some(3600);
        s.rollout.max_concurrent = IntOrString::Int(2);
    });
    let runs = [
        run("a", 1, Some(RunPhase::Succeeded), Some(3601)),
        run("b", 1, Some(RunPhase::Succeeded), Some(3600)),
    ];
    let step = step_of(&a, &nodes, &runs, true);
    assert_eq!(step.delete, vec![name("a", 1), name("b", 1)]);
    // The new runs have the old runs' names: they are created by the next
    // reconcile, once the old ones are gone.
    assert!(step.create.is_empty(), "{step:?}");
    assert_eq!(step.requeue_after, None);
    // The nodes are waiting again: not complete, still rolling out.
    assert_eq!(state(&step, condition::COMPLETE), ("False", "InProgress"));
    assert_eq!(state(&step, condition::PROGRESSING), ("True", "RollingOut"));

    // Next reconcile: the old runs are gone (and the status says not
    // complete): both nodes get a run again, even without onNodeJoin.
    let a = action(1, |s| {
        s.rerun.interval_seconds = Some(3600);
        s.rerun.on_node_join = false;
        s.rollout.max_concurrent = IntOrString::Int(2);
    });
    let step = step_of(&a, &nodes, &[], false);
    assert_eq!(step.create, names(&["a", "b"]));
}

#[test]
fn interval_reruns_keep_the_rollout_pace() {
    let nodes = ready(&["a", "b", "c"]);
    let runs = [
        run("a", 1, Some(RunPhase::Succeeded), Some(7200)),
        run("b", 1, Some(RunPhase::Succeeded), Some(7200)),
        phase("c", 1, RunPhase::Running),
    ];
    let a = action(1, |s| {
        s.rerun.interval_seconds = Some(3600);
        s.rollout.max_concurrent = IntOrString::Int(2);
    });
    // One slot (c runs): one rerun at a time.
    let step = step_of(&a, &nodes, &runs, false);
    assert_eq!(step.delete, vec![name("a", 1)]);
    assert!(step.create.is_empty(), "{step:?}");
}

#[test]
fn a_stopped_or_paused_rollout_keeps_finished_runs_past_their_interval() {
    let nodes = ready(&["a", "b"]);
    let runs = [
        run("a", 1, Some(RunPhase::Failed), Some(7200)),
        run("b", 1, Some(RunPhase::Succeeded), Some(7200)),
    ];
    // a's failure stopped the rollout: deleting a's run would forget it
    // (and start the rollout again).
    let stopped = action(1, |s| {
        s.rerun.interval_seconds = Some(3600);
        s.rollout.max_concurrent = IntOrString::Int(2);
    });
    let step = step_of(&stopped, &nodes, &runs, false);
    assert!(step.delete.is_empty(), "{step:?}");
    assert!(step.create.is_empty(), "{step:?}");
    assert_eq!(state(&step, condition::FAILED).0, "True");

    let paused = action(1, |s| {
        s.rerun.interval_seconds = Some(3600);
        s.rollout.max_concurrent = IntOrString::Int(2);
        s.rollout.max_failures = 1;
        s.rollout.paused = true;
    });
    let step = step_of(&paused, &nodes, &runs, false);
    assert!(step.delete.is_empty(), "{step:?}");
    assert!(step.create.is_empty(), "{step:?}");
    assert_eq!(state(&step, condition::PROGRESSING), ("False", "Paused"));
}

#[test]
fn before_the_interval_the_plan_asks_to_look_again_when_it_ends() {
    let nodes = ready(&["a", "b", "c"]);
    let a = action(1, |s| {
        s.rerun.interval_seconds = Some(3600);
        s.rollout.max_failures = 1;
    });
    let runs = [
        run("a", 1, Some(RunPhase::Succeeded), Some(600)),
        run("b", 1, Some(RunPhase::Failed), Some(1000)),
        // Running: no finish time, no interval yet.
        phase("c", 1, RunPhase::Running),
    ];
    let step = step_of(&a, &nodes, &runs, false);
    assert!(step.delete.is_empty(), "{step:?}");
    assert!(step.create.is_empty(), "{step:?}");
    assert_eq!(step.requeue_after, Some(Duration::from_secs(2600)));

    // No interval: no requeue.
    let step = step_of(&at_most(1), &nodes, &runs[..1], false);
    assert_eq!(step.requeue_after, None);
}

// Status

#[test]
fn counts_are_per_phase_and_interrupted_runs_count_as_failed() {
    let nodes = ready(&["a", "b", "c", "d", "e", "f"]);
    let runs = [
        run("a", 1, None, None),
        phase("b", 1, RunPhase::Pending),
        phase("c", 1, RunPhase::Running),
        phase("d", 1, RunPhase::Succeeded),
        phase("e", 1, RunPhase::Failed),
        phase("f", 1, RunPhase::Interrupted),
    ];
    let a = action(1, |s| {
        s.rollout.max_failures = 2;
        s.rollout.max_concurrent = IntOrString::Int(6);
    });
    let step = step_of(&a, &nodes, &runs, false);
    assert_eq!(step.status.counts, counts(2, 1, 1, 2));
    assert_eq!(step.status.selected_nodes, 6);
    assert_eq!(step.status.resolved_digest.as_deref(), Some(DIGEST));
    assert_eq!(state(&step, condition::RESOLVED), ("True", "Resolved"));
    assert!(cond(&step, condition::RESOLVED).message.contains(DIGEST));
}

#[test]
fn complete_only_when_every_selected_node_succeeded() {
    let nodes = ready(&["a", "b"]);
    let lenient = action(1, |s| s.rollout.max_failures = 1);
    let table: Vec<(Vec<HostActionRun>, (&str, &str))> = vec![
        (
            vec![
                phase("a", 1, RunPhase::Succeeded),
                phase("b", 1, RunPhase::Succeeded),
            ],
            ("True", "AllSucceeded"),
        ),
        (
            vec![
                phase("a", 1, RunPhase::Succeeded),
                phase("b", 1, RunPhase::Running),
            ],
            ("False", "InProgress"),
        ),
        (
            vec![phase("a", 1, RunPhase::Succeeded)],
            ("False", "InProgress"),
        ),
        (
            vec![
                phase("a", 1, RunPhase::Succeeded),
                phase("b", 1, RunPhase::Failed),
            ],
            ("False", "RunsFailed"),
        ),
        (
            vec![
                phase("a", 1, RunPhase::Succeeded),
                phase("b", 1, RunPhase::Interrupted),
            ],
            ("False", "RunsFailed"),
        ),
    ];
    for (runs, expected) in table {
        let step = step_of(&lenient, &nodes, &runs, false);
        assert_eq!(state(&step, condition::COMPLETE), expected, "{runs:?}");
    }
}

// Names

#[test]
fn run_names_are_readable_when_they_fit() {
    assert_eq!(
        run_name("cni", "node-1.example", 3),
        "cni.node-1.example.g3"
    );
    let action = "a".repeat(100);
    let node = "n".repeat(253 - 100 - 1 - 4);
    let name = run_name(&action, &node, 10);
    assert_eq!(name.len(), 253);
    assert_eq!(name, format!("{action}.{node}.g10"));
}

#[test]
fn long_run_names_are_hashed_within_253_characters() {
    let action = "a".repeat(253);
    let long = run_name(&action, &"n".repeat(253), 7);
    assert!(long.len() <= 253, "{long}");
    assert!(long.starts_with("run-") && long.ends_with(".g7"), "{long}");
    assert!(
        long.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'.'),
        "{long}"
    );
    // Stable, and distinct per node and generation.
    assert_eq!(long, run_name(&action, &"n".repeat(253), 7));
    assert_ne!(long, run_name(&action, &"m".repeat(253), 7));
    assert_ne!(long, run_name(&action, &"n".repeat(253), 8));
    // Just over the limit is hashed too.
    let node = "n".repeat(253 - 100 - 1 - 4 + 1);
    assert!(run_name(&"a".repeat(100), &node, 10).starts_with("run-"));
}

// Transition times

fn timed(type_: &str, status: &str, at: Timestamp) -> Condition {
    Condition {
        type_: type_.into(),
        status: status.into(),
        reason: "R".into(),
        message: String::new(),
        observed_generation: Some(1),
        last_transition_time: Time(at),
    }
}

#[test]
fn transition_times_change_only_with_the_status() {
    let then = Timestamp::from_second(1_700_000_000).unwrap();
    let old = [
        timed("Complete", "False", then),
        timed("Progressing", "True", then),
    ];
    let mut new = [
        timed("Complete", "True", Timestamp::UNIX_EPOCH),
        timed("Progressing", "True", Timestamp::UNIX_EPOCH),
        timed("Failed", "False", Timestamp::UNIX_EPOCH),
    ];
    with_transition_times(&mut new, &old, now());
    assert_eq!(new[0].last_transition_time, Time(now()), "status changed");
    assert_eq!(new[1].last_transition_time, Time(then), "status kept");
    assert_eq!(new[2].last_transition_time, Time(now()), "new condition");
}

#[test]
fn statuses_differ_in_more_than_transition_times() {
    let status = |time: Timestamp, succeeded: i32| HostActionStatus {
        observed_generation: Some(1),
        resolved_digest: Some(DIGEST.into()),
        selected_nodes: 2,
        counts: counts(0, 0, succeeded, 0),
        conditions: vec![timed("Complete", "True", time)],
    };
    let then = Timestamp::from_second(1_700_000_000).unwrap();
    assert!(!differs(&status(then, 2), &status(now(), 2)));
    assert!(differs(&status(then, 2), &status(then, 1)));
    let mut other = status(then, 2);
    other.conditions[0].reason = "Other".into();
    assert!(differs(&status(then, 2), &other));
    assert!(differs(&status(then, 2), &HostActionStatus::default()));
}

// A whole rollout, reconcile after reconcile.

#[test]
fn a_rollout_reaches_every_node_at_its_pace() {
    let nodes = ready(&["a", "b", "c", "d", "e"]);
    let a = action(1, |s| s.rollout.max_concurrent = IntOrString::Int(2));
    let mut runs: Vec<HostActionRun> = Vec::new();
    let mut completed = false;
    for _ in 0..10 {
        let step = step_of(&a, &nodes, &runs, completed);
        let active = runs
            .iter()
            .filter(|r| {
                matches!(
                    r.status.as_ref().map(|s| s.phase),
                    None | Some(RunPhase::Pending | RunPhase::Running)
                )
            })
            .count();
        assert!(active + step.create.len() <= 2, "{step:?}");
        assert!(step.delete.is_empty(), "{step:?}");
        // The agents finish what was active; the new runs start.
        for r in &mut runs {
            r.status = Some(HostActionRunStatus {
                phase: RunPhase::Succeeded,
                ..HostActionRunStatus::default()
            });
        }
        runs.extend(step.create.iter().map(|n| run(n, 1, None, None)));
        completed = state(&step, condition::COMPLETE).0 == "True";
        if completed {
            break;
        }
    }
    assert!(completed);
    assert_eq!(runs.len(), 5);
}
