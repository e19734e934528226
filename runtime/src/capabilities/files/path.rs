//! Host-absolute paths as an action names them, checked before any syscall.

use std::fmt;

/// Longest path an action may pass (Linux's `PATH_MAX`), longest single
/// path component (Linux's `NAME_MAX`), and why a path is refused: the
/// lexical rules of paths live beside the grant document's
/// ([`hostaction_grant::path_components`]), so a granted directory and
/// a path an action names are judged alike.
pub use hostaction_grant::{NAME_BYTES as MAX_NAME_BYTES, PATH_BYTES as MAX_PATH_BYTES, PathError};

/// A normalized host-absolute path: `/`-separated components, none empty, `.`
/// or `..`. Parsing is a lexical check of hostile input; containment is
/// enforced by the kernel when the path is opened beneath its granted
/// directory, never by comparing strings.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct HostPath {
    parts: Vec<String>,
}

impl HostPath {
    /// Parses and normalizes `path` (repeated and trailing slashes are folded).
    pub fn parse(path: &str) -> Result<Self, PathError> {
        let parts = hostaction_grant::path_components(path)?
            .into_iter()
            .map(str::to_owned)
            .collect();
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
