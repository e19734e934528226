//! Errors of distribution: a registry transfer, the module store, the
//! registry configuration.
//!
//! A variant that wraps a cause keeps it as its `source()` (for callers that
//! act on it, e.g. an [`std::io::ErrorKind`]) and also shows its text: the CLI,
//! the logs and a run's status print one line, `what: cause`, as before.

/// Result with distribution's [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Why a pull, a push or the module store failed.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A caller-given value is wrong (a payload name, a registry
    /// configuration, a CA file); the text names it.
    #[error("bad params: {0}")]
    BadParams(String),
    /// A caller-given file (a payload file) cannot be read.
    #[error("bad params: {what}: {source}")]
    Input {
        /// What was being read, naming the file.
        what: String,
        /// Why it could not be read.
        #[source]
        source: std::io::Error,
    },
    /// The registry configuration cannot be used: a CA file (`--ca-file`), a
    /// registry config file (`--registry-config`), the client built from them.
    #[error("bad params: {what}: {}", crate::resolve::describe(.source.as_ref()))]
    Config {
        /// Which configuration, naming its file.
        what: String,
        /// Why it cannot be used.
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    /// A fault of the host (the store's directory, a staging file).
    #[error("host error: {0}")]
    Host(String),
    /// A file operation of the host failed (the store's directory, a staging
    /// file, the client's runtime).
    #[error("host error: {what}: {source}")]
    Io {
        /// What was being done, naming the path.
        what: String,
        /// The operating system's error.
        #[source]
        source: std::io::Error,
    },
    /// Encoding a document the host builds (an artifact's config or
    /// manifest) failed.
    #[error("host error: encoding the {what}: {source}")]
    Encode {
        /// Which document.
        what: &'static str,
        /// The encoder's error.
        #[source]
        source: serde_json::Error,
    },
    /// The policy requires a signature the artifact does not carry: the
    /// message names the check that failed. Nothing was run or stored.
    #[error("untrusted module: {0}")]
    Untrusted(String),
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

    /// A file operation of the host failed while doing `what`.
    pub fn io(what: impl Into<String>, source: std::io::Error) -> Self {
        Error::Io {
            what: what.into(),
            source,
        }
    }

    /// The registry configuration `what` (naming its file) cannot be used.
    pub fn config(
        what: impl Into<String>,
        source: impl Into<Box<dyn std::error::Error + Send + Sync>>,
    ) -> Self {
        Error::Config {
            what: what.into(),
            source: source.into(),
        }
    }

    /// A short stable label, for metrics and JSON output (the README lists
    /// them: they are a public interface).
    pub fn label(&self) -> &'static str {
        match self {
            Error::BadParams(_) | Error::Input { .. } => "bad-params",
            Error::Config { .. } => "bad-config",
            Error::Host(_) | Error::Io { .. } | Error::Encode { .. } => "host",
            Error::Registry { .. } => "registry",
            Error::Untrusted(_) => "untrusted",
        }
    }

    /// The `hostaction` CLI's exit code for this error (see the README).
    pub fn exit_code(&self) -> u8 {
        match self {
            Error::BadParams(_) | Error::Input { .. } | Error::Config { .. } => 2,
            Error::Host(_) | Error::Io { .. } | Error::Encode { .. } => 4,
            Error::Registry { .. } | Error::Untrusted(_) => 5,
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use std::error::Error as _;

    #[test]
    fn an_unreadable_ca_file_is_bad_config_keeping_its_io_cause() {
        let options = crate::RegistryOptions {
            ca_file: Some("/nonexistent/ca.pem".into()),
            ..crate::RegistryOptions::default()
        };
        let err = crate::fetch::http_client(&options).unwrap_err();
        assert_eq!((err.label(), err.exit_code()), ("bad-config", 2));
        assert!(
            err.to_string()
                .starts_with("bad params: CA file /nonexistent/ca.pem: "),
            "{err}"
        );
        let io = err.source().unwrap().downcast_ref::<std::io::Error>();
        assert_eq!(io.unwrap().kind(), std::io::ErrorKind::NotFound);
        let err = crate::transfer::client(&options, false).err().unwrap();
        assert_eq!((err.label(), err.exit_code()), ("bad-config", 2));
    }

    #[test]
    fn an_unreadable_registry_config_is_bad_config() {
        let credentials = crate::Credentials::DockerConfigFile("/nonexistent/config.json".into());
        let err = credentials.resolve("reg.example").unwrap_err();
        assert_eq!((err.label(), err.exit_code()), ("bad-config", 2));
        assert!(
            err.to_string()
                .starts_with("bad params: registry config /nonexistent/config.json: "),
            "{err}"
        );
    }

    #[test]
    fn a_store_fault_is_a_host_error_keeping_its_io_cause() {
        let file = tempfile::NamedTempFile::new().unwrap();
        // A file where the store's directory should be.
        let err = crate::ModuleStore::open(file.path(), None, 1 << 20).unwrap_err();
        assert_eq!((err.label(), err.exit_code()), ("host", 4));
        assert!(
            err.to_string()
                .starts_with("host error: module store: creating "),
            "{err}"
        );
        assert!(err.source().unwrap().is::<std::io::Error>(), "{err:?}");
    }
}
