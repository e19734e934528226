//! Entry points of the fuzz targets in `fuzz/` (`scripts/fuzz.sh`): each takes
//! arbitrary bytes, hands them to one parser of untrusted input through the
//! functions production calls, and asserts what must hold for any input. A
//! panic, here or in the parser, is a finding. Not a public API.
//! These are distribution's: the OCI manifest and reference parsers.

use crate::artifact::{self, Layout, SizeLimits};
use crate::{is_reference, parse_reference};

/// A target: any bytes in, a panic when something that must hold does not.
pub type Target = fn(&[u8]);

/// Runs every committed corpus input of `targets` (`fuzz/corpus/NAME/*`,
/// crash regressions included) through its target, skipping the targets
/// `skip` names; returns how many inputs ran. Each crate's tests call it for
/// its own targets, so `cargo test` replays the corpus without a fuzzing
/// toolchain.
#[allow(clippy::panic)] // a test helper: a panic is the finding
pub fn replay_corpus(targets: &[(&str, Target)], skip: impl Fn(&str) -> bool) -> usize {
    let corpus = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../fuzz/corpus");
    let mut inputs = 0;
    for (name, target) in targets {
        if skip(name) {
            continue;
        }
        let dir = corpus.join(name);
        let entries = std::fs::read_dir(&dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display()));
        for entry in entries {
            let path = entry
                .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
                .path();
            let data = std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
            let run = std::panic::catch_unwind(|| target(&data));
            assert!(run.is_ok(), "{name}: {} panics", path.display());
            inputs += 1;
        }
    }
    inputs
}

/// The targets by name (the names of `fuzz/fuzz_targets/*.rs` and of the
/// corpus directories).
pub const TARGETS: &[(&str, Target)] = &[
    ("oci_manifest", oci_manifest),
    ("oci_reference", oci_reference),
];

/// An OCI image manifest from a registry (or the store), checked as a pull
/// checks it; what passes rebuilds into the same layout.
pub fn oci_manifest(data: &[u8]) {
    let unbounded = SizeLimits {
        manifest_bytes: u64::MAX,
        module_bytes: u64::MAX,
        payload_file_bytes: u64::MAX,
        artifact_bytes: u64::MAX,
        payload_files: usize::MAX,
    };
    let limits = SizeLimits::default();
    let checked = Layout::parse(data, &limits);
    let stored = Layout::parse(data, &unbounded);
    let Ok(layout) = checked else {
        return;
    };
    assert!(
        stored.as_ref().is_ok_and(|s| *s == layout),
        "passes the pull's limits but not the store's"
    );
    assert!(layout.payload.len() <= limits.payload_files);
    assert!(layout.module.size <= limits.module_bytes);
    for (name, blob) in layout.blobs() {
        assert!(artifact::check_digest(&blob.digest).is_ok(), "{name}");
    }
    for (name, blob) in &layout.payload {
        assert!(artifact::check_payload_name(name).is_ok(), "{name:?}");
        assert!(blob.size <= limits.payload_file_bytes);
    }
    let payload: Vec<_> = layout
        .payload
        .iter()
        .map(|(n, b)| (n.clone(), b.clone()))
        .collect();
    let built = artifact::build(&layout.module, &[], &[], &payload, &layout.annotations);
    assert!(built.is_ok(), "a checked layout does not rebuild");
    if let Ok(built) = built {
        let rebuilt = Layout::parse(&built.manifest, &unbounded);
        assert!(
            rebuilt.is_ok_and(|r| r == layout),
            "a rebuilt manifest reads differently"
        );
    }
}

/// A module argument: an OCI reference or a `.wasm` file.
pub fn oci_reference(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    if is_reference(text) {
        assert!(!text.ends_with(".wasm"));
        assert!(text.contains('/'));
    }
    if let Ok(reference) = parse_reference(text)
        && let Some(digest) = reference.digest()
    {
        assert!(artifact::check_digest(digest).is_ok(), "{digest:?}");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_fuzz_corpus_passes_every_distribution_target() {
        let inputs = replay_corpus(TARGETS, |_| false);
        assert!(inputs >= TARGETS.len() * 3, "{inputs} corpus inputs");
    }
}
