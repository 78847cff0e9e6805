//! The embedded broker end to end: real clients (`mosquitto_pub`, `mosquitto_sub`, rumqttc
//! v4 and v5) connect straight to mqtt2es, and what they publish lands in the search node.

use std::process::Command;
use std::time::{Duration, Instant};

use rumqttc::v5;
use serde_json::json;

use crate::support::bridge::{Bridge, BridgeSpec};
use crate::support::publish::{Publisher, publish_lines_qos1};
use crate::support::raw_v4::{connect_persistent, receive_v4, send_v4};
use crate::support::readings::readings_pipeline;
use crate::support::subscriber::{Received, Subscriber};
use crate::support::{SearchNode, unique, wait_for_count};

/// mqtt2es as the broker with the shipped default pipeline and the test readings pipeline.
fn start(spec: BridgeSpec) -> (Bridge, u16) {
    let mut bridge = Bridge::start(
        &spec
            .pipeline("readings.yaml", readings_pipeline())
            .default_pipeline(),
    );
    let port = bridge.broker_port();
    bridge.wait_ready();
    (bridge, port)
}

fn readings_index(bridge: &Bridge) -> String {
    format!("{}readings", bridge.prefix())
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

/// What `mosquitto_sub -v` would have printed for `received`.
fn verbose(received: &[Received]) -> Vec<String> {
    received.iter().map(Received::verbose).collect()
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
    let debug = Publisher::to(port)
        .send("greetings", "Hello world MQTT")
        .log;
    assert!(debug.contains("received CONNACK (0)"), "{debug}");
    assert!(debug.contains("sending PUBLISH"), "{debug}");

    let index = bridge.messages_index();
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
    let acked = publish_lines_qos1(port, "sensors/lab/pi-1/telemetry", &lines);
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
    use std::sync::Arc;
    use std::sync::atomic::{AtomicUsize, Ordering};
    let mut node = SearchNode::start_private();
    // Two unacknowledged publishes at most: the rest wait unread in the socket.
    let (bridge, port) = start(BridgeSpec::embedded(&node.url()).broker("max_inflight", 2));
    let index = readings_index(&bridge);
    let mut options = rumqttc::MqttOptions::new(unique("it-pi-down"), "127.0.0.1", port);
    options
        .set_clean_session(false)
        .set_keep_alive(Duration::from_secs(5));
    let (client, mut eventloop) = rumqttc::AsyncClient::new(options, 100);
    assert!(drive_v4(&mut eventloop, Duration::from_secs(10), is_v4_connack).await);
    // The device keeps its connection up on its own (node restarts take a while), retries
    // when it drops (its own ping timeout may fire while we do not read), and counts the
    // PUBACKs it gets.
    let acks = Arc::new(AtomicUsize::new(0));
    let device = {
        let acks = Arc::clone(&acks);
        tokio::spawn(async move {
            loop {
                match eventloop.poll().await {
                    Ok(rumqttc::Event::Incoming(rumqttc::Packet::PubAck(_))) => {
                        acks.fetch_add(1, Ordering::SeqCst);
                    }
                    Ok(_) => {}
                    Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
                }
            }
        })
    };

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
    // While the node is down no PUBACK may come: observe for a while (an absence has no
    // event to wait for), longer than 1.5 keep-alives: a stall of our making must not count
    // as the device falling silent.
    tokio::time::sleep(Duration::from_secs(9)).await;
    assert_eq!(
        acks.load(Ordering::SeqCst),
        0,
        "PUBACK sent before the document was stored:\n{}",
        bridge.logs()
    );
    assert!(
        !bridge.logs().contains("keep-alive expired"),
        "a device we stopped reading was taken for silent:\n{}",
        bridge.logs()
    );

    node.start();
    let deadline = Instant::now() + Duration::from_secs(120);
    while acks.load(Ordering::SeqCst) < 10 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(acks.load(Ordering::SeqCst), 10, "{}", bridge.logs());
    assert_eq!(node.count(&index).await, 10, "{}", bridge.logs());
    device.abort();
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

    let retained = Publisher::to(port).qos(1).retain();
    retained.send("test/retained", "kept");
    let got = Subscriber::to(port, "test/#").count(1).start().finish();
    assert_eq!(verbose(&got), ["test/retained kept"], "{got:?}");
    assert!(got[0].retained, "delivered with the retain flag: {got:?}");

    // Cleared; a later retained message on another topic is then the first one delivered
    // (the store hands them out in topic order, so "test/retained" would come first).
    retained.send("test/retained", "");
    retained.send("test/zz", "other");
    let got = Subscriber::to(port, "test/#").count(1).start().finish();
    assert_eq!(verbose(&got), ["test/zz other"], "{}", bridge.logs());
}

#[tokio::test(flavor = "multi_thread")]
async fn mosquitto_sub_sees_live_traffic_published_to_mqtt2es() {
    let node = SearchNode::shared();
    let (bridge, port) = start(BridgeSpec::embedded(&node.url()));

    let sub = Subscriber::to(port, "test/#").count(3).start();
    let publisher = Publisher::to(port);
    publisher.send("test/terminal", "test message");
    publisher.clone().qos(1).send("test/terminal", "second");
    publisher.send("elsewhere", "not for this subscriber");
    publisher.clone().qos(2).send("test/a/b", "third");
    let got = sub.finish();
    assert_eq!(
        verbose(&got),
        [
            "test/terminal test message",
            "test/terminal second",
            "test/a/b third"
        ],
        "{}",
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
    let sub = Subscriber::to(port, "devices/+/status").count(1).start();

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

    let got = sub.finish();
    assert_eq!(
        verbose(&got),
        ["devices/pi-w/status offline"],
        "{}",
        bridge.logs()
    );
    let index = bridge.messages_index();
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
    let sub = Subscriber::to(port, "devices/+/status").count(1).start();

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
    let got = sub.finish();
    assert_eq!(
        verbose(&got),
        ["devices/pi-s/status gone silent"],
        "{}",
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

/// What one persistent-session device saw while publishing through a crash.
#[derive(Debug, Default)]
struct DeviceRun {
    acked: usize,
    connacks: Vec<bool>,
}

/// Readings a crash-test device has unacknowledged at most, like a Pi publishing as it
/// measures. It also keeps rumqttc from colliding packet ids when it replays after a
/// reconnect: with a deep request queue its 0.25 event loop drops publishes there.
const DEVICE_WINDOW: usize = 10;

/// Publishes `count` QoS 1 readings from a 3.1.1 device with a persistent session, riding out
/// broker restarts (rumqttc resends what was not acknowledged), until every one is acked.
async fn persistent_v4_device(port: u16, device: String, count: usize) -> DeviceRun {
    let mut options = rumqttc::MqttOptions::new(format!("it-{device}"), "127.0.0.1", port);
    options
        .set_clean_session(false)
        .set_keep_alive(Duration::from_secs(30));
    // Room for every publish: they are queued before the event loop runs.
    options.set_inflight(DEVICE_WINDOW as u16);
    let (client, mut eventloop) = rumqttc::AsyncClient::new(options, count + 10);
    let topic = format!("sensors/crash/{device}/telemetry");
    let mut run = DeviceRun::default();
    let mut sent = 0;
    let deadline = Instant::now() + Duration::from_secs(180);
    while run.acked < count && Instant::now() < deadline {
        while sent < count && sent - run.acked < DEVICE_WINDOW {
            client
                .publish(
                    &topic,
                    rumqttc::QoS::AtLeastOnce,
                    false,
                    reading(&device, sent),
                )
                .await
                .expect("queue publish");
            sent += 1;
        }
        match eventloop.poll().await {
            Ok(rumqttc::Event::Incoming(rumqttc::Packet::PubAck(_))) => run.acked += 1,
            Ok(rumqttc::Event::Incoming(rumqttc::Packet::ConnAck(ack))) => {
                run.connacks.push(ack.session_present)
            }
            Ok(_) => {}
            // The broker is down: a device retries after a pause (pacing, not a wait for
            // anything in particular).
            Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
        }
    }
    run
}

/// Like `persistent_v4_device`, over MQTT 5 with a session expiry.
async fn persistent_v5_device(port: u16, device: String, count: usize) -> DeviceRun {
    let mut options = v5::MqttOptions::new(format!("it-{device}"), "127.0.0.1", port);
    options
        .set_clean_start(false)
        .set_session_expiry_interval(Some(3600))
        .set_keep_alive(Duration::from_secs(30));
    options.set_outgoing_inflight_upper_limit(DEVICE_WINDOW as u16);
    let (client, mut eventloop) = v5::AsyncClient::new(options, count + 10);
    let topic = format!("sensors/crash/{device}/telemetry");
    let mut run = DeviceRun::default();
    let mut sent = 0;
    let deadline = Instant::now() + Duration::from_secs(180);
    while run.acked < count && Instant::now() < deadline {
        while sent < count && sent - run.acked < DEVICE_WINDOW {
            client
                .publish(
                    &topic,
                    v5::mqttbytes::QoS::AtLeastOnce,
                    false,
                    reading(&device, sent),
                )
                .await
                .expect("queue publish");
            sent += 1;
        }
        match eventloop.poll().await {
            Ok(v5::Event::Incoming(v5::Incoming::PubAck(_))) => run.acked += 1,
            Ok(v5::Event::Incoming(v5::Incoming::ConnAck(ack))) => {
                run.connacks.push(ack.session_present)
            }
            Ok(_) => {}
            Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
        }
    }
    run
}

#[tokio::test(flavor = "multi_thread")]
async fn sigkill_mid_stream_then_restart_loses_and_duplicates_no_reading_of_persistent_sessions() {
    let node = SearchNode::shared();
    let port = crate::support::free_port();
    let (mut bridge, _) = start(
        BridgeSpec::embedded(&node.url())
            .bind(format!("127.0.0.1:{port}"))
            // Small in-flight windows, so that much is unacknowledged when the kill comes.
            .broker("max_inflight", 10),
    );
    let index = readings_index(&bridge);
    const READINGS: usize = 1500;
    let v4 = tokio::spawn(persistent_v4_device(port, unique("pk4"), READINGS));
    let v5 = tokio::spawn(persistent_v5_device(port, unique("pk5"), READINGS));

    // Mid-stream: some readings stored, most still to come.
    let stored_before = wait_for_count(node, &index, 300, Duration::from_secs(60)).await;
    assert!(stored_before >= 300, "{}", bridge.logs());
    bridge.kill();
    bridge.restart();
    assert_eq!(bridge.broker_port(), port);
    bridge.wait_for_log("broker state loaded", 2, Duration::from_secs(30));

    let (v4, v5) = (v4.await.expect("v4 device"), v5.await.expect("v5 device"));
    for (name, run) in [("3.1.1", &v4), ("5", &v5)] {
        assert_eq!(
            run.acked,
            READINGS,
            "MQTT {name}: {run:?}\n{}",
            bridge.logs()
        );
        assert!(
            run.connacks.len() >= 2 && run.connacks[1..].iter().all(|present| *present),
            "MQTT {name} device not told its session survived: {run:?}"
        );
    }
    assert!(
        stored_before < 2 * READINGS as u64,
        "the kill came after everything was stored; the test proved nothing"
    );
    assert_eq!(
        wait_for_count(node, &index, 2 * READINGS as u64, Duration::from_secs(60)).await,
        2 * READINGS as u64,
        "{}",
        bridge.logs()
    );
    let restored = bridge
        .logs()
        .lines()
        .filter(|l| l.contains("broker state loaded"))
        .nth(1)
        .map(str::to_owned)
        .expect("second start");
    assert!(restored.contains("sessions=2"), "{restored}");
}

/// Reads from `stream` until the server closes it; false if it stays open past `timeout`.
async fn closed_by_server(stream: &mut tokio::net::TcpStream, timeout: Duration) -> bool {
    use tokio::io::AsyncReadExt;
    let deadline = Instant::now() + timeout;
    let mut buf = [0u8; 256];
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match tokio::time::timeout(left, stream.read(&mut buf)).await {
            Err(_) => return false,
            Ok(Ok(0)) | Ok(Err(_)) => return true,
            Ok(Ok(_)) => {}
        }
    }
}

/// A 3.1.1 CONNECT's bytes, made with rumqttc's encoder.
fn connect_bytes(client_id: &str) -> Vec<u8> {
    let mut buf = bytes::BytesMut::new();
    rumqttc::mqttbytes::v4::Connect::new(client_id)
        .write(&mut buf)
        .expect("encode CONNECT");
    buf.to_vec()
}

#[tokio::test(flavor = "multi_thread")]
async fn garbage_a_five_byte_remaining_length_and_a_stalled_connect_close_only_their_own_connection()
 {
    use tokio::io::AsyncWriteExt;
    let node = SearchNode::shared();
    let (bridge, port) =
        start(BridgeSpec::embedded(&node.url()).broker("connect_timeout_ms", 1000));
    // A well-behaved device, connected throughout.
    let (client, mut eventloop) = v4_client(port, &unique("it-pi-good"), true);
    assert!(drive_v4(&mut eventloop, Duration::from_secs(10), is_v4_connack).await);
    let mut good_seq = 0;
    let mut publish_ok = async |client: &rumqttc::AsyncClient,
                                eventloop: &mut rumqttc::EventLoop| {
        client
            .publish(
                "sensors/lab/pi-good/telemetry",
                rumqttc::QoS::AtLeastOnce,
                false,
                reading("pi-good", good_seq),
            )
            .await
            .expect("queue publish");
        good_seq += 1;
        drive_v4(eventloop, Duration::from_secs(30), |e| {
            matches!(e, rumqttc::Event::Incoming(rumqttc::Packet::PubAck(_)))
        })
        .await
    };

    let cases: [(&str, Vec<u8>, &str); 3] = [
        (
            "garbage",
            b"\xde\xad\xbe\xef not mqtt at all".to_vec(),
            "first packet is not CONNECT",
        ),
        (
            "five-byte remaining length",
            [
                connect_bytes("it-bad-length"),
                vec![0x30, 0xFF, 0xFF, 0xFF, 0xFF, 0x7F],
            ]
            .concat(),
            "malformed",
        ),
        (
            "CONNECT that never completes",
            vec![0x10, 0x20, 0x00, 0x04],
            "no CONNECT within",
        ),
    ];
    for (case, bytes, reason) in cases {
        let mut bad = tokio::net::TcpStream::connect(("127.0.0.1", port))
            .await
            .expect("connect");
        let local = bad.local_addr().expect("local address");
        bad.write_all(&bytes).await.expect("send bytes");
        assert!(
            closed_by_server(&mut bad, Duration::from_secs(10)).await,
            "{case}: connection left open\n{}",
            bridge.logs()
        );
        let logs = bridge.logs();
        let line = logs
            .lines()
            .find(|l| l.contains("closing connection") && l.contains(&format!("peer={local}")))
            .unwrap_or_else(|| panic!("{case}: no log line naming {local}:\n{logs}"));
        assert!(line.contains(reason), "{case}: {line}");
        assert!(
            publish_ok(&client, &mut eventloop).await,
            "{case}: the good device was affected\n{}",
            bridge.logs()
        );
    }
    assert!(!bridge.logs().contains("panicked"), "{}", bridge.logs());
}

#[tokio::test(flavor = "multi_thread")]
async fn a_thousand_devices_publishing_a_hundred_readings_each_give_exactly_a_hundred_thousand_documents()
 {
    let node = SearchNode::shared();
    let (bridge, port) = start(
        BridgeSpec::embedded(&node.url())
            .broker("max_connections", 2000)
            .pipeline(
                "fleet.yaml",
                r#"
topics: ["fleet/+/telemetry"]
payload: json
stages:
  - topic: {pattern: "fleet/{device}/telemetry"}
  - route: {index: "fleet"}
  - id: {fields: [device, seq]}
"#,
            ),
    );
    const DEVICES: usize = 1000;
    const PER_DEVICE: usize = 100;
    let started = Instant::now();
    let mut devices = tokio::task::JoinSet::new();
    for n in 0..DEVICES {
        devices.spawn(async move {
            let device = format!("d{n:04}");
            let mut options =
                rumqttc::MqttOptions::new(format!("it-fleet-{device}"), "127.0.0.1", port);
            options.set_keep_alive(Duration::from_secs(60));
            let (client, mut eventloop) = rumqttc::AsyncClient::new(options, PER_DEVICE + 10);
            let topic = format!("fleet/{device}/telemetry");
            for seq in 0..PER_DEVICE {
                client
                    .publish(
                        &topic,
                        rumqttc::QoS::AtLeastOnce,
                        false,
                        reading(&device, seq),
                    )
                    .await
                    .expect("queue publish");
            }
            let mut acked = 0;
            // Generous: on a loaded machine a thousand connects and 100,000 documents take
            // longer than the ~30 s they take alone.
            let deadline = Instant::now() + Duration::from_secs(600);
            while acked < PER_DEVICE && Instant::now() < deadline {
                match eventloop.poll().await {
                    Ok(rumqttc::Event::Incoming(rumqttc::Packet::PubAck(_))) => acked += 1,
                    Ok(_) => {}
                    // A connect that timed out under load: the device retries, as a real one
                    // would (rumqttc resends what was not acknowledged).
                    Err(_) => tokio::time::sleep(Duration::from_millis(200)).await,
                }
            }
            acked
        });
    }
    let mut acked = 0;
    while let Some(result) = devices.join_next().await {
        acked += result.expect("device task");
    }
    assert_eq!(
        acked,
        DEVICES * PER_DEVICE,
        "{}",
        bridge
            .logs()
            .lines()
            .rev()
            .take(50)
            .collect::<Vec<_>>()
            .join("\n")
    );
    let index = format!("{}fleet", bridge.prefix());
    assert_eq!(
        wait_for_count(
            node,
            &index,
            (DEVICES * PER_DEVICE) as u64,
            Duration::from_secs(60)
        )
        .await,
        (DEVICES * PER_DEVICE) as u64
    );
    eprintln!(
        "1000 × 100 readings acknowledged and counted in {:?}",
        started.elapsed()
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn mqtt5_publishers_get_reason_codes_after_durability_and_their_user_properties_are_stored() {
    let node = SearchNode::shared();
    let (bridge, port) = start(BridgeSpec::embedded(&node.url()));
    let (client, mut eventloop) = v5_client(port, &unique("it-pi-v5"), None);
    assert!(
        drive_v5(&mut eventloop, Duration::from_secs(10), is_v5_connack)
            .await
            .expect("connects")
    );
    let qos1 = v5::mqttbytes::QoS::AtLeastOnce;
    // Stored: success, and the user property reaches the document.
    let properties = v5::mqttbytes::v5::PublishProperties {
        user_properties: vec![("site".into(), "lab".into())],
        ..Default::default()
    };
    client
        .publish_with_properties("home/door", qos1, false, "closed", properties)
        .await
        .expect("queue");
    // Not UTF-8: the default pipeline dead-letters it; 0x99 once the dead letter is durable.
    client
        .publish("home/blob", qos1, false, vec![0xffu8, 0xfe, 0x00])
        .await
        .expect("queue");
    // `$` topics are not for clients: 0x90, and nothing is stored.
    client
        .publish("$SYS/uptime", qos1, false, "forged")
        .await
        .expect("queue");
    let mut reasons = Vec::new();
    assert!(
        drive_v5(&mut eventloop, Duration::from_secs(60), |e| {
            if let v5::Event::Incoming(v5::Incoming::PubAck(ack)) = e {
                reasons.push(ack.reason);
            }
            reasons.len() == 3
        })
        .await
        .expect("connection stays up"),
        "{reasons:?}\n{}",
        bridge.logs()
    );
    use v5::mqttbytes::v5::PubAckReason;
    assert_eq!(
        reasons,
        [
            PubAckReason::Success,
            PubAckReason::PayloadFormatInvalid,
            PubAckReason::TopicNameInvalid
        ]
    );
    let index = bridge.messages_index();
    assert_eq!(
        node.count(&index).await,
        1,
        "only the valid message is a document"
    );
    let hits = node.search(&index, json!({"size": 1})).await;
    let doc = &hits["hits"]["hits"][0]["_source"];
    assert_eq!(
        doc["mqtt"]["user_properties"],
        json!([{"key": "site", "value": "lab"}]),
        "{doc}"
    );
    assert_eq!(node.count(&bridge.dead_letter_index()).await, 1);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_qos2_exchange_interrupted_by_sigkill_completes_after_restart_without_a_second_document()
{
    use rumqttc::mqttbytes::v4::{Packet, PubRel, Publish};
    let node = SearchNode::shared();
    let port = crate::support::free_port();
    let (mut bridge, _) =
        start(BridgeSpec::embedded(&node.url()).bind(format!("127.0.0.1:{port}")));
    let client_id = unique("it-pi-q2-crash");
    let index = bridge.messages_index();

    let (mut stream, present) = connect_persistent(port, &client_id).await;
    assert!(!present);
    let mut publish = Publish::new("meter/1", rumqttc::QoS::ExactlyOnce, "reading 1");
    publish.pkid = 7;
    send_v4(&mut stream, Packet::Publish(publish)).await;
    let mut buf = bytes::BytesMut::new();
    match receive_v4(&mut stream, &mut buf).await {
        Packet::PubRec(rec) => assert_eq!(rec.pkid, 7),
        other => panic!("expected PUBREC, got {other:?}"),
    }
    assert_eq!(node.count(&index).await, 1, "PUBREC only once stored");
    // Packet id 7 awaiting PUBREL was on disk before the PUBREC went out: crash right away.
    bridge.kill();
    bridge.restart();
    bridge.wait_for_log("broker state loaded", 2, Duration::from_secs(60));
    bridge.broker_port();

    let (mut stream, present) = connect_persistent(port, &client_id).await;
    assert!(present, "the session survived the crash");
    // A client that missed the PUBREC resends the PUBLISH (DUP): it is not processed again,
    // even with a different payload (which would otherwise be a second document).
    let mut resent = Publish::new("meter/1", rumqttc::QoS::ExactlyOnce, "reading 1, resent");
    resent.pkid = 7;
    resent.dup = true;
    send_v4(&mut stream, Packet::Publish(resent)).await;
    let mut buf = bytes::BytesMut::new();
    match receive_v4(&mut stream, &mut buf).await {
        Packet::PubRec(rec) => assert_eq!(rec.pkid, 7),
        other => panic!("expected PUBREC, got {other:?}"),
    }
    send_v4(&mut stream, Packet::PubRel(PubRel::new(7))).await;
    match receive_v4(&mut stream, &mut buf).await {
        Packet::PubComp(comp) => assert_eq!(comp.pkid, 7),
        other => panic!("expected PUBCOMP, got {other:?}"),
    }
    // A publish after it is flushed with the same batch timing; once it is stored, anything
    // the resend had caused would be too.
    let mut later = Publish::new("meter/1", rumqttc::QoS::AtLeastOnce, "reading 2");
    later.pkid = 8;
    send_v4(&mut stream, Packet::Publish(later)).await;
    match receive_v4(&mut stream, &mut buf).await {
        Packet::PubAck(ack) => assert_eq!(ack.pkid, 8),
        other => panic!("expected PUBACK, got {other:?}"),
    }
    assert_eq!(node.count(&index).await, 2, "{}", bridge.logs());
}

#[tokio::test(flavor = "multi_thread")]
async fn sigterm_tells_mqtt5_clients_the_server_is_shutting_down_and_exits_zero_with_state_saved() {
    let node = SearchNode::shared();
    let (mut bridge, port) = start(BridgeSpec::embedded(&node.url()));
    let (client, mut eventloop) = v5_client(port, &unique("it-pi-term"), Some(600));
    assert!(
        drive_v5(&mut eventloop, Duration::from_secs(10), is_v5_connack)
            .await
            .expect("connects")
    );
    client
        .subscribe("cmd/#", v5::mqttbytes::QoS::AtLeastOnce)
        .await
        .expect("queue");
    assert!(
        drive_v5(&mut eventloop, Duration::from_secs(10), |e| matches!(
            e,
            v5::Event::Incoming(v5::Incoming::SubAck(_))
        ))
        .await
        .expect("subscribes")
    );
    let pid = bridge.pid().expect("running");
    let status = Command::new("kill")
        .args(["-TERM", &pid.to_string()])
        .status()
        .expect("kill -TERM");
    assert!(status.success());
    let error = drive_v5(&mut eventloop, Duration::from_secs(30), |_| false)
        .await
        .expect_err("the broker closes the connection");
    assert!(
        format!("{error:?}").contains("ServerShuttingDown"),
        "{error:?}\n{}",
        bridge.logs()
    );
    let status = bridge.terminate(Duration::from_secs(30));
    assert!(status.success(), "{}", bridge.logs());
    let logs = bridge.logs();
    let saved = logs
        .lines()
        .rfind(|l| l.contains("broker state saved") && l.contains("retained="))
        .unwrap_or_else(|| panic!("no final save:\n{logs}"));
    assert!(saved.contains("sessions=1"), "{saved}");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_persistent_subscriber_gets_what_was_published_while_it_was_offline() {
    let node = SearchNode::shared();
    let (bridge, port) = start(BridgeSpec::embedded(&node.url()));
    let client_id = unique("it-sub-offline");
    // A persistent QoS 1 subscription (-c), then offline (-E: exit once subscribed).
    let subscription = Subscriber::to(port, "cmd/#").qos(1).persistent(&client_id);
    subscription.clone().leave();

    Publisher::to(port)
        .qos(1)
        .send("cmd/pi-1", "queued while offline");
    // Resumes the session: the queued message may come before the SUBACK.
    let got = subscription.count(1).spawn().finish();
    assert_eq!(
        verbose(&got),
        ["cmd/pi-1 queued while offline"],
        "{}",
        bridge.logs()
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn an_mqtt5_client_exceeding_our_receive_maximum_is_disconnected_with_0x93() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use v5::mqttbytes::v5::{Connect, ConnectProperties, DisconnectReasonCode, Packet, Publish};
    let node = SearchNode::shared();
    let (bridge, port) = start(BridgeSpec::embedded(&node.url()).broker("max_inflight", 5));
    let mut stream = tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .expect("connect");
    let mut out = bytes::BytesMut::new();
    Packet::Connect(
        Connect {
            keep_alive: 30,
            client_id: unique("it-pi-greedy"),
            clean_start: true,
            properties: Some(ConnectProperties::new()),
        },
        None,
        None,
    )
    .write(&mut out, None)
    .expect("encode CONNECT");
    // Twenty QoS 1 publishes in one burst: none can be durable before the sixth arrives.
    for pkid in 1..=20 {
        let mut publish = Publish::new(
            "sensors/lab/pi-g/telemetry",
            v5::mqttbytes::QoS::AtLeastOnce,
            reading("pi-g", pkid as usize),
            None,
        );
        publish.pkid = pkid;
        Packet::Publish(publish)
            .write(&mut out, None)
            .expect("encode PUBLISH");
    }
    stream.write_all(&out).await.expect("send");

    let mut buf = bytes::BytesMut::new();
    let mut receive_max = None;
    let reason = loop {
        match Packet::read(&mut buf, None) {
            Ok(Packet::ConnAck(ack)) => {
                receive_max = ack.properties.and_then(|p| p.receive_max);
            }
            Ok(Packet::Disconnect(disconnect)) => break disconnect.reason_code,
            Ok(_) => {}
            Err(v5::mqttbytes::Error::InsufficientBytes(_)) => {
                let read = tokio::time::timeout(Duration::from_secs(30), stream.read_buf(&mut buf))
                    .await
                    .expect("a reply")
                    .expect("read");
                assert!(read > 0, "closed without DISCONNECT:\n{}", bridge.logs());
            }
            Err(error) => panic!("undecodable: {error}"),
        }
    };
    assert_eq!(receive_max, Some(5), "our receive maximum is advertised");
    assert_eq!(reason, DisconnectReasonCode::ReceiveMaximumExceeded);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_connection_beyond_max_connections_is_refused_at_connect() {
    let node = SearchNode::shared();
    let (bridge, port) = start(BridgeSpec::embedded(&node.url()).broker("max_connections", 2));
    let mut held = Vec::new();
    for n in 0..2 {
        let (client, mut eventloop) = v4_client(port, &unique(&format!("it-pi-cap{n}")), true);
        assert!(drive_v4(&mut eventloop, Duration::from_secs(10), is_v4_connack).await);
        held.push((client, eventloop));
    }
    let (_client, mut eventloop) = v4_client(port, &unique("it-pi-cap-extra"), true);
    let error = eventloop.poll().await.expect_err("refused");
    assert!(
        matches!(
            error,
            rumqttc::ConnectionError::ConnectionRefused(
                rumqttc::ConnectReturnCode::ServiceUnavailable
            )
        ),
        "{error:?}\n{}",
        bridge.logs()
    );
}

/// Sends `packets` (after an MQTT 5 CONNECT) in one burst and collects the replies until the
/// server sends DISCONNECT, closes, or `until` is satisfied.
async fn raw_v5_session(
    port: u16,
    packets: Vec<v5::mqttbytes::v5::Packet>,
    mut until: impl FnMut(&v5::mqttbytes::v5::Packet) -> bool,
) -> Vec<v5::mqttbytes::v5::Packet> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use v5::mqttbytes::v5::{Connect, ConnectProperties, Packet};
    let mut stream = tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .expect("connect");
    let mut out = bytes::BytesMut::new();
    let connect = Connect {
        keep_alive: 30,
        client_id: unique("it-raw5"),
        clean_start: true,
        properties: Some(ConnectProperties::new()),
    };
    Packet::Connect(connect, None, None)
        .write(&mut out, None)
        .expect("encode CONNECT");
    for packet in packets {
        packet.write(&mut out, None).expect("encode");
    }
    stream.write_all(&out).await.expect("send");
    let mut buf = bytes::BytesMut::new();
    let mut replies = Vec::new();
    loop {
        match Packet::read(&mut buf, None) {
            Ok(packet) => {
                let last = matches!(packet, Packet::Disconnect(_)) || until(&packet);
                replies.push(packet);
                if last {
                    return replies;
                }
            }
            Err(v5::mqttbytes::Error::InsufficientBytes(_)) => {
                let read = tokio::time::timeout(Duration::from_secs(30), stream.read_buf(&mut buf))
                    .await
                    .expect("a reply within 30 s")
                    .expect("read");
                if read == 0 {
                    return replies;
                }
            }
            Err(error) => panic!("undecodable reply: {error}"),
        }
    }
}

fn v5_publish(
    topic: &str,
    pkid: u16,
    payload: &str,
    alias: Option<u16>,
) -> v5::mqttbytes::v5::Packet {
    let properties = alias.map(|alias| v5::mqttbytes::v5::PublishProperties {
        topic_alias: Some(alias),
        ..Default::default()
    });
    let mut publish = v5::mqttbytes::v5::Publish::new(
        topic,
        v5::mqttbytes::QoS::AtLeastOnce,
        payload.to_owned(),
        properties,
    );
    publish.pkid = pkid;
    v5::mqttbytes::v5::Packet::Publish(publish)
}

#[tokio::test(flavor = "multi_thread")]
async fn an_mqtt5_topic_alias_names_the_topic_of_later_publishes() {
    let node = SearchNode::shared();
    let (bridge, port) = start(BridgeSpec::embedded(&node.url()));
    let replies = raw_v5_session(
        port,
        vec![
            v5_publish(
                "sensors/lab/pi-alias/telemetry",
                1,
                &reading("pi-alias", 1),
                Some(3),
            ),
            v5_publish("", 2, &reading("pi-alias", 2), Some(3)),
        ],
        |p| matches!(p, v5::mqttbytes::v5::Packet::PubAck(ack) if ack.pkid == 2),
    )
    .await;
    let acks = replies
        .iter()
        .filter(|p| matches!(p, v5::mqttbytes::v5::Packet::PubAck(_)))
        .count();
    assert_eq!(acks, 2, "{replies:?}\n{}", bridge.logs());
    let index = readings_index(&bridge);
    assert_eq!(node.count(&index).await, 2);
    let devices = node
        .search(
            &index,
            json!({"query": {"term": {"device.keyword": "pi-alias"}}}),
        )
        .await;
    assert_eq!(devices["hits"]["total"]["value"], 2, "{devices}");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_packet_over_max_packet_bytes_closes_that_connection_with_0x95() {
    let node = SearchNode::shared();
    let spec = BridgeSpec::embedded(&node.url())
        .max_packet_bytes(2048)
        .max_payload_bytes(1024);
    let (bridge, port) = start(spec);
    let replies = raw_v5_session(
        port,
        vec![v5_publish("big/one", 1, &"x".repeat(4096), None)],
        |_| false,
    )
    .await;
    assert!(
        matches!(
            replies.last(),
            Some(v5::mqttbytes::v5::Packet::Disconnect(d))
                if d.reason_code == v5::mqttbytes::v5::DisconnectReasonCode::PacketTooLarge
        ),
        "{replies:?}\n{}",
        bridge.logs()
    );
    assert!(
        bridge.logs().contains("exceeds the maximum of 2048"),
        "{}",
        bridge.logs()
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn sigterm_while_the_search_node_is_down_acknowledges_nothing_and_the_resend_after_restart_is_stored_once()
 {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicUsize, Ordering};
    let mut node = SearchNode::start_private();
    let port = crate::support::free_port();
    let (mut bridge, _) =
        start(BridgeSpec::embedded(&node.url()).bind(format!("127.0.0.1:{port}")));
    let index = readings_index(&bridge);
    node.stop();

    const READINGS: usize = 5;
    let acked = Arc::new(AtomicUsize::new(0));
    let device = {
        let acked = Arc::clone(&acked);
        tokio::spawn(async move {
            let mut options =
                rumqttc::MqttOptions::new(unique("it-pi-term-down"), "127.0.0.1", port);
            options.set_clean_session(false).set_inflight(10);
            let (client, mut eventloop) = rumqttc::AsyncClient::new(options, 20);
            for seq in 0..READINGS {
                client
                    .publish(
                        "sensors/lab/pi-td/telemetry",
                        rumqttc::QoS::AtLeastOnce,
                        false,
                        reading("pi-td", seq),
                    )
                    .await
                    .expect("queue publish");
            }
            let deadline = Instant::now() + Duration::from_secs(180);
            while acked.load(Ordering::SeqCst) < READINGS && Instant::now() < deadline {
                match eventloop.poll().await {
                    Ok(rumqttc::Event::Incoming(rumqttc::Packet::PubAck(_))) => {
                        acked.fetch_add(1, Ordering::SeqCst);
                    }
                    Ok(_) => {}
                    Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
                }
            }
        })
    };
    // The publishes reach mqtt2es, and its sink is failing to store them.
    bridge.wait_for_log("retrying", 1, Duration::from_secs(60));
    let status = bridge.terminate(Duration::from_secs(60));
    assert!(status.success(), "{}", bridge.logs());
    assert_eq!(
        acked.load(Ordering::SeqCst),
        0,
        "acknowledged while nothing was stored:\n{}",
        bridge.logs()
    );
    assert!(
        bridge.logs().contains("grace period over"),
        "{}",
        bridge.logs()
    );

    node.start();
    bridge.restart();
    device.await.expect("device task");
    assert_eq!(acked.load(Ordering::SeqCst), READINGS, "{}", bridge.logs());
    assert_eq!(
        node.count(&index).await,
        READINGS as u64,
        "{}",
        bridge.logs()
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn an_mqtt5_will_delay_holds_the_will_back_while_the_device_reconnects_in_time() {
    let node = SearchNode::shared();
    let (mut bridge, port) = start(BridgeSpec::embedded(&node.url()));
    let sub = Subscriber::to(port, "devices/+/status").count(1).start();
    let client_id = unique("it-pi-delay");
    let will = |payload: &str, delay_s: u32| {
        v5::mqttbytes::v5::LastWill::new(
            "devices/pi-d/status",
            payload.to_owned(),
            v5::mqttbytes::QoS::AtMostOnce,
            false,
            Some(v5::mqttbytes::v5::LastWillProperties {
                delay_interval: Some(delay_s),
                payload_format_indicator: None,
                message_expiry_interval: None,
                content_type: None,
                response_topic: None,
                correlation_data: None,
                user_properties: Vec::new(),
            }),
        )
    };
    let connect = |will: v5::mqttbytes::v5::LastWill| {
        let mut options = v5::MqttOptions::new(client_id.clone(), "127.0.0.1", port);
        options
            .set_clean_start(false)
            .set_session_expiry_interval(Some(600))
            .set_last_will(will);
        v5::AsyncClient::new(options, 10)
    };

    // Drops off with a 3 s will delay and is back within it: that will is never published.
    let (first, mut first_loop) = connect(will("flaky link", 3));
    assert!(
        drive_v5(&mut first_loop, Duration::from_secs(10), is_v5_connack)
            .await
            .expect("up")
    );
    drop(first_loop);
    drop(first);
    let (second, mut second_loop) = connect(will("offline for good", 0));
    assert!(
        drive_v5(&mut second_loop, Duration::from_secs(10), is_v5_connack)
            .await
            .expect("up")
    );
    bridge.wait_for_log(
        "reconnected within its will delay",
        1,
        Duration::from_secs(10),
    );
    // Now it drops off for good, with no delay: that will is published.
    drop(second_loop);
    drop(second);

    let got = sub.finish();
    assert_eq!(
        verbose(&got),
        ["devices/pi-d/status offline for good"],
        "{}",
        bridge.logs()
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn devices_connect_while_the_search_node_is_still_down_at_start_and_are_stored_once_it_is_up()
{
    let mut node = SearchNode::start_private();
    node.stop();
    // Compose or a reboot: mqtt2es comes up before Elasticsearch. The broker listens anyway.
    let mut bridge = Bridge::start(
        &BridgeSpec::embedded(&node.url()).pipeline("readings.yaml", readings_pipeline()),
    );
    let port = bridge.broker_port();
    let index = readings_index(&bridge);
    let sub = Subscriber::to(port, "sensors/#").start();
    let publisher = std::thread::spawn(move || {
        Publisher::to(port)
            .qos(1)
            .send("sensors/lab/pi-9/telemetry", reading("pi-9", 1))
    });
    // Subscribers see live traffic while nothing can be stored yet.
    sub.wait_until("the live message", Duration::from_secs(30), |got| {
        got.iter().any(|m| m.topic == "sensors/lab/pi-9/telemetry")
    });
    assert!(
        !publisher.is_finished(),
        "the PUBACK came before the document could be stored:\n{}",
        bridge.logs()
    );
    node.start();
    let published = publisher.join().expect("mosquitto_pub thread");
    assert!(published.status.success());
    assert_eq!(
        wait_for_count(&node, &index, 1, Duration::from_secs(60)).await,
        1,
        "{}",
        bridge.logs()
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn an_unreachable_search_node_is_reported_once_with_its_url_and_what_to_do_not_per_retry() {
    let mut node = SearchNode::start_private();
    node.stop();
    let mut bridge = Bridge::start(
        &BridgeSpec::embedded(&node.url()).pipeline("readings.yaml", readings_pipeline()),
    );
    // Three retries after the first failure (each logged at debug level only).
    bridge.wait_for_log(
        "elasticsearch still not ready; retrying",
        3,
        Duration::from_secs(60),
    );
    let logs = bridge.logs();
    let warnings: Vec<_> = logs
        .lines()
        .filter(|l| l.contains("elasticsearch not ready for setup"))
        .collect();
    assert_eq!(warnings.len(), 1, "one line, not one per retry:\n{logs}");
    let line = warnings[0];
    assert!(line.contains("WARN"), "{line}");
    assert!(line.contains(&node.url()), "names the URL: {line}");
    assert!(
        line.contains("scripts/demo")
            && line.contains("docker compose up elasticsearch")
            && line.contains("elasticsearch.url"),
        "says what to do: {line}"
    );
    assert!(
        !logs
            .lines()
            .any(|l| l.contains("WARN") && l.contains("retry")),
        "no warning per retry:\n{logs}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn sigterm_before_elasticsearch_was_ever_ready_exits_zero_having_acknowledged_nothing() {
    let mut node = SearchNode::start_private();
    node.stop();
    let mut bridge = Bridge::start(
        &BridgeSpec::embedded(&node.url()).pipeline("readings.yaml", readings_pipeline()),
    );
    bridge.broker_port();
    bridge.wait_for_log(
        "elasticsearch not ready for setup",
        1,
        Duration::from_secs(30),
    );
    let status = bridge.terminate(Duration::from_secs(30));
    assert!(status.success(), "{status}:\n{}", bridge.logs());
    assert!(
        bridge
            .logs()
            .contains("stopped before elasticsearch was ready; nothing was acknowledged"),
        "{}",
        bridge.logs()
    );
}

/// `mosquitto_sub -V mqttv5` subscribed to the shared subscription `filter` at QoS 1.
fn v5_share_member(port: u16, filter: &str) -> Subscriber {
    Subscriber::to(port, filter).qos(1).v5().start()
}

/// Polls until `subscribers` got `count` messages between them or `timeout` passes; what each
/// got by then.
async fn received_between(
    subscribers: &[&Subscriber],
    count: usize,
    timeout: Duration,
) -> Vec<Vec<Received>> {
    let deadline = Instant::now() + timeout;
    loop {
        let received: Vec<_> = subscribers.iter().map(|s| s.messages()).collect();
        if received.iter().map(Vec::len).sum::<usize>() >= count || Instant::now() > deadline {
            return received;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// The payloads of `received`, sorted, to compare with what was published.
fn sorted_payloads<'a>(received: impl IntoIterator<Item = &'a Received>) -> Vec<String> {
    let mut payloads: Vec<_> = received.into_iter().map(|m| m.payload.clone()).collect();
    payloads.sort();
    payloads
}

#[tokio::test(flavor = "multi_thread")]
async fn two_mosquitto_sub_members_of_a_shared_group_get_every_message_exactly_once_between_them() {
    let node = SearchNode::shared();
    let (bridge, port) = start(BridgeSpec::embedded(&node.url()));
    let a = v5_share_member(port, "$share/g/test/#");
    let b = v5_share_member(port, "$share/g/test/#");

    let sent: Vec<String> = (0..200).map(|n| format!("message-{n:03}")).collect();
    let acked = publish_lines_qos1(port, "test/shared", &sent);
    assert_eq!(acked, sent.len(), "{}", bridge.logs());

    let received = received_between(&[&a, &b], sent.len(), Duration::from_secs(30)).await;
    let counts: Vec<_> = received.iter().map(Vec::len).collect();
    assert!(
        counts.iter().all(|&n| n > 0),
        "each member gets a share: {counts:?}\n{}",
        bridge.logs()
    );
    assert_eq!(
        sorted_payloads(received.iter().flatten()),
        sent,
        "every message once, to one member ({counts:?})"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_shared_member_that_drops_out_without_acknowledging_leaves_its_qos1_share_to_the_other() {
    let node = SearchNode::shared();
    let (bridge, port) = start(BridgeSpec::embedded(&node.url()));
    // A 3.1.1 member: mosquitto_sub's default protocol.
    let steady = Subscriber::to(port, "$share/g/test/#").qos(1).start();
    // The member that drops out acknowledges nothing and takes at most five at a time, so of
    // its share five are in flight when it goes and the rest still wait in mqtt2es.
    let mut options = v5::MqttOptions::new(unique("it-share-dropout"), "127.0.0.1", port);
    options
        .set_clean_start(true)
        .set_keep_alive(Duration::from_secs(30))
        .set_manual_acks(true)
        .set_receive_maximum(Some(5));
    let (client, mut eventloop) = v5::AsyncClient::new(options, 100);
    client
        .subscribe("$share/g/test/#", v5::mqttbytes::QoS::AtLeastOnce)
        .await
        .expect("queue SUBSCRIBE");
    let subscribed = drive_v5(&mut eventloop, Duration::from_secs(10), |event| {
        matches!(event, v5::Event::Incoming(v5::Incoming::SubAck(_)))
    });
    assert!(subscribed.await.expect("connected"), "{}", bridge.logs());

    let sent: Vec<String> = (0..20).map(|n| format!("message-{n:02}")).collect();
    assert_eq!(publish_lines_qos1(port, "test/dropout", &sent), sent.len());
    // Fanned out on arrival, before the PUBACKs: the dropout's share is with it already.
    let mut held = Vec::new();
    let five = drive_v5(&mut eventloop, Duration::from_secs(10), |event| {
        if let v5::Event::Incoming(v5::Incoming::Publish(publish)) = event {
            held.push(String::from_utf8_lossy(&publish.payload).into_owned());
        }
        held.len() == 5
    });
    assert!(five.await.expect("still connected"), "got only {held:?}");
    let before = steady.messages().len();
    assert!(before < sent.len(), "the dropout held part of the share");

    // Gone without DISCONNECT or a single PUBACK; its clean session ends with the connection.
    drop(eventloop);
    drop(client);
    let got = steady.wait_until("every message", Duration::from_secs(30), |messages| {
        messages.len() >= sent.len()
    });
    assert_eq!(
        sorted_payloads(&got),
        sent,
        "the dropout's {held:?} went to the other member, once ({before} before)\n{}",
        bridge.logs()
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn no_local_on_a_shared_subscription_closes_the_connection_with_0x82() {
    use v5::mqttbytes::v5::{DisconnectReasonCode, Filter, Packet, Subscribe};
    let node = SearchNode::shared();
    let (bridge, port) = start(BridgeSpec::embedded(&node.url()));
    let mut filter = Filter::new("$share/g/test/#", v5::mqttbytes::QoS::AtLeastOnce);
    filter.nolocal = true;
    let mut subscribe = Subscribe::new(filter, None);
    subscribe.pkid = 1;
    let replies = raw_v5_session(port, vec![Packet::Subscribe(subscribe)], |reply| {
        matches!(reply, Packet::SubAck(_))
    })
    .await;
    match &replies[..] {
        [Packet::ConnAck(ack), Packet::Disconnect(disconnect)] => {
            let shared = ack
                .properties
                .as_ref()
                .and_then(|p| p.shared_subscription_available);
            assert_eq!(shared, Some(1), "CONNACK announces shared subscriptions");
            assert_eq!(disconnect.reason_code, DisconnectReasonCode::ProtocolError);
        }
        other => panic!(
            "expected CONNACK, DISCONNECT, no SUBACK: {other:?}\n{}",
            bridge.logs()
        ),
    }
}
