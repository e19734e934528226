//! What every language's probe shows the runtime promises any guest,
//! whatever toolchain built it: one test per behaviour and language
//! (`languages::python::write_outside_grant_is_denied`), from one table. The
//! probes (`tests/actions/{c,python,js}-probe`) take the same ops; what only
//! one language's toolchain or sample shows stays in its own module (`c`,
//! `python`, `js`).

// Test code: a failed unwrap is a failed test, with its message.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use hostaction_runtime::RunStatus;
use hostaction_runtime::capabilities::log::Source;
use hostaction_runtime::engine::LoadSource;
use hostaction_tests::{Host, assert_probe_reads_its_payload, err_kind, probe_results, request};
use serde_json::{Value, json};

/// The grant every probe runs under: files, one directory.
const PROBE_GRANT: &str = "files: {write: [/opt/probe]}";

/// One language's probe.
struct Language {
    /// The probe component (`target/guests/NAME.wasm`).
    probe: &'static str,
    /// A scratch host for its runs (Python's compiles its components once
    /// first, so that tests starting together do not each compile them).
    host: fn() -> Host,
    /// The line an uncaught error writes to stderr.
    uncaught: &'static str,
    /// Whether that line is the last on stderr, and so leads the trap's
    /// message (the runtime's "last words").
    uncaught_leads_the_trap: bool,
}

/// C (clang, wasi-libc, the C SDK): abort() after the message on stderr.
fn c() -> Language {
    Language {
        probe: "c-probe",
        host: Host::new,
        uncaught: "boom 42",
        uncaught_leads_the_trap: true,
    }
}

/// Python (componentize-py): the traceback, ending with the exception.
fn python() -> Language {
    Language {
        probe: "python-probe",
        host: crate::python::host,
        uncaught: "RuntimeError: boom 42",
        uncaught_leads_the_trap: true,
    }
}

/// JavaScript (componentize-js): its export glue cannot carry a thrown Error
/// out (it traps with "expected a string, received [object]"); the probe
/// writes the uncaught exception to stderr before rethrowing it. It has no
/// `process` and no file API.
fn js() -> Language {
    Language {
        probe: "js-probe",
        host: Host::new,
        uncaught: "uncaught exception: Error: boom 42",
        // The glue's own stack follows it on stderr.
        uncaught_leads_the_trap: false,
    }
}

/// A test per behaviour and language: `every` for each language, then each
/// language's own extras. A behaviour missing for a language fails to compile.
macro_rules! conformance {
    (every: $every:tt, $($lang:ident: [$($extra:ident),* $(,)?]),* $(,)?) => {
        $( conformance!(@language $lang $every [$($extra),*]); )*
    };
    (@language $lang:ident [$($behaviour:ident),* $(,)?] [$($extra:ident),*]) => {
        mod $lang {
            $(
                #[test]
                fn $behaviour() {
                    super::$behaviour(&super::$lang());
                }
            )*
            $(
                #[test]
                fn $extra() {
                    super::$extra(&super::$lang());
                }
            )*
        }
    };
}

conformance! {
    every: [
        write_outside_grant_is_denied,
        uncaught_error_traps_with_the_error_in_the_log,
        fail_ends_the_run_failed_with_its_message,
        stdout_and_stderr_go_to_the_run_log,
        wasi_gives_no_environment_and_no_files,
        second_runtime_loads_the_probe_precompiled,
    ],
    // The C probe imports only what it uses: no payload.
    c: [],
    python: [payload_is_read_under_a_files_only_grant],
    js: [payload_is_read_under_a_files_only_grant],
}

fn ops(ops: Value) -> Value {
    json!({ "ops": ops })
}

/// A write outside the grant is `permission-denied`, names the path and
/// writes nothing; the error is a value, so the run goes on, and the same
/// call inside the grant writes.
fn write_outside_grant_is_denied(lang: &Language) {
    let host = (lang.host)();
    std::fs::create_dir_all(host.path("/opt/probe")).unwrap();
    let before = host.snapshot();
    let report = host
        .run(
            lang.probe,
            &ops(json!([
                {"op": "ensure-file", "path": "/etc/passwd", "contents": "pwned\n", "mode": 420},
            ])),
            PROBE_GRANT,
        )
        .unwrap();
    assert!(report.status.is_success(), "{report:#?}");
    let results = probe_results(&report);
    assert_eq!(
        err_kind(&results[0]),
        Some("permission-denied"),
        "{}",
        results[0]
    );
    assert!(
        results[0]["err"]["message"]
            .as_str()
            .unwrap()
            .contains("/etc/passwd"),
        "{}",
        results[0]
    );
    assert!(!report.changed());
    assert_eq!(host.snapshot(), before);

    let report = host
        .run(
            lang.probe,
            &ops(json!([
                {"op": "ensure-file", "path": "/etc/motd", "contents": "x", "mode": 420},
                {"op": "ensure-file", "path": "/opt/probe/a", "contents": "a\n", "mode": 420},
            ])),
            PROBE_GRANT,
        )
        .unwrap();
    assert!(report.status.is_success(), "{}", report.status);
    let results = probe_results(&report);
    assert_eq!(
        err_kind(&results[0]),
        Some("permission-denied"),
        "{}",
        results[0]
    );
    assert!(
        results[0]["err"]["message"]
            .as_str()
            .unwrap()
            .contains("/etc/motd"),
        "{}",
        results[0]
    );
    // The error did not stop the run.
    assert_eq!(results[1], json!({"ok": true}));
    let outcome = report.outcome.as_ref().unwrap();
    assert!(outcome.changed);
    assert_eq!(outcome.message, "ran 2 ops");
    assert!(!host.path("/etc/motd").exists());
    let after = host.snapshot();
    let added: Vec<_> = after.keys().filter(|p| !before.contains_key(*p)).collect();
    assert_eq!(added, [std::path::Path::new("opt/probe/a")]);
    assert_eq!(after.len(), before.len() + 1);
    assert_eq!(
        std::fs::read_to_string(host.path("/opt/probe/a")).unwrap(),
        "a\n"
    );
}

/// An uncaught error (an exception, abort()) is a trapped run, exit code 1,
/// with the error in the log (and leading the trap's message when it is the
/// last the guest wrote to stderr).
fn uncaught_error_traps_with_the_error_in_the_log(lang: &Language) {
    let host = (lang.host)();
    let report = host
        .run(
            lang.probe,
            &ops(json!([
                {"op": "print", "message": "before"},
                {"op": "throw", "message": "boom 42"},
            ])),
            PROBE_GRANT,
        )
        .unwrap();
    match &report.status {
        RunStatus::Trapped(m) => assert!(
            !lang.uncaught_leads_the_trap || m.starts_with(lang.uncaught),
            "{m}"
        ),
        other => panic!("expected a trap, got {other}"),
    }
    assert_eq!(report.status.exit_code(), 1);
    assert!(
        report
            .log
            .iter()
            .any(|l| l.message == lang.uncaught && l.source == Source::Stderr),
        "{:?}",
        report.log
    );
}

/// The action's own error is a failed run with its message, no outcome.
fn fail_ends_the_run_failed_with_its_message(lang: &Language) {
    let host = (lang.host)();
    let report = host
        .run(
            lang.probe,
            &ops(json!([
                {"op": "print", "message": "first"},
                {"op": "fail", "message": "no can do"},
            ])),
            PROBE_GRANT,
        )
        .unwrap();
    assert_eq!(report.status, RunStatus::Failed("no can do".into()));
    assert!(report.outcome.is_none());
}

/// Standard output and standard error are the run's log, in order, each
/// line with its source.
fn stdout_and_stderr_go_to_the_run_log(lang: &Language) {
    let host = (lang.host)();
    let report = host
        .run(
            lang.probe,
            &ops(json!([
                {"op": "print", "message": "to stdout"},
                {"op": "eprint", "message": "to stderr"},
            ])),
            PROBE_GRANT,
        )
        .unwrap();
    assert!(report.status.is_success(), "{report:#?}");
    let lines: Vec<_> = report
        .log
        .iter()
        .map(|l| (l.source, l.message.as_str()))
        .collect();
    assert_eq!(
        lines,
        [(Source::Stdout, "to stdout"), (Source::Stderr, "to stderr")]
    );
    assert_eq!(report.outcome.as_ref().unwrap().message, "ran 2 ops");
}

/// The locked-down WASI: no environment variables, at most the program's
/// name as arguments, and no preopened directory to open a path in.
fn wasi_gives_no_environment_and_no_files(lang: &Language) {
    let host = (lang.host)();
    host.write("/etc/hostname", "node-1\n");
    let report = host
        .run(
            lang.probe,
            &ops(json!([
                {"op": "env"},
                {"op": "wasi-read", "path": "/etc/hostname"},
                {"op": "wasi-read", "path": "etc/hostname"},
            ])),
            PROBE_GRANT,
        )
        .unwrap();
    let results = probe_results(&report);
    assert_eq!(results[0]["ok"]["vars"], 0, "{}", results[0]);
    assert!(
        results[0]["ok"]["args"].as_u64().unwrap() <= 1,
        "{}",
        results[0]
    );
    for result in &results[1..] {
        assert_eq!(err_kind(result), Some("io"), "WASI allowed it: {result}");
    }
}

/// A first runtime compiles the probe (or finds it compiled by an earlier
/// test of this process); a second one, as a new agent process would, reads
/// the precompiled code instead of compiling it, and runs it.
fn second_runtime_loads_the_probe_precompiled(lang: &Language) {
    (lang.host)().load(lang.probe);
    let host = (lang.host)();
    let module = host.load(lang.probe);
    assert_eq!(module.source, LoadSource::DiskCache);
    let report = host
        .runtime
        .run(&module, request(&ops(json!([])), PROBE_GRANT))
        .unwrap();
    assert_eq!(report.status, RunStatus::Succeeded, "{report:#?}");
}

/// `payload` is in every world the componentize tools import whole
/// (`files-action`), and always allowed: a files-only grant reads it.
fn payload_is_read_under_a_files_only_grant(lang: &Language) {
    assert_probe_reads_its_payload(&(lang.host)(), lang.probe, PROBE_GRANT);
}
