//! The sink: everything between a processed record and "durable". It batches records, writes
//! them with `_bulk` `create` ops, classifies each item's outcome, retries what can succeed
//! later, dead-letters what cannot, and settles each record's ack as soon as it is durable.
//!
//! - `batcher`     — when a batch closes (docs, bytes, age); pure.
//! - `bulk`        — NDJSON encoding and response classification; pure, table-tested.
//! - `dead_letter` — the dead-letter document and the local fallback file.
//! - `routed`, `settings`, `stats` — what the sink takes in, is configured with, and counts
//!   (apart from this file so that the parts above import them, never this file).
//! - `writer`      — the task: channel in, concurrent bulk requests, retries, settlement.
//! - `observer`    — what the sink tells the metrics, without knowing them.
//!
//! The decision a reader might question: retryable failures are retried *indefinitely*.
//! Nothing upstream is acknowledged until it is durable, so a long outage fills the channels
//! and stops intake (MQTT flow control then holds the devices), which is the backpressure the
//! design wants. The only way out of a retry loop is the abandon signal at shutdown, and
//! abandoning means "not acknowledged", so MQTT redelivers later.

pub mod batcher;
pub mod bulk;
pub mod dead_letter;
pub mod observer;
mod routed;
mod settings;
mod stats;
pub mod writer;

pub use batcher::{Batch, Batcher};
pub use dead_letter::DeadLetterSettings;
pub use observer::{Observer, Unobserved};
pub use routed::Routed;
pub use settings::{BatchSettings, RetrySettings, SinkSettings};
pub use stats::{SinkReport, SinkStats};
pub use writer::{SinkError, Writer, run};

#[cfg(test)]
mod tests {
    use std::time::Duration;

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
