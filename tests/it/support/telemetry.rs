//! The shipped telemetry pipeline (`pipelines/telemetry.yaml`) in tests: bridges running it
//! as users get it or routed into the bridge's own prefix, and the data contract its documents
//! follow.

use serde_json::Value;

use super::bridge::{Bridge, BridgeSpec};
use super::{Mosquitto, SearchNode};

/// The shipped telemetry pipeline, as a user gets it.
const SHIPPED_TELEMETRY: &str = include_str!("../../../pipelines/telemetry.yaml");

/// The shipped pipelines, telemetry routed into the bridge's own prefix: `setup` makes
/// `{prefix}telemetry-*` the time-series streams, as it makes `mqtt2es-telemetry-*` for users.
pub fn with_shipped_pipelines(spec: BridgeSpec) -> BridgeSpec {
    spec.pipeline(
        "telemetry.yaml",
        SHIPPED_TELEMETRY.replace("mqtt2es-telemetry-{{site}}", "telemetry-{{site}}"),
    )
    .default_pipeline()
}

/// The time-series stream of site `lab` under the shipped pipelines' routing.
pub fn telemetry_index(bridge: &Bridge) -> String {
    format!("{}telemetry-lab", bridge.prefix())
}

/// A bridge on `broker` with the shipped telemetry pipeline, subscribed; and the data stream
/// the readings of `site` land in.
pub fn shipped_telemetry_bridge(
    broker: &Mosquitto,
    node: &SearchNode,
    site: &str,
) -> (Bridge, String) {
    let mut bridge = Bridge::start(
        &BridgeSpec::new(broker.port(), &node.url()).pipeline("telemetry.yaml", SHIPPED_TELEMETRY),
    );
    bridge.wait_subscribed();
    let index = format!("{}mqtt2es-telemetry-{site}", bridge.prefix());
    (bridge, index)
}

/// Every stored reading of `index`: the data contract's fields, the device's own time.
pub async fn assert_readings_follow_the_contract(
    node: &SearchNode,
    index: &str,
    site: &str,
) -> Vec<Value> {
    let hits = node
        .search(
            index,
            serde_json::json!({"size": 1000, "query": {"match_all": {}}}),
        )
        .await;
    let documents: Vec<Value> = hits["hits"]["hits"]
        .as_array()
        .expect("hits")
        .iter()
        .map(|hit| hit["_source"].clone())
        .collect();
    for document in &documents {
        assert_eq!(document["site"], site, "{document}");
        for field in ["temperature_c", "humidity", "battery"] {
            assert!(document[field].is_f64(), "{field} in {document}");
        }
        assert!(document["device"].is_string(), "{document}");
        assert!(
            document["mqtt2es"]["timestamp_fallback"].is_null(),
            "the device's ts was not taken as @timestamp: {document}"
        );
        assert!(document["@timestamp"].is_string(), "{document}");
    }
    documents
}
