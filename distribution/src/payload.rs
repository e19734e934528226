//! An action's payload: the files shipped with it — the payload layers of
//! its artifact, or the files given with `hostaction run --payload`.

use std::fs::File;
use std::path::PathBuf;
use std::sync::Arc;

use crate::artifact::{check_payload_name, sha256};
use crate::error::{Error, Result};

/// One payload file.
#[derive(Debug, Clone)]
pub struct PayloadFile {
    /// Its name, a plain file name.
    pub name: String,
    /// Its size in bytes.
    pub size: u64,
    /// `sha256:<hex>` of its bytes.
    pub digest: String,
    /// Where its bytes are (a verified blob of the module store).
    pub path: PathBuf,
    /// The file, opened when the payload was made: it stays readable if the
    /// store collects the blob meanwhile.
    pub file: Arc<File>,
}

/// The files shipped with an action, sorted by name.
#[derive(Debug, Clone, Default)]
pub struct Payload {
    files: Vec<PayloadFile>,
}

impl Payload {
    /// A payload of these files.
    pub fn new(mut files: Vec<PayloadFile>) -> Self {
        files.sort_by(|a, b| a.name.cmp(&b.name));
        Self { files }
    }

    /// A payload of local files (`NAME=FILE` of `hostaction run`), hashed now.
    pub fn from_files(files: &[(String, PathBuf)]) -> Result<Self> {
        let mut out = Vec::new();
        for (name, path) in files {
            check_payload_name(name)
                .map_err(|why| Error::BadParams(format!("payload name {name:?}: {why}")))?;
            if out.iter().any(|f: &PayloadFile| &f.name == name) {
                return Err(Error::BadParams(format!("payload {name:?} is given twice")));
            }
            let bad = |e: std::io::Error| {
                Error::BadParams(format!("payload {name}: {}: {e}", path.display()))
            };
            let file = File::open(path).map_err(bad)?;
            let mut bytes = Vec::new();
            std::io::Read::read_to_end(&mut &file, &mut bytes).map_err(bad)?;
            out.push(PayloadFile {
                name: name.clone(),
                size: bytes.len() as u64,
                digest: sha256(&bytes),
                path: path.clone(),
                file: Arc::new(file),
            });
        }
        Ok(Self::new(out))
    }

    /// The files, sorted by name.
    pub fn files(&self) -> &[PayloadFile] {
        &self.files
    }
}
