//! {{name}}: a hostaction action. It ensures one file (and its directory)
//! holds the given contents, through the `files` capability, and says whether
//! it changed anything.

use hostaction_sdk::{Outcome, files, log};
use serde::Deserialize;

/// The params, read from the run's JSON params. Unknown fields are errors, so
/// a typo never goes unnoticed.
#[derive(Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct Params {
    /// The file to ensure: an absolute path beneath a granted directory.
    path: String,
    /// What the file must hold.
    contents: String,
}

fn run(params: Params) -> Result<Outcome, String> {
    if !params.path.starts_with('/') {
        return Err(format!("invalid params: path {:?} is not absolute", params.path));
    }
    log::info(&format!("ensuring {}", params.path));
    // The file's directory first (a no-op when it exists).
    let dir = params.path.rsplit_once('/').map_or("/", |(dir, _)| dir);
    let dir_changed = !dir.is_empty()
        && files::ensure_dir(dir, 0o755).map_err(|e| format!("creating {dir}: {e}"))?;
    let file_changed = files::ensure_file(&params.path, params.contents.as_bytes(), 0o644)
        .map_err(|e| format!("writing {}: {e}", params.path))?;
    let changed = dir_changed || file_changed;
    let message = if file_changed {
        format!("wrote {}", params.path)
    } else {
        format!("{} already up to date", params.path)
    };
    Ok(Outcome::changed(changed)
        .message(message)
        .fact("path", params.path))
}

hostaction_sdk::action!(run);
