//! Starting and stopping helper programs so that none outlives the test binary.
//!
//! Destructors are not enough: the shared search node lives in a static, which is never
//! dropped, and a binary that aborts runs no destructor at all. So every program starts as
//! `setpriv --pdeathsig SIGKILL -- program`, and the kernel kills it when its parent goes.
//! The kernel's "parent" is the *thread* that forked, and libtest ends its threads after each
//! test, so all programs are forked from one thread that lives as long as the process.
//! (setpriv rather than `prctl` in `pre_exec` because a uid change clears the death signal:
//! setpriv sets it after switching to the search user.)
//!
//! Each program leads its own process group: Elasticsearch's launcher starts the server JVM as a
//! child, and stopping a node means killing both. (Killing only the launcher also ends the
//! server, which shuts down when its stdin from the launcher closes, but only seconds later,
//! while it still holds the data dir's lock.)

use std::io;
use std::os::unix::process::CommandExt;
use std::process::{Child, Command};
use std::sync::mpsc;
use std::sync::{Mutex, OnceLock};
use std::thread;
use std::time::{Duration, Instant};

/// A user to run a program as (the search user when the tests run as root).
#[derive(Debug, Clone, Copy)]
pub struct User {
    pub uid: u32,
    pub gid: u32,
}

/// `program` wrapped in setpriv: its own process group, SIGKILL when this process dies, and,
/// with `user`, that user's credentials.
pub fn command(program: impl AsRef<std::ffi::OsStr>, user: Option<User>) -> Command {
    let mut command = Command::new("setpriv");
    if let Some(user) = user {
        command.args([
            format!("--reuid={}", user.uid),
            format!("--regid={}", user.gid),
            "--init-groups".to_owned(),
        ]);
    }
    command
        .args(["--pdeathsig", "SIGKILL", "--"])
        .arg(program)
        .process_group(0);
    command
}

type Job = (Command, mpsc::Sender<io::Result<Child>>);

/// Spawns `command` from the process-long spawner thread (see the module doc).
pub fn spawn(command: Command) -> io::Result<Child> {
    static SPAWNER: OnceLock<Mutex<mpsc::Sender<Job>>> = OnceLock::new();
    let spawner = SPAWNER.get_or_init(|| {
        let (jobs, incoming) = mpsc::channel::<Job>();
        thread::Builder::new()
            .name("test-process-spawner".into())
            // The sender lives in a static, so this loop (and the thread) ends only with the process.
            .spawn(move || {
                for (mut command, reply) in incoming {
                    let _ = reply.send(command.spawn());
                }
            })
            .expect("start the spawner thread");
        Mutex::new(jobs)
    });
    let (reply, child) = mpsc::channel();
    spawner
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .send((command, reply))
        .expect("the spawner thread lives as long as the process");
    child.recv().expect("the spawner thread answers every job")
}

/// Kills the process group `child` leads (SIGKILL) and waits until all of it is gone.
pub fn kill_group(child: &mut Child) {
    let pgid = child.id() as libc::pid_t;
    // SAFETY: kill(2) has no memory-safety preconditions.
    unsafe { libc::kill(-pgid, libc::SIGKILL) };
    let _ = child.wait();
    // Members other than the leader (the server JVM) are reaped by init; wait for that, so the
    // next start finds the ports and the data dir free.
    let deadline = Instant::now() + Duration::from_secs(30);
    // SAFETY: as above; signal 0 only checks for existence.
    while unsafe { libc::kill(-pgid, 0) } == 0 && Instant::now() < deadline {
        thread::sleep(Duration::from_millis(20));
    }
}

/// Asks `child` to exit (SIGTERM), so it can save its state; kills it after `grace`.
pub fn terminate(child: &mut Child, grace: Duration) {
    // SAFETY: kill(2) has no memory-safety preconditions.
    unsafe { libc::kill(child.id() as libc::pid_t, libc::SIGTERM) };
    let deadline = Instant::now() + grace;
    while Instant::now() < deadline {
        if let Ok(Some(_)) = child.try_wait() {
            return;
        }
        thread::sleep(Duration::from_millis(10));
    }
    kill_group(child);
}
