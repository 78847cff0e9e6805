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
mod tests {
    use super::*;

    const ELASTICSEARCH: Features = Features::ELASTICSEARCH;
    const ELASTICSEARCH_MINIMAL: Features = Features {
        look_back_time: false,
        lifecycle_enforced: false,
        ..ELASTICSEARCH
    };
    const OPENSEARCH: Features = Features::OPENSEARCH;

    fn plan_for(features: &Features) -> Plan {
        plan(
            &Layout {
                prefix: "mqtt2es-",
                dead_letter_index: "mqtt2es-deadletter",
                retention: &RetentionDays::default(),
            },
            features,
        )
    }

    fn find<'a>(templates: &'a [Template], name: &str) -> &'a Value {
        &templates
            .iter()
            .find(|t| t.name == name)
            .unwrap_or_else(|| panic!("no template {name}"))
            .body
    }

    fn composed_properties(plan: &Plan, index_template: &str) -> Value {
        plan.composed_mappings(index_template)
            .unwrap_or_else(|| panic!("no index template {index_template}"))["properties"]
            .clone()
    }

    #[test]
    fn every_index_template_is_a_data_stream_composed_only_of_installed_components() {
        let plan = plan_for(&ELASTICSEARCH);
        for template in &plan.index_templates {
            assert_eq!(template.body["data_stream"], json!({}), "{}", template.name);
            for part in template.body["composed_of"].as_array().expect("list") {
                let part = part.as_str().expect("a name");
                assert!(
                    plan.component_templates.iter().any(|c| c.name == part),
                    "{} uses {part}, which is not installed",
                    template.name
                );
            }
        }
    }

    #[test]
    fn every_priority_beats_the_built_in_templates_and_specific_streams_beat_the_catch_all() {
        let plan = plan_for(&ELASTICSEARCH);
        let priority = |name: &str| {
            find(&plan.index_templates, name)["priority"]
                .as_u64()
                .expect("a priority")
        };
        assert!(priority("mqtt2es-streams") > 100);
        for specific in ["mqtt2es-telemetry", "mqtt2es-status", "mqtt2es-metrics"] {
            assert!(
                priority(specific) > priority("mqtt2es-streams"),
                "{specific}"
            );
        }
        assert!(priority("mqtt2es-deadletter") > priority("mqtt2es-telemetry"));
    }

    #[test]
    fn templates_of_equal_priority_have_disjoint_patterns() {
        let plan = plan_for(&ELASTICSEARCH);
        let at_stream_priority: Vec<String> = plan
            .index_templates
            .iter()
            .filter(|t| t.body["priority"] == json!(STREAM_PRIORITY))
            .map(|t| {
                t.body["index_patterns"][0]
                    .as_str()
                    .expect("one")
                    .to_owned()
            })
            .collect();
        assert_eq!(
            at_stream_priority,
            ["mqtt2es-telemetry-*", "mqtt2es-status-*", "mqtt2es-metrics"]
        );
        // None is a prefix of another up to its wildcard, so no name matches two of them.
        for a in &at_stream_priority {
            for b in &at_stream_priority {
                if a != b {
                    assert!(!b.starts_with(a.trim_end_matches('*')), "{a} overlaps {b}");
                }
            }
        }
    }

    #[test]
    fn telemetry_is_a_time_series_stream_on_elasticsearch_with_dimensions_and_gauges() {
        let plan = plan_for(&ELASTICSEARCH);
        let settings =
            &find(&plan.component_templates, "mqtt2es-telemetry@settings")["template"]["settings"];
        assert_eq!(settings["index.mode"], "time_series");
        assert_eq!(settings["index.routing_path"], json!(["site", "device"]));
        assert_eq!(settings["index.look_back_time"], "7d");
        let fields = composed_properties(&plan, "mqtt2es-telemetry");
        for dimension in ["site", "device"] {
            assert_eq!(
                fields[dimension],
                json!({"type": "keyword", "time_series_dimension": true})
            );
        }
        for gauge in ["temperature_c", "humidity", "battery"] {
            assert_eq!(
                fields[gauge],
                json!({"type": "float", "time_series_metric": "gauge"})
            );
        }
        // Nanoseconds: the stream knows a reading by series and time (see `reading`).
        assert_eq!(fields["@timestamp"]["type"], "date_nanos");
        assert_eq!(fields["event"]["properties"]["ingested"]["type"], "date");
        assert_eq!(fields["mqtt"]["properties"]["topic"]["type"], "keyword");
        assert_eq!(fields["mqtt"]["properties"]["qos"]["type"], "byte");
        assert_eq!(fields["mqtt"]["properties"]["retain"]["type"], "boolean");
        assert_eq!(
            time_series_prefixes("mqtt2es-", &ELASTICSEARCH),
            ["mqtt2es-telemetry-"]
        );
    }

    #[test]
    fn without_the_data_streams_module_there_is_no_look_back_time_to_set() {
        let plan = plan_for(&ELASTICSEARCH_MINIMAL);
        let settings =
            &find(&plan.component_templates, "mqtt2es-telemetry@settings")["template"]["settings"];
        assert_eq!(settings["index.mode"], "time_series");
        assert!(settings.get("index.look_back_time").is_none(), "{settings}");
    }

    #[test]
    fn on_opensearch_telemetry_is_a_plain_stream_without_time_series_parameters_or_lifecycle() {
        let plan = plan_for(&OPENSEARCH);
        assert!(
            plan.component_templates
                .iter()
                .all(|t| t.name != "mqtt2es-telemetry@settings")
        );
        let text: String = plan
            .component_templates
            .iter()
            .chain(&plan.index_templates)
            .map(|t| t.body.to_string())
            .collect();
        assert!(!text.contains("time_series"), "{text}");
        assert!(!text.contains("lifecycle"), "{text}");
        let fields = composed_properties(&plan, "mqtt2es-telemetry");
        assert_eq!(fields["site"], json!({"type": "keyword"}));
        assert_eq!(fields["battery"], json!({"type": "float"}));
        assert!(time_series_prefixes("mqtt2es-", &OPENSEARCH).is_empty());
    }

    #[test]
    fn each_kind_of_stream_gets_its_own_retention_and_zero_keeps_forever() {
        let retention = RetentionDays {
            telemetry: 0,
            ..RetentionDays::default()
        };
        let plan = plan(
            &Layout {
                prefix: "p-",
                dead_letter_index: "p-dead",
                retention: &retention,
            },
            &ELASTICSEARCH,
        );
        let lifecycle =
            |name: &str| find(&plan.index_templates, name)["template"]["lifecycle"].clone();
        assert_eq!(lifecycle("p-telemetry"), json!({"enabled": true}));
        assert_eq!(
            lifecycle("p-status"),
            json!({"enabled": true, "data_retention": "365d"})
        );
        assert_eq!(lifecycle("p-metrics")["data_retention"], "30d");
        assert_eq!(lifecycle("p-streams")["data_retention"], "30d");
        assert_eq!(lifecycle("p-dead")["data_retention"], "90d");
    }

    #[test]
    fn status_and_metrics_streams_map_every_field_of_the_data_contract() {
        let plan = plan_for(&ELASTICSEARCH);
        let status = composed_properties(&plan, "mqtt2es-status");
        for field in ["site", "device", "state"] {
            assert_eq!(status[field]["type"], "keyword", "{field}");
        }
        let metrics = composed_properties(&plan, "mqtt2es-metrics");
        let own = &metrics["mqtt2es"]["properties"];
        for (field, ty) in [
            ("instance", "keyword"),
            ("mode", "keyword"),
            ("interval_s", "float"),
            ("messages_in", "long"),
            ("documents_stored", "long"),
            ("dead_letters", "long"),
            ("retries", "long"),
            ("bulk_requests", "long"),
            ("documents_per_s", "float"),
            ("queue_depth", "long"),
            ("connected_clients", "long"),
        ] {
            assert_eq!(own[field]["type"], ty, "mqtt2es.{field}");
        }
        for field in ["bulk_latency_ms", "latency_ms"] {
            for stat in ["avg", "max"] {
                assert_eq!(own[field]["properties"][stat]["type"], "float");
            }
        }
        for (field, ty) in [
            ("bytes", "long"),
            ("records", "long"),
            ("oldest_record_age_s", "float"),
            ("shipped_per_s", "float"),
            ("dropped", "long"),
        ] {
            assert_eq!(
                own["spool"]["properties"][field]["type"], ty,
                "spool.{field}"
            );
        }
        // The base fields are there too, next to mqtt2es's own object.
        assert_eq!(own["timestamp_fallback"]["type"], "keyword");
        assert_eq!(metrics["@timestamp"]["type"], "date");
    }

    #[test]
    fn the_dead_letter_template_maps_every_field_a_dead_letter_has() {
        let plan = plan_for(&ELASTICSEARCH);
        let mapped = composed_properties(&plan, "mqtt2es-deadletter");
        let letter = crate::sink::dead_letter::tests::sample_dead_letter();
        for (field, value) in letter.as_object().expect("an object") {
            assert!(!mapped[field].is_null(), "{field} is not mapped");
            if let Value::Object(inner) = value {
                for sub in inner.keys() {
                    assert!(
                        !mapped[field]["properties"][sub].is_null(),
                        "{field}.{sub} is not mapped"
                    );
                }
            }
        }
        assert_eq!(mapped["payload"]["index"], json!(false));
        let body = find(&plan.component_templates, "mqtt2es-deadletter@mappings");
        assert_eq!(body["template"]["mappings"]["dynamic"], json!(false));
    }

    #[test]
    fn composed_mappings_merge_the_components_in_order_and_know_only_installed_templates() {
        let plan = plan_for(&ELASTICSEARCH);
        let telemetry = plan.composed_mappings("mqtt2es-telemetry").expect("known");
        // From the base component and from the telemetry one, side by side.
        assert_eq!(
            telemetry["properties"]["mqtt"]["properties"]["qos"]["type"],
            "byte"
        );
        assert_eq!(telemetry["properties"]["humidity"]["type"], "float");
        assert!(plan.composed_mappings("mqtt2es-nothing").is_none());
    }

    #[test]
    fn the_dead_letter_and_metrics_streams_are_created_up_front() {
        let plan = plan_for(&OPENSEARCH);
        assert_eq!(plan.data_streams, ["mqtt2es-deadletter", "mqtt2es-metrics"]);
    }
}
