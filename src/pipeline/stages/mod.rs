//! The stages a pipeline runs, one variant and one file per stage, each named after its YAML
//! key (`- rename: {from: a, to: b}` is [`Rename`]).
//!
//! A closed enum rather than a trait-object registry: the set of stages is ours, a `match`
//! shows every one of them, and adding a stage is a file, a variant and three match arms
//! (parse, name, apply). What the stages share (the draft document, option helpers) is `draft`.
//! Stages are pure: they see the draft document and the message, never the clock or the network.

mod convert;
mod draft;
mod drop;
mod id;
mod remove;
mod rename;
mod route;
mod scale;
mod set;
mod timestamp;
mod topic;

use serde_json::Value;

pub use self::convert::Convert;
pub use self::draft::{Draft, Flow};
pub use self::drop::Drop;
pub use self::id::Id;
pub use self::remove::Remove;
pub use self::rename::Rename;
pub use self::route::Route;
pub use self::scale::Scale;
pub use self::set::Set;
pub use self::timestamp::Timestamp;
pub use self::topic::Topic;
use super::error::{ConfigError, StageError};
use super::index::IndexPolicy;
use crate::record::Message;

#[derive(Debug, Clone, PartialEq)]
pub enum Stage {
    Topic(Topic),
    Rename(Rename),
    Set(Set),
    Remove(Remove),
    Convert(Convert),
    Timestamp(Timestamp),
    Scale(Scale),
    Drop(Drop),
    Route(Route),
    Id(Id),
}

impl Stage {
    /// Every stage key, in the order the docs list them.
    pub const KEYS: &'static str =
        "topic, rename, set, remove, convert, timestamp, scale, drop, route, id";

    /// `None` when `key` names no stage.
    pub fn parse(
        key: &str,
        config: Value,
        policy: &IndexPolicy,
    ) -> Option<Result<Stage, ConfigError>> {
        let stage = match key {
            "topic" => Topic::parse(config).map(Stage::Topic),
            "rename" => Rename::parse(config).map(Stage::Rename),
            "set" => Set::parse(config).map(Stage::Set),
            "remove" => Remove::parse(config).map(Stage::Remove),
            "convert" => Convert::parse(config).map(Stage::Convert),
            "timestamp" => Timestamp::parse(config).map(Stage::Timestamp),
            "scale" => Scale::parse(config).map(Stage::Scale),
            "drop" => Drop::parse(config).map(Stage::Drop),
            "route" => Route::parse(config, policy).map(Stage::Route),
            "id" => Id::parse(config).map(Stage::Id),
            _ => return None,
        };
        Some(stage)
    }

    /// The stage's YAML key, which is also the `stage` of its rejections.
    pub fn key(&self) -> &'static str {
        match self {
            Stage::Topic(_) => "topic",
            Stage::Rename(_) => "rename",
            Stage::Set(_) => "set",
            Stage::Remove(_) => "remove",
            Stage::Convert(_) => "convert",
            Stage::Timestamp(_) => "timestamp",
            Stage::Scale(_) => "scale",
            Stage::Drop(_) => "drop",
            Stage::Route(_) => "route",
            Stage::Id(_) => "id",
        }
    }

    pub fn apply(&self, draft: &mut Draft, message: &Message) -> Result<Flow, StageError> {
        match self {
            Stage::Topic(s) => s.apply(draft, message)?,
            Stage::Rename(s) => s.apply(draft)?,
            Stage::Set(s) => s.apply(draft)?,
            Stage::Remove(s) => s.apply(draft)?,
            Stage::Convert(s) => s.apply(draft)?,
            Stage::Timestamp(s) => s.apply(draft, message)?,
            Stage::Scale(s) => s.apply(draft)?,
            Stage::Drop(s) => return Ok(s.apply(draft)),
            Stage::Route(s) => s.apply(draft)?,
            Stage::Id(s) => s.apply(draft, message)?,
        }
        Ok(Flow::Continue)
    }
}

#[cfg(test)]
pub(crate) mod test_support {
    use chrono::{DateTime, Utc};
    use serde_json::Value;

    use super::*;
    use crate::object::Object;
    use crate::record::QoS;

    pub fn stage(key: &str, config: Value) -> Stage {
        Stage::parse(key, config, &IndexPolicy::default())
            .expect("a known stage")
            .expect("a valid stage")
    }

    pub fn config_error(key: &str, config: Value) -> String {
        match Stage::parse(key, config, &IndexPolicy::default()).expect("a known stage") {
            Ok(stage) => panic!("expected a config error, got {stage:?}"),
            Err(err) => err.to_string(),
        }
    }

    pub fn message(topic: &str) -> Message {
        let received_at: DateTime<Utc> = "2026-11-22T10:00:05.250Z".parse().expect("a time");
        Message {
            topic: topic.to_owned(),
            payload: Vec::from(&b"{}"[..]).into(),
            qos: QoS::AtLeastOnce,
            retain: false,
            reading: crate::reading::ReadingId::from_u128(1),
            received_at,
            user_properties: Vec::new(),
        }
    }

    pub fn draft(source: Value) -> Draft {
        match source {
            Value::Object(source) => Draft {
                source: Object::from(source),
                index: None,
                id: None,
            },
            _ => panic!("not an object"),
        }
    }

    /// Runs one stage on `source` and returns the resulting source.
    pub fn run(stage: &Stage, source: Value) -> Result<Value, StageError> {
        let mut d = draft(source);
        stage.apply(&mut d, &message("sensors/home/pi1/telemetry"))?;
        Ok(Value::from(d.source))
    }
}
