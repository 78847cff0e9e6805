//! `mqtt2es setup` against the real search node: templates per stream kind, time-series
//! telemetry on Elasticsearch and plain data streams on OpenSearch, old readings never lost,
//! clear errors; and the Kibana import against a stand-in (no Kibana server runs here).

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpListener;
use std::path::Path;
use std::process::{Command, Output};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::{Value, json};

use crate::support::bridge::{Bridge, BridgeSpec, unique_prefix};
use crate::support::publish::publish;
use crate::support::search::Engine;
use crate::support::{Mosquitto, SearchNode, wait_for_count};

/// Runs `mqtt2es setup` with `config` written to a temp dir (kept alive by the caller).
fn setup_with(dir: &Path, config: &str) -> Output {
    std::fs::write(dir.join("mqtt2es.yaml"), config).expect("config");
    Command::new(env!("CARGO_BIN_EXE_mqtt2es"))
        .arg("setup")
        .arg("--config")
        .arg(dir.join("mqtt2es.yaml"))
        .env_remove("MQTT2ES_CONFIG")
        .env("RUST_LOG", "info")
        .output()
        .expect("run mqtt2es setup")
}

fn config_for(url: &str, prefix: &str) -> String {
    format!(
        "elasticsearch: {{url: \"{url}\"}}\nindex: {{prefix: \"{prefix}\"}}\n\
         dead_letter: {{index: \"{prefix}deadletter\"}}\n"
    )
}

/// The shipped pipeline with the bridge's prefix in place of the shipped one (routes that
/// render without the prefix get it prepended).
fn shipped_pipeline(file: &str) -> String {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("pipelines")
        .join(file);
    std::fs::read_to_string(path)
        .expect("a shipped pipeline")
        .replace("\"mqtt2es-", "\"")
}

/// `index.mode` of every backing index of a data stream (`None` when unset).
async fn index_modes(node: &SearchNode, stream: &str) -> Vec<Option<String>> {
    let settings = node
        .request(reqwest::Method::GET, &format!("/{stream}/_settings"), None)
        .await;
    settings
        .as_object()
        .expect("indices")
        .values()
        .map(|index| {
            index["settings"]["index"]["mode"]
                .as_str()
                .map(str::to_owned)
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn setup_twice_installs_every_template_once_and_exits_0() {
    let node = SearchNode::shared();
    let dir = tempfile::tempdir().expect("temp dir");
    let prefix = unique_prefix();
    let config = config_for(&node.url(), &prefix);
    for run in 1..=2 {
        let output = setup_with(dir.path(), &config);
        assert!(output.status.success(), "run {run}: {output:?}");
    }

    let templates = node
        .request(
            reqwest::Method::GET,
            &format!("/_index_template/{prefix}*"),
            None,
        )
        .await;
    let mut found: Vec<(String, u64)> = templates["index_templates"]
        .as_array()
        .expect("templates")
        .iter()
        .map(|t| {
            (
                t["name"].as_str().expect("name").to_owned(),
                t["index_template"]["priority"].as_u64().expect("priority"),
            )
        })
        .collect();
    found.sort();
    let expected: Vec<(String, u64)> = [
        ("deadletter", 300),
        ("metrics", 210),
        ("status", 210),
        ("streams", 200),
        ("telemetry", 210),
    ]
    .iter()
    .map(|(name, priority)| (format!("{prefix}{name}"), *priority))
    .collect();
    assert_eq!(found, expected);

    let components = node
        .request(
            reqwest::Method::GET,
            &format!("/_component_template/{prefix}*"),
            None,
        )
        .await;
    let names: Vec<&str> = components["component_templates"]
        .as_array()
        .expect("components")
        .iter()
        .map(|c| c["name"].as_str().expect("name"))
        .collect();
    let time_series = Engine::from_env() == Engine::Elasticsearch;
    assert_eq!(
        names.contains(&format!("{prefix}telemetry@settings").as_str()),
        time_series,
        "{names:?}"
    );
    assert_eq!(names.len(), if time_series { 6 } else { 5 }, "{names:?}");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_reading_lands_in_a_time_series_stream_on_elasticsearch_and_a_plain_one_on_opensearch() {
    let node = SearchNode::shared();
    let broker = Mosquitto::start_unbounded();
    let spec = BridgeSpec::new(broker.port(), &node.url())
        .pipeline("status.yaml", shipped_pipeline("status.yaml"))
        .pipeline("telemetry.yaml", shipped_pipeline("telemetry.yaml"));
    let mut bridge = Bridge::start(&spec);
    bridge.wait_subscribed();
    let stream = format!("{}telemetry-lab", bridge.prefix());
    let status = format!("{}status-lab", bridge.prefix());

    let ts = (chrono::Utc::now() - chrono::Duration::minutes(1))
        .to_rfc3339_opts(chrono::SecondsFormat::Millis, true);
    let reading = format!(r#"{{"temp_c":21.4,"humidity":48.2,"battery":0.93,"ts":"{ts}"}}"#);
    let before = chrono::Utc::now();
    publish(
        broker.port(),
        "sensors/lab/pi-01/telemetry",
        1,
        reading.as_bytes(),
    );
    // The same bytes published again: a second reading, not a redelivery (that would be the
    // same MQTT message resent; see stored_once), so a second document on both engines, even
    // on a time-series stream that knows a reading by series and time.
    publish(
        broker.port(),
        "sensors/lab/pi-01/telemetry",
        1,
        reading.as_bytes(),
    );
    publish(
        broker.port(),
        "sensors/lab/pi-01/status",
        1,
        br#"{"state":"online"}"#,
    );
    assert_eq!(
        wait_for_count(node, &status, 1, Duration::from_secs(30)).await,
        1
    );
    assert_eq!(
        wait_for_count(node, &stream, 2, Duration::from_secs(30)).await,
        2
    );
    bridge.terminate(Duration::from_secs(20));
    assert_eq!(
        node.count(&stream).await,
        2,
        "the repeat is a reading of its own"
    );

    let modes = index_modes(node, &stream).await;
    let mapping = node
        .request(reqwest::Method::GET, &format!("/{stream}/_mapping"), None)
        .await;
    let fields = &mapping
        .as_object()
        .and_then(|m| m.values().next())
        .expect("a backing index")["mappings"]["properties"];
    match Engine::from_env() {
        Engine::Elasticsearch => {
            assert_eq!(modes, [Some("time_series".to_owned())]);
            assert_eq!(fields["site"]["time_series_dimension"], json!(true));
            assert_eq!(fields["temperature_c"]["time_series_metric"], "gauge");
        }
        Engine::OpenSearch => {
            assert_eq!(modes, [None]);
            assert_eq!(fields["site"]["type"], "keyword");
        }
    }
    assert_eq!(fields["temperature_c"]["type"], "float");
    assert_eq!(fields["event"]["properties"]["ingested"]["type"], "date");

    let hits = node.search(&stream, json!({"size": 1})).await;
    let doc = &hits["hits"]["hits"][0]["_source"];
    let ingested: chrono::DateTime<chrono::Utc> = doc["event"]["ingested"]
        .as_str()
        .and_then(|t| t.parse().ok())
        .unwrap_or_else(|| panic!("no event.ingested in {doc}"));
    assert!(
        ingested >= before - chrono::Duration::milliseconds(1),
        "{doc}"
    );
    assert_eq!(doc["device"], "pi-01", "{doc}");

    let hits = node.search(&status, json!({"size": 1})).await;
    let doc = &hits["hits"]["hits"][0]["_source"];
    assert_eq!(doc["state"], "online", "{doc}");
    assert_eq!(doc["mqtt"]["retain"], false, "{doc}");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_reading_older_than_the_time_series_window_is_dead_lettered_with_its_reason_or_stored() {
    let node = SearchNode::shared();
    let broker = Mosquitto::start_unbounded();
    let engine = Engine::from_env();
    // A pipeline that believes readings up to 90 days old, so an old one reaches the engine.
    let pipeline =
        shipped_pipeline("telemetry.yaml").replace("max_past_s: 604800", "max_past_s: 7776000");
    let spec = BridgeSpec::new(broker.port(), &node.url())
        .pipeline("telemetry.yaml", pipeline)
        .setup_on_start(false);
    // The bridge picks its prefix when it starts: start it to learn it, stop it before it
    // writes anything, set up by hand, then start it again.
    let mut bridge = Bridge::start(&spec);
    let prefix = bridge.prefix().to_owned();
    bridge.kill();
    let dir = tempfile::tempdir().expect("temp dir");
    let output = setup_with(dir.path(), &config_for(&node.url(), &prefix));
    assert!(output.status.success(), "{output:?}");
    if engine == Engine::Elasticsearch {
        // This minimal distribution lacks the data-streams module that gives every time-series
        // backing index its time bounds (from index.look_back_time, 7 days on a full node), so
        // the test sets the bounds itself: the engine's own range check then refuses the old
        // reading exactly as a full node does.
        let name = format!("{prefix}telemetry");
        let mut template = node
            .request(
                reqwest::Method::GET,
                &format!("/_index_template/{name}"),
                None,
            )
            .await["index_templates"][0]["index_template"]
            .clone();
        let now = chrono::Utc::now();
        template["template"]["settings"] = json!({
            "index.time_series.start_time": (now - chrono::Duration::days(7)).to_rfc3339(),
            "index.time_series.end_time": (now + chrono::Duration::days(1)).to_rfc3339(),
        });
        let body = json!({
            "index_patterns": template["index_patterns"],
            "data_stream": {},
            "priority": template["priority"],
            "composed_of": template["composed_of"],
            "template": template["template"],
        });
        node.request(
            reqwest::Method::PUT,
            &format!("/_index_template/{name}"),
            Some(body),
        )
        .await;
    }
    bridge.restart();
    bridge.wait_subscribed();

    let stream = format!("{prefix}telemetry-lab");
    let dead_letters = bridge.dead_letter_index();
    let at = |age: chrono::Duration| {
        (chrono::Utc::now() - age).to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
    };
    let topic = "sensors/lab/pi-01/telemetry";
    let recent = format!(
        r#"{{"temp_c":20.0,"ts":"{}"}}"#,
        at(chrono::Duration::minutes(1))
    );
    let old = format!(
        r#"{{"temp_c":19.0,"ts":"{}"}}"#,
        at(chrono::Duration::days(20))
    );
    publish(broker.port(), topic, 1, recent.as_bytes());
    publish(broker.port(), topic, 1, old.as_bytes());

    match engine {
        Engine::Elasticsearch => {
            assert_eq!(
                wait_for_count(node, &dead_letters, 1, Duration::from_secs(30)).await,
                1
            );
            assert_eq!(node.count(&stream).await, 1, "the recent reading is stored");
            let hits = node.search(&dead_letters, json!({"size": 1})).await;
            let letter = &hits["hits"]["hits"][0]["_source"];
            assert_eq!(letter["reason"], "timestamp_out_of_range", "{letter}");
            assert_eq!(letter["stage"], "bulk", "{letter}");
            assert_eq!(letter["pipeline"], "telemetry", "{letter}");
            assert_eq!(letter["payload"], old.as_str(), "{letter}");
            let message = letter["error"]["message"].as_str().unwrap_or("");
            assert!(message.contains("outside of ranges"), "{letter}");
        }
        Engine::OpenSearch => {
            assert_eq!(
                wait_for_count(node, &stream, 2, Duration::from_secs(30)).await,
                2,
                "a plain data stream takes readings of any age"
            );
            assert_eq!(node.try_count(&dead_letters).await.unwrap_or(0), 0);
        }
    }
}

#[test]
fn setup_against_an_unreachable_node_exits_1_naming_the_url() {
    let dir = tempfile::tempdir().expect("temp dir");
    let url = format!("http://127.0.0.1:{}", crate::support::free_port());
    let output = setup_with(dir.path(), &config_for(&url, "mqtt2es-unreachable-"));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(1), "{output:?}");
    assert!(
        stderr.contains(&format!("elasticsearch at {url} is unreachable")),
        "{stderr}"
    );
}

// ---- Kibana: no Kibana server can run here, so a stand-in on a free port records the request
// and answers in the shape of Kibana's saved-objects import API ----

struct Recorded {
    head: String,
    body: Vec<u8>,
}

/// Answers every request with 200 and `reply`; returns its URL and what it received.
fn kibana_stand_in(reply: Value) -> (String, Arc<Mutex<Vec<Recorded>>>) {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
    let url = format!("http://{}", listener.local_addr().expect("address"));
    let seen = Arc::new(Mutex::new(Vec::new()));
    let record = Arc::clone(&seen);
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut stream) = stream else { return };
            let mut reader = BufReader::new(stream.try_clone().expect("clone"));
            let mut head = String::new();
            loop {
                let mut line = String::new();
                if reader.read_line(&mut line).unwrap_or(0) == 0 || line == "\r\n" {
                    break;
                }
                head.push_str(&line);
            }
            let length = head
                .lines()
                .find_map(|l| {
                    let (k, v) = l.split_once(':')?;
                    k.eq_ignore_ascii_case("content-length")
                        .then(|| v.trim().parse::<usize>().ok())?
                })
                .unwrap_or(0);
            let mut body = vec![0; length];
            reader.read_exact(&mut body).expect("body");
            record.lock().expect("lock").push(Recorded { head, body });
            let text = reply.to_string();
            let _ = write!(
                stream,
                "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\
                 connection: close\r\n\r\n{text}",
                text.len()
            );
        }
    });
    (url, seen)
}

#[tokio::test(flavor = "multi_thread")]
async fn setup_imports_the_dashboards_into_kibana_and_reports_refused_objects() {
    let node = SearchNode::shared();
    let dir = tempfile::tempdir().expect("temp dir");
    std::fs::create_dir(dir.path().join("dashboards")).expect("dashboards dir");
    let object = r#"{"type":"dashboard","id":"mqtt2es-fleet","attributes":{"title":"fleet"},"references":[]}"#;
    std::fs::write(
        dir.path().join("dashboards/fleet.ndjson"),
        format!("{object}\n"),
    )
    .expect("write");
    std::fs::write(dir.path().join("kibana-key"), "aWQ6a2V5\n").expect("write");
    let prefix = unique_prefix();

    let (url, seen) =
        kibana_stand_in(json!({"success": true, "successCount": 1, "successResults": []}));
    let config = format!(
        "{}kibana: {{url: \"{url}\", api_key_file: kibana-key}}\n",
        config_for(&node.url(), &prefix)
    );
    let output = setup_with(dir.path(), &config);
    assert!(output.status.success(), "{output:?}");
    let requests = seen.lock().expect("lock");
    assert_eq!(requests.len(), 1);
    let head = &requests[0].head;
    assert!(
        head.starts_with("POST /api/saved_objects/_import?overwrite=true HTTP/1.1\r\n"),
        "{head}"
    );
    let lower = head.to_ascii_lowercase();
    assert!(lower.contains("kbn-xsrf: true"), "{head}");
    assert!(lower.contains("authorization: apikey awq6a2v5"), "{head}");
    assert!(
        lower.contains("content-type: multipart/form-data; boundary="),
        "{head}"
    );
    let body = String::from_utf8_lossy(&requests[0].body);
    assert!(
        body.contains("name=\"file\"; filename=\"mqtt2es-dashboards.ndjson\""),
        "{body}"
    );
    assert!(body.contains(object), "{body}");
    drop(requests);

    let (url, _) = kibana_stand_in(json!({
        "success": false, "successCount": 0,
        "errors": [{"id": "mqtt2es-fleet", "type": "dashboard", "title": "fleet",
                    "meta": {"title": "fleet", "icon": "dashboardApp"},
                    "error": {"type": "missing_references",
                              "references": [{"type": "index-pattern", "id": "gone"}]}}],
    }));
    let config = format!(
        "{}kibana: {{url: \"{url}\"}}\n",
        config_for(&node.url(), &prefix)
    );
    let output = setup_with(dir.path(), &config);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(1), "{output:?}");
    assert!(stderr.contains("refused 1 of 1 saved objects"), "{stderr}");
    assert!(
        stderr.contains("dashboard \"mqtt2es-fleet\" (\"fleet\", from "),
        "{stderr}"
    );
    assert!(
        stderr.contains("missing_references [index-pattern \"gone\"]"),
        "{stderr}"
    );
}

const ROLES: &str = r#"
mqtt2es_setup:
  cluster: ["monitor", "manage_index_templates"]
  indices:
    - names: ["mqtt2es-*"]
      privileges: ["create_index"]
mqtt2es_writer:
  cluster: ["monitor"]
  indices:
    - names: ["mqtt2es-*"]
      privileges: ["create_doc", "auto_configure"]
monitor_only:
  cluster: ["monitor"]
nothing:
  cluster: ["none"]
"#;

/// Security on, basic auth, on a real node of its own. Only Elasticsearch's distribution has
/// security; OpenSearch's minimal one has no security plugin, so there this test has nothing
/// to run. (API keys cannot be tested on this node: creating one needs an analysis module the
/// minimal distribution lacks; the API-key header is checked against stand-ins.)
#[tokio::test(flavor = "multi_thread")]
async fn with_security_on_setup_and_run_work_with_the_documented_privileges_and_errors_name_what_is_missing()
 {
    if Engine::from_env() != Engine::Elasticsearch {
        return;
    }
    let user = |name, role| crate::support::search::FileUser {
        name,
        password: "pass-for-test",
        role,
    };
    let node = SearchNode::start_secured(
        ROLES,
        &[
            user("admin", "superuser"),
            user("setup", "mqtt2es_setup"),
            user("writer", "mqtt2es_writer"),
            user("watcher", "monitor_only"),
            user("nobody", "nothing"),
        ],
    );
    let dir = tempfile::tempdir().expect("temp dir");
    std::fs::write(dir.path().join("right"), "pass-for-test\n").expect("write");
    std::fs::write(dir.path().join("wrong"), "not-the-password\n").expect("write");
    let prefix = unique_prefix();
    let setup_as = |name: &str, password_file: &str| {
        let config = format!(
            "elasticsearch: {{url: \"{}\", username: {name}, password_file: {password_file}}}\n\
             index: {{prefix: \"{prefix}\"}}\ndead_letter: {{index: \"{prefix}deadletter\"}}\n",
            node.url()
        );
        let output = setup_with(dir.path(), &config);
        (
            output.status.code(),
            String::from_utf8_lossy(&output.stderr).into_owned(),
        )
    };

    let (code, stderr) = setup_as("setup", "wrong");
    assert_eq!(code, Some(1), "{stderr}");
    assert!(
        stderr.contains("refused the credentials") && stderr.contains("http 401"),
        "{stderr}"
    );
    let (code, stderr) = setup_as("nobody", "right");
    assert_eq!(code, Some(1), "{stderr}");
    assert!(stderr.contains("http 403"), "{stderr}");
    assert!(stderr.contains("the monitor cluster privilege"), "{stderr}");
    let (code, stderr) = setup_as("watcher", "right");
    assert_eq!(code, Some(1), "{stderr}");
    assert!(
        stderr.contains("the manage_index_templates cluster privilege"),
        "{stderr}"
    );
    for run in 1..=2 {
        let (code, stderr) = setup_as("setup", "right");
        assert_eq!(code, Some(0), "run {run} as the setup user: {stderr}");
    }

    // The bridge as a writer that may not install templates, with setup left to the above.
    let broker = Mosquitto::start_unbounded();
    let spec = BridgeSpec::new(broker.port(), &node.url())
        .pipeline("telemetry.yaml", shipped_pipeline("telemetry.yaml"))
        .setup_on_start(false)
        .env("MQTT2ES_ELASTICSEARCH__USERNAME", "writer")
        .env("MQTT2ES_ELASTICSEARCH__PASSWORD", "pass-for-test");
    // The bridge's prefix differs from the one set up above: set up its own first.
    let mut bridge = Bridge::start(&spec);
    let bridge_prefix = bridge.prefix().to_owned();
    bridge.kill();
    let config = format!(
        "elasticsearch: {{url: \"{}\", username: setup, password_file: right}}\n\
         index: {{prefix: \"{bridge_prefix}\"}}\ndead_letter: {{index: \"{bridge_prefix}deadletter\"}}\n",
        node.url()
    );
    let output = setup_with(dir.path(), &config);
    assert!(output.status.success(), "{output:?}");
    bridge.restart();
    bridge.wait_subscribed();
    let ts = (chrono::Utc::now() - chrono::Duration::minutes(1))
        .to_rfc3339_opts(chrono::SecondsFormat::Millis, true);
    publish(
        broker.port(),
        "sensors/lab/pi-01/telemetry",
        1,
        format!(r#"{{"temp_c":22.5,"ts":"{ts}"}}"#).as_bytes(),
    );
    let stream = format!("{bridge_prefix}telemetry-lab");
    assert_eq!(
        wait_for_count(&node, &stream, 1, Duration::from_secs(30)).await,
        1,
        "{}",
        bridge.logs()
    );
    assert_eq!(
        index_modes(&node, &stream).await,
        [Some("time_series".to_owned())]
    );
}
