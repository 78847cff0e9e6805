//! `topic`: topic levels into fields, `{pattern: "sensors/{site}/{device}/telemetry", target: device}`.
//!
//! Reads the topic the message arrived on, not the `mqtt.topic` field, so an earlier stage
//! cannot make a document claim a different origin. A topic that does not fit the pattern is
//! rejected (`topic_mismatch`): the pipeline's `topics` filter is allowed to be broader than
//! the pattern, but a document missing its identifying fields is not allowed to be stored.

use serde::Deserialize;
use serde_json::Value;

use super::draft::{Draft, options, path, put};
use crate::pipeline::error::{ConfigError, StageError};
use crate::pipeline::path::FieldPath;
use crate::record::Message;
use crate::topic::TopicPattern;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Topic {
    pattern: TopicPattern,
    /// The field each capture goes to, in capture order.
    fields: Vec<FieldPath>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, expecting = "topic options: {pattern, target}")]
struct Options {
    pattern: String,
    /// An object path the captures go under (`device` gives `device.site`).
    target: Option<String>,
}

impl Topic {
    pub fn parse(config: Value) -> Result<Topic, ConfigError> {
        let options: Options = options(config)?;
        let pattern =
            TopicPattern::parse(&options.pattern).map_err(|source| ConfigError::Topic {
                key: "pattern".to_owned(),
                source,
            })?;
        if pattern.names().next().is_none() {
            return Err(ConfigError::invalid(
                "pattern",
                format!(
                    "\"{}\" captures nothing; name levels like {{site}}",
                    options.pattern
                ),
            ));
        }
        let target = options
            .target
            .as_deref()
            .map(|t| path("target", t))
            .transpose()?;
        let fields = pattern
            .names()
            .map(|name| match &target {
                Some(target) => path("target", &format!("{target}.{name}")),
                None => path("pattern", name),
            })
            .collect::<Result<_, _>>()?;
        Ok(Topic { pattern, fields })
    }

    pub fn apply(&self, draft: &mut Draft, message: &Message) -> Result<(), StageError> {
        let captures =
            self.pattern
                .captures(&message.topic)
                .ok_or_else(|| StageError::TopicMismatch {
                    topic: crate::pipeline::error::clip(&message.topic),
                    pattern: self.pattern.to_string(),
                })?;
        for (field, (_, value)) in self.fields.iter().zip(captures) {
            put(draft, field, Value::String(value.to_owned()))?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::super::test_support::{config_error, draft, message, stage};

    #[test]
    fn captures_become_fields() {
        let s = stage(
            "topic",
            json!({"pattern": "sensors/{site}/{device}/telemetry"}),
        );
        let mut d = draft(json!({"temp_c": 1}));
        s.apply(&mut d, &message("sensors/home/pi1/telemetry"))
            .expect("matches");
        assert_eq!(
            serde_json::Value::from(d.source),
            json!({"temp_c": 1, "site": "home", "device": "pi1"})
        );
    }

    #[test]
    fn captures_can_go_under_a_target_object() {
        let s = stage(
            "topic",
            json!({"pattern": "+/{site}/{id}/#", "target": "device"}),
        );
        let mut d = draft(json!({}));
        s.apply(&mut d, &message("sensors/home/pi1/a/b"))
            .expect("matches");
        assert_eq!(
            serde_json::Value::from(d.source),
            json!({"device": {"site": "home", "id": "pi1"}})
        );
    }

    #[test]
    fn a_topic_that_does_not_fit_is_a_topic_mismatch() {
        let s = stage(
            "topic",
            json!({"pattern": "sensors/{site}/{device}/telemetry"}),
        );
        let err = s
            .apply(&mut draft(json!({})), &message("sensors/home/status"))
            .expect_err("no");
        assert_eq!(err.reason(), "topic_mismatch");
        assert_eq!(
            err.to_string(),
            "topic \"sensors/home/status\" does not match pattern \"sensors/{site}/{device}/telemetry\""
        );
    }

    #[test]
    fn bad_topic_options_are_config_errors() {
        let cases = [
            (
                json!({"pattern": "a/{x"}),
                "pattern: topic pattern \"a/{x\"",
            ),
            (
                json!({"pattern": "a/b"}),
                "pattern: \"a/b\" captures nothing",
            ),
            (
                json!({"pattern": "{a}", "target": "x..y"}),
                "target: field path \"x..y\"",
            ),
            (
                json!({"pattern": "{a}", "prefix": "x"}),
                "unknown field `prefix`",
            ),
            (json!({}), "missing field `pattern`"),
        ];
        for (config, expected) in cases {
            let err = config_error("topic", config);
            assert!(err.contains(expected), "{err}");
        }
    }
}
