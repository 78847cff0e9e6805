//! The sink's settings: batching, retries, dead letters.

use std::{num::NonZeroUsize, time::Duration};

use serde::{Deserialize, Serialize};

use super::dead_letter::DeadLetterSettings;

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
