//! Publishing with the real `mosquitto_pub`, counting what the broker really acknowledged.

use std::io::Write;
use std::process::{Command, Stdio};

/// `mosquitto_pub` against the broker on `port` at `qos`, every stream piped.
fn mosquitto_pub(port: u16, qos: u8) -> Command {
    let mut command = Command::new("mosquitto_pub");
    command
        .args([
            "-h",
            "127.0.0.1",
            "-p",
            &port.to_string(),
            "-q",
            &qos.to_string(),
        ])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    command
}

/// Publishes one message and waits for mosquitto_pub to finish; panics if it fails.
pub fn publish(port: u16, topic: &str, qos: u8, payload: &[u8]) {
    publish_with(port, &[], topic, qos, payload);
}

/// Like `publish`, with extra `mosquitto_pub` arguments: `["-V", "mqttv5"]`, `["-u", user, "-P",
/// password]`, `["-D", "publish", "user-property", "site", "lab"]`.
pub fn publish_with(port: u16, extra_args: &[&str], topic: &str, qos: u8, payload: &[u8]) {
    let mut child = mosquitto_pub(port, qos)
        .args(extra_args)
        .args(["-t", topic, "-s"])
        .spawn()
        .expect("start mosquitto_pub");
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(payload)
        .expect("write payload");
    let output = child.wait_with_output().expect("mosquitto_pub");
    assert!(
        output.status.success(),
        "mosquitto_pub -t {topic:?} failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
}

/// Publishes each line as one QoS 1 message with `mosquitto_pub -l -q 1 -d` and returns how many
/// PUBACKs it received: Debian's mosquitto_pub 2.0.11 can exit before its queue drains on long
/// inputs, so only what the broker acknowledged counts as sent.
pub fn publish_lines_qos1(port: u16, topic: &str, lines: &[String]) -> usize {
    let mut child = mosquitto_pub(port, 1)
        .args(["-d", "-l", "-t", topic])
        .spawn()
        .expect("start mosquitto_pub");
    // Written from a thread of its own while this one reads: with `-d`, mosquitto_pub writes a
    // line per packet to stdout, and a pipe left unread fills (64 KiB), stalls mosquitto_pub,
    // and then stalls this writer too (a deadlock once seen as a test that never ended).
    let mut stdin = child.stdin.take().expect("stdin");
    let lines = lines.to_vec();
    let writer = std::thread::spawn(move || {
        for line in lines {
            writeln!(stdin, "{line}").expect("write a line");
        }
    });
    let output = child.wait_with_output().expect("mosquitto_pub");
    writer.join().expect("the stdin writer");
    String::from_utf8_lossy(&output.stdout)
        .matches("received PUBACK")
        .count()
}

/// `count` readings for `device`, each with a distinct `seq`, as JSON lines.
pub fn readings(device: &str, first_seq: usize, count: usize) -> Vec<String> {
    (first_seq..first_seq + count)
        .map(|seq| {
            format!(
                r#"{{"device_id":"{device}","seq":{seq},"temp_c":{:.1},"humidity":{:.1},"battery":0.9}}"#,
                15.0 + (seq % 100) as f64 / 10.0,
                40.0 + (seq % 50) as f64 / 5.0
            )
        })
        .collect()
}

/// One device's share of a parallel load: its topic and its readings.
pub struct DeviceLoad {
    pub topic: String,
    pub lines: Vec<String>,
}

/// Publishes every device's readings at once, one `mosquitto_pub -l -q 1` per device, and
/// returns the PUBACKs they received in all.
pub fn publish_in_parallel(loads: Vec<DeviceLoad>, port: u16) -> usize {
    let publishers: Vec<_> = loads
        .into_iter()
        .map(|load| std::thread::spawn(move || publish_lines_qos1(port, &load.topic, &load.lines)))
        .collect();
    publishers
        .into_iter()
        .map(|p| p.join().expect("publisher thread"))
        .sum()
}

/// `count` devices `pi-<n>` at `site`, each publishing `per_device` readings whose `seq` starts
/// at `n * seq_stride` (a stride of `per_device` or more makes every `seq` unique).
pub fn devices_at(
    site: &str,
    count: usize,
    per_device: usize,
    seq_stride: usize,
) -> Vec<DeviceLoad> {
    (0..count)
        .map(|n| {
            let device = format!("pi-{n}");
            DeviceLoad {
                topic: format!("sensors/{site}/{device}/telemetry"),
                lines: readings(&device, n * seq_stride, per_device),
            }
        })
        .collect()
}
