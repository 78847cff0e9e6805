//! The seeds' programs and command lines against mqtt2es's embedded broker, run with real MQTT
//! clients nobody here wrote: Mosquitto's `mosquitto_pub`/`mosquitto_sub`/`mosquitto_passwd`,
//! the Go paho sample program and publisher (seeds 000 and 001), Python paho-mqtt (seeds 001 and
//! 003's device) and MQTT.js for MQTT 5 over WebSocket.
//!
//! Seed 002's MQTT 5 examples (basic client with keep-alive and clean start, pub, sub, a will
//! with a delay interval, all over `ws://…/mqtt`) are written for the srishina/mqtt.go library,
//! which the Go module proxy here refuses to serve; MQTT.js (tests/clients/node/client.mjs)
//! reproduces the same packets: CONNECT with clean start, session expiry, will and will delay
//! properties, PUBLISH with user properties, SUBSCRIBE, over the same WebSocket path.
//!
//! One file per client: `mosquitto` (the Debian command-line clients, which also carry the
//! authentication and TLS tests), `go` (the paho sample), `python` (a paho-mqtt device across a
//! SIGKILL), `node` (MQTT.js, MQTT 5 over WebSocket). Here: where the clients are installed, the
//! bridge they talk to, and reading back what it stored. Every client runs as a child in its
//! own process group, killed when its guard drops (`support::program::Running`); waits poll
//! output or the index with a deadline.

mod go;
mod mosquitto;
mod node;
mod python;

use std::path::PathBuf;
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use crate::support::SearchNode;
use crate::support::bridge::{Bridge, BridgeSpec};
use crate::support::certs::Certs;
use crate::support::paho;
use crate::support::program::WAIT;

fn env_dir(var: &str, what: &str) -> PathBuf {
    let dir = std::env::var_os(var).unwrap_or_else(|| {
        panic!("{var} is not set: it names {what}; run through scripts/test, which installs it")
    });
    PathBuf::from(dir)
}

/// A Go program of tests/clients/go, built by scripts/test.
fn go_client(name: &str) -> PathBuf {
    let path = env_dir("MQTT2ES_TEST_GO_CLIENTS", "the built Go paho clients").join(name);
    assert!(path.is_file(), "no Go client at {}", path.display());
    path
}

/// Python with paho-mqtt, and the seed's publish script.
fn python_publish() -> (PathBuf, PathBuf) {
    (paho::python(), paho::publish_script())
}

/// mqtt2es with the shipped default pipeline: what the clients publish lands in
/// `Bridge::messages_index`.
fn start(spec: BridgeSpec) -> Bridge {
    Bridge::start(&spec.default_pipeline())
}

/// The `_source` of the documents matching `query`, once there are at least `expected` of
/// them (or the deadline passed: the caller asserts on what came back).
async fn docs(node: &SearchNode, index: &str, query: Value, expected: usize) -> Vec<Value> {
    let deadline = Instant::now() + WAIT;
    loop {
        // try_count refreshes; a stream not created yet counts as empty.
        let found = match node.try_count(index).await {
            Some(n) if n > 0 => {
                let body = json!({"query": query, "size": 10_000});
                let response = node
                    .request(
                        reqwest::Method::POST,
                        &format!("/{index}/_search"),
                        Some(body),
                    )
                    .await;
                response["hits"]["hits"]
                    .as_array()
                    .map(|hits| hits.iter().map(|h| h["_source"].clone()).collect())
                    .unwrap_or_default()
            }
            _ => Vec::new(),
        };
        if found.len() >= expected || Instant::now() > deadline {
            return found;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

fn topic_is(topic: &str) -> Value {
    json!({"term": {"mqtt.topic": topic}})
}

fn messages(docs: &[Value]) -> Vec<String> {
    let mut texts: Vec<String> = docs
        .iter()
        .map(|d| d["message"].as_str().unwrap_or("").to_owned())
        .collect();
    texts.sort();
    texts
}

/// A TLS listener (`tls` or `wss`) with the server certificate of `certs`.
fn tls_listener(transport: &str, certs: &Certs) -> String {
    format!(
        "{{transport: {transport}, bind: \"127.0.0.1:0\", cert_file: \"{}\", key_file: \"{}\"}}",
        certs.server_cert().display(),
        certs.server_key().display()
    )
}
