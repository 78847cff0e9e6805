//! Target index names: the configured policy (prefix, default) and `route` templates.
//!
//! Index names never come freely from topics. A rendered name always carries the configured
//! prefix, every value substituted into it must be a plain lowercase token (`[a-z0-9][a-z0-9_-]*`
//! after ASCII lowercasing), and the whole name must pass Elasticsearch's naming rules narrowed
//! to `[a-z0-9._-]`. The substitution rule is stricter than Elasticsearch needs: a value such as
//! `..` or `_x` would make a legal but surprising name (`mqtt2es-telemetry-..`), and a device
//! choosing where its data lands is exactly what the prefix is there to prevent.

use serde::{Deserialize, Serialize};

use super::error::{ConfigError, LoadError, StageError, clip};
use super::template::{Part, Template, field_text};
use crate::object::Object;

/// Elasticsearch's limit on index and data stream names.
const MAX_NAME_BYTES: usize = 255;

/// Where documents may go. Part of the application config.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct IndexPolicy {
    /// Every index name starts with this; a route that renders without it gets it prepended.
    pub prefix: String,
    /// The target of pipelines without a `route` stage.
    pub default_index: String,
}

impl Default for IndexPolicy {
    fn default() -> Self {
        IndexPolicy {
            prefix: "mqtt2es-".to_owned(),
            default_index: "mqtt2es-default".to_owned(),
        }
    }
}

impl IndexPolicy {
    pub fn check(&self) -> Result<(), LoadError> {
        if self.prefix.is_empty() {
            return Err(LoadError::Policy("prefix must not be empty".to_owned()));
        }
        check_name(&self.prefix)
            .map_err(|why| LoadError::Policy(format!("prefix \"{}\": {why}", self.prefix)))?;
        if !self.default_index.starts_with(&self.prefix) {
            return Err(LoadError::Policy(format!(
                "default_index \"{}\" does not start with prefix \"{}\"",
                self.default_index, self.prefix
            )));
        }
        check_name(&self.default_index).map_err(|why| {
            LoadError::Policy(format!("default_index \"{}\": {why}", self.default_index))
        })
    }
}

/// A `route` stage's index template, confined to the policy's prefix.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IndexTemplate {
    template: Template,
    prefix: String,
}

impl IndexTemplate {
    pub fn parse(raw: &str, policy: &IndexPolicy) -> Result<IndexTemplate, ConfigError> {
        let template = Template::parse(raw).map_err(|source| ConfigError::Template {
            key: "index".to_owned(),
            source,
        })?;
        for part in template.parts() {
            if let Part::Literal(literal) = part
                && let Some(c) = literal.chars().find(|&c| !is_name_char(c))
            {
                return Err(ConfigError::invalid(
                    "index",
                    format!(
                        "\"{raw}\" contains {c:?}; only a-z, 0-9, '.', '_' and '-' are allowed"
                    ),
                ));
            }
        }
        let index = IndexTemplate {
            template,
            prefix: policy.prefix.clone(),
        };
        let has_fields = index
            .template
            .parts()
            .iter()
            .any(|p| matches!(p, Part::Field(_)));
        if !has_fields {
            index
                .render(&Object::new())
                .map_err(|err| ConfigError::invalid("index", err.to_string()))?;
        }
        Ok(index)
    }

    pub fn render(&self, doc: &Object) -> Result<String, StageError> {
        let mut name = String::with_capacity(self.prefix.len() + 32);
        let mut first_problem = None;
        for part in self.template.parts() {
            match part {
                Part::Literal(literal) => name.push_str(literal),
                Part::Field(path) => {
                    let start = name.len();
                    name.push_str(&field_text(path, doc)?);
                    let value = &mut name[start..];
                    value.make_ascii_lowercase();
                    if first_problem.is_none() {
                        first_problem = check_segment(value).err().map(|why| {
                            format!("field \"{path}\" gives \"{}\": {why}", clip(value))
                        });
                    }
                }
            }
        }
        if !name.starts_with(&self.prefix) {
            name.insert_str(0, &self.prefix);
        }
        match first_problem.map_or_else(|| check_name(&name), Err) {
            Ok(()) => Ok(name),
            Err(why) => Err(StageError::InvalidIndex {
                name: clip(&name),
                why,
            }),
        }
    }
}

fn is_name_char(c: char) -> bool {
    matches!(c, 'a'..='z' | '0'..='9' | '.' | '_' | '-')
}

/// Elasticsearch's index naming rules, narrowed to `[a-z0-9._-]`.
pub fn check_name(name: &str) -> Result<(), String> {
    if name.is_empty() {
        return Err("it is empty".to_owned());
    }
    if name.len() > MAX_NAME_BYTES {
        return Err(format!(
            "it is {} bytes long; the limit is {MAX_NAME_BYTES}",
            name.len()
        ));
    }
    if name == "." || name == ".." {
        return Err("it is \".\" or \"..\"".to_owned());
    }
    // Every allowed character is ASCII, so a byte scan finds the first that is not (every
    // route renders a name per reading); the error then names the character it starts.
    if let Some(at) = name.bytes().position(|b| !is_name_char(char::from(b))) {
        let c = name[at..].chars().next().unwrap_or_default();
        return Err(format!(
            "it contains {c:?}; only a-z, 0-9, '.', '_' and '-' are allowed"
        ));
    }
    match name.chars().next() {
        Some(c @ ('-' | '_' | '+' | '.')) => Err(format!("it starts with {c:?}")),
        _ => Ok(()),
    }
}

/// The rule for a value substituted into an index name: one plain token.
fn check_segment(value: &str) -> Result<(), String> {
    match value.chars().next() {
        None => return Err("it is empty".to_owned()),
        Some(c) if !c.is_ascii_alphanumeric() => return Err(format!("it starts with {c:?}")),
        Some(_) => {}
    }
    match value
        .bytes()
        .position(|b| !matches!(b, b'a'..=b'z' | b'0'..=b'9' | b'_' | b'-'))
    {
        Some(at) => Err(format!(
            "it contains {:?}; only a-z, 0-9, '_' and '-' are allowed",
            value[at..].chars().next().unwrap_or_default()
        )),
        None => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn route(raw: &str) -> IndexTemplate {
        IndexTemplate::parse(raw, &IndexPolicy::default()).expect("a valid template")
    }

    fn render(raw: &str, site: &str) -> Result<String, StageError> {
        let doc = json!({ "site": site });
        route(raw).render(&Object::from(doc.as_object().expect("an object").clone()))
    }

    #[test]
    fn a_character_outside_ascii_is_named_whole_in_the_rejection() {
        let err = render("mqtt2es-telemetry-{{site}}", "zürich").expect_err("invalid");
        assert!(err.to_string().contains("it contains 'ü'"), "{err}");
        assert_eq!(
            check_name("mqtt2es-✓"),
            Err("it contains '✓'; only a-z, 0-9, '.', '_' and '-' are allowed".to_owned())
        );
    }

    #[test]
    fn routes_render_fields_lowercased_under_the_prefix() {
        assert_eq!(
            render("mqtt2es-telemetry-{{site}}", "Home-1"),
            Ok("mqtt2es-telemetry-home-1".to_owned())
        );
    }

    #[test]
    fn the_prefix_is_prepended_when_missing() {
        assert_eq!(
            render("sensors-{{site}}", "a"),
            Ok("mqtt2es-sensors-a".to_owned())
        );
        assert_eq!(render("{{site}}", "mqtt2es-x"), Ok("mqtt2es-x".to_owned()));
    }

    #[test]
    fn hostile_topic_segments_are_invalid_index_rejections() {
        let long = "a".repeat(300);
        for hostile in [
            "..",
            "_x",
            "A,B*",
            ".hidden",
            "-x",
            "",
            "a b",
            "a/b",
            "é",
            long.as_str(),
        ] {
            let err = render("mqtt2es-telemetry-{{site}}", hostile).expect_err(hostile);
            assert_eq!(err.reason(), "invalid_index", "{hostile}");
            assert!(err.to_string().contains("mqtt2es-telemetry-"), "{err}");
        }
    }

    #[test]
    fn a_missing_route_field_is_a_missing_field_rejection() {
        let err = route("x-{{site}}")
            .render(&Object::new())
            .expect_err("missing");
        assert_eq!(err.reason(), "missing_field");
    }

    #[test]
    fn static_routes_are_checked_at_load() {
        let err = IndexTemplate::parse("Logs", &IndexPolicy::default()).expect_err("uppercase");
        assert!(err.to_string().contains("\"Logs\" contains 'L'"), "{err}");
        let long = "a".repeat(300);
        let err = IndexTemplate::parse(&long, &IndexPolicy::default()).expect_err("too long");
        assert!(err.to_string().contains("the limit is 255"), "{err}");
    }

    #[test]
    fn elasticsearch_naming_rules_are_enforced() {
        assert!(check_name("mqtt2es-a.b_c-1").is_ok());
        for bad in [
            "", ".", "..", "-a", "_a", "+a", "a:b", "a#b", "a\\b", "a\"b", "a<b", "a|b",
        ] {
            assert!(check_name(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn the_policy_must_have_a_valid_prefix_that_its_default_index_starts_with() {
        assert!(IndexPolicy::default().check().is_ok());
        let cases = [
            ("", "mqtt2es-default", "prefix must not be empty"),
            ("Bad-", "Bad-x", "prefix \"Bad-\""),
            (
                "mqtt2es-",
                "other",
                "default_index \"other\" does not start with prefix",
            ),
            ("mqtt2es-", "mqtt2es-a*", "default_index \"mqtt2es-a*\""),
        ];
        for (prefix, default_index, expected) in cases {
            let policy = IndexPolicy {
                prefix: prefix.to_owned(),
                default_index: default_index.to_owned(),
            };
            let err = policy.check().expect_err(expected).to_string();
            assert!(err.contains(expected), "{err}");
        }
    }
}
