//! `remove`: `{fields: [debug, raw], ignore_missing: false}`.
//!
//! A missing field is a rejection (`missing_field`) unless `ignore_missing`, as in
//! Elasticsearch: a pipeline that removes a field it expects is usually describing the
//! payload, and a payload that no longer fits the description deserves a look.

use serde::Deserialize;
use serde_json::Value;

use super::draft::{Draft, options, path};
use crate::pipeline::error::{ConfigError, StageError};
use crate::pipeline::path::FieldPath;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Remove {
    fields: Vec<FieldPath>,
    ignore_missing: bool,
}

#[derive(Deserialize)]
#[serde(
    deny_unknown_fields,
    expecting = "remove options: {fields, ignore_missing}"
)]
struct Options {
    fields: Vec<String>,
    #[serde(default)]
    ignore_missing: bool,
}

impl Remove {
    pub fn parse(config: Value) -> Result<Remove, ConfigError> {
        let options: Options = options(config)?;
        if options.fields.is_empty() {
            return Err(ConfigError::invalid("fields", "needs at least one field"));
        }
        let fields = options
            .fields
            .iter()
            .enumerate()
            .map(|(i, f)| path(&format!("fields[{i}]"), f))
            .collect::<Result<_, _>>()?;
        Ok(Remove {
            fields,
            ignore_missing: options.ignore_missing,
        })
    }

    pub fn apply(&self, draft: &mut Draft) -> Result<(), StageError> {
        for field in &self.fields {
            if field.remove(&mut draft.source).is_none() && !self.ignore_missing {
                return Err(StageError::MissingField(field.to_string()));
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::super::test_support::{config_error, run, stage};
    use crate::pipeline::error::StageError;

    #[test]
    fn remove_deletes_every_listed_field() {
        let s = stage("remove", json!({"fields": ["debug", "a.raw"]}));
        assert_eq!(
            run(&s, json!({"debug": 1, "a": {"raw": 2, "keep": 3}, "t": 4})),
            Ok(json!({"a": {"keep": 3}, "t": 4}))
        );
    }

    #[test]
    fn remove_of_a_missing_field_is_rejected_unless_ignored() {
        let s = stage("remove", json!({"fields": ["debug"]}));
        assert_eq!(
            run(&s, json!({})),
            Err(StageError::MissingField("debug".to_owned()))
        );
        let s = stage(
            "remove",
            json!({"fields": ["debug"], "ignore_missing": true}),
        );
        assert_eq!(run(&s, json!({"t": 1})), Ok(json!({"t": 1})));
    }

    #[test]
    fn bad_remove_options_are_config_errors() {
        let cases = [
            (json!({"fields": []}), "fields: needs at least one field"),
            (
                json!({"fields": ["a", "b."]}),
                "fields[1]: field path \"b.\"",
            ),
            (json!({"field": "a"}), "unknown field `field`"),
            (
                json!({"fields": "a"}),
                "invalid type: string \"a\", expected a sequence",
            ),
        ];
        for (config, expected) in cases {
            let err = config_error("remove", config);
            assert!(err.contains(expected), "{err}");
        }
    }
}
