//! `mqtt2es top` against a real mqtt2es (the embedded broker, the shared search node): the live
//! screen in a real terminal (tmux), and the plain `--once` snapshot.

use std::net::SocketAddr;
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use crate::support::bridge::{Bridge, BridgeSpec};
use crate::support::publish::{publish, publish_lines_qos1};
use crate::support::readings::{readings, readings_pipeline};
use crate::support::subscriber::Subscriber;
use crate::support::{SearchNode, free_port, unique, wait_for_count};

/// Readings published and stored before `top` looks.
const READINGS: usize = 25;

/// A bridge that stored [`READINGS`] readings and dead-lettered one message that is not JSON;
/// its metrics URL and the data stream of the readings.
async fn bridge_with_readings(node: &SearchNode) -> (Bridge, String, String) {
    let spec = BridgeSpec::embedded(&node.url()).pipeline("readings.yaml", readings_pipeline());
    let mut bridge = Bridge::start(&spec);
    let port = bridge.broker_port();
    bridge.wait_ready();
    let metrics: SocketAddr = bridge.metrics_address();
    let index = format!("{}readings", bridge.prefix());
    let topic = "sensors/lab/pi-01/telemetry";
    let sent = publish_lines_qos1(port, topic, &readings("pi-01", 0, READINGS));
    assert_eq!(sent, READINGS, "{}", bridge.logs());
    publish(port, topic, 1, b"{\"seq\": ");
    let timeout = Duration::from_secs(30);
    assert_eq!(wait_for_count(node, &index, 25, timeout).await, 25);
    let dead = bridge.dead_letter_index();
    assert_eq!(wait_for_count(node, &dead, 1, timeout).await, 1);
    (bridge, format!("http://{metrics}/metrics"), index)
}

/// A tmux server of our own (its own socket), killed when dropped, whatever the test did.
struct Tmux {
    socket: String,
    /// The socket file, which `kill-server` leaves behind.
    socket_path: Option<String>,
}

impl Tmux {
    /// A detached `width`×`height` session running `command`; its pane stays after the command
    /// exits, so the test can read the exit status.
    fn start(width: u16, height: u16, command: &str) -> Tmux {
        let mut tmux = Tmux {
            socket: unique("it-top"),
            socket_path: None,
        };
        let (w, h) = (width.to_string(), height.to_string());
        tmux.run(&[
            "-f",
            "/dev/null",
            "new-session",
            "-d",
            "-s",
            "top",
            "-x",
            &w,
            "-y",
            &h,
        ]);
        tmux.socket_path = Some(tmux.show("#{socket_path}"));
        tmux.run(&["set-option", "-t", "top", "remain-on-exit", "on"]);
        tmux.run(&["respawn-pane", "-k", "-t", "top", command]);
        tmux
    }

    fn command(&self) -> Command {
        let mut command = Command::new("tmux");
        command.args(["-L", &self.socket]).env_remove("TMUX");
        command
    }

    fn run(&self, args: &[&str]) -> String {
        let output = self
            .command()
            .args(args)
            .stdin(Stdio::null())
            .output()
            .expect("run tmux (Debian package tmux)");
        assert!(
            output.status.success(),
            "tmux {args:?}: {}",
            String::from_utf8_lossy(&output.stderr)
        );
        String::from_utf8_lossy(&output.stdout).into_owned()
    }

    /// The pane as text; with `escapes`, with its colour codes.
    fn capture(&self, escapes: bool) -> String {
        let mut args = vec!["capture-pane", "-p", "-t", "top"];
        if escapes {
            args.push("-e");
        }
        self.run(&args)
    }

    fn show(&self, format: &str) -> String {
        self.run(&["display-message", "-p", "-t", "top", format])
            .trim()
            .to_owned()
    }

    /// Polls the pane until `ok` holds for its text; panics with the last one after `timeout`.
    fn wait_for(&self, what: &str, ok: impl Fn(&str) -> bool, timeout: Duration) -> String {
        let deadline = Instant::now() + timeout;
        loop {
            let screen = self.capture(false);
            if ok(&screen) {
                return screen;
            }
            assert!(
                Instant::now() < deadline,
                "the pane never showed {what} within {timeout:?}:\n{screen}"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Polls a tmux format (`#{pane_dead}`) until it reads `expected`.
    fn wait_for_format(&self, format: &str, expected: &str, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        loop {
            let value = self.show(format);
            if value == expected {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "{format} is {value:?}, not {expected:?}, after {timeout:?}:\n{}",
                self.capture(false)
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for Tmux {
    fn drop(&mut self) {
        let _ = self
            .command()
            .arg("kill-server")
            .stderr(Stdio::null())
            .status();
        if let Some(path) = &self.socket_path {
            let _ = std::fs::remove_file(path);
        }
    }
}

/// The line of `screen` that starts with `label` (after blanks), trimmed; empty if none.
fn line<'a>(screen: &'a str, label: &str) -> &'a str {
    screen
        .lines()
        .map(str::trim)
        .find(|l| l.starts_with(label))
        .unwrap_or("")
}

/// Whether, on the line of `screen` with `label`, the basic colour `colour` (2 green, 3
/// yellow) is switched on before `text`: as SGR `3<colour>` or, as tmux writes it back,
/// `38;5;<colour>`.
fn coloured_before(screen: &str, label: &str, colour: u8, text: &str) -> bool {
    let Some(line) = screen.lines().find(|l| l.contains(label)) else {
        return false;
    };
    let Some(at) = line.find(text) else {
        return false;
    };
    line[..at]
        .split('\u{1b}')
        .filter_map(|code| code.strip_prefix('[')?.strip_suffix('m'))
        .any(|params| {
            params.split(';').any(|p| p == format!("3{colour}"))
                || params.contains(&format!("38;5;{colour}"))
        })
}

/// Whether `screen` shows the figures of [`bridge_with_readings`] and one connected device.
fn shows_what_was_sent(screen: &str, stream: &str) -> bool {
    line(screen, "Readings in").ends_with(&format!("total {}", READINGS + 1))
        && line(screen, "Stored").ends_with(&format!("total {READINGS}"))
        && line(screen, "Connected").ends_with(" 1 device")
        && line(screen, "Acks pending").starts_with("Acks pending    0 ")
        && line(screen, "Elasticsearch").contains("reachable since")
        && line(screen, "Dead letters").ends_with(", 1 in total")
        && line(screen, "invalid_json").ends_with(" 1")
        && line(screen, stream).ends_with(&format!(" {READINGS}"))
}

/// A device that stays connected while `top` looks: a `mosquitto_sub`, killed when dropped.
fn connect_device(bridge: &mut Bridge) -> Subscriber {
    Subscriber::to(bridge.broker_port(), "it/top/nothing")
        .args(&["-i", &unique("it-top-device")])
        .start()
}

fn top(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_mqtt2es"))
        .arg("top")
        .args(args)
        .env_remove("MQTT2ES_CONFIG")
        .stdin(Stdio::null())
        .output()
        .expect("run mqtt2es top")
}

#[tokio::test(flavor = "multi_thread")]
async fn top_in_a_terminal_shows_the_published_figures_fits_80_by_24_and_quits_on_q() {
    let node = SearchNode::shared();
    let (mut bridge, url, stream) = bridge_with_readings(node).await;
    let _device = connect_device(&mut bridge);
    // The exit status goes to a file through a shell: tmux 3.3a sometimes leaves an exited
    // pane process unreaped (a zombie, the pane dead with no status), so its own
    // #{pane_dead_status} cannot be relied on.
    let scratch = tempfile::tempdir().expect("a scratch dir");
    let status_file = scratch.path().join("status");
    let command = format!(
        "{} top --url {url}; echo $? > {}",
        env!("CARGO_BIN_EXE_mqtt2es"),
        status_file.display()
    );

    let tmux = Tmux::start(100, 30, &command);
    let timeout = Duration::from_secs(30);
    let screen = tmux.wait_for(
        "the published figures",
        |s| shows_what_was_sent(s, &stream),
        timeout,
    );
    assert!(screen.contains("mqtt2es top"), "{screen}");
    assert_eq!(tmux.show("#{alternate_on}"), "1", "{screen}");
    // Colour: reachable in green, a dead letter in the past in yellow.
    let coloured = tmux.capture(true);
    assert!(
        coloured_before(&coloured, "Elasticsearch", 2, "reachable"),
        "{coloured:?}"
    );
    assert!(
        coloured_before(&coloured, "Dead letters", 3, "in total"),
        "{coloured:?}"
    );

    tmux.run(&["resize-window", "-t", "top", "-x", "80", "-y", "24"]);
    tmux.wait_for_format("#{pane_width}x#{pane_height}", "80x24", timeout);
    let small = tmux.wait_for(
        "every figure in 80x24, its last line the update time",
        |s| {
            shows_what_was_sent(s, &stream)
                && s.lines().nth(23).is_some_and(|l| l.starts_with("updated "))
        },
        timeout,
    );
    assert!(small.lines().all(|l| l.chars().count() <= 80), "{small}");

    tmux.run(&["send-keys", "-t", "top", "q"]);
    tmux.wait_for_format("#{pane_dead}", "1", timeout);
    let status = std::fs::read_to_string(&status_file).expect("the exit status");
    assert_eq!(status.trim(), "0", "mqtt2es top's exit status");
    // Back from the alternate screen: the terminal was restored.
    assert_eq!(tmux.show("#{alternate_on}"), "0");
}

#[tokio::test(flavor = "multi_thread")]
async fn top_once_prints_the_figures_as_plain_text_and_fails_on_an_endpoint_nobody_serves() {
    let node = SearchNode::shared();
    let (_bridge, url, stream) = bridge_with_readings(node).await;

    let output = top(&["--once", "--interval-s", "0.2", "--url", &url]);
    let text = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "{text}{}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(
        !text.contains('\u{1b}'),
        "no escape codes in plain text: {text:?}"
    );
    assert!(
        line(&text, "Readings in").ends_with(&format!("total {}", READINGS + 1)),
        "{text}"
    );
    assert!(
        line(&text, "Stored").ends_with(&format!("total {READINGS}")),
        "{text}"
    );
    assert!(line(&text, "invalid_json").ends_with(" 1"), "{text}");
    assert!(
        line(&text, &stream).ends_with(&format!(" {READINGS}")),
        "{text}"
    );
    assert!(
        line(&text, "Elasticsearch").contains("reachable since"),
        "{text}"
    );

    let nobody = format!("http://127.0.0.1:{}/metrics", free_port());
    let output = top(&["--once", "--url", &nobody]);
    let complaint = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(1), "{complaint}");
    assert!(
        complaint.contains(&format!("cannot read {nobody}")),
        "{complaint}"
    );
    assert!(output.stdout.is_empty());
}
