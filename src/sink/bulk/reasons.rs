//! Why bulk dead-letters a document: the `reason` of its dead letter, one constant per refusing
//! row of the outcome table (`classify`), for a document too large to send (`encode`), and for
//! the writer's verdicts after a 409 (`id_taken`, `series_time_taken`). Operators search dead
//! letters by these strings, so they are part of the interface, not wording.

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
