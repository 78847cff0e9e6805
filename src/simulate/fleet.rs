//! What `mqtt2es simulate` is asked to do, checked: the command-line arguments become a
//! [`Fleet`] before any device connects, so a bad rate, QoS or site is refused up front rather
//! than discovered by a thousand connections at once.

use std::path::PathBuf;
use std::time::Duration;

use rumqttc::QoS;

use crate::secret::Secret;

/// The fleet to simulate, checked (see `Fleet::new`).
#[derive(Debug, Clone)]
pub struct Fleet {
    pub host: String,
    pub port: u16,
    pub username: Option<String>,
    pub password: Option<Secret>,
    pub site: String,
    /// Device names are this prefix and a number from 1: `pi-1`, `pi-2`, …
    pub device_prefix: String,
    pub devices: usize,
    /// Time between two readings of one device.
    pub period: Duration,
    pub qos: QoS,
    /// Readings per device, then stop; None: until the duration ends or a signal.
    pub count: Option<u64>,
    pub duration: Option<Duration>,
    /// How often progress is logged; None: never.
    pub progress: Option<Duration>,
    /// At the end, how long devices wait for the broker to acknowledge what they queued.
    pub drain: Duration,
}

#[derive(Debug, thiserror::Error, PartialEq)]
pub enum FleetError {
    #[error("--rate {0}: must be a positive number of readings per second per device")]
    Rate(f64),
    #[error("--devices 0: at least one device is needed")]
    NoDevices,
    #[error("--qos {0}: must be 0, 1 or 2")]
    Qos(u8),
    #[error("--{flag} {value:?}: must be one MQTT topic segment (no '/', '+', '#', not empty)")]
    Segment { flag: &'static str, value: String },
    #[error("--password-file {path:?}: {reason}")]
    PasswordFile { path: PathBuf, reason: String },
}

/// Unchecked fleet parameters: the command line of `mqtt2es simulate`.
#[derive(Debug, Clone, clap::Args)]
pub struct FleetArgs {
    /// The MQTT broker: mqtt2es's embedded broker or any other.
    #[arg(long, default_value = "localhost")]
    pub host: String,
    #[arg(long, default_value_t = 1883)]
    pub port: u16,
    #[arg(long)]
    pub username: Option<String>,
    #[arg(long, env = "MQTT2ES_SIMULATE_PASSWORD", hide_env_values = true)]
    pub password: Option<Secret>,
    /// Read the password from this file (trailing newline ignored), e.g. a mounted secret;
    /// docker-compose.yml's simulators use the device password its init service generated.
    #[arg(long, conflicts_with = "password")]
    pub password_file: Option<PathBuf>,
    /// The <site> topic segment; mqtt2es stores it in mqtt2es-telemetry-<site>.
    #[arg(long, default_value = "sim")]
    pub site: String,
    /// Devices are named <device-prefix>1 .. <device-prefix>N.
    #[arg(long, default_value = "pi-")]
    pub device_prefix: String,
    /// Number of devices, each with its own connection.
    #[arg(long, default_value_t = 5)]
    pub devices: usize,
    /// Readings per second per device (0.1 = one every 10 s).
    #[arg(long, default_value_t = 1.0)]
    pub rate: f64,
    /// QoS of the readings (status messages are always QoS 1).
    #[arg(long, default_value_t = 1)]
    pub qos: u8,
    /// Readings per device, then stop.
    #[arg(long)]
    pub count: Option<u64>,
    /// Stop after this many seconds.
    #[arg(long)]
    pub duration_s: Option<f64>,
    /// Seconds between progress lines in the log; 0: none.
    #[arg(long, default_value_t = 10.0)]
    pub progress_s: f64,
    /// At the end, seconds to wait for the broker to acknowledge what is queued.
    #[arg(long, default_value_t = 10.0)]
    pub drain_s: f64,
}

impl Fleet {
    pub fn new(args: FleetArgs) -> Result<Fleet, FleetError> {
        if !(args.rate.is_finite() && args.rate > 0.0) {
            return Err(FleetError::Rate(args.rate));
        }
        if args.devices == 0 {
            return Err(FleetError::NoDevices);
        }
        let qos = rumqttc::qos(args.qos).map_err(|_| FleetError::Qos(args.qos))?;
        for (flag, value) in [("site", &args.site), ("device-prefix", &args.device_prefix)] {
            let empty_ok = flag == "device-prefix";
            if (value.is_empty() && !empty_ok) || value.contains(['/', '+', '#']) {
                return Err(FleetError::Segment {
                    flag,
                    value: value.clone(),
                });
            }
        }
        let password = match &args.password_file {
            Some(path) => {
                let text = std::fs::read_to_string(path).map_err(|e| FleetError::PasswordFile {
                    path: path.clone(),
                    reason: e.to_string(),
                })?;
                Some(Secret::new(text.trim_end_matches(['\r', '\n'])))
            }
            None => args.password,
        };
        let seconds = |s: f64| (s.is_finite() && s > 0.0).then(|| Duration::from_secs_f64(s));
        Ok(Fleet {
            host: args.host,
            port: args.port,
            username: args.username,
            password,
            site: args.site,
            device_prefix: args.device_prefix,
            devices: args.devices,
            period: Duration::from_secs_f64(1.0 / args.rate),
            qos,
            count: args.count,
            duration: args.duration_s.and_then(seconds),
            progress: seconds(args.progress_s),
            drain: seconds(args.drain_s).unwrap_or(Duration::ZERO),
        })
    }

    pub(super) fn device(&self, n: usize) -> String {
        format!("{}{n}", self.device_prefix)
    }
}
