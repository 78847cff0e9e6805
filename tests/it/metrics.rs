//! The operations surface of the real binary: `/metrics`, `/healthz`, `/readyz` over HTTP, and
//! the `{prefix}metrics` documents it ships into the search node.

use std::time::{Duration, Instant};

use serde_json::{Value, json};

use crate::support::bridge::{Bridge, BridgeSpec};
use crate::support::metrics::{get, sample, wait_for_readyz, wait_for_samples};
use crate::support::publish::{publish, publish_lines_qos1};
use crate::support::readings::{readings, readings_pipeline, start_readings_bridge_with};
use crate::support::subscriber::Subscriber;
use crate::support::{Mosquitto, SearchNode, wait_for_count};

#[tokio::test(flavor = "multi_thread")]
async fn metrics_count_published_readings_stored_documents_and_a_dead_letter_by_reason() {
    let node = SearchNode::shared();
    let broker = Mosquitto::start_unbounded();
    let (mut bridge, index) =
        start_readings_bridge_with(BridgeSpec::new(broker.port(), &node.url()));
    let address = bridge.metrics_address();

    let (status, body) = get(address, "/healthz").await;
    assert_eq!(status, 200, "{body}");
    let sent = publish_lines_qos1(
        broker.port(),
        "sensors/lab/pi-01/telemetry",
        &readings("pi-01", 0, 5),
    );
    assert_eq!(sent, 5);
    publish(
        broker.port(),
        "sensors/lab/pi-01/telemetry",
        1,
        b"{\"seq\": ",
    );
    assert_eq!(
        wait_for_count(node, &index, 5, Duration::from_secs(30)).await,
        5
    );
    assert_eq!(
        wait_for_count(
            node,
            &bridge.dead_letter_index(),
            1,
            Duration::from_secs(30)
        )
        .await,
        1
    );

    let text = wait_for_samples(
        address,
        &[
            ("mqtt2es_messages_in_total{source=\"upstream\"}", 6.0),
            ("mqtt2es_messages_in_total{source=\"broker\"}", 0.0),
            ("mqtt2es_documents_stored_total", 5.0),
            ("mqtt2es_dead_letters_total{reason=\"invalid_json\"}", 1.0),
            ("mqtt2es_connected_clients{source=\"upstream\"}", 1.0),
            ("mqtt2es_queue_depth{queue=\"sink\"}", 0.0),
            ("mqtt2es_end_to_end_latency_seconds_count", 5.0),
        ],
        Duration::from_secs(30),
    )
    .await;
    let requests = sample(&text, "mqtt2es_bulk_requests_total").expect("bulk requests");
    assert!(requests >= 1.0, "{text}");
    assert_eq!(
        sample(&text, "mqtt2es_bulk_request_duration_seconds_count"),
        Some(requests),
        "every bulk request is timed:\n{text}"
    );
    assert_eq!(sample(&text, "mqtt2es_retries_total"), Some(0.0), "{text}");
}

/// The sum of `mqtt2es.<field>` over every metrics document in `index` (0 while there is none).
async fn metrics_sum(node: &SearchNode, index: &str, field: &str) -> u64 {
    if node.try_count(index).await.unwrap_or(0) == 0 {
        return 0;
    }
    let hits = node.search(index, json!({"size": 1000})).await;
    hits["hits"]["hits"]
        .as_array()
        .map(|hits| {
            hits.iter()
                .filter_map(|hit| hit["_source"]["mqtt2es"][field].as_u64())
                .sum()
        })
        .unwrap_or(0)
}

#[tokio::test(flavor = "multi_thread")]
async fn readyz_says_503_with_a_reason_until_elasticsearch_answers_and_200_after() {
    let mut node = SearchNode::start_private();
    node.stop();
    let broker = Mosquitto::start_unbounded();
    let spec = BridgeSpec::new(broker.port(), &node.url())
        .pipeline("readings.yaml", readings_pipeline())
        .metrics("elasticsearch_answer_max_age_s", 3)
        .metrics("ship_interval_s", 1);
    let mut bridge = Bridge::start(&spec);
    let address = bridge.metrics_address();

    let (status, body) = get(address, "/healthz").await;
    assert_eq!(status, 200, "alive while elasticsearch is away: {body}");
    bridge.wait_for_log(
        "elasticsearch not ready for setup",
        1,
        Duration::from_secs(30),
    );
    let (status, reason) = get(address, "/readyz").await;
    assert_eq!(status, 503, "{reason}");
    assert!(reason.contains("setup"), "{reason}");

    node.start();
    wait_for_readyz(address, 200, Duration::from_secs(90)).await;
    bridge.wait_subscribed();

    node.stop();
    let reason = wait_for_readyz(address, 503, Duration::from_secs(30)).await;
    assert!(
        reason.contains("elasticsearch has not answered"),
        "{reason}"
    );
    assert_eq!(
        get(address, "/healthz").await.0,
        200,
        "alive, only not ready"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn metrics_documents_that_cannot_be_shipped_are_logged_once_and_folded_into_the_next() {
    let mut node = SearchNode::start_private();
    let broker = Mosquitto::start_unbounded();
    let spec = BridgeSpec::new(broker.port(), &node.url()).metrics("ship_interval_s", 1);
    let (mut bridge, index) = start_readings_bridge_with(spec);
    let metrics_index = format!("{}metrics", bridge.prefix());

    node.stop();
    let sent = publish_lines_qos1(
        broker.port(),
        "sensors/lab/pi-03/telemetry",
        &readings("pi-03", 0, 3),
    );
    assert_eq!(sent, 3);
    // Every interval tries again (debug), but only the first failure is a warning.
    bridge.wait_for_log("metrics document not shipped", 3, Duration::from_secs(30));
    assert_eq!(
        bridge
            .logs()
            .matches("metrics document not shipped; the next interval tries again")
            .count(),
        1,
        "{}",
        bridge.logs()
    );

    node.start();
    assert_eq!(
        wait_for_count(&node, &index, 3, Duration::from_secs(60)).await,
        3
    );
    bridge.wait_for_log(
        "metrics documents are shipped again",
        1,
        Duration::from_secs(30),
    );
    let deadline = Instant::now() + Duration::from_secs(30);
    while metrics_sum(&node, &metrics_index, "documents_stored").await < 3 {
        assert!(Instant::now() < deadline, "{}", bridge.logs());
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    assert_eq!(
        metrics_sum(&node, &metrics_index, "documents_stored").await,
        3
    );
    assert_eq!(metrics_sum(&node, &metrics_index, "messages_in").await, 3);
}

#[tokio::test(flavor = "multi_thread")]
async fn shipped_metrics_documents_carry_the_schema_fields_and_add_up_to_the_stored_readings() {
    let node = SearchNode::shared();
    let broker = Mosquitto::start_unbounded();
    let spec = BridgeSpec::new(broker.port(), &node.url())
        .metrics("ship_interval_s", 1)
        .metrics("instance", "it-gateway");
    let (bridge, index) = start_readings_bridge_with(spec);
    let metrics_index = format!("{}metrics", bridge.prefix());

    let sent = publish_lines_qos1(
        broker.port(),
        "sensors/lab/pi-02/telemetry",
        &readings("pi-02", 0, 20),
    );
    assert_eq!(sent, 20);
    assert_eq!(
        wait_for_count(node, &index, 20, Duration::from_secs(30)).await,
        20
    );

    // Interval documents diff cumulative counters, so together they count each reading once.
    let deadline = Instant::now() + Duration::from_secs(60);
    let docs = loop {
        if node.try_count(&metrics_index).await.unwrap_or(0) == 0 {
            assert!(
                Instant::now() < deadline,
                "no metrics document:\n{}",
                bridge.logs()
            );
            tokio::time::sleep(Duration::from_millis(250)).await;
            continue;
        }
        let hits = node
            .search(
                &metrics_index,
                json!({"size": 1000, "sort": [{"@timestamp": "asc"}]}),
            )
            .await;
        let docs: Vec<Value> = hits["hits"]["hits"]
            .as_array()
            .map(|hits| hits.iter().map(|hit| hit["_source"].clone()).collect())
            .unwrap_or_default();
        let stored: u64 = docs
            .iter()
            .filter_map(|doc| doc["mqtt2es"]["documents_stored"].as_u64())
            .sum();
        if stored >= 20 {
            assert_eq!(stored, 20, "{docs:#?}");
            break docs;
        }
        assert!(
            Instant::now() < deadline,
            "metrics documents add up to {stored} stored, not 20: {docs:#?}\n{}",
            bridge.logs()
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    };
    let messages_in: u64 = docs
        .iter()
        .filter_map(|doc| doc["mqtt2es"]["messages_in"].as_u64())
        .sum();
    assert_eq!(messages_in, 20, "{docs:#?}");

    let busy = docs
        .iter()
        .find(|doc| doc["mqtt2es"]["documents_stored"].as_u64() > Some(0))
        .expect("an interval with stored documents");
    assert!(busy["@timestamp"].is_string(), "{busy}");
    let figures = &busy["mqtt2es"];
    assert_eq!(figures["instance"], "it-gateway", "{busy}");
    assert_eq!(figures["mode"], "upstream", "{busy}");
    assert!(figures["interval_s"].as_f64() > Some(0.0), "{busy}");
    for count in [
        "messages_in",
        "dead_letters",
        "retries",
        "bulk_requests",
        "queue_depth",
    ] {
        assert!(figures[count].is_u64(), "{count} in {busy}");
    }
    assert_eq!(figures["connected_clients"], 1, "{busy}");
    assert!(figures["documents_per_s"].as_f64() > Some(0.0), "{busy}");
    for latency in ["bulk_latency_ms", "latency_ms"] {
        let avg = figures[latency]["avg"].as_f64().expect("avg");
        let max = figures[latency]["max"].as_f64().expect("max");
        assert!(avg >= 0.0 && max >= avg, "{latency} in {busy}");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn in_broker_mode_readyz_says_ready_and_metrics_count_connected_devices_and_their_messages() {
    let node = SearchNode::shared();
    let mut bridge = Bridge::start(
        &BridgeSpec::embedded(&node.url()).pipeline("readings.yaml", readings_pipeline()),
    );
    let port = bridge.broker_port();
    let address = bridge.metrics_address();
    let body = wait_for_readyz(address, 200, Duration::from_secs(30)).await;
    assert!(body.contains("ready"), "{body}");

    // A subscriber that stays connected is one connected client.
    let subscriber = Subscriber::to(port, "sensors/#").spawn();
    wait_for_samples(
        address,
        &[(r#"mqtt2es_connected_clients{source="broker"}"#, 1.0)],
        Duration::from_secs(30),
    )
    .await;

    let sent = publish_lines_qos1(
        port,
        "sensors/lab/pi-01/telemetry",
        &readings("pi-01", 0, 4),
    );
    assert_eq!(sent, 4);
    let index = format!("{}readings", bridge.prefix());
    assert_eq!(
        wait_for_count(node, &index, 4, Duration::from_secs(30)).await,
        4
    );
    wait_for_samples(
        address,
        &[
            (r#"mqtt2es_messages_in_total{source="broker"}"#, 4.0),
            (r#"mqtt2es_connected_clients{source="broker"}"#, 1.0),
        ],
        Duration::from_secs(30),
    )
    .await;

    drop(subscriber);
    wait_for_samples(
        address,
        &[(r#"mqtt2es_connected_clients{source="broker"}"#, 0.0)],
        Duration::from_secs(30),
    )
    .await;
}
