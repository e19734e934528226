//! The engine: limits (deadline, memory, log), the locked-down WASI, guest
//! panics, bad input, and the precompiled cache.

// Test code: a failed unwrap is a failed test, with its message.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::time::{Duration, Instant};

use hostaction_runtime::engine::{LoadSource, MAX_CONCURRENT_RUNS};
use hostaction_runtime::{Error, RunStatus, Runtime, RuntimeConfig};
use hostaction_tests::{Host, guest, probe_results, request};
use serde_json::json;

const GRANT: &str = "files: {write: [/opt/cni/bin]}";

fn probe(ops: serde_json::Value) -> serde_json::Value {
    json!({ "ops": ops })
}

#[test]
fn infinite_loop_ends_at_the_deadline_memory_bomb_at_the_cap_log_flood_is_truncated() {
    let host = Host::new();
    let module = host.load("probe");

    let mut spin = request(&probe(json!([{"op": "spin"}])), GRANT);
    spin.limits.timeout = Duration::from_millis(500);
    let start = Instant::now();
    let report = host.runtime.run(&module, spin).unwrap();
    let took = start.elapsed();
    assert!(
        matches!(report.status, RunStatus::DeadlineExceeded(_)),
        "{}",
        report.status
    );
    assert!(
        report.status.to_string().contains("deadline"),
        "{}",
        report.status
    );
    // Epoch ticks run late on a loaded machine: a bound against a deadline
    // that never fires, not a measure of its precision.
    assert!(took < Duration::from_secs(15), "the deadline took {took:?}");

    let report = host
        .runtime
        .run(
            &module,
            request(&probe(json!([{"op": "alloc", "mib": 1000}])), GRANT),
        )
        .unwrap();
    match &report.status {
        RunStatus::LimitExceeded(m) => assert!(m.contains("memory limit of 64 MiB"), "{m}"),
        other => panic!("expected the memory limit, got {other}"),
    }

    let mut flood = request(
        &probe(json!([{"op": "log-flood", "bytes": 20 << 20}])),
        GRANT,
    );
    flood.limits.log_bytes = 64 << 10;
    let report = host.runtime.run(&module, flood).unwrap();
    assert!(report.status.is_success(), "{}", report.status);
    let kept: usize = report.log.iter().map(|l| l.message.len()).sum();
    assert!(kept <= 64 << 10, "kept {kept} bytes of log");
    assert!(
        report.log_dropped_bytes > 19 << 20,
        "{}",
        report.log_dropped_bytes
    );

    // The process and the runtime survive all three.
    let report = host
        .runtime
        .run(
            &module,
            request(
                &probe(json!([{"op": "log", "message": "still here"}])),
                GRANT,
            ),
        )
        .unwrap();
    assert!(report.status.is_success());
    assert_eq!(report.log[0].message, "still here");
}

#[test]
fn deadline_also_bounds_a_guest_that_keeps_calling_the_host() {
    let host = Host::new();
    std::fs::create_dir_all(host.path("/opt/cni/bin")).unwrap();
    let module = host.load("probe");
    let ops: Vec<_> = (0..200_000)
        .map(|_| json!({"op": "stat", "path": "/opt/cni/bin/x"}))
        .collect();
    let mut req = request(&probe(json!(ops)), GRANT);
    req.limits.timeout = Duration::from_millis(200);
    let report = host.runtime.run(&module, req).unwrap();
    assert!(
        matches!(report.status, RunStatus::DeadlineExceeded(_)),
        "{}",
        report.status
    );
}

#[test]
fn stdout_and_stderr_go_to_the_run_log() {
    let host = Host::new();
    let report = host
        .run(
            "probe",
            &probe(json!([
                {"op": "print", "message": "to stdout"},
                {"op": "eprint", "message": "to stderr"},
                {"op": "log", "message": "to log"},
            ])),
            GRANT,
        )
        .unwrap();
    let messages: Vec<_> = report.log.iter().map(|l| l.message.as_str()).collect();
    for expected in ["to stdout", "to stderr", "to log"] {
        assert!(messages.contains(&expected), "{messages:?}");
    }
}

#[test]
fn guest_panic_is_a_failed_run_carrying_its_message() {
    let host = Host::new();
    let report = host
        .run(
            "probe",
            &probe(json!([{"op": "panic", "message": "boom 42"}])),
            GRANT,
        )
        .unwrap();
    match &report.status {
        // The panic's message leads the failure, the trap follows.
        RunStatus::Trapped(m) => assert!(
            m.starts_with("panicked at ") && m.contains("boom 42"),
            "{m}"
        ),
        other => panic!("expected a trap, got {other}"),
    }
    assert!(
        report.log.iter().any(|l| l.message.contains("boom 42")),
        "the panic message is not in the log: {:?}",
        report.log
    );
    assert_eq!(report.status.exit_code(), 1);
}

#[test]
fn returned_error_is_a_failed_run() {
    let host = Host::new();
    let report = host
        .run(
            "probe",
            &probe(json!([{"op": "fail", "message": "no can do"}])),
            GRANT,
        )
        .unwrap();
    assert_eq!(report.status, RunStatus::Failed("no can do".into()));
}

#[test]
fn non_wasm_file_is_a_bad_module() {
    let host = Host::new();
    let err = host.runtime.load(b"#!/bin/sh\necho hi\n").err().unwrap();
    assert!(
        matches!(&err, Error::BadModule(m) if m.contains("not a WebAssembly file")),
        "{err}"
    );
    assert_eq!(err.exit_code(), 2);
}

#[test]
fn core_module_is_a_bad_module_with_a_hint() {
    let host = Host::new();
    let core = wat::parse_str("(module (func (export \"run\")))").unwrap();
    let err = host.runtime.load(&core).err().unwrap();
    assert!(
        matches!(&err, Error::BadModule(m) if m.contains("core WebAssembly module")),
        "{err}"
    );
}

#[test]
fn truncated_component_is_a_bad_module() {
    let host = Host::new();
    let bytes = std::fs::read(guest("probe")).unwrap();
    let err = host.runtime.load(&bytes[..bytes.len() / 2]).err().unwrap();
    assert!(
        matches!(&err, Error::BadModule(m) if m.contains("not a valid component")),
        "{err}"
    );
}

#[test]
fn component_with_the_wrong_export_is_a_bad_module_naming_the_export() {
    let host = Host::new();
    let module = host.load("wrong-export");
    assert!(module.unrunnable().is_some());
    let err = host
        .runtime
        .run(&module, request(&json!({}), "{}"))
        .unwrap_err();
    assert!(
        matches!(&err, Error::BadModule(m) if m.contains("does not export `run")),
        "{err}"
    );
}

#[test]
fn malformed_params_are_bad_params_and_nothing_runs() {
    let host = Host::new();
    let module = host.load("probe");
    let mut req = request(&json!({}), GRANT);
    req.params = "{\"ops\": [".into();
    let err = host.runtime.run(&module, req).unwrap_err();
    assert!(
        matches!(&err, Error::BadParams(m) if m.contains("JSON")),
        "{err}"
    );
    assert_eq!(err.exit_code(), 2);
}

#[test]
fn params_the_action_rejects_fail_the_run_with_its_message() {
    let host = Host::new();
    let report = host
        .run("probe", &json!({"ops": [{"op": "nope"}]}), GRANT)
        .unwrap();
    assert!(
        matches!(&report.status, RunStatus::Failed(m) if m.contains("invalid params")),
        "{}",
        report.status
    );
}

#[test]
fn malformed_grant_is_a_bad_grant_naming_the_field() {
    use hostaction_runtime::grant::{Grant, GrantDocument};
    for (doc, field) in [
        ("files: {write: [relative/dir]}", "files.write[0]"),
        ("files: {write: /opt}", "files.write"),
        ("filez: {}", "filez"),
        ("network: {kinds: [bridge, bogus]}", "network.kinds[1]"),
        ("files: [", "grant"),
    ] {
        let err = Grant::parse(doc, "grant").unwrap_err();
        assert!(
            matches!(&err, Error::BadGrant(m) if m.contains(field)),
            "{doc}: {err}"
        );
        assert_eq!(err.exit_code(), 2);
    }
}

#[test]
fn second_runtime_loads_precompiled_code_from_the_disk_cache() {
    let cache = tempfile::tempdir().unwrap();
    let config = RuntimeConfig {
        host_root: "/".into(),
        cache_dir: Some(cache.path().to_owned()),
        system_bus: None,
        ..RuntimeConfig::default()
    };
    let first = Runtime::new(config.clone()).unwrap();
    let compiled = first.load_file(&guest("probe")).unwrap();
    assert_eq!(compiled.source, LoadSource::Compiled);
    assert_eq!(
        first.load_file(&guest("probe")).unwrap().source,
        LoadSource::Memory
    );
    drop(first);
    let second = Runtime::new(config).unwrap();
    let cached = second.load_file(&guest("probe")).unwrap();
    assert_eq!(cached.source, LoadSource::DiskCache);
    assert_eq!(cached.digest, compiled.digest);
    let report = second
        .run(
            &cached,
            request(&probe(json!([{"op": "log", "message": "hi"}])), GRANT),
        )
        .unwrap();
    assert!(report.status.is_success(), "{}", report.status);
}

#[test]
fn the_report_gives_the_runs_linear_memory() {
    let host = Host::new();
    let module = host.load("probe");
    let small = host
        .runtime
        .run(&module, request(&probe(json!([])), GRANT))
        .unwrap();
    let grown = host
        .runtime
        .run(
            &module,
            request(&probe(json!([{"op": "alloc", "mib": 16}])), GRANT),
        )
        .unwrap();
    assert!(grown.status.is_success(), "{}", grown.status);
    assert!(small.memory_bytes > 0);
    assert!(
        grown.memory_bytes >= small.memory_bytes + (16 << 20),
        "{} after allocating 16 MiB, {} before",
        grown.memory_bytes,
        small.memory_bytes
    );
    assert!(grown.memory_bytes <= 64 << 20, "{}", grown.memory_bytes);
}

#[test]
fn more_concurrent_runs_than_instance_slots_wait_for_one_and_all_run() {
    // Every run spins to its deadline, so they all overlap: the ones past the
    // pool's slots wait for one instead of failing to instantiate.
    let host = Host::new();
    let module = host.load("probe");
    let runs = MAX_CONCURRENT_RUNS as usize + 8;
    let reports: Vec<_> = std::thread::scope(|scope| {
        let threads: Vec<_> = (0..runs)
            .map(|_| {
                scope.spawn(|| {
                    let mut spin = request(&probe(json!([{"op": "spin"}])), GRANT);
                    spin.limits.timeout = Duration::from_millis(300);
                    host.runtime.run(&module, spin).unwrap()
                })
            })
            .collect();
        threads.into_iter().map(|t| t.join().unwrap()).collect()
    });
    for report in &reports {
        assert!(
            matches!(report.status, RunStatus::DeadlineExceeded(_)),
            "{}",
            report.status
        );
    }
    assert_eq!(reports.len(), runs);
}

#[test]
fn probe_runs_with_only_log_when_it_calls_no_capability() {
    // The probe imports `files`; with an empty grant it is refused even though
    // these params would not touch a file: the imports are the declaration.
    let host = Host::new();
    let err = host.run("probe", &probe(json!([])), "{}").unwrap_err();
    assert!(matches!(err, Error::Refused(_)));
    let report = host.run("probe", &probe(json!([])), GRANT).unwrap();
    assert!(probe_results(&report).is_empty());
}

#[test]
fn locked_down_wasi_gives_no_environment_and_no_files() {
    // (Sockets are denied by the WASI context too; Debian's wasi-libc has no
    // socket functions to build a Rust probe for them.)
    let host = Host::new();
    host.write("/etc/hostname", "node-1\n");
    let report = host
        .run(
            "probe",
            &probe(json!([
                {"op": "env"},
                {"op": "wasi-read", "path": "/etc/hostname"},
                {"op": "wasi-read", "path": "etc/hostname"},
                {"op": "wasi-read", "path": "/work"},
            ])),
            GRANT,
        )
        .unwrap();
    let r = probe_results(&report);
    assert_eq!(r[0]["ok"], json!({"vars": 0, "args": 0}));
    for (i, result) in r[1..].iter().enumerate() {
        assert!(
            result.get("err").is_some(),
            "op {}: WASI allowed it: {result}",
            i + 1
        );
    }
}
