//! Module signatures: who published an artifact, checked before it is
//! pulled into the store for a run, on every node, and fail closed.
//!
//! - [`keys`]: public keys to verify with, private keys to sign with;
//! - [`cosign`]: the signature format and where a registry keeps it, so
//!   `cosign sign --key` signs what hostaction verifies and `cosign verify
//!   --key` accepts what `hostaction sign` signs.
//!
//! A [`Policy`] comes from the node policy's `verify` section and the
//! action's grant's (which can only narrow it). When it requires a
//! signature, a module runs only if its artifact's digest carries a
//! signature, by one of the policy's keys, over a payload that names that
//! digest; anything else is an [`crate::Error::Untrusted`] that names the
//! check that failed. Keyless signatures (Fulcio certificates, Rekor
//! bundles) are not supported.

pub mod cosign;
pub mod keys;

use hostaction_grant::Verify;
pub use keys::{PublicKey, SigningKey};
use serde::Serialize;

/// Which keys a module must be signed by; `required: false` checks none.
#[derive(Debug, Clone, Default)]
pub struct Policy {
    required: bool,
    keys: Vec<PublicKey>,
    /// Why `keys` is empty while required, for the refusal.
    empty_because: Option<String>,
}

/// Who a module was verified to come from.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase", tag = "verification")]
pub enum Provenance {
    /// Its artifact carries a signature by this key.
    #[serde(rename = "verified")]
    Verified {
        /// The key's fingerprint (`sha256:` of its SubjectPublicKeyInfo).
        key: String,
    },
    /// The policy did not require a signature; none was checked.
    #[serde(rename = "not-required")]
    NotRequired,
}

impl std::fmt::Display for Provenance {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Provenance::Verified { key } => write!(f, "signed by key {key}"),
            Provenance::NotRequired => f.write_str("signature not required"),
        }
    }
}

fn parse_keys(verify: &Verify, what: &str) -> Result<Vec<PublicKey>, String> {
    verify
        .keys
        .iter()
        .enumerate()
        .map(|(i, pem)| {
            PublicKey::from_pem(pem).map_err(|e| format!("{what} verify.keys[{i}]: {e}"))
        })
        .collect()
}

impl Policy {
    /// No signature required.
    pub fn none() -> Self {
        Self::default()
    }

    /// The policy of a run: the node policy's `verify` and the grant's.
    /// Keys listed, or `required`, on either side require a signature.
    /// When the node policy has a `verify` section, only its keys can be
    /// accepted (those the grant also lists, if it lists any): a grant
    /// narrows, never widens, and a node requiring signatures without
    /// naming keys refuses everything. Without one, the grant's keys are
    /// the action's own opt-in. A key that does not parse is an error
    /// naming it.
    pub fn new(policy: Option<&Verify>, grant: Option<&Verify>) -> Result<Self, String> {
        let node = policy.map(|v| parse_keys(v, "policy")).transpose()?;
        let action = grant.map(|v| parse_keys(v, "grant")).transpose()?;
        let asks = |v: &Verify| v.required || !v.keys.is_empty();
        let required = policy.is_some_and(asks) || grant.is_some_and(asks);
        let (keys, why) = match (node, action.unwrap_or_default()) {
            (Some(node), action) if node.is_empty() => {
                let why = match action.is_empty() {
                    true => "a signature is required, but the node policy's verify.keys is empty",
                    false => "the grant's verify.keys cannot add keys: the node policy lists none",
                };
                (Vec::new(), Some(why))
            }
            (Some(node), action) if action.is_empty() => (node, None),
            (Some(node), action) => {
                let both: Vec<_> = action.into_iter().filter(|k| node.contains(k)).collect();
                let why = both
                    .is_empty()
                    .then_some("no key of the grant's verify.keys is among the node policy's");
                (both, why)
            }
            (None, action) => {
                let why = action
                    .is_empty()
                    .then_some("a signature is required, but no verify.keys are given");
                (action, why)
            }
        };
        Ok(Self {
            required,
            keys,
            empty_because: why.map(str::to_owned),
        })
    }

    /// A policy requiring a signature by one of `keys`.
    pub fn require(keys: Vec<PublicKey>) -> Self {
        let empty_because = keys
            .is_empty()
            .then(|| "a signature is required, but no keys are given".to_owned());
        Self {
            required: true,
            keys,
            empty_because,
        }
    }

    /// Whether a signature is required.
    pub fn required(&self) -> bool {
        self.required
    }

    /// The keys accepted.
    pub fn keys(&self) -> &[PublicKey] {
        &self.keys
    }

    /// Why no module can pass (required, and no key), if so.
    pub fn unsatisfiable(&self) -> Option<&str> {
        self.required
            .then_some(())
            .and(self.empty_because.as_deref())
    }

    /// The first of `fingerprints` (keys that verified the artifact
    /// before) that this policy accepts.
    pub fn accepts_any<'a>(&self, fingerprints: &'a [String]) -> Option<&'a String> {
        fingerprints
            .iter()
            .find(|f| self.keys.iter().any(|k| k.fingerprint() == f.as_str()))
    }

    /// Checks one signature: `signature` over `payload` by one of the keys,
    /// and the payload names `digest`. Returns the key, or which check
    /// failed.
    pub fn check(
        &self,
        digest: &str,
        payload: &[u8],
        signature: &[u8],
    ) -> Result<&PublicKey, String> {
        let key = self
            .keys
            .iter()
            .find(|k| k.verifies(payload, signature))
            .ok_or_else(|| {
                "its signature does not verify with any trusted key (signed by another key, \
                 or the payload or signature was altered)"
                    .to_owned()
            })?;
        let payload: cosign::Payload = serde_json::from_slice(payload).map_err(|e| {
            format!("its signed payload is not a cosign simple-signing payload: {e}")
        })?;
        if payload.critical.kind != cosign::PAYLOAD_TYPE {
            return Err(format!(
                "its signed payload is of type {:?}, not {:?}",
                printable(&payload.critical.kind),
                cosign::PAYLOAD_TYPE
            ));
        }
        let signed = &payload.critical.image.docker_manifest_digest;
        if signed != digest {
            return Err(format!(
                "the signature is over another digest ({}), not this artifact's",
                printable(signed)
            ));
        }
        Ok(key)
    }
}

/// Text from a registry, quoted for a message: control characters escaped,
/// at most 200 characters.
fn printable(text: &str) -> String {
    text.chars()
        .take(200)
        .collect::<String>()
        .escape_debug()
        .to_string()
}

#[cfg(test)]
mod tests;
