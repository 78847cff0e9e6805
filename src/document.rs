//! What a pipeline makes of a message: a document bound for a data stream, a deliberate drop,
//! or a rejection that becomes a dead letter; and the payload digest the pipeline writes and
//! the sink checks a 409 against. Shared by the pipeline (producer) and the sink (consumer) so
//! neither depends on the other.

use std::sync::Arc;

use serde_json::Value;

pub use crate::object::Object;
use crate::record::Message;

/// A document ready for a `_bulk` `create` op.
#[derive(Debug, Clone, PartialEq)]
pub struct Document {
    /// The pipeline that produced it (for dead letters and metrics); shared, not copied per
    /// document.
    pub pipeline: Arc<str>,
    /// Target data stream, already confined to the configured prefix and valid for Elasticsearch.
    pub index: String,
    /// The `_id` an `id` stage made from fields; `None` leaves it to the sink (the reading id, or
    /// none on a time-series stream).
    pub id: Option<String>,
    pub source: Object,
    /// What the sink writes into the document from the message, not held in `source`.
    pub deferred: Deferred,
}

/// Members of a stored document that the pipeline leaves for the bulk encoder to write from the
/// message, because building them as `serde_json` objects only to write them out again was a
/// third of the allocations per reading (issue 9). A pipeline defers `mqtt` only when none of
/// its stages names it, and `mqtt2es` only when no stage wrote one; otherwise they are in
/// `source` as before. Either way the stored document is the same ([`Document::as_stored`]).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Deferred {
    /// `mqtt`: [`write_mqtt`].
    pub mqtt: bool,
    /// `mqtt2es`, holding only `reading_id`: [`write_mqtt2es`].
    pub reading_id: bool,
}

impl Document {
    /// The source as Elasticsearch stores it: with the deferred members, made by the same
    /// writers the bulk encoder uses. For output that shows a document (`try`, golden tests).
    pub fn as_stored(&self, message: &Message) -> Object {
        let mut source = self.source.clone();
        let member = |write: fn(&mut Vec<u8>, &Message)| {
            let mut json = Vec::new();
            write(&mut json, message);
            serde_json::from_slice::<Value>(&json).expect("the writers write JSON")
        };
        if self.deferred.mqtt {
            source.insert("mqtt", member(write_mqtt));
        }
        if self.deferred.reading_id {
            source.insert("mqtt2es", member(write_mqtt2es));
        }
        source
    }
}

/// `mqtt`: `{"topic","qos","retain"}` and, when the message has them, `user_properties` as a
/// list of `{key, value}` objects (MQTT allows a key to repeat, and keys chosen by devices must
/// not become Elasticsearch field names).
pub fn write_mqtt(out: &mut Vec<u8>, message: &Message) {
    out.extend_from_slice(b"{\"topic\":");
    write_str(out, &message.topic);
    out.extend_from_slice(b",\"qos\":");
    out.push(b'0' + message.qos.level());
    out.extend_from_slice(match message.retain {
        true => b",\"retain\":true",
        false => b",\"retain\":false",
    });
    if !message.user_properties.is_empty() {
        out.extend_from_slice(b",\"user_properties\":[");
        for (at, (key, value)) in message.user_properties.iter().enumerate() {
            if at > 0 {
                out.push(b',');
            }
            out.extend_from_slice(b"{\"key\":");
            write_str(out, key);
            out.extend_from_slice(b",\"value\":");
            write_str(out, value);
            out.push(b'}');
        }
        out.push(b']');
    }
    out.push(b'}');
}

/// `mqtt2es` as a pipeline leaves it when no stage wrote one: `{"reading_id":"<22 chars>"}`.
pub fn write_mqtt2es(out: &mut Vec<u8>, message: &Message) {
    out.extend_from_slice(b"{\"reading_id\":\"");
    // Base64url: nothing to escape.
    out.extend_from_slice(message.reading.text().as_str().as_bytes());
    out.extend_from_slice(b"\"}");
}

/// A JSON string; writing into memory has no failure mode.
fn write_str(out: &mut Vec<u8>, text: &str) {
    serde_json::to_writer(out, text).expect("a string always serialises");
}

/// Why a message could not become a document. Becomes a dead letter carrying these fields.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rejection {
    /// None when no pipeline matched or the failure came before one was chosen.
    pub pipeline: Option<String>,
    /// The stage that failed (`decode` for payload decoding, `bulk` for Elasticsearch refusals).
    pub stage: Option<String>,
    /// Machine-friendly reason code, e.g. `invalid_json`, `mapping_conflict`.
    pub reason: String,
    /// Human detail quoting the offending value.
    pub detail: String,
}

/// The result of running a message through the pipelines.
#[derive(Debug, Clone, PartialEq)]
pub enum Processed {
    Document(Document),
    /// A drop condition matched: settled as intentionally dropped, counted, never stored.
    Dropped {
        pipeline: String,
        stage: String,
    },
    Rejected(Rejection),
}

/// `mqtt2es.payload_digest`: what a document made with a pipeline's `id` stage carries so that a
/// 409 on that id can be checked. The stored document is the same reading when it has the same
/// reading id (a redelivery mqtt2es recognised) or the same topic and payload bytes (the same
/// message sent again outside MQTT's redelivery, which the `id` stage exists for): SHA-256 over
/// both, length-prefixed, its first 16 bytes in base64url.
pub fn payload_digest(topic: &str, payload: &[u8]) -> String {
    use base64::Engine;
    use sha2::{Digest, Sha256};
    let mut hash = Sha256::new();
    for part in [b"mqtt2es/payload/v1".as_slice(), topic.as_bytes(), payload] {
        hash.update((part.len() as u64).to_be_bytes());
        hash.update(part);
    }
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(&hash.finalize()[..16])
}
