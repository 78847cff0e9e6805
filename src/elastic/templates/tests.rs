//! The template plan checked as data: priorities and patterns that cannot clash, time-series
//! telemetry where the engine has it, retention per kind of stream, and mappings that cover the
//! data contract and dead letters.

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
    let lifecycle = |name: &str| find(&plan.index_templates, name)["template"]["lifecycle"].clone();
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
