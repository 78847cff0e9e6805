//! The test readings: what a fleet of sensors publishes (`readings`, `devices_at`), the pipeline
//! that stores them (`readings_pipeline`), and a bridge running it (`start_readings_bridge`),
//! shared by every module that sends readings through a bridge.

use super::bridge::{Bridge, BridgeSpec};
use super::{Mosquitto, SearchNode};

/// A pipeline for test readings: site and device from the topic, a deterministic id per reading.
pub fn readings_pipeline() -> String {
    r#"
topics: ["sensors/+/+/telemetry"]
payload: json
stages:
  - topic: {pattern: "sensors/{site}/{device}/telemetry"}
  - rename: {from: temp_c, to: temperature_c}
  - route: {index: "readings"}
  - id: {fields: [device, seq]}
"#
    .to_string()
}

/// The readings pipeline without its `id` stage: a document's id is then its reading id, so a
/// reading stored twice (shipped again, retried on another node) shows as two documents
/// instead of being folded by a payload id.
pub fn readings_pipeline_by_reading_id() -> String {
    r#"
topics: ["sensors/+/+/telemetry"]
payload: json
stages:
  - topic: {pattern: "sensors/{site}/{device}/telemetry"}
  - route: {index: "readings"}
"#
    .to_string()
}

/// A bridge on `broker` and `node` with the readings pipeline, subscribed; and the data stream
/// its readings land in.
pub fn start_readings_bridge(broker: &Mosquitto, node: &SearchNode) -> (Bridge, String) {
    start_readings_bridge_with(BridgeSpec::new(broker.port(), &node.url()))
}

/// Like `start_readings_bridge`, from a spec a test adjusted (environment, extra sections).
pub fn start_readings_bridge_with(spec: BridgeSpec) -> (Bridge, String) {
    let mut bridge = Bridge::start(&spec.pipeline("readings.yaml", readings_pipeline()));
    bridge.wait_subscribed();
    let index = format!("{}readings", bridge.prefix());
    (bridge, index)
}

/// `count` readings for `device`, each with a distinct `seq`, as JSON lines.
pub fn readings(device: &str, first_seq: usize, count: usize) -> Vec<String> {
    (first_seq..first_seq + count)
        .map(|seq| {
            format!(
                r#"{{"device_id":"{device}","seq":{seq},"temp_c":{:.1},"humidity":{:.1},"battery":0.9}}"#,
                15.0 + (seq % 100) as f64 / 10.0,
                40.0 + (seq % 50) as f64 / 5.0
            )
        })
        .collect()
}

/// One device's share of a parallel load: its topic and its readings.
pub struct DeviceLoad {
    pub topic: String,
    pub lines: Vec<String>,
}

/// `count` devices `pi-<n>` at `site`, each publishing `per_device` readings whose `seq` starts
/// at `n * seq_stride` (a stride of `per_device` or more makes every `seq` unique).
pub fn devices_at(
    site: &str,
    count: usize,
    per_device: usize,
    seq_stride: usize,
) -> Vec<DeviceLoad> {
    (0..count)
        .map(|n| {
            let device = format!("pi-{n}");
            DeviceLoad {
                topic: format!("sensors/{site}/{device}/telemetry"),
                lines: readings(&device, n * seq_stride, per_device),
            }
        })
        .collect()
}
