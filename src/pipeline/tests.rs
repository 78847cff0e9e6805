//! Pipelines as the app uses them: loading a directory, choosing a pipeline, metadata, and
//! rejections that say which pipeline and stage refused a message.

use std::fs;
use std::path::Path;

use serde_json::{Value, json};

use super::{DecodeLimits, IndexPolicy, LoadError, Pipelines};
use crate::document::{Processed, Rejection};
use crate::record::{Message, QoS};

fn message(topic: &str, payload: &[u8]) -> Message {
    Message {
        topic: topic.to_owned(),
        payload: payload.to_vec().into(),
        qos: QoS::AtLeastOnce,
        retain: true,
        reading: crate::reading::ReadingId::from_u128(1),
        received_at: "2026-11-22T10:00:05.250Z".parse().expect("a time"),
        user_properties: vec![("unit".to_owned(), "C".to_owned())],
    }
}

fn write(dir: &Path, files: &[(&str, &str)]) {
    for (name, yaml) in files {
        fs::write(dir.join(name), yaml).expect("writable temp dir");
    }
}

fn load(files: &[(&str, &str)]) -> Result<Pipelines, LoadError> {
    let dir = tempfile::tempdir().expect("a temp dir");
    write(dir.path(), files);
    Pipelines::load_dir(
        dir.path(),
        &IndexPolicy::default(),
        &DecodeLimits::default(),
    )
}

/// The document as stored: with what the encoder writes from the message.
fn source(processed: Processed, message: &Message) -> Value {
    match processed {
        Processed::Document(doc) => Value::from(doc.as_stored(message)),
        other => panic!("expected a document, got {other:?}"),
    }
}

fn rejection(processed: Processed) -> Rejection {
    match processed {
        Processed::Rejected(rejection) => rejection,
        other => panic!("expected a rejection, got {other:?}"),
    }
}

#[test]
fn the_first_matching_pipeline_in_file_name_order_wins() {
    let pipelines = load(&[
        ("zz-all.yaml", "topics: ['#']"),
        ("a-sensors.yml", "topics: ['sensors/#']"),
        ("notes.txt", "not a pipeline"),
        (".hidden.yaml", "not: [valid"),
    ])
    .expect("valid pipelines");
    assert_eq!(pipelines.names(), ["a-sensors", "zz-all"]);
    let doc = |topic| match pipelines.process(&message(topic, b"{}")) {
        Processed::Document(doc) => doc.pipeline.to_string(),
        other => panic!("{other:?}"),
    };
    assert_eq!(doc("sensors/x"), "a-sensors");
    assert_eq!(doc("other/x"), "zz-all");
}

#[test]
fn a_message_no_pipeline_matches_is_rejected_as_no_pipeline() {
    let pipelines = load(&[("a.yaml", "topics: ['#']")]).expect("valid");
    let r = rejection(pipelines.process(&message("$SYS/broker/load", b"{}")));
    assert_eq!(r.pipeline, None);
    assert_eq!(r.stage, None);
    assert_eq!(r.reason, "no_pipeline");
    assert_eq!(
        r.detail,
        "no pipeline subscribes to topic \"$SYS/broker/load\""
    );
}

#[test]
fn documents_carry_mqtt_metadata_that_stages_can_read() {
    let yaml =
        "topics: ['#']\nstages:\n  - set: {field: origin, value: '{{mqtt.topic}} q{{mqtt.qos}}'}";
    let pipelines = load(&[("a.yaml", yaml)]).expect("valid");
    let door = message("home/door", br#"{"mqtt": "spoofed", "open": true}"#);
    assert_eq!(
        source(pipelines.process(&door), &door),
        json!({
            "open": true,
            "origin": "home/door q1",
            "@timestamp": "2026-11-22T10:00:05.250Z",
            "mqtt": {
                "topic": "home/door", "qos": 1, "retain": true,
                "user_properties": [{"key": "unit", "value": "C"}]
            },
            "mqtt2es": {"reading_id": "AAAAAAAAAAAAAAAAAAAAAQ"}
        })
    );
}

#[test]
fn documents_without_a_route_go_to_the_default_index() {
    let pipelines = load(&[("a.yaml", "topics: ['#']")]).expect("valid");
    match pipelines.process(&message("a", b"{}")) {
        Processed::Document(doc) => {
            assert_eq!(doc.index, "mqtt2es-default");
            assert_eq!(doc.id, None);
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn rejections_name_the_pipeline_and_the_stage() {
    let yaml = "topics: ['#']\nstages:\n  - remove: {fields: [debug]}";
    let pipelines = load(&[("strict.yaml", yaml)]).expect("valid");
    assert_eq!(
        rejection(pipelines.process(&message("a", b"{}"))),
        Rejection {
            pipeline: Some("strict".to_owned()),
            stage: Some("remove".to_owned()),
            reason: "missing_field".to_owned(),
            detail: "field \"debug\" is missing".to_owned(),
        }
    );
    let r = rejection(pipelines.process(&message("a", b"{oops")));
    assert_eq!(
        (r.stage.as_deref(), r.reason.as_str()),
        (Some("decode"), "invalid_json")
    );
}

#[test]
fn drops_name_the_pipeline_and_the_stage() {
    let yaml = "topics: ['#']\nstages:\n  - drop: {if: {exists: debug}}";
    let pipelines = load(&[("quiet.yaml", yaml)]).expect("valid");
    assert_eq!(
        pipelines.process(&message("a", br#"{"debug": 1}"#)),
        Processed::Dropped {
            pipeline: "quiet".to_owned(),
            stage: "drop".to_owned()
        }
    );
}

#[test]
fn process_with_runs_the_named_pipeline_whatever_the_topic() {
    let pipelines = load(&[("a.yaml", "topics: ['sensors/#']")]).expect("valid");
    let processed = pipelines.process_with("a", &message("elsewhere", b"{}"));
    assert!(matches!(processed, Some(Processed::Document(_))));
    assert_eq!(
        pipelines.process_with("b", &message("elsewhere", b"{}")),
        None
    );
}

#[test]
fn topic_filters_are_deduplicated_and_keep_shared_subscriptions() {
    let pipelines = load(&[
        ("a.yaml", "topics: ['sensors/#', '$share/g/lab/#']"),
        ("b.yaml", "topics: ['sensors/#', '#']"),
    ])
    .expect("valid");
    assert_eq!(
        pipelines.topic_filters(),
        ["$share/g/lab/#", "#"],
        "`#` covers `sensors/#`; a share group is a different receiver"
    );
}

#[test]
fn an_empty_directory_is_an_error_saying_so() {
    let dir = tempfile::tempdir().expect("a temp dir");
    write(dir.path(), &[("README.md", "no pipelines here")]);
    let err = Pipelines::load_dir(
        dir.path(),
        &IndexPolicy::default(),
        &DecodeLimits::default(),
    )
    .expect_err("empty");
    assert_eq!(
        err.to_string(),
        format!(
            "{}: no pipelines found; expected at least one *.yaml or *.yml file",
            dir.path().display()
        )
    );
}

#[test]
fn a_missing_directory_is_an_error_naming_it() {
    let err = Pipelines::load_dir(
        Path::new("/nonexistent/pipelines"),
        &IndexPolicy::default(),
        &DecodeLimits::default(),
    )
    .expect_err("missing");
    assert!(
        err.to_string()
            .starts_with("/nonexistent/pipelines: cannot read pipeline directory")
    );
}

#[test]
fn errors_in_a_file_name_its_path() {
    let dir = tempfile::tempdir().expect("a temp dir");
    write(
        dir.path(),
        &[(
            "bad.yaml",
            "topics: ['#']\nstages:\n  - convert: {field: a, type: integer}",
        )],
    );
    let err = Pipelines::load_dir(
        dir.path(),
        &IndexPolicy::default(),
        &DecodeLimits::default(),
    )
    .expect_err("bad");
    let file = dir.path().join("bad.yaml");
    assert_eq!(
        err.to_string(),
        format!(
            "{}: stages[0] (convert): unknown type \"integer\"; expected one of int, float, bool, string",
            file.display()
        )
    );
}

#[test]
fn duplicate_pipeline_names_are_an_error_naming_both_files() {
    let err = load(&[
        ("a.yaml", "name: x\ntopics: ['a']"),
        ("b.yaml", "name: x\ntopics: ['b']"),
    ])
    .expect_err("duplicate");
    let text = err.to_string();
    assert!(
        text.contains("b.yaml: pipeline name \"x\" is already used by "),
        "{text}"
    );
    assert!(text.ends_with("a.yaml"), "{text}");
}

#[test]
fn load_dir_checks_the_policy_and_limits_first() {
    let policy = IndexPolicy {
        prefix: "mqtt2es-".to_owned(),
        default_index: "logs".to_owned(),
    };
    let dir = tempfile::tempdir().expect("a temp dir");
    let err = Pipelines::load_dir(dir.path(), &policy, &DecodeLimits::default()).expect_err("bad");
    assert!(matches!(err, LoadError::Policy(_)));
    let limits = DecodeLimits { max_depth: 1000 };
    let err = Pipelines::load_dir(dir.path(), &IndexPolicy::default(), &limits).expect_err("bad");
    assert_eq!(
        err.to_string(),
        "decode limits: max_depth 1000 is out of range; expected 1 to 128"
    );
}

#[test]
fn policy_and_limits_deserialize_with_defaults_and_deny_unknown_keys() {
    let policy: IndexPolicy = serde_json::from_value(json!({"prefix": "iot-"})).expect("valid");
    assert_eq!(policy.default_index, "mqtt2es-default");
    let limits: DecodeLimits = serde_json::from_value(json!({})).expect("valid");
    assert_eq!(limits.max_depth, 64);
    assert!(serde_json::from_value::<IndexPolicy>(json!({"prefx": "a"})).is_err());
    assert!(serde_json::from_value::<DecodeLimits>(json!({"depth": 3})).is_err());
}

#[test]
fn the_reference_example_is_a_valid_pipeline() {
    let file = Path::new(env!("CARGO_MANIFEST_DIR")).join("pipelines/reference.yaml.example");
    let yaml = fs::read_to_string(&file).expect("the reference example exists");
    let pipeline = Pipelines::from_yaml(
        "reference.yaml.example",
        &yaml,
        &IndexPolicy::default(),
        &DecodeLimits::default(),
    )
    .expect("the reference example is valid");
    let payload = br#"{"t": 21.5, "ts": "2026-11-22 10:00:00", "humidity": "40", "seq": 7}"#;
    let kitchen = message("lab/kitchen/pi7/x", payload);
    let doc = source(pipeline.process(&kitchen), &kitchen);
    assert_eq!(
        doc["origin"],
        json!({"room": "kitchen", "device": "pi7", "label": "kitchen/pi7"})
    );
    assert_eq!(doc["@timestamp"], json!("2026-11-22T10:00:00.000Z"));
}

#[test]
fn the_receive_time_is_left_unformatted_only_when_a_timestamp_stage_replaces_it_unread() {
    let overwritten = |stages: &str| {
        let yaml = format!("topics: ['#']\nstages:\n{stages}");
        let pipelines = load(&[("a.yaml", &yaml)]).expect("valid");
        pipelines.pipelines[0].receive_time_overwritten
    };
    let cases = [
        ("  - timestamp: {field: ts}", true),
        ("  - timestamp: {field: ts, target: '@timestamp'}", true),
        (
            "  - set: {field: a, value: 1}\n  - timestamp: {field: ts}",
            true,
        ),
        (
            "  - set: {field: seen, value: '{{@timestamp}}'}\n  - timestamp: {field: ts}",
            false,
        ),
        (
            "  - rename: {from: '@timestamp', to: received}\n  - timestamp: {field: ts}",
            false,
        ),
        ("  - timestamp: {field: '@timestamp'}", false),
        ("  - timestamp: {field: ts, target: device_time}", false),
        ("  - set: {field: a, value: 1}", false),
    ];
    for (stages, expected) in cases {
        assert_eq!(overwritten(stages), expected, "{stages}");
    }
    let shipped = Pipelines::load_dir(
        &Path::new(env!("CARGO_MANIFEST_DIR")).join("pipelines"),
        &IndexPolicy::default(),
        &DecodeLimits::default(),
    )
    .expect("the shipped pipelines load");
    let telemetry = shipped.pipelines.iter().find(|p| p.name() == "telemetry");
    assert!(
        telemetry
            .expect("a telemetry pipeline")
            .receive_time_overwritten
    );
}

#[test]
fn a_stage_that_reads_the_receive_time_before_the_timestamp_stage_gets_it() {
    let yaml = "topics: ['#']\nstages:\n  - rename: {from: '@timestamp', to: received}\n  - timestamp: {field: ts, formats: [epoch_ms]}";
    let pipelines = load(&[("a.yaml", yaml)]).expect("valid");
    let reading = message("x", br#"{"ts": 1795341600000}"#);
    let doc = source(pipelines.process(&reading), &reading);
    assert_eq!(doc["received"], json!("2026-11-22T10:00:05.250Z"));
    assert_eq!(doc["@timestamp"], json!("2026-11-22T10:00:00.000Z"));
}

#[test]
fn a_replaced_receive_time_keeps_its_place_among_the_members() {
    let yaml = "topics: ['#']\nstages:\n  - set: {field: added, value: 1}\n  - timestamp: {field: ts, formats: [epoch_ms]}";
    let pipelines = load(&[("a.yaml", yaml)]).expect("valid");
    for payload in [&br#"{"ts": 1795341600000, "a": 1}"#[..], br#"{"a": 1}"#] {
        let reading = message("x", payload);
        let Processed::Document(doc) = pipelines.process(&reading) else {
            panic!("a document");
        };
        // As written: member order is the document's, not a map's.
        let text = serde_json::to_string(&doc.source).expect("JSON");
        let at = |name: &str| text.find(&format!("\"{name}\":")).expect("written");
        assert!(
            at("a") < at("@timestamp") && at("@timestamp") < at("added"),
            "{text}"
        );
        assert!(!doc.source.get("@timestamp").expect("set").is_null());
    }
}
