//! What a user sees from `mqtt2es check` and `mqtt2es try`: no broker or search node needed.

use std::path::Path;
use std::process::{Command, Output};

fn mqtt2es(dir: &Path, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_mqtt2es"))
        .args(args)
        .arg("--config")
        .arg(dir.join("mqtt2es.yaml"))
        .env_remove("MQTT2ES_CONFIG")
        .output()
        .expect("run mqtt2es")
}

/// A config directory holding the shipped pipelines (the ones a new user starts from).
fn shipped_setup() -> tempfile::TempDir {
    let dir = tempfile::tempdir().expect("temp dir");
    std::fs::write(
        dir.path().join("mqtt2es.yaml"),
        "upstream: {host: broker.local}\nelasticsearch: {url: 'http://es.local:9200'}\n",
    )
    .expect("config");
    let pipelines = dir.path().join("pipelines");
    std::fs::create_dir(&pipelines).expect("pipelines dir");
    for entry in std::fs::read_dir(Path::new(env!("CARGO_MANIFEST_DIR")).join("pipelines"))
        .expect("shipped pipelines")
    {
        let path = entry.expect("entry").path();
        std::fs::copy(&path, pipelines.join(path.file_name().expect("name"))).expect("copy");
    }
    dir
}

#[test]
fn check_accepts_the_shipped_setup_and_summarises_it() {
    let dir = shipped_setup();
    let output = mqtt2es(dir.path(), &["check"]);
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(output.status.success(), "{output:?}");
    assert!(stdout.contains("configuration ok"), "{stdout}");
    assert!(stdout.contains("telemetry"), "{stdout}");
    assert!(stdout.contains("subscribing to # as"), "{stdout}");
}

#[test]
fn check_of_the_shipped_config_describes_the_embedded_broker_it_would_run() {
    let dir = shipped_setup();
    std::fs::copy(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("mqtt2es.yaml"),
        dir.path().join("mqtt2es.yaml"),
    )
    .expect("copy the shipped config");
    let output = mqtt2es(dir.path(), &["check"]);
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(output.status.success(), "{output:?}");
    assert!(
        stdout.contains("embedded broker listening on tcp 0.0.0.0:1883"),
        "{stdout}"
    );
    assert!(
        stdout.contains(
            "anonymous clients from loopback only (the default while no password_file or jwt is set)"
        ),
        "{stdout}"
    );
}

#[test]
fn check_names_the_file_stage_key_and_value_of_a_pipeline_mistake_and_exits_2() {
    let dir = shipped_setup();
    std::fs::write(
        dir.path().join("pipelines/broken.yaml"),
        "topics: [\"x/#\"]\nstages:\n  - rename: {from: a, to: b}\n  - convert: {field: b, type: integer}\n",
    )
    .expect("write pipeline");
    let output = mqtt2es(dir.path(), &["check"]);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(2), "{output:?}");
    for part in ["broken.yaml", "stages[1]", "convert", "\"integer\""] {
        assert!(stderr.contains(part), "{part:?} missing from: {stderr}");
    }
}

#[test]
fn check_names_an_unknown_config_key_and_exits_2() {
    let dir = shipped_setup();
    std::fs::write(
        dir.path().join("mqtt2es.yaml"),
        "upstream: {host: b, clientid: x}\n",
    )
    .expect("config");
    let output = mqtt2es(dir.path(), &["check"]);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(2), "{output:?}");
    assert!(stderr.contains("clientid"), "{stderr}");
}

#[test]
fn try_shows_the_document_a_reading_becomes() {
    let dir = shipped_setup();
    // Recent, so the pipeline's skew window keeps the device's own time.
    let ts = (chrono::Utc::now() - chrono::Duration::minutes(1))
        .to_rfc3339_opts(chrono::SecondsFormat::Millis, true);
    let payload = format!(r#"{{"temp_c":21.4,"humidity":48.2,"battery":0.93,"ts":"{ts}"}}"#);
    let output = mqtt2es(
        dir.path(),
        &[
            "try",
            "--topic",
            "sensors/lab/pi-01/telemetry",
            "--payload",
            &payload,
        ],
    );
    assert!(output.status.success(), "{output:?}");
    let shown: serde_json::Value = serde_json::from_slice(&output.stdout).expect("try prints JSON");
    assert_eq!(shown["pipeline"], "telemetry", "{shown}");
    assert_eq!(shown["index"], "mqtt2es-telemetry-lab", "{shown}");
    assert_eq!(shown["document"]["temperature_c"], 21.4, "{shown}");
    // The device's time to the millisecond; digits below it come from the receive time.
    let stamp = shown["document"]["@timestamp"]
        .as_str()
        .expect("@timestamp");
    assert!(stamp.starts_with(&ts[..23]), "{stamp} is not {ts}");
    assert_eq!(
        shown["id"], shown["document"]["mqtt2es"]["reading_id"],
        "{shown}"
    );
}

#[test]
fn try_shows_why_a_message_would_be_dead_lettered() {
    let dir = shipped_setup();
    let output = mqtt2es(
        dir.path(),
        &[
            "try",
            "--topic",
            "sensors/lab/pi-01/telemetry",
            "--payload",
            "{oops",
        ],
    );
    assert!(output.status.success(), "{output:?}");
    let shown: serde_json::Value = serde_json::from_slice(&output.stdout).expect("try prints JSON");
    assert_eq!(shown["dead_letter"]["reason"], "invalid_json", "{shown}");
    assert_eq!(shown["dead_letter"]["stage"], "decode", "{shown}");
}

#[test]
fn help_explains_the_commands_and_the_environment_overrides() {
    let output = Command::new(env!("CARGO_BIN_EXE_mqtt2es"))
        .arg("--help")
        .output()
        .expect("run mqtt2es --help");
    let stdout = String::from_utf8_lossy(&output.stdout);
    for part in ["run", "check", "setup", "try", "MQTT2ES_"] {
        assert!(
            stdout.contains(part),
            "{part:?} missing from --help: {stdout}"
        );
    }
}

#[test]
fn check_says_anonymous_clients_get_in_from_loopback_only_until_users_are_configured() {
    let dir = shipped_setup();
    let cases = [
        (
            "broker: {}\n",
            "anonymous clients from loopback only (the default while no password_file or jwt is set); \
             no users are configured",
        ),
        (
            "broker: {auth: {password_file: passwd}}\n",
            "anonymous clients refused (the default once a password_file or jwt is set); \
             others need a password",
        ),
        (
            "broker: {auth: {password_file: passwd, allow_anonymous: true}}\n",
            "anonymous clients allowed from anywhere (broker.auth.allow_anonymous: true); \
             others need a password",
        ),
    ];
    let made = Command::new(env!("CARGO_BIN_EXE_mqtt2es"))
        .args(["passwd", "-c", "-b"])
        .arg(dir.path().join("passwd"))
        .args(["pi", "raspberry"])
        .output()
        .expect("run mqtt2es passwd");
    assert!(made.status.success(), "{made:?}");
    for (broker, expected) in cases {
        std::fs::write(
            dir.path().join("mqtt2es.yaml"),
            format!("elasticsearch: {{url: 'http://es.local:9200'}}\n{broker}"),
        )
        .expect("config");
        let output = mqtt2es(dir.path(), &["check"]);
        let stdout = String::from_utf8_lossy(&output.stdout);
        assert!(output.status.success(), "{broker}: {output:?}");
        assert!(stdout.contains(expected), "{broker}: {stdout}");
    }
}

#[test]
fn check_of_a_broker_nobody_could_log_in_to_says_so_and_exits_2() {
    let dir = shipped_setup();
    // Anonymous clients refused even from loopback, and no users: nobody gets in. (Without
    // `allow_anonymous: false`, loopback clients would: the default.)
    std::fs::write(
        dir.path().join("mqtt2es.yaml"),
        "elasticsearch: {url: 'http://es.local:9200'}\nbroker: {auth: {allow_anonymous: false}}\n",
    )
    .expect("config");
    let output = mqtt2es(dir.path(), &["check"]);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(2), "{output:?}");
    assert!(
        stderr.contains("broker.auth: no client could connect"),
        "{stderr}"
    );
}
