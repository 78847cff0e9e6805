//! Classification: Elasticsearch's answer to a bulk request into one decision per item (or one
//! for the whole request), a pure function of the HTTP status, the body and what a 409 on each
//! item means. Every row of the table has a test against a canned response (`tests.rs`).

use std::collections::HashMap;

use serde::Deserialize;
use serde_json::Value;

use super::item::Conflict;
use super::reasons::{MAPPING_CONFLICT, REJECTED_BY_ELASTICSEARCH, TIMESTAMP_OUT_OF_RANGE};

/// The response filter for every bulk request. `_id`: a time-series stream derives it, and a
/// 409 there is checked by fetching the stored document under it (the backing index is in the
/// error).
pub const FILTER_PATH: &[&str] = &["errors", "items.*.status", "items.*.error", "items.*._id"];

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
pub(super) const MAX_REASON_CHARS: usize = 500;

/// `http 400 document_parsing_exception: "[1:9] failed to parse ..." (caused by ...)`.
pub(super) fn describe(status: u16, error: Option<&Value>) -> String {
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
