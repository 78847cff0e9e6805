//! The Go paho sample of seeds/000 (tests/clients/go, built by scripts/test) against the
//! embedded broker. The Go paho publisher of seeds/001 runs beside the other publishers in
//! `mosquitto`.

use crate::support::SearchNode;
use crate::support::bridge::BridgeSpec;
use crate::support::program::run_ok;

use super::{docs, go_client, messages, start, topic_is};

#[tokio::test(flavor = "multi_thread")]
async fn the_go_paho_seed_sample_gets_its_own_hello_world_back_and_it_is_stored() {
    let node = SearchNode::shared();
    let mut bridge = start(BridgeSpec::embedded(&node.url()));
    let port = bridge.broker_port();

    // Subscribe and publish "Hello World" at QoS 1 on one client, id "F`/hty$3{+JQ%,j9".
    let output = run_ok(
        go_client("seed-sample"),
        &["-broker", &format!("tcp://127.0.0.1:{port}")],
    );
    let lines: Vec<&str> = output.lines().collect();
    assert!(lines.contains(&"Message: Hello World "), "{output}");
    assert!(
        lines.contains(&"Topic: /mqtt-explanation-klutzer "),
        "{output}"
    );
    let found = docs(
        node,
        &bridge.messages_index(),
        topic_is("/mqtt-explanation-klutzer"),
        1,
    )
    .await;
    assert_eq!(messages(&found), ["Hello World"], "{}", bridge.logs());
    assert_eq!(found[0]["mqtt"]["qos"], 1, "{}", found[0]);
    assert!(
        bridge.logs().contains("F`/hty$3{+JQ%,j9"),
        "the seed's client id should appear in the debug log:\n{}",
        bridge.logs()
    );
}
