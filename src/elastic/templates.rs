//! The component and composable index templates mqtt2es installs, built by pure functions of
//! the index prefix, the dead-letter stream's name, the retention settings and the engine's
//! [`Features`].
//!
//! Layout (prefix `mqtt2es-`):
//!
//! | index template        | pattern                  | priority | composed of                          |
//! |-----------------------|--------------------------|----------|--------------------------------------|
//! | `mqtt2es-streams`     | `mqtt2es-*`              | 200      | base                                 |
//! | `mqtt2es-telemetry`   | `mqtt2es-telemetry-*`    | 210      | base, telemetry@mappings, @settings  |
//! | `mqtt2es-status`      | `mqtt2es-status-*`       | 210      | base, status@mappings                |
//! | `mqtt2es-metrics`     | `mqtt2es-metrics`        | 210      | base, metrics@mappings               |
//! | `mqtt2es-deadletter`  | the dead-letter stream   | 300      | deadletter@mappings                  |
//!
//! Built-in templates (`logs-*-*`, `metrics-*-*`) use 100, so every one of ours wins where
//! patterns meet. Elasticsearch refuses two templates of equal priority whose patterns overlap,
//! hence the specific streams at 210 (they overlap the catch-all but not each other) and the
//! dead-letter stream at 300 (its name usually also matches `{prefix}*`, and might match a
//! specific one).
//!
//! The decision a reader might question: the telemetry streams are time-series data streams on
//! Elasticsearch. That makes Elasticsearch derive each reading's `_id` from its dimensions and
//! `@timestamp` and refuse an `_id` in the request, so the sink sends those documents without
//! one ([`time_series_prefixes`]); a redelivered reading still meets a 409, because the
//! derived id is as deterministic as ours.

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value, json};

use super::engine::Features;

/// Built-in templates use 100; ours must win over them.
pub const CATCH_ALL_PRIORITY: u64 = 200;
/// Above the catch-all they overlap, equal among themselves (their patterns are disjoint).
pub const STREAM_PRIORITY: u64 = 210;
/// Above everything else: the dead-letter stream's name may match any other pattern.
pub const DEAD_LETTER_PRIORITY: u64 = 300;

/// How far back a time-series stream accepts readings when it is created: the telemetry
/// pipeline's `max_past_s` (7 days), so a reading the pipeline believes is not refused here.
pub const LOOK_BACK_TIME: &str = "7d";

/// `setup.retention_days:` days each kind of stream keeps its documents; 0 keeps them forever.
/// Applied with the data stream lifecycle, which also manages rollover.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct RetentionDays {
    pub telemetry: u32,
    pub status: u32,
    pub metrics: u32,
    /// The catch-all `{prefix}*` streams, such as `mqtt2es-messages`.
    pub messages: u32,
    pub dead_letters: u32,
}

impl Default for RetentionDays {
    fn default() -> Self {
        RetentionDays {
            telemetry: 365,
            status: 365,
            metrics: 30,
            messages: 30,
            dead_letters: 90,
        }
    }
}

/// A component or index template: its name and the body of its `PUT`.
#[derive(Debug, Clone, PartialEq)]
pub struct Template {
    pub name: String,
    pub body: Value,
}

/// Everything setup installs, in order: component templates before the index templates
/// composed of them, then the data streams whose names are known up front.
#[derive(Debug, Clone, PartialEq)]
pub struct Plan {
    pub component_templates: Vec<Template>,
    pub index_templates: Vec<Template>,
    pub data_streams: Vec<String>,
}

impl Plan {
    /// The mappings a stream matched by `index_template` gets: its component templates'
    /// mappings deep-merged in order, as Elasticsearch composes them. For checks that a field
    /// exists with a given type (the dashboards' tests, for one). `None` for an unknown name.
    pub fn composed_mappings(&self, index_template: &str) -> Option<Value> {
        fn merge(into: &mut Value, from: &Value) {
            match (into, from) {
                (Value::Object(a), Value::Object(b)) => {
                    for (k, v) in b {
                        merge(a.entry(k.clone()).or_insert(Value::Null), v);
                    }
                }
                (slot, value) => *slot = value.clone(),
            }
        }
        let template = self
            .index_templates
            .iter()
            .find(|t| t.name == index_template)?;
        let mut merged = json!({});
        for part in template.body["composed_of"].as_array()? {
            let component = self
                .component_templates
                .iter()
                .find(|c| part.as_str() == Some(c.name.as_str()))?;
            if let Some(mappings) = component.body["template"].get("mappings") {
                merge(&mut merged, mappings);
            }
        }
        Some(merged)
    }
}

/// Names setup works with.
#[derive(Debug, Clone, Copy)]
pub struct Layout<'a> {
    pub prefix: &'a str,
    pub dead_letter_index: &'a str,
    pub retention: &'a RetentionDays,
}

impl Layout<'_> {
    /// The data stream of mqtt2es's own metrics.
    pub fn metrics_stream(&self) -> String {
        format!("{}metrics", self.prefix)
    }
}

/// Index-name prefixes of the streams that are time-series data streams on this engine.
pub fn time_series_prefixes(prefix: &str, features: &Features) -> Vec<String> {
    if features.time_series {
        vec![format!("{prefix}telemetry-")]
    } else {
        Vec::new()
    }
}

/// The whole plan. The prefix must not be empty (checked by the caller).
pub fn plan(layout: &Layout, features: &Features) -> Plan {
    let p = layout.prefix;
    let dl = layout.dead_letter_index;
    let base = format!("{p}base@mappings");
    let telemetry = format!("{p}telemetry@mappings");
    let telemetry_settings = format!("{p}telemetry@settings");
    let status = format!("{p}status@mappings");
    let metrics = format!("{p}metrics@mappings");
    let dead_letters = format!("{dl}@mappings");

    let mut components = vec![
        component(
            &base,
            json!({ "mappings": base_mappings() }),
            "fields every stream has",
        ),
        component(
            &telemetry,
            json!({ "mappings": telemetry_mappings(features) }),
            "sensor readings",
        ),
        component(
            &status,
            json!({ "mappings": status_mappings() }),
            "device status",
        ),
        component(
            &metrics,
            json!({ "mappings": metrics_mappings() }),
            "mqtt2es's own figures",
        ),
        component(
            &dead_letters,
            json!({ "mappings": dead_letter_mappings() }),
            "dead letters",
        ),
    ];
    let mut telemetry_parts = vec![base.clone(), telemetry];
    if let Some(settings) = telemetry_settings_for(features) {
        components.push(component(
            &telemetry_settings,
            json!({ "settings": settings }),
            "time-series mode for readings",
        ));
        telemetry_parts.push(telemetry_settings);
    }

    let r = layout.retention;
    let index_templates = vec![
        index_template(
            &format!("{p}streams"),
            &format!("{p}*"),
            CATCH_ALL_PRIORITY,
            vec![base.clone()],
            lifecycle(features, r.messages),
            "any other data stream mqtt2es writes",
        ),
        index_template(
            &format!("{p}telemetry"),
            &format!("{p}telemetry-*"),
            STREAM_PRIORITY,
            telemetry_parts,
            lifecycle(features, r.telemetry),
            "sensor readings, one stream per site",
        ),
        index_template(
            &format!("{p}status"),
            &format!("{p}status-*"),
            STREAM_PRIORITY,
            vec![base.clone(), status],
            lifecycle(features, r.status),
            "device online/offline events, one stream per site",
        ),
        index_template(
            &format!("{p}metrics"),
            &layout.metrics_stream(),
            STREAM_PRIORITY,
            vec![base, metrics],
            lifecycle(features, r.metrics),
            "mqtt2es's own figures",
        ),
        index_template(
            dl,
            dl,
            DEAD_LETTER_PRIORITY,
            vec![dead_letters],
            lifecycle(features, r.dead_letters),
            "mqtt2es dead letters",
        ),
    ];
    Plan {
        component_templates: components,
        index_templates,
        data_streams: vec![dl.to_owned(), layout.metrics_stream()],
    }
}

fn meta(description: &str) -> Value {
    json!({ "managed_by": "mqtt2es", "description": description })
}

fn component(name: &str, template: Value, description: &str) -> Template {
    Template {
        name: name.to_owned(),
        body: json!({ "template": template, "_meta": meta(description) }),
    }
}

fn index_template(
    name: &str,
    pattern: &str,
    priority: u64,
    composed_of: Vec<String>,
    lifecycle: Option<Value>,
    description: &str,
) -> Template {
    let mut template = Map::new();
    if let Some(lifecycle) = lifecycle {
        template.insert("lifecycle".to_owned(), lifecycle);
    }
    Template {
        name: name.to_owned(),
        body: json!({
            "index_patterns": [pattern],
            "data_stream": {},
            "priority": priority,
            "composed_of": composed_of,
            "template": template,
            "_meta": meta(description),
        }),
    }
}

/// The data stream lifecycle of one kind of stream, where the engine has one. It also does
/// the rollover (by its own default conditions), so there is no rollover setting of ours.
fn lifecycle(features: &Features, days: u32) -> Option<Value> {
    if !features.lifecycle {
        return None;
    }
    Some(if days == 0 {
        json!({ "enabled": true })
    } else {
        json!({ "enabled": true, "data_retention": format!("{days}d") })
    })
}

fn keyword() -> Value {
    json!({ "type": "keyword" })
}

/// One value per document: kept in doc values (a 409 is checked against it, and a search on it
/// still works, if slowly) but not in the inverted index, which would cost more than the
/// readings themselves on a time-series stream.
fn reading_id() -> Value {
    json!({ "type": "keyword", "index": false })
}

/// ECS-style fields every mqtt2es document has (see `pipeline::run`) plus `event.ingested`,
/// which the sink stamps when it sends a document.
fn base_mappings() -> Value {
    json!({
        "properties": {
            "@timestamp": { "type": "date" },
            "mqtt": { "properties": {
                "topic": keyword(),
                "qos": { "type": "byte" },
                "retain": { "type": "boolean" },
                "received_at": { "type": "date" },
                "user_properties": { "properties": { "key": keyword(), "value": keyword() } },
            }},
            "event": { "properties": { "ingested": { "type": "date" } } },
            "mqtt2es": { "properties": {
                "timestamp_fallback": keyword(),
                "reading_id": reading_id(),
                "payload_digest": reading_id(),
            }},
        }
    })
}

/// `site` and `device` identify a series; the readings are gauges. The `time_series_*`
/// parameters are Elasticsearch's; OpenSearch refuses them, so they go only where they work.
fn telemetry_mappings(features: &Features) -> Value {
    let dimension = if features.time_series {
        json!({ "type": "keyword", "time_series_dimension": true })
    } else {
        keyword()
    };
    let gauge = if features.time_series {
        json!({ "type": "float", "time_series_metric": "gauge" })
    } else {
        json!({ "type": "float" })
    };
    // Nanoseconds on a time-series stream: Elasticsearch identifies a reading there by its series
    // and `@timestamp`, and readings of one device within a millisecond (no device clock, or one
    // of second resolution) must stay apart (see `reading` and `pipeline::stages::timestamp`).
    let timestamp = if features.time_series {
        json!({ "type": "date_nanos" })
    } else {
        json!({ "type": "date" })
    };
    json!({
        "properties": {
            "@timestamp": timestamp,
            "site": dimension,
            "device": dimension,
            "temperature_c": gauge,
            "humidity": gauge,
            "battery": gauge,
        }
    })
}

fn telemetry_settings_for(features: &Features) -> Option<Value> {
    if !features.time_series {
        return None;
    }
    let mut settings = json!({
        "index.mode": "time_series",
        "index.routing_path": ["site", "device"],
    });
    if features.look_back_time {
        settings["index.look_back_time"] = json!(LOOK_BACK_TIME);
    }
    Some(settings)
}

fn status_mappings() -> Value {
    json!({ "properties": { "site": keyword(), "device": keyword(), "state": keyword() } })
}

/// The figures mqtt2es ships about itself (the data contract in the README).
fn metrics_mappings() -> Value {
    let long = json!({ "type": "long" });
    let float = json!({ "type": "float" });
    let avg_max = json!({ "properties": { "avg": float, "max": float } });
    json!({
        "properties": { "mqtt2es": { "properties": {
            "instance": keyword(),
            "mode": keyword(),
            "interval_s": float,
            "messages_in": long,
            "documents_stored": long,
            "dead_letters": long,
            "retries": long,
            "bulk_requests": long,
            "documents_per_s": float,
            "bulk_latency_ms": avg_max,
            "latency_ms": avg_max,
            "queue_depth": long,
            "connected_clients": long,
            "spool": { "properties": {
                "bytes": long,
                "records": long,
                "oldest_record_age_s": float,
                "shipped_per_s": float,
                "dropped": long,
            }},
        }}}
    })
}

/// Fixed mappings: a payload that broke a pipeline must not be able to break its own dead
/// letter (hence `dynamic: false` and an unindexed `payload`).
fn dead_letter_mappings() -> Value {
    json!({
        "dynamic": false,
        "properties": {
            "@timestamp": { "type": "date" },
            "mqtt": { "properties": {
                "topic": keyword(),
                "qos": { "type": "byte" },
                "retain": { "type": "boolean" },
            }},
            "mqtt2es": { "properties": { "reading_id": reading_id() } },
            "pipeline": keyword(),
            "stage": keyword(),
            "reason": keyword(),
            "error": { "properties": { "message": { "type": "text" } } },
            "payload": { "type": "text", "index": false },
            "payload_encoding": keyword(),
            "payload_bytes": { "type": "long" },
            "payload_truncated": { "type": "boolean" },
        }
    })
}

#[cfg(test)]
mod tests;
