//! A real `mosquitto_sub` that keeps what it receives, for tests of what devices publish.
//!
//! A reader thread collects the lines as they come, so a test can poll for a condition with a
//! deadline while the subscriber keeps running (through a broker restart, for instance).

use std::io::{BufRead, BufReader};
use std::process::{Child, Stdio};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use super::{Mosquitto, process};

/// One message as `mosquitto_sub -F '%t %r %p'` prints it.
#[derive(Debug, Clone, PartialEq)]
pub struct Received {
    pub topic: String,
    /// Whether the broker delivered it from its retained store (true only for messages that
    /// were retained before this subscription was made).
    pub retained: bool,
    pub payload: String,
}

impl Received {
    /// The payload as JSON; panics with the message if it is not.
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_str(&self.payload)
            .unwrap_or_else(|e| panic!("payload on {} is not JSON ({e}): {self:?}", self.topic))
    }
}

pub struct Subscriber {
    child: Child,
    lines: Arc<Mutex<Vec<String>>>,
}

impl Subscriber {
    /// Subscribes to `filter` at QoS 1 and returns once the broker granted it, so anything
    /// published afterwards reaches it. `extra` goes to mosquitto_sub, e.g. `["-c", "-i", id]`
    /// for a persistent session that survives a broker restart.
    pub fn start(broker: &Mosquitto, filter: &str, extra: &[&str]) -> Subscriber {
        Subscriber::start_at(broker.host(), broker.port(), filter, extra)
    }

    /// Like `start`, against the broker at `host` and `port` (mqtt2es's embedded one).
    pub fn start_at(host: &str, port: u16, filter: &str, extra: &[&str]) -> Subscriber {
        let mut command = process::command("stdbuf", None);
        // stdbuf: mosquitto_sub buffers its stdout in a pipe until it exits.
        command
            .args(["-oL", "mosquitto_sub", "-h", host])
            .args(["-p", &port.to_string(), "-q", "1", "-d"])
            .args(["-F", "%t %r %p", "-t", filter])
            .args(extra)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::null());
        let mut child = process::spawn(command)
            .expect("start mosquitto_sub (Debian package mosquitto-clients)");
        let stdout = child.stdout.take().expect("piped stdout");
        let lines = Arc::new(Mutex::new(Vec::new()));
        let sink = Arc::clone(&lines);
        // Ends when mosquitto_sub's stdout closes, i.e. when it exits or is killed on drop.
        thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                sink.lock().unwrap_or_else(|e| e.into_inner()).push(line);
            }
        });
        let subscriber = Subscriber { child, lines };
        let deadline = Instant::now() + Duration::from_secs(10);
        while !subscriber
            .raw()
            .iter()
            .any(|l| l.contains("received SUBACK"))
        {
            assert!(
                Instant::now() < deadline,
                "mosquitto_sub got no SUBACK within 10 s: {:?}",
                subscriber.raw()
            );
            thread::sleep(Duration::from_millis(10));
        }
        subscriber
    }

    fn raw(&self) -> Vec<String> {
        self.lines.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// Every message so far, in arrival order (mosquitto_sub's `-d` lines left out).
    pub fn messages(&self) -> Vec<Received> {
        self.raw()
            .iter()
            .filter(|line| !line.starts_with("Client ") && !line.starts_with("Subscribed"))
            .filter_map(|line| {
                let (topic, rest) = line.split_once(' ')?;
                let (retain, payload) = rest.split_once(' ')?;
                Some(Received {
                    topic: topic.to_owned(),
                    retained: retain == "1",
                    payload: payload.to_owned(),
                })
            })
            .collect()
    }

    /// Polls until `done` holds for the messages so far; panics with `what` and everything
    /// received when `timeout` passes first.
    pub fn wait_until(
        &self,
        what: &str,
        timeout: Duration,
        done: impl Fn(&[Received]) -> bool,
    ) -> Vec<Received> {
        let deadline = Instant::now() + timeout;
        loop {
            let messages = self.messages();
            if done(&messages) {
                return messages;
            }
            assert!(
                Instant::now() < deadline,
                "mosquitto_sub did not see {what} within {timeout:?}; it saw {messages:#?}"
            );
            thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Subscriber {
    fn drop(&mut self) {
        process::kill_group(&mut self.child);
    }
}

/// The message retained on `topic` right now, as a new subscriber sees it; panics when none
/// arrives within 10 s.
pub fn retained(broker: &Mosquitto, topic: &str) -> Received {
    let subscriber = Subscriber::start(broker, topic, &[]);
    let what = format!("a retained message on {topic}");
    let messages = subscriber.wait_until(&what, Duration::from_secs(10), |messages| {
        messages.iter().any(|m| m.retained)
    });
    messages
        .into_iter()
        .find(|m| m.retained)
        .expect("wait_until returned once a retained message was there")
}
