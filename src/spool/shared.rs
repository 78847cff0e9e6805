//! What the spool's writer and shipper share: the log, and how each tells the other of progress.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, MutexGuard, PoisonError};

use tokio::sync::{Notify, watch};

use super::log;
use crate::metrics;

/// What writer and shipper share.
pub(super) struct Shared {
    pub(super) log: Mutex<log::Log>,
    /// The last record written and synced (writer → shipper).
    pub(super) written: watch::Sender<u64>,
    /// Room was freed (shipper → a writer waiting for room).
    pub(super) freed: Notify,
    /// The last record the shipper read: records after it in a dropped segment were lost.
    pub(super) read_through: AtomicU64,
}

impl Shared {
    pub(super) fn log(&self) -> MutexGuard<'_, log::Log> {
        self.log.lock().unwrap_or_else(PoisonError::into_inner)
    }

    pub(super) fn read_through(&self) -> u64 {
        self.read_through.load(Ordering::Relaxed)
    }

    pub(super) fn set_read_through(&self, seq: u64) {
        self.read_through.store(seq, Ordering::Relaxed);
    }

    /// Publishes the spool's size to the metrics.
    pub(super) fn report(&self) {
        let log = self.log();
        metrics::spool_size(log.bytes(), log.records());
    }
}
