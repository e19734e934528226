//! Resolving a HostAction's module reference to a digest, once per
//! generation: nodes then run exactly that digest, whatever the tag does
//! later. The controller only asks the registry which manifest a tag names
//! (a HEAD request); each node's agent fetches and verifies the artifact.
//!
//! Plain HTTP is for named registries only ([`PlainHttp`]): a tag resolved
//! over plain HTTP from anywhere else could be pointed at another digest by
//! anyone on the path, and every node would run that digest.

use std::path::Path;
use std::str::FromStr;
use std::time::Duration;

use oci_client::client::{Certificate, CertificateEncoding, ClientConfig, ClientProtocol};
use oci_client::secrets::RegistryAuth;
use oci_client::{Client, Reference};

/// How long resolving one tag may take in all (connect, authentication, the
/// manifest request): a registry that trickles bytes holds a reconcile no
/// longer.
pub const RESOLVE_TIMEOUT: Duration = Duration::from_secs(60);
/// Time-out to connect, and for each read.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);

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
    tls: Client,
    plain: Client,
    plain_http: PlainHttp,
}

impl Resolver {
    /// A resolver over HTTPS (system roots, plus `ca_file` when given), and
    /// over plain HTTP for the registries `plain_http` names. Registries are
    /// asked anonymously.
    pub fn new(plain_http: PlainHttp, ca_file: Option<&Path>) -> Result<Self, String> {
        let extra_root_certificates = match ca_file {
            Some(path) => vec![Certificate {
                encoding: CertificateEncoding::Pem,
                data: std::fs::read(path)
                    .map_err(|e| format!("--ca-file {}: {e}", path.display()))?,
            }],
            None => Vec::new(),
        };
        let client = |protocol| {
            Client::new(ClientConfig {
                protocol,
                extra_root_certificates: extra_root_certificates.clone(),
                connect_timeout: Some(REQUEST_TIMEOUT),
                read_timeout: Some(REQUEST_TIMEOUT),
                ..ClientConfig::default()
            })
        };
        Ok(Self {
            tls: client(ClientProtocol::Https),
            plain: client(ClientProtocol::Http),
            plain_http,
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
            None => {
                let client = if self.plain_http.allows(reference.resolve_registry()) {
                    &self.plain
                } else {
                    &self.tls
                };
                let asked = client.fetch_manifest_digest(&reference, &RegistryAuth::Anonymous);
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
