//! Payload decoding: raw MQTT bytes into the JSON object that stages work on.
//!
//! Three policies, chosen per pipeline with `payload:`:
//! - `json` (the default): the payload must be a JSON object. Other JSON values are rejected
//!   (`not_an_object`), or wrapped as `{"value": …}` with `{format: json, non_object: wrap}`.
//! - `text`: the UTF-8 payload goes into `message`, untouched.
//! - `auto`: a JSON object becomes fields; anything else that is UTF-8 goes into `message`.
//!
//! Nesting depth is checked by a byte scan *before* serde_json parses, so a 10 000-deep payload
//! costs one pass and a `too_deep` rejection instead of serde's recursion limit (or a stack
//! overflow in code that later walks the value). `auto` applies the same guard to any payload
//! that starts like JSON (`{` or `[`): storing a hostile nest as text would only move the
//! problem into Elasticsearch.

use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::error::{ConfigError, LoadError, StageError};
use crate::object::Object;

/// Limits on decoding, part of the application config.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct DecodeLimits {
    /// Deepest nesting of objects and arrays accepted in a JSON payload.
    pub max_depth: usize,
}

impl Default for DecodeLimits {
    fn default() -> Self {
        DecodeLimits { max_depth: 64 }
    }
}

impl DecodeLimits {
    /// serde_json refuses nesting beyond 128 on its own; a higher limit would promise depth
    /// that the parser then rejects with a less helpful message.
    pub fn check(&self) -> Result<(), LoadError> {
        if (1..=128).contains(&self.max_depth) {
            Ok(())
        } else {
            Err(LoadError::MaxDepth(self.max_depth))
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NonObject {
    Reject,
    Wrap,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Payload {
    Json { non_object: NonObject },
    Text,
    Auto,
}

impl Default for Payload {
    fn default() -> Self {
        Payload::Json {
            non_object: NonObject::Reject,
        }
    }
}

#[derive(Deserialize)]
#[serde(
    deny_unknown_fields,
    expecting = "payload options: {format, non_object}"
)]
struct Options {
    format: String,
    non_object: Option<String>,
}

impl Payload {
    /// Parses the `payload:` value: `json`, `text`, `auto`, or `{format: json, non_object: wrap}`.
    pub fn parse(config: Option<Value>) -> Result<Payload, ConfigError> {
        let options = match config {
            None => return Ok(Payload::default()),
            Some(Value::String(format)) => Options {
                format,
                non_object: None,
            },
            Some(other) => serde_json::from_value(other)
                .map_err(|e| ConfigError::Shape(format!("payload: {e}")))?,
        };
        let non_object = match options.non_object.as_deref() {
            None | Some("reject") => NonObject::Reject,
            Some("wrap") => NonObject::Wrap,
            Some(other) => return Err(ConfigError::unknown("non_object", other, "reject, wrap")),
        };
        match options.format.as_str() {
            "json" => Ok(Payload::Json { non_object }),
            "text" | "auto" if options.non_object.is_some() => Err(ConfigError::invalid(
                "payload",
                format!(
                    "non_object applies to format json, not \"{}\"",
                    options.format
                ),
            )),
            "text" => Ok(Payload::Text),
            "auto" => Ok(Payload::Auto),
            other => Err(ConfigError::unknown(
                "payload format",
                other,
                "json, text, auto",
            )),
        }
    }

    pub fn decode(self, bytes: &[u8], limits: &DecodeLimits) -> Result<Object, StageError> {
        let text = std::str::from_utf8(bytes).map_err(|e| StageError::InvalidUtf8 {
            valid_up_to: e.valid_up_to(),
        })?;
        match self {
            Payload::Text => Ok(message(text)),
            Payload::Json { non_object } => {
                check_depth(text, limits.max_depth)?;
                let invalid = |e: serde_json::Error| StageError::InvalidJson(e.to_string());
                // Straight into an object when it looks like one: the common case, without a
                // `Value` built first and taken apart again.
                if text.trim_start().starts_with('{') {
                    return serde_json::from_str(text).map_err(invalid);
                }
                let value: Value = serde_json::from_str(text).map_err(invalid)?;
                match (value, non_object) {
                    (Value::Object(map), _) => Ok(Object::from(map)),
                    (other, NonObject::Wrap) => {
                        Ok(Object::from_iter([("value".to_owned(), other)]))
                    }
                    (other, NonObject::Reject) => {
                        Err(StageError::NotAnObject { kind: kind(&other) })
                    }
                }
            }
            Payload::Auto => {
                if text.trim_start().starts_with(['{', '[']) {
                    check_depth(text, limits.max_depth)?;
                }
                match serde_json::from_str::<Object>(text) {
                    Ok(object) => Ok(object),
                    Err(_) => Ok(message(text)),
                }
            }
        }
    }
}

fn message(text: &str) -> Object {
    Object::from_iter([("message".to_owned(), Value::String(text.to_owned()))])
}

fn kind(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Bool(_) => "boolean",
        Value::Number(_) => "number",
        Value::String(_) => "string",
        Value::Array(_) => "array",
        Value::Object(_) => "object",
    }
}

/// Rejects text whose `{`/`[` nesting (outside strings) exceeds `max`. Malformed JSON is left
/// for the parser to describe.
fn check_depth(text: &str, max: usize) -> Result<(), StageError> {
    // Nesting never exceeds the number of opening brackets, wherever they are: a count that
    // vectorises settles nearly every payload (a reading has one or two) without the
    // byte-by-byte walk below, which was a twentieth of mqtt2es's CPU per reading.
    if text.bytes().filter(|&b| b == b'{' || b == b'[').count() <= max {
        return Ok(());
    }
    let mut depth = 0usize;
    let mut in_string = false;
    let mut escaped = false;
    for byte in text.bytes() {
        if in_string {
            match byte {
                _ if escaped => escaped = false,
                b'\\' => escaped = true,
                b'"' => in_string = false,
                _ => {}
            }
            continue;
        }
        match byte {
            b'"' => in_string = true,
            b'{' | b'[' => {
                depth += 1;
                if depth > max {
                    return Err(StageError::TooDeep { max });
                }
            }
            b'}' | b']' => depth = depth.saturating_sub(1),
            _ => {}
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn decode(payload: Payload, bytes: &[u8]) -> Result<Value, StageError> {
        payload
            .decode(bytes, &DecodeLimits::default())
            .map(Value::from)
    }

    fn nested(depth: usize) -> String {
        format!("{}1{}", "[".repeat(depth), "]".repeat(depth))
    }

    fn nested_objects(depth: usize) -> String {
        format!("{}1{}", "{\"a\":".repeat(depth), "}".repeat(depth))
    }

    const JSON: Payload = Payload::Json {
        non_object: NonObject::Reject,
    };

    #[test]
    fn json_objects_become_fields() {
        assert_eq!(
            decode(JSON, br#"{"temp_c":21.4}"#),
            Ok(json!({"temp_c": 21.4}))
        );
    }

    #[test]
    fn malformed_json_is_rejected_with_serdes_message() {
        let err = decode(JSON, b"{\"a\":").expect_err("malformed");
        assert_eq!(err.reason(), "invalid_json");
        assert!(err.to_string().contains("EOF while parsing"), "{err}");
    }

    #[test]
    fn non_utf8_payloads_are_rejected_under_every_policy() {
        for payload in [JSON, Payload::Text, Payload::Auto] {
            let err = decode(payload, b"ok\xff\xfe").expect_err("not utf-8");
            assert_eq!(err, StageError::InvalidUtf8 { valid_up_to: 2 });
            assert_eq!(err.reason(), "invalid_utf8");
        }
    }

    #[test]
    fn non_object_json_is_rejected_by_default() {
        let err = decode(JSON, b"21.5").expect_err("a number");
        assert_eq!(err, StageError::NotAnObject { kind: "number" });
        assert_eq!(err.to_string(), "payload is a json number, not an object");
    }

    #[test]
    fn non_object_json_can_be_wrapped_under_value() {
        let wrap = Payload::Json {
            non_object: NonObject::Wrap,
        };
        assert_eq!(decode(wrap, b"[1,2]"), Ok(json!({"value": [1, 2]})));
        assert_eq!(decode(wrap, b"\"on\""), Ok(json!({"value": "on"})));
    }

    #[test]
    fn text_goes_into_message_verbatim() {
        assert_eq!(
            decode(Payload::Text, br#"{"not": "parsed"}"#),
            Ok(json!({"message": "{\"not\": \"parsed\"}"}))
        );
    }

    #[test]
    fn auto_keeps_objects_as_fields_and_everything_else_as_text() {
        assert_eq!(decode(Payload::Auto, br#"{"a":1}"#), Ok(json!({"a": 1})));
        assert_eq!(
            decode(Payload::Auto, b"Hello world MQTT"),
            Ok(json!({"message": "Hello world MQTT"}))
        );
        assert_eq!(
            decode(Payload::Auto, b"21.5"),
            Ok(json!({"message": "21.5"}))
        );
        assert_eq!(
            decode(Payload::Auto, b"{broken"),
            Ok(json!({"message": "{broken"}))
        );
    }

    #[test]
    fn payloads_deeper_than_the_limit_are_too_deep_not_a_crash() {
        for payload in [JSON, Payload::Auto] {
            for deep in [nested(200), nested_objects(200), nested(100_000)] {
                let err = decode(payload, deep.as_bytes()).expect_err("too deep");
                assert_eq!(err, StageError::TooDeep { max: 64 });
                assert_eq!(err.reason(), "too_deep");
            }
        }
    }

    #[test]
    fn nesting_up_to_the_limit_is_accepted() {
        let at_limit = format!("{{\"a\":{}}}", nested(63));
        assert!(decode(JSON, at_limit.as_bytes()).is_ok());
    }

    #[test]
    fn brackets_inside_strings_do_not_count_as_depth() {
        let text = format!("{{\"a\":\"{}\\\"{}\"}}", "[".repeat(500), "{".repeat(500));
        assert!(decode(JSON, text.as_bytes()).is_ok());
    }

    #[test]
    fn the_payload_setting_accepts_a_name_or_options() {
        assert_eq!(Payload::parse(None).expect("default"), JSON);
        assert_eq!(
            Payload::parse(Some(json!("auto"))).expect("auto"),
            Payload::Auto
        );
        let wrap = Payload::parse(Some(json!({"format": "json", "non_object": "wrap"})));
        assert_eq!(
            wrap.expect("wrap"),
            Payload::Json {
                non_object: NonObject::Wrap
            }
        );
    }

    #[test]
    fn bad_payload_settings_are_errors_quoting_the_value() {
        let cases = [
            (
                json!("xml"),
                "unknown payload format \"xml\"; expected one of json, text, auto",
            ),
            (
                json!({"format": "json", "non_object": "keep"}),
                "unknown non_object \"keep\"; expected one of reject, wrap",
            ),
            (
                json!({"format": "text", "non_object": "wrap"}),
                "payload: non_object applies to format json, not \"text\"",
            ),
            (
                json!({"format": "json", "depth": 3}),
                "payload: unknown field `depth`",
            ),
            (json!(3), "payload: invalid type: integer `3`"),
        ];
        for (config, expected) in cases {
            let err = Payload::parse(Some(config))
                .expect_err(expected)
                .to_string();
            assert!(err.contains(expected), "{err}");
        }
    }

    #[test]
    fn max_depth_must_be_between_1_and_128() {
        assert!(DecodeLimits::default().check().is_ok());
        for bad in [0, 129] {
            let err = DecodeLimits { max_depth: bad }
                .check()
                .expect_err("out of range");
            assert!(err.to_string().contains(&format!("max_depth {bad}")));
        }
    }
}
