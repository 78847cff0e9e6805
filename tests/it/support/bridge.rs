//! The real `mqtt2es` binary as a child process, configured in its own temporary directory,
//! either subscribed to an upstream broker or as the broker itself (`BridgeSpec::embedded`).

use std::fmt::Display;
use std::io::Read;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use tempfile::TempDir;

use super::process;

/// What a test wants its bridge to be: where its broker and search node are, its pipelines,
/// and the settings it changes, each through a method that names it. The rest of the config is
/// the harness's defaults (fast flushes and retries, metrics on a free port; see `sections`).
pub struct BridgeSpec {
    broker_port: u16,
    search_url: String,
    pipelines: Vec<(&'static str, String)>,
    /// `(section, key, value)`, applied over the defaults in order: a key already there is
    /// replaced, a new one appended, a new section added at the end.
    settings: Vec<(&'static str, String, String)>,
    /// `MQTT2ES_…` overrides for the process: configuration through the environment.
    env: Vec<(String, String)>,
    /// `Some`: no `upstream` section; mqtt2es runs its embedded broker.
    broker: Option<EmbeddedBroker>,
}

/// The listeners of an embedded-broker bridge.
struct EmbeddedBroker {
    /// The TCP listener's address; port 0 (the default) is resolved from the `listening` log.
    bind: String,
    /// Listeners after the TCP one, each a YAML flow mapping (`{transport: ws, bind: ...}`).
    listeners: Vec<String>,
}

/// The shipped catch-all pipeline: JSON as fields, text in `message`, topic in `mqtt.topic`.
const DEFAULT_PIPELINE: &str = include_str!("../../../pipelines/zz-default.yaml");

impl BridgeSpec {
    /// mqtt2es subscribed to the broker on 127.0.0.1:`broker_port`, writing to `search_url`.
    pub fn new(broker_port: u16, search_url: &str) -> Self {
        BridgeSpec {
            broker_port,
            search_url: search_url.to_string(),
            pipelines: Vec::new(),
            settings: Vec::new(),
            env: Vec::new(),
            broker: None,
        }
    }

    /// mqtt2es as the broker: a TCP listener on 127.0.0.1 (port 0 unless `bind` says
    /// otherwise), anonymous clients allowed, state in the bridge's directory.
    pub fn embedded(search_url: &str) -> Self {
        BridgeSpec {
            broker: Some(EmbeddedBroker {
                bind: "127.0.0.1:0".into(),
                listeners: Vec::new(),
            }),
            ..BridgeSpec::new(0, search_url)
        }
    }

    /// A pipeline file.
    pub fn pipeline(mut self, file: &'static str, yaml: impl Into<String>) -> Self {
        self.pipelines.push((file, yaml.into()));
        self
    }

    /// The shipped catch-all pipeline (`pipelines/zz-default.yaml`): what no other pipeline
    /// takes lands in `<prefix>mqtt2es-messages` (`Bridge::messages_index`).
    pub fn default_pipeline(self) -> Self {
        self.pipeline("zz-default.yaml", DEFAULT_PIPELINE)
    }

    /// An environment variable for the process (`MQTT2ES_…` overrides config keys).
    pub fn env(mut self, key: &str, value: impl Into<String>) -> Self {
        self.env.push((key.to_owned(), value.into()));
        self
    }

    /// `key: value` in the config's `section`, replacing the default if there is one. The
    /// value is YAML: a scalar or a flow mapping (`{dir: /tmp/spool}`). The escape hatch for a
    /// setting no method here names (a nested mapping such as `delivery.spool`); prefer a
    /// method, which says what the test changes.
    pub fn set(mut self, section: &'static str, key: &str, value: impl Display) -> Self {
        self.settings
            .push((section, key.to_owned(), value.to_string()));
        self
    }

    /// `key: value` in the `upstream:` section (see `set`).
    pub fn upstream(self, key: &str, value: impl Display) -> Self {
        assert!(self.broker.is_none(), "an embedded bridge has no upstream");
        self.set("upstream", key, value)
    }

    /// `key: value` in the `broker:` section of an embedded bridge (see `set`).
    pub fn broker(self, key: &str, value: impl Display) -> Self {
        assert!(
            self.broker.is_some(),
            "only an embedded bridge has a broker"
        );
        self.set("broker", key, value)
    }

    /// `key: value` in the `metrics:` section (see `set`). Its endpoint always binds a free
    /// loopback port: see `Bridge::metrics_address`.
    pub fn metrics(self, key: &str, value: impl Display) -> Self {
        self.set("metrics", key, value)
    }

    /// Subscribes upstream with MQTT 5.
    pub fn upstream_v5(self) -> Self {
        self.upstream("protocol", "\"5\"")
    }

    /// Trusts the CA in `ca_file` for TLS to the upstream broker.
    pub fn upstream_ca(self, ca_file: &Path) -> Self {
        self.upstream("tls", format!("{{ca_file: \"{}\"}}", ca_file.display()))
    }

    /// The largest MQTT packet mqtt2es accepts, on whichever side it receives: the upstream
    /// connection, or the embedded broker.
    pub fn max_packet_bytes(self, bytes: usize) -> Self {
        let section = if self.broker.is_some() {
            "broker"
        } else {
            "upstream"
        };
        self.set(section, "max_packet_bytes", bytes)
    }

    /// The largest payload a pipeline takes; larger ones are dead letters.
    pub fn max_payload_bytes(self, bytes: usize) -> Self {
        self.set("pipelines", "max_payload_bytes", bytes)
    }

    /// How long the batcher waits before it sends a partial batch (the harness's default: 200).
    pub fn flush_interval_ms(self, ms: u64) -> Self {
        self.set("batch", "flush_interval_ms", ms)
    }

    /// How many bulk requests may be in flight at once.
    pub fn concurrent_requests(self, requests: usize) -> Self {
        self.set("batch", "concurrent_requests", requests)
    }

    /// Gzip bulk bodies (`true`) or not (`false`); unset, `auto` sends them plain to the test's
    /// node on loopback.
    pub fn gzip(self, on: bool) -> Self {
        self.set("elasticsearch", "gzip", on)
    }

    /// Delivery through the on-disk spool instead of acknowledging on store.
    pub fn spool(self) -> Self {
        self.set("delivery", "mode", "spool")
    }

    /// Whether mqtt2es sets up templates and data streams at start.
    pub fn setup_on_start(self, on: bool) -> Self {
        self.set("setup", "on_start", on)
    }

    /// A fixed listener address, for tests that restart the bridge and reconnect to it.
    pub fn bind(mut self, address: impl Into<String>) -> Self {
        self.broker.as_mut().expect("an embedded bridge").bind = address.into();
        self
    }

    /// One more listener, a YAML flow mapping such as
    /// `{transport: wss, bind: "127.0.0.1:0", cert_file: /tmp/c.pem, key_file: /tmp/k.pem}`.
    /// Find where it listens with `Bridge::listener_address`.
    pub fn listener(mut self, mapping: impl Into<String>) -> Self {
        let broker = self.broker.as_mut().expect("an embedded bridge");
        broker.listeners.push(mapping.into());
        self
    }

    /// Replaces the default `auth: {allow_anonymous: true}` with this YAML flow mapping.
    pub fn broker_auth(self, mapping: impl Into<String>) -> Self {
        self.broker("auth", mapping.into())
    }

    /// The config's sections, in order: the harness's defaults, then the test's settings.
    fn sections(
        &self,
        prefix: &str,
        client_id: &str,
    ) -> Vec<(&'static str, Vec<(String, String)>)> {
        let section = |name, pairs: &[(&str, String)]| {
            let pairs = pairs
                .iter()
                .map(|(k, v)| (k.to_string(), v.clone()))
                .collect();
            (name, pairs)
        };
        let source = match &self.broker {
            None => section(
                "upstream",
                &[
                    ("host", "127.0.0.1".into()),
                    ("port", self.broker_port.to_string()),
                    ("client_id", client_id.into()),
                    ("reconnect_initial_ms", "50".into()),
                    ("reconnect_max_ms", "1000".into()),
                ],
            ),
            Some(broker) => {
                let tcp = format!("{{transport: tcp, bind: \"{}\"}}", broker.bind);
                let listeners = std::iter::once(&tcp).chain(&broker.listeners);
                let listeners: Vec<&str> = listeners.map(String::as_str).collect();
                section(
                    "broker",
                    &[
                        ("listeners", format!("[{}]", listeners.join(", "))),
                        ("state_dir", "state".into()),
                        ("auth", "{allow_anonymous: true}".into()),
                    ],
                )
            }
        };
        let mut sections = vec![
            source,
            section("elasticsearch", &[("url", self.search_url.clone())]),
            section(
                "index",
                &[
                    ("prefix", prefix.into()),
                    ("default_index", format!("{prefix}default")),
                ],
            ),
            section(
                "dead_letter",
                &[
                    ("index", format!("{prefix}deadletter")),
                    ("file", "deadletter.ndjson".into()),
                ],
            ),
            section("batch", &[("flush_interval_ms", "200".into())]),
            section(
                "retry",
                &[
                    ("initial_backoff_ms", "50".into()),
                    ("max_backoff_ms", "1000".into()),
                ],
            ),
            section("shutdown", &[("grace_ms", "10000".into())]),
            section("metrics", &[("bind", "127.0.0.1:0".into())]),
        ];
        for (name, key, value) in &self.settings {
            let index = match sections.iter().position(|(n, _)| n == name) {
                Some(index) => index,
                None => {
                    sections.push((name, Vec::new()));
                    sections.len() - 1
                }
            };
            let pairs = &mut sections[index].1;
            match pairs.iter_mut().find(|(k, _)| k == key) {
                Some(pair) => pair.1 = value.clone(),
                None => pairs.push((key.clone(), value.clone())),
            }
        }
        sections
    }
}

/// A unique data stream prefix per bridge, so tests share one search node without colliding.
/// The number ends in `-`, so no prefix's `<prefix>*` template pattern overlaps another's.
pub fn unique_prefix() -> String {
    format!("mqtt2es-{}-", super::unique("t"))
}

pub struct Bridge {
    child: Option<Child>,
    dir: TempDir,
    spec_prefix: String,
    env: Vec<(String, String)>,
    /// How many times the process was started (the log is appended to across restarts).
    starts: usize,
    /// The log's length when the current run started.
    log_at_start: usize,
}

impl Bridge {
    /// Writes the config and starts the binary with a fresh prefix and client id.
    pub fn start(spec: &BridgeSpec) -> Bridge {
        let dir = tempfile::tempdir().expect("temp dir for the bridge");
        let prefix = unique_prefix();
        let client_id = format!("it-{}", prefix.trim_end_matches('-'));
        write_config(dir.path(), spec, &prefix, &client_id);
        let mut bridge = Bridge {
            child: None,
            dir,
            spec_prefix: prefix,
            env: spec.env.clone(),
            starts: 0,
            log_at_start: 0,
        };
        bridge.spawn();
        bridge
    }

    /// Starts the binary again with the same directory, config, prefix and client id (so the
    /// broker's persistent session and the already stored documents carry over).
    /// The log file is appended to, so waits on it must count occurrences across both runs.
    pub fn restart(&mut self) {
        assert!(self.child.is_none(), "restart() needs a stopped bridge");
        self.spawn();
    }

    fn spawn(&mut self) {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.log_path())
            .expect("bridge log file");
        // Through `process`, so a bridge does not outlive a test binary that aborts.
        let mut command = process::command(env!("CARGO_BIN_EXE_mqtt2es"), None);
        command
            .arg("run")
            .arg("--config")
            .arg(self.dir.path().join("mqtt2es.yaml"))
            .env("RUST_LOG", "mqtt2es=debug,info")
            .env_remove("MQTT2ES_CONFIG")
            .envs(self.env.iter().map(|(k, v)| (k, v)))
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("log handle"))
            .stderr(log);
        let child = process::spawn(command).expect("start mqtt2es");
        self.child = Some(child);
        self.starts += 1;
        self.log_at_start = self.logs().len();
    }

    /// Waits until this run (since the last start) has logged `needle`: the log is appended to
    /// across restarts, and a run killed early may not have logged what later runs do.
    pub fn wait_for_log_of_this_run(&mut self, needle: &str, timeout: Duration) {
        let before = {
            let logs = self.logs();
            logs[..self.log_at_start.min(logs.len())]
                .matches(needle)
                .count()
        };
        self.wait_for_log(needle, before + 1, timeout);
    }

    /// The embedded broker's TCP address, from this run's `listening` log line.
    pub fn broker_address(&mut self) -> std::net::SocketAddr {
        self.listener_address("tcp")
    }

    /// Where this run's listener for `transport` (`tcp`, `tls`, `ws`, `wss`) listens, from its
    /// `listening transport=<t> address=<a>` log line. With several listeners of one transport,
    /// the last one logged.
    pub fn listener_address(&mut self, transport: &str) -> std::net::SocketAddr {
        let needle = format!("listening transport={transport} ");
        self.wait_for_log_of_this_run(&needle, Duration::from_secs(30));
        let logs = self.logs();
        let line = logs
            .lines()
            .rev()
            .find(|line| line.contains(&needle))
            .unwrap_or_else(|| panic!("a listening line for {transport}"));
        let address = line
            .split("address=")
            .nth(1)
            .and_then(|rest| rest.split_whitespace().next())
            .expect("an address field");
        address
            .parse()
            .unwrap_or_else(|e| panic!("listening address {address:?}: {e}"))
    }

    /// The embedded broker's TCP port.
    pub fn broker_port(&mut self) -> u16 {
        self.broker_address().port()
    }

    /// A file in the bridge's directory (its config, log and broker state live there).
    pub fn file(&self, relative: &str) -> PathBuf {
        self.dir.path().join(relative)
    }

    /// The process id, for tests that signal it themselves.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    pub fn prefix(&self) -> &str {
        &self.spec_prefix
    }

    /// The data stream of the shipped default pipeline (`BridgeSpec::default_pipeline`).
    pub fn messages_index(&self) -> String {
        format!("{}mqtt2es-messages", self.spec_prefix)
    }

    /// The data stream of dead letters for this bridge.
    pub fn dead_letter_index(&self) -> String {
        format!("{}deadletter", self.spec_prefix)
    }

    fn log_path(&self) -> PathBuf {
        self.dir.path().join("mqtt2es.log")
    }

    pub fn logs(&self) -> String {
        let mut text = String::new();
        if let Ok(mut file) = std::fs::File::open(self.log_path()) {
            let _ = file.read_to_string(&mut text);
        }
        text
    }

    /// The last 40 lines of the log, for failure messages of tests whose log is long.
    pub fn log_tail(&self) -> String {
        let logs = self.logs();
        let lines: Vec<&str> = logs.lines().collect();
        lines[lines.len().saturating_sub(40)..].join("\n")
    }

    /// Waits until the log contains `needle` `count` times; panics with the log on timeout.
    pub fn wait_for_log(&mut self, needle: &str, count: usize, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        loop {
            if self.logs().matches(needle).count() >= count {
                return;
            }
            if let Some(status) = self
                .child
                .as_mut()
                .and_then(|c| c.try_wait().ok().flatten())
            {
                panic!(
                    "mqtt2es exited ({status}) before logging {needle:?}:\n{}",
                    self.logs()
                );
            }
            assert!(
                Instant::now() < deadline,
                "mqtt2es did not log {needle:?} within {timeout:?}:\n{}",
                self.logs()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Where the metrics endpoint of the current run listens (it binds port 0), once it does.
    pub fn metrics_address(&mut self) -> SocketAddr {
        const NEEDLE: &str = "metrics listening address=";
        let runs = self.logs().matches(NEEDLE).count();
        self.wait_for_log(NEEDLE, runs.max(1), Duration::from_secs(30));
        let logs = self.logs();
        let (_, after) = logs.rsplit_once(NEEDLE).expect("the line just waited for");
        let address: String = after.chars().take_while(|c| !c.is_whitespace()).collect();
        address
            .parse()
            .unwrap_or_else(|e| panic!("metrics address {address:?} in the log: {e}"))
    }

    /// Waits until every upstream connection has its subscription granted.
    /// Subscribed upstream and Elasticsearch set up: records flow to the sink from here on.
    pub fn wait_subscribed(&mut self) {
        self.wait_for_log(" subscribed", 1, Duration::from_secs(30));
        self.wait_ready();
    }

    /// Setup finished and the sink is writing (this run's `elasticsearch ready` line). The
    /// source starts before setup, so a test that stops the node on purpose waits for this
    /// first, or it stops setup instead.
    pub fn wait_ready(&mut self) {
        self.wait_for_log_of_this_run("elasticsearch ready", Duration::from_secs(60));
    }

    /// Sends SIGTERM and waits for the process to exit.
    pub fn terminate(&mut self, timeout: Duration) -> ExitStatus {
        let mut child = self.child.take().expect("a running bridge");
        let status = Command::new("kill")
            .arg("-TERM")
            .arg(child.id().to_string())
            .status()
            .expect("kill -TERM");
        assert!(status.success(), "kill -TERM failed");
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = child.try_wait().expect("wait for mqtt2es") {
                return status;
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                let _ = child.wait();
                panic!(
                    "mqtt2es did not exit within {timeout:?} of SIGTERM:\n{}",
                    self.logs()
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// SIGKILL: no flush, no acks.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Drop for Bridge {
    fn drop(&mut self) {
        self.kill();
    }
}

fn write_config(dir: &Path, spec: &BridgeSpec, prefix: &str, client_id: &str) {
    let pipelines = dir.join("pipelines");
    std::fs::create_dir_all(&pipelines).expect("pipelines dir");
    for (file, yaml) in &spec.pipelines {
        std::fs::write(pipelines.join(file), yaml).expect("write pipeline");
    }
    let mut config = String::new();
    for (section, pairs) in spec.sections(prefix, client_id) {
        config.push_str(&format!("{section}:\n"));
        for (key, value) in pairs {
            config.push_str(&format!("  {key}: {value}\n"));
        }
    }
    std::fs::write(dir.join("mqtt2es.yaml"), config).expect("write config");
}
