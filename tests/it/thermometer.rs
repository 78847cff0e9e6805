//! The Pi thermometer (devices/pi-thermometer/thermometer.py), run as the real Python program
//! against a real Mosquitto, its readings seen by a real `mosquitto_sub`. The sensors are a fake
//! sysfs tree in a temp dir: the one stand-in, because there is no DS18B20 or DHT22 here.
//!
//! `MQTT2ES_TEST_PYTHON` names the Python to run it with; it needs paho-mqtt 2.x and pytest.

use std::fs::{self, File};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::thread;
use std::time::{Duration, Instant};

use tempfile::TempDir;

use crate::support::certs::Certs;
use crate::support::paho::python;
use crate::support::subscriber::{self, Subscriber};
use crate::support::telemetry::shipped_telemetry_bridge;
use crate::support::{Mosquitto, SearchNode, unique, wait_for_count};

const GOOD_W1: &str =
    "5b 01 4b 46 7f ff 05 10 e1 : crc=e1 YES\n5b 01 4b 46 7f ff 05 10 e1 t=21437\n";
const BAD_CRC_W1: &str =
    "5b 01 4b 46 7f ff 05 10 e1 : crc=00 NO\n5b 01 4b 46 7f ff 05 10 e1 t=85000\n";
const POWER_ON_W1: &str =
    "50 05 4b 46 7f ff 0c 10 1c : crc=1c YES\n50 05 4b 46 7f ff 0c 10 1c t=85000\n";

fn program_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("devices/pi-thermometer")
}

/// A fake /sys with a DS18B20 and, optionally, a DHT22 behind the kernel's IIO driver.
struct FakeSysfs {
    root: TempDir,
}

impl FakeSysfs {
    fn new() -> FakeSysfs {
        FakeSysfs {
            root: tempfile::tempdir().expect("temp dir for the fake sysfs"),
        }
    }

    fn path(&self) -> &Path {
        self.root.path()
    }

    /// Writes the DS18B20's w1_slave the way the kernel shows it: all at once (write a
    /// sibling, then rename), so the program never reads half a file.
    fn ds18b20(&self, w1_slave: &str) -> &Self {
        let dir = self.path().join("bus/w1/devices/28-0316a2795bff");
        fs::create_dir_all(&dir).expect("w1 device dir");
        fs::write(dir.join("w1_slave.new"), w1_slave).expect("write w1_slave");
        fs::rename(dir.join("w1_slave.new"), dir.join("w1_slave")).expect("rename w1_slave");
        self
    }

    fn dht22(&self, milli_celsius: i64, milli_percent: i64) -> &Self {
        let dir = self.path().join("bus/iio/devices/iio:device0");
        fs::create_dir_all(&dir).expect("iio device dir");
        fs::write(dir.join("name"), "dht11\n").expect("name");
        fs::write(dir.join("in_temp_input"), format!("{milli_celsius}\n")).expect("temp");
        fs::write(
            dir.join("in_humidityrelative_input"),
            format!("{milli_percent}\n"),
        )
        .expect("humidity");
        self
    }
}

/// The thermometer program as a child process; its log (stderr) goes to a file.
struct Thermometer {
    child: Option<Child>,
    log_dir: TempDir,
}

impl Thermometer {
    fn start(broker: &Mosquitto, site: &str, args: &[&str]) -> Thermometer {
        Thermometer::start_with_env(broker, site, args, &[])
    }

    /// Like `start`, with extra environment variables (`MQTT_PASSWORD`). Later arguments win
    /// over the broker's port given first.
    fn start_with_env(
        broker: &Mosquitto,
        site: &str,
        args: &[&str],
        env: &[(&str, &str)],
    ) -> Thermometer {
        let log_dir = tempfile::tempdir().expect("temp dir for the thermometer log");
        let log = File::create(log_dir.path().join("thermometer.log")).expect("log file");
        let child = Command::new(python())
            .arg(program_dir().join("thermometer.py"))
            .args([
                "--host",
                broker.host(),
                "--port",
                &broker.port().to_string(),
            ])
            .args(["--site", site, "--device", "pi-1", "--reconnect-max-s", "1"])
            .args(args)
            // Only the test's own settings: none of the program's variables from outside.
            .env_remove("MQTT_HOST")
            .env_remove("MQTT_PORT")
            .env_remove("MQTT_USERNAME")
            .env_remove("MQTT_PASSWORD")
            .env_remove("THERMO_SITE")
            .env_remove("THERMO_DEVICE")
            .envs(env.iter().copied())
            .env("PYTHONUNBUFFERED", "1")
            .env("PYTHONDONTWRITEBYTECODE", "1")
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("clone log handle"))
            .stderr(log)
            .spawn()
            .expect("start thermometer.py with MQTT2ES_TEST_PYTHON");
        Thermometer {
            child: Some(child),
            log_dir,
        }
    }

    fn log(&self) -> String {
        fs::read_to_string(self.log_dir.path().join("thermometer.log")).unwrap_or_default()
    }

    /// Waits until the log contains `needle` `count` times.
    fn wait_for_log(&mut self, needle: &str, count: usize, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        while self.log().matches(needle).count() < count {
            if let Some(status) = self
                .child
                .as_mut()
                .and_then(|c| c.try_wait().ok().flatten())
            {
                panic!(
                    "thermometer exited ({status}) before logging {needle:?}:\n{}",
                    self.log()
                );
            }
            assert!(
                Instant::now() < deadline,
                "thermometer did not log {needle:?} {count} time(s) within {timeout:?}:\n{}",
                self.log()
            );
            thread::sleep(Duration::from_millis(20));
        }
    }

    fn wait_exit(&mut self, timeout: Duration) -> ExitStatus {
        let child = self.child.as_mut().expect("a running thermometer");
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = child.try_wait().expect("wait for the thermometer") {
                self.child = None;
                return status;
            }
            assert!(
                Instant::now() < deadline,
                "thermometer did not exit within {timeout:?}:\n{}",
                self.log()
            );
            thread::sleep(Duration::from_millis(20));
        }
    }

    fn signal(&mut self, signal: libc::c_int) {
        let child = self.child.as_ref().expect("a running thermometer");
        // SAFETY: kill(2) has no memory-safety preconditions.
        unsafe { libc::kill(child.id() as libc::pid_t, signal) };
    }
}

impl Drop for Thermometer {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

fn telemetry_of(messages: &[subscriber::Received], site: &str) -> Vec<serde_json::Value> {
    let topic = format!("sensors/{site}/pi-1/telemetry");
    messages
        .iter()
        .filter(|m| m.topic == topic)
        .map(|m| m.json())
        .collect()
}

fn states_of(messages: &[subscriber::Received], site: &str) -> Vec<String> {
    let topic = format!("sensors/{site}/pi-1/status");
    messages
        .iter()
        .filter(|m| m.topic == topic)
        .map(|m| m.json()["state"].as_str().unwrap_or("?").to_owned())
        .collect()
}

#[test]
fn readings_from_a_fake_ds18b20_and_dht22_reach_a_real_subscriber_as_schema_json() {
    let broker = Mosquitto::start();
    let site = unique("thermo");
    let sysfs = FakeSysfs::new();
    sysfs.ds18b20(GOOD_W1).dht22(24_500, 48_200);
    let battery = sysfs.path().join("capacity");
    fs::write(&battery, "87\n").expect("battery file");
    let sub = Subscriber::on(&broker, &format!("sensors/{site}/#"))
        .qos(1)
        .start();
    let before = chrono::Utc::now() - chrono::Duration::seconds(1);

    let mut thermometer = Thermometer::start(
        &broker,
        &site,
        &[
            "--sysfs-root",
            sysfs.path().to_str().expect("utf-8 path"),
            "--battery-file",
            battery.to_str().expect("utf-8 path"),
            "--interval",
            "0.2",
            "--count",
            "2",
        ],
    );
    let status = thermometer.wait_exit(Duration::from_secs(30));
    assert!(status.success(), "{status}:\n{}", thermometer.log());

    let messages = sub.wait_until(
        "2 readings and the offline status",
        Duration::from_secs(10),
        |m| {
            telemetry_of(m, &site).len() == 2
                && states_of(m, &site).last().map(String::as_str) == Some("offline")
        },
    );
    for reading in telemetry_of(&messages, &site) {
        let fields: Vec<&str> = reading
            .as_object()
            .expect("an object")
            .keys()
            .map(String::as_str)
            .collect();
        assert_eq!(fields, ["battery", "humidity", "temp_c", "ts"], "{reading}");
        // The DS18B20 wins over the DHT22's temperature; milli-units become units.
        assert_eq!(reading["temp_c"], 21.437, "{reading}");
        assert_eq!(reading["humidity"], 48.2, "{reading}");
        assert_eq!(reading["battery"], 0.87, "{reading}");
        let ts = chrono::DateTime::parse_from_rfc3339(reading["ts"].as_str().expect("ts string"))
            .expect("ts is RFC 3339");
        assert!(ts >= before && ts <= chrono::Utc::now(), "{reading}");
    }
    assert_eq!(states_of(&messages, &site), ["online", "offline"]);
}

#[test]
fn a_crc_failure_or_the_power_on_value_is_skipped_not_published_as_a_temperature() {
    let broker = Mosquitto::start();
    let site = unique("thermo");
    let sysfs = FakeSysfs::new();
    sysfs.ds18b20(BAD_CRC_W1);
    let sub = Subscriber::on(&broker, &format!("sensors/{site}/+/telemetry"))
        .qos(1)
        .start();

    let mut thermometer = Thermometer::start(
        &broker,
        &site,
        &[
            "--sysfs-root",
            sysfs.path().to_str().expect("utf-8 path"),
            "--interval",
            "0.1",
            "--count",
            "1",
        ],
    );
    thermometer.wait_for_log("CRC check failed", 2, Duration::from_secs(20));
    sysfs.ds18b20(POWER_ON_W1);
    thermometer.wait_for_log("85 degC power-on value", 2, Duration::from_secs(20));
    assert_eq!(sub.messages(), [], "a bad read was published");

    sysfs.ds18b20(GOOD_W1);
    let status = thermometer.wait_exit(Duration::from_secs(30));
    assert!(status.success(), "{status}:\n{}", thermometer.log());
    let messages = sub.wait_until("the good reading", Duration::from_secs(10), |m| {
        !m.is_empty()
    });
    let readings = telemetry_of(&messages, &site);
    assert_eq!(readings.len(), 1, "{messages:?}");
    assert_eq!(readings[0]["temp_c"], 21.437, "{messages:?}");
}

#[test]
fn the_last_will_says_offline_when_the_thermometer_is_killed() {
    let broker = Mosquitto::start();
    let site = unique("thermo");
    let status_topic = format!("sensors/{site}/pi-1/status");
    let sub = Subscriber::on(&broker, &status_topic).qos(1).start();
    let mut thermometer = Thermometer::start(&broker, &site, &["--simulate", "--interval", "0.2"]);
    sub.wait_until("online", Duration::from_secs(20), |m| {
        states_of(m, &site) == ["online"]
    });

    thermometer.signal(libc::SIGKILL);
    thermometer.wait_exit(Duration::from_secs(10));
    sub.wait_until("the will", Duration::from_secs(20), |m| {
        states_of(m, &site) == ["online", "offline"]
    });
    assert!(
        broker.log().contains("closed its connection"),
        "the broker saw a clean disconnect, so the offline was not the will:\n{}",
        broker.log()
    );
    let retained = subscriber::retained(&broker, &status_topic);
    assert_eq!(retained.json()["state"], "offline", "{retained:?}");
}

#[test]
fn a_running_thermometer_leaves_online_retained_and_a_clean_exit_offline() {
    let broker = Mosquitto::start();
    let site = unique("thermo");
    let status_topic = format!("sensors/{site}/pi-1/status");
    let mut thermometer = Thermometer::start(&broker, &site, &["--simulate", "--interval", "0.2"]);
    thermometer.wait_for_log("published", 1, Duration::from_secs(20));
    let retained = subscriber::retained(&broker, &status_topic);
    assert_eq!(retained.json()["state"], "online", "{retained:?}");

    thermometer.signal(libc::SIGTERM);
    let status = thermometer.wait_exit(Duration::from_secs(30));
    assert!(status.success(), "{status}:\n{}", thermometer.log());
    let retained = subscriber::retained(&broker, &status_topic);
    assert_eq!(retained.json()["state"], "offline", "{retained:?}");
    let client = format!("thermometer-{site}-pi-1");
    assert!(
        broker
            .log()
            .contains(&format!("Client {client} disconnected.")),
        "no clean DISCONNECT from {client}:\n{}",
        broker.log()
    );
}

#[test]
fn readings_taken_while_the_broker_is_down_are_delivered_after_it_returns() {
    let mut broker = Mosquitto::start();
    let site = unique("thermo");
    // A persistent session, so the subscriber misses nothing while both reconnect.
    let sub_id = unique("sub");
    let sub = Subscriber::on(&broker, &format!("sensors/{site}/+/telemetry"))
        .qos(1)
        .persistent(&sub_id)
        .start();
    let mut thermometer = Thermometer::start(
        &broker,
        &site,
        &["--simulate", "--interval", "0.25", "--count", "16"],
    );
    sub.wait_until(
        "3 readings before the outage",
        Duration::from_secs(20),
        |m| m.len() >= 3,
    );

    broker.stop();
    thermometer.wait_for_log(
        "queued reading while disconnected",
        3,
        Duration::from_secs(20),
    );
    broker.restart();

    let status = thermometer.wait_exit(Duration::from_secs(60));
    assert!(status.success(), "{status}:\n{}", thermometer.log());
    let messages = sub.wait_until("16 distinct readings", Duration::from_secs(30), |m| {
        let mut stamps: Vec<String> = telemetry_of(m, &site)
            .iter()
            .map(|r| r["ts"].to_string())
            .collect();
        stamps.sort();
        stamps.dedup();
        stamps.len() >= 16
    });
    let mut stamps: Vec<String> = telemetry_of(&messages, &site)
        .iter()
        .map(|r| r["ts"].to_string())
        .collect();
    stamps.sort();
    stamps.dedup();
    assert_eq!(stamps.len(), 16, "{messages:#?}");
}

#[test]
fn the_sysfs_parsers_pass_their_python_unit_tests() {
    let output = Command::new(python())
        .args(["-m", "pytest", "-q", "-p", "no:cacheprovider"])
        .arg(program_dir())
        .env("PYTHONDONTWRITEBYTECODE", "1")
        .output()
        .expect("run pytest with MQTT2ES_TEST_PYTHON");
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "pytest failed:\n{stdout}\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(stdout.contains(" passed"), "{stdout}");
}

#[test]
fn help_explains_the_sensors_the_broker_options_and_simulation() {
    let output = Command::new(python())
        .arg(program_dir().join("thermometer.py"))
        .arg("--help")
        .output()
        .expect("run thermometer.py --help");
    assert!(output.status.success(), "{output:?}");
    let help = String::from_utf8_lossy(&output.stdout);
    for part in [
        "--simulate",
        "--sysfs-root",
        "--count",
        "--username",
        "dtoverlay=w1-gpio",
        "dtoverlay=dht11",
        "sensors/<site>/<device>",
    ] {
        assert!(help.contains(part), "{part:?} missing from --help:\n{help}");
    }
}

#[test]
fn the_thermometer_publishes_over_tls_with_a_user_name_and_password() {
    let certs = Certs::generate();
    let dir = tempfile::tempdir().expect("temp dir");
    let (broker, tls_port) = Mosquitto::start_with_tls_and_a_password(&certs, dir.path());
    let site = unique("thermo");
    let sub = Subscriber::on(&broker, &format!("sensors/{site}/+/telemetry"))
        .qos(1)
        .credentials("pi", "s3cret")
        .start();
    let ca = certs.ca();
    let mut thermometer = Thermometer::start_with_env(
        &broker,
        &site,
        &[
            "--port",
            &tls_port.to_string(),
            "--ca-file",
            ca.to_str().expect("utf-8 path"),
            "--username",
            "pi",
            "--simulate",
            "--count",
            "1",
        ],
        &[("MQTT_PASSWORD", "s3cret")],
    );
    let status = thermometer.wait_exit(Duration::from_secs(30));
    assert!(status.success(), "{status}:\n{}", thermometer.log());
    sub.wait_until("the reading", Duration::from_secs(10), |m| m.len() == 1);
}

#[test]
fn a_wrong_password_is_logged_as_refused_and_retried() {
    let certs = Certs::generate();
    let dir = tempfile::tempdir().expect("temp dir");
    let (broker, _) = Mosquitto::start_with_tls_and_a_password(&certs, dir.path());
    let site = unique("thermo");
    let mut thermometer = Thermometer::start_with_env(
        &broker,
        &site,
        &["--username", "pi", "--simulate", "--interval", "0.5"],
        &[("MQTT_PASSWORD", "not-the-password-7f3a")],
    );
    thermometer.wait_for_log("refused the connection", 2, Duration::from_secs(30));
    assert!(
        !thermometer.log().contains("s3cret")
            && !thermometer.log().contains("not-the-password-7f3a")
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn thermometer_readings_become_telemetry_documents_with_the_sensors_values() {
    let node = SearchNode::shared();
    let broker = Mosquitto::start_with(&["max_queued_messages 0"]);
    let site = unique("thermo");
    let (_bridge, index) = shipped_telemetry_bridge(&broker, node, &site);
    let sysfs = FakeSysfs::new();
    sysfs.ds18b20(GOOD_W1).dht22(24_500, 48_200);

    let mut thermometer = Thermometer::start(
        &broker,
        &site,
        &[
            "--sysfs-root",
            sysfs.path().to_str().expect("utf-8 path"),
            "--interval",
            "0.2",
            "--count",
            "3",
        ],
    );
    let status = thermometer.wait_exit(Duration::from_secs(30));
    assert!(status.success(), "{status}:\n{}", thermometer.log());
    assert_eq!(
        wait_for_count(node, &index, 3, Duration::from_secs(30)).await,
        3
    );
    let hits = node
        .search(
            &index,
            serde_json::json!({"size": 10, "query": {"match_all": {}}}),
        )
        .await;
    for hit in hits["hits"]["hits"].as_array().expect("hits") {
        let document = &hit["_source"];
        assert_eq!(document["device"], "pi-1", "{document}");
        assert_eq!(document["temperature_c"], 21.437, "{document}");
        assert_eq!(document["humidity"], 48.2, "{document}");
        assert!(
            document["battery"].is_null(),
            "no battery file, no battery: {document}"
        );
        assert!(
            document["mqtt2es"]["timestamp_fallback"].is_null(),
            "the reading's ts was not taken as @timestamp: {document}"
        );
    }
}
