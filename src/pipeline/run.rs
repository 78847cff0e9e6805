//! One loaded pipeline and what it does to a message: decode, add MQTT metadata, run the
//! stages in order, and settle on a document, a drop or a rejection.
//!
//! Metadata goes in *before* the stages, so stages can read it (`{{mqtt.topic}}`) and replace
//! it (a `timestamp` stage writes `@timestamp`). It also means metadata wins over payload keys
//! of the same name: a payload's own `mqtt` or `@timestamp` is overwritten, because every
//! document in a data stream must have a well-typed `@timestamp`. Devices send their own time
//! under another key (`ts`) and a `timestamp` stage moves it, as the shipped pipelines do.

use std::sync::Arc;

use serde_json::{Map, Value, json};

use super::decode::{DecodeLimits, Payload};
use super::error::StageError;
use super::stages::{Draft, Flow, Stage};
use crate::document::{Document, Processed, Rejection, payload_digest};
use crate::object::Object;
use crate::reading;
use crate::record::Message;
use crate::topic::TopicFilter;

#[derive(Debug, Clone, PartialEq)]
pub struct Pipeline {
    pub(super) name: Arc<str>,
    /// Where it was loaded from, for errors about it.
    pub(super) file: String,
    pub(super) topics: Vec<TopicFilter>,
    pub(super) payload: Payload,
    pub(super) limits: DecodeLimits,
    pub(super) stages: Vec<Stage>,
    pub(super) default_index: String,
}

impl Pipeline {
    pub fn name(&self) -> &str {
        &self.name
    }

    pub fn topics(&self) -> &[TopicFilter] {
        &self.topics
    }

    pub fn matches(&self, topic: &str) -> bool {
        self.topics.iter().any(|filter| filter.matches(topic))
    }

    /// Runs the message through this pipeline, whether or not its topics match.
    pub fn process(&self, message: &Message) -> Processed {
        let source = match self.payload.decode(&message.payload, &self.limits) {
            Ok(source) => source,
            Err(err) => return self.reject("decode", &err),
        };
        let mut draft = Draft {
            source,
            index: None,
            id: None,
        };
        add_metadata(&mut draft.source, message);
        for stage in &self.stages {
            match stage.apply(&mut draft, message) {
                Ok(Flow::Continue) => {}
                Ok(Flow::Drop) => {
                    return Processed::Dropped {
                        pipeline: self.name.to_string(),
                        stage: stage.key().to_owned(),
                    };
                }
                Err(err) => return self.reject(stage.key(), &err),
            }
        }
        add_reading_id(&mut draft.source, message, draft.id.is_some());
        Processed::Document(Document {
            pipeline: Arc::clone(&self.name),
            index: draft.index.unwrap_or_else(|| self.default_index.clone()),
            id: draft.id,
            source: draft.source,
        })
    }

    fn reject(&self, stage: &str, err: &StageError) -> Processed {
        Processed::Rejected(Rejection {
            pipeline: Some(self.name.to_string()),
            stage: Some(stage.to_owned()),
            reason: err.reason().to_owned(),
            detail: err.to_string(),
        })
    }
}

/// `@timestamp` (receive time, RFC 3339 UTC with milliseconds) and `mqtt.{topic, qos, retain,
/// user_properties}`. User properties are a list of `{key, value}` objects: MQTT allows a key
/// to repeat, and keys chosen by devices must not become Elasticsearch field names.
fn add_metadata(source: &mut Object, message: &Message) {
    let mut mqtt = Map::new();
    mqtt.insert("topic".to_owned(), Value::from(message.topic.as_str()));
    mqtt.insert("qos".to_owned(), Value::from(message.qos.level()));
    mqtt.insert("retain".to_owned(), Value::from(message.retain));
    if !message.user_properties.is_empty() {
        let properties = message
            .user_properties
            .iter()
            .map(|(key, value)| json!({"key": key, "value": value}))
            .collect();
        mqtt.insert("user_properties".to_owned(), Value::Array(properties));
    }
    let received = reading::rfc3339(message.received_at);
    source.insert("@timestamp", Value::String(received));
    source.insert("mqtt", Value::Object(mqtt));
}

/// `mqtt2es.reading_id`, after the stages so that none can change or remove it: a 409 from
/// Elasticsearch is "already stored" only when the stored document carries the same one, or,
/// for an id a pipeline made from fields, the same `mqtt2es.payload_digest`.
fn add_reading_id(source: &mut Object, message: &Message, field_id: bool) {
    let own = source.get_or_insert_with("mqtt2es", || Value::Object(Map::new()));
    if !own.is_object() {
        *own = Value::Object(Map::new());
    }
    if let Value::Object(own) = own {
        own.insert(
            "reading_id".to_owned(),
            Value::String(message.reading.to_string()),
        );
        if field_id {
            let digest = payload_digest(&message.topic, &message.payload);
            own.insert("payload_digest".to_owned(), Value::String(digest));
        }
    }
}
