//! Group commit of the state journal's appends ([`JournalSync`]): an
//! append's fdatasync is shared with the appends written while another is
//! in flight, and [`Durable`] is what a request waits for before it is
//! answered. The journal itself is `super` (`state.rs`).

use std::{
    fs::File,
    io,
    sync::{Arc, Condvar, Mutex, MutexGuard},
};

use super::{StateError, StateStore};

/// Group commit of journal appends. An append is written under the state
/// lock, but its fdatasync may wait until the lock is released
/// ([`StateStore::defer`], [`StateStore::take_durable`]): requests that
/// append while one fsync is in flight then share the next one, and each
/// is answered once an fsync that began after its write has returned. A
/// snapshot is durable when written, so it covers every append before it.
/// One per state directory for the life of a process (the agent's cache
/// carries it from one request's store to the next).
#[derive(Debug, Default)]
pub struct JournalSync {
    state: Mutex<SyncState>,
    done: Condvar,
    /// Test seam: every fsync takes this much longer (a slow disk).
    #[cfg(test)]
    slow: std::time::Duration,
}

#[derive(Debug, Default)]
pub(super) struct SyncState {
    /// Appends written, numbered from 1 (the tickets), and the last durable
    /// one.
    pub(super) written: u64,
    pub(super) durable: u64,
    /// The last append an fsync failed for (its change is not known to be
    /// on disk).
    pub(super) failed: u64,
    /// Whether a waiter is in fsync now (the others wait for it).
    pub(super) syncing: bool,
    /// The journal the last append went to.
    pub(super) file: Option<Arc<File>>,
    /// An fsync failed: the next change writes a snapshot instead.
    pub(super) broken: bool,
    /// fsyncs made.
    pub(super) syncs: u64,
}

impl JournalSync {
    /// One whose every fsync takes `delay` longer (a slow disk). Tests only.
    #[cfg(test)]
    pub(super) fn slow(delay: std::time::Duration) -> JournalSync {
        JournalSync {
            slow: delay,
            ..JournalSync::default()
        }
    }

    pub(super) fn lock(&self) -> MutexGuard<'_, SyncState> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Notes an append written to `file`; returns its ticket.
    pub(super) fn written(&self, file: Arc<File>) -> u64 {
        let mut s = self.lock();
        s.written += 1;
        s.file = Some(file);
        s.written
    }

    /// A snapshot made every append so far durable.
    pub(super) fn covered(&self) {
        let mut s = self.lock();
        s.durable = s.written;
        s.broken = false;
        self.done.notify_all();
    }

    /// Whether an fsync failed since the last snapshot.
    pub(super) fn broken(&self) -> bool {
        self.lock().broken
    }

    /// How many fsyncs were made.
    pub fn syncs(&self) -> u64 {
        self.lock().syncs
    }

    /// Returns once append `ticket` is durable: waits for the fsync in
    /// flight, or makes the next one itself (for every append written by
    /// then, its own and the others').
    pub(super) fn wait(&self, ticket: u64) -> Result<(), StateError> {
        let mut s = self.lock();
        loop {
            if s.durable >= ticket {
                return Ok(());
            }
            if s.failed >= ticket {
                return Err(StateError::Sync(io::Error::other(
                    "an earlier fsync of the journal failed",
                )));
            }
            if s.syncing {
                s = self.done.wait(s).unwrap_or_else(|e| e.into_inner());
                continue;
            }
            let (target, file) = (s.written, s.file.clone());
            s.syncing = true;
            drop(s);
            let r = file.map_or(Ok(()), |f| self.fsync(&f));
            s = self.lock();
            s.syncing = false;
            s.syncs += 1;
            let out = match r {
                Ok(()) => {
                    s.durable = s.durable.max(target);
                    Ok(())
                }
                Err(e) => {
                    s.failed = s.failed.max(target);
                    s.broken = true;
                    Err(StateError::Sync(e))
                }
            };
            self.done.notify_all();
            if s.durable >= ticket || out.is_err() {
                return out;
            }
        }
    }

    fn fsync(&self, f: &File) -> io::Result<()> {
        #[cfg(test)]
        std::thread::sleep(self.slow);
        f.sync_data()
    }
}

/// An append not yet known to be durable, to wait for once the state lock
/// is released ([`StateStore::take_durable`]).
#[derive(Debug)]
#[must_use = "the change is acknowledged only once durable"]
pub struct Durable {
    pub(super) sync: Arc<JournalSync>,
    pub(super) ticket: u64,
}

impl Durable {
    /// Whether there is anything to wait for.
    pub fn pending(&self) -> bool {
        self.ticket != 0
    }

    /// Whether [`Self::wait`] would return at once (an fsync started
    /// early has covered the append already, or failed).
    pub fn settled(&self) -> bool {
        let s = self.sync.lock();
        self.ticket == 0 || s.durable >= self.ticket || s.failed >= self.ticket
    }

    /// Waits until the append is on disk (blocking: an fsync, or the one in
    /// flight and the next).
    pub fn wait(self) -> Result<(), StateError> {
        if self.ticket == 0 {
            return Ok(());
        }
        self.sync.wait(self.ticket)
    }
}

impl Drop for StateStore {
    /// A deferred append nobody took ([`Self::take_durable`]) is waited
    /// for here, under the lock: no change goes unsynced. Its error is
    /// not lost: the next change writes a snapshot ([`JournalSync`]).
    fn drop(&mut self) {
        if self.pending != 0 {
            let _ = self.sync.wait(std::mem::take(&mut self.pending));
        }
    }
}

/// A store's part in the group commit.
impl StateStore {
    /// The group commit this store's appends join.
    pub fn sync(&self) -> Arc<JournalSync> {
        self.sync.clone()
    }

    /// Joins `sync`, which earlier stores of this state directory in this
    /// process used.
    pub fn set_sync(&mut self, sync: Arc<JournalSync>) {
        self.sync = sync;
    }

    /// From now on a journal append returns once written, and its fsync is
    /// the caller's to wait for ([`Self::take_durable`]), after releasing
    /// the lock, so that concurrent requests share one fsync.
    pub fn defer(&mut self) {
        self.deferred = true;
    }

    /// The last deferred append, to start its fsync early (waiting for it
    /// again later costs nothing once it is durable); None when there is
    /// none.
    pub fn peek_durable(&self) -> Option<Durable> {
        (self.pending != 0).then(|| Durable {
            sync: self.sync.clone(),
            ticket: self.pending,
        })
    }

    /// What to wait for before acknowledging this store's changes.
    pub fn take_durable(&mut self) -> Durable {
        Durable {
            sync: self.sync.clone(),
            ticket: std::mem::take(&mut self.pending),
        }
    }
}
