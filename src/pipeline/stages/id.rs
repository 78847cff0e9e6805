//! `id`: an `_id` made from fields the device sends, `{fields: [device, msg_id], encoding: hex}`,
//! for devices that number their readings themselves and may send one again outside MQTT's
//! redelivery (after a clean-session reconnect, from a local buffer).
//!
//! Without this stage (or with `id: {}`, no fields) a document's `_id` is the reading's own
//! (`mqtt2es.reading_id`, see `reading`): unique per reading, the same for its redeliveries.
//! That is the right id for almost everything, and no payload hash is: two byte-identical
//! readings are two readings. Fields named here are a promise by the pipeline's author that
//! equal fields mean one reading; the sink does not take it on trust, though: a 409 is
//! "already stored" only when the stored document carries the same reading id, and another
//! reading under the same id is dead-lettered (`id_taken`), never dropped.
//!
//! The id is SHA-256 over a length-prefixed, versioned byte layout, stable across runs,
//! machines and releases (a test pins it):
//! `"mqtt2es/id/v1"`, the topic, then for each listed field its path and its value as compact
//! JSON with object keys sorted. Each item is preceded by its length as a big-endian u64, so
//! `("ab", "c")` and `("a", "bc")` differ. The topic is always included: the same reading on
//! two topics is two readings. A listed field that is missing is a rejection
//! (`missing_field`): ids made without it would collide.
//! `encoding` is `hex` (64 characters, the default) or `base64url` (43, unpadded).

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use serde::Deserialize;
use serde_json::Value;
use sha2::{Digest, Sha256};

use super::draft::{Draft, options, path};
use crate::pipeline::error::{ConfigError, StageError};
use crate::pipeline::path::FieldPath;
use crate::record::Message;

const VERSION: &[u8] = b"mqtt2es/id/v1";

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Id {
    fields: Vec<FieldPath>,
    base64url: bool,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, expecting = "id options: {fields, encoding}")]
struct Options {
    #[serde(default)]
    fields: Vec<String>,
    encoding: Option<String>,
}

impl Id {
    pub fn parse(config: Value) -> Result<Id, ConfigError> {
        let options: Options = match config {
            Value::Null => Options {
                fields: Vec::new(),
                encoding: None,
            },
            config => options(config)?,
        };
        let base64url = match options.encoding.as_deref() {
            None | Some("hex") => false,
            Some("base64url") => true,
            Some(other) => return Err(ConfigError::unknown("encoding", other, "hex, base64url")),
        };
        let fields = options
            .fields
            .iter()
            .enumerate()
            .map(|(i, f)| path(&format!("fields[{i}]"), f))
            .collect::<Result<_, _>>()?;
        Ok(Id { fields, base64url })
    }

    pub fn apply(&self, draft: &mut Draft, message: &Message) -> Result<(), StageError> {
        if self.fields.is_empty() {
            // The reading's own id, which the sink uses whenever a document has no other.
            draft.id = None;
            return Ok(());
        }
        let mut hash = Sha256::new();
        let mut item = |bytes: &[u8]| {
            hash.update((bytes.len() as u64).to_be_bytes());
            hash.update(bytes);
        };
        item(VERSION);
        item(message.topic.as_bytes());
        for field in &self.fields {
            let value = field
                .get(&draft.source)
                .ok_or_else(|| StageError::MissingField(field.to_string()))?;
            let mut canonical = String::new();
            write_canonical(value, &mut canonical);
            item(field.as_str().as_bytes());
            item(canonical.as_bytes());
        }
        let digest = hash.finalize();
        draft.id = Some(match self.base64url {
            true => URL_SAFE_NO_PAD.encode(digest),
            false => hex(&digest),
        });
        Ok(())
    }
}

fn hex(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut out = String::with_capacity(bytes.len() * 2);
    for &b in bytes {
        out.push(char::from(DIGITS[usize::from(b >> 4)]));
        out.push(char::from(DIGITS[usize::from(b & 0xf)]));
    }
    out
}

/// Compact JSON with object keys sorted, whatever order the map keeps them in.
fn write_canonical(value: &Value, out: &mut String) {
    match value {
        Value::Object(map) => {
            let mut entries: Vec<_> = map.iter().collect();
            entries.sort_by(|a, b| a.0.cmp(b.0));
            out.push('{');
            for (i, (key, value)) in entries.into_iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                out.push_str(&Value::String(key.clone()).to_string());
                out.push(':');
                write_canonical(value, out);
            }
            out.push('}');
        }
        Value::Array(items) => {
            out.push('[');
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                write_canonical(item, out);
            }
            out.push(']');
        }
        scalar => out.push_str(&scalar.to_string()),
    }
}

#[cfg(test)]
mod tests {
    use serde_json::{Value, json};

    use super::super::test_support::{config_error, draft, message, stage};
    use crate::pipeline::error::StageError;

    /// Computed once by this implementation; changing it breaks deduplication of every
    /// document already stored.
    const PINNED: &str = "198d899128de57d41f4fe9dc8440095ccab3d30a8f30c550645976def88ca754";

    fn id_of(config: Value, source: Value, topic: &str) -> Result<Option<String>, StageError> {
        let s = stage("id", config);
        let mut d = draft(source);
        s.apply(&mut d, &message(topic))?;
        Ok(d.id)
    }

    #[test]
    fn ids_are_pinned_so_they_stay_stable_across_releases() {
        let id = id_of(
            json!({"fields": ["device", "@timestamp"]}),
            json!({"device": "pi1", "@timestamp": "2026-11-22T10:00:00.000Z"}),
            "sensors/home/pi1/telemetry",
        );
        let id = id.expect("an id").expect("set");
        assert_eq!(id.len(), 64);
        assert_eq!(id, PINNED);
    }

    #[test]
    fn the_same_fields_on_another_topic_give_another_id() {
        let config = json!({"fields": ["device"]});
        let a = id_of(config.clone(), json!({"device": "pi1"}), "a/b");
        let b = id_of(config, json!({"device": "pi1"}), "a/c");
        assert_ne!(a.expect("id"), b.expect("id"));
    }

    #[test]
    fn object_key_order_does_not_change_the_id() {
        let config = json!({"fields": ["o"]});
        let a: Value = serde_json::from_str(r#"{"o": {"x": 1, "y": 2}}"#).expect("json");
        let b: Value = serde_json::from_str(r#"{"o": {"y": 2, "x": 1}}"#).expect("json");
        assert_eq!(id_of(config.clone(), a, "t"), id_of(config, b, "t"));
    }

    #[test]
    fn without_fields_the_document_keeps_the_readings_own_id() {
        assert_eq!(id_of(json!({}), json!({"changed": 1}), "t"), Ok(None));
        assert_eq!(id_of(Value::Null, json!({"changed": 2}), "t"), Ok(None));
    }

    #[test]
    fn base64url_ids_are_43_unpadded_characters() {
        let id = id_of(
            json!({"fields": ["device"], "encoding": "base64url"}),
            json!({"device": "pi1"}),
            "t",
        );
        let id = id.expect("id").expect("set");
        assert_eq!(id.len(), 43);
        assert!(!id.contains(['=', '+', '/']));
    }

    #[test]
    fn a_missing_id_field_is_rejected() {
        let err = id_of(json!({"fields": ["device"]}), json!({}), "t").expect_err("missing");
        assert_eq!(err, StageError::MissingField("device".to_owned()));
    }

    #[test]
    fn bad_id_options_are_config_errors() {
        let cases = [
            (
                json!({"encoding": "base32"}),
                "unknown encoding \"base32\"; expected one of hex, base64url",
            ),
            (json!({"fields": ["a", ""]}), "fields[1]: empty field path"),
            (json!({"field": "a"}), "unknown field `field`"),
        ];
        for (config, expected) in cases {
            let err = config_error("id", config);
            assert!(err.contains(expected), "{err}");
        }
    }
}
