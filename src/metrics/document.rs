//! One `{prefix}metrics` document: the difference between two snapshots of cumulative counters,
//! plus the gauges at the end of the interval (the fields are listed in README's "Operations"
//! and read by the dashboards in `dashboards/`).
//!
//! Diffing cumulative counters is what makes shipping safe to fail: when a document cannot be
//! written, the shipper keeps the older snapshot and the next document covers both intervals,
//! so nothing is counted twice or lost. Averages and maxima are left out of an interval without
//! samples rather than written as 0, which would drag a dashboard's average latency down.

use chrono::{DateTime, SecondsFormat, Utc};
use serde_json::{Map, Value, json};

use super::figures::Snapshot;
use super::histogram::HistogramSnapshot;

/// Who ships: `mqtt2es.instance` and `mqtt2es.mode`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Identity {
    pub instance: String,
    pub mode: &'static str,
}

/// Largest values over the interval, in seconds (see `Histogram::take_max`).
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Maxima {
    pub bulk_latency_s: Option<f64>,
    pub latency_s: Option<f64>,
}

impl Maxima {
    /// Both intervals' maxima: for a document that covers an interval whose shipping failed.
    pub fn merge(self, later: Maxima) -> Maxima {
        let max = |a: Option<f64>, b: Option<f64>| match (a, b) {
            (Some(a), Some(b)) => Some(a.max(b)),
            (a, b) => a.or(b),
        };
        Maxima {
            bulk_latency_s: max(self.bulk_latency_s, later.bulk_latency_s),
            latency_s: max(self.latency_s, later.latency_s),
        }
    }
}

/// The document for the interval from `from` to `to`, which lasted `seconds` and ended `at`.
pub fn document(
    identity: &Identity,
    from: &Snapshot,
    to: &Snapshot,
    seconds: f64,
    at: DateTime<Utc>,
    maxima: Maxima,
) -> Value {
    let stored = to.sink.stored.saturating_sub(from.sink.stored);
    let mut figures = json!({
        "instance": identity.instance,
        "mode": identity.mode,
        "interval_s": seconds,
        "messages_in": to.messages_in_total().saturating_sub(from.messages_in_total()),
        "documents_stored": stored,
        "dead_letters": to.dead_letters_total().saturating_sub(from.dead_letters_total()),
        "retries": to.sink.retries.saturating_sub(from.sink.retries),
        "bulk_requests": to.sink.requests.saturating_sub(from.sink.requests),
        "documents_per_s": if seconds > 0.0 { stored as f64 / seconds } else { 0.0 },
        "queue_depth": to.queue_depth(),
        "connected_clients": to.connected_total(),
    });
    let map = figures
        .as_object_mut()
        .expect("the json! literal above is an object");
    if let Some(latency) = avg_max(&from.bulk_latency, &to.bulk_latency, maxima.bulk_latency_s) {
        map.insert("bulk_latency_ms".to_owned(), latency);
    }
    if let Some(latency) = avg_max(&from.latency, &to.latency, maxima.latency_s) {
        map.insert("latency_ms".to_owned(), latency);
    }
    if let Some(spool) = &to.spool {
        let shipped = spool
            .shipped
            .saturating_sub(from.spool.as_ref().map_or(0, |s| s.shipped));
        map.insert(
            "spool".to_owned(),
            json!({
                "bytes": spool.bytes,
                "records": spool.records,
                "oldest_record_age_s": spool.oldest_age_s,
                "shipped_per_s": if seconds > 0.0 { shipped as f64 / seconds } else { 0.0 },
                "dropped": spool.dropped.saturating_sub(from.spool.as_ref().map_or(0, |s| s.dropped)),
            }),
        );
    }
    json!({
        "@timestamp": at.to_rfc3339_opts(SecondsFormat::Millis, true),
        "mqtt2es": figures,
    })
}

/// `{avg, max}` in milliseconds over the interval, if it had any sample.
fn avg_max(from: &HistogramSnapshot, to: &HistogramSnapshot, max_s: Option<f64>) -> Option<Value> {
    let count = to.count.saturating_sub(from.count);
    if count == 0 {
        return None;
    }
    let mut out = Map::new();
    let avg_ms = (to.sum_s - from.sum_s).max(0.0) * 1000.0 / count as f64;
    out.insert("avg".to_owned(), json!(avg_ms));
    if let Some(max) = max_s {
        // The maximum is taken a moment after the snapshot; never report it below the average.
        out.insert("max".to_owned(), json!((max * 1000.0).max(avg_ms)));
    }
    Some(Value::Object(out))
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;
    use crate::metrics::figures::{BULK_BOUNDS, LATENCY_BOUNDS};
    use crate::sink::SinkReport;

    fn identity() -> Identity {
        Identity {
            instance: "gw-1".into(),
            mode: "upstream",
        }
    }

    fn at() -> DateTime<Utc> {
        DateTime::parse_from_rfc3339("2026-11-22T10:00:10Z")
            .expect("timestamp")
            .into()
    }

    fn snapshot(stored: u64, dead: u64, latency_count: u64, latency_sum_s: f64) -> Snapshot {
        Snapshot {
            messages_in: [0, stored + dead],
            sink: SinkReport {
                stored,
                dead_lettered: BTreeMap::from([("mapping_conflict".to_owned(), dead)]),
                retries: dead * 2,
                requests: stored / 10,
                ..SinkReport::default()
            },
            bulk_latency: HistogramSnapshot {
                bounds: &BULK_BOUNDS,
                count: stored / 10,
                sum_s: (stored / 10) as f64 * 0.125,
                ..HistogramSnapshot::default()
            },
            latency: HistogramSnapshot {
                bounds: &LATENCY_BOUNDS,
                count: latency_count,
                sum_s: latency_sum_s,
                ..HistogramSnapshot::default()
            },
            ..Snapshot::default()
        }
    }

    #[test]
    fn counts_are_the_difference_between_two_cumulative_snapshots() {
        let from = snapshot(100, 1, 100, 50.0);
        let mut to = snapshot(300, 4, 300, 250.0);
        to.queued_records = 2;
        to.sink.pending = 5;
        to.connected = [0, 2];
        let maxima = Maxima {
            bulk_latency_s: Some(0.25),
            latency_s: Some(3.0),
        };
        let doc = document(&identity(), &from, &to, 10.0, at(), maxima);
        assert_eq!(
            doc,
            json!({
                "@timestamp": "2026-11-22T10:00:10.000Z",
                "mqtt2es": {
                    "instance": "gw-1",
                    "mode": "upstream",
                    "interval_s": 10.0,
                    "messages_in": 203,
                    "documents_stored": 200,
                    "dead_letters": 3,
                    "retries": 6,
                    "bulk_requests": 20,
                    "documents_per_s": 20.0,
                    "bulk_latency_ms": {"avg": 125.0, "max": 250.0},
                    "latency_ms": {"avg": 1000.0, "max": 3000.0},
                    "queue_depth": 7,
                    "connected_clients": 2,
                }
            })
        );
    }

    #[test]
    fn an_interval_without_samples_has_no_latency_rather_than_zero() {
        let same = snapshot(100, 0, 100, 50.0);
        let doc = document(&identity(), &same, &same, 10.0, at(), Maxima::default());
        let figures = &doc["mqtt2es"];
        assert_eq!(figures["documents_stored"], 0);
        assert_eq!(figures["documents_per_s"], 0.0);
        assert!(figures.get("latency_ms").is_none(), "{doc}");
        assert!(figures.get("bulk_latency_ms").is_none(), "{doc}");
    }

    #[test]
    fn a_document_after_a_failed_one_covers_both_intervals_once() {
        let first = snapshot(0, 0, 0, 0.0);
        let second = snapshot(100, 0, 100, 100.0);
        let third = snapshot(150, 0, 150, 200.0);
        // The shipper keeps `first` when shipping `second` failed and merges the maxima.
        let maxima = Maxima {
            latency_s: Some(4.0),
            ..Maxima::default()
        }
        .merge(Maxima {
            latency_s: Some(2.0),
            ..Maxima::default()
        });
        let doc = document(&identity(), &first, &third, 20.0, at(), maxima);
        assert_eq!(doc["mqtt2es"]["documents_stored"], 150);
        assert_eq!(doc["mqtt2es"]["documents_per_s"], 7.5);
        assert_eq!(doc["mqtt2es"]["latency_ms"]["max"], 4000.0);
        let skipped = document(&identity(), &second, &third, 10.0, at(), maxima);
        assert_eq!(skipped["mqtt2es"]["documents_stored"], 50);
    }

    #[test]
    fn a_maximum_taken_after_the_snapshot_is_never_below_the_average() {
        let from = snapshot(0, 0, 0, 0.0);
        let to = snapshot(0, 0, 2, 4.0);
        let maxima = Maxima {
            latency_s: Some(1.0),
            ..Maxima::default()
        };
        let doc = document(&identity(), &from, &to, 10.0, at(), maxima);
        assert_eq!(
            doc["mqtt2es"]["latency_ms"],
            json!({"avg": 2000.0, "max": 2000.0})
        );
    }
}
