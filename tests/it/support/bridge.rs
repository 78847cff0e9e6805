//! The real `mqtt2es` binary as a child process, configured in its own temporary directory,
//! either subscribed to an upstream broker or as the broker itself (`BridgeSpec::embedded`).

use std::io::Read;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use tempfile::TempDir;

/// What a test wants its bridge to be: a broker port, a search node URL, pipelines, and any
/// extra YAML sections (appended verbatim, so a test may override whole sections).
pub struct BridgeSpec {
    pub broker_port: u16,
    pub search_url: String,
    pub pipelines: Vec<(&'static str, String)>,
    /// Extra YAML lines inside the `upstream:` section (indented by the caller with two spaces).
    pub upstream_extra: String,
    /// Extra YAML lines inside the `metrics:` section (indented by the caller with two spaces).
    /// The section always binds the endpoint to a free loopback port: see `metrics_address`.
    pub metrics_extra: String,
    /// Extra top-level YAML sections.
    pub extra: String,
    /// `MQTT2ES_…` overrides for the process: configuration through the environment.
    pub env: Vec<(String, String)>,
    /// `Some`: no `upstream` section; mqtt2es runs its embedded broker.
    pub broker: Option<EmbeddedBroker>,
}

/// The `broker:` section of an embedded-broker bridge.
pub struct EmbeddedBroker {
    /// The TCP listener's address; port 0 (the default) is resolved from the `listening` log.
    pub bind: String,
    /// Extra YAML lines inside `broker:` (indented by the caller with two spaces).
    pub extra: String,
    /// Listeners after the TCP one, each a YAML flow mapping (`{transport: ws, bind: ...}`).
    pub listeners: Vec<String>,
    /// The `auth:` value (a YAML flow mapping); anonymous clients allowed when `None`.
    pub auth: Option<String>,
}

impl BridgeSpec {
    pub fn new(broker_port: u16, search_url: &str) -> Self {
        BridgeSpec {
            broker_port,
            search_url: search_url.to_string(),
            pipelines: Vec::new(),
            upstream_extra: String::new(),
            metrics_extra: String::new(),
            extra: String::new(),
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
                extra: String::new(),
                listeners: Vec::new(),
                auth: None,
            }),
            ..BridgeSpec::new(0, search_url)
        }
    }

    /// A fixed listener address, for tests that restart the bridge and reconnect to it.
    pub fn bind(mut self, address: impl Into<String>) -> Self {
        if let Some(broker) = &mut self.broker {
            broker.bind = address.into();
        }
        self
    }

    /// Extra lines for the `broker:` section, each indented by two spaces.
    pub fn broker_lines(mut self, lines: &str) -> Self {
        if let Some(broker) = &mut self.broker {
            broker.extra.push_str(lines);
        }
        self
    }

    /// One more listener, a YAML flow mapping such as
    /// `{transport: wss, bind: "127.0.0.1:0", cert_file: /tmp/c.pem, key_file: /tmp/k.pem}`.
    /// Find where it listens with `Bridge::listener_address`.
    pub fn listener(mut self, mapping: impl Into<String>) -> Self {
        if let Some(broker) = &mut self.broker {
            broker.listeners.push(mapping.into());
        }
        self
    }

    /// Replaces the default `auth: {allow_anonymous: true}` with this YAML flow mapping.
    pub fn auth(mut self, mapping: impl Into<String>) -> Self {
        if let Some(broker) = &mut self.broker {
            broker.auth = Some(mapping.into());
        }
        self
    }

    pub fn pipeline(mut self, file: &'static str, yaml: impl Into<String>) -> Self {
        self.pipelines.push((file, yaml.into()));
        self
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
        let child = Command::new(env!("CARGO_BIN_EXE_mqtt2es"))
            .arg("run")
            .arg("--config")
            .arg(self.dir.path().join("mqtt2es.yaml"))
            .env("RUST_LOG", "mqtt2es=debug,info")
            .env_remove("MQTT2ES_CONFIG")
            .envs(self.env.iter().map(|(k, v)| (k, v)))
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("log handle"))
            .stderr(log)
            .spawn()
            .expect("start mqtt2es");
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
    let source = match &spec.broker {
        None => format!(
            "upstream:\n  host: 127.0.0.1\n  port: {port}\n  client_id: {client_id}\n  reconnect_initial_ms: 50\n  reconnect_max_ms: 1000\n{upstream_extra}",
            port = spec.broker_port,
            upstream_extra = spec.upstream_extra,
        ),
        Some(broker) => format!(
            "broker:\n  listeners:\n    - {{transport: tcp, bind: \"{bind}\"}}\n{listeners}  state_dir: state\n  auth: {auth}\n{extra}",
            bind = broker.bind,
            listeners = broker
                .listeners
                .iter()
                .map(|l| format!("    - {l}\n"))
                .collect::<String>(),
            auth = broker.auth.as_deref().unwrap_or("{allow_anonymous: true}"),
            extra = broker.extra,
        ),
    };
    let config = format!(
        "{source}\
elasticsearch:\n  url: {url}\n\
index:\n  prefix: {prefix}\n  default_index: {prefix}default\n\
dead_letter:\n  index: {prefix}deadletter\n  file: deadletter.ndjson\n\
batch:\n  flush_interval_ms: 200\n\
retry:\n  initial_backoff_ms: 50\n  max_backoff_ms: 1000\n\
shutdown:\n  grace_ms: 10000\n\
metrics:\n  bind: 127.0.0.1:0\n{metrics_extra}\
{extra}",
        url = spec.search_url,
        metrics_extra = spec.metrics_extra,
        extra = spec.extra,
    );
    std::fs::write(dir.join("mqtt2es.yaml"), config).expect("write config");
}
