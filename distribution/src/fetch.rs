//! Pulls: bounded GETs of manifests and blobs. oci-client reads whole
//! bodies into memory (manifests, error bodies, a token service's answer)
//! before anything can cap them, so pulls fetch with reqwest and count every
//! byte, and authenticate (basic, or a bearer token from the registry's
//! token service) with the bounded exchange the controller's tag resolution
//! uses ([`hostaction_controller::resolve::bearer_token`]: a 64 KiB token
//! cap, redirects only to HTTPS or to registries plain HTTP is allowed for,
//! no error body shown). Each request keeps a minimum rate ([`Meter`]):
//! a per-read time-out alone lets a registry that sends one byte every few
//! seconds hold a pull for days.

use std::future::Future;
use std::io::Write;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::time::Duration;

use oci_client::Reference;
use oci_client::manifest::OCI_IMAGE_MEDIA_TYPE;
use oci_client::secrets::RegistryAuth;
use sha2::{Digest, Sha256};

use crate::resolve;

use super::RegistryOptions;
use super::artifact::{self, Blob, Layout};
use super::store::{ModuleStore, Staging};
use super::transfer::{Failure, Progress, auth, describe, with_retries};
use crate::error::{Error, RegistryFault, Result};

/// Bytes of an error response kept for its message.
const ERROR_BODY_BYTES: usize = 4096;

/// The HTTP client pulls use: the options' CA and time-outs.
pub(super) fn http_client(options: &RegistryOptions) -> Result<reqwest::Client> {
    let mut builder = reqwest::Client::builder()
        .redirect(resolve::redirect_policy(options.plain()))
        .connect_timeout(options.timeout)
        .read_timeout(options.timeout)
        .user_agent(concat!("hostaction/", env!("CARGO_PKG_VERSION")));
    if let Some(ca) = &options.ca_file {
        let pem =
            std::fs::read(ca).map_err(|e| Error::config(format!("CA file {}", ca.display()), e))?;
        let certs = reqwest::Certificate::from_pem_bundle(&pem)
            .map_err(|e| Error::config(format!("CA file {}", ca.display()), e))?;
        builder = builder.tls_certs_merge(certs);
    }
    builder
        .build()
        .map_err(|e| Error::config("registry client", e))
}

/// One pull's view of a registry: where it is and how to authenticate.
pub(super) struct Puller<'a> {
    pub(super) http: &'a reqwest::Client,
    pub(super) options: &'a RegistryOptions,
    /// Plain HTTP to this registry, not HTTPS.
    pub(super) plain: bool,
    pub(super) reference: &'a Reference,
}

/// A request's rate floor: at least `rate × window` bytes in each window
/// from when the request starts (authentication and waiting for headers
/// included), or it is cut as a transient failure.
struct Meter {
    /// `None`: no floor.
    window: Option<Duration>,
    rate: u64,
    min_bytes: u64,
    next: tokio::time::Instant,
    in_window: u64,
}

impl Meter {
    fn start(options: &RegistryOptions) -> Self {
        let window = Some(options.rate_window).filter(|w| !w.is_zero() && options.min_rate > 0);
        let min_bytes = window.map_or(0, |w| {
            u64::try_from(u128::from(options.min_rate).saturating_mul(w.as_millis()) / 1000)
                .unwrap_or(u64::MAX)
        });
        let now = tokio::time::Instant::now();
        Self {
            window,
            rate: options.min_rate,
            min_bytes,
            next: window.and_then(|w| now.checked_add(w)).unwrap_or(now),
            in_window: 0,
        }
    }

    /// Counts bytes received.
    fn count(&mut self, bytes: usize) {
        self.in_window = self.in_window.saturating_add(bytes as u64);
    }

    /// Awaits `step` of the request, cutting the request at the end of a
    /// window that brought too few bytes.
    async fn wait<T>(
        &mut self,
        what: &str,
        step: impl Future<Output = T>,
    ) -> std::result::Result<T, Failure> {
        let Some(window) = self.window else {
            return Ok(step.await);
        };
        let mut step = std::pin::pin!(step);
        loop {
            tokio::select! {
                biased;
                done = &mut step => return Ok(done),
                () = tokio::time::sleep_until(self.next) => {
                    if self.in_window < self.min_bytes {
                        return Err(Failure {
                            error: Error::registry(
                                RegistryFault::Unavailable,
                                format!(
                                    "{what}: slower than the minimum rate of {} KiB/s: {} bytes in {} s \
                                     (--pull-min-rate, --pull-rate-window)",
                                    self.rate as f64 / 1024.0,
                                    self.in_window,
                                    window.as_secs_f64()
                                ),
                            ),
                            transient: true,
                        });
                    }
                    self.in_window = 0;
                    self.next = self.next.checked_add(window).unwrap_or(self.next);
                }
            }
        }
    }
}

/// What a request carries to authenticate.
enum Authorization {
    None,
    Basic(String, String),
    Bearer(String),
}

impl Puller<'_> {
    fn url(&self, kind: &str, target: &str) -> String {
        let scheme = if self.plain { "http" } else { "https" };
        format!(
            "{scheme}://{}/v2/{}/{kind}/{target}",
            self.reference.resolve_registry(),
            self.reference.repository()
        )
    }

    /// Negotiates access to the repository: asks `/v2/` (its body unread)
    /// which scheme the registry wants; a bearer token comes from the
    /// bounded exchange the controller shares, with basic credentials when
    /// there are some.
    async fn authorization(
        &self,
        auth: &RegistryAuth,
    ) -> std::result::Result<Authorization, Failure> {
        let basic = match auth {
            RegistryAuth::Bearer(token) => return Ok(Authorization::Bearer(token.clone())),
            RegistryAuth::Basic(user, password) => Some((user.as_str(), password.as_str())),
            RegistryAuth::Anonymous => None,
        };
        let registry = self.reference.resolve_registry();
        let what = format!("authenticating to {registry}");
        let scheme = if self.plain { "http" } else { "https" };
        let answer = self
            .http
            .get(format!("{scheme}://{registry}/v2/"))
            .send()
            .await
            .map_err(|e| transport(&what, &e))?;
        let challenge = answer
            .headers()
            .get(reqwest::header::WWW_AUTHENTICATE)
            .and_then(|v| v.to_str().ok())
            .and_then(resolve::bearer_challenge);
        drop(answer);
        let Some(params) = challenge else {
            return Ok(match basic {
                Some((user, password)) => {
                    Authorization::Basic(user.to_owned(), password.to_owned())
                }
                None => Authorization::None,
            });
        };
        let token = resolve::bearer_token(
            self.http,
            &self.options.plain(),
            &params,
            self.reference.repository(),
            basic,
        )
        .await
        .map_err(|e| {
            let kind = match e.status {
                Some(401 | 403) => RegistryFault::Unauthorized,
                _ if e.transient => RegistryFault::Unavailable,
                _ => RegistryFault::Protocol,
            };
            Failure {
                error: Error::registry(kind, format!("{what}: {}", e.message)),
                transient: e.transient,
            }
        })?;
        Ok(Authorization::Bearer(token))
    }

    /// A GET that succeeded (200), or the failure its status or transport
    /// means; an error body is read only up to a few KiB.
    async fn get(
        &self,
        url: &str,
        accept: Option<&str>,
        what: &str,
        meter: &mut Meter,
    ) -> std::result::Result<reqwest::Response, Failure> {
        let auth = auth(self.options, self.reference).map_err(Failure::fatal)?;
        let mut request = self.http.get(url);
        if let Some(accept) = accept {
            request = request.header(reqwest::header::ACCEPT, accept);
        }
        request = match meter.wait(what, self.authorization(&auth)).await?? {
            Authorization::None => request,
            Authorization::Basic(user, password) => request.basic_auth(user, Some(password)),
            Authorization::Bearer(token) => request.bearer_auth(token),
        };
        let mut response = meter
            .wait(what, request.send())
            .await?
            .map_err(|e| transport(what, &e))?;
        let status = response.status();
        if status == reqwest::StatusCode::OK {
            return Ok(response);
        }
        // A response from where the registry redirected to is not the
        // registry's to show: its body stays out of the error.
        let answered = response.url().to_string();
        let redirected = answered != url;
        let mut body = Vec::new();
        while body.len() < ERROR_BODY_BYTES && !redirected {
            match meter.wait(what, response.chunk()).await? {
                Ok(Some(chunk)) => {
                    meter.count(chunk.len());
                    body.extend_from_slice(&chunk);
                }
                _ => break,
            }
        }
        body.truncate(ERROR_BODY_BYTES);
        let body = String::from_utf8_lossy(&body);
        let (kind, transient) = match status.as_u16() {
            401 | 403 => (RegistryFault::Unauthorized, false),
            404 => (RegistryFault::NotFound, false),
            408 | 429 | 500..=599 => (RegistryFault::Unavailable, true),
            _ => (RegistryFault::Protocol, false),
        };
        Err(Failure {
            error: Error::registry(
                kind,
                format!("{what}: HTTP {status} from {answered}: {}", body.trim()),
            ),
            transient,
        })
    }

    /// The manifest a tag or digest names, read up to the cap, with its
    /// digest (computed here: a digest reference must match it).
    pub(super) async fn manifest(&self, limits_bytes: u64) -> Result<(Vec<u8>, String)> {
        let target = self
            .reference
            .digest()
            .or(self.reference.tag())
            .unwrap_or("latest");
        let url = self.url("manifests", target);
        let what = format!("fetching the manifest of {}", self.reference);
        let bytes = with_retries(self.options, || async {
            let mut meter = Meter::start(self.options);
            let response = self
                .get(&url, Some(OCI_IMAGE_MEDIA_TYPE), &what, &mut meter)
                .await?;
            let over = || format!("{what}: more than {limits_bytes} bytes, the manifest limit");
            read_capped(response, &mut meter, &what, limits_bytes, over).await
        })
        .await?;
        let digest = artifact::sha256(&bytes);
        if let Some(expected) = self.reference.digest()
            && expected != digest
        {
            return Err(Error::registry(
                RegistryFault::Integrity,
                format!(
                    "{what}: the registry sent a manifest with digest {digest}, not {expected}"
                ),
            ));
        }
        Ok((bytes, digest))
    }

    /// A small blob (a signature's payload) into memory: at most `size`
    /// bytes, which must hash to `digest`.
    pub(super) async fn small_blob(&self, digest: &str, size: u64) -> Result<Vec<u8>> {
        artifact::check_digest(digest).map_err(|why| {
            Error::registry(RegistryFault::Integrity, format!("blob {digest:?}: {why}"))
        })?;
        let url = self.url("blobs", digest);
        let what = format!("fetching blob {digest} of {}", self.reference);
        let bytes = with_retries(self.options, || async {
            let mut meter = Meter::start(self.options);
            let response = self.get(&url, None, &what, &mut meter).await?;
            let over = || format!("{what}: more than the {size} bytes declared");
            read_capped(response, &mut meter, &what, size, over).await
        })
        .await?;
        let actual = artifact::sha256(&bytes);
        if actual != digest {
            return Err(Error::registry(
                RegistryFault::Integrity,
                format!("{what}: the bytes received have digest {actual}: the content was altered"),
            ));
        }
        Ok(bytes)
    }

    /// Fetches the artifact's blobs the store lacks into staging, then
    /// commits the artifact.
    pub(super) async fn pull(
        &self,
        store: &ModuleStore,
        manifest: &[u8],
        digest: &str,
    ) -> Result<()> {
        let layout = Layout::parse(manifest, store.limits())?;
        let _lock = store.lock_shared()?;
        let staging = store.staging()?;
        let mut fetched = std::collections::BTreeSet::new();
        for (name, blob) in layout.blobs() {
            // The same content twice (two payload names) is fetched once.
            if store.has_blob(&blob.digest, blob.size) || !fetched.insert(&blob.digest) {
                continue;
            }
            with_retries(self.options, || self.blob(name, blob, &staging)).await?;
        }
        store.commit(staging, digest, manifest, &layout)
    }

    /// Streams one blob into staging, refusing more bytes than declared,
    /// fewer, or other ones; the staged file is made read-only once verified.
    async fn blob(
        &self,
        name: &str,
        blob: &Blob,
        staging: &Staging,
    ) -> std::result::Result<(), Failure> {
        let what = format!("{name} ({}) of {}", blob.digest, self.reference);
        let integrity =
            |message: String| Failure::fatal(Error::registry(RegistryFault::Integrity, message));
        let host = |e: std::io::Error| Failure::fatal(Error::io(format!("staging {what}"), e));
        let fetching = format!("fetching {what}");
        let mut meter = Meter::start(self.options);
        let mut response = self
            .get(
                &self.url("blobs", &blob.digest),
                None,
                &fetching,
                &mut meter,
            )
            .await?;
        if let Some(length) = response.content_length().filter(|&l| l > blob.size) {
            return Err(integrity(format!(
                "{what}: the registry would send {length} bytes; the manifest declares {}",
                blob.size
            )));
        }
        let path = staging.path(&blob.digest);
        // A retry starts over.
        let _ = std::fs::remove_file(&path);
        let mut file = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&path)
            .map_err(host)?;
        let mut hasher = Sha256::new();
        let mut received = 0u64;
        let mut progress = Progress::new(self.options.progress, name, blob.size);
        loop {
            let chunk = match meter.wait(&fetching, response.chunk()).await? {
                Ok(Some(chunk)) => chunk,
                Ok(None) => break,
                Err(e) => {
                    return Err(Failure {
                        error: Error::registry(
                            RegistryFault::Integrity,
                            format!(
                                "{what}: truncated: the transfer ended after {received} of {} bytes: {}",
                                blob.size,
                                describe(&e)
                            ),
                        ),
                        transient: true,
                    });
                }
            };
            meter.count(chunk.len());
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
        file.sync_all().map_err(host)?;
        file.set_permissions(std::fs::Permissions::from_mode(0o400))
            .map_err(host)
    }
}

/// A response's body into memory, metered; more than `cap` bytes is an
/// integrity failure (`over` says which).
async fn read_capped(
    mut response: reqwest::Response,
    meter: &mut Meter,
    what: &str,
    cap: u64,
    over: impl Fn() -> String,
) -> std::result::Result<Vec<u8>, Failure> {
    let mut bytes = Vec::new();
    while let Some(chunk) = meter
        .wait(what, response.chunk())
        .await?
        .map_err(|e| transport(what, &e))?
    {
        meter.count(chunk.len());
        bytes.extend_from_slice(&chunk);
        if bytes.len() as u64 > cap {
            return Err(Failure::fatal(Error::registry(
                RegistryFault::Integrity,
                over(),
            )));
        }
    }
    Ok(bytes)
}

/// A transport failure (unreachable, time-out, a cut connection): worth
/// retrying.
fn transport(what: &str, e: &reqwest::Error) -> Failure {
    // A redirect [`redirect_policy`] refused: the same next time.
    if e.is_redirect() {
        return Failure::fatal(Error::registry(
            RegistryFault::Protocol,
            format!("{what}: {}", describe(e)),
        ));
    }
    let cause = if e.is_timeout() {
        "timed out"
    } else if e.is_connect() {
        "cannot connect"
    } else {
        "transfer failed"
    };
    Failure {
        error: Error::registry(
            RegistryFault::Unavailable,
            format!("{what}: {cause}: {}", describe(e)),
        ),
        transient: true,
    }
}
