//! Python in the tests: the interpreter with paho-mqtt that scripts/test installs, and a paho
//! device (tests/clients/python/mqtt_publish.py) publishing numbered readings.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

/// The Python of the tests' Python programs (the thermometer, the paho devices), with
/// paho-mqtt: `MQTT2ES_TEST_PYTHON`.
pub fn python() -> PathBuf {
    let python = std::env::var_os("MQTT2ES_TEST_PYTHON").unwrap_or_else(|| {
        panic!(
            "MQTT2ES_TEST_PYTHON is not set: it must name a python3 that has paho-mqtt 2.x and \
             pytest, e.g. `python3 -m venv /tmp/venv && /tmp/venv/bin/pip install 'paho-mqtt>=2,<3' \
             pytest` then MQTT2ES_TEST_PYTHON=/tmp/venv/bin/python (scripts/test sets it)"
        )
    });
    PathBuf::from(python)
}

/// The seed's paho publish script, tests/clients/python/mqtt_publish.py.
pub fn publish_script() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/clients/python/mqtt_publish.py")
}

/// A Python paho-mqtt device (tests/clients/python/mqtt_publish.py) publishing numbered
/// readings with a persistent session; killed on drop.
pub struct PahoDevice {
    child: Option<std::process::Child>,
    /// What it prints, drained as it comes: a full pipe would stop paho's network thread
    /// (it prints from its callbacks) and the device would fall silent for our harness's sake.
    output: Vec<std::thread::JoinHandle<String>>,
}

impl PahoDevice {
    /// A device with keep-alive 30 s that publishes `count` readings `interval_s` apart.
    pub fn start_at(port: u16, device: &str, count: usize, interval_s: f64) -> Self {
        Self::spawn(port, device, count, interval_s, 30, 120)
    }

    pub fn start(port: u16, device: &str, count: usize, keepalive_s: u64, timeout_s: u64) -> Self {
        Self::spawn(port, device, count, 0.25, keepalive_s, timeout_s)
    }

    fn spawn(
        port: u16,
        device: &str,
        count: usize,
        interval_s: f64,
        keepalive_s: u64,
        timeout_s: u64,
    ) -> Self {
        Self::spawn_at_qos(port, device, 1, count, interval_s, keepalive_s, timeout_s)
    }

    /// A device publishing at `qos` a reading every 0.25 s (at QoS 0 it waits for nothing).
    pub fn start_at_qos(
        port: u16,
        device: &str,
        qos: u8,
        count: usize,
        keepalive_s: u64,
        timeout_s: u64,
    ) -> Self {
        Self::spawn_at_qos(port, device, qos, count, 0.25, keepalive_s, timeout_s)
    }

    fn spawn_at_qos(
        port: u16,
        device: &str,
        qos: u8,
        count: usize,
        interval_s: f64,
        keepalive_s: u64,
        timeout_s: u64,
    ) -> Self {
        let child = Command::new(python())
            .arg(publish_script())
            .args(["-h", "127.0.0.1", "-p", &port.to_string()])
            .args(["-q", &qos.to_string(), "-c", "-d"])
            .args([
                "-i",
                device,
                "-t",
                &format!("sensors/lab/{device}/telemetry"),
            ])
            .args([
                "-n",
                &count.to_string(),
                "--interval",
                &interval_s.to_string(),
            ])
            .args(["--keepalive", &keepalive_s.to_string()])
            .args(["--timeout", &timeout_s.to_string()])
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start the Python paho device");
        let mut child = child;
        let drain = |mut from: Box<dyn std::io::Read + Send>| {
            std::thread::spawn(move || {
                let mut text = Vec::new();
                let _ = from.read_to_end(&mut text);
                String::from_utf8_lossy(&text).into_owned()
            })
        };
        let output = vec![
            drain(Box::new(child.stdout.take().expect("stdout"))),
            drain(Box::new(child.stderr.take().expect("stderr"))),
        ];
        PahoDevice {
            child: Some(child),
            output,
        }
    }

    /// Waits for the device to finish (every reading acknowledged); returns what it printed.
    pub fn finish(mut self) -> String {
        let mut child = self.child.take().expect("running");
        let status = child.wait().expect("the device ends");
        let text: String = std::mem::take(&mut self.output)
            .into_iter()
            .map(|reader| reader.join().unwrap_or_default())
            .collect();
        assert!(status.success(), "the device failed:\n{text}");
        text
    }
}

impl Drop for PahoDevice {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}
