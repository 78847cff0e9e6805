//! The one `mosquitto_sub` of the tests: a real subscriber that keeps what it receives.
//!
//! Every test that subscribes with Mosquitto's client goes through `Subscription` (what to run:
//! filter, QoS, session, credentials, any other option) and gets a `Subscriber` (what it received so far).
//! Messages are printed as `%t %r %p` (topic, retain flag, payload) and the `-d` packet log
//! beside them, so a test can wait for the SUBACK and tell retained messages from live ones
//! without parsing `-v` output. Its output is collected as it comes (`program::Running`), so a
//! test polls for a condition with a deadline while it keeps running (through a broker restart,
//! for instance).

use std::time::{Duration, Instant};

use super::Mosquitto;
use super::program::{Running, WAIT};

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

    /// `topic payload`, the line `mosquitto_sub -v` prints.
    pub fn verbose(&self) -> String {
        format!("{} {}", self.topic, self.payload)
    }
}

/// What to run: `mosquitto_sub -d -F '%t %r %p' -h <host> -p <port> -t <filter>` and the
/// options set here. Start it with `start` (returns once subscribed), `spawn` or `leave`.
#[derive(Debug, Clone)]
pub struct Subscription {
    host: String,
    port: u16,
    filter: String,
    args: Vec<String>,
}

impl Subscription {
    /// The broker's host name as the client gives it (`localhost` for a certificate's name).
    pub fn host(mut self, host: &str) -> Self {
        self.host = host.to_owned();
        self
    }

    /// The subscription's QoS (`-q`); mosquitto_sub's default is 0.
    pub fn qos(self, qos: u8) -> Self {
        self.args(&["-q", &qos.to_string()])
    }

    /// A persistent session (`-c`) under `client_id`, which survives a disconnect.
    pub fn persistent(self, client_id: &str) -> Self {
        self.args(&["-c", "-i", client_id])
    }

    /// MQTT 5 (`-V mqttv5`); 3.1.1 otherwise.
    pub fn v5(self) -> Self {
        self.args(&["-V", "mqttv5"])
    }

    /// A user name and password (`-u`, `-P`).
    pub fn credentials(self, user: &str, password: &str) -> Self {
        self.args(&["-u", user, "-P", password])
    }

    /// Exits after `count` messages (`-C`); `finish` then returns them.
    pub fn count(self, count: usize) -> Self {
        self.args(&["-C", &count.to_string()])
    }

    /// Any other mosquitto_sub options, e.g. a will (`--will-topic`, `--will-payload`).
    pub fn args(mut self, args: &[&str]) -> Self {
        self.args.extend(args.iter().map(|a| a.to_string()));
        self
    }

    /// Starts it and returns once the broker granted the subscription (its SUBACK), so
    /// anything published afterwards reaches it.
    pub fn start(self) -> Subscriber {
        let mut subscriber = self.spawn();
        subscriber
            .running
            .wait_for(1, |line| line.contains("received SUBACK"));
        subscriber
    }

    /// Starts it without waiting for anything: a resumed session may deliver before the
    /// SUBACK, and `count(1)` may then end it before one.
    pub fn spawn(self) -> Subscriber {
        let port = self.port.to_string();
        // stdbuf: mosquitto_sub buffers its stdout in a pipe until it exits.
        let mut all = vec!["-oL", "mosquitto_sub", "-d", "-F", "%t %r %p"];
        all.extend(["-h", &self.host, "-p", &port, "-t", &self.filter]);
        all.extend(self.args.iter().map(String::as_str));
        Subscriber {
            running: Running::start("stdbuf", &all),
        }
    }

    /// Subscribes and leaves at once (`-E`: exit once subscribed, with a DISCONNECT); with
    /// `persistent`, the session stays behind and collects what comes for it.
    pub fn leave(self) {
        let messages = self.args(&["-E"]).spawn().finish();
        assert!(messages.is_empty(), "{messages:?}");
    }
}

/// A running `mosquitto_sub` and what it received so far.
pub struct Subscriber {
    running: Running,
}

impl Subscriber {
    /// A subscription to `filter` on the Mosquitto `broker`.
    pub fn on(broker: &Mosquitto, filter: &str) -> Subscription {
        Subscriber::to(broker.port(), filter).host(broker.host())
    }

    /// A subscription to `filter` on the broker at 127.0.0.1:`port` (mqtt2es's embedded one).
    pub fn to(port: u16, filter: &str) -> Subscription {
        Subscription {
            host: "127.0.0.1".to_owned(),
            port,
            filter: filter.to_owned(),
            args: Vec::new(),
        }
    }

    /// Every message so far, in arrival order (the `-d` lines and stderr left out).
    pub fn messages(&self) -> Vec<Received> {
        parse(&self.running.stdout())
    }

    /// Everything it printed so far, `-d` packet log and stderr included, for failure messages
    /// and assertions on the packets.
    pub fn output(&self) -> String {
        self.running.output()
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
                "mosquitto_sub did not see {what} within {timeout:?}; it saw {messages:#?}\n{}",
                self.output()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Waits (up to 30 s) until `n` messages satisfy `matches`; all messages so far.
    pub fn wait_for(&self, n: usize, matches: impl Fn(&Received) -> bool) -> Vec<Received> {
        self.wait_until(&format!("{n} matching messages"), WAIT, |messages| {
            messages.iter().filter(|m| matches(m)).count() >= n
        })
    }

    /// Waits for it to exit (`count`, `-E`) and returns every message; it must exit 0.
    pub fn finish(mut self) -> Vec<Received> {
        let status = self.running.wait();
        assert!(
            status.success(),
            "mosquitto_sub failed ({status}):\n{}",
            self.output()
        );
        self.messages()
    }
}

/// The messages among mosquitto_sub's stdout lines (its `-d` log left out).
fn parse(lines: &[String]) -> Vec<Received> {
    lines
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

/// The message retained on `topic` right now, as a new subscriber sees it; panics when none
/// arrives within 10 s.
pub fn retained(broker: &Mosquitto, topic: &str) -> Received {
    let subscriber = Subscriber::on(broker, topic).qos(1).start();
    let what = format!("a retained message on {topic}");
    let messages = subscriber.wait_until(&what, Duration::from_secs(10), |messages| {
        messages.iter().any(|m| m.retained)
    });
    messages
        .into_iter()
        .find(|m| m.retained)
        .expect("wait_until returned once a retained message was there")
}
