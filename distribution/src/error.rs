//! Errors of distribution: a registry transfer, the module store, the
//! registry configuration.

/// Result with distribution's [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Why a pull, a push or the module store failed.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A caller-given value is wrong (a payload name, a registry
    /// configuration, a CA file); the text names it.
    #[error("bad params: {0}")]
    BadParams(String),
    /// A fault of the host (the store's directory, a staging file).
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
            Error::BadParams(_) => "bad-params",
            Error::Host(_) => "host",
            Error::Registry { .. } => "registry",
        }
    }

    /// The `hostaction` CLI's exit code for this error (see the README).
    pub fn exit_code(&self) -> u8 {
        match self {
            Error::BadParams(_) => 2,
            Error::Host(_) => 4,
            Error::Registry { .. } => 5,
        }
    }
}
