//! The embedded broker's state on disk, end to end: what a crash keeps, what the churn of
//! devices costs in disk writes (`write_bytes` of mqtt2es in `/proc/<pid>/io`), and how long a
//! start with a large retained set takes.
//!
//! Messages here go to a pipeline that drops them, so a PUBACK comes as soon as the broker is
//! done with a publish and the search node plays no part in what is measured.
//!
//! `MQTT2ES_SOAK_RETAINED_MB` sets the retained set of the churn test (20 MB by default; the
//! issue's figure, 100, through `scripts/soak retained`).

use std::time::{Duration, Instant};

use rumqttc::{AsyncClient, Event, EventLoop, MqttOptions, Outgoing, Packet, QoS};

use crate::support::bridge::{Bridge, BridgeSpec};
use crate::support::metrics::wait_for_samples;
use crate::support::subscriber::{Received, Subscriber};
use crate::support::{SearchNode, free_port, unique};

/// Takes `filler/#` and `retained/#` and drops what it takes.
const FILLER_PIPELINE: &str = r#"
topics: ["filler/#", "retained/#", "status/#"]
payload: json
stages:
  - drop: {if: {field: kind, equals: filler}}
"#;

/// A payload the filler pipeline drops, `bytes` long.
fn filler(bytes: usize) -> Vec<u8> {
    let head = br#"{"kind":"filler","pad":""#;
    let mut payload = head.to_vec();
    payload.resize(bytes.saturating_sub(2).max(head.len()), b'x');
    payload.extend_from_slice(br#""}"#);
    payload
}

/// mqtt2es as the broker on a port it keeps across restarts, with the filler pipeline.
fn start() -> (Bridge, u16) {
    start_with(|spec| spec)
}

/// Like `start`, with the `broker:` settings `configure` adds.
fn start_with(configure: impl FnOnce(BridgeSpec) -> BridgeSpec) -> (Bridge, u16) {
    let node = SearchNode::shared();
    let port = free_port();
    let spec = BridgeSpec::embedded(&node.url())
        .bind(format!("127.0.0.1:{port}"))
        .pipeline("filler.yaml", FILLER_PIPELINE);
    let mut bridge = Bridge::start(&configure(spec));
    bridge.wait_ready();
    (bridge, port)
}

/// Bytes the process has caused to be written to storage so far (`/proc/<pid>/io`).
fn write_bytes(pid: u32) -> u64 {
    let io = std::fs::read_to_string(format!("/proc/{pid}/io")).expect("read /proc/<pid>/io");
    io.lines()
        .find_map(|line| line.strip_prefix("write_bytes: "))
        .and_then(|n| n.trim().parse().ok())
        .expect("a write_bytes line")
}

/// `write_bytes` once it has held still for a second (at most a minute): the writes a change
/// causes may lag behind it (a whole-state snapshot written in the background did), and a
/// measurement that stops early would miss them. The barrier before this (`barrier`) is what
/// makes ours complete; this is what keeps the figure honest for any other way of writing.
async fn settled_write_bytes(pid: u32) -> u64 {
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut last = write_bytes(pid);
    let mut still_since = Instant::now();
    while still_since.elapsed() < Duration::from_secs(1) && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(100)).await;
        let now = write_bytes(pid);
        if now != last {
            (last, still_since) = (now, Instant::now());
        }
    }
    last
}

/// A connected 3.1.1 client; panics unless CONNACK comes within 10 s. The session-present flag
/// comes back with it.
async fn connect(port: u16, client_id: &str, clean: bool) -> (AsyncClient, EventLoop, bool) {
    let mut options = MqttOptions::new(client_id, "127.0.0.1", port);
    options
        .set_clean_session(clean)
        .set_keep_alive(Duration::from_secs(30))
        .set_max_packet_size(1 << 20, 1 << 20)
        .set_inflight(100);
    let (client, mut eventloop) = AsyncClient::new(options, 200);
    let present = poll_until(&mut eventloop, "CONNACK", |event| match event {
        Event::Incoming(Packet::ConnAck(ack)) => Some(ack.session_present),
        _ => None,
    })
    .await;
    (client, eventloop, present)
}

/// Polls until `pick` returns something; panics after 30 s or if the connection fails.
async fn poll_until<T>(
    eventloop: &mut EventLoop,
    what: &str,
    mut pick: impl FnMut(&Event) -> Option<T>,
) -> T {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match tokio::time::timeout(left, eventloop.poll()).await {
            Err(_) => panic!("no {what} within 30 s"),
            Ok(Err(error)) => panic!("connection failed waiting for {what}: {error}"),
            Ok(Ok(event)) => {
                if let Some(picked) = pick(&event) {
                    return picked;
                }
            }
        }
    }
}

/// Sends DISCONNECT and waits until it is on the wire and the broker closed the connection.
async fn disconnect(client: AsyncClient, mut eventloop: EventLoop) {
    client.disconnect().await.expect("queue DISCONNECT");
    poll_until(&mut eventloop, "DISCONNECT sent", |event| {
        matches!(event, Event::Outgoing(Outgoing::Disconnect)).then_some(())
    })
    .await;
}

/// Publishes `count` QoS 1 messages from `client` and waits for every PUBACK.
async fn publish_acked(
    client: &AsyncClient,
    eventloop: &mut EventLoop,
    messages: impl IntoIterator<Item = (String, Vec<u8>, bool)>,
) {
    let mut sent = 0;
    let mut acked = 0;
    let mut messages = messages.into_iter().peekable();
    while messages.peek().is_some() || acked < sent {
        // A window of 50 unacknowledged: the request queue is never full.
        while sent - acked < 50
            && let Some((topic, payload, retain)) = messages.next()
        {
            client
                .publish(topic, QoS::AtLeastOnce, retain, payload)
                .await
                .expect("queue publish");
            sent += 1;
        }
        acked += poll_until(eventloop, "PUBACK", |event| {
            matches!(event, Event::Incoming(Packet::PubAck(_))).then_some(1)
        })
        .await;
    }
}

/// One QoS 1 publish acknowledged: the broker writes everything it changed before it sends a
/// PUBACK, so whatever happened before this publish arrived is on disk when this returns.
async fn barrier(port: u16) {
    let (client, mut eventloop, _) = connect(port, &unique("it-barrier"), true).await;
    let one = [(format!("filler/{}", unique("b")), filler(64), false)];
    publish_acked(&client, &mut eventloop, one).await;
    disconnect(client, eventloop).await;
}

/// The `retained=` figure of this run's `broker state loaded` line.
fn retained_loaded(bridge: &Bridge) -> usize {
    let logs = bridge.logs();
    let line = logs
        .lines()
        .rfind(|l| l.contains("broker state loaded"))
        .expect("a broker state loaded line");
    line.split("retained=")
        .nth(1)
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no retained= in {line:?}"))
}

#[tokio::test(flavor = "multi_thread")]
async fn with_many_retained_messages_device_churn_writes_kilobytes_and_a_restart_takes_seconds() {
    let megabytes: usize = std::env::var("MQTT2ES_SOAK_RETAINED_MB")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(20);
    const MESSAGE_BYTES: usize = 10_000;
    let count = megabytes * 1_000_000 / MESSAGE_BYTES;
    let (mut bridge, port) = start();

    let first_pid = bridge.pid().expect("running");
    let before = write_bytes(first_pid);
    let (client, mut eventloop, _) = connect(port, &unique("it-retainer"), true).await;
    let messages = (0..count).map(|n| (format!("retained/{n}"), filler(MESSAGE_BYTES), true));
    publish_acked(&client, &mut eventloop, messages).await;
    disconnect(client, eventloop).await;
    let publishing = write_bytes(first_pid) - before;

    // A crash, so that the start has whatever the store left unflushed to recover.
    bridge.kill();
    let started = Instant::now();
    bridge.restart();
    bridge.wait_for_log_of_this_run("broker state loaded", Duration::from_secs(60));
    let loaded = started.elapsed();
    bridge.broker_port();
    let listening = started.elapsed();
    assert_eq!(retained_loaded(&bridge), count, "{}", bridge.logs());
    bridge.wait_ready();
    let pid = bridge.pid().expect("running");

    barrier(port).await;
    let before = settled_write_bytes(pid).await;
    for n in 0..30 {
        let (client, eventloop, _) = connect(port, &format!("it-clean-{n}"), true).await;
        disconnect(client, eventloop).await;
    }
    barrier(port).await;
    let clean = settled_write_bytes(pid).await - before;

    // A persistent client with a subscription; each cycle is confirmed by a publish acked on
    // the next connection, so each figure holds one disconnect and one connect.
    let id = unique("it-persistent");
    let (mut client, mut eventloop, _) = connect(port, &id, false).await;
    client
        .subscribe("cmd/#", QoS::AtLeastOnce)
        .await
        .expect("queue SUBSCRIBE");
    poll_until(&mut eventloop, "SUBACK", |event| {
        matches!(event, Event::Incoming(Packet::SubAck(_))).then_some(())
    })
    .await;
    let mut persistent = Vec::new();
    for n in 0..10 {
        let one = [(format!("filler/{id}/{n}"), filler(64), false)];
        publish_acked(&client, &mut eventloop, one).await;
        let before = settled_write_bytes(pid).await;
        disconnect(client, eventloop).await;
        let (next, mut next_loop, present) = connect(port, &id, false).await;
        assert!(present, "the persistent session is present");
        let one = [(format!("filler/{id}/{n}b"), filler(64), false)];
        publish_acked(&next, &mut next_loop, one).await;
        persistent.push(settled_write_bytes(pid).await - before);
        (client, eventloop) = (next, next_loop);
    }
    disconnect(client, eventloop).await;
    let worst = persistent.iter().copied().max().unwrap_or(0);

    println!(
        "figure: {megabytes} MB retained ({count} messages of {MESSAGE_BYTES} bytes), whose \
         publishing wrote {publishing} bytes: 30 clean connect/disconnect cycles wrote {clean} \
         bytes; a persistent client's disconnect + connect + one QoS 1 publish wrote at most \
         {worst} bytes ({persistent:?}); restart after SIGKILL: state loaded in {loaded:?}, \
         listening in {listening:?}"
    );
    assert!(clean < 1_000_000, "30 clean cycles wrote {clean} bytes");
    assert!(worst < 64 * 1024, "a persistent cycle wrote {worst} bytes");
    assert!(
        listening < Duration::from_secs(5),
        "the restart took {listening:?}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn the_last_retained_message_acknowledged_before_a_sigkill_is_the_one_there_after_the_restart()
 {
    let (mut bridge, port) = start();
    let topic = format!("status/{}", unique("pi"));
    let (client, mut eventloop, _) = connect(port, &unique("it-status"), true).await;
    // One after the other, each acknowledged before the next: the last PUBACK comes moments
    // before the kill, well inside any "shortly after" a background writer might allow itself.
    for n in 0..30 {
        let payload = format!(r#"{{"kind":"status","n":{n}}}"#).into_bytes();
        publish_acked(&client, &mut eventloop, [(topic.clone(), payload, true)]).await;
    }
    bridge.kill();
    drop((client, eventloop));
    bridge.restart();
    bridge.broker_port();

    let (client, mut eventloop, _) = connect(port, &unique("it-reader"), true).await;
    client
        .subscribe(&topic, QoS::AtLeastOnce)
        .await
        .expect("queue SUBSCRIBE");
    let retained = poll_until(
        &mut eventloop,
        "the retained message",
        |event| match event {
            Event::Incoming(Packet::Publish(p)) => Some(p.clone()),
            _ => None,
        },
    )
    .await;
    assert!(retained.retain);
    assert_eq!(&retained.payload[..], br#"{"kind":"status","n":29}"#);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_broker_state_json_of_an_earlier_version_is_imported_on_the_first_start_and_renamed() {
    let (mut bridge, port) = start();
    let status = bridge.terminate(Duration::from_secs(30));
    assert!(status.success(), "{}", bridge.logs());
    // The state as an earlier mqtt2es left it: a JSON file, no store.
    std::fs::remove_dir_all(bridge.file("state/store")).expect("remove the store");
    let client_id = unique("it-legacy");
    let legacy = format!(
        r#"{{"sessions":[{{"client_id":"{client_id}","subscriptions":[{{"filter":"cmd/#","qos":1}}],
            "expiry_s":4294967295,"awaiting_pubrel":[],"disconnected_at":null}}],
           "retained":[{{"topic":"status/legacy","payload_base64":"b2xkIG5ld3M=","qos":1}}]}}"#
    );
    std::fs::write(bridge.file("state/broker-state.json"), legacy).expect("write the file");
    bridge.restart();
    bridge.wait_for_log_of_this_run("broker state imported", Duration::from_secs(30));
    bridge.broker_port();
    assert!(!bridge.file("state/broker-state.json").exists());
    assert!(bridge.file("state/broker-state.json.migrated").exists());

    // Once more: the import lives in the store now, and is not repeated.
    let status = bridge.terminate(Duration::from_secs(30));
    assert!(status.success(), "{}", bridge.logs());
    bridge.restart();
    bridge.broker_port();
    assert_eq!(bridge.logs().matches("broker state imported").count(), 1);

    let (client, eventloop, present) = connect(port, &client_id, false).await;
    assert!(
        present,
        "the imported session is present\n{}",
        bridge.logs()
    );
    disconnect(client, eventloop).await;
    let (client, mut eventloop, _) = connect(port, &unique("it-reader"), true).await;
    client
        .subscribe("status/legacy", QoS::AtLeastOnce)
        .await
        .expect("queue SUBSCRIBE");
    let retained = poll_until(
        &mut eventloop,
        "the imported retained message",
        |event| match event {
            Event::Incoming(Packet::Publish(p)) => Some(p.clone()),
            _ => None,
        },
    )
    .await;
    assert_eq!(&retained.payload[..], b"old news");
}

/// Subscribes `client_id` to `filter` at QoS 1 with a persistent session, then leaves.
fn subscribe_and_leave(port: u16, client_id: &str, filter: &str) {
    Subscriber::to(port, filter)
        .qos(1)
        .persistent(client_id)
        .leave();
}

/// `count` filler messages on `topic`, numbered from `first` in their `n` field.
fn numbered(topic: &str, first: usize, count: usize) -> Vec<(String, Vec<u8>, bool)> {
    (first..first + count)
        .map(|n| {
            let payload = format!(r#"{{"kind":"filler","n":{n}}}"#).into_bytes();
            (topic.to_owned(), payload, false)
        })
        .collect()
}

/// The `n` of each message, in arrival order; `None` for the end marker.
fn numbers(messages: &[Received]) -> Vec<Option<u64>> {
    messages.iter().map(|m| m.json()["n"].as_u64()).collect()
}

/// Publishes the end marker (`"n": "end"`) and waits until `subscriber` got it: everything
/// queued for it before came ahead of it. Returns what it got before the marker.
async fn until_end_marker(port: u16, topic: &str, subscriber: &Subscriber) -> Vec<Option<u64>> {
    let (client, mut eventloop, _) = connect(port, &unique("it-end"), true).await;
    let end = br#"{"kind":"filler","n":"end"}"#.to_vec();
    publish_acked(&client, &mut eventloop, [(topic.to_owned(), end, false)]).await;
    disconnect(client, eventloop).await;
    let messages = subscriber.wait_until("the end marker", Duration::from_secs(60), |m| {
        m.iter().any(|m| m.payload.contains(r#""n":"end""#))
    });
    let mut numbers = numbers(&messages);
    assert_eq!(numbers.pop(), Some(None), "the end marker comes last");
    numbers
}

#[tokio::test(flavor = "multi_thread")]
async fn a_persistent_subscriber_gets_all_500_messages_queued_while_it_was_offline_once_each_across_a_sigkill()
 {
    let (mut bridge, port) = start();
    let client_id = unique("it-offline");
    let topic = format!("filler/queue/{client_id}");
    subscribe_and_leave(port, &client_id, &topic);

    let (client, mut eventloop, _) = connect(port, &unique("it-pub"), true).await;
    publish_acked(&client, &mut eventloop, numbered(&topic, 0, 500)).await;
    // Each PUBACK went out after the copy queued for the subscriber was on disk.
    bridge.kill();
    drop((client, eventloop));
    bridge.restart();
    bridge.broker_port();

    let subscriber = Subscriber::to(port, &topic)
        .qos(1)
        .persistent(&client_id)
        .start();
    let got = until_end_marker(port, &topic, &subscriber).await;
    let expected: Vec<_> = (0..500).map(Some).collect();
    assert_eq!(got, expected, "all 500, once each, in order");
    let logs = bridge.logs();
    let loaded = logs
        .lines()
        .filter(|l| l.contains("broker state loaded"))
        .nth(1)
        .expect("the second start's broker state loaded line");
    assert!(loaded.contains("queued=500"), "{loaded}");
}

#[tokio::test(flavor = "multi_thread")]
async fn an_offline_queue_over_its_bound_keeps_the_newest_and_counts_and_logs_what_it_dropped() {
    let (mut bridge, port) =
        start_with(|spec| spec.broker("offline_queue", "{max_messages_per_session: 10}"));
    let client_id = unique("it-bounded");
    let topic = format!("filler/queue/{client_id}");
    subscribe_and_leave(port, &client_id, &topic);

    let (client, mut eventloop, _) = connect(port, &unique("it-pub"), true).await;
    publish_acked(&client, &mut eventloop, numbered(&topic, 0, 25)).await;
    disconnect(client, eventloop).await;
    let logs = bridge.logs();
    let warning = logs
        .lines()
        .find(|l| l.contains("an offline queue is over broker.offline_queue"))
        .unwrap_or_else(|| panic!("no warning about the dropped messages:\n{logs}"));
    assert!(
        warning.contains("bound=\"max_messages_per_session\""),
        "{warning}"
    );
    assert!(warning.contains(&client_id), "{warning}");
    wait_for_samples(
        bridge.metrics_address(),
        &[
            ("mqtt2es_broker_offline_dropped_total", 15.0),
            ("mqtt2es_broker_offline_queued_messages", 10.0),
        ],
        Duration::from_secs(10),
    )
    .await;

    let subscriber = Subscriber::to(port, &topic)
        .qos(1)
        .persistent(&client_id)
        .start();
    let got = until_end_marker(port, &topic, &subscriber).await;
    let expected: Vec<_> = (15..25).map(Some).collect();
    assert_eq!(got, expected, "the newest 10");
}
