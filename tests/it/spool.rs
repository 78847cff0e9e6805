//! `delivery.mode: spool`: readings acknowledged once fsynced in the local spool, shipped to the
//! search node from there. While the node is down devices keep getting PUBACKs; a SIGKILL of
//! mqtt2es in the middle of the outage loses nothing acknowledged; a full disk stops the acks
//! without damaging the spool, and they resume by themselves once space is freed.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use serde_json::json;

use crate::support::bridge::{Bridge, BridgeSpec};
use crate::support::metrics::{get, sample, wait_for_readyz, wait_for_samples};
use crate::support::paho::PahoDevice;
use crate::support::ports::free_port;
use crate::support::publish::{Publisher, publish_in_parallel, publish_lines_qos1};
use crate::support::readings::readings_pipeline_by_reading_id;
use crate::support::readings::{devices_at, readings};
use crate::support::soak_setting;
use crate::support::telemetry::{telemetry_index, with_shipped_pipelines};
use crate::support::{Mosquitto, SearchNode, wait_for_count};

fn spooling(spec: BridgeSpec) -> BridgeSpec {
    spec.pipeline("readings.yaml", readings_pipeline_by_reading_id())
        .spool()
}

/// Publishes each line at QoS 0 with `mosquitto_pub -l`, which disconnects cleanly after the
/// last one: all of them reached the broker.
fn publish_lines_qos0(port: u16, topic: &str, lines: &[String]) {
    let published = Publisher::to(port).send_lines(topic, lines);
    assert!(published.status.success(), "{published:?}");
}

/// Waits until the spool holds nothing not shipped (anything shipped twice is in the index by
/// then).
async fn spool_drained(metrics: std::net::SocketAddr, timeout: Duration) {
    wait_for_samples(metrics, &[("mqtt2es_spool_records", 0.0)], timeout).await;
}

/// Longer than any publishing round here takes; a round still running then means the acks
/// stopped.
const PUBLISH_WAIT: Duration = Duration::from_secs(120);

/// Runs `publish` on a thread and returns what it returns; panics if it takes longer than
/// `limit` (acknowledgements that never come would otherwise hang the test).
fn within<T: Send + 'static>(limit: Duration, publish: impl FnOnce() -> T + Send + 'static) -> T {
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(publish());
    });
    rx.recv_timeout(limit)
        .unwrap_or_else(|_| panic!("publishing did not finish within {limit:?}: the acks stopped"))
}

/// One outage of the search node with a SIGKILL of mqtt2es in its middle (the CI-sized run of
/// `scripts/soak spool`, which keeps the node down for ten minutes).
#[tokio::test(flavor = "multi_thread")]
async fn spooled_readings_are_acknowledged_while_the_search_node_is_down_and_a_sigkill_in_the_outage_loses_and_duplicates_nothing()
 {
    let mut node = SearchNode::start_private();
    let address = format!("127.0.0.1:{}", free_port());
    let mut bridge = Bridge::start(&spooling(BridgeSpec::embedded(&node.url()).bind(&address)));
    bridge.wait_ready();
    let port = bridge.broker_port();
    let index = format!("{}readings", bridge.prefix());
    const DEVICES: usize = 5;
    const PER_DEVICE: usize = 200;
    // Each round from its own site, so every reading is a distinct document.
    let round = |site: &str| {
        let loads = devices_at(site, DEVICES, PER_DEVICE, PER_DEVICE);
        within(PUBLISH_WAIT, move || publish_in_parallel(loads, port))
    };

    // Node up: stored as they come.
    let mut acked = round("up");
    assert_eq!(acked, DEVICES * PER_DEVICE);
    assert_eq!(
        wait_for_count(&node, &index, acked as u64, Duration::from_secs(60)).await,
        acked as u64
    );

    // Node down: every QoS 1 reading still acknowledged, QoS 0 taken without a stall.
    node.stop();
    acked += round("down");
    publish_lines_qos0(
        port,
        "sensors/down/qos0/telemetry",
        &readings("qos0", 0, PER_DEVICE),
    );
    assert_eq!(
        acked,
        2 * DEVICES * PER_DEVICE,
        "PUBACKs while the node is down"
    );
    let metrics = bridge.metrics_address();
    wait_for_readyz(metrics, 200, Duration::from_secs(10)).await;

    // mqtt2es killed in the middle of the outage; what it acknowledged is in the spool.
    bridge.kill();
    bridge.restart();
    bridge.wait_for_log("listening transport=tcp ", 2, Duration::from_secs(30));
    acked += round("after-kill");
    assert_eq!(acked, 3 * DEVICES * PER_DEVICE, "PUBACKs after the restart");

    // The node returns: the backlog drains, each reading once.
    node.start();
    let expected = (acked + PER_DEVICE) as u64;
    let stored = wait_for_count(&node, &index, expected, Duration::from_secs(120)).await;
    // A moment more for anything shipped twice to show up as a second document.
    let metrics = bridge.metrics_address();
    spool_drained(metrics, Duration::from_secs(60)).await;
    assert_eq!(
        node.count(&index).await,
        expected,
        "stored {stored}, expected {expected} (every reading once):\n{}",
        bridge.logs()
    );
}

/// A tmpfs of `size` mounted at `dir` for the test's lifetime; unmounted on drop.
struct SmallDisk {
    dir: PathBuf,
}

impl SmallDisk {
    /// `None` where this machine does not let us mount (not root, no CAP_SYS_ADMIN).
    fn mount(dir: &Path, size: &str) -> Option<SmallDisk> {
        std::fs::create_dir_all(dir).expect("mount point");
        let status = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(dir)
            .stderr(Stdio::null())
            .status()
            .ok()?;
        status.success().then(|| SmallDisk {
            dir: dir.to_path_buf(),
        })
    }
}

impl Drop for SmallDisk {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.dir).status();
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_full_disk_stops_the_acks_without_damaging_the_spool_and_they_resume_by_themselves_once_space_is_freed()
 {
    let scratch = tempfile::tempdir().expect("a scratch dir");
    let Some(disk) = SmallDisk::mount(&scratch.path().join("disk"), "2m") else {
        eprintln!("skipped: cannot mount a small tmpfs here (needs root or CAP_SYS_ADMIN)");
        return;
    };
    // Most of the disk taken: room for a few hundred readings.
    let filler = disk.dir.join("filler");
    std::fs::write(&filler, vec![0u8; 1792 << 10]).expect("filler");
    // Nothing listens on the search URL: no record leaves the spool, so it only grows.
    let nowhere = format!("http://127.0.0.1:{}", free_port());
    let spool_dir = disk.dir.join("spool");
    let mut bridge = Bridge::start(&spooling(BridgeSpec::embedded(&nowhere)).set(
        "delivery",
        "spool",
        format!("{{dir: {}}}", spool_dir.display()),
    ));
    let port = bridge.broker_port();
    let metrics = bridge.metrics_address();

    const READINGS: usize = 3000;
    let publisher = std::thread::spawn(move || {
        publish_lines_qos1(
            port,
            "sensors/disk/pi-1/telemetry",
            &readings("pi-1", 0, READINGS),
        )
    });
    bridge.wait_for_log(
        "is full: acknowledgements wait until space is freed",
        1,
        Duration::from_secs(60),
    );
    let reason = wait_for_readyz(metrics, 503, Duration::from_secs(10)).await;
    assert!(reason.contains("full"), "{reason}");
    assert!(
        !publisher.is_finished(),
        "every reading acknowledged although the disk is full"
    );

    let (_, text) = get(metrics, "/metrics").await;
    let spooled_when_full = sample(&text, "mqtt2es_spool_records").expect("spool records");

    std::fs::remove_file(&filler).expect("free the space");
    let acked = within(PUBLISH_WAIT, move || {
        publisher.join().expect("the publisher")
    });
    assert!(
        acked as f64 > spooled_when_full,
        "acks resumed: {acked} acknowledged in all, {spooled_when_full} when the disk was full"
    );
    bridge.wait_for_log("spool: writing again", 1, Duration::from_secs(10));
    wait_for_readyz(metrics, 200, Duration::from_secs(10)).await;
    wait_for_samples(
        metrics,
        &[
            ("mqtt2es_spool_records", acked as f64),
            ("mqtt2es_spool_damaged_bytes_total", 0.0),
        ],
        Duration::from_secs(10),
    )
    .await;

    // Reopened from disk: every acknowledged record is there and whole.
    bridge.terminate(Duration::from_secs(30));
    bridge.restart();
    bridge.wait_for_log("metrics listening address=", 2, Duration::from_secs(30));
    let metrics = bridge.metrics_address();
    wait_for_samples(
        metrics,
        &[
            ("mqtt2es_spool_records", acked as f64),
            ("mqtt2es_spool_damaged_bytes_total", 0.0),
        ],
        Duration::from_secs(30),
    )
    .await;
    drop(bridge);
    drop(disk);
}

/// The CI-sized run of `scripts/soak spool` (4 devices at QoS 1 and 2 at QoS 0, a reading each
/// every 0.25 s, the node down 20 s with mqtt2es SIGKILLed and restarted halfway); the soak
/// runs 20 devices and a 10-minute outage (MQTT2ES_SOAK_DEVICES, MQTT2ES_SOAK_OUTAGE_S).
#[tokio::test(flavor = "multi_thread")]
async fn spooling_devices_are_acknowledged_through_an_outage_and_a_sigkill_and_the_backlog_drains_at_several_times_the_ingest_rate()
 {
    let devices = soak_setting("MQTT2ES_SOAK_DEVICES", 4) as usize;
    let quiet_devices = devices.div_ceil(2); // at QoS 0
    let outage_s = soak_setting("MQTT2ES_SOAK_OUTAGE_S", 20);
    // A reading every 0.25 s from before the outage until well after it.
    let count = ((outage_s + 20) * 4) as usize;
    let mut node = SearchNode::start_private();
    let address = format!("127.0.0.1:{}", free_port());
    let spec = with_shipped_pipelines(BridgeSpec::embedded(&node.url()).bind(&address)).spool();
    let mut bridge = Bridge::start(&spec);
    let port = bridge.broker_port();
    bridge.wait_ready();
    let index = telemetry_index(&bridge);
    let timeout_s = outage_s + 300;
    let fleet: Vec<PahoDevice> = (0..devices)
        .map(|n| PahoDevice::start(port, &format!("pi-{n}"), count, 30, timeout_s))
        .collect();
    let quiet: Vec<PahoDevice> = (0..quiet_devices)
        .map(|n| PahoDevice::start_at_qos(port, &format!("q0-{n}"), 0, count, 30, timeout_s))
        .collect();
    let before = wait_for_count(&node, &index, devices as u64, Duration::from_secs(60)).await;
    assert!(before >= devices as u64, "{}", bridge.log_tail());

    node.stop();
    // The outage is the scenario, not a wait for anything: readings keep coming meanwhile.
    tokio::time::sleep(Duration::from_secs(outage_s / 2)).await;
    bridge.kill();
    bridge.restart();
    bridge.wait_for_log("listening transport=tcp ", 2, Duration::from_secs(30));
    bridge.wait_for_log("metrics listening address=", 2, Duration::from_secs(30));
    tokio::time::sleep(Duration::from_secs(outage_s - outage_s / 2)).await;
    let metrics = bridge.metrics_address();
    let (_, text) = get(metrics, "/metrics").await;
    let backlog = sample(&text, "mqtt2es_spool_records").expect("spool records");
    // At least half of what the QoS 1 devices sent in the second half of the outage.
    let sent_since_restart = (devices as u64 * (outage_s - outage_s / 2) * 4) as f64;
    assert!(
        backlog >= sent_since_restart / 2.0,
        "only {backlog} records spooled during the outage:\n{}",
        bridge.log_tail()
    );

    node.start();
    // Drained from the moment shipping resumed (the node takes seconds to start and recover its
    // shards; that is the node's time, reported apart) until the spool is empty.
    let returned = std::time::Instant::now();
    let deadline = returned + Duration::from_secs(180);
    let mut resumed = None;
    let drained_at = loop {
        let (_, text) = get(metrics, "/metrics").await;
        let left = sample(&text, "mqtt2es_spool_records").expect("spool records");
        let now = std::time::Instant::now();
        if resumed.is_none() && left < backlog {
            resumed = Some(now);
        }
        if left == 0.0 {
            break now;
        }
        assert!(
            now < deadline,
            "{left} records still spooled:\n{}",
            bridge.log_tail()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let resumed = resumed.unwrap_or(drained_at);
    let drained_in = (drained_at - resumed).as_secs_f64().max(0.05);
    let ingest_per_s = (devices + quiet_devices) as f64 * 4.0;
    let drain_per_s = backlog / drained_in;
    // Figures for the note; the assertion only says that shipping outran ingest.
    eprintln!(
        "figure: shipping resumed {:.1} s after the node was started; {backlog} spooled records \
         drained in {drained_in:.2} s ({drain_per_s:.0}/s, {:.0}x the ingest rate of \
         {ingest_per_s}/s)",
        (resumed - returned).as_secs_f64(),
        drain_per_s / ingest_per_s
    );
    assert!(drain_per_s > 2.0 * ingest_per_s, "{}", bridge.log_tail());

    for device in fleet {
        let printed = device.finish();
        assert!(printed.contains("published"), "{printed}");
    }
    for device in quiet {
        device.finish();
    }
    // QoS 1: every reading stored (at least once); a resend whose PUBACK the kill cut off is
    // the one duplicate MQTT allows, at most one per device here (one reading in flight each).
    // QoS 0: whatever arrived, once; what a device sent while mqtt2es restarted is gone.
    let per_device = |device: String| {
        let node = &node;
        let index = &index;
        async move {
            let answer = node
                .search(
                    index,
                    json!({"size": 0, "track_total_hits": true,
                           "query": {"term": {"device": device}},
                           "aggs": {"distinct": {"cardinality": {"field": "seq", "precision_threshold": 40000}},
                                    "twice": {"terms": {"field": "seq", "min_doc_count": 2}}}}),
                )
                .await;
            let documents = answer["hits"]["total"]["value"].as_u64().expect("a total");
            let distinct = answer["aggregations"]["distinct"]["value"]
                .as_u64()
                .expect("distinct");
            let twice = answer["aggregations"]["twice"]["buckets"]
                .as_array()
                .map_or(0, Vec::len);
            (documents, distinct, twice)
        }
    };
    let mut duplicates = 0;
    for n in 0..devices {
        let (documents, distinct, twice) = per_device(format!("pi-{n}")).await;
        assert_eq!(
            distinct, count as u64,
            "pi-{n}: every acknowledged reading stored"
        );
        assert!(twice <= 1, "pi-{n}: {twice} readings stored twice");
        duplicates += documents - distinct;
    }
    let mut quiet_stored = 0;
    for n in 0..quiet_devices {
        let (documents, distinct, twice) = per_device(format!("q0-{n}")).await;
        assert_eq!(twice, 0, "q0-{n}: a QoS 0 reading stored twice");
        assert_eq!(documents, distinct);
        quiet_stored += distinct;
    }
    eprintln!(
        "figure: QoS 1 {} readings, all stored, {duplicates} stored twice (PUBACKs the SIGKILL cut \
         off); QoS 0 {quiet_stored} of {} stored",
        devices * count,
        quiet_devices * count
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_full_spool_that_drops_the_oldest_keeps_acknowledging_and_counts_what_it_dropped() {
    // Nothing listens on the search URL: the spool only grows, past its 1 MiB.
    let nowhere = format!("http://127.0.0.1:{}", free_port());
    let mut bridge = Bridge::start(&spooling(BridgeSpec::embedded(&nowhere)).set(
        "delivery",
        "spool",
        "{max_bytes: 1048576, on_full: drop_oldest}",
    ));
    let port = bridge.broker_port();
    let metrics = bridge.metrics_address();
    // About 2 MB of readings from two devices.
    let loads = devices_at("full", 2, 4000, 4000);
    let acked = within(PUBLISH_WAIT, move || publish_in_parallel(loads, port));
    assert_eq!(
        acked, 8000,
        "a spool that drops the oldest never stops the acks"
    );

    let (_, text) = get(metrics, "/metrics").await;
    let value = |name: &str| sample(&text, name).unwrap_or_else(|| panic!("{name} in {text}"));
    let (kept, dropped) = (
        value("mqtt2es_spool_records"),
        value("mqtt2es_spool_dropped_total"),
    );
    assert!(dropped > 0.0, "{text}");
    assert_eq!(
        kept + dropped,
        acked as f64,
        "every record kept or counted as dropped"
    );
    assert!(value("mqtt2es_spool_bytes") <= 1048576.0, "{text}");
    assert!(
        bridge
            .logs()
            .contains("dropped the oldest records not yet shipped"),
        "{}",
        bridge.logs()
    );
    wait_for_readyz(metrics, 200, Duration::from_secs(10)).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn sigterm_while_the_search_node_is_away_exits_zero_and_the_spool_still_holds_every_acknowledged_reading()
 {
    let nowhere = format!("http://127.0.0.1:{}", free_port());
    let mut bridge = Bridge::start(&spooling(BridgeSpec::embedded(&nowhere)));
    let port = bridge.broker_port();
    let lines = readings("pi-1", 0, 300);
    let acked = within(PUBLISH_WAIT, move || {
        publish_lines_qos1(port, "sensors/term/pi-1/telemetry", &lines)
    });
    assert!(acked > 0);
    let status = bridge.terminate(Duration::from_secs(30));
    assert!(status.success(), "{status}:\n{}", bridge.logs());

    bridge.restart();
    bridge.wait_for_log("metrics listening address=", 2, Duration::from_secs(30));
    let metrics = bridge.metrics_address();
    wait_for_samples(
        metrics,
        &[("mqtt2es_spool_records", acked as f64)],
        Duration::from_secs(10),
    )
    .await;
}

#[tokio::test(flavor = "multi_thread")]
async fn subscribed_to_mosquitto_a_spooling_bridge_stores_every_reading_once() {
    let node = SearchNode::shared();
    let broker = Mosquitto::start_unbounded();
    let mut bridge = Bridge::start(&spooling(BridgeSpec::new(broker.port(), &node.url())));
    bridge.wait_subscribed();
    let index = format!("{}readings", bridge.prefix());
    let lines = readings("pi-1", 0, 500);
    let port = broker.port();
    let acked = within(PUBLISH_WAIT, move || {
        publish_lines_qos1(port, "sensors/up/pi-1/telemetry", &lines)
    });
    let stored = wait_for_count(node, &index, acked as u64, Duration::from_secs(60)).await;
    assert_eq!(stored, acked as u64, "{}", bridge.logs());
    let metrics = bridge.metrics_address();
    spool_drained(metrics, Duration::from_secs(30)).await;
    assert_eq!(
        node.count(&index).await,
        acked as u64,
        "a reading stored twice"
    );
}

/// The spool full with `on_full: block` (the default): acknowledgements stop and `/readyz` says
/// why until shipping frees room; then every reading is stored once. The node's answers are
/// swallowed by a proxy meanwhile, so nothing can be shipped (and what was sent is stored, but
/// mqtt2es never hears so and sends it again: found already stored).
#[tokio::test(flavor = "multi_thread")]
async fn a_full_spool_that_blocks_stops_the_acks_until_shipping_frees_room_and_then_stores_everything_once()
 {
    let node = SearchNode::shared();
    let target = node.url().trim_start_matches("http://").to_owned();
    let proxy = crate::support::proxy::Proxy::start(target).await;
    let spec = spooling(BridgeSpec::embedded(&proxy.url))
        .set("delivery", "spool", "{max_bytes: 1048576, on_full: block}")
        .env("MQTT2ES_ELASTICSEARCH__REQUEST_TIMEOUT_MS", "2000");
    let mut bridge = Bridge::start(&spec);
    bridge.wait_ready();
    let port = bridge.broker_port();
    let metrics = bridge.metrics_address();
    let index = format!("{}readings", bridge.prefix());

    proxy.swallow_answers(true);
    // About 2 MB of readings: twice what the spool may hold.
    let lines = readings("pi-1", 0, 8000);
    let publisher = std::thread::spawn(move || {
        publish_lines_qos1(port, "sensors/block/pi-1/telemetry", &lines)
    });
    bridge.wait_for_log("spool full (", 1, Duration::from_secs(60));
    let reason = wait_for_readyz(metrics, 503, Duration::from_secs(10)).await;
    assert!(reason.contains("spool full"), "{reason}");
    assert!(
        !publisher.is_finished(),
        "every reading acknowledged although the spool is full"
    );

    proxy.swallow_answers(false);
    let acked = within(PUBLISH_WAIT, move || {
        publisher.join().expect("the publisher")
    });
    bridge.wait_for_log("spool: writing again", 1, Duration::from_secs(10));
    let stored = wait_for_count(node, &index, acked as u64, Duration::from_secs(120)).await;
    spool_drained(metrics, Duration::from_secs(60)).await;
    assert_eq!(
        node.count(&index).await,
        acked as u64,
        "stored {stored} of {acked} acknowledged, each once:\n{}",
        bridge.logs()
    );
}

/// A stranger's worst case for the spool: 500 byte-identical readings without a time of their
/// own, on a time-series stream (one document per series and time), the first of them stored
/// by the node whose answers are lost on the way back; mqtt2es SIGKILLed; on restart the spool ships them all
/// again. Each must be found already stored under its own reading: 500 documents, neither
/// merged into fewer (same series, no device time) nor stored twice.
#[tokio::test(flavor = "multi_thread")]
async fn identical_readings_without_a_time_shipped_again_after_a_sigkill_are_each_stored_once() {
    let node = SearchNode::shared();
    let target = node.url().trim_start_matches("http://").to_owned();
    let proxy = crate::support::proxy::Proxy::start(target).await;
    let spec = with_shipped_pipelines(BridgeSpec::embedded(&proxy.url))
        .spool()
        .env("MQTT2ES_ELASTICSEARCH__REQUEST_TIMEOUT_MS", "2000");
    let mut bridge = Bridge::start(&spec);
    bridge.wait_ready();
    let port = bridge.broker_port();
    let index = telemetry_index(&bridge);

    proxy.swallow_answers(true);
    const READINGS: usize = 500;
    let lines = vec![r#"{"temp_c":21.5}"#.to_owned(); READINGS];
    let acked = within(PUBLISH_WAIT, move || {
        publish_lines_qos1(port, "sensors/lab/pi-same/telemetry", &lines)
    });
    // What the requests in flight carried is stored by the node, never confirmed to mqtt2es
    // (the rest waits behind them): all of it still in the spool, unshipped.
    let stored = wait_for_count(node, &index, 1, Duration::from_secs(60)).await;
    assert!(stored > 0, "{}", bridge.log_tail());
    bridge.kill();
    proxy.swallow_answers(false);
    bridge.restart();
    bridge.wait_for_log("metrics listening address=", 2, Duration::from_secs(30));
    let metrics = bridge.metrics_address();
    spool_drained(metrics, Duration::from_secs(120)).await;
    assert_eq!(
        node.count(&index).await,
        acked as u64,
        "each reading once, none merged:\n{}",
        bridge.log_tail()
    );
    let (_, text) = get(metrics, "/metrics").await;
    assert!(
        sample(&text, "mqtt2es_documents_already_stored_total").unwrap_or(0.0) > 0.0,
        "the restart shipped nothing again, so this proved nothing:\n{text}"
    );
}
