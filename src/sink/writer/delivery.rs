//! One batch's delivery: a task that owns the batch until every item in it is stored or
//! dead-lettered. Retryable items loop here with backoff (probing for the node's return during
//! an outage), refused documents become dead letters sent at once, 413 halves the request, a
//! 409 that might be another reading's is checked (`identity`), and cluster blocks raise an
//! alarm of their own.
//!
//! The decision a reader would question: nothing but the abandon signal ends a delivery, so it
//! may loop for as long as Elasticsearch is down; that is what keeps an acknowledged reading
//! from being dropped, and the backpressure it causes is what holds intake.

use std::{sync::Arc, time::Duration};

use bytes::Bytes;
use chrono::{DateTime, Utc};
use elasticsearch::{
    Elasticsearch,
    http::{
        Method,
        headers::{CONTENT_ENCODING, CONTENT_TYPE, HeaderMap, HeaderValue},
    },
};
use serde_json::{Value, json};
use tokio::time::Instant;

use super::backoff::Backoff;
use super::chain::chain;
use super::identity::fetch_identities;
use crate::{
    document::Rejection,
    elastic::nodes::{Nodes, failed_url},
    record::Settlement,
    sink::{
        bulk::{
            self, Conflict, DOCUMENT_TOO_LARGE, ID_TAKEN, Item, Kind, MAX_PROBES, Outcome, Plan,
            SERIES_TIME_TAKEN,
        },
        dead_letter::{self, DeadLetterFile},
        observer::Observer,
        settings::RetrySettings,
        stats::{SinkStats, bump},
    },
};

/// What every delivery task shares.
#[derive(Debug)]
pub(super) struct Shared {
    pub(super) client: Elasticsearch,
    pub(super) nodes: Option<Nodes>,
    pub(super) observer: Arc<dyn Observer>,
    pub(super) retry: RetrySettings,
    pub(super) dead_letter_index: String,
    pub(super) file: Arc<DeadLetterFile>,
    pub(super) max_bytes: usize,
    pub(super) time_series_prefixes: Vec<String>,
    pub(super) gzip: bool,
    pub(super) stats: Arc<SinkStats>,
}

/// While a delivery waits out a backoff because no node answered, how often it asks whether
/// one does again: writing resumes within this of the node's return, however long the
/// backoff had grown (`retry.max_backoff_ms`, 30 s by default).
const PROBE_EVERY: Duration = Duration::from_millis(500);

/// Sends one batch until every item in it has settled.
pub(super) async fn deliver(shared: Arc<Shared>, items: Vec<Item>) {
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
        let stored = match fetch_identities(&self.client, docs, |sent| self.report(sent)).await {
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
    pub(super) async fn to_file(&self, items: Vec<Item>) {
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
