//! Who holds the `_id` of a 409: the stored document's `mqtt2es.reading_id` and payload digest,
//! fetched with one `_mget` for a round's conflicts. A 409 on an id another reading may share
//! (a pipeline's `id`, a time-series stream's dimensions and time) is never believed without it.

use elasticsearch::http::response::Response;
use elasticsearch::{Elasticsearch, MgetParts};
use serde_json::{Value, json};

use super::chain::chain;
use crate::document::payload_digest;
use crate::record::Message;

/// What identifies a stored document that holds the `_id` of a 409.
pub(super) struct Holder {
    pub(super) reading_id: Option<String>,
    payload_digest: Option<String>,
}

impl Holder {
    /// Whether it is `message`'s reading: the same reading id, or, for an id a pipeline made
    /// from fields, the same topic and payload. On a time-series stream only the reading id
    /// counts: byte-identical readings at one time are still two readings.
    pub(super) fn is(&self, message: &Message, time_series: bool) -> bool {
        if self.reading_id.as_deref() == Some(message.reading.to_string().as_str()) {
            return true;
        }
        !time_series
            && self.payload_digest.as_deref()
                == Some(payload_digest(&message.topic, &message.payload).as_str())
    }
}

/// For each `{_index, _id}`: `None` if no such document, else what identifies it.
pub(super) async fn fetch_identities(
    client: &Elasticsearch,
    docs: Vec<Value>,
    report: impl FnOnce(&Result<Response, elasticsearch::Error>),
) -> Result<Vec<Option<Holder>>, String> {
    let response = client
        .mget(MgetParts::None)
        ._source_includes(&["mqtt2es.reading_id", "mqtt2es.payload_digest"])
        .filter_path(&["docs.found", "docs._source", "docs.error"])
        .body(json!({ "docs": docs }))
        .send()
        .await;
    report(&response);
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
