//! Undo of `files` effects end to end, mostly through the `hostaction` CLI
//! on a scratch host root with a node cache of its own (its journals in
//! `<cache>/undo`): rollback of a run that fails, traps, passes its deadline
//! or its memory limit; `--on-failure keep` then `hostaction undo`; conflicts;
//! crash recovery; plan diffs; and what a hostile party can do to the host or
//! the journal between a run and its undo.

// Test code: a failed unwrap is a failed test, with its message.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::collections::BTreeMap;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use hostaction_runtime::undo::JournalMode;
use hostaction_runtime::undo::journal::JournalLimits;
use hostaction_runtime::{RunStatus, Runtime, RuntimeConfig};
use hostaction_tests::{cli_cache, guest, hostaction_bin, output_text, request};
use serde_json::{Value, json};

const GRANT: &str = "files: {write: [/opt/cni/bin, /etc/cni/net.d]}";

/// A scratch node: a host root, and a node cache whose precompiled modules
/// are the test process's (so the probe compiles once) and whose journals
/// are its own.
struct Node {
    root: tempfile::TempDir,
    cache: tempfile::TempDir,
}

impl Node {
    fn new() -> Self {
        let cache = tempfile::tempdir().unwrap();
        let shared = cli_cache().join("compiled");
        std::fs::create_dir_all(&shared).unwrap();
        std::os::unix::fs::symlink(&shared, cache.path().join("compiled")).unwrap();
        std::fs::write(cache.path().join("grants.yaml"), GRANT).unwrap();
        Self {
            root: tempfile::tempdir().unwrap(),
            cache,
        }
    }

    fn path(&self, host_path: &str) -> PathBuf {
        self.root.path().join(host_path.trim_start_matches('/'))
    }

    fn write(&self, host_path: &str, contents: &str, mode: u32) {
        let path = self.path(host_path);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(&path, contents).unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode)).unwrap();
    }

    fn journals(&self) -> PathBuf {
        self.cache.path().join("undo")
    }

    fn journal(&self, run_id: &str) -> PathBuf {
        self.journals().join(format!("{run_id}.undo"))
    }

    /// `hostaction ARGS --host-root ROOT` with this node's cache.
    fn cli(&self, args: &[&str]) -> Output {
        self.cli_env(args, &[])
    }

    fn cli_env(&self, args: &[&str], env: &[(&str, &str)]) -> Output {
        let mut cmd = Command::new(hostaction_bin());
        cmd.args(args)
            .arg("--host-root")
            .arg(self.root.path())
            .env("HOSTACTION_CACHE_DIR", self.cache.path())
            .env_remove("HOSTACTION_TEST_CRASH");
        for (k, v) in env {
            cmd.env(k, v);
        }
        cmd.output().expect("run hostaction")
    }

    /// `hostaction run probe` with `ops` (and `extra` flags), JSON output.
    fn run(&self, ops: &Value, extra: &[&str]) -> (Option<i32>, Value) {
        let out = self.run_env(ops, extra, &[]);
        let json = serde_json::from_slice(&out.stdout)
            .unwrap_or_else(|e| panic!("run's JSON: {e}\n{}", output_text(&out)));
        (out.status.code(), json)
    }

    fn run_env(&self, ops: &Value, extra: &[&str], env: &[(&str, &str)]) -> Output {
        let params = json!({ "ops": ops }).to_string();
        let grants = self.cache.path().join("grants.yaml");
        let probe = guest("probe");
        let mut args = vec![
            "run",
            probe.to_str().unwrap(),
            "--params",
            &params,
            "--grants",
            grants.to_str().unwrap(),
            "--output",
            "json",
        ];
        args.extend_from_slice(extra);
        self.cli_env(&args, env)
    }

    /// `hostaction undo RUN --output json`: exit code and report.
    fn undo(&self, run_id: &str) -> (Option<i32>, Value) {
        let out = self.cli(&["undo", run_id, "--output", "json"]);
        let json = serde_json::from_slice(&out.stdout)
            .unwrap_or_else(|e| panic!("undo's JSON: {e}\n{}", output_text(&out)));
        (out.status.code(), json)
    }

    /// Every entry under the host root: kind, mode, owner and contents (not
    /// inodes or times, which an undo cannot give back).
    fn tree(&self) -> BTreeMap<PathBuf, String> {
        let mut out = BTreeMap::new();
        tree_into(self.root.path(), self.root.path(), &mut out);
        out
    }
}

fn tree_into(root: &Path, dir: &Path, out: &mut BTreeMap<PathBuf, String>) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        let meta = std::fs::symlink_metadata(&path).unwrap();
        let owner = format!("{:o} {}:{}", meta.mode(), meta.uid(), meta.gid());
        let detail = if meta.is_symlink() {
            format!("link -> {}", std::fs::read_link(&path).unwrap().display())
        } else if meta.is_dir() {
            tree_into(root, &path, out);
            format!("dir {owner}")
        } else {
            let bytes = std::fs::read(&path).unwrap();
            format!(
                "file {owner} nlink={} {:?}",
                meta.nlink(),
                String::from_utf8_lossy(&bytes)
            )
        };
        out.insert(path.strip_prefix(root).unwrap().to_owned(), detail);
    }
}

/// The `result` of each rollback or undo entry, newest first.
fn results(undo: &Value) -> Vec<(String, String)> {
    undo["entries"]
        .as_array()
        .unwrap_or_else(|| panic!("no entries: {undo:#}"))
        .iter()
        .map(|e| {
            (
                e["target"].as_str().unwrap().to_owned(),
                e["result"].as_str().unwrap().to_owned(),
            )
        })
        .collect()
}

/// A host with a bit of everything the probe then changes: a config owned
/// by someone else, a setuid file, a directory to chmod, a file to remove.
fn seeded() -> Node {
    let node = Node::new();
    node.write("/etc/cni/net.d/10-old.conf", "old config\n", 0o640);
    std::os::unix::fs::chown(
        node.path("/etc/cni/net.d/10-old.conf"),
        Some(1234),
        Some(5678),
    )
    .unwrap();
    node.write("/etc/cni/net.d/suid", "suid program\n", 0o4755);
    node.write("/etc/cni/net.d/gone.conf", "to be removed\n", 0o600);
    std::fs::create_dir(node.path("/etc/cni/net.d/keep")).unwrap();
    std::fs::set_permissions(
        node.path("/etc/cni/net.d/keep"),
        std::fs::Permissions::from_mode(0o750),
    )
    .unwrap();
    node
}

/// Writes, removes, makes directories (the granted one and its missing
/// ancestors too) and chmods: 10 effects.
fn changes() -> Vec<Value> {
    vec![
        json!({"op": "ensure-dir", "path": "/opt/cni/bin", "mode": 0o755}),
        json!({"op": "ensure-file", "path": "/opt/cni/bin/plugin", "contents": "new plugin\n", "mode": 0o644}),
        json!({"op": "ensure-file", "path": "/etc/cni/net.d/10-old.conf", "contents": "new config\n", "mode": 0o644}),
        json!({"op": "ensure-file", "path": "/etc/cni/net.d/suid", "contents": "replaced\n", "mode": 0o644}),
        json!({"op": "remove", "path": "/etc/cni/net.d/gone.conf"}),
        json!({"op": "ensure-dir", "path": "/etc/cni/net.d/keep", "mode": 0o700}),
        json!({"op": "ensure-dir", "path": "/etc/cni/net.d/new/sub", "mode": 0o755}),
        json!({"op": "ensure-file", "path": "/etc/cni/net.d/new/sub/20-x.conf", "contents": "x\n", "mode": 0o644}),
    ]
}

/// Runs the changes then `ending` (with `extra` flags): the run must end
/// as `status`, rolled back in full, the tree as before.
fn rolled_back(ending: Value, extra: &[&str], status: &str) {
    let node = seeded();
    let before = node.tree();
    let mut ops = changes();
    ops.push(ending);
    let (code, out) = node.run(&json!(ops), extra);
    let report = &out["report"];
    assert_eq!(code, Some(1), "{out:#}");
    assert_eq!(report["status"], status, "{out:#}");
    assert!(report["runId"].as_str().is_some_and(|id| !id.is_empty()));
    assert_eq!(report["undoable"], false, "a rolled-back run: {out:#}");
    let effects = report["effects"].as_array().unwrap().len();
    // /opt, /opt/cni, /opt/cni/bin, the plugin, two writes, a remove, a
    // chmod, /etc/cni/net.d/new and its sub, the file in it.
    assert_eq!(effects, 11, "{out:#}");
    let rollback = results(&report["rollback"]);
    assert_eq!(rollback.len(), effects, "{out:#}");
    assert!(
        rollback.iter().all(|(_, r)| r == "restored"),
        "{rollback:?}"
    );
    // Newest first.
    assert_eq!(rollback[0].0, "/etc/cni/net.d/new/sub/20-x.conf");
    assert_eq!(rollback[effects - 1].0, "/opt");
    assert_eq!(node.tree(), before, "{out:#}");
}

#[test]
fn a_failed_run_is_rolled_back_bytes_modes_and_owners() {
    rolled_back(json!({"op": "fail", "message": "no"}), &[], "failed");
}

#[test]
fn a_trapped_run_is_rolled_back() {
    rolled_back(json!({"op": "panic", "message": "boom"}), &[], "trapped");
}

#[test]
fn a_run_past_its_deadline_is_rolled_back() {
    rolled_back(
        json!({"op": "spin"}),
        &["--timeout", "2"],
        "deadline-exceeded",
    );
}

#[test]
fn a_run_past_its_memory_limit_is_rolled_back() {
    rolled_back(
        json!({"op": "alloc", "mib": 64}),
        &["--memory", "16"],
        "limit-exceeded",
    );
}

#[test]
fn keep_then_undo_restores_and_a_second_undo_is_refused() {
    let node = seeded();
    let before = node.tree();
    let mut ops = changes();
    ops.push(json!({"op": "fail", "message": "no"}));
    let (code, out) = node.run(&json!(ops), &["--on-failure", "keep"]);
    assert_eq!(code, Some(1), "{out:#}");
    let report = &out["report"];
    assert!(report.get("rollback").is_none(), "{out:#}");
    assert_eq!(report["undoable"], true, "{out:#}");
    let changed = node.tree();
    assert_ne!(changed, before);
    assert_eq!(
        std::fs::read_to_string(node.path("/etc/cni/net.d/10-old.conf")).unwrap(),
        "new config\n"
    );
    let run_id = report["runId"].as_str().unwrap();

    let list = node.cli(&["undo", "--list", "--output", "json"]);
    let listed: Value = serde_json::from_slice(&list.stdout).unwrap();
    assert_eq!(listed[0]["runId"], run_id, "{listed:#}");
    assert_eq!(listed[0]["effects"], 11, "{listed:#}");
    assert_eq!(listed[0]["end"], "applied", "{listed:#}");

    let (code, undone) = node.undo(run_id);
    assert_eq!(code, Some(0), "{undone:#}");
    let entries = results(&undone["undone"]);
    assert_eq!(entries.len(), 11);
    assert!(entries.iter().all(|(_, r)| r == "restored"), "{entries:?}");
    assert_eq!(node.tree(), before);

    // Undone already: a second undo is refused (what is there may be a
    // later run's), and changes nothing.
    let (code, again) = node.undo(run_id);
    assert_eq!(code, Some(2), "{again:#}");
    assert!(
        again["error"]["message"]
            .as_str()
            .is_some_and(|m| m.contains("undone already")),
        "{again:#}"
    );
    assert_eq!(node.tree(), before);

    let text = node.cli(&["undo", "--list"]);
    assert!(
        String::from_utf8_lossy(&text.stdout).contains(&format!("{run_id}  11 effects")),
        "{}",
        output_text(&text)
    );
}

#[test]
fn undo_leaves_what_someone_changed_since_as_a_conflict() {
    let node = Node::new();
    node.write("/etc/cni/net.d/a.conf", "a0\n", 0o644);
    node.write("/etc/cni/net.d/b.conf", "b0\n", 0o644);
    let ops = json!([
        {"op": "ensure-file", "path": "/etc/cni/net.d/a.conf", "contents": "a1\n", "mode": 0o644},
        {"op": "ensure-file", "path": "/etc/cni/net.d/b.conf", "contents": "b1\n", "mode": 0o644},
    ]);
    let (code, out) = node.run(&ops, &[]);
    assert_eq!(code, Some(0), "{out:#}");
    let run_id = out["report"]["runId"].as_str().unwrap();
    // Someone else rewrites b meanwhile.
    node.write("/etc/cni/net.d/b.conf", "theirs\n", 0o644);
    let (code, undone) = node.undo(run_id);
    assert_eq!(code, Some(1), "{undone:#}");
    assert_eq!(
        results(&undone["undone"]),
        [
            ("/etc/cni/net.d/b.conf".into(), "conflict".into()),
            ("/etc/cni/net.d/a.conf".into(), "restored".into()),
        ]
    );
    assert!(
        undone["undone"]["entries"][0]["detail"]
            .as_str()
            .unwrap()
            .contains("changed since"),
        "{undone:#}"
    );
    assert_eq!(
        std::fs::read_to_string(node.path("/etc/cni/net.d/b.conf")).unwrap(),
        "theirs\n"
    );
    assert_eq!(
        std::fs::read_to_string(node.path("/etc/cni/net.d/a.conf")).unwrap(),
        "a0\n"
    );
    // The text report names the conflict (of another run: this one is
    // undone, as far as it could be).
    let (code, out) = node.run(&ops, &[]);
    assert_eq!(code, Some(0), "{out:#}");
    let run_id = out["report"]["runId"].as_str().unwrap();
    node.write("/etc/cni/net.d/b.conf", "theirs again\n", 0o644);
    let text = node.cli(&["undo", run_id]);
    assert_eq!(text.status.code(), Some(1));
    assert!(
        String::from_utf8_lossy(&text.stdout).contains("CONFLICT"),
        "{}",
        output_text(&text)
    );
}

#[test]
fn recover_rolls_back_a_run_killed_at_every_mutation() {
    let node = seeded();
    let before = node.tree();
    let ops = json!(changes());
    // A complete run, for the state after.
    let after = {
        let other = seeded();
        let (code, out) = other.run(&ops, &[]);
        assert_eq!(code, Some(0), "{out:#}");
        other.tree()
    };
    for point in (1..=11).flat_map(|n| [format!("before:{n}"), format!("after:{n}")]) {
        let out = node.run_env(&ops, &[], &[("HOSTACTION_TEST_CRASH", &point)]);
        assert_eq!(
            out.status.code(),
            None,
            "{point}: killed by SIGKILL\n{}",
            output_text(&out)
        );
        if point != "after:11" {
            assert_ne!(node.tree(), after, "{point}: the run was cut short");
        }
        let recovered = node.cli(&["recover", "--output", "json"]);
        assert_eq!(
            recovered.status.code(),
            Some(0),
            "{point}: {}",
            output_text(&recovered)
        );
        let json: Value = serde_json::from_slice(&recovered.stdout).unwrap();
        assert_eq!(
            json["recovered"].as_array().unwrap().len(),
            1,
            "{point}: {json:#}"
        );
        assert_eq!(node.tree(), before, "{point}: {json:#}");
        // Recovered once: the next start finds nothing to do.
        let again = node.cli(&["recover", "--output", "json"]);
        let json: Value = serde_json::from_slice(&again.stdout).unwrap();
        assert_eq!(json["recovered"], json!([]), "{point}");
    }
}

#[test]
fn plan_prints_a_unified_diff_for_text_and_sizes_for_binary() {
    let node = Node::new();
    node.write("/etc/cni/net.d/10.conf", "one\ntwo\nthree\n", 0o644);
    node.write("/etc/cni/net.d/blob", "a\0b", 0o644);
    let before = node.tree();
    let params = json!({"ops": [
        {"op": "ensure-file", "path": "/etc/cni/net.d/10.conf", "contents": "one\n2\nthree\n", "mode": 0o644},
        {"op": "ensure-file", "path": "/etc/cni/net.d/blob", "contents": "a\u{0}bc", "mode": 0o644},
    ]})
    .to_string();
    let grants = node.cache.path().join("grants.yaml");
    let probe = guest("probe");
    let out = node.cli(&[
        "run",
        probe.to_str().unwrap(),
        "--params",
        &params,
        "--grants",
        grants.to_str().unwrap(),
        "--plan",
    ]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(0), "{}", output_text(&out));
    for want in [
        "--- a/etc/cni/net.d/10.conf",
        "+++ b/etc/cni/net.d/10.conf",
        "-two",
        "+2",
        "binary: 3 bytes sha256:",
        "→ 4 bytes sha256:",
    ] {
        assert!(text.contains(want), "{want:?} in:\n{text}");
    }
    assert_eq!(node.tree(), before);
    assert!(
        !node.journals().exists() || std::fs::read_dir(node.journals()).unwrap().next().is_none()
    );
}

#[test]
fn undo_refuses_run_ids_that_are_not_plain_names_and_garbage_journals() {
    let node = Node::new();
    std::fs::create_dir_all(node.journals()).unwrap();
    // A file a `../x` would reach, if it were looked up.
    std::fs::write(node.cache.path().join("x.undo"), "not a journal").unwrap();
    for id in ["../x", "a/b", ".hidden", "", &"a".repeat(200)] {
        let out = node.cli(&["undo", id]);
        assert_eq!(out.status.code(), Some(2), "{id}: {}", output_text(&out));
        assert!(
            String::from_utf8_lossy(&out.stderr).contains("run id"),
            "{id}: {}",
            output_text(&out)
        );
    }
    let out = node.cli(&["undo", "no-such-run"]);
    assert_ne!(out.status.code(), Some(0));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("no journal of run no-such-run"),
        "{}",
        output_text(&out)
    );
    // Garbage named like a journal: a clear error, never a panic.
    std::fs::write(node.journal("junk"), [0xffu8; 100]).unwrap();
    std::fs::write(node.journal("empty"), []).unwrap();
    for id in ["junk", "empty"] {
        let out = node.cli(&["undo", id]);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(
            out.status.code() == Some(4) && stderr.contains("no readable first record"),
            "{}",
            output_text(&out)
        );
        assert!(!stderr.contains("panicked"), "{}", output_text(&out));
    }
    let list = node.cli(&["undo", "--list"]);
    assert_eq!(list.status.code(), Some(0), "{}", output_text(&list));
    let recover = node.cli(&["recover"]);
    assert_eq!(recover.status.code(), Some(0), "{}", output_text(&recover));
}

/// Runs one write (a new file) that stays: its run id.
fn wrote(node: &Node, path: &str, contents: &str) -> String {
    let (code, out) = node.run(
        &json!([{"op": "ensure-file", "path": path, "contents": contents, "mode": 0o644}]),
        &[],
    );
    assert_eq!(code, Some(0), "{out:#}");
    out["report"]["runId"].as_str().unwrap().to_owned()
}

#[test]
fn undo_never_follows_a_symlink_or_hard_link_swapped_in_since() {
    let node = Node::new();
    std::fs::create_dir_all(node.path("/opt/cni/bin/sub")).unwrap();
    // Outside the grant, with the very bytes the run writes.
    node.write("/etc/secret", "payload\n", 0o600);
    node.write("/etc/x", "payload\n", 0o644);
    let leaf = wrote(&node, "/opt/cni/bin/leaf", "payload\n");
    let hard = wrote(&node, "/opt/cni/bin/hard", "payload\n");
    let deep = wrote(&node, "/opt/cni/bin/sub/x", "payload\n");

    // The leaf becomes a symlink to a file outside.
    std::fs::remove_file(node.path("/opt/cni/bin/leaf")).unwrap();
    std::os::unix::fs::symlink("/etc/secret", node.path("/opt/cni/bin/leaf")).unwrap();
    // Another becomes a hard link to a file outside.
    std::fs::remove_file(node.path("/opt/cni/bin/hard")).unwrap();
    std::fs::hard_link(node.path("/etc/secret"), node.path("/opt/cni/bin/hard")).unwrap();
    // The parent directory becomes a symlink out of the grant, where a
    // file of the same name and bytes is.
    std::fs::rename(
        node.path("/opt/cni/bin/sub"),
        node.path("/opt/cni/bin/sub.old"),
    )
    .unwrap();
    std::os::unix::fs::symlink("/etc", node.path("/opt/cni/bin/sub")).unwrap();
    let before = node.tree();

    for run in [&leaf, &hard] {
        let (code, undone) = node.undo(run);
        assert_eq!(code, Some(1), "{undone:#}");
        assert_eq!(results(&undone["undone"])[0].1, "conflict", "{undone:#}");
    }
    let (code, undone) = node.undo(&deep);
    assert_eq!(code, Some(1), "{undone:#}");
    assert_eq!(results(&undone["undone"])[0].1, "failed", "{undone:#}");
    assert_eq!(
        node.tree(),
        before,
        "nothing outside (or inside) was touched"
    );
    assert_eq!(
        std::fs::read_to_string(node.path("/etc/secret")).unwrap(),
        "payload\n"
    );
}

#[test]
fn undo_leaves_a_file_grown_past_the_file_limit() {
    let node = Node::new();
    std::fs::create_dir_all(node.path("/opt/cni/bin")).unwrap();
    let run = wrote(&node, "/opt/cni/bin/big", "small\n");
    let big = vec![b'x'; (16 << 20) + 1];
    std::fs::write(node.path("/opt/cni/bin/big"), &big).unwrap();
    let (code, undone) = node.undo(&run);
    assert_eq!(code, Some(1), "{undone:#}");
    assert_eq!(results(&undone["undone"])[0].1, "conflict", "{undone:#}");
    assert_eq!(
        std::fs::metadata(node.path("/opt/cni/bin/big"))
            .unwrap()
            .len(),
        big.len() as u64
    );
}

#[test]
fn undo_refuses_a_run_made_on_another_host_root() {
    let node = Node::new();
    std::fs::create_dir_all(node.path("/opt/cni/bin")).unwrap();
    let run = wrote(&node, "/opt/cni/bin/tool", "same\n");
    // Another host root with the same file, the same cache: an undo there
    // must not remove what the run did not make.
    let other = tempfile::tempdir().unwrap();
    let tool = other.path().join("opt/cni/bin/tool");
    std::fs::create_dir_all(tool.parent().unwrap()).unwrap();
    std::fs::write(&tool, "same\n").unwrap();
    std::fs::set_permissions(&tool, std::fs::Permissions::from_mode(0o644)).unwrap();
    let out = Command::new(hostaction_bin())
        .args(["undo", &run, "--host-root"])
        .arg(other.path())
        .env("HOSTACTION_CACHE_DIR", node.cache.path())
        .output()
        .unwrap();
    assert_ne!(out.status.code(), Some(0), "{}", output_text(&out));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("--host-root"),
        "{}",
        output_text(&out)
    );
    assert!(tool.exists(), "the other root's file is left");
    // Its own root undoes it.
    let (code, undone) = node.undo(&run);
    assert_eq!(code, Some(0), "{undone:#}");
    assert!(!node.path("/opt/cni/bin/tool").exists());
}

#[test]
fn journals_are_private_to_their_owner() {
    let node = Node::new();
    // A journal directory made earlier, readable by all.
    std::fs::create_dir_all(node.journals()).unwrap();
    std::fs::set_permissions(node.journals(), std::fs::Permissions::from_mode(0o755)).unwrap();
    node.write("/etc/cni/net.d/key", "secret key\n", 0o600);
    let (code, out) = node.run(
        &json!([{"op": "ensure-file", "path": "/etc/cni/net.d/key", "contents": "new\n", "mode": 0o600}]),
        &[],
    );
    assert_eq!(code, Some(0), "{out:#}");
    let run = out["report"]["runId"].as_str().unwrap();
    let mode = |p: &Path| std::fs::metadata(p).unwrap().mode() & 0o777;
    assert_eq!(mode(&node.journals()), 0o700);
    assert_eq!(mode(&node.journal(run)), 0o600);
}

#[test]
fn a_torn_journal_tail_is_cut_so_a_recovered_run_is_never_undone_again() {
    let node = Node::new();
    std::fs::create_dir_all(node.path("/opt/cni/bin")).unwrap();
    let ops = json!([
        {"op": "ensure-file", "path": "/opt/cni/bin/a", "contents": "A\n", "mode": 0o644},
        {"op": "ensure-file", "path": "/opt/cni/bin/b", "contents": "B\n", "mode": 0o644},
    ]);
    let out = node.run_env(&ops, &[], &[("HOSTACTION_TEST_CRASH", "after:1")]);
    assert_eq!(out.status.code(), None, "{}", output_text(&out));
    // The crash tore the next record: a frame and part of its bytes.
    let journal = std::fs::read_dir(node.journals())
        .unwrap()
        .map(|e| e.unwrap().path())
        .find(|p| p.to_string_lossy().ends_with(".undo.open"))
        .unwrap();
    let mut torn = std::fs::OpenOptions::new()
        .append(true)
        .open(&journal)
        .unwrap();
    std::io::Write::write_all(&mut torn, &[200, 0, 0, 0, 0, 0, 0, 0, 1, 2, 3, 4, b'{']).unwrap();
    drop(torn);

    let recovered = node.cli(&["recover", "--output", "json"]);
    assert_eq!(
        recovered.status.code(),
        Some(0),
        "{}",
        output_text(&recovered)
    );
    assert!(!node.path("/opt/cni/bin/a").exists());
    // Its end record was written where the torn one began: readable.
    let list = node.cli(&["undo", "--list", "--output", "json"]);
    let listed: Value = serde_json::from_slice(&list.stdout).unwrap();
    assert_eq!(listed[0]["end"], "rolled-back", "{listed:#}");
    // The action runs again, completely: its file is back, as it wrote it.
    let (code, out) = node.run(&ops, &[]);
    assert_eq!(code, Some(0), "{out:#}");
    assert!(out.get("recovered").is_none(), "recovered twice: {out:#}");
    // Every later start must leave it.
    let again = node.cli(&["recover", "--output", "json"]);
    let json: Value = serde_json::from_slice(&again.stdout).unwrap();
    assert_eq!(json["recovered"], json!([]), "{json:#}");
    assert_eq!(
        std::fs::read_to_string(node.path("/opt/cni/bin/a")).unwrap(),
        "A\n"
    );
}

#[test]
fn a_damaged_journal_undoes_what_it_can_read_and_says_the_rest_is_lost() {
    let node = Node::new();
    std::fs::create_dir_all(node.path("/opt/cni/bin")).unwrap();
    let (code, out) = node.run(
        &json!([
            {"op": "ensure-file", "path": "/opt/cni/bin/first", "contents": "1\n", "mode": 0o644},
            {"op": "ensure-file", "path": "/opt/cni/bin/second", "contents": "2\n", "mode": 0o644},
            {"op": "ensure-file", "path": "/opt/cni/bin/third", "contents": "3\n", "mode": 0o644},
        ]),
        &[],
    );
    assert_eq!(code, Some(0), "{out:#}");
    let run = out["report"]["runId"].as_str().unwrap();
    // Flip a byte inside the second effect's record.
    let path = node.journal(run);
    let mut bytes = std::fs::read(&path).unwrap();
    let at = find(&bytes, b"/opt/cni/bin/second").unwrap();
    bytes[at + 1] ^= 0x20;
    std::fs::write(&path, &bytes).unwrap();

    // Its end record is behind the damage: a start must not take it for a
    // run cut short and roll it back on its own.
    let recovered = node.cli(&["recover", "--output", "json"]);
    assert_eq!(
        recovered.status.code(),
        Some(0),
        "{}",
        output_text(&recovered)
    );
    let json: Value = serde_json::from_slice(&recovered.stdout).unwrap();
    assert_eq!(json["recovered"], json!([]), "{json:#}");
    assert!(node.path("/opt/cni/bin/first").exists(), "{json:#}");

    let (code, undone) = node.undo(run);
    assert_eq!(code, Some(1), "{undone:#}");
    assert_eq!(
        results(&undone["undone"]),
        [
            (run.to_owned(), "failed".to_owned()),
            ("/opt/cni/bin/first".into(), "restored".into()),
        ]
    );
    assert!(
        undone["undone"]["entries"][0]["detail"]
            .as_str()
            .unwrap()
            .contains("damaged"),
        "{undone:#}"
    );
    assert!(!node.path("/opt/cni/bin/first").exists());
    assert!(node.path("/opt/cni/bin/second").exists());
    assert!(node.path("/opt/cni/bin/third").exists());
    // The journal is cut at the damage (so that its end record reads); a
    // copy of the whole is kept beside it.
    let copy = path.with_file_name(format!("{run}.undo.damaged"));
    assert!(
        std::fs::metadata(&copy).unwrap().len() > std::fs::metadata(&path).unwrap().len(),
        "{}",
        copy.display()
    );
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

#[test]
fn an_undo_while_the_run_is_going_is_refused() {
    let node = Node::new();
    std::fs::create_dir_all(node.path("/opt/cni/bin")).unwrap();
    let params = json!({"ops": [
        {"op": "ensure-file", "path": "/opt/cni/bin/slow", "contents": "s\n", "mode": 0o644},
        {"op": "sleep", "ms": 4000},
    ]})
    .to_string();
    let grants = node.cache.path().join("grants.yaml");
    let mut run = Command::new(hostaction_bin())
        .arg("run")
        .arg(guest("probe"))
        .args(["--params", &params, "--grants"])
        .arg(&grants)
        .arg("--host-root")
        .arg(node.root.path())
        .env("HOSTACTION_CACHE_DIR", node.cache.path())
        .stdout(std::process::Stdio::null())
        .spawn()
        .unwrap();
    // Wait for its journal (its first mutation).
    let run_id = (0..400)
        .find_map(|_| {
            std::thread::sleep(std::time::Duration::from_millis(25));
            std::fs::read_dir(node.journals())
                .ok()?
                .flatten()
                .find_map(|e| {
                    let name = e.file_name().into_string().ok()?;
                    name.strip_suffix(".undo.open").map(str::to_owned)
                })
                .filter(|_| node.path("/opt/cni/bin/slow").exists())
        })
        .expect("the run's journal");
    let out = node.cli(&["undo", &run_id]);
    let status = run.wait().unwrap();
    assert_eq!(out.status.code(), Some(4), "{}", output_text(&out));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("in use by another process"),
        "{}",
        output_text(&out)
    );
    assert!(status.success());
    assert!(node.path("/opt/cni/bin/slow").exists());
    // Once it is over, the undo goes through.
    let (code, undone) = node.undo(&run_id);
    assert_eq!(code, Some(0), "{undone:#}");
    assert!(!node.path("/opt/cni/bin/slow").exists());
}

/// A runtime on a scratch root with a journal directory and `limits`.
fn runtime(limits: JournalLimits) -> (tempfile::TempDir, tempfile::TempDir, Runtime) {
    let root = tempfile::tempdir().unwrap();
    let cache = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(cli_cache().join("runtime")).unwrap();
    let runtime = Runtime::new(RuntimeConfig {
        host_root: root.path().to_owned(),
        cache_dir: Some(cli_cache().join("runtime")),
        journal_dir: Some(cache.path().join("undo")),
        journal_limits: limits,
        ..RuntimeConfig::default()
    })
    .unwrap();
    (root, cache, runtime)
}

/// Three rewrites of a 4 KiB file (each journals the 4 KiB before it).
fn rewrites() -> Value {
    let kib = |c: &str| c.repeat(4096);
    json!({"ops": [
        {"op": "ensure-file", "path": "/opt/cni/bin/f", "contents": kib("b"), "mode": 0o644},
        {"op": "ensure-file", "path": "/opt/cni/bin/f", "contents": kib("c"), "mode": 0o644},
        {"op": "ensure-file", "path": "/opt/cni/bin/f", "contents": kib("d"), "mode": 0o644},
    ]})
}

#[test]
fn past_the_run_budget_required_ends_the_run_before_the_change_and_rolls_back() {
    let limits = JournalLimits {
        run_bytes: 10 << 10,
        node_bytes: 1 << 20,
    };
    let (root, _cache, rt) = runtime(limits);
    let f = root.path().join("opt/cni/bin/f");
    std::fs::create_dir_all(f.parent().unwrap()).unwrap();
    std::fs::write(&f, "a".repeat(4096)).unwrap();
    let module = rt.load_file(&guest("probe")).unwrap();
    let report = rt
        .run(
            &module,
            request(&rewrites(), "files: {write: [/opt/cni/bin]}"),
        )
        .unwrap();
    let RunStatus::LimitExceeded(why) = &report.status else {
        panic!("{:?}", report.status)
    };
    assert!(
        why.contains("undo journal") && why.contains("budget"),
        "{why}"
    );
    // Two rewrites made, the third refused before it was made; both undone.
    assert_eq!(report.effects.len(), 2, "{report:#?}");
    assert_eq!(report.rollback.as_ref().unwrap().entries.len(), 2);
    assert!(report.rollback.as_ref().unwrap().complete());
    assert_eq!(std::fs::read_to_string(&f).unwrap(), "a".repeat(4096));
}

#[test]
fn past_the_budget_best_effort_goes_on_and_the_run_cannot_be_undone() {
    let limits = JournalLimits {
        run_bytes: 10 << 10,
        node_bytes: 1 << 20,
    };
    let (root, _cache, rt) = runtime(limits);
    let f = root.path().join("opt/cni/bin/f");
    std::fs::create_dir_all(f.parent().unwrap()).unwrap();
    std::fs::write(&f, "a".repeat(4096)).unwrap();
    let module = rt.load_file(&guest("probe")).unwrap();
    let mut req = request(&rewrites(), "files: {write: [/opt/cni/bin]}");
    req.journal = JournalMode::BestEffort;
    let report = rt.run(&module, req).unwrap();
    assert!(report.status.is_success(), "{}", report.status);
    assert!(!report.undoable);
    assert_eq!(std::fs::read_to_string(&f).unwrap(), "d".repeat(4096));
    let err = rt.undo(&report.run_id).unwrap_err().to_string();
    assert!(err.contains("not undoable"), "{err}");
    assert_eq!(std::fs::read_to_string(&f).unwrap(), "d".repeat(4096));

    // Failing past the budget: no rollback of half of it either.
    let mut ops = rewrites();
    ops["ops"]
        .as_array_mut()
        .unwrap()
        .push(json!({"op": "fail", "message": "no"}));
    let mut req = request(&ops, "files: {write: [/opt/cni/bin]}");
    req.journal = JournalMode::BestEffort;
    let report = rt.run(&module, req).unwrap();
    assert!(!report.status.is_success());
    assert!(report.rollback.is_none() && !report.undoable, "{report:#?}");
}

#[test]
fn the_node_budget_bounds_a_runs_first_record_too() {
    // 6 KiB left on the node: the first rewrite's 4 KiB record fits, but
    // not with what the node's journals hold already.
    let limits = JournalLimits {
        run_bytes: 1 << 20,
        node_bytes: 6 << 10,
    };
    let (root, cache, rt) = runtime(limits);
    std::fs::write(cache.path().join("undo/old.undo"), vec![0u8; 3 << 10]).unwrap();
    let f = root.path().join("opt/cni/bin/f");
    std::fs::create_dir_all(f.parent().unwrap()).unwrap();
    std::fs::write(&f, "a".repeat(4096)).unwrap();
    let module = rt.load_file(&guest("probe")).unwrap();
    let report = rt
        .run(
            &module,
            request(&rewrites(), "files: {write: [/opt/cni/bin]}"),
        )
        .unwrap();
    assert!(
        matches!(&report.status, RunStatus::LimitExceeded(why) if why.contains("per node")),
        "{report:#?}"
    );
    assert!(report.effects.is_empty(), "{report:#?}");
    assert_eq!(std::fs::read_to_string(&f).unwrap(), "a".repeat(4096));
}
