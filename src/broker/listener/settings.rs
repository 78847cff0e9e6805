//! A listener's settings (the `broker.listeners` entries): transport, address, TLS files and
//! WebSocket path, with their defaults. What they are checked against (addresses that parse, TLS
//! files that load) is `ListenerSettings::check` in `mod.rs`, beside the TLS loading it shares
//! with `bind`, so that this file and `tls` need not know each other.

use std::fmt;
use std::path::PathBuf;
use std::sync::Arc;

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum Transport {
    #[default]
    Tcp,
    Tls,
    Ws,
    Wss,
}

impl Transport {
    pub(super) fn uses_tls(self) -> bool {
        matches!(self, Transport::Tls | Transport::Wss)
    }

    pub(super) fn uses_websocket(self) -> bool {
        matches!(self, Transport::Ws | Transport::Wss)
    }
}

impl fmt::Display for Transport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Transport::Tcp => "tcp",
            Transport::Tls => "tls",
            Transport::Ws => "ws",
            Transport::Wss => "wss",
        })
    }
}

/// The path MQTT.js, paho's JavaScript client and most dashboards dial by default.
pub const DEFAULT_WEBSOCKET_PATH: &str = "/mqtt";

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct ListenerSettings {
    pub transport: Transport,
    /// `host:port`; port 0 picks a free port (logged, for tests).
    pub bind: String,
    /// For `tls` and `wss`: server certificate chain and key (PEM).
    pub cert_file: Option<PathBuf>,
    pub key_file: Option<PathBuf>,
    /// For `tls` and `wss`: CA certificates (PEM) that client certificates are verified against.
    /// With it, clients are asked for a certificate; one that fails verification is refused.
    pub client_ca_file: Option<PathBuf>,
    /// With `client_ca_file`: refuse clients that send no certificate at all. Off by default, as
    /// Mosquitto's `require_certificate` is, so a password can stand in for a certificate.
    pub require_client_certificate: bool,
    /// For `ws` and `wss`: the HTTP path of the upgrade request (default `/mqtt`).
    pub path: Option<String>,
}

impl Default for ListenerSettings {
    fn default() -> Self {
        ListenerSettings {
            transport: Transport::Tcp,
            bind: "0.0.0.0:1883".into(),
            cert_file: None,
            key_file: None,
            client_ca_file: None,
            require_client_certificate: false,
            path: None,
        }
    }
}

impl ListenerSettings {
    pub fn resolve_paths(&mut self, resolve: &dyn Fn(&mut PathBuf)) {
        for file in [
            &mut self.cert_file,
            &mut self.key_file,
            &mut self.client_ca_file,
        ]
        .into_iter()
        .flatten()
        {
            resolve(file);
        }
    }

    pub(super) fn websocket_path(&self) -> Arc<str> {
        self.path
            .as_deref()
            .unwrap_or(DEFAULT_WEBSOCKET_PATH)
            .into()
    }
}
