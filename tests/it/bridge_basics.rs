//! The bridge end to end on real parts: Mosquitto → mqtt2es → the search node.

use std::time::Duration;

use serde_json::json;

use crate::support::bridge::BridgeSpec;
use crate::support::publish::{Publisher, publish, publish_in_parallel};
use crate::support::readings::{
    DeviceLoad, readings, start_readings_bridge, start_readings_bridge_with,
};
use crate::support::{Mosquitto, SearchNode, wait_for_count};

#[tokio::test(flavor = "multi_thread")]
async fn a_reading_published_with_mosquitto_pub_becomes_one_document_with_the_pipeline_fields() {
    let node = SearchNode::shared();
    let broker = Mosquitto::start_unbounded();
    let (_bridge, index) = start_readings_bridge(&broker, node);

    publish(
        broker.port(),
        "sensors/lab/pi-01/telemetry",
        1,
        br#"{"temp_c":21.4,"seq":1,"ts":"2026-11-22T10:00:00Z"}"#,
    );

    assert_eq!(
        wait_for_count(node, &index, 1, Duration::from_secs(30)).await,
        1
    );
    let hits = node.search(&index, json!({"size": 1})).await;
    let doc = &hits["hits"]["hits"][0]["_source"];
    assert_eq!(doc["site"], "lab", "{doc}");
    assert_eq!(doc["device"], "pi-01", "{doc}");
    assert_eq!(doc["temperature_c"], 21.4, "{doc}");
    assert_eq!(doc["mqtt"]["topic"], "sensors/lab/pi-01/telemetry", "{doc}");
    assert_eq!(doc["mqtt"]["qos"], 1, "{doc}");
    assert!(doc["@timestamp"].is_string(), "{doc}");
}

#[tokio::test(flavor = "multi_thread")]
async fn ten_thousand_qos1_messages_across_fifty_topics_land_gzipped_as_exactly_as_many_documents()
{
    let node = SearchNode::shared();
    let broker = Mosquitto::start_unbounded();
    // The node is on loopback, where `gzip: auto` sends bodies plain: compressed on purpose
    // here, so that the real node's unpacking of our gzip is proven too.
    let spec = BridgeSpec::new(broker.port(), &node.url()).gzip(true);
    let (mut bridge, index) = start_readings_bridge_with(spec);

    let port = broker.port();
    let loads = (0..50)
        .map(|topic| {
            let device = format!("pi-{topic:02}");
            DeviceLoad {
                topic: format!("sensors/site{}/{device}/telemetry", topic % 5),
                lines: readings(&device, 0, 200),
            }
        })
        .collect();
    let sent = publish_in_parallel(loads, port);
    assert!(
        sent >= 9_000,
        "mosquitto_pub got only {sent} PUBACKs of 10000"
    );

    let stored = wait_for_count(node, &index, sent as u64, Duration::from_secs(120)).await;
    assert_eq!(
        stored, sent as u64,
        "documents stored vs messages acknowledged to mosquitto_pub"
    );
    // Nothing more arrives later either (no duplicates trickling in): the deterministic ids
    // would turn a duplicate into a 409, so the count is the number of distinct readings.
    let devices = node
        .search(
            &index,
            json!({"size": 0, "aggs": {"d": {"cardinality": {"field": "device.keyword"}}}}),
        )
        .await;
    assert_eq!(devices["aggregations"]["d"]["value"], 50, "{devices}");
    let _ = bridge.terminate(Duration::from_secs(30));
}

#[tokio::test(flavor = "multi_thread")]
async fn a_hundred_qos2_messages_are_each_stored_once_and_every_exchange_completes() {
    let node = SearchNode::shared();
    let broker = Mosquitto::start_unbounded();
    let spec = BridgeSpec::new(broker.port(), &node.url()).upstream("qos", 2);
    let (mut bridge, index) = start_readings_bridge_with(spec);

    let published = Publisher::to(broker.port())
        .qos(2)
        .send_lines("sensors/lab/pi-q2/telemetry", &readings("pi-q2", 0, 100));
    let sent = published.log.matches("received PUBCOMP").count();
    assert!(sent >= 50, "mosquitto_pub completed only {sent} of 100");

    // Mosquitto keeps at most 20 QoS 2 messages in flight to the bridge until it answers each
    // PUBREL with a PUBCOMP: without those, the stream would stop at 20.
    let stored = wait_for_count(node, &index, sent as u64, Duration::from_secs(60)).await;
    assert_eq!(
        stored, sent as u64,
        "documents stored vs exchanges completed"
    );
    let seqs = node
        .search(
            &index,
            json!({"size": 0, "aggs": {"s": {"cardinality": {"field": "seq"}}}}),
        )
        .await;
    assert_eq!(seqs["aggregations"]["s"]["value"], sent, "{seqs}");
    let _ = bridge.terminate(Duration::from_secs(30));
}
