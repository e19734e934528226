//! OCI distribution: action modules travel as OCI artifacts and nodes run
//! them by digest only.
//!
//! - [`artifact`]: the layout (a Wasm OCI artifact whose extra titled layers
//!   are the action's payload files), checked field by field on pull;
//! - [`store`]: the node's content-addressed module store ([`disk`]: the
//!   trust rule of its directory, files replaced whole);
//! - [`payload`]: the files shipped with an action;
//! - [`resolve`]: tag → digest for the controller, which pulls nothing;
//! - [`Registry`]: push and pull over `oci-client`, with credentials
//!   ([`auth`]), a custom CA, bounded retries with backoff and per-request
//!   time-outs. A pull resolves a tag to a digest once, fetches the manifest
//!   by that digest, and streams each blob into staging while counting and
//!   hashing it: a blob larger than its cap is never fetched, one that is
//!   longer, shorter or other than its manifest says is refused, and nothing
//!   of a failed pull is kept. A whole pull has a deadline and each of its
//!   requests a minimum rate, so a registry that trickles bytes cannot hold
//!   a node (per-read time-outs alone let one byte every few seconds live
//!   for days).
//!
//! It links no wasmtime: the controller uses it to resolve tags, the node
//! agent and the CLI to pull and push.

pub mod artifact;
pub mod auth;
pub mod disk;
pub mod error;
mod fetch;
#[doc(hidden)]
pub mod fuzzing;
pub mod payload;
pub mod resolve;
pub mod signature;
pub mod store;
mod transfer;

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use oci_client::Reference;

pub use artifact::{MAX_MODULE_BYTES, SizeLimits};
pub use auth::Credentials;
pub use error::{Error, RegistryFault, Result};
pub use payload::{Payload, PayloadFile};
pub use resolve::PlainHttp;
pub use signature::{Policy, Provenance, SigningKey};
pub use store::{ModuleStore, StoredArtifact};

/// A pull on its own (`hostaction pull`, `inspect`): its default deadline.
pub const PULL_TIMEOUT: Duration = Duration::from_secs(600);
/// A pull for a run: its default deadline is this plus twice the run's
/// timeout.
pub const PULL_TIMEOUT_BASE: Duration = Duration::from_secs(60);

/// How to reach registries.
#[derive(Debug, Clone)]
pub struct RegistryOptions {
    /// Where credentials come from.
    pub credentials: Credentials,
    /// Speak plain HTTP, not HTTPS, to registries on loopback (`127.0.0.0/8`,
    /// `::1`, `localhost`).
    pub plain_http: bool,
    /// Further registries spoken to over plain HTTP: `HOST` (any port) or
    /// `HOST:PORT`. Every other one gets HTTPS.
    pub plain_http_registries: Vec<String>,
    /// A PEM file of CA certificates to trust besides the system's.
    pub ca_file: Option<PathBuf>,
    /// Attempts after the first, for failures that may pass (unreachable,
    /// time-outs, 5xx, 429, a cut transfer).
    pub retries: u32,
    /// The first step of the retries' back-off, doubled for each next one
    /// (up to 30 s); each wait is drawn between half and all of its step.
    pub backoff: Duration,
    /// Time-out to connect, and for each read of a response.
    pub timeout: Duration,
    /// Print transfer progress on stderr.
    pub progress: bool,
    /// The deadline of a whole pull (manifest, blobs, retries and their
    /// waits); `None`: [`RegistryOptions::pull_deadline`]'s default.
    pub pull_timeout: Option<Duration>,
    /// The least rate, in bytes per second averaged over `rate_window`, of
    /// each request of a pull (from when it is sent); a slower one is cut
    /// (and retried). 0: no floor.
    pub min_rate: u64,
    /// The window `min_rate` is averaged over.
    pub rate_window: Duration,
}

impl RegistryOptions {
    /// Which registries get plain HTTP.
    pub fn plain(&self) -> PlainHttp {
        PlainHttp {
            loopback: self.plain_http,
            registries: self.plain_http_registries.clone(),
        }
    }

    /// The deadline of a pull: `pull_timeout` when set; else, for a run
    /// with `run_timeout`, [`PULL_TIMEOUT_BASE`] plus twice that (so a
    /// run holds a node's run slot for a bounded multiple of its own
    /// timeout), and [`PULL_TIMEOUT`] for a pull on its own.
    pub fn pull_deadline(&self, run_timeout: Option<Duration>) -> Duration {
        self.pull_timeout.unwrap_or_else(|| match run_timeout {
            Some(t) => PULL_TIMEOUT_BASE.saturating_add(t.saturating_mul(2)),
            None => PULL_TIMEOUT,
        })
    }
}

impl Default for RegistryOptions {
    fn default() -> Self {
        Self {
            credentials: Credentials::default(),
            plain_http: false,
            plain_http_registries: Vec::new(),
            ca_file: None,
            retries: 3,
            backoff: Duration::from_millis(200),
            timeout: Duration::from_secs(30),
            progress: false,
            pull_timeout: None,
            min_rate: 10 << 10,
            rate_window: Duration::from_secs(30),
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
/// single-threaded tokio runtime. The HTTP clients (TLS roots and all) are
/// made on first use: a digest the store holds needs none.
pub struct Registry {
    /// `oci-client` over HTTPS, and over plain HTTP for the registries
    /// [`RegistryOptions::plain`] names.
    oci_tls: std::sync::OnceLock<oci_client::Client>,
    oci_plain: std::sync::OnceLock<oci_client::Client>,
    http: std::sync::OnceLock<reqwest::Client>,
    options: RegistryOptions,
    plain: PlainHttp,
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
            .map_err(|e| Error::io("registry client runtime", e))?;
        Ok(Self {
            oci_tls: std::sync::OnceLock::new(),
            oci_plain: std::sync::OnceLock::new(),
            http: std::sync::OnceLock::new(),
            plain: options.plain(),
            options,
            tokio,
        })
    }

    /// Whether `reference`'s registry is spoken to over plain HTTP.
    fn is_plain(&self, reference: &Reference) -> bool {
        self.plain.allows(reference.resolve_registry())
    }

    /// The `oci-client` for `reference`'s registry.
    fn oci(&self, reference: &Reference) -> Result<&oci_client::Client> {
        let plain = self.is_plain(reference);
        let cell = if plain {
            &self.oci_plain
        } else {
            &self.oci_tls
        };
        if let Some(client) = cell.get() {
            return Ok(client);
        }
        let client = transfer::client(&self.options, plain)?;
        Ok(cell.get_or_init(|| client))
    }

    fn puller<'a>(&'a self, reference: &'a Reference) -> Result<fetch::Puller<'a>> {
        let http = match self.http.get() {
            Some(http) => http,
            None => {
                let http = fetch::http_client(&self.options)?;
                self.http.get_or_init(|| http)
            }
        };
        Ok(fetch::Puller {
            http,
            options: &self.options,
            plain: self.is_plain(reference),
            reference,
        })
    }

    /// Pushes a component and its payload as an artifact to `reference`
    /// (a tag or a repository); returns its digest.
    pub fn push(&self, reference: &str, request: &PushRequest) -> Result<Pushed> {
        let reference = parse_reference(reference)?;
        self.tokio.block_on(transfer::push(
            self.oci(&reference)?,
            &self.options,
            &reference,
            request,
        ))
    }

    /// Resolves a reference to its manifest digest: fetches the manifest
    /// its tag or digest names and hashes it (within the deadline of a pull
    /// on its own).
    pub fn resolve(&self, reference: &str) -> Result<String> {
        self.resolve_within(reference, self.options.pull_deadline(None))
    }

    fn resolve_within(&self, reference: &str, deadline: Duration) -> Result<String> {
        let parsed = parse_reference(reference)?;
        let puller = self.puller(&parsed)?;
        let limit = SizeLimits::default().manifest_bytes;
        let manifest = within(deadline, reference, puller.manifest(limit));
        Ok(self.tokio.block_on(manifest)?.1)
    }

    /// Pulls an artifact into the store, within the deadline of a pull on
    /// its own; see [`Registry::pull_for_run`].
    pub fn pull(&self, reference: &str, store: &ModuleStore) -> Result<StoredArtifact> {
        self.pull_within(reference, store, self.options.pull_deadline(None))
    }

    /// Pulls an artifact into the store for a run with `run_timeout` (the
    /// pull's deadline is tied to it, see
    /// [`RegistryOptions::pull_deadline`]): by digest, resolving a tag once
    /// (the digest of the manifest the tag names). A digest the store holds
    /// is served from it without the registry.
    ///
    /// When `policy` requires a signature, the digest's signature is
    /// checked first (before any blob is fetched), and the artifact is
    /// returned only if it passes; a stored artifact's earlier verification
    /// by a key the policy accepts is taken from the store.
    pub fn pull_for_run(
        &self,
        reference: &str,
        store: &ModuleStore,
        run_timeout: Option<Duration>,
        policy: &Policy,
    ) -> Result<StoredArtifact> {
        let deadline = self.options.pull_deadline(run_timeout);
        if !policy.required() {
            return self.pull_within(reference, store, deadline);
        }
        if let Some(why) = policy.unsatisfiable() {
            return Err(Error::Untrusted(format!("{reference}: {why}")));
        }
        // One deadline for the tag's resolution, the signature and the pull.
        let until = std::time::Instant::now() + deadline;
        let left = || until.saturating_duration_since(std::time::Instant::now());
        let parsed = parse_reference(reference)?;
        let digest = match parsed.digest() {
            Some(digest) => digest.to_owned(),
            None => self.resolve_within(reference, left())?,
        };
        let provenance = match policy.accepts_any(&store.verified_by(&digest)) {
            Some(key) => Provenance::Verified { key: key.clone() },
            None => {
                let check = self.verify_signature(&parsed, &digest, policy);
                self.tokio.block_on(within(left(), reference, check))?
            }
        };
        let by_digest = format!("{}/{}@{digest}", parsed.registry(), parsed.repository());
        let mut artifact = self.pull_within(&by_digest, store, left())?;
        // Recorded once the artifact is in the store (collected with it).
        if let Provenance::Verified { key } = &provenance {
            store.record_verified(&digest, key)?;
        }
        artifact.provenance = provenance;
        Ok(artifact)
    }

    /// Checks the signatures of artifact `digest` in `reference`'s
    /// repository against `policy`: the first that passes gives the key;
    /// none passing, the error says why each failed.
    async fn verify_signature(
        &self,
        reference: &Reference,
        digest: &str,
        policy: &Policy,
    ) -> Result<Provenance> {
        use signature::cosign;
        let artifact = format!(
            "{}/{}@{digest}",
            reference.registry(),
            reference.repository()
        );
        let untrusted = |why: String| Error::Untrusted(format!("{artifact}: {why}"));
        let tag = cosign::signature_tag(digest)
            .ok_or_else(|| untrusted("only sha256 digests can be verified".into()))?;
        let signatures = Reference::with_tag(
            reference.registry().to_owned(),
            reference.repository().to_owned(),
            tag,
        );
        let puller = self.puller(&signatures)?;
        let manifest = match puller.manifest(cosign::MAX_SIGNATURE_MANIFEST_BYTES).await {
            Ok((manifest, _)) => manifest,
            Err(Error::Registry {
                kind: RegistryFault::NotFound,
                ..
            }) => {
                return Err(untrusted(format!(
                    "not signed: the registry has no signature for it ({signatures})"
                )));
            }
            Err(e) => {
                return Err(untrusted(format!(
                    "the registry cannot serve its signature ({signatures}): {e}"
                )));
            }
        };
        let layers = cosign::layers(&manifest).map_err(untrusted)?;
        if layers.is_empty() {
            return Err(untrusted(format!(
                "not signed: {signatures} holds no cosign signature"
            )));
        }
        let mut failed = Vec::new();
        for layer in layers {
            let Some(signature) = layer.signature else {
                failed.push("a signature layer without a base64 signature annotation".to_owned());
                continue;
            };
            if layer.size > cosign::MAX_PAYLOAD_BYTES {
                failed.push(format!(
                    "a payload of {} bytes (at most {})",
                    layer.size,
                    cosign::MAX_PAYLOAD_BYTES
                ));
                continue;
            }
            let payload = match puller.small_blob(&layer.digest, layer.size).await {
                Ok(payload) => payload,
                Err(e) => {
                    failed.push(format!("its payload cannot be fetched: {e}"));
                    continue;
                }
            };
            match policy.check(digest, &payload, &signature) {
                Ok(key) => {
                    return Ok(Provenance::Verified {
                        key: key.fingerprint().to_owned(),
                    });
                }
                Err(why) => failed.push(why),
            }
        }
        Err(untrusted(failed.join("; ")))
    }

    /// Signs the artifact `reference` names (by tag or digest) with `key`,
    /// as cosign does: the signature added to those under the digest's
    /// `.sig` tag in the same repository. Returns the digest signed and the
    /// signature manifest's reference.
    pub fn sign(&self, reference: &str, key: &SigningKey) -> Result<(String, String)> {
        use signature::cosign;
        let parsed = parse_reference(reference)?;
        let digest = match parsed.digest() {
            Some(digest) => digest.to_owned(),
            None => self.resolve(reference)?,
        };
        let repository = format!("{}/{}", parsed.registry(), parsed.repository());
        let payload =
            serde_json::to_vec(&cosign::Payload::new(&repository, &digest)).map_err(|source| {
                Error::Encode {
                    what: "signature payload",
                    source,
                }
            })?;
        let signature = key.sign(&payload).map_err(Error::Host)?;
        let tag = cosign::signature_tag(&digest).ok_or_else(|| {
            Error::BadParams(format!("{digest}: only sha256 digests can be signed"))
        })?;
        let target = Reference::with_tag(
            parsed.registry().to_owned(),
            parsed.repository().to_owned(),
            tag,
        );
        // The signatures there already stay (as cosign adds one).
        let puller = self.puller(&target)?;
        let fetched = self.tokio.block_on(within(
            self.options.pull_deadline(None),
            reference,
            puller.manifest(cosign::MAX_SIGNATURE_MANIFEST_BYTES),
        ));
        let existing = match fetched {
            Ok((manifest, _)) => Some(manifest),
            Err(Error::Registry {
                kind: RegistryFault::NotFound,
                ..
            }) => None,
            Err(e) => return Err(e),
        };
        let made = cosign::manifest(existing.as_deref(), &payload, &signature, key.public_key())
            .map_err(|why| Error::registry(RegistryFault::Protocol, format!("{target}: {why}")))?;
        if let Some((manifest, config)) = made {
            self.tokio.block_on(transfer::push_manifest(
                self.oci(&target)?,
                &self.options,
                &target,
                vec![("signature payload", payload), ("signature config", config)],
                manifest,
            ))?;
        }
        Ok((digest, target.to_string()))
    }

    fn pull_within(
        &self,
        reference: &str,
        store: &ModuleStore,
        deadline: Duration,
    ) -> Result<StoredArtifact> {
        let parsed = parse_reference(reference)?;
        if let Some(stored) = parsed.digest().map(|d| store.get(d)).transpose()?.flatten() {
            return Ok(stored);
        }
        let puller = self.puller(&parsed)?;
        // The manifest, then the blobs, all under one deadline: dropping
        // the pull at it drops its staging directory too.
        let pulled = async {
            let (manifest, digest) = puller.manifest(store.limits().manifest_bytes).await?;
            if store.get(&digest)?.is_some() {
                return Ok(digest);
            }
            let by_digest = parsed.clone_with_digest(digest.clone());
            let puller = self.puller(&by_digest)?;
            puller.pull(store, &manifest, &digest).await?;
            Ok(digest)
        };
        let digest = self.tokio.block_on(within(deadline, reference, pulled))?;
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

/// `pull`, or a registry error naming the deadline it missed.
async fn within<T>(
    deadline: Duration,
    reference: &str,
    pull: impl std::future::Future<Output = Result<T>>,
) -> Result<T> {
    tokio::time::timeout(deadline, pull).await.unwrap_or_else(|_| {
        Err(Error::registry(
            RegistryFault::Unavailable,
            format!(
                "pulling {reference}: not done within the pull deadline of {} s (--pull-timeout)",
                deadline.as_secs_f64()
            ),
        ))
    })
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
    fn a_pull_for_a_run_has_a_deadline_tied_to_the_run_s_timeout() {
        let options = RegistryOptions::default();
        let secs = Duration::from_secs;
        assert_eq!(options.pull_deadline(Some(secs(30))), secs(120));
        assert_eq!(options.pull_deadline(Some(secs(3600))), secs(7260));
        assert_eq!(options.pull_deadline(None), PULL_TIMEOUT);
        assert_eq!(options.pull_deadline(Some(Duration::MAX)), Duration::MAX);
        let set = RegistryOptions {
            pull_timeout: Some(secs(5)),
            ..RegistryOptions::default()
        };
        assert_eq!(set.pull_deadline(Some(secs(3600))), secs(5));
        assert_eq!(set.pull_deadline(None), secs(5));
    }

    #[test]
    fn malformed_references_and_digests_are_named() {
        let err = parse_reference("Registry.example/UPPER:tag").unwrap_err();
        assert!(err.to_string().contains("bad reference"), "{err}");
        let err = parse_reference("registry.example/a@sha256:abc").unwrap_err();
        assert!(err.to_string().contains("bad reference"), "{err}");
    }
}
