//! The `_bulk` protocol without the I/O: turning routed records into NDJSON `create` ops, and
//! turning Elasticsearch's answer into one decision per item.
//!
//! Classification is a pure function of (HTTP status, response body, what a 409 on each item
//! means), so every row of the table is tested against canned responses. The one
//! decision a reader might question: anything we cannot positively classify as stored or as
//! the document's own fault is *retried*, never dropped, because an acknowledged MQTT message
//! must be durable. Unknown and security failures are retried with an error-level log, so an
//! operator sees them while the backpressure holds intake.
//!
//! Requests are sent with `filter_path=errors,items.*.status,items.*.error,items.*._id` to keep
//! responses small. Filtering keeps the `items` array in request order, so results are matched
//! to items by position, which is also what Elasticsearch documents for `_bulk`.
//!
//! `event.ingested` (when mqtt2es sent the document) is stamped into each document's encoded
//! line by [`body`], with one timestamp per request: documents are encoded once, with a
//! fixed-width placeholder where the time goes, and every attempt overwrites it in place. The
//! integ-test engines have no ingest pipelines, so it cannot be set server-side.
//!
//! - `item`     — one `create` op: its encoded lines and what it needs to settle later.
//! - `encode`   — routed records into items, in one pass; the request body and its gzip.
//! - `classify` — a bulk response into one outcome per item.
//! - `reasons`  — the dead-letter reasons of the bulk path (also the writer's, after a 409).

mod classify;
mod encode;
mod item;
mod reasons;

#[cfg(test)]
mod tests;

pub use classify::{FILTER_PATH, Outcome, Plan, classify};
pub use encode::{Prepared, body, dead_letter_item, gzip, prepare};
pub use item::{Conflict, Item, Kind, MAX_PROBES};
pub use reasons::*;
