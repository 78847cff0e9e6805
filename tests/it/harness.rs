//! The harness itself: real clients reach the broker it starts, and the search node it starts
//! stores, counts and keeps documents.

use serde_json::json;

use crate::support::publish::Publisher;
use crate::support::subscriber::{Received, Subscriber};
use crate::support::{Mosquitto, SearchNode, unique};

fn payloads(received: &[Received]) -> Vec<&str> {
    received.iter().map(|m| m.payload.as_str()).collect()
}

#[test]
fn mosquitto_pub_message_reaches_mosquitto_sub() {
    let broker = Mosquitto::start();
    let topic = unique("it/harness");

    let sub = Subscriber::on(&broker, &topic).count(1).start();
    Publisher::to(broker.port()).send(&topic, r#"{"temp":21.5}"#);

    assert_eq!(
        payloads(&sub.finish()),
        [r#"{"temp":21.5}"#],
        "{}",
        broker.log()
    );
}

#[test]
fn a_persistent_session_gets_what_was_queued_across_a_broker_restart() {
    let mut broker = Mosquitto::start();
    let topic = unique("it/harness");
    let client_id = unique("it-harness-sub");
    // A persistent QoS 1 subscription, then offline.
    let subscription = Subscriber::on(&broker, &topic)
        .qos(1)
        .persistent(&client_id);
    subscription.clone().leave();

    Publisher::to(broker.port())
        .qos(1)
        .send(&topic, "queued while offline");
    broker.restart();
    // Resumes the session: the queued message may come before the SUBACK.
    let got = subscription.count(1).spawn().finish();

    assert_eq!(payloads(&got), ["queued while offline"], "{}", broker.log());
}

#[tokio::test]
async fn a_document_indexed_into_the_search_node_is_counted() {
    let search = SearchNode::shared();
    let index = unique("it-harness");

    search
        .request(
            reqwest::Method::PUT,
            &format!("/{index}/_doc/1"),
            Some(json!({"sensor": "pi-7", "temp": 21.5})),
        )
        .await;

    assert_eq!(search.count(&index).await, 1);
    let found = search
        .search(
            &index,
            json!({"query": {"term": {"sensor.keyword": "pi-7"}}}),
        )
        .await;
    assert_eq!(found["hits"]["total"]["value"], 1);
    assert_eq!(found["hits"]["hits"][0]["_source"]["temp"], 21.5);
}

#[tokio::test]
async fn a_private_search_node_keeps_its_data_across_a_restart() {
    let mut search = SearchNode::start_private();
    let index = unique("it-harness");
    search
        .request(
            reqwest::Method::PUT,
            &format!("/{index}/_doc/1"),
            Some(json!({"sensor": "pi-7"})),
        )
        .await;

    search.stop();
    search.start();

    assert_eq!(search.count(&index).await, 1);
    assert_eq!(search.count(&unique("it-harness-missing")).await, 0);
}
