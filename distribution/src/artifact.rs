//! The artifact layout: a Wasm OCI artifact (config
//! `application/vnd.wasm.config.v0+json`, the component as the one
//! `application/wasm` layer) with the action's payload files as further
//! layers, each titled with its file name. Manifests from a registry are
//! untrusted: [`Layout::parse`] checks every field before anything is fetched.

use std::collections::{BTreeMap, BTreeSet};

use oci_client::manifest::{OCI_IMAGE_MEDIA_TYPE, OciDescriptor, OciImageManifest};
use serde_json::json;
use sha2::{Digest, Sha256};

use crate::error::{Error, RegistryFault, Result};

/// Largest module file the runtime reads, by default (agents have a lower
/// default of their own).
pub const MAX_MODULE_BYTES: u64 = 128 << 20;

/// Media type of the artifact's config (the CNCF Wasm OCI artifact layout).
pub const WASM_CONFIG_MEDIA_TYPE: &str = "application/vnd.wasm.config.v0+json";
/// Media type of the layer holding the component.
pub const WASM_LAYER_MEDIA_TYPE: &str = "application/wasm";
/// Media type of a payload file's layer.
pub const PAYLOAD_MEDIA_TYPE: &str = "application/octet-stream";
/// The annotation naming a payload layer's file.
pub const TITLE_ANNOTATION: &str = "org.opencontainers.image.title";

/// Size caps of what a pull accepts; a blob over its cap is refused before
/// it is fetched.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SizeLimits {
    /// A manifest.
    pub manifest_bytes: u64,
    /// The component.
    pub module_bytes: u64,
    /// One payload file.
    pub payload_file_bytes: u64,
    /// The whole artifact (component and payload).
    pub artifact_bytes: u64,
    /// Number of payload files.
    pub payload_files: usize,
}

impl Default for SizeLimits {
    fn default() -> Self {
        Self {
            manifest_bytes: 4 << 20,
            module_bytes: MAX_MODULE_BYTES,
            payload_file_bytes: 256 << 20,
            artifact_bytes: 1 << 30,
            payload_files: 256,
        }
    }
}

/// One blob of an artifact, as its manifest declares it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Blob {
    /// `sha256:<64 hex>`.
    pub digest: String,
    /// Size in bytes.
    pub size: u64,
}

/// What a hostaction artifact's manifest says, checked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Layout {
    /// The component.
    pub module: Blob,
    /// Payload files by name.
    pub payload: BTreeMap<String, Blob>,
    /// The manifest's annotations.
    pub annotations: BTreeMap<String, String>,
}

fn bad(message: impl Into<String>) -> Error {
    Error::registry(RegistryFault::BadArtifact, message)
}

fn too_big(what: &str, size: u64, cap: u64) -> Error {
    Error::registry(
        RegistryFault::Integrity,
        format!("{what} is {size} bytes; the limit is {cap}"),
    )
}

impl Layout {
    /// Parses and checks a manifest: the Wasm artifact layout, digests that
    /// are `sha256:` and 64 hex digits, sizes within `limits`, payload names
    /// that are plain file names, each once.
    pub fn parse(manifest: &[u8], limits: &SizeLimits) -> Result<Self> {
        let manifest: OciImageManifest = serde_json::from_slice(manifest)
            .map_err(|e| bad(format!("the manifest is not an OCI image manifest: {e}")))?;
        if manifest.schema_version != 2 {
            return Err(bad(format!(
                "manifest schemaVersion {} (expected 2)",
                manifest.schema_version
            )));
        }
        if manifest.config.media_type != WASM_CONFIG_MEDIA_TYPE {
            return Err(bad(format!(
                "config media type {:?}: a hostaction module is a Wasm artifact with config {WASM_CONFIG_MEDIA_TYPE:?} \
                 (a container image is not a module)",
                manifest.config.media_type
            )));
        }
        let mut module = None;
        let mut payload = BTreeMap::new();
        let mut total = 0u64;
        for (i, layer) in manifest.layers.iter().enumerate() {
            let blob = blob(layer, &format!("layer {i}"))?;
            total = total.saturating_add(blob.size);
            match layer.media_type.as_str() {
                WASM_LAYER_MEDIA_TYPE if module.is_some() => {
                    return Err(bad(format!(
                        "layer {i}: a second {WASM_LAYER_MEDIA_TYPE} layer (an artifact holds one component)"
                    )));
                }
                WASM_LAYER_MEDIA_TYPE => {
                    if blob.size > limits.module_bytes {
                        return Err(too_big("the component", blob.size, limits.module_bytes));
                    }
                    module = Some(blob);
                }
                PAYLOAD_MEDIA_TYPE => {
                    let name = layer
                        .annotations
                        .as_ref()
                        .and_then(|a| a.get(TITLE_ANNOTATION))
                        .ok_or_else(|| {
                            bad(format!(
                                "layer {i}: a payload layer without {TITLE_ANNOTATION}"
                            ))
                        })?;
                    check_payload_name(name)
                        .map_err(|why| bad(format!("layer {i}: payload name {name:?}: {why}")))?;
                    if blob.size > limits.payload_file_bytes {
                        return Err(too_big(
                            &format!("payload file {name:?}"),
                            blob.size,
                            limits.payload_file_bytes,
                        ));
                    }
                    if payload.insert(name.clone(), blob).is_some() {
                        return Err(bad(format!("layer {i}: payload {name:?} appears twice")));
                    }
                }
                other => {
                    return Err(bad(format!(
                        "layer {i}: media type {other:?} (expected {WASM_LAYER_MEDIA_TYPE} or {PAYLOAD_MEDIA_TYPE})"
                    )));
                }
            }
        }
        let module = module.ok_or_else(|| bad(format!("no {WASM_LAYER_MEDIA_TYPE} layer")))?;
        if payload.len() > limits.payload_files {
            return Err(bad(format!(
                "{} payload files; the limit is {}",
                payload.len(),
                limits.payload_files
            )));
        }
        if total > limits.artifact_bytes {
            return Err(too_big("the artifact", total, limits.artifact_bytes));
        }
        Ok(Self {
            module,
            payload,
            annotations: manifest.annotations.unwrap_or_default(),
        })
    }

    /// Every blob: the component first, then the payload by name.
    pub fn blobs(&self) -> impl Iterator<Item = (&str, &Blob)> {
        std::iter::once(("component", &self.module))
            .chain(self.payload.iter().map(|(n, b)| (n.as_str(), b)))
    }
}

fn blob(d: &OciDescriptor, what: &str) -> Result<Blob> {
    check_digest(&d.digest).map_err(|why| bad(format!("{what}: digest {:?}: {why}", d.digest)))?;
    let size = u64::try_from(d.size).map_err(|_| bad(format!("{what}: size {}", d.size)))?;
    Ok(Blob {
        digest: d.digest.clone(),
        size,
    })
}

/// `sha256:` and 64 lowercase hex digits: the only digests the store keeps
/// (they become file names, so nothing else may pass).
pub fn check_digest(digest: &str) -> std::result::Result<(), &'static str> {
    let hex = digest
        .strip_prefix("sha256:")
        .ok_or("only sha256 digests are supported")?;
    if hex.len() == 64 && hex.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f')) {
        Ok(())
    } else {
        Err("expected sha256: and 64 lowercase hex digits")
    }
}

/// A payload name: a plain file name of printable ASCII, at most 255 bytes.
pub fn check_payload_name(name: &str) -> std::result::Result<(), &'static str> {
    if name.is_empty() || name.len() > 255 {
        return Err("must be 1 to 255 bytes");
    }
    if name == "." || name == ".." || !name.bytes().all(|b| b.is_ascii_graphic() && b != b'/') {
        return Err("must be a plain file name of printable ASCII (no '/', not '.' or '..')");
    }
    Ok(())
}

/// `sha256:<hex>` of some bytes.
pub fn sha256(bytes: &[u8]) -> String {
    format!("sha256:{}", hex::encode(Sha256::digest(bytes)))
}

/// An artifact ready to push: its blobs and its manifest's bytes.
pub struct Built {
    /// The config blob.
    pub config: Vec<u8>,
    /// The manifest (canonical JSON; its sha256 is the artifact's digest).
    pub manifest: Vec<u8>,
}

/// Builds the config and manifest for a component and its payload files
/// (`(name, digest, size)`), annotated. The same inputs give the same bytes,
/// so pushing the same module twice gives the same digest.
pub fn build(
    module: &Blob,
    imports: &[String],
    exports: &[String],
    payload: &[(String, Blob)],
    annotations: &BTreeMap<String, String>,
) -> Result<Built> {
    let mut names = BTreeSet::new();
    for (name, _) in payload {
        check_payload_name(name)
            .map_err(|why| Error::BadParams(format!("payload name {name:?}: {why}")))?;
        if !names.insert(name) {
            return Err(Error::BadParams(format!("payload {name:?} is given twice")));
        }
    }
    let config = serde_json::to_vec(&json!({
        "architecture": "wasm",
        "os": "wasip2",
        "layerDigests": std::iter::once(&module.digest)
            .chain(payload.iter().map(|(_, b)| &b.digest))
            .collect::<Vec<_>>(),
        "component": { "imports": imports, "exports": exports },
    }))
    .map_err(|e| Error::Host(format!("encoding the config: {e}")))?;
    let layer = |media_type: &str, blob: &Blob, title: Option<&str>| {
        let mut layer = json!({
            "mediaType": media_type,
            "digest": blob.digest,
            "size": blob.size,
        });
        if let Some(title) = title {
            layer["annotations"] = json!({ TITLE_ANNOTATION: title });
        }
        layer
    };
    let mut layers = vec![layer(WASM_LAYER_MEDIA_TYPE, module, None)];
    layers.extend(
        payload
            .iter()
            .map(|(name, blob)| layer(PAYLOAD_MEDIA_TYPE, blob, Some(name))),
    );
    let config_blob = Blob {
        digest: sha256(&config),
        size: config.len() as u64,
    };
    let mut manifest = json!({
        "schemaVersion": 2,
        "mediaType": OCI_IMAGE_MEDIA_TYPE,
        "config": layer(WASM_CONFIG_MEDIA_TYPE, &config_blob, None),
        "layers": layers,
    });
    if !annotations.is_empty() {
        manifest["annotations"] = json!(annotations);
    }
    let manifest = serde_json::to_vec(&manifest)
        .map_err(|e| Error::Host(format!("encoding the manifest: {e}")))?;
    Ok(Built { config, manifest })
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn blob_of(bytes: &[u8]) -> Blob {
        Blob {
            digest: sha256(bytes),
            size: bytes.len() as u64,
        }
    }

    #[test]
    fn built_manifests_parse_back() {
        let payload = vec![("bridge".to_string(), blob_of(b"elf"))];
        let annotations = BTreeMap::from([("k".to_string(), "v".to_string())]);
        let built = build(&blob_of(b"wasm"), &[], &[], &payload, &annotations).unwrap();
        let layout = Layout::parse(&built.manifest, &SizeLimits::default()).unwrap();
        assert_eq!(layout.module, blob_of(b"wasm"));
        assert_eq!(layout.payload["bridge"], blob_of(b"elf"));
        assert_eq!(layout.annotations["k"], "v");
        let again = build(&blob_of(b"wasm"), &[], &[], &payload, &annotations).unwrap();
        assert_eq!(built.manifest, again.manifest);
    }

    #[test]
    fn hostile_manifests_are_refused() {
        let limits = SizeLimits::default();
        let manifest = |layers: serde_json::Value| {
            serde_json::to_vec(&json!({
                "schemaVersion": 2,
                "config": {"mediaType": WASM_CONFIG_MEDIA_TYPE, "digest": sha256(b"{}"), "size": 2},
                "layers": layers,
            }))
            .unwrap()
        };
        let wasm = json!({"mediaType": WASM_LAYER_MEDIA_TYPE, "digest": sha256(b"w"), "size": 1});
        let cases = [
            (json!([]), "no application/wasm layer"),
            (json!([wasm, wasm]), "a second"),
            (
                json!([{"mediaType": WASM_LAYER_MEDIA_TYPE, "digest": "sha256:../../etc", "size": 1}]),
                "64 lowercase hex",
            ),
            (
                json!([{"mediaType": WASM_LAYER_MEDIA_TYPE, "digest": sha256(b"w"), "size": 1u64 << 40}]),
                "the limit is",
            ),
            (
                json!([wasm, {"mediaType": PAYLOAD_MEDIA_TYPE, "digest": sha256(b"p"), "size": 1,
                    "annotations": {TITLE_ANNOTATION: "../x"}}]),
                "plain file name",
            ),
            (
                json!([wasm, {"mediaType": PAYLOAD_MEDIA_TYPE, "digest": sha256(b"p"), "size": 1}]),
                "without org.opencontainers.image.title",
            ),
            (
                json!([{"mediaType": "application/vnd.oci.image.layer.v1.tar", "digest": sha256(b"w"), "size": 1}]),
                "media type",
            ),
        ];
        for (layers, expected) in cases {
            let err = Layout::parse(&manifest(layers.clone()), &limits).unwrap_err();
            assert!(err.to_string().contains(expected), "{layers}: {err}");
        }
        let image = serde_json::to_vec(&json!({
            "schemaVersion": 2,
            "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": sha256(b"{}"), "size": 2},
            "layers": [],
        }))
        .unwrap();
        let err = Layout::parse(&image, &limits).unwrap_err();
        assert!(err.to_string().contains("container image"), "{err}");
    }
}
