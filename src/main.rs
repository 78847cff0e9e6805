//! The `mqtt2es` command: parse the command line, set up logs, load config, run, and map
//! errors to exit codes (0 ok, 1 runtime failure, 2 invalid config or usage).

use std::ffi::OsString;
use std::io::{IsTerminal, Read};
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use mqtt2es::broker::auth::password::{self, Edit};
use mqtt2es::config::{Config, LogFormat, LogSettings};
use mqtt2es::metrics::MetricsSettings;
use mqtt2es::{app, simulate, top};
use tokio_util::sync::CancellationToken;
use tracing_subscriber::EnvFilter;

/// See Cargo.toml: glibc's malloc was a third of the CPU per reading.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

// mimalloc's own option setter (in the library the mimalloc crate links; that crate exposes no
// option API without its `extended` feature and a second crate, for one call).
unsafe extern "C" {
    safe fn mi_option_set(option: std::ffi::c_int, value: std::ffi::c_long);
    #[cfg_attr(not(test), allow(dead_code))]
    safe fn mi_option_get(option: std::ffi::c_int) -> std::ffi::c_long;
}

/// `mi_option_purge_delay` in mimalloc 3's `mi_option_t` (a test checks it is that option).
const MI_OPTION_PURGE_DELAY: std::ffi::c_int = 15;

/// Freed memory goes back to the OS 10 ms after it was last used (mimalloc 2's default; 3's is
/// a second): at full rate a second's worth of freed batches and documents stayed resident,
/// 43–52 MB of peak RSS against 23–30 MB with 10 ms, at the same CPU per reading
/// (bench/README.md, issue 9). `MIMALLOC_PURGE_DELAY` in the environment still wins.
fn tune_allocator() {
    if std::env::var_os("MIMALLOC_PURGE_DELAY").is_none() {
        mi_option_set(MI_OPTION_PURGE_DELAY, 10);
    }
}

/// MQTT to Elasticsearch telemetry bridge.
///
/// Is an MQTT broker (or subscribes to one, with an `upstream` section), runs each message through
/// the pipelines in `pipelines/*.yaml`, and writes the documents to Elasticsearch data streams
/// with `_bulk`. QoS 1 and 2 messages are acknowledged only once stored in Elasticsearch or
/// dead-lettered with a reason.
///
/// Configuration: defaults, then the YAML file, then environment variables
/// MQTT2ES_<SECTION>__<KEY> (for example MQTT2ES_ELASTICSEARCH__URL=http://es:9200).
///
/// Who may connect to the embedded broker: while no users are configured (no
/// broker.auth.password_file or jwt), clients without a user name are let in from loopback
/// (127.0.0.0/8, ::1) only and refused (CONNACK "not authorized") from anywhere else, as
/// Mosquitto 2 does; once users are configured, they are refused everywhere.
/// broker.auth.allow_anonymous says otherwise: true (from anywhere), false (never) or loopback.
/// `mqtt2es check` says which applies.
#[derive(Parser)]
#[command(version, about, long_about)]
struct Cli {
    /// The configuration file. Relative paths inside it are resolved against its directory.
    #[arg(
        long,
        short,
        global = true,
        env = "MQTT2ES_CONFIG",
        default_value = "mqtt2es.yaml"
    )]
    config: PathBuf,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Accept (or subscribe), transform and index until SIGTERM or Ctrl-C; then flush, ack what was stored, exit 0.
    Run,
    /// Validate the configuration and every pipeline; print what is wrong and exit 2, or a summary
    /// (which includes who may connect to the embedded broker).
    Check,
    /// Install templates, lifecycle and data streams in Elasticsearch, and import the dashboards
    /// into Kibana when `kibana:` is configured (idempotent; `run` does the Elasticsearch part
    /// at start too).
    Setup,
    /// Push one sample message through the pipelines and print the resulting document as JSON.
    ///
    /// Example: mqtt2es try --topic sensors/lab/pi-01/telemetry --payload '{"temp_c":21.4}'
    Try {
        /// The topic the message arrives on; it chooses the pipeline unless --pipeline is given.
        #[arg(long)]
        topic: String,
        /// The payload; read from standard input when omitted.
        #[arg(long)]
        payload: Option<String>,
        /// Use this pipeline instead of the first whose topics match.
        #[arg(long)]
        pipeline: Option<String>,
        #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u8).range(0..=2))]
        qos: u8,
        #[arg(long)]
        retain: bool,
    },
    /// Create or edit a Mosquitto-format password file; see `mqtt2es passwd --help`.
    ///
    /// Must come first on the command line (`mqtt2es passwd …`): it reads no configuration.
    #[command(disable_help_flag = true)]
    Passwd {
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<OsString>,
    },
    /// Run a fleet of virtual Raspberry Pi thermometers against an MQTT broker (demos, load).
    ///
    /// Each device has its own connection, a last will {"state":"offline"} and a retained
    /// {"state":"online"} on sensors/<site>/<device>/status, and publishes random-walk readings
    /// {"temp_c":..,"humidity":..,"battery":..,"ts":..} to sensors/<site>/<device>/telemetry.
    /// Progress goes to the log; a summary line (devices= queued= sent= acked= dropped=
    /// seconds=) to stdout at the end. Ctrl-C or SIGTERM: deliver what is queued, publish
    /// offline, exit. Exit status 1 when readings were left unacknowledged. Needs no
    /// configuration file.
    ///
    /// Example: mqtt2es simulate --devices 50 --rate 2 --site lab --duration-s 60
    Simulate(simulate::FleetArgs),
    /// A live view of a running mqtt2es in the terminal, from its /metrics endpoint.
    ///
    /// Refreshes every second: whether Elasticsearch is reachable and since when, connected
    /// devices, readings/s in and documents/s stored, acks pending, the broker's offline
    /// queues (and the spool, where there is one), bulk request and publish→stored latency
    /// (p50, p99), dead letters by reason (last minute and total), and documents/s per data
    /// stream. q, Esc or Ctrl-C quits. --once prints a plain-text snapshot for scripts
    /// instead, and exits 1 if the endpoint cannot be read. The endpoint is --url, else
    /// `metrics.bind` from the configuration file, else http://127.0.0.1:9464/metrics.
    ///
    /// Example: mqtt2es top --url http://gateway:9464
    Top(top::TopArgs),
}

/// Create and edit password files for the embedded broker (`broker.auth.password_file`).
///
/// Works like mosquitto_passwd, and each tool reads and edits the other's files: an entry is
/// `user:$7$101$<salt>$<hash>`, PBKDF2-HMAC-SHA512 with 101 iterations and a 12-byte random
/// salt, as Mosquitto 2 writes it (older `$6$` entries are read too). Without -b the password
/// is asked twice on the terminal, without echo. The file is replaced atomically; a new one is
/// readable by its owner only. The broker reads the file at start.
///
/// Examples:
///   mqtt2es passwd -c passwd rajan           create the file with one user (prompts)
///   mqtt2es passwd -b passwd pi raspberry    add or change a user, password given
///   mqtt2es passwd -D passwd pi              delete a user
///   mqtt2es passwd -U auth.txt               hash a file of user:plaintext lines in place
#[derive(Parser)]
#[command(
    name = "mqtt2es passwd",
    bin_name = "mqtt2es passwd",
    long_about,
    verbatim_doc_comment
)]
struct PasswdCli {
    /// Create the password file, replacing it if it exists.
    #[arg(short = 'c', conflicts_with_all = ["delete", "upgrade"])]
    create: bool,
    /// Take the password from the command line instead of prompting (it is then visible to
    /// other users in the process list and kept in shell history).
    #[arg(short = 'b', conflicts_with_all = ["delete", "upgrade"], requires = "password")]
    batch: bool,
    /// Delete the user.
    #[arg(short = 'D', conflicts_with = "upgrade")]
    delete: bool,
    /// Hash the plain-text passwords of a `user:password` file in place (entries already
    /// hashed are left alone).
    #[arg(short = 'U', conflicts_with = "username")]
    upgrade: bool,
    /// The password file.
    file: PathBuf,
    /// The user to add, change or delete.
    #[arg(required_unless_present = "upgrade")]
    username: Option<String>,
    /// The password, with -b only.
    #[arg(requires = "batch")]
    password: Option<String>,
}

/// Why a command did not succeed, and so its exit status: the one place errors become codes.
enum Failure {
    /// Exit 2: a configuration or command line the user must fix.
    Usage(String),
    /// Exit 1: the command ran and failed.
    Failed(String),
}

impl Failure {
    /// A failed `run` or `setup`: in the log (JSON logs go to collectors) and on stderr.
    fn of_run(error: anyhow::Error) -> Failure {
        tracing::error!("{error:#}");
        Failure::Failed(format!("mqtt2es: {error:#}"))
    }
}

fn main() -> ExitCode {
    tune_allocator();
    match try_main() {
        Ok(()) => ExitCode::SUCCESS,
        Err(Failure::Usage(message)) => {
            eprintln!("{message}");
            ExitCode::from(2)
        }
        Err(Failure::Failed(message)) => {
            eprintln!("{message}");
            ExitCode::FAILURE
        }
    }
}

fn try_main() -> Result<(), Failure> {
    // `passwd` mirrors mosquitto_passwd, whose `-c` (create) would clash with our global
    // `-c/--config`, so it is parsed on its own before the main command line.
    let args: Vec<OsString> = std::env::args_os().collect();
    if args.get(1).is_some_and(|arg| arg == "passwd") {
        return passwd(PasswdCli::parse_from(&args[1..]));
    }
    let cli = Cli::parse();
    let command = match cli.command {
        Command::Passwd { .. } => return Err(misplaced_passwd()),
        Command::Simulate(args) => {
            // A load generator for any broker: no configuration file needed.
            init_logs(&LogSettings::default());
            return simulate(args);
        }
        // A viewer of another process: it needs at most the metrics address from the file.
        Command::Top(args) => return top(&args, &cli.config),
        command => command,
    };
    let (config, secrets) = Config::load(&cli.config).map_err(|error| {
        Failure::Usage(format!(
            "mqtt2es: invalid configuration in {:?}:\n{error}",
            cli.config
        ))
    })?;
    init_logs(&config.log);
    match command {
        Command::Check => print(app::check(&config)),
        Command::Try {
            topic,
            payload,
            pipeline,
            qos,
            retain,
        } => {
            let payload = match payload {
                Some(text) => text.into_bytes(),
                None => {
                    let mut bytes = Vec::new();
                    std::io::stdin().read_to_end(&mut bytes).map_err(|error| {
                        Failure::Usage(format!(
                            "mqtt2es: cannot read the payload from standard input: {error}"
                        ))
                    })?;
                    bytes
                }
            };
            let sample = app::Sample {
                topic,
                payload,
                pipeline,
                qos,
                retain,
            };
            print(app::try_sample(&config, sample))
        }
        Command::Setup => runtime()?
            .block_on(app::setup(&config))
            .map_err(Failure::of_run),
        Command::Run => runtime_with(run_workers(&config))?
            .block_on(app::run(config, secrets))
            .map_err(Failure::of_run),
        Command::Passwd { .. } | Command::Simulate(_) | Command::Top(_) => {
            unreachable!("handled before the configuration is loaded")
        }
    }
}

fn passwd(cli: PasswdCli) -> Result<(), Failure> {
    let failed = |message: String| Failure::Failed(format!("mqtt2es passwd: {message}"));
    if cli.upgrade {
        return password::edit(&cli.file, Edit::Upgrade).map_err(|e| failed(e.to_string()));
    }
    let username = cli.username.as_deref().unwrap_or_default();
    if cli.delete {
        return password::edit(&cli.file, Edit::Delete { username })
            .map_err(|e| failed(e.to_string()));
    }
    let password = match cli.password {
        Some(password) => password,
        None => prompt_password().map_err(failed)?,
    };
    let edit = Edit::Set {
        username,
        password: password.as_bytes(),
        create: cli.create,
    };
    password::edit(&cli.file, edit).map_err(|e| failed(e.to_string()))
}

fn misplaced_passwd() -> Failure {
    Failure::Usage(
        "mqtt2es: `passwd` must come first: mqtt2es passwd [-c] [-b] <file> <user> [<password>]"
            .to_owned(),
    )
}

fn prompt_password() -> Result<String, String> {
    let ask = |prompt| {
        rpassword::prompt_password(prompt).map_err(|e| {
            format!("cannot read the password from the terminal ({e}); use -b to give it")
        })
    };
    let first = ask("Password: ")?;
    if ask("Reenter password: ")? != first {
        return Err("passwords do not match".into());
    }
    Ok(first)
}

fn simulate(args: simulate::FleetArgs) -> Result<(), Failure> {
    let fleet =
        simulate::Fleet::new(args).map_err(|error| Failure::Usage(format!("mqtt2es: {error}")))?;
    let summary = runtime()?.block_on(async {
        let stop = CancellationToken::new();
        let on_signal = stop.clone();
        tokio::spawn(async move {
            app::signalled().await;
            tracing::info!("stopping: delivering queued readings, then offline");
            on_signal.cancel();
        });
        simulate::run(fleet, stop).await
    });
    println!("{summary}");
    match summary.unacknowledged() {
        0 => Ok(()),
        left => Err(Failure::Failed(format!(
            "mqtt2es: {left} reading(s) were never acknowledged by the broker"
        ))),
    }
}

fn top(args: &top::TopArgs, config: &std::path::Path) -> Result<(), Failure> {
    let url = match &args.url {
        Some(url) => top::endpoint(url),
        None => top::url_of_bind(metrics_bind(config)?),
    };
    let result = url.and_then(|url| {
        if args.once {
            top::once(args, &url).map(|text| print!("{text}"))
        } else {
            top::watch(args, &url)
        }
    });
    result.map_err(|error| {
        let message = format!("mqtt2es top: {error}");
        if error.is_usage() {
            return Failure::Usage(message);
        }
        if matches!(error, top::TopError::Scrape(_)) {
            return Failure::Failed(format!(
                "{message}\nmqtt2es top: is mqtt2es running, with its metrics endpoint on that \
                 address? (metrics.bind; or give --url)"
            ));
        }
        Failure::Failed(message)
    })
}

fn metrics_bind(config: &std::path::Path) -> Result<Option<std::net::SocketAddr>, Failure> {
    if !config.exists() {
        return Ok(MetricsSettings::default().bind);
    }
    match Config::load(config) {
        Ok((config, _)) => Ok(config.metrics.bind),
        Err(error) => Err(Failure::Usage(format!(
            "mqtt2es top: invalid configuration in {config:?} (or give --url):\n{error}"
        ))),
    }
}

/// A command whose result is text: on stdout, or its error as a usage failure (exit 2).
fn print(result: anyhow::Result<String>) -> Result<(), Failure> {
    let text = result.map_err(|error| Failure::Usage(format!("mqtt2es: {error:#}")))?;
    println!("{text}");
    Ok(())
}

fn runtime() -> Result<tokio::runtime::Runtime, Failure> {
    runtime_with(None)
}

/// A runtime with `workers` threads, or tokio's default (one per core, or
/// `TOKIO_WORKER_THREADS`).
fn runtime_with(workers: Option<usize>) -> Result<tokio::runtime::Runtime, Failure> {
    let mut builder = tokio::runtime::Builder::new_multi_thread();
    if let Some(workers) = workers {
        builder.worker_threads(workers);
    }
    builder
        .enable_all()
        .build()
        .map_err(|error| Failure::of_run(error.into()))
}

/// Worker threads for `run` when they should not be one per core: subscribed to a broker, one
/// per upstream connection (at most one per core). The embedded broker's many connections use
/// every core; one upstream connection is a single stream that a second thread only passes
/// back and forth, each hand-over waking a parked thread. bench/README.md, 2026-12-03:
/// `up-q0-null` 3.3-4.1 against 4.6-5.3 us of CPU per reading, peak RSS 17 against 21-23 MB,
/// in three alternations. `TOKIO_WORKER_THREADS` (tokio's own variable) still overrides.
fn run_workers(config: &Config) -> Option<usize> {
    let cores = std::thread::available_parallelism().map_or(1, std::num::NonZero::get);
    let overridden = std::env::var_os("TOKIO_WORKER_THREADS").is_some();
    workers_for(config, cores, overridden)
}

fn workers_for(config: &Config, cores: usize, overridden: bool) -> Option<usize> {
    if overridden {
        return None;
    }
    let connections = config.upstream.as_ref()?.connections.max(1);
    Some(connections.min(cores))
}

fn init_logs(settings: &LogSettings) {
    let filter = EnvFilter::try_from_default_env()
        .or_else(|_| EnvFilter::try_new(&settings.level))
        .unwrap_or_else(|_| EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::stderr().is_terminal())
        .with_writer(std::io::stderr);
    match settings.format {
        LogFormat::Json => builder.json().init(),
        LogFormat::Text => builder.init(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn option_15_is_mimallocs_purge_delay_with_its_one_second_default() {
        // Fails when a mimalloc upgrade renumbers its options: 15 would then set another one.
        assert_eq!(mi_option_get(MI_OPTION_PURGE_DELAY), 1000);
        mi_option_set(MI_OPTION_PURGE_DELAY, 10);
        assert_eq!(mi_option_get(MI_OPTION_PURGE_DELAY), 10);
    }

    #[test]
    fn a_bridge_subscribed_upstream_runs_a_worker_per_connection_and_the_broker_one_per_core() {
        let config = |yaml: &str| {
            Config::from_yaml(yaml, std::path::Path::new("/"))
                .expect("valid")
                .0
        };
        let one = config("upstream: {host: broker}\n");
        let three = config("upstream: {host: broker, connections: 3, shared_group: g}\n");
        let broker = config("broker: {}\n");
        assert_eq!(workers_for(&one, 8, false), Some(1));
        assert_eq!(workers_for(&three, 8, false), Some(3));
        assert_eq!(workers_for(&three, 2, false), Some(2));
        assert_eq!(workers_for(&broker, 8, false), None);
        assert_eq!(
            workers_for(&one, 8, true),
            None,
            "TOKIO_WORKER_THREADS decides"
        );
    }
}
