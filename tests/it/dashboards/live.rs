//! Every panel's query against the real search node, over data the real pipeline produced:
//! thermometer readings and status messages published with `mosquitto_pub` to Mosquitto, a
//! real MQTT last will (a subscriber killed without DISCONNECT), a malformed reading for a dead
//! letter, all carried by the real mqtt2es binary in upstream mode.

use std::path::PathBuf;
use std::time::Duration;

use chrono::{SecondsFormat, Utc};
use serde_json::{Value, json};

use super::query::{LayerQuery, translate};
use super::saved_objects::{Catalog, layers, panels};
use super::schema::rewrite_prefix;
use crate::support::bridge::{Bridge, BridgeSpec};
use crate::support::publish::{Publisher, publish};
use crate::support::subscriber::Subscriber;
use crate::support::{Mosquitto, SearchNode, wait_for_count};

/// The shipped telemetry pipeline, routed under the test bridge's own prefix: `route` prepends
/// the prefix to a name without it, so the shipped `mqtt2es-` is taken off.
fn shipped_pipeline(file: &str) -> String {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("pipelines")
        .join(file);
    let yaml =
        std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("read {}: {e}", path.display()));
    assert!(
        yaml.contains("index: \"mqtt2es-"),
        "{file} routes elsewhere"
    );
    yaml.replace("index: \"mqtt2es-", "index: \"")
}

/// A subscriber with a last will, killed (SIGKILL, no DISCONNECT) so the broker publishes the
/// will: what a thermometer losing power looks like to the bridge.
struct WillHolder {
    subscriber: Option<Subscriber>,
}

impl WillHolder {
    /// Connects and waits until subscribed: the broker holds the will from the CONNECT on.
    fn connect(broker: &Mosquitto, site: &str, device: &str) -> WillHolder {
        let subscriber = Subscriber::on(broker, &format!("sensors/{site}/{device}/command"))
            .qos(1)
            .args(&["-i", &format!("thermometer-{device}")])
            .args(&["--will-topic", &format!("sensors/{site}/{device}/status")])
            .args(&["--will-payload", r#"{"state":"offline"}"#])
            .args(&["--will-qos", "1", "--will-retain"])
            .start();
        WillHolder {
            subscriber: Some(subscriber),
        }
    }

    /// Kills it (dropping a `Subscriber` kills its process group).
    fn die(&mut self) {
        self.subscriber.take();
    }
}

fn rfc3339(ago: Duration) -> String {
    let at = Utc::now() - chrono::Duration::from_std(ago).expect("a small duration");
    at.to_rfc3339_opts(SecondsFormat::Millis, true)
}

/// mqtt2es-metrics documents of the data contract's shape. Until the metrics helper's shipping
/// lands (issue 4), the test indexes a few itself, one request per document.
async fn index_metrics(node: &SearchNode, index: &str) {
    for (n, instance) in [
        (0u64, "it-a"),
        (1, "it-a"),
        (2, "it-a"),
        (0, "it-b"),
        (1, "it-b"),
    ] {
        let doc = json!({
            "@timestamp": rfc3339(Duration::from_secs(10 * (n + 1))),
            "mqtt2es": {
                "instance": instance,
                "mode": "upstream",
                "interval_s": 10.0,
                "messages_in": 30 + n,
                "documents_stored": 29 + n,
                "dead_letters": 1,
                "retries": n,
                "bulk_requests": 3,
                "documents_per_s": 2.9 + n as f64 / 10.0,
                "bulk_latency_ms": {"avg": 12.5, "max": 40.0},
                "latency_ms": {"avg": 120.0 + n as f64, "max": 480.0},
                "queue_depth": n,
                "connected_clients": 3,
                "spool": {"bytes": 4096 * n, "records": 20 * n, "oldest_record_age_s": n as f64,
                          "shipped_per_s": 2.9, "dropped": 0}
            }
        });
        node.request(
            reqwest::Method::POST,
            &format!("/{index}/_doc?op_type=create"),
            Some(doc),
        )
        .await;
    }
}

/// Every layer query of every shipped panel, over the data streams under `prefix`.
fn panel_queries(catalog: &Catalog, prefix: &str) -> Vec<(String, LayerQuery)> {
    let mut queries = Vec::new();
    for dashboard in catalog.of_type("dashboard") {
        let from = dashboard["attributes"]["timeFrom"]
            .as_str()
            .unwrap_or("now-1h");
        let to = dashboard["attributes"]["timeTo"].as_str().unwrap_or("now");
        for panel in panels(dashboard).expect("panels") {
            for layer in layers(&panel.lens).expect("layers") {
                let view = catalog
                    .get("index-pattern", &layer.data_view)
                    .expect("the offline checks resolve every data view");
                let title = view["attributes"]["title"].as_str().expect("a title");
                let time = view["attributes"]["timeFieldName"]
                    .as_str()
                    .expect("a time field");
                let index = rewrite_prefix(title, prefix);
                let query = translate(&layer, &index, time, from, to)
                    .unwrap_or_else(|e| panic!("panel {:?}: {e}", panel.title));
                queries.push((format!("{} / {}", panel.dashboard, panel.title), query));
            }
        }
    }
    queries
}

async fn run(node: &SearchNode, query: &LayerQuery) -> Result<(), String> {
    let response = node.search(&query.index, query.body.clone()).await;
    query.check(&response)
}

#[tokio::test(flavor = "multi_thread")]
async fn every_panel_query_finds_data_from_the_real_pipeline_and_a_misspelt_field_finds_none() {
    let node = SearchNode::shared();
    let broker = Mosquitto::start_unbounded();
    let spec = BridgeSpec::new(broker.port(), &node.url())
        .pipeline("status.yaml", shipped_pipeline("status.yaml"))
        .pipeline("telemetry.yaml", shipped_pipeline("telemetry.yaml"));
    let mut bridge = Bridge::start(&spec);
    bridge.wait_subscribed();
    let prefix = bridge.prefix().to_owned();
    // The bridge installed the real templates (setup.on_start) before it subscribed.

    let port = broker.port();
    let devices = ["pi-1", "pi-2", "pi-3"];
    let mut will = WillHolder::connect(&broker, "lab", "pi-3");
    for device in devices {
        Publisher::to(port).qos(1).retain().send(
            &format!("sensors/lab/{device}/status"),
            br#"{"state":"online"}"#,
        );
    }
    for (d, device) in devices.iter().enumerate() {
        for n in 0..4u64 {
            let reading = format!(
                r#"{{"temp_c":{:.1},"humidity":{:.1},"battery":{:.2},"ts":"{}"}}"#,
                20.0 + d as f64 + n as f64 / 10.0,
                45.0 + n as f64,
                0.9 - n as f64 / 100.0,
                rfc3339(Duration::from_secs(60 * n + 5)),
            );
            publish(
                port,
                &format!("sensors/lab/{device}/telemetry"),
                1,
                reading.as_bytes(),
            );
        }
    }
    will.die();
    publish(port, "sensors/lab/pi-1/telemetry", 1, br#"{"temp_c": "#);
    index_metrics(node, &format!("{prefix}metrics")).await;

    let wait = Duration::from_secs(30);
    let telemetry = format!("{prefix}telemetry-lab");
    let status = format!("{prefix}status-lab");
    assert_eq!(
        wait_for_count(node, &telemetry, 12, wait).await,
        12,
        "{}",
        bridge.logs()
    );
    assert_eq!(
        wait_for_count(node, &status, 4, wait).await,
        4,
        "three online messages and pi-3's last will:\n{}",
        bridge.logs()
    );
    assert_eq!(
        wait_for_count(node, &bridge.dead_letter_index(), 1, wait).await,
        1
    );
    assert_eq!(
        wait_for_count(node, &format!("{prefix}metrics"), 5, wait).await,
        5
    );

    let catalog = Catalog::shipped();
    let queries = panel_queries(&catalog, &prefix);
    assert!(queries.len() >= 15, "{} panel layers", queries.len());
    let mut failures = Vec::new();
    for (panel, query) in &queries {
        if let Err(why) = run(node, query).await {
            failures.push(format!("{panel}: {why}\n  query: {}", query.body));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));

    // The node maps every field the panels read as Kibana needs it: present and aggregatable.
    for (panel, query) in &queries {
        let fields = query.fields();
        let caps = node
            .request(
                reqwest::Method::GET,
                &format!("/{}/_field_caps?fields={}", query.index, fields.join(",")),
                None,
            )
            .await;
        for field in &fields {
            let aggregatable = caps["fields"][field]
                .as_object()
                .is_some_and(|types| types.values().all(|t| t["aggregatable"] == true));
            assert!(
                aggregatable,
                "{panel}: {field} on the node: {}",
                caps["fields"][field]
            );
        }
    }

    // The status table shows what the last will said: pi-3 vanished, the others are online.
    // (Column ids as the fleet dashboard names them.)
    let (_, status_table) = queries
        .iter()
        .find(|(panel, _)| panel.ends_with("/ Device status (online / offline)"))
        .expect("the fleet dashboard has a status table");
    let response = node
        .search(&status_table.index, status_table.body.clone())
        .await;
    let states: Vec<(String, String)> = status_table
        .rows(&response)
        .iter()
        .map(|row| {
            (
                row["device"].as_str().unwrap_or("?").to_owned(),
                row["state"].as_str().unwrap_or("?").to_owned(),
            )
        })
        .collect();
    let expected: Vec<(String, String)> =
        [("pi-1", "online"), ("pi-2", "online"), ("pi-3", "offline")]
            .iter()
            .map(|(d, s)| (d.to_string(), s.to_string()))
            .collect();
    assert_eq!(states, expected);

    // The same translation of a panel whose field is misspelt finds nothing: the check above
    // would have failed for a panel pointing at a field the pipeline does not write.
    let mut broken = Catalog::shipped();
    for object in broken
        .objects
        .iter_mut()
        .filter(|o| o["type"] == "dashboard")
    {
        let raw = object["attributes"]["panelsJSON"]
            .as_str()
            .expect("panels")
            .to_owned();
        object["attributes"]["panelsJSON"] = Value::from(raw.replace(
            r#""sourceField":"temperature_c""#,
            r#""sourceField":"temperature""#,
        ));
    }
    let broken_queries = panel_queries(&broken, &prefix);
    let mut caught = 0;
    for (panel, query) in &broken_queries {
        if query.body.to_string().contains(r#""field":"temperature""#) {
            let result = run(node, query).await;
            assert!(result.is_err(), "{panel} found data for a misspelt field");
            caught += 1;
        }
    }
    assert!(
        caught >= 2,
        "the table and the chart use temperature_c; caught {caught}"
    );
}
