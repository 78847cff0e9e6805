//! String templates with field references: `"{{site}}-{{device.id}}"`, used by `set` values
//! and `route` index names.
//!
//! Only field references, no expressions, conditionals or escaping: a template is a list of
//! literal and field parts, parsed at load. A referenced field must hold a string, number or
//! boolean; anything else (missing, null, object, array) is a rejection rather than a
//! rendered `"null"` or `"[object]"`, because a document named after a missing value is a
//! silent routing bug.

use std::borrow::Cow;

use serde_json::Value;

use super::error::{StageError, TemplateError};
use super::path::FieldPath;
use crate::object::Object;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Part {
    Literal(String),
    Field(FieldPath),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Template {
    raw: String,
    parts: Vec<Part>,
}

impl Template {
    pub fn parse(raw: &str) -> Result<Template, TemplateError> {
        let mut parts = Vec::new();
        let mut rest = raw;
        while let Some(open) = rest.find("{{") {
            if open > 0 {
                parts.push(Part::Literal(rest[..open].to_owned()));
            }
            let after = &rest[open + 2..];
            let close = after
                .find("}}")
                .ok_or_else(|| TemplateError::Unclosed(raw.to_owned()))?;
            let path =
                FieldPath::parse(after[..close].trim()).map_err(|source| TemplateError::Path {
                    template: raw.to_owned(),
                    source,
                })?;
            parts.push(Part::Field(path));
            rest = &after[close + 2..];
        }
        if !rest.is_empty() {
            parts.push(Part::Literal(rest.to_owned()));
        }
        Ok(Template {
            raw: raw.to_owned(),
            parts,
        })
    }

    pub fn parts(&self) -> &[Part] {
        &self.parts
    }

    pub fn render(&self, doc: &Object) -> Result<String, StageError> {
        let mut out = String::new();
        for part in &self.parts {
            match part {
                Part::Literal(literal) => out.push_str(literal),
                Part::Field(path) => out.push_str(&field_text(path, doc)?),
            }
        }
        Ok(out)
    }
}

/// The text of a referenced scalar field.
pub fn field_text<'d>(path: &FieldPath, doc: &'d Object) -> Result<Cow<'d, str>, StageError> {
    match path.get(doc) {
        None => Err(StageError::MissingField(path.to_string())),
        Some(Value::String(s)) => Ok(Cow::Borrowed(s)),
        Some(Value::Number(n)) => Ok(Cow::Owned(n.to_string())),
        Some(Value::Bool(b)) => Ok(Cow::Borrowed(if *b { "true" } else { "false" })),
        Some(other) => Err(StageError::wrong_type(
            path.as_str(),
            other,
            "a string, number or boolean",
        )),
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn doc(value: Value) -> Object {
        match value {
            Value::Object(map) => Object::from(map),
            _ => panic!("not an object"),
        }
    }

    #[test]
    fn templates_render_literals_and_scalar_fields() {
        let t = Template::parse("{{site}}-{{ device.n }}/{{on}}").expect("valid");
        let d = doc(json!({"site": "home", "device": {"n": 3}, "on": true}));
        assert_eq!(t.render(&d), Ok("home-3/true".to_owned()));
    }

    #[test]
    fn a_template_without_references_renders_as_itself() {
        let t = Template::parse("plain {text}").expect("valid");
        assert_eq!(t.render(&Object::new()), Ok("plain {text}".to_owned()));
    }

    #[test]
    fn a_missing_referenced_field_is_a_missing_field_error() {
        let t = Template::parse("{{site}}").expect("valid");
        let err = t.render(&Object::new()).expect_err("missing");
        assert_eq!(err, StageError::MissingField("site".to_owned()));
    }

    #[test]
    fn objects_arrays_and_null_are_not_rendered() {
        let t = Template::parse("{{x}}").expect("valid");
        for value in [json!(null), json!([1]), json!({"a": 1})] {
            let err = t
                .render(&doc(json!({ "x": value })))
                .expect_err("not scalar");
            assert_eq!(err.reason(), "wrong_type");
        }
    }

    #[test]
    fn unclosed_and_empty_references_are_errors_quoting_the_template() {
        assert_eq!(
            Template::parse("a-{{site"),
            Err(TemplateError::Unclosed("a-{{site".to_owned()))
        );
        let err = Template::parse("a-{{ }}").expect_err("empty path");
        assert_eq!(err.to_string(), "template \"a-{{ }}\": empty field path");
    }
}
