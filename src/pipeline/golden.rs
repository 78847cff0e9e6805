//! Golden fixtures for the shipped pipelines: every `pipelines/*.yaml` has cases under
//! `tests/fixtures/pipelines/<pipeline name>/<case>.input.json` with the expected `Processed`
//! beside it in `<case>.expected.json`. `MQTT2ES_BLESS=1 cargo test --lib golden` rewrites
//! the expected files; without it, any difference fails the test.
//!
//! An input is `{topic, payload | payload_json | payload_base64, qos, retain, received_at,
//! user_properties?}`; `payload_json` is serialized compactly, so fixtures stay readable.

use std::fs;
use std::path::{Path, PathBuf};

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use chrono::{DateTime, Utc};
use serde::Deserialize;
use serde_json::{Value, json};

use super::{DecodeLimits, IndexPolicy, Pipelines};
use crate::document::Processed;
use crate::record::{Message, QoS};

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Input {
    topic: String,
    payload: Option<String>,
    payload_json: Option<Value>,
    payload_base64: Option<String>,
    qos: u8,
    retain: bool,
    received_at: String,
    #[serde(default)]
    user_properties: Vec<(String, String)>,
}

impl Input {
    fn message(self, case: &Path) -> Message {
        let payload = match (self.payload, self.payload_json, self.payload_base64) {
            (Some(text), None, None) => text.into_bytes(),
            (None, Some(json), None) => json.to_string().into_bytes(),
            (None, None, Some(b64)) => STANDARD.decode(b64).expect("valid base64"),
            _ => panic!(
                "{}: give exactly one of payload, payload_json, payload_base64",
                case.display()
            ),
        };
        let qos = QoS::from_level(self.qos)
            .unwrap_or_else(|| panic!("{}: qos {}", case.display(), self.qos));
        Message {
            topic: self.topic,
            payload: payload.into(),
            qos,
            retain: self.retain,
            // Fixed, so that fixtures stay stable; a real one is random per process.
            reading: crate::reading::ReadingId::from_u128(1),
            received_at: self
                .received_at
                .parse::<DateTime<Utc>>()
                .unwrap_or_else(|e| panic!("{}: received_at: {e}", case.display())),
            user_properties: self.user_properties,
        }
    }
}

/// `Processed` as fixture JSON (the shared type has no `Serialize` of its own).
pub fn to_json(processed: &Processed, message: &Message) -> Value {
    match processed {
        Processed::Document(doc) => json!({"document": {
            "pipeline": &*doc.pipeline, "index": doc.index, "id": doc.id,
            "source": doc.as_stored(message),
        }}),
        Processed::Dropped { pipeline, stage } => {
            json!({"dropped": {"pipeline": pipeline, "stage": stage}})
        }
        Processed::Rejected(r) => json!({"rejected": {
            "pipeline": r.pipeline, "stage": r.stage, "reason": r.reason, "detail": r.detail,
        }}),
    }
}

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn sorted(dir: &Path) -> Vec<PathBuf> {
    let mut paths: Vec<PathBuf> = fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|entry| entry.expect("a directory entry").path())
        .collect();
    paths.sort();
    paths
}

#[test]
fn shipped_pipelines_match_their_golden_fixtures() {
    let pipelines = Pipelines::load_dir(
        &root().join("pipelines"),
        &IndexPolicy::default(),
        &DecodeLimits::default(),
    )
    .expect("the shipped pipelines load");
    let bless = std::env::var("MQTT2ES_BLESS").is_ok_and(|v| v == "1");
    let fixtures = root().join("tests/fixtures/pipelines");
    let mut failures = Vec::new();
    let mut covered = Vec::new();
    for dir in sorted(&fixtures) {
        let name = dir
            .file_name()
            .and_then(|n| n.to_str())
            .expect("a utf-8 name");
        let inputs: Vec<PathBuf> = sorted(&dir)
            .into_iter()
            .filter(|p| p.to_string_lossy().ends_with(".input.json"))
            .collect();
        for input in inputs {
            let text = fs::read_to_string(&input).expect("readable input");
            let parsed: Input =
                serde_json::from_str(&text).unwrap_or_else(|e| panic!("{}: {e}", input.display()));
            let message = parsed.message(&input);
            let processed = pipelines
                .process_with(name, &message)
                .unwrap_or_else(|| panic!("{}: no pipeline named {name:?}", dir.display()));
            let actual = to_json(&processed, &message);
            let expected_path = PathBuf::from(
                input
                    .to_string_lossy()
                    .replace(".input.json", ".expected.json"),
            );
            if bless {
                let pretty = serde_json::to_string_pretty(&actual).expect("serializable");
                fs::write(&expected_path, pretty + "\n").expect("writable fixture");
            } else {
                match fs::read_to_string(&expected_path) {
                    Err(_) => failures.push(format!(
                        "{}: missing; run with MQTT2ES_BLESS=1 to create it",
                        expected_path.display()
                    )),
                    Ok(text) => {
                        let expected: Value = serde_json::from_str(&text).expect("valid json");
                        if expected != actual {
                            failures.push(format!(
                                "{}:\n  expected {expected}\n  actual   {actual}",
                                expected_path.display()
                            ));
                        }
                    }
                }
            }
            covered.push(name.to_owned());
        }
    }
    for name in pipelines.names() {
        if !covered.iter().any(|c| c == name) {
            failures.push(format!("pipeline {name:?} has no golden fixtures"));
        }
    }
    assert!(
        failures.is_empty(),
        "golden mismatches:\n{}",
        failures.join("\n")
    );
}

/// Files load in name order and the first match wins: `status` and `telemetry` must take their
/// topics before the catch-all `zz-default` does.
#[test]
fn shipped_pipelines_route_status_and_telemetry_before_the_catch_all() {
    let pipelines = Pipelines::load_dir(
        &root().join("pipelines"),
        &IndexPolicy::default(),
        &DecodeLimits::default(),
    )
    .expect("the shipped pipelines load");
    let route = |topic: &str, payload: &str| {
        let message = Message {
            topic: topic.to_owned(),
            payload: payload.as_bytes().into(),
            qos: QoS::AtLeastOnce,
            retain: false,
            reading: crate::reading::ReadingId::from_u128(1),
            received_at: "2026-11-22T10:00:00Z".parse().expect("a time"),
            user_properties: Vec::new(),
        };
        match pipelines.process(&message) {
            Processed::Document(doc) => (doc.pipeline.to_string(), doc.index),
            other => panic!(
                "{topic}: expected a document, got {}",
                to_json(&other, &message)
            ),
        }
    };
    let expect = |pipeline: &str, index: &str| (pipeline.to_owned(), index.to_owned());
    assert_eq!(
        route("sensors/home/pi1/status", r#"{"state":"offline"}"#),
        expect("status", "mqtt2es-status-home")
    );
    assert_eq!(
        route("sensors/home/pi1/telemetry", r#"{"temp_c":21.5}"#),
        expect("telemetry", "mqtt2es-telemetry-home")
    );
    assert_eq!(
        route("sensors/home/pi1/config", r#"{"interval_s":10}"#),
        expect("default", "mqtt2es-messages")
    );
}
