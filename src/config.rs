//! Typed configuration, loaded once and fully checked before anything starts.
//!
//! Sources, later ones winning: built-in defaults, the YAML file, then environment variables
//! `MQTT2ES_<SECTION>__<KEY>` (for example `MQTT2ES_UPSTREAM__HOST`). Every key lives in a
//! section, so only variables with a `__` are configuration; `MQTT2ES_CONFIG` and friends belong
//! to the command line. Unknown keys are errors everywhere, so a typo never silently becomes a
//! default. Relative paths are resolved against the config file's directory, which is what makes
//! `mqtt2es run --config /etc/mqtt2es/mqtt2es.yaml` find `pipelines/` beside it from any cwd.
//!
//! README.md's "Configuration reference" lists every key with its default and meaning;
//! `reference_tests` fails when it and these types disagree, so a new key is documented with it.

use std::path::{Path, PathBuf};

use figment::Figment;
use figment::providers::{Env, Format, Yaml};
use serde::{Deserialize, Serialize};

use crate::broker::BrokerSettings;

use crate::elastic::{ElasticsearchSettings, KibanaSettings, RetentionDays};
use crate::metrics::MetricsSettings;
use crate::pipeline::{DecodeLimits, IndexPolicy};
use crate::secret::Secret;
use crate::settings::{SettingsError, key_error};
use crate::sink::{BatchSettings, DeadLetterSettings, RetrySettings};
use crate::spool::DeliverySettings;
use crate::upstream::UpstreamSettings;

#[derive(Debug, Clone, Deserialize, Serialize, Default)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// The broker to subscribe to. Without one, mqtt2es is the broker (see `broker`).
    pub upstream: Option<UpstreamSettings>,
    /// The embedded broker, used when no upstream broker is configured.
    pub broker: BrokerSettings,
    pub elasticsearch: ElasticsearchSettings,
    pub pipelines: PipelineSettings,
    pub index: IndexPolicy,
    pub batch: BatchSettings,
    pub retry: RetrySettings,
    pub dead_letter: DeadLetterSettings,
    pub setup: SetupSettings,
    /// Kibana, for `mqtt2es setup` to import the dashboards; absent = no import.
    pub kibana: Option<KibanaSettings>,
    pub shutdown: ShutdownSettings,
    /// When a reading is acknowledged: once stored (direct) or once in the local spool.
    pub delivery: DeliverySettings,
    pub log: LogSettings,
    /// The operations endpoint and the shipped `{prefix}metrics` documents.
    pub metrics: MetricsSettings,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct PipelineSettings {
    /// Directory holding one pipeline per `*.yaml` file.
    pub dir: PathBuf,
    /// Payloads larger than this become dead letters (`payload_too_large`) instead of documents.
    pub max_payload_bytes: usize,
    #[serde(flatten)]
    pub decode: DecodeLimits,
}

impl Default for PipelineSettings {
    fn default() -> Self {
        PipelineSettings {
            dir: PathBuf::from("pipelines"),
            max_payload_bytes: 1024 * 1024,
            decode: DecodeLimits::default(),
        }
    }
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct SetupSettings {
    /// Install the templates when `run` starts (idempotent). Dashboards are imported by
    /// `mqtt2es setup` only: a Kibana that is not up yet must not hold the bridge back.
    pub on_start: bool,
    /// Days each kind of stream keeps its documents (data stream lifecycle; 0 = forever).
    pub retention_days: RetentionDays,
}

impl Default for SetupSettings {
    fn default() -> Self {
        SetupSettings {
            on_start: true,
            retention_days: RetentionDays::default(),
        }
    }
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct ShutdownSettings {
    /// After SIGTERM: how long to keep flushing and retrying before giving up on what is not
    /// stored yet (it stays unacknowledged and is redelivered on the next start).
    pub grace_ms: u64,
}

impl Default for ShutdownSettings {
    fn default() -> Self {
        ShutdownSettings { grace_ms: 30_000 }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    #[default]
    Text,
    Json,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct LogSettings {
    pub format: LogFormat,
    /// A tracing filter such as `info` or `mqtt2es=debug,info`; `RUST_LOG` overrides it.
    pub level: String,
}

impl Default for LogSettings {
    fn default() -> Self {
        LogSettings {
            format: LogFormat::Text,
            level: "info".into(),
        }
    }
}

/// Secrets read from files at load time, kept apart from the settings so `Debug` of the
/// settings never needs to reason about them.
#[derive(Debug, Clone, Default)]
pub struct Secrets {
    pub upstream_password: Option<Secret>,
}

impl Config {
    /// Loads `path` (which must exist) merged with defaults and the environment.
    pub fn load(path: &Path) -> Result<(Config, Secrets), SettingsError> {
        if !path.exists() {
            return Err(SettingsError::Missing {
                path: path.to_path_buf(),
            });
        }
        let base = path.parent().unwrap_or(Path::new(".")).to_path_buf();
        Self::extract(Figment::new().merge(Yaml::file_exact(path)), &base)
    }

    /// Loads from a YAML string (tests, `mqtt2es check` on stdin) merged with the environment.
    pub fn from_yaml(yaml: &str, base: &Path) -> Result<(Config, Secrets), SettingsError> {
        Self::extract(Figment::new().merge(Yaml::string(yaml)), base)
    }

    fn extract(figment: Figment, base: &Path) -> Result<(Config, Secrets), SettingsError> {
        let env = Env::prefixed("MQTT2ES_")
            .filter(|key| key.as_str().contains("__"))
            .split("__");
        let mut config: Config = figment
            .merge(env)
            .extract()
            .map_err(|e| SettingsError::Invalid(describe(e)))?;
        config.resolve_paths(base);
        let secrets = config.check()?;
        Ok((config, secrets))
    }

    fn resolve_paths(&mut self, base: &Path) {
        let resolve = |path: &mut PathBuf| {
            if path.is_relative() {
                *path = base.join(&*path);
            }
        };
        resolve(&mut self.pipelines.dir);
        resolve(&mut self.dead_letter.file);
        self.delivery.resolve_paths(&resolve);
        if let Some(upstream) = &mut self.upstream {
            resolve(&mut upstream.state_dir);
            if let Some(file) = &mut upstream.password_file {
                resolve(file);
            }
            if let Some(tls) = &mut upstream.tls {
                resolve(&mut tls.ca_file);
                if let Some(file) = &mut tls.client_cert_file {
                    resolve(file);
                }
                if let Some(file) = &mut tls.client_key_file {
                    resolve(file);
                }
            }
        }
        self.broker.resolve_paths(&resolve);
        if let Some(kibana) = &mut self.kibana {
            kibana.resolve_paths(&resolve);
        }
        let es = &mut self.elasticsearch;
        for file in [&mut es.password_file, &mut es.api_key_file, &mut es.ca_file]
            .into_iter()
            .flatten()
        {
            resolve(file);
        }
    }

    /// Cross-field rules serde cannot express; also reads secret files.
    fn check(&self) -> Result<Secrets, SettingsError> {
        if self.shutdown.grace_ms == 0 {
            return Err(key_error(
                "shutdown.grace_ms",
                "must be above 0 to flush what was received",
            ));
        }
        self.metrics.check()?;
        self.delivery.check()?;
        let upstream_password = match &self.upstream {
            Some(upstream) => upstream.check(self.pipelines.max_payload_bytes)?,
            None => {
                self.broker.check(self.pipelines.max_payload_bytes)?;
                None
            }
        };
        Ok(Secrets { upstream_password })
    }
}

/// Figment's errors name the key path and the offending value; keep each on its own line.
fn describe(error: figment::Error) -> String {
    error
        .into_iter()
        .map(|e| {
            let path = e.path.join(".");
            let source = e
                .metadata
                .as_ref()
                .and_then(|m| m.source.as_ref())
                .map(|s| format!(" (from {s})"))
                .unwrap_or_default();
            if path.is_empty() {
                format!("{}{source}", e.kind)
            } else {
                format!("{path}: {}{source}", e.kind)
            }
        })
        .collect::<Vec<_>>()
        .join("\n")
}

#[cfg(test)]
mod reference_tests;

#[cfg(test)]
// figment::Jail fixes its closures' error type to figment's own, which clippy finds large.
#[allow(clippy::result_large_err)]
mod tests {
    use super::*;
    use figment::Jail;

    fn load(jail: &Jail, yaml: &str) -> Result<(Config, Secrets), SettingsError> {
        jail.create_file("mqtt2es.yaml", yaml)
            .expect("write config");
        Config::load(&jail.directory().join("mqtt2es.yaml"))
    }

    fn error_text(jail: &Jail, yaml: &str) -> String {
        load(jail, yaml)
            .expect_err("config should be refused")
            .to_string()
    }

    #[test]
    fn a_minimal_file_takes_defaults_for_everything_else() {
        Jail::expect_with(|jail| {
            let (config, _) = load(jail, "upstream: {host: broker}\n").expect("valid");
            let upstream = config.upstream.as_ref().expect("upstream");
            assert_eq!(upstream.host, "broker");
            assert_eq!(upstream.port, 1883);
            assert!(!upstream.clean_session, "persistent sessions by default");
            assert_eq!(config.elasticsearch.url, "http://localhost:9200");
            assert_eq!(config.pipelines.max_payload_bytes, 1024 * 1024);
            Ok(())
        });
    }

    #[test]
    fn an_auth_section_with_every_key_commented_out_takes_the_defaults() {
        Jail::expect_with(|jail| {
            let yaml = "broker:\n  auth:\n    # password_file: passwd\n";
            let (config, _) = load(jail, yaml).expect("valid");
            let auth = &config.broker.auth;
            assert!(auth.allow_anonymous.is_none() && auth.password_file.is_none());
            assert!(auth.jwt.is_none() && auth.acl.is_empty() && auth.acl_file.is_none());
            Ok(())
        });
    }

    #[test]
    fn an_unknown_key_is_an_error_that_names_it() {
        Jail::expect_with(|jail| {
            let text = error_text(jail, "upstream: {host: broker, hots: typo}\n");
            assert!(text.contains("hots"), "{text}");
            let text = error_text(jail, "batch: {max_doc: 5}\n");
            assert!(text.contains("max_doc"), "{text}");
            Ok(())
        });
    }

    #[test]
    fn a_value_of_the_wrong_type_is_an_error_that_names_key_and_value() {
        Jail::expect_with(|jail| {
            let text = error_text(jail, "upstream: {port: lots}\n");
            assert!(text.contains("upstream.port"), "{text}");
            assert!(text.contains("lots"), "{text}");
            Ok(())
        });
    }

    #[test]
    fn an_environment_variable_overrides_the_file() {
        Jail::expect_with(|jail| {
            jail.set_env("MQTT2ES_UPSTREAM__HOST", "from-env");
            jail.set_env("MQTT2ES_BATCH__MAX_DOCS", "7");
            let (config, _) = load(jail, "upstream: {host: from-file}\n").expect("valid");
            assert_eq!(config.upstream.as_ref().expect("upstream").host, "from-env");
            assert_eq!(config.batch.max_docs.get(), 7);
            Ok(())
        });
    }

    #[test]
    fn variables_without_a_section_separator_are_not_configuration() {
        Jail::expect_with(|jail| {
            jail.set_env("MQTT2ES_CONFIG", "/etc/mqtt2es.yaml");
            jail.set_env("MQTT2ES_TEST_ES_HOME", "/somewhere");
            load(jail, "upstream: {host: broker}\n").expect("valid");
            Ok(())
        });
    }

    #[test]
    fn an_unknown_key_from_the_environment_is_an_error_too() {
        Jail::expect_with(|jail| {
            jail.set_env("MQTT2ES_UPSTREAM__HOTS", "typo");
            let text = error_text(jail, "upstream: {host: broker}\n");
            assert!(text.contains("hots"), "{text}");
            Ok(())
        });
    }

    #[test]
    fn a_missing_config_file_is_reported_with_its_path() {
        let error = Config::load(Path::new("/nonexistent/mqtt2es.yaml")).expect_err("missing");
        assert!(
            error.to_string().contains("/nonexistent/mqtt2es.yaml"),
            "{error}"
        );
    }

    #[test]
    fn without_an_upstream_section_mqtt2es_is_the_broker() {
        Jail::expect_with(|jail| {
            let (config, _) = load(jail, "log: {level: debug}\n").expect("valid for check/try");
            assert!(config.upstream.is_none());
            Ok(())
        });
    }

    #[test]
    fn several_connections_need_a_shared_group() {
        Jail::expect_with(|jail| {
            let text = error_text(jail, "upstream: {connections: 3}\n");
            assert!(text.contains("upstream.connections"), "{text}");
            assert!(text.contains("shared_group"), "{text}");
            load(jail, "upstream: {connections: 3, shared_group: bridge}\n").expect("valid");
            Ok(())
        });
    }

    #[test]
    fn a_shared_group_with_a_slash_is_refused() {
        Jail::expect_with(|jail| {
            let text = error_text(jail, "upstream: {shared_group: a/b}\n");
            assert!(text.contains("\"a/b\""), "{text}");
            Ok(())
        });
    }

    #[test]
    fn a_qos_above_two_is_refused() {
        Jail::expect_with(|jail| {
            let text = error_text(jail, "upstream: {qos: 3}\n");
            assert!(
                text.contains("upstream.qos") && text.contains('3'),
                "{text}"
            );
            Ok(())
        });
    }

    #[test]
    fn a_packet_limit_below_the_payload_limit_is_refused() {
        Jail::expect_with(|jail| {
            let text = error_text(
                jail,
                "upstream: {max_packet_bytes: 1000}\npipelines: {max_payload_bytes: 2000}\n",
            );
            assert!(text.contains("upstream.max_packet_bytes"), "{text}");
            Ok(())
        });
    }

    #[test]
    fn a_password_file_is_read_and_its_trailing_newline_dropped() {
        Jail::expect_with(|jail| {
            jail.create_file("mqtt-password", "s3cret\n")?;
            let (_, secrets) = load(
                jail,
                "upstream: {username: bridge, password_file: mqtt-password}\n",
            )
            .expect("valid");
            let password = secrets.upstream_password.expect("password");
            assert_eq!(password.expose(), "s3cret");
            Ok(())
        });
    }

    #[test]
    fn an_unreadable_password_file_is_an_error_naming_key_and_path() {
        Jail::expect_with(|jail| {
            let text = error_text(jail, "upstream: {username: u, password_file: nope.txt}\n");
            assert!(text.contains("upstream.password_file"), "{text}");
            assert!(text.contains("nope.txt"), "{text}");
            Ok(())
        });
    }

    #[test]
    fn password_and_password_file_together_are_refused() {
        Jail::expect_with(|jail| {
            jail.create_file("p", "x")?;
            let text = error_text(
                jail,
                "upstream: {username: u, password: x, password_file: p}\n",
            );
            assert!(text.contains("either password or password_file"), "{text}");
            Ok(())
        });
    }

    #[test]
    fn a_password_without_a_username_is_refused() {
        Jail::expect_with(|jail| {
            let text = error_text(jail, "upstream: {password: x}\n");
            assert!(text.contains("upstream.username"), "{text}");
            Ok(())
        });
    }

    #[test]
    fn relative_paths_resolve_against_the_config_directory() {
        Jail::expect_with(|jail| {
            let (config, _) = load(jail, "upstream: {host: b}\n").expect("valid");
            assert_eq!(config.pipelines.dir, jail.directory().join("pipelines"));
            assert_eq!(
                config.dead_letter.file,
                jail.directory().join("mqtt2es-deadletter.ndjson")
            );
            Ok(())
        });
    }

    #[test]
    fn the_debug_output_of_a_loaded_config_never_shows_a_password() {
        Jail::expect_with(|jail| {
            jail.set_env("MQTT2ES_ELASTICSEARCH__PASSWORD", "es-pass-123");
            let (config, secrets) = load(
                jail,
                "upstream: {username: u, password: mqtt-pass-456}\nelasticsearch: {username: elastic}\n",
            )
            .expect("valid");
            let shown = format!("{config:?} {secrets:?}");
            assert!(!shown.contains("mqtt-pass-456"), "{shown}");
            assert!(!shown.contains("es-pass-123"), "{shown}");
            assert!(shown.contains("[redacted]"), "{shown}");
            Ok(())
        });
    }

    #[test]
    fn a_kibana_section_is_optional_and_its_paths_resolve_against_the_config_directory() {
        Jail::expect_with(|jail| {
            let (config, _) = load(jail, "log: {level: info}\n").expect("valid");
            assert!(config.kibana.is_none(), "no section, no import");
            let (config, _) = load(
                jail,
                "kibana: {url: \"https://kibana:5601\", username: admin, password_file: kb-pass}\n",
            )
            .expect("valid");
            let kibana = config.kibana.expect("a kibana section");
            assert_eq!(kibana.url, "https://kibana:5601");
            assert_eq!(kibana.dashboards_dir, jail.directory().join("dashboards"));
            assert_eq!(kibana.password_file, Some(jail.directory().join("kb-pass")));
            let text = error_text(jail, "kibana: {uri: x}\n");
            assert!(text.contains("uri"), "{text}");
            Ok(())
        });
    }

    #[test]
    fn retention_is_set_per_kind_of_stream_and_unknown_kinds_are_refused() {
        Jail::expect_with(|jail| {
            jail.set_env("MQTT2ES_SETUP__RETENTION_DAYS__METRICS", "7");
            let (config, _) =
                load(jail, "setup: {retention_days: {telemetry: 0}}\n").expect("valid");
            let days = &config.setup.retention_days;
            assert_eq!(
                (days.telemetry, days.metrics, days.dead_letters),
                (0, 7, 90)
            );
            let text = error_text(jail, "setup: {retention_days: {readings: 3}}\n");
            assert!(text.contains("readings"), "{text}");
            Ok(())
        });
    }

    #[test]
    fn offline_queue_bounds_take_defaults_and_a_zero_bound_is_refused_naming_its_key() {
        Jail::expect_with(|jail| {
            let yaml = "broker: {offline_queue: {max_messages_per_session: 5}}\n";
            let (config, _) = load(jail, yaml).expect("valid");
            let limits = config.broker.offline_queue;
            assert_eq!(limits.max_messages_per_session, 5);
            assert_eq!(limits.max_bytes, 64 << 20);
            for key in [
                "max_messages_per_session",
                "max_bytes_per_session",
                "max_messages",
                "max_bytes",
            ] {
                let text = error_text(jail, &format!("broker: {{offline_queue: {{{key}: 0}}}}\n"));
                assert!(
                    text.contains(&format!("broker.offline_queue.{key}")),
                    "{text}"
                );
            }
            let text = error_text(jail, "broker: {offline_queue: {max_mesages: 5}}\n");
            assert!(text.contains("max_mesages"), "{text}");
            Ok(())
        });
    }

    #[test]
    fn a_zero_grace_period_is_refused() {
        Jail::expect_with(|jail| {
            let text = error_text(jail, "shutdown: {grace_ms: 0}\n");
            assert!(text.contains("shutdown.grace_ms"), "{text}");
            Ok(())
        });
    }

    #[test]
    fn a_zero_readiness_answer_age_is_refused_naming_the_key() {
        Jail::expect_with(|jail| {
            let text = error_text(
                jail,
                "upstream: {host: broker}\nmetrics: {elasticsearch_answer_max_age_s: 0}\n",
            );
            assert!(
                text.contains("metrics.elasticsearch_answer_max_age_s"),
                "{text}"
            );
            Ok(())
        });
    }

    #[test]
    fn the_metrics_endpoint_can_be_moved_or_turned_off_from_the_environment() {
        Jail::expect_with(|jail| {
            let (config, _) =
                load(jail, "upstream: {host: broker}\nmetrics: {bind: null}\n").expect("valid");
            assert_eq!(config.metrics.bind, None);
            jail.set_env("MQTT2ES_METRICS__BIND", "127.0.0.1:0");
            let (config, _) = load(jail, "upstream: {host: broker}\n").expect("valid");
            assert_eq!(
                config.metrics.bind,
                Some("127.0.0.1:0".parse().expect("addr"))
            );
            Ok(())
        });
    }
}
