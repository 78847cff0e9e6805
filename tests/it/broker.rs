//! The embedded broker end to end: real clients (`mosquitto_pub`, `mosquitto_sub`, rumqttc
//! v4 and v5) connect straight to mqtt2es, and what they publish lands in the search node.

use std::io::{BufRead, BufReader, Lines};
use std::process::{Child, ChildStdout, Command, Output, Stdio};
use std::time::{Duration, Instant};

use rumqttc::v5;
use serde_json::json;

use crate::bridge_basics::readings_pipeline;
use crate::support::bridge::{Bridge, BridgeSpec};
use crate::support::{SearchNode, unique, wait_for_count};

/// The shipped catch-all pipeline: JSON as fields, text in `message`.
const DEFAULT_PIPELINE: &str = include_str!("../../pipelines/zz-default.yaml");

/// mqtt2es as the broker with the shipped default pipeline and the test readings pipeline.
fn start(spec: BridgeSpec) -> (Bridge, u16) {
    let mut bridge = Bridge::start(
        &spec
            .pipeline("readings.yaml", readings_pipeline())
            .pipeline("zz-default.yaml", DEFAULT_PIPELINE),
    );
    let port = bridge.broker_port();
    (bridge, port)
}

fn messages_index(bridge: &Bridge) -> String {
    format!("{}mqtt2es-messages", bridge.prefix())
}

fn readings_index(bridge: &Bridge) -> String {
    format!("{}readings", bridge.prefix())
}

/// Runs `mosquitto_pub -h 127.0.0.1 -p <port> <args>` to completion.
fn mosquitto_pub(port: u16, args: &[&str]) -> Output {
    let output = Command::new("mosquitto_pub")
        .args(["-h", "127.0.0.1", "-p", &port.to_string()])
        .args(args)
        .output()
        .expect("start mosquitto_pub (Debian package mosquitto-clients)");
    assert!(
        output.status.success(),
        "mosquitto_pub {args:?} failed: {}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    output
}

/// A running `mosquitto_sub -d` and what it printed so far.
struct Sub {
    child: Child,
    output: Lines<BufReader<ChildStdout>>,
    seen: Vec<String>,
}

impl Sub {
    /// Starts `mosquitto_sub` against mqtt2es and returns once its SUBACK arrived.
    fn start(port: u16, args: &[&str]) -> Sub {
        // stdbuf: mosquitto_sub buffers stdout in a pipe; each line is needed as it comes.
        let mut child = Command::new("stdbuf")
            .args([
                "-oL",
                "mosquitto_sub",
                "-h",
                "127.0.0.1",
                "-p",
                &port.to_string(),
            ])
            .args(["-d", "-W", "30"])
            .args(args)
            .stdout(Stdio::piped())
            .spawn()
            .expect("start mosquitto_sub (Debian package mosquitto-clients)");
        let stdout = child.stdout.take().expect("piped stdout");
        let mut sub = Sub {
            child,
            output: BufReader::new(stdout).lines(),
            seen: Vec::new(),
        };
        while !sub.seen.iter().any(|l| l.contains("received SUBACK")) {
            match sub.output.next() {
                Some(line) => sub.seen.push(line.expect("read mosquitto_sub output")),
                None => panic!("mosquitto_sub ended before its SUBACK: {:?}", sub.seen),
            }
        }
        sub
    }

    /// Waits for it to end (`-C n` or `-W`) and returns every line it printed.
    fn finish(mut self) -> Vec<String> {
        for line in self.output.by_ref() {
            self.seen.push(line.expect("read mosquitto_sub output"));
        }
        let _ = self.child.wait();
        std::mem::take(&mut self.seen)
    }

    /// The message lines (not `-d` debug lines).
    fn messages(lines: &[String]) -> Vec<String> {
        lines
            .iter()
            .filter(|l| !l.starts_with("Client ") && !l.starts_with("Subscribed"))
            .cloned()
            .collect()
    }
}

impl Drop for Sub {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A rumqttc 3.1.1 client; its event loop is driven by the caller.
fn v4_client(
    port: u16,
    client_id: &str,
    clean_session: bool,
) -> (rumqttc::AsyncClient, rumqttc::EventLoop) {
    let mut options = rumqttc::MqttOptions::new(client_id, "127.0.0.1", port);
    options
        .set_clean_session(clean_session)
        .set_keep_alive(Duration::from_secs(30));
    rumqttc::AsyncClient::new(options, 1000)
}

/// A rumqttc MQTT 5 client with a session expiry (`None`: clean start, no session kept).
fn v5_client(
    port: u16,
    client_id: &str,
    session_expiry_s: Option<u32>,
) -> (v5::AsyncClient, v5::EventLoop) {
    let mut options = v5::MqttOptions::new(client_id, "127.0.0.1", port);
    options
        .set_clean_start(session_expiry_s.is_none())
        .set_session_expiry_interval(session_expiry_s)
        .set_keep_alive(Duration::from_secs(30));
    v5::AsyncClient::new(options, 1000)
}

fn reading(device: &str, seq: usize) -> String {
    format!(
        r#"{{"seq":{seq},"temp_c":{:.1},"device_id":"{device}"}}"#,
        15.0 + seq as f64 / 10.0
    )
}

#[tokio::test(flavor = "multi_thread")]
async fn hello_world_from_mosquitto_pub_is_stored_with_its_text_in_message() {
    let node = SearchNode::shared();
    let (mut bridge, port) = start(BridgeSpec::embedded(&node.url()));

    // The seed's command line, but for the host and port.
    let output = mosquitto_pub(port, &["-t", "greetings", "-m", "Hello world MQTT", "-d"]);
    let debug = String::from_utf8_lossy(&output.stdout);
    assert!(debug.contains("received CONNACK (0)"), "{debug}");
    assert!(debug.contains("sending PUBLISH"), "{debug}");

    let index = messages_index(&bridge);
    assert_eq!(
        wait_for_count(node, &index, 1, Duration::from_secs(30)).await,
        1,
        "{}",
        bridge.logs()
    );
    let hits = node.search(&index, json!({"size": 1})).await;
    let doc = &hits["hits"]["hits"][0]["_source"];
    assert_eq!(doc["message"], "Hello world MQTT", "{doc}");
    assert_eq!(doc["mqtt"]["topic"], "greetings", "{doc}");
    assert!(doc["@timestamp"].is_string(), "{doc}");
    let status = bridge.terminate(Duration::from_secs(30));
    assert!(status.success(), "{}", bridge.logs());
}

#[tokio::test(flavor = "multi_thread")]
async fn qos1_publishes_from_mosquitto_pub_are_acknowledged_and_stored_once_each() {
    let node = SearchNode::shared();
    let (bridge, port) = start(BridgeSpec::embedded(&node.url()));

    let lines: Vec<String> = (0..200).map(|seq| reading("pi-1", seq)).collect();
    let mut child = Command::new("mosquitto_pub")
        .args(["-h", "127.0.0.1", "-p", &port.to_string()])
        .args(["-q", "1", "-d", "-l", "-t", "sensors/lab/pi-1/telemetry"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("start mosquitto_pub");
    {
        use std::io::Write;
        let mut stdin = child.stdin.take().expect("stdin");
        for line in &lines {
            writeln!(stdin, "{line}").expect("write a line");
        }
    }
    let output = child.wait_with_output().expect("mosquitto_pub");
    let acked = String::from_utf8_lossy(&output.stdout)
        .matches("received PUBACK")
        .count();
    assert!(acked >= 150, "only {acked} PUBACKs of 200");

    let index = readings_index(&bridge);
    let stored = wait_for_count(node, &index, acked as u64, Duration::from_secs(60)).await;
    assert!(
        stored >= acked as u64,
        "acknowledged {acked} but stored {stored}:\n{}",
        bridge.logs()
    );
}

/// Drives `eventloop` until `until` says so or `timeout` passes; returns the events seen.
async fn drive_v4(
    eventloop: &mut rumqttc::EventLoop,
    timeout: Duration,
    mut until: impl FnMut(&rumqttc::Event) -> bool,
) -> bool {
    let deadline = Instant::now() + timeout;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return false;
        }
        match tokio::time::timeout(left, eventloop.poll()).await {
            Err(_) => return false,
            Ok(Ok(event)) => {
                if until(&event) {
                    return true;
                }
            }
            Ok(Err(error)) => panic!("client connection failed: {error}"),
        }
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_qos1_publish_is_not_acknowledged_while_the_search_node_is_down_and_is_stored_once_after()
{
    let mut node = SearchNode::start_private();
    let (bridge, port) = start(BridgeSpec::embedded(&node.url()));
    let index = readings_index(&bridge);
    let (client, mut eventloop) = v4_client(port, &unique("it-pi-down"), true);
    assert!(
        drive_v4(&mut eventloop, Duration::from_secs(10), |e| matches!(
            e,
            rumqttc::Event::Incoming(rumqttc::Packet::ConnAck(_))
        ))
        .await
    );

    node.stop();
    for seq in 0..10 {
        client
            .publish(
                "sensors/lab/pi-2/telemetry",
                rumqttc::QoS::AtLeastOnce,
                false,
                reading("pi-2", seq),
            )
            .await
            .expect("queue publish");
    }
    let mut acks = 0;
    // While the node is down no PUBACK may come: observe for a while (an absence has no
    // event to wait for).
    drive_v4(&mut eventloop, Duration::from_secs(5), |e| {
        if matches!(e, rumqttc::Event::Incoming(rumqttc::Packet::PubAck(_))) {
            acks += 1;
        }
        false
    })
    .await;
    assert_eq!(
        acks,
        0,
        "PUBACK sent before the document was stored:\n{}",
        bridge.logs()
    );

    node.start();
    let all_acked = drive_v4(&mut eventloop, Duration::from_secs(120), |e| {
        if matches!(e, rumqttc::Event::Incoming(rumqttc::Packet::PubAck(_))) {
            acks += 1;
        }
        acks == 10
    })
    .await;
    assert!(all_acked, "{acks} of 10 acknowledged:\n{}", bridge.logs());
    assert_eq!(node.count(&index).await, 10, "{}", bridge.logs());
}

/// Drives an MQTT 5 event loop until `until` says so, `timeout` passes (false) or the
/// connection fails (the error, for tests that expect one).
async fn drive_v5(
    eventloop: &mut v5::EventLoop,
    timeout: Duration,
    mut until: impl FnMut(&v5::Event) -> bool,
) -> Result<bool, v5::ConnectionError> {
    let deadline = Instant::now() + timeout;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Ok(false);
        }
        match tokio::time::timeout(left, eventloop.poll()).await {
            Err(_) => return Ok(false),
            Ok(Ok(event)) => {
                if until(&event) {
                    return Ok(true);
                }
            }
            Ok(Err(error)) => return Err(error),
        }
    }
}

fn is_v4_connack(event: &rumqttc::Event) -> bool {
    matches!(event, rumqttc::Event::Incoming(rumqttc::Packet::ConnAck(_)))
}

fn is_v5_connack(event: &v5::Event) -> bool {
    matches!(event, v5::Event::Incoming(v5::Incoming::ConnAck(_)))
}

#[tokio::test(flavor = "multi_thread")]
async fn a_retained_message_reaches_a_later_mosquitto_sub_and_an_empty_retained_publish_clears_it()
{
    let node = SearchNode::shared();
    let (bridge, port) = start(BridgeSpec::embedded(&node.url()));

    mosquitto_pub(
        port,
        &["-t", "test/retained", "-m", "kept", "-r", "-q", "1", "-d"],
    );
    let lines = Sub::start(port, &["-t", "test/#", "-v", "-C", "1"]).finish();
    assert_eq!(Sub::messages(&lines), ["test/retained kept"], "{lines:?}");
    assert!(
        lines
            .iter()
            .any(|l| l.contains("received PUBLISH") && l.contains("r1")),
        "delivered with the retain flag: {lines:?}"
    );

    // Cleared; a later retained message on another topic is then the first one delivered
    // (the store hands them out in topic order, so "test/retained" would come first).
    mosquitto_pub(port, &["-t", "test/retained", "-r", "-n", "-q", "1"]);
    mosquitto_pub(port, &["-t", "test/zz", "-m", "other", "-r", "-q", "1"]);
    let lines = Sub::start(port, &["-t", "test/#", "-v", "-C", "1"]).finish();
    assert_eq!(
        Sub::messages(&lines),
        ["test/zz other"],
        "{lines:?}\n{}",
        bridge.logs()
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn mosquitto_sub_sees_live_traffic_published_to_mqtt2es() {
    let node = SearchNode::shared();
    let (bridge, port) = start(BridgeSpec::embedded(&node.url()));

    let sub = Sub::start(port, &["-t", "test/#", "-v", "-C", "3"]);
    mosquitto_pub(port, &["-t", "test/terminal", "-m", "test message"]);
    mosquitto_pub(port, &["-t", "test/terminal", "-q", "1", "-m", "second"]);
    mosquitto_pub(port, &["-t", "elsewhere", "-m", "not for this subscriber"]);
    mosquitto_pub(port, &["-t", "test/a/b", "-q", "2", "-m", "third"]);
    let lines = sub.finish();
    assert_eq!(
        Sub::messages(&lines),
        [
            "test/terminal test message",
            "test/terminal second",
            "test/a/b third"
        ],
        "{lines:?}\n{}",
        bridge.logs()
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn qos2_publishes_from_an_mqtt5_client_complete_the_handshake_and_are_stored_exactly_once() {
    let node = SearchNode::shared();
    let (bridge, port) = start(BridgeSpec::embedded(&node.url()));
    let (client, mut eventloop) = v5_client(port, &unique("it-pi-q2"), None);
    for seq in 0..50 {
        client
            .publish(
                "sensors/lab/pi-q2/telemetry",
                v5::mqttbytes::QoS::ExactlyOnce,
                false,
                reading("pi-q2", seq),
            )
            .await
            .expect("queue publish");
    }
    let (mut recs, mut comps) = (0, 0);
    let done = drive_v5(&mut eventloop, Duration::from_secs(60), |e| {
        match e {
            v5::Event::Incoming(v5::Incoming::PubRec(_)) => recs += 1,
            v5::Event::Incoming(v5::Incoming::PubComp(_)) => comps += 1,
            _ => {}
        }
        comps == 50
    })
    .await
    .expect("connection stays up");
    assert!(
        done,
        "{recs} PUBREC, {comps} PUBCOMP of 50:\n{}",
        bridge.logs()
    );
    assert_eq!(recs, 50);
    let index = readings_index(&bridge);
    assert_eq!(
        wait_for_count(node, &index, 50, Duration::from_secs(30)).await,
        50
    );
    // Nothing trickles in later.
    assert_eq!(node.count(&index).await, 50);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_last_will_reaches_a_subscriber_and_the_index_when_a_device_drops_off() {
    let node = SearchNode::shared();
    let (bridge, port) = start(BridgeSpec::embedded(&node.url()));
    let sub = Sub::start(port, &["-t", "devices/+/status", "-v", "-C", "1"]);

    let mut options = rumqttc::MqttOptions::new(unique("it-pi-will"), "127.0.0.1", port);
    options.set_last_will(rumqttc::LastWill::new(
        "devices/pi-w/status",
        "offline",
        rumqttc::QoS::AtLeastOnce,
        false,
    ));
    let (client, mut eventloop) = rumqttc::AsyncClient::new(options, 10);
    assert!(drive_v4(&mut eventloop, Duration::from_secs(10), is_v4_connack).await);
    // The device vanishes: its socket closes without DISCONNECT.
    drop(eventloop);
    drop(client);

    let lines = sub.finish();
    assert_eq!(
        Sub::messages(&lines),
        ["devices/pi-w/status offline"],
        "{lines:?}\n{}",
        bridge.logs()
    );
    let index = messages_index(&bridge);
    assert_eq!(
        wait_for_count(node, &index, 1, Duration::from_secs(30)).await,
        1
    );
    let hits = node.search(&index, json!({"size": 1})).await;
    let doc = &hits["hits"]["hits"][0]["_source"];
    assert_eq!(doc["message"], "offline", "{doc}");
    assert_eq!(doc["mqtt"]["topic"], "devices/pi-w/status", "{doc}");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_client_that_falls_silent_is_dropped_after_one_and_a_half_keep_alives_and_its_will_fires()
{
    let node = SearchNode::shared();
    let (bridge, port) = start(BridgeSpec::embedded(&node.url()));
    let sub = Sub::start(port, &["-t", "devices/+/status", "-v", "-C", "1"]);

    let mut options = rumqttc::MqttOptions::new(unique("it-pi-silent"), "127.0.0.1", port);
    options
        .set_keep_alive(Duration::from_secs(5))
        .set_last_will(rumqttc::LastWill::new(
            "devices/pi-s/status",
            "gone silent",
            rumqttc::QoS::AtMostOnce,
            false,
        ));
    let (_client, mut eventloop) = rumqttc::AsyncClient::new(options, 10);
    assert!(drive_v4(&mut eventloop, Duration::from_secs(10), is_v4_connack).await);
    let silent_since = Instant::now();
    // The event loop is no longer polled: no PINGREQ goes out, but the socket stays open.
    let lines = sub.finish();
    assert_eq!(
        Sub::messages(&lines),
        ["devices/pi-s/status gone silent"],
        "{lines:?}\n{}",
        bridge.logs()
    );
    let waited = silent_since.elapsed();
    assert!(
        waited >= Duration::from_millis(7000),
        "dropped after {waited:?}, before 1.5 × 5 s"
    );
    assert!(
        bridge.logs().contains("keep-alive expired"),
        "{}",
        bridge.logs()
    );
    drop(eventloop);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_second_connection_with_the_same_client_id_takes_the_session_over() {
    let node = SearchNode::shared();
    let (bridge, port) = start(BridgeSpec::embedded(&node.url()));
    let client_id = unique("it-pi-twin");

    let (_first, mut first_loop) = v5_client(port, &client_id, Some(600));
    assert!(
        drive_v5(&mut first_loop, Duration::from_secs(10), is_v5_connack)
            .await
            .expect("first connects")
    );
    let (_second, mut second_loop) = v5_client(port, &client_id, Some(600));
    let mut session_present = None;
    assert!(
        drive_v5(&mut second_loop, Duration::from_secs(10), |e| {
            if let v5::Event::Incoming(v5::Incoming::ConnAck(ack)) = e {
                session_present = Some(ack.session_present);
                return true;
            }
            false
        })
        .await
        .expect("second connects")
    );
    assert_eq!(session_present, Some(true), "the session carries over");

    let error = drive_v5(&mut first_loop, Duration::from_secs(10), |_| false)
        .await
        .expect_err("the first connection is closed");
    assert!(
        format!("{error:?}").contains("SessionTakenOver"),
        "{error:?}\n{}",
        bridge.logs()
    );
    assert!(bridge.logs().contains("session taken over"));
}
