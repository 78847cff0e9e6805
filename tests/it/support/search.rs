//! A real search node: Elasticsearch (default) or OpenSearch, from the distributions
//! `scripts/test` unpacked, chosen by `MQTT2ES_TEST_ENGINE=elasticsearch|opensearch`.
//!
//! One node per test would cost ~10 s and ~1 GB each, so most tests share one node per test
//! binary (`SearchNode::shared`) and isolate themselves by unique index and data stream names
//! (`support::unique`). Tests that take the node down get their own (`start_private`).
//!
//! Starting and stopping block the calling thread. A test that keeps the bridge running while
//! it restarts a node should be `#[tokio::test(flavor = "multi_thread")]`: the test body then
//! runs on its own thread and the bridge's tasks on the workers.

use std::env;
use std::fs::{self, File};
use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Mutex, OnceLock};
use std::thread;
use std::time::{Duration, Instant};

use serde_json::Value;
use tempfile::TempDir;

use super::process::{self, User};
use super::{free_port, tail};

/// A test node is small and short-lived: a small heap, not touched up front; C1 only, which
/// starts it ~10% faster and leaves the second core to the tests; no hsperfdata files in /tmp.
const JAVA_OPTS: &str =
    "-Xms512m -Xmx512m -XX:TieredStopAtLevel=1 -XX:-AlwaysPreTouch -XX:-UsePerfData";
const START_TIMEOUT: Duration = Duration::from_secs(180);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Engine {
    Elasticsearch,
    OpenSearch,
}

impl Engine {
    /// The engine `MQTT2ES_TEST_ENGINE` names (default Elasticsearch).
    pub fn from_env() -> Engine {
        match env::var("MQTT2ES_TEST_ENGINE").as_deref() {
            Err(_) | Ok("") | Ok("elasticsearch") => Engine::Elasticsearch,
            Ok("opensearch") => Engine::OpenSearch,
            Ok(other) => panic!(
                "MQTT2ES_TEST_ENGINE is \"{other}\": expected \"elasticsearch\" or \"opensearch\""
            ),
        }
    }
}

pub struct SearchNode {
    engine: Engine,
    home: PathBuf,
    java_home: PathBuf,
    user: Option<User>,
    dir: TempDir,
    http_port: u16,
    transport_port: u16,
    /// Behind a mutex because the shared node is only ever reached through `&'static`, and
    /// the atexit hook must still be able to kill it.
    child: Mutex<Option<Child>>,
    client: reqwest::Client,
    /// Set for a node started by `start_secured`: security on, and the credentials the
    /// harness's own health probe uses.
    superuser: Option<(String, String)>,
    /// Set for a node of a `SearchCluster`: its name and its peers, instead of single-node.
    member: Option<Member>,
}

/// What a node of a cluster needs to find the others.
#[derive(Debug, Clone)]
struct Member {
    cluster: String,
    name: String,
    /// Every node's name and transport port, this one's included.
    peers: Vec<(String, u16)>,
}

/// A user of a secured node's file realm: name, password and role (`superuser`, or a role
/// defined in the `roles` YAML given to `start_secured`).
pub struct FileUser<'a> {
    pub name: &'a str,
    pub password: &'a str,
    pub role: &'a str,
}

impl SearchNode {
    /// The node shared by this test binary, started on first use (~10 s), killed at exit.
    pub fn shared() -> &'static SearchNode {
        static SHARED: OnceLock<SearchNode> = OnceLock::new();
        extern "C" fn kill_shared() {
            if let Some(node) = SHARED.get() {
                node.kill();
                let _ = fs::remove_dir_all(node.dir.path());
            }
        }
        SHARED.get_or_init(|| {
            let node = SearchNode::start_private();
            // SAFETY: registers a plain function; it runs when the binary exits normally,
            // libtest's exit after failures included. An abort is covered by the death signal.
            unsafe { libc::atexit(kill_shared) };
            node
        })
    }

    /// A node of this test's own, for tests that stop it; killed on drop.
    pub fn start_private() -> SearchNode {
        let node = SearchNode::prepare();
        node.launch();
        node
    }

    /// An Elasticsearch node of this test's own with security on (plain HTTP, no TLS), the
    /// roles in `roles` (roles.yml syntax) and `users` in its file realm; the first user must
    /// be a superuser (the harness's health probe uses it). Killed on drop.
    pub fn start_secured(roles: &str, users: &[FileUser]) -> SearchNode {
        let mut node = SearchNode::prepare();
        assert_eq!(
            node.engine,
            Engine::Elasticsearch,
            "only Elasticsearch's distribution has security"
        );
        let config = node.dir.path().join("config");
        let mut file = File::options()
            .append(true)
            .open(config.join("roles.yml"))
            .expect("open roles.yml");
        writeln!(file, "\n{roles}").expect("write roles.yml");
        for user in users {
            let status = process::command(node.home.join("bin/elasticsearch-users"), node.user)
                .args(["useradd", user.name, "-p", user.password, "-r", user.role])
                .env("ES_JAVA_HOME", &node.java_home)
                .env("ES_PATH_CONF", &config)
                .stdout(Stdio::null())
                .status()
                .expect("run elasticsearch-users");
            assert!(
                status.success(),
                "elasticsearch-users useradd {}",
                user.name
            );
        }
        let first = users.first().expect("a superuser");
        node.superuser = Some((first.name.to_owned(), first.password.to_owned()));
        node.launch();
        node
    }

    fn prepare() -> SearchNode {
        let engine = Engine::from_env();
        let (home_var, java_var) = match engine {
            Engine::Elasticsearch => ("MQTT2ES_TEST_ES_HOME", "MQTT2ES_TEST_ES_JAVA_HOME"),
            Engine::OpenSearch => ("MQTT2ES_TEST_OS_HOME", "MQTT2ES_TEST_OS_JAVA_HOME"),
        };
        let home = required_env(home_var);
        let java_home = required_env(java_var);
        let user = match env::var("MQTT2ES_TEST_SEARCH_USER") {
            Ok(name) if !name.is_empty() => Some(lookup_user(&name)),
            _ => None,
        };
        let dir = tempfile::Builder::new()
            .prefix("search-")
            .tempdir()
            .expect("create the node's temp dir");
        for sub in ["data", "logs", "tmp"] {
            fs::create_dir(dir.path().join(sub)).expect("create a node dir");
        }
        // A config dir per node: the node writes its keystore there, and the distribution in
        // the cache stays read-only and shareable.
        copy_dir(&home.join("config"), &dir.path().join("config"));
        anchor_jvm_paths(dir.path());
        if let Some(user) = user {
            chown_tree(dir.path(), user);
        }
        let client = reqwest::Client::builder()
            // No pooled connections: each test has its own tokio runtime, and a connection made
            // on one runtime is dead on the next.
            .pool_max_idle_per_host(0)
            .timeout(Duration::from_secs(60))
            .build()
            .expect("build an HTTP client");
        SearchNode {
            engine,
            home,
            java_home,
            user,
            dir,
            http_port: free_port(),
            transport_port: free_port(),
            child: Mutex::new(None),
            client,
            superuser: None,
            member: None,
        }
    }

    /// `http://127.0.0.1:<port>`, no trailing slash.
    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.http_port)
    }

    /// Kills the node (SIGKILL, like a crash or a power cut; acknowledged writes survive in
    /// the translog) and waits until it is gone. No-op when stopped.
    pub fn stop(&mut self) {
        self.kill();
    }

    /// Starts the node again on the same ports and data dir. No-op when running.
    pub fn start(&mut self) {
        if self.lock_child().is_none() {
            self.launch();
        }
    }

    /// Documents in `index` (an index, data stream, alias or pattern) after an explicit
    /// refresh, so everything acknowledged before the call is counted. A missing index counts 0.
    pub async fn count(&self, index: &str) -> u64 {
        self.refresh(index).await;
        let response = self
            .request(
                reqwest::Method::GET,
                &format!("/{index}/_count?ignore_unavailable=true"),
                None,
            )
            .await;
        response["count"]
            .as_u64()
            .unwrap_or_else(|| panic!("no count in {response}"))
    }

    /// Like `count`, but `None` instead of a panic when the node cannot answer yet: a data
    /// stream created a moment ago may have no active shard (503), and a restarted node may not
    /// listen yet. For polling loops that wait for ingest to catch up.
    pub async fn try_count(&self, index: &str) -> Option<u64> {
        let base = self.url();
        let refresh =
            format!("{base}/{index}/_refresh?ignore_unavailable=true&allow_no_indices=true");
        let refreshed = self.authed(self.client.post(&refresh)).send().await.ok()?;
        if !refreshed.status().is_success() {
            return None;
        }
        let url = format!("{base}/{index}/_count?ignore_unavailable=true");
        let response = self.authed(self.client.get(&url)).send().await.ok()?;
        if !response.status().is_success() {
            return None;
        }
        let body: Value = response.json().await.ok()?;
        body["count"].as_u64()
    }

    /// `POST /<index>/_search` with `body` (`{"query": …, "size": …}`) after a refresh; the
    /// whole response.
    pub async fn search(&self, index: &str, body: Value) -> Value {
        self.refresh(index).await;
        self.request(
            reqwest::Method::POST,
            &format!("/{index}/_search"),
            Some(body),
        )
        .await
    }

    /// Any JSON request; panics with the response body unless the status is 2xx.
    pub async fn request(&self, method: reqwest::Method, path: &str, body: Option<Value>) -> Value {
        let url = format!("{}{path}", self.url());
        let mut request = self.authed(self.client.request(method.clone(), &url));
        if let Some(body) = body {
            request = request.json(&body);
        }
        let response = request
            .send()
            .await
            .unwrap_or_else(|e| panic!("{method} {url}: {e}"));
        let status = response.status();
        let text = response
            .text()
            .await
            .unwrap_or_else(|e| panic!("{method} {url}: reading the body: {e}"));
        assert!(status.is_success(), "{method} {url}: {status}: {text}");
        serde_json::from_str(&text).unwrap_or_else(|e| panic!("{method} {url}: {e}: {text}"))
    }

    /// The superuser's credentials on a secured node; nothing otherwise.
    fn authed(&self, request: reqwest::RequestBuilder) -> reqwest::RequestBuilder {
        match &self.superuser {
            Some((name, password)) => request.basic_auth(name, Some(password)),
            None => request,
        }
    }

    async fn refresh(&self, index: &str) {
        self.request(
            reqwest::Method::POST,
            &format!("/{index}/_refresh?ignore_unavailable=true&allow_no_indices=true"),
            None,
        )
        .await;
    }

    fn lock_child(&self) -> std::sync::MutexGuard<'_, Option<Child>> {
        self.child.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn kill(&self) {
        if let Some(mut child) = self.lock_child().take() {
            process::kill_group(&mut child);
        }
    }

    fn out_path(&self) -> PathBuf {
        self.dir.path().join("out.log")
    }

    fn launch(&self) {
        let child = self.spawn();
        self.await_healthy(child);
    }

    fn spawn(&self) -> Child {
        let dir = self.dir.path();
        let (script, prefix, extra_settings): (_, _, &[&str]) = match self.engine {
            Engine::Elasticsearch if self.superuser.is_some() => (
                "elasticsearch",
                "ES",
                &[
                    "xpack.security.enabled=true",
                    "xpack.security.http.ssl.enabled=false",
                    "xpack.security.transport.ssl.enabled=false",
                ],
            ),
            Engine::Elasticsearch => ("elasticsearch", "ES", &["xpack.security.enabled=false"]),
            Engine::OpenSearch => ("opensearch", "OPENSEARCH", &[]),
        };
        let mut command: Command = process::command(self.home.join("bin").join(script), self.user);
        command
            .env(format!("{prefix}_JAVA_HOME"), &self.java_home)
            .env(format!("{prefix}_PATH_CONF"), dir.join("config"))
            .env(format!("{prefix}_TMPDIR"), dir.join("tmp"))
            .env(format!("{prefix}_JAVA_OPTS"), JAVA_OPTS)
            // Elasticsearch's launcher is a JVM of its own.
            .env("CLI_JAVA_OPTS", "-XX:TieredStopAtLevel=1 -XX:-UsePerfData");
        let mut settings = vec![
            "network.host=127.0.0.1".to_owned(),
            format!("http.port={}", self.http_port),
            format!("transport.port={}", self.transport_port),
            format!("path.data={}", dir.join("data").display()),
            format!("path.logs={}", dir.join("logs").display()),
            // A nearly full disk of a CI machine must not turn indices read-only mid-test.
            "cluster.routing.allocation.disk.threshold_enabled=false".to_owned(),
        ];
        match &self.member {
            None => settings.extend([
                "discovery.type=single-node".to_owned(),
                "cluster.name=mqtt2es-test".to_owned(),
            ]),
            Some(member) => {
                let seeds: Vec<String> = member
                    .peers
                    .iter()
                    .map(|(_, port)| format!("127.0.0.1:{port}"))
                    .collect();
                let names: Vec<&str> = member.peers.iter().map(|(n, _)| n.as_str()).collect();
                let initial = match self.engine {
                    Engine::Elasticsearch => "cluster.initial_master_nodes",
                    Engine::OpenSearch => "cluster.initial_cluster_manager_nodes",
                };
                settings.extend([
                    format!("cluster.name={}", member.cluster),
                    format!("node.name={}", member.name),
                    format!("discovery.seed_hosts={}", seeds.join(",")),
                    format!("{initial}={}", names.join(",")),
                ]);
            }
        }
        for setting in settings
            .iter()
            .map(String::as_str)
            .chain(extra_settings.iter().copied())
        {
            command.arg(format!("-E{setting}"));
        }
        let out = File::options()
            .create(true)
            .append(true)
            .open(self.out_path())
            .expect("open the node's out.log");
        command
            .stdin(Stdio::null())
            .stdout(out.try_clone().expect("clone the log handle"))
            .stderr(out);

        process::spawn(command)
            .unwrap_or_else(|e| panic!("cannot start {}: {e}", self.home.display()))
    }

    /// Waits until the node (and, for a cluster's node, its cluster) answers healthy.
    fn await_healthy(&self, mut child: Child) {
        let started = Instant::now();
        loop {
            if let Ok(Some(status)) = child.try_wait() {
                process::kill_group(&mut child);
                panic!(
                    "{:?} exited ({status}) before it was healthy:\n{}",
                    self.engine,
                    tail(&self.out_path(), 40)
                );
            }
            if health_is_yellow(self.http_port, self.superuser.as_ref()) {
                break;
            }
            if started.elapsed() > START_TIMEOUT {
                process::kill_group(&mut child);
                panic!(
                    "{:?} was not healthy within {} s:\n{}",
                    self.engine,
                    START_TIMEOUT.as_secs(),
                    tail(&self.out_path(), 40)
                );
            }
            thread::sleep(Duration::from_millis(100));
        }
        eprintln!(
            "{:?} node on port {} healthy after {:.1} s",
            self.engine,
            self.http_port,
            started.elapsed().as_secs_f64()
        );
        *self.lock_child() = Some(child);
    }
}

/// A real cluster of `SearchNode`s of the engine the tests use, on loopback, each with its own
/// data dir and a small heap; killed on drop. For the tests of failover and cluster blocks.
pub struct SearchCluster {
    pub nodes: Vec<SearchNode>,
}

impl SearchCluster {
    /// `size` nodes, all master-eligible, started together (a node alone is never healthy: it
    /// waits for a quorum) and healthy when this returns.
    pub fn start(size: usize) -> SearchCluster {
        let cluster = format!("mqtt2es-{}", super::unique("cluster"));
        let mut nodes: Vec<SearchNode> = (0..size).map(|_| SearchNode::prepare()).collect();
        let peers: Vec<(String, u16)> = nodes
            .iter()
            .enumerate()
            .map(|(i, node)| (format!("node-{i}"), node.transport_port))
            .collect();
        for (node, (name, _)) in nodes.iter_mut().zip(&peers) {
            node.member = Some(Member {
                cluster: cluster.clone(),
                name: name.clone(),
                peers: peers.clone(),
            });
        }
        let children: Vec<Child> = nodes.iter().map(SearchNode::spawn).collect();
        for (node, child) in nodes.iter().zip(children) {
            node.await_healthy(child);
        }
        SearchCluster { nodes }
    }

    /// Every node's URL, in order.
    pub fn urls(&self) -> Vec<String> {
        self.nodes.iter().map(SearchNode::url).collect()
    }
}

impl Drop for SearchNode {
    fn drop(&mut self) {
        self.kill();
    }
}

/// One `GET /_cluster/health?wait_for_status=yellow` over a plain socket: blocking and
/// runtime-free, so starting a node works from sync code and from inside any async test.
/// (Elasticsearch's integ-test distribution has no `GET /` handler.)
fn health_is_yellow(port: u16, user: Option<&(String, String)>) -> bool {
    let Ok(mut stream) = TcpStream::connect(("127.0.0.1", port)) else {
        return false;
    };
    let _ = stream.set_read_timeout(Some(Duration::from_secs(10)));
    let authorization = match user {
        Some((name, password)) => {
            use base64::Engine as _;
            let token =
                base64::engine::general_purpose::STANDARD.encode(format!("{name}:{password}"));
            format!("Authorization: Basic {token}\r\n")
        }
        None => String::new(),
    };
    let request = format!(
        "GET /_cluster/health?wait_for_status=yellow&timeout=2s HTTP/1.1\r\n\
         Host: 127.0.0.1\r\n{authorization}Connection: close\r\n\r\n"
    );
    if stream.write_all(request.as_bytes()).is_err() {
        return false;
    }
    let mut status_line = [0u8; 12];
    stream.read_exact(&mut status_line).is_ok() && status_line.ends_with(b" 200")
}

fn required_env(name: &str) -> PathBuf {
    match env::var_os(name) {
        Some(value) if !value.is_empty() => PathBuf::from(value),
        _ => panic!(
            "{name} is not set: run the tests through scripts/test, which installs the search \
             engines and exports where they are"
        ),
    }
}

fn lookup_user(name: &str) -> User {
    let id = |flag: &str| -> u32 {
        let output = Command::new("id")
            .args([flag, name])
            .output()
            .expect("run id");
        assert!(
            output.status.success(),
            "no user \"{name}\" (MQTT2ES_TEST_SEARCH_USER): run scripts/test, which creates it"
        );
        String::from_utf8_lossy(&output.stdout)
            .trim()
            .parse()
            .expect("id prints a number")
    };
    User {
        uid: id("-u"),
        gid: id("-g"),
    }
}

fn copy_dir(from: &Path, to: &Path) {
    fs::create_dir_all(to).expect("create a config dir");
    for entry in fs::read_dir(from).unwrap_or_else(|e| panic!("read {}: {e}", from.display())) {
        let entry = entry.expect("read a config dir entry");
        let target = to.join(entry.file_name());
        if entry.file_type().expect("file type").is_dir() {
            copy_dir(&entry.path(), &target);
        } else {
            fs::copy(entry.path(), &target).expect("copy a config file");
        }
    }
}

/// OpenSearch's `jvm.options` writes GC logs, crash and heap dumps relative to the working
/// dir, which its start script sets to the (read-only) distribution: point them into the node's
/// own dirs. (Elasticsearch's launcher already runs the JVM in `path.logs`.)
fn anchor_jvm_paths(dir: &Path) {
    let path = dir.join("config").join("jvm.options");
    let options = fs::read_to_string(&path).expect("read jvm.options");
    let logs = format!("{}/", dir.join("logs").display());
    let data = dir.join("data").display().to_string();
    let options = options
        .replace("=logs/", &format!("={logs}"))
        .replace(":logs/", &format!(":{logs}"))
        .replace("HeapDumpPath=data", &format!("HeapDumpPath={data}"));
    fs::write(&path, options).expect("write jvm.options");
}

fn chown_tree(path: &Path, user: User) {
    std::os::unix::fs::chown(path, Some(user.uid), Some(user.gid))
        .unwrap_or_else(|e| panic!("chown {}: {e}", path.display()));
    if path.is_dir() {
        for entry in fs::read_dir(path).expect("read a node dir") {
            chown_tree(&entry.expect("read a node dir entry").path(), user);
        }
    }
}
