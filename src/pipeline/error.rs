//! The pipeline's error types: `LoadError` for configuration (the file and the stage, around a
//! `ConfigError` that names the key and the value), `StageError` for one message that a stage
//! could not process.
//!
//! A `StageError` is data, not a failure of the program: it becomes a `Rejection` whose
//! `reason` is the stable code from [`StageError::reason`] and whose `detail` is the message.
//! Quoted values are clipped so that a hostile payload cannot make a dead letter huge; the raw
//! payload travels with the dead letter anyway.

use std::io;
use std::path::PathBuf;

use serde_json::Value;
use thiserror::Error;

use super::path::PathError;
use crate::topic::TopicError;

/// Why a template (`set` values, `route` index names) cannot be parsed.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum TemplateError {
    #[error("template \"{0}\" has `{{{{` without a closing `}}}}`")]
    Unclosed(String),
    #[error("template \"{template}\": {source}")]
    Path { template: String, source: PathError },
}

/// Why a pipeline file (or the policy it is loaded with) is unusable.
#[derive(Debug, Error)]
pub enum LoadError {
    #[error("{}: cannot read pipeline directory: {source}", dir.display())]
    ReadDir { dir: PathBuf, source: io::Error },
    #[error("{}: cannot read: {source}", file.display())]
    ReadFile { file: PathBuf, source: io::Error },
    #[error("{}: no pipelines found; expected at least one *.yaml or *.yml file", dir.display())]
    NoPipelines { dir: PathBuf },
    #[error("{file}: {message}")]
    Syntax { file: String, message: String },
    /// A top-level key (`name`, `topics`, `payload`, …).
    #[error("{file}: {source}")]
    Pipeline {
        file: String,
        source: Box<ConfigError>,
    },
    #[error("{file}: stages[{index}]: {message}")]
    StageShape {
        file: String,
        index: usize,
        message: String,
    },
    #[error("{file}: stages[{index}] ({stage}): {source}")]
    Stage {
        file: String,
        index: usize,
        stage: String,
        source: Box<ConfigError>,
    },
    #[error("{file}: pipeline name \"{name}\" is already used by {other}")]
    DuplicateName {
        file: String,
        name: String,
        other: String,
    },
    #[error("index policy: {0}")]
    Policy(String),
    #[error("decode limits: max_depth {0} is out of range; expected 1 to 128")]
    MaxDepth(usize),
}

/// A problem with one key of a pipeline or stage; `LoadError` adds where it was.
#[derive(Debug, Error)]
pub enum ConfigError {
    /// Unknown or missing keys and wrong value types, in serde's words (which quote them).
    #[error("{0}")]
    Shape(String),
    #[error("{key}: {source}")]
    Path { key: String, source: PathError },
    #[error("{key}: {source}")]
    Template { key: String, source: TemplateError },
    #[error("{key}: {source}")]
    Topic { key: String, source: TopicError },
    #[error("unknown {key} \"{value}\"; expected one of {expected}")]
    Unknown {
        key: String,
        value: String,
        expected: &'static str,
    },
    #[error("{key}: {message}")]
    Invalid { key: String, message: String },
}

impl ConfigError {
    pub fn invalid(key: &str, message: impl Into<String>) -> ConfigError {
        ConfigError::Invalid {
            key: key.to_owned(),
            message: message.into(),
        }
    }

    pub fn unknown(key: &str, value: &str, expected: &'static str) -> ConfigError {
        ConfigError::Unknown {
            key: key.to_owned(),
            value: value.to_owned(),
            expected,
        }
    }
}

/// Why one message could not become a document.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum StageError {
    #[error("invalid utf-8 in payload at byte {valid_up_to}")]
    InvalidUtf8 { valid_up_to: usize },
    #[error("invalid json: {0}")]
    InvalidJson(String),
    #[error("payload nests deeper than {max} levels")]
    TooDeep { max: usize },
    #[error("payload is a json {kind}, not an object")]
    NotAnObject { kind: &'static str },
    #[error("field \"{0}\" is missing")]
    MissingField(String),
    #[error("field \"{0}\" already exists")]
    FieldExists(String),
    #[error("cannot set \"{path}\": \"{parent}\" is not an object")]
    PathConflict { path: String, parent: String },
    #[error("field \"{field}\": cannot use {value} as {expected}")]
    WrongType {
        field: String,
        value: String,
        expected: &'static str,
    },
    #[error("topic \"{topic}\" does not match pattern \"{pattern}\"")]
    TopicMismatch { topic: String, pattern: String },
    #[error("field \"{field}\": timestamp {value} is {why} the receive time {received_at}")]
    TimestampSkew {
        field: String,
        value: String,
        why: String,
        received_at: String,
    },
    #[error("index name \"{name}\" is invalid: {why}")]
    InvalidIndex { name: String, why: String },
}

impl StageError {
    /// The stable, machine-friendly code stored as the rejection's `reason`.
    pub fn reason(&self) -> &'static str {
        match self {
            StageError::InvalidUtf8 { .. } => "invalid_utf8",
            StageError::InvalidJson(_) => "invalid_json",
            StageError::TooDeep { .. } => "too_deep",
            StageError::NotAnObject { .. } => "not_an_object",
            StageError::MissingField(_) => "missing_field",
            StageError::FieldExists(_) => "field_exists",
            StageError::PathConflict { .. } => "path_conflict",
            StageError::WrongType { .. } => "wrong_type",
            StageError::TopicMismatch { .. } => "topic_mismatch",
            StageError::TimestampSkew { .. } => "timestamp_skew",
            StageError::InvalidIndex { .. } => "invalid_index",
        }
    }

    pub fn wrong_type(field: &str, value: &Value, expected: &'static str) -> StageError {
        StageError::WrongType {
            field: field.to_owned(),
            value: show(value),
            expected,
        }
    }
}

/// Longest quoted value in a rejection detail, in bytes.
const MAX_QUOTE: usize = 512;

/// A value as compact JSON, clipped to `MAX_QUOTE` bytes.
pub fn show(value: &Value) -> String {
    clip(&value.to_string())
}

/// A string clipped to `MAX_QUOTE` bytes on a character boundary, marked with `…` when cut.
pub fn clip(s: &str) -> String {
    if s.len() <= MAX_QUOTE {
        return s.to_owned();
    }
    let mut end = MAX_QUOTE;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}…", &s[..end])
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn long_quoted_values_are_clipped_on_a_character_boundary() {
        let long = "é".repeat(600);
        let clipped = clip(&long);
        assert!(clipped.len() <= MAX_QUOTE + '…'.len_utf8());
        assert!(clipped.ends_with('…'));
        assert_eq!(clip("short"), "short");
    }

    #[test]
    fn wrong_type_quotes_the_value_as_json() {
        let err = StageError::wrong_type("humidity", &json!("wet"), "a float");
        assert_eq!(err.reason(), "wrong_type");
        assert_eq!(
            err.to_string(),
            "field \"humidity\": cannot use \"wet\" as a float"
        );
    }
}
