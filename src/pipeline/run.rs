//! One loaded pipeline and what it does to a message: decode, add MQTT metadata, run the
//! stages in order, and settle on a document, a drop or a rejection.
//!
//! Metadata goes in *before* the stages, so stages can read it (`{{mqtt.topic}}`) and replace
//! it (a `timestamp` stage writes `@timestamp`). It also means metadata wins over payload keys
//! of the same name: a payload's own `mqtt` or `@timestamp` is overwritten, because every
//! document in a data stream must have a well-typed `@timestamp`. Devices send their own time
//! under another key (`ts`) and a `timestamp` stage moves it, as the shipped pipelines do.
//!
//! `mqtt`, and `mqtt2es` when it holds only the reading id, are left to the bulk encoder
//! ([`Deferred`]) when no stage can see them: the stored document is the same, without two
//! `serde_json` objects built per reading only to be written out and freed.

use std::sync::Arc;

use serde_json::{Map, Value};

use super::decode::{DecodeLimits, Payload};
use super::error::StageError;
use super::stages::{Draft, Flow, Stage};
use crate::document::{Deferred, Document, Processed, Rejection, payload_digest, write_mqtt};
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
    /// Whether any stage's options name `mqtt` (see `load::names_mqtt`): then the metadata is
    /// in the document before the stages run; otherwise the bulk encoder writes it.
    pub(super) stages_name_mqtt: bool,
    /// Whether a `timestamp` stage replaces `@timestamp` before any stage could read it (see
    /// `load::receive_time_overwritten`): then it starts as a placeholder, in the place the
    /// receive time would have had, rather than the receive time formatted for nothing.
    pub(super) receive_time_overwritten: bool,
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
        let mut deferred = Deferred::default();
        if self.stages_name_mqtt {
            add_metadata(&mut draft.source, message);
        } else {
            // Written by the encoder from the message; a payload's own `mqtt` is replaced as
            // it would be here.
            draft.source.remove("mqtt");
            deferred.mqtt = true;
        }
        if self.receive_time_overwritten {
            draft.source.insert("@timestamp", Value::Null);
        } else {
            add_timestamp(&mut draft.source, message);
        }
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
        let field_id = draft.id.is_some();
        if field_id || draft.source.get("mqtt2es").is_some() {
            add_reading_id(&mut draft.source, message, field_id);
        } else {
            deferred.reading_id = true;
        }
        Processed::Document(Document {
            pipeline: Arc::clone(&self.name),
            index: draft.index.unwrap_or_else(|| self.default_index.clone()),
            id: draft.id,
            source: draft.source,
            deferred,
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

/// `mqtt.{topic, qos, retain, user_properties}`, as the encoder would write it
/// ([`write_mqtt`]), for pipelines whose stages read or change it.
fn add_metadata(source: &mut Object, message: &Message) {
    let mut json = Vec::with_capacity(128);
    write_mqtt(&mut json, message);
    let mqtt: Value = serde_json::from_slice(&json).expect("write_mqtt writes JSON");
    source.insert("mqtt", mqtt);
}

/// `@timestamp`: the receive time, RFC 3339 UTC, until a `timestamp` stage sets the device's.
fn add_timestamp(source: &mut Object, message: &Message) {
    let received = reading::rfc3339(message.received_at);
    source.insert("@timestamp", Value::String(received));
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
