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

use std::{sync::Arc, time::Duration};

use chrono::{DateTime, Utc};

use bytes::Bytes;
use elasticsearch::{
    Elasticsearch, MgetParts,
    http::{
        Method,
        headers::{CONTENT_ENCODING, CONTENT_TYPE, HeaderMap, HeaderValue},
    },
};
use serde_json::{Value, json};
use tokio::{
    sync::mpsc,
    task::{JoinError, JoinSet},
    time::Instant,
};
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use super::{
    batcher::{Batch, Batcher},
    bulk::{
        self, Conflict, DOCUMENT_TOO_LARGE, ID_TAKEN, Item, Kind, MAX_PROBES, Outcome, Plan,
        Prepared, SERIES_TIME_TAKEN,
    },
    dead_letter::{self, DeadLetterFile},
    observer::{Observer, Unobserved},
    routed::Routed,
    settings::{RetrySettings, SinkSettings},
    stats::{SinkReport, SinkStats, bump},
};
use crate::{
    document::{Rejection, payload_digest},
    elastic::nodes::{Nodes, failed_url},
    kept::{self, Kept},
    record::Settlement,
};

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
    /// `client` should come from `elastic::build_client`, which sets the request timeout and
    /// gzip.
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

/// What every delivery task shares.
#[derive(Debug)]
struct Shared {
    client: Elasticsearch,
    nodes: Option<Nodes>,
    observer: Arc<dyn Observer>,
    retry: RetrySettings,
    dead_letter_index: String,
    file: Arc<DeadLetterFile>,
    max_bytes: usize,
    time_series_prefixes: Vec<String>,
    gzip: bool,
    stats: Arc<SinkStats>,
}

/// The capped, jittered delays of one delivery; restarts after a round without retries.
struct Backoff<'a> {
    settings: &'a RetrySettings,
    delays: Box<dyn Iterator<Item = Duration> + Send + 'a>,
    attempt: u32,
}

impl<'a> Backoff<'a> {
    fn new(settings: &'a RetrySettings) -> Self {
        Backoff {
            settings,
            delays: Box::new(settings.backoff()),
            attempt: 0,
        }
    }

    fn next(&mut self) -> (u32, Duration) {
        self.attempt += 1;
        let max = Duration::from_millis(self.settings.max_backoff_ms);
        (self.attempt, self.delays.next().unwrap_or(max))
    }

    fn reset(&mut self) {
        *self = Backoff::new(self.settings);
    }
}

/// While a delivery waits out a backoff because no node answered, how often it asks whether
/// one does again: writing resumes within this of the node's return, however long the
/// backoff had grown (`retry.max_backoff_ms`, 30 s by default).
const PROBE_EVERY: Duration = Duration::from_millis(500);

/// Sends one batch until every item in it has settled.
async fn deliver(shared: Arc<Shared>, items: Vec<Item>) {
    let mut backoff = Backoff::new(&shared.retry);
    // Chunks still to send, the last one next, each with the delay to wait before sending it.
    let mut queue = vec![(items, Duration::ZERO)];
    // Whether the last request found no node answering: then the wait probes.
    let mut unreachable = false;
    while let Some((mut chunk, delay)) = queue.pop() {
        if !delay.is_zero() && shared.wait_out(delay, unreachable).await {
            // The node is back: what it says next is news, not more of the outage.
            backoff.reset();
        }
        let (plan, answered) = shared.send(&chunk).await;
        unreachable = !answered;
        match plan {
            Plan::Items(outcomes) => {
                let mut round = shared.sort(chunk, outcomes);
                if !round.check.is_empty() {
                    let checks = std::mem::take(&mut round.check);
                    shared.check(checks, &mut round).await;
                }
                if round.unblocked > 0 {
                    writes_accepted(shared.observer.as_ref());
                }
                if round.retry.is_empty() {
                    backoff.reset();
                } else {
                    let (attempt, delay) = backoff.next();
                    let delay = match &round.blocked {
                        Some(reason) => {
                            write_blocked(shared.observer.as_ref(), reason, round.retry.len());
                            delay.max(BLOCKED_BACKOFF)
                        }
                        None => delay,
                    };
                    bump(&shared.stats.retries, round.retry.len() as u64);
                    log_retry(
                        attempt,
                        delay,
                        round.retry.len(),
                        &round.first_retry,
                        round.loud,
                    );
                    queue.push((round.retry, delay));
                }
                if !round.dead_letters.is_empty() {
                    queue.push((round.dead_letters, Duration::ZERO));
                }
                // Last in, so sent next: a reading moved to a later time goes at once.
                if !round.resend.is_empty() {
                    queue.push((round.resend, Duration::ZERO));
                }
                if !round.to_file.is_empty() {
                    shared.to_file(round.to_file).await;
                }
            }
            Plan::Split => {
                let second = chunk.split_off(chunk.len() / 2);
                tracing::debug!(
                    halves = ?(chunk.len(), second.len()),
                    "bulk request too large for elasticsearch (http 413): splitting"
                );
                queue.push((second, Duration::ZERO));
                queue.push((chunk, Duration::ZERO));
            }
            Plan::TooLarge => {
                let mut round = Round::default();
                let count = chunk.len();
                for item in chunk {
                    let detail = format!(
                        "elasticsearch refused a bulk request holding only this document \
                         ({} bytes) with http 413",
                        item.bytes()
                    );
                    shared.reject(item, DOCUMENT_TOO_LARGE, detail, &mut round);
                }
                tracing::warn!(
                    count,
                    "document too large for elasticsearch (http 413): dead-lettering it"
                );
                if !round.dead_letters.is_empty() {
                    queue.push((round.dead_letters, Duration::ZERO));
                }
                if !round.to_file.is_empty() {
                    shared.to_file(round.to_file).await;
                }
            }
            Plan::RetryAll {
                reason,
                loud,
                blocked,
            } => {
                let (mut retry, to_file) = shared.fail(chunk);
                if !retry.is_empty() {
                    let (attempt, delay) = backoff.next();
                    let delay = if blocked {
                        for item in &mut retry {
                            item.blocked = true;
                        }
                        write_blocked(shared.observer.as_ref(), &reason, retry.len());
                        delay.max(BLOCKED_BACKOFF)
                    } else {
                        delay
                    };
                    bump(&shared.stats.retries, retry.len() as u64);
                    log_retry(attempt, delay, retry.len(), &reason, loud);
                    queue.push((retry, delay));
                }
                if !to_file.is_empty() {
                    shared.to_file(to_file).await;
                }
            }
        }
    }
}

/// What identifies a stored document that holds the `_id` of a 409.
struct Holder {
    reading_id: Option<String>,
    payload_digest: Option<String>,
}

impl Holder {
    /// Whether it is `message`'s reading: the same reading id, or, for an id a pipeline made
    /// from fields, the same topic and payload. On a time-series stream only the reading id
    /// counts: byte-identical readings at one time are still two readings.
    fn is(&self, message: &crate::record::Message, time_series: bool) -> bool {
        if self.reading_id.as_deref() == Some(message.reading.to_string().as_str()) {
            return true;
        }
        !time_series
            && self.payload_digest.as_deref()
                == Some(payload_digest(&message.topic, &message.payload).as_str())
    }
}

/// One round's items that did not settle, by what happens to them next.
#[derive(Default)]
struct Round {
    retry: Vec<Item>,
    first_retry: String,
    loud: bool,
    dead_letters: Vec<Item>,
    to_file: Vec<Item>,
    /// 409s to look at before believing them: the item, the backing index and the `_id`.
    check: Vec<(Item, String, String)>,
    /// Items to send again at once: moved to a later time in their series, or found missing.
    resend: Vec<Item>,
    /// Items a cluster block had refused that Elasticsearch took now: the block is lifted.
    unblocked: usize,
    /// The first cluster block met, if any: writes refused until someone lifts it.
    blocked: Option<String>,
}

impl Shared {
    /// Waits `delay`; after a request that no node answered, returns as soon as one answers a
    /// probe (`HEAD /`, any HTTP answer will do), so that an outage ends for us when it ends.
    /// True if it ended that way.
    async fn wait_out(&self, delay: Duration, unreachable: bool) -> bool {
        let until = Instant::now() + delay;
        if !unreachable || delay <= PROBE_EVERY {
            tokio::time::sleep_until(until).await;
            return false;
        }
        loop {
            let now = Instant::now();
            if now >= until {
                return false;
            }
            tokio::time::sleep((until - now).min(PROBE_EVERY)).await;
            let probe = tokio::time::timeout(PROBE_EVERY, self.client.ping().send()).await;
            if let Ok(sent) = &probe {
                self.report(sent);
            }
            if let Ok(Ok(_)) = probe {
                tracing::info!(
                    "elasticsearch answers again; sending without waiting out the backoff"
                );
                return true;
            }
        }
    }

    /// Sends a chunk; also says whether any node answered at all (an HTTP response, whatever
    /// its status).
    async fn send(&self, chunk: &[Item]) -> (Plan, bool) {
        bump(&self.stats.requests, 1);
        let conflicts: Vec<Conflict> = chunk.iter().map(Item::conflict).collect();
        let started = std::time::Instant::now();
        let body = bulk::body(chunk, chrono::Utc::now());
        let mut headers = HeaderMap::new();
        headers.insert(
            CONTENT_TYPE,
            HeaderValue::from_static("application/x-ndjson"),
        );
        let body = if self.gzip {
            headers.insert(CONTENT_ENCODING, HeaderValue::from_static("gzip"));
            bulk::gzip(&body)
        } else {
            body
        };
        let sent = self
            .client
            .send(
                Method::Post,
                "/_bulk",
                headers,
                Some(&[("filter_path", bulk::FILTER_PATH.join(","))]),
                Some(Bytes::from(body)),
                None,
            )
            .await;
        self.report(&sent);
        let response = match sent {
            Ok(response) => response,
            Err(e) => {
                self.observer.bulk_request(started.elapsed(), None);
                let plan = Plan::RetryAll {
                    reason: format!("bulk request failed: {}", chain(&e)),
                    loud: false,
                    blocked: false,
                };
                return (plan, false);
            }
        };
        let status = response.status_code().as_u16();
        let body = response.bytes().await;
        self.observer.bulk_request(started.elapsed(), Some(status));
        let plan = match body {
            Ok(body) => bulk::classify(status, &body, &conflicts),
            Err(e) => Plan::RetryAll {
                reason: format!("reading the bulk response failed: {}", chain(&e)),
                loud: false,
                blocked: false,
            },
        };
        (plan, true)
    }

    /// Tells the node pool whether the node a request went to answered.
    fn report(&self, sent: &Result<elasticsearch::http::response::Response, elasticsearch::Error>) {
        let Some(nodes) = &self.nodes else {
            return;
        };
        match sent {
            Ok(response) => nodes.report(response.url(), true, String::new),
            Err(error) => {
                if let Some(url) = failed_url(error) {
                    nodes.report(&url, false, || chain(error));
                }
            }
        }
    }

    /// Settles what is durable and sorts the rest.
    fn sort(&self, chunk: Vec<Item>, outcomes: Vec<Outcome>) -> Round {
        let mut round = Round::default();
        let mut refused = 0;
        let mut first_refusal = None;
        let mut failed = Vec::new();
        // One clock reading for the round: the latency of every document it stored.
        let now = Utc::now();
        for (item, outcome) in chunk.into_iter().zip(outcomes) {
            match outcome {
                Outcome::Stored | Outcome::AlreadyStored => {
                    round.unblocked += usize::from(item.blocked);
                    self.settle(item, matches!(outcome, Outcome::AlreadyStored), now);
                }
                Outcome::Check { index, id } => round.check.push((item, index, id)),
                Outcome::Retry {
                    reason,
                    loud,
                    blocked,
                } => {
                    let mut item = item;
                    if blocked {
                        item.blocked = true;
                        if round.blocked.is_none() {
                            round.blocked = Some(reason.clone());
                        }
                    }
                    if failed.is_empty() {
                        round.first_retry = reason;
                    }
                    round.loud |= loud;
                    failed.push(item);
                }
                Outcome::Reject { reason, detail } => {
                    refused += 1;
                    if first_refusal.is_none() {
                        first_refusal = Some(detail.clone());
                    }
                    self.reject(item, reason, detail, &mut round);
                }
            }
        }
        if let Some(first) = first_refusal {
            tracing::warn!(
                count = refused,
                first_reason = %first,
                "elasticsearch refused documents: dead-lettering them"
            );
        }
        let (retry, to_file) = self.fail(failed);
        round.retry = retry;
        round.to_file.extend(to_file);
        round
    }

    /// Looks at the documents stored under the ids of 409s: the same reading is already
    /// stored; another reading holding the time of a time-series reading moves this one to a
    /// later time; another reading holding a pipeline's id makes this one a dead letter. Never
    /// settles a reading as stored that is not.
    async fn check(&self, checks: Vec<(Item, String, String)>, round: &mut Round) {
        let docs: Vec<Value> = checks
            .iter()
            .map(|(_, index, id)| json!({ "_index": index, "_id": id }))
            .collect();
        let stored = match self.fetch_identities(docs).await {
            Ok(stored) if stored.len() == checks.len() => stored,
            Ok(stored) => {
                let reason = format!(
                    "checking 409s: {} documents answered for {} asked",
                    stored.len(),
                    checks.len()
                );
                return self.check_later(checks, reason, round);
            }
            Err(reason) => return self.check_later(checks, reason, round),
        };
        let mut moved = 0;
        for ((mut item, index, id), found) in checks.into_iter().zip(stored) {
            let time_series = item.conflict() == Conflict::Check { time_series: true };
            let Some(holder) = found else {
                // Deleted since (retention, an operator): there is room again.
                round.resend.push(item);
                continue;
            };
            if holder.is(&item.message, time_series) {
                self.settle(item, true, Utc::now());
                continue;
            }
            let holder = holder
                .reading_id
                .unwrap_or_else(|| "without a reading id".to_owned());
            if time_series && item.probes < MAX_PROBES && item.probe_later_time() {
                moved += 1;
                round.resend.push(item);
            } else if time_series {
                let detail = format!(
                    "other readings of its series hold its @timestamp and the {MAX_PROBES} \
                     times after it in {index} (the last: _id {id:?}, reading {holder})"
                );
                self.reject(item, SERIES_TIME_TAKEN, detail, round);
            } else {
                let detail = format!(
                    "another reading ({holder}) is stored under the _id {id:?} that the \
                     pipeline's id stage made from this one's fields, in {index}"
                );
                tracing::warn!(%index, %id, "a pipeline's id names two readings: dead-lettering the second");
                self.reject(item, ID_TAKEN, detail, round);
            }
        }
        if moved > 0 {
            bump(&self.stats.moved_in_series, moved);
            tracing::debug!(
                count = moved,
                "readings whose @timestamp another reading of the series holds: trying a later time"
            );
        }
    }

    /// A failed check settles nothing: the items are sent (and checked) again after a backoff.
    fn check_later(&self, checks: Vec<(Item, String, String)>, reason: String, round: &mut Round) {
        if round.retry.is_empty() {
            round.first_retry = reason;
        }
        let items = checks.into_iter().map(|(item, ..)| item).collect();
        let (retry, to_file) = self.fail(items);
        round.retry.extend(retry);
        round.to_file.extend(to_file);
    }

    /// For each `{_index, _id}`: `None` if no such document, else what identifies it.
    async fn fetch_identities(&self, docs: Vec<Value>) -> Result<Vec<Option<Holder>>, String> {
        let response = self
            .client
            .mget(MgetParts::None)
            ._source_includes(&["mqtt2es.reading_id", "mqtt2es.payload_digest"])
            .filter_path(&["docs.found", "docs._source", "docs.error"])
            .body(json!({ "docs": docs }))
            .send()
            .await;
        self.report(&response);
        let response = response.map_err(|e| format!("checking 409s failed: {}", chain(&e)))?;
        let status = response.status_code().as_u16();
        let body: Value = response
            .json()
            .await
            .map_err(|e| format!("checking 409s: unreadable answer: {}", chain(&e)))?;
        if !(200..300).contains(&status) {
            return Err(format!("checking 409s: http {status}: {body}"));
        }
        let docs = body
            .get("docs")
            .and_then(Value::as_array)
            .ok_or_else(|| format!("checking 409s: no docs in {body}"))?;
        docs.iter()
            .map(|doc| {
                if let Some(error) = doc.get("error") {
                    return Err(format!("checking 409s: {error}"));
                }
                let text = |pointer| {
                    doc.pointer(pointer)
                        .and_then(Value::as_str)
                        .map(str::to_owned)
                };
                Ok(match doc.get("found").and_then(Value::as_bool) {
                    Some(true) => Some(Holder {
                        reading_id: text("/_source/mqtt2es/reading_id"),
                        payload_digest: text("/_source/mqtt2es/payload_digest"),
                    }),
                    _ => None,
                })
            })
            .collect()
    }

    /// Counts a retryable failure on each item; dead letters out of attempts go to the file.
    fn fail(&self, items: Vec<Item>) -> (Vec<Item>, Vec<Item>) {
        let mut retry = Vec::with_capacity(items.len());
        let mut to_file = Vec::new();
        for mut item in items {
            item.failures += 1;
            match item.kind {
                Kind::DeadLetter { .. } if item.failures >= dead_letter::ELASTICSEARCH_ATTEMPTS => {
                    to_file.push(item)
                }
                _ => retry.push(item),
            }
        }
        (retry, to_file)
    }

    /// Turns a document Elasticsearch refused into its dead letter, keeping the original
    /// message. A refused dead letter goes to the file: it would be refused again.
    fn reject(&self, item: Item, reason: &str, detail: String, round: &mut Round) {
        let pipeline = match &item.kind {
            Kind::Document { pipeline, .. } => pipeline.to_string(),
            Kind::DeadLetter { .. } => return round.to_file.push(item),
        };
        let rejection = Rejection {
            pipeline: Some(pipeline),
            stage: Some("bulk".to_owned()),
            reason: reason.to_owned(),
            detail,
        };
        let letter =
            bulk::dead_letter_item(item.message, item.ack, &rejection, &self.dead_letter_index);
        if letter.bytes() > self.max_bytes {
            round.to_file.push(letter);
        } else {
            round.dead_letters.push(letter);
        }
    }

    /// Elasticsearch confirmed the item.
    fn settle(&self, item: Item, already_there: bool, now: DateTime<Utc>) {
        let how = match &item.kind {
            Kind::Document { .. } => {
                let counter = if already_there {
                    &self.stats.already_stored
                } else {
                    self.observer
                        .document_stored(item.index(), item.timestamp(), now);
                    &self.stats.stored
                };
                bump(counter, 1);
                Settlement::Stored
            }
            Kind::DeadLetter { reason } => {
                self.stats.dead_lettered(reason, false);
                Settlement::DeadLettered
            }
        };
        self.stats.settled(1);
        item.ack.settle(how);
    }

    /// Appends dead letters to the local file and settles them once fsynced. Retries for as
    /// long as the file cannot be written: settling without it would lose the records.
    async fn to_file(&self, items: Vec<Item>) {
        let lines: Vec<Vec<u8>> = items.iter().map(|item| item.source().to_vec()).collect();
        let mut backoff = Backoff::new(&self.retry);
        loop {
            match self.file.append(lines.clone()).await {
                Ok(()) => break,
                Err(e) => {
                    let (attempt, delay) = backoff.next();
                    tracing::error!(
                        path = %self.file.path().display(),
                        error = %e,
                        count = items.len(),
                        attempt,
                        delay_ms = delay.as_millis() as u64,
                        "cannot write the dead-letter file; the records stay unacknowledged"
                    );
                    tokio::time::sleep(delay).await;
                }
            }
        }
        tracing::warn!(
            path = %self.file.path().display(),
            count = items.len(),
            "dead letters written to the local file, not to elasticsearch"
        );
        for item in items {
            let Item { kind, ack, .. } = item;
            if let Kind::DeadLetter { reason } = &kind {
                self.stats.dead_lettered(reason, true);
            }
            self.stats.settled(1);
            ack.settle(Settlement::DeadLettered);
        }
    }
}

/// The least wait before sending again what a cluster block refused: a block is lifted by an
/// operator (or by disk space freed), not in milliseconds, and the cluster must not be hammered.
const BLOCKED_BACKOFF: Duration = Duration::from_secs(5);

/// A block seen: an alarm when it starts (then the metrics and `/readyz` say it until it ends).
fn write_blocked(observer: &dyn Observer, reason: &str, items: usize) {
    if observer.write_blocked(reason) {
        tracing::error!(
            reason,
            items,
            retry_every_s = BLOCKED_BACKOFF.as_secs(),
            "elasticsearch refuses writes (cluster block): nothing is dead-lettered or lost, \
             readings wait unacknowledged and are sent again until it is lifted. After the \
             flood-stage disk watermark: free disk space on the nodes (Elasticsearch 8+ lifts \
             the block itself; otherwise PUT <index>/_settings \
             {{\"index.blocks.read_only_allow_delete\": null}})"
        );
    }
}

/// Documents a block had refused were taken: the end of the block, if it was still on.
fn writes_accepted(observer: &dyn Observer) {
    if let Some(lasted) = observer.writes_accepted() {
        tracing::info!(
            blocked_s = lasted.as_secs(),
            "elasticsearch accepts writes again: the cluster block is lifted"
        );
    }
}

fn log_retry(attempt: u32, delay: Duration, items: usize, reason: &str, loud: bool) {
    let delay_ms = delay.as_millis() as u64;
    if loud {
        tracing::error!(
            attempt,
            items,
            delay_ms,
            first_reason = %reason,
            "bulk write failed in a way that needs an operator; retrying, intake is held back"
        );
    } else {
        tracing::warn!(
            attempt,
            items,
            delay_ms,
            first_reason = %reason,
            "bulk write failed; retrying"
        );
    }
}

/// An error and its sources, `a: b: c`: the elasticsearch client's own message alone rarely
/// says whether the connection was refused or timed out.
fn chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(e) = source {
        let next = e.to_string();
        if !text.contains(&next) {
            text.push_str(": ");
            text.push_str(&next);
        }
        source = e.source();
    }
    text
}

#[cfg(test)]
mod tests;
