//! `mqtt2es passwd` against the real Mosquitto: the files it writes let `mosquitto_pub -u rajan
//! -P password123` in (the seed's command line), and the terminal prompt works on a real pty.

use std::fs;
use std::io::Read;
use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use mqtt2es::broker::auth::password::PasswordFile;

use crate::support::Mosquitto;

fn mqtt2es_passwd(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_mqtt2es"))
        .arg("passwd")
        .args(args)
        .stdin(Stdio::null())
        .output()
        .expect("run mqtt2es passwd")
}

fn path_arg(path: &Path) -> &str {
    path.to_str().expect("a UTF-8 temp path")
}

/// `mosquitto_pub` with the seed's arguments; the QoS 1 PUBACK proves the broker let it in.
fn seed_publish(broker: &Mosquitto, user: &[&str]) -> Output {
    Command::new("mosquitto_pub")
        .args(["-h", broker.host(), "-p", &broker.port().to_string()])
        .args(["-t", "greetings", "-m", "Hello World MQTT", "-q", "1", "-d"])
        .args(user)
        .stdin(Stdio::null())
        .output()
        .expect("run mosquitto_pub")
}

fn broker_with_password_file(path: &Path) -> Mosquitto {
    Mosquitto::start_with(&[
        "allow_anonymous false",
        &format!("password_file {}", path.display()),
    ])
}

#[test]
fn a_password_file_written_by_mqtt2es_passwd_lets_the_seed_publisher_into_real_mosquitto() {
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join("auth.txt");
    let output = mqtt2es_passwd(&["-c", "-b", path_arg(&path), "rajan", "password123"]);
    assert!(output.status.success(), "{output:?}");
    let output = mqtt2es_passwd(&["-b", path_arg(&path), "pi", "raspberry"]);
    assert!(output.status.success(), "{output:?}");

    let broker = broker_with_password_file(&path);
    let ok = seed_publish(&broker, &["-u", "rajan", "-P", "password123"]);
    assert!(ok.status.success(), "{ok:?}\n{}", broker.log());
    assert!(
        String::from_utf8_lossy(&ok.stdout).contains("PUBACK"),
        "{ok:?}"
    );
    let pi = seed_publish(&broker, &["-u", "pi", "-P", "raspberry"]);
    assert!(pi.status.success(), "{pi:?}\n{}", broker.log());
    for refused in [
        seed_publish(&broker, &["-u", "rajan", "-P", "password124"]),
        seed_publish(&broker, &["-u", "nobody", "-P", "password123"]),
        seed_publish(&broker, &[]),
    ] {
        assert!(!refused.status.success(), "{refused:?}");
    }
}

#[test]
fn the_seeds_plain_text_auth_file_upgraded_by_mqtt2es_passwd_works_with_real_mosquitto() {
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join("auth.txt");
    fs::write(&path, "rajan:password123\n").expect("write the seed's auth.txt");
    let output = mqtt2es_passwd(&["-U", path_arg(&path)]);
    assert!(output.status.success(), "{output:?}");
    let text = fs::read_to_string(&path).expect("read");
    assert!(
        text.starts_with("rajan:$7$101$") && !text.contains("password123"),
        "{text}"
    );

    let broker = broker_with_password_file(&path);
    let ok = seed_publish(&broker, &["-u", "rajan", "-P", "password123"]);
    assert!(ok.status.success(), "{ok:?}\n{}", broker.log());
}

#[test]
fn deleting_a_user_with_mqtt2es_passwd_locks_them_out_of_real_mosquitto() {
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join("passwd");
    assert!(
        mqtt2es_passwd(&["-c", "-b", path_arg(&path), "rajan", "password123"])
            .status
            .success()
    );
    assert!(
        mqtt2es_passwd(&["-b", path_arg(&path), "pi", "raspberry"])
            .status
            .success()
    );
    assert!(
        mqtt2es_passwd(&["-D", path_arg(&path), "pi"])
            .status
            .success()
    );
    let broker = broker_with_password_file(&path);
    assert!(
        !seed_publish(&broker, &["-u", "pi", "-P", "raspberry"])
            .status
            .success()
    );
    assert!(
        seed_publish(&broker, &["-u", "rajan", "-P", "password123"])
            .status
            .success()
    );
}

#[test]
fn mqtt2es_passwd_explains_its_usage_errors() {
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join("passwd");
    let cases: [(&[&str], i32, &str); 4] = [
        (&["-b", path_arg(&path), "rajan"], 2, "PASSWORD"),
        (
            &["-b", path_arg(&path), "rajan", "password123"],
            1,
            "cannot read password file",
        ),
        (
            &["-c", "-b", path_arg(&path), "ra:jan", "x"],
            1,
            "\"ra:jan\"",
        ),
        (&["-c", path_arg(&path), "rajan"], 1, "use -b"),
    ];
    for (args, code, expected) in cases {
        let output = mqtt2es_passwd(args);
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert_eq!(output.status.code(), Some(code), "{args:?}: {stderr}");
        assert!(stderr.contains(expected), "{args:?}: {stderr}");
    }
    assert!(!path.exists());
    let misplaced = Command::new(env!("CARGO_BIN_EXE_mqtt2es"))
        .args(["--config", "x.yaml", "passwd", "f", "u"])
        .output()
        .expect("run mqtt2es");
    assert_eq!(misplaced.status.code(), Some(2), "{misplaced:?}");
    assert!(String::from_utf8_lossy(&misplaced.stderr).contains("must come first"));
}

/// Runs `mqtt2es passwd <args>` on a pseudo-terminal made by util-linux `script`, typing
/// `input`; returns whether it succeeded and what the terminal showed.
fn on_a_terminal(args: &str, input: &str) -> (bool, String) {
    let command = format!("{} passwd {args}", env!("CARGO_BIN_EXE_mqtt2es"));
    let mut child = Command::new("script")
        .args(["-q", "-e", "-c", &command, "/dev/null"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run script (util-linux)");
    {
        use std::io::Write;
        let mut stdin = child.stdin.take().expect("stdin");
        stdin.write_all(input.as_bytes()).expect("type the input");
    }
    let deadline = Instant::now() + Duration::from_secs(20);
    let status = loop {
        if let Some(status) = child.try_wait().expect("wait for script") {
            break status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("mqtt2es passwd on a terminal did not finish within 20 s");
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let mut shown = String::new();
    child
        .stdout
        .take()
        .expect("stdout")
        .read_to_string(&mut shown)
        .expect("read the terminal");
    (status.success(), shown)
}

#[test]
fn mqtt2es_passwd_asks_twice_on_the_terminal_and_refuses_a_mismatch() {
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join("passwd");
    let file = path_arg(&path);

    let (ok, shown) = on_a_terminal(&format!("-c {file} rajan"), "password123\npassword123\n");
    assert!(ok, "{shown}");
    assert!(
        shown.contains("Password: ") && shown.contains("Reenter password: "),
        "{shown}"
    );
    let passwords = PasswordFile::load(&path).expect("a valid file");
    assert!(passwords.verify("rajan", Some(b"password123")));

    let (ok, shown) = on_a_terminal(&format!("{file} rajan"), "changed-1\nchanged-2\n");
    assert!(!ok, "{shown}");
    assert!(shown.contains("do not match"), "{shown}");
    let passwords = PasswordFile::load(&path).expect("a valid file");
    assert!(passwords.verify("rajan", Some(b"password123")), "unchanged");
}
