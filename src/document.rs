//! What a pipeline makes of a message: a document bound for a data stream, a deliberate drop,
//! or a rejection that becomes a dead letter. Shared by the pipeline (producer) and the sink
//! (consumer) so neither depends on the other.

use serde_json::{Map, Value};

/// A document ready for a `_bulk` `create` op.
#[derive(Debug, Clone, PartialEq)]
pub struct Document {
    /// The pipeline that produced it (for dead letters and metrics).
    pub pipeline: String,
    /// Target data stream, already confined to the configured prefix and valid for Elasticsearch.
    pub index: String,
    /// Deterministic `_id` when the pipeline has an `id` stage; redelivery then is a 409, not a duplicate.
    pub id: Option<String>,
    pub source: Map<String, Value>,
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
