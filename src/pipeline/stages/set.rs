//! `set`: `{field: device.name, value: "{{site}}-{{device}}"}` or `{field: x, copy_from: y}`.
//!
//! A string `value` is a template and always renders to a string; any other JSON value is set
//! as is (nested strings are not rendered). Copying a field with its type is `copy_from`, not a
//! template that happens to be a single reference: a value's type should not depend on how
//! many braces surround it. Options as in Elasticsearch: `override` (default true) and
//! `ignore_missing` (default false: a missing referenced field is a rejection).

use serde::{Deserialize, Deserializer};
use serde_json::Value;

use super::draft::{Draft, options, path, put};
use crate::pipeline::error::{ConfigError, StageError};
use crate::pipeline::path::FieldPath;
use crate::pipeline::template::Template;

#[derive(Debug, Clone, PartialEq)]
pub struct Set {
    field: FieldPath,
    value: Source,
    overwrite: bool,
    ignore_missing: bool,
}

#[derive(Debug, Clone, PartialEq)]
enum Source {
    Template(Template),
    Json(Value),
    Copy(FieldPath),
}

/// Keeps `value: null` apart from no `value`.
fn present<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Value>, D::Error> {
    Value::deserialize(d).map(Some)
}

fn yes() -> bool {
    true
}

#[derive(Deserialize)]
#[serde(
    deny_unknown_fields,
    expecting = "set options: {field, value | copy_from, override, ignore_missing}"
)]
struct Options {
    field: String,
    #[serde(default, deserialize_with = "present")]
    value: Option<Value>,
    copy_from: Option<String>,
    #[serde(default = "yes", rename = "override")]
    overwrite: bool,
    #[serde(default)]
    ignore_missing: bool,
}

impl Set {
    pub fn parse(config: Value) -> Result<Set, ConfigError> {
        let options: Options = options(config)?;
        let value = match (options.value, options.copy_from) {
            (Some(Value::String(s)), None) => {
                Source::Template(Template::parse(&s).map_err(|source| ConfigError::Template {
                    key: "value".to_owned(),
                    source,
                })?)
            }
            (Some(value), None) => Source::Json(value),
            (None, Some(from)) => Source::Copy(path("copy_from", &from)?),
            (Some(_), Some(_)) => {
                return Err(ConfigError::invalid(
                    "value",
                    "set takes value or copy_from, not both",
                ));
            }
            (None, None) => {
                return Err(ConfigError::invalid(
                    "value",
                    "set needs value or copy_from",
                ));
            }
        };
        Ok(Set {
            field: path("field", &options.field)?,
            value,
            overwrite: options.overwrite,
            ignore_missing: options.ignore_missing,
        })
    }

    pub fn apply(&self, draft: &mut Draft) -> Result<(), StageError> {
        if !self.overwrite && self.field.get(&draft.source).is_some() {
            return Ok(());
        }
        let value = match &self.value {
            Source::Json(value) => Ok(value.clone()),
            Source::Template(template) => template.render(&draft.source).map(Value::String),
            Source::Copy(from) => from
                .get(&draft.source)
                .cloned()
                .ok_or_else(|| StageError::MissingField(from.to_string())),
        };
        match value {
            Ok(value) => put(draft, &self.field, value),
            Err(StageError::MissingField(_)) if self.ignore_missing => Ok(()),
            Err(err) => Err(err),
        }
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::super::test_support::{config_error, run, stage};
    use crate::pipeline::error::StageError;

    #[test]
    fn set_renders_templates_into_nested_fields() {
        let s = stage(
            "set",
            json!({"field": "device.name", "value": "{{site}}-{{id}}"}),
        );
        assert_eq!(
            run(&s, json!({"site": "home", "id": 7})),
            Ok(json!({"site": "home", "id": 7, "device": {"name": "home-7"}}))
        );
    }

    #[test]
    fn set_under_a_scalar_is_a_path_conflict() {
        let s = stage("set", json!({"field": "device.name", "value": "x"}));
        assert_eq!(
            run(&s, json!({"device": "pi1"})),
            Err(StageError::PathConflict {
                path: "device.name".to_owned(),
                parent: "device".to_owned()
            })
        );
    }

    #[test]
    fn set_stores_non_string_values_as_is() {
        let s = stage(
            "set",
            json!({"field": "meta", "value": {"v": 2, "s": "{{x}}"}}),
        );
        assert_eq!(
            run(&s, json!({})),
            Ok(json!({"meta": {"v": 2, "s": "{{x}}"}}))
        );
        let s = stage("set", json!({"field": "gone", "value": null}));
        assert_eq!(run(&s, json!({})), Ok(json!({"gone": null})));
    }

    #[test]
    fn copy_from_keeps_the_type() {
        let s = stage("set", json!({"field": "t", "copy_from": "temp"}));
        assert_eq!(
            run(&s, json!({"temp": 21.4})),
            Ok(json!({"temp": 21.4, "t": 21.4}))
        );
    }

    #[test]
    fn override_false_keeps_an_existing_value() {
        let s = stage("set", json!({"field": "a", "value": 2, "override": false}));
        assert_eq!(run(&s, json!({"a": 1})), Ok(json!({"a": 1})));
        assert_eq!(run(&s, json!({})), Ok(json!({"a": 2})));
    }

    #[test]
    fn a_missing_reference_is_rejected_unless_ignored() {
        let s = stage("set", json!({"field": "n", "value": "{{site}}"}));
        assert_eq!(
            run(&s, json!({})),
            Err(StageError::MissingField("site".to_owned()))
        );
        let s = stage(
            "set",
            json!({"field": "n", "copy_from": "x", "ignore_missing": true}),
        );
        assert_eq!(run(&s, json!({})), Ok(json!({})));
    }

    #[test]
    fn bad_set_options_are_config_errors() {
        let cases = [
            (json!({"field": "a"}), "value: set needs value or copy_from"),
            (
                json!({"field": "a", "value": 1, "copy_from": "b"}),
                "not both",
            ),
            (
                json!({"field": "a", "value": "{{b"}),
                "value: template \"{{b\" has `{{`",
            ),
            (json!({"field": "", "value": 1}), "field: empty field path"),
            (
                json!({"field": "a", "copy_from": "b..c"}),
                "copy_from: field path \"b..c\"",
            ),
            (
                json!({"field": "a", "value": 1, "if": {}}),
                "unknown field `if`",
            ),
        ];
        for (config, expected) in cases {
            let err = config_error("set", config);
            assert!(err.contains(expected), "{err}");
        }
    }
}
