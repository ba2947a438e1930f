//! A few long-lived threads that fdatasync a file on request, so the seed path can hash a
//! chunk (CPU) while the same chunk's bytes are synced (disk) without starting a thread per
//! chunk.
//!
//! A request goes to a thread only if one is waiting; when all are busy the caller syncs the
//! file itself, so a burst never queues behind another upload's sync and nothing is spawned
//! after the store opens. This module must NOT decide what is durable or in what order: it
//! syncs the file it is given and reports the result; the caller waits for that result
//! before it writes the log.

use std::fs::File;
use std::io;
use std::sync::Arc;

use crossbeam_channel::{bounded, Receiver, Sender};
use tracing::warn;

/// Threads kept; more uploads syncing at once than this sync on their own threads.
const THREADS: usize = 4;
/// Stack of each thread: it only calls fdatasync.
const STACK_BYTES: usize = 64 << 10;

/// One file to sync and where to send the result.
struct Job {
    /// The file (shared with the session, which keeps writing to it later).
    file: Arc<File>,
    /// Receives fdatasync's result.
    done: Sender<io::Result<()>>,
}

/// The sync threads; they end when this is dropped (with the store).
pub(super) struct Syncer {
    /// Zero-capacity: a job is handed over only to a thread that is waiting for one.
    jobs: Sender<Job>,
}

/// A sync under way on one of the threads.
pub(super) struct Syncing(Receiver<io::Result<()>>);

impl Syncer {
    /// Starts the threads (as many as the OS allows, up to [`THREADS`]).
    pub(super) fn new() -> Self {
        let (jobs, queue) = bounded::<Job>(0);
        for _ in 0..THREADS {
            let queue = queue.clone();
            let spawned = std::thread::Builder::new()
                .name("upload-sync".into())
                .stack_size(STACK_BYTES)
                .spawn(move || {
                    for job in queue {
                        let _ = job.done.send(job.file.sync_data());
                    }
                });
            if let Err(e) = spawned {
                warn!(error = %e, "could not start an upload sync thread; syncing inline");
                break;
            }
        }
        Syncer { jobs }
    }

    /// Starts an fdatasync of `file` on a waiting thread; `None` if every thread is busy
    /// (the caller then syncs it itself).
    pub(super) fn start(&self, file: Arc<File>) -> Option<Syncing> {
        let (done, result) = bounded(1);
        self.jobs.try_send(Job { file, done }).ok()?;
        Some(Syncing(result))
    }
}

impl Syncing {
    /// Waits for the sync to finish and returns its result.
    pub(super) fn wait(self) -> io::Result<()> {
        self.0
            .recv()
            .unwrap_or_else(|_| Err(io::Error::other("the upload sync thread stopped")))
    }
}

#[cfg(test)]
mod tests {
    use std::io::Write;

    use super::*;

    #[test]
    fn syncs_on_a_waiting_thread_or_declines() {
        let dir = tempfile::tempdir().unwrap();
        let mut f = File::create(dir.path().join("f")).unwrap();
        f.write_all(b"bytes").unwrap();
        let file = Arc::new(f);
        let syncer = Syncer::new();
        // The threads may not be waiting yet: a declined start is allowed, then it is taken.
        let syncing = (0..1000).find_map(|_| {
            std::thread::sleep(std::time::Duration::from_millis(1));
            syncer.start(file.clone())
        });
        syncing
            .expect("a sync thread takes the job")
            .wait()
            .unwrap();
        drop(syncer);
    }
}
