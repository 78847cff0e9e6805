//! A program a test starts and talks to through its output: an MQTT client (`mosquitto_sub`, the
//! Go and Python paho clients, MQTT.js), its lines collected as they come.
//!
//! Reader threads collect stdout and stderr, so a test can poll for a line with a deadline while
//! the program keeps running; the program leads its own process group, killed on drop (and by
//! the kernel if this binary dies: see `process`).

use std::ffi::OsStr;
use std::io::{BufRead, BufReader, Read};
use std::process::{Child, ExitStatus, Stdio};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use super::process;

/// How long `wait_for` and `finish` wait before they fail the test.
pub const WAIT: Duration = Duration::from_secs(30);

/// One line a program printed, and on which stream.
#[derive(Debug, Clone)]
struct Line {
    stderr: bool,
    text: String,
}

/// A running program: stdout and stderr collected line by line in arrival order, the whole
/// process group killed on drop.
pub struct Running {
    what: String,
    child: Child,
    lines: Arc<Mutex<Vec<Line>>>,
    readers: Vec<JoinHandle<()>>,
}

impl Running {
    pub fn start(program: impl AsRef<OsStr>, args: &[&str]) -> Running {
        Running::start_with(program, args, &[])
    }

    /// Like `start`, with extra environment variables.
    pub fn start_with(program: impl AsRef<OsStr>, args: &[&str], env: &[(&str, &str)]) -> Running {
        let what = format!("{} {args:?}", program.as_ref().to_string_lossy());
        let mut command = process::command(program, None);
        command
            .args(args)
            .envs(env.iter().copied())
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let mut child =
            process::spawn(command).unwrap_or_else(|e| panic!("start {what}: {e} (installed?)"));
        let lines = Arc::new(Mutex::new(Vec::new()));
        let stdout: Box<dyn Read + Send> = Box::new(child.stdout.take().expect("piped stdout"));
        let stderr: Box<dyn Read + Send> = Box::new(child.stderr.take().expect("piped stderr"));
        let readers = [(false, stdout), (true, stderr)]
            .into_iter()
            .map(|(is_stderr, stream)| {
                let lines = Arc::clone(&lines);
                // Ends when the stream closes, i.e. when the program exits or is killed.
                std::thread::spawn(move || {
                    for text in BufReader::new(stream).lines() {
                        let Ok(text) = text else { return };
                        let line = Line {
                            stderr: is_stderr,
                            text,
                        };
                        lines.lock().unwrap_or_else(|e| e.into_inner()).push(line);
                    }
                })
            })
            .collect();
        Running {
            what,
            child,
            lines,
            readers,
        }
    }

    fn collected(&self) -> Vec<Line> {
        self.lines.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// Every line so far, stdout and stderr in arrival order.
    pub fn lines(&self) -> Vec<String> {
        self.collected().into_iter().map(|l| l.text).collect()
    }

    /// The stdout lines so far.
    pub fn stdout(&self) -> Vec<String> {
        self.collected()
            .into_iter()
            .filter(|l| !l.stderr)
            .map(|l| l.text)
            .collect()
    }

    /// Everything printed so far, one line each.
    pub fn output(&self) -> String {
        self.lines().join("\n")
    }

    /// How many lines so far match.
    pub fn count(&self, matches: impl Fn(&str) -> bool) -> usize {
        self.lines
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
            .filter(|l| matches(&l.text))
            .count()
    }

    /// Whether the program has exited and all of its output is collected.
    pub fn ended(&mut self) -> Option<ExitStatus> {
        let status = self.child.try_wait().ok().flatten()?;
        self.readers
            .iter()
            .all(JoinHandle::is_finished)
            .then_some(status)
    }

    /// Waits until `n` lines match; panics with the output when `WAIT` passes or the program
    /// has ended without printing them.
    pub fn wait_for(&mut self, n: usize, matches: impl Fn(&str) -> bool) {
        let deadline = Instant::now() + WAIT;
        loop {
            if self.count(&matches) >= n {
                return;
            }
            if let Some(status) = self.ended() {
                assert!(
                    self.count(&matches) >= n,
                    "{} ended ({status}) before printing what was awaited:\n{}",
                    self.what,
                    self.output()
                );
                return;
            }
            assert!(
                Instant::now() < deadline,
                "{} did not print what was awaited within {WAIT:?}:\n{}",
                self.what,
                self.output()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Waits for it to exit (within `WAIT`) and for all of its output; its status.
    pub fn wait(&mut self) -> ExitStatus {
        let deadline = Instant::now() + WAIT;
        let status = loop {
            if let Some(status) = self.child.try_wait().expect("wait for a program") {
                break status;
            }
            assert!(
                Instant::now() < deadline,
                "{} did not exit within {WAIT:?}:\n{}",
                self.what,
                self.output()
            );
            std::thread::sleep(Duration::from_millis(20));
        };
        for reader in self.readers.drain(..) {
            let _ = reader.join();
        }
        status
    }

    /// Waits for it to exit (within `WAIT`); its status and everything it printed.
    pub fn finish(mut self) -> (ExitStatus, String) {
        let status = self.wait();
        (status, self.output())
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        if !matches!(self.child.try_wait(), Ok(Some(_))) {
            process::kill_group(&mut self.child);
        }
    }
}

/// Runs a program to completion: its status and what it printed.
pub fn run(program: impl AsRef<OsStr>, args: &[&str]) -> (ExitStatus, String) {
    Running::start(program, args).finish()
}

/// Runs a program that must succeed; returns what it printed.
pub fn run_ok(program: impl AsRef<OsStr>, args: &[&str]) -> String {
    let what = format!("{} {args:?}", program.as_ref().to_string_lossy());
    let (status, output) = run(program, args);
    assert!(status.success(), "{what} failed ({status}):\n{output}");
    output
}
