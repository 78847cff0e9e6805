//! The `upstream:` config section: which broker to subscribe to and how.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use crate::secret::Secret;
use crate::settings::{SettingsError, key_error, read_secret};

/// MQTT protocol version spoken to the upstream broker.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
pub enum Protocol {
    #[serde(rename = "3.1.1")]
    V311,
    #[serde(rename = "5")]
    V5,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct UpstreamSettings {
    pub host: String,
    pub port: u16,
    pub protocol: Protocol,
    /// Connection `i` (0-based) uses `client_id` when there is one connection, else `client_id-i`.
    pub client_id: String,
    pub username: Option<String>,
    pub password: Option<Secret>,
    /// Read the password from this file (trailing newline trimmed) instead of `password`.
    pub password_file: Option<PathBuf>,
    pub tls: Option<TlsSettings>,
    /// Persistent sessions are what make ack-after-durable work across reconnects: keep false.
    pub clean_session: bool,
    /// MQTT 5 session expiry; must be > 0 for the broker to keep the session.
    pub session_expiry_s: u32,
    pub keep_alive_s: u64,
    /// Maximum QoS requested in SUBSCRIBE.
    pub qos: u8,
    /// Subscribe as `$share/<group>/<filter>`: instances (and connections) in one group split the stream.
    pub shared_group: Option<String>,
    /// Parallel subscriber connections in the shared group. One connection is limited by the
    /// broker's in-flight window (Mosquitto: 20 unacknowledged QoS 1 messages) divided by flush
    /// latency; several connections multiply that window without weakening the guarantee.
    pub connections: usize,
    /// Largest MQTT packet accepted from the broker. Larger packets cannot be read at all, so keep
    /// this above `pipelines.max_payload_bytes`: payloads between the two become dead letters.
    pub max_packet_bytes: usize,
    /// MQTT 5 receive maximum advertised to the broker (QoS 1/2 messages in flight to us).
    pub receive_maximum: u16,
    pub reconnect_initial_ms: u64,
    pub reconnect_max_ms: u64,
    /// Where what each message not yet acknowledged was assigned is kept, so that the broker's
    /// redelivery after a crash of mqtt2es is the same reading and stored once.
    pub state_dir: PathBuf,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct TlsSettings {
    /// PEM file with the CA certificate(s) that signed the broker's certificate.
    pub ca_file: PathBuf,
    /// Optional client certificate and key (PEM) for brokers that require them.
    pub client_cert_file: Option<PathBuf>,
    pub client_key_file: Option<PathBuf>,
}

impl Default for UpstreamSettings {
    fn default() -> Self {
        UpstreamSettings {
            host: "localhost".into(),
            port: 1883,
            protocol: Protocol::V311,
            client_id: "mqtt2es".into(),
            username: None,
            password: None,
            password_file: None,
            tls: None,
            clean_session: false,
            session_expiry_s: 7 * 24 * 3600,
            keep_alive_s: 30,
            qos: 1,
            shared_group: None,
            connections: 1,
            max_packet_bytes: 16 * 1024 * 1024,
            state_dir: PathBuf::from("mqtt2es-state"),
            receive_maximum: 1000,
            reconnect_initial_ms: 100,
            reconnect_max_ms: 30_000,
        }
    }
}

impl UpstreamSettings {
    /// The section's rules; returns its password, read from its file if need be.
    pub fn check(&self, max_payload_bytes: usize) -> Result<Option<Secret>, SettingsError> {
        if self.qos > 2 {
            return Err(key_error(
                "upstream.qos",
                format!("must be 0, 1 or 2, not {}", self.qos),
            ));
        }
        if self.connections == 0 {
            return Err(key_error("upstream.connections", "must be at least 1"));
        }
        if self.connections > 1 && self.shared_group.is_none() {
            return Err(key_error(
                "upstream.connections",
                format!(
                    "{} connections need upstream.shared_group, otherwise each one receives every message",
                    self.connections
                ),
            ));
        }
        if let Some(group) = &self.shared_group
            && (group.is_empty() || group.contains(['/', '+', '#']))
        {
            return Err(key_error(
                "upstream.shared_group",
                format!("{group:?} must be non-empty and contain no '/', '+' or '#'"),
            ));
        }
        if self.client_id.is_empty() {
            return Err(key_error(
                "upstream.client_id",
                "must not be empty: a persistent session needs a stable client id",
            ));
        }
        if self.max_packet_bytes < max_payload_bytes {
            return Err(key_error(
                "upstream.max_packet_bytes",
                format!(
                    "{} is below pipelines.max_payload_bytes ({}); oversized payloads could then not even be dead-lettered",
                    self.max_packet_bytes, max_payload_bytes
                ),
            ));
        }
        if self.password.is_some() && self.password_file.is_some() {
            return Err(key_error(
                "upstream.password_file",
                "give either password or password_file, not both",
            ));
        }
        let password = match &self.password_file {
            Some(path) => Some(read_secret("upstream.password_file", path)?),
            None => self.password.clone(),
        };
        if password.is_some() && self.username.is_none() {
            return Err(key_error(
                "upstream.username",
                "a password is configured but no username",
            ));
        }
        // CONNECT carries each with a two-byte length, and rumqttc's encoder cuts a longer one's
        // length without a word: the broker would read a corrupt CONNECT on every attempt.
        let longest_id = self.client_id_for(self.connections - 1);
        let strings = [
            ("upstream.client_id", Some(longest_id.as_str())),
            ("upstream.username", self.username.as_deref()),
            ("upstream.password", password.as_ref().map(Secret::expose)),
        ];
        for (key, text) in strings {
            if let Some(text) = text
                && text.len() > usize::from(u16::MAX)
            {
                return Err(key_error(
                    key,
                    format!("is {} bytes; MQTT allows at most 65535", text.len()),
                ));
            }
        }
        Ok(password)
    }

    pub fn client_id_for(&self, connection: usize) -> String {
        if self.connections <= 1 {
            self.client_id.clone()
        } else {
            format!("{}-{connection}", self.client_id)
        }
    }

    /// The filter string to subscribe with, shared-group prefix applied.
    pub fn subscription_for(&self, filter: &str) -> String {
        match &self.shared_group {
            Some(group) => format!("$share/{group}/{filter}"),
            None => filter.to_string(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn connections_in_a_group_get_distinct_client_ids() {
        let settings = UpstreamSettings {
            connections: 3,
            ..Default::default()
        };
        assert_eq!(settings.client_id_for(2), "mqtt2es-2");
        assert_eq!(UpstreamSettings::default().client_id_for(0), "mqtt2es");
    }

    #[test]
    fn a_shared_group_prefixes_every_filter() {
        let settings = UpstreamSettings {
            shared_group: Some("bridge".into()),
            ..Default::default()
        };
        assert_eq!(
            settings.subscription_for("sensors/#"),
            "$share/bridge/sensors/#"
        );
    }

    #[test]
    fn a_client_id_or_password_too_long_for_mqtt_is_refused_at_start_without_showing_it() {
        // 65,534 bytes pass alone, but connection 10 of 11 makes the id `…-10`.
        let settings = UpstreamSettings {
            client_id: "c".repeat(65_534),
            connections: 11,
            shared_group: Some("g".into()),
            ..Default::default()
        };
        let error = settings.check(1024).expect_err("refused").to_string();
        assert!(error.contains("upstream.client_id"), "{error}");
        assert!(error.contains("65537 bytes"), "{error}");

        let secret = "p".repeat(70_000);
        let settings = UpstreamSettings {
            username: Some("bridge".into()),
            password: Some(Secret::new(secret)),
            ..Default::default()
        };
        let error = settings.check(1024).expect_err("refused").to_string();
        assert!(error.contains("upstream.password"), "{error}");
        assert!(!error.contains("ppp"), "{error}");
    }
}
