//! What a settings section says when it is wrong: the one error type every module's settings
//! (`broker/settings.rs`, `upstream/settings.rs`, `metrics/settings.rs`, `spool/settings.rs`, ...)
//! reports with, at the bottom of the crate so that `config` (which gathers the sections) and
//! the modules (which own and check theirs) do not import each other.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Deserializer};
use thiserror::Error;

use crate::secret::Secret;

#[derive(Debug, Error)]
pub enum SettingsError {
    #[error("config file {path:?} not found")]
    Missing { path: PathBuf },
    #[error("{0}")]
    Invalid(String),
    #[error("{key}: {message}")]
    Key { key: &'static str, message: String },
    #[error("{key}: cannot read {path:?}: {source}")]
    File {
        key: &'static str,
        path: PathBuf,
        source: std::io::Error,
    },
}

/// What is wrong with `key`, in words.
pub fn key_error(key: &'static str, message: impl Into<String>) -> SettingsError {
    SettingsError::Key {
        key,
        message: message.into(),
    }
}

/// Reads a secret from a file, trimming the trailing newline editors and `echo` add.
pub fn read_secret(key: &'static str, path: &Path) -> Result<Secret, SettingsError> {
    let text = std::fs::read_to_string(path).map_err(|source| SettingsError::File {
        key,
        path: path.to_path_buf(),
        source,
    })?;
    Ok(Secret::new(text.trim_end_matches(['\n', '\r'])))
}

/// For a section whose keys are all optional: written with nothing under it (every key
/// commented out, as the shipped `mqtt2es.yaml` does), YAML reads it as null; that means the
/// defaults, not an error.
pub fn null_is_default<'de, D, T>(deserializer: D) -> Result<T, D::Error>
where
    D: Deserializer<'de>,
    T: Default + Deserialize<'de>,
{
    Ok(Option::<T>::deserialize(deserializer)?.unwrap_or_default())
}
