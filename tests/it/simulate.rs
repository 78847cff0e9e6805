//! `mqtt2es simulate` against a real Mosquitto, counted by a real `mosquitto_sub`.

use std::collections::{BTreeMap, BTreeSet};
use std::fs::{self, File};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::thread;
use std::time::{Duration, Instant};

use tempfile::TempDir;

use crate::support::certs::Certs;
use crate::support::subscriber::{Received, Subscriber};
use crate::support::telemetry::{assert_readings_follow_the_contract, shipped_telemetry_bridge};
use crate::support::{Mosquitto, SearchNode, unique, wait_for_count};

/// `mqtt2es simulate` as a child process; stdout (the summary) and stderr (the log) to files.
struct Simulation {
    child: Option<Child>,
    dir: TempDir,
}

impl Simulation {
    fn start(broker: &Mosquitto, site: &str, args: &[&str]) -> Simulation {
        Simulation::start_with_env(broker, site, args, &[])
    }

    fn start_with_env(
        broker: &Mosquitto,
        site: &str,
        args: &[&str],
        env: &[(&str, &str)],
    ) -> Simulation {
        let dir = tempfile::tempdir().expect("temp dir for the simulation");
        let child = Command::new(env!("CARGO_BIN_EXE_mqtt2es"))
            .arg("simulate")
            .args([
                "--host",
                broker.host(),
                "--port",
                &broker.port().to_string(),
            ])
            .args(["--site", site])
            .args(args)
            .env("RUST_LOG", "mqtt2es=debug,info")
            .env_remove("MQTT2ES_SIMULATE_PASSWORD")
            .envs(env.iter().copied())
            .stdin(Stdio::null())
            .stdout(File::create(dir.path().join("stdout")).expect("stdout file"))
            .stderr(File::create(dir.path().join("stderr")).expect("stderr file"))
            .spawn()
            .expect("start mqtt2es simulate");
        Simulation {
            child: Some(child),
            dir,
        }
    }

    fn stdout(&self) -> String {
        fs::read_to_string(self.dir.path().join("stdout")).unwrap_or_default()
    }

    fn log(&self) -> String {
        fs::read_to_string(self.dir.path().join("stderr")).unwrap_or_default()
    }

    fn wait_for_log(&mut self, needle: &str, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        while !self.log().contains(needle) {
            if let Some(status) = self
                .child
                .as_mut()
                .and_then(|c| c.try_wait().ok().flatten())
            {
                panic!(
                    "simulate exited ({status}) before logging {needle:?}:\n{}",
                    self.log()
                );
            }
            assert!(
                Instant::now() < deadline,
                "simulate did not log {needle:?} within {timeout:?}:\n{}",
                self.log()
            );
            thread::sleep(Duration::from_millis(20));
        }
    }

    fn wait_exit(&mut self, timeout: Duration) -> ExitStatus {
        let child = self.child.as_mut().expect("a running simulation");
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = child.try_wait().expect("wait for simulate") {
                self.child = None;
                return status;
            }
            assert!(
                Instant::now() < deadline,
                "simulate did not exit within {timeout:?}:\n{}",
                self.log()
            );
            thread::sleep(Duration::from_millis(20));
        }
    }

    fn interrupt(&self) {
        let child = self.child.as_ref().expect("a running simulation");
        // SAFETY: kill(2) has no memory-safety preconditions.
        unsafe { libc::kill(child.id() as libc::pid_t, libc::SIGINT) };
    }

    /// The `key=value` pairs of the summary line.
    fn summary(&self) -> BTreeMap<String, String> {
        let stdout = self.stdout();
        let line = stdout
            .lines()
            .find(|l| l.starts_with("devices="))
            .unwrap_or_else(|| panic!("no summary line in {stdout:?}:\n{}", self.log()));
        line.split_whitespace()
            .filter_map(|pair| pair.split_once('='))
            .map(|(k, v)| (k.to_owned(), v.to_owned()))
            .collect()
    }
}

impl Drop for Simulation {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// Distinct readings per device (by `ts`; a QoS 1 redelivery is the same reading).
fn readings_by_device(messages: &[Received]) -> BTreeMap<String, BTreeSet<String>> {
    let mut by_device: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for message in messages.iter().filter(|m| m.topic.ends_with("/telemetry")) {
        let device = message.topic.split('/').nth(2).expect("device segment");
        let ts = message.json()["ts"].as_str().expect("ts").to_owned();
        by_device.entry(device.to_owned()).or_default().insert(ts);
    }
    by_device
}

/// The status states per device, in arrival order.
fn states_by_device(messages: &[Received]) -> BTreeMap<String, Vec<String>> {
    let mut by_device: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for message in messages.iter().filter(|m| m.topic.ends_with("/status")) {
        let device = message.topic.split('/').nth(2).expect("device segment");
        let state = message.json()["state"].as_str().expect("state").to_owned();
        by_device.entry(device.to_owned()).or_default().push(state);
    }
    by_device
}

fn total(by_device: &BTreeMap<String, BTreeSet<String>>) -> usize {
    by_device.values().map(BTreeSet::len).sum()
}

#[test]
fn a_simulated_fleet_publishes_every_reading_and_its_status_to_a_real_broker() {
    let broker = Mosquitto::start();
    let site = unique("sim");
    let sub = Subscriber::on(&broker, &format!("sensors/{site}/#"))
        .qos(1)
        .start();

    let mut simulation = Simulation::start(
        &broker,
        &site,
        &["--devices", "4", "--rate", "50", "--count", "25"],
    );
    let status = simulation.wait_exit(Duration::from_secs(60));
    assert!(status.success(), "{status}:\n{}", simulation.log());
    let summary = simulation.summary();
    assert_eq!(summary["queued"], "100", "{summary:?}");
    assert_eq!(summary["sent"], "100", "{summary:?}");
    assert_eq!(summary["acked"], "100", "{summary:?}");
    assert_eq!(summary["dropped"], "0", "{summary:?}");

    let messages = sub.wait_until("100 readings and 4 offline", Duration::from_secs(20), |m| {
        total(&readings_by_device(m)) == 100
            && states_by_device(m)
                .values()
                .filter(|s| s.last().map(String::as_str) == Some("offline"))
                .count()
                == 4
    });
    let readings = readings_by_device(&messages);
    assert_eq!(
        readings.keys().collect::<Vec<_>>(),
        ["pi-1", "pi-2", "pi-3", "pi-4"]
    );
    assert!(readings.values().all(|r| r.len() == 25), "{readings:?}");
    for state in states_by_device(&messages).values() {
        assert_eq!(state, &["online", "offline"]);
    }
    let sample = messages
        .iter()
        .find(|m| m.topic.ends_with("/telemetry"))
        .expect("a reading")
        .json();
    for field in ["temp_c", "humidity", "battery"] {
        assert!(sample[field].is_f64(), "{field} in {sample}");
    }
    chrono::DateTime::parse_from_rfc3339(sample["ts"].as_str().expect("ts")).expect("RFC 3339 ts");
}

#[test]
fn ctrl_c_stops_a_running_fleet_after_delivering_and_publishing_offline() {
    let broker = Mosquitto::start();
    let site = unique("sim");
    let sub = Subscriber::on(&broker, &format!("sensors/{site}/#"))
        .qos(1)
        .start();
    let mut simulation = Simulation::start(
        &broker,
        &site,
        &["--devices", "3", "--rate", "20", "--progress-s", "0.2"],
    );
    simulation.wait_for_log("connected=3", Duration::from_secs(20));
    sub.wait_until("readings from all 3", Duration::from_secs(20), |m| {
        readings_by_device(m).len() == 3
    });

    simulation.interrupt();
    let status = simulation.wait_exit(Duration::from_secs(20));
    assert!(status.success(), "{status}:\n{}", simulation.log());
    let summary = simulation.summary();
    assert_eq!(summary["sent"], summary["acked"], "{summary:?}");
    assert_eq!(summary["queued"], summary["acked"], "{summary:?}");
    let sent: usize = summary["sent"].parse().expect("a number");

    let messages = sub.wait_until(
        "every acked reading and offline",
        Duration::from_secs(20),
        |m| {
            total(&readings_by_device(m)) == sent
                && states_by_device(m)
                    .values()
                    .all(|s| s.last().map(String::as_str) == Some("offline"))
        },
    );
    assert_eq!(states_by_device(&messages).len(), 3);
    for device in ["pi-1", "pi-2", "pi-3"] {
        let client = format!("Client mqtt2es-sim-{site}-{device} disconnected.");
        assert!(
            broker.log().contains(&client),
            "no clean DISCONNECT ({client:?}): the offline came from the will:\n{}",
            broker.log()
        );
    }
}

#[test]
fn a_simulated_fleet_delivers_every_reading_across_a_broker_restart() {
    let mut broker = Mosquitto::start();
    let site = unique("sim");
    let sub_id = unique("sub");
    let sub = Subscriber::on(&broker, &format!("sensors/{site}/+/telemetry"))
        .qos(1)
        .persistent(&sub_id)
        .start();
    let mut simulation = Simulation::start(
        &broker,
        &site,
        &[
            "--devices",
            "2",
            "--rate",
            "20",
            "--count",
            "80",
            "--drain-s",
            "30",
        ],
    );
    sub.wait_until(
        "some readings before the restart",
        Duration::from_secs(20),
        |m| m.len() >= 10,
    );
    broker.stop();
    simulation.wait_for_log("connection failed", Duration::from_secs(20));
    broker.restart();

    let status = simulation.wait_exit(Duration::from_secs(60));
    assert!(status.success(), "{status}:\n{}", simulation.log());
    let summary = simulation.summary();
    assert_eq!(summary["acked"], "160", "{summary:?}");
    sub.wait_until("160 distinct readings", Duration::from_secs(30), |m| {
        total(&readings_by_device(m)) == 160
    });
}

#[test]
fn a_fleet_that_cannot_reach_its_broker_stops_within_the_drain_time_and_exits_1() {
    // A port nothing listens on: the broker there is gone.
    let port = crate::support::free_port().to_string();
    let started = Instant::now();
    let output = Command::new(env!("CARGO_BIN_EXE_mqtt2es"))
        .args([
            "simulate",
            "--host",
            "127.0.0.1",
            "--port",
            &port,
            "--devices",
            "3",
        ])
        .args([
            "--rate",
            "10",
            "--duration-s",
            "1",
            "--drain-s",
            "1",
            "--progress-s",
            "0.2",
        ])
        .output()
        .expect("run mqtt2es simulate");
    let elapsed = started.elapsed();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(1), "{stderr}");
    assert!(
        elapsed < Duration::from_secs(10),
        "took {elapsed:?}:\n{stderr}"
    );
    assert!(stderr.contains("never acknowledged"), "{stderr}");
    assert!(stderr.contains("devices not connected"), "{stderr}");
    assert!(stderr.contains("Connection refused"), "{stderr}");
}

#[test]
fn simulate_refuses_a_zero_rate_with_the_reason_and_exit_2() {
    let output = Command::new(env!("CARGO_BIN_EXE_mqtt2es"))
        .args(["simulate", "--rate", "0"])
        .output()
        .expect("run mqtt2es simulate");
    assert_eq!(output.status.code(), Some(2), "{output:?}");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("--rate 0"), "{stderr}");
}

#[test]
fn simulated_devices_log_in_with_the_password_from_the_environment() {
    let certs = Certs::generate();
    let dir = tempfile::tempdir().expect("temp dir");
    let (broker, _) = Mosquitto::start_with_tls_and_a_password(&certs, dir.path());
    let site = unique("sim");
    let sub = Subscriber::on(&broker, &format!("sensors/{site}/+/telemetry"))
        .qos(1)
        .credentials("pi", "s3cret")
        .start();
    let mut simulation = Simulation::start_with_env(
        &broker,
        &site,
        &[
            "--username",
            "pi",
            "--devices",
            "2",
            "--rate",
            "50",
            "--count",
            "5",
        ],
        &[("MQTT2ES_SIMULATE_PASSWORD", "s3cret")],
    );
    let status = simulation.wait_exit(Duration::from_secs(30));
    assert!(status.success(), "{status}:\n{}", simulation.log());
    sub.wait_until("10 readings", Duration::from_secs(10), |m| {
        total(&readings_by_device(m)) == 10
    });
    assert!(!simulation.log().contains("s3cret"), "{}", simulation.log());
}

#[tokio::test(flavor = "multi_thread")]
async fn simulated_readings_become_telemetry_documents_with_the_devices_time() {
    let node = SearchNode::shared();
    let broker = Mosquitto::start_with(&["max_queued_messages 0"]);
    let site = unique("sim");
    let (_bridge, index) = shipped_telemetry_bridge(&broker, node, &site);

    let mut simulation = Simulation::start(
        &broker,
        &site,
        &["--devices", "3", "--rate", "20", "--count", "10"],
    );
    let status = simulation.wait_exit(Duration::from_secs(60));
    assert!(status.success(), "{status}:\n{}", simulation.log());
    assert_eq!(
        wait_for_count(node, &index, 30, Duration::from_secs(30)).await,
        30
    );
    let documents = assert_readings_follow_the_contract(node, &index, &site).await;
    let devices: BTreeSet<&str> = documents
        .iter()
        .filter_map(|d| d["device"].as_str())
        .collect();
    assert_eq!(
        devices.into_iter().collect::<Vec<_>>(),
        ["pi-1", "pi-2", "pi-3"]
    );
}
