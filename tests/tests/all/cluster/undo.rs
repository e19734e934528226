//! Issue 17 on a cluster: the real controller and agent (processes) against
//! a real kube-apiserver, with the probe action from the test registry. A
//! run that fails after writing a file is rolled back on its node and its
//! status says so; deleting a HostAction with `onDelete: undo` restores the
//! node's files before the action goes (its finalizer waits for the node),
//! with `onDelete: keep` they stay; either way the journals go with the runs.

use super::*;

/// The probe params that write `contents` to /opt/cni/bin/`file`, then
/// (with `fail`) fail the run.
fn write_then(file: &str, contents: &str, fail: bool) -> Value {
    let mut ops = vec![json!({
        "op": "ensure-file",
        "path": format!("/opt/cni/bin/{file}"),
        "contents": contents,
        "mode": 420,
    })];
    if fail {
        ops.push(json!({"op": "fail", "message": "failing after the write"}));
    }
    json!({ "ops": ops })
}

fn spec(module: &str, params: Value, on_delete: &str) -> Value {
    json!({
        "module": module,
        "params": params,
        "grants": serde_json::from_str::<Value>(CNI_GRANT).unwrap(),
        "nodeSelector": {"matchLabels": {"role": "worker"}},
        "timeoutSeconds": 30,
        "onDelete": on_delete,
    })
}

/// The undo journals node `node`'s agent keeps.
fn journals(cluster: &Cluster, node: &str) -> Vec<String> {
    let dir = cluster.dir.path().join(format!("cache-{node}/undo"));
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .map(|d| {
            d.flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .filter(|n| n.ends_with(".undo"))
                .collect()
        })
        .unwrap_or_default();
    names.sort();
    names
}

#[test]
fn a_failed_run_is_rolled_back_on_its_node_and_its_status_says_so() {
    let mut cluster = Cluster::new();
    cluster.mark_running_after = "60";
    let module = cluster.push("probe");
    cluster.add_node("u1", json!({"role": "worker"}), true);
    cluster.start_agent("u1", None, Some(CNI_POLICY));
    let file = cluster.bin("u1").join("conf");
    std::fs::write(&file, "before").unwrap();

    cluster.apply(
        "rb",
        spec(&module, write_then("conf", "after", true), "keep"),
    );
    cluster.wait("rb", 120, "the run fails", |c| {
        c.runs("rb").get("u1").is_some_and(|r| phase(r) == "Failed")
    });
    let run = cluster.runs("rb").remove("u1").unwrap();
    let status = &run["status"];
    assert_eq!(
        std::fs::read_to_string(&file).unwrap(),
        "before",
        "{status:#}"
    );
    assert_eq!(status["rollback"]["restored"], 1, "{status:#}");
    assert!(status["rollback"].get("conflicts").is_none(), "{status:#}");
    assert_eq!(status["undoable"], false, "{status:#}");
    let run_id = status["runId"].as_str().unwrap();
    assert!(
        run_id.starts_with("rb.u1.g1-") && run_id.ends_with(".a1"),
        "{run_id}"
    );
    assert!(
        status["message"]
            .as_str()
            .unwrap()
            .contains("failing after the write"),
        "{status:#}"
    );
    // One status write for the whole run, rollback included.
    let name = run["metadata"]["name"].as_str().unwrap();
    assert_eq!(cluster.status_writes(name), 1);
}

#[test]
fn deleting_an_action_with_on_delete_undo_restores_the_node_and_keep_leaves_it() {
    let mut cluster = Cluster::new();
    cluster.mark_running_after = "60";
    let module = cluster.push("probe");
    cluster.add_node("u1", json!({"role": "worker"}), true);
    cluster.start_agent("u1", None, Some(CNI_POLICY));
    let bin = cluster.bin("u1");
    std::fs::write(bin.join("undone"), "old").unwrap();

    cluster.apply(
        "undo-me",
        spec(&module, write_then("undone", "new", false), "undo"),
    );
    cluster.apply(
        "keep-me",
        spec(&module, write_then("kept", "new", false), "keep"),
    );
    for action in ["undo-me", "keep-me"] {
        cluster.wait(action, 120, "the run succeeds", |c| {
            c.runs(action)
                .get("u1")
                .is_some_and(|r| phase(r) == "Succeeded")
        });
        let run = cluster.runs(action).remove("u1").unwrap();
        assert_eq!(run["status"]["undoable"], true, "{run:#}");
        assert_eq!(run["spec"]["onDelete"], action.strip_suffix("-me").unwrap());
    }
    assert_eq!(std::fs::read_to_string(bin.join("undone")).unwrap(), "new");
    assert_eq!(std::fs::read_to_string(bin.join("kept")).unwrap(), "new");
    assert_eq!(journals(&cluster, "u1").len(), 2, "one journal per run");

    for action in ["undo-me", "keep-me"] {
        assert!(
            cluster
                .api
                .remove(GROUP_VERSION, "HostAction", None, action)
        );
    }
    for action in ["undo-me", "keep-me"] {
        cluster.wait_for(120, &format!("{action} and its runs gone"), |c| {
            c.api
                .get(GROUP_VERSION, "HostAction", None, action)
                .is_none()
                && c.runs(action).is_empty()
        });
    }
    assert_eq!(std::fs::read_to_string(bin.join("undone")).unwrap(), "old");
    assert_eq!(std::fs::read_to_string(bin.join("kept")).unwrap(), "new");
    assert!(
        cluster.event_reasons().iter().any(|r| r == "Undoing"),
        "{:?}",
        cluster.event_reasons()
    );
    cluster.wait_for(30, "the journals collected with their runs", |c| {
        journals(c, "u1").is_empty()
    });
}

/// `spec.drift`: the agent checks each applied action with a plan run every
/// `intervalSeconds`; a node whose file changed gets a `Drifted` condition
/// with the diff on its run (written once, not on every check) and is
/// counted on the action; with `remediate: true` the file is put back.
#[test]
fn drift_is_reported_once_with_its_diff_and_remediated_when_asked() {
    let mut cluster = Cluster::new();
    cluster.mark_running_after = "60";
    let module = cluster.push("probe");
    cluster.add_node("u1", json!({"role": "worker"}), true);
    cluster.start_agent("u1", None, Some(CNI_POLICY));
    let bin = cluster.bin("u1");
    let mut watched = spec(&module, write_then("watched", "wanted\n", false), "keep");
    watched["drift"] = json!({"intervalSeconds": 10});
    let mut healed = spec(&module, write_then("healed", "wanted\n", false), "keep");
    healed["drift"] = json!({"intervalSeconds": 10, "remediate": true});
    cluster.apply("watched", watched);
    cluster.apply("healed", healed);
    for action in ["watched", "healed"] {
        cluster.wait(action, 120, "the run succeeds", |c| {
            c.runs(action)
                .get("u1")
                .is_some_and(|r| phase(r) == "Succeeded")
        });
    }
    std::fs::write(bin.join("watched"), "changed\n").unwrap();
    std::fs::write(bin.join("healed"), "changed\n").unwrap();

    let drifted = |run: &Value| condition(run, "Drifted").clone();
    cluster.wait("watched", 90, "a Drifted condition", |c| {
        c.runs("watched")
            .get("u1")
            .is_some_and(|r| drifted(r)["status"] == "True")
    });
    let run = cluster.runs("watched").remove("u1").unwrap();
    let message = drifted(&run)["message"].as_str().unwrap().to_owned();
    assert!(message.contains("/opt/cni/bin/watched"), "{message}");
    assert!(
        message.contains("changed") && message.contains("wanted"),
        "{message}"
    );
    assert_eq!(
        std::fs::read_to_string(bin.join("watched")).unwrap(),
        "changed\n"
    );
    cluster.wait("watched", 60, "the action counts the drifted node", |c| {
        c.action("watched")["status"]["counts"]["drifted"] == 1
    });

    cluster.wait("healed", 90, "the drift put back", |c| {
        std::fs::read_to_string(bin.join("healed")).unwrap() == "wanted\n"
            && c.runs("healed")
                .get("u1")
                .is_some_and(|r| drifted(r)["reason"] == "Remediated")
    });

    // The same drift is not written again at the next checks.
    let name = run["metadata"]["name"].as_str().unwrap().to_owned();
    let writes = cluster.status_writes(&name);
    assert_eq!(writes, 2, "the result, then the drift");
    std::thread::sleep(Duration::from_secs(25));
    assert_eq!(cluster.status_writes(&name), writes);
}

/// A HostAction deleted while its node's agent is down: its runs go without
/// the agent seeing their Delete events, so their undo journals would stay
/// for good (holding the node's journal budget); the agent deletes them at
/// its next start, once it has listed the runs that are left. A journal of
/// an action that still has a run on the node stays.
#[test]
fn journals_of_runs_deleted_while_the_agent_was_away_go_at_its_next_start() {
    let mut cluster = Cluster::new();
    cluster.mark_running_after = "60";
    let module = cluster.push("probe");
    cluster.add_node("u1", json!({"role": "worker"}), true);
    cluster.bin("u1");
    cluster.start_agent("u1", None, Some(CNI_POLICY));
    cluster.apply(
        "gone",
        spec(&module, write_then("gone", "new", false), "keep"),
    );
    cluster.apply(
        "stays",
        spec(&module, write_then("stays", "new", false), "keep"),
    );
    for action in ["gone", "stays"] {
        cluster.wait(action, 120, "the run succeeds", |c| {
            c.runs(action)
                .get("u1")
                .is_some_and(|r| phase(r) == "Succeeded")
        });
    }
    assert_eq!(journals(&cluster, "u1").len(), 2);

    cluster.kill_agent("u1");
    assert!(
        cluster
            .api
            .remove(GROUP_VERSION, "HostAction", None, "gone")
    );
    cluster.wait_for(120, "gone and its run deleted", |c| {
        c.api
            .get(GROUP_VERSION, "HostAction", None, "gone")
            .is_none()
            && c.runs("gone").is_empty()
    });
    assert_eq!(journals(&cluster, "u1").len(), 2, "no agent to collect it");

    cluster.start_agent("u1", None, Some(CNI_POLICY));
    cluster.wait_for(60, "the deleted run's journal collected", |c| {
        journals(c, "u1").len() == 1
    });
    let left = journals(&cluster, "u1");
    assert!(left[0].starts_with("stays.u1.g1-"), "{left:?}");
}
