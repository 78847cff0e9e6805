//! The `mqtt2es` command: parse the command line, set up logs, load config, run, and map
//! errors to exit codes (0 ok, 1 runtime failure, 2 invalid config or usage).

use std::io::{IsTerminal, Read};
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use mqtt2es::app;
use mqtt2es::config::{Config, LogFormat, LogSettings};
use tracing_subscriber::EnvFilter;

/// MQTT to Elasticsearch telemetry bridge.
///
/// Is an MQTT broker (or subscribes to one, with an `upstream` section), runs each message through
/// the pipelines in `pipelines/*.yaml`, and writes the documents to Elasticsearch data streams
/// with `_bulk`. QoS 1 and 2 messages are acknowledged only once stored in Elasticsearch or
/// dead-lettered with a reason.
///
/// Configuration: defaults, then the YAML file, then environment variables
/// MQTT2ES_<SECTION>__<KEY> (for example MQTT2ES_ELASTICSEARCH__URL=http://es:9200).
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
    /// Validate the configuration and every pipeline; print what is wrong and exit 2, or a summary.
    Check,
    /// Install the index templates in Elasticsearch (idempotent; `run` does it at start too).
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
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let (config, secrets) = match Config::load(&cli.config) {
        Ok(loaded) => loaded,
        Err(error) => {
            eprintln!(
                "mqtt2es: invalid configuration in {:?}:\n{error}",
                cli.config
            );
            return ExitCode::from(2);
        }
    };
    init_logs(&config.log);
    let result = match cli.command {
        Command::Check => return report(app::check(&config)),
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
                    if let Err(error) = std::io::stdin().read_to_end(&mut bytes) {
                        eprintln!("mqtt2es: cannot read the payload from standard input: {error}");
                        return ExitCode::from(2);
                    }
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
            return report(app::try_sample(&config, sample));
        }
        Command::Setup => runtime().and_then(|rt| rt.block_on(app::setup(&config))),
        Command::Run => runtime().and_then(|rt| rt.block_on(app::run(config, secrets))),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            tracing::error!("{error:#}");
            eprintln!("mqtt2es: {error:#}");
            ExitCode::FAILURE
        }
    }
}

/// Offline commands print their result on stdout and their complaint on stderr, exit 2 on failure.
fn report(result: anyhow::Result<String>) -> ExitCode {
    match result {
        Ok(text) => {
            println!("{text}");
            ExitCode::SUCCESS
        }
        Err(error) => {
            eprintln!("mqtt2es: {error:#}");
            ExitCode::from(2)
        }
    }
}

fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    Ok(tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?)
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
