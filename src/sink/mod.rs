//! The sink: everything between a processed record and "durable". It batches records, writes
//! them with `_bulk` `create` ops, classifies each item's outcome, retries what can succeed
//! later, dead-letters what cannot, and settles each record's ack as soon as it is durable.
//!
//! - `batcher`     — when a batch closes (docs, bytes, age); pure.
//! - `bulk`        — NDJSON encoding and response classification; pure, table-tested.
//! - `dead_letter` — the dead-letter document and the local fallback file.
//! - `writer`      — the task: channel in, concurrent bulk requests, retries, settlement.
//!
//! The decision a reader might question: retryable failures are retried *indefinitely*.
//! Nothing upstream is acknowledged until it is durable, so a long outage fills the channels
//! and stops intake (MQTT flow control then holds the devices), which is the backpressure the
//! design wants. The only way out of a retry loop is the abandon signal at shutdown, and
//! abandoning means "not acknowledged", so MQTT redelivers later.

use std::{
    collections::BTreeMap,
    num::NonZeroUsize,
    sync::{
        Mutex,
        atomic::{AtomicU64, Ordering},
    },
    time::Duration,
};

use serde::{Deserialize, Serialize};

use crate::{
    document::Processed,
    record::{Ack, Message},
};

pub mod batcher;
pub mod bulk;
pub mod dead_letter;
pub mod observer;
pub mod writer;

pub use batcher::{Batch, Batcher};
pub use dead_letter::DeadLetterSettings;
pub use observer::{Observer, Unobserved};
pub use writer::{SinkError, Writer, run};

/// What the sink consumes: a message, what the pipelines made of it, and its ack.
#[derive(Debug)]
pub struct Routed {
    pub message: Message,
    pub processed: Processed,
    pub ack: Ack,
}

/// What the writer is given: the config file's `batch`, `retry` and `dead_letter` sections (at
/// its top level; there is no `sink:` key) and what setup found.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SinkSettings {
    pub batch: BatchSettings,
    pub retry: RetrySettings,
    pub dead_letter: DeadLetterSettings,
    /// Index-name prefixes of time-series data streams, found at setup (not configuration):
    /// documents bound there are sent without `_id` (see `bulk::prepare`).
    #[serde(skip)]
    pub time_series_prefixes: Vec<String>,
    /// Gzip bulk bodies (`elasticsearch.gzip`).
    #[serde(skip)]
    pub gzip: bool,
}

/// `batch:` in the config file. Zero is refused at load time for every count and size.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct BatchSettings {
    /// Documents per bulk request.
    pub max_docs: NonZeroUsize,
    /// Encoded NDJSON bytes per bulk request (before gzip). A single larger document is
    /// dead-lettered as `document_too_large`. Keep it well under the cluster's
    /// `http.max_content_length` (100 MiB by default).
    pub max_bytes: NonZeroUsize,
    /// Longest a batch keeps growing while every request slot is busy. A record never waits
    /// for it otherwise: a batch goes out as soon as a slot is free (see `writer`).
    pub flush_interval_ms: u64,
    /// Bulk requests in flight at once.
    pub concurrent_requests: NonZeroUsize,
}

impl Default for BatchSettings {
    fn default() -> Self {
        BatchSettings {
            max_docs: NonZeroUsize::new(1000).expect("1000 is not zero"),
            max_bytes: NonZeroUsize::new(5 * 1024 * 1024).expect("5 MiB is not zero"),
            flush_interval_ms: 1000,
            concurrent_requests: NonZeroUsize::new(2).expect("2 is not zero"),
        }
    }
}

/// `retry:` in the config file: capped exponential backoff with jitter between attempts.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct RetrySettings {
    /// Delay before the first retry; each further retry doubles it.
    pub initial_backoff_ms: u64,
    /// The cap: an outage of any length is probed at least this often.
    pub max_backoff_ms: u64,
}

impl Default for RetrySettings {
    fn default() -> Self {
        RetrySettings {
            initial_backoff_ms: 100,
            max_backoff_ms: 30_000,
        }
    }
}

impl RetrySettings {
    /// The delays between attempts: `initial, 2*initial, 4*initial, ...` capped at the
    /// maximum, each with "equal jitter" (half fixed, half random) so that concurrent requests
    /// failing together do not retry together, yet never retry in a tight loop.
    pub fn backoff(&self) -> impl Iterator<Item = Duration> + Send + use<> {
        let initial = self.initial_backoff_ms.max(1);
        let max = Duration::from_millis(self.max_backoff_ms.max(initial));
        std::iter::once(Duration::from_millis(initial).min(max))
            .chain(
                tokio_retry::strategy::ExponentialBackoff::from_millis(2)
                    .factor(initial)
                    .max_delay(max),
            )
            .map(|d| d / 2 + tokio_retry::strategy::jitter(d / 2))
    }
}

/// Counters for operators, updated by the writer as records settle. Cheap to share: the
/// writer hands out an `Arc` (see [`Writer::stats`]) so the app can log or export them.
#[derive(Debug, Default)]
pub struct SinkStats {
    stored: AtomicU64,
    already_stored: AtomicU64,
    moved_in_series: AtomicU64,
    dropped: AtomicU64,
    dead_lettered: Mutex<BTreeMap<String, u64>>,
    dead_lettered_to_file: AtomicU64,
    retries: AtomicU64,
    batches: AtomicU64,
    requests: AtomicU64,
    pending: AtomicU64,
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

fn bump(counter: &AtomicU64, by: u64) {
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

    fn dead_lettered(&self, reason: &str, to_file: bool) {
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

    fn settled(&self, n: u64) {
        self.pending.fetch_sub(n, Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn batch_settings_default_to_the_documented_values() {
        let s: BatchSettings = serde_json::from_str("{}").expect("defaults");
        assert_eq!(s.max_docs.get(), 1000);
        assert_eq!(s.max_bytes.get(), 5 * 1024 * 1024);
        assert_eq!(s.flush_interval_ms, 1000);
        assert_eq!(s.concurrent_requests.get(), 2);
    }

    #[test]
    fn a_zero_batch_size_is_refused_at_load() {
        let err =
            serde_json::from_str::<BatchSettings>(r#"{"max_docs": 0}"#).expect_err("zero docs");
        assert!(err.to_string().contains("nonzero"), "{err}");
    }

    #[test]
    fn an_unknown_sink_key_is_refused_at_load() {
        let err = serde_json::from_str::<SinkSettings>(r#"{"batch": {"flush_interval": 5}}"#)
            .expect_err("unknown key");
        assert!(err.to_string().contains("flush_interval"), "{err}");
    }

    #[test]
    fn backoff_doubles_from_the_initial_delay_up_to_the_cap_with_jitter_below_each_step() {
        let retry = RetrySettings {
            initial_backoff_ms: 100,
            max_backoff_ms: 1000,
        };
        let steps = [100, 200, 400, 800, 1000, 1000];
        for (delay, step) in retry.backoff().zip(steps) {
            let step = Duration::from_millis(step);
            assert!(delay >= step / 2 && delay <= step, "{delay:?} for {step:?}");
        }
    }
}
