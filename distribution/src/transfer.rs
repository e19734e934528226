//! What pushes and pulls share — bounded retries with backoff, failures
//! mapped onto a [`RegistryFault`] that names what failed, progress on a
//! terminal — and the push itself, over `oci-client`.

use std::future::Future;
use std::io::{IsTerminal, Write};
use std::time::{Duration, Instant};

use oci_client::client::{Certificate, CertificateEncoding, ClientConfig, ClientProtocol};
use oci_client::errors::{OciDistributionError, OciErrorCode};
use oci_client::manifest::OCI_IMAGE_MEDIA_TYPE;
use oci_client::secrets::RegistryAuth;
use oci_client::{Client, Reference, RegistryOperation};

use super::artifact::{self, Blob, sha256};
use super::{PushRequest, Pushed, RegistryOptions};
use crate::error::{Error, RegistryFault, Result};

/// The longest wait between two attempts.
const MAX_BACKOFF: Duration = Duration::from_secs(30);
/// Bytes per chunk of a pushed blob.
const PUSH_CHUNK_BYTES: usize = 256 << 10;
/// Blobs at least this large show progress.
const PROGRESS_MIN_BYTES: u64 = 1 << 20;

/// An `oci-client` speaking plain HTTP when `plain` (for the registries
/// [`RegistryOptions::plain`] names), else HTTPS.
pub(super) fn client(options: &RegistryOptions, plain: bool) -> Result<Client> {
    let mut config = ClientConfig {
        protocol: if plain {
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
        let data =
            std::fs::read(ca).map_err(|e| Error::config(format!("CA file {}", ca.display()), e))?;
        config.extra_root_certificates.push(Certificate {
            encoding: CertificateEncoding::Pem,
            data,
        });
    }
    Client::try_from(config).map_err(|e| Error::config("registry client", e))
}

/// A failure of one attempt: its error, and whether another attempt may
/// succeed.
pub(super) struct Failure {
    pub(super) error: Error,
    pub(super) transient: bool,
}

impl Failure {
    pub(super) fn fatal(error: Error) -> Self {
        Self {
            error,
            transient: false,
        }
    }
}

/// Maps a client error onto a fault; `what` names the request.
pub(super) fn classify(what: &str, e: &OciDistributionError) -> Failure {
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

pub(super) use crate::resolve::describe;

/// Runs `attempt` until it succeeds, fails for good, or has been retried
/// `options.retries` times. The waits are backon's jittered exponential
/// back-off: each is drawn between half and all of a step that starts at
/// `options.backoff` and doubles up to [`MAX_BACKOFF`] (so no wait is longer
/// than the step, and many nodes pulling from a registry that comes back do
/// not all retry in the same instant). The pull's deadline bounds the whole.
pub(super) async fn with_retries<T, F, Fut>(options: &RegistryOptions, attempt: F) -> Result<T>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = std::result::Result<T, Failure>>,
{
    use backon::Retryable;
    // backon's jitter adds 0–100 % to a step: halving the steps makes each
    // wait half to all of the documented one.
    let backoff = backon::ExponentialBuilder::new()
        .with_min_delay(options.backoff / 2)
        .with_max_delay(MAX_BACKOFF / 2)
        .with_factor(2.0)
        .with_jitter()
        .with_max_times(usize::try_from(options.retries).unwrap_or(usize::MAX));
    let mut tries: u32 = 0;
    let outcome = attempt
        .retry(backoff)
        .sleep(tokio::time::sleep)
        .when(|f: &Failure| f.transient)
        .notify(|f: &Failure, wait: Duration| {
            tries += 1;
            tracing::debug!(error = %f.error, tries, retry_in = ?wait, "retrying");
        })
        .await;
    match outcome {
        Ok(value) => Ok(value),
        Err(f) if tries > 0 => Err(match f.error {
            Error::Registry { kind, message } => {
                Error::registry(kind, format!("{message} (after {} attempts)", tries + 1))
            }
            other => other,
        }),
        Err(f) => Err(f.error),
    }
}

pub(super) fn auth(options: &RegistryOptions, reference: &Reference) -> Result<RegistryAuth> {
    options.credentials.resolve(reference.resolve_registry())
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
        let bytes = std::fs::read(path).map_err(|e| Error::Input {
            what: format!("payload {name}: {}", path.display()),
            source: e,
        })?;
        if bytes.is_empty() {
            return Err(Error::BadParams(format!(
                "payload {name}: {} is empty (registries and OCI clients refuse empty blobs)",
                path.display()
            )));
        }
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
    push_parts(client, options, reference, blobs, &built.manifest, &targets).await?;
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
pub(super) struct Progress {
    name: String,
    total: u64,
    shown: Option<Instant>,
}

impl Progress {
    pub(super) fn new(enabled: bool, name: &str, total: u64) -> Self {
        let shown = (enabled && total >= PROGRESS_MIN_BYTES && std::io::stderr().is_terminal())
            .then(|| Instant::now() - Duration::from_secs(1));
        Self {
            name: name.to_owned(),
            total,
            shown,
        }
    }

    pub(super) fn update(&mut self, done: u64) {
        if self
            .shown
            .is_some_and(|s| s.elapsed() >= Duration::from_millis(100))
        {
            self.shown = Some(Instant::now());
            self.draw(done, false);
        }
    }

    pub(super) fn finish(&mut self) {
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

/// Pushes to `reference`'s repository the `blobs` it lacks, then
/// `manifest` to each of `targets`.
async fn push_parts(
    client: &Client,
    options: &RegistryOptions,
    reference: &Reference,
    blobs: Vec<(String, Blob, Vec<u8>)>,
    manifest: &[u8],
    targets: &[Reference],
) -> Result<()> {
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
        let bytes = bytes::Bytes::from(bytes);
        let progress = std::sync::Arc::new(std::sync::Mutex::new(Progress::new(
            options.progress,
            &name,
            blob.size,
        )));
        with_retries(options, || async {
            // Sent in chunks, so the progress line moves as the registry
            // takes them.
            let shown = std::sync::Arc::clone(&progress);
            let bytes = bytes.clone();
            let chunks = (0..bytes.len()).step_by(PUSH_CHUNK_BYTES).map(move |at| {
                let end = (at + PUSH_CHUNK_BYTES).min(bytes.len());
                if let Ok(mut p) = shown.lock() {
                    p.update(end as u64);
                }
                Ok(bytes.slice(at..end))
            });
            client
                .push_blob_stream(
                    reference,
                    futures_util::stream::iter(chunks),
                    &blob.digest,
                    Some(blob.size),
                )
                .await
                .map(|_| ())
                .map_err(|e| classify(&what, &e))
        })
        .await?;
        if let Ok(mut p) = progress.lock() {
            p.finish();
        }
    }
    let content_type = http::HeaderValue::from_static(OCI_IMAGE_MEDIA_TYPE);
    for target in targets {
        with_retries(options, || async {
            client
                .push_manifest_raw(target, manifest.to_vec(), content_type.clone())
                .await
                .map(|_| ())
                .map_err(|e| classify(&format!("pushing the manifest to {target}"), &e))
        })
        .await?;
    }
    Ok(())
}

/// Pushes `blobs` (by name) and `manifest` to `target` (a tag): a
/// signature, whose parts are small.
pub(super) async fn push_manifest(
    client: &Client,
    options: &RegistryOptions,
    target: &Reference,
    blobs: Vec<(&str, Vec<u8>)>,
    manifest: Vec<u8>,
) -> Result<()> {
    let blobs = blobs
        .into_iter()
        .map(|(name, bytes)| {
            let blob = Blob {
                digest: sha256(&bytes),
                size: bytes.len() as u64,
            };
            (name.to_owned(), blob, bytes)
        })
        .collect();
    push_parts(
        client,
        options,
        target,
        blobs,
        &manifest,
        std::slice::from_ref(target),
    )
    .await
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicU32, Ordering};

    use super::*;

    fn options(retries: u32) -> RegistryOptions {
        RegistryOptions {
            retries,
            backoff: Duration::from_millis(2),
            ..RegistryOptions::default()
        }
    }

    fn failure(transient: bool) -> Failure {
        Failure {
            error: Error::registry(RegistryFault::Unavailable, "HTTP 503".to_owned()),
            transient,
        }
    }

    fn run<T>(future: impl Future<Output = T>) -> T {
        tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .build()
            .unwrap()
            .block_on(future)
    }

    #[test]
    fn transient_failures_are_retried_up_to_the_limit_and_counted() {
        let calls = AtomicU32::new(0);
        let err = run(with_retries(&options(2), || async {
            calls.fetch_add(1, Ordering::Relaxed);
            Err::<(), _>(failure(true))
        }))
        .unwrap_err();
        assert_eq!(calls.load(Ordering::Relaxed), 3);
        assert!(err.to_string().contains("(after 3 attempts)"), "{err}");

        let calls = AtomicU32::new(0);
        let value = run(with_retries(&options(3), || async {
            if calls.fetch_add(1, Ordering::Relaxed) < 2 {
                Err(failure(true))
            } else {
                Ok(7)
            }
        }))
        .unwrap();
        assert_eq!((value, calls.load(Ordering::Relaxed)), (7, 3));
    }

    #[test]
    fn a_failure_for_good_is_not_retried() {
        let calls = AtomicU32::new(0);
        let err = run(with_retries(&options(3), || async {
            calls.fetch_add(1, Ordering::Relaxed);
            Err::<(), _>(failure(false))
        }))
        .unwrap_err();
        assert_eq!(calls.load(Ordering::Relaxed), 1);
        assert!(!err.to_string().contains("attempts"), "{err}");
    }
}
