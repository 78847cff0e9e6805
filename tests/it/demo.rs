//! `scripts/demo`, the README's first command, as a new user runs it: in a fresh clone, with no
//! search node answering at `elasticsearch.url`, until documents arrive in the node it started,
//! then Ctrl-C (SIGINT to its process group) and nothing it started may be left.
//!
//! The clone is of this checkout's commit, so what is tested is the committed script. Two
//! shortcuts, both for CI time: the distribution comes from the cache `scripts/test` filled (the
//! demo shares it, so nothing is downloaded), and the demo is given the `mqtt2es` cargo built
//! for this test (MQTT2ES_BIN) instead of building its own in the clone (`--profile demo`,
//! about 2 minutes on two cores). The full path, build included, is `scripts/demo` in a fresh
//! clone, run by hand.

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Read};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use crate::support::{free_port, unique};

/// The demo's node starts in about 20 s alone; CI runs other tests and their nodes beside it.
const READY_TIMEOUT: Duration = Duration::from_secs(240);
const DOCUMENTS_TIMEOUT: Duration = Duration::from_secs(120);
/// SIGINT to exit: the fleet, mqtt2es and the node each stop in a few seconds.
const STOP_TIMEOUT: Duration = Duration::from_secs(60);

#[tokio::test]
async fn the_demo_in_a_fresh_clone_stores_readings_and_ctrl_c_leaves_no_process_behind() {
    let dir = tempfile::Builder::new()
        .prefix("demo-")
        .tempdir()
        .expect("temp dir");
    // The search user keeps the node's files below it.
    chmod_755(dir.path());
    let clone = fresh_clone(dir.path());
    let state_root = dir.path().join("tmp");
    std::fs::create_dir(&state_root).expect("create the demo's TMPDIR");
    chmod_755(&state_root);

    let marker = unique("it-demo");
    let mut demo = Demo::start(&clone, &state_root, &marker);
    let url = demo.wait_for_line("==> elasticsearch ready at ", READY_TIMEOUT);
    let url = url.trim().to_owned();
    demo.wait_for_line("==> the demo runs", READY_TIMEOUT);
    let count = wait_for_documents(&url, "mqtt2es-telemetry-demo", DOCUMENTS_TIMEOUT).await;
    assert!(
        count > 0,
        "no document in {url} within {DOCUMENTS_TIMEOUT:?}:\n{}",
        demo.output()
    );

    let started = processes_of(&marker, dir.path());
    for program in ["mqtt2es run", "mqtt2es simulate", "java"] {
        assert!(
            started.values().any(|line| line.contains(program)),
            "no {program:?} among the processes the demo started (so the search below sees \
             nothing): {started:#?}"
        );
    }

    let asked = Instant::now();
    let status = demo.interrupt(STOP_TIMEOUT);
    let took = asked.elapsed();
    let left = processes_of(&marker, dir.path());
    assert!(
        left.is_empty(),
        "left running after SIGINT: {left:#?}\n{}",
        demo.output()
    );
    assert_eq!(status.code(), Some(130), "{status}:\n{}", demo.output());
    assert!(
        took < Duration::from_secs(30),
        "took {took:?} to stop:\n{}",
        demo.output()
    );
    let output = demo.output();
    assert!(
        !output.contains("downloading"),
        "downloaded again:\n{output}"
    );
    let kept: Vec<_> = std::fs::read_dir(&state_root)
        .expect("read the demo's TMPDIR")
        .collect();
    assert!(kept.is_empty(), "left files behind: {kept:?}");
}

/// `git clone` of this checkout into `<dir>/mqtt2es`, at the commit checked out here.
fn fresh_clone(dir: &Path) -> PathBuf {
    let source = Path::new(env!("CARGO_MANIFEST_DIR"));
    let commit = git(source, &["rev-parse", "HEAD"]);
    let clone = dir.join("mqtt2es");
    git(
        dir,
        &[
            "clone",
            "--quiet",
            "--no-checkout",
            &source.display().to_string(),
            &clone.display().to_string(),
        ],
    );
    git(
        &clone,
        &[
            "-c",
            "advice.detachedHead=false",
            "checkout",
            "--quiet",
            commit.trim(),
        ],
    );
    clone
}

fn git(dir: &Path, args: &[&str]) -> String {
    let output = Command::new("git")
        .args(args)
        .current_dir(dir)
        .output()
        .expect("run git");
    assert!(
        output.status.success(),
        "git {args:?} in {}: {}",
        dir.display(),
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8_lossy(&output.stdout).into_owned()
}

fn chmod_755(path: &Path) {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o755)).expect("chmod 755");
}

/// The running `scripts/demo`: its output lines as they come, and its process group.
struct Demo {
    child: Child,
    lines: mpsc::Receiver<String>,
    seen: Vec<String>,
    marker: String,
    dir: PathBuf,
}

impl Demo {
    fn start(clone: &Path, state_root: &Path, marker: &str) -> Demo {
        // The cache scripts/test filled: the distribution's home is <cache>/search/<name>.
        let es_home = PathBuf::from(
            std::env::var_os("MQTT2ES_TEST_ES_HOME")
                .expect("MQTT2ES_TEST_ES_HOME is not set: run the tests through scripts/test"),
        );
        let cache = es_home
            .parent()
            .and_then(Path::parent)
            .expect("MQTT2ES_TEST_ES_HOME is <cache>/search/<distribution>");
        let mut command = Command::new(clone.join("scripts/demo"));
        command
            .current_dir(clone)
            .env("MQTT2ES_BIN", env!("CARGO_BIN_EXE_mqtt2es"))
            .env("MQTT2ES_CACHE", cache)
            // Nothing answers there, so the demo starts a node of its own.
            .env(
                "MQTT2ES_ELASTICSEARCH__URL",
                format!("http://127.0.0.1:{}", free_port()),
            )
            .env("MQTT2ES_DEMO_MQTT_PORT", "0")
            .env("TMPDIR", state_root)
            // Every process the demo starts inherits it: how the test finds them.
            .env("MQTT2ES_IT_DEMO_MARKER", marker)
            .env_remove("MQTT2ES_CONFIG")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            // Its own process group, as a shell gives a command: Ctrl-C goes to all of it.
            .process_group(0);
        let mut child = command.spawn().expect("run scripts/demo");
        let (tx, lines) = mpsc::channel();
        let stdout = child.stdout.take().expect("piped stdout");
        let stderr = child.stderr.take().expect("piped stderr");
        for (stream, prefix) in [
            (Box::new(stdout) as Box<dyn Read + Send>, ""),
            (Box::new(stderr), "stderr: "),
        ] {
            let tx = tx.clone();
            std::thread::spawn(move || {
                for line in BufReader::new(stream).lines().map_while(Result::ok) {
                    if tx.send(format!("{prefix}{line}")).is_err() {
                        break;
                    }
                }
            });
        }
        Demo {
            child,
            lines,
            seen: Vec::new(),
            marker: marker.to_owned(),
            dir: state_root.to_owned(),
        }
    }

    /// Waits for an output line starting with `prefix`; returns the rest of it. Panics with the
    /// output so far when the demo exits first or `timeout` passes.
    fn wait_for_line(&mut self, prefix: &str, timeout: Duration) -> String {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(line) = self.seen.iter().find(|l| l.starts_with(prefix)) {
                return line[prefix.len()..].to_owned();
            }
            let left = deadline.saturating_duration_since(Instant::now());
            match self
                .lines
                .recv_timeout(left.min(Duration::from_millis(500)))
            {
                Ok(line) => self.seen.push(line),
                Err(mpsc::RecvTimeoutError::Timeout) => {
                    if let Ok(Some(status)) = self.child.try_wait() {
                        self.drain();
                        panic!(
                            "scripts/demo exited ({status}) before {prefix:?}:\n{}",
                            self.output()
                        );
                    }
                    assert!(
                        Instant::now() < deadline,
                        "no {prefix:?} from scripts/demo within {timeout:?}:\n{}",
                        self.output()
                    );
                }
                Err(mpsc::RecvTimeoutError::Disconnected) => {
                    let status = self.child.wait().expect("wait for scripts/demo");
                    panic!(
                        "scripts/demo exited ({status}) before {prefix:?}:\n{}",
                        self.output()
                    );
                }
            }
        }
    }

    /// SIGINT to the demo's process group, as Ctrl-C in its terminal; its exit status.
    fn interrupt(&mut self, timeout: Duration) -> ExitStatus {
        let pgid = self.child.id() as libc::pid_t;
        // SAFETY: kill(2) has no memory-safety preconditions.
        unsafe { libc::kill(-pgid, libc::SIGINT) };
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = self.child.try_wait().expect("wait for scripts/demo") {
                self.drain();
                return status;
            }
            assert!(
                Instant::now() < deadline,
                "scripts/demo still runs {timeout:?} after SIGINT"
            );
            // Its output must keep flowing, or it blocks writing it.
            if let Ok(line) = self.lines.recv_timeout(Duration::from_millis(50)) {
                self.seen.push(line);
            }
        }
    }

    /// Everything the demo printed so far.
    fn output(&mut self) -> String {
        self.seen.extend(self.lines.try_iter());
        self.seen.join("\n")
    }

    /// After its exit: the rest of its output (the readers end with its pipes).
    fn drain(&mut self) {
        let deadline = Instant::now() + Duration::from_secs(5);
        while let Ok(line) = self
            .lines
            .recv_timeout(deadline.saturating_duration_since(Instant::now()))
        {
            self.seen.push(line);
        }
    }
}

impl Drop for Demo {
    /// However the test ended, nothing the demo started survives it.
    fn drop(&mut self) {
        let pgid = self.child.id() as libc::pid_t;
        // SAFETY: kill(2) has no memory-safety preconditions.
        unsafe { libc::kill(-pgid, libc::SIGKILL) };
        let _ = self.child.wait();
        for pid in processes_of(&self.marker, &self.dir).keys() {
            // SAFETY: as above.
            unsafe { libc::kill(*pid, libc::SIGKILL) };
        }
    }
}

/// The processes whose environment holds `MQTT2ES_IT_DEMO_MARKER=<marker>` or whose command
/// line names `dir`: pid → command line. (A zombie has neither; it is no longer running.)
fn processes_of(marker: &str, dir: &Path) -> BTreeMap<i32, String> {
    let needle = format!("MQTT2ES_IT_DEMO_MARKER={marker}");
    let dir = dir.display().to_string();
    let mut found = BTreeMap::new();
    for entry in std::fs::read_dir("/proc").expect("read /proc").flatten() {
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|s| s.parse::<i32>().ok())
        else {
            continue;
        };
        let cmdline = std::fs::read(entry.path().join("cmdline")).unwrap_or_default();
        let cmdline = String::from_utf8_lossy(&cmdline).replace('\0', " ");
        let environ = std::fs::read(entry.path().join("environ")).unwrap_or_default();
        let marked = environ
            .split(|b| *b == 0)
            .any(|var| var == needle.as_bytes());
        if marked || cmdline.contains(&dir) {
            found.insert(pid, cmdline.trim().to_owned());
        }
    }
    found
}

/// Polls `<url>/<index>/_count` (after a refresh) until it is above 0 or `timeout` passes;
/// the last count. A node not ready to count yet counts 0.
async fn wait_for_documents(url: &str, index: &str, timeout: Duration) -> u64 {
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(10))
        .build()
        .expect("an HTTP client");
    let deadline = Instant::now() + timeout;
    loop {
        let refresh = format!("{url}/{index}/_refresh?ignore_unavailable=true");
        let _ = client.post(refresh).send().await;
        let count = match client
            .get(format!("{url}/{index}/_count?ignore_unavailable=true"))
            .send()
            .await
        {
            Ok(response) => response
                .json::<serde_json::Value>()
                .await
                .ok()
                .and_then(|body| body["count"].as_u64())
                .unwrap_or(0),
            Err(_) => 0,
        };
        if count > 0 || Instant::now() > deadline {
            return count;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}
