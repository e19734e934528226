//! Errors of the runtime itself, as opposed to an action's failure (which is a
//! [`crate::RunStatus`] in the report, not an error).

/// Result with the runtime's [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Why the runtime could not run an action.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The module is not a hostaction component (not Wasm, a core module, a
    /// wrong export, an import hostaction does not provide, ...).
    #[error("bad module: {0}")]
    BadModule(String),
    /// The params are not a JSON document.
    #[error("bad params: {0}")]
    BadParams(String),
    /// A grant or node policy document is malformed; the text names the field.
    #[error("bad grant: {0}")]
    BadGrant(String),
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
    /// Fetching, pushing or storing an artifact failed.
    #[error(transparent)]
    Distribution(#[from] hostaction_distribution::Error),
}

impl Error {
    /// A short stable label, for metrics and JSON output.
    pub fn label(&self) -> &'static str {
        match self {
            Error::BadModule(_) => "bad-module",
            Error::BadParams(_) => "bad-params",
            Error::BadGrant(_) => "bad-grant",
            Error::Refused(_) => "refused",
            Error::Usage(_) => "usage",
            Error::Host(_) => "host",
            Error::Distribution(e) => e.label(),
        }
    }

    /// The `hostaction` CLI's exit code for this error (see the README).
    pub fn exit_code(&self) -> u8 {
        match self {
            Error::BadModule(_) | Error::BadParams(_) | Error::BadGrant(_) | Error::Usage(_) => 2,
            Error::Refused(_) => 3,
            Error::Host(_) => 4,
            Error::Distribution(e) => e.exit_code(),
        }
    }
}
