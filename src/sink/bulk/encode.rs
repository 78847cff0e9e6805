//! Encoding: a routed record into the NDJSON lines of its `create` op (or its dead letter's),
//! in one pass, and the request body and its gzip from the batched items.

use chrono::{DateTime, Utc};
use serde_json::{Map, Value};

use super::item::{ACTION_START, Conflict, Item, Kind};
use super::reasons::DOCUMENT_TOO_LARGE;
use crate::document::{Document, Processed, Rejection, write_mqtt, write_mqtt2es};
use crate::record::{Ack, Message};
use crate::sink::{dead_letter, routed::Routed};

/// `event.ingested` is RFC 3339 with milliseconds, always this wide for years 1000 to 9999.
const STAMP_LEN: usize = 24;
const STAMP_PLACEHOLDER: &str = "1970-01-01T00:00:00.000Z";

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
            // Only documents that go with their reading's own `_id` need its text.
            let own_id;
            let (id, conflict) = match (time_series, doc.id.as_deref()) {
                (true, _) => (None, Conflict::Check { time_series: true }),
                (false, Some(id)) => (Some(id), Conflict::Check { time_series: false }),
                (false, None) => {
                    own_id = message.reading.text();
                    (Some(own_id.as_str()), Conflict::Ours)
                }
            };
            let Encoded {
                ndjson,
                source_at,
                stamp_at,
                timestamp_at,
            } = encode_document(&doc, &message, id, time_series);
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
/// The members the pipeline deferred come last, written from the message.
fn encode_document(
    doc: &Document,
    message: &Message,
    id: Option<&str>,
    time_first: bool,
) -> Encoded {
    let source = &doc.source;
    let mut out = Vec::with_capacity(512);
    action_line(&mut out, &doc.index, id);
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
    let deferred = doc.deferred;
    for (key, value) in source.iter() {
        let out = match key {
            "@timestamp" if time.is_some() => continue,
            // Not there by construction; never written twice (a duplicate key is a 400).
            "mqtt" if deferred.mqtt => continue,
            "mqtt2es" if deferred.reading_id => continue,
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
    if deferred.mqtt {
        write_mqtt(fields.name("mqtt"), message);
    }
    if deferred.reading_id {
        write_mqtt2es(fields.name("mqtt2es"), message);
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

/// `{"create":{"_index":..,"_id":..}}` and its newline, written, not built as a `Value`.
fn action_line(out: &mut Vec<u8>, index: &str, id: Option<&str>) {
    out.extend_from_slice(&ACTION_START[..ACTION_START.len() - 1]);
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
///
/// The deflate state (about 300 KB) is kept per thread and reset between bodies: made afresh
/// for each one, it was allocated, zeroed, page-faulted in and handed back to the OS for every
/// batch, several percent of the CPU per reading at full rate. The gzip frame around the
/// deflate stream is RFC 1952's fixed ten-byte header and its CRC-32 and length trailer.
pub fn gzip(body: &[u8]) -> Vec<u8> {
    use flate2::{Compress, Compression, Crc, FlushCompress, Status};
    thread_local! {
        static DEFLATE: std::cell::RefCell<Compress> =
            std::cell::RefCell::new(Compress::new(Compression::fast(), false));
    }
    // ID1 ID2, CM = deflate, no flags, no time, XFL = 4 (fastest), OS = unknown.
    const HEADER: [u8; 10] = [0x1f, 0x8b, 8, 0, 0, 0, 0, 0, 4, 0xff];
    let mut out = Vec::with_capacity(body.len() / 4 + 64);
    out.extend_from_slice(&HEADER);
    DEFLATE.with_borrow_mut(|deflate| {
        deflate.reset();
        let start = deflate.total_in();
        loop {
            let read = usize::try_from(deflate.total_in() - start).expect("within the body");
            // Deflating into memory has no failure mode.
            let status = deflate
                .compress_vec(&body[read..], &mut out, FlushCompress::Finish)
                .expect("deflate into memory");
            if status == Status::StreamEnd {
                break;
            }
            out.reserve(out.capacity().max(64));
        }
    });
    let mut crc = Crc::new();
    crc.update(body);
    out.extend_from_slice(&crc.sum().to_le_bytes());
    out.extend_from_slice(&crc.amount().to_le_bytes());
    out
}
