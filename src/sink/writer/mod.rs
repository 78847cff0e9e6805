//! The writer task: takes routed records from a channel, batches them, keeps up to
//! `concurrent_requests` bulk requests in flight, and settles each record the moment it is
//! durable.
//!
//! Settlement order is deliberately not this task's concern: the producer acknowledges MQTT
//! messages in arrival order itself (it holds back a settled record until those before it
//! settle), so the writer settles as soon as it can and never waits on a slower request.
//!
//! Each closed batch is delivered by its own task, which owns the batch until every item is
//! stored or dead-lettered: retryable items loop there with backoff, refused documents become
//! dead letters sent right away, 413 splits the batch in halves. Because such a task may loop
//! for as long as Elasticsearch is down, only the abandon signal can end it; aborting it drops
//! its unsettled acks, which is the "not durable, redeliver later" outcome.
//!
//! - `delivery` — one batch's task: send, classify, retry, dead-letter, settle.
//! - `backoff`  — the retry delays of one delivery.
//! - `identity` — who holds the `_id` of a 409.
//! - `chain`    — an error and its sources, as text.

mod backoff;
mod chain;
mod delivery;
mod identity;

#[cfg(test)]
mod tests;

use std::sync::Arc;

use elasticsearch::Elasticsearch;
use tokio::{
    sync::mpsc,
    task::{JoinError, JoinSet},
    time::Instant,
};
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use super::{
    batcher::{Batch, Batcher},
    bulk::{self, Item, Prepared},
    dead_letter::DeadLetterFile,
    observer::{Observer, Unobserved},
    routed::Routed,
    settings::SinkSettings,
    stats::{SinkReport, SinkStats, bump},
};
use crate::{
    elastic::nodes::Nodes,
    kept::{self, Kept},
    record::Settlement,
};
use delivery::{Shared, deliver};

/// Everything the writer task needs; built once at startup.
#[derive(Debug)]
pub struct Writer {
    client: Elasticsearch,
    settings: SinkSettings,
    stats: Arc<SinkStats>,
    kept: Option<Kept>,
    nodes: Option<Nodes>,
    observer: Arc<dyn Observer>,
}

impl Writer {
    /// `client` should come from `elastic::build_cluster` (or `build_client`), which sets the
    /// request timeout; bodies are gzipped here, per `settings.gzip`.
    pub fn new(client: Elasticsearch, settings: SinkSettings) -> Self {
        Writer {
            client,
            settings,
            stats: Arc::default(),
            kept: None,
            nodes: None,
            observer: Arc::new(Unobserved),
        }
    }

    /// Tells `observer` about requests, stored documents and cluster blocks (the metrics).
    pub fn observed_by(mut self, observer: Arc<dyn Observer>) -> Self {
        self.observer = observer;
        self
    }

    /// Tells `nodes` (the client's pool) how each request went, so that a node that gives no
    /// answer is skipped and its requests retried on the others.
    pub fn reporting_to(mut self, nodes: Nodes) -> Self {
        self.nodes = Some(nodes);
        self
    }

    /// Commits `kept` before each bulk request: what the source staged for the readings in it
    /// (their assignments) is on disk before any of them can be stored (see `kept`).
    pub fn committing(mut self, kept: Kept) -> Self {
        self.kept = Some(kept);
        self
    }

    /// Live counters, for periodic logging or metrics while the writer runs.
    pub fn stats(&self) -> Arc<SinkStats> {
        Arc::clone(&self.stats)
    }
}

/// What ends the writer with an error. Failures of records never do (they are retried or
/// dead-lettered); only a bug does.
#[derive(Debug, thiserror::Error)]
pub enum SinkError {
    #[error("a bulk delivery task panicked: {0}")]
    Panicked(#[source] JoinError),
}

impl SinkError {
    pub fn is_retryable(&self) -> bool {
        false
    }
}

/// Runs the writer until its input is drained or it is told to abandon.
///
/// Closing semantics:
/// - `rx` is closed by its sender (the pipeline stage) when intake has stopped. The writer
///   then flushes the open batch at once, waits for every in-flight delivery (which may keep
///   retrying), and returns the final report.
/// - `abandon` is fired by the app when the shutdown grace period runs out. The writer then
///   aborts in-flight deliveries and retries, drops every unsettled ack (open batch and in
///   flight alike; MQTT redelivers those messages later and deterministic ids make that
///   harmless) and returns promptly. The report's `pending` counts what was left. Dropping
///   `rx` on return makes further sends fail, which the sender takes as "sink gone".
#[tracing::instrument(name = "sink", skip_all)]
pub async fn run(
    mut rx: mpsc::Receiver<Routed>,
    writer: Writer,
    abandon: CancellationToken,
) -> Result<SinkReport, SinkError> {
    let Writer {
        client,
        settings,
        stats,
        kept,
        nodes,
        observer,
    } = writer;
    let commit = || {
        if let Some(kept) = &kept {
            kept::logged(kept.commit());
        }
    };
    let shared = Arc::new(Shared {
        client,
        nodes,
        observer,
        retry: settings.retry,
        dead_letter_index: settings.dead_letter.index,
        file: Arc::new(DeadLetterFile::new(settings.dead_letter.file)),
        max_bytes: settings.batch.max_bytes.get(),
        time_series_prefixes: settings.time_series_prefixes,
        gzip: settings.gzip,
        stats: Arc::clone(&stats),
    });
    let concurrency = settings.batch.concurrent_requests.get();
    let max_docs = settings.batch.max_docs.get();
    let mut batcher = Batcher::new(&settings.batch);
    let mut deliveries = JoinSet::new();
    // A closed batch waiting for a free delivery slot. While it waits, intake pauses: that is
    // the backpressure that reaches MQTT.
    let mut ready: Option<Batch<Item>> = None;
    // Records taken from the channel in one wake-up and not yet batched, the next one last:
    // many per wake-up under load, so the channel hop costs little per record.
    let mut inbox: Vec<Routed> = Vec::new();
    let mut intake_open = true;

    loop {
        // One clock reading per wake-up: a batch's age counts from when its first record was
        // taken in, and records taken in together arrived together.
        let now = Instant::now();
        while ready.is_none()
            && let Some(routed) = inbox.pop()
        {
            ready = closed(
                &stats,
                take_in(routed, now, &shared, &mut batcher, &mut deliveries, &commit),
            );
        }
        // Load forms the batches, not a timer: a request goes out as soon as a slot is free and
        // records wait, and while every slot is busy the next batch grows. A lone QoS 1
        // reading is therefore acknowledged one bulk round trip after it arrived.
        if ready.is_none() && inbox.is_empty() && (!intake_open || deliveries.len() < concurrency) {
            ready = closed(&stats, batcher.take());
        }
        if deliveries.len() < concurrency
            && let Some(batch) = ready.take()
        {
            let span = tracing::debug_span!("bulk", docs = batch.items.len(), bytes = batch.bytes);
            commit();
            deliveries.spawn(deliver(Arc::clone(&shared), batch.items).instrument(span));
        }
        if !intake_open && ready.is_none() && inbox.is_empty() && deliveries.is_empty() {
            break;
        }
        // Only while every slot is busy can a batch stay open; then it closes at the latest
        // `flush_interval_ms` after its first record and goes out with the next free slot.
        let deadline = batcher.deadline();
        tokio::select! {
            biased;
            () = abandon.cancelled() => {
                deliveries.abort_all();
                while deliveries.join_next().await.is_some() {}
                let report = stats.snapshot();
                tracing::warn!(
                    unsettled = report.pending,
                    "shutdown grace period over: abandoning records that are not durable yet; \
                     they stay unacknowledged and MQTT will redeliver them"
                );
                return Ok(report);
            }
            Some(joined) = deliveries.join_next(), if !deliveries.is_empty() => {
                if let Err(e) = joined
                    && e.is_panic()
                {
                    deliveries.abort_all();
                    return Err(SinkError::Panicked(e));
                }
            }
            n = rx.recv_many(&mut inbox, max_docs), if intake_open && ready.is_none() && inbox.is_empty() => {
                if n == 0 {
                    intake_open = false;
                }
                inbox.reverse();
            }
            () = sleep_until(deadline), if deadline.is_some() && ready.is_none() => {
                ready = closed(&stats, batcher.expired(Instant::now()));
            }
        }
    }
    let report = stats.snapshot();
    tracing::info!(
        stored = report.stored,
        already_stored = report.already_stored,
        moved_in_series = report.moved_in_series,
        dropped = report.dropped,
        dead_lettered = ?report.dead_lettered,
        requests = report.requests,
        "sink drained"
    );
    Ok(report)
}

async fn sleep_until(deadline: Option<Instant>) {
    match deadline {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

/// Prepares one record: settles a drop at once, sends a dead letter bound for the local file on
/// its way, and puts a document into the open batch; returns the batch this closed, if any.
fn take_in(
    routed: Routed,
    now: Instant,
    shared: &Arc<Shared>,
    batcher: &mut Batcher<Item>,
    deliveries: &mut JoinSet<()>,
    commit: &impl Fn(),
) -> Option<Batch<Item>> {
    let stats = &shared.stats;
    match bulk::prepare(
        routed,
        &shared.dead_letter_index,
        shared.max_bytes,
        &shared.time_series_prefixes,
    ) {
        Prepared::Drop(ack) => {
            bump(&stats.dropped, 1);
            ack.settle(Settlement::Dropped);
            None
        }
        Prepared::Send(item) => {
            bump(&stats.pending, 1);
            let bytes = item.bytes();
            batcher.push(item, bytes, now)
        }
        Prepared::ToFile(item) => {
            bump(&stats.pending, 1);
            let shared = Arc::clone(shared);
            commit();
            deliveries.spawn(async move { shared.to_file(vec![item]).await });
            None
        }
    }
}

fn closed(stats: &SinkStats, batch: Option<Batch<Item>>) -> Option<Batch<Item>> {
    if batch.is_some() {
        bump(&stats.batches, 1);
    }
    batch
}
