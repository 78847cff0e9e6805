//! mqtt2es in front of a real 3-node cluster of the engine the tests use: a node SIGKILLed in
//! the middle of a stream, the first listed node down at start. And a cluster block (the
//! flood-stage read-only block) on the shared node: an alarm, never a dead letter.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rumqttc::{AsyncClient, Event, MqttOptions, Packet, QoS};
use serde_json::json;

use crate::support::bridge::{Bridge, BridgeSpec};
use crate::support::metrics::{get, sample, wait_for_readyz, wait_for_samples};
use crate::support::readings::readings_pipeline_by_reading_id;
use crate::support::soak_setting;
use crate::support::{Mosquitto, SearchCluster, SearchNode, wait_for_count};

/// An embedded-broker bridge writing to `hosts`.
fn bridge_on(hosts: &[String]) -> Bridge {
    let spec = on_hosts(BridgeSpec::embedded("http://localhost:9200"), hosts);
    let mut bridge = Bridge::start(&spec);
    bridge.wait_ready();
    bridge
}

/// `spec` writing to the cluster's `hosts` with the readings pipeline. `url` is the one-node
/// shorthand; the cluster is given as `hosts` through the environment, so the spec's `url` must
/// be left at its default (`http://localhost:9200`): the two together are a config error.
fn on_hosts(spec: BridgeSpec, hosts: &[String]) -> BridgeSpec {
    let list = hosts
        .iter()
        .map(|h| format!("\"{h}\""))
        .collect::<Vec<_>>()
        .join(", ");
    spec.pipeline("readings.yaml", readings_pipeline_by_reading_id())
        .env("MQTT2ES_ELASTICSEARCH__HOSTS", format!("[{list}]"))
}

/// When each PUBACK came, for every device together.
type AckTimes = Arc<Mutex<Vec<Instant>>>;

/// A device publishing `count` QoS 1 readings as fast as its window of 20 allows, recording the
/// time of each PUBACK; returns how many were acknowledged.
async fn device(port: u16, name: String, count: usize, acks: AckTimes) -> usize {
    let mut options = MqttOptions::new(&name, "127.0.0.1", port);
    options
        .set_keep_alive(Duration::from_secs(30))
        .set_inflight(20);
    let (client, mut eventloop) = AsyncClient::new(options, 100);
    let topic = format!("sensors/cluster/{name}/telemetry");
    let publisher = tokio::spawn(async move {
        for seq in 0..count {
            let payload = json!({"seq": seq, "temp_c": 21.5}).to_string();
            if client
                .publish(&topic, QoS::AtLeastOnce, false, payload)
                .await
                .is_err()
            {
                return;
            }
        }
    });
    let mut acked = 0;
    let deadline = Instant::now() + Duration::from_secs(600);
    while acked < count && Instant::now() < deadline {
        match tokio::time::timeout(Duration::from_secs(120), eventloop.poll()).await {
            Ok(Ok(Event::Incoming(Packet::PubAck(_)))) => {
                acked += 1;
                acks.lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .push(Instant::now());
            }
            Ok(Ok(_)) => {}
            Ok(Err(error)) => panic!("{name}: connection failed: {error}"),
            Err(_) => panic!("{name}: no PUBACK for 120 s ({acked} of {count} acknowledged)"),
        }
    }
    publisher.abort();
    acked
}

/// The longest time between two PUBACKs (of any device) after `from`.
fn longest_gap(acks: &AckTimes, from: Instant) -> Duration {
    let mut times: Vec<Instant> = acks
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .iter()
        .copied()
        .filter(|t| *t >= from)
        .collect();
    times.sort();
    times
        .windows(2)
        .map(|w| w[1] - w[0])
        .max()
        .unwrap_or_default()
}

/// The CI-sized run (20,000 readings); `scripts/soak cluster` runs 100,000
/// (MQTT2ES_SOAK_READINGS).
#[tokio::test(flavor = "multi_thread")]
async fn a_node_sigkilled_mid_stream_and_restarted_loses_and_duplicates_nothing_and_the_acks_go_on()
{
    let readings = soak_setting("MQTT2ES_SOAK_READINGS", 20_000) as usize;
    const DEVICES: usize = 10;
    let mut cluster = SearchCluster::start(3);
    let mut bridge = bridge_on(&cluster.urls());
    let port = bridge.broker_port();
    let index = format!("{}readings", bridge.prefix());
    let acks: AckTimes = Arc::default();
    let per_device = readings / DEVICES;
    let devices: Vec<_> = (0..DEVICES)
        .map(|n| {
            tokio::spawn(device(
                port,
                format!("pi-{n}"),
                per_device,
                Arc::clone(&acks),
            ))
        })
        .collect();

    // Mid-stream: a third of the readings acknowledged.
    let deadline = Instant::now() + Duration::from_secs(300);
    while acks.lock().unwrap_or_else(|e| e.into_inner()).len() < readings / 3 {
        assert!(Instant::now() < deadline, "{}", bridge.logs());
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let killed_at = Instant::now();
    cluster.nodes[1].stop();
    // Down while another third goes by, then back.
    while acks.lock().unwrap_or_else(|e| e.into_inner()).len() < 2 * readings / 3 {
        assert!(Instant::now() < deadline, "{}", bridge.logs());
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    cluster.nodes[1].start();

    let mut acked = 0;
    for device in devices {
        acked += device.await.expect("a device");
    }
    assert_eq!(acked, DEVICES * per_device, "every reading acknowledged");
    let gap = longest_gap(&acks, killed_at);
    // A figure for the note: the failure detection time. A SIGKILLed node's connections are
    // reset at once, so its requests fail at once and go to the others; the cluster promotes
    // the replicas of its shards when it sees the node leave.
    eprintln!(
        "figure: {acked} readings from {DEVICES} devices; longest pause between PUBACKs after \
         the kill: {:.2} s",
        gap.as_secs_f64()
    );
    assert!(
        gap < Duration::from_secs(30),
        "the acks stopped for {gap:?} (longer than the request timeout)"
    );
    let node = &cluster.nodes[0];
    let stored = wait_for_count(node, &index, acked as u64, Duration::from_secs(120)).await;
    assert_eq!(stored, acked as u64, "every acknowledged reading, once");
    assert_eq!(
        node.count(&index).await,
        acked as u64,
        "a reading stored twice"
    );
    assert!(
        bridge.logs().contains("elasticsearch node gave no answer"),
        "{}",
        bridge.logs()
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn the_node_listed_first_down_at_start_is_said_once_and_the_others_store_everything() {
    let mut cluster = SearchCluster::start(3);
    cluster.nodes[0].stop();
    let mut bridge = bridge_on(&cluster.urls());
    let port = bridge.broker_port();
    let index = format!("{}readings", bridge.prefix());
    let acks: AckTimes = Arc::default();
    let acked = device(port, "pi-first".into(), 500, acks).await;
    let node = &cluster.nodes[1];
    assert_eq!(
        wait_for_count(node, &index, acked as u64, Duration::from_secs(60)).await,
        500
    );
    let logs = bridge.logs();
    let dead = cluster.nodes[0].url();
    let said = logs
        .lines()
        .filter(|l| l.contains("elasticsearch node gave no answer") && l.contains(&dead))
        .count();
    assert_eq!(said, 1, "said once:\n{logs}");
}

/// The flood-stage block (`index.blocks.read_only_allow_delete`, what the node sets itself when
/// a disk passes the flood-stage watermark) on the stream for 30 s: readings wait, unacknowledged;
/// the log, the metrics and /readyz say why; nothing is dead-lettered; all is stored once it is
/// lifted.
#[tokio::test(flavor = "multi_thread")]
async fn a_flood_stage_block_for_thirty_seconds_dead_letters_nothing_loses_nothing_and_writes_resume()
 {
    let node = SearchNode::shared();
    let mut bridge = Bridge::start(
        &BridgeSpec::embedded(&node.url())
            .pipeline("readings.yaml", readings_pipeline_by_reading_id()),
    );
    bridge.wait_ready();
    let port = bridge.broker_port();
    let metrics = bridge.metrics_address();
    let index = format!("{}readings", bridge.prefix());
    // The stream exists before it is blocked.
    let acks: AckTimes = Arc::default();
    assert_eq!(
        device(port, "pi-before".into(), 10, Arc::clone(&acks)).await,
        10
    );
    assert_eq!(
        wait_for_count(node, &index, 10, Duration::from_secs(30)).await,
        10
    );

    block(node, &index, true).await;
    let during = tokio::spawn(device(port, "pi-during".into(), 200, Arc::clone(&acks)));
    bridge.wait_for_log(
        "elasticsearch refuses writes (cluster block)",
        1,
        Duration::from_secs(30),
    );
    let reason = wait_for_readyz(metrics, 503, Duration::from_secs(10)).await;
    assert!(reason.contains("refuses writes"), "{reason}");
    wait_for_samples(
        metrics,
        &[("mqtt2es_elasticsearch_write_blocked", 1.0)],
        Duration::from_secs(10),
    )
    .await;
    // The block is the scenario's length, not a wait for anything.
    tokio::time::sleep(Duration::from_secs(30)).await;
    assert!(!during.is_finished(), "acknowledged while blocked");
    let (_, text) = get(metrics, "/metrics").await;
    assert_eq!(
        sample(&text, "mqtt2es_documents_stored_total"),
        Some(10.0),
        "nothing stored while blocked"
    );

    block(node, &index, false).await;
    assert_eq!(during.await.expect("the device"), 200);
    assert_eq!(
        wait_for_count(node, &index, 210, Duration::from_secs(60)).await,
        210
    );
    bridge.wait_for_log(
        "elasticsearch accepts writes again",
        1,
        Duration::from_secs(30),
    );
    wait_for_readyz(metrics, 200, Duration::from_secs(10)).await;
    let (_, text) = get(metrics, "/metrics").await;
    assert_eq!(
        sample(&text, "mqtt2es_elasticsearch_write_blocked"),
        Some(0.0)
    );
    let dead_letters: f64 = text
        .lines()
        .filter(|l| l.starts_with("mqtt2es_dead_letters_total{"))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum();
    assert_eq!(dead_letters, 0.0, "a dead letter:\n{text}");
    assert_eq!(node.count(&index).await, 210);
}

/// Sets (or lifts) the flood-stage block on `index`'s backing indices.
async fn block(node: &SearchNode, index: &str, on: bool) {
    let value = if on { json!(true) } else { json!(null) };
    node.request(
        reqwest::Method::PUT,
        &format!("/{index}/_settings"),
        Some(json!({"index.blocks.read_only_allow_delete": value})),
    )
    .await;
}

/// One, two and three mqtt2es instances in one `$share` group on Mosquitto, writing to the
/// cluster: every reading stored once with three; docs/s of each as a figure for the note. The
/// CI run sends 6,000 readings; `scripts/soak cluster` 60,000 (MQTT2ES_SOAK_READINGS).
#[tokio::test(flavor = "multi_thread")]
async fn instances_in_one_shared_group_store_each_reading_once_and_their_rates_are_measured() {
    let readings = soak_setting("MQTT2ES_SOAK_READINGS", 6_000) as usize / 10 * 10;
    let cluster = SearchCluster::start(3);
    let broker = Mosquitto::start_unbounded();
    let node = &cluster.nodes[0];
    let mut figures = Vec::new();
    for instances in 1..=3 {
        let group = crate::support::unique("group");
        let mut bridges: Vec<Bridge> = (0..instances)
            .map(|_| {
                let spec = on_hosts(
                    BridgeSpec::new(broker.port(), "http://localhost:9200"),
                    &cluster.urls(),
                )
                .upstream("shared_group", &group);
                Bridge::start(&spec)
            })
            .collect();
        for bridge in &mut bridges {
            bridge.wait_subscribed();
        }
        let pattern = bridges
            .iter()
            .map(|b| format!("{}readings", b.prefix()))
            .collect::<Vec<_>>()
            .join(",");
        let started = Instant::now();
        let loads = crate::support::readings::devices_at("share", 10, readings / 10, readings / 10);
        let port = broker.port();
        let sent = tokio::task::spawn_blocking(move || {
            crate::support::publish::publish_in_parallel(loads, port)
        })
        .await
        .expect("publishers") as u64;
        let deadline = Instant::now() + Duration::from_secs(300);
        let mut stored = 0;
        while stored < sent && Instant::now() < deadline {
            stored = node.try_count(&pattern).await.unwrap_or(0);
            if stored < sent {
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
        let seconds = started.elapsed().as_secs_f64();
        assert_eq!(
            stored, sent,
            "{instances} instance(s): every reading stored"
        );
        // `seq` is unique across the devices (devices_at's stride).
        let (distinct, twice) = distinct_seqs(node, &pattern).await;
        assert_eq!(
            (distinct, twice),
            (sent, 0),
            "{instances} instance(s): distinct readings and readings stored twice"
        );
        figures.push(format!(
            "{instances} instance(s): {sent} readings stored in {seconds:.1} s, {:.0} docs/s",
            sent as f64 / seconds
        ));
    }
    eprintln!("figure: {}", figures.join("; "));
}

/// Discovery against a real node: started with the node and an address nobody serves, the pool
/// is replaced by what the node publishes (itself).
#[tokio::test(flavor = "multi_thread")]
async fn sniffing_replaces_the_configured_nodes_by_those_the_cluster_publishes() {
    use mqtt2es::elastic::{ElasticsearchSettings, build_cluster, nodes};
    let node = SearchNode::shared();
    let settings = ElasticsearchSettings {
        url: "http://localhost:9200".into(),
        hosts: vec![node.url(), "http://127.0.0.1:9".into()],
        sniff: true,
        ..ElasticsearchSettings::default()
    };
    let (client, pool) = build_cluster(&settings).expect("a client");
    let sniffer = tokio::spawn(nodes::sniff(client, pool.clone(), Duration::from_secs(60)));
    let expected = format!("{}/", node.url());
    let deadline = Instant::now() + Duration::from_secs(30);
    while pool
        .urls()
        .iter()
        .map(|u| u.to_string())
        .collect::<Vec<_>>()
        != [expected.clone()]
    {
        assert!(
            Instant::now() < deadline,
            "still {:?}, not [{expected}]",
            pool.urls()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    sniffer.abort();
}

/// Distinct `seq` values in `pattern`, and how many are held by more than one document: exact
/// (a composite aggregation, page by page), where the cardinality aggregation is an estimate.
async fn distinct_seqs(node: &SearchNode, pattern: &str) -> (u64, u64) {
    let (mut distinct, mut twice) = (0, 0);
    let mut after: Option<serde_json::Value> = None;
    loop {
        let mut composite =
            json!({"size": 10000, "sources": [{"seq": {"terms": {"field": "seq"}}}]});
        if let Some(key) = &after {
            composite["after"] = key.clone();
        }
        let answer = node
            .search(
                pattern,
                json!({"size": 0, "aggs": {"seqs": {"composite": composite}}}),
            )
            .await;
        let buckets = answer["aggregations"]["seqs"]["buckets"]
            .as_array()
            .cloned()
            .unwrap_or_default();
        if buckets.is_empty() {
            return (distinct, twice);
        }
        distinct += buckets.len() as u64;
        twice += buckets
            .iter()
            .filter(|b| b["doc_count"].as_u64().unwrap_or(0) > 1)
            .count() as u64;
        after = Some(answer["aggregations"]["seqs"]["after_key"].clone());
    }
}
