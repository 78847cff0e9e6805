//! Scaling out: several mqtt2es instances in one `$share` group split a stream between them.

use std::time::Duration;

use serde_json::json;

use crate::support::bridge::{Bridge, BridgeSpec};
use crate::support::publish::publish_in_parallel;
use crate::support::readings::devices_at;
use crate::support::{Mosquitto, SearchNode, wait_for_count};

#[tokio::test(flavor = "multi_thread")]
async fn three_instances_in_one_shared_group_store_every_message_exactly_once() {
    let node = SearchNode::shared();
    let broker = Mosquitto::start_unbounded();
    let group = crate::support::unique("group");
    // No `id` stage on purpose: a message delivered to two instances would be two documents.
    let pipeline = |instance: usize| {
        format!(
            r#"
topics: ["sensors/+/+/telemetry"]
stages:
  - set: {{field: instance, value: {instance}}}
  - route: {{index: "readings"}}
"#
        )
    };
    let mut bridges: Vec<Bridge> = (0..3)
        .map(|instance| {
            let spec = BridgeSpec::new(broker.port(), &node.url())
                .pipeline("readings.yaml", pipeline(instance))
                .upstream("shared_group", &group);
            Bridge::start(&spec)
        })
        .collect();
    for bridge in &mut bridges {
        bridge.wait_subscribed();
    }

    let port = broker.port();
    let sent = publish_in_parallel(devices_at("lab", 3, 1000, 1000), port) as u64;

    let mut per_instance = Vec::new();
    let mut total = 0;
    for bridge in &bridges {
        let index = format!("{}readings", bridge.prefix());
        // Each instance's share is unknown, so wait on the sum instead, instance by instance.
        let _ = wait_for_count(node, &index, 1, Duration::from_secs(30)).await;
        per_instance.push(index);
    }
    let pattern = per_instance.join(",");
    let deadline = std::time::Instant::now() + Duration::from_secs(120);
    while total < sent && std::time::Instant::now() < deadline {
        total = node.try_count(&pattern).await.unwrap_or(0);
        if total < sent {
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
    assert_eq!(
        total, sent,
        "each message stored exactly once across the group"
    );
    // `seq` is unique across publishers, so a duplicate and a loss cannot cancel out.
    let distinct = node
        .search(
            &pattern,
            json!({"size": 0, "aggs": {"seqs": {"cardinality": {"field": "seq", "precision_threshold": 40000}}}}),
        )
        .await;
    assert_eq!(
        distinct["aggregations"]["seqs"]["value"], sent,
        "{distinct}"
    );
    for index in &per_instance {
        assert!(
            node.count(index).await > 0,
            "{index} got no share of the stream"
        );
    }
}
