//! What a pipeline makes of a message: a document bound for a data stream, a deliberate drop,
//! or a rejection that becomes a dead letter; and the payload digest the pipeline writes and
//! the sink checks a 409 against. Shared by the pipeline (producer) and the sink (consumer) so
//! neither depends on the other.

use std::sync::Arc;

pub use crate::object::Object;

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
