//! `delivery.mode: spool`: readings acknowledged once fsynced in the local spool, shipped to the
//! search node from there. While the node is down devices keep getting PUBACKs; a SIGKILL of
//! mqtt2es in the middle of the outage loses nothing acknowledged; a full disk stops the acks
//! without damaging the spool, and they resume by themselves once space is freed.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use crate::metrics::{get, sample, wait_for_readyz, wait_for_samples};
use crate::support::bridge::{Bridge, BridgeSpec};
use crate::support::ports::free_port;
use crate::support::publish::{devices_at, publish_in_parallel, publish_lines_qos1, readings};
use crate::support::{SearchNode, wait_for_count};

/// The readings without an `id` stage: each document's id is then its reading id, so a record
/// shipped twice would be caught as a duplicate instead of being folded by a payload id.
fn readings_pipeline() -> String {
    r#"
topics: ["sensors/+/+/telemetry"]
payload: json
stages:
  - topic: {pattern: "sensors/{site}/{device}/telemetry"}
  - route: {index: "readings"}
"#
    .to_string()
}

fn spooling(spec: BridgeSpec, spool_lines: &str) -> BridgeSpec {
    let mut spec = spec.pipeline("readings.yaml", readings_pipeline());
    spec.extra
        .push_str(&format!("delivery:\n  mode: spool\n{spool_lines}"));
    spec
}

/// Publishes each line at QoS 0 with `mosquitto_pub -l`, which disconnects cleanly after the
/// last one: all of them reached the broker.
fn publish_lines_qos0(port: u16, topic: &str, lines: &[String]) {
    let mut child = Command::new("mosquitto_pub")
        .args(["-h", "127.0.0.1", "-p", &port.to_string(), "-q", "0", "-l"])
        .args(["-t", topic])
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start mosquitto_pub");
    let mut stdin = child.stdin.take().expect("stdin");
    for line in lines {
        writeln!(stdin, "{line}").expect("write a line");
    }
    drop(stdin);
    let output = child.wait_with_output().expect("mosquitto_pub");
    assert!(output.status.success(), "{output:?}");
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
    let mut bridge = Bridge::start(&spooling(
        BridgeSpec::embedded(&node.url()).bind(&address),
        "",
    ));
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
    wait_for_samples(
        metrics,
        &[("mqtt2es_spool_records", 0.0)],
        Duration::from_secs(60),
    )
    .await;
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
    let mut bridge = Bridge::start(&spooling(
        BridgeSpec::embedded(&nowhere),
        &format!("  spool: {{dir: {}}}\n", spool_dir.display()),
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
