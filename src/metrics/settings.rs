//! `metrics:` in the config file.

use std::net::SocketAddr;

use crate::settings::{SettingsError, key_error};
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct MetricsSettings {
    /// Where `/metrics`, `/healthz` and `/readyz` listen; `null` turns the endpoint off. Port 0
    /// picks a free port (logged as `metrics listening address=...`).
    pub bind: Option<SocketAddr>,
    /// Seconds between two documents in the `{prefix}metrics` data stream; 0 ships none.
    pub ship_interval_s: u64,
    /// `mqtt2es.instance` in shipped documents; the host name when not set.
    pub instance: Option<String>,
    /// `/readyz` says 503 when Elasticsearch has not answered for this long. When nothing else
    /// talks to it (no traffic, shipping off), mqtt2es asks `_cluster/health` about every third
    /// of this.
    pub elasticsearch_answer_max_age_s: u64,
}

impl Default for MetricsSettings {
    fn default() -> Self {
        MetricsSettings {
            bind: Some(SocketAddr::from(([0, 0, 0, 0], 9464))),
            ship_interval_s: 10,
            instance: None,
            elasticsearch_answer_max_age_s: 30,
        }
    }
}

impl MetricsSettings {
    /// Rules serde cannot express: `(key, message)` for the config error.
    pub fn check(&self) -> Result<(), SettingsError> {
        if self.elasticsearch_answer_max_age_s == 0 {
            return Err(key_error(
                "metrics.elasticsearch_answer_max_age_s",
                "must be at least 1: with 0, /readyz could never say ready",
            ));
        }
        if let Some(instance) = &self.instance
            && instance.trim().is_empty()
        {
            return Err(key_error(
                "metrics.instance",
                format!("{instance:?} is blank; leave it out to use the host name"),
            ));
        }
        Ok(())
    }

    /// The configured instance name, else the host name, else `mqtt2es`.
    pub fn instance_name(&self) -> String {
        if let Some(name) = &self.instance {
            return name.clone();
        }
        std::fs::read_to_string("/proc/sys/kernel/hostname")
            .ok()
            .or_else(|| std::env::var("HOSTNAME").ok())
            .map(|name| name.trim().to_owned())
            .filter(|name| !name.is_empty())
            .unwrap_or_else(|| "mqtt2es".to_owned())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn metrics_settings_default_to_port_9464_and_a_ten_second_ship_interval() {
        let s: MetricsSettings = serde_json::from_str("{}").expect("defaults");
        assert_eq!(s.bind, Some("0.0.0.0:9464".parse().expect("address")));
        assert_eq!(s.ship_interval_s, 10);
        assert_eq!(s.elasticsearch_answer_max_age_s, 30);
        assert!(s.check().is_ok());
    }

    #[test]
    fn a_null_bind_turns_the_endpoint_off() {
        let s: MetricsSettings = serde_json::from_str(r#"{"bind": null}"#).expect("null bind");
        assert_eq!(s.bind, None);
    }

    #[test]
    fn a_zero_answer_age_is_refused_naming_the_key() {
        let s: MetricsSettings =
            serde_json::from_str(r#"{"elasticsearch_answer_max_age_s": 0}"#).expect("parses");
        let Err(SettingsError::Key { key, .. }) = s.check() else {
            panic!("a zero age is refused");
        };
        assert_eq!(key, "metrics.elasticsearch_answer_max_age_s");
    }

    #[test]
    fn a_blank_instance_name_is_refused_quoting_it() {
        let s: MetricsSettings = serde_json::from_str(r#"{"instance": " "}"#).expect("parses");
        let Err(SettingsError::Key { key, message }) = s.check() else {
            panic!("a blank instance is refused");
        };
        assert_eq!(key, "metrics.instance");
        assert!(message.contains("\" \""), "{message}");
    }

    #[test]
    fn an_unknown_metrics_key_is_refused() {
        let err =
            serde_json::from_str::<MetricsSettings>(r#"{"port": 9464}"#).expect_err("unknown key");
        assert!(err.to_string().contains("port"), "{err}");
    }

    #[test]
    fn the_instance_name_falls_back_to_something_non_empty() {
        assert!(!MetricsSettings::default().instance_name().is_empty());
        let named = MetricsSettings {
            instance: Some("pi-gateway".into()),
            ..MetricsSettings::default()
        };
        assert_eq!(named.instance_name(), "pi-gateway");
    }
}
