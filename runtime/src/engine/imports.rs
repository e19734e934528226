//! What a component imports, and what provides each import: a component's
//! imports are its declared capabilities.

use serde::Serialize;
use wasmtime::Engine;
use wasmtime::component::Component;

use crate::grant::Capability;

/// WASI 0.2 packages the locked-down WASI context provides (sockets are linked
/// but every address and lookup is denied).
const WASI_PACKAGES: &[&str] = &["cli", "io", "clocks", "random", "filesystem", "sockets"];

/// One import of a component.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Import {
    /// The full name, e.g. `hostaction:host/files@0.1.0`.
    pub name: String,
    /// What provides it.
    pub provided: Provided,
}

/// What provides an import.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case", tag = "by", content = "detail")]
pub enum Provided {
    /// Harmless, always allowed (`types`, `log`).
    Always,
    /// The locked-down WASI context.
    LockedDownWasi,
    /// A capability, given only by the grant.
    Capability(Capability),
    /// Nothing: hostaction does not provide this import (with why).
    No(String),
}

/// Classifies every import of `component`.
pub fn classify(engine: &Engine, component: &Component) -> Vec<Import> {
    component
        .component_type()
        .imports(engine)
        .map(|(name, _)| Import {
            name: name.to_owned(),
            provided: provided_by(name),
        })
        .collect()
}

fn provided_by(name: &str) -> Provided {
    let (package, interface) = name.split_once('/').unwrap_or((name, ""));
    let interface = interface.split('@').next().unwrap_or_default();
    let version = name.split_once('@').map(|(_, v)| v).unwrap_or_default();
    match package {
        "hostaction:host" if !version.starts_with("0.1.") => Provided::No(format!(
            "this runtime implements hostaction:host@0.1.x, not {version:?}"
        )),
        "hostaction:host" => match interface {
            "types" | "log" | "payload" => Provided::Always,
            "files" => Provided::Capability(Capability::Files),
            "network" => Provided::Capability(Capability::Network),
            "services" => Provided::Capability(Capability::Services),
            other => Provided::No(format!("no capability named `{other}`")),
        },
        _ => match package.strip_prefix("wasi:") {
            Some(p) if WASI_PACKAGES.contains(&p) && version.starts_with("0.2.") => {
                Provided::LockedDownWasi
            }
            _ => Provided::No(
                "hostaction provides its own capabilities and WASI 0.2 cli, io, clocks, random, \
                 filesystem (no preopens) and sockets (denied)"
                    .into(),
            ),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn imports_are_classified_by_package_interface_and_version() {
        assert_eq!(provided_by("hostaction:host/log@0.1.0"), Provided::Always);
        assert_eq!(
            provided_by("hostaction:host/files@0.1.0"),
            Provided::Capability(Capability::Files)
        );
        assert_eq!(
            provided_by("wasi:cli/stdout@0.2.6"),
            Provided::LockedDownWasi
        );
        assert!(matches!(
            provided_by("wasi:http/types@0.2.6"),
            Provided::No(_)
        ));
        assert!(matches!(
            provided_by("hostaction:host/files@0.2.0"),
            Provided::No(_)
        ));
        assert!(matches!(
            provided_by("hostaction:host/sysctl@0.1.0"),
            Provided::No(_)
        ));
    }
}
