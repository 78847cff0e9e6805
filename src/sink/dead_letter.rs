//! Dead letters: what a message that could not be stored becomes, and the local file that
//! holds them when Elasticsearch will not.
//!
//! A dead letter is durable, so the MQTT message behind it is acknowledged; it must therefore
//! keep everything needed to replay the message by hand: topic, QoS, retain flag, receive time
//! and the raw payload (UTF-8 text when it is, base64 otherwise).
//!
//! Policy for "Elasticsearch is unreachable": a dead letter is first sent with the normal bulk
//! traffic into the dead-letter data stream. If it fails [`ELASTICSEARCH_ATTEMPTS`] times with
//! retryable errors, or Elasticsearch refuses it outright, or it is larger than a whole bulk
//! request may be, it is appended to the local NDJSON file and fsynced before it settles. So a
//! dead letter never waits on an outage for long, and a document is never retried forever
//! just because its dead letter cannot be written. Only when the file itself cannot be written
//! does a dead letter wait (retried with backoff, logged as an error), because settling it
//! would then lose it.

use std::{
    fs::OpenOptions,
    io::{self, Write},
    path::PathBuf,
    sync::{Arc, Mutex},
};

use base64::Engine;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value, json};

use crate::{document::Rejection, record::Message};

/// How many times a dead letter is tried against Elasticsearch before it goes to the file.
pub const ELASTICSEARCH_ATTEMPTS: u32 = 3;

/// `dead_letter:` in the config file.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct DeadLetterSettings {
    /// The dead-letter data stream; `elastic::setup` installs a template for exactly this name.
    pub index: String,
    /// Local NDJSON file for dead letters Elasticsearch did not take; created if missing.
    pub file: PathBuf,
}

impl Default for DeadLetterSettings {
    fn default() -> Self {
        DeadLetterSettings {
            index: "mqtt2es-deadletter".to_owned(),
            file: PathBuf::from("mqtt2es-deadletter.ndjson"),
        }
    }
}

/// Reason of a payload over `pipelines.max_payload_bytes`, refused before any parsing.
pub const PAYLOAD_TOO_LARGE: &str = "payload_too_large";

/// How much of an oversized payload its dead letter keeps.
pub const TRUNCATED_PAYLOAD_BYTES: usize = 64 * 1024;

/// The dead letter's `_id`: the reading's own id. A bad message that the broker redelivers
/// carries the same one (its producer kept it), so it meets a 409 and is stored once; two bad
/// messages never share one, however alike (a hash of topic and payload would merge two
/// byte-identical readings).
pub fn id(message: &Message, _rejection: &Rejection) -> String {
    message.reading.to_string()
}

/// The dead-letter document for a message and the reason it was rejected.
///
/// Field names follow ECS where one fits (`@timestamp`, `error.message`); the rest are ours.
/// `@timestamp` is the MQTT receive time, so dead letters sort next to the readings around them.
pub fn document(message: &Message, rejection: &Rejection) -> Map<String, Value> {
    // Every other dead letter's payload is within `pipelines.max_payload_bytes` and kept whole;
    // an oversized one keeps its head, enough to see what the device sent.
    let kept = match rejection.reason == PAYLOAD_TOO_LARGE {
        true => &message.payload[..message.payload.len().min(TRUNCATED_PAYLOAD_BYTES)],
        false => &message.payload[..],
    };
    let (payload, encoding) = match std::str::from_utf8(kept) {
        Ok(text) => (text.to_owned(), "utf8"),
        Err(_) => (
            base64::engine::general_purpose::STANDARD.encode(kept),
            "base64",
        ),
    };
    let fields = [
        (
            "@timestamp",
            json!(crate::reading::rfc3339(message.received_at)),
        ),
        (
            "mqtt",
            json!({
                "topic": message.topic,
                "qos": message.qos.level(),
                "retain": message.retain,
            }),
        ),
        (
            "mqtt2es",
            json!({ "reading_id": message.reading.to_string() }),
        ),
        ("pipeline", json!(rejection.pipeline)),
        ("stage", json!(rejection.stage)),
        ("reason", json!(rejection.reason)),
        ("error", json!({ "message": rejection.detail })),
        ("payload", json!(payload)),
        ("payload_encoding", json!(encoding)),
        ("payload_bytes", json!(message.payload.len())),
        (
            "payload_truncated",
            json!(kept.len() < message.payload.len()),
        ),
    ];
    fields
        .into_iter()
        .map(|(key, value)| (key.to_owned(), value))
        .collect()
}

/// The local dead-letter file. Appends are serialised by a lock (lines from concurrent bulk
/// requests must not interleave) and each append ends with an fsync, which is what makes a
/// record written here durable enough to acknowledge.
#[derive(Debug)]
pub struct DeadLetterFile {
    path: PathBuf,
    lock: Mutex<()>,
}

impl DeadLetterFile {
    pub fn new(path: PathBuf) -> Self {
        DeadLetterFile {
            path,
            lock: Mutex::new(()),
        }
    }

    pub fn path(&self) -> &std::path::Path {
        &self.path
    }

    /// Appends one line per document (each given as its JSON encoding, no newline) and fsyncs.
    pub async fn append(self: &Arc<Self>, lines: Vec<Vec<u8>>) -> io::Result<()> {
        let file = Arc::clone(self);
        tokio::task::spawn_blocking(move || file.append_blocking(&lines))
            .await
            .map_err(io::Error::other)?
    }

    fn append_blocking(&self, lines: &[Vec<u8>]) -> io::Result<()> {
        // A poisoned lock only means another append panicked; the file is still usable.
        let _guard = self
            .lock
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        let created = !self.path.exists();
        // Opened per append so an operator can move the file away without a restart.
        let mut file = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.path)?;
        let mut buffer = Vec::with_capacity(lines.iter().map(|l| l.len() + 1).sum());
        for line in lines {
            buffer.extend_from_slice(line);
            buffer.push(b'\n');
        }
        file.write_all(&buffer)?;
        file.sync_data()?;
        if created {
            // A new file's directory entry is durable only once its directory is synced.
            let dir = match self.path.parent() {
                Some(dir) if !dir.as_os_str().is_empty() => dir.to_owned(),
                _ => PathBuf::from("."),
            };
            std::fs::File::open(dir)?.sync_all()?;
        }
        Ok(())
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use std::sync::Arc;

    use chrono::{TimeZone, Utc};

    use super::*;
    use crate::record::QoS;

    pub(crate) fn message(payload: &[u8]) -> Message {
        Message {
            topic: "site/a/temp".to_owned(),
            payload: Arc::from(payload),
            qos: QoS::AtLeastOnce,
            retain: false,
            reading: crate::reading::ReadingId::from_u128(7),
            received_at: Utc
                .with_ymd_and_hms(2025, 3, 1, 12, 0, 0)
                .single()
                .expect("a valid time"),
            user_properties: Vec::new(),
        }
    }

    fn rejection() -> Rejection {
        Rejection {
            pipeline: Some("thermometers".to_owned()),
            stage: Some("decode".to_owned()),
            reason: "invalid_json".to_owned(),
            detail: "expected value at line 1 column 1 in \"hot\"".to_owned(),
        }
    }

    #[test]
    fn an_oversized_payload_keeps_only_its_head_in_the_dead_letter() {
        let big = vec![b'x'; TRUNCATED_PAYLOAD_BYTES + 10];
        let mut too_large = rejection();
        too_large.reason = PAYLOAD_TOO_LARGE.to_owned();
        let letter = document(&message(&big), &too_large);
        assert_eq!(
            letter["payload"].as_str().map(str::len),
            Some(TRUNCATED_PAYLOAD_BYTES)
        );
        assert_eq!(letter["payload_truncated"], true);
        assert_eq!(letter["payload_bytes"], TRUNCATED_PAYLOAD_BYTES + 10);
        let whole = document(&message(&big), &rejection());
        assert_eq!(whole["payload_truncated"], false);
    }

    #[test]
    fn a_redelivered_bad_message_gets_the_same_dead_letter_id_and_twins_get_two() {
        let first = id(&message(b"hot"), &rejection());
        let redelivered = message(b"hot");
        assert_eq!(first, id(&redelivered, &rejection()));
        let mut twin = message(b"hot");
        twin.reading = crate::reading::ReadingId::next();
        assert_ne!(first, id(&twin, &rejection()));
    }

    /// A complete dead letter, also used to check the dead-letter template maps every field.
    pub(crate) fn sample_dead_letter() -> Value {
        Value::Object(document(&message(b"hot"), &rejection()))
    }

    #[test]
    fn a_dead_letter_carries_topic_pipeline_stage_reason_and_the_utf8_payload() {
        assert_eq!(
            sample_dead_letter(),
            json!({
                "@timestamp": "2025-03-01T12:00:00.000Z",
                "mqtt": { "topic": "site/a/temp", "qos": 1, "retain": false },
                "mqtt2es": { "reading_id": "AAAAAAAAAAAAAAAAAAAABw" },
                "pipeline": "thermometers",
                "stage": "decode",
                "reason": "invalid_json",
                "error": { "message": "expected value at line 1 column 1 in \"hot\"" },
                "payload": "hot",
                "payload_encoding": "utf8",
                "payload_bytes": 3,
                "payload_truncated": false,
            })
        );
    }

    #[test]
    fn a_payload_that_is_not_utf8_is_carried_as_base64() {
        let letter = document(&message(&[0xff, 0x00, 0x10]), &rejection());
        assert_eq!(letter["payload"], "/wAQ");
        assert_eq!(letter["payload_encoding"], "base64");
        assert_eq!(letter["payload_bytes"], 3);
    }

    #[test]
    fn a_rejection_before_any_pipeline_has_null_pipeline_and_stage() {
        let letter = document(
            &message(b"{}"),
            &Rejection {
                pipeline: None,
                stage: None,
                reason: "no_pipeline".to_owned(),
                detail: "no pipeline matches topic \"x\"".to_owned(),
            },
        );
        assert_eq!(letter["pipeline"], Value::Null);
        assert_eq!(letter["stage"], Value::Null);
    }

    #[tokio::test]
    async fn appended_dead_letters_are_one_json_line_each_and_appends_accumulate() {
        let dir = tempfile::tempdir().expect("temp dir");
        let file = Arc::new(DeadLetterFile::new(dir.path().join("dl.ndjson")));
        file.append(vec![b"{\"a\":1}".to_vec(), b"{\"b\":2}".to_vec()])
            .await
            .expect("append");
        file.append(vec![b"{\"c\":3}".to_vec()])
            .await
            .expect("append");
        let text = std::fs::read_to_string(file.path()).expect("read back");
        assert_eq!(text, "{\"a\":1}\n{\"b\":2}\n{\"c\":3}\n");
    }

    #[tokio::test]
    async fn an_unwritable_dead_letter_file_is_an_error_not_a_silent_loss() {
        let file = Arc::new(DeadLetterFile::new(PathBuf::from(
            "/nonexistent-dir/dl.ndjson",
        )));
        assert!(file.append(vec![b"{}".to_vec()]).await.is_err());
    }
}
