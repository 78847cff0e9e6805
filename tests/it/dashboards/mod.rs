//! The Kibana dashboards in `dashboards/`: checked offline as Kibana's import and Lens would
//! see them, and live by running every panel's query against the real search node.
//!
//! No Kibana server runs here (DESIGN.md, test environment), so nothing renders a panel: the
//! offline checks hold the saved objects to the formats of Kibana 8.11
//! ([`saved_objects::OLDEST_KIBANA`]), the oldest version they are authored for, and the live
//! check asks Elasticsearch (and OpenSearch) the questions Lens would ask.

mod live;
mod query;
mod saved_objects;
mod schema;

use std::collections::BTreeSet;

use serde_json::Value;

use saved_objects::{Catalog, check, layers, panels};
use schema::Schema;

/// The shipped catalog after `edit`, checked.
fn problems_after(edit: impl FnOnce(&mut Vec<Value>)) -> Vec<String> {
    let mut catalog = Catalog::shipped();
    edit(&mut catalog.objects);
    check(&catalog, &Schema::current())
}

/// Replaces `from` with `to` inside the panelsJSON of dashboard `id`.
fn edit_panels(objects: &mut [Value], id: &str, from: &str, to: &str) {
    let dashboard = objects
        .iter_mut()
        .find(|o| o["id"] == id)
        .unwrap_or_else(|| panic!("no dashboard {id}"));
    let raw = dashboard["attributes"]["panelsJSON"]
        .as_str()
        .expect("panelsJSON")
        .to_owned();
    assert!(raw.contains(from), "{from:?} is not in {id}'s panels");
    dashboard["attributes"]["panelsJSON"] = Value::from(raw.replacen(from, to, 1));
}

fn assert_caught(problems: &[String], needle: &str) {
    assert!(
        problems.iter().any(|p| p.contains(needle)),
        "expected a problem mentioning {needle:?}, got:\n{}",
        problems.join("\n")
    );
}

#[test]
fn every_shipped_saved_object_would_import_and_every_panel_would_render() {
    let problems = check(&Catalog::shipped(), &Schema::current());
    assert!(problems.is_empty(), "{}", problems.join("\n"));
}

#[test]
fn the_saved_object_ids_are_the_stable_ones_links_and_reimports_rely_on() {
    let catalog = Catalog::shipped();
    let ids: BTreeSet<(String, String)> = catalog
        .objects
        .iter()
        .map(|o| {
            (
                o["type"].as_str().unwrap_or_default().to_owned(),
                o["id"].as_str().unwrap_or_default().to_owned(),
            )
        })
        .collect();
    let expected: BTreeSet<(String, String)> = [
        ("dashboard", "mqtt2es-pipeline-health"),
        ("dashboard", "mqtt2es-sensor-fleet"),
        ("index-pattern", "mqtt2es-deadletter"),
        ("index-pattern", "mqtt2es-metrics"),
        ("index-pattern", "mqtt2es-status"),
        ("index-pattern", "mqtt2es-telemetry"),
    ]
    .iter()
    .map(|(t, i)| (t.to_string(), i.to_string()))
    .collect();
    assert_eq!(ids, expected);
    let titles: BTreeSet<&str> = catalog
        .of_type("dashboard")
        .filter_map(|d| d["attributes"]["title"].as_str())
        .collect();
    assert_eq!(
        titles,
        BTreeSet::from(["mqtt2es — pipeline health", "mqtt2es — sensor fleet"])
    );
}

#[test]
fn the_data_views_read_their_fields_from_the_template_that_applies_to_their_streams() {
    let schema = Schema::current();
    let telemetry = schema.fields("mqtt2es-telemetry-*");
    assert_eq!(telemetry["device"].es_type, "keyword");
    assert_eq!(telemetry["temperature_c"].kibana_type, "number");
    let dead = schema.fields("mqtt2es-deadletter");
    assert_eq!(dead["reason"].es_type, "keyword");
    assert!(!dead["payload"].aggregatable, "payload is unindexed text");
    assert!(schema::glob("mqtt2es-*", "mqtt2es-telemetry-x"));
    assert!(!schema::glob("mqtt2es-telemetry-*", "mqtt2es-status-x"));
}

#[test]
fn a_typo_in_a_field_name_is_caught() {
    let problems = problems_after(|objects| {
        edit_panels(
            objects,
            "mqtt2es-sensor-fleet",
            r#""sourceField":"humidity""#,
            r#""sourceField":"humidty""#,
        )
    });
    assert_caught(&problems, r#"field "humidty" is not in the template"#);
}

#[test]
fn a_typo_in_a_metrics_field_name_is_caught() {
    let problems = problems_after(|objects| {
        edit_panels(
            objects,
            "mqtt2es-pipeline-health",
            r#""sourceField":"mqtt2es.latency_ms.avg""#,
            r#""sourceField":"mqtt2es.latency.avg""#,
        )
    });
    assert_caught(&problems, r#""mqtt2es.latency.avg" is not in the template"#);
}

#[test]
fn an_average_of_a_keyword_field_is_caught() {
    let problems = problems_after(|objects| {
        edit_panels(
            objects,
            "mqtt2es-sensor-fleet",
            r#""operationType":"average","sourceField":"temperature_c""#,
            r#""operationType":"average","sourceField":"device""#,
        )
    });
    assert_caught(
        &problems,
        r#"average does not accept "device", a keyword field"#,
    );
}

#[test]
fn terms_on_unindexed_text_is_caught() {
    let problems = problems_after(|objects| {
        edit_panels(
            objects,
            "mqtt2es-pipeline-health",
            r#""operationType":"terms","sourceField":"reason""#,
            r#""operationType":"terms","sourceField":"payload""#,
        )
    });
    assert_caught(&problems, r#""payload" (text) cannot be aggregated"#);
}

#[test]
fn a_sum_of_a_time_series_counter_is_caught() {
    // Interval counts must stay gauges (or plain longs) in the metrics template: Lens sums
    // them, and it offers no sum of a counter.
    let mut templates = Schema::current().into_templates();
    let metrics = templates
        .iter_mut()
        .find(|t| t.name == "mqtt2es-metrics")
        .expect("the metrics template");
    metrics.mappings["properties"]["mqtt2es"]["properties"]["retries"]["time_series_metric"] =
        Value::from("counter");
    let problems = check(&Catalog::shipped(), &Schema::from_templates(templates));
    assert_caught(
        &problems,
        r#"Lens offers no sum of "mqtt2es.retries", a time-series counter"#,
    );
}

#[test]
fn a_reference_to_a_data_view_that_is_not_shipped_is_caught() {
    let problems = problems_after(|objects| objects.retain(|o| o["id"] != "mqtt2es-status"));
    assert_caught(
        &problems,
        r#"points at index-pattern "mqtt2es-status", which is not in the files"#,
    );
}

#[test]
fn a_panel_reference_missing_from_the_dashboard_is_caught() {
    let problems = problems_after(|objects| {
        let dashboard = objects
            .iter_mut()
            .find(|o| o["id"] == "mqtt2es-sensor-fleet")
            .expect("the fleet dashboard");
        dashboard["references"]
            .as_array_mut()
            .expect("references")
            .pop();
    });
    assert_caught(&problems, "references lack");
}

#[test]
fn overlapping_panels_are_caught() {
    let problems = problems_after(|objects| {
        edit_panels(
            objects,
            "mqtt2es-sensor-fleet",
            r#""gridData":{"x":12,"y":0"#,
            r#""gridData":{"x":6,"y":0"#,
        )
    });
    assert_caught(&problems, "overlap");
}

#[test]
fn a_line_that_is_not_json_and_a_duplicate_id_are_caught() {
    let files = saved_objects::shipped_files();
    let (_, text) = &files[0];
    let first = text.lines().next().expect("a first line");
    let broken = format!("{text}{first}\n{{\"type\":\"dashboard\"\n");
    let (catalog, problems) = Catalog::parse(&[("copy.ndjson".to_owned(), broken.as_str())]);
    assert_caught(&problems, "invalid JSON");
    assert_caught(&check(&catalog, &Schema::current()), "the id is used twice");
}

#[test]
fn a_wrong_migration_version_is_caught() {
    let problems = problems_after(|objects| {
        objects[0]["typeMigrationVersion"] = Value::from("10.1.0");
    });
    assert_caught(&problems, "typeMigrationVersion is \"10.1.0\"");
}

#[test]
fn every_panel_layer_translates_into_a_search() {
    let catalog = Catalog::shipped();
    for dashboard in catalog.of_type("dashboard") {
        for panel in panels(dashboard).expect("panels") {
            for layer in layers(&panel.lens).expect("layers") {
                if let Err(e) = query::translate(&layer, "x", "@timestamp", "now-1h", "now") {
                    panic!("panel {:?}: {e}", panel.title);
                }
            }
        }
    }
}

#[test]
fn the_dashboards_readme_describes_every_dashboard_and_panel() {
    let readme = std::fs::read_to_string(saved_objects::dashboards_dir().join("README.md"))
        .expect("dashboards/README.md");
    let catalog = Catalog::shipped();
    let mut missing = Vec::new();
    for dashboard in catalog.of_type("dashboard") {
        let title = dashboard["attributes"]["title"]
            .as_str()
            .unwrap_or_default();
        if !readme.contains(title) {
            missing.push(title.to_owned());
        }
        for panel in panels(dashboard).expect("panels") {
            if !readme.contains(&format!("**{}**", panel.title)) {
                missing.push(format!("**{}**", panel.title));
            }
        }
    }
    assert!(
        missing.is_empty(),
        "dashboards/README.md does not describe: {missing:?}"
    );
}
