//! The thread that syncs a run's journal while the change's own fsync runs
//! on the run's thread, so that a file write waits for one flush, not two
//! in turn. One per journal directory, made at its first use and kept:
//! starting a thread at each write cost more than the sync it overlapped.

use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::{Mutex, mpsc};

/// A journal to sync: its file (a duplicate of the run's descriptor) and,
/// the first time, its directory.
struct Job {
    file: File,
    dir: Option<PathBuf>,
}

struct Worker {
    jobs: mpsc::Sender<Job>,
    done: mpsc::Receiver<std::io::Result<()>>,
}

impl Worker {
    fn spawn() -> std::io::Result<Self> {
        let (jobs, inbox) = mpsc::channel::<Job>();
        let (outbox, done) = mpsc::channel();
        std::thread::Builder::new()
            .name("hostaction-journal-sync".into())
            .spawn(move || {
                // Ends when the directory (the sender) is dropped.
                for job in inbox {
                    let synced = sync(&job.file, job.dir.as_deref());
                    if outbox.send(synced).is_err() {
                        break;
                    }
                }
            })?;
        Ok(Self { jobs, done })
    }
}

/// Syncs a journal's data, and its directory (so its name) if given.
pub(crate) fn sync(file: &File, dir: Option<&Path>) -> std::io::Result<()> {
    if let Some(dir) = dir {
        File::open(dir)?.sync_all()?;
    }
    file.sync_data()
}

/// The sync thread of a journal directory.
#[derive(Default)]
pub(crate) struct Syncer {
    worker: Mutex<Option<Worker>>,
}

impl std::fmt::Debug for Syncer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Syncer")
    }
}

impl Syncer {
    /// Syncs `file` (and `dir`) on the thread while `durable` runs here;
    /// both results. Busy with another run's journal, or without a thread,
    /// it syncs here first, then runs `durable`.
    pub(crate) fn with<T>(
        &self,
        file: &File,
        dir: Option<&Path>,
        durable: impl FnOnce() -> T,
    ) -> (std::io::Result<()>, T) {
        let Ok(mut worker) = self.worker.try_lock() else {
            return inline(file, dir, durable);
        };
        if worker.is_none() {
            *worker = Worker::spawn().ok();
        }
        let sent = match (worker.as_ref(), file.try_clone()) {
            (Some(w), Ok(file)) => w
                .jobs
                .send(Job {
                    file,
                    dir: dir.map(Path::to_owned),
                })
                .is_ok(),
            _ => false,
        };
        if !sent {
            *worker = None;
            return inline(file, dir, durable);
        }
        let done = durable();
        let synced = match worker.as_ref().map(|w| w.done.recv()) {
            Some(Ok(synced)) => synced,
            _ => {
                *worker = None;
                Err(std::io::Error::other("the journal's sync thread ended"))
            }
        };
        (synced, done)
    }
}

/// The journal synced here, then `durable` run.
fn inline<T>(
    file: &File,
    dir: Option<&Path>,
    durable: impl FnOnce() -> T,
) -> (std::io::Result<()>, T) {
    (sync(file, dir), durable())
}
