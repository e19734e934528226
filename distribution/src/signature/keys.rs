//! Keys: public keys to verify with (PEM SubjectPublicKeyInfo) and private
//! keys to sign with (PEM PKCS#8), ECDSA P-256 (SHA-256, ASN.1 DER
//! signatures, as cosign makes) or Ed25519. The crypto is aws-lc-rs's.

use aws_lc_rs::encoding::{AsDer, PublicKeyX509Der};
use aws_lc_rs::signature::{self as sig, KeyPair};
use sha2::{Digest, Sha256};
use spki::der::{Decode, pem};

/// The algorithm of a key.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Algorithm {
    /// ECDSA on P-256 with SHA-256.
    EcdsaP256,
    /// Ed25519.
    Ed25519,
}

const EC_PUBLIC_KEY: &str = "1.2.840.10045.2.1";
const P256: &str = "1.2.840.10045.3.1.7";
const ED25519: &str = "1.3.101.112";

/// A public key a signature may be verified with.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PublicKey {
    algorithm: Algorithm,
    /// The raw key: an uncompressed point, or Ed25519's 32 bytes.
    raw: Vec<u8>,
    /// Its SubjectPublicKeyInfo (DER).
    der: Vec<u8>,
    /// `sha256:` and the hex SHA-256 of `der`.
    fingerprint: String,
}

impl PublicKey {
    /// Parses a PEM `PUBLIC KEY`; the error says what is wrong with it.
    pub fn from_pem(text: &str) -> Result<Self, String> {
        let (label, der) = pem::decode_vec(text.trim().as_bytes())
            .map_err(|e| format!("not a PEM document: {e}"))?;
        if label != "PUBLIC KEY" {
            return Err(format!(
                "a PEM {label:?}, not a \"PUBLIC KEY\" (SubjectPublicKeyInfo)"
            ));
        }
        Self::from_der(&der)
    }

    /// Parses a SubjectPublicKeyInfo (DER).
    pub fn from_der(der: &[u8]) -> Result<Self, String> {
        let info = spki::SubjectPublicKeyInfoRef::from_der(der)
            .map_err(|e| format!("not a SubjectPublicKeyInfo: {e}"))?;
        let oid = info.algorithm.oid.to_string();
        let algorithm = match oid.as_str() {
            EC_PUBLIC_KEY => {
                let curve = info
                    .algorithm
                    .parameters_oid()
                    .map(|o| o.to_string())
                    .unwrap_or_default();
                if curve != P256 {
                    return Err(format!(
                        "an EC key on curve {curve}; only P-256 ({P256}) is supported"
                    ));
                }
                Algorithm::EcdsaP256
            }
            ED25519 => Algorithm::Ed25519,
            other => {
                return Err(format!(
                    "a key of algorithm {other}; ECDSA P-256 and Ed25519 are supported"
                ));
            }
        };
        let raw = info
            .subject_public_key
            .as_bytes()
            .ok_or("the key's bit string is not whole bytes")?
            .to_vec();
        Ok(Self {
            algorithm,
            raw,
            der: der.to_vec(),
            fingerprint: format!("sha256:{}", hex::encode(Sha256::digest(der))),
        })
    }

    /// `sha256:<hex>` of the key's SubjectPublicKeyInfo: how reports name it.
    pub fn fingerprint(&self) -> &str {
        &self.fingerprint
    }

    /// Its algorithm.
    pub fn algorithm(&self) -> Algorithm {
        self.algorithm
    }

    /// Whether `signature` is this key's over `message`.
    pub fn verifies(&self, message: &[u8], signature: &[u8]) -> bool {
        let algorithm: &dyn sig::VerificationAlgorithm = match self.algorithm {
            Algorithm::EcdsaP256 => &sig::ECDSA_P256_SHA256_ASN1,
            Algorithm::Ed25519 => &sig::ED25519,
        };
        sig::UnparsedPublicKey::new(algorithm, &self.raw)
            .verify(message, signature)
            .is_ok()
    }
}

/// A private key to sign with.
pub struct SigningKey {
    pair: Pair,
    public: PublicKey,
}

enum Pair {
    Ecdsa(sig::EcdsaKeyPair),
    Ed25519(sig::Ed25519KeyPair),
}

impl SigningKey {
    /// Parses a PEM `PRIVATE KEY` (PKCS#8, unencrypted), ECDSA P-256 or
    /// Ed25519.
    pub fn from_pem(text: &str) -> Result<Self, String> {
        let (label, der) = pem::decode_vec(text.trim().as_bytes())
            .map_err(|e| format!("not a PEM document: {e}"))?;
        if label != "PRIVATE KEY" {
            return Err(format!(
                "a PEM {label:?}, not an unencrypted PKCS#8 \"PRIVATE KEY\" (convert it with \
                 `openssl pkcs8 -topk8 -nocrypt`)"
            ));
        }
        if let Ok(pair) = sig::EcdsaKeyPair::from_pkcs8(&sig::ECDSA_P256_SHA256_ASN1_SIGNING, &der)
        {
            let public = public_of(pair.public_key())?;
            return Ok(Self {
                pair: Pair::Ecdsa(pair),
                public,
            });
        }
        let pair = sig::Ed25519KeyPair::from_pkcs8_maybe_unchecked(&der)
            .map_err(|e| format!("neither an ECDSA P-256 nor an Ed25519 PKCS#8 key: {e}"))?;
        let public = public_of(pair.public_key())?;
        Ok(Self {
            pair: Pair::Ed25519(pair),
            public,
        })
    }

    /// The public key that verifies its signatures.
    pub fn public_key(&self) -> &PublicKey {
        &self.public
    }

    /// Signs `message`.
    pub fn sign(&self, message: &[u8]) -> Result<Vec<u8>, String> {
        match &self.pair {
            Pair::Ecdsa(pair) => pair
                .sign(&aws_lc_rs::rand::SystemRandom::new(), message)
                .map(|s| s.as_ref().to_vec())
                .map_err(|_| "ECDSA signing failed".into()),
            Pair::Ed25519(pair) => Ok(pair.sign(message).as_ref().to_vec()),
        }
    }
}

impl PublicKey {
    /// The key as a PEM `PUBLIC KEY`.
    pub fn to_pem(&self) -> String {
        pem::encode_string("PUBLIC KEY", pem::LineEnding::LF, &self.der).unwrap_or_default()
    }
}

/// The public key of a key pair, from its SubjectPublicKeyInfo.
fn public_of<K>(key: &K) -> Result<PublicKey, String>
where
    K: AsDer<PublicKeyX509Der<'static>>,
{
    let der = key
        .as_der()
        .map_err(|_| "the key's public half cannot be encoded".to_owned())?;
    PublicKey::from_der(der.as_ref())
}
