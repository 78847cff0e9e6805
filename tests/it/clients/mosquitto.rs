//! Mosquitto's own clients (`mosquitto_pub`, `mosquitto_sub`, `mosquitto_passwd`) with the
//! seeds' command lines against the embedded broker, and the ways in they exercise: a password
//! file, a JWT as the password, ACLs, TLS. Seed 001's test publishes the same line with the Go
//! and Python clients too, for one subscriber to see all three.

use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

use serde_json::{Value, json};

use crate::support::SearchNode;
use crate::support::bridge::BridgeSpec;
use crate::support::certs::Certs;
use crate::support::program::{WAIT, run_ok};
use crate::support::publish::Publisher;
use crate::support::subscriber::Subscriber;

use super::{docs, go_client, messages, python_publish, start, tls_listener, topic_is};

// ---- seeds/001: mosquitto_sub sees what three publishers send ----------------------------

#[tokio::test(flavor = "multi_thread")]
async fn mosquitto_sub_sees_hello_world_from_mosquitto_pub_go_and_python_and_each_is_stored() {
    let node = SearchNode::shared();
    let mut bridge = start(BridgeSpec::embedded(&node.url()));
    let port = bridge.broker_port();
    let p = port.to_string();
    let (python, script) = python_publish();
    let script = script.to_str().expect("a UTF-8 path");

    let sub = Subscriber::to(port, "test/topic").start();
    let seed = ["-t", "test/topic", "-m", "Hello world!"];
    Publisher::to(port).send("test/topic", "Hello world!");
    run_ok(
        go_client("mqtt-publish"),
        &[&["-h", "127.0.0.1", "-p", &p][..], &seed].concat(),
    );
    run_ok(
        &python,
        &[&[script, "-h", "127.0.0.1", "-p", &p][..], &seed].concat(),
    );
    sub.wait_for(3, |m| m.payload == "Hello world!");

    // Three identical messages are three documents: each is its own reading. Each client's
    // own line besides proves whose was stored.
    Publisher::to(port).send("test/topic", "Hello world! from mosquitto_pub");
    for (program, name) in [
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
    sub.wait_for(1, |m| m.payload == "Hello world! from python");
    let found = docs(node, &bridge.messages_index(), topic_is("test/topic"), 6).await;
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
            .broker_auth(format!("{{password_file: \"{}\"}}", passwords.display())),
    );
    let port = bridge.broker_port();

    let sub = Subscriber::to(port, "test/#")
        .credentials("rajan", "password123")
        .start();
    let rajan = Publisher::to(port).credentials("rajan", "password123");
    let output = rajan.send("test/terminal", "test message").log;
    assert!(output.contains("received CONNACK (0)"), "{output}");
    sub.wait_for(1, |m| m.verbose() == "test/terminal test message");

    let refused = Publisher::to(port)
        .credentials("rajan", "password124")
        .try_send("test/terminal", "intruder");
    let shown = refused.output();
    assert!(!refused.status.success(), "{shown}");
    // 3.1.1 return code 4, "bad user name or password" (Mosquitto itself answers 5, "not
    // authorised", to a wrong password; either refuses).
    assert!(shown.contains("received CONNACK (4)"), "{shown}");
    assert!(
        shown.contains("Connection Refused: bad user name or password"),
        "{shown}"
    );
    let anonymous = Publisher::to(port).try_send("test/terminal", "anon");
    assert!(
        !anonymous.status.success(),
        "anonymous is off by default: {}",
        anonymous.output()
    );

    // The refusals touched nobody else: the subscriber still sees live traffic.
    rajan.send("test/terminal", "after");
    let got = sub.wait_for(1, |m| m.verbose() == "test/terminal after");
    let intruders = got
        .iter()
        .filter(|m| m.verbose().contains("intruder") || m.verbose().contains("anon"));
    assert_eq!(intruders.count(), 0, "{got:?}");

    // seeds/004: retained, with the password; a later subscriber with it gets the message.
    let seed4 = Publisher::to(port)
        .host("localhost")
        .credentials("rajan", "password123");
    seed4.retain().send("greetings", "Hello World MQTT");
    let later = Subscriber::to(port, "greetings")
        .host("localhost")
        .credentials("rajan", "password123")
        .count(1)
        .start()
        .finish();
    let payloads: Vec<&str> = later.iter().map(|m| m.payload.as_str()).collect();
    assert_eq!(payloads, ["Hello World MQTT"]);
    let retained = docs(node, &bridge.messages_index(), topic_is("greetings"), 1).await;
    assert_eq!(
        messages(&retained),
        ["Hello World MQTT"],
        "{}",
        bridge.logs()
    );
    assert_eq!(retained[0]["mqtt"]["retain"], true, "{}", retained[0]);

    let found = docs(node, &bridge.messages_index(), topic_is("test/terminal"), 2).await;
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
            .broker_auth(format!("{{jwt: {{hs256_secret: \"{JWT_SECRET}\"}}}}")),
    );
    let port = bridge.broker_port();
    let hs256 = json!({"alg": "HS256", "typ": "JWT"});
    let publish = |token: &str, message: &str| {
        Publisher::to(port)
            .qos(1)
            .credentials("device-7", token)
            .try_send("devices/device-7/status", message)
    };

    let valid = jwt(
        hs256.clone(),
        json!({"sub": "device-7", "exp": now_s() + 600}),
        "",
    );
    let published = publish(&valid, "valid token");
    let output = published.output();
    assert!(published.status.success(), "{output}\n{}", bridge.logs());
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
        let published = publish(&token, what);
        let output = published.output();
        assert!(
            !published.status.success(),
            "{what} token accepted:\n{output}"
        );
        assert!(output.contains("Connection Refused"), "{what}: {output}");
    }

    let found = docs(
        node,
        &bridge.messages_index(),
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
    let mut bridge = start(BridgeSpec::embedded(&node.url()).broker_auth(format!(
        "{{password_file: \"{}\", acl: [{{user: rajan, publish: [\"sensors/rajan/#\"]}}]}}",
        passwords.display()
    )));
    let port = bridge.broker_port();
    let publish = |version: &str, topic: &str, message: &str| {
        let published = Publisher::to(port)
            .version(version)
            .qos(1)
            .credentials("rajan", "password123")
            .try_send(topic, message);
        (published.status, published.output())
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
    let index = bridge.messages_index();
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

#[tokio::test(flavor = "multi_thread")]
async fn mosquitto_pub_over_tls_with_the_right_ca_is_stored_and_with_another_ca_fails() {
    let node = SearchNode::shared();
    let certs = Certs::generate();
    let mut bridge = start(BridgeSpec::embedded(&node.url()).listener(tls_listener("tls", &certs)));
    let tls_port = bridge.listener_address("tls").port();
    let publish = |ca: &Path, message: &str| {
        let published = Publisher::to(tls_port)
            .host("localhost")
            .cafile(ca)
            .qos(1)
            .try_send("greetings/tls", message);
        (published.status, published.output())
    };
    let (status, output) = publish(&certs.ca(), "Hello world MQTT over TLS");
    assert!(status.success(), "{output}\n{}", bridge.logs());
    assert!(output.contains("received PUBACK"), "{output}");
    let (status, output) = publish(&certs.other_ca(), "never");
    assert!(
        !status.success(),
        "a server cert from another CA was trusted:\n{output}"
    );

    let found = docs(node, &bridge.messages_index(), topic_is("greetings/tls"), 1).await;
    assert_eq!(
        messages(&found),
        ["Hello world MQTT over TLS"],
        "{}",
        bridge.logs()
    );
}
