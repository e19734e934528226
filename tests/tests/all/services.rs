//! The `services` capability against a real systemd, booted by the test
//! itself with `systemd-nspawn` ([`hostaction_tests::systemd`]); busctl is the
//! independent observer, and the units leave traces in a directory the test
//! reads.
//!
//! Needs root and `systemd-container` (CI runs as root and installs it).

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use hostaction_runtime::Error;
use hostaction_runtime::capabilities::services::undo::WINDOW_SLACK;
use hostaction_runtime::effects::Mode;
use hostaction_runtime::undo::{UndoReport, Undone};
use hostaction_tests::systemd::{Systemd, Unit};
use hostaction_tests::{Host, err_kind, probe_results, request};
use serde_json::{Value, json};

/// A long-running service that records each start's PID, and reloads.
const TEST_UNIT: &str = "[Service]
ExecStart=/bin/sh -c 'echo $$$$ >> /run/ha-state/starts; exec sleep infinity'
ExecReload=/bin/sh -c 'echo reload >> /run/ha-state/reloads'
";
/// A long-running service not started at boot, tracing its starts.
const IDLE_UNIT: &str = "[Service]
ExecStart=/bin/sh -c 'echo $$$$ >> /run/ha-state/idle; exec sleep infinity'
";
/// A service whose start fails.
const FAILING_UNIT: &str = "[Service]
Type=oneshot
ExecStart=/bin/false
";
/// A service whose start takes 5 s.
const SLOW_UNIT: &str = "[Service]
Type=oneshot
ExecStart=/bin/sleep 5
";
/// A template: each instance records its name.
const TEMPLATE_UNIT: &str = "[Service]
ExecStart=/bin/sh -c 'echo %i >> /run/ha-state/instances; exec sleep infinity'
";

/// The grant the tests use (`ha-other.service` stays out of it).
const GRANT: &str = r#"
services:
  units: [ha-test.service, ha-idle.service, ha-fail.service, ha-slow.service, "ha-tpl@*.service", ha-sneaky.service, ha-gone.service]
"#;

/// The lines of a unit's trace file once it has `n` (a started process writes
/// its line a moment after systemd reports the start done), or after 30 s.
fn lines(systemd: &Systemd, name: &str, n: usize) -> usize {
    let start = std::time::Instant::now();
    loop {
        let count = systemd.trace(name).lines().count();
        if count >= n || start.elapsed() > std::time::Duration::from_secs(30) {
            return count;
        }
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
}

fn boot() -> Systemd {
    Systemd::boot(
        &[
            Unit {
                name: "ha-test.service",
                contents: TEST_UNIT,
                enabled: true,
            },
            Unit {
                name: "ha-idle.service",
                contents: IDLE_UNIT,
                enabled: false,
            },
            Unit {
                name: "ha-other.service",
                contents: TEST_UNIT,
                enabled: false,
            },
            Unit {
                name: "ha-fail.service",
                contents: FAILING_UNIT,
                enabled: false,
            },
            Unit {
                name: "ha-slow.service",
                contents: SLOW_UNIT,
                enabled: false,
            },
            Unit {
                name: "ha-tpl@.service",
                contents: TEMPLATE_UNIT,
                enabled: false,
            },
        ],
        &[
            ("ha-alias.service", "ha-test.service"),
            ("ha-sneaky.service", "ha-other.service"),
        ],
    )
}

/// Runs svcprobe with `ops` against `systemd`; the per-op results.
fn probe(host: &Host, ops: Value, grant: &str) -> Vec<Value> {
    let report = host
        .run("svcprobe", &json!({ "ops": ops }), grant)
        .expect("svcprobe runs");
    assert!(report.status.is_success(), "{report:#?}");
    probe_results(&report)
}

#[test]
fn a_restart_really_restarts_and_status_reads_live_state() {
    let systemd = boot();
    let host = Host::with_bus(Some(systemd.address()));
    let before = systemd.main_pid("ha-test.service");
    assert_ne!(before, 0, "ha-test.service runs after boot");

    let report = host
        .run(
            "svcprobe",
            &json!({"ops": [
                {"op": "status", "unit": "ha-test.service"},
                {"op": "restart", "unit": "ha-test.service", "timeout_ms": 10000},
                {"op": "status", "unit": "ha-test.service"},
                {"op": "reload", "unit": "ha-test.service", "timeout_ms": 10000},
            ]}),
            GRANT,
        )
        .unwrap();
    let results = probe_results(&report);
    assert_eq!(results[0]["ok"]["main_pid"], before, "{}", results[0]);
    assert_eq!(results[0]["ok"]["active"], "active");
    assert_eq!(results[1]["ok"], "done", "{}", results[1]);
    let after = systemd.main_pid("ha-test.service");
    assert!(after != 0 && after != before, "{before} -> {after}");
    // Read live, not from a cache: the new process.
    assert_eq!(results[2]["ok"]["main_pid"], after, "{}", results[2]);
    assert_eq!(results[2]["ok"]["sub"], "running");
    assert!(results[2]["ok"]["since_us"].as_u64().unwrap() > 0);
    assert_eq!(results[3]["ok"], "done", "{}", results[3]);
    // The unit's side effects: two starts, one reload.
    assert_eq!(lines(&systemd, "starts", 2), 2);
    assert_eq!(lines(&systemd, "reloads", 1), 1);
    let effects: Vec<_> = report
        .effects
        .iter()
        .map(|e| (e.action, e.target.as_str(), e.detail.as_str()))
        .collect();
    assert_eq!(
        effects,
        [
            ("restart", "ha-test.service", "result done"),
            ("reload", "ha-test.service", "result done")
        ]
    );
}

#[test]
fn failed_and_slow_jobs_come_back_as_values_and_errors() {
    let systemd = boot();
    let host = Host::with_bus(Some(systemd.address()));
    let report = host
        .run(
            "svcprobe",
            &json!({"ops": [
                {"op": "start", "unit": "ha-fail.service", "timeout_ms": 10000},
                {"op": "restart", "unit": "ha-slow.service", "timeout_ms": 300},
                {"op": "stop", "unit": "ha-test.service", "timeout_ms": 10000},
                {"op": "try-restart", "unit": "ha-test.service", "timeout_ms": 10000},
                {"op": "status", "unit": "ha-test.service"},
            ]}),
            GRANT,
        )
        .unwrap();
    let results = probe_results(&report);
    // The job that outlived its wait ran all the same: it is an effect.
    let slow = report
        .effects
        .iter()
        .find(|e| e.target == "ha-slow.service")
        .unwrap();
    assert_eq!(slow.detail, "still running after 300 ms");
    assert_eq!(results[0]["ok"], "failed", "{}", results[0]);
    assert_eq!(err_kind(&results[1]), Some("timeout"), "{}", results[1]);
    assert!(
        results[1]["err"]["message"]
            .as_str()
            .unwrap()
            .contains("300 ms")
    );
    assert_eq!(results[2]["ok"], "done");
    // try-restart leaves a stopped unit stopped.
    assert_eq!(results[3]["ok"], "done");
    assert_eq!(results[4]["ok"]["active"], "inactive", "{}", results[4]);
    assert_eq!(results[4]["ok"]["main_pid"], Value::Null);
    assert_eq!(systemd.main_pid("ha-test.service"), 0);
}

#[test]
fn names_are_canonicalized_by_systemd_before_the_grant_is_checked() {
    let systemd = boot();
    let host = Host::with_bus(Some(systemd.address()));
    let before = systemd.main_pid("ha-other.service");
    let results = probe(
        &host,
        json!([
            // Ungranted.
            {"op": "restart", "unit": "ha-other.service", "timeout_ms": 10000},
            // Granted by name, but an alias of the ungranted unit.
            {"op": "start", "unit": "ha-sneaky.service", "timeout_ms": 10000},
            {"op": "status", "unit": "ha-sneaky.service"},
            // An alias of a granted unit resolves to it.
            {"op": "status", "unit": "ha-alias.service"},
            // A template instance, granted by pattern.
            {"op": "start", "unit": "ha-tpl@one.service", "timeout_ms": 10000},
            {"op": "status", "unit": "ha-tpl@one.service"},
            // Names systemd would refuse, refused before the bus.
            {"op": "restart", "unit": "ha-test", "timeout_ms": 1000},
            {"op": "restart", "unit": "../ha-test.service", "timeout_ms": 1000},
            {"op": "restart", "unit": "ha-tpl@.service", "timeout_ms": 1000},
            {"op": "restart", "unit": "ha-test.service", "timeout_ms": 0},
            // Granted, but there is no such unit.
            {"op": "start", "unit": "ha-gone.service", "timeout_ms": 1000},
            {"op": "daemon-reload"},
        ]),
        GRANT,
    );
    for i in [0, 1, 2, 11] {
        assert_eq!(
            err_kind(&results[i]),
            Some("permission-denied"),
            "op {i}: {}",
            results[i]
        );
    }
    assert!(
        results[1]["err"]["message"]
            .as_str()
            .unwrap()
            .contains("ha-other.service"),
        "{}",
        results[1]
    );
    assert!(
        results[11]["err"]["message"]
            .as_str()
            .unwrap()
            .contains("daemonReload")
    );
    assert_eq!(
        results[3]["ok"]["name"], "ha-test.service",
        "{}",
        results[3]
    );
    assert_eq!(results[4]["ok"], "done", "{}", results[4]);
    assert_eq!(results[5]["ok"]["name"], "ha-tpl@one.service");
    assert_eq!(lines(&systemd, "instances", 1), 1);
    assert_eq!(systemd.trace("instances").trim(), "one");
    for (i, r) in results.iter().enumerate().take(10).skip(6) {
        assert_eq!(err_kind(r), Some("invalid-argument"), "op {i}: {r}");
    }
    assert_eq!(err_kind(&results[10]), Some("not-found"), "{}", results[10]);
    // The ungranted unit never moved.
    assert_eq!(systemd.main_pid("ha-other.service"), before);
    assert_eq!(before, 0);

    // daemon-reload with its own grant: a changed unit file takes effect.
    let description = || systemd.property("ha-test.service", "Unit", "Description");
    assert_eq!(description(), "s \"ha-test.service\"");
    std::fs::write(
        systemd.units().join("ha-test.service"),
        format!("[Unit]\nDescription=reloaded\n{TEST_UNIT}"),
    )
    .unwrap();
    let with_reload = format!("{GRANT}  daemonReload: true\n");
    let results = probe(&host, json!([{"op": "daemon-reload"}]), &with_reload);
    assert_eq!(results[0]["ok"], Value::Null, "{}", results[0]);
    assert_eq!(description(), "s \"reloaded\"");

    // A component that imports `services` needs a services grant to start.
    let err = host
        .run("svcprobe", &json!({"ops": []}), "files: {read: [/etc]}")
        .unwrap_err();
    assert!(
        matches!(&err, Error::Refused(m) if m.iter().any(|m| m.contains("services"))),
        "{err:?}"
    );
}

#[test]
fn plan_mode_records_the_restart_and_restarts_nothing() {
    let systemd = boot();
    let host = Host::with_bus(Some(systemd.address()));
    let before = systemd.main_pid("ha-test.service");
    let mut req = request(
        &json!({"ops": [{"op": "restart", "unit": "ha-alias.service", "timeout_ms": 10000}]}),
        GRANT,
    );
    req.mode = Mode::Plan;
    let report = host.runtime.run(&host.load("svcprobe"), req).unwrap();
    assert_eq!(probe_results(&report)[0]["ok"], "done");
    assert_eq!(report.effects.len(), 1);
    assert_eq!(report.effects[0].target, "ha-test.service");
    assert!(!report.effects[0].applied);
    assert_eq!(systemd.main_pid("ha-test.service"), before);
    assert_eq!(lines(&systemd, "starts", 1), 1);
}

#[test]
fn a_call_without_a_system_bus_is_an_io_error_naming_the_socket() {
    let host = Host::new();
    let results = probe(
        &host,
        json!([{"op": "status", "unit": "ha-test.service"}]),
        GRANT,
    );
    assert_eq!(err_kind(&results[0]), Some("io"), "{}", results[0]);
    let message = results[0]["err"]["message"].as_str().unwrap();
    assert!(
        message.contains("cannot reach systemd's bus") && message.contains("system_bus_socket"),
        "{message}"
    );
}

#[test]
fn restart_on_change_restarts_once_then_not_again() {
    let systemd = boot();
    let host = Host::with_bus(Some(systemd.address()));
    // The sample's grant shape, for this test's file and unit.
    let grant = "files: {write: [/etc/ha-test]}\nservices: {units: [ha-test.service]}\n";
    let params = |contents: &str| {
        json!({
            "path": "/etc/ha-test/config.toml",
            "contents": contents,
            "unit": "ha-test.service",
        })
    };
    let run = |contents: &str| {
        let report = host
            .run("restart-on-change", &params(contents), grant)
            .unwrap();
        assert!(report.status.is_success(), "{report:#?}");
        report
    };
    assert_eq!(lines(&systemd, "starts", 1), 1, "started at boot");
    let first = run("level = 1\n");
    assert!(first.changed());
    assert_eq!(lines(&systemd, "starts", 2), 2, "restarted once");
    assert_eq!(
        std::fs::read_to_string(host.path("/etc/ha-test/config.toml")).unwrap(),
        "level = 1\n"
    );
    let second = run("level = 1\n");
    assert!(!second.changed(), "{:#?}", second.effects);
    std::thread::sleep(std::time::Duration::from_millis(200));
    assert_eq!(systemd.trace("starts").lines().count(), 2, "not again");
    let third = run("level = 2\n");
    assert!(third.changed());
    assert_eq!(lines(&systemd, "starts", 3), 3, "again on a change");
    // A run that wrote the file but whose restart never happened (here, the
    // file changed behind the unit's back): the next run owes the restart.
    std::thread::sleep(std::time::Duration::from_millis(20));
    std::fs::write(host.path("/etc/ha-test/config.toml"), "level = 3\n").unwrap();
    let fourth = run("level = 3\n");
    assert!(fourth.changed(), "{:#?}", fourth.log);
    assert_eq!(lines(&systemd, "starts", 4), 4, "the owed restart");
    assert!(!run("level = 3\n").changed(), "and then not again");
}

/// A host whose runtime keeps its journals in a directory of its own, so
/// finished runs can be undone (the shared `Host` journals each run to a
/// temporary file: rollback only).
fn journaled_host(systemd: &Systemd) -> (Host, tempfile::TempDir) {
    let journals = tempfile::tempdir().unwrap();
    let root = tempfile::tempdir().unwrap();
    let runtime = hostaction_runtime::Runtime::new(hostaction_runtime::RuntimeConfig {
        host_root: root.path().to_owned(),
        cache_dir: None,
        system_bus: Some(systemd.address()),
        journal_dir: Some(journals.path().to_owned()),
        ..hostaction_runtime::RuntimeConfig::default()
    })
    .unwrap();
    (Host { root, runtime }, journals)
}

fn active_state(systemd: &Systemd, unit: &str) -> String {
    systemd
        .property(unit, "Unit", "ActiveState")
        .trim_start_matches("s ")
        .trim_matches('"')
        .to_owned()
}

/// What undoing each effect came to, newest first: (action, target, result).
fn undone(report: &UndoReport) -> Vec<(String, String, Undone)> {
    report
        .entries
        .iter()
        .map(|e| (e.action.clone(), e.target.clone(), e.undone.clone()))
        .collect()
}

#[test]
fn a_run_that_starts_units_and_then_fails_is_rolled_back_and_they_stop_again() {
    let systemd = boot();
    let host = Host::with_bus(Some(systemd.address()));
    assert_eq!(active_state(&systemd, "ha-idle.service"), "inactive");
    let mut req = request(
        &json!({"ops": [
            {"op": "start", "unit": "ha-idle.service", "timeout_ms": 10000},
            // Takes 5 s: the run's 2 s deadline passes first.
            {"op": "start", "unit": "ha-slow.service", "timeout_ms": 10000},
        ]}),
        GRANT,
    );
    req.limits.timeout = std::time::Duration::from_secs(2);
    let report = host.runtime.run(&host.load("svcprobe"), req).unwrap();
    assert!(!report.status.is_success(), "{report:#?}");
    let idle = report
        .effects
        .iter()
        .find(|e| e.target == "ha-idle.service")
        .unwrap();
    assert_eq!(idle.diff.as_deref(), Some("active-state inactive → active"));
    let rollback = report.rollback.as_ref().expect("rolled back");
    assert_eq!(
        undone(rollback),
        [
            ("start".into(), "ha-slow.service".into(), Undone::Restored),
            ("start".into(), "ha-idle.service".into(), Undone::Restored),
        ],
        "{rollback:#?}"
    );
    // The independent observer: both stopped again; ha-idle did run.
    assert_eq!(active_state(&systemd, "ha-idle.service"), "inactive");
    // A oneshot stopped mid-start ends `failed` (its process was killed).
    let slow = active_state(&systemd, "ha-slow.service");
    assert!(slow == "inactive" || slow == "failed", "{slow}");
    assert_eq!(lines(&systemd, "idle", 1), 1);
}

#[test]
fn undo_of_a_stop_starts_the_unit_again() {
    let systemd = boot();
    let (host, _journals) = journaled_host(&systemd);
    let before = systemd.main_pid("ha-test.service");
    assert_ne!(before, 0);
    let report = host
        .run(
            "svcprobe",
            &json!({"ops": [{"op": "stop", "unit": "ha-test.service", "timeout_ms": 10000}]}),
            GRANT,
        )
        .unwrap();
    assert!(report.status.is_success() && report.undoable, "{report:#?}");
    assert_eq!(
        report.effects[0].diff.as_deref(),
        Some("active-state active → inactive")
    );
    assert_eq!(systemd.main_pid("ha-test.service"), 0);
    let undo = host.runtime.undo(&report.run_id).unwrap();
    assert_eq!(
        undone(&undo),
        [("stop".into(), "ha-test.service".into(), Undone::Restored)]
    );
    assert_eq!(active_state(&systemd, "ha-test.service"), "active");
    let after = systemd.main_pid("ha-test.service");
    assert!(after != 0 && after != before, "{before} -> {after}");
    // Undone already: a second undo is refused, the unit left running.
    let again = host.runtime.undo(&report.run_id).unwrap_err();
    assert!(again.to_string().contains("undone already"), "{again}");
    assert_eq!(systemd.main_pid("ha-test.service"), after);
}

#[test]
fn undo_leaves_a_unit_someone_restarted_since_and_says_conflict() {
    let systemd = boot();
    let (host, _journals) = journaled_host(&systemd);
    // The run's start: its job's window is its 1 s wait plus the slack.
    let first = host
        .run(
            "svcprobe",
            &json!({"ops": [{"op": "start", "unit": "ha-idle.service", "timeout_ms": 1000}]}),
            GRANT,
        )
        .unwrap();
    assert!(first.status.is_success(), "{first:#?}");
    assert_eq!(lines(&systemd, "idle", 1), 1);
    // Someone else stops and starts it again, after that window.
    std::thread::sleep(
        std::time::Duration::from_millis(1000)
            + WINDOW_SLACK
            + std::time::Duration::from_millis(500),
    );
    probe(
        &host,
        json!([
            {"op": "stop", "unit": "ha-idle.service", "timeout_ms": 10000},
            {"op": "start", "unit": "ha-idle.service", "timeout_ms": 10000},
        ]),
        GRANT,
    );
    assert_eq!(lines(&systemd, "idle", 2), 2);
    let pid = systemd.main_pid("ha-idle.service");
    let undo = host.runtime.undo(&first.run_id).unwrap();
    match &undone(&undo)[..] {
        [(action, target, Undone::Conflict(why))] => {
            assert_eq!(
                (action.as_str(), target.as_str()),
                ("start", "ha-idle.service")
            );
            assert!(why.contains("after the run's"), "{why}");
        }
        other => panic!("expected one conflict, got {other:?}"),
    }
    // Left running: the same process.
    assert_eq!(systemd.main_pid("ha-idle.service"), pid);
    assert!(!undo.complete());
}

#[test]
fn a_restart_is_reported_irreversible_and_undo_restarts_nothing() {
    let systemd = boot();
    let (host, _journals) = journaled_host(&systemd);
    let report = host
        .run(
            "svcprobe",
            &json!({"ops": [{"op": "restart", "unit": "ha-test.service", "timeout_ms": 10000}]}),
            GRANT,
        )
        .unwrap();
    assert!(report.status.is_success(), "{report:#?}");
    assert_eq!(
        report.effects[0].diff.as_deref(),
        Some("active-state active → active")
    );
    assert_eq!(lines(&systemd, "starts", 2), 2);
    let pid = systemd.main_pid("ha-test.service");
    let undo = host.runtime.undo(&report.run_id).unwrap();
    match &undone(&undo)[..] {
        [(action, _, Undone::Irreversible(why))] => {
            assert_eq!(action, "restart");
            assert!(
                why.contains("cannot be un-restarted") && why.contains("state before"),
                "{why}"
            );
        }
        other => panic!("expected one irreversible, got {other:?}"),
    }
    assert_eq!(undo.counts().irreversible, 1);
    assert_eq!(systemd.main_pid("ha-test.service"), pid);
    std::thread::sleep(std::time::Duration::from_millis(200));
    assert_eq!(systemd.trace("starts").lines().count(), 2, "not restarted");
}
