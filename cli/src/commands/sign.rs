//! `hostaction sign`: signs an artifact as `cosign sign --key` does.

use std::fmt;
use std::path::{Path, PathBuf};

use hostaction_distribution::{Registry, SigningKey};
use hostaction_runtime::Error;
use serde::Serialize;

use crate::common::{self, NodeCache, Output, RegistryArgs};

/// `hostaction sign` flags.
#[derive(clap::Args)]
pub struct SignCommand {
    /// The artifact: registry/repository:tag or @sha256:... (a tag is
    /// resolved once; the signature is of that digest).
    reference: String,
    /// The private key: PEM PKCS#8 (`PRIVATE KEY`, unencrypted), ECDSA
    /// P-256 or Ed25519.
    #[arg(long, value_name = "FILE")]
    key: PathBuf,
    #[command(flatten)]
    registry: RegistryArgs,
    /// Output format.
    #[arg(long, value_enum, default_value_t = Output::Text)]
    pub output: Output,
}

/// Reads a signing key file.
pub fn read_key(path: &Path) -> Result<SigningKey, Error> {
    let text = std::fs::read_to_string(path).map_err(|source| Error::Input {
        what: format!("signing key {}", path.display()),
        source,
    })?;
    SigningKey::from_pem(&text)
        .map_err(|why| Error::BadParams(format!("signing key {}: {why}", path.display())))
}

/// A signature made.
#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Signed {
    /// The digest signed (a tag is resolved to one: check it).
    pub digest: String,
    /// Where the signature is (the `.sig` tag of the digest).
    pub signature: String,
    /// The fingerprint of the key that verifies it.
    pub key: String,
}

impl fmt::Display for Signed {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            f,
            "signed {} with key {}: {}",
            self.digest, self.key, self.signature
        )
    }
}

/// Signs `reference` with `key` through `registry`.
pub fn sign(registry: &Registry, reference: &str, key: &SigningKey) -> Result<Signed, Error> {
    let (digest, signature) = registry.sign(reference, key)?;
    Ok(Signed {
        digest,
        signature,
        key: key.public_key().fingerprint().to_owned(),
    })
}

impl SignCommand {
    /// Signs the artifact.
    pub fn execute(self, _node: &NodeCache) -> Result<u8, Error> {
        let key = read_key(&self.key)?;
        let registry = Registry::new(self.registry.options()?)?;
        common::print(self.output, &sign(&registry, &self.reference, &key)?);
        Ok(0)
    }
}
