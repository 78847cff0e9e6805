//! `drop`: `{if: {field: status, equals: test}}` discards the message on purpose.
//!
//! A drop is not a rejection: the record is settled as `Dropped`, counted, and never
//! dead-lettered. `if` is required; a pipeline that drops everything should not subscribe.

use serde::Deserialize;
use serde_json::Value;

use super::draft::{Draft, Flow, options};
use crate::pipeline::condition::Condition;
use crate::pipeline::error::ConfigError;

#[derive(Debug, Clone, PartialEq)]
pub struct Drop {
    condition: Condition,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, expecting = "drop options: {if}")]
struct Options {
    #[serde(rename = "if")]
    condition: Value,
}

impl Drop {
    pub fn parse(config: Value) -> Result<Drop, ConfigError> {
        let options: Options = options(config)?;
        Ok(Drop {
            condition: Condition::parse("if", options.condition)?,
        })
    }

    /// Whether to drop: the stage cannot fail.
    pub fn apply(&self, draft: &Draft) -> Flow {
        match self.condition.matches(&draft.source) {
            true => Flow::Drop,
            false => Flow::Continue,
        }
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::super::test_support::{config_error, draft, message, stage};
    use super::Flow;

    #[test]
    fn drop_discards_messages_that_match_and_keeps_the_rest() {
        let s = stage("drop", json!({"if": {"field": "status", "equals": "test"}}));
        let m = message("a");
        assert_eq!(
            s.apply(&mut draft(json!({"status": "test"})), &m),
            Ok(Flow::Drop)
        );
        assert_eq!(
            s.apply(&mut draft(json!({"status": "ok"})), &m),
            Ok(Flow::Continue)
        );
    }

    #[test]
    fn bad_drop_options_are_config_errors() {
        let cases = [
            (json!({}), "missing field `if`"),
            (json!({"when": {}}), "unknown field `when`"),
            (json!({"if": {"field": "a"}}), "if: needs one of equals"),
        ];
        for (config, expected) in cases {
            let err = config_error("drop", config);
            assert!(err.contains(expected), "{err}");
        }
    }
}
