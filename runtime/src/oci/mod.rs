//! OCI distribution: action modules travel as OCI artifacts and nodes run
//! them by digest only.
//!
//! - [`artifact`]: the layout (a Wasm OCI artifact whose extra titled layers
//!   are the action's payload files), checked field by field on pull;
//! - [`store`]: the node's content-addressed module store;
//! - [`Registry`]: push and pull over `oci-client`, with credentials
//!   ([`auth`]), a custom CA, bounded retries with backoff and per-request
//!   time-outs. A pull resolves a tag to a digest once, fetches the manifest
//!   by that digest, and streams each blob into staging while counting and
//!   hashing it: a blob larger than its cap is never fetched, one that is
//!   longer, shorter or other than its manifest says is refused, and nothing
//!   of a failed pull is kept.

pub mod artifact;
pub mod auth;
mod fetch;
pub mod store;
mod transfer;

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use oci_client::Reference;

pub use artifact::SizeLimits;
pub use auth::Credentials;
pub use store::{ModuleStore, StoredArtifact};

use crate::error::{Error, RegistryFault, Result};

/// How to reach registries.
#[derive(Debug, Clone)]
pub struct RegistryOptions {
    /// Where credentials come from.
    pub credentials: Credentials,
    /// Speak plain HTTP, not HTTPS (a registry on loopback).
    pub plain_http: bool,
    /// A PEM file of CA certificates to trust besides the system's.
    pub ca_file: Option<PathBuf>,
    /// Attempts after the first, for failures that may pass (unreachable,
    /// time-outs, 5xx, 429, a cut transfer).
    pub retries: u32,
    /// Wait before the first retry; doubled for each next one.
    pub backoff: Duration,
    /// Time-out to connect, and for each read of a response.
    pub timeout: Duration,
    /// Print transfer progress on stderr.
    pub progress: bool,
}

impl Default for RegistryOptions {
    fn default() -> Self {
        Self {
            credentials: Credentials::default(),
            plain_http: false,
            ca_file: None,
            retries: 3,
            backoff: Duration::from_millis(200),
            timeout: Duration::from_secs(30),
            progress: false,
        }
    }
}

/// What to push.
#[derive(Debug, Clone, Default)]
pub struct PushRequest {
    /// The component's bytes.
    pub module: Vec<u8>,
    /// Its imports and exports, recorded in the artifact's config.
    pub imports: Vec<String>,
    /// The names it exports.
    pub exports: Vec<String>,
    /// Payload files: name and the file to read.
    pub payload: Vec<(String, PathBuf)>,
    /// Annotations of the manifest.
    pub annotations: BTreeMap<String, String>,
}

/// A pushed artifact.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Pushed {
    /// The reference pushed to, by digest (`registry/repo@sha256:...`).
    pub reference: String,
    /// The manifest digest.
    pub digest: String,
    /// The component's digest.
    pub module_digest: String,
}

/// A client of OCI registries. Calls block; each runs on the client's own
/// single-threaded tokio runtime. The HTTP client (TLS roots and all) is
/// made on first use: a digest the store holds needs none.
pub struct Registry {
    clients: std::sync::OnceLock<(oci_client::Client, reqwest::Client)>,
    options: RegistryOptions,
    tokio: tokio::runtime::Runtime,
}

/// Parses an OCI reference (`registry/repo:tag`, `registry/repo@sha256:...`).
pub fn parse_reference(reference: &str) -> Result<Reference> {
    let parsed: Reference = reference.parse().map_err(|e| {
        Error::registry(
            RegistryFault::BadReference,
            format!("{reference:?} is not an OCI reference (registry/repository:tag or @sha256:...): {e}"),
        )
    })?;
    if let Some(digest) = parsed.digest() {
        artifact::check_digest(digest).map_err(|why| {
            Error::registry(RegistryFault::BadReference, format!("{reference}: {why}"))
        })?;
    }
    Ok(parsed)
}

/// Whether `arg` names an OCI reference rather than a module file: it is
/// not an existing path, does not end in `.wasm`, and parses as a reference
/// whose first component is a registry host (has a `.` or `:`, or is
/// `localhost`).
pub fn is_reference(arg: &str) -> bool {
    if arg.ends_with(".wasm") || std::path::Path::new(arg).exists() {
        return false;
    }
    let Some((host, _)) = arg.split_once('/') else {
        return false;
    };
    (host.contains(['.', ':']) || host == "localhost") && arg.parse::<Reference>().is_ok()
}

impl Registry {
    /// A client with these options.
    pub fn new(options: RegistryOptions) -> Result<Self> {
        let tokio = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|e| Error::Host(format!("registry client runtime: {e}")))?;
        Ok(Self {
            clients: std::sync::OnceLock::new(),
            options,
            tokio,
        })
    }

    fn clients(&self) -> Result<&(oci_client::Client, reqwest::Client)> {
        if let Some(clients) = self.clients.get() {
            return Ok(clients);
        }
        let clients = (
            transfer::client(&self.options)?,
            fetch::http_client(&self.options)?,
        );
        Ok(self.clients.get_or_init(|| clients))
    }

    fn puller<'a>(&'a self, reference: &'a Reference) -> Result<fetch::Puller<'a>> {
        let (client, http) = self.clients()?;
        Ok(fetch::Puller {
            client,
            http,
            options: &self.options,
            reference,
        })
    }

    /// Pushes a component and its payload as an artifact to `reference`
    /// (a tag or a repository); returns its digest.
    pub fn push(&self, reference: &str, request: &PushRequest) -> Result<Pushed> {
        let reference = parse_reference(reference)?;
        self.tokio.block_on(transfer::push(
            &self.clients()?.0,
            &self.options,
            &reference,
            request,
        ))
    }

    /// Resolves a reference to its manifest digest: fetches the manifest
    /// its tag or digest names and hashes it.
    pub fn resolve(&self, reference: &str) -> Result<String> {
        let parsed = parse_reference(reference)?;
        let puller = self.puller(&parsed)?;
        let limit = SizeLimits::default().manifest_bytes;
        Ok(self.tokio.block_on(puller.manifest(limit))?.1)
    }

    /// Pulls an artifact into the store: by digest, resolving a tag once (the
    /// digest of the manifest the tag names). A digest the store holds is
    /// served from it without the registry.
    pub fn pull(&self, reference: &str, store: &ModuleStore) -> Result<StoredArtifact> {
        let parsed = parse_reference(reference)?;
        if let Some(stored) = parsed.digest().map(|d| store.get(d)).transpose()?.flatten() {
            return Ok(stored);
        }
        let puller = self.puller(&parsed)?;
        let (manifest, digest) = self
            .tokio
            .block_on(puller.manifest(store.limits().manifest_bytes))?;
        if let Some(stored) = store.get(&digest)? {
            return Ok(stored);
        }
        let by_digest = parsed.clone_with_digest(digest.clone());
        let puller = self.puller(&by_digest)?;
        self.tokio
            .block_on(puller.pull(store, &manifest, &digest))?;
        if let Err(e) = store.collect_if_over() {
            tracing::warn!(error = %e, "collecting the module store failed");
        }
        store.get(&digest)?.ok_or_else(|| {
            Error::Host(format!(
                "module store: {digest} was collected right after its pull; raise the store's bound"
            ))
        })
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn references_and_files_are_told_apart() {
        for reference in [
            "127.0.0.1:5000/actions/cni-install:v1",
            "registry.example/a/b@sha256:0000000000000000000000000000000000000000000000000000000000000000",
            "localhost/x:latest",
        ] {
            assert!(is_reference(reference), "{reference}");
        }
        for file in [
            "cni-install.wasm",
            "./x",
            "../x",
            "dir/x",
            "plain",
            "/nonexistent/x",
        ] {
            assert!(!is_reference(file), "{file}");
        }
    }

    #[test]
    fn malformed_references_and_digests_are_named() {
        let err = parse_reference("Registry.example/UPPER:tag").unwrap_err();
        assert!(err.to_string().contains("bad reference"), "{err}");
        let err = parse_reference("registry.example/a@sha256:abc").unwrap_err();
        assert!(err.to_string().contains("bad reference"), "{err}");
    }
}
