//! Dotted field paths (`device.location.site`) into a JSON object, parsed once at load.
//!
//! A segment is a plain object key; there is no array indexing and no escaping of dots. That is
//! deliberately less than Elasticsearch's ingest paths: telemetry documents are objects of
//! objects, and a path that can only name object keys can never be ambiguous about what a
//! missing intermediate should become (an object, always).

use std::fmt;

use serde_json::{Map, Value};
use thiserror::Error;

use crate::object::{Key, Object};

#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum PathError {
    #[error("empty field path")]
    Empty,
    #[error("field path \"{0}\" has an empty segment")]
    EmptySegment(String),
}

/// Setting a path failed because an intermediate value is not an object.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Conflict {
    /// The prefix of the path that holds a non-object.
    pub parent: String,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FieldPath {
    raw: String,
    /// Held apart from `last` so that a path without segments cannot be represented.
    parents: Vec<String>,
    /// A `Key`: a top-level member set under it takes a copy without an allocation.
    last: Key,
}

impl FieldPath {
    pub fn parse(raw: &str) -> Result<FieldPath, PathError> {
        if raw.is_empty() {
            return Err(PathError::Empty);
        }
        let mut parents: Vec<String> = raw.split('.').map(str::to_owned).collect();
        if parents.iter().any(String::is_empty) {
            return Err(PathError::EmptySegment(raw.to_owned()));
        }
        let last = Key::from(parents.pop().unwrap_or_default());
        Ok(FieldPath {
            raw: raw.to_owned(),
            parents,
            last,
        })
    }

    pub fn as_str(&self) -> &str {
        &self.raw
    }

    pub fn get<'m>(&self, doc: &'m Object) -> Option<&'m Value> {
        match self.parents.split_first() {
            None => doc.get(&self.last),
            Some((first, rest)) => parent(first, rest, doc)?.get(self.last.as_str()),
        }
    }

    pub fn get_mut<'m>(&self, doc: &'m mut Object) -> Option<&'m mut Value> {
        match self.parents.split_first() {
            None => doc.get_mut(&self.last),
            Some((first, rest)) => parent_mut(first, rest, doc)?.get_mut(self.last.as_str()),
        }
    }

    pub fn remove(&self, doc: &mut Object) -> Option<Value> {
        match self.parents.split_first() {
            None => doc.remove(&self.last),
            Some((first, rest)) => parent_mut(first, rest, doc)?.remove(self.last.as_str()),
        }
    }

    /// Sets the value, creating missing intermediate objects. Replaces an existing value.
    pub fn insert(&self, doc: &mut Object, value: Value) -> Result<(), Conflict> {
        let Some((first, parents)) = self.parents.split_first() else {
            doc.insert(self.last.clone(), value);
            return Ok(());
        };
        let conflict = |depth: usize| Conflict {
            parent: self.parents[..=depth].join("."),
        };
        let mut current = match doc.get_or_insert_with(first, || Value::Object(Map::new())) {
            Value::Object(object) => object,
            _ => return Err(conflict(0)),
        };
        for (depth, segment) in parents.iter().enumerate() {
            let next = current
                .entry(segment.clone())
                .or_insert_with(|| Value::Object(Map::new()));
            match next {
                Value::Object(object) => current = object,
                _ => return Err(conflict(depth + 1)),
            }
        }
        current.insert(self.last.to_string(), value);
        Ok(())
    }
}

/// The nested object that holds a path's last segment: `first`, then `rest`, from the top.
fn parent<'m>(first: &str, rest: &[String], doc: &'m Object) -> Option<&'m Map<String, Value>> {
    rest.iter()
        .try_fold(doc.get(first)?.as_object()?, |map, segment| {
            map.get(segment)?.as_object()
        })
}

fn parent_mut<'m>(
    first: &str,
    rest: &[String],
    doc: &'m mut Object,
) -> Option<&'m mut Map<String, Value>> {
    rest.iter()
        .try_fold(doc.get_mut(first)?.as_object_mut()?, |map, segment| {
            map.get_mut(segment)?.as_object_mut()
        })
}

impl fmt::Display for FieldPath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.raw)
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn path(s: &str) -> FieldPath {
        FieldPath::parse(s).expect("a valid path")
    }

    fn object(value: Value) -> Object {
        match value {
            Value::Object(map) => Object::from(map),
            _ => panic!("not an object"),
        }
    }

    #[test]
    fn empty_paths_and_empty_segments_are_errors() {
        assert_eq!(FieldPath::parse(""), Err(PathError::Empty));
        for bad in ["a..b", ".a", "a."] {
            assert_eq!(
                FieldPath::parse(bad),
                Err(PathError::EmptySegment(bad.to_owned()))
            );
        }
    }

    #[test]
    fn get_follows_nested_objects() {
        let doc = object(json!({"a": {"b": {"c": 1}}, "@timestamp": "t"}));
        assert_eq!(path("a.b.c").get(&doc), Some(&json!(1)));
        assert_eq!(path("@timestamp").get(&doc), Some(&json!("t")));
        assert_eq!(path("a.x").get(&doc), None);
        assert_eq!(path("a.b.c.d").get(&doc), None);
    }

    #[test]
    fn insert_creates_missing_intermediate_objects() {
        let mut doc = Object::new();
        path("device.location.site")
            .insert(&mut doc, json!("home"))
            .expect("no conflict");
        assert_eq!(
            Value::Object(doc.into_map()),
            json!({"device": {"location": {"site": "home"}}})
        );
    }

    #[test]
    fn insert_under_a_scalar_reports_the_conflicting_parent() {
        let mut doc = object(json!({"device": "pi1"}));
        let err = path("device.name.first").insert(&mut doc, json!(1));
        assert_eq!(
            err,
            Err(Conflict {
                parent: "device".to_owned()
            })
        );
    }

    #[test]
    fn remove_takes_the_value_out() {
        let mut doc = object(json!({"a": {"b": 1, "c": 2}}));
        assert_eq!(path("a.b").remove(&mut doc), Some(json!(1)));
        assert_eq!(path("a.b").remove(&mut doc), None);
        assert_eq!(Value::Object(doc.into_map()), json!({"a": {"c": 2}}));
    }
}
