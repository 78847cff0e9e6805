//! The `_bulk` protocol without the I/O: turning routed records into NDJSON `create` ops, and
//! turning Elasticsearch's answer into one decision per item.
//!
//! Classification is a pure function of (HTTP status, response body, which items carry a
//! deterministic id), so every row of the table is tested against canned responses. The one
//! decision a reader might question: anything we cannot positively classify as stored or as
//! the document's own fault is *retried*, never dropped, because an acknowledged MQTT message
//! must be durable. Unknown and security failures are retried with an error-level log, so an
//! operator sees them while the backpressure holds intake.
//!
//! Requests are sent with `filter_path=errors,items.*.status,items.*.error` to keep responses
//! small. Filtering keeps the `items` array in request order, so results are matched to items
//! by position, which is also what Elasticsearch documents for `_bulk`.
//!
//! `event.ingested` (when mqtt2es sent the document) is stamped into each document's encoded
//! line by [`body`], with one timestamp per request: documents are encoded once, with a
//! fixed-width placeholder where the time goes, and every attempt overwrites it in place. The
//! integ-test engines have no ingest pipelines, so it cannot be set server-side.

use std::collections::HashMap;

use chrono::{DateTime, Utc};
use serde::Deserialize;
use serde_json::{Map, Value};

use super::{dead_letter, routed::Routed};
use crate::{
    document::{Processed, Rejection},
    object::Object,
    record::{Ack, Message},
};

/// The response filter for every bulk request. `_id`: a time-series stream derives it, and a
/// 409 there is checked by fetching the stored document under it (the backing index is in the
/// error).
pub const FILTER_PATH: &[&str] = &["errors", "items.*.status", "items.*.error", "items.*._id"];

/// Dead-letter reason: the encoded document is larger than a bulk request may be.
pub const DOCUMENT_TOO_LARGE: &str = "document_too_large";
/// Dead-letter reason: the document does not fit the data stream's mappings.
pub const MAPPING_CONFLICT: &str = "mapping_conflict";
/// Dead-letter reason: any other per-document refusal (400, 404, conflict without our id).
pub const REJECTED_BY_ELASTICSEARCH: &str = "rejected_by_elasticsearch";
/// Dead-letter reason: a time-series data stream has no backing index for the document's
/// `@timestamp` (older than its look-back time or retention, or too far in the future).
pub const TIMESTAMP_OUT_OF_RANGE: &str = "timestamp_out_of_range";
/// Dead-letter reason: another reading is stored under the `_id` a pipeline's `id` stage
/// made from this one's fields.
pub const ID_TAKEN: &str = "id_taken";
/// Dead-letter reason: every `@timestamp` tried for a reading on a time-series stream was
/// taken by other readings of its series ([`MAX_PROBES`]).
pub const SERIES_TIME_TAKEN: &str = "series_time_taken";

/// How many later times a time-series reading tries when its `@timestamp` is taken by another
/// reading of its series. With nanosecond times a second try is already rare.
pub const MAX_PROBES: u32 = 100;

/// `event.ingested` is RFC 3339 with milliseconds, always this wide for years 1000 to 9999.
const STAMP_LEN: usize = 24;
const STAMP_PLACEHOLDER: &str = "1970-01-01T00:00:00.000Z";

/// What an item is: a document, or the dead letter of a message that could not be one.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Kind {
    Document {
        pipeline: std::sync::Arc<str>,
        conflict: Conflict,
    },
    DeadLetter {
        reason: String,
    },
}

/// What a 409 (a document with this `_id` exists) tells about an item.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Conflict {
    /// The `_id` is the reading's own: whatever holds it is this reading, stored before.
    Ours,
    /// The `_id` comes from fields another reading may share: a pipeline's `id` stage, or a
    /// time-series stream's series and `@timestamp`. Only the stored document's
    /// `mqtt2es.reading_id` tells whether it is this reading.
    Check { time_series: bool },
}

/// One `create` op on its way to Elasticsearch, with what it needs to settle or be
/// dead-lettered later.
#[derive(Debug)]
pub struct Item {
    pub kind: Kind,
    /// Kept (the payload is shared, not copied) so a document refused by Elasticsearch can
    /// still become a dead letter with its original topic and payload.
    pub message: Message,
    pub ack: Ack,
    /// Retryable failures so far; dead letters go to the local file after a few.
    pub failures: u32,
    /// Later `@timestamp`s tried because other readings of the series held the earlier ones.
    pub probes: u32,
    /// Refused by a cluster block at least once: stored later, it tells that the block is gone.
    pub blocked: bool,
    ndjson: Vec<u8>,
    source_at: usize,
    /// Where the `event.ingested` placeholder sits in `ndjson`, if the document gets one.
    stamp_at: Option<usize>,
    /// Where the text of `@timestamp` starts in `ndjson` (after its opening quote), if it is a
    /// string: read for the latency figure once stored, without parsing the document again, and
    /// where a time-series document moves to a later time (it is written first there).
    timestamp_at: Option<usize>,
}

impl Item {
    /// Encoded size in the bulk body (both lines and their newlines).
    pub fn bytes(&self) -> usize {
        self.ndjson.len()
    }

    /// The document's JSON alone, without a newline: a line of the dead-letter file.
    pub fn source(&self) -> &[u8] {
        &self.ndjson[self.source_at..self.ndjson.len() - 1]
    }

    /// The index or data stream the item goes to, read back from its action line rather than
    /// kept twice. Index names never hold a quote or a backslash (Elasticsearch's naming rules,
    /// which routing enforces), so the name is the text up to the next quote.
    pub fn index(&self) -> &str {
        let rest = &self.ndjson[ACTION_START.len()..];
        let len = rest.iter().position(|&b| b == b'"').unwrap_or(0);
        std::str::from_utf8(&rest[..len]).unwrap_or_default()
    }

    /// The text of the document's `@timestamp`, if it is a string. RFC 3339 has nothing to
    /// escape, so the text ends at the next quote.
    pub fn timestamp(&self) -> Option<&str> {
        let at = self.timestamp_at?;
        let len = self.ndjson[at..].iter().position(|&b| b == b'"')?;
        std::str::from_utf8(&self.ndjson[at..at + len]).ok()
    }

    /// What a 409 on this item means. Dead letters carry the reading's own id.
    pub fn conflict(&self) -> Conflict {
        match self.kind {
            Kind::Document { conflict, .. } => conflict,
            Kind::DeadLetter { .. } => Conflict::Ours,
        }
    }

    /// Moves a time-series document to the next time it may take in its series: one
    /// millisecond and one nanosecond later, so that it moves on a `date_nanos` stream and on
    /// an older `date` one alike, and the same way every time, so that a redelivery of it
    /// finds it again by walking the same times. False if it has no such time.
    pub fn probe_later_time(&mut self) -> bool {
        let time_series = matches!(self.conflict(), Conflict::Check { time_series: true });
        let Some(at) = self.timestamp_at.filter(|_| time_series) else {
            return false;
        };
        let Some(len) = self.ndjson[at..].iter().position(|&b| b == b'"') else {
            return false;
        };
        let Some(time) = std::str::from_utf8(&self.ndjson[at..at + len])
            .ok()
            .and_then(|text| text.parse::<DateTime<Utc>>().ok())
        else {
            return false;
        };
        let later = time + chrono::TimeDelta::milliseconds(1) + chrono::TimeDelta::nanoseconds(1);
        self.ndjson
            .splice(at..at + len, crate::reading::rfc3339(later).into_bytes());
        self.probes += 1;
        true
    }
}

/// What to do with a routed record before batching.
#[derive(Debug)]
pub enum Prepared {
    /// A pipeline dropped it on purpose: settle now.
    Drop(Ack),
    /// Batch it.
    Send(Item),
    /// A dead letter too large for any bulk request: straight to the local file.
    ToFile(Item),
}

/// Encodes a routed record, dead-lettering documents too large to ever be sent.
///
/// The `_id` is the reading's own unless a pipeline's `id` stage made one from fields.
/// Documents bound for a stream whose name starts with one of `time_series_prefixes` are sent
/// without `_id`: a time-series data stream derives the id from the dimensions and
/// `@timestamp` and refuses one given. Another reading of the series may have the same time,
/// so a 409 there is checked, not believed ([`Conflict::Check`]).
pub fn prepare(
    routed: Routed,
    dead_letter_index: &str,
    max_bytes: usize,
    time_series_prefixes: &[String],
) -> Prepared {
    let Routed {
        message,
        processed,
        ack,
    } = routed;
    match processed {
        Processed::Dropped { .. } => Prepared::Drop(ack),
        Processed::Rejected(rejection) => send_or_file(
            dead_letter_item(message, ack, &rejection, dead_letter_index),
            max_bytes,
        ),
        Processed::Document(doc) => {
            let time_series = time_series_prefixes
                .iter()
                .any(|prefix| doc.index.starts_with(prefix.as_str()));
            let own_id;
            let (id, conflict) = match (time_series, doc.id.as_deref()) {
                (true, _) => (None, Conflict::Check { time_series: true }),
                (false, Some(id)) => (Some(id), Conflict::Check { time_series: false }),
                (false, None) => {
                    own_id = message.reading.to_string();
                    (Some(own_id.as_str()), Conflict::Ours)
                }
            };
            let Encoded {
                ndjson,
                source_at,
                stamp_at,
                timestamp_at,
            } = encode_document(&doc.index, id, &doc.source, time_series);
            if ndjson.len() > max_bytes {
                let rejection = Rejection {
                    pipeline: Some(doc.pipeline.to_string()),
                    stage: Some("bulk".to_owned()),
                    reason: DOCUMENT_TOO_LARGE.to_owned(),
                    detail: format!(
                        "the document encodes to {} bytes, more than max_bytes {max_bytes}",
                        ndjson.len()
                    ),
                };
                return send_or_file(
                    dead_letter_item(message, ack, &rejection, dead_letter_index),
                    max_bytes,
                );
            }
            Prepared::Send(Item {
                kind: Kind::Document {
                    pipeline: doc.pipeline,
                    conflict,
                },
                message,
                ack,
                failures: 0,
                blocked: false,
                probes: 0,
                ndjson,
                source_at,
                stamp_at,
                timestamp_at,
            })
        }
    }
}

/// The dead letter of `message` as an item for the dead-letter stream.
pub fn dead_letter_item(
    message: Message,
    ack: Ack,
    rejection: &Rejection,
    dead_letter_index: &str,
) -> Item {
    let source = dead_letter::document(&message, rejection);
    let id = dead_letter::id(&message, rejection);
    let (ndjson, source_at) = encode(dead_letter_index, Some(&id), &source);
    Item {
        kind: Kind::DeadLetter {
            reason: rejection.reason.clone(),
        },
        message,
        ack,
        failures: 0,
        blocked: false,
        probes: 0,
        ndjson,
        source_at,
        stamp_at: None,
        timestamp_at: None,
    }
}

/// A document's bulk lines and where its variable parts sit.
struct Encoded {
    ndjson: Vec<u8>,
    source_at: usize,
    stamp_at: Option<usize>,
    timestamp_at: Option<usize>,
}

/// Encodes a document's `create` op and source in one pass. The source starts with
/// `event.ingested` holding a placeholder time (each attempt overwrites it in place), unless
/// the document's own `event` already holds `ingested` or is not an object (the pipeline set it,
/// or the name means something else there). With `time_first`, `@timestamp` follows it, at a
/// known place, so a time-series reading can move to a later time without encoding it again.
fn encode_document(index: &str, id: Option<&str>, source: &Object, time_first: bool) -> Encoded {
    let mut out = Vec::with_capacity(512);
    action_line(&mut out, index, id);
    let source_at = out.len();
    let mut fields = Fields::open(&mut out);
    let mut stamp_at = None;
    match source.get("event") {
        None => {
            fields.name("event").extend_from_slice(b"{\"ingested\":\"");
            stamp_at = Some(fields.out.len());
            fields.out.extend_from_slice(STAMP_PLACEHOLDER.as_bytes());
            fields.out.extend_from_slice(b"\"}");
        }
        // A dotted name merges into the document's own `event` object on both engines.
        Some(Value::Object(event)) if !event.contains_key("ingested") => {
            fields.name("event.ingested").push(b'"');
            stamp_at = Some(fields.out.len());
            fields.out.extend_from_slice(STAMP_PLACEHOLDER.as_bytes());
            fields.out.push(b'"');
        }
        Some(_) => {}
    }
    let time = match (time_first, source.get("@timestamp")) {
        (true, Some(Value::String(time))) => Some(time),
        _ => None,
    };
    let mut timestamp_at = None;
    if let Some(time) = time {
        let out = fields.name("@timestamp");
        timestamp_at = Some(out.len() + 1); // after the opening quote
        write_json(out, time.as_str());
    }
    for (key, value) in source.iter() {
        let out = match key {
            "@timestamp" if time.is_some() => continue,
            "@timestamp" => {
                let out = fields.name(key);
                if value.is_string() {
                    timestamp_at = Some(out.len() + 1);
                }
                out
            }
            _ => fields.name(key),
        };
        write_json(out, value);
    }
    out.extend_from_slice(b"}\n");
    Encoded {
        ndjson: out,
        source_at,
        stamp_at,
        timestamp_at,
    }
}

/// The members of a JSON object being written: each `name` puts the comma before it.
struct Fields<'a> {
    out: &'a mut Vec<u8>,
    first: bool,
}

impl<'a> Fields<'a> {
    fn open(out: &'a mut Vec<u8>) -> Self {
        out.push(b'{');
        Fields { out, first: true }
    }

    /// Writes `"name":` and returns the buffer for the value.
    fn name(&mut self, name: &str) -> &mut Vec<u8> {
        if !std::mem::take(&mut self.first) {
            self.out.push(b',');
        }
        write_json(self.out, name);
        self.out.push(b':');
        self.out
    }
}

/// How every action line starts, up to the index name's first character (see `action_line`).
const ACTION_START: &[u8] = b"{\"create\":{\"_index\":\"";

/// `{"create":{"_index":..,"_id":..}}` and its newline, written, not built as a `Value`.
fn action_line(out: &mut Vec<u8>, index: &str, id: Option<&str>) {
    out.extend_from_slice(b"{\"create\":{\"_index\":");
    write_json(out, index);
    if let Some(id) = id {
        out.extend_from_slice(b",\"_id\":");
        write_json(out, id);
    }
    out.extend_from_slice(b"}}\n");
}

/// Serialising a string or a `Value` into memory has no failure mode.
fn write_json<T: serde::Serialize + ?Sized>(out: &mut Vec<u8>, value: &T) {
    serde_json::to_writer(out, value).expect("a JSON value always serialises");
}

/// A dead letter too large for any bulk request goes straight to the file.
fn send_or_file(letter: Item, max_bytes: usize) -> Prepared {
    if letter.bytes() > max_bytes {
        Prepared::ToFile(letter)
    } else {
        Prepared::Send(letter)
    }
}

/// `{"create":{"_index":..,"_id":..}}\n{source}\n`, and where the source starts.
fn encode(index: &str, id: Option<&str>, source: &Map<String, Value>) -> (Vec<u8>, usize) {
    let mut out = Vec::with_capacity(256);
    action_line(&mut out, index, id);
    let source_at = out.len();
    write_json(&mut out, source);
    out.push(b'\n');
    (out, source_at)
}

/// The NDJSON body for these items, in order, with `event.ingested` set to `now`.
pub fn body(items: &[Item], now: DateTime<Utc>) -> Vec<u8> {
    let stamp = now.format("%Y-%m-%dT%H:%M:%S%.3fZ").to_string();
    // Only a clock outside the years 1000 to 9999 formats to another width.
    let stamp = if stamp.len() == STAMP_LEN {
        stamp
    } else {
        STAMP_PLACEHOLDER.to_owned()
    };
    let mut out = Vec::with_capacity(items.iter().map(Item::bytes).sum());
    for item in items {
        let start = out.len();
        out.extend_from_slice(&item.ndjson);
        if let Some(at) = item.stamp_at {
            out[start + at..start + at + STAMP_LEN].copy_from_slice(stamp.as_bytes());
        }
    }
    out
}

/// `body` gzipped at the fastest level: telemetry NDJSON still shrinks five- to tenfold, at a
/// fraction of the CPU of the default level (figures in bench/README.md).
pub fn gzip(body: &[u8]) -> Vec<u8> {
    use std::io::Write;
    let mut encoder = flate2::write::GzEncoder::new(
        Vec::with_capacity(body.len() / 4 + 64),
        flate2::Compression::fast(),
    );
    // Writing into memory has no failure mode.
    encoder.write_all(body).expect("gzip into memory");
    encoder.finish().expect("gzip into memory")
}

/// The decision for one item of a bulk response.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    Stored,
    /// 409 on the reading's own id: a redelivery of something already durable.
    AlreadyStored,
    /// 409 on an id another reading may share: fetch `id` from the backing `index` and compare
    /// its `mqtt2es.reading_id` before believing it.
    Check {
        index: String,
        id: String,
    },
    /// Send it again after a backoff. `loud`: not a load or availability problem, so an
    /// operator must act (security, unknown status). `blocked`: the cluster refuses writes
    /// (a cluster block: read-only after the flood-stage disk watermark, no master), an alarm
    /// of its own with a long backoff.
    Retry {
        reason: String,
        loud: bool,
        blocked: bool,
    },
    /// The document's own fault: dead-letter it with this reason and detail.
    Reject {
        reason: &'static str,
        detail: String,
    },
}

/// The decision for a whole bulk request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Plan {
    /// One outcome per item, in request order.
    Items(Vec<Outcome>),
    /// 413 for several items: send each half on its own.
    Split,
    /// 413 for a single item: it can never be sent.
    TooLarge,
    /// Nothing was stored; send the whole request again after a backoff (`loud`, `blocked`:
    /// as for `Outcome::Retry`).
    RetryAll {
        reason: String,
        loud: bool,
        blocked: bool,
    },
}

/// Classifies a bulk response. `conflicts[i]` tells what a 409 on item `i` means.
pub fn classify(status: u16, body: &[u8], conflicts: &[Conflict]) -> Plan {
    match status {
        200..=299 => classify_items(body, conflicts),
        413 if conflicts.len() > 1 => Plan::Split,
        413 => Plan::TooLarge,
        429 | 500..=599 => {
            let error = request_error(body);
            Plan::RetryAll {
                reason: describe(status, error.as_ref()),
                loud: false,
                blocked: is_cluster_block(error.as_ref()),
            }
        }
        _ => {
            let error = request_error(body);
            let blocked = is_cluster_block(error.as_ref());
            Plan::RetryAll {
                loud: !blocked,
                blocked,
                reason: describe(status, error.as_ref()),
            }
        }
    }
}

#[derive(Deserialize)]
struct BulkResponse {
    #[serde(default)]
    errors: bool,
    #[serde(default)]
    items: Vec<HashMap<String, ItemResult>>,
}

#[derive(Deserialize)]
struct ItemResult {
    status: u16,
    error: Option<Value>,
    #[serde(rename = "_id")]
    id: Option<String>,
}

/// The head of a bulk response: whether any item failed, and its items skipped, not built
/// (`IgnoredAny` has no size, so the vector only counts them).
#[derive(Deserialize)]
struct BulkSummary {
    #[serde(default)]
    errors: bool,
    #[serde(default)]
    items: Vec<serde::de::IgnoredAny>,
}

fn classify_items(body: &[u8], conflicts: &[Conflict]) -> Plan {
    // The common answer, "errors": false with one item per document, means every item was
    // stored (Elasticsearch sets `errors` when any item failed, a 409 included): settled
    // without building a map per item. Anything else is read item by item below.
    if let Ok(summary) = serde_json::from_slice::<BulkSummary>(body)
        && !summary.errors
        && (summary.items.len() == conflicts.len() || summary.items.is_empty())
    {
        return Plan::Items(vec![Outcome::Stored; conflicts.len()]);
    }
    let response: BulkResponse = match serde_json::from_slice(body) {
        Ok(response) => response,
        Err(e) => {
            return Plan::RetryAll {
                reason: format!("unreadable bulk response: {e}"),
                loud: true,
                blocked: false,
            };
        }
    };
    if !response.errors && response.items.is_empty() {
        return Plan::Items(vec![Outcome::Stored; conflicts.len()]);
    }
    let outcomes = conflicts
        .iter()
        .enumerate()
        .map(
            |(i, &conflict)| match response.items.get(i).and_then(|op| op.values().next()) {
                Some(result) => item_outcome(result, conflict),
                None => Outcome::Retry {
                    reason: format!(
                        "the bulk response has {} items for {} sent",
                        response.items.len(),
                        i + 1
                    ),
                    loud: true,
                    blocked: false,
                },
            },
        )
        .collect();
    Plan::Items(outcomes)
}

fn item_outcome(result: &ItemResult, conflict: Conflict) -> Outcome {
    let (status, error) = (result.status, result.error.as_ref());
    match status {
        200..=299 => Outcome::Stored,
        409 if conflict == Conflict::Ours => Outcome::AlreadyStored,
        409 => match (
            error.and_then(|e| e.get("index")).and_then(Value::as_str),
            &result.id,
        ) {
            (Some(index), Some(id)) => Outcome::Check {
                index: index.to_owned(),
                id: id.clone(),
            },
            // Without both, the stored document cannot be looked at: sending again meets the
            // 409 again, and an operator must see why it never settles.
            _ => Outcome::Retry {
                reason: format!(
                    "{} (without the index and id of the stored document to compare with)",
                    describe(status, error)
                ),
                loud: true,
                blocked: false,
            },
        },
        // Elasticsearch 8+ answers the flood-stage block with 429, older ones with 403.
        429 | 500..=599 => Outcome::Retry {
            reason: describe(status, error),
            loud: false,
            blocked: is_cluster_block(error),
        },
        400 | 404 => Outcome::Reject {
            reason: if status == 400 && is_mapping_error(error) {
                MAPPING_CONFLICT
            } else if status == 400 && is_timestamp_out_of_range(error) {
                TIMESTAMP_OUT_OF_RANGE
            } else {
                REJECTED_BY_ELASTICSEARCH
            },
            detail: describe(status, error),
        },
        _ => Outcome::Retry {
            loud: !is_cluster_block(error),
            blocked: is_cluster_block(error),
            reason: describe(status, error),
        },
    }
}

fn error_type(error: Option<&Value>) -> Option<&str> {
    error?.get("type")?.as_str()
}

fn is_mapping_error(error: Option<&Value>) -> bool {
    match error_type(error) {
        Some(
            "document_parsing_exception"
            | "mapper_parsing_exception"
            | "strict_dynamic_mapping_exception"
            | "mapper_exception",
        ) => true,
        // Two requests in flight at once that map a new field differently: the one whose
        // mapping update loses is told so (OpenSearch and Elasticsearch alike).
        Some("illegal_argument_exception") => error
            .and_then(|e| e.get("reason"))
            .and_then(Value::as_str)
            .is_some_and(|reason| {
                reason.starts_with("mapper [") && reason.contains("cannot be changed from type")
            }),
        _ => false,
    }
}

/// Elasticsearch 9 says `timestamp_error`; 8.x said `illegal_argument_exception` with the same
/// reason text.
fn is_timestamp_out_of_range(error: Option<&Value>) -> bool {
    error_type(error) == Some("timestamp_error")
        || error
            .and_then(|e| e.get("reason"))
            .and_then(Value::as_str)
            .is_some_and(|r| r.contains("is outside of ranges of currently writable indices"))
}

/// A cluster block (read-only after the flood-stage disk watermark, no master) is an
/// availability problem that resolves itself, whatever status it comes with.
fn is_cluster_block(error: Option<&Value>) -> bool {
    error_type(error) == Some("cluster_block_exception")
}

/// The `error` object of a whole-request failure, if the body is an Elasticsearch error.
fn request_error(body: &[u8]) -> Option<Value> {
    let mut parsed: Value = serde_json::from_slice(body).ok()?;
    Some(parsed.get_mut("error")?.take())
}

/// Longest reason kept from Elasticsearch: some (`es_rejected_execution_exception`) run to
/// kilobytes of thread-pool state.
const MAX_REASON_CHARS: usize = 500;

/// `http 400 document_parsing_exception: "[1:9] failed to parse ..." (caused by ...)`.
fn describe(status: u16, error: Option<&Value>) -> String {
    let mut text = format!("http {status}");
    let mut cause = error;
    let mut first = true;
    while let Some(error) = cause {
        let ty = error.get("type").and_then(Value::as_str);
        let reason = error
            .get("reason")
            .and_then(Value::as_str)
            .or_else(|| error.as_str());
        let part = match (ty, reason) {
            (Some(ty), Some(reason)) => format!("{ty}: {:?}", truncate(reason)),
            (Some(ty), None) => ty.to_owned(),
            (None, Some(reason)) => format!("{:?}", truncate(reason)),
            (None, None) => break,
        };
        if first {
            text.push(' ');
            text.push_str(&part);
        } else {
            text.push_str(&format!(" (caused by {part})"));
        }
        first = false;
        cause = error.get("caused_by");
    }
    text
}

fn truncate(s: &str) -> &str {
    match s.char_indices().nth(MAX_REASON_CHARS) {
        Some((at, _)) => &s[..at],
        None => s,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{document::Document, record::Ack, sink::dead_letter::tests::message};
    use serde_json::json;

    fn routed(processed: Processed) -> Routed {
        Routed {
            message: message(b"{\"t\":21.5}"),
            processed,
            ack: Ack::none(),
        }
    }

    fn document(id: Option<&str>) -> Processed {
        let source = json!({"@timestamp": "2025-03-01T12:00:00Z", "t": 21.5});
        Processed::Document(Document {
            pipeline: "thermometers".into(),
            index: "mqtt2es-temp".to_owned(),
            id: id.map(str::to_owned),
            source: source.as_object().expect("an object").clone().into(),
        })
    }

    fn lines(bytes: &[u8]) -> Vec<Value> {
        std::str::from_utf8(bytes)
            .expect("utf-8")
            .lines()
            .map(|line| serde_json::from_str(line).expect("a JSON line"))
            .collect()
    }

    fn sent_at() -> DateTime<Utc> {
        "2025-03-01T12:00:01.250Z".parse().expect("a time")
    }

    fn document_with(index: &str, id: Option<&str>, source: Value) -> Processed {
        Processed::Document(Document {
            pipeline: "telemetry".into(),
            index: index.to_owned(),
            id: id.map(str::to_owned),
            source: source.as_object().expect("an object").clone().into(),
        })
    }

    fn sent(prepared: Prepared) -> Item {
        match prepared {
            Prepared::Send(item) => item,
            other => panic!("expected an item to send, got {other:?}"),
        }
    }

    // ---- encoding ----

    #[test]
    fn a_document_with_an_id_becomes_a_create_op_with_that_id() {
        let item = sent(prepare(routed(document(Some("abc"))), "dl", 1 << 20, &[]));
        assert_eq!(
            lines(&body(&[item], sent_at())),
            [
                json!({"create": {"_index": "mqtt2es-temp", "_id": "abc"}}),
                json!({
                    "event": {"ingested": "2025-03-01T12:00:01.250Z"},
                    "@timestamp": "2025-03-01T12:00:00Z",
                    "t": 21.5,
                }),
            ]
        );
    }

    #[test]
    fn each_request_stamps_its_own_send_time_into_event_ingested() {
        let item = sent(prepare(routed(document(Some("a"))), "dl", 1 << 20, &[]));
        let first = lines(&body(std::slice::from_ref(&item), sent_at()));
        let later = "2025-03-01T12:05:00Z".parse().expect("a time");
        let retry = lines(&body(&[item], later));
        assert_eq!(first[1]["event"]["ingested"], "2025-03-01T12:00:01.250Z");
        assert_eq!(retry[1]["event"]["ingested"], "2025-03-01T12:05:00.000Z");
    }

    #[test]
    fn event_ingested_joins_an_event_object_of_the_document_and_never_replaces_one() {
        let own_event = json!({"@timestamp": "2025-03-01T12:00:00Z", "event": {"action": "open"}});
        let item = sent(prepare(
            routed(document_with("mqtt2es-messages", None, own_event)),
            "dl",
            1 << 20,
            &[],
        ));
        let source = &lines(&body(&[item], sent_at()))[1];
        assert_eq!(source["event.ingested"], "2025-03-01T12:00:01.250Z");
        assert_eq!(source["event"], json!({"action": "open"}));

        for kept in [
            json!({"event": {"ingested": "2025-01-01T00:00:00Z"}}),
            json!({"event": "door opened"}),
        ] {
            let item = sent(prepare(
                routed(document_with("mqtt2es-messages", None, kept.clone())),
                "dl",
                1 << 20,
                &[],
            ));
            assert_eq!(lines(&body(&[item], sent_at()))[1], kept);
        }
    }

    #[test]
    fn an_empty_document_still_gets_event_ingested_as_valid_json() {
        let item = sent(prepare(
            routed(document_with("mqtt2es-messages", None, json!({}))),
            "dl",
            1 << 20,
            &[],
        ));
        assert_eq!(
            lines(&body(&[item], sent_at()))[1],
            json!({"event": {"ingested": "2025-03-01T12:00:01.250Z"}})
        );
    }

    #[test]
    fn a_document_for_a_time_series_stream_goes_without_id_and_a_409_there_is_checked() {
        let prefixes = ["mqtt2es-telemetry-".to_owned()];
        let reading = json!({"@timestamp": "2025-03-01T12:00:00Z", "site": "lab"});
        let item = sent(prepare(
            routed(document_with(
                "mqtt2es-telemetry-lab",
                Some("abc"),
                reading.clone(),
            )),
            "dl",
            1 << 20,
            &prefixes,
        ));
        assert_eq!(item.conflict(), Conflict::Check { time_series: true });
        assert_eq!(
            lines(&body(&[item], sent_at()))[0],
            json!({"create": {"_index": "mqtt2es-telemetry-lab"}})
        );
        // Other streams keep the pipeline's id.
        let item = sent(prepare(
            routed(document_with("mqtt2es-status-lab", Some("abc"), reading)),
            "dl",
            1 << 20,
            &prefixes,
        ));
        assert_eq!(
            lines(&body(&[item], sent_at()))[0]["create"]["_id"],
            json!("abc")
        );
    }

    #[test]
    fn a_dead_letter_gets_no_event_ingested() {
        let rejection = Rejection {
            pipeline: None,
            stage: Some("decode".to_owned()),
            reason: "invalid_json".to_owned(),
            detail: "bad".to_owned(),
        };
        let item = sent(prepare(
            routed(Processed::Rejected(rejection)),
            "dl",
            1 << 20,
            &[],
        ));
        assert!(lines(&body(&[item], sent_at()))[1].get("event").is_none());
    }

    #[test]
    fn a_document_without_a_pipeline_id_goes_under_its_reading_id_and_a_409_means_stored() {
        let item = sent(prepare(routed(document(None)), "dl", 1 << 20, &[]));
        assert_eq!(item.conflict(), Conflict::Ours);
        let reading = item.message.reading.to_string();
        assert_eq!(
            lines(&body(&[item], sent_at()))[0],
            json!({"create": {"_index": "mqtt2es-temp", "_id": reading}})
        );
    }

    #[test]
    fn a_pipeline_id_from_fields_is_sent_but_a_409_on_it_is_checked() {
        let item = sent(prepare(routed(document(Some("abc"))), "dl", 1 << 20, &[]));
        assert_eq!(item.conflict(), Conflict::Check { time_series: false });
        assert_eq!(
            lines(&body(&[item], sent_at()))[0]["create"]["_id"],
            json!("abc")
        );
    }

    #[test]
    fn a_time_series_document_starts_with_its_time_and_moves_to_later_times_the_same_way_each_time()
    {
        let prefixes = ["mqtt2es-telemetry-".to_owned()];
        let reading =
            json!({"site": "lab", "@timestamp": "2025-03-01T12:00:00.000000500Z", "t": 1});
        let mut item = sent(prepare(
            routed(document_with(
                "mqtt2es-telemetry-lab",
                None,
                reading.clone(),
            )),
            "dl",
            1 << 20,
            &prefixes,
        ));
        let text = String::from_utf8(body(std::slice::from_ref(&item), sent_at())).expect("utf8");
        assert!(
            text.contains("{\"event\":{\"ingested\":\"2025-03-01T12:00:01.250Z\"},\"@timestamp\":\"2025-03-01T12:00:00.000000500Z\","),
            "{text}"
        );
        assert!(item.probe_later_time());
        assert!(item.probe_later_time());
        assert_eq!(item.probes, 2);
        let moved = &lines(&body(&[item], sent_at()))[1];
        assert_eq!(moved["@timestamp"], "2025-03-01T12:00:00.002000502Z");
        assert_eq!(moved["t"], 1);
        assert_eq!(moved["event"]["ingested"], "2025-03-01T12:00:01.250Z");
    }

    #[test]
    fn an_items_data_stream_is_read_back_from_its_action_line_for_documents_and_dead_letters() {
        let document = sent(prepare(
            routed(document_with(
                "mqtt2es-telemetry-lab",
                None,
                json!({"t": 1}),
            )),
            "dl",
            1 << 20,
            &[],
        ));
        assert_eq!(document.index(), "mqtt2es-telemetry-lab");
        let rejection = Rejection {
            pipeline: None,
            stage: None,
            reason: "invalid_json".to_owned(),
            detail: String::new(),
        };
        let letter = dead_letter_item(document.message, Ack::none(), &rejection, "mqtt2es-dl");
        assert_eq!(letter.index(), "mqtt2es-dl");
    }

    #[test]
    fn a_documents_timestamp_is_found_where_it_was_encoded_and_follows_a_move() {
        let prefixes = ["mqtt2es-telemetry-".to_owned()];
        let encoded = |index: &str, source: Value| {
            sent(prepare(
                routed(document_with(index, None, source)),
                "dl",
                1 << 20,
                &prefixes,
            ))
        };
        let plain = encoded(
            "mqtt2es-messages",
            json!({"a": {"@timestamp": "nested"}, "@timestamp": "2025-03-01T12:00:00.123Z", "z": 1}),
        );
        assert_eq!(plain.timestamp(), Some("2025-03-01T12:00:00.123Z"));
        let mut series = encoded(
            "mqtt2es-telemetry-lab",
            json!({"@timestamp": "2025-03-01T12:00:00Z", "t": 1}),
        );
        assert_eq!(series.timestamp(), Some("2025-03-01T12:00:00Z"));
        assert!(series.probe_later_time());
        assert_eq!(series.timestamp(), Some("2025-03-01T12:00:00.001000001Z"));
        let number = encoded(
            "mqtt2es-messages",
            json!({"@timestamp": 1_740_830_400_000_u64}),
        );
        assert_eq!(number.timestamp(), None);
    }

    #[test]
    fn a_time_series_document_holding_only_its_time_is_valid_json() {
        let prefixes = ["mqtt2es-telemetry-".to_owned()];
        let only_time = json!({"event": {"ingested": "x"}, "@timestamp": "2025-03-01T12:00:00Z"});
        let item = sent(prepare(
            routed(document_with("mqtt2es-telemetry-lab", None, only_time)),
            "dl",
            1 << 20,
            &prefixes,
        ));
        let line = &lines(&body(&[item], sent_at()))[1];
        assert_eq!(line["@timestamp"], "2025-03-01T12:00:00Z");
    }

    #[test]
    fn a_document_that_is_not_time_series_has_no_time_to_move() {
        let mut item = sent(prepare(routed(document(None)), "dl", 1 << 20, &[]));
        assert!(!item.probe_later_time());
    }

    #[test]
    fn the_body_is_the_items_in_order_each_line_newline_terminated() {
        let a = sent(prepare(routed(document(Some("a"))), "dl", 1 << 20, &[]));
        let b = sent(prepare(routed(document(Some("b"))), "dl", 1 << 20, &[]));
        let total = a.bytes() + b.bytes();
        let body = body(&[a, b], sent_at());
        assert_eq!(body.len(), total);
        assert!(body.ends_with(b"\n"));
        let ids: Vec<_> = lines(&body)
            .iter()
            .step_by(2)
            .map(|op| op["create"]["_id"].clone())
            .collect();
        assert_eq!(ids, [json!("a"), json!("b")]);
    }

    #[test]
    fn the_source_of_an_item_is_its_json_line_without_newline() {
        let item = sent(prepare(routed(document(None)), "dl", 1 << 20, &[]));
        let source: Value = serde_json::from_slice(item.source()).expect("json");
        assert_eq!(source["t"], json!(21.5));
        assert!(!item.source().ends_with(b"\n"));
    }

    #[test]
    fn a_rejection_becomes_a_dead_letter_op_into_the_dead_letter_stream() {
        let rejection = Rejection {
            pipeline: Some("thermometers".to_owned()),
            stage: Some("decode".to_owned()),
            reason: "invalid_json".to_owned(),
            detail: "bad".to_owned(),
        };
        let item = sent(prepare(
            routed(Processed::Rejected(rejection)),
            "mqtt2es-deadletter",
            1 << 20,
            &[],
        ));
        assert_eq!(
            item.kind,
            Kind::DeadLetter {
                reason: "invalid_json".to_owned()
            }
        );
        let lines = lines(&body(&[item], sent_at()));
        assert_eq!(lines[0]["create"]["_index"], "mqtt2es-deadletter");
        let id = lines[0]["create"]["_id"]
            .as_str()
            .expect("a dead letter has an id");
        assert_eq!(id, "AAAAAAAAAAAAAAAAAAAABw", "the reading's own id");
        assert_eq!(lines[1]["payload"], "{\"t\":21.5}");
    }

    #[test]
    fn a_dropped_record_is_settled_without_encoding() {
        let prepared = prepare(
            routed(Processed::Dropped {
                pipeline: "p".into(),
                stage: "drop".to_owned(),
            }),
            "dl",
            1 << 20,
            &[],
        );
        assert!(matches!(prepared, Prepared::Drop(_)));
    }

    #[test]
    fn a_document_larger_than_max_bytes_becomes_a_document_too_large_dead_letter() {
        let Processed::Document(mut doc) = document(Some("a")) else {
            unreachable!("document() makes a document")
        };
        doc.source
            .insert("blob".to_owned(), json!("x".repeat(1000)));
        let item = sent(prepare(routed(Processed::Document(doc)), "dl", 900, &[]));
        assert_eq!(
            item.kind,
            Kind::DeadLetter {
                reason: DOCUMENT_TOO_LARGE.to_owned()
            }
        );
        let letter: Value = serde_json::from_slice(item.source()).expect("json");
        assert_eq!(letter["pipeline"], "thermometers");
        assert_eq!(letter["stage"], "bulk");
        assert!(
            letter["error"]["message"]
                .as_str()
                .is_some_and(|m| m.contains("more than max_bytes 900")),
            "{letter}"
        );
    }

    #[test]
    fn a_dead_letter_too_large_for_any_request_goes_straight_to_the_file() {
        let prepared = prepare(routed(document(Some("a"))), "dl", 50, &[]);
        match prepared {
            Prepared::ToFile(item) => assert_eq!(
                item.kind,
                Kind::DeadLetter {
                    reason: DOCUMENT_TOO_LARGE.to_owned()
                }
            ),
            other => panic!("expected the file, got {other:?}"),
        }
    }

    // ---- classification: canned responses in the shapes Elasticsearch sends with
    // filter_path=errors,items.*.status,items.*.error ----

    const ALL_CREATED: &str =
        r#"{"errors":false,"items":[{"create":{"status":201}},{"create":{"status":201}}]}"#;

    const MIXED: &str = r#"{"errors":true,"items":[
        {"create":{"status":201}},
        {"create":{"status":409,"error":{"type":"version_conflict_engine_exception","reason":"[abc]: version conflict, document already exists (current version [1])","index_uuid":"x","shard":"0","index":".ds-mqtt2es-temp-2025.03.01-000001"}}},
        {"create":{"status":400,"error":{"type":"document_parsing_exception","reason":"[1:43] failed to parse field [t] of type [float] in document with id 'def'. Preview of field's value: 'hot'","caused_by":{"type":"number_format_exception","reason":"For input string: \"hot\""}}}},
        {"create":{"status":429,"error":{"type":"es_rejected_execution_exception","reason":"rejected execution of coordinating operation [coordinating_and_primary_bytes=0, replica_bytes=0, all_bytes=0, coordinating_operation_bytes=110, max_coordinating_and_primary_bytes=0]"}}},
        {"create":{"status":503,"error":{"type":"unavailable_shards_exception","reason":"[.ds-mqtt2es-temp-2025.03.01-000001][0] primary shard is not active Timeout: [1m]"}}},
        {"create":{"status":403,"error":{"type":"cluster_block_exception","reason":"index [.ds-mqtt2es-temp-2025.03.01-000001] blocked by: [TOO_MANY_REQUESTS/12/disk usage exceeded flood-stage watermark, index has read-only-allow-delete block];"}}},
        {"create":{"status":404,"error":{"type":"index_not_found_exception","reason":"no such index [mqtt2es-temp] and [require_data_stream] request flag is [true] and [mqtt2es-temp] is not a data stream","index":"mqtt2es-temp"}}},
        {"create":{"status":400,"error":{"type":"illegal_argument_exception","reason":"only write ops with an op_type of create are allowed in data streams"}}},
        {"create":{"status":403,"error":{"type":"security_exception","reason":"action [indices:data/write/bulk[s]] is unauthorized for user [writer] with effective roles [reader] on indices [mqtt2es-temp]"}}},
        {"create":{"_id":"I-zFEez8QMrPdogiGO1YCxu1cxU","status":409,"error":{"type":"version_conflict_engine_exception","reason":"[I-zFEez8QMrPdogiGO1YCxu1cxU][KMJX1Oyk9RdDWqdiHvC3nSe6bz4kEY0DS8_UYdJWuQI8JsTi5FJ-p7U@2025-03-01T12:00:00.123456789Z]: version conflict, document already exists (current version [1])","index_uuid":"9RRM1hZ9RXCuPrF8mGD2Bg","shard":"0","index":".ds-mqtt2es-telemetry-lab-2025.03.01-000001"}}}
    ]}"#;

    const OURS: Conflict = Conflict::Ours;

    #[test]
    fn every_item_created_is_stored() {
        assert_eq!(
            classify(200, ALL_CREATED.as_bytes(), &[OURS, OURS]),
            Plan::Items(vec![Outcome::Stored, Outcome::Stored])
        );
    }

    #[test]
    fn a_response_without_errors_and_without_items_stores_everything() {
        assert_eq!(
            classify(200, br#"{"errors":false}"#, &[OURS; 3]),
            Plan::Items(vec![Outcome::Stored; 3])
        );
    }

    #[test]
    fn each_item_status_maps_to_its_row_of_the_table() {
        let mut conflicts = [OURS; 10];
        conflicts[9] = Conflict::Check { time_series: true };
        let Plan::Items(outcomes) = classify(200, MIXED.as_bytes(), &conflicts) else {
            panic!("expected per-item outcomes");
        };
        let short: Vec<String> = outcomes
            .iter()
            .map(|o| match o {
                Outcome::Stored => "stored".to_owned(),
                Outcome::AlreadyStored => "already_stored".to_owned(),
                Outcome::Check { index, id } => format!("check {index} {id}"),
                Outcome::Retry { blocked: true, .. } => "retry_blocked".to_owned(),
                Outcome::Retry { loud: false, .. } => "retry".to_owned(),
                Outcome::Retry { loud: true, .. } => "retry_loudly".to_owned(),
                Outcome::Reject { reason, .. } => format!("reject {reason}"),
            })
            .collect();
        assert_eq!(
            short,
            [
                "stored",
                "already_stored",
                "reject mapping_conflict",
                "retry",
                "retry",
                "retry_blocked",
                "reject rejected_by_elasticsearch",
                "reject rejected_by_elasticsearch",
                "retry_loudly",
                // 409 on an id another reading may share: look at the stored document first.
                "check .ds-mqtt2es-telemetry-lab-2025.03.01-000001 I-zFEez8QMrPdogiGO1YCxu1cxU",
            ]
        );
    }

    #[test]
    fn a_mapping_conflict_detail_quotes_the_error_type_reason_and_cause() {
        let Plan::Items(outcomes) = classify(200, MIXED.as_bytes(), &[OURS; 10]) else {
            panic!("expected per-item outcomes");
        };
        let Outcome::Reject { detail, .. } = &outcomes[2] else {
            panic!("expected a rejection, got {:?}", outcomes[2]);
        };
        assert_eq!(
            detail,
            "http 400 document_parsing_exception: \"[1:43] failed to parse field [t] of type \
             [float] in document with id 'def'. Preview of field's value: 'hot'\" \
             (caused by number_format_exception: \"For input string: \\\"hot\\\"\")"
        );
    }

    #[test]
    fn a_reading_outside_the_time_series_window_is_dead_lettered_as_timestamp_out_of_range() {
        // Elasticsearch 9.2's answer (seen on the real node), then 8.x's for the same case.
        let body = r#"{"errors":true,"items":[
            {"create":{"status":400,"error":{"type":"timestamp_error","reason":"the document timestamp [2026-11-02T06:20:29.000Z] is outside of ranges of currently writable indices [[2026-11-21T06:20:29Z,2026-11-23T06:20:29Z]]"}}},
            {"create":{"status":400,"error":{"type":"illegal_argument_exception","reason":"the document timestamp [2023-01-01T00:00:00.000Z] is outside of ranges of currently writable indices [[2024-01-01T00:00:00.000Z,2024-01-02T00:00:00.000Z]]"}}}
        ]}"#;
        let Plan::Items(outcomes) = classify(200, body.as_bytes(), &[OURS, OURS]) else {
            panic!("expected per-item outcomes");
        };
        for outcome in outcomes {
            match outcome {
                Outcome::Reject { reason, detail } => {
                    assert_eq!(reason, TIMESTAMP_OUT_OF_RANGE);
                    assert!(detail.contains("outside of ranges"), "{detail}");
                }
                other => panic!("expected a rejection, got {other:?}"),
            }
        }
    }

    #[test]
    fn a_mapper_parsing_exception_is_a_mapping_conflict_too() {
        let body = r#"{"errors":true,"items":[{"create":{"status":400,"error":{"type":"mapper_parsing_exception","reason":"failed to parse field [t]"}}}]}"#;
        assert!(matches!(
            classify(200, body.as_bytes(), &[OURS]),
            Plan::Items(o) if matches!(o[0], Outcome::Reject { reason: MAPPING_CONFLICT, .. })
        ));
    }

    #[test]
    fn a_field_mapped_otherwise_by_a_concurrent_request_is_a_mapping_conflict() {
        let body = r#"{"errors":true,"items":[{"create":{"status":400,"error":{"type":"illegal_argument_exception","reason":"mapper [temperature_c] cannot be changed from type [text] to [float]"}}}]}"#;
        assert!(matches!(
            classify(200, body.as_bytes(), &[OURS]),
            Plan::Items(o) if matches!(o[0], Outcome::Reject { reason: MAPPING_CONFLICT, .. })
        ));
        let other = r#"{"errors":true,"items":[{"create":{"status":400,"error":{"type":"illegal_argument_exception","reason":"something else"}}}]}"#;
        assert!(matches!(
            classify(200, other.as_bytes(), &[OURS]),
            Plan::Items(o) if matches!(o[0], Outcome::Reject { reason: REJECTED_BY_ELASTICSEARCH, .. })
        ));
    }

    #[test]
    fn items_missing_from_the_response_are_retried_loudly_not_assumed_stored() {
        let body = r#"{"errors":true,"items":[{"create":{"status":201}}]}"#;
        let Plan::Items(outcomes) = classify(200, body.as_bytes(), &[OURS, OURS]) else {
            panic!("expected per-item outcomes");
        };
        assert_eq!(outcomes[0], Outcome::Stored);
        assert!(matches!(outcomes[1], Outcome::Retry { loud: true, .. }));
    }

    #[test]
    fn a_response_without_errors_but_with_too_few_items_is_read_item_by_item() {
        // "errors": false settles a request at once only when it answers every item.
        let body = r#"{"errors":false,"items":[{"create":{"status":201}}]}"#;
        let Plan::Items(outcomes) = classify(200, body.as_bytes(), &[OURS, OURS]) else {
            panic!("expected per-item outcomes");
        };
        assert_eq!(outcomes[0], Outcome::Stored);
        assert!(matches!(outcomes[1], Outcome::Retry { loud: true, .. }));
    }

    #[test]
    fn an_unreadable_success_body_retries_the_whole_request_loudly() {
        assert!(matches!(
            classify(200, b"<html>proxy</html>", &[OURS]),
            Plan::RetryAll { loud: true, .. }
        ));
    }

    #[test]
    fn a_413_for_several_items_splits_the_batch() {
        assert_eq!(classify(413, b"", &[OURS; 3]), Plan::Split);
    }

    #[test]
    fn a_413_for_a_single_item_means_it_is_too_large() {
        assert_eq!(classify(413, b"", &[OURS]), Plan::TooLarge);
    }

    #[test]
    fn a_whole_request_429_or_5xx_retries_everything_quietly() {
        let body = r#"{"error":{"root_cause":[],"type":"es_rejected_execution_exception","reason":"rejected execution"},"status":429}"#;
        assert_eq!(
            classify(429, body.as_bytes(), &[OURS]),
            Plan::RetryAll {
                reason: "http 429 es_rejected_execution_exception: \"rejected execution\""
                    .to_owned(),
                loud: false,
                blocked: false,
            }
        );
        for status in [500, 502, 503, 504] {
            assert!(matches!(
                classify(status, b"Bad Gateway", &[OURS]),
                Plan::RetryAll { loud: false, .. }
            ));
        }
    }

    #[test]
    fn a_whole_request_security_failure_retries_everything_loudly() {
        let body = r#"{"error":{"root_cause":[{"type":"security_exception","reason":"unable to authenticate user [elastic] for REST request [/_bulk]"}],"type":"security_exception","reason":"unable to authenticate user [elastic] for REST request [/_bulk]","header":{"WWW-Authenticate":"Basic realm=\"security\", charset=\"UTF-8\""}},"status":401}"#;
        assert!(matches!(
            classify(401, body.as_bytes(), &[OURS]),
            Plan::RetryAll { loud: true, blocked: false, reason } if reason.contains("unable to authenticate")
        ));
        assert!(matches!(
            classify(403, b"", &[OURS]),
            Plan::RetryAll { loud: true, .. }
        ));
    }

    #[test]
    fn a_whole_request_cluster_block_is_retried_as_a_block_not_as_an_unknown_failure() {
        let body = r#"{"error":{"root_cause":[],"type":"cluster_block_exception","reason":"blocked by: [SERVICE_UNAVAILABLE/2/no master];"},"status":403}"#;
        assert!(matches!(
            classify(403, body.as_bytes(), &[OURS]),
            Plan::RetryAll {
                loud: false,
                blocked: true,
                ..
            }
        ));
    }

    #[test]
    fn a_flood_stage_block_answered_with_429_is_a_block_too() {
        let body = r#"{"errors":true,"items":[{"create":{"status":429,"error":{"type":"cluster_block_exception","reason":"index [.ds-x-000001] blocked by: [TOO_MANY_REQUESTS/12/disk usage exceeded flood-stage watermark, index has read-only-allow-delete block];"}}}]}"#;
        assert!(matches!(
            classify(200, body.as_bytes(), &[OURS]).clone(),
            Plan::Items(outcomes) if matches!(outcomes[0], Outcome::Retry { blocked: true, loud: false, .. })
        ));
    }

    #[test]
    fn an_unknown_whole_request_status_retries_loudly_rather_than_dropping() {
        for status in [400, 404, 418] {
            assert!(matches!(
                classify(status, b"", &[OURS]),
                Plan::RetryAll { loud: true, .. }
            ));
        }
    }

    #[test]
    fn very_long_reasons_are_truncated() {
        let long = "x".repeat(5000);
        let error = json!({"type": "t", "reason": long});
        assert!(describe(500, Some(&error)).len() < MAX_REASON_CHARS + 50);
    }
}
