//! The harness itself: real clients reach the broker it starts, and the search node it starts
//! stores, counts and keeps documents.

use std::io::{BufRead, BufReader, Lines};
use std::process::{Child, ChildStdout, Command, Stdio};

use serde_json::json;

use crate::support::{Mosquitto, SearchNode, unique};

/// A running `mosquitto_sub -d` and what it printed so far.
struct Sub {
    child: Child,
    output: Lines<BufReader<ChildStdout>>,
    seen: Vec<String>,
}

/// Starts `mosquitto_sub` and returns once its subscription is acknowledged (its `-d` output
/// shows the SUBACK), so a message published afterwards is certain to reach it.
fn subscribe(broker: &Mosquitto, args: &[&str]) -> Sub {
    let mut sub = start_sub(broker, args);
    while !sub.seen.iter().any(|line| line.contains("received SUBACK")) {
        match sub.output.next() {
            Some(line) => sub.seen.push(line.expect("read mosquitto_sub output")),
            None => panic!("mosquitto_sub ended before its SUBACK: {:?}", messages(sub)),
        }
    }
    sub
}

fn start_sub(broker: &Mosquitto, args: &[&str]) -> Sub {
    let port = broker.port().to_string();
    // stdbuf: mosquitto_sub buffers its stdout in a pipe until it exits; we need each line as
    // it comes to see the SUBACK.
    let mut child = Command::new("stdbuf")
        .args(["-oL", "mosquitto_sub", "-h", broker.host(), "-p", &port])
        .args(["-d", "-W", "10"])
        .args(args)
        .stdout(Stdio::piped())
        .spawn()
        .expect("start mosquitto_sub (Debian package mosquitto-clients)");
    let stdout = child.stdout.take().expect("piped stdout");
    Sub {
        child,
        output: BufReader::new(stdout).lines(),
        seen: Vec::new(),
    }
}

fn publish(broker: &Mosquitto, args: &[&str]) {
    let status = Command::new("mosquitto_pub")
        .args(["-h", broker.host(), "-p", &broker.port().to_string()])
        .args(args)
        .status()
        .expect("start mosquitto_pub (Debian package mosquitto-clients)");
    assert!(status.success(), "mosquitto_pub failed: {status}");
}

/// Waits for `mosquitto_sub` to end; the messages it printed, without its `-d` debug lines.
fn messages(mut sub: Sub) -> Vec<String> {
    for line in sub.output.by_ref() {
        sub.seen.push(line.expect("read mosquitto_sub output"));
    }
    let status = sub.child.wait().expect("wait for mosquitto_sub");
    assert!(
        status.success(),
        "mosquitto_sub failed ({status}): {:?}",
        sub.seen
    );
    sub.seen
        .into_iter()
        .filter(|line| !line.starts_with("Client ") && !line.starts_with("Subscribed"))
        .collect()
}

#[test]
fn mosquitto_pub_message_reaches_mosquitto_sub() {
    let broker = Mosquitto::start();
    let topic = unique("it/harness");

    let sub = subscribe(&broker, &["-t", &topic, "-C", "1"]);
    publish(&broker, &["-t", &topic, "-m", r#"{"temp":21.5}"#]);

    assert_eq!(messages(sub), [r#"{"temp":21.5}"#], "{}", broker.log());
}

#[test]
fn a_persistent_session_gets_what_was_queued_across_a_broker_restart() {
    let mut broker = Mosquitto::start();
    let topic = unique("it/harness");
    let client_id = unique("it-harness-sub");
    // A persistent (-c) QoS 1 subscription, then offline.
    let sub = subscribe(
        &broker,
        &["-t", &topic, "-q", "1", "-c", "-i", &client_id, "-E"],
    );
    assert!(messages(sub).is_empty());

    publish(
        &broker,
        &["-t", &topic, "-q", "1", "-m", "queued while offline"],
    );
    broker.restart();
    // Resumes the session: the queued message may come before the SUBACK.
    let sub = start_sub(
        &broker,
        &["-t", &topic, "-q", "1", "-c", "-i", &client_id, "-C", "1"],
    );

    assert_eq!(messages(sub), ["queued while offline"], "{}", broker.log());
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
