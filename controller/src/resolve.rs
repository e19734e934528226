//! Resolving a HostAction's module reference to a digest, once per
//! generation: nodes then run exactly that digest, whatever the tag does
//! later. The controller only asks the registry which manifest a tag names
//! (a HEAD request); each node's agent fetches and verifies the artifact.

use std::path::Path;
use std::str::FromStr;

use oci_client::client::{Certificate, CertificateEncoding, ClientConfig, ClientProtocol};
use oci_client::secrets::RegistryAuth;
use oci_client::{Client, Reference};

/// Resolves module references against their registries.
pub struct Resolver {
    client: Client,
}

impl Resolver {
    /// A resolver over HTTPS (system roots, plus `ca_file` when given), or
    /// over plain HTTP for every registry when `plain_http` (loopback
    /// registries in tests). Registries are asked anonymously.
    pub fn new(plain_http: bool, ca_file: Option<&Path>) -> Result<Self, String> {
        let extra_root_certificates = match ca_file {
            Some(path) => vec![Certificate {
                encoding: CertificateEncoding::Pem,
                data: std::fs::read(path)
                    .map_err(|e| format!("--ca-file {}: {e}", path.display()))?,
            }],
            None => Vec::new(),
        };
        Ok(Self {
            client: Client::new(ClientConfig {
                protocol: if plain_http {
                    ClientProtocol::Http
                } else {
                    ClientProtocol::Https
                },
                extra_root_certificates,
                ..ClientConfig::default()
            }),
        })
    }

    /// `module` pinned: `registry/repository@sha256:...`. A reference that
    /// already carries a digest is pinned as it is, without asking the
    /// registry.
    pub async fn resolve(&self, module: &str) -> Result<Pinned, String> {
        let reference = Reference::from_str(module)
            .map_err(|e| format!("module {module:?} is not an OCI reference: {e}"))?;
        let digest = match reference.digest() {
            Some(digest) => digest.to_owned(),
            None => self
                .client
                .fetch_manifest_digest(&reference, &RegistryAuth::Anonymous)
                .await
                .map_err(|e| format!("resolving {module}: {e}"))?,
        };
        pin(module, &digest)
    }
}

/// `module` pinned to `digest` (as resolved for an earlier reconcile of the
/// same generation).
pub fn pin(module: &str, digest: &str) -> Result<Pinned, String> {
    let reference = Reference::from_str(module)
        .map_err(|e| format!("module {module:?} is not an OCI reference: {e}"))?;
    if !is_sha256(digest) {
        return Err(format!(
            "module {module} resolved to {digest:?}, not a sha256 digest"
        ));
    }
    Ok(Pinned {
        reference: format!(
            "{}/{}@{digest}",
            reference.registry(),
            reference.repository()
        ),
        digest: digest.to_owned(),
    })
}

/// A module reference pinned to its manifest's digest.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Pinned {
    /// `registry/repository@sha256:...`, what runs carry.
    pub reference: String,
    /// `sha256:...`.
    pub digest: String,
}

fn is_sha256(digest: &str) -> bool {
    digest.strip_prefix("sha256:").is_some_and(|hex| {
        hex.len() == 64 && hex.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
    })
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[tokio::test]
    async fn a_digest_reference_is_pinned_without_a_registry() {
        let resolver = Resolver::new(true, None).unwrap();
        let digest = format!("sha256:{}", "ab".repeat(32));
        let pinned = resolver
            .resolve(&format!("127.0.0.1:1/actions/x:v1@{digest}"))
            .await
            .unwrap();
        assert_eq!(pinned.reference, format!("127.0.0.1:1/actions/x@{digest}"));
        assert_eq!(pinned.digest, digest);
    }

    #[tokio::test]
    async fn bad_references_are_named() {
        let resolver = Resolver::new(true, None).unwrap();
        let err = resolver.resolve("Not A Reference").await.unwrap_err();
        assert!(err.contains("\"Not A Reference\""), "{err}");
        let err = resolver.resolve("127.0.0.1:1/x:v1").await.unwrap_err();
        assert!(err.contains("resolving 127.0.0.1:1/x:v1"), "{err}");
    }
}
