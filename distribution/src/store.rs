//! The node's module store: artifacts kept by digest, so a node runs what it
//! pulled once, also with the registry unreachable.
//!
//! Layout under the store's root:
//! - `blobs/sha256/<hex>`: verified blob bytes, read-only;
//! - `manifests/sha256/<hex>`: a manifest's bytes, written after all its
//!   blobs; its presence makes the artifact complete, its mtime is when it
//!   was last used;
//! - `verified/sha256/<hex>`: the fingerprints of the keys whose signature
//!   of that artifact was verified (a JSON list), so a warm run checks its
//!   policy against a file, not the registry; removed with the manifest;
//! - `staging/<pull>/`: blobs being fetched; renamed into `blobs/` only once
//!   every blob of the artifact is verified, so a failed pull leaves nothing;
//! - `lock`: pulls hold it shared, collection exclusive.
//!
//! The precompiled code of each component sits beside the store (the
//! engine's cache directory); collection removes it with its component.

use std::collections::BTreeMap;
use std::fs::{self, File};
use std::os::unix::fs::{DirBuilderExt, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::SystemTime;

use rustix::fs::{FlockOperation, flock};

use super::artifact::{Blob, Layout, SizeLimits, check_digest};
use crate::error::{Error, RegistryFault, Result};
use crate::payload::{Payload, PayloadFile};

/// Default bound of a store: 2 GiB of blobs and precompiled code.
pub const DEFAULT_MAX_BYTES: u64 = 2 << 30;

/// An artifact in the store, complete and verified.
#[derive(Debug, Clone)]
pub struct StoredArtifact {
    /// The manifest's digest: what runs and what is reported.
    pub digest: String,
    /// The component's digest (the module digest of run reports).
    pub module_digest: String,
    /// The component's bytes on disk.
    pub module_path: PathBuf,
    /// The component's file, opened with the artifact: it stays readable if
    /// the store collects the blob meanwhile.
    pub module_file: Arc<File>,
    /// The component's size in bytes.
    pub module_size: u64,
    /// The payload files, read-only.
    pub payload: Payload,
    /// The manifest's annotations.
    pub annotations: BTreeMap<String, String>,
    /// Who it was verified to come from, for this use of it.
    pub provenance: crate::Provenance,
}

/// What a collection did.
#[derive(Debug, Default, Clone, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Collected {
    /// Digests of the artifacts removed, least recently used first.
    pub removed: Vec<String>,
    /// Bytes freed (blobs, precompiled code, staging leftovers).
    pub freed_bytes: u64,
    /// Bytes the store holds afterwards.
    pub kept_bytes: u64,
}

/// One listed artifact.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Listed {
    /// The manifest digest.
    pub digest: String,
    /// The component's digest.
    pub module_digest: String,
    /// Bytes of its blobs.
    pub bytes: u64,
    /// Payload file names.
    pub payload: Vec<String>,
    /// Seconds since the Unix epoch it was last used.
    pub last_used: u64,
}

/// A content-addressed store of artifacts, bounded in size.
#[derive(Debug)]
pub struct ModuleStore {
    root: PathBuf,
    compiled: Option<PathBuf>,
    max_bytes: u64,
    limits: SizeLimits,
}

/// A held `flock` on the store's lock file; released on drop.
pub(crate) struct StoreLock(#[allow(dead_code)] File);

fn host(what: impl std::fmt::Display, e: impl Into<std::io::Error>) -> Error {
    Error::io(format!("module store: {what}"), e.into())
}

impl ModuleStore {
    /// Opens (creating it owner-only if needed) a store at `root`, bounded to
    /// `max_bytes`; `compiled` is the engine's cache directory, whose entries
    /// collection removes with their components.
    pub fn open(root: &Path, compiled: Option<PathBuf>, max_bytes: u64) -> Result<Self> {
        for dir in [
            "blobs/sha256",
            "manifests/sha256",
            "verified/sha256",
            "staging",
        ] {
            fs::DirBuilder::new()
                .recursive(true)
                .mode(0o700)
                .create(root.join(dir))
                .map_err(|e| host(format_args!("creating {}", root.display()), e))?;
        }
        // Resolved once, its ancestors checked: see `DiskCache::open`.
        let root = &crate::disk::trusted_directory(root)
            .map_err(|why| Error::Host(format!("module store {}: {why}", root.display())))?;
        let meta = fs::metadata(root).map_err(|e| host(root.display(), e))?;
        if meta.uid() != rustix::process::geteuid().as_raw()
            || meta.permissions().mode() & 0o022 != 0
        {
            return Err(Error::Host(format!(
                "module store {} must be owned by this user and not writable by others",
                root.display()
            )));
        }
        Ok(Self {
            root: root.to_owned(),
            compiled,
            max_bytes,
            limits: SizeLimits::default(),
        })
    }

    /// The store's root directory.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// The size caps pulls into this store accept.
    pub fn limits(&self) -> &SizeLimits {
        &self.limits
    }

    /// Replaces the size caps.
    pub fn set_limits(&mut self, limits: SizeLimits) {
        self.limits = limits;
    }

    fn blob_path(&self, digest: &str) -> PathBuf {
        self.root.join("blobs").join(digest.replacen(':', "/", 1))
    }

    fn manifest_path(&self, digest: &str) -> PathBuf {
        self.root
            .join("manifests")
            .join(digest.replacen(':', "/", 1))
    }

    fn verified_path(&self, digest: &str) -> PathBuf {
        self.root
            .join("verified")
            .join(digest.replacen(':', "/", 1))
    }

    /// The fingerprints of the keys whose signature of artifact `digest`
    /// was verified (none if it never was, or the record is unreadable).
    pub fn verified_by(&self, digest: &str) -> Vec<String> {
        if crate::artifact::check_digest(digest).is_err() {
            return Vec::new();
        }
        fs::read(self.verified_path(digest))
            .ok()
            .and_then(|bytes| serde_json::from_slice(&bytes).ok())
            .unwrap_or_default()
    }

    /// Records that key `fingerprint` signed artifact `digest` (verified).
    pub fn record_verified(&self, digest: &str, fingerprint: &str) -> Result<()> {
        crate::artifact::check_digest(digest)
            .map_err(|why| Error::Host(format!("module store: {digest:?}: {why}")))?;
        let mut keys = self.verified_by(digest);
        if keys.iter().any(|k| k == fingerprint) {
            return Ok(());
        }
        keys.push(fingerprint.to_owned());
        let bytes = serde_json::to_vec(&keys).map_err(|source| Error::Encode {
            what: "verification record",
            source,
        })?;
        // Collection (which empties staging) waits; two records at once
        // each stage under their own name.
        let _lock = self.lock_shared()?;
        static STAGED: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
        let path = self.verified_path(digest);
        let staging = self.root.join("staging").join(format!(
            "verified-{}-{}",
            std::process::id(),
            STAGED.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
        ));
        crate::disk::write_atomically(&staging, &path, &bytes)
            .map_err(|e| host(format_args!("writing {}", path.display()), e))
    }

    /// Whether a blob of this digest and size is stored.
    pub(crate) fn has_blob(&self, digest: &str, size: u64) -> bool {
        fs::metadata(self.blob_path(digest)).is_ok_and(|m| m.is_file() && m.len() == size)
    }

    fn lock(&self, op: FlockOperation) -> Result<StoreLock> {
        let file = File::options()
            .create(true)
            .truncate(false)
            .write(true)
            .open(self.root.join("lock"))
            .map_err(|e| host("lock file", e))?;
        flock(&file, op).map_err(|e| host("lock", e))?;
        Ok(StoreLock(file))
    }

    /// Held while a pull stages and commits, so collection waits for it.
    pub(crate) fn lock_shared(&self) -> Result<StoreLock> {
        self.lock(FlockOperation::LockShared)
    }

    /// A fresh staging directory for one pull.
    pub(crate) fn staging(&self) -> Result<Staging> {
        static COUNTER: AtomicU64 = AtomicU64::new(0);
        let n = COUNTER.fetch_add(1, Ordering::Relaxed);
        let dir = self
            .root
            .join("staging")
            .join(format!("{}-{n}", std::process::id()));
        fs::DirBuilder::new()
            .mode(0o700)
            .create(&dir)
            .map_err(|e| host(dir.display(), e))?;
        Ok(Staging { dir })
    }

    /// Moves a pull's verified blobs into place, then writes the manifest:
    /// the artifact exists only once all of it does. Files are synced first,
    /// so a crash leaves either the whole artifact or none of it.
    pub(crate) fn commit(
        &self,
        staging: Staging,
        digest: &str,
        manifest: &[u8],
        layout: &Layout,
    ) -> Result<()> {
        for (_, blob) in layout.blobs() {
            let staged = staging.path(&blob.digest);
            if staged.exists() {
                let target = self.blob_path(&blob.digest);
                fs::rename(&staged, &target).map_err(|e| host(target.display(), e))?;
            } else if !self.has_blob(&blob.digest, blob.size) {
                return Err(Error::Host(format!(
                    "module store: blob {} went missing during the pull",
                    blob.digest
                )));
            }
        }
        let target = self.manifest_path(digest);
        crate::disk::write_atomically(&staging.dir.join("manifest"), &target, manifest)
            .map_err(|e| host(target.display(), e))
    }

    /// The artifact of this manifest digest, if the store holds all of it;
    /// marks it used. Its files are opened under the store's lock, so a
    /// collection that removes them later does not take them from a run.
    pub fn get(&self, digest: &str) -> Result<Option<StoredArtifact>> {
        check_digest(digest).map_err(|why| {
            Error::registry(
                RegistryFault::BadReference,
                format!("digest {digest:?}: {why}"),
            )
        })?;
        let _lock = self.lock_shared()?;
        let path = self.manifest_path(digest);
        let manifest = match fs::read(&path) {
            Ok(bytes) => bytes,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(host(path.display(), e)),
        };
        let layout = match Layout::parse(&manifest, &SizeLimits::unbounded()) {
            Ok(layout) => layout,
            Err(e) => {
                tracing::warn!(%digest, error = %e, "ignoring an unreadable stored manifest");
                return Ok(None);
            }
        };
        let open = |blob: &Blob| -> Option<Arc<File>> {
            let file = File::open(self.blob_path(&blob.digest)).ok()?;
            let meta = file.metadata().ok()?;
            (meta.is_file() && meta.len() == blob.size).then(|| Arc::new(file))
        };
        let Some(module_file) = open(&layout.module) else {
            return Ok(None);
        };
        let mut payload = Vec::new();
        for (name, blob) in &layout.payload {
            let Some(file) = open(blob) else {
                return Ok(None);
            };
            payload.push(PayloadFile {
                name: name.clone(),
                size: blob.size,
                digest: blob.digest.clone(),
                path: self.blob_path(&blob.digest),
                file,
            });
        }
        if let Ok(file) = File::open(&path) {
            let _ = file.set_modified(SystemTime::now());
        }
        Ok(Some(StoredArtifact {
            digest: digest.to_owned(),
            module_digest: layout.module.digest.clone(),
            module_path: self.blob_path(&layout.module.digest),
            module_file,
            module_size: layout.module.size,
            payload: Payload::new(payload),
            annotations: layout.annotations,
            provenance: crate::Provenance::NotRequired,
        }))
    }

    /// Every complete artifact, most recently used first.
    pub fn list(&self) -> Result<Vec<Listed>> {
        let mut listed: Vec<Listed> = self
            .manifests()?
            .into_iter()
            .map(|(digest, layout, used)| Listed {
                digest,
                module_digest: layout.module.digest.clone(),
                bytes: layout.blobs().map(|(_, b)| b.size).sum(),
                payload: layout.payload.keys().cloned().collect(),
                last_used: used
                    .duration_since(SystemTime::UNIX_EPOCH)
                    .map_or(0, |d| d.as_secs()),
            })
            .collect();
        listed.sort_by_key(|l| std::cmp::Reverse(l.last_used));
        Ok(listed)
    }

    /// Stored manifests with their layouts and last use.
    fn manifests(&self) -> Result<Vec<(String, Layout, SystemTime)>> {
        let dir = self.root.join("manifests/sha256");
        let entries = fs::read_dir(&dir).map_err(|e| host(dir.display(), e))?;
        let mut found = Vec::new();
        for entry in entries.flatten() {
            let digest = format!("sha256:{}", entry.file_name().to_string_lossy());
            let path = entry.path();
            let parsed = check_digest(&digest)
                .ok()
                .and_then(|()| fs::read(&path).ok())
                .and_then(|bytes| Layout::parse(&bytes, &SizeLimits::unbounded()).ok());
            let used = entry
                .metadata()
                .and_then(|m| m.modified())
                .unwrap_or(SystemTime::UNIX_EPOCH);
            match parsed {
                Some(layout) => found.push((digest, layout, used)),
                None => {
                    let _ = fs::remove_file(&path);
                }
            }
        }
        Ok(found)
    }

    /// Collects when the store holds more than its bound, unless another
    /// process is using the store right now (then a later pull will).
    pub fn collect_if_over(&self) -> Result<Option<Collected>> {
        if self.used_bytes() <= self.max_bytes {
            return Ok(None);
        }
        let Ok(lock) = self.lock(FlockOperation::NonBlockingLockExclusive) else {
            return Ok(None);
        };
        self.collect_locked(self.max_bytes, lock).map(Some)
    }

    /// Removes least recently used artifacts until the store holds at most
    /// `max_bytes`, then every blob, precompiled component and staging
    /// leftover no remaining artifact needs. Waits for running pulls.
    pub fn collect(&self, max_bytes: u64) -> Result<Collected> {
        let lock = self.lock(FlockOperation::LockExclusive)?;
        self.collect_locked(max_bytes, lock)
    }

    fn collect_locked(&self, max_bytes: u64, _lock: StoreLock) -> Result<Collected> {
        let mut collected = Collected::default();
        // Under the exclusive lock no pull runs: staging holds only leftovers
        // of pulls that crashed.
        let staging = self.root.join("staging");
        for entry in fs::read_dir(&staging)
            .map_err(|e| host(staging.display(), e))?
            .flatten()
        {
            collected.freed_bytes += tree_bytes(&entry.path());
            let _ = fs::remove_dir_all(entry.path());
        }
        let mut manifests = self.manifests()?;
        manifests.sort_by_key(|m| std::cmp::Reverse(m.2));
        let mut kept_blobs = BTreeMap::new();
        let mut kept_bytes = 0u64;
        for (digest, layout, _) in manifests {
            let extra: u64 = layout
                .blobs()
                .filter(|(_, b)| !kept_blobs.contains_key(&b.digest))
                .map(|(_, b)| b.size + self.compiled_bytes(&b.digest))
                .sum();
            if kept_bytes + extra <= max_bytes {
                kept_bytes += extra;
                for (_, b) in layout.blobs() {
                    kept_blobs.insert(b.digest.clone(), ());
                }
            } else {
                let _ = fs::remove_file(self.manifest_path(&digest));
                let _ = fs::remove_file(self.verified_path(&digest));
                collected.removed.push(digest);
            }
        }
        collected.removed.reverse();
        let blobs = self.root.join("blobs/sha256");
        for entry in fs::read_dir(&blobs)
            .map_err(|e| host(blobs.display(), e))?
            .flatten()
        {
            let digest = format!("sha256:{}", entry.file_name().to_string_lossy());
            if !kept_blobs.contains_key(&digest) {
                collected.freed_bytes += entry.metadata().map_or(0, |m| m.len());
                collected.freed_bytes += self.compiled_bytes(&digest);
                let _ = fs::remove_file(entry.path());
                self.remove_compiled(&digest);
            }
        }
        collected.kept_bytes = kept_bytes;
        Ok(collected)
    }

    /// Bytes of blobs and of their precompiled code.
    pub fn used_bytes(&self) -> u64 {
        let blobs = self.root.join("blobs/sha256");
        fs::read_dir(blobs)
            .map(|entries| {
                entries
                    .flatten()
                    .map(|e| {
                        let digest = format!("sha256:{}", e.file_name().to_string_lossy());
                        e.metadata().map_or(0, |m| m.len()) + self.compiled_bytes(&digest)
                    })
                    .sum()
            })
            .unwrap_or(0)
    }

    /// Precompiled entries of a component: `<hex>-<engine>.cwasm`.
    fn compiled_entries(&self, digest: &str) -> Vec<PathBuf> {
        let (Some(dir), Some(hex)) = (&self.compiled, digest.strip_prefix("sha256:")) else {
            return Vec::new();
        };
        let prefix = format!("{hex}-");
        fs::read_dir(dir)
            .map(|entries| {
                entries
                    .flatten()
                    .filter(|e| e.file_name().to_string_lossy().starts_with(&prefix))
                    .map(|e| e.path())
                    .collect()
            })
            .unwrap_or_default()
    }

    fn compiled_bytes(&self, digest: &str) -> u64 {
        self.compiled_entries(digest)
            .iter()
            .map(|p| fs::metadata(p).map_or(0, |m| m.len()))
            .sum()
    }

    fn remove_compiled(&self, digest: &str) {
        for path in self.compiled_entries(digest) {
            let _ = fs::remove_file(path);
        }
    }
}

impl SizeLimits {
    /// No caps: for reading back what a pull already checked.
    fn unbounded() -> Self {
        Self {
            manifest_bytes: u64::MAX,
            module_bytes: u64::MAX,
            payload_file_bytes: u64::MAX,
            artifact_bytes: u64::MAX,
            payload_files: usize::MAX,
        }
    }
}

/// One pull's staging directory, removed (with whatever it still holds)
/// when dropped.
pub(crate) struct Staging {
    dir: PathBuf,
}

impl Staging {
    /// Where a blob of this digest is staged.
    pub(crate) fn path(&self, digest: &str) -> PathBuf {
        self.dir.join(digest.replacen(':', "-", 1))
    }
}

impl Drop for Staging {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.dir);
    }
}

fn tree_bytes(path: &Path) -> u64 {
    match fs::symlink_metadata(path) {
        Ok(m) if m.is_dir() => fs::read_dir(path)
            .map(|es| es.flatten().map(|e| tree_bytes(&e.path())).sum())
            .unwrap_or(0),
        Ok(m) => m.len(),
        Err(_) => 0,
    }
}
