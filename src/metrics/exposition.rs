//! `/metrics`: a [`Snapshot`] in the Prometheus/OpenMetrics text format.
//!
//! The figures live in our own atomics (see `figures`), so prometheus-client is used only as
//! the encoder: a registry holding one collector that writes the snapshot. Counter names get
//! `_total` and unit suffixes from the encoder, which is what keeps them valid OpenMetrics.

use chrono::{DateTime, Utc};
use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric, MetricEncoder};
use prometheus_client::metrics::MetricType;
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::registry::{Registry, Unit};

use super::figures::{Snapshot, Source, SpoolSnapshot};
use super::histogram::HistogramSnapshot;

/// What `/metrics` answers with in the `Content-Type` header.
pub const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// The text of `/metrics` for these figures.
pub fn render(snapshot: &Snapshot) -> String {
    let mut registry = Registry::with_prefix("mqtt2es");
    registry.register_collector(Box::new(Figures(snapshot.clone())));
    let mut text = String::new();
    // Writing into a String cannot fail, and our collector only fails if the writer does.
    prometheus_client::encoding::text::encode(&mut text, &registry)
        .expect("encoding into a String cannot fail");
    text
}

#[derive(Debug)]
struct Figures(Snapshot);

fn counter(
    encoder: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    value: u64,
) -> Result<(), std::fmt::Error> {
    let metric = ConstCounter::new(value);
    metric.encode(encoder.encode_descriptor(name, help, None, metric.metric_type())?)
}

fn gauge(
    encoder: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    value: u64,
) -> Result<(), std::fmt::Error> {
    let metric = ConstGauge::new(i64::try_from(value).unwrap_or(i64::MAX));
    metric.encode(encoder.encode_descriptor(name, help, None, metric.metric_type())?)
}

/// A point in time as Unix seconds, or nothing at all when there is none to tell.
fn timestamp(
    encoder: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    at: Option<DateTime<Utc>>,
) -> Result<(), std::fmt::Error> {
    let Some(at) = at else { return Ok(()) };
    let metric = ConstGauge::new(at.timestamp_millis() as f64 / 1000.0);
    metric.encode(encoder.encode_descriptor(
        name,
        help,
        Some(&Unit::Seconds),
        metric.metric_type(),
    )?)
}

fn gauge_family<'a>(
    encoder: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    label: &str,
    values: impl IntoIterator<Item = (&'a str, u64)>,
) -> Result<(), std::fmt::Error> {
    let mut family = encoder.encode_descriptor(name, help, None, MetricType::Gauge)?;
    for (value, figure) in values {
        let labels = [(label, value)];
        let gauge = ConstGauge::new(i64::try_from(figure).unwrap_or(i64::MAX));
        gauge.encode(family.encode_family(&labels)?)?;
    }
    Ok(())
}

fn histogram(
    encoder: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    figures: &HistogramSnapshot,
) -> Result<(), std::fmt::Error> {
    let mut metric: MetricEncoder =
        encoder.encode_descriptor(name, help, Some(&Unit::Seconds), MetricType::Histogram)?;
    // The encoder wants each bucket's own count and accumulates them itself.
    let mut below = 0;
    let buckets: Vec<(f64, u64)> = figures
        .bounds
        .iter()
        .copied()
        .zip(figures.cumulative.iter().copied())
        .chain(std::iter::once((f64::INFINITY, figures.count)))
        .map(|(bound, cumulative)| {
            let own = cumulative.saturating_sub(below);
            below = cumulative;
            (bound, own)
        })
        .collect();
    metric.encode_histogram::<prometheus_client::encoding::NoLabelSet>(
        figures.sum_s,
        figures.count,
        &buckets,
        None,
    )
}

impl Collector for Figures {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let s = &self.0;
        {
            let mut family = encoder.encode_descriptor(
                "messages_in",
                "MQTT messages received, by source (broker: devices connected to mqtt2es; \
                 upstream: mqtt2es's subscription to another broker).",
                None,
                MetricType::Counter,
            )?;
            for source in Source::ALL {
                let labels = [("source", source.as_str())];
                ConstCounter::new(s.messages_in[source as usize])
                    .encode(family.encode_family(&labels)?)?;
            }
        }
        counter(
            &mut encoder,
            "documents_stored",
            "Documents Elasticsearch confirmed as newly stored.",
            s.sink.stored,
        )?;
        {
            let mut family = encoder.encode_descriptor(
                "documents_stored_by_data_stream",
                "Documents Elasticsearch confirmed as newly stored, by data stream (past 256 \
                 streams, the rest count as _other).",
                None,
                MetricType::Counter,
            )?;
            for (stream, count) in &s.stored_by_stream {
                let labels = [("data_stream", stream.as_str())];
                ConstCounter::new(*count).encode(family.encode_family(&labels)?)?;
            }
        }
        counter(
            &mut encoder,
            "documents_already_stored",
            "Redelivered readings found already stored (http 409 on the same reading).",
            s.sink.already_stored,
        )?;
        counter(
            &mut encoder,
            "documents_moved_in_series",
            "Times a time-series reading moved to a later @timestamp because another reading \
             of its series held its own.",
            s.sink.moved_in_series,
        )?;
        counter(
            &mut encoder,
            "records_dropped",
            "Messages a pipeline dropped on purpose (drop stage).",
            s.sink.dropped,
        )?;
        {
            let mut family = encoder.encode_descriptor(
                "dead_letters",
                "Messages stored as dead letters, by reason.",
                None,
                MetricType::Counter,
            )?;
            for (reason, count) in &s.sink.dead_lettered {
                let labels = [("reason", reason.as_str())];
                ConstCounter::new(*count).encode(family.encode_family(&labels)?)?;
            }
        }
        counter(
            &mut encoder,
            "dead_letters_to_file",
            "Dead letters written to the local file because Elasticsearch could not take them.",
            s.sink.dead_lettered_to_file,
        )?;
        counter(
            &mut encoder,
            "retries",
            "Documents sent again after a retryable failure (one document retried three times \
             counts three).",
            s.sink.retries,
        )?;
        counter(
            &mut encoder,
            "bulk_requests",
            "Bulk requests sent to Elasticsearch, retries and split halves included.",
            s.sink.requests,
        )?;
        histogram(
            &mut encoder,
            "bulk_request_duration",
            "Round trip of one bulk request, failures included.",
            &s.bulk_latency,
        )?;
        histogram(
            &mut encoder,
            "end_to_end_latency",
            "From a document's @timestamp (device time) to Elasticsearch confirming it stored.",
            &s.latency,
        )?;
        gauge_family(
            &mut encoder,
            "queue_depth",
            "Records received and not yet durable, by where they wait (records: before the \
             pipelines; routed: before the sink; sink: batching or in a bulk request).",
            "queue",
            [
                ("records", s.queued_records),
                ("routed", s.queued_routed),
                ("sink", s.sink.pending),
            ],
        )?;
        gauge(
            &mut encoder,
            "acks_pending",
            "QoS 1 and 2 messages received whose acknowledgement (PUBACK, PUBREC, upstream ack) \
             waits for them to be durable.",
            s.acks_pending,
        )?;
        gauge_family(
            &mut encoder,
            "connected_clients",
            "Open MQTT connections, by source (broker: device clients; upstream: mqtt2es's own \
             connections to the upstream broker).",
            "source",
            Source::ALL.map(|source| (source.as_str(), s.connected[source as usize])),
        )?;
        counter(
            &mut encoder,
            "broker_offline_dropped",
            "Messages queued for offline persistent sessions and dropped, oldest first, because \
             a bound of broker.offline_queue was reached.",
            s.offline_dropped,
        )?;
        gauge(
            &mut encoder,
            "broker_offline_queued_messages",
            "Messages queued for offline persistent sessions now.",
            s.offline_messages,
        )?;
        gauge(
            &mut encoder,
            "broker_offline_queued_bytes",
            "Bytes (topics and payloads) queued for offline persistent sessions now.",
            s.offline_bytes,
        )?;
        gauge(
            &mut encoder,
            "elasticsearch_write_blocked",
            "1 while Elasticsearch refuses writes with a cluster block (read-only after the \
             flood-stage disk watermark, no master): readings wait, nothing is dead-lettered.",
            u64::from(s.write_blocked),
        )?;
        if let Some(spool) = &s.spool {
            encode_spool(&mut encoder, spool)?;
        }
        gauge(
            &mut encoder,
            "elasticsearch_reachable",
            "1 while Elasticsearch answered within metrics.elasticsearch_answer_max_age_s (the \
             rule of /readyz), else 0.",
            u64::from(s.elasticsearch.reachable()),
        )?;
        timestamp(
            &mut encoder,
            "elasticsearch_reachable_since_timestamp",
            "When Elasticsearch's current run of answers began (absent while unreachable).",
            s.elasticsearch.reachable_since,
        )?;
        timestamp(
            &mut encoder,
            "elasticsearch_last_answer_timestamp",
            "When Elasticsearch last answered (absent if it never did).",
            s.elasticsearch.last_answer,
        )?;
        Ok(())
    }
}

/// The spool's figures (`delivery: spool` only).
fn encode_spool(
    encoder: &mut DescriptorEncoder,
    spool: &SpoolSnapshot,
) -> Result<(), std::fmt::Error> {
    gauge(
        encoder,
        "spool_bytes",
        "Bytes in the spool's files (spool.max_bytes bounds it).",
        spool.bytes,
    )?;
    gauge(
        encoder,
        "spool_records",
        "Records acknowledged into the spool and not yet shipped to Elasticsearch.",
        spool.records,
    )?;
    let metric = ConstGauge::new(spool.oldest_age_s);
    metric.encode(encoder.encode_descriptor(
        "spool_oldest_record_age_seconds",
        "Age of the oldest record being shipped (0 when none is): how far behind shipping is.",
        None,
        metric.metric_type(),
    )?)?;
    counter(
        encoder,
        "spool_shipped",
        "Records shipped from the spool (stored, dead-lettered or dropped by a pipeline); its \
         rate is the drain rate.",
        spool.shipped,
    )?;
    counter(
        encoder,
        "spool_dropped",
        "Records dropped from the spool unshipped to make room (spool.on_full: drop_oldest).",
        spool.dropped,
    )?;
    counter(
        encoder,
        "spool_damaged_bytes",
        "Bytes in the spool that were no whole record (a write torn by a crash, damage on disk) \
         and were skipped.",
        spool.damaged_bytes,
    )
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;
    use crate::metrics::figures::{BULK_BOUNDS, LATENCY_BOUNDS, Reachability};
    use crate::sink::SinkReport;

    fn snapshot() -> Snapshot {
        Snapshot {
            messages_in: [0, 7],
            connected: [0, 1],
            sink: SinkReport {
                stored: 5,
                already_stored: 1,
                dead_lettered: BTreeMap::from([
                    ("mapping_conflict".to_owned(), 2),
                    ("payload_too_large".to_owned(), 1),
                ]),
                retries: 3,
                requests: 4,
                pending: 6,
                ..SinkReport::default()
            },
            stored_by_stream: BTreeMap::from([("mqtt2es-telemetry-lab".to_owned(), 5)]),
            bulk_latency: HistogramSnapshot {
                bounds: &BULK_BOUNDS,
                cumulative: vec![0, 1, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2],
                count: 3,
                sum_s: 40.5,
            },
            latency: HistogramSnapshot {
                bounds: &LATENCY_BOUNDS,
                cumulative: vec![0; 13],
                count: 0,
                sum_s: 0.0,
            },
            acks_pending: 10,
            queued_records: 8,
            queued_routed: 9,
            offline_dropped: 11,
            offline_messages: 12,
            offline_bytes: 13,
            write_blocked: true,
            spool: Some(SpoolSnapshot {
                bytes: 2048,
                records: 21,
                oldest_age_s: 1.5,
                shipped: 22,
                dropped: 23,
                damaged_bytes: 24,
            }),
            elasticsearch: Reachability {
                last_answer: Some(at("2026-12-02T12:00:01.5Z")),
                reachable_since: Some(at("2026-12-02T11:00:00Z")),
            },
        }
    }

    fn at(text: &str) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(text).expect("a time").into()
    }

    fn line<'a>(text: &'a str, start: &str) -> &'a str {
        text.lines()
            .find(|l| l.starts_with(start))
            .unwrap_or_else(|| panic!("no line starting {start:?} in:\n{text}"))
    }

    #[test]
    fn counters_are_exposed_with_total_suffixes_and_their_labels() {
        let text = render(&snapshot());
        assert_eq!(
            line(&text, "mqtt2es_messages_in_total{source=\"upstream\"}"),
            "mqtt2es_messages_in_total{source=\"upstream\"} 7"
        );
        assert_eq!(
            line(&text, "mqtt2es_documents_stored_total"),
            "mqtt2es_documents_stored_total 5"
        );
        assert_eq!(
            line(
                &text,
                "mqtt2es_dead_letters_total{reason=\"mapping_conflict\"}"
            ),
            "mqtt2es_dead_letters_total{reason=\"mapping_conflict\"} 2"
        );
        assert_eq!(
            line(&text, "mqtt2es_documents_stored_by_data_stream_total{"),
            "mqtt2es_documents_stored_by_data_stream_total{data_stream=\"mqtt2es-telemetry-lab\"} 5"
        );
        assert_eq!(
            line(&text, "mqtt2es_retries_total"),
            "mqtt2es_retries_total 3"
        );
        assert_eq!(
            line(&text, "mqtt2es_bulk_requests_total"),
            "mqtt2es_bulk_requests_total 4"
        );
        assert!(
            text.contains("# TYPE mqtt2es_dead_letters counter"),
            "{text}"
        );
        assert!(text.ends_with("# EOF\n"), "{text}");
    }

    #[test]
    fn gauges_are_exposed_per_queue_and_per_source() {
        let text = render(&snapshot());
        assert!(
            text.contains("mqtt2es_queue_depth{queue=\"records\"} 8\n"),
            "{text}"
        );
        assert!(
            text.contains("mqtt2es_queue_depth{queue=\"routed\"} 9\n"),
            "{text}"
        );
        assert!(
            text.contains("mqtt2es_queue_depth{queue=\"sink\"} 6\n"),
            "{text}"
        );
        assert!(
            text.contains("mqtt2es_connected_clients{source=\"upstream\"} 1\n"),
            "{text}"
        );
        assert!(
            text.contains("mqtt2es_connected_clients{source=\"broker\"} 0\n"),
            "{text}"
        );
        assert!(text.contains("mqtt2es_acks_pending 10\n"), "{text}");
        assert!(
            text.contains("mqtt2es_broker_offline_queued_messages 12\n"),
            "{text}"
        );
        assert!(
            text.contains("mqtt2es_broker_offline_queued_bytes 13\n"),
            "{text}"
        );
        assert!(
            text.contains("mqtt2es_broker_offline_dropped_total 11\n"),
            "{text}"
        );
        for line in [
            "mqtt2es_elasticsearch_write_blocked 1\n",
            "mqtt2es_spool_bytes 2048\n",
            "mqtt2es_spool_records 21\n",
            "mqtt2es_spool_oldest_record_age_seconds 1.5\n",
            "mqtt2es_spool_shipped_total 22\n",
            "mqtt2es_spool_dropped_total 23\n",
            "mqtt2es_spool_damaged_bytes_total 24\n",
        ] {
            assert!(text.contains(line), "{line} in {text}");
        }
    }

    #[test]
    fn without_a_spool_no_spool_figure_is_exported() {
        let text = render(&Snapshot {
            spool: None,
            ..snapshot()
        });
        assert!(!text.contains("spool"), "{text}");
    }

    #[test]
    fn elasticsearch_reachability_is_a_gauge_with_unix_times_absent_when_unknown() {
        let text = render(&snapshot());
        assert!(
            text.contains("mqtt2es_elasticsearch_reachable 1\n"),
            "{text}"
        );
        assert!(
            text.contains("mqtt2es_elasticsearch_reachable_since_timestamp_seconds 1796209200.0\n"),
            "{text}"
        );
        assert!(
            text.contains("mqtt2es_elasticsearch_last_answer_timestamp_seconds 1796212801.5\n"),
            "{text}"
        );
        let mut down = snapshot();
        down.elasticsearch.reachable_since = None;
        let text = render(&down);
        assert!(
            text.contains("mqtt2es_elasticsearch_reachable 0\n"),
            "{text}"
        );
        assert!(!text.contains("reachable_since"), "{text}");
    }

    #[test]
    fn histograms_are_exposed_in_seconds_with_cumulative_buckets_and_inf() {
        let text = render(&snapshot());
        assert!(
            text.contains("# TYPE mqtt2es_bulk_request_duration_seconds histogram"),
            "{text}"
        );
        assert!(
            text.contains("mqtt2es_bulk_request_duration_seconds_bucket{le=\"0.01\"} 1\n"),
            "{text}"
        );
        assert!(
            text.contains("mqtt2es_bulk_request_duration_seconds_bucket{le=\"10.0\"} 2\n"),
            "{text}"
        );
        assert!(
            text.contains("mqtt2es_bulk_request_duration_seconds_bucket{le=\"+Inf\"} 3\n"),
            "{text}"
        );
        assert!(
            text.contains("mqtt2es_bulk_request_duration_seconds_sum 40.5\n"),
            "{text}"
        );
        assert!(
            text.contains("mqtt2es_end_to_end_latency_seconds_count 0\n"),
            "{text}"
        );
    }

    #[test]
    fn a_reason_label_is_escaped_rather_than_breaking_the_format() {
        let mut s = snapshot();
        s.sink
            .dead_lettered
            .insert("odd\"reason\nnext".to_owned(), 1);
        let text = render(&s);
        assert!(
            text.contains(r#"mqtt2es_dead_letters_total{reason="odd\"reason\nnext"} 1"#),
            "{text}"
        );
    }
}
