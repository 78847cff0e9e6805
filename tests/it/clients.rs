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
//! Every client runs as a child in its own process group, killed when its guard drops (and by
//! the kernel if this binary dies: see `support::process`); waits poll output or the index
//! with a deadline.

use std::io::{BufRead, BufReader, Read};
use std::path::{Path, PathBuf};
use std::process::{Child, ExitStatus, Stdio};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use serde_json::{Value, json};

use crate::support::bridge::{Bridge, BridgeSpec};
use crate::support::certs::Certs;
use crate::support::{SearchNode, free_port, process, unique};

/// The shipped catch-all pipeline: JSON as fields, text in `message`, topic in `mqtt.topic`.
const DEFAULT_PIPELINE: &str = include_str!("../../pipelines/zz-default.yaml");

const WAIT: Duration = Duration::from_secs(30);

// ---- where the real clients are ------------------------------------------------------------

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
    let python = env_dir("MQTT2ES_TEST_PYTHON", "a python with paho-mqtt");
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/clients/python/mqtt_publish.py");
    (python, script)
}

/// The MQTT.js client script (its node_modules installed beside it).
fn node_client() -> PathBuf {
    let dir = env_dir(
        "MQTT2ES_TEST_NODE_CLIENTS",
        "tests/clients/node with MQTT.js installed",
    );
    assert!(
        dir.join("node_modules/mqtt").is_dir(),
        "MQTT.js is not installed in {}: run `npm ci` there",
        dir.display()
    );
    dir.join("client.mjs")
}

// ---- a child process and what it printed -----------------------------------------------------

/// A running client: stdout and stderr collected line by line as they come, the whole process
/// group killed on drop.
struct Running {
    what: String,
    child: Child,
    lines: Arc<Mutex<Vec<String>>>,
    readers: Vec<JoinHandle<()>>,
}

impl Running {
    fn start(program: impl AsRef<std::ffi::OsStr>, args: &[&str]) -> Running {
        Running::start_with(program, args, &[])
    }

    fn start_with(
        program: impl AsRef<std::ffi::OsStr>,
        args: &[&str],
        env: &[(&str, &str)],
    ) -> Running {
        let what = format!("{} {args:?}", program.as_ref().to_string_lossy());
        let mut command = process::command(program, None);
        command
            .args(args)
            .envs(env.iter().copied())
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let mut child =
            process::spawn(command).unwrap_or_else(|e| panic!("start {what}: {e} (installed?)"));
        let lines = Arc::new(Mutex::new(Vec::new()));
        let mut readers = Vec::new();
        let stdout: Box<dyn Read + Send> = Box::new(child.stdout.take().expect("piped stdout"));
        let stderr: Box<dyn Read + Send> = Box::new(child.stderr.take().expect("piped stderr"));
        for stream in [stdout, stderr] {
            let lines = Arc::clone(&lines);
            readers.push(std::thread::spawn(move || {
                for line in BufReader::new(stream).lines() {
                    let Ok(line) = line else { return };
                    lines.lock().unwrap_or_else(|e| e.into_inner()).push(line);
                }
            }));
        }
        Running {
            what,
            child,
            lines,
            readers,
        }
    }

    fn output(&self) -> String {
        self.lines
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .join("\n")
    }

    fn count(&self, matches: impl Fn(&str) -> bool) -> usize {
        self.lines
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
            .filter(|l| matches(l))
            .count()
    }

    /// Waits until `n` lines match; panics with the output when the deadline passes or the
    /// program has ended without printing them.
    fn wait_for(&mut self, n: usize, matches: impl Fn(&str) -> bool) {
        let deadline = Instant::now() + WAIT;
        loop {
            if self.count(&matches) >= n {
                return;
            }
            let ended = self.child.try_wait().ok().flatten();
            if ended.is_some() && self.readers.iter().all(JoinHandle::is_finished) {
                assert!(
                    self.count(&matches) >= n,
                    "{} ended ({ended:?}) before printing what was awaited:\n{}",
                    self.what,
                    self.output()
                );
                return;
            }
            assert!(
                Instant::now() < deadline,
                "{} did not print what was awaited within {WAIT:?}:\n{}",
                self.what,
                self.output()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Waits for it to exit; returns its status and everything it printed.
    fn finish(mut self) -> (ExitStatus, String) {
        let deadline = Instant::now() + WAIT;
        let status = loop {
            if let Some(status) = self.child.try_wait().expect("wait for a client") {
                break status;
            }
            assert!(
                Instant::now() < deadline,
                "{} did not exit within {WAIT:?}:\n{}",
                self.what,
                self.output()
            );
            std::thread::sleep(Duration::from_millis(20));
        };
        for reader in self.readers.drain(..) {
            let _ = reader.join();
        }
        (status, self.output())
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        if !matches!(self.child.try_wait(), Ok(Some(_))) {
            process::kill_group(&mut self.child);
        }
    }
}

/// Runs a client to completion.
fn run(program: impl AsRef<std::ffi::OsStr>, args: &[&str]) -> (ExitStatus, String) {
    Running::start(program, args).finish()
}

/// Runs a client that must succeed; returns what it printed.
fn run_ok(program: impl AsRef<std::ffi::OsStr>, args: &[&str]) -> String {
    let what = format!("{} {args:?}", program.as_ref().to_string_lossy());
    let (status, output) = run(program, args);
    assert!(status.success(), "{what} failed ({status}):\n{output}");
    output
}

/// `mosquitto_sub` (line-buffered through stdbuf, so each message shows as it comes), returned
/// once its SUBACK arrived.
fn mosquitto_sub(port: u16, args: &[&str]) -> Running {
    let port = port.to_string();
    let mut all = vec!["-oL", "mosquitto_sub", "-h", "127.0.0.1", "-p", &port, "-d"];
    all.extend_from_slice(args);
    let mut sub = Running::start("stdbuf", &all);
    sub.wait_for(1, |l| l.contains("received SUBACK"));
    sub
}

// ---- the bridge and the index ------------------------------------------------------------

fn start(spec: BridgeSpec) -> Bridge {
    Bridge::start(&spec.pipeline("zz-default.yaml", DEFAULT_PIPELINE))
}

fn messages_index(bridge: &Bridge) -> String {
    format!("{}mqtt2es-messages", bridge.prefix())
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

// ---- seeds/000: the Go paho sample ------------------------------------------------------------

#[tokio::test(flavor = "multi_thread")]
async fn the_go_paho_seed_sample_gets_its_own_hello_world_back_and_it_is_stored() {
    let node = SearchNode::shared();
    let mut bridge = start(BridgeSpec::embedded(&node.url()));
    let port = bridge.broker_port();

    // Subscribe and publish "Hello World" at QoS 1 on one client, id "F`/hty$3{+JQ%,j9".
    let output = run_ok(
        go_client("seed-sample"),
        &["-broker", &format!("tcp://127.0.0.1:{port}")],
    );
    let lines: Vec<&str> = output.lines().collect();
    assert!(lines.contains(&"Message: Hello World "), "{output}");
    assert!(
        lines.contains(&"Topic: /mqtt-explanation-klutzer "),
        "{output}"
    );
    let found = docs(
        node,
        &messages_index(&bridge),
        topic_is("/mqtt-explanation-klutzer"),
        1,
    )
    .await;
    assert_eq!(messages(&found), ["Hello World"], "{}", bridge.logs());
    assert_eq!(found[0]["mqtt"]["qos"], 1, "{}", found[0]);
    assert!(
        bridge.logs().contains("F`/hty$3{+JQ%,j9"),
        "the seed's client id should appear in the debug log:\n{}",
        bridge.logs()
    );
}

// ---- seeds/001: mosquitto_sub sees what three publishers send ----------------------------

#[tokio::test(flavor = "multi_thread")]
async fn mosquitto_sub_sees_hello_world_from_mosquitto_pub_go_and_python_and_each_is_stored() {
    let node = SearchNode::shared();
    let mut bridge = start(BridgeSpec::embedded(&node.url()));
    let port = bridge.broker_port();
    let p = port.to_string();
    let (python, script) = python_publish();
    let script = script.to_str().expect("a UTF-8 path");

    let mut sub = mosquitto_sub(port, &["-t", "test/topic"]);
    let seed = ["-t", "test/topic", "-m", "Hello world!"];
    run_ok(
        "mosquitto_pub",
        &[&["-h", "127.0.0.1", "-p", &p][..], &seed].concat(),
    );
    run_ok(
        go_client("mqtt-publish"),
        &[&["-h", "127.0.0.1", "-p", &p][..], &seed].concat(),
    );
    run_ok(
        &python,
        &[&[script, "-h", "127.0.0.1", "-p", &p][..], &seed].concat(),
    );
    sub.wait_for(3, |l| l == "Hello world!");

    // Three identical messages are three documents: each is its own reading. Each client's
    // own line besides proves whose was stored.
    for (program, name) in [
        (PathBuf::from("mosquitto_pub"), "mosquitto_pub"),
        (go_client("mqtt-publish"), "go"),
        (python.clone(), "python"),
    ] {
        let message = format!("Hello world! from {name}");
        let mut args = vec![
            "-h",
            "127.0.0.1",
            "-p",
            &p,
            "-t",
            "test/topic",
            "-m",
            &message,
        ];
        if name == "python" {
            args.insert(0, script);
        }
        run_ok(program, &args);
    }
    sub.wait_for(1, |l| l == "Hello world! from python");
    let found = docs(node, &messages_index(&bridge), topic_is("test/topic"), 6).await;
    assert_eq!(
        messages(&found),
        [
            "Hello world!",
            "Hello world!",
            "Hello world!",
            "Hello world! from go",
            "Hello world! from mosquitto_pub",
            "Hello world! from python"
        ],
        "{}",
        bridge.logs()
    );
}

// ---- seeds/003 and 004: a password file made by mosquitto_passwd ----------------------------

fn refs(args: &[String]) -> Vec<&str> {
    args.iter().map(String::as_str).collect()
}

/// A password file for the seed's user, made by the real `mosquitto_passwd`.
fn seed_password_file(dir: &Path) -> PathBuf {
    let path = dir.join("auth.txt");
    run_ok(
        "mosquitto_passwd",
        &[
            "-c",
            "-b",
            path.to_str().expect("UTF-8"),
            "rajan",
            "password123",
        ],
    );
    path
}

#[tokio::test(flavor = "multi_thread")]
async fn the_seed_publisher_with_a_mosquitto_passwd_file_is_let_in_and_a_wrong_password_is_not() {
    let node = SearchNode::shared();
    let dir = tempfile::tempdir().expect("temp dir");
    let passwords = seed_password_file(dir.path());
    let mut bridge = start(
        BridgeSpec::embedded(&node.url())
            .auth(format!("{{password_file: \"{}\"}}", passwords.display())),
    );
    let port = bridge.broker_port();
    let p = port.to_string();

    let mut sub = mosquitto_sub(
        port,
        &["-t", "test/#", "-v", "-u", "rajan", "-P", "password123"],
    );
    let output = run_ok(
        "mosquitto_pub",
        &[
            "-h",
            "127.0.0.1",
            "-p",
            &p,
            "-m",
            "test message",
            "-t",
            "test/terminal",
            "-u",
            "rajan",
            "-P",
            "password123",
            "-d",
        ],
    );
    assert!(output.contains("received CONNACK (0)"), "{output}");
    sub.wait_for(1, |l| l == "test/terminal test message");

    let (status, refused) = run(
        "mosquitto_pub",
        &[
            "-h",
            "127.0.0.1",
            "-p",
            &p,
            "-m",
            "intruder",
            "-t",
            "test/terminal",
            "-u",
            "rajan",
            "-P",
            "password124",
            "-d",
        ],
    );
    assert!(!status.success(), "{refused}");
    // 3.1.1 return code 4, "bad user name or password" (Mosquitto itself answers 5, "not
    // authorised", to a wrong password; either refuses).
    assert!(refused.contains("received CONNACK (4)"), "{refused}");
    assert!(
        refused.contains("Connection Refused: bad user name or password"),
        "{refused}"
    );
    let (status, anonymous) = run(
        "mosquitto_pub",
        &[
            "-h",
            "127.0.0.1",
            "-p",
            &p,
            "-m",
            "anon",
            "-t",
            "test/terminal",
        ],
    );
    assert!(
        !status.success(),
        "anonymous is off by default: {anonymous}"
    );

    // The refusals touched nobody else: the subscriber still sees live traffic.
    run_ok(
        "mosquitto_pub",
        &[
            "-h",
            "127.0.0.1",
            "-p",
            &p,
            "-m",
            "after",
            "-t",
            "test/terminal",
            "-u",
            "rajan",
            "-P",
            "password123",
        ],
    );
    sub.wait_for(1, |l| l == "test/terminal after");
    assert_eq!(
        sub.count(|l| l.contains("intruder") || l.contains("anon")),
        0
    );

    // seeds/004: retained, with the password; a later subscriber with it gets the message.
    let seed4 = |extra: &[&str]| -> Vec<String> {
        [
            "-h",
            "localhost",
            "-p",
            &p,
            "-u",
            "rajan",
            "-P",
            "password123",
        ]
        .iter()
        .chain(extra)
        .map(|a| a.to_string())
        .collect()
    };
    run_ok(
        "mosquitto_pub",
        &refs(&seed4(&[
            "-t",
            "greetings",
            "-m",
            "Hello World MQTT",
            "-d",
            "-r",
        ])),
    );
    let later = run_ok(
        "mosquitto_sub",
        &refs(&seed4(&["-t", "greetings", "-C", "1", "-W", "10"])),
    );
    assert_eq!(later.lines().collect::<Vec<_>>(), ["Hello World MQTT"]);
    let retained = docs(node, &messages_index(&bridge), topic_is("greetings"), 1).await;
    assert_eq!(
        messages(&retained),
        ["Hello World MQTT"],
        "{}",
        bridge.logs()
    );
    assert_eq!(retained[0]["mqtt"]["retain"], true, "{}", retained[0]);

    let found = docs(node, &messages_index(&bridge), topic_is("test/terminal"), 2).await;
    assert_eq!(
        messages(&found),
        ["after", "test message"],
        "{}",
        bridge.logs()
    );
}

// ---- JWT as the password -----------------------------------------------------------------

/// A 32-byte HS256 secret (the broker refuses shorter ones, RFC 7518 §3.2).
const JWT_SECRET: &str = "seed-003-vernemq-style-shared-secret";

/// A compact JWT made by Python's standard library (hmac, hashlib, base64, json), so the token
/// does not come from the code under test. `alg` "HS256" signs; anything else gets `signature`.
fn jwt(header: Value, claims: Value, signature: &str) -> String {
    jwt_signed_with(JWT_SECRET, header, claims, signature)
}

fn jwt_signed_with(secret: &str, header: Value, claims: Value, signature: &str) -> String {
    let (python, _) = python_publish();
    let program = r#"
import base64, hashlib, hmac, json, sys
b64 = lambda b: base64.urlsafe_b64encode(b).rstrip(b"=").decode()
header, claims, secret, signature = json.loads(sys.argv[1]), json.loads(sys.argv[2]), sys.argv[3], sys.argv[4]
signing_input = b64(json.dumps(header).encode()) + "." + b64(json.dumps(claims).encode())
if header.get("alg") == "HS256":
    signature = b64(hmac.new(secret.encode(), signing_input.encode(), hashlib.sha256).digest())
print(signing_input + "." + signature)
"#;
    let output = run_ok(
        python,
        &[
            "-c",
            program,
            &header.to_string(),
            &claims.to_string(),
            secret,
            signature,
        ],
    );
    output.trim().to_owned()
}

fn now_s() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("after 1970")
        .as_secs()
}

#[tokio::test(flavor = "multi_thread")]
async fn a_jwt_as_the_password_is_accepted_and_expired_forged_or_unsigned_tokens_are_refused() {
    let node = SearchNode::shared();
    let mut bridge = start(
        BridgeSpec::embedded(&node.url())
            .auth(format!("{{jwt: {{hs256_secret: \"{JWT_SECRET}\"}}}}")),
    );
    let p = bridge.broker_port().to_string();
    let hs256 = json!({"alg": "HS256", "typ": "JWT"});
    let publish = |token: &str, message: &str| {
        run(
            "mosquitto_pub",
            &[
                "-h",
                "127.0.0.1",
                "-p",
                &p,
                "-q",
                "1",
                "-t",
                "devices/device-7/status",
                "-m",
                message,
                "-u",
                "device-7",
                "-P",
                token,
                "-d",
            ],
        )
    };

    let valid = jwt(
        hs256.clone(),
        json!({"sub": "device-7", "exp": now_s() + 600}),
        "",
    );
    let (status, output) = publish(&valid, "valid token");
    assert!(status.success(), "{output}\n{}", bridge.logs());
    assert!(output.contains("received PUBACK"), "{output}");

    let expired = jwt(
        hs256.clone(),
        json!({"sub": "device-7", "exp": now_s() - 3600}),
        "",
    );
    let forged = jwt_signed_with(
        "another-secret-of-at-least-32-bytes!",
        hs256,
        json!({"sub": "device-7", "exp": now_s() + 600}),
        "",
    );
    let unsigned = json!({"alg": "none", "typ": "JWT"});
    let claims = json!({"sub": "device-7", "exp": now_s() + 600});
    for (what, token) in [
        ("expired", expired),
        ("signed with another secret", forged),
        (
            "alg none, no signature",
            jwt(unsigned.clone(), claims.clone(), ""),
        ),
        (
            "alg none, junk signature",
            jwt(unsigned, claims, "c2lnbmF0dXJl"),
        ),
    ] {
        let (status, output) = publish(&token, what);
        assert!(!status.success(), "{what} token accepted:\n{output}");
        assert!(output.contains("Connection Refused"), "{what}: {output}");
    }

    let found = docs(
        node,
        &messages_index(&bridge),
        topic_is("devices/device-7/status"),
        1,
    )
    .await;
    assert_eq!(messages(&found), ["valid token"], "{}", bridge.logs());
}

// ---- ACLs ------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread")]
async fn a_publish_outside_the_acl_gets_not_authorized_under_mqtt5_and_a_counted_warning_under_311()
{
    let node = SearchNode::shared();
    let dir = tempfile::tempdir().expect("temp dir");
    let passwords = seed_password_file(dir.path());
    let mut bridge = start(BridgeSpec::embedded(&node.url()).auth(format!(
        "{{password_file: \"{}\", acl: [{{user: rajan, publish: [\"sensors/rajan/#\"]}}]}}",
        passwords.display()
    )));
    let p = bridge.broker_port().to_string();
    let publish = |version: &str, topic: &str, message: &str| {
        run(
            "mosquitto_pub",
            &[
                "-h",
                "127.0.0.1",
                "-p",
                &p,
                "-V",
                version,
                "-q",
                "1",
                "-t",
                topic,
                "-m",
                message,
                "-u",
                "rajan",
                "-P",
                "password123",
                "-d",
            ],
        )
    };

    // mosquitto_pub 2.0 warns about a PUBACK reason code but still exits 0.
    let (status, denied) = publish("5", "sensors/other/t", "denied under 5");
    assert!(status.success(), "{denied}");
    assert!(
        denied.contains("received PUBACK (Mid: 1, RC:135)"),
        "0x87 not authorized expected:\n{denied}"
    );
    assert!(
        denied.contains("Warning: Publish 1 failed: Not authorized."),
        "{denied}"
    );
    let (status, allowed) = publish("5", "sensors/rajan/t", "allowed under 5");
    assert!(status.success(), "{allowed}");
    assert!(!allowed.contains("Not authorized"), "{allowed}");

    // 3.1.1 has no reason codes: the PUBACK goes out, the refusal is logged.
    let (status, denied311) = publish("311", "sensors/other/t", "denied under 311");
    assert!(status.success(), "{denied311}");
    bridge.wait_for_log("publish refused", 2, WAIT);
    let logs = bridge.logs();
    let refusals: Vec<&str> = logs
        .lines()
        .filter(|l| l.contains("publish refused"))
        .collect();
    assert!(
        refusals
            .iter()
            .all(|l| l.contains("sensors/other/t") && l.contains("NotAuthorized")),
        "{refusals:#?}"
    );
    let (status, allowed311) = publish("311", "sensors/rajan/t", "allowed under 311");
    assert!(status.success(), "{allowed311}");

    // Each denied publish was refused before its PUBACK, which mosquitto_pub waited for, so
    // once the allowed ones are stored nothing can still arrive for the denied topic.
    let index = messages_index(&bridge);
    let found = docs(node, &index, topic_is("sensors/rajan/t"), 2).await;
    assert_eq!(
        messages(&found),
        ["allowed under 311", "allowed under 5"],
        "{}",
        bridge.logs()
    );
    assert!(
        docs(node, &index, topic_is("sensors/other/t"), 0)
            .await
            .is_empty()
    );
    let dead = docs(
        node,
        &bridge.dead_letter_index(),
        json!({"match_all": {}}),
        0,
    )
    .await;
    assert!(dead.is_empty(), "a refusal is not a dead letter: {dead:?}");
}

// ---- TLS -----------------------------------------------------------------------------------

fn tls_listener(transport: &str, certs: &Certs) -> String {
    format!(
        "{{transport: {transport}, bind: \"127.0.0.1:0\", cert_file: \"{}\", key_file: \"{}\"}}",
        certs.server_cert().display(),
        certs.server_key().display()
    )
}

#[tokio::test(flavor = "multi_thread")]
async fn mosquitto_pub_over_tls_with_the_right_ca_is_stored_and_with_another_ca_fails() {
    let node = SearchNode::shared();
    let certs = Certs::generate();
    let mut bridge = start(BridgeSpec::embedded(&node.url()).listener(tls_listener("tls", &certs)));
    let tls_port = bridge.listener_address("tls").port().to_string();
    let publish = |ca: &Path, message: &str| {
        run(
            "mosquitto_pub",
            &[
                "--cafile",
                ca.to_str().expect("UTF-8"),
                "-h",
                "localhost",
                "-p",
                &tls_port,
                "-q",
                "1",
                "-t",
                "greetings/tls",
                "-m",
                message,
                "-d",
            ],
        )
    };
    let (status, output) = publish(&certs.ca(), "Hello world MQTT over TLS");
    assert!(status.success(), "{output}\n{}", bridge.logs());
    assert!(output.contains("received PUBACK"), "{output}");
    let (status, output) = publish(&certs.other_ca(), "never");
    assert!(
        !status.success(),
        "a server cert from another CA was trusted:\n{output}"
    );

    let found = docs(node, &messages_index(&bridge), topic_is("greetings/tls"), 1).await;
    assert_eq!(
        messages(&found),
        ["Hello world MQTT over TLS"],
        "{}",
        bridge.logs()
    );
}

// ---- MQTT 5 over WebSocket with MQTT.js (seeds/002) ----------------------------------------

/// `node client.mjs --url <url> <args>`; events are JSON lines.
fn mqtt_js(url: &str, args: &[&str]) -> Running {
    mqtt_js_with(url, args, &[])
}

fn mqtt_js_with(url: &str, args: &[&str], env: &[(&str, &str)]) -> Running {
    let script = node_client();
    let mut all = vec![script.to_str().expect("UTF-8"), "--url", url];
    all.extend_from_slice(args);
    Running::start_with("node", &all, env)
}

fn events(output: &str) -> Vec<Value> {
    output
        .lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .collect()
}

fn event_is(line: &str, event: &str) -> bool {
    serde_json::from_str::<Value>(line).is_ok_and(|v| v["event"] == event)
}

/// Runs MQTT.js to completion and returns its events; it must exit 0.
fn mqtt_js_ok(bridge: &Bridge, url: &str, args: &[&str]) -> Vec<Value> {
    let (status, output) = mqtt_js(url, args).finish();
    assert!(
        status.success(),
        "MQTT.js {args:?} failed:\n{output}\nmqtt2es:\n{}",
        bridge.logs()
    );
    events(&output)
}

fn connect_event(events: &[Value]) -> &Value {
    events
        .iter()
        .find(|e| e["event"] == "connect")
        .unwrap_or_else(|| panic!("no connect event in {events:?}"))
}

fn ws_url(bridge: &mut Bridge) -> String {
    format!(
        "ws://127.0.0.1:{}/mqtt",
        bridge.listener_address("ws").port()
    )
}

const WS_LISTENER: &str = "{transport: ws, bind: \"127.0.0.1:0\"}";

#[tokio::test(flavor = "multi_thread")]
async fn mqtt_js_v5_over_websocket_publishes_at_qos1_and_its_user_properties_reach_the_documents() {
    let node = SearchNode::shared();
    let mut bridge = start(BridgeSpec::embedded(&node.url()).listener(WS_LISTENER));
    let url = ws_url(&mut bridge);
    let client = unique("js-pub");

    // seeds/002's basic client: keep-alive, clean start; then client-pub at QoS 1.
    let events = mqtt_js_ok(
        &bridge,
        &url,
        &[
            "--client-id",
            &client,
            "--protocol",
            "5",
            "--publish",
            "TEST/GREETING",
            "--count",
            "3",
        ],
    );
    assert_eq!(
        connect_event(&events)["sessionPresent"],
        false,
        "{events:?}"
    );
    let pubacks: Vec<&Value> = events.iter().filter(|e| e["event"] == "puback").collect();
    assert_eq!(pubacks.len(), 3, "{events:?}");
    assert!(pubacks.iter().all(|e| e["reasonCode"] == 0), "{events:?}");

    let found = docs(node, &messages_index(&bridge), topic_is("TEST/GREETING"), 3).await;
    assert_eq!(found.len(), 3, "{}", bridge.logs());
    let mut seqs: Vec<i64> = found.iter().filter_map(|d| d["seq"].as_i64()).collect();
    seqs.sort();
    assert_eq!(seqs, [0, 1, 2], "{found:?}");
    for doc in &found {
        let properties = doc["mqtt"]["user_properties"]
            .as_array()
            .unwrap_or_else(|| panic!("no mqtt.user_properties: {doc}"));
        assert!(
            properties.contains(&json!({"key": "source", "value": "mqtt.js"})),
            "{doc}"
        );
        assert!(
            properties.contains(&json!({"key": "seq", "value": doc["seq"].to_string()})),
            "{doc}"
        );
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn an_mqtt_js_will_reaches_a_subscriber_and_the_index_when_the_device_drops_off() {
    let node = SearchNode::shared();
    let mut bridge = start(BridgeSpec::embedded(&node.url()).listener(WS_LISTENER));
    let url = ws_url(&mut bridge);

    let mut watcher = mqtt_js(
        &url,
        &[
            "--client-id",
            &unique("watch"),
            "--subscribe",
            "TEST/GREETING/#",
            "--expect",
            "1",
        ],
    );
    watcher.wait_for(1, |l| event_is(l, "suback"));
    // seeds/002's client-will-msg, without the delay: the device's socket drops.
    let device = unique("device");
    let events = mqtt_js_ok(
        &bridge,
        &url,
        &[
            "--client-id",
            &device,
            "--will-topic",
            "TEST/GREETING/WILL",
            "--will-payload",
            "The Will message",
            "--end",
            "abrupt",
        ],
    );
    assert!(events.iter().any(|e| e["event"] == "end"), "{events:?}");
    let (status, output) = watcher.finish();
    assert!(status.success(), "{output}\nmqtt2es:\n{}", bridge.logs());
    let will = events_of(&output, "message");
    assert_eq!(will.len(), 1, "{output}");
    assert_eq!(will[0]["topic"], "TEST/GREETING/WILL");
    assert_eq!(will[0]["payload"], "The Will message");

    let found = docs(
        node,
        &messages_index(&bridge),
        topic_is("TEST/GREETING/WILL"),
        1,
    )
    .await;
    assert_eq!(messages(&found), ["The Will message"], "{}", bridge.logs());
}

fn events_of(output: &str, event: &str) -> Vec<Value> {
    events(output)
        .into_iter()
        .filter(|e| e["event"] == event)
        .collect()
}

/// Long enough for node to start and reconnect on a loaded machine; short enough to wait for.
const WILL_DELAY_S: &str = "5";

#[tokio::test(flavor = "multi_thread")]
async fn a_delayed_will_is_not_published_when_the_device_reconnects_within_the_delay() {
    let node = SearchNode::shared();
    let mut bridge = start(BridgeSpec::embedded(&node.url()).listener(WS_LISTENER));
    let url = ws_url(&mut bridge);

    let mut watcher = mqtt_js(
        &url,
        &[
            "--client-id",
            &unique("watch"),
            "--subscribe",
            "wills/#",
            "--expect",
            "1",
        ],
    );
    watcher.wait_for(1, |l| event_is(l, "suback"));

    // A will delay only outlives the connection with a session to outlive it (MQTT 5 §3.1.3.2.2:
    // the will goes at the delay or at session end, whichever is first): session expiry 300.
    let will = |id: &str, payload: &str| {
        mqtt_js_ok(
            &bridge,
            &url,
            &[
                "--client-id",
                id,
                "--no-clean",
                "--session-expiry",
                "300",
                "--will-topic",
                &format!("wills/{id}"),
                "--will-payload",
                payload,
                "--will-delay",
                WILL_DELAY_S,
                "--end",
                "abrupt",
            ],
        )
    };
    let returning = unique("returning");
    will(&returning, "returning went offline");
    let dropped = Instant::now();
    // It comes back within the delay and leaves cleanly (as seed 002's basic client would).
    let back = mqtt_js_ok(
        &bridge,
        &url,
        &[
            "--client-id",
            &returning,
            "--no-clean",
            "--session-expiry",
            "300",
        ],
    );
    assert_eq!(connect_event(&back)["sessionPresent"], true, "{back:?}");
    let away = dropped.elapsed();
    assert!(
        away < Duration::from_secs(WILL_DELAY_S.parse().expect("a number")),
        "the machine is too slow for this test: the device was away {away:?}"
    );

    // The control: the same will delay on a device that stays away, dropped after the first.
    // Its will arriving means the first one's delay has passed too.
    let gone = unique("gone");
    will(&gone, "gone went offline");
    let (status, output) = watcher.finish();
    assert!(status.success(), "{output}\nmqtt2es:\n{}", bridge.logs());
    let wills = events_of(&output, "message");
    assert_eq!(
        wills
            .iter()
            .map(|m| m["payload"].clone())
            .collect::<Vec<_>>(),
        ["gone went offline"],
        "{output}\n{}",
        bridge.logs()
    );
    let found = docs(
        node,
        &messages_index(&bridge),
        json!({"prefix": {"mqtt.topic": "wills/"}}),
        1,
    )
    .await;
    assert_eq!(messages(&found), ["gone went offline"], "{}", bridge.logs());
}

#[tokio::test(flavor = "multi_thread")]
async fn an_mqtt_js_session_with_expiry_gets_what_it_missed_and_one_without_expiry_is_gone() {
    let node = SearchNode::shared();
    let mut bridge = start(BridgeSpec::embedded(&node.url()).listener(WS_LISTENER));
    let url = ws_url(&mut bridge);
    let kept = unique("kept");
    let gone = unique("gone");

    for (id, expiry) in [(&kept, "300"), (&gone, "0")] {
        let events = mqtt_js_ok(
            &bridge,
            &url,
            &[
                "--client-id",
                id,
                "--no-clean",
                "--session-expiry",
                expiry,
                "--subscribe",
                "TEST/GREETING/#",
            ],
        );
        assert!(events.iter().any(|e| e["event"] == "suback"), "{events:?}");
    }
    // Both are away now; a QoS 1 message comes.
    let events = mqtt_js_ok(
        &bridge,
        &url,
        &[
            "--client-id",
            &unique("pub"),
            "--publish",
            "TEST/GREETING/missed",
            "--payload",
            "Willkommen",
        ],
    );
    assert_eq!(events_of_vec(&events, "puback").len(), 1, "{events:?}");

    let back = mqtt_js_ok(
        &bridge,
        &url,
        &[
            "--client-id",
            &kept,
            "--no-clean",
            "--session-expiry",
            "300",
            "--expect",
            "1",
        ],
    );
    assert_eq!(connect_event(&back)["sessionPresent"], true, "{back:?}");
    let received = events_of_vec(&back, "message");
    assert_eq!(received.len(), 1, "{back:?}");
    assert_eq!(received[0]["topic"], "TEST/GREETING/missed");
    assert_eq!(received[0]["payload"], "Willkommen");

    let back = mqtt_js_ok(
        &bridge,
        &url,
        &["--client-id", &gone, "--no-clean", "--session-expiry", "0"],
    );
    assert_eq!(connect_event(&back)["sessionPresent"], false, "{back:?}");

    let found = docs(
        node,
        &messages_index(&bridge),
        topic_is("TEST/GREETING/missed"),
        1,
    )
    .await;
    assert_eq!(messages(&found), ["Willkommen"], "{}", bridge.logs());
}

fn events_of_vec<'a>(events: &'a [Value], event: &str) -> Vec<&'a Value> {
    events.iter().filter(|e| e["event"] == event).collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn mqtt_js_v5_over_secure_websocket_is_stored() {
    let node = SearchNode::shared();
    let certs = Certs::generate();
    let mut bridge = start(BridgeSpec::embedded(&node.url()).listener(tls_listener("wss", &certs)));
    let url = format!(
        "wss://localhost:{}/mqtt",
        bridge.listener_address("wss").port()
    );
    let ca = certs.ca();
    let (status, output) = mqtt_js_with(
        &url,
        &[
            "--client-id",
            &unique("wss"),
            "--publish",
            "TEST/GREETING/wss",
            "--payload",
            "over wss",
        ],
        &[("NODE_EXTRA_CA_CERTS", ca.to_str().expect("UTF-8"))],
    )
    .finish();
    assert!(status.success(), "{output}\n{}", bridge.logs());
    assert_eq!(events_of(&output, "puback").len(), 1, "{output}");

    let found = docs(
        node,
        &messages_index(&bridge),
        topic_is("TEST/GREETING/wss"),
        1,
    )
    .await;
    assert_eq!(messages(&found), ["over wss"], "{}", bridge.logs());
}

// ---- a Python paho device across a SIGKILL of mqtt2es -------------------------------------

/// paho-mqtt's default window: at most this many publishes unacknowledged at once.
const PAHO_MAX_INFLIGHT: usize = 20;

#[tokio::test(flavor = "multi_thread")]
async fn a_python_paho_device_at_qos_2_with_a_persistent_session_loses_and_duplicates_nothing_across_a_sigkill()
 {
    let stored = paho_device_across_a_sigkill(2).await;
    assert_eq!(stored.distinct, READINGS_ACROSS_KILL, "{}", stored.evidence);
    assert_eq!(
        stored.documents, READINGS_ACROSS_KILL,
        "documents (a duplicate would be more)\n{}",
        stored.evidence
    );
}

/// At QoS 1 MQTT cannot tell a resend whose PUBACK the kill cut off from a new message on a
/// reused packet id (see README, "What survives which crash"): each such resend may be stored
/// once more, and only those: at most the device's window of unacknowledged publishes.
#[tokio::test(flavor = "multi_thread")]
async fn a_python_paho_device_at_qos_1_with_a_persistent_session_loses_nothing_across_a_sigkill_and_duplicates_at_most_its_window()
 {
    let stored = paho_device_across_a_sigkill(1).await;
    assert_eq!(stored.distinct, READINGS_ACROSS_KILL, "{}", stored.evidence);
    assert!(
        stored.documents <= READINGS_ACROSS_KILL + PAHO_MAX_INFLIGHT,
        "{} documents for {READINGS_ACROSS_KILL} readings\n{}",
        stored.documents,
        stored.evidence
    );
}

const READINGS_ACROSS_KILL: usize = 300;

/// What a device's readings became in the index.
struct Stored {
    /// Distinct readings (by the `seq` the device put in each).
    distinct: usize,
    /// Documents in the index for the device's topic.
    documents: usize,
    /// The device's packet log and mqtt2es's logs, for a failure message.
    evidence: String,
}

/// A paho-mqtt device with a persistent session publishes `READINGS_ACROSS_KILL` readings at
/// `qos`; mqtt2es is SIGKILLed mid-stream and restarted on the same address; the device
/// reconnects into its session, resends what was never acknowledged, and finishes.
async fn paho_device_across_a_sigkill(qos: u8) -> Stored {
    let node = SearchNode::shared();
    // The device reconnects to the address it knows, so the restart must bind the same port.
    let address = format!("127.0.0.1:{}", free_port());
    let mut bridge = start(BridgeSpec::embedded(&node.url()).bind(&address));
    let port = bridge.broker_port().to_string();
    let (python, script) = python_publish();
    let topic = format!("devices/{}/readings", unique("pi"));
    let count = READINGS_ACROSS_KILL.to_string();
    let qos_arg = qos.to_string();

    let mut device = Running::start(
        &python,
        &[
            script.to_str().expect("UTF-8"),
            "-h",
            "127.0.0.1",
            "-p",
            &port,
            "-t",
            &topic,
            "-q",
            &qos_arg,
            "-c",
            "-i",
            &unique("fixed-id"),
            "-n",
            &count,
            "-d",
        ],
    );
    device.wait_for(1, |l| l.contains("session_present=False"));
    // Mid-stream: some readings acknowledged, most not yet.
    device.wait_for(30, |l| l.starts_with("acked: "));
    bridge.kill();
    let acked_before = device.count(|l| l.starts_with("acked: "));
    assert!(
        acked_before < READINGS_ACROSS_KILL,
        "the stream ended before the kill"
    );
    bridge.restart();
    bridge.wait_for_log("listening transport=tcp ", 2, WAIT);

    let before_reconnect = device.count(|_| true);
    device.wait_for(1, |l| l.contains("session_present=True"));
    device.wait_for(1, |l| l == "published");
    let (status, output) = device.finish();
    assert!(status.success(), "{output}");
    // What the dead mqtt2es never acknowledged, paho sent again: a publish flagged as a
    // duplicate, or at QoS 2 the PUBREL of one whose PUBREC had arrived.
    let resent = output
        .lines()
        .skip(before_reconnect)
        .filter(|l| l.starts_with("Sending PUBLISH (d1") || l.starts_with("Sending PUBREL"))
        .count();
    assert!(resent > 0, "no resend after the reconnect:\n{output}");

    let index = messages_index(&bridge);
    let found = docs(node, &index, topic_is(&topic), READINGS_ACROSS_KILL).await;
    let mut seqs: Vec<i64> = found.iter().filter_map(|d| d["seq"].as_i64()).collect();
    seqs.sort();
    seqs.dedup();
    let total = node
        .request(
            reqwest::Method::POST,
            &format!("/{index}/_count"),
            Some(json!({"query": topic_is(&topic)})),
        )
        .await;
    let documents = total["count"].as_u64().expect("a count") as usize;
    Stored {
        distinct: seqs.len(),
        documents,
        evidence: format!("{output}\n{}", bridge.logs()),
    }
}
