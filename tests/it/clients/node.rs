//! MQTT.js (tests/clients/node/client.mjs) for seed 002's MQTT 5 examples over WebSocket:
//! user properties, wills with and without a delay, session expiry, and secure WebSocket. The
//! client prints one JSON event per line (`connect`, `suback`, `puback`, `message`, `end`).

use std::path::PathBuf;
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use crate::support::bridge::{Bridge, BridgeSpec};
use crate::support::certs::Certs;
use crate::support::program::Running;
use crate::support::{SearchNode, unique};

use super::{docs, env_dir, messages, start, tls_listener, topic_is};

/// The MQTT.js client script (its node_modules installed beside it).
fn node_client() -> PathBuf {
    let dir = env_dir(
        "MQTT2ES_TEST_NODE_CLIENTS",
        "tests/clients/node with MQTT.js installed",
    );
    assert!(
        dir.join("node_modules/mqtt").is_dir(),
        "MQTT.js is not installed in {}: run `npm ci` there",
        dir.display()
    );
    dir.join("client.mjs")
}

/// `node client.mjs --url <url> <args>`; events are JSON lines.
fn mqtt_js(url: &str, args: &[&str]) -> Running {
    mqtt_js_with(url, args, &[])
}

fn mqtt_js_with(url: &str, args: &[&str], env: &[(&str, &str)]) -> Running {
    let script = node_client();
    let mut all = vec![script.to_str().expect("UTF-8"), "--url", url];
    all.extend_from_slice(args);
    Running::start_with("node", &all, env)
}

fn events(output: &str) -> Vec<Value> {
    output
        .lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .collect()
}

fn event_is(line: &str, event: &str) -> bool {
    serde_json::from_str::<Value>(line).is_ok_and(|v| v["event"] == event)
}

/// Runs MQTT.js to completion and returns its events; it must exit 0.
fn mqtt_js_ok(bridge: &Bridge, url: &str, args: &[&str]) -> Vec<Value> {
    let (status, output) = mqtt_js(url, args).finish();
    assert!(
        status.success(),
        "MQTT.js {args:?} failed:\n{output}\nmqtt2es:\n{}",
        bridge.logs()
    );
    events(&output)
}

fn connect_event(events: &[Value]) -> &Value {
    events
        .iter()
        .find(|e| e["event"] == "connect")
        .unwrap_or_else(|| panic!("no connect event in {events:?}"))
}

fn ws_url(bridge: &mut Bridge) -> String {
    format!(
        "ws://127.0.0.1:{}/mqtt",
        bridge.listener_address("ws").port()
    )
}

const WS_LISTENER: &str = "{transport: ws, bind: \"127.0.0.1:0\"}";

#[tokio::test(flavor = "multi_thread")]
async fn mqtt_js_v5_over_websocket_publishes_at_qos1_and_its_user_properties_reach_the_documents() {
    let node = SearchNode::shared();
    let mut bridge = start(BridgeSpec::embedded(&node.url()).listener(WS_LISTENER));
    let url = ws_url(&mut bridge);
    let client = unique("js-pub");

    // seeds/002's basic client: keep-alive, clean start; then client-pub at QoS 1.
    let events = mqtt_js_ok(
        &bridge,
        &url,
        &[
            "--client-id",
            &client,
            "--protocol",
            "5",
            "--publish",
            "TEST/GREETING",
            "--count",
            "3",
        ],
    );
    assert_eq!(
        connect_event(&events)["sessionPresent"],
        false,
        "{events:?}"
    );
    let pubacks: Vec<&Value> = events.iter().filter(|e| e["event"] == "puback").collect();
    assert_eq!(pubacks.len(), 3, "{events:?}");
    assert!(pubacks.iter().all(|e| e["reasonCode"] == 0), "{events:?}");

    let found = docs(node, &bridge.messages_index(), topic_is("TEST/GREETING"), 3).await;
    assert_eq!(found.len(), 3, "{}", bridge.logs());
    let mut seqs: Vec<i64> = found.iter().filter_map(|d| d["seq"].as_i64()).collect();
    seqs.sort();
    assert_eq!(seqs, [0, 1, 2], "{found:?}");
    for doc in &found {
        let properties = doc["mqtt"]["user_properties"]
            .as_array()
            .unwrap_or_else(|| panic!("no mqtt.user_properties: {doc}"));
        assert!(
            properties.contains(&json!({"key": "source", "value": "mqtt.js"})),
            "{doc}"
        );
        assert!(
            properties.contains(&json!({"key": "seq", "value": doc["seq"].to_string()})),
            "{doc}"
        );
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn an_mqtt_js_will_reaches_a_subscriber_and_the_index_when_the_device_drops_off() {
    let node = SearchNode::shared();
    let mut bridge = start(BridgeSpec::embedded(&node.url()).listener(WS_LISTENER));
    let url = ws_url(&mut bridge);

    let mut watcher = mqtt_js(
        &url,
        &[
            "--client-id",
            &unique("watch"),
            "--subscribe",
            "TEST/GREETING/#",
            "--expect",
            "1",
        ],
    );
    watcher.wait_for(1, |l| event_is(l, "suback"));
    // seeds/002's client-will-msg, without the delay: the device's socket drops.
    let device = unique("device");
    let events = mqtt_js_ok(
        &bridge,
        &url,
        &[
            "--client-id",
            &device,
            "--will-topic",
            "TEST/GREETING/WILL",
            "--will-payload",
            "The Will message",
            "--end",
            "abrupt",
        ],
    );
    assert!(events.iter().any(|e| e["event"] == "end"), "{events:?}");
    let (status, output) = watcher.finish();
    assert!(status.success(), "{output}\nmqtt2es:\n{}", bridge.logs());
    let will = events_of(&output, "message");
    assert_eq!(will.len(), 1, "{output}");
    assert_eq!(will[0]["topic"], "TEST/GREETING/WILL");
    assert_eq!(will[0]["payload"], "The Will message");

    let found = docs(
        node,
        &bridge.messages_index(),
        topic_is("TEST/GREETING/WILL"),
        1,
    )
    .await;
    assert_eq!(messages(&found), ["The Will message"], "{}", bridge.logs());
}

fn events_of(output: &str, event: &str) -> Vec<Value> {
    events(output)
        .into_iter()
        .filter(|e| e["event"] == event)
        .collect()
}

/// Long enough for node to start and reconnect on a loaded machine; short enough to wait for.
const WILL_DELAY_S: &str = "5";

#[tokio::test(flavor = "multi_thread")]
async fn a_delayed_will_is_not_published_when_the_device_reconnects_within_the_delay() {
    let node = SearchNode::shared();
    let mut bridge = start(BridgeSpec::embedded(&node.url()).listener(WS_LISTENER));
    let url = ws_url(&mut bridge);

    let mut watcher = mqtt_js(
        &url,
        &[
            "--client-id",
            &unique("watch"),
            "--subscribe",
            "wills/#",
            "--expect",
            "1",
        ],
    );
    watcher.wait_for(1, |l| event_is(l, "suback"));

    // A will delay only outlives the connection with a session to outlive it (MQTT 5 §3.1.3.2.2:
    // the will goes at the delay or at session end, whichever is first): session expiry 300.
    let will = |id: &str, payload: &str| {
        mqtt_js_ok(
            &bridge,
            &url,
            &[
                "--client-id",
                id,
                "--no-clean",
                "--session-expiry",
                "300",
                "--will-topic",
                &format!("wills/{id}"),
                "--will-payload",
                payload,
                "--will-delay",
                WILL_DELAY_S,
                "--end",
                "abrupt",
            ],
        )
    };
    let returning = unique("returning");
    will(&returning, "returning went offline");
    let dropped = Instant::now();
    // It comes back within the delay and leaves cleanly (as seed 002's basic client would).
    let back = mqtt_js_ok(
        &bridge,
        &url,
        &[
            "--client-id",
            &returning,
            "--no-clean",
            "--session-expiry",
            "300",
        ],
    );
    assert_eq!(connect_event(&back)["sessionPresent"], true, "{back:?}");
    let away = dropped.elapsed();
    assert!(
        away < Duration::from_secs(WILL_DELAY_S.parse().expect("a number")),
        "the machine is too slow for this test: the device was away {away:?}"
    );

    // The control: the same will delay on a device that stays away, dropped after the first.
    // Its will arriving means the first one's delay has passed too.
    let gone = unique("gone");
    will(&gone, "gone went offline");
    let (status, output) = watcher.finish();
    assert!(status.success(), "{output}\nmqtt2es:\n{}", bridge.logs());
    let wills = events_of(&output, "message");
    assert_eq!(
        wills
            .iter()
            .map(|m| m["payload"].clone())
            .collect::<Vec<_>>(),
        ["gone went offline"],
        "{output}\n{}",
        bridge.logs()
    );
    let found = docs(
        node,
        &bridge.messages_index(),
        json!({"prefix": {"mqtt.topic": "wills/"}}),
        1,
    )
    .await;
    assert_eq!(messages(&found), ["gone went offline"], "{}", bridge.logs());
}

#[tokio::test(flavor = "multi_thread")]
async fn an_mqtt_js_session_with_expiry_gets_what_it_missed_and_one_without_expiry_is_gone() {
    let node = SearchNode::shared();
    let mut bridge = start(BridgeSpec::embedded(&node.url()).listener(WS_LISTENER));
    let url = ws_url(&mut bridge);
    let kept = unique("kept");
    let gone = unique("gone");

    for (id, expiry) in [(&kept, "300"), (&gone, "0")] {
        let events = mqtt_js_ok(
            &bridge,
            &url,
            &[
                "--client-id",
                id,
                "--no-clean",
                "--session-expiry",
                expiry,
                "--subscribe",
                "TEST/GREETING/#",
            ],
        );
        assert!(events.iter().any(|e| e["event"] == "suback"), "{events:?}");
    }
    // Both are away now; a QoS 1 message comes.
    let events = mqtt_js_ok(
        &bridge,
        &url,
        &[
            "--client-id",
            &unique("pub"),
            "--publish",
            "TEST/GREETING/missed",
            "--payload",
            "Willkommen",
        ],
    );
    assert_eq!(events_of_vec(&events, "puback").len(), 1, "{events:?}");

    let back = mqtt_js_ok(
        &bridge,
        &url,
        &[
            "--client-id",
            &kept,
            "--no-clean",
            "--session-expiry",
            "300",
            "--expect",
            "1",
        ],
    );
    assert_eq!(connect_event(&back)["sessionPresent"], true, "{back:?}");
    let received = events_of_vec(&back, "message");
    assert_eq!(received.len(), 1, "{back:?}");
    assert_eq!(received[0]["topic"], "TEST/GREETING/missed");
    assert_eq!(received[0]["payload"], "Willkommen");

    let back = mqtt_js_ok(
        &bridge,
        &url,
        &["--client-id", &gone, "--no-clean", "--session-expiry", "0"],
    );
    assert_eq!(connect_event(&back)["sessionPresent"], false, "{back:?}");

    let found = docs(
        node,
        &bridge.messages_index(),
        topic_is("TEST/GREETING/missed"),
        1,
    )
    .await;
    assert_eq!(messages(&found), ["Willkommen"], "{}", bridge.logs());
}

fn events_of_vec<'a>(events: &'a [Value], event: &str) -> Vec<&'a Value> {
    events.iter().filter(|e| e["event"] == event).collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn mqtt_js_v5_over_secure_websocket_is_stored() {
    let node = SearchNode::shared();
    let certs = Certs::generate();
    let mut bridge = start(BridgeSpec::embedded(&node.url()).listener(tls_listener("wss", &certs)));
    let url = format!(
        "wss://localhost:{}/mqtt",
        bridge.listener_address("wss").port()
    );
    let ca = certs.ca();
    let (status, output) = mqtt_js_with(
        &url,
        &[
            "--client-id",
            &unique("wss"),
            "--publish",
            "TEST/GREETING/wss",
            "--payload",
            "over wss",
        ],
        &[("NODE_EXTRA_CA_CERTS", ca.to_str().expect("UTF-8"))],
    )
    .finish();
    assert!(status.success(), "{output}\n{}", bridge.logs());
    assert_eq!(events_of(&output, "puback").len(), 1, "{output}");

    let found = docs(
        node,
        &bridge.messages_index(),
        topic_is("TEST/GREETING/wss"),
        1,
    )
    .await;
    assert_eq!(messages(&found), ["over wss"], "{}", bridge.logs());
}
