//! Pipelines: which messages become which documents. One pipeline per YAML file in
//! `pipelines/`, files taken in file-name order, and the **first pipeline whose `topics` match
//! wins** (hence `zz-default.yaml` for the catch-all). There is no fan-out to several
//! pipelines: one message, one document (or one drop, or one dead letter), one ack.
//!
//! A pipeline file, in the style of Elasticsearch ingest processors:
//!
//! ```yaml
//! name: telemetry                   # optional; defaults to the file stem
//! topics: ["sensors/+/+/telemetry"] # MQTT filters, also what mqtt2es subscribes to
//! payload: json                     # json (object required) | text | auto, or
//!                                   # {format: json, non_object: wrap} to keep `21.5` as {value: 21.5}
//! stages:                           # run in order; each is a one-key mapping
//!   - topic: {pattern: "sensors/{site}/{device}/telemetry", target: optional.object}
//!   - rename: {from: temp_c, to: temperature_c, ignore_missing: false, override: false}
//!   - set: {field: device_name, value: "{{site}}-{{device}}", override: true}  # or copy_from: path
//!   - remove: {fields: [debug, raw], ignore_missing: false}
//!   - convert: {field: humidity, type: float, ignore_missing: false}     # int, float, bool, string
//!   - timestamp: {field: ts, formats: [rfc3339, epoch_s, epoch_ms, "%Y-%m-%d %H:%M:%S"],
//!                 target: "@timestamp", max_past_s: 604800, max_future_s: 300,
//!                 on_skew: receive_time}                                 # or reject
//!   - scale: {field: temp_f, target: temperature_c, from_unit: fahrenheit, to_unit: celsius,
//!             decimals: 2}                                               # or multiply/add
//!   - drop: {if: {field: status, equals: test}}  # not_equals, exists, missing, gt, gte, lt, lte, all, any
//!   - route: {index: "mqtt2es-telemetry-{{site}}"}
//!   - id: {fields: [device, msg_id], encoding: hex}   # or base64url; default: the reading id
//! ```
//!
//! Before the stages run, every document gets `@timestamp` (the receive time) and
//! `mqtt.{topic, qos, retain, user_properties}`. Field paths are dotted; `set`, `rename` and
//! `topic` create missing intermediate objects. A stage that meets a missing field rejects the
//! message (`missing_field`) unless it says `ignore_missing: true`. Index names are confined to
//! the configured prefix and checked (`invalid_index`). Unknown keys anywhere are errors.
//! After the stages, `mqtt2es.reading_id` is set (no stage can change it): the reading's own
//! id, also its document's `_id` unless an `id` stage names fields.
//!
//! Processing is pure: no I/O, and "now" is the message's receive time.
//!
//! - `load`      — YAML files into checked pipelines; `error` — load and stage errors.
//! - `run`       — one pipeline applied to a message; `decode` — its `payload:` policy.
//! - `stages`    — one file per stage; `condition` — `drop`'s conditions.
//! - `path`, `template`, `index` — field paths, `{{field}}` templates, confined index names.
//! - `golden`    — tests only: the shipped pipelines against their fixtures.

mod condition;
mod decode;
mod error;
mod index;
mod load;
mod path;
mod run;
mod stages;
mod template;

#[cfg(test)]
mod golden;
#[cfg(test)]
mod tests;

use std::fs;
use std::path::Path;

pub use self::decode::DecodeLimits;
pub use self::error::{ConfigError, LoadError, StageError};
pub use self::index::IndexPolicy;
pub use self::path::FieldPath;
pub use self::run::Pipeline;
use crate::document::{Processed, Rejection};
use crate::record::Message;
use crate::topic::TopicFilter;

/// All loaded pipelines, in file-name order.
#[derive(Debug, Clone, PartialEq)]
pub struct Pipelines {
    pipelines: Vec<Pipeline>,
}

impl Pipelines {
    /// Loads every `*.yaml` and `*.yml` file in `dir` (not recursing, skipping dot-files),
    /// sorted by file name. No pipelines at all is an error.
    pub fn load_dir(
        dir: &Path,
        policy: &IndexPolicy,
        limits: &DecodeLimits,
    ) -> Result<Pipelines, LoadError> {
        policy.check()?;
        limits.check()?;
        let read_dir = |source| LoadError::ReadDir {
            dir: dir.to_owned(),
            source,
        };
        let mut files = Vec::new();
        for entry in fs::read_dir(dir).map_err(read_dir)? {
            let path = entry.map_err(read_dir)?.path();
            let name = path
                .file_name()
                .and_then(|n| n.to_str())
                .unwrap_or_default();
            let yaml = name.ends_with(".yaml") || name.ends_with(".yml");
            if yaml && !name.starts_with('.') && path.is_file() {
                files.push(path);
            }
        }
        files.sort();
        let pipelines = files
            .iter()
            .map(|file| {
                let yaml = fs::read_to_string(file).map_err(|source| LoadError::ReadFile {
                    file: file.clone(),
                    source,
                })?;
                load::pipeline(&file.display().to_string(), &yaml, policy, limits)
            })
            .collect::<Result<Vec<_>, _>>()?;
        if pipelines.is_empty() {
            return Err(LoadError::NoPipelines {
                dir: dir.to_owned(),
            });
        }
        Pipelines::new(pipelines)
    }

    /// Parses one pipeline from YAML text; `name_for_errors` is the file name errors mention.
    pub fn from_yaml(
        name_for_errors: &str,
        yaml: &str,
        policy: &IndexPolicy,
        limits: &DecodeLimits,
    ) -> Result<Pipeline, LoadError> {
        load::pipeline(name_for_errors, yaml, policy, limits)
    }

    /// Pipelines in match order; their names must be unique.
    pub fn new(pipelines: Vec<Pipeline>) -> Result<Pipelines, LoadError> {
        for (i, p) in pipelines.iter().enumerate() {
            if let Some(first) = pipelines[..i].iter().find(|q| q.name == p.name) {
                return Err(LoadError::DuplicateName {
                    file: p.file.clone(),
                    name: p.name.to_string(),
                    other: first.file.clone(),
                });
            }
        }
        Ok(Pipelines { pipelines })
    }

    /// Every pipeline's `topics`, deduplicated, in order: what to subscribe to.
    pub fn topic_filters(&self) -> Vec<String> {
        let mut unique: Vec<&TopicFilter> = Vec::new();
        for filter in self.pipelines.iter().flat_map(|p| p.topics()) {
            if !unique.iter().any(|f| f.as_str() == filter.as_str()) {
                unique.push(filter);
            }
        }
        // `#` next to `sensors/+/+/telemetry`: subscribing to both only invites duplicates.
        unique
            .iter()
            .filter(|filter| {
                !unique
                    .iter()
                    .any(|other| other.as_str() != filter.as_str() && other.covers(filter))
            })
            .map(|filter| filter.as_str().to_owned())
            .collect()
    }

    /// Runs the message through the first pipeline whose topics match it.
    pub fn process(&self, message: &Message) -> Processed {
        match self.pipelines.iter().find(|p| p.matches(&message.topic)) {
            Some(pipeline) => pipeline.process(message),
            None => Processed::Rejected(Rejection {
                pipeline: None,
                stage: None,
                reason: "no_pipeline".to_owned(),
                detail: format!(
                    "no pipeline subscribes to topic \"{}\"",
                    error::clip(&message.topic)
                ),
            }),
        }
    }

    /// Runs the message through the named pipeline, ignoring its topics (for `mqtt2es try`).
    /// `None` when no pipeline has that name.
    pub fn process_with(&self, pipeline_name: &str, message: &Message) -> Option<Processed> {
        self.get(pipeline_name).map(|p| p.process(message))
    }

    pub fn get(&self, name: &str) -> Option<&Pipeline> {
        self.pipelines.iter().find(|p| &*p.name == name)
    }

    /// Pipeline names in match order.
    pub fn names(&self) -> Vec<&str> {
        self.pipelines.iter().map(Pipeline::name).collect()
    }
}
