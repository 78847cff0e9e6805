//! `convert`: `{field: humidity, type: float, ignore_missing: false}` with types
//! `int`, `float`, `bool` and `string`.
//!
//! Conversions are strict: `"48.2"` becomes a float, `"wet"` is a rejection (`wrong_type`)
//! rather than a zero, and a float becomes an int only when it has no fraction. Arrays are
//! converted element by element. A missing or null field is `missing_field` unless
//! `ignore_missing`, as in Elasticsearch.

use serde::Deserialize;
use serde_json::{Number, Value};

use super::draft::{Draft, options, path};
use crate::pipeline::error::{ConfigError, StageError};
use crate::pipeline::path::FieldPath;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Convert {
    field: FieldPath,
    to: Type,
    ignore_missing: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Type {
    Int,
    Float,
    Bool,
    String,
}

#[derive(Deserialize)]
#[serde(
    deny_unknown_fields,
    expecting = "convert options: {field, type, ignore_missing}"
)]
struct Options {
    field: String,
    #[serde(rename = "type")]
    to: String,
    #[serde(default)]
    ignore_missing: bool,
}

impl Convert {
    pub fn parse(config: Value) -> Result<Convert, ConfigError> {
        let options: Options = options(config)?;
        let to = match options.to.as_str() {
            "int" => Type::Int,
            "float" => Type::Float,
            "bool" => Type::Bool,
            "string" => Type::String,
            other => {
                return Err(ConfigError::unknown(
                    "type",
                    other,
                    "int, float, bool, string",
                ));
            }
        };
        Ok(Convert {
            field: path("field", &options.field)?,
            to,
            ignore_missing: options.ignore_missing,
        })
    }

    pub fn apply(&self, draft: &mut Draft) -> Result<(), StageError> {
        let value = match self.field.get_mut(&mut draft.source) {
            Some(value) if !value.is_null() => value,
            _ if self.ignore_missing => return Ok(()),
            _ => return Err(StageError::MissingField(self.field.to_string())),
        };
        let converted = match &*value {
            Value::Array(items) => items
                .iter()
                .map(|item| self.one(item))
                .collect::<Result<Vec<_>, _>>()
                .map(Value::Array)?,
            other => self.one(other)?,
        };
        *value = converted;
        Ok(())
    }

    fn one(&self, value: &Value) -> Result<Value, StageError> {
        let converted = match self.to {
            Type::Int => to_int(value).map(Value::from),
            Type::Float => to_float(value)
                .and_then(Number::from_f64)
                .map(Value::Number),
            Type::Bool => match value {
                Value::Bool(b) => Some(*b),
                Value::String(s) if s.eq_ignore_ascii_case("true") => Some(true),
                Value::String(s) if s.eq_ignore_ascii_case("false") => Some(false),
                _ => None,
            }
            .map(Value::Bool),
            Type::String => match value {
                Value::String(s) => Some(s.clone()),
                Value::Number(n) => Some(n.to_string()),
                Value::Bool(b) => Some(b.to_string()),
                _ => None,
            }
            .map(Value::String),
        };
        converted.ok_or_else(|| StageError::wrong_type(self.field.as_str(), value, self.expected()))
    }

    fn expected(&self) -> &'static str {
        match self.to {
            Type::Int => "an int",
            Type::Float => "a float",
            Type::Bool => "a bool",
            Type::String => "a string",
        }
    }
}

/// Largest float that converts to an i64 without saturating (2^63).
const I64_BOUND: f64 = 9_223_372_036_854_775_808.0;

fn to_int(value: &Value) -> Option<i64> {
    let whole = |f: f64| (f.fract() == 0.0 && f.abs() < I64_BOUND).then_some(f as i64);
    match value {
        Value::Number(n) => n.as_i64().or_else(|| n.as_f64().and_then(whole)),
        Value::String(s) => s.trim().parse().ok(),
        _ => None,
    }
}

fn to_float(value: &Value) -> Option<f64> {
    match value {
        Value::Number(n) => n.as_f64(),
        Value::String(s) => s.trim().parse::<f64>().ok().filter(|f| f.is_finite()),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use serde_json::{Value, json};

    use super::super::test_support::{config_error, run, stage};
    use crate::pipeline::error::StageError;

    fn convert(to: &str, value: Value) -> Result<Value, StageError> {
        let s = stage("convert", json!({"field": "v", "type": to}));
        run(&s, json!({ "v": value })).map(|doc| doc["v"].clone())
    }

    #[test]
    fn int_accepts_integers_whole_floats_and_numeric_strings() {
        assert_eq!(convert("int", json!(3)), Ok(json!(3)));
        assert_eq!(convert("int", json!(3.0)), Ok(json!(3)));
        assert_eq!(convert("int", json!(" -42 ")), Ok(json!(-42)));
        assert_eq!(
            convert("int", json!(3.5)).map_err(|e| e.reason()),
            Err("wrong_type")
        );
        assert_eq!(
            convert("int", json!(1e300)).map_err(|e| e.reason()),
            Err("wrong_type")
        );
        assert_eq!(
            convert("int", json!(true)).map_err(|e| e.reason()),
            Err("wrong_type")
        );
    }

    #[test]
    fn float_accepts_numbers_and_numeric_strings() {
        assert_eq!(convert("float", json!("48.2")), Ok(json!(48.2)));
        assert_eq!(convert("float", json!(48)), Ok(json!(48.0)));
        assert_eq!(
            convert("float", json!("NaN")).map_err(|e| e.reason()),
            Err("wrong_type")
        );
    }

    #[test]
    fn bool_accepts_booleans_and_true_or_false_strings() {
        assert_eq!(convert("bool", json!("TRUE")), Ok(json!(true)));
        assert_eq!(convert("bool", json!(false)), Ok(json!(false)));
        assert_eq!(
            convert("bool", json!(1)).map_err(|e| e.reason()),
            Err("wrong_type")
        );
    }

    #[test]
    fn string_accepts_scalars() {
        assert_eq!(convert("string", json!(21.5)), Ok(json!("21.5")));
        assert_eq!(convert("string", json!(true)), Ok(json!("true")));
        assert_eq!(
            convert("string", json!({})).map_err(|e| e.reason()),
            Err("wrong_type")
        );
    }

    #[test]
    fn arrays_are_converted_element_by_element() {
        assert_eq!(convert("float", json!(["1.5", 2])), Ok(json!([1.5, 2.0])));
        let err = convert("float", json!(["1.5", "x"])).expect_err("x is no float");
        assert_eq!(err.to_string(), "field \"v\": cannot use \"x\" as a float");
    }

    #[test]
    fn a_missing_or_null_field_is_rejected_unless_ignored() {
        let s = stage("convert", json!({"field": "h", "type": "float"}));
        assert_eq!(
            run(&s, json!({})),
            Err(StageError::MissingField("h".to_owned()))
        );
        assert_eq!(
            run(&s, json!({"h": null})),
            Err(StageError::MissingField("h".to_owned()))
        );
        let s = stage(
            "convert",
            json!({"field": "h", "type": "float", "ignore_missing": true}),
        );
        assert_eq!(run(&s, json!({})), Ok(json!({})));
    }

    #[test]
    fn bad_convert_options_are_config_errors() {
        let cases = [
            (
                json!({"field": "a", "type": "integer"}),
                "unknown type \"integer\"; expected one of int, float, bool, string",
            ),
            (json!({"field": "a"}), "missing field `type`"),
            (
                json!({"field": "a..b", "type": "int"}),
                "field: field path \"a..b\"",
            ),
            (
                json!({"field": "a", "type": "int", "target": "b"}),
                "unknown field `target`",
            ),
        ];
        for (config, expected) in cases {
            let err = config_error("convert", config);
            assert!(err.contains(expected), "{err}");
        }
    }
}
