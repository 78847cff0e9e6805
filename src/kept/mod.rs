//! What was assigned to each message not yet acknowledged, kept on disk (`kept.journal` in the
//! state directory, see `journal`), so that a resend after mqtt2es itself crashed is still the
//! same reading (see `reading`).
//!
//! A write is an append to the journal, so keeping or forgetting one message costs O(that
//! message), never a rewrite of the whole state. Each write reaches the operating system
//! before the call returns, which is what survives a SIGKILL of mqtt2es; a background `fsync`
//! every second (of the journal and of the state database beside it) bounds what a power loss
//! can take (then a resend may be stored a second time; nothing acknowledged is lost).
//!
//! The order of writes is the promise. An assignment is on disk *before* the bulk request that
//! carries its reading is sent, and forgotten on disk *before* the acknowledgement goes out. So
//! after any crash every assignment found belongs to a message its sender has not seen
//! acknowledged, whose resend (DUP, same packet id) it is; and no reading reached
//! Elasticsearch under an identity a resend would not get back.
//!
//! Writes are group commits. Connections *stage* what they keep and forget (records appended
//! to a buffer under a lock, no I/O); whoever needs it on disk *commits*, and one commit writes
//! everything staged by anyone so far in one append. The sink commits once before each bulk
//! request (the keeps of every reading in it were staged before the reading left its
//! connection); a connection commits its forgets before it sends acks, and commits that
//! overlap coalesce. So the store costs one write per bulk request and per release of acks,
//! not one per message.
//!
//! Owners are the broker session's client id or `upstream/<client id>`. Values are the reading
//! id (16 bytes) and the receive time in nanoseconds since the epoch (8 bytes, big-endian).
//! Earlier versions kept these in the state database's keyspace `assigned`: what is found there
//! at start moves into the journal once.

mod journal;

use std::collections::HashMap;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use chrono::DateTime;
use thiserror::Error;
use tokio_util::sync::CancellationToken;

use self::journal::Journal;
use crate::reading::{Assigned, ReadingId};
use crate::state::{self, OpenError};

/// How often what was written is also fsynced.
const SYNC_EVERY: Duration = Duration::from_secs(1);

/// The journal's file name in the state directory.
const JOURNAL: &str = "kept.journal";

#[derive(Debug, Error)]
pub enum KeptError {
    #[error(transparent)]
    Open(#[from] OpenError),
    #[error("the state store failed: {0}")]
    Io(#[from] fjall::Error),
    #[error("the kept journal {path:?} failed: {source}")]
    Journal {
        path: std::path::PathBuf,
        source: std::io::Error,
    },
}

/// Handle to the store; clones share it.
#[derive(Clone)]
pub struct Kept {
    /// The state database: held for its lock on the directory, synced with the journal.
    db: fjall::Database,
    journal: Arc<Mutex<Journal>>,
    path: Arc<Path>,
    /// Records staged and not yet committed, in the order they were staged. A committer takes
    /// them while it holds the journal: one that finds them empty after taking its turn knows
    /// that what it staged was written by the one before it.
    staged: Arc<Mutex<Vec<u8>>>,
}

impl std::fmt::Debug for Kept {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Kept")
    }
}

impl Kept {
    /// Opens (or creates) the store in `state_dir` (see `state`).
    pub fn open(state_dir: &Path) -> Result<Kept, KeptError> {
        Kept::within(&state::open(state_dir)?, state_dir)
    }

    /// The store in `state_dir`, whose database `db` is (opened by the caller, who may share it).
    pub fn within(db: &fjall::Database, state_dir: &Path) -> Result<Kept, KeptError> {
        let path: Arc<Path> = state_dir.join(JOURNAL).into();
        let journal = Journal::open(&path).map_err(|source| journal_failed(&path, source))?;
        let kept = Kept {
            db: db.clone(),
            journal: Arc::new(Mutex::new(journal)),
            path: Arc::clone(&path),
            staged: Arc::default(),
        };
        kept.move_from_keyspace()?;
        Ok(kept)
    }

    /// Moves what an earlier version kept in the database's keyspace `assigned` into the
    /// journal, written before the keyspace is dropped.
    fn move_from_keyspace(&self) -> Result<(), KeptError> {
        const OLD: &str = "assigned";
        if !self.db.keyspace_exists(OLD) {
            return Ok(());
        }
        let old = self
            .db
            .keyspace(OLD, fjall::KeyspaceCreateOptions::default)?;
        let mut moved = 0usize;
        for guard in old.iter() {
            let (key, value) = guard.into_inner()?;
            let Some(end) = key.iter().position(|&b| b == 0) else {
                continue;
            };
            let owner = String::from_utf8_lossy(&key[..end]);
            if let Some((pkid, assigned)) = decode(&key, &value) {
                self.stage(&owner, &[(pkid, assigned)], &[]);
                moved += 1;
            }
        }
        self.commit()?;
        self.sync()?;
        self.db.delete_keyspace(old)?;
        tracing::info!(
            moved,
            "what unacknowledged messages were assigned moved to {JOURNAL}"
        );
        Ok(())
    }

    /// Stages keeping `keep` and forgetting `forget` of `owner`; nothing is written until the
    /// next [`commit`](Self::commit), by anyone.
    pub fn stage(&self, owner: &str, keep: &[(u16, Assigned)], forget: &[u16]) {
        if keep.is_empty() && forget.is_empty() {
            return;
        }
        let mut staged = self.staged.lock().unwrap_or_else(PoisonError::into_inner);
        for &(pkid, assigned) in keep {
            journal::encode(&mut staged, owner, pkid, Some(&value(assigned)));
        }
        for &pkid in forget {
            journal::encode(&mut staged, owner, pkid, None);
        }
    }

    /// Writes everything staged so far, by any clone, in one append that reaches the OS before
    /// this returns. Cheap when nothing is staged.
    pub fn commit(&self) -> Result<(), KeptError> {
        let mut journal = self.journal.lock().unwrap_or_else(PoisonError::into_inner);
        let records =
            std::mem::take(&mut *self.staged.lock().unwrap_or_else(PoisonError::into_inner));
        if records.is_empty() {
            return Ok(());
        }
        journal
            .append(&records)
            .map_err(|source| self.failed(source))
    }

    fn failed(&self, source: std::io::Error) -> KeptError {
        journal_failed(&self.path, source)
    }

    /// Stages `keep` and `forget` of `owner` and commits everything staged: for changes that must
    /// be on disk when this returns (forgets, before their acknowledgements go out).
    pub fn write(
        &self,
        owner: &str,
        keep: &[(u16, Assigned)],
        forget: &[u16],
    ) -> Result<(), KeptError> {
        self.stage(owner, keep, forget);
        self.commit()
    }

    /// Forgets everything of `owner` (its session ended, or the broker has none for us), after
    /// what was staged before, so a staged keep cannot bring an entry back.
    pub fn forget_all(&self, owner: &str) -> Result<(), KeptError> {
        journal::encode_forget_all(
            &mut self.staged.lock().unwrap_or_else(PoisonError::into_inner),
            owner,
        );
        self.commit()
    }

    /// What `owner`'s messages not yet acknowledged were assigned.
    pub fn of(&self, owner: &str) -> Result<HashMap<u16, Assigned>, KeptError> {
        let journal = self.journal.lock().unwrap_or_else(PoisonError::into_inner);
        Ok(journal.live.get(owner).map(assignments).unwrap_or_default())
    }

    /// Every owner with something kept, and what.
    pub fn all(&self) -> Result<HashMap<String, HashMap<u16, Assigned>>, KeptError> {
        let journal = self.journal.lock().unwrap_or_else(PoisonError::into_inner);
        Ok(journal
            .live
            .iter()
            .map(|(owner, of)| (owner.clone(), assignments(of)))
            .collect())
    }

    /// Writes what is in the OS's buffers to the disk: the journal and the state database.
    pub fn sync(&self) -> Result<(), KeptError> {
        self.db.persist(fjall::PersistMode::SyncData)?;
        let journal = self.journal.lock().unwrap_or_else(PoisonError::into_inner);
        journal.sync().map_err(|source| self.failed(source))
    }
    /// Fsyncs every second until `stop`, then once more.
    pub async fn run_syncer(self: Arc<Self>, stop: CancellationToken) {
        loop {
            tokio::select! {
                () = stop.cancelled() => break,
                () = tokio::time::sleep(SYNC_EVERY) => {}
            }
            self.sync_logged().await;
        }
        self.sync_logged().await;
    }

    async fn sync_logged(&self) {
        let kept = self.clone();
        match tokio::task::spawn_blocking(move || kept.sync()).await {
            Ok(Ok(())) => {}
            Ok(Err(error)) => tracing::error!(%error, "cannot fsync the state store"),
            Err(error) => tracing::error!(%error, "the state store's fsync task failed"),
        }
    }
}

/// Logs a failed write, the first and every thousandth after it, never per message. A failed
/// write loses no reading (the record still goes on and is acknowledged once stored); only a
/// resend after a crash might then be stored twice.
pub fn logged(result: Result<(), KeptError>) {
    static FAILURES: AtomicU64 = AtomicU64::new(0);
    if let Err(error) = result {
        let n = FAILURES.fetch_add(1, Ordering::Relaxed);
        if n.is_multiple_of(1000) {
            tracing::error!(
                %error,
                failures = n + 1,
                "cannot keep what a message was assigned; a resend after a crash may be stored twice"
            );
        }
    }
}

fn journal_failed(path: &Path, source: std::io::Error) -> KeptError {
    KeptError::Journal {
        path: path.to_path_buf(),
        source,
    }
}

/// The value of each packet id, decoded.
fn assignments(of: &HashMap<u16, journal::Value>) -> HashMap<u16, Assigned> {
    of.iter()
        .filter_map(|(&pkid, value)| Some((pkid, assigned(value)?)))
        .collect()
}

fn value(assigned: Assigned) -> [u8; 24] {
    let mut value = [0u8; 24];
    value[..16].copy_from_slice(&assigned.reading.as_u128().to_be_bytes());
    let nanos = assigned
        .received_at
        .timestamp_nanos_opt()
        .unwrap_or(i64::MAX);
    value[16..].copy_from_slice(&nanos.to_be_bytes());
    value
}

fn assigned(value: &[u8]) -> Option<Assigned> {
    let reading = u128::from_be_bytes(value.get(..16)?.try_into().ok()?);
    let nanos = i64::from_be_bytes(value.get(16..24)?.try_into().ok()?);
    Some(Assigned {
        reading: ReadingId::from_u128(reading),
        received_at: DateTime::from_timestamp_nanos(nanos),
    })
}

/// A key of the keyspace `assigned` of earlier versions: `<owner>\0<packet id, big-endian>`.
fn decode(key: &[u8], value: &[u8]) -> Option<(u16, Assigned)> {
    let pkid = u16::from_be_bytes(key.get(key.len().checked_sub(2)?..)?.try_into().ok()?);
    Some((pkid, assigned(value)?))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn what_is_kept_comes_back_after_reopening_and_forgetting_removes_it() {
        let dir = tempfile::tempdir().expect("temp dir");
        let first = Assigned::now();
        let second = Assigned::now();
        let third = Assigned::now();
        {
            let kept = Kept::open(dir.path()).expect("open");
            kept.write("pi-1", &[(7, first), (8, second)], &[])
                .expect("keep");
            kept.write("pi-10", &[(7, second)], &[]).expect("keep");
            kept.write("pi-1", &[], &[8]).expect("forget");
            kept.write("pi-2", &[(1, third), (2, third)], &[])
                .expect("write");
            kept.write("pi-2", &[], &[2]).expect("write");
        }
        let kept = Kept::open(dir.path()).expect("reopen");
        assert_eq!(kept.of("pi-1").expect("read"), HashMap::from([(7, first)]));
        assert_eq!(
            kept.of("pi-10").expect("read"),
            HashMap::from([(7, second)])
        );
        assert_eq!(kept.of("pi-2").expect("read"), HashMap::from([(1, third)]));
        assert_eq!(kept.all().expect("read").len(), 3);
        kept.forget_all("pi-1").expect("forget all");
        assert!(kept.of("pi-1").expect("read").is_empty());
        assert_eq!(
            kept.of("pi-10").expect("read").len(),
            1,
            "a longer name is not a prefix"
        );
    }

    #[test]
    fn what_is_staged_is_written_by_the_next_commit_of_any_clone_in_the_order_staged() {
        let dir = tempfile::tempdir().expect("temp dir");
        let (first, second) = (Assigned::now(), Assigned::now());
        {
            let kept = Kept::open(dir.path()).expect("open");
            let other = kept.clone();
            kept.stage("pi-1", &[(1, first)], &[]);
            other.stage("pi-2", &[(1, first)], &[]);
            kept.stage("pi-1", &[(1, second)], &[]);
            other.stage("pi-2", &[], &[1]);
            assert!(
                kept.of("pi-1").expect("read").is_empty(),
                "staged, not written"
            );
            other.commit().expect("commit");
            kept.stage("pi-3", &[(9, first)], &[]);
            // Never committed: lost with the process, as a crash would lose it.
        }
        let kept = Kept::open(dir.path()).expect("reopen");
        assert_eq!(kept.of("pi-1").expect("read"), HashMap::from([(1, second)]));
        assert!(kept.of("pi-2").expect("read").is_empty());
        assert!(kept.of("pi-3").expect("read").is_empty());
    }

    #[test]
    fn forgetting_all_of_an_owner_also_forgets_what_was_staged_for_it() {
        let dir = tempfile::tempdir().expect("temp dir");
        let kept = Kept::open(dir.path()).expect("open");
        kept.stage("pi-1", &[(1, Assigned::now())], &[]);
        kept.forget_all("pi-1").expect("forget all");
        kept.commit().expect("commit");
        assert!(kept.of("pi-1").expect("read").is_empty());
    }

    #[test]
    fn a_second_opener_of_the_same_store_is_refused_with_its_path() {
        let dir = tempfile::tempdir().expect("temp dir");
        let _first = Kept::open(dir.path()).expect("open");
        let error = Kept::open(dir.path()).expect_err("locked");
        let text = error.to_string();
        assert!(text.starts_with("cannot open the state store"), "{text}");
        assert!(text.contains(&dir.path().display().to_string()), "{text}");
    }

    #[test]
    fn what_an_earlier_version_kept_in_the_database_moves_into_the_journal_once() {
        let dir = tempfile::tempdir().expect("temp dir");
        let assigned = Assigned::now();
        {
            let db = state::open(dir.path()).expect("open the database");
            let old = db
                .keyspace("assigned", fjall::KeyspaceCreateOptions::default)
                .expect("the old keyspace");
            let mut key = b"upstream/pi\0".to_vec();
            key.extend_from_slice(&7u16.to_be_bytes());
            old.insert(key, value(assigned)).expect("insert");
            db.persist(fjall::PersistMode::SyncAll).expect("persist");
        }
        {
            let kept = Kept::open(dir.path()).expect("open");
            assert_eq!(
                kept.of("upstream/pi").expect("read"),
                HashMap::from([(7, assigned)])
            );
            assert!(!kept.db.keyspace_exists("assigned"), "dropped once moved");
        }
        let kept = Kept::open(dir.path()).expect("reopen");
        assert_eq!(
            kept.all().expect("read"),
            HashMap::from([("upstream/pi".to_owned(), HashMap::from([(7, assigned)]))])
        );
    }
}
