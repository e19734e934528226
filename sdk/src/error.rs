//! The error every capability call can return.

use core::fmt;

/// Why a host call failed: the WIT `hostaction:host/types.error` variant.
///
/// Expected failures are values, not traps, so an action can decide what a
/// missing grant or a missing file means for it. Each case carries the host's
/// message. The bindings are generated with this type in place of their own so
/// that it prints readably (`permission denied: files write /etc`) rather than
/// as `Debug`.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum Error {
    /// The effective grant does not cover this call. The text names the
    /// capability and the scope that is missing.
    PermissionDenied(String),
    /// The guest passed a value the host refuses before touching anything
    /// (a malformed path, an over-long name, an out-of-range number).
    InvalidArgument(String),
    /// The object the call names does not exist.
    NotFound(String),
    /// The object exists in a shape the call will not silently replace
    /// (a directory where a file was asked for, a link of another kind).
    Conflict(String),
    /// The host cannot do this (a kernel without the feature, say).
    Unsupported(String),
    /// The call did not finish before the run's deadline or its own timeout.
    Timeout(String),
    /// Any other failure of the host, with the system's message.
    Io(String),
}

impl Error {
    /// The case's WIT name (`"permission-denied"`, `"invalid-argument"`,
    /// `"not-found"`, `"conflict"`, `"unsupported"`, `"timeout"`, `"io"`), for
    /// facts and messages that machines read.
    pub fn kind(&self) -> &'static str {
        match self {
            Error::PermissionDenied(_) => "permission-denied",
            Error::InvalidArgument(_) => "invalid-argument",
            Error::NotFound(_) => "not-found",
            Error::Conflict(_) => "conflict",
            Error::Unsupported(_) => "unsupported",
            Error::Timeout(_) => "timeout",
            Error::Io(_) => "io",
        }
    }

    /// The host's message, without the kind.
    pub fn message(&self) -> &str {
        match self {
            Error::PermissionDenied(m)
            | Error::InvalidArgument(m)
            | Error::NotFound(m)
            | Error::Conflict(m)
            | Error::Unsupported(m)
            | Error::Timeout(m)
            | Error::Io(m) => m,
        }
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let kind = match self {
            Error::PermissionDenied(_) => "permission denied",
            Error::InvalidArgument(_) => "invalid argument",
            Error::NotFound(_) => "not found",
            Error::Conflict(_) => "conflict",
            Error::Unsupported(_) => "unsupported",
            Error::Timeout(_) => "timeout",
            Error::Io(_) => "io error",
        };
        write!(f, "{kind}: {}", self.message())
    }
}

impl std::error::Error for Error {}

#[cfg(test)]
mod tests {
    use super::Error;

    #[test]
    fn kind_and_display_name_the_case() {
        let e = Error::PermissionDenied("files write /etc".into());
        assert_eq!(e.kind(), "permission-denied");
        assert_eq!(e.to_string(), "permission denied: files write /etc");
        assert_eq!(Error::Io("boom".into()).to_string(), "io error: boom");
        assert_eq!(Error::NotFound("x".into()).kind(), "not-found");
    }
}
