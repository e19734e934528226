//! The journal file: one per run, `<run-id>.undo` in the node's journal
//! directory, append-only.
//!
//! Each record is framed `[json length u32][blob length u32][crc32 u32]`
//! (little endian), then the JSON, then the blob (a file's previous bytes).
//! A record is fsync'ed before the mutation it describes is made, so a
//! record that is torn or fails its checksum was never followed by its
//! mutation: reading stops there. The first record says which run it is,
//! the last (once the run is over) how it ended.
//!
//! The process writing a journal holds an exclusive `flock` on it; the
//! kernel drops it when the process dies, which is how a later start tells
//! a run killed midway (unlocked, no end record) from one still going.
//!
//! Limits: [`MAX_RECORD_JSON`] per record's JSON, [`MAX_RECORDS`] records
//! per run; each run's journal up to
//! its run budget ([`JournalLimits::run_bytes`], 64 MiB by default) and all
//! journals of a node together up to [`JournalLimits::node_bytes`] (512 MiB).

use std::fs::File;
use std::io::{Read, Seek, SeekFrom, Write};
use std::os::fd::AsFd;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use rustix::fs::FlockOperation;
use serde::{Deserialize, Serialize};

use super::syncer::Syncer;
use super::{JournalMode, Undo};
use crate::error::{Error, Result};

/// Largest JSON part of one record (the blob is counted apart).
pub const MAX_RECORD_JSON: usize = 1 << 20;
/// Bytes of framing per record.
const FRAME: usize = 12;
/// The file name suffix of a journal whose run (or undo) has ended.
const SUFFIX: &str = ".undo";
/// The suffix while it has not: a run in progress, or cut short. Renamed
/// once the end record is written (the record, not the name, is what
/// counts: a rename lost to a crash is redone by the next recovery), so a
/// start finds the runs to recover by name alone.
const OPEN_SUFFIX: &str = ".undo.open";
/// The suffix of a journal being made: not yet a run's (a crash leaves one
/// before its run changed anything; collection removes it).
const NEW_SUFFIX: &str = ".undo.new";
/// The suffix of an open journal recovery could not read, set aside.
const DAMAGED_SUFFIX: &str = ".undo.damaged";
/// Changes one run may journal: each is a step of its undo, which must
/// end within [`crate::engine::UNDO_TIMEOUT`] (a restored file costs a
/// directory flush).
pub const MAX_RECORDS: usize = 10_000;

/// What a run's first record may take, counted against the node's budget
/// with its first effect.
const BEGIN_ALLOWANCE: u64 = 1024;
/// Longest run id.
pub const MAX_RUN_ID: usize = 128;

/// How much undo data journals may hold.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct JournalLimits {
    /// One run's journal, in bytes.
    pub run_bytes: u64,
    /// Every journal in the directory together, in bytes.
    pub node_bytes: u64,
}

impl Default for JournalLimits {
    fn default() -> Self {
        Self {
            run_bytes: 64 << 20,
            node_bytes: 512 << 20,
        }
    }
}

/// One record of a journal.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "record", rename_all = "kebab-case")]
pub(crate) enum Record {
    /// The first: which run.
    Begin(RunInfo),
    /// What undoes the mutation that follows it.
    Effect {
        capability: String,
        action: String,
        target: String,
        undo: Undo,
    },
    /// The run went past its budget in `best-effort` mode: what follows
    /// was not journaled, so the run cannot be undone.
    Overflow { why: String },
    /// How the run (or its undo) ended.
    End { state: EndState },
}

/// Which run a journal is of.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RunInfo {
    /// The run's id.
    pub run_id: String,
    /// The module's digest.
    pub digest: String,
    /// Who started it (the agent: its HostAction's uid), for finding a
    /// HostAction's runs to undo.
    pub owner: Option<String>,
    /// When it started, in milliseconds since the Unix epoch.
    pub started_ms: u64,
    /// The host root it changed: its undo and recovery act on that root
    /// only (journals are kept per cache directory, not per host root).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub host: Option<HostId>,
}

/// A host root, told apart by its directory's device and inode (two
/// spellings of one path are one root), with its path for messages.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HostId {
    /// The host root's path when the run started.
    pub path: String,
    /// Its directory's device.
    pub dev: u64,
    /// Its directory's inode.
    pub ino: u64,
}

impl HostId {
    /// The identity of the host root at `path` (none if it cannot be
    /// stat'ed, which opening it would have refused already).
    pub fn of(path: &Path) -> Option<Self> {
        use std::os::unix::fs::MetadataExt;
        let meta = std::fs::metadata(path).ok()?;
        Some(Self {
            path: path.display().to_string(),
            dev: meta.dev(),
            ino: meta.ino(),
        })
    }

    /// Whether `other` is the same directory.
    pub fn same(&self, other: &HostId) -> bool {
        (self.dev, self.ino) == (other.dev, other.ino)
    }
}

/// How a journaled run ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum EndState {
    /// The run finished and its changes stay (undoable later).
    Applied,
    /// The run failed and was rolled back (or recovered after a crash).
    RolledBack,
    /// The run was undone later.
    Undone,
}

/// What a journal on disk says: its run, how far it got, how it ended.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct JournalInfo {
    /// The run.
    #[serde(flatten)]
    pub run: RunInfo,
    /// Effects journaled.
    pub effects: usize,
    /// Its size in bytes.
    pub bytes: u64,
    /// Its last end record; none: the run did not finish (or is running).
    pub end: Option<EndState>,
    /// Whether it overflowed its budget (`best-effort`): not undoable.
    pub overflowed: bool,
    /// A record that fails its checksum (or does not parse) with more bytes
    /// after it: not a write torn by a crash but damage. What was journaled
    /// after it is unknown, and cannot be undone.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub damaged: Option<String>,
}

/// A journal read back: its records (blobs left on disk), for undoing.
pub(crate) struct ReadJournal {
    pub(crate) file: File,
    /// Its path while open (renamed when it ends); none for a temporary one.
    open_path: Option<PathBuf>,
    /// Its path as read; none for a temporary one.
    path: Option<PathBuf>,
    pub(crate) info: JournalInfo,
    /// Where the last whole record ends: what follows (a record torn by a
    /// crash, or damage) is cut off before the end record is appended,
    /// which would be unreadable behind it.
    good_len: u64,
    /// Each effect with where its blob is (offset, length).
    pub(crate) effects: Vec<(Record, u64, u32)>,
}

impl ReadJournal {
    /// The blob of an effect, verified against nothing more than the
    /// record's checksum (already checked when it was read).
    pub(crate) fn blob(&mut self, offset: u64, len: u32) -> Result<Vec<u8>> {
        let mut buf = vec![0; len as usize];
        self.file
            .seek(SeekFrom::Start(offset))
            .and_then(|_| self.file.read_exact(&mut buf))
            .map_err(|e| Error::io(format!("journal of run {}", self.info.run.run_id), e))?;
        Ok(buf)
    }

    /// Appends the end record, durably, right after the last whole record.
    pub(crate) fn end(&mut self, state: EndState) -> Result<()> {
        let run = self.info.run.run_id.clone();
        let good = self.good_len;
        if let (Some(why), Some(path)) = (&self.info.damaged, &self.path) {
            // What follows the damage is cut off below: a copy of the whole
            // stays, for an administrator to look at.
            let copy = path.with_file_name(format!("{run}{DAMAGED_SUFFIX}"));
            match std::fs::copy(path, &copy) {
                Ok(_) => tracing::warn!(run = %run, %why, copy = %copy.display(),
                    "a damaged journal: its unreadable part is cut off; a copy of the whole is kept"),
                Err(error) => tracing::warn!(run = %run, %why, %error,
                    "a damaged journal: its unreadable part is cut off, and could not be copied"),
            }
        }
        self.file
            .metadata()
            .and_then(|m| match m.len() == good {
                true => Ok(()),
                false => self.file.set_len(good),
            })
            .and_then(|()| self.file.seek(SeekFrom::End(0)))
            .map_err(|e| Error::io(format!("journal of run {run}"), e))?;
        append(&mut self.file, &Record::End { state }, &[])
            .and_then(|_| self.file.sync_data())
            .map_err(|e| Error::io(format!("journal of run {run}"), e))?;
        self.info.end = Some(state);
        close(self.open_path.take())
    }
}

/// Renames an open journal to its ended name.
fn close(open_path: Option<PathBuf>) -> Result<()> {
    let Some(open) = open_path else {
        return Ok(());
    };
    let Some(ended) = open
        .to_str()
        .and_then(|p| p.strip_suffix(".open"))
        .map(PathBuf::from)
    else {
        return Ok(());
    };
    std::fs::rename(&open, &ended).map_err(|e| Error::io(open.display().to_string(), e))
}

/// The node's journal directory and its limits.
#[derive(Debug, Clone)]
pub struct JournalDir {
    dir: PathBuf,
    limits: JournalLimits,
    syncer: Arc<Syncer>,
}

impl JournalDir {
    /// The directory `dir` (made if missing, mode 0700: a journal holds
    /// files' previous contents) with `limits`.
    pub fn open(dir: &Path, limits: JournalLimits) -> Result<Self> {
        use std::os::unix::fs::DirBuilderExt;
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)
            .map_err(|e| Error::io(format!("journal directory {}", dir.display()), e))?;
        // Made earlier, or by something else, with a wider mode: journals
        // hold files' previous bytes (a key, a password), so only their
        // owner may list or read them.
        use rustix::fs::{Mode, OFlags};
        let what = || format!("journal directory {}", dir.display());
        let fd = rustix::fs::open(
            dir,
            OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
            Mode::empty(),
        )
        .map_err(|e| Error::io(what(), e.into()))?;
        let st = rustix::fs::fstat(&fd).map_err(|e| Error::io(what(), e.into()))?;
        if st.st_uid != rustix::process::geteuid().as_raw() {
            return Err(Error::Host(format!(
                "{} is owned by uid {}, not by this process's user: it cannot hold undo journals",
                what(),
                st.st_uid
            )));
        }
        if st.st_mode & 0o077 != 0 {
            rustix::fs::fchmod(&fd, Mode::from_raw_mode(0o700))
                .map_err(|e| Error::io(what(), e.into()))?;
        }
        Ok(Self {
            dir: dir.to_owned(),
            limits,
            syncer: Arc::default(),
        })
    }

    /// Where the journals are.
    pub fn path(&self) -> &Path {
        &self.dir
    }

    /// The limits.
    pub fn limits(&self) -> JournalLimits {
        self.limits
    }

    fn file(&self, run_id: &str) -> PathBuf {
        self.dir.join(format!("{run_id}{SUFFIX}"))
    }

    fn open_file(&self, run_id: &str) -> PathBuf {
        self.dir.join(format!("{run_id}{OPEN_SUFFIX}"))
    }

    /// The journals in the directory by name: each run id, whether it is
    /// still open, and its file's metadata. Names that are not a journal's
    /// are left alone.
    fn entries(&self) -> Result<Vec<(String, bool, std::fs::Metadata)>> {
        let what = || format!("journal directory {}", self.dir.display());
        let mut out = Vec::new();
        for entry in std::fs::read_dir(&self.dir).map_err(|e| Error::io(what(), e))? {
            let entry = entry.map_err(|e| Error::io(what(), e))?;
            let name = entry.file_name();
            let Some(name) = name.to_str() else { continue };
            let (run_id, open) = match name.strip_suffix(OPEN_SUFFIX) {
                Some(id) => (id, true),
                None => match name.strip_suffix(SUFFIX) {
                    Some(id) => (id, false),
                    None => continue,
                },
            };
            if check_run_id(run_id).is_err() {
                continue;
            }
            if let Ok(meta) = entry.metadata() {
                out.push((run_id.to_owned(), open, meta));
            }
        }
        Ok(out)
    }

    /// Every journal in the directory, oldest first; one that cannot be read
    /// is listed by the error that names it.
    pub fn list(&self) -> Result<Vec<std::result::Result<JournalInfo, Error>>> {
        let mut out: Vec<_> = self
            .entries()?
            .into_iter()
            .map(|(run_id, _, _)| self.read(&run_id, false).map(|j| j.info))
            .collect();
        out.sort_by_key(|j| match j {
            Ok(info) => (info.run.started_ms, info.run.run_id.clone()),
            Err(_) => (0, String::new()),
        });
        Ok(out)
    }

    /// The runs whose journals are still open: in progress, or cut short.
    pub(crate) fn open_runs(&self) -> Result<Vec<String>> {
        let mut open: Vec<(std::time::SystemTime, String)> = self
            .entries()?
            .into_iter()
            .filter(|(_, open, _)| *open)
            .map(|(id, _, meta)| (meta.modified().unwrap_or(UNIX_EPOCH), id))
            .collect();
        open.sort();
        Ok(open.into_iter().map(|(_, id)| id).collect())
    }

    /// Bytes all journals hold.
    fn used_bytes(&self) -> u64 {
        self.entries()
            .into_iter()
            .flatten()
            .map(|(_, _, meta)| meta.len())
            .sum()
    }

    /// Whether another process holds the lock of run `run_id`'s open
    /// journal (a run still going, or an undo under way).
    pub(crate) fn busy(&self, run_id: &str) -> bool {
        std::fs::File::open(self.open_file(run_id)).is_ok_and(|file| {
            rustix::fs::flock(file.as_fd(), FlockOperation::NonBlockingLockShared)
                .is_err_and(|e| e == rustix::io::Errno::WOULDBLOCK)
        })
    }

    /// Sets an open journal that cannot be read aside, as
    /// `<run id>.undo.damaged`: recovery does not try it again, and an
    /// administrator can look at it. Returns its new path.
    pub(crate) fn set_aside(&self, run_id: &str) -> Result<PathBuf> {
        check_run_id(run_id)?;
        let from = self.open_file(run_id);
        let to = self.dir.join(format!("{run_id}{DAMAGED_SUFFIX}"));
        std::fs::rename(&from, &to).map_err(|e| Error::io(from.display().to_string(), e))?;
        Ok(to)
    }

    /// Reads a run's journal; with `lock`, holds its lock (refusing one that
    /// another process holds: a run still going, or an undo under way).
    pub(crate) fn read(&self, run_id: &str, lock: bool) -> Result<ReadJournal> {
        check_run_id(run_id)?;
        let open = |path: &Path| {
            std::fs::OpenOptions::new()
                .read(true)
                .append(lock)
                .open(path)
        };
        let (path, open_path, file) = match open(&self.file(run_id)) {
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                let path = self.open_file(run_id);
                let file = open(&path);
                (path.clone(), Some(path), file)
            }
            file => (self.file(run_id), None, file),
        };
        let mut file = file.map_err(|e| match e.kind() {
            std::io::ErrorKind::NotFound => Error::BadParams(format!(
                "no journal of run {run_id} in {}: the run changed nothing, \
                 or its journal was collected",
                self.dir.display()
            )),
            _ => Error::io(path.display().to_string(), e),
        })?;
        if lock {
            rustix::fs::flock(file.as_fd(), FlockOperation::NonBlockingLockExclusive).map_err(
                |_| {
                    Error::Host(format!(
                        "run {run_id} is in use by another process (still running, or being undone)"
                    ))
                },
            )?;
        }
        read_records(&mut file, run_id).map(|(info, effects, good_len)| ReadJournal {
            file,
            path: Some(path),
            open_path,
            info,
            good_len,
            effects,
        })
    }

    /// Deletes a run's ended journal (collecting it with its run's record).
    /// An open one is left: its run may still be going, or need recovery.
    pub fn remove(&self, run_id: &str) -> Result<()> {
        check_run_id(run_id)?;
        match std::fs::remove_file(self.file(run_id)) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(Error::io(self.file(run_id).display().to_string(), e)),
        }
    }

    /// Deletes the oldest ended journals (by modification time) past the
    /// newest `keep`. Reads no journal: the names say which have ended.
    pub fn collect(&self, keep: usize) -> Result<usize> {
        let mut ended: Vec<(std::time::SystemTime, String)> = self
            .entries()?
            .into_iter()
            .filter(|(_, open, _)| !*open)
            .map(|(id, _, meta)| (meta.modified().unwrap_or(UNIX_EPOCH), id))
            .collect();
        ended.sort();
        let extra = ended.len().saturating_sub(keep);
        for (_, id) in &ended[..extra] {
            self.remove(id)?;
        }
        // Journals a crash left while being made (before their run changed
        // anything), unless a live process still holds one.
        for entry in std::fs::read_dir(&self.dir).into_iter().flatten().flatten() {
            if !entry.file_name().to_string_lossy().ends_with(NEW_SUFFIX) {
                continue;
            }
            let held = File::open(entry.path()).map(|f| {
                rustix::fs::flock(f.as_fd(), FlockOperation::NonBlockingLockExclusive).is_err()
            });
            if held.is_ok_and(|held| !held) {
                let _ = std::fs::remove_file(entry.path());
            }
        }
        Ok(extra)
    }
}

/// Refuses a run id that is not a plain file name: `[A-Za-z0-9._-]`, not
/// starting with `.`, up to [`MAX_RUN_ID`] bytes.
pub fn check_run_id(id: &str) -> Result<()> {
    let ok = !id.is_empty()
        && id.len() <= MAX_RUN_ID
        && !id.starts_with('.')
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'));
    if ok {
        Ok(())
    } else {
        Err(Error::BadParams(format!(
            "run id {:?}: use 1 to {MAX_RUN_ID} of A-Z a-z 0-9 . _ - (not starting with .)",
            crate::report::printable(id)
        )))
    }
}

/// A new run id: the time in milliseconds, the process and a counter, so
/// ids sort by start and never repeat on a node.
pub fn new_run_id() -> String {
    use std::sync::atomic::{AtomicU64, Ordering};
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    format!(
        "{}-{}-{}",
        now_ms(),
        std::process::id(),
        COUNTER.fetch_add(1, Ordering::Relaxed)
    )
}

pub(crate) fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// Writes one framed record.
fn append(file: &mut File, record: &Record, blob: &[u8]) -> std::io::Result<u64> {
    let json = serde_json::to_vec(record).map_err(std::io::Error::other)?;
    append_json(file, &json, blob)
}

/// Writes one framed record from its JSON.
fn append_json(file: &mut File, json: &[u8], blob: &[u8]) -> std::io::Result<u64> {
    if json.len() > MAX_RECORD_JSON {
        return Err(std::io::Error::other(format!(
            "a journal record of {} bytes (the limit is {MAX_RECORD_JSON})",
            json.len()
        )));
    }
    let mut crc = crc32fast::Hasher::new();
    crc.update(json);
    crc.update(blob);
    let mut buf = Vec::with_capacity(FRAME + json.len() + blob.len());
    buf.extend_from_slice(&(json.len() as u32).to_le_bytes());
    buf.extend_from_slice(&(blob.len() as u32).to_le_bytes());
    buf.extend_from_slice(&crc.finalize().to_le_bytes());
    buf.extend_from_slice(json);
    buf.extend_from_slice(blob);
    file.write_all(&buf)?;
    Ok(buf.len() as u64)
}

/// Reads every whole record; stops at the first torn or corrupt one.
type Effects = Vec<(Record, u64, u32)>;

fn read_records(file: &mut File, run_id: &str) -> Result<(JournalInfo, Effects, u64)> {
    let what = || format!("journal of run {run_id}");
    let len = file.metadata().map_err(|e| Error::io(what(), e))?.len();
    file.seek(SeekFrom::Start(0))
        .map_err(|e| Error::io(what(), e))?;
    let mut reader = std::io::BufReader::new(&*file);
    let mut at = 0u64;
    let mut info: Option<JournalInfo> = None;
    let mut effects = Vec::new();
    // A bad record that ends before the file does: damage, not a torn tail.
    let mut damaged = None;
    let damage = |at: u64, end: u64, why: &str| {
        (end < len).then(|| {
            format!(
                "the record at byte {at} {why}, and {} bytes follow it: what was journaled \
                 after it is unknown",
                len - end
            )
        })
    };
    loop {
        let mut frame = [0u8; FRAME];
        if len - at < FRAME as u64 || reader.read_exact(&mut frame).is_err() {
            break;
        }
        let word =
            |i: usize| u32::from_le_bytes([frame[i], frame[i + 1], frame[i + 2], frame[i + 3]]);
        let (json_len, blob_len, crc) = (word(0), word(4), word(8));
        let rest = u64::from(json_len) + u64::from(blob_len);
        if json_len as usize > MAX_RECORD_JSON || len - at - (FRAME as u64) < rest {
            break;
        }
        let mut json = vec![0; json_len as usize];
        if reader.read_exact(&mut json).is_err() {
            break;
        }
        let mut hasher = crc32fast::Hasher::new();
        hasher.update(&json);
        // The blob is checksummed as it is read past, not kept.
        let mut left = blob_len as usize;
        let mut chunk = vec![0u8; left.min(64 << 10)];
        while left > 0 {
            let n = left.min(chunk.len());
            if reader.read_exact(&mut chunk[..n]).is_err() {
                break;
            }
            hasher.update(&chunk[..n]);
            left -= n;
        }
        let record_end = at + FRAME as u64 + rest;
        if left > 0 || hasher.finalize() != crc {
            damaged = damage(at, record_end, "fails its checksum");
            break;
        }
        let Ok(record) = serde_json::from_slice::<Record>(&json) else {
            damaged = damage(at, record_end, "does not parse");
            break;
        };
        let blob_at = at + FRAME as u64 + u64::from(json_len);
        match (&mut info, record) {
            (None, Record::Begin(run)) => {
                info = Some(JournalInfo {
                    run,
                    effects: 0,
                    bytes: len,
                    end: None,
                    overflowed: false,
                    damaged: None,
                })
            }
            (None, _) => break,
            (Some(_), Record::Begin(_)) => {
                damaged = damage(at, record_end, "is a second first record");
                break;
            }
            (Some(i), Record::End { state }) => i.end = Some(state),
            (Some(i), Record::Overflow { .. }) => i.overflowed = true,
            (Some(i), effect @ Record::Effect { .. }) => {
                i.effects += 1;
                effects.push((effect, blob_at, blob_len));
            }
        }
        at = record_end;
    }
    let mut info = info.ok_or_else(|| {
        Error::Host(format!(
            "the journal of run {run_id} has no readable first record"
        ))
    })?;
    info.damaged = damaged;
    Ok((info, effects, at))
}

/// The journal of a run in progress, made at its first mutation (a run
/// that changes nothing writes nothing).
pub(crate) struct JournalWriter {
    /// Where, or none: an unnamed temporary file (rollback only).
    dir: Option<JournalDir>,
    run: RunInfo,
    mode: JournalMode,
    file: Option<File>,
    /// Bytes written and the budget for this run.
    written: u64,
    budget: u64,
    /// Effect records written (at most [`MAX_RECORDS`]).
    records: usize,
    overflowed: bool,
    marks: SyncMarks,
}

/// What of a journal is not durable yet.
#[derive(Debug, Default)]
struct SyncMarks {
    /// Records written since the journal was last synced.
    unsynced: bool,
    /// Among them, the undo of a change to files, which a power cut keeps
    /// (netlink and systemd state does not outlive one).
    unsynced_files: bool,
    /// Whether its name (the directory entry) has been synced.
    name_synced: bool,
}

/// Why a record could not be journaled.
pub(crate) enum JournalRefusal {
    /// Past the budget (in `required` mode): the mutation must not be made.
    Budget(String),
    /// The journal could not be written.
    Io(String),
}

impl JournalWriter {
    /// A journal for `run`, in `dir` (or a temporary file), not yet made.
    pub(crate) fn new(dir: Option<JournalDir>, run: RunInfo, mode: JournalMode) -> Self {
        let budget = dir
            .as_ref()
            .map_or(JournalLimits::default().run_bytes, |d| d.limits.run_bytes);
        Self {
            dir,
            run,
            mode,
            file: None,
            written: 0,
            budget,
            records: 0,
            overflowed: false,
            marks: SyncMarks::default(),
        }
    }

    /// Whether the run can be undone: journaled in full.
    pub(crate) fn undoable(&self) -> bool {
        self.mode != JournalMode::Off && !self.overflowed
    }

    /// Creates the journal file (locked) and writes its first record.
    fn start(&mut self) -> std::result::Result<&mut File, JournalRefusal> {
        let io = |e: std::io::Error| JournalRefusal::Io(e.to_string());
        if self.file.is_none() {
            let file = match &self.dir {
                Some(dir) => {
                    if dir.file(&self.run.run_id).exists() {
                        return Err(JournalRefusal::Io(format!(
                            "a journal of run {} exists already (run ids are unique per node)",
                            self.run.run_id
                        )));
                    }
                    // Made under a name recovery does not look at, locked and
                    // given its first record, then renamed to `.undo.open`:
                    // another process's recovery never finds it unlocked or
                    // empty. 0600: a journal holds files' previous bytes.
                    let new = dir.dir.join(format!("{}{NEW_SUFFIX}", self.run.run_id));
                    let mut file = std::fs::OpenOptions::new()
                        .read(true)
                        .append(true)
                        .create_new(true)
                        .mode(0o600)
                        .open(&new)
                        .map_err(|e| JournalRefusal::Io(format!("{}: {e}", new.display())))?;
                    rustix::fs::flock(file.as_fd(), FlockOperation::NonBlockingLockExclusive)
                        .map_err(|e| JournalRefusal::Io(format!("{}: {e}", new.display())))?;
                    self.written +=
                        append(&mut file, &Record::Begin(self.run.clone()), &[]).map_err(io)?;
                    let path = dir.open_file(&self.run.run_id);
                    std::fs::rename(&new, &path)
                        .map_err(|e| JournalRefusal::Io(format!("{}: {e}", path.display())))?;
                    file
                }
                None => {
                    let mut file = tempfile::tempfile().map_err(io)?;
                    self.written +=
                        append(&mut file, &Record::Begin(self.run.clone()), &[]).map_err(io)?;
                    file
                }
            };
            self.file = Some(file);
        }
        self.file
            .as_mut()
            .ok_or_else(|| JournalRefusal::Io("no journal".into()))
    }

    /// Journals what undoes the next mutation, durably. Past the budget:
    /// `required` refuses (the mutation must not be made), `best-effort`
    /// marks the run not undoable and lets it go on; `off` journals nothing.
    pub(crate) fn write(
        &mut self,
        capability: &str,
        action: &str,
        target: &str,
        undo: Undo,
        blob: &[u8],
    ) -> std::result::Result<(), JournalRefusal> {
        if self.mode == JournalMode::Off || self.overflowed {
            return Ok(());
        }
        let files = matches!(undo, Undo::Files(_));
        let record = Record::Effect {
            capability: capability.to_owned(),
            action: action.to_owned(),
            target: target.to_owned(),
            undo,
        };
        let json = serde_json::to_vec(&record).map_err(|e| JournalRefusal::Io(e.to_string()))?;
        let cost = (FRAME + json.len() + blob.len()) as u64;
        if self.file.is_none()
            && let Some(dir) = &self.dir
        {
            // What the node's journals leave, before the first record is
            // weighed (and its first record with it).
            let left = dir.limits.node_bytes.saturating_sub(dir.used_bytes());
            self.budget = self.budget.min(left.saturating_sub(BEGIN_ALLOWANCE));
        }
        let over = if self.written + cost > self.budget {
            Some(format!(
                "the undo journal of this run would pass its budget of {} bytes ({} written, \
                 this change needs {cost}; per run {} MiB, per node {} MiB of journals)",
                self.budget,
                self.written,
                self.dir.as_ref().map_or(64, |d| d.limits.run_bytes >> 20),
                self.dir.as_ref().map_or(512, |d| d.limits.node_bytes >> 20),
            ))
        } else if self.records >= MAX_RECORDS {
            // Each record is one step of an undo, which must end within
            // its deadline.
            Some(format!(
                "the undo journal of this run would pass {MAX_RECORDS} changes"
            ))
        } else {
            None
        };
        if let Some(why) = over {
            if self.mode == JournalMode::Required {
                return Err(JournalRefusal::Budget(why));
            }
            self.overflowed = true;
            let json = serde_json::to_vec(&Record::Overflow { why })
                .map_err(|e| JournalRefusal::Io(e.to_string()))?;
            return self.append(&json, &[]);
        }
        self.append(&json, blob)?;
        self.marks.unsynced_files |= files;
        self.records += 1;
        Ok(())
    }

    /// Appends a record (synced at the next [`Barrier`]); a write that
    /// fails midway (a full disk) is cut off, so the end record after it
    /// stays readable.
    fn append(&mut self, json: &[u8], blob: &[u8]) -> std::result::Result<(), JournalRefusal> {
        self.start()?;
        let good = self.written;
        let file = self
            .file
            .as_mut()
            .ok_or_else(|| JournalRefusal::Io("no journal".into()))?;
        match append_json(file, json, blob) {
            Ok(n) => {
                self.written = good + n;
                self.marks.unsynced = true;
                Ok(())
            }
            Err(e) => {
                let _ = file.set_len(good);
                Err(JournalRefusal::Io(e.to_string()))
            }
        }
    }

    /// What makes the journal durable, for the next [`Barrier`]: nothing
    /// if every record is synced already (or the journal is a temporary
    /// file, which no crash leaves behind).
    pub(crate) fn barrier(&mut self) -> Barrier<'_> {
        let pending = self.marks.unsynced && self.dir.is_some();
        Barrier {
            file: self.file.as_ref().filter(|_| pending),
            dir: self
                .dir
                .as_ref()
                .filter(|_| pending && !self.marks.name_synced)
                .map(|d| d.dir.as_path()),
            syncer: self.dir.as_ref().map(|d| &*d.syncer),
            synced: std::cell::Cell::new(false),
            marks: Some(&mut self.marks),
        }
    }

    /// Ends the journal of a run whose changes stay: one end record, nothing
    /// read back. A temporary journal (no directory) is just dropped.
    pub(crate) fn end_applied(mut self) -> Result<()> {
        let Some(dir) = self.dir.clone() else {
            return Ok(());
        };
        let run = self.run.run_id.clone();
        let Some(file) = self.file.as_mut() else {
            return Ok(());
        };
        append(
            file,
            &Record::End {
                state: EndState::Applied,
            },
            &[],
        )
        .map_err(|e| Error::io(format!("journal of run {run}"), e))?;
        // Records of changes to files made since the last barrier (a
        // directory made after the last file written) become durable with
        // the end record. Without, the end record is left to the kernel's
        // writeback (and so are records of netlink and systemd changes,
        // which a power cut undoes itself): lost to a power cut, the run is
        // rolled back at the next start — as before it, never in between.
        if self.marks.unsynced_files {
            self.barrier()
                .sync()
                .map_err(|e| Error::io(format!("journal of run {run}"), e.into()))?;
        }
        close(Some(dir.open_file(&run)))
    }

    /// The journal read back, to roll its run back; none if nothing was
    /// journaled.
    pub(crate) fn into_read(self) -> Result<Option<ReadJournal>> {
        let Some(mut file) = self.file else {
            return Ok(None);
        };
        let open_path = self.dir.as_ref().map(|d| d.open_file(&self.run.run_id));
        let (info, effects, good_len) = read_records(&mut file, &self.run.run_id)?;
        Ok(Some(ReadJournal {
            file,
            path: open_path.clone(),
            open_path,
            info,
            good_len,
            effects,
        }))
    }
}

/// Makes the journal durable before a change is: synced (its name too,
/// the first time) alone, or on the directory's sync thread while the
/// change's own fsync runs, so a file write waits for one flush, not two.
pub(crate) struct Barrier<'a> {
    file: Option<&'a File>,
    dir: Option<&'a Path>,
    syncer: Option<&'a Syncer>,
    synced: std::cell::Cell<bool>,
    /// The writer's marks, updated once the barrier synced.
    marks: Option<&'a mut SyncMarks>,
}

impl Barrier<'_> {
    /// A barrier with nothing to sync (plan mode, no journal).
    pub(crate) fn none() -> Self {
        Barrier {
            file: None,
            dir: None,
            syncer: None,
            synced: std::cell::Cell::new(false),
            marks: None,
        }
    }

    /// Syncs the journal now.
    pub(crate) fn sync(&self) -> std::result::Result<(), rustix::io::Errno> {
        if let (Some(file), false) = (self.file, self.synced.get()) {
            super::syncer::sync(file, self.dir).map_err(io_errno)?;
            self.synced.set(true);
        }
        Ok(())
    }

    /// Runs `durable` (the fsync that makes a change durable, done before
    /// the change is visible: a temporary file before its rename) while the
    /// journal is synced; both must succeed before the caller goes on.
    pub(crate) fn sync_with<T>(
        &self,
        durable: impl FnOnce() -> std::result::Result<T, rustix::io::Errno>,
    ) -> std::result::Result<T, rustix::io::Errno> {
        let Some(file) = self.file.filter(|_| !self.synced.get()) else {
            return durable();
        };
        let (journal, done) = match self.syncer {
            Some(syncer) => syncer.with(file, self.dir, durable),
            None => (super::syncer::sync(file, self.dir), durable()),
        };
        journal.map_err(io_errno)?;
        self.synced.set(true);
        done
    }
}

impl Drop for Barrier<'_> {
    fn drop(&mut self) {
        if let (true, Some(marks)) = (self.synced.get(), self.marks.as_mut()) {
            marks.unsynced = false;
            marks.unsynced_files = false;
            marks.name_synced = true;
        }
    }
}

fn io_errno(e: std::io::Error) -> rustix::io::Errno {
    rustix::io::Errno::from_io_error(&e).unwrap_or(rustix::io::Errno::IO)
}
