//! The cosign signature format ("simple signing", tag-based storage), as
//! `cosign sign --key` writes it and `cosign verify --key` reads it:
//!
//! - the signature of the artifact with digest `sha256:<hex>` is an OCI image
//!   manifest tagged `sha256-<hex>.sig` in the artifact's repository;
//! - each of its layers (one per signature) is a payload of media type
//!   `application/vnd.dev.cosign.simplesigning.v1+json`: JSON that names the
//!   signed digest (`critical.image.docker-manifest-digest`), with the
//!   signature over those exact bytes, base64, in the layer's annotation
//!   `dev.cosignproject.cosign/signature`.

use base64::Engine;
use serde::{Deserialize, Serialize};

/// A payload layer's media type.
pub const PAYLOAD_MEDIA_TYPE: &str = "application/vnd.dev.cosign.simplesigning.v1+json";
/// The annotation holding a layer's signature.
pub const SIGNATURE_ANNOTATION: &str = "dev.cosignproject.cosign/signature";
/// The payload's `critical.type`.
pub const PAYLOAD_TYPE: &str = "cosign container image signature";
/// Largest signature manifest read.
pub const MAX_SIGNATURE_MANIFEST_BYTES: u64 = 256 << 10;
/// Largest payload read.
pub const MAX_PAYLOAD_BYTES: u64 = 64 << 10;
/// Most signatures (layers) of one artifact looked at.
pub const MAX_SIGNATURES: usize = 32;

/// The tag under which an artifact's signatures are stored.
pub fn signature_tag(digest: &str) -> Option<String> {
    let hex = digest.strip_prefix("sha256:")?;
    Some(format!("sha256-{hex}.sig"))
}

/// A simple-signing payload.
#[derive(Debug, Serialize, Deserialize)]
pub struct Payload {
    /// What the signature vouches for.
    pub critical: Critical,
    #[serde(default)]
    /// Annotations (unused here).
    pub optional: Option<serde_json::Value>,
}

/// The signed claims.
#[derive(Debug, Serialize, Deserialize)]
pub struct Critical {
    /// The repository signed in.
    pub identity: Identity,
    /// The artifact signed.
    pub image: Image,
    #[serde(rename = "type")]
    /// [`PAYLOAD_TYPE`].
    pub kind: String,
}

/// Where the artifact was signed.
#[derive(Debug, Serialize, Deserialize)]
pub struct Identity {
    #[serde(rename = "docker-reference")]
    /// `registry/repository`.
    pub docker_reference: String,
}

/// Which artifact.
#[derive(Debug, Serialize, Deserialize)]
pub struct Image {
    #[serde(rename = "docker-manifest-digest")]
    /// Its manifest's digest.
    pub docker_manifest_digest: String,
}

impl Payload {
    /// The payload that signs `digest` in repository `repository`
    /// (`registry/name`).
    pub fn new(repository: &str, digest: &str) -> Self {
        Payload {
            critical: Critical {
                identity: Identity {
                    docker_reference: repository.to_owned(),
                },
                image: Image {
                    docker_manifest_digest: digest.to_owned(),
                },
                kind: PAYLOAD_TYPE.to_owned(),
            },
            optional: None,
        }
    }
}

/// One signature of a signature manifest: its payload's digest and size,
/// and the signature's bytes (none if the annotation is missing or not
/// base64).
#[derive(Debug)]
pub struct Layer {
    /// The payload's digest.
    pub digest: String,
    /// The payload's size.
    pub size: u64,
    /// The signature.
    pub signature: Option<Vec<u8>>,
}

#[derive(Deserialize)]
struct Manifest {
    #[serde(default)]
    layers: Vec<Descriptor>,
}

#[derive(Deserialize)]
struct Descriptor {
    #[serde(rename = "mediaType")]
    media_type: String,
    digest: String,
    size: u64,
    #[serde(default)]
    annotations: std::collections::BTreeMap<String, String>,
}

/// The signature layers of a signature manifest (others are skipped).
pub fn layers(manifest: &[u8]) -> Result<Vec<Layer>, String> {
    let manifest: Manifest = serde_json::from_slice(manifest)
        .map_err(|e| format!("the signature manifest does not parse: {e}"))?;
    Ok(manifest
        .layers
        .into_iter()
        .filter(|l| l.media_type == PAYLOAD_MEDIA_TYPE)
        .take(MAX_SIGNATURES)
        .map(|l| Layer {
            signature: l.annotations.get(SIGNATURE_ANNOTATION).and_then(|s| {
                base64::engine::general_purpose::STANDARD
                    .decode(s.trim())
                    .ok()
            }),
            digest: l.digest,
            size: l.size,
        })
        .collect())
}

/// A signature manifest and its config blob.
pub type SignatureManifest = (Vec<u8>, Vec<u8>);

/// The signature manifest (and its config blob) that adds `payload` signed
/// by `signature` to the signatures of `existing` (the manifest the `.sig`
/// tag holds, if any), as cosign adds a signature rather than replacing
/// the others. `None`: that signature is there already.
pub fn manifest(
    existing: Option<&[u8]>,
    payload: &[u8],
    signature: &[u8],
    signer: &super::PublicKey,
) -> Result<Option<SignatureManifest>, String> {
    let payload_digest = crate::artifact::sha256(payload);
    let encoded = base64::engine::general_purpose::STANDARD.encode(signature);
    // Only what verification reads is kept (a layer it could not parse
    // would make every signature there unreadable).
    let existing: Vec<Descriptor> = match existing {
        Some(bytes) => serde_json::from_slice::<Manifest>(bytes)
            .map_err(|e| format!("the signature manifest there does not parse: {e}"))?
            .layers
            .into_iter()
            .filter(|l| l.media_type == PAYLOAD_MEDIA_TYPE)
            .collect(),
        None => Vec::new(),
    };
    // This key's signature of this payload is there already (ECDSA
    // signatures differ each time: checked by verifying, not by bytes).
    let base64 = base64::engine::general_purpose::STANDARD;
    if existing.iter().any(|l| {
        l.digest == payload_digest
            && l.annotations
                .get(SIGNATURE_ANNOTATION)
                .and_then(|s| base64.decode(s.trim()).ok())
                .is_some_and(|s| signer.verifies(payload, &s))
    }) {
        return Ok(None);
    }
    let mut layers: Vec<serde_json::Value> = existing
        .into_iter()
        .map(|l| {
            serde_json::json!({
                "mediaType": l.media_type,
                "size": l.size,
                "digest": l.digest,
                "annotations": l.annotations,
            })
        })
        .collect();
    if layers.len() >= MAX_SIGNATURES {
        return Err(format!(
            "the artifact has {} signatures already (at most {MAX_SIGNATURES} are read)",
            layers.len()
        ));
    }
    layers.push(serde_json::json!({
        "mediaType": PAYLOAD_MEDIA_TYPE,
        "size": payload.len(),
        "digest": payload_digest,
        "annotations": { SIGNATURE_ANNOTATION: encoded },
    }));
    // An image config whose layers are the payloads, as cosign writes.
    let diff_ids: Vec<_> = layers.iter().map(|l| l["digest"].clone()).collect();
    let config = serde_json::json!({
        "architecture": "",
        "os": "",
        "config": {},
        "rootfs": {"type": "layers", "diff_ids": diff_ids},
    })
    .to_string()
    .into_bytes();
    let manifest = serde_json::json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {
            "mediaType": "application/vnd.oci.image.config.v1+json",
            "size": config.len(),
            "digest": crate::artifact::sha256(&config),
        },
        "layers": layers,
    })
    .to_string()
    .into_bytes();
    Ok(Some((manifest, config)))
}
