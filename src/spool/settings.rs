//! The `delivery:` section: when a reading is acknowledged, and the spool's place and bounds.
//!
//! ```yaml
//! delivery:
//!   mode: spool          # direct (the default) | spool
//!   spool: { dir: mqtt2es-spool, max_bytes: 1073741824, on_full: block }
//! ```

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use crate::settings::SettingsError;

/// When a QoS 1/2 reading is acknowledged.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Delivery {
    /// Once Elasticsearch stored it (or it was dead-lettered): nothing on local disk, and
    /// devices hold their readings while Elasticsearch is away.
    #[default]
    Direct,
    /// Once it is fsynced in the local spool; a shipper drains the spool into Elasticsearch.
    Spool,
}

/// What a full spool does.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum OnFull {
    /// Stop acknowledging: devices hold their readings, as in direct delivery.
    #[default]
    Block,
    /// Delete the oldest records not yet shipped, and count them.
    DropOldest,
}

impl OnFull {
    pub fn as_str(self) -> &'static str {
        match self {
            OnFull::Block => "block",
            OnFull::DropOldest => "drop_oldest",
        }
    }
}

#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct DeliverySettings {
    pub mode: Delivery,
    /// Used with `mode: spool`.
    pub spool: SpoolSettings,
}

impl DeliverySettings {
    pub fn resolve_paths(&mut self, resolve: &dyn Fn(&mut PathBuf)) {
        resolve(&mut self.spool.dir);
    }

    pub fn check(&self) -> Result<(), SettingsError> {
        match self.mode {
            Delivery::Direct => Ok(()),
            Delivery::Spool => self.spool.check(),
        }
    }

    /// The spool's settings when spooling.
    pub fn spool(&self) -> Option<&SpoolSettings> {
        (self.mode == Delivery::Spool).then_some(&self.spool)
    }
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct SpoolSettings {
    /// The spool's directory; relative paths are relative to the config file.
    pub dir: PathBuf,
    /// The most the spool's files may hold.
    pub max_bytes: u64,
    pub on_full: OnFull,
}

/// The smallest spool that can be split into enough segments to free room a segment at a time.
const MIN_BYTES: u64 = 1 << 20;

impl Default for SpoolSettings {
    fn default() -> Self {
        SpoolSettings {
            dir: PathBuf::from("mqtt2es-spool"),
            max_bytes: 1 << 30,
            on_full: OnFull::Block,
        }
    }
}

impl SpoolSettings {
    pub fn check(&self) -> Result<(), SettingsError> {
        if self.max_bytes < MIN_BYTES {
            return Err(SettingsError::Key {
                key: "delivery.spool.max_bytes",
                message: format!(
                    "{} is below the least a spool needs, {MIN_BYTES} (1 MiB)",
                    self.max_bytes
                ),
            });
        }
        Ok(())
    }

    /// Segments are an eighth of the spool (within 64 KiB … 64 MiB): room is freed a segment
    /// at a time, so a full spool frees an eighth of itself at most, and opening reads a
    /// segment at a time.
    pub fn segment_bytes(&self) -> u64 {
        (self.max_bytes / 8).clamp(64 << 10, 64 << 20)
    }
}
