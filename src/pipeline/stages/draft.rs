//! What every stage works on and with: the draft document, the flow after a stage, and the
//! helpers stages share to read their options and set fields. Apart from `mod.rs`, so that the
//! stages import it and `mod.rs` imports the stages, never the other way round.

use serde::de::DeserializeOwned;
use serde_json::Value;

use crate::object::Object;
use crate::pipeline::error::{ConfigError, StageError};
use crate::pipeline::path::FieldPath;

/// The document as stages see it, with the routing decisions made so far.
#[derive(Debug, Clone, PartialEq)]
pub struct Draft {
    pub source: Object,
    /// Set by `route`; `None` means the policy's default index.
    pub index: Option<String>,
    /// Set by `id`; `None` lets Elasticsearch choose.
    pub id: Option<String>,
}

/// What the pipeline does after a stage.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Flow {
    Continue,
    Drop,
}

/// Deserializes a stage's options; serde's messages already name and quote the bad key.
pub(super) fn options<T: DeserializeOwned>(config: Value) -> Result<T, ConfigError> {
    serde_json::from_value(config).map_err(|e| ConfigError::Shape(e.to_string()))
}

pub(super) fn path(key: &str, raw: &str) -> Result<FieldPath, ConfigError> {
    FieldPath::parse(raw).map_err(|source| ConfigError::Path {
        key: key.to_owned(),
        source,
    })
}

/// Sets a field, turning a non-object parent into a rejection.
pub(super) fn put(draft: &mut Draft, field: &FieldPath, value: Value) -> Result<(), StageError> {
    field
        .insert(&mut draft.source, value)
        .map_err(|conflict| StageError::PathConflict {
            path: field.to_string(),
            parent: conflict.parent,
        })
}
