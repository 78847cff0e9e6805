//! Bad input becomes a dead letter with a reason, and the stream around it carries on.

use std::time::Duration;

use serde_json::{Value, json};

use crate::support::bridge::{Bridge, BridgeSpec};
use crate::support::publish::publish;
use crate::support::readings::start_readings_bridge;
use crate::support::{Mosquitto, SearchNode, wait_for_count};

/// Reasons of every dead letter in `index`, sorted, with the stage that gave each.
async fn dead_letter_reasons(node: &SearchNode, index: &str) -> Vec<(String, String)> {
    let response = node
        .search(index, json!({"size": 100, "sort": [{"@timestamp": "asc"}]}))
        .await;
    let mut reasons: Vec<(String, String)> = response["hits"]["hits"]
        .as_array()
        .expect("hits")
        .iter()
        .map(|hit| {
            let source = &hit["_source"];
            (
                source["reason"].as_str().unwrap_or("?").to_string(),
                source["stage"].as_str().unwrap_or("?").to_string(),
            )
        })
        .collect();
    reasons.sort();
    reasons
}

#[tokio::test(flavor = "multi_thread")]
async fn each_kind_of_bad_input_is_dead_lettered_with_its_reason_while_good_readings_flow() {
    let node = SearchNode::shared();
    let broker = Mosquitto::start_unbounded();
    let pipeline = r#"
topics: ["sensors/+/+/telemetry"]
payload: json
stages:
  - topic: {pattern: "sensors/{site}/{device}/telemetry"}
  - route: {index: "readings-{{site}}"}
  - id: {fields: [device, seq]}
"#;
    let spec = BridgeSpec::new(broker.port(), &node.url())
        .pipeline("readings.yaml", pipeline)
        .max_payload_bytes(4096);
    let mut bridge = Bridge::start(&spec);
    bridge.wait_subscribed();

    let port = broker.port();
    let good = |seq: u32| format!(r#"{{"seq":{seq},"temp_c":20.5}}"#).into_bytes();
    let topic = "sensors/lab/pi-01/telemetry";
    let deep = format!("{}1{}", r#"{"a":"#.repeat(200), "}".repeat(200));
    let long_segment = "s".repeat(300);
    let bad: Vec<(String, Vec<u8>)> = vec![
        (topic.into(), br#"{"seq": 1, "temp_c": "#.to_vec()),
        (topic.into(), vec![0xff, 0xfe, 0x00, 0x80]),
        (topic.into(), b"[1,2,3]".to_vec()),
        (topic.into(), deep.into_bytes()),
        (topic.into(), vec![b'x'; 5000]),
        ("sensors/../pi-01/telemetry".into(), good(100)),
        ("sensors/_x/pi-01/telemetry".into(), good(101)),
        ("sensors/A,B*/pi-01/telemetry".into(), good(102)),
        (format!("sensors/{long_segment}/pi-01/telemetry"), good(103)),
    ];
    for (seq, (bad_topic, payload)) in bad.iter().enumerate() {
        publish(port, topic, 1, &good(seq as u32));
        publish(port, bad_topic, 1, payload);
    }
    publish(port, topic, 1, &good(99));

    let readings = format!("{}readings-lab", bridge.prefix());
    let dead_letters = bridge.dead_letter_index();
    assert_eq!(
        wait_for_count(node, &readings, 10, Duration::from_secs(30)).await,
        10,
        "good readings around the bad ones"
    );
    assert_eq!(
        wait_for_count(node, &dead_letters, 9, Duration::from_secs(30)).await,
        9,
        "one dead letter per bad message:\n{}",
        bridge.logs()
    );
    let reasons = dead_letter_reasons(node, &dead_letters).await;
    let expected: Vec<(String, String)> = [
        ("invalid_index", "route"),
        ("invalid_index", "route"),
        ("invalid_index", "route"),
        ("invalid_index", "route"),
        ("invalid_json", "decode"),
        ("invalid_utf8", "decode"),
        ("not_an_object", "decode"),
        ("payload_too_large", "decode"),
        ("too_deep", "decode"),
    ]
    .iter()
    .map(|(r, s)| (r.to_string(), s.to_string()))
    .collect();
    assert_eq!(reasons, expected);

    // The non-UTF-8 payload is kept, base64-encoded, so nothing about it is lost.
    let binary = node
        .search(
            &dead_letters,
            json!({"query": {"term": {"reason": "invalid_utf8"}}}),
        )
        .await;
    let source: &Value = &binary["hits"]["hits"][0]["_source"];
    assert_eq!(source["payload_encoding"], "base64", "{source}");
    assert_eq!(source["payload"], "//4AgA==", "{source}");
    assert_eq!(source["mqtt"]["topic"], topic, "{source}");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_mapping_conflict_dead_letters_only_the_offending_document() {
    let node = SearchNode::shared();
    let broker = Mosquitto::start_unbounded();
    let (bridge, readings) = start_readings_bridge(&broker, node);

    let topic = "sensors/lab/pi-02/telemetry";
    publish(broker.port(), topic, 1, br#"{"seq":1,"temp_c":21.5}"#);
    // Stored first, so the stream maps the field as a number before the string comes: sent
    // together, two requests in flight at once could map it either way.
    assert_eq!(
        wait_for_count(node, &readings, 1, Duration::from_secs(30)).await,
        1
    );
    publish(broker.port(), topic, 1, br#"{"seq":2,"temp_c":"warm"}"#);
    publish(broker.port(), topic, 1, br#"{"seq":3,"temp_c":22.0}"#);

    let dead_letters = bridge.dead_letter_index();
    assert_eq!(
        wait_for_count(node, &readings, 2, Duration::from_secs(30)).await,
        2
    );
    assert_eq!(
        wait_for_count(node, &dead_letters, 1, Duration::from_secs(30)).await,
        1
    );
    let reasons = dead_letter_reasons(node, &dead_letters).await;
    let hit = node.search(&dead_letters, json!({"size": 1})).await;
    let source = &hit["hits"]["hits"][0]["_source"];
    assert_eq!(
        reasons,
        vec![("mapping_conflict".to_string(), "bulk".to_string())],
        "{}",
        source["error"]["message"]
    );
    assert_eq!(
        source["payload"], r#"{"seq":2,"temp_c":"warm"}"#,
        "{source}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_packet_over_the_read_limit_is_dead_lettered_once_and_the_stream_goes_on() {
    let node = SearchNode::shared();
    let broker = Mosquitto::start_unbounded();
    let spec = BridgeSpec::new(broker.port(), &node.url())
        .max_payload_bytes(4096)
        .max_packet_bytes(8192);
    let (bridge, readings) = crate::support::readings::start_readings_bridge_with(spec);

    // MQTT 3.1.1 cannot tell the broker our packet limit: the broker sends the 20 kB message
    // anyway, and it must neither block the reading behind it nor loop as duplicates.
    let topic = "sensors/lab/pi-03/telemetry";
    publish(broker.port(), topic, 1, br#"{"seq":1,"temp_c":20.0}"#);
    publish(broker.port(), topic, 1, &vec![b'x'; 20_000]);
    publish(broker.port(), topic, 1, br#"{"seq":2,"temp_c":20.5}"#);

    assert_eq!(
        wait_for_count(node, &readings, 2, Duration::from_secs(60)).await,
        2,
        "{}",
        bridge.logs()
    );
    let dead_letters = bridge.dead_letter_index();
    assert_eq!(
        wait_for_count(node, &dead_letters, 1, Duration::from_secs(30)).await,
        1
    );
    let reasons = dead_letter_reasons(node, &dead_letters).await;
    assert_eq!(
        reasons,
        vec![("payload_too_large".to_string(), "decode".to_string())]
    );
    let hit = node.search(&dead_letters, json!({"size": 1})).await;
    let source = &hit["hits"]["hits"][0]["_source"];
    assert_eq!(source["payload_bytes"], 20_000, "{source}");
}
