//! The transfers: `oci-client` calls wrapped in bounded retries, blobs
//! streamed into staging while counted and hashed, and every failure mapped
//! onto a [`RegistryFault`] that names what failed.

use std::future::Future;
use std::io::{IsTerminal, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::time::{Duration, Instant};

use futures_util::StreamExt;
use oci_client::client::{Certificate, CertificateEncoding, ClientConfig, ClientProtocol};
use oci_client::errors::{OciDistributionError, OciErrorCode};
use oci_client::manifest::{OCI_IMAGE_MEDIA_TYPE, OciDescriptor};
use oci_client::secrets::RegistryAuth;
use oci_client::{Client, Reference, RegistryOperation};
use sha2::{Digest, Sha256};

use super::artifact::{self, Blob, Layout, sha256};
use super::store::{ModuleStore, Staging};
use super::{PushRequest, Pushed, RegistryOptions};
use crate::error::{Error, RegistryFault, Result};

/// Blobs at least this large show progress.
const PROGRESS_MIN_BYTES: u64 = 1 << 20;

pub(super) fn client(options: &RegistryOptions) -> Result<Client> {
    let mut config = ClientConfig {
        protocol: if options.plain_http {
            ClientProtocol::Http
        } else {
            ClientProtocol::Https
        },
        // One PUT per blob: the registry has every byte before it answers.
        use_monolithic_push: true,
        // A hostaction artifact is one manifest, never an index.
        platform_resolver: None,
        connect_timeout: Some(options.timeout),
        read_timeout: Some(options.timeout),
        ..ClientConfig::default()
    };
    if let Some(ca) = &options.ca_file {
        let data = std::fs::read(ca)
            .map_err(|e| Error::BadParams(format!("CA file {}: {e}", ca.display())))?;
        config.extra_root_certificates.push(Certificate {
            encoding: CertificateEncoding::Pem,
            data,
        });
    }
    Client::try_from(config)
        .map_err(|e| Error::BadParams(format!("registry client: {}", describe(&e))))
}

/// A failure of one attempt: its error, and whether another attempt may
/// succeed.
struct Failure {
    error: Error,
    transient: bool,
}

impl Failure {
    fn fatal(error: Error) -> Self {
        Self {
            error,
            transient: false,
        }
    }
}

/// Maps a client error onto a fault; `what` names the request.
fn classify(what: &str, e: &OciDistributionError) -> Failure {
    use RegistryFault::*;
    let (kind, transient) = match e {
        OciDistributionError::UnauthorizedError { .. }
        | OciDistributionError::AuthenticationFailure(_) => (Unauthorized, false),
        OciDistributionError::ImageManifestNotFoundError(_) => (NotFound, false),
        OciDistributionError::ServerError { code, .. } => match code {
            401 | 403 => (Unauthorized, false),
            404 => (NotFound, false),
            408 | 429 | 500..=599 => (Unavailable, true),
            _ => (Protocol, false),
        },
        OciDistributionError::RegistryError { envelope, .. } => {
            let code = envelope.errors.first().map(|e| &e.code);
            match code {
                Some(OciErrorCode::Unauthorized | OciErrorCode::Denied) => (Unauthorized, false),
                Some(
                    OciErrorCode::ManifestUnknown
                    | OciErrorCode::BlobUnknown
                    | OciErrorCode::NameUnknown
                    | OciErrorCode::NotFound,
                ) => (NotFound, false),
                Some(OciErrorCode::Toomanyrequests) => (Unavailable, true),
                _ => (Protocol, false),
            }
        }
        OciDistributionError::RequestError(r) if r.is_connect() || r.is_timeout() => {
            (Unavailable, true)
        }
        OciDistributionError::RequestError(r) => match r.status().map(|s| s.as_u16()) {
            Some(401 | 403) => (Unauthorized, false),
            Some(404) => (NotFound, false),
            // A dropped connection or a cut body.
            _ => (Unavailable, true),
        },
        OciDistributionError::DigestError(_) => (Integrity, false),
        _ => (Protocol, false),
    };
    Failure {
        error: Error::registry(kind, format!("{what}: {}", describe(e))),
        transient,
    }
}

/// The error and its sources on one line (reqwest hides the cause, such as
/// "connection refused", in its source chain).
fn describe(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        let s_text = s.to_string();
        if !text.contains(&s_text) {
            text.push_str(": ");
            text.push_str(&s_text);
        }
        source = s.source();
    }
    text
}

/// Runs `attempt` until it succeeds, fails for good, or has been retried
/// `options.retries` times, waiting `backoff`, then twice that, and so on.
async fn with_retries<T, F, Fut>(options: &RegistryOptions, mut attempt: F) -> Result<T>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = std::result::Result<T, Failure>>,
{
    let mut wait = options.backoff;
    let mut tries = 0;
    loop {
        match attempt().await {
            Ok(value) => return Ok(value),
            Err(f) if f.transient && tries < options.retries => {
                tries += 1;
                tracing::debug!(error = %f.error, tries, "retrying");
                tokio::time::sleep(wait).await;
                wait = wait.saturating_mul(2);
            }
            Err(f) if tries > 0 => {
                return Err(match f.error {
                    Error::Registry { kind, message } => {
                        Error::registry(kind, format!("{message} (after {} attempts)", tries + 1))
                    }
                    other => other,
                });
            }
            Err(f) => return Err(f.error),
        }
    }
}

fn auth(options: &RegistryOptions, reference: &Reference) -> Result<RegistryAuth> {
    options.credentials.resolve(reference.resolve_registry())
}

/// The manifest digest a reference names, asking the registry for a tag.
pub(super) async fn resolve(
    client: &Client,
    options: &RegistryOptions,
    reference: &Reference,
) -> Result<String> {
    if let Some(digest) = reference.digest() {
        return Ok(digest.to_owned());
    }
    let auth = auth(options, reference)?;
    let digest = with_retries(options, || async {
        client
            .fetch_manifest_digest(reference, &auth)
            .await
            .map_err(|e| classify(&format!("resolving {reference}"), &e))
    })
    .await?;
    artifact::check_digest(&digest).map_err(|why| {
        Error::registry(
            RegistryFault::Protocol,
            format!("resolving {reference}: the registry answered digest {digest:?}: {why}"),
        )
    })?;
    Ok(digest)
}

/// Fetches the artifact `digest` (the manifest, then each blob the store
/// lacks) into staging and commits it to the store.
pub(super) async fn pull(
    client: &Client,
    options: &RegistryOptions,
    reference: &Reference,
    digest: &str,
    store: &ModuleStore,
) -> Result<()> {
    let auth = auth(options, reference)?;
    let limits = *store.limits();
    let manifest = with_retries(options, || async {
        let (bytes, _) = client
            .pull_manifest_raw(reference, &auth, &[OCI_IMAGE_MEDIA_TYPE])
            .await
            .map_err(|e| classify(&format!("fetching the manifest of {reference}"), &e))?;
        Ok(bytes)
    })
    .await?;
    if manifest.len() as u64 > limits.manifest_bytes {
        return Err(Error::registry(
            RegistryFault::Integrity,
            format!(
                "the manifest of {reference} is {} bytes; the limit is {}",
                manifest.len(),
                limits.manifest_bytes
            ),
        ));
    }
    let actual = sha256(&manifest);
    if actual != digest {
        return Err(Error::registry(
            RegistryFault::Integrity,
            format!("the manifest of {reference} has digest {actual}, not {digest}"),
        ));
    }
    let layout = Layout::parse(&manifest, &limits)?;
    let _lock = store.lock_shared()?;
    let staging = store.staging()?;
    for (name, blob) in layout.blobs() {
        if store.has_blob(&blob.digest, blob.size) {
            continue;
        }
        with_retries(options, || {
            fetch_blob(client, options, reference, name, blob, &staging)
        })
        .await?;
    }
    store.commit(staging, digest, &manifest, &layout)
}

/// Streams one blob into staging, refusing more bytes than declared, fewer,
/// or other ones.
async fn fetch_blob(
    client: &Client,
    options: &RegistryOptions,
    reference: &Reference,
    name: &str,
    blob: &Blob,
    staging: &Staging,
) -> std::result::Result<(), Failure> {
    let what = format!("{name} ({}) of {reference}", blob.digest);
    let integrity =
        |message: String| Failure::fatal(Error::registry(RegistryFault::Integrity, message));
    let host = |e: std::io::Error| Failure::fatal(Error::Host(format!("staging {what}: {e}")));
    let descriptor = OciDescriptor {
        digest: blob.digest.clone(),
        size: i64::try_from(blob.size).unwrap_or(i64::MAX),
        ..OciDescriptor::default()
    };
    let mut response = client
        .pull_blob_stream(reference, &descriptor)
        .await
        .map_err(|e| classify(&format!("fetching {what}"), &e))?;
    if let Some(length) = response.content_length.filter(|&l| l > blob.size) {
        return Err(integrity(format!(
            "{what}: the registry would send {length} bytes; the manifest declares {}",
            blob.size
        )));
    }
    let path = staging.path(&blob.digest);
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o400)
        .open(&path)
        .map_err(host)?;
    let mut hasher = Sha256::new();
    let mut received = 0u64;
    let mut progress = Progress::new(options.progress, name, blob.size);
    while let Some(chunk) = response.stream.next().await {
        let chunk = match chunk {
            Ok(chunk) => chunk,
            // oci-client also checks the digest at the stream's end; counted
            // bytes tell a cut transfer from tampered content.
            Err(_) if received == blob.size => break,
            Err(e) => {
                return Err(Failure {
                    error: Error::registry(
                        RegistryFault::Integrity,
                        format!(
                            "{what}: truncated: the transfer ended after {received} of {} bytes: {e}",
                            blob.size
                        ),
                    ),
                    transient: true,
                });
            }
        };
        received += chunk.len() as u64;
        if received > blob.size {
            return Err(integrity(format!(
                "{what}: the registry sent more than the {} bytes the manifest declares",
                blob.size
            )));
        }
        hasher.update(&chunk);
        file.write_all(&chunk).map_err(host)?;
        progress.update(received);
    }
    progress.finish();
    if received != blob.size {
        return Err(Failure {
            error: Error::registry(
                RegistryFault::Integrity,
                format!("{what}: truncated: got {received} of {} bytes", blob.size),
            ),
            transient: true,
        });
    }
    let actual = format!("sha256:{}", hex::encode(hasher.finalize()));
    if actual != blob.digest {
        return Err(integrity(format!(
            "{what}: the bytes received have digest {actual}: the content was altered"
        )));
    }
    file.sync_all().map_err(host)
}

/// Pushes the blobs the registry lacks, then the manifest by its digest and,
/// if the reference has a tag, by the tag.
pub(super) async fn push(
    client: &Client,
    options: &RegistryOptions,
    reference: &Reference,
    request: &PushRequest,
) -> Result<Pushed> {
    let module = Blob {
        digest: sha256(&request.module),
        size: request.module.len() as u64,
    };
    let mut blobs = vec![(
        "component".to_owned(),
        module.clone(),
        request.module.clone(),
    )];
    let mut payload = Vec::new();
    for (name, path) in &request.payload {
        let bytes = std::fs::read(path)
            .map_err(|e| Error::BadParams(format!("payload {name}: {}: {e}", path.display())))?;
        let blob = Blob {
            digest: sha256(&bytes),
            size: bytes.len() as u64,
        };
        payload.push((name.clone(), blob.clone()));
        blobs.push((name.clone(), blob, bytes));
    }
    let built = artifact::build(
        &module,
        &request.imports,
        &request.exports,
        &payload,
        &request.annotations,
    )?;
    blobs.push((
        "config".to_owned(),
        Blob {
            digest: sha256(&built.config),
            size: built.config.len() as u64,
        },
        built.config.clone(),
    ));
    let auth = auth(options, reference)?;
    with_retries(options, || async {
        client
            .auth(reference, &auth, RegistryOperation::Push)
            .await
            .map(|_| ())
            .map_err(|e| classify(&format!("authenticating to {}", reference.registry()), &e))
    })
    .await?;
    for (name, blob, bytes) in blobs {
        let what = format!("pushing {name} ({})", blob.digest);
        let exists = with_retries(options, || async {
            client
                .blob_exists(reference, &blob.digest)
                .await
                .map_err(|e| classify(&what, &e))
        })
        .await?;
        if exists {
            continue;
        }
        let progress = Progress::new(options.progress, &name, blob.size);
        let bytes = bytes::Bytes::from(bytes);
        with_retries(options, || async {
            client
                .push_blob(reference, bytes.clone(), &blob.digest)
                .await
                .map(|_| ())
                .map_err(|e| classify(&what, &e))
        })
        .await?;
        progress.finish_at(blob.size);
    }
    let digest = sha256(&built.manifest);
    let by_digest = reference.clone_with_digest(digest.clone());
    let targets: Vec<Reference> = match reference.tag() {
        Some(tag) if reference.digest().is_none() => vec![
            by_digest.clone(),
            Reference::with_tag(
                reference.registry().to_owned(),
                reference.repository().to_owned(),
                tag.to_owned(),
            ),
        ],
        _ => vec![by_digest.clone()],
    };
    let content_type = http::HeaderValue::from_static(OCI_IMAGE_MEDIA_TYPE);
    for target in targets {
        with_retries(options, || async {
            client
                .push_manifest_raw(&target, built.manifest.clone(), content_type.clone())
                .await
                .map(|_| ())
                .map_err(|e| classify(&format!("pushing the manifest to {target}"), &e))
        })
        .await?;
    }
    Ok(Pushed {
        reference: format!(
            "{}/{}@{digest}",
            reference.registry(),
            reference.repository()
        ),
        digest,
        module_digest: module.digest,
    })
}

/// A progress line on stderr for a large transfer, when stderr is a terminal.
struct Progress {
    name: String,
    total: u64,
    shown: Option<Instant>,
}

impl Progress {
    fn new(enabled: bool, name: &str, total: u64) -> Self {
        let shown = (enabled && total >= PROGRESS_MIN_BYTES && std::io::stderr().is_terminal())
            .then(|| Instant::now() - Duration::from_secs(1));
        Self {
            name: name.to_owned(),
            total,
            shown,
        }
    }

    fn update(&mut self, done: u64) {
        if self
            .shown
            .is_some_and(|s| s.elapsed() >= Duration::from_millis(100))
        {
            self.shown = Some(Instant::now());
            self.draw(done, false);
        }
    }

    fn finish(&mut self) {
        self.finish_at(self.total);
    }

    fn finish_at(&self, done: u64) {
        if self.shown.is_some() {
            self.draw(done, true);
        }
    }

    fn draw(&self, done: u64, last: bool) {
        let mib = |b: u64| b as f64 / f64::from(1 << 20);
        let end = if last { "\n" } else { "" };
        let _ = write!(
            std::io::stderr(),
            "\r  {:<24} {:>8.1} / {:.1} MiB{end}",
            self.name,
            mib(done),
            mib(self.total)
        );
    }
}
