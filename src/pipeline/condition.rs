//! Conditions for the `drop` stage: `{field: status, equals: test}`, `{exists: debug}`,
//! `{field: temp_c, gt: 100}`, combined with `{all: [...]}` and `{any: [...]}`.
//!
//! Conditions never reject a message: a missing field or a non-number under `gt` simply does
//! not match. A drop rule that rejected whatever it failed to understand would dead-letter
//! exactly the messages it was written to let through.

use serde::{Deserialize, Deserializer};
use serde_json::Value;

use super::error::ConfigError;
use super::path::FieldPath;
use crate::object::Object;

#[derive(Debug, Clone, PartialEq)]
pub enum Condition {
    Equals(FieldPath, Value),
    NotEquals(FieldPath, Value),
    Exists(FieldPath),
    Missing(FieldPath),
    Compare(FieldPath, Comparison, f64),
    All(Vec<Condition>),
    Any(Vec<Condition>),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Comparison {
    Gt,
    Gte,
    Lt,
    Lte,
}

/// Keeps `equals: null` apart from a missing `equals`.
fn present<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Value>, D::Error> {
    Value::deserialize(d).map(Some)
}

#[derive(Deserialize)]
#[serde(
    deny_unknown_fields,
    expecting = "a condition: {field, equals | not_equals | gt | gte | lt | lte}, {exists}, {missing}, {all} or {any}"
)]
struct Raw {
    field: Option<String>,
    #[serde(default, deserialize_with = "present")]
    equals: Option<Value>,
    #[serde(default, deserialize_with = "present")]
    not_equals: Option<Value>,
    exists: Option<String>,
    missing: Option<String>,
    gt: Option<f64>,
    gte: Option<f64>,
    lt: Option<f64>,
    lte: Option<f64>,
    all: Option<Vec<Value>>,
    any: Option<Vec<Value>>,
}

const OPERATORS: &str = "equals, not_equals, exists, missing, gt, gte, lt, lte, all, any";

impl Condition {
    /// Parses a condition found under `key` (for error messages, e.g. `if` or `if.all[1]`).
    pub fn parse(key: &str, config: Value) -> Result<Condition, ConfigError> {
        let Raw {
            field,
            equals,
            not_equals,
            exists,
            missing,
            gt,
            gte,
            lt,
            lte,
            all,
            any,
        } = serde_json::from_value(config)
            .map_err(|e| ConfigError::Shape(format!("{key}: {e}")))?;
        let given: Vec<&str> = [
            ("equals", equals.is_some()),
            ("not_equals", not_equals.is_some()),
            ("exists", exists.is_some()),
            ("missing", missing.is_some()),
            ("gt", gt.is_some()),
            ("gte", gte.is_some()),
            ("lt", lt.is_some()),
            ("lte", lte.is_some()),
            ("all", all.is_some()),
            ("any", any.is_some()),
        ]
        .into_iter()
        .filter_map(|(name, set)| set.then_some(name))
        .collect();
        let operator = match given.as_slice() {
            [one] => *one,
            [] => {
                return Err(ConfigError::invalid(
                    key,
                    format!("needs one of {OPERATORS}"),
                ));
            }
            many => {
                return Err(ConfigError::invalid(
                    key,
                    format!("has {}; expected exactly one operator", many.join(" and ")),
                ));
            }
        };
        let takes_field = !matches!(operator, "exists" | "missing" | "all" | "any");
        let field = match (field, takes_field) {
            (Some(field), true) => Some(path(key, "field", &field)?),
            (None, false) => None,
            (None, true) => {
                return Err(ConfigError::invalid(
                    key,
                    format!("{operator} needs a field"),
                ));
            }
            (Some(field), false) => {
                return Err(ConfigError::invalid(
                    key,
                    format!("{operator} does not take a field (found \"{field}\")"),
                ));
            }
        };
        // Exactly one operator is set, and `field` is `Some` exactly when it takes one.
        let condition = match (field, equals, not_equals, gt, gte, lt, lte) {
            (Some(f), Some(v), ..) => Condition::Equals(f, v),
            (Some(f), _, Some(v), ..) => Condition::NotEquals(f, v),
            (Some(f), _, _, Some(n), ..) => Condition::Compare(f, Comparison::Gt, n),
            (Some(f), _, _, _, Some(n), ..) => Condition::Compare(f, Comparison::Gte, n),
            (Some(f), _, _, _, _, Some(n), _) => Condition::Compare(f, Comparison::Lt, n),
            (Some(f), _, _, _, _, _, Some(n)) => Condition::Compare(f, Comparison::Lte, n),
            _ => match (exists, missing, all, any) {
                (Some(p), ..) => Condition::Exists(path(key, "exists", &p)?),
                (_, Some(p), ..) => Condition::Missing(path(key, "missing", &p)?),
                (_, _, Some(list), _) => Condition::All(parse_list(key, "all", list)?),
                (_, _, _, Some(list)) => Condition::Any(parse_list(key, "any", list)?),
                _ => {
                    return Err(ConfigError::invalid(
                        key,
                        format!("needs one of {OPERATORS}"),
                    ));
                }
            },
        };
        Ok(condition)
    }

    pub fn matches(&self, doc: &Object) -> bool {
        match self {
            Condition::Equals(field, value) => field.get(doc).is_some_and(|v| same(v, value)),
            Condition::NotEquals(field, value) => !field.get(doc).is_some_and(|v| same(v, value)),
            Condition::Exists(field) => field.get(doc).is_some(),
            Condition::Missing(field) => field.get(doc).is_none(),
            Condition::Compare(field, op, limit) => {
                let Some(n) = field.get(doc).and_then(Value::as_f64) else {
                    return false;
                };
                match op {
                    Comparison::Gt => n > *limit,
                    Comparison::Gte => n >= *limit,
                    Comparison::Lt => n < *limit,
                    Comparison::Lte => n <= *limit,
                }
            }
            Condition::All(list) => list.iter().all(|c| c.matches(doc)),
            Condition::Any(list) => list.iter().any(|c| c.matches(doc)),
        }
    }
}

/// JSON equality, except that numbers compare by value (`1` equals `1.0`).
fn same(a: &Value, b: &Value) -> bool {
    match (a, b) {
        (Value::Number(x), Value::Number(y)) => x.as_f64() == y.as_f64(),
        _ => a == b,
    }
}

fn path(key: &str, name: &str, raw: &str) -> Result<FieldPath, ConfigError> {
    FieldPath::parse(raw).map_err(|source| ConfigError::Path {
        key: format!("{key}.{name}"),
        source,
    })
}

fn parse_list(key: &str, name: &str, list: Vec<Value>) -> Result<Vec<Condition>, ConfigError> {
    if list.is_empty() {
        return Err(ConfigError::invalid(
            key,
            format!("{name} needs at least one condition"),
        ));
    }
    list.into_iter()
        .enumerate()
        .map(|(i, item)| Condition::parse(&format!("{key}.{name}[{i}]"), item))
        .collect()
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn condition(config: Value) -> Condition {
        Condition::parse("if", config).expect("a valid condition")
    }

    fn matches(config: Value, doc: Value) -> bool {
        condition(config).matches(&Object::from(doc.as_object().expect("an object").clone()))
    }

    #[test]
    fn equals_compares_json_values_and_numbers_by_value() {
        assert!(matches(
            json!({"field": "status", "equals": "test"}),
            json!({"status": "test"})
        ));
        assert!(!matches(
            json!({"field": "status", "equals": "test"}),
            json!({"status": "ok"})
        ));
        assert!(!matches(
            json!({"field": "status", "equals": "test"}),
            json!({})
        ));
        assert!(matches(
            json!({"field": "n", "equals": 1}),
            json!({"n": 1.0})
        ));
        assert!(matches(
            json!({"field": "n", "equals": null}),
            json!({"n": null})
        ));
    }

    #[test]
    fn not_equals_matches_missing_fields() {
        let c = json!({"field": "status", "not_equals": "ok"});
        assert!(matches(c.clone(), json!({"status": "test"})));
        assert!(matches(c.clone(), json!({})));
        assert!(!matches(c, json!({"status": "ok"})));
    }

    #[test]
    fn exists_and_missing_look_at_nested_paths() {
        assert!(matches(json!({"exists": "a.b"}), json!({"a": {"b": null}})));
        assert!(!matches(json!({"exists": "a.b"}), json!({"a": 1})));
        assert!(matches(json!({"missing": "a.b"}), json!({"a": {}})));
    }

    #[test]
    fn comparisons_match_only_numbers() {
        assert!(matches(
            json!({"field": "t", "gt": 100}),
            json!({"t": 100.5})
        ));
        assert!(!matches(
            json!({"field": "t", "gt": 100}),
            json!({"t": 100})
        ));
        assert!(matches(
            json!({"field": "t", "gte": 100}),
            json!({"t": 100})
        ));
        assert!(matches(json!({"field": "t", "lt": 0}), json!({"t": -1})));
        assert!(matches(json!({"field": "t", "lte": 0}), json!({"t": 0})));
        assert!(!matches(json!({"field": "t", "gt": 1}), json!({"t": "5"})));
        assert!(!matches(json!({"field": "t", "lt": 1}), json!({})));
    }

    #[test]
    fn all_and_any_combine_conditions() {
        let all = json!({"all": [{"exists": "a"}, {"field": "b", "equals": 2}]});
        assert!(matches(all.clone(), json!({"a": 1, "b": 2})));
        assert!(!matches(all, json!({"a": 1, "b": 3})));
        let any = json!({"any": [{"exists": "a"}, {"field": "b", "equals": 2}]});
        assert!(matches(any.clone(), json!({"b": 2})));
        assert!(!matches(any, json!({})));
    }

    #[test]
    fn malformed_conditions_are_errors_naming_the_key() {
        let cases = [
            (json!({"field": "a"}), "if: needs one of equals"),
            (
                json!({"field": "a", "equals": 1, "gt": 2}),
                "if: has equals and gt",
            ),
            (json!({"equals": 1}), "if: equals needs a field"),
            (
                json!({"field": "a", "exists": "b"}),
                "exists does not take a field (found \"a\")",
            ),
            (
                json!({"exists": "a..b"}),
                "if.exists: field path \"a..b\" has an empty segment",
            ),
            (
                json!({"field": "a", "matches": "x"}),
                "if: unknown field `matches`",
            ),
            (
                json!({"field": "a", "gt": "high"}),
                "if: invalid type: string \"high\"",
            ),
            (json!({"all": []}), "if: all needs at least one condition"),
            (json!({"any": [{"field": "a"}]}), "if.any[0]: needs one of"),
            (
                json!("status == test"),
                "if: invalid type: string \"status == test\"",
            ),
        ];
        for (config, expected) in cases {
            let err = Condition::parse("if", config)
                .expect_err(expected)
                .to_string();
            assert!(err.contains(expected), "{err}");
        }
    }
}
