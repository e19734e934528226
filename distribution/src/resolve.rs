//! Resolving a HostAction's module reference to a digest, once per
//! generation: nodes then run exactly that digest, whatever the tag does
//! later. The controller only asks the registry which manifest a tag names
//! (a HEAD request; a GET of the manifest when the answer has no digest);
//! each node's agent fetches and verifies the artifact.
//!
//! The registry is the HostAction author's pick, so nothing it sends is
//! trusted: every answer is read up to a small cap (a manifest's 4 MiB, a
//! token's 64 KiB) — never whole into memory, as `oci-client` would — no
//! error body is shown, and redirects and token services are followed only
//! to HTTPS or to a registry plain HTTP is allowed for ([`redirect_policy`]).
//! The token exchange ([`bearer_token`]) is shared with the runtime's
//! pulls, which present a node's credentials in it.
//!
//! Plain HTTP is for named registries only ([`PlainHttp`]): a tag resolved
//! over plain HTTP from anywhere else could be pointed at another digest by
//! anyone on the path, and every node would run that digest.

use std::path::Path;
use std::str::FromStr;
use std::time::Duration;

use oci_client::Reference;
use sha2::{Digest, Sha256};

/// How long resolving one tag may take in all (connect, authentication, the
/// manifest request): a registry that trickles bytes holds a reconcile no
/// longer.
pub const RESOLVE_TIMEOUT: Duration = Duration::from_secs(60);
/// Time-out to connect, and for each read.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);
/// Bytes of a manifest read to hash it (the runtime's manifest limit).
const MANIFEST_BYTES: usize = 4 << 20;
/// Bytes of a token service's answer read.
const TOKEN_BYTES: usize = 64 << 10;
/// Redirects one request follows at most.
const MAX_REDIRECTS: usize = 10;
/// The manifest types a tag may name (what `oci-client` asked for).
const ACCEPT: &str = "application/vnd.docker.distribution.manifest.v2+json, \
    application/vnd.docker.distribution.manifest.list.v2+json, \
    application/vnd.oci.image.manifest.v1+json, application/vnd.oci.image.index.v1+json";

/// Which registries are spoken to over plain HTTP, not HTTPS: those on
/// loopback when `loopback` (`--plain-http`), and the named ones
/// (`--plain-http-registry`). Shared by the controller and the runtime.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PlainHttp {
    /// Registries on loopback: `127.0.0.0/8`, `::1`, `localhost`.
    pub loopback: bool,
    /// `HOST` (any port) or `HOST:PORT`.
    pub registries: Vec<String>,
}

impl PlainHttp {
    /// Plain HTTP to loopback registries only.
    pub fn loopback() -> Self {
        Self {
            loopback: true,
            registries: Vec::new(),
        }
    }

    /// Whether `registry` (`HOST[:PORT]`, as a reference names it) gets
    /// plain HTTP.
    pub fn allows(&self, registry: &str) -> bool {
        let (host, port) = split_host_port(registry);
        if self.loopback
            && (host.eq_ignore_ascii_case("localhost")
                || host
                    .parse::<std::net::IpAddr>()
                    .is_ok_and(|ip| ip.is_loopback()))
        {
            return true;
        }
        self.registries.iter().any(|named| {
            let (named_host, named_port) = split_host_port(named);
            named_host.eq_ignore_ascii_case(host) && (named_port.is_none() || named_port == port)
        })
    }

    /// A `--plain-http-registry` value: `HOST` or `HOST:PORT` (an IPv6
    /// address in brackets), no scheme or path.
    pub fn parse_registry(arg: &str) -> Result<String, String> {
        let (host, port) = split_host_port(arg);
        let bad = host.is_empty()
            || host.contains(['/', '@', ' '])
            || port.is_some_and(|p| p.parse::<u16>().is_err());
        if bad {
            return Err(format!(
                "{arg:?}: expected a registry as HOST or HOST:PORT (no scheme or path)"
            ));
        }
        Ok(arg.to_ascii_lowercase())
    }
}

/// `HOST[:PORT]` split; `[v6]:PORT` and a bare IPv6 address understood.
fn split_host_port(registry: &str) -> (&str, Option<&str>) {
    if let Some(rest) = registry.strip_prefix('[') {
        return match rest.split_once(']') {
            Some((host, tail)) => (host, tail.strip_prefix(':')),
            None => (registry, None),
        };
    }
    match registry.rsplit_once(':') {
        Some((host, port)) if !host.contains(':') => (host, Some(port)),
        _ => (registry, None),
    }
}

/// Resolves module references against their registries.
pub struct Resolver {
    http: reqwest::Client,
    plain_http: PlainHttp,
}

/// Which redirects a client of a registry follows: registries send blobs
/// to a CDN, so redirects are followed, at most [`MAX_REDIRECTS`], but only
/// to HTTPS or to a registry plain HTTP is allowed for. A registry is not
/// trusted: followed to plain HTTP anywhere, it would have the controller or
/// a node send requests to any service on their network (cloud metadata,
/// the kubelet) and show what they answer.
pub fn redirect_policy(plain: PlainHttp) -> reqwest::redirect::Policy {
    reqwest::redirect::Policy::custom(move |attempt| {
        if attempt.previous().len() > MAX_REDIRECTS {
            return attempt.error(format!("more than {MAX_REDIRECTS} redirects"));
        }
        match refused_url(&plain, attempt.url()) {
            None => attempt.follow(),
            Some(why) => {
                let why = format!("the registry redirected to {why}");
                attempt.error(why)
            }
        }
    })
}

/// Why a registry may not send a client to `url` (`None`: it may): not
/// HTTPS, nor a registry plain HTTP is allowed for.
fn refused_url(plain: &PlainHttp, url: &reqwest::Url) -> Option<String> {
    let host = url.host_str().unwrap_or_default();
    let host_port = match url.port() {
        Some(port) => format!("{host}:{port}"),
        None => host.to_owned(),
    };
    match url.scheme() {
        "https" => None,
        "http" if plain.allows(&host_port) => None,
        _ => Some(format!(
            "{url}, which is not HTTPS nor a registry plain HTTP is allowed for \
             (--plain-http, --plain-http-registry): refused"
        )),
    }
}

impl Resolver {
    /// A resolver over HTTPS (system roots, plus `ca_file` when given), and
    /// over plain HTTP for the registries `plain_http` names. Registries are
    /// asked anonymously (a bearer token from their token service if they
    /// ask for one).
    pub fn new(plain_http: PlainHttp, ca_file: Option<&Path>) -> Result<Self, String> {
        let mut builder = reqwest::Client::builder()
            .redirect(redirect_policy(plain_http.clone()))
            .connect_timeout(REQUEST_TIMEOUT)
            .read_timeout(REQUEST_TIMEOUT)
            .user_agent(concat!("hostaction-controller/", env!("CARGO_PKG_VERSION")));
        if let Some(path) = ca_file {
            let pem =
                std::fs::read(path).map_err(|e| format!("--ca-file {}: {e}", path.display()))?;
            let certs = reqwest::Certificate::from_pem_bundle(&pem)
                .map_err(|e| format!("--ca-file {}: {e}", path.display()))?;
            builder = builder.tls_certs_merge(certs);
        }
        let http = builder
            .build()
            .map_err(|e| format!("registry client: {}", describe(&e)))?;
        Ok(Self { http, plain_http })
    }

    /// The digest of the manifest `reference`'s tag names.
    async fn resolve_tag(&self, reference: &Reference) -> Result<String, String> {
        let registry = reference.resolve_registry();
        let scheme = if self.plain_http.allows(registry) {
            "http"
        } else {
            "https"
        };
        let url = format!(
            "{scheme}://{registry}/v2/{}/manifests/{}",
            reference.repository(),
            reference.tag().unwrap_or("latest")
        );
        let mut token = None;
        let mut head = self.send(reqwest::Method::HEAD, &url, None).await?;
        if head.status() == reqwest::StatusCode::UNAUTHORIZED {
            let challenge = head
                .headers()
                .get(reqwest::header::WWW_AUTHENTICATE)
                .and_then(|v| v.to_str().ok())
                .unwrap_or_default()
                .to_owned();
            token = Some(self.token(&challenge, reference).await?);
            head = self
                .send(reqwest::Method::HEAD, &url, token.as_deref())
                .await?;
        }
        check_status(&head, &url)?;
        if let Some(digest) = head
            .headers()
            .get("docker-content-digest")
            .and_then(|v| v.to_str().ok())
        {
            return Ok(digest.trim().to_owned());
        }
        let mut got = self
            .send(reqwest::Method::GET, &url, token.as_deref())
            .await?;
        check_status(&got, &url)?;
        let manifest =
            read_capped(&mut got, MANIFEST_BYTES, &format!("the manifest at {url}")).await?;
        Ok(format!("sha256:{}", hex::encode(Sha256::digest(&manifest))))
    }

    async fn send(
        &self,
        method: reqwest::Method,
        url: &str,
        token: Option<&str>,
    ) -> Result<reqwest::Response, String> {
        let mut request = self
            .http
            .request(method, url)
            .header(reqwest::header::ACCEPT, ACCEPT);
        if let Some(token) = token {
            request = request.bearer_auth(token);
        }
        request
            .send()
            .await
            .map_err(|e| format!("{url}: {}", describe(&e)))
    }

    /// An anonymous pull token from the token service a `401`'s
    /// `WWW-Authenticate: Bearer realm=...,service=...,scope=...` names.
    async fn token(&self, challenge: &str, reference: &Reference) -> Result<String, String> {
        let params = bearer_challenge(challenge).ok_or_else(|| {
            format!(
                "{}: the registry asks for credentials ({challenge:?}); the controller \
                 resolves tags anonymously (pin the module by digest instead)",
                reference.resolve_registry()
            )
        })?;
        bearer_token(
            &self.http,
            &self.plain_http,
            &params,
            reference.repository(),
            None,
        )
        .await
        .map_err(|e| e.message)
    }

    /// `module` pinned: `registry/repository@sha256:...`. A reference that
    /// already carries a digest is pinned as it is, without asking the
    /// registry.
    pub async fn resolve(&self, module: &str) -> Result<Pinned, String> {
        let reference = Reference::from_str(module)
            .map_err(|e| format!("module {module:?} is not an OCI reference: {e}"))?;
        let digest = match reference.digest() {
            Some(digest) => digest.to_owned(),
            None => {
                let asked = self.resolve_tag(&reference);
                tokio::time::timeout(RESOLVE_TIMEOUT, asked)
                    .await
                    .map_err(|_| {
                        format!(
                            "resolving {module}: no answer within {} s",
                            RESOLVE_TIMEOUT.as_secs()
                        )
                    })?
                    .map_err(|e| format!("resolving {module}: {e}"))?
            }
        };
        pin(module, &digest)
    }
}

/// A failed request of a registry or its token service.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FetchError {
    /// What failed, naming the URL (never a body the server sent).
    pub message: String,
    /// The HTTP status answered, if one was.
    pub status: Option<u16>,
    /// Whether another attempt may succeed (the transport failed, or the
    /// server answered 408, 429 or 5xx).
    pub transient: bool,
}

impl From<FetchError> for String {
    fn from(e: FetchError) -> Self {
        e.message
    }
}

impl FetchError {
    fn fatal(message: String) -> Self {
        Self {
            message,
            status: None,
            transient: false,
        }
    }

    /// A transport failure; a refused redirect is not worth retrying.
    fn transport(what: &str, e: &reqwest::Error) -> Self {
        Self {
            message: format!("{what}: {}", describe(e)),
            status: None,
            transient: !e.is_redirect() && !e.is_builder(),
        }
    }
}

/// Fails unless `response` is a success; never shows its body (a registry's
/// words in a HostAction's status are an attacker's, or, after a redirect,
/// another service's).
fn check_status(response: &reqwest::Response, url: &str) -> Result<(), FetchError> {
    let status = response.status();
    if status.is_success() {
        return Ok(());
    }
    let answered = response.url().as_str();
    let from = if answered == url {
        url.to_owned()
    } else {
        format!("{answered} (redirected from {url})")
    };
    Err(FetchError {
        message: format!("HTTP {status} from {from}"),
        status: Some(status.as_u16()),
        transient: matches!(status.as_u16(), 408 | 429 | 500..=599),
    })
}

/// The body of `response`, refused past `cap` bytes (read no further).
async fn read_capped(
    response: &mut reqwest::Response,
    cap: usize,
    what: &str,
) -> Result<Vec<u8>, FetchError> {
    let too_long = || FetchError::fatal(format!("{what}: more than the limit of {cap} bytes"));
    if response.content_length().is_some_and(|n| n > cap as u64) {
        return Err(too_long());
    }
    let mut body = Vec::new();
    while let Some(chunk) = response
        .chunk()
        .await
        .map_err(|e| FetchError::transport(what, &e))?
    {
        if body.len() + chunk.len() > cap {
            return Err(too_long());
        }
        body.extend_from_slice(&chunk);
    }
    Ok(body)
}

/// A pull token for `repository` from the token service a `Bearer`
/// challenge names ([`bearer_challenge`]): the one exchange the controller
/// (anonymously) and the runtime's pulls (with `basic` credentials when it
/// has them) share. The token service is the registry's pick, so it is
/// asked only over HTTPS or on a registry plain HTTP is allowed for,
/// redirects are followed only as far as the client's
/// [`redirect_policy`] allows, its answer is read up to 64 KiB, and no
/// error body is shown.
pub async fn bearer_token(
    http: &reqwest::Client,
    plain: &PlainHttp,
    params: &[(String, String)],
    repository: &str,
    basic: Option<(&str, &str)>,
) -> Result<String, FetchError> {
    let param = |key: &str| {
        params
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(key))
            .map(|(_, v)| v.as_str())
    };
    let realm = param("realm").ok_or_else(|| {
        FetchError::fatal("the registry's bearer challenge has no realm".to_owned())
    })?;
    let scope = param("scope")
        .map(str::to_owned)
        .unwrap_or_else(|| format!("repository:{repository}:pull"));
    let mut query = vec![("scope", scope.as_str())];
    if let Some(service) = param("service") {
        query.push(("service", service));
    }
    let url = reqwest::Url::parse_with_params(realm, &query)
        .map_err(|e| FetchError::fatal(format!("the registry's token service {realm:?}: {e}")))?;
    if let Some(why) = refused_url(plain, &url) {
        return Err(FetchError::fatal(format!(
            "the registry's token service is {why}"
        )));
    }
    let mut request = http.get(url.clone());
    if let Some((user, password)) = basic {
        request = request.basic_auth(user, Some(password));
    }
    let mut answer = request
        .send()
        .await
        .map_err(|e| FetchError::transport(url.as_str(), &e))?;
    check_status(&answer, url.as_str())?;
    let body = read_capped(&mut answer, TOKEN_BYTES, &format!("the token from {url}")).await?;
    #[derive(serde::Deserialize)]
    struct Token {
        token: Option<String>,
        access_token: Option<String>,
    }
    let parsed: Token = serde_json::from_slice(&body).map_err(|e| {
        FetchError::fatal(format!(
            "the token from {url}: not a token service's answer: {e}"
        ))
    })?;
    parsed
        .token
        .or(parsed.access_token)
        .ok_or_else(|| FetchError::fatal(format!("the token from {url}: no token in the answer")))
}

/// The parameters of a `Bearer` challenge (`realm="...",service="..."`),
/// a `WWW-Authenticate` header's value; `None` for any other scheme.
pub fn bearer_challenge(challenge: &str) -> Option<Vec<(String, String)>> {
    let (scheme, rest) = challenge.trim().split_once(' ')?;
    if !scheme.eq_ignore_ascii_case("bearer") {
        return None;
    }
    let mut params = Vec::new();
    let mut rest = rest.trim();
    while !rest.is_empty() {
        let (key, after) = rest.split_once('=')?;
        let after = after.trim_start();
        let (value, tail) = match after.strip_prefix('"') {
            Some(quoted) => {
                let end = quoted.find('"')?;
                (&quoted[..end], &quoted[end + 1..])
            }
            None => after.split_once(',').map_or((after, ""), |(v, t)| (v, t)),
        };
        params.push((key.trim().to_owned(), value.to_owned()));
        rest = tail.trim_start().trim_start_matches(',').trim_start();
    }
    Some(params)
}

/// The error and its sources on one line (reqwest hides the cause, such as
/// "connection refused" or a refused redirect, in its source chain). The
/// runtime's registry errors use it too.
pub fn describe(e: &dyn std::error::Error) -> String {
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
        let resolver = Resolver::new(PlainHttp::loopback(), None).unwrap();
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
        let resolver = Resolver::new(PlainHttp::loopback(), None).unwrap();
        let err = resolver.resolve("Not A Reference").await.unwrap_err();
        assert!(err.contains("\"Not A Reference\""), "{err}");
        let err = resolver.resolve("127.0.0.1:1/x:v1").await.unwrap_err();
        assert!(err.contains("resolving 127.0.0.1:1/x:v1"), "{err}");
    }

    #[test]
    fn plain_http_is_for_loopback_and_the_registries_named() {
        let loopback = PlainHttp::loopback();
        for registry in [
            "127.0.0.1:5000",
            "127.1.2.3",
            "localhost:5000",
            "LOCALHOST",
            "[::1]:5000",
            "::1",
        ] {
            assert!(loopback.allows(registry), "{registry}");
        }
        for registry in [
            "registry.example:5000",
            "10.0.0.1:5000",
            "127.0.0.1.nip.io:5000",
            "[::2]:5000",
            "localhost.example",
        ] {
            assert!(!loopback.allows(registry), "{registry}");
        }
        let named = PlainHttp {
            loopback: false,
            registries: vec!["registry.lan".into(), "10.0.0.1:5000".into()],
        };
        assert!(named.allows("registry.lan:443"));
        assert!(named.allows("Registry.LAN"));
        assert!(named.allows("10.0.0.1:5000"));
        assert!(!named.allows("10.0.0.1:5001"));
        assert!(!named.allows("10.0.0.1"));
        assert!(!named.allows("127.0.0.1:5000"));
        assert!(!named.allows("other.lan"));
        assert!(
            PlainHttp::default().registries.is_empty() && !PlainHttp::default().allows("localhost")
        );
        for bad in [
            "http://registry.lan",
            "registry.lan/x",
            "host:port",
            "",
            ":5000",
        ] {
            assert!(PlainHttp::parse_registry(bad).is_err(), "{bad}");
        }
        assert_eq!(
            PlainHttp::parse_registry("Reg.LAN:5000").unwrap(),
            "reg.lan:5000"
        );
    }

    /// What the resolver sends first to a registry: a TLS handshake record
    /// (0x16) unless the registry gets plain HTTP.
    fn first_byte(plain: impl FnOnce(&str) -> PlainHttp) -> u8 {
        use std::io::Read;
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        let resolver = Resolver::new(plain(&addr), None).unwrap();
        let accepted = std::thread::spawn(move || {
            let (mut conn, _) = listener.accept().unwrap();
            let mut byte = [0u8; 1];
            conn.read_exact(&mut byte).unwrap();
            byte[0]
        });
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let module = format!("{addr}/x:v1");
        runtime.block_on(async {
            tokio::select! {
                _ = resolver.resolve(&module) => {}
                () = tokio::time::sleep(std::time::Duration::from_secs(5)) => {}
            }
        });
        accepted.join().unwrap()
    }

    #[test]
    fn the_resolver_speaks_plain_http_only_to_the_registries_named() {
        const TLS_HANDSHAKE: u8 = 0x16;
        // `HEAD /v2/...` (or `GET /v2/` first, to authenticate).
        let plain = |byte: u8| matches!(byte, b'H' | b'G');
        assert!(plain(first_byte(|_| PlainHttp::loopback())));
        let named = |addr: &str| PlainHttp {
            loopback: false,
            registries: vec![addr.to_owned()],
        };
        assert!(plain(first_byte(named)));
        let another = |_: &str| PlainHttp {
            loopback: false,
            registries: vec!["127.0.0.1:1".into(), "registry.lan".into()],
        };
        assert_eq!(first_byte(another), TLS_HANDSHAKE);
        assert_eq!(first_byte(|_| PlainHttp::default()), TLS_HANDSHAKE);
    }
}
