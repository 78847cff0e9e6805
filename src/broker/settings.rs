//! The `broker:` section: what the embedded broker listens on, whom it lets in, and its limits.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::auth::{Anonymous, AuthSettings};
use super::listener::ListenerSettings;
use super::session::QueueLimits;
use crate::settings::SettingsError;

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct BrokerSettings {
    /// Where devices connect. Default: plain MQTT on 0.0.0.0:1883.
    pub listeners: Vec<ListenerSettings>,
    #[serde(deserialize_with = "crate::settings::null_is_default")]
    pub auth: AuthSettings,
    /// Persistent-session state (client ids, subscriptions, expiry, QoS 2 ids in flight, the
    /// messages queued while they are offline) and retained messages, kept so that a restart
    /// does not tell devices their session is gone.
    pub state_dir: PathBuf,
    /// Bounds of the messages queued for offline persistent sessions.
    pub offline_queue: QueueLimits,
    /// Packets larger than this close the connection (MQTT 5: advertised in CONNACK).
    pub max_packet_bytes: usize,
    /// Connections beyond this are refused at CONNECT.
    pub max_connections: usize,
    /// Unacknowledged QoS 1/2 publishes we accept per client (MQTT 5: our receive maximum).
    pub max_inflight: u16,
    /// A connection that has not completed its handshake and CONNECT by then is closed.
    pub connect_timeout_ms: u64,
    /// The longest keep-alive an MQTT 5 client may ask for (as Mosquitto's `max_keepalive`):
    /// one asking for more, or for none, is told this one in CONNACK (Server Keep Alive). A
    /// 3.1.1 client cannot be told and keeps its own. Default: no limit.
    pub max_keepalive_s: Option<u16>,
}

impl Default for BrokerSettings {
    fn default() -> Self {
        BrokerSettings {
            listeners: vec![ListenerSettings::default()],
            auth: AuthSettings::default(),
            state_dir: PathBuf::from("mqtt2es-state"),
            offline_queue: QueueLimits::default(),
            max_packet_bytes: 16 * 1024 * 1024,
            max_connections: 10_000,
            max_inflight: 100,
            connect_timeout_ms: 10_000,
            max_keepalive_s: None,
        }
    }
}

impl BrokerSettings {
    /// Makes relative paths relative to the config file's directory.
    pub fn resolve_paths(&mut self, resolve: &dyn Fn(&mut PathBuf)) {
        resolve(&mut self.state_dir);
        for listener in &mut self.listeners {
            listener.resolve_paths(resolve);
        }
        self.auth.resolve_paths(resolve);
    }

    /// Cross-field rules serde cannot express.
    pub fn check(&self, max_payload_bytes: usize) -> Result<(), SettingsError> {
        if self.listeners.is_empty() {
            return Err(SettingsError::Key {
                key: "broker.listeners",
                message: "at least one listener is needed".into(),
            });
        }
        if self.max_packet_bytes < max_payload_bytes {
            return Err(SettingsError::Key {
                key: "broker.max_packet_bytes",
                message: format!(
                    "{} is below pipelines.max_payload_bytes ({max_payload_bytes}); oversized payloads could then not even be dead-lettered",
                    self.max_packet_bytes
                ),
            });
        }
        if self.max_inflight == 0 {
            return Err(SettingsError::Key {
                key: "broker.max_inflight",
                message: "must be at least 1".into(),
            });
        }
        if self.max_keepalive_s == Some(0) {
            return Err(SettingsError::Key {
                key: "broker.max_keepalive_s",
                message: "must be at least 1 (leave it out for no limit)".into(),
            });
        }
        for listener in &self.listeners {
            listener.check()?;
        }
        self.offline_queue.check()?;
        self.auth.check()
    }

    /// Why no client could ever connect with these settings, if that is so: anonymous clients
    /// refused and no way to log in. Checked where the broker is about to run (`run`, `check`),
    /// not at load, so that `setup` works with a config that has no broker section.
    pub fn refuses_everyone(&self) -> Option<&'static str> {
        let auth = &self.auth;
        (auth.anonymous() == Anonymous::Refused && auth.password_file.is_none() && auth.jwt.is_none()).then_some(
            "broker.auth: no client could connect: set allow_anonymous (true or loopback), a password_file or jwt",
        )
    }

    pub fn state_dir(&self) -> &Path {
        &self.state_dir
    }
}
