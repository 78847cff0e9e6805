//! `rename`: `{from: temp_c, to: temperature_c, ignore_missing: false, override: false}`.
//!
//! As in Elasticsearch's rename processor, a missing `from` is a rejection (`missing_field`)
//! unless `ignore_missing`, and an existing `to` is a rejection (`field_exists`) unless
//! `override`: silently replacing a field the device sent is data loss nobody asked for.

use serde::Deserialize;
use serde_json::Value;

use super::draft::{Draft, options, path, put};
use crate::pipeline::error::{ConfigError, StageError};
use crate::pipeline::path::FieldPath;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rename {
    from: FieldPath,
    to: FieldPath,
    ignore_missing: bool,
    overwrite: bool,
}

#[derive(Deserialize)]
#[serde(
    deny_unknown_fields,
    expecting = "rename options: {from, to, ignore_missing, override}"
)]
struct Options {
    from: String,
    to: String,
    #[serde(default)]
    ignore_missing: bool,
    #[serde(default, rename = "override")]
    overwrite: bool,
}

impl Rename {
    pub fn parse(config: Value) -> Result<Rename, ConfigError> {
        let options: Options = options(config)?;
        if options.from == options.to {
            return Err(ConfigError::invalid(
                "to",
                format!("\"{}\" is the same field as from", options.to),
            ));
        }
        Ok(Rename {
            from: path("from", &options.from)?,
            to: path("to", &options.to)?,
            ignore_missing: options.ignore_missing,
            overwrite: options.overwrite,
        })
    }

    pub fn apply(&self, draft: &mut Draft) -> Result<(), StageError> {
        if self.from.get(&draft.source).is_none() {
            return match self.ignore_missing {
                true => Ok(()),
                false => Err(StageError::MissingField(self.from.to_string())),
            };
        }
        if !self.overwrite && self.to.get(&draft.source).is_some() {
            return Err(StageError::FieldExists(self.to.to_string()));
        }
        let value = self.from.remove(&mut draft.source).unwrap_or(Value::Null);
        put(draft, &self.to, value)
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::super::test_support::{config_error, run, stage};
    use crate::pipeline::error::StageError;

    #[test]
    fn rename_moves_a_value_creating_objects() {
        let s = stage(
            "rename",
            json!({"from": "temp_c", "to": "temperature.celsius"}),
        );
        assert_eq!(
            run(&s, json!({"temp_c": 21.4})),
            Ok(json!({"temperature": {"celsius": 21.4}}))
        );
    }

    #[test]
    fn rename_of_a_missing_field_is_rejected_unless_ignored() {
        let s = stage("rename", json!({"from": "temp_c", "to": "t"}));
        assert_eq!(
            run(&s, json!({})),
            Err(StageError::MissingField("temp_c".to_owned()))
        );
        let s = stage(
            "rename",
            json!({"from": "temp_c", "to": "t", "ignore_missing": true}),
        );
        assert_eq!(run(&s, json!({"a": 1})), Ok(json!({"a": 1})));
    }

    #[test]
    fn rename_onto_an_existing_field_is_rejected_unless_overridden() {
        let s = stage("rename", json!({"from": "a", "to": "b"}));
        assert_eq!(
            run(&s, json!({"a": 1, "b": 2})),
            Err(StageError::FieldExists("b".to_owned()))
        );
        let s = stage("rename", json!({"from": "a", "to": "b", "override": true}));
        assert_eq!(run(&s, json!({"a": 1, "b": 2})), Ok(json!({"b": 1})));
    }

    #[test]
    fn rename_under_a_scalar_is_a_path_conflict() {
        let s = stage("rename", json!({"from": "a", "to": "b.c"}));
        let err = run(&s, json!({"a": 1, "b": "x"})).expect_err("conflict");
        assert_eq!(err.reason(), "path_conflict");
        assert_eq!(
            err.to_string(),
            "cannot set \"b.c\": \"b\" is not an object"
        );
    }

    #[test]
    fn bad_rename_options_are_config_errors() {
        let cases = [
            (json!({"from": "a"}), "missing field `to`"),
            (
                json!({"from": "a", "to": "a"}),
                "to: \"a\" is the same field as from",
            ),
            (
                json!({"from": "a.", "to": "b"}),
                "from: field path \"a.\" has an empty segment",
            ),
            (
                json!({"from": "a", "to": "b", "target": "c"}),
                "unknown field `target`",
            ),
            (
                json!({"from": "a", "to": "b", "ignore_missing": "yes"}),
                "invalid type: string \"yes\"",
            ),
        ];
        for (config, expected) in cases {
            let err = config_error("rename", config);
            assert!(err.contains(expected), "{err}");
        }
    }
}
