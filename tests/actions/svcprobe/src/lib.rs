//! A test action for the `services` capability: runs the calls its params
//! list and reports the result of each, so the end-to-end tests can drive every
//! call against a real systemd. It imports `services` (and `log`) only.
//!
//! Params: `{"ops": [{"op": "restart", "unit": "x.service", "timeout_ms":
//! 5000}, {"op": "status", "unit": "x.service"}, {"op": "daemon-reload"}]}`.
//! Fact `"<index>"` holds `{"ok": value}` or `{"err": {"kind": "...",
//! "message": "..."}}`.

use hostaction_sdk::services::{self, JobResult};
use hostaction_sdk::{Error, Outcome};
use serde::Deserialize;
use serde_json::{Value, json};

/// The probe's params.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Params {
    /// The operations, run in order.
    #[serde(default)]
    ops: Vec<Op>,
}

/// One call of the `services` interface, tagged by `"op"`.
#[derive(Deserialize)]
#[serde(tag = "op", rename_all = "kebab-case", deny_unknown_fields)]
enum Op {
    Restart { unit: String, timeout_ms: u32 },
    Start { unit: String, timeout_ms: u32 },
    Stop { unit: String, timeout_ms: u32 },
    Reload { unit: String, timeout_ms: u32 },
    TryRestart { unit: String, timeout_ms: u32 },
    Status { unit: String },
    DaemonReload,
}

fn run(params: Params) -> Result<Outcome, String> {
    let mut changed = false;
    let mut facts = Vec::with_capacity(params.ops.len());
    for (index, op) in params.ops.into_iter().enumerate() {
        let job = !matches!(op, Op::Status { .. });
        let result = run_op(op);
        changed |= job && result.is_ok();
        let fact = match result {
            Ok(value) => json!({ "ok": value }),
            Err(e) => json!({ "err": { "kind": e.kind(), "message": e.message() } }),
        };
        facts.push((index.to_string(), fact.to_string()));
    }
    let count = facts.len();
    let outcome = facts
        .into_iter()
        .fold(Outcome::changed(changed), |o, (k, v)| o.fact(k, v));
    Ok(outcome.message(format!("ran {count} ops")))
}

fn run_op(op: Op) -> Result<Value, Error> {
    let job = |r: JobResult| Value::from(job_name(r));
    Ok(match op {
        Op::Restart { unit, timeout_ms } => job(services::restart(&unit, timeout_ms)?),
        Op::Start { unit, timeout_ms } => job(services::start(&unit, timeout_ms)?),
        Op::Stop { unit, timeout_ms } => job(services::stop(&unit, timeout_ms)?),
        Op::Reload { unit, timeout_ms } => job(services::reload(&unit, timeout_ms)?),
        Op::TryRestart { unit, timeout_ms } => job(services::try_restart(&unit, timeout_ms)?),
        Op::Status { unit } => {
            let s = services::status(&unit)?;
            json!({
                "name": s.name, "active": s.active_state, "sub": s.sub_state,
                "main_pid": s.main_pid, "since_us": s.active_since_us,
            })
        }
        Op::DaemonReload => {
            services::daemon_reload()?;
            Value::Null
        }
    })
}

/// The WIT name of a job result.
fn job_name(r: JobResult) -> &'static str {
    match r {
        JobResult::Done => "done",
        JobResult::Failed => "failed",
        JobResult::Timeout => "timeout",
        JobResult::Canceled => "canceled",
        JobResult::Dependency => "dependency",
        JobResult::Skipped => "skipped",
        JobResult::Invalid => "invalid",
        JobResult::Assert => "assert",
        JobResult::Unsupported => "unsupported",
        JobResult::Collected => "collected",
        JobResult::Once => "once",
        JobResult::Frozen => "frozen",
    }
}

hostaction_sdk::action!(run);
