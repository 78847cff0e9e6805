//! The one `mosquitto_pub` of the tests: publishing with Mosquitto's real client, counting what
//! the broker really acknowledged.
//!
//! `Publisher` says how (host, QoS, protocol, credentials, TLS, retain); `send` publishes one
//! message, `send_lines` one per line. It always runs with `-d`, so its packet log shows what
//! the broker answered. `publish` and `publish_lines_qos1` are the common cases in one call.

use std::io::Write;
use std::path::Path;
use std::process::{ExitStatus, Stdio};

use super::process;
use super::readings::DeviceLoad;

/// How to publish: `mosquitto_pub -d -h <host> -p <port>` and the options set here.
#[derive(Debug, Clone)]
pub struct Publisher {
    host: String,
    port: u16,
    args: Vec<String>,
}

/// What one `mosquitto_pub` run ended with.
#[derive(Debug)]
pub struct Published {
    pub status: ExitStatus,
    /// Its `-d` packet log (stdout).
    pub log: String,
    /// Its error messages (stderr).
    pub errors: String,
}

impl Published {
    /// Both streams, for assertions on what it printed anywhere and for failure messages.
    pub fn output(&self) -> String {
        format!("{}{}", self.log, self.errors)
    }

    /// How many PUBACKs the broker sent it.
    pub fn pubacks(&self) -> usize {
        self.log.matches("received PUBACK").count()
    }
}

impl Publisher {
    /// Publishing to the broker at 127.0.0.1:`port`, at QoS 0 unless `qos` says otherwise.
    pub fn to(port: u16) -> Publisher {
        Publisher {
            host: "127.0.0.1".to_owned(),
            port,
            args: Vec::new(),
        }
    }

    /// The broker's host name as the client gives it (`localhost` for a certificate's name).
    pub fn host(mut self, host: &str) -> Self {
        self.host = host.to_owned();
        self
    }

    /// `-q`.
    pub fn qos(self, qos: u8) -> Self {
        self.args(&["-q", &qos.to_string()])
    }

    /// The protocol version (`-V`): `5`, `311`, `mqttv5`, ...
    pub fn version(self, version: &str) -> Self {
        self.args(&["-V", version])
    }

    /// A user name and password (`-u`, `-P`).
    pub fn credentials(self, user: &str, password: &str) -> Self {
        self.args(&["-u", user, "-P", password])
    }

    /// TLS, trusting the CA in `ca_file` (`--cafile`).
    pub fn cafile(self, ca_file: &Path) -> Self {
        self.args(&["--cafile", ca_file.to_str().expect("a UTF-8 path")])
    }

    /// Retained (`-r`).
    pub fn retain(self) -> Self {
        self.args(&["-r"])
    }

    /// Any other mosquitto_pub options, e.g. `["-D", "publish", "user-property", "k", "v"]`.
    pub fn args(mut self, args: &[&str]) -> Self {
        self.args.extend(args.iter().map(|a| a.to_string()));
        self
    }

    /// Publishes `payload` on `topic` and waits for mosquitto_pub to finish; panics if it fails.
    /// An empty payload is sent as such (`-n`): on a retained topic, it clears the message.
    pub fn send(&self, topic: &str, payload: impl AsRef<[u8]>) -> Published {
        let published = self.try_send(topic, payload);
        assert!(
            published.status.success(),
            "mosquitto_pub -t {topic:?} {:?} failed ({}):\n{}",
            self.args,
            published.status,
            published.output()
        );
        published
    }

    /// Like `send`, for a publish that may fail (a refused connection): the caller asserts.
    pub fn try_send(&self, topic: &str, payload: impl AsRef<[u8]>) -> Published {
        let payload = payload.as_ref();
        let source = if payload.is_empty() { "-n" } else { "-s" };
        self.run(&["-t", topic, source], payload.to_vec())
    }

    /// Publishes each line as one message (`-l`). At QoS 1 only its `pubacks()` count as sent:
    /// Debian's mosquitto_pub 2.0.11 can exit before its queue drains on long inputs, and a
    /// broker killed mid-stream ends it with an error the caller may expect.
    pub fn send_lines(&self, topic: &str, lines: &[String]) -> Published {
        let mut input = Vec::new();
        for line in lines {
            writeln!(input, "{line}").expect("write to a Vec");
        }
        self.run(&["-t", topic, "-l"], input)
    }

    /// Runs mosquitto_pub with `input` on its stdin, to completion.
    fn run(&self, last_args: &[&str], input: Vec<u8>) -> Published {
        let mut command = process::command("mosquitto_pub", None);
        command
            .args(["-d", "-h", &self.host, "-p", &self.port.to_string()])
            .args(&self.args)
            .args(last_args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let mut child = process::spawn(command).expect("start mosquitto_pub (mosquitto-clients)");
        // Written from a thread of its own while this one reads: with `-d`, mosquitto_pub
        // writes a line per packet to stdout, and a pipe left unread fills (64 KiB), stalls
        // mosquitto_pub, and then stalls this writer too (a deadlock once seen as a test that
        // never ended). A refused connection may close stdin early: that write error is moot.
        let mut stdin = child.stdin.take().expect("piped stdin");
        let writer = std::thread::spawn(move || {
            let _ = stdin.write_all(&input);
        });
        let output = child.wait_with_output().expect("wait for mosquitto_pub");
        writer.join().expect("the stdin writer");
        Published {
            status: output.status,
            log: String::from_utf8_lossy(&output.stdout).into_owned(),
            errors: String::from_utf8_lossy(&output.stderr).into_owned(),
        }
    }
}

/// Publishes one message at `qos` and waits for mosquitto_pub to finish; panics if it fails.
pub fn publish(port: u16, topic: &str, qos: u8, payload: &[u8]) {
    Publisher::to(port).qos(qos).send(topic, payload);
}

/// Publishes each line as one QoS 1 message; how many the broker acknowledged (see
/// `Publisher::send_lines`).
pub fn publish_lines_qos1(port: u16, topic: &str, lines: &[String]) -> usize {
    Publisher::to(port)
        .qos(1)
        .send_lines(topic, lines)
        .pubacks()
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
