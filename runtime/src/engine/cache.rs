//! The on-disk cache of precompiled modules, keyed by module digest and engine
//! configuration, so a second process loads a module without compiling it.

// Loading precompiled code is `unsafe` in wasmtime: the bytes must be ones this
// engine wrote. This module is the only place that does it, and it only loads
// files from a directory that it created owner-only and that it verifies.
#![allow(unsafe_code)]

use std::hash::{DefaultHasher, Hash, Hasher};
use std::os::unix::fs::{DirBuilderExt, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use wasmtime::Engine;
use wasmtime::component::Component;

use crate::error::{Error, Result};

/// A directory of `<digest>-<engine>.cwasm` files.
#[derive(Debug)]
pub struct DiskCache {
    dir: PathBuf,
    /// Changes with wasmtime's version and every setting that affects code.
    engine_key: String,
}

impl DiskCache {
    /// Opens (creating it owner-only if needed) the cache directory. Refuses a
    /// directory others can write, or owned by another user: code loaded from
    /// it runs unchecked.
    pub fn open(dir: &Path, engine: &Engine) -> Result<Self> {
        let host = |what: &str, e: std::io::Error| {
            Error::Host(format!("cache directory {}: {what}: {e}", dir.display()))
        };
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)
            .map_err(|e| host("create", e))?;
        // Resolved once: later loads go through no symlink an ancestor's
        // owner could swap, and no ancestor is another user's.
        let dir = &hostaction_distribution::disk::trusted_directory(dir)
            .map_err(|why| Error::Host(format!("cache directory {}: {why}", dir.display())))?;
        let meta = std::fs::metadata(dir).map_err(|e| host("stat", e))?;
        if meta.uid() != rustix::process::geteuid().as_raw()
            || meta.permissions().mode() & 0o022 != 0
        {
            return Err(Error::Host(format!(
                "cache directory {} must be owned by this user and not writable by others \
                 (precompiled code in it is trusted)",
                dir.display()
            )));
        }
        let mut hasher = DefaultHasher::new();
        engine.precompile_compatibility_hash().hash(&mut hasher);
        Ok(Self {
            dir: dir.to_owned(),
            engine_key: format!("{:016x}", hasher.finish()),
        })
    }

    /// The cache file of `digest`'s code for this engine.
    pub fn path(&self, digest: &str) -> PathBuf {
        let hex = digest.strip_prefix("sha256:").unwrap_or(digest);
        self.dir.join(format!("{hex}-{}.cwasm", self.engine_key))
    }

    /// The precompiled component for `digest`, if the cache has a usable one.
    pub fn load(&self, engine: &Engine, digest: &str) -> Option<Component> {
        let path = self.path(digest);
        if !path.exists() {
            return None;
        }
        // SAFETY: the file was written by `store` below (atomically, in a
        // directory `open` verified is ours alone) from code this engine
        // compiled; wasmtime additionally checks its header and engine settings.
        match unsafe { Component::deserialize_file(engine, &path) } {
            Ok(component) => Some(component),
            Err(e) => {
                tracing::warn!(path = %path.display(), error = %e, "ignoring unusable cache entry");
                None
            }
        }
    }

    /// Writes the precompiled component atomically. A failure only costs a
    /// compile next time, so it is logged, not returned.
    pub fn store(&self, digest: &str, component: &Component) {
        static COUNTER: AtomicU64 = AtomicU64::new(0);
        let path = self.path(digest);
        let n = COUNTER.fetch_add(1, Ordering::Relaxed);
        let tmp = path.with_extension(format!("tmp{}-{n}", std::process::id()));
        let written = component
            .serialize()
            .map_err(|e| std::io::Error::other(format!("{e:#}")))
            .and_then(|bytes| hostaction_distribution::disk::write_atomically(&tmp, &path, &bytes));
        if let Err(e) = written {
            tracing::warn!(path = %path.display(), error = %e, "could not cache precompiled module");
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use hostaction_distribution::ModuleStore;

    fn opens(dir: &Path) -> (Result<()>, Result<()>) {
        let engine = Engine::default();
        (
            DiskCache::open(&dir.join("compiled"), &engine).map(|_| ()),
            ModuleStore::open(&dir.join("modules"), None, u64::MAX)
                .map(|_| ())
                .map_err(Error::from),
        )
    }

    /// Whoever can write an ancestor of the cache could swap `compiled`
    /// for their own directory after it is opened, and have root load
    /// their code: such ancestors are refused, naming the directory and
    /// why; a root-owned sticky `/tmp` holding a root-owned entry is fine.
    #[test]
    fn cache_directories_below_another_user_s_directory_are_refused() {
        // Under /tmp (sticky, its entry ours): opens.
        let top = tempfile::tempdir().unwrap();
        let (cache, store) = opens(top.path());
        cache.unwrap();
        store.unwrap();

        // An ancestor writable by others, without the sticky bit.
        let open = top.path().join("open");
        std::fs::create_dir(&open).unwrap();
        std::fs::set_permissions(&open, std::fs::Permissions::from_mode(0o777)).unwrap();
        let (cache, store) = opens(&open.join("x"));
        for err in [cache.unwrap_err(), store.unwrap_err()] {
            let err = err.to_string();
            assert!(
                err.contains(&format!("{} is writable by others", open.display())),
                "{err}"
            );
        }

        // An ancestor another user owns (only root can hand one over).
        if rustix::process::geteuid().is_root() {
            let theirs = top.path().join("theirs");
            std::fs::create_dir(&theirs).unwrap();
            std::os::unix::fs::chown(&theirs, Some(1000), Some(1000)).unwrap();
            let (cache, store) = opens(&theirs.join("x"));
            for err in [cache.unwrap_err(), store.unwrap_err()] {
                let err = err.to_string();
                assert!(
                    err.contains(&format!("{} is owned by uid 1000", theirs.display())),
                    "{err}"
                );
            }
        }
    }
}
