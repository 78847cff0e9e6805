//! A Python paho-mqtt device (seed 003's, tests/clients/python) with a persistent session,
//! publishing across a SIGKILL of mqtt2es: what it resends on reconnect is stored once.

use serde_json::json;

use crate::support::bridge::BridgeSpec;
use crate::support::program::{Running, WAIT};
use crate::support::{SearchNode, free_port, unique};

use super::{docs, python_publish, start, topic_is};

/// paho-mqtt's default window: at most this many publishes unacknowledged at once.
const PAHO_MAX_INFLIGHT: usize = 20;

#[tokio::test(flavor = "multi_thread")]
async fn a_python_paho_device_at_qos_2_with_a_persistent_session_loses_and_duplicates_nothing_across_a_sigkill()
 {
    let stored = paho_device_across_a_sigkill(2).await;
    assert_eq!(stored.distinct, READINGS_ACROSS_KILL, "{}", stored.evidence);
    assert_eq!(
        stored.documents, READINGS_ACROSS_KILL,
        "documents (a duplicate would be more)\n{}",
        stored.evidence
    );
}

/// At QoS 1 MQTT cannot tell a resend whose PUBACK the kill cut off from a new message on a
/// reused packet id (see README, "What survives which crash"): each such resend may be stored
/// once more, and only those: at most the device's window of unacknowledged publishes.
#[tokio::test(flavor = "multi_thread")]
async fn a_python_paho_device_at_qos_1_with_a_persistent_session_loses_nothing_across_a_sigkill_and_duplicates_at_most_its_window()
 {
    let stored = paho_device_across_a_sigkill(1).await;
    assert_eq!(stored.distinct, READINGS_ACROSS_KILL, "{}", stored.evidence);
    assert!(
        stored.documents <= READINGS_ACROSS_KILL + PAHO_MAX_INFLIGHT,
        "{} documents for {READINGS_ACROSS_KILL} readings\n{}",
        stored.documents,
        stored.evidence
    );
}

const READINGS_ACROSS_KILL: usize = 300;

/// What a device's readings became in the index.
struct Stored {
    /// Distinct readings (by the `seq` the device put in each).
    distinct: usize,
    /// Documents in the index for the device's topic.
    documents: usize,
    /// The device's packet log and mqtt2es's logs, for a failure message.
    evidence: String,
}

/// A paho-mqtt device with a persistent session publishes `READINGS_ACROSS_KILL` readings at
/// `qos`; mqtt2es is SIGKILLed mid-stream and restarted on the same address; the device
/// reconnects into its session, resends what was never acknowledged, and finishes.
async fn paho_device_across_a_sigkill(qos: u8) -> Stored {
    let node = SearchNode::shared();
    // The device reconnects to the address it knows, so the restart must bind the same port.
    let address = format!("127.0.0.1:{}", free_port());
    let mut bridge = start(BridgeSpec::embedded(&node.url()).bind(&address));
    let port = bridge.broker_port().to_string();
    let (python, script) = python_publish();
    let topic = format!("devices/{}/readings", unique("pi"));
    let count = READINGS_ACROSS_KILL.to_string();
    let qos_arg = qos.to_string();

    let mut device = Running::start(
        &python,
        &[
            script.to_str().expect("UTF-8"),
            "-h",
            "127.0.0.1",
            "-p",
            &port,
            "-t",
            &topic,
            "-q",
            &qos_arg,
            "-c",
            "-i",
            &unique("fixed-id"),
            "-n",
            &count,
            "-d",
        ],
    );
    device.wait_for(1, |l| l.contains("session_present=False"));
    // Mid-stream: some readings acknowledged, most not yet.
    device.wait_for(30, |l| l.starts_with("acked: "));
    bridge.kill();
    let acked_before = device.count(|l| l.starts_with("acked: "));
    assert!(
        acked_before < READINGS_ACROSS_KILL,
        "the stream ended before the kill"
    );
    bridge.restart();
    bridge.wait_for_log("listening transport=tcp ", 2, WAIT);

    let before_reconnect = device.count(|_| true);
    device.wait_for(1, |l| l.contains("session_present=True"));
    device.wait_for(1, |l| l == "published");
    let (status, output) = device.finish();
    assert!(status.success(), "{output}");
    // What the dead mqtt2es never acknowledged, paho sent again: a publish flagged as a
    // duplicate, or at QoS 2 the PUBREL of one whose PUBREC had arrived.
    let resent = output
        .lines()
        .skip(before_reconnect)
        .filter(|l| l.starts_with("Sending PUBLISH (d1") || l.starts_with("Sending PUBREL"))
        .count();
    assert!(resent > 0, "no resend after the reconnect:\n{output}");

    let index = bridge.messages_index();
    let found = docs(node, &index, topic_is(&topic), READINGS_ACROSS_KILL).await;
    let mut seqs: Vec<i64> = found.iter().filter_map(|d| d["seq"].as_i64()).collect();
    seqs.sort();
    seqs.dedup();
    let total = node
        .request(
            reqwest::Method::POST,
            &format!("/{index}/_count"),
            Some(json!({"query": topic_is(&topic)})),
        )
        .await;
    let documents = total["count"].as_u64().expect("a count") as usize;
    Stored {
        distinct: seqs.len(),
        documents,
        evidence: format!("{output}\n{}", bridge.logs()),
    }
}
