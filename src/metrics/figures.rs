//! The process-wide figures and the snapshot the endpoint and the shipper read.
//!
//! Two kinds of source. Edges that have no handle to thread through (the upstream connections,
//! the embedded broker's sessions, the bulk timing, readiness) record into one `static` of
//! atomics. The sink's own counters (`SinkStats`: stored, dead letters by reason, retries, bulk
//! requests, records in flight) already exist for its shutdown report; they are read from the
//! `Arc` the app registers rather than counted a second time, so the two can never disagree.
//! Channel depths are read the same way, from weak senders, at snapshot time.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use chrono::{DateTime, TimeDelta, Utc};
use tokio::sync::mpsc;

use super::histogram::{Histogram, HistogramSnapshot};
use crate::record::Record;
use crate::sink::{Routed, SinkReport, SinkStats};

/// Where messages come from: the label `source` on the per-source figures.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Source {
    /// Devices connected to the embedded broker.
    Broker,
    /// mqtt2es's own connections to an upstream broker.
    Upstream,
}

impl Source {
    pub const ALL: [Source; 2] = [Source::Broker, Source::Upstream];

    pub fn as_str(self) -> &'static str {
        match self {
            Source::Broker => "broker",
            Source::Upstream => "upstream",
        }
    }

    fn index(self) -> usize {
        self as usize
    }
}

/// Bulk request round trips: 5 ms to 30 s (the default request timeout).
pub(super) static BULK_BOUNDS: [f64; 12] = [
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
];
/// Device time to stored: the batch flush interval dominates when all is well (1 s by default),
/// minutes to hours when readings were held back by an outage and replayed.
pub(super) static LATENCY_BOUNDS: [f64; 13] = [
    0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0, 1800.0, 3600.0,
];

/// Data streams counted under their own name. Names come from topic segments, so a fleet
/// publishing to ever new sites would otherwise grow the label set without bound; past this,
/// documents count under [`OTHER_STREAMS`].
const MAX_STREAMS: usize = 256;
/// The label of streams past [`MAX_STREAMS`]: no data stream name may start with `_`.
pub(super) const OTHER_STREAMS: &str = "_other";

pub(super) struct Figures {
    messages_in: [AtomicU64; 2],
    connected: [AtomicU64; 2],
    pub(super) bulk_latency: Histogram,
    pub(super) latency: Histogram,
    sink: Mutex<Option<Arc<SinkStats>>>,
    /// Documents stored, by data stream (see [`count_stored_in`]).
    stored_by_stream: Mutex<BTreeMap<String, u64>>,
    queues: Mutex<Option<Queues>>,
    pub(super) setup_done: AtomicBool,
    pub(super) listening: AtomicBool,
    pub(super) stopping: AtomicBool,
    /// Milliseconds since [`epoch`] plus one of Elasticsearch's last answer; 0: never.
    answered_at: AtomicU64,
    /// The same for the first answer of the current run of answers, each within
    /// `max_answer_age_ms` of the one before: "reachable since".
    reachable_since: AtomicU64,
    /// `metrics.elasticsearch_answer_max_age_s`, set at start: older answers mean unreachable.
    pub(super) max_answer_age_ms: AtomicU64,
    pub(super) offline_dropped: AtomicU64,
    pub(super) offline_messages: AtomicU64,
    pub(super) offline_bytes: AtomicU64,
    pub(super) spool: SpoolFigures,
    /// Elasticsearch refusing writes with a cluster block, while it does.
    write_block: Mutex<Option<WriteBlock>>,
}

/// A cluster block in force: since when, and what Elasticsearch said last.
struct WriteBlock {
    since: Instant,
    reason: String,
}

/// The spool's figures (`delivery: spool`); all zero and left out while it is not enabled.
pub(super) struct SpoolFigures {
    pub(super) enabled: AtomicBool,
    pub(super) bytes: AtomicU64,
    pub(super) records: AtomicU64,
    /// Receive time (ns since the epoch) of the oldest record shipped and not settled; 0: none.
    pub(super) oldest_ns: AtomicI64,
    pub(super) shipped: AtomicU64,
    pub(super) dropped: AtomicU64,
    pub(super) damaged_bytes: AtomicU64,
    /// Why the spool takes no records now (full, disk full); part of readiness.
    pub(super) problem: Mutex<Option<String>>,
}

impl SpoolFigures {
    fn snapshot(&self) -> Option<SpoolSnapshot> {
        if !self.enabled.load(Ordering::Relaxed) {
            return None;
        }
        let oldest_age_s = match self.oldest_ns.load(Ordering::Relaxed) {
            0 => 0.0,
            at => {
                let now = chrono::Utc::now().timestamp_nanos_opt().unwrap_or(at);
                (now.saturating_sub(at)).max(0) as f64 / 1e9
            }
        };
        Some(SpoolSnapshot {
            bytes: self.bytes.load(Ordering::Relaxed),
            records: self.records.load(Ordering::Relaxed),
            oldest_age_s,
            shipped: self.shipped.load(Ordering::Relaxed),
            dropped: self.dropped.load(Ordering::Relaxed),
            damaged_bytes: self.damaged_bytes.load(Ordering::Relaxed),
        })
    }

    pub(super) fn problem(&self) -> Option<String> {
        lock(&self.problem).clone()
    }
}

/// The spool at one moment.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct SpoolSnapshot {
    /// Bytes in its files.
    pub bytes: u64,
    /// Records written and not yet shipped.
    pub records: u64,
    /// Age of the oldest record being shipped (0 when none is).
    pub oldest_age_s: f64,
    /// Records shipped (settled by the sink) since start.
    pub shipped: u64,
    /// Records dropped unshipped by `on_full: drop_oldest`.
    pub dropped: u64,
    /// Bytes skipped as no whole record (torn writes, damage).
    pub damaged_bytes: u64,
}

struct Queues {
    records: mpsc::WeakSender<Record>,
    routed: mpsc::WeakSender<Routed>,
}

pub(super) static FIGURES: Figures = Figures {
    messages_in: [const { AtomicU64::new(0) }; 2],
    connected: [const { AtomicU64::new(0) }; 2],
    bulk_latency: Histogram::new(&BULK_BOUNDS),
    latency: Histogram::new(&LATENCY_BOUNDS),
    sink: Mutex::new(None),
    stored_by_stream: Mutex::new(BTreeMap::new()),
    queues: Mutex::new(None),
    setup_done: AtomicBool::new(false),
    listening: AtomicBool::new(false),
    stopping: AtomicBool::new(false),
    answered_at: AtomicU64::new(0),
    reachable_since: AtomicU64::new(0),
    max_answer_age_ms: AtomicU64::new(30_000),
    offline_dropped: AtomicU64::new(0),
    offline_messages: AtomicU64::new(0),
    offline_bytes: AtomicU64::new(0),
    spool: SpoolFigures {
        enabled: AtomicBool::new(false),
        bytes: AtomicU64::new(0),
        records: AtomicU64::new(0),
        oldest_ns: AtomicI64::new(0),
        shipped: AtomicU64::new(0),
        dropped: AtomicU64::new(0),
        damaged_bytes: AtomicU64::new(0),
        problem: Mutex::new(None),
    },
    write_block: Mutex::new(None),
};

/// A monotonic origin for "when did Elasticsearch last answer".
fn epoch() -> Instant {
    static EPOCH: OnceLock<Instant> = OnceLock::new();
    *EPOCH.get_or_init(Instant::now)
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    // The guarded values are plain handles; a panic elsewhere cannot leave them half-written.
    mutex
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

impl Figures {
    pub(super) fn message_in(&self, source: Source) {
        self.messages_in[source.index()].fetch_add(1, Ordering::Relaxed);
    }

    pub(super) fn connected(&self, source: Source) {
        self.connected[source.index()].fetch_add(1, Ordering::Relaxed);
    }

    pub(super) fn disconnected(&self, source: Source) {
        // Saturating: a stray extra call from an edge must not wrap the gauge to 2^64.
        let _ = self.connected[source.index()].fetch_update(
            Ordering::Relaxed,
            Ordering::Relaxed,
            |n| Some(n.saturating_sub(1)),
        );
    }

    pub(super) fn connections(&self, source: Source) -> u64 {
        self.connected[source.index()].load(Ordering::Relaxed)
    }

    pub(super) fn watch(
        &self,
        sink: Arc<SinkStats>,
        records: &mpsc::Sender<Record>,
        routed: &mpsc::Sender<Routed>,
    ) {
        *lock(&self.sink) = Some(sink);
        *lock(&self.queues) = Some(Queues {
            records: records.downgrade(),
            routed: routed.downgrade(),
        });
    }

    pub(super) fn stored_in(&self, data_stream: &str) {
        count_stored_in(&mut lock(&self.stored_by_stream), data_stream);
    }

    /// A block seen now; true if none was in force.
    pub(super) fn write_blocked(&self, reason: &str) -> bool {
        let now = Instant::now();
        let mut block = lock(&self.write_block);
        match &mut *block {
            Some(block) => {
                block.reason = reason.to_owned();
                false
            }
            None => {
                *block = Some(WriteBlock {
                    since: now,
                    reason: reason.to_owned(),
                });
                true
            }
        }
    }

    /// What a block refused went through: the block is over; returns how long it lasted.
    pub(super) fn writes_accepted(&self) -> Option<Duration> {
        let ended = lock(&self.write_block).take()?;
        Some(ended.since.elapsed())
    }

    /// What the block in force says, if one is.
    pub(super) fn write_block(&self) -> Option<String> {
        lock(&self.write_block).as_ref().map(|b| b.reason.clone())
    }

    pub(super) fn answered(&self) {
        let ms = u64::try_from(epoch().elapsed().as_millis()).unwrap_or(u64::MAX - 1);
        let previous = self.answered_at.swap(ms + 1, Ordering::Relaxed);
        let max_age = self.max_answer_age_ms.load(Ordering::Relaxed);
        if starts_a_run(previous.checked_sub(1), ms, max_age) {
            self.reachable_since.store(ms + 1, Ordering::Relaxed);
        }
    }

    /// How long ago Elasticsearch last answered; `None` if it never did.
    pub(super) fn answer_age(&self) -> Option<Duration> {
        age(&self.answered_at)
    }

    fn reachability(&self, now: DateTime<Utc>) -> Reachability {
        let max_age = Duration::from_millis(self.max_answer_age_ms.load(Ordering::Relaxed));
        Reachability::at(now, self.answer_age(), age(&self.reachable_since), max_age)
    }

    pub(super) fn snapshot(&self) -> Snapshot {
        let sink = lock(&self.sink)
            .as_ref()
            .map(|stats| stats.snapshot())
            .unwrap_or_default();
        let (records, routed) = match &*lock(&self.queues) {
            Some(queues) => (depth(&queues.records), depth(&queues.routed)),
            None => (0, 0),
        };
        let per_source = |counters: &[AtomicU64; 2]| {
            Source::ALL.map(|source| counters[source.index()].load(Ordering::Relaxed))
        };
        Snapshot {
            messages_in: per_source(&self.messages_in),
            connected: per_source(&self.connected),
            sink,
            stored_by_stream: lock(&self.stored_by_stream).clone(),
            bulk_latency: self.bulk_latency.snapshot(),
            latency: self.latency.snapshot(),
            acks_pending: crate::record::acks_pending(),
            queued_records: records,
            queued_routed: routed,
            offline_dropped: self.offline_dropped.load(Ordering::Relaxed),
            offline_messages: self.offline_messages.load(Ordering::Relaxed),
            offline_bytes: self.offline_bytes.load(Ordering::Relaxed),
            spool: self.spool.snapshot(),
            write_blocked: lock(&self.write_block).is_some(),
            elasticsearch: self.reachability(Utc::now()),
        }
    }
}

/// How long ago an instant stored as milliseconds since [`epoch`] plus one was; `None` for 0.
fn age(at: &AtomicU64) -> Option<Duration> {
    match at.load(Ordering::Relaxed) {
        0 => None,
        at => Some(
            epoch()
                .elapsed()
                .saturating_sub(Duration::from_millis(at - 1)),
        ),
    }
}

/// Whether an answer at `now_ms` begins a new run of reachability: the first answer ever, or
/// one after a silence longer than `max_age_ms` (during which Elasticsearch counted as down).
fn starts_a_run(previous_ms: Option<u64>, now_ms: u64, max_age_ms: u64) -> bool {
    previous_ms.is_none_or(|previous| now_ms.saturating_sub(previous) > max_age_ms)
}

/// Whether Elasticsearch is reachable, by the rule of `/readyz` (it answered within
/// `metrics.elasticsearch_answer_max_age_s`), and since when, in wall-clock time.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Reachability {
    pub last_answer: Option<DateTime<Utc>>,
    /// The first answer of the current run; `None` while unreachable.
    pub reachable_since: Option<DateTime<Utc>>,
}

impl Reachability {
    fn at(
        now: DateTime<Utc>,
        answer_age: Option<Duration>,
        run_age: Option<Duration>,
        max_age: Duration,
    ) -> Reachability {
        let ago = |age: Duration| now - TimeDelta::from_std(age).unwrap_or(TimeDelta::MAX);
        let reachable = answer_age.is_some_and(|age| age <= max_age);
        Reachability {
            last_answer: answer_age.map(ago),
            reachable_since: run_age.filter(|_| reachable).map(ago),
        }
    }

    pub fn reachable(&self) -> bool {
        self.reachable_since.is_some()
    }
}

/// One more document stored in `data_stream`, or in [`OTHER_STREAMS`] once [`MAX_STREAMS`]
/// names are counted. Looks the name up before allocating it: this runs once per document.
fn count_stored_in(streams: &mut BTreeMap<String, u64>, data_stream: &str) {
    if let Some(count) = streams.get_mut(data_stream) {
        *count += 1;
        return;
    }
    let name = if streams.len() < MAX_STREAMS {
        data_stream
    } else {
        OTHER_STREAMS
    };
    *streams.entry(name.to_owned()).or_default() += 1;
}

/// Records sitting in a channel. A closed channel (every sender gone at shutdown) reads as 0
/// even while its receiver drains the last few: good enough for a gauge.
fn depth<T>(weak: &mpsc::WeakSender<T>) -> u64 {
    weak.upgrade()
        .map(|tx| (tx.max_capacity() - tx.capacity()) as u64)
        .unwrap_or(0)
}

/// Every figure at one moment: cumulative counters and current gauges.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Snapshot {
    /// Indexed like [`Source::ALL`].
    pub messages_in: [u64; 2],
    /// Open connections, indexed like [`Source::ALL`].
    pub connected: [u64; 2],
    pub sink: SinkReport,
    /// Documents Elasticsearch confirmed as newly stored, by data stream.
    pub stored_by_stream: BTreeMap<String, u64>,
    pub bulk_latency: HistogramSnapshot,
    pub latency: HistogramSnapshot,
    /// QoS 1 and 2 messages received whose ack waits for them to be durable.
    pub acks_pending: u64,
    /// Records between the MQTT side and the pipelines.
    pub queued_records: u64,
    /// Records between the pipelines and the sink.
    pub queued_routed: u64,
    /// Messages dropped from the embedded broker's offline queues over a bound.
    pub offline_dropped: u64,
    /// Messages and bytes in the embedded broker's offline queues now.
    pub offline_messages: u64,
    pub offline_bytes: u64,
    /// The spool, when `delivery: spool`.
    pub spool: Option<SpoolSnapshot>,
    /// Elasticsearch refuses writes with a cluster block now.
    pub write_blocked: bool,
    pub elasticsearch: Reachability,
}

impl Snapshot {
    pub fn messages_in_total(&self) -> u64 {
        self.messages_in.iter().sum()
    }

    pub fn connected_total(&self) -> u64 {
        self.connected.iter().sum()
    }

    pub fn dead_letters_total(&self) -> u64 {
        self.sink.dead_lettered.values().sum()
    }

    /// Records received and not yet durable: in both channels, the open batch and in flight.
    pub fn queue_depth(&self) -> u64 {
        self.queued_records + self.queued_routed + self.sink.pending
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(text: &str) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(text).expect("a time").into()
    }

    #[test]
    fn an_answer_after_a_silence_longer_than_the_max_age_starts_a_new_run() {
        assert!(starts_a_run(None, 5, 30_000));
        assert!(!starts_a_run(Some(1_000), 31_000, 30_000));
        assert!(starts_a_run(Some(1_000), 31_001, 30_000));
    }

    #[test]
    fn elasticsearch_is_reachable_since_its_run_began_while_its_last_answer_is_recent() {
        let now = at("2026-12-02T12:00:00Z");
        let max_age = Duration::from_secs(30);
        let recent = Reachability::at(
            now,
            Some(Duration::from_secs(2)),
            Some(Duration::from_secs(3600)),
            max_age,
        );
        assert!(recent.reachable());
        assert_eq!(recent.reachable_since, Some(at("2026-12-02T11:00:00Z")));
        assert_eq!(recent.last_answer, Some(at("2026-12-02T11:59:58Z")));
        let stale = Reachability::at(
            now,
            Some(Duration::from_secs(31)),
            Some(Duration::from_secs(3600)),
            max_age,
        );
        assert!(!stale.reachable());
        assert_eq!(stale.last_answer, Some(at("2026-12-02T11:59:29Z")));
        let never = Reachability::at(now, None, None, max_age);
        assert_eq!(never, Reachability::default());
    }

    #[test]
    fn stored_documents_count_per_data_stream_and_past_the_bound_as_other() {
        let mut streams = BTreeMap::new();
        count_stored_in(&mut streams, "mqtt2es-telemetry-lab");
        count_stored_in(&mut streams, "mqtt2es-telemetry-lab");
        assert_eq!(streams["mqtt2es-telemetry-lab"], 2);
        for n in streams.len()..MAX_STREAMS {
            count_stored_in(&mut streams, &format!("site-{n}"));
        }
        count_stored_in(&mut streams, "one-too-many");
        count_stored_in(&mut streams, "mqtt2es-telemetry-lab");
        assert_eq!(streams.get("one-too-many"), None);
        assert_eq!(streams[OTHER_STREAMS], 1);
        assert_eq!(streams["mqtt2es-telemetry-lab"], 3);
    }
}
