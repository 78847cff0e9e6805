//! The `upstream:` options on real parts: MQTT 5, username and password, TLS, and what the
//! bridge logs when the broker refuses it (never the password).

use std::path::Path;
use std::time::Duration;

use serde_json::{Value, json};
use tempfile::TempDir;

use crate::support::bridge::{Bridge, BridgeSpec};
use crate::support::certs::Certs;
use crate::support::publish::{Publisher, publish, publish_lines_qos1};
use crate::support::readings::readings;
use crate::support::readings::{readings_pipeline, start_readings_bridge_with};
use crate::support::{Mosquitto, SearchNode, free_port, wait_for_count};

const TOPIC: &str = "sensors/lab/pi-05/telemetry";
const USER: &str = "bridge";
/// Distinctive enough that finding it in a log can only mean it leaked.
const PASSWORD: &str = "Pw-7c1e9b42-never-log-me";

fn reading(seq: u32) -> Vec<u8> {
    format!(r#"{{"seq":{seq},"temp_c":21.5}}"#).into_bytes()
}

/// The stored document with `seq` (the index refreshed first).
async fn document(node: &SearchNode, index: &str, seq: u32) -> Value {
    let hits = node
        .search(index, json!({"query": {"term": {"seq": seq}}}))
        .await;
    hits["hits"]["hits"][0]["_source"].clone()
}

/// Mosquitto refusing anonymous clients, with one user made by the real `mosquitto_passwd`.
/// The temp dir holding the password file must outlive the broker.
fn broker_with_password() -> (Mosquitto, TempDir) {
    let dir = tempfile::tempdir().expect("temp dir for the password file");
    let file = dir.path().join("passwd");
    let status = std::process::Command::new("mosquitto_passwd")
        .args(["-b", "-c"])
        .arg(&file)
        .args([USER, PASSWORD])
        .status()
        .expect("run mosquitto_passwd");
    assert!(status.success(), "mosquitto_passwd failed");
    let broker = Mosquitto::start_with(&[
        "max_queued_messages 0",
        "allow_anonymous false",
        &format!("password_file {}", file.display()),
    ]);
    (broker, dir)
}

/// A file holding `password` the way `echo` writes it: with a trailing newline.
fn password_file(dir: &Path, password: &str) -> String {
    let path = dir.join("upstream-password");
    std::fs::write(&path, format!("{password}\n")).expect("write the password file");
    path.display().to_string()
}

fn assert_no_password(bridge: &Bridge) {
    let logs = bridge.logs();
    assert!(!logs.is_empty(), "the bridge logged nothing");
    assert!(
        !logs.contains(PASSWORD),
        "the password leaked into the log:\n{logs}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn under_mqtt5_readings_from_v311_and_v5_publishers_land_and_user_properties_are_kept() {
    let node = SearchNode::shared();
    let broker = Mosquitto::start_unbounded();
    let spec = BridgeSpec::new(broker.port(), &node.url()).upstream_v5();
    let (bridge, index) = start_readings_bridge_with(spec);

    let port = broker.port();
    publish(port, TOPIC, 1, &reading(1));
    Publisher::to(port)
        .qos(1)
        .version("mqttv5")
        .send(TOPIC, reading(2));
    Publisher::to(port)
        .qos(1)
        .version("mqttv5")
        .args(&["-D", "publish", "user-property", "site", "lab"])
        .args(&["-D", "publish", "user-property", "unit", "C"])
        .send(TOPIC, reading(3));

    assert_eq!(
        wait_for_count(node, &index, 3, Duration::from_secs(30)).await,
        3,
        "{}",
        bridge.logs()
    );
    let with_properties = document(node, &index, 3).await;
    assert_eq!(
        with_properties["mqtt"]["user_properties"],
        json!([{"key": "site", "value": "lab"}, {"key": "unit", "value": "C"}]),
        "{with_properties}"
    );
    assert_eq!(with_properties["temperature_c"], 21.5, "{with_properties}");
    for seq in [1, 2] {
        let plain = document(node, &index, seq).await;
        assert_eq!(plain["device"], "pi-05", "{plain}");
        assert!(
            plain["mqtt"].get("user_properties").is_none(),
            "no properties were sent: {plain}"
        );
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn under_mqtt5_a_broker_restart_resumes_the_session_and_loses_nothing() {
    let node = SearchNode::shared();
    let mut broker = Mosquitto::start_unbounded();
    let spec = BridgeSpec::new(broker.port(), &node.url())
        .upstream_v5()
        .upstream("session_expiry_s", 3600);
    let (mut bridge, index) = start_readings_bridge_with(spec);

    let mut sent = publish_lines_qos1(broker.port(), TOPIC, &readings("pi-05", 0, 2000));
    broker.restart();
    bridge.wait_for_log("connected to upstream broker", 2, Duration::from_secs(30));
    sent += publish_lines_qos1(broker.port(), TOPIC, &readings("pi-05", 2000, 500));

    let stored = wait_for_count(node, &index, sent as u64, Duration::from_secs(120)).await;
    assert_eq!(
        stored,
        sent as u64,
        "stored vs acknowledged:\n{}",
        bridge.logs()
    );
    // The broker kept the session (and with it the subscription) across its restart: the
    // bridge did not have to subscribe again.
    let logs = bridge.logs();
    assert!(logs.contains("session_present=true"), "{logs}");
    assert_eq!(logs.matches("subscribing").count(), 1, "{logs}");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_username_and_password_file_get_the_bridge_into_a_broker_that_refuses_anonymous_clients()
{
    let node = SearchNode::shared();
    let (broker, dir) = broker_with_password();
    let spec = BridgeSpec::new(broker.port(), &node.url())
        .upstream("username", USER)
        .upstream("password_file", password_file(dir.path(), PASSWORD));
    let (bridge, index) = start_readings_bridge_with(spec);

    Publisher::to(broker.port())
        .qos(1)
        .credentials(USER, PASSWORD)
        .send(TOPIC, reading(1));
    assert_eq!(
        wait_for_count(node, &index, 1, Duration::from_secs(30)).await,
        1,
        "{}",
        bridge.logs()
    );
    assert_no_password(&bridge);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_wrong_password_is_logged_as_a_refused_connection_and_retried_with_backoff() {
    let node = SearchNode::shared();
    let (broker, dir) = broker_with_password();
    let wrong = format!("{PASSWORD}-wrong");
    let spec = BridgeSpec::new(broker.port(), &node.url())
        .pipeline("readings.yaml", readings_pipeline())
        .upstream("username", USER)
        .upstream("password_file", password_file(dir.path(), &wrong));
    let mut bridge = Bridge::start(&spec);

    // Three refusals, with the process alive throughout (wait_for_log fails if it exits).
    bridge.wait_for_log(
        "upstream broker refused the connection",
        3,
        Duration::from_secs(30),
    );
    let logs = bridge.logs();
    let refusal = logs
        .lines()
        .find(|line| line.contains("refused the connection"))
        .expect("a refusal line");
    assert!(refusal.contains("ERROR"), "{refusal}");
    assert!(refusal.contains("NotAuthorized"), "{refusal}");
    assert!(refusal.contains("upstream.username"), "{refusal}");
    assert!(!logs.contains("connection lost"), "{logs}");
    assert!(logs.contains("reconnecting after delay"), "{logs}");
    assert!(!logs.contains(" subscribed"), "{logs}");
    assert_no_password(&bridge);
}

#[tokio::test(flavor = "multi_thread")]
async fn the_password_is_in_no_log_line_even_with_every_crate_logging_at_trace() {
    let node = SearchNode::shared();
    let (broker, _dir) = broker_with_password();
    let spec = BridgeSpec::new(broker.port(), &node.url())
        .upstream("username", USER)
        .env("MQTT2ES_UPSTREAM__PASSWORD", PASSWORD)
        .env("RUST_LOG", "trace");
    let (mut bridge, index) = start_readings_bridge_with(spec);

    Publisher::to(broker.port())
        .qos(1)
        .credentials(USER, PASSWORD)
        .send(TOPIC, reading(1));
    assert_eq!(
        wait_for_count(node, &index, 1, Duration::from_secs(30)).await,
        1
    );
    assert!(bridge.terminate(Duration::from_secs(30)).success());
    assert_no_password(&bridge);
}

/// Mosquitto with its plain listener plus a TLS listener on a port of its own; returns the
/// broker and the TLS port.
fn broker_with_tls(certs: &Certs) -> (Mosquitto, u16) {
    let tls_port = free_port();
    let broker = Mosquitto::start_with(&[
        "max_queued_messages 0",
        &format!("listener {tls_port} 127.0.0.1"),
        &format!("cafile {}", certs.ca().display()),
        &format!("certfile {}", certs.server_cert().display()),
        &format!("keyfile {}", certs.server_key().display()),
    ]);
    (broker, tls_port)
}

#[tokio::test(flavor = "multi_thread")]
async fn a_bridge_trusting_the_brokers_ca_stores_readings_over_tls_by_ip_and_by_name() {
    let node = SearchNode::shared();
    let certs = Certs::generate();
    let (broker, tls_port) = broker_with_tls(&certs);
    let mut bridges = Vec::new();
    for host in ["127.0.0.1", "localhost"] {
        let spec = BridgeSpec::new(tls_port, &node.url())
            .upstream_ca(&certs.ca())
            .env("MQTT2ES_UPSTREAM__HOST", host);
        let (bridge, index) = start_readings_bridge_with(spec);
        bridges.push((host, bridge, index));
    }

    publish(broker.port(), TOPIC, 1, &reading(1));
    for (host, bridge, index) in &bridges {
        assert_eq!(
            wait_for_count(node, index, 1, Duration::from_secs(30)).await,
            1,
            "over TLS to {host}:\n{}",
            bridge.logs()
        );
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_bridge_with_a_ca_that_did_not_sign_the_brokers_certificate_logs_why_and_retries() {
    let node = SearchNode::shared();
    let certs = Certs::generate();
    let (_broker, tls_port) = broker_with_tls(&certs);
    let spec = BridgeSpec::new(tls_port, &node.url())
        .pipeline("readings.yaml", readings_pipeline())
        .upstream_ca(&certs.other_ca());
    let mut bridge = Bridge::start(&spec);

    bridge.wait_for_log("UnknownIssuer", 2, Duration::from_secs(30));
    let logs = bridge.logs();
    let failure = logs
        .lines()
        .find(|line| line.contains("UnknownIssuer"))
        .expect("a TLS failure line");
    assert!(
        failure.contains("cannot connect to upstream broker"),
        "{failure}"
    );
    assert!(!logs.contains(" subscribed"), "{logs}");
}
