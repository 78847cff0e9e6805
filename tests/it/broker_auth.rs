//! Who gets into the broker. `mqtt2es passwd` against the real Mosquitto: the files it writes
//! let `mosquitto_pub -u rajan -P password123` in (the seed's command line), and the terminal
//! prompt works on a real pty. And the shipped config's rule for anonymous clients, seen from a
//! real other host: a network namespace joined to this one by a veth pair (`Netns`).

use std::fs;
use std::io::Read;
use std::net::Ipv4Addr;
use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use mqtt2es::broker::auth::password::PasswordFile;

use crate::support::Mosquitto;
use crate::support::SearchNode;
use crate::support::bridge::{Bridge, BridgeSpec};
use crate::support::publish::{Published, Publisher};

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
fn seed_publish(broker: &Mosquitto, user: &[&str]) -> Published {
    Publisher::to(broker.port())
        .host(broker.host())
        .qos(1)
        .args(user)
        .try_send("greetings", "Hello World MQTT")
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
    assert!(ok.log.contains("PUBACK"), "{ok:?}");
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

// --- anonymous clients: loopback only, from another host's point of view ---

/// A network namespace with a veth pair into this one: from inside it, this host is `host`
/// and the namespace is `peer`, a machine on the network as far as mqtt2es can tell. Names
/// carry the pid and a counter, addresses are a random 10.x.y.z/30; both are removed on drop
/// (deleting the namespace deletes its end of the pair, and with it the pair), even when the
/// test fails half way.
struct Netns {
    name: String,
    host_link: String,
    host: Ipv4Addr,
    peer: Ipv4Addr,
}

impl Netns {
    /// `Err` says why a namespace cannot be made here (not root, no `ip`, no CAP_SYS_ADMIN in
    /// a container); the caller skips then.
    fn create() -> Result<Netns, String> {
        use std::sync::atomic::{AtomicU32, Ordering};
        static NEXT: AtomicU32 = AtomicU32::new(0);
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let pid = std::process::id();
        let name = format!("mqtt2es-it-{pid}-{n}");
        ip(&["netns", "add", &name])?;
        // Interface names have at most 15 bytes: "m2e" + pid (up to 7 digits) + n + side.
        let (host_link, ns_link) = (format!("m2e{pid}{n}h"), format!("m2e{pid}{n}n"));
        let (host, peer) = free_subnet();
        let netns = Netns {
            name,
            host_link,
            host,
            peer,
        };
        let name = netns.name.as_str();
        let ns = |args: &[&str]| -> Result<(), String> {
            ip(&[&["netns", "exec", name, "ip"][..], args].concat())
        };
        ip(&[
            "link",
            "add",
            &netns.host_link,
            "type",
            "veth",
            "peer",
            "name",
            &ns_link,
            "netns",
            name,
        ])?;
        ip(&[
            "addr",
            "add",
            &format!("{host}/30"),
            "dev",
            &netns.host_link,
        ])?;
        ip(&["link", "set", &netns.host_link, "up"])?;
        ns(&["addr", "add", &format!("{peer}/30"), "dev", &ns_link])?;
        ns(&["link", "set", &ns_link, "up"])?;
        ns(&["link", "set", "lo", "up"])?;
        Ok(netns)
    }

    /// Runs `program args` inside the namespace, killed after 30 s (a connect that goes
    /// nowhere would otherwise wait out TCP's retries).
    fn run(&self, program: &str, args: &[&str]) -> Output {
        Command::new("timeout")
            .args(["30", "ip", "netns", "exec", &self.name, program])
            .args(args)
            .stdin(Stdio::null())
            .output()
            .expect("run timeout (coreutils) and ip (iproute2)")
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = ip(&["netns", "del", &self.name]);
        // Gone with the namespace already, unless it was never moved there.
        let _ = Command::new("ip")
            .args(["link", "del", &self.host_link])
            .stderr(Stdio::null())
            .status();
    }
}

fn ip(args: &[&str]) -> Result<(), String> {
    let output = Command::new("ip")
        .args(args)
        .output()
        .map_err(|e| format!("cannot run ip: {e}"))?;
    if output.status.success() {
        Ok(())
    } else {
        Err(format!(
            "ip {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&output.stderr).trim()
        ))
    }
}

/// A random 10.a.b.c/30 no address of this host is in: (this side, the namespace's side).
fn free_subnet() -> (Ipv4Addr, Ipv4Addr) {
    let taken = Command::new("ip")
        .args(["-4", "-o", "addr", "show"])
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
        .unwrap_or_default();
    loop {
        let [a, b] = [rand::random::<u8>(), rand::random::<u8>()];
        if taken.contains(&format!(" 10.{a}.{b}.")) {
            continue;
        }
        let base = rand::random_range(0..64u8) * 4;
        return (
            Ipv4Addr::new(10, a, b, base + 1),
            Ipv4Addr::new(10, a, b, base + 2),
        );
    }
}

/// The shipped mqtt2es.yaml's `broker.auth`, as a YAML flow mapping (JSON is one).
/// The shipped `broker.auth` section as JSON: `null` when, as shipped, every key in it is
/// commented out (mqtt2es reads that as the defaults).
fn shipped_broker_auth() -> String {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("mqtt2es.yaml");
    use figment::providers::Format;
    let config: serde_json::Value = figment::Figment::from(figment::providers::Yaml::file(&path))
        .extract()
        .expect("the shipped mqtt2es.yaml parses");
    let broker = config["broker"].as_object().expect("a broker section");
    assert!(
        broker.contains_key("auth"),
        "the shipped mqtt2es.yaml has a broker.auth section"
    );
    broker["auth"].to_string()
}

/// `mosquitto_pub -d` publishing once to `host:port`, at MQTT `version`.
fn anonymous_publish_args(host: &str, port: u16, version: &str) -> Vec<String> {
    [
        "-h",
        host,
        "-p",
        &port.to_string(),
        "-V",
        version,
        "-t",
        "greetings",
        "-m",
        "Hello world MQTT",
        "-q",
        "1",
        "-d",
    ]
    .map(String::from)
    .to_vec()
}

#[test]
fn with_the_shipped_config_an_anonymous_client_is_refused_from_the_network_and_let_in_from_loopback()
 {
    let netns = match Netns::create() {
        Ok(netns) => netns,
        Err(why) => {
            eprintln!("skipped: no network namespace can be made here ({why})");
            return;
        }
    };
    let auth = shipped_broker_auth();
    let node = SearchNode::shared();
    // The shipped listener is 0.0.0.0:1883; here 0.0.0.0 with a free port.
    let mut bridge = Bridge::start(
        &BridgeSpec::embedded(&node.url())
            .bind("0.0.0.0:0")
            .broker_auth(auth)
            .default_pipeline(),
    );
    let port = bridge.broker_port();
    bridge.wait_ready();

    // From the namespace: another host on the network. CONNACK "not authorized" under both
    // protocol versions (3.1.1 return code 5, MQTT 5 reason code 0x87 = 135).
    let host = netns.host.to_string();
    for (version, connack) in [("mqttv311", "CONNACK (5)"), ("mqttv5", "CONNACK (135)")] {
        let args = anonymous_publish_args(&host, port, version);
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let refused = netns.run("mosquitto_pub", &args);
        let shown = format!(
            "{}{}",
            String::from_utf8_lossy(&refused.stdout),
            String::from_utf8_lossy(&refused.stderr)
        );
        assert!(!refused.status.success(), "{version}: {shown}");
        assert!(
            shown.contains(connack),
            "{version}: {shown}\n{}",
            bridge.logs()
        );
    }
    // Logged once for the address, with the reason and the setting that would let it in; the
    // second refusal only at debug.
    let reason = "reason=anonymous clients are let in from loopback only";
    bridge.wait_for_log(reason, 2, Duration::from_secs(10));
    let logs = bridge.logs();
    let first: Vec<&str> = logs
        .lines()
        .filter(|line| line.contains("(logged once per address)"))
        .collect();
    assert_eq!(first.len(), 1, "{logs}");
    for part in [
        &format!("peer={}:", netns.peer),
        "broker.auth.allow_anonymous: true",
    ] {
        assert!(first[0].contains(part), "{part}: {}", first[0]);
    }

    // From 127.0.0.1: let in, and the QoS 1 publish acknowledged (stored).
    let local = Publisher::to(port)
        .version("mqttv311")
        .qos(1)
        .try_send("greetings", "Hello world MQTT");
    assert!(local.status.success(), "{local:?}\n{}", bridge.logs());
    assert!(
        local.log.contains("CONNACK (0)") && local.log.contains("PUBACK"),
        "{local:?}"
    );
    let status = bridge.terminate(Duration::from_secs(30));
    assert!(status.success(), "{}", bridge.logs());
}

#[test]
fn allow_anonymous_true_lets_an_anonymous_client_in_from_the_network() {
    let netns = match Netns::create() {
        Ok(netns) => netns,
        Err(why) => {
            eprintln!("skipped: no network namespace can be made here ({why})");
            return;
        }
    };
    let node = SearchNode::shared();
    let mut bridge = Bridge::start(
        &BridgeSpec::embedded(&node.url())
            .bind(format!("{}:0", netns.host))
            .broker_auth("{allow_anonymous: true}")
            .default_pipeline(),
    );
    let port = bridge.broker_port();
    bridge.wait_ready();
    let args = anonymous_publish_args(&netns.host.to_string(), port, "mqttv5");
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let output = netns.run("mosquitto_pub", &args);
    let shown = String::from_utf8_lossy(&output.stdout);
    assert!(output.status.success(), "{output:?}\n{}", bridge.logs());
    assert!(
        shown.contains("CONNACK (0)") && shown.contains("PUBACK"),
        "{shown}"
    );
    let status = bridge.terminate(Duration::from_secs(30));
    assert!(status.success(), "{}", bridge.logs());
}
