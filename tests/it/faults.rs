//! Faults lose nothing that was acknowledged and duplicate nothing: the search node down for
//! 20 s, Mosquitto restarting, SIGTERM, and SIGTERM while the search node is down.

use std::time::Duration;

use crate::support::bridge::BridgeSpec;
use crate::support::publish::{publish_in_parallel, publish_lines_qos1};
use crate::support::readings::{devices_at, readings};
use crate::support::readings::{start_readings_bridge, start_readings_bridge_with};
use crate::support::{Mosquitto, SearchNode, wait_for_count};

const TOPIC: &str = "sensors/lab/pi-07/telemetry";

/// How long the node stays down: the scenario's length, not a wait for anything.
const OUTAGE: Duration = Duration::from_secs(20);

#[tokio::test(flavor = "multi_thread")]
async fn the_search_node_down_for_twenty_seconds_mid_stream_loses_and_duplicates_nothing() {
    let mut node = SearchNode::start_private();
    let broker = Mosquitto::start_unbounded();
    let (bridge, index) = start_readings_bridge(&broker, &node);

    let mut sent = publish_lines_qos1(broker.port(), TOPIC, &readings("pi-07", 0, 1000));
    assert!(wait_for_count(&node, &index, 1, Duration::from_secs(30)).await > 0);
    node.stop();
    sent += publish_lines_qos1(broker.port(), TOPIC, &readings("pi-07", 1000, 1000));
    tokio::time::sleep(OUTAGE).await;
    node.start();
    sent += publish_lines_qos1(broker.port(), TOPIC, &readings("pi-07", 2000, 1000));

    let stored = wait_for_count(&node, &index, sent as u64, Duration::from_secs(120)).await;
    assert_eq!(
        stored,
        sent as u64,
        "stored vs acknowledged:\n{}",
        bridge.logs()
    );
    assert!(
        bridge.logs().contains("retry"),
        "the outage should have been retried, not skipped:\n{}",
        bridge.logs()
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn restarting_mosquitto_mid_stream_loses_and_duplicates_nothing() {
    let node = SearchNode::shared();
    let mut broker = Mosquitto::start_unbounded();
    let (mut bridge, index) = start_readings_bridge(&broker, node);

    let mut sent = publish_lines_qos1(broker.port(), TOPIC, &readings("pi-07", 0, 3000));
    broker.restart();
    bridge.wait_for_log("connected to upstream broker", 2, Duration::from_secs(30));
    sent += publish_lines_qos1(broker.port(), TOPIC, &readings("pi-07", 3000, 1000));

    let stored = wait_for_count(node, &index, sent as u64, Duration::from_secs(120)).await;
    assert_eq!(
        stored,
        sent as u64,
        "stored vs acknowledged:\n{}",
        bridge.logs()
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn sigterm_mid_stream_flushes_exits_zero_and_a_restart_delivers_the_rest() {
    let node = SearchNode::shared();
    let broker = Mosquitto::start_unbounded();
    let (mut bridge, index) = start_readings_bridge(&broker, node);

    let sent = publish_lines_qos1(broker.port(), TOPIC, &readings("pi-07", 0, 5000));
    wait_for_count(node, &index, 1, Duration::from_secs(30)).await;
    let status = bridge.terminate(Duration::from_secs(30));
    assert!(status.success(), "exit status {status}:\n{}", bridge.logs());
    assert!(bridge.logs().contains("sink flushed"), "{}", bridge.logs());
    let before_restart = node.count(&index).await;

    bridge.restart();
    let stored = wait_for_count(node, &index, sent as u64, Duration::from_secs(120)).await;
    assert_eq!(
        stored,
        sent as u64,
        "stored vs acknowledged:\n{}",
        bridge.logs()
    );
    assert!(before_restart <= stored);
}

#[tokio::test(flavor = "multi_thread")]
async fn sigterm_while_the_search_node_is_down_acks_nothing_and_a_restart_delivers_everything() {
    let mut node = SearchNode::start_private();
    let broker = Mosquitto::start_unbounded();
    let spec =
        BridgeSpec::new(broker.port(), &node.url()).env("MQTT2ES_SHUTDOWN__GRACE_MS", "2000");
    let (mut bridge, index) = start_readings_bridge_with(spec);

    node.stop();
    let sent = publish_lines_qos1(broker.port(), TOPIC, &readings("pi-07", 0, 500));
    bridge.wait_for_log("retry", 1, Duration::from_secs(30));
    let status = bridge.terminate(Duration::from_secs(30));
    assert!(status.success(), "exit status {status}:\n{}", bridge.logs());
    assert!(
        bridge.logs().contains("grace period over"),
        "{}",
        bridge.logs()
    );

    // Had any of the 500 been acknowledged without being stored, the broker would not hold it
    // any more and the count below would fall short.
    node.start();
    bridge.restart();
    let stored = wait_for_count(&node, &index, sent as u64, Duration::from_secs(120)).await;
    assert_eq!(
        stored,
        sent as u64,
        "stored vs acknowledged:\n{}",
        bridge.logs()
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_broker_that_forgot_the_session_is_subscribed_to_again() {
    let node = SearchNode::shared();
    // Without persistence a restarted Mosquitto knows nothing of our session or subscriptions.
    let mut broker = crate::support::Mosquitto::start_with(&["persistence false"]);
    let (mut bridge, index) = start_readings_bridge(&broker, node);
    let first = publish_lines_qos1(broker.port(), TOPIC, &readings("pi-07", 0, 100));
    assert_eq!(
        wait_for_count(node, &index, first as u64, Duration::from_secs(30)).await,
        first as u64
    );

    broker.restart();
    bridge.wait_for_log(" subscribed", 2, Duration::from_secs(30));
    let second = publish_lines_qos1(broker.port(), TOPIC, &readings("pi-07", 100, 100));
    let total = (first + second) as u64;
    assert_eq!(
        wait_for_count(node, &index, total, Duration::from_secs(30)).await,
        total,
        "{}",
        bridge.logs()
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_broker_with_an_unlimited_in_flight_window_gets_every_ack_and_never_stalls() {
    let node = SearchNode::shared();
    // With no window the broker sends everything at once, so far more acks come due than
    // rumqttc's request queue holds while the pump waits on a full pipeline.
    let broker = crate::support::Mosquitto::start_with(&[
        "max_queued_messages 0",
        "max_inflight_messages 0",
    ]);
    let (mut bridge, index) = start_readings_bridge(&broker, node);

    let port = broker.port();
    let sent = publish_in_parallel(devices_at("lab", 4, 5000, 0), port);

    let stored = wait_for_count(node, &index, sent as u64, Duration::from_secs(120)).await;
    assert_eq!(stored, sent as u64, "stored vs acknowledged");

    // Every ack reached the broker: after a restart it has nothing left to redeliver, so the
    // second run stores only the sentinel and meets no already-stored document.
    assert!(bridge.terminate(Duration::from_secs(30)).success());
    bridge.restart();
    bridge.wait_for_log("connected to upstream broker", 2, Duration::from_secs(30));
    let sentinel = publish_lines_qos1(port, "sensors/lab/pi-9/telemetry", &readings("pi-9", 0, 1));
    let total = (sent + sentinel) as u64;
    assert_eq!(
        wait_for_count(node, &index, total, Duration::from_secs(60)).await,
        total
    );
    assert!(bridge.terminate(Duration::from_secs(30)).success());
    let logs = bridge.logs();
    let reports: Vec<&str> = logs
        .lines()
        .filter(|l| l.contains("sink flushed"))
        .collect();
    assert_eq!(reports.len(), 2, "{logs}");
    let last_report = reports[1];
    assert!(
        last_report.contains("already_stored: 0,"),
        "the broker redelivered messages whose acks were lost: {last_report}"
    );
}
