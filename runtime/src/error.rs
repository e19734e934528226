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
    /// Fetching or pushing an artifact failed; nothing of it was cached.
    #[error("registry: {kind}: {message}")]
    Registry {
        /// What kind of failure, for callers that act on it.
        kind: RegistryFault,
        /// What failed, naming the reference, blob or registry.
        message: String,
    },
}

/// How a registry transfer failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum RegistryFault {
    /// 401/403: no or wrong credentials.
    Unauthorized,
    /// 404: no such repository, tag, manifest or blob.
    NotFound,
    /// The registry could not be reached, timed out or answered 5xx/429,
    /// also after the retries.
    Unavailable,
    /// Content does not match its digest or declared size (tampered,
    /// truncated), or exceeds a size cap.
    Integrity,
    /// The artifact is not a hostaction module (layout, media types).
    BadArtifact,
    /// The reference itself is malformed, or names a tag where only a
    /// cached digest can be used.
    BadReference,
    /// Anything else the registry or the client reported.
    Protocol,
}

impl std::fmt::Display for RegistryFault {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            RegistryFault::Unauthorized => "unauthorized",
            RegistryFault::NotFound => "not found",
            RegistryFault::Unavailable => "unavailable",
            RegistryFault::Integrity => "integrity",
            RegistryFault::BadArtifact => "not a hostaction artifact",
            RegistryFault::BadReference => "bad reference",
            RegistryFault::Protocol => "protocol error",
        })
    }
}

impl Error {
    /// A registry error of `kind`.
    pub fn registry(kind: RegistryFault, message: impl Into<String>) -> Self {
        Error::Registry {
            kind,
            message: message.into(),
        }
    }

    /// A short stable label, for metrics and JSON output.
    pub fn label(&self) -> &'static str {
        match self {
            Error::BadModule(_) => "bad-module",
            Error::BadParams(_) => "bad-params",
            Error::BadGrant(_) => "bad-grant",
            Error::Refused(_) => "refused",
            Error::Usage(_) => "usage",
            Error::Host(_) => "host",
            Error::Registry { .. } => "registry",
        }
    }

    /// The `hostaction` CLI's exit code for this error (see the README).
    pub fn exit_code(&self) -> u8 {
        match self {
            Error::BadModule(_) | Error::BadParams(_) | Error::BadGrant(_) | Error::Usage(_) => 2,
            Error::Refused(_) => 3,
            Error::Host(_) => 4,
            Error::Registry { .. } => 5,
        }
    }
}
