//! Errors of the runtime itself, as opposed to an action's failure (which is a
//! [`crate::RunStatus`] in the report, not an error).
//!
//! A variant that wraps a cause keeps it as its `source()` (for callers that
//! act on it, e.g. an [`std::io::ErrorKind`]) and also shows its text: the CLI,
//! the logs and a run's status print one line, `what: cause`, as before.

/// Result with the runtime's [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Why the runtime could not run an action.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The module is not a hostaction component (not Wasm, a core module, a
    /// wrong export, an import hostaction does not provide, ...).
    #[error("bad module: {0}")]
    BadModule(String),
    /// The module file cannot be read.
    #[error("bad module: {}: {source}", .path.display())]
    ModuleFile {
        /// The module file.
        path: std::path::PathBuf,
        /// Why it could not be read.
        #[source]
        source: std::io::Error,
    },
    /// The params are not a JSON document.
    #[error("bad params: {0}")]
    BadParams(String),
    /// A caller-given input (a params file, the password on stdin) cannot be
    /// read.
    #[error("bad params: {what}: {source}")]
    Input {
        /// What was being read.
        what: String,
        /// Why it could not be read.
        #[source]
        source: std::io::Error,
    },
    /// A grant or node policy document is malformed; the text names the field.
    #[error("bad grant: {0}")]
    BadGrant(String),
    /// A grant or node policy file cannot be read.
    #[error("bad grant: {what}: {source}")]
    GrantFile {
        /// Which document, naming its file.
        what: String,
        /// Why it could not be read.
        #[source]
        source: std::io::Error,
    },
    /// The component imports capabilities the effective grant does not give.
    /// It was never instantiated.
    #[error("refused: the module imports {} the effective grant does not give: {}",
        if .0.len() == 1 { "a capability" } else { "capabilities" }, .0.join("; "))]
    Refused(Vec<String>),
    /// The command was used wrongly in a way the argument parser cannot see
    /// (a name `hostaction new` refuses, a directory that is not empty).
    #[error("{0}")]
    Usage(String),
    /// A fault of the host (cache directory, engine setup, host root).
    #[error("host error: {0}")]
    Host(String),
    /// An operation of the host failed (the host root, the cache directory,
    /// the compiler process, a thread).
    #[error("host error: {what}: {source}")]
    Io {
        /// What was being done, naming the path.
        what: String,
        /// The operating system's error.
        #[source]
        source: std::io::Error,
    },
    /// A JSON document between the host's own processes (the compiler
    /// process's argument and report) could not be written or read.
    #[error("host error: {what}: {source}")]
    Json {
        /// Which document.
        what: String,
        /// The encoder's or parser's error.
        #[source]
        source: serde_json::Error,
    },
    /// Fetching, pushing or storing an artifact failed.
    #[error(transparent)]
    Distribution(#[from] hostaction_distribution::Error),
}

impl Error {
    /// An operation of the host failed while doing `what`.
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
            Error::BadModule(_) | Error::ModuleFile { .. } => "bad-module",
            Error::BadParams(_) | Error::Input { .. } => "bad-params",
            Error::BadGrant(_) | Error::GrantFile { .. } => "bad-grant",
            Error::Refused(_) => "refused",
            Error::Usage(_) => "usage",
            Error::Host(_) | Error::Io { .. } | Error::Json { .. } => "host",
            Error::Distribution(e) => e.label(),
        }
    }

    /// The `hostaction` CLI's exit code for this error (see the README).
    pub fn exit_code(&self) -> u8 {
        match self {
            Error::BadModule(_)
            | Error::ModuleFile { .. }
            | Error::BadParams(_)
            | Error::Input { .. }
            | Error::BadGrant(_)
            | Error::GrantFile { .. }
            | Error::Usage(_) => 2,
            Error::Refused(_) => 3,
            Error::Host(_) | Error::Io { .. } | Error::Json { .. } => 4,
            Error::Distribution(e) => e.exit_code(),
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use crate::grant::{Grant, GrantDocument};
    use std::error::Error as _;

    #[test]
    fn an_unreadable_grant_file_is_a_bad_grant_keeping_its_io_cause() {
        let err =
            Grant::from_file(std::path::Path::new("/nonexistent/grant.yaml"), "grant").unwrap_err();
        assert_eq!((err.label(), err.exit_code()), ("bad-grant", 2));
        assert!(
            err.to_string()
                .starts_with("bad grant: grant /nonexistent/grant.yaml: "),
            "{err}"
        );
        let io = err.source().unwrap().downcast_ref::<std::io::Error>();
        assert_eq!(io.unwrap().kind(), std::io::ErrorKind::NotFound);
    }

    #[test]
    fn a_distribution_error_keeps_its_label_and_exit_code() {
        let err = Error::from(hostaction_distribution::Error::config(
            "CA file /x",
            std::io::Error::from(std::io::ErrorKind::NotFound),
        ));
        assert_eq!((err.label(), err.exit_code()), ("bad-config", 2));
        let err = Error::io("host root /x", std::io::ErrorKind::NotFound.into());
        assert_eq!((err.label(), err.exit_code()), ("host", 4));
        assert_eq!(
            err.to_string(),
            "host error: host root /x: entity not found"
        );
    }
}
