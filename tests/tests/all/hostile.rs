//! A hostile action against the run's own bounds: waits through WASI that
//! must end at the deadline, host-side structures it fills that must stay
//! within their budgets, and text it prints that must not drive the terminal.

// Test code: a failed unwrap is a failed test, with its message.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::process::{Command, Output};
use std::time::{Duration, Instant};

use hostaction_runtime::effects::Mode;
use hostaction_runtime::{RunReport, RunStatus};
use hostaction_tests::{
    Host, alone, cli_cache, guest, hostaction_bin, peak_rss, probe_results, request,
};
use serde_json::{Value, json};

const GRANT: &str = "files: {write: [/opt/cni/bin]}";

/// Far beyond any bound below: a deadline that never fires fails the test.
const BOUND: Duration = Duration::from_secs(15);

fn probe(ops: Value) -> Value {
    json!({ "ops": ops })
}

/// Runs the probe with `ops` under `timeout`; returns the report and how long
/// the run took.
fn run_with_timeout(host: &Host, ops: Value, timeout: Duration) -> (RunReport, Duration) {
    let module = host.load("probe");
    let mut req = request(&probe(ops), GRANT);
    req.limits.timeout = timeout;
    let start = Instant::now();
    let report = host.runtime.run(&module, req).unwrap();
    (report, start.elapsed())
}

#[test]
fn waits_through_wasi_end_at_the_deadline() {
    let host = Host::new();
    for op in ["sleep", "poll", "block"] {
        let (report, took) = run_with_timeout(
            &host,
            json!([{"op": op, "ms": 60_000}]),
            Duration::from_secs(1),
        );
        assert!(
            matches!(report.status, RunStatus::DeadlineExceeded(_)),
            "{op}: {}",
            report.status
        );
        // Epoch ticks and timers run late on a loaded machine: a bound
        // against a wait that never ends, not a measure of precision.
        assert!(took < BOUND, "{op} 60 s under a 1 s deadline took {took:?}");
    }
    // A wait past what the clock can represent (wasmtime-wasi waits forever).
    let (report, took) = run_with_timeout(
        &host,
        json!([{"op": "poll", "ms": u64::MAX / 1_000_000}]),
        Duration::from_secs(1),
    );
    assert!(
        matches!(report.status, RunStatus::DeadlineExceeded(_)),
        "{}",
        report.status
    );
    assert!(took < BOUND, "an endless poll took {took:?}");
}

#[test]
fn waits_shorter_than_the_deadline_wait_their_full_time() {
    let host = Host::new();
    let (report, took) = run_with_timeout(
        &host,
        json!([
            {"op": "sleep", "ms": 300},
            {"op": "poll", "ms": 300},
            {"op": "block", "ms": 300},
        ]),
        Duration::from_secs(30),
    );
    assert!(report.status.is_success(), "{}", report.status);
    for (i, result) in probe_results(&report).iter().enumerate() {
        let waited = result["ok"].as_u64().unwrap_or_else(|| panic!("{result}"));
        assert!(waited >= 300, "op {i} waited {waited} ms of 300");
    }
    assert!(took >= Duration::from_millis(900), "{took:?}");
}

#[test]
fn no_other_wasi_call_waits() {
    let host = Host::new();
    let (report, took) = run_with_timeout(
        &host,
        json!([
            {"op": "read-stdin"},
            {"op": "tcp-socket"},
            {"op": "resolve-name", "name": "localhost"},
        ]),
        Duration::from_secs(30),
    );
    assert!(report.status.is_success(), "{}", report.status);
    assert!(took < BOUND, "{took:?}");
    let r = probe_results(&report);
    assert_eq!(r[0]["ok"], json!(0), "stdin is closed: {}", r[0]);
    assert!(r[1].get("err").is_some(), "a TCP socket was made: {}", r[1]);
    assert!(r[2].get("err").is_some(), "a name lookup started: {}", r[2]);

    // An empty poll list is a broken guest, not a wait.
    let (report, took) = run_with_timeout(
        &host,
        json!([{"op": "poll-empty"}]),
        Duration::from_secs(30),
    );
    assert!(
        matches!(&report.status, RunStatus::Trapped(m) if m.contains("empty poll list")),
        "{}",
        report.status
    );
    assert!(took < BOUND, "{took:?}");
}

/// `hostaction run` of the probe with `ops`, a files grant, and `args`.
fn cli_run(ops: Value, args: &[&str]) -> (Output, Duration) {
    let root = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(root.path().join("opt/cni/bin")).unwrap();
    let grant = root.path().join("grant.yaml");
    std::fs::write(&grant, GRANT).unwrap();
    let start = Instant::now();
    let out = Command::new(hostaction_bin())
        .arg("--cache-dir")
        .arg(cli_cache())
        .arg("run")
        .arg(guest("probe"))
        .arg("--grants")
        .arg(&grant)
        .arg("--host-root")
        .arg(root.path())
        .arg("--params")
        .arg(probe(ops).to_string())
        .args(args)
        .output()
        .unwrap();
    (out, start.elapsed())
}

#[test]
fn cli_run_ends_a_long_sleep_at_its_timeout() {
    let (out, took) = cli_run(json!([{"op": "sleep", "ms": 60_000}]), &["--timeout", "1"]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(1), "{stdout}");
    assert!(stdout.contains("status   deadline exceeded"), "{stdout}");
    assert!(took < BOUND, "took {took:?}");
}

/// The effects' kept bytes as the budget counts them, and the dropped count.
fn effects_kept_and_dropped(report: &RunReport) -> (usize, usize, u64) {
    let kept_bytes = report
        .effects
        .iter()
        .map(|e| e.target.len() + e.detail.len())
        .sum();
    let json = serde_json::to_value(report).unwrap();
    let dropped = json["effects_dropped"].as_u64().unwrap_or(0);
    (report.effects.len(), kept_bytes, dropped)
}

#[test]
fn effects_past_their_budget_are_counted_not_kept_in_apply_and_plan_mode() {
    // ~4 KiB paths, changed 2000 times: 8 MiB of effects unbounded.
    let long = "x".repeat(250);
    let path = format!("/opt/cni/bin/{}{long}", format!("{long}/").repeat(15));
    let times = 2000u64;
    for mode in [Mode::Apply, Mode::Plan] {
        let host = Host::new();
        host.write(&path, "same");
        let module = host.load("probe");
        let mut req = request(
            &probe(json!([{
                "op": "mode-churn", "path": path, "contents": "same", "times": times
            }])),
            GRANT,
        );
        req.mode = mode;
        // Each change is a real chmod and fsync: time for a loaded machine.
        req.limits.timeout = Duration::from_secs(300);
        let report = host.runtime.run(&module, req).unwrap();
        assert!(report.status.is_success(), "{mode:?}: {}", report.status);
        let changes = probe_results(&report)[0]["ok"].as_u64().unwrap();
        // Every call flips the mode: apply's on the host, plan's in the
        // plan (which reads back its own planned writes).
        assert_eq!(changes, times, "{mode:?}");
        let (kept, kept_bytes, dropped) = effects_kept_and_dropped(&report);
        assert_eq!(
            kept as u64 + dropped,
            changes,
            "{mode:?}: every effect counted"
        );
        assert!(dropped > 0, "{mode:?}: nothing dropped of {changes}");
        assert!(kept_bytes < 1 << 20, "{mode:?}: {kept_bytes} bytes kept");
        let report_bytes = serde_json::to_string(&report).unwrap().len();
        assert!(
            report_bytes < 2 << 20,
            "{mode:?}: a {report_bytes}-byte report"
        );
        assert!(report.changed());
    }
}

#[test]
fn empty_facts_count_against_the_outcome_limit() {
    let host = Host::new();
    let module = host.load("probe");
    let mut req = request(
        &probe(json!([{"op": "empty-facts", "count": 2_000_000}])),
        GRANT,
    );
    // Room for the guest to build them: the outcome limit must end it.
    req.limits.memory_bytes = 1 << 30;
    let report = host.runtime.run(&module, req).unwrap();
    match &report.status {
        RunStatus::LimitExceeded(m) => assert!(m.contains("outcome"), "{m}"),
        other => panic!("2 million empty facts: {other}"),
    }
    assert!(report.outcome.is_none());

    // Fewer, that the host lifts: each still costs its overhead.
    let report = host
        .run(
            "probe",
            &probe(json!([{"op": "empty-facts", "count": 2000}])),
            GRANT,
        )
        .unwrap();
    match &report.status {
        RunStatus::LimitExceeded(m) => assert!(m.contains("2001 facts"), "{m}"),
        other => panic!("2000 empty facts: {other}"),
    }

    // A few stay well within it.
    let report = host
        .run(
            "probe",
            &probe(json!([{"op": "empty-facts", "count": 100}])),
            GRANT,
        )
        .unwrap();
    assert!(report.status.is_success(), "{}", report.status);
    assert_eq!(report.outcome.unwrap().facts.len(), 101);
}

#[test]
fn plan_mode_directories_past_their_budget_end_the_run() {
    // Each missing directory under the granted one is remembered by the plan
    // (calls beneath it are answered from it).
    let host = Host::new();
    std::fs::create_dir_all(host.path("/opt/cni/bin")).unwrap();
    let module = host.load("probe");
    let long = "d".repeat(240);
    let ops: Vec<_> = (0..10_000)
        .map(|i| json!({"op": "ensure-dir", "path": format!("/opt/cni/bin/{long}{i}"), "mode": 0o755}))
        .collect();
    let mut req = request(&probe(json!(ops)), GRANT);
    req.mode = Mode::Plan;
    // Room for the probe's 10 000 facts: the plan's budget must end it.
    req.limits.output_bytes = 16 << 20;
    let report = host.runtime.run(&module, req).unwrap();
    match &report.status {
        RunStatus::LimitExceeded(m) => assert!(m.contains("planned directories"), "{m}"),
        other => panic!("10 000 planned directories: {other}"),
    }
    assert!(
        std::fs::read_dir(host.path("/opt/cni/bin"))
            .unwrap()
            .next()
            .is_none(),
        "plan mode made a directory"
    );
}

#[test]
fn cli_text_output_escapes_what_the_guest_wrote() {
    let fake = "\x1b[2K\rsucceeded\u{202e}";
    let escaped = "\\x1b[2K\\rsucceeded\\u{202e}";
    let (out, _) = cli_run(
        json!([
            {"op": "log", "message": fake},
            {"op": "print", "message": fake},
            {"op": "eprint", "message": format!("two\nlines{fake}")},
            {"op": "ensure-file", "path": format!("/opt/cni/bin/{fake}"), "contents": "", "mode": 0o644},
        ]),
        &[],
    );
    let text = String::from_utf8(out.stdout).unwrap();
    assert_eq!(out.status.code(), Some(0), "{text}");
    assert!(!text.contains('\x1b') && !text.contains('\r'), "{text:?}");
    assert!(!text.contains('\u{202e}'), "{text:?}");
    assert!(text.contains(&format!("info  {escaped}")), "{text}");
    assert!(text.contains(&format!("/opt/cni/bin/{escaped}")), "{text}");

    // A failure message is the guest's too; JSON output keeps it exact.
    let (out, _) = cli_run(json!([{"op": "fail", "message": fake}]), &[]);
    let text = String::from_utf8(out.stdout).unwrap();
    assert!(!text.contains('\x1b'), "{text:?}");
    assert!(
        text.contains(&format!("status   failed: {escaped}")),
        "{text}"
    );
    let (out, _) = cli_run(
        json!([{"op": "fail", "message": fake}]),
        &["--output", "json"],
    );
    let json: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(json["report"]["reason"], json!(fake));
}

/// Every pollable, stream or other WASI resource a guest holds is host
/// memory (a handle, table entries, the object): their number is bounded,
/// and a run past it ends as `limit exceeded`, naming the limit.
#[test]
fn resources_a_guest_holds_are_bounded() {
    // The peak resident set is the process's: measured with this test alone.
    if !alone(module_path!(), "resources_a_guest_holds_are_bounded") {
        return;
    }
    let host = Host::new();
    // Compiled (in this process) before the measure starts.
    host.load("probe");
    let before = peak_rss();
    let (report, _) = run_with_timeout(
        &host,
        json!([{"op": "pollables", "count": 1_000_000}]),
        Duration::from_secs(60),
    );
    let grown = peak_rss().saturating_sub(before);
    assert!(
        matches!(&report.status, RunStatus::LimitExceeded(m) if m.contains("resources")),
        "{}",
        report.status
    );
    assert!(grown < 16 << 20, "the host grew by {} MiB", grown >> 20);

    // Well under the bound, a guest holds what it needs.
    let (report, _) = run_with_timeout(
        &host,
        json!([{"op": "pollables", "count": 1000}]),
        Duration::from_secs(60),
    );
    assert!(report.status.is_success(), "{}", report.status);
    assert_eq!(probe_results(&report)[0]["ok"], json!(1000));
}

/// A guest asking WASI for random bytes gets at most 1 MiB a call: the host
/// allocates the answer before copying it over (wasmtime's default bound is
/// 64 MiB, more than a run's memory). A larger ask ends the run (8 MiB ran
/// before the bound).
#[test]
fn random_bytes_a_guest_asks_for_are_bounded() {
    let host = Host::new();
    let (report, _) = run_with_timeout(
        &host,
        json!([{"op": "random", "len": 1 << 20}]),
        Duration::from_secs(60),
    );
    assert!(report.status.is_success(), "{}", report.status);
    assert_eq!(probe_results(&report)[0]["ok"], json!(1 << 20));

    let (report, _) = run_with_timeout(
        &host,
        json!([{"op": "random", "len": 8 << 20}]),
        Duration::from_secs(60),
    );
    assert!(
        matches!(&report.status, RunStatus::Trapped(m) if m.contains("exceeds limit 1048576")),
        "{}",
        report.status
    );
}
