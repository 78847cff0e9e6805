//! The embedded database under a state directory (`<state_dir>/store`), where the embedded
//! broker's `broker::store` keeps sessions, retained messages and offline queues in keyspaces
//! of their own. `kept` keeps its journal beside it (`<state_dir>/kept.journal`) and opens the
//! database too, in upstream mode only for its lock.
//!
//! fjall keeps one journal per database, so a batch that spans keyspaces is one append, and
//! one background `fsync` (`Kept::run_syncer`, which also syncs kept's journal) covers
//! everything. fjall locks the directory, so a second mqtt2es on the same `state_dir` is
//! refused at start instead of corrupting it.

use std::path::{Path, PathBuf};

use thiserror::Error;

#[derive(Debug, Error)]
#[error("cannot open the state store {path:?}: {source}")]
pub struct OpenError {
    pub path: PathBuf,
    pub source: fjall::Error,
}

/// Opens (or creates) the database in `state_dir/store`.
pub fn open(state_dir: &Path) -> Result<fjall::Database, OpenError> {
    let path = state_dir.join("store");
    // Sized for a Raspberry Pi, not fjall's server defaults (32 MiB cache, 512 MiB of
    // journal): everything it holds is read once at start and otherwise only written, and
    // each keyspace bounds its own memtable.
    fjall::Database::builder(&path)
        .worker_threads(1)
        .cache_size(1 << 20)
        .max_journaling_size(64 << 20)
        .open()
        .map_err(|source| OpenError { path, source })
}
