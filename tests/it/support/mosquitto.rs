//! A real Mosquitto broker per test, on a free port, with its config, persistence file and log
//! in a temp dir of its own.
//!
//! Persistence is on so that `restart` behaves like a real broker restart: persistent sessions
//! and their queued messages survive it (Mosquitto saves them on SIGTERM, which `stop` sends).

use std::fs::{self, File};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::thread;
use std::time::{Duration, Instant};

use tempfile::TempDir;

use super::certs::Certs;
use super::{free_port, process, tail};

const HOST: &str = "127.0.0.1";

pub struct Mosquitto {
    dir: TempDir,
    port: u16,
    child: Option<Child>,
}

impl Mosquitto {
    /// A broker with anonymous access on a free port; returns once it accepts connections.
    pub fn start() -> Mosquitto {
        Mosquitto::start_with(&[])
    }

    /// Like `start`, with extra `mosquitto.conf` lines appended, e.g.
    /// `["max_inflight_messages 5"]` or `["allow_anonymous false", "password_file /abs/path"]`
    /// (later lines win).
    pub fn start_with(extra_conf_lines: &[&str]) -> Mosquitto {
        let dir = tempfile::Builder::new()
            .prefix("mosquitto-")
            .tempdir()
            .expect("create the broker's temp dir");
        let port = free_port();
        let path = dir.path().display();
        // Logs go to stderr, which C leaves unbuffered (stdout and `log_dest file` are buffered
        // until exit), and stderr goes to `mosquitto.log`: `log()` shows them as they happen.
        let mut conf = format!(
            "listener {port} {HOST}\n\
             allow_anonymous true\n\
             persistence true\n\
             persistence_location {path}/\n\
             log_dest stderr\n\
             log_type all\n"
        );
        // SAFETY: geteuid(2) cannot fail and has no preconditions.
        if unsafe { libc::geteuid() } == 0 {
            // As root Mosquitto would switch to the `mosquitto` user, which cannot write here.
            conf.push_str("user root\n");
        }
        for line in extra_conf_lines {
            conf.push_str(line);
            conf.push('\n');
        }
        fs::write(dir.path().join("mosquitto.conf"), conf).expect("write mosquitto.conf");
        let mut broker = Mosquitto {
            dir,
            port,
            child: None,
        };
        broker.launch();
        broker
    }

    /// A broker with no cap on messages queued for a disconnected persistent session (its
    /// default of 1000 drops the rest, which would be the broker losing data, not the bridge).
    pub fn start_unbounded() -> Mosquitto {
        Mosquitto::start_with(&["max_queued_messages 0"])
    }

    pub fn host(&self) -> &'static str {
        HOST
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// Everything the broker logged so far (`log_type all`), for assertions and failure output.
    pub fn log(&self) -> String {
        fs::read_to_string(self.log_path()).unwrap_or_default()
    }

    /// Stops the broker the way an operator would (SIGTERM): it saves sessions and closes
    /// connections. No-op when stopped.
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            process::terminate(&mut child, Duration::from_secs(10));
        }
    }

    /// Stops (if running) and starts again on the same port with the same persistence file.
    pub fn restart(&mut self) {
        self.stop();
        self.launch();
    }

    fn log_path(&self) -> PathBuf {
        self.dir.path().join("mosquitto.log")
    }

    fn launch(&mut self) {
        let log = File::options()
            .create(true)
            .append(true)
            .open(self.log_path())
            .expect("open mosquitto.log");
        let mut command = process::command("mosquitto", None);
        command
            .arg("-c")
            .arg(self.dir.path().join("mosquitto.conf"))
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("clone the log handle"))
            .stderr(log);
        let mut child = process::spawn(command)
            .unwrap_or_else(|e| panic!("cannot start mosquitto ({e}): run scripts/test"));
        let deadline = Instant::now() + Duration::from_secs(10);
        while TcpStream::connect((HOST, self.port)).is_err() {
            if let Ok(Some(status)) = child.try_wait() {
                panic!(
                    "mosquitto exited ({status}) before listening on {}:\n{}",
                    self.port,
                    tail(&self.log_path(), 20)
                );
            }
            if Instant::now() > deadline {
                process::kill_group(&mut child);
                panic!(
                    "mosquitto did not listen on {} within 10 s:\n{}",
                    self.port,
                    tail(&self.log_path(), 20)
                );
            }
            thread::sleep(Duration::from_millis(10));
        }
        self.child = Some(child);
    }
}

impl Drop for Mosquitto {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            process::kill_group(&mut child);
        }
    }
}

impl Mosquitto {
    /// A broker that wants a user name and password, with a TLS listener beside the plain one.
    pub fn start_with_tls_and_a_password(certs: &Certs, dir: &Path) -> (Mosquitto, u16) {
        let passwords = dir.join("passwords");
        let status = Command::new("mosquitto_passwd")
            .args(["-b", "-c"])
            .arg(&passwords)
            .args(["pi", "s3cret"])
            .status()
            .expect("run mosquitto_passwd");
        assert!(status.success(), "mosquitto_passwd failed");
        let tls_port = free_port();
        let broker = Mosquitto::start_with(&[
            "allow_anonymous false",
            &format!("password_file {}", passwords.display()),
            &format!("listener {tls_port} 127.0.0.1"),
            &format!("cafile {}", certs.ca().display()),
            &format!("certfile {}", certs.server_cert().display()),
            &format!("keyfile {}", certs.server_key().display()),
        ]);
        (broker, tls_port)
    }
}
