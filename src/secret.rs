//! A string that must never reach a log line: passwords, API keys, JWT signing keys.
//!
//! The protection lives in the type rather than in care at each call site: `Debug` and
//! `Display` both print `[redacted]`, so `tracing::debug!(?config)` or an `anyhow` chain that
//! formats a settings struct cannot leak it. Reading the value takes an explicit
//! [`Secret::expose`], which is easy to grep for. It deserializes from a plain string so config
//! files and `MQTT2ES_` variables need no special syntax; it serializes as `[redacted]`, so a
//! settings struct written out (the configuration reference's test) cannot leak it either.

use std::fmt;

use serde::{Deserialize, Serialize, Serializer};

/// A secret string; see the module docs.
#[derive(Clone, PartialEq, Eq, Deserialize)]
#[serde(transparent)]
pub struct Secret(String);

impl Secret {
    pub fn new(value: impl Into<String>) -> Self {
        Secret(value.into())
    }

    /// The secret value itself. Call it only where the value is handed to the party that
    /// checks it (an HTTP auth header, a password comparison), never for logging.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

const REDACTED: &str = "[redacted]";

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(REDACTED)
    }
}

impl fmt::Display for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(REDACTED)
    }
}

impl Serialize for Secret {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(REDACTED)
    }
}

impl From<String> for Secret {
    fn from(value: String) -> Self {
        Secret(value)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_secret_prints_redacted_in_debug_and_display() {
        let secret = Secret::new("hunter2");
        assert_eq!(format!("{secret:?}"), "[redacted]");
        assert_eq!(format!("{secret}"), "[redacted]");
    }

    #[test]
    fn a_struct_holding_a_secret_does_not_leak_it_through_derived_debug() {
        #[derive(Debug)]
        #[allow(dead_code)] // only formatted
        struct Settings {
            password: Secret,
        }
        let shown = format!(
            "{:?}",
            Settings {
                password: Secret::new("hunter2")
            }
        );
        assert!(!shown.contains("hunter2"), "{shown}");
    }

    #[test]
    fn a_serialized_secret_is_redacted() {
        let written = serde_json::to_string(&Secret::new("hunter2")).expect("a json string");
        assert_eq!(written, "\"[redacted]\"");
    }

    #[test]
    fn a_secret_deserializes_from_a_plain_string_and_exposes_it_on_request() {
        let secret: Secret = serde_json::from_str("\"hunter2\"").expect("a json string");
        assert_eq!(secret.expose(), "hunter2");
    }
}
