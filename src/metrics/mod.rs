//! mqtt2es's own figures, and the three ways out for them: `GET /metrics` (Prometheus text),
//! `/healthz` and `/readyz` for orchestrators, and one `{prefix}metrics` document per interval
//! in Elasticsearch for the pipeline-health dashboard.
//!
//! - `figures`     — the process-wide atomics and the [`Snapshot`] everything reads.
//! - `histogram`   — fixed-bucket latency histograms with an interval maximum.
//! - `exposition`  — a snapshot as Prometheus/OpenMetrics text; pure.
//! - `document`    — two snapshots as one shipped document; pure.
//! - `readiness`   — the rules of `/readyz`; pure.
//! - `http`        — the endpoint (hyper).
//! - `ship`        — the shipper and the Elasticsearch probe.
//! - `settings`    — the `metrics:` section.
//!
//! The decision a reader might question: the figures are a global registry, recorded through
//! free functions ([`message_in`], [`client_connected`], ...). Threading a handle through every
//! edge (upstream connections, broker sessions, delivery tasks) would touch every constructor
//! between `app` and those edges for a write-only counter, so the recording edges call into one
//! `static` instead, and the pure parts (exposition, documents, readiness) take snapshots as
//! arguments so they are tested without it. The sink's counters are not duplicated here: its
//! `SinkStats` is registered with [`watch`] and read at snapshot time.

mod document;
mod exposition;
mod figures;
mod histogram;
mod http;
mod readiness;
mod settings;
mod ship;

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use chrono::{DateTime, Utc};
use elasticsearch::Elasticsearch;
use tokio::sync::mpsc;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use tracing::info;

pub use figures::{Reachability, Snapshot, Source, SpoolSnapshot};
pub use readiness::Mode;
pub use settings::MetricsSettings;

use crate::record::Record;
use crate::sink::{Routed, SinkStats};
use document::Identity;
use figures::FIGURES;
use readiness::Facts;

/// A message arrived from `source` (before any pipeline looked at it).
pub fn message_in(source: Source) {
    FIGURES.message_in(source);
}

/// A device client connected to the embedded broker (after a successful CONNECT). Pair every
/// call with one [`client_disconnected`]; [`connected`] does that by itself.
pub fn client_connected() {
    FIGURES.connected(Source::Broker);
}

/// A device client's connection to the embedded broker ended, however it ended.
pub fn client_disconnected() {
    FIGURES.disconnected(Source::Broker);
}

/// Counts one open connection of `source` for as long as the guard lives.
#[must_use = "the connection is counted only while the guard lives"]
pub fn connected(source: Source) -> Connection {
    FIGURES.connected(source);
    Connection(source)
}

/// See [`connected`].
#[derive(Debug)]
pub struct Connection(Source);

impl Drop for Connection {
    fn drop(&mut self) {
        FIGURES.disconnected(self.0);
    }
}

/// The embedded broker's listeners are bound (or no longer are): part of readiness in broker
/// mode.
pub fn broker_listening(listening: bool) {
    FIGURES.listening.store(listening, Ordering::Relaxed);
}

/// A message queued for an offline persistent session was dropped: a bound of
/// `broker.offline_queue` was reached.
pub fn offline_message_dropped() {
    FIGURES.offline_dropped.fetch_add(1, Ordering::Relaxed);
}

/// The embedded broker's offline queues now hold `messages` messages of `bytes` bytes in all.
pub fn offline_queued(messages: usize, bytes: usize) {
    FIGURES
        .offline_messages
        .store(messages as u64, Ordering::Relaxed);
    FIGURES.offline_bytes.store(bytes as u64, Ordering::Relaxed);
}

/// `delivery: spool`: the spool's figures are exported, and its problems are part of readiness
/// (instead of Elasticsearch's answers: readings are durable without it).
pub fn spool_enabled() {
    FIGURES.spool.enabled.store(true, Ordering::Relaxed);
}

/// The spool holds `bytes` in its files and `records` not yet shipped.
pub fn spool_size(bytes: u64, records: u64) {
    FIGURES.spool.bytes.store(bytes, Ordering::Relaxed);
    FIGURES.spool.records.store(records, Ordering::Relaxed);
}

/// The receive time (ns since the epoch) of the oldest record being shipped; `None`: none is.
pub fn spool_oldest(received_ns: Option<i64>) {
    FIGURES
        .spool
        .oldest_ns
        .store(received_ns.unwrap_or(0), Ordering::Relaxed);
}

/// `records` more were shipped (the sink settled them).
pub fn spool_shipped(records: u64) {
    FIGURES.spool.shipped.fetch_add(records, Ordering::Relaxed);
}

/// `records` not yet shipped were dropped to make room (`on_full: drop_oldest`).
pub fn spool_dropped(records: u64) {
    FIGURES.spool.dropped.fetch_add(records, Ordering::Relaxed);
}

/// `bytes` in the spool were no whole record and were skipped.
pub fn spool_damaged(bytes: u64) {
    FIGURES
        .spool
        .damaged_bytes
        .fetch_add(bytes, Ordering::Relaxed);
}

/// Why the spool takes no records now (`None`: it does again); `/readyz` answers it.
pub fn spool_problem(problem: Option<String>) {
    *FIGURES
        .spool
        .problem
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner) = problem;
}

/// Elasticsearch refused writes with a cluster block (`reason`): `/readyz` and the metrics
/// say so until writes go through again. True if this starts the block (the caller raises
/// the alarm).
pub fn write_blocked(reason: &str) -> bool {
    FIGURES.write_blocked(reason)
}

/// Documents a block had refused were stored: the block is over; returns how long it lasted
/// if one was in force.
pub fn writes_accepted() -> Option<Duration> {
    FIGURES.writes_accepted()
}

/// Shutdown began: `/readyz` says 503 from now on, so a load balancer stops sending devices.
pub fn shutting_down() {
    FIGURES.stopping.store(true, Ordering::Relaxed);
}

/// Registers the sink's counters and the two channels whose depth is part of the queue depth.
/// Holds only weak senders, so it never keeps a channel open.
pub fn watch(sink: Arc<SinkStats>, records: &mpsc::Sender<Record>, routed: &mpsc::Sender<Routed>) {
    FIGURES.watch(sink, records, routed);
}

/// A bulk request took `elapsed`; `status` is its HTTP status, `None` if there was no answer.
pub fn bulk_request(elapsed: Duration, status: Option<u16>) {
    FIGURES.bulk_latency.observe(elapsed);
    if status.is_some_and(readiness::is_answer) {
        FIGURES.answered();
    }
}

/// Elasticsearch confirmed a new document stored in `data_stream` at `now`: it counts for its
/// stream, and its end-to-end latency is `now` minus its `@timestamp`, given as the text sent
/// (the sink knows where it sits in the encoded document, so nothing is parsed but the time).
/// A document without a parsable RFC 3339 `@timestamp` is not measured; a timestamp in the
/// future (a device clock ahead) counts as 0.
pub fn document_stored(data_stream: &str, timestamp: Option<&str>, now: DateTime<Utc>) {
    FIGURES.stored_in(data_stream);
    if let Some(at) = timestamp.and_then(crate::reading::parse_rfc3339) {
        let latency = (now - at).to_std().unwrap_or(Duration::ZERO);
        FIGURES.latency.observe(latency);
    }
}

/// The metrics' ear on the sink: what it reports goes into the figures.
#[derive(Debug)]
pub struct SinkObserver;

impl crate::sink::Observer for SinkObserver {
    fn bulk_request(&self, elapsed: Duration, status: Option<u16>) {
        bulk_request(elapsed, status);
    }

    fn document_stored(&self, data_stream: &str, timestamp: Option<&str>, now: DateTime<Utc>) {
        document_stored(data_stream, timestamp, now);
    }

    fn write_blocked(&self, reason: &str) -> bool {
        write_blocked(reason)
    }

    fn writes_accepted(&self) -> Option<Duration> {
        writes_accepted()
    }
}

/// Every figure now.
pub fn snapshot() -> Snapshot {
    FIGURES.snapshot()
}

/// What readiness is decided from, now.
fn facts(mode: Mode, max_answer_age: Duration) -> Facts {
    Facts {
        mode,
        stopping: FIGURES.stopping.load(Ordering::Relaxed),
        setup_done: FIGURES.setup_done.load(Ordering::Relaxed),
        upstream_connections: FIGURES.connections(Source::Upstream),
        listening: FIGURES.listening.load(Ordering::Relaxed),
        answer_age: FIGURES.answer_age(),
        max_answer_age,
        spool: FIGURES
            .spool
            .enabled
            .load(Ordering::Relaxed)
            .then(|| FIGURES.spool.problem()),
        write_block: FIGURES.write_block(),
    }
}

#[derive(Debug, thiserror::Error)]
pub enum MetricsError {
    #[error("metrics.bind: cannot listen on {address}: {source}")]
    Bind {
        address: SocketAddr,
        source: std::io::Error,
    },
}

/// The running endpoint, shipper and probe.
#[derive(Debug)]
pub struct Metrics {
    stop: CancellationToken,
    setup_done: CancellationToken,
    tasks: JoinSet<()>,
    address: Option<SocketAddr>,
}

impl Metrics {
    /// Binds the endpoint (logging `metrics listening address=...`) and starts the tasks.
    /// `prefix` is the index prefix: documents go to the `{prefix}metrics` data stream.
    pub async fn start(
        settings: &MetricsSettings,
        mode: Mode,
        client: &Elasticsearch,
        prefix: &str,
    ) -> Result<Metrics, MetricsError> {
        let stop = CancellationToken::new();
        let setup_done = CancellationToken::new();
        let mut tasks = JoinSet::new();
        let max_age = Duration::from_secs(settings.elasticsearch_answer_max_age_s);
        FIGURES.max_answer_age_ms.store(
            u64::try_from(max_age.as_millis()).unwrap_or(u64::MAX),
            Ordering::Relaxed,
        );
        let mut address = None;
        if let Some(bind) = settings.bind {
            let listener = tokio::net::TcpListener::bind(bind)
                .await
                .and_then(|l| Ok((l.local_addr()?, l)))
                .map_err(|source| MetricsError::Bind {
                    address: bind,
                    source,
                });
            let (local, listener) = listener?;
            info!(address = %local, "metrics listening");
            address = Some(local);
            let readiness = move || readiness::check(&facts(mode, max_age));
            tasks.spawn(http::serve(listener, readiness, stop.clone()));
            // Only readiness needs it.
            tasks.spawn(ship::probe(client.clone(), max_age, stop.clone()));
        }
        if settings.ship_interval_s > 0 {
            let identity = Identity {
                instance: settings.instance_name(),
                mode: mode.as_str(),
            };
            tasks.spawn(ship::ship(
                client.clone(),
                format!("{prefix}metrics"),
                identity,
                Duration::from_secs(settings.ship_interval_s),
                setup_done.clone(),
                stop.clone(),
            ));
        }
        Ok(Metrics {
            stop,
            setup_done,
            tasks,
            address,
        })
    }

    /// Startup work that must precede intake (index templates) is done: part of readiness, and
    /// what the shipper waits for, so that its first document cannot create the metrics data
    /// stream before the template that should shape it is installed.
    pub fn setup_finished(&self) {
        FIGURES.setup_done.store(true, Ordering::Relaxed);
        self.setup_done.cancel();
    }

    /// Where the endpoint listens, if it is on.
    pub fn address(&self) -> Option<SocketAddr> {
        self.address
    }

    /// Stops the endpoint and the probe, and ships the last interval (briefly, if Elasticsearch
    /// does not answer).
    pub async fn stop(mut self) {
        self.stop.cancel();
        while self.tasks.join_next().await.is_some() {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_timestamp_is_read_as_rfc3339_in_any_offset_and_nothing_else() {
        let at = crate::reading::parse_rfc3339("2026-11-22T10:00:00.5+01:00").expect("a timestamp");
        assert_eq!(at.to_rfc3339(), "2026-11-22T09:00:00.500+00:00");
        assert_eq!(crate::reading::parse_rfc3339("1763805600000"), None);
        assert_eq!(crate::reading::parse_rfc3339("not a time"), None);
    }

    #[test]
    fn a_connection_is_counted_while_its_guard_lives() {
        // Only this test opens broker connections in unit tests, so the global is stable here.
        let before = snapshot().connected;
        let guard = connected(Source::Broker);
        assert_eq!(snapshot().connected[0], before[0] + 1);
        drop(guard);
        assert_eq!(snapshot().connected, before);
    }

    #[test]
    fn histogram_bounds_ascend() {
        for bounds in [&figures::BULK_BOUNDS[..], &figures::LATENCY_BOUNDS[..]] {
            assert!(bounds.windows(2).all(|w| w[0] < w[1]), "{bounds:?}");
        }
    }
}
