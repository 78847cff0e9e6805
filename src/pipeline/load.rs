//! Pipeline files into checked [`Pipeline`]s: every string becomes a typed value here, and
//! every error names the file, the stage (`stages[2] (convert)`), the key and the value.
//!
//! YAML is read with figment's YAML format (the parser the config already depends on) into
//! loose JSON values first, and each stage's options are then deserialized on their own. That
//! two-step shape is what lets an error say which stage it is about: serde alone would report
//! "data did not match any variant" for a typo in the fifth stage of an externally tagged list.

use std::path::Path;

use figment::providers::{Format, Yaml};
use serde::Deserialize;
use serde_json::Value;

use super::decode::{DecodeLimits, Payload};
use super::error::{ConfigError, LoadError};
use super::index::IndexPolicy;
use super::run::Pipeline;
use super::stages::Stage;
use crate::topic::TopicFilter;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Raw {
    name: Option<String>,
    topics: Vec<String>,
    payload: Option<Value>,
    #[serde(default)]
    stages: Vec<Value>,
}

/// Parses one pipeline. `file` names it in errors and, by its stem, gives the default name.
pub fn pipeline(
    file: &str,
    yaml: &str,
    policy: &IndexPolicy,
    limits: &DecodeLimits,
) -> Result<Pipeline, LoadError> {
    policy.check()?;
    limits.check()?;
    let raw: Raw = Yaml::from_str(yaml).map_err(|e| LoadError::Syntax {
        file: file.to_owned(),
        message: e.to_string(),
    })?;
    let at = |source: ConfigError| LoadError::Pipeline {
        file: file.to_owned(),
        source: Box::new(source),
    };
    let stem = Path::new(file)
        .file_stem()
        .and_then(|s| s.to_str())
        .unwrap_or(file);
    let name = raw.name.unwrap_or_else(|| stem.to_owned());
    let valid = |c: char| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-');
    if name.is_empty() || !name.chars().all(valid) {
        return Err(at(ConfigError::invalid(
            "name",
            format!("invalid pipeline name \"{name}\"; use letters, digits, '.', '_' and '-'"),
        )));
    }
    if raw.topics.is_empty() {
        return Err(at(ConfigError::invalid(
            "topics",
            "needs at least one topic filter",
        )));
    }
    let topics = raw
        .topics
        .iter()
        .enumerate()
        .map(|(i, t)| {
            TopicFilter::parse(t).map_err(|source| ConfigError::Topic {
                key: format!("topics[{i}]"),
                source,
            })
        })
        .collect::<Result<Vec<_>, _>>()
        .map_err(at)?;
    let payload = Payload::parse(raw.payload).map_err(at)?;
    let stages_name_mqtt = raw.stages.iter().any(names_mqtt);
    // Stages up to the first that names `@timestamp` (all of them if none does).
    let timestamp_unnamed = raw
        .stages
        .iter()
        .position(|config| mentions(config, &|text| text.contains("@timestamp")))
        .map_or(raw.stages.len(), |first| first + 1);
    let stages = raw
        .stages
        .into_iter()
        .enumerate()
        .map(|(index, config)| stage(file, index, config, policy))
        .collect::<Result<Vec<_>, _>>()?;
    let receive_time_overwritten = receive_time_overwritten(&stages[..timestamp_unnamed]);
    Ok(Pipeline {
        name: name.into(),
        file: file.to_owned(),
        topics,
        payload,
        limits: limits.clone(),
        stages,
        stages_name_mqtt,
        receive_time_overwritten,
        default_index: policy.default_index.clone(),
    })
}

/// Whether a stage's YAML names `mqtt` anywhere (a field path, a template, a topic capture, a
/// condition; as a key or inside a string), other than as part of `mqtt2es`. Every path a stage
/// reads or writes is spelled out in its options, so a stage that does not name `mqtt` cannot
/// see or change the metadata, and the pipeline may leave it to the encoder. Erring the other
/// way (a value that merely contains the word) only costs the deferral.
fn names_mqtt(config: &Value) -> bool {
    mentions(config, &|text| {
        text.match_indices("mqtt")
            .any(|(at, _)| !text[at + 4..].starts_with("2es"))
    })
}

/// Whether any key or string in a stage's YAML is one that `names` accepts.
fn mentions(config: &Value, names: &dyn Fn(&str) -> bool) -> bool {
    match config {
        Value::String(text) => names(text),
        Value::Array(items) => items.iter().any(|item| mentions(item, names)),
        Value::Object(map) => map
            .iter()
            .any(|(key, value)| names(key) || mentions(value, names)),
        Value::Null | Value::Bool(_) | Value::Number(_) => false,
    }
}

/// Whether the receive time a document's `@timestamp` starts as is always replaced before any
/// stage could read it, given the stages up to the first whose YAML names `@timestamp`: one of
/// them is a `timestamp` stage that writes it (which it always does, with the device's time or
/// the receive time) and reads neither its field nor its fallback from there. Stages have no
/// conditions, so that stage runs for every document not dropped or rejected before it (neither
/// of which is stored). The receive time is then not formatted twice per reading (issue 9).
fn receive_time_overwritten(stages_before_a_reader: &[Stage]) -> bool {
    stages_before_a_reader.iter().any(
        |stage| matches!(stage, Stage::Timestamp(timestamp) if timestamp.only_writes("@timestamp")),
    )
}

fn stage(
    file: &str,
    index: usize,
    config: Value,
    policy: &IndexPolicy,
) -> Result<Stage, LoadError> {
    let shape = |message: String| LoadError::StageShape {
        file: file.to_owned(),
        index,
        message,
    };
    let (key, options) = match config {
        Value::Object(map) if map.len() == 1 => map
            .into_iter()
            .next()
            .ok_or_else(|| shape("expected one stage".to_owned()))?,
        other => {
            return Err(shape(format!(
                "expected a mapping with one stage key like `rename: {{from: a, to: b}}`, found {}",
                super::error::show(&other)
            )));
        }
    };
    match Stage::parse(&key, options, policy) {
        None => Err(shape(format!(
            "unknown stage \"{key}\"; expected one of {}",
            Stage::KEYS
        ))),
        Some(parsed) => parsed.map_err(|source| LoadError::Stage {
            file: file.to_owned(),
            index,
            stage: key,
            source: Box::new(source),
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn load(yaml: &str) -> Result<Pipeline, LoadError> {
        pipeline(
            "pipelines/t.yaml",
            yaml,
            &IndexPolicy::default(),
            &DecodeLimits::default(),
        )
    }

    fn error(yaml: &str) -> String {
        match load(yaml) {
            Ok(_) => panic!("expected an error for {yaml}"),
            Err(err) => err.to_string(),
        }
    }

    #[test]
    fn the_name_defaults_to_the_file_stem() {
        let p = load("topics: ['#']").expect("valid");
        assert_eq!(&*p.name, "t");
        let p = load("name: other\ntopics: ['#']").expect("valid");
        assert_eq!(&*p.name, "other");
    }

    #[test]
    fn stage_errors_name_the_file_the_stage_the_key_and_the_value() {
        let yaml = "topics: ['#']\nstages:\n  - rename: {from: a, to: b}\n  - remove: {fields: [x]}\n  - convert: {field: h, type: integer}\n";
        assert_eq!(
            error(yaml),
            "pipelines/t.yaml: stages[2] (convert): unknown type \"integer\"; expected one of int, float, bool, string"
        );
    }

    #[test]
    fn unknown_keys_are_errors_at_every_level() {
        assert!(
            error("topics: ['#']\nstage: []").contains("pipelines/t.yaml: unknown field `stage`")
        );
        assert_eq!(
            error("topics: ['#']\nstages:\n  - rename: {from: a, to: b, force: true}"),
            "pipelines/t.yaml: stages[0] (rename): unknown field `force`, expected one of `from`, `to`, `ignore_missing`, `override`"
        );
    }

    #[test]
    fn unknown_stages_are_errors_listing_the_known_ones() {
        assert_eq!(
            error("topics: ['#']\nstages:\n  - renam: {from: a, to: b}"),
            "pipelines/t.yaml: stages[0]: unknown stage \"renam\"; expected one of topic, rename, set, remove, convert, timestamp, scale, drop, route, id"
        );
    }

    #[test]
    fn a_stage_must_be_a_mapping_with_one_key() {
        let err = error(
            "topics: ['#']\nstages:\n  - rename: {from: a, to: b}\n    remove: {fields: [x]}",
        );
        assert!(
            err.starts_with("pipelines/t.yaml: stages[0]: expected a mapping with one stage key"),
            "{err}"
        );
        let err = error("topics: ['#']\nstages: [rename]");
        assert!(err.contains("found \"rename\""), "{err}");
    }

    #[test]
    fn topics_are_required_and_checked() {
        assert!(error("name: x").contains("missing field `topics`"));
        assert_eq!(
            error("topics: []"),
            "pipelines/t.yaml: topics: needs at least one topic filter"
        );
        assert_eq!(
            error("topics: ['a/#', 'a/b#']"),
            "pipelines/t.yaml: topics[1]: topic filter \"a/b#\": `#` must be a whole level"
        );
    }

    #[test]
    fn bad_names_and_payloads_are_errors() {
        assert!(
            error("name: 'a b'\ntopics: ['#']").contains("name: invalid pipeline name \"a b\"")
        );
        assert!(
            error("topics: ['#']\npayload: xml")
                .contains("pipelines/t.yaml: unknown payload format \"xml\"")
        );
    }

    #[test]
    fn yaml_syntax_errors_name_the_file() {
        let err = error("topics: [unclosed");
        assert!(err.starts_with("pipelines/t.yaml: "), "{err}");
        let err = error("");
        assert!(err.starts_with("pipelines/t.yaml: "), "{err}");
    }

    #[test]
    fn an_invalid_policy_or_limit_is_an_error() {
        let policy = IndexPolicy {
            prefix: String::new(),
            default_index: "x".to_owned(),
        };
        let err = pipeline("t.yaml", "topics: ['#']", &policy, &DecodeLimits::default());
        assert!(matches!(err, Err(LoadError::Policy(_))));
        let limits = DecodeLimits { max_depth: 0 };
        let err = pipeline("t.yaml", "topics: ['#']", &IndexPolicy::default(), &limits);
        assert!(matches!(err, Err(LoadError::MaxDepth(0))));
    }

    #[test]
    fn a_stage_names_mqtt_in_any_key_or_string_but_not_as_part_of_mqtt2es() {
        let names = |yaml: &str| names_mqtt(&serde_yaml_value(yaml));
        assert!(!names("route: {index: 'mqtt2es-telemetry-{{site}}'}"));
        assert!(!names("remove: {fields: [mqtt2es.timestamp_fallback, t]}"));
        assert!(names("set: {field: origin, value: '{{ mqtt.topic }}'}"));
        assert!(names(
            "drop: {if: {all: [{field: mqtt.retain, equals: true}]}}"
        ));
        assert!(names("topic: {pattern: 'a/{mqtt}', target: x}"));
        assert!(names("set: {field: x, value: {mqtt: 1}}"));
        assert!(names("rename: {from: a, to: mqtt2esmqtt}"));
    }

    fn serde_yaml_value(yaml: &str) -> Value {
        Yaml::from_str::<Value>(yaml).expect("valid YAML")
    }
}
