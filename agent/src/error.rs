//! Errors of the node agent itself, as opposed to a run's failure (which is
//! the run's status, not an error).
//!
//! A variant that wraps a cause keeps it as its `source()` and also shows its
//! text: the CLI and the logs print one line, `what: cause`, as before.

use std::path::PathBuf;

/// Why the agent could not go on.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The runtime's error: a node policy, a module, the module store, a
    /// registry.
    #[error(transparent)]
    Runtime(#[from] hostaction_runtime::Error),
    /// The Kubernetes API could not be reached or refused a request.
    #[error("host error: kubernetes API: {0}")]
    Kube(#[from] kube::Error),
    /// Static mode's manifests directory cannot be read (a caller-given
    /// path, `--manifests`).
    #[error("bad params: manifests directory {}: {source}", .dir.display())]
    ManifestsDir {
        /// The directory.
        dir: PathBuf,
        /// Why it could not be read.
        #[source]
        source: std::io::Error,
    },
    /// A file of the agent's own (the run journal, static mode's state)
    /// cannot be written or read.
    #[error("host error: {what}: {source}")]
    Io {
        /// What was being done, naming the path.
        what: String,
        /// The operating system's error.
        #[source]
        source: std::io::Error,
    },
    /// Static mode's state could not be encoded.
    #[error("host error: {0}")]
    State(#[source] serde_json::Error),
}

impl Error {
    /// A file operation of the agent's failed while doing `what`.
    pub fn io(what: impl Into<String>, source: std::io::Error) -> Self {
        Error::Io {
            what: what.into(),
            source,
        }
    }

    /// A short stable label, for metrics and JSON output (the README lists
    /// them: they are a public interface).
    pub fn label(&self) -> &'static str {
        match self {
            Error::Runtime(e) => e.label(),
            Error::Kube(_) => "kube",
            Error::ManifestsDir { .. } => "bad-params",
            Error::Io { .. } | Error::State(_) => "host",
        }
    }

    /// The `hostaction` CLI's exit code for this error (see the README).
    pub fn exit_code(&self) -> u8 {
        match self {
            Error::Runtime(e) => e.exit_code(),
            Error::ManifestsDir { .. } => 2,
            Error::Kube(_) | Error::Io { .. } | Error::State(_) => 4,
        }
    }
}

impl From<hostaction_distribution::Error> for Error {
    fn from(e: hostaction_distribution::Error) -> Self {
        Error::Runtime(e.into())
    }
}
