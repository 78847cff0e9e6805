//! One scrape of `/metrics`: the HTTP GET, and the figures `top` shows, typed.
//!
//! Figures a running mqtt2es may not export are `Option`s rather than zeros: an older version
//! without `mqtt2es_acks_pending`, a broker without a spool yet, an upstream instance with no
//! offline queues. The view leaves out what is absent instead of showing a reassuring 0.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};

use super::exposition::{self, ParseError, Samples};

/// Why a scrape failed: said to the operator as is.
#[derive(Debug, thiserror::Error)]
pub enum ScrapeError {
    #[error("cannot read {url}: {reason}")]
    Http { url: String, reason: String },
    #[error("{url} answered HTTP {status}")]
    Status { url: String, status: u16 },
    #[error("{url} is not an mqtt2es metrics endpoint: {source}")]
    NotMetrics { url: String, source: ParseError },
}

/// A histogram's cumulative buckets: `(upper bound in seconds, count)`, `+Inf` last.
pub type Buckets = Vec<(f64, f64)>;

/// What one scrape said, and when it was taken.
#[derive(Debug, Clone, PartialEq)]
pub struct Scrape {
    pub at: Instant,
    /// Open MQTT connections by source (`broker`: devices, `upstream`: ours).
    pub connected: BTreeMap<String, f64>,
    pub messages_in: f64,
    pub stored: f64,
    pub acks_pending: Option<f64>,
    /// Records not yet durable, by where they wait.
    pub queues: BTreeMap<String, f64>,
    pub offline: Option<Offline>,
    pub spool: Option<Spool>,
    pub bulk_latency: Option<Buckets>,
    pub latency: Option<Buckets>,
    pub dead_letters: BTreeMap<String, f64>,
    pub streams: BTreeMap<String, f64>,
    pub elasticsearch: Option<Elasticsearch>,
}

/// The embedded broker's queues for offline persistent sessions.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Offline {
    pub messages: f64,
    pub bytes: f64,
    pub dropped: f64,
}

/// The local spool, once mqtt2es has one (`mqtt2es_spool_records`, `mqtt2es_spool_bytes`).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Spool {
    pub records: f64,
    pub bytes: f64,
}

#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Elasticsearch {
    pub reachable: bool,
    pub reachable_since: Option<DateTime<Utc>>,
    pub last_answer: Option<DateTime<Utc>>,
}

impl Scrape {
    /// The figures in `samples`, taken `at`.
    pub fn from_samples(samples: &Samples, at: Instant) -> Scrape {
        let total = |name: &str| samples.sum(name).unwrap_or(0.0);
        let offline = samples
            .sum("mqtt2es_broker_offline_queued_messages")
            .map(|messages| Offline {
                messages,
                bytes: total("mqtt2es_broker_offline_queued_bytes"),
                dropped: total("mqtt2es_broker_offline_dropped_total"),
            });
        let spool = match (
            samples.sum("mqtt2es_spool_records"),
            samples.sum("mqtt2es_spool_bytes"),
        ) {
            (None, None) => None,
            (records, bytes) => Some(Spool {
                records: records.unwrap_or(0.0),
                bytes: bytes.unwrap_or(0.0),
            }),
        };
        let time = |name: &str| samples.sum(name).and_then(unix_time);
        let elasticsearch = samples
            .sum("mqtt2es_elasticsearch_reachable")
            .map(|reachable| Elasticsearch {
                reachable: reachable > 0.0,
                reachable_since: time("mqtt2es_elasticsearch_reachable_since_timestamp_seconds"),
                last_answer: time("mqtt2es_elasticsearch_last_answer_timestamp_seconds"),
            });
        Scrape {
            at,
            connected: samples.by_label("mqtt2es_connected_clients", "source"),
            messages_in: total("mqtt2es_messages_in_total"),
            stored: total("mqtt2es_documents_stored_total"),
            acks_pending: samples.sum("mqtt2es_acks_pending"),
            queues: samples.by_label("mqtt2es_queue_depth", "queue"),
            offline,
            spool,
            bulk_latency: samples.buckets("mqtt2es_bulk_request_duration_seconds"),
            latency: samples.buckets("mqtt2es_end_to_end_latency_seconds"),
            dead_letters: samples.by_label("mqtt2es_dead_letters_total", "reason"),
            streams: samples.by_label(
                "mqtt2es_documents_stored_by_data_stream_total",
                "data_stream",
            ),
            elasticsearch,
        }
    }
}

fn unix_time(seconds: f64) -> Option<DateTime<Utc>> {
    DateTime::from_timestamp_millis((seconds * 1000.0).round() as i64)
}

/// GETs `url` and reads it. `timeout` bounds the whole request: an endpoint that hangs must
/// not freeze the screen.
pub async fn scrape(
    client: &reqwest::Client,
    url: &str,
    timeout: Duration,
) -> Result<Scrape, ScrapeError> {
    let http = |error: reqwest::Error| ScrapeError::Http {
        url: url.to_owned(),
        reason: describe(&error),
    };
    let response = client
        .get(url)
        .timeout(timeout)
        .send()
        .await
        .map_err(http)?;
    let status = response.status();
    if !status.is_success() {
        return Err(ScrapeError::Status {
            url: url.to_owned(),
            status: status.as_u16(),
        });
    }
    let text = response.text().await.map_err(http)?;
    let at = Instant::now();
    let samples = exposition::parse(&text).map_err(|source| ScrapeError::NotMetrics {
        url: url.to_owned(),
        source,
    })?;
    Ok(Scrape::from_samples(&samples, at))
}

/// reqwest's own message is "error sending request"; the cause (connection refused, timed out)
/// is what the operator needs.
fn describe(error: &reqwest::Error) -> String {
    if error.is_timeout() {
        return "no answer in time".to_owned();
    }
    let mut deepest: &dyn std::error::Error = error;
    while let Some(source) = deepest.source() {
        deepest = source;
    }
    deepest.to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scrape(text: &str) -> Scrape {
        Scrape::from_samples(&exposition::parse(text).expect("parses"), Instant::now())
    }

    #[test]
    fn figures_are_read_by_their_exported_names() {
        let s = scrape(
            "mqtt2es_messages_in_total{source=\"broker\"} 7\n\
             mqtt2es_documents_stored_total 6\n\
             mqtt2es_documents_stored_by_data_stream_total{data_stream=\"mqtt2es-telemetry-lab\"} 6\n\
             mqtt2es_connected_clients{source=\"broker\"} 2\n\
             mqtt2es_queue_depth{queue=\"sink\"} 1\n\
             mqtt2es_acks_pending 1\n\
             mqtt2es_broker_offline_queued_messages 4\n\
             mqtt2es_broker_offline_queued_bytes 400\n\
             mqtt2es_elasticsearch_reachable 1\n\
             mqtt2es_elasticsearch_reachable_since_timestamp_seconds 1796209200.0\n",
        );
        assert_eq!(s.messages_in, 7.0);
        assert_eq!(s.stored, 6.0);
        assert_eq!(s.streams["mqtt2es-telemetry-lab"], 6.0);
        assert_eq!(s.connected["broker"], 2.0);
        assert_eq!(s.acks_pending, Some(1.0));
        assert_eq!(
            s.offline,
            Some(Offline {
                messages: 4.0,
                bytes: 400.0,
                dropped: 0.0
            })
        );
        let es = s.elasticsearch.expect("reachability");
        assert!(es.reachable);
        assert_eq!(
            es.reachable_since.map(|t| t.to_rfc3339()),
            Some("2026-12-02T11:00:00+00:00".to_owned())
        );
        assert_eq!(es.last_answer, None);
    }

    #[test]
    fn figures_an_instance_does_not_export_are_absent_not_zero() {
        let s = scrape("mqtt2es_documents_stored_total 6\n");
        assert_eq!(s.acks_pending, None);
        assert_eq!(s.offline, None);
        assert_eq!(s.spool, None);
        assert_eq!(s.elasticsearch, None);
        assert_eq!(s.bulk_latency, None);
    }

    #[test]
    fn a_spool_appears_when_either_of_its_figures_is_exported() {
        let s = scrape("mqtt2es_spool_records 12\n");
        assert_eq!(
            s.spool,
            Some(Spool {
                records: 12.0,
                bytes: 0.0
            })
        );
    }
}
