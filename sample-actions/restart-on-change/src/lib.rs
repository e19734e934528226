//! Sample action: ensures a service's configuration file and restarts the
//! service only when the file changed, as a node's config-management step
//! does for containerd or kubelet.
//!
//! It imports `files` and `services` (and `log`): its grant names the one
//! directory it writes and the one unit it may restart. A second run with the
//! same params changes nothing and restarts nothing. See README.md.

use hostaction_sdk::services::{self, JobResult};
use hostaction_sdk::{Outcome, files, log};
use serde::Deserialize;

/// The action's params (JSON, camelCase).
#[derive(Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct Params {
    /// The configuration file (host-absolute).
    #[serde(default = "default_path")]
    path: String,
    /// Its contents, as UTF-8 text.
    contents: String,
    /// Its permission bits.
    #[serde(default = "default_mode")]
    mode: u32,
    /// The unit restarted when the file changed.
    #[serde(default = "default_unit")]
    unit: String,
    /// How long to wait for the restart, in milliseconds.
    #[serde(default = "default_timeout_ms")]
    timeout_ms: u32,
}

fn default_path() -> String {
    "/etc/containerd/config.toml".into()
}
fn default_mode() -> u32 {
    0o644
}
fn default_unit() -> String {
    "containerd.service".into()
}
fn default_timeout_ms() -> u32 {
    60_000
}

fn run(p: Params) -> Result<Outcome, String> {
    let Some((dir, _)) = p.path.rsplit_once('/').filter(|(_, name)| !name.is_empty()) else {
        return Err(format!("path {:?} does not name a file", p.path));
    };
    if !dir.is_empty() {
        files::ensure_dir(dir, 0o755).map_err(|e| format!("ensure dir {dir}: {e}"))?;
    }
    let written = files::ensure_file(&p.path, p.contents.as_bytes(), p.mode)
        .map_err(|e| format!("write {}: {e}", p.path))?;
    if !written && !restart_owed(&p)? {
        return Ok(Outcome::changed(false)
            .message(format!("{} unchanged; {} not restarted", p.path, p.unit))
            .fact("restarted", "false"));
    }
    log::info(&format!("{} changed; restarting {}", p.path, p.unit));
    let result =
        services::restart(&p.unit, p.timeout_ms).map_err(|e| format!("restart {}: {e}", p.unit))?;
    if result != JobResult::Done {
        return Err(format!(
            "{} was written, but the restart of {} ended with {result:?}",
            p.path, p.unit
        ));
    }
    Ok(Outcome::changed(true)
        .message(format!("{} written; {} restarted", p.path, p.unit))
        .fact("restarted", "true"))
}

/// Whether the unit still runs (or failed) with a start older than the file:
/// an earlier run wrote the file and its restart did not happen or failed.
/// A unit someone stopped is left stopped.
fn restart_owed(p: &Params) -> Result<bool, String> {
    let modified_ns = files::stat(&p.path)
        .map_err(|e| format!("stat {}: {e}", p.path))?
        .map_or(0, |s| s.modified_ns);
    let status = services::status(&p.unit).map_err(|e| format!("status of {}: {e}", p.unit))?;
    let started_ns = status.active_since_us.unwrap_or(0).saturating_mul(1000);
    let owed =
        matches!(status.active_state.as_str(), "active" | "failed") && started_ns < modified_ns;
    if owed {
        log::warn(&format!(
            "{} is {} since before {} was written: the restart is still owed",
            p.unit, status.active_state, p.path
        ));
    }
    Ok(owed)
}

hostaction_sdk::action!(run);
