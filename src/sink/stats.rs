//! The sink's counters for operators, and their snapshot.

use std::{
    collections::BTreeMap,
    sync::{
        Mutex,
        atomic::{AtomicU64, Ordering},
    },
};

/// Counters for operators, updated by the writer as records settle. Cheap to share: the
/// writer hands out an `Arc` (see [`Writer::stats`]) so the app can log or export them.
#[derive(Debug, Default)]
pub struct SinkStats {
    pub(super) stored: AtomicU64,
    pub(super) already_stored: AtomicU64,
    pub(super) moved_in_series: AtomicU64,
    pub(super) dropped: AtomicU64,
    pub(super) dead_lettered: Mutex<BTreeMap<String, u64>>,
    pub(super) dead_lettered_to_file: AtomicU64,
    pub(super) retries: AtomicU64,
    pub(super) batches: AtomicU64,
    pub(super) requests: AtomicU64,
    pub(super) pending: AtomicU64,
}

/// A snapshot of [`SinkStats`].
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SinkReport {
    /// Records confirmed by Elasticsearch.
    pub stored: u64,
    /// Records found already stored (a 409 on the reading's own id, or a checked one):
    /// redeliveries.
    pub already_stored: u64,
    /// Times a time-series reading moved to a later `@timestamp` because another reading of its
    /// series held its own.
    pub moved_in_series: u64,
    /// Records a pipeline dropped on purpose.
    pub dropped: u64,
    /// Dead letters by reason (`mapping_conflict`, `document_too_large`, ...), wherever they
    /// were written.
    pub dead_lettered: BTreeMap<String, u64>,
    /// How many of those went to the local file.
    pub dead_lettered_to_file: u64,
    /// Item retries (one item retried three times counts three).
    pub retries: u64,
    /// Batches closed by the batcher.
    pub batches: u64,
    /// Bulk requests sent (retries and split halves included).
    pub requests: u64,
    /// Records taken from the channel and not yet settled; at the end of an abandoned run,
    /// the records left for MQTT to redeliver.
    pub pending: u64,
}

pub(super) fn bump(counter: &AtomicU64, by: u64) {
    counter.fetch_add(by, Ordering::Relaxed);
}

impl SinkStats {
    pub fn snapshot(&self) -> SinkReport {
        let get = |c: &AtomicU64| c.load(Ordering::Relaxed);
        SinkReport {
            stored: get(&self.stored),
            already_stored: get(&self.already_stored),
            moved_in_series: get(&self.moved_in_series),
            dropped: get(&self.dropped),
            dead_lettered: self
                .dead_lettered
                .lock()
                .unwrap_or_else(|poisoned| poisoned.into_inner())
                .clone(),
            dead_lettered_to_file: get(&self.dead_lettered_to_file),
            retries: get(&self.retries),
            batches: get(&self.batches),
            requests: get(&self.requests),
            pending: get(&self.pending),
        }
    }

    pub(super) fn dead_lettered(&self, reason: &str, to_file: bool) {
        *self
            .dead_lettered
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .entry(reason.to_owned())
            .or_default() += 1;
        if to_file {
            bump(&self.dead_lettered_to_file, 1);
        }
    }

    pub(super) fn settled(&self, n: u64) {
        self.pending.fetch_sub(n, Ordering::Relaxed);
    }
}
