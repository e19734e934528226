//! Host-absolute paths as an action names them, checked before any syscall.

use std::fmt;

/// Longest path an action may pass (Linux's `PATH_MAX`).
pub const MAX_PATH_BYTES: usize = 4096;
/// Longest single path component (Linux's `NAME_MAX`).
pub const MAX_NAME_BYTES: usize = 255;

/// A normalized host-absolute path: `/`-separated components, none empty, `.`
/// or `..`. Parsing is a lexical check of hostile input; containment is
/// enforced by the kernel when the path is opened beneath its granted
/// directory, never by comparing strings.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct HostPath {
    parts: Vec<String>,
}

/// Why a path was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PathError {
    /// Not starting with `/`.
    #[error("path {0:?} is not absolute")]
    NotAbsolute(String),
    /// Contains a NUL byte.
    #[error("path contains a NUL byte")]
    Nul,
    /// Longer than [`MAX_PATH_BYTES`].
    #[error("path is {0} bytes long; the limit is {MAX_PATH_BYTES}")]
    TooLong(usize),
    /// A component longer than [`MAX_NAME_BYTES`].
    #[error("a path component is {0} bytes long; the limit is {MAX_NAME_BYTES}")]
    NameTooLong(usize),
    /// Contains `.` or `..`.
    #[error("path {0:?} contains a `.` or `..` component")]
    DotComponent(String),
}

impl HostPath {
    /// Parses and normalizes `path` (repeated and trailing slashes are folded).
    pub fn parse(path: &str) -> Result<Self, PathError> {
        if path.len() > MAX_PATH_BYTES {
            return Err(PathError::TooLong(path.len()));
        }
        if path.contains('\0') {
            return Err(PathError::Nul);
        }
        if !path.starts_with('/') {
            return Err(PathError::NotAbsolute(path.to_owned()));
        }
        let mut parts = Vec::new();
        for part in path.split('/').filter(|p| !p.is_empty()) {
            if part == "." || part == ".." {
                return Err(PathError::DotComponent(path.to_owned()));
            }
            if part.len() > MAX_NAME_BYTES {
                return Err(PathError::NameTooLong(part.len()));
            }
            parts.push(part.to_owned());
        }
        Ok(Self { parts })
    }

    /// `/`.
    pub fn root() -> Self {
        Self { parts: Vec::new() }
    }

    /// Whether `base` is this path or one of its ancestors, component-wise.
    pub fn starts_with(&self, base: &HostPath) -> bool {
        self.parts.starts_with(&base.parts)
    }

    /// The components below `base` (which must be an ancestor), joined with `/`;
    /// `.` when the two are equal.
    pub fn relative_to(&self, base: &HostPath) -> String {
        match self.parts.get(base.parts.len()..) {
            Some(rest) if !rest.is_empty() => rest.join("/"),
            _ => ".".to_owned(),
        }
    }

    /// The path's components.
    pub fn components(&self) -> &[String] {
        &self.parts
    }

    /// The ancestor made of the first `depth` components (the path itself
    /// when `depth` is its length or more).
    pub fn ancestor(&self, depth: usize) -> HostPath {
        HostPath {
            parts: self.parts[..depth.min(self.parts.len())].to_vec(),
        }
    }

    /// The parent path, or none for `/`.
    pub fn parent(&self) -> Option<HostPath> {
        let (_, init) = self.parts.split_last()?;
        Some(HostPath {
            parts: init.to_vec(),
        })
    }

    /// The last component, or none for `/`.
    pub fn file_name(&self) -> Option<&str> {
        self.parts.last().map(String::as_str)
    }
}

impl fmt::Display for HostPath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.parts.is_empty() {
            return f.write_str("/");
        }
        for part in &self.parts {
            write!(f, "/{part}")?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parse_folds_slashes_and_refuses_dots_nul_and_relative_paths() {
        assert_eq!(
            HostPath::parse("//opt/cni//bin/").unwrap().to_string(),
            "/opt/cni/bin"
        );
        assert_eq!(HostPath::parse("/").unwrap().to_string(), "/");
        assert!(matches!(
            HostPath::parse("/opt/../etc"),
            Err(PathError::DotComponent(_))
        ));
        assert!(matches!(
            HostPath::parse("/opt/./x"),
            Err(PathError::DotComponent(_))
        ));
        assert!(matches!(HostPath::parse("/opt/a\0b"), Err(PathError::Nul)));
        assert!(matches!(
            HostPath::parse("opt"),
            Err(PathError::NotAbsolute(_))
        ));
        let long = format!("/{}", "a".repeat(MAX_PATH_BYTES));
        assert!(matches!(HostPath::parse(&long), Err(PathError::TooLong(_))));
        let long_name = format!("/{}", "a".repeat(MAX_NAME_BYTES + 1));
        assert!(matches!(
            HostPath::parse(&long_name),
            Err(PathError::NameTooLong(_))
        ));
    }

    #[test]
    fn starts_with_compares_components_not_strings() {
        let bin = HostPath::parse("/opt/cni/bin").unwrap();
        assert!(HostPath::parse("/opt/cni/bin/x").unwrap().starts_with(&bin));
        assert!(
            !HostPath::parse("/opt/cni/binary")
                .unwrap()
                .starts_with(&bin)
        );
        assert_eq!(
            HostPath::parse("/opt/cni/bin/a/b")
                .unwrap()
                .relative_to(&bin),
            "a/b"
        );
        assert_eq!(bin.relative_to(&bin), ".");
    }
}
