//! Connection settings for Elasticsearch (or OpenSearch) and the one place a client is built.
//!
//! Everything that can be wrong with these settings is found here, before the first request:
//! a malformed URL, a secret file that cannot be read, a CA file that holds no certificate, two
//! ways of authenticating at once. Secret files are read when the client is built, not when
//! the config is loaded, so that `check` and `run` report the same error and a rotated file is
//! picked up on restart. The request timeout is set on the transport, so no request this
//! crate sends can hang forever.

use std::{
    path::{Path, PathBuf},
    time::Duration,
};

use elasticsearch::{
    Elasticsearch,
    auth::Credentials,
    cert::{Certificate, CertificateValidation},
    http::{
        Url,
        transport::{CloudId, TransportBuilder},
    },
};
use serde::{Deserialize, Serialize};

use super::nodes::Nodes;
use crate::secret::Secret;

/// `elasticsearch:` in the config file.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct ElasticsearchSettings {
    /// Base URL of one node or of a load balancer in front of the cluster; the shorthand for
    /// `hosts` with one entry.
    pub url: String,
    /// Base URLs of the cluster's nodes: requests are spread over those alive, and a node that
    /// gives no answer is skipped for a while (see `nodes`). Instead of `url`.
    pub hosts: Vec<String>,
    /// An Elastic Cloud deployment's Cloud ID (from its console), instead of `url` or `hosts`.
    pub cloud_id: Option<String>,
    /// Ask the cluster for its nodes (`GET _nodes/http`) at start and every
    /// `sniff_interval_s`, and send to those. Off by default: behind a load balancer, a proxy
    /// or in a container network the addresses nodes publish are often not reachable.
    pub sniff: bool,
    pub sniff_interval_s: u64,
    /// Basic authentication; needs `password` or `password_file`.
    pub username: Option<String>,
    pub password: Option<Secret>,
    /// A file holding the password (trailing newline ignored), e.g. a mounted secret.
    pub password_file: Option<PathBuf>,
    /// An API key in the encoded form Kibana and `_security/api_key` show (`base64(id:key)`).
    pub api_key: Option<Secret>,
    pub api_key_file: Option<PathBuf>,
    /// PEM file with the CA certificate(s) that signed the cluster's HTTP certificate.
    pub ca_file: Option<PathBuf>,
    /// Upper bound on every request, including `_bulk`; a request past it is retried.
    pub request_timeout_ms: u64,
    /// Gzip bulk request bodies (at the fastest level): JSON telemetry shrinks about tenfold.
    /// `auto`: unless every node is on this machine (see `Gzip`).
    pub gzip: Gzip,
}

/// `elasticsearch.gzip`: `true`, `false`, or `auto` (the default), which gzips unless every
/// configured node is on this machine.
///
/// The decision a reader would question: on loopback, compression only costs. Nothing crosses
/// a network, and both ends spend CPU, mqtt2es packing (about 6 % of its CPU per reading, in a
/// profile at full rate) and the node unpacking, on the same machine's cores. Across a network
/// it pays: telemetry NDJSON shrinks about eightfold. With `sniff`, the nodes come from the
/// cluster, so `auto` gzips.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Gzip {
    #[default]
    Auto,
    Always,
    Never,
}

impl Serialize for Gzip {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        match self {
            Gzip::Auto => serializer.serialize_str("auto"),
            Gzip::Always => serializer.serialize_bool(true),
            Gzip::Never => serializer.serialize_bool(false),
        }
    }
}

impl<'de> Deserialize<'de> for Gzip {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct Visitor;
        impl serde::de::Visitor<'_> for Visitor {
            type Value = Gzip;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("true, false or auto")
            }
            fn visit_bool<E: serde::de::Error>(self, on: bool) -> Result<Gzip, E> {
                Ok(if on { Gzip::Always } else { Gzip::Never })
            }
            fn visit_str<E: serde::de::Error>(self, text: &str) -> Result<Gzip, E> {
                match text {
                    "auto" => Ok(Gzip::Auto),
                    "true" => Ok(Gzip::Always),
                    "false" => Ok(Gzip::Never),
                    other => Err(E::invalid_value(serde::de::Unexpected::Str(other), &self)),
                }
            }
        }
        deserializer.deserialize_any(Visitor)
    }
}

impl Default for ElasticsearchSettings {
    fn default() -> Self {
        ElasticsearchSettings {
            url: DEFAULT_URL.to_owned(),
            hosts: Vec::new(),
            cloud_id: None,
            sniff: false,
            sniff_interval_s: 300,
            username: None,
            password: None,
            password_file: None,
            api_key: None,
            api_key_file: None,
            ca_file: None,
            request_timeout_ms: 30_000,
            gzip: Gzip::Auto,
        }
    }
}

const DEFAULT_URL: &str = "http://localhost:9200";

impl ElasticsearchSettings {
    /// Where requests go, for logs and messages: the URL, the hosts, or the Cloud ID's URL.
    pub fn target(&self) -> String {
        if let Some(cloud) = self
            .cloud_id
            .as_deref()
            .and_then(|id| CloudId::parse(id).ok())
        {
            return cloud.url.to_string();
        }
        match self.hosts.as_slice() {
            [] => self.url.clone(),
            hosts => hosts.join(", "),
        }
    }

    /// Whether bulk bodies are gzipped: as `gzip` says, and for `auto`, unless every node is
    /// on this machine (`localhost`, 127.0.0.0/8, `::1`) and none is found by sniffing.
    pub fn gzips(&self) -> bool {
        match self.gzip {
            Gzip::Always => true,
            Gzip::Never => false,
            Gzip::Auto => {
                self.sniff
                    || !self
                        .urls()
                        .is_ok_and(|urls| urls.iter().all(is_this_machine))
            }
        }
    }

    /// The nodes' URLs, checked.
    pub fn urls(&self) -> Result<Vec<Url>, ClientError> {
        let custom_url = self.url != DEFAULT_URL;
        if let Some(id) = &self.cloud_id {
            if custom_url || !self.hosts.is_empty() {
                return Err(ClientError::TwoTargets);
            }
            let cloud = CloudId::parse(id).map_err(|e| ClientError::InvalidCloudId {
                reason: e.to_string(),
            })?;
            return Ok(vec![cloud.url]);
        }
        if self.hosts.is_empty() {
            return Ok(vec![parse_url(&self.url)?]);
        }
        if custom_url {
            return Err(ClientError::TwoTargets);
        }
        self.hosts.iter().map(|host| parse_url(host)).collect()
    }
}

/// Why a client could not be built. All of them are configuration mistakes: none is retryable.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("invalid url {url:?}: {reason}")]
    InvalidUrl { url: String, reason: String },
    #[error("cannot read {key} {path:?}: {source}")]
    ReadFile {
        key: &'static str,
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{key} {path:?} is empty")]
    EmptyFile { key: &'static str, path: PathBuf },
    #[error("set either `{key}` or `{key}_file`, not both")]
    TwoSources { key: &'static str },
    #[error("`username` {username:?} is set but neither `password` nor `password_file`")]
    MissingPassword { username: String },
    #[error("a password is set but no `username`")]
    MissingUsername,
    #[error("set either `username`/`password` or `api_key`, not both")]
    TwoCredentials,
    #[error("`ca_file` {path:?} holds no usable PEM certificate: {reason}")]
    InvalidCa { path: PathBuf, reason: String },
    #[error("set one of `url` (one node), `hosts` (a cluster's nodes) or `cloud_id`")]
    TwoTargets,
    #[error("invalid cloud_id: {reason}")]
    InvalidCloudId { reason: String },
    #[error("sniff_interval_s must be at least 1 when sniff is on")]
    SniffInterval,
    #[error("cannot build the elasticsearch client: {0}")]
    Build(#[from] elasticsearch::http::transport::BuildError),
}

/// Builds a client for one node (or load balancer) from checked settings.
pub fn build_client(settings: &ElasticsearchSettings) -> Result<Elasticsearch, ClientError> {
    Ok(build_cluster(settings)?.0)
}

/// Builds a client over the configured nodes, and the pool that tells it which node is next
/// (to be told how requests went, see `nodes`).
pub fn build_cluster(
    settings: &ElasticsearchSettings,
) -> Result<(Elasticsearch, Nodes), ClientError> {
    if settings.sniff && settings.sniff_interval_s == 0 {
        return Err(ClientError::SniffInterval);
    }
    let nodes = Nodes::new(settings.urls()?);
    let mut builder = TransportBuilder::new(nodes.clone())
        .timeout(Duration::from_millis(settings.request_timeout_ms))
        // Bulk bodies, the only large ones, are compressed by the sink itself (faster level
        // and backend, see `sink::bulk::gzip`); setup and metrics requests are small.
        .request_body_compression(false);
    if let Some(credentials) = credentials(settings)? {
        builder = builder.auth(credentials);
    }
    if let Some(path) = &settings.ca_file {
        let pem = std::fs::read(path).map_err(|source| ClientError::ReadFile {
            key: "ca_file",
            path: path.clone(),
            source,
        })?;
        let cert = Certificate::from_pem(&pem).map_err(|e| ClientError::InvalidCa {
            path: path.clone(),
            reason: e.to_string(),
        })?;
        builder = builder.cert_validation(CertificateValidation::Full(cert));
    }
    Ok((Elasticsearch::new(builder.build()?), nodes))
}

/// Whether `url` names this machine: `localhost` or a loopback address.
fn is_this_machine(url: &Url) -> bool {
    let Some(host) = url.host_str() else {
        return false;
    };
    // An IPv6 host comes in brackets.
    let address = host.trim_start_matches('[').trim_end_matches(']');
    host.eq_ignore_ascii_case("localhost")
        || address
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback())
}

fn parse_url(raw: &str) -> Result<Url, ClientError> {
    let invalid = |reason: String| ClientError::InvalidUrl {
        url: raw.to_owned(),
        reason,
    };
    let url = Url::parse(raw).map_err(|e| invalid(e.to_string()))?;
    // `localhost:9200` parses as scheme "localhost"; catch it here rather than as a
    // baffling connection error later.
    if !matches!(url.scheme(), "http" | "https") {
        return Err(invalid("the scheme must be http or https".to_owned()));
    }
    if !url.username().is_empty() || url.password().is_some() {
        return Err(invalid(
            "put credentials in `username`/`password`, not in the url".to_owned(),
        ));
    }
    Ok(url)
}

fn credentials(settings: &ElasticsearchSettings) -> Result<Option<Credentials>, ClientError> {
    let password = secret(
        "password",
        settings.password.as_ref(),
        settings.password_file.as_deref(),
    )?;
    let api_key = secret(
        "api_key",
        settings.api_key.as_ref(),
        settings.api_key_file.as_deref(),
    )?;
    match (&settings.username, password, api_key) {
        (None, None, None) => Ok(None),
        (None, None, Some(key)) => Ok(Some(Credentials::EncodedApiKey(key.expose().to_owned()))),
        (Some(_), _, Some(_)) | (_, Some(_), Some(_)) => Err(ClientError::TwoCredentials),
        (Some(user), Some(password), None) => Ok(Some(Credentials::Basic(
            user.clone(),
            password.expose().to_owned(),
        ))),
        (Some(user), None, None) => Err(ClientError::MissingPassword {
            username: user.clone(),
        }),
        (None, Some(_), None) => Err(ClientError::MissingUsername),
    }
}

/// A secret given inline or as a file, never both.
fn secret(
    key: &'static str,
    inline: Option<&Secret>,
    file: Option<&Path>,
) -> Result<Option<Secret>, ClientError> {
    match (inline, file) {
        (Some(_), Some(_)) => Err(ClientError::TwoSources { key }),
        (Some(value), None) => Ok(Some(value.clone())),
        (None, None) => Ok(None),
        (None, Some(path)) => {
            let file_key = if key == "password" {
                "password_file"
            } else {
                "api_key_file"
            };
            let text = std::fs::read_to_string(path).map_err(|source| ClientError::ReadFile {
                key: file_key,
                path: path.to_owned(),
                source,
            })?;
            // Secret files written by `echo` or by orchestrators end in a newline that is not
            // part of the secret.
            let value = text.trim_end_matches(['\r', '\n']);
            if value.is_empty() {
                return Err(ClientError::EmptyFile {
                    key: file_key,
                    path: path.to_owned(),
                });
            }
            Ok(Some(Secret::new(value)))
        }
    }
}

#[cfg(test)]
mod tests {
    use std::io::Write;

    use super::*;

    fn settings(yaml: serde_json::Value) -> ElasticsearchSettings {
        serde_json::from_value(yaml).expect("valid settings")
    }

    #[test]
    fn defaults_point_at_localhost_with_gzip_on_auto_and_a_timeout() {
        let s = settings(serde_json::json!({}));
        assert_eq!(s.url, "http://localhost:9200");
        assert_eq!(s.gzip, Gzip::Auto);
        assert_eq!(s.request_timeout_ms, 30_000);
        build_client(&s).expect("the defaults build a client");
    }

    #[test]
    fn gzip_auto_compresses_unless_every_node_is_on_this_machine() {
        let gzips = |yaml: serde_json::Value| settings(yaml).gzips();
        for here in [
            "http://localhost:9200",
            "http://LOCALHOST:9200",
            "http://127.0.0.1:9200",
            "https://127.0.0.2:9243",
            "http://[::1]:9200",
        ] {
            assert!(!gzips(serde_json::json!({"url": here})), "{here}");
        }
        for there in [
            "http://es:9200",
            "http://10.0.0.1:9200",
            "http://[fd00::1]:9200",
        ] {
            assert!(gzips(serde_json::json!({"url": there})), "{there}");
        }
        let mixed = ["http://127.0.0.1:9200", "http://es-2:9200"];
        assert!(gzips(serde_json::json!({"hosts": mixed})));
        assert!(!gzips(
            serde_json::json!({"hosts": ["http://127.0.0.1:9200", "http://localhost:9201"]})
        ));
        // Sniffed nodes are whatever the cluster says they are.
        assert!(gzips(serde_json::json!({"sniff": true})));
        // Said outright, it holds either way.
        assert!(gzips(serde_json::json!({"gzip": true})));
        assert!(!gzips(
            serde_json::json!({"url": "http://es:9200", "gzip": false})
        ));
    }

    #[test]
    fn gzip_is_true_false_or_auto_and_anything_else_says_so() {
        for (said, meant) in [
            (serde_json::json!(true), Gzip::Always),
            (serde_json::json!(false), Gzip::Never),
            (serde_json::json!("auto"), Gzip::Auto),
            // Environment variables arrive as text.
            (serde_json::json!("false"), Gzip::Never),
        ] {
            assert_eq!(
                settings(serde_json::json!({"gzip": said})).gzip,
                meant,
                "{said}"
            );
        }
        let error =
            serde_json::from_value::<ElasticsearchSettings>(serde_json::json!({"gzip": "fast"}))
                .expect_err("not a choice");
        assert!(
            error.to_string().contains("expected true, false or auto"),
            "{error}"
        );
    }

    #[test]
    fn hosts_name_the_cluster_nodes_and_url_is_their_one_node_shorthand() {
        let s = settings(serde_json::json!({
            "hosts": ["http://10.0.0.1:9200", "https://es-2:9243"],
        }));
        let urls: Vec<String> = s.urls().expect("urls").iter().map(Url::to_string).collect();
        assert_eq!(urls, ["http://10.0.0.1:9200/", "https://es-2:9243/"]);
        assert_eq!(s.target(), "http://10.0.0.1:9200, https://es-2:9243");
        build_cluster(&s).expect("a client over both");
        let both = settings(serde_json::json!({
            "url": "http://es-1:9200", "hosts": ["http://es-2:9200"],
        }));
        assert!(matches!(both.urls(), Err(ClientError::TwoTargets)));
    }

    #[test]
    fn a_cloud_id_becomes_its_deployment_url_and_excludes_hosts() {
        // The example of Elastic's documentation: us-east-1.aws.found.io$<es uuid>$<kibana uuid>.
        let id = "my-deployment:dXMtZWFzdC0xLmF3cy5mb3VuZC5pbyRjZWM2ZjI2MWE3NGJmMjRjZTMzYmI4ODExYjg0Mjk0ZiRjNmMyY2E2ZDA0MjI0OWFmMGNjN2Q3YTllOTYyNTc0Mw==";
        let s = settings(serde_json::json!({ "cloud_id": id }));
        let urls = s.urls().expect("a url");
        assert_eq!(
            urls[0].as_str(),
            "https://cec6f261a74bf24ce33bb8811b84294f.us-east-1.aws.found.io/"
        );
        let both = settings(serde_json::json!({ "cloud_id": id, "hosts": ["http://a:9200"] }));
        assert!(matches!(both.urls(), Err(ClientError::TwoTargets)));
        let bad = settings(serde_json::json!({ "cloud_id": "no-colon" }));
        assert!(matches!(
            bad.urls(),
            Err(ClientError::InvalidCloudId { .. })
        ));
    }

    #[test]
    fn sniffing_needs_an_interval() {
        let s = settings(serde_json::json!({ "sniff": true, "sniff_interval_s": 0 }));
        assert!(matches!(build_cluster(&s), Err(ClientError::SniffInterval)));
    }

    #[test]
    fn an_unknown_key_is_an_error() {
        let err = serde_json::from_value::<ElasticsearchSettings>(serde_json::json!({"uri": "x"}))
            .expect_err("unknown key");
        assert!(err.to_string().contains("uri"), "{err}");
    }

    #[test]
    fn a_url_without_a_scheme_is_quoted_in_the_error() {
        let s = settings(serde_json::json!({"url": "localhost:9200"}));
        let err = build_client(&s).expect_err("no scheme");
        assert!(err.to_string().contains("\"localhost:9200\""), "{err}");
    }

    #[test]
    fn a_url_that_does_not_parse_is_quoted_in_the_error() {
        let s = settings(serde_json::json!({"url": "http://exa mple:9200"}));
        let err = build_client(&s).expect_err("bad url");
        assert!(
            err.to_string().contains("\"http://exa mple:9200\""),
            "{err}"
        );
    }

    #[test]
    fn credentials_in_the_url_are_refused() {
        let s = settings(serde_json::json!({"url": "http://elastic:changeme@localhost:9200"}));
        assert!(matches!(
            build_client(&s),
            Err(ClientError::InvalidUrl { .. })
        ));
    }

    #[test]
    fn an_unreadable_password_file_is_named_in_the_error() {
        let s = settings(serde_json::json!({
            "username": "elastic",
            "password_file": "/nonexistent/es-password",
        }));
        let err = build_client(&s).expect_err("missing file");
        let text = err.to_string();
        assert!(text.contains("password_file"), "{text}");
        assert!(text.contains("/nonexistent/es-password"), "{text}");
    }

    #[test]
    fn a_password_file_is_read_without_its_trailing_newline() {
        let mut file = tempfile::NamedTempFile::new().expect("temp file");
        writeln!(file, "s3cret").expect("write");
        let s = settings(serde_json::json!({
            "username": "elastic",
            "password_file": file.path(),
        }));
        match credentials(&s) {
            Ok(Some(Credentials::Basic(user, password))) => {
                assert_eq!((user.as_str(), password.as_str()), ("elastic", "s3cret"));
            }
            other => panic!("expected basic credentials, got {other:?}"),
        }
    }

    #[test]
    fn an_empty_api_key_file_is_an_error() {
        let file = tempfile::NamedTempFile::new().expect("temp file");
        let s = settings(serde_json::json!({"api_key_file": file.path()}));
        assert!(matches!(
            build_client(&s),
            Err(ClientError::EmptyFile {
                key: "api_key_file",
                ..
            })
        ));
    }

    #[test]
    fn an_api_key_becomes_encoded_api_key_credentials() {
        let s = settings(serde_json::json!({"api_key": "aWQ6a2V5"}));
        assert!(matches!(
            credentials(&s),
            Ok(Some(Credentials::EncodedApiKey(key))) if key == "aWQ6a2V5"
        ));
    }

    #[test]
    fn a_password_and_a_password_file_together_are_an_error() {
        let s = settings(serde_json::json!({
            "username": "elastic", "password": "a", "password_file": "/tmp/x",
        }));
        assert!(matches!(
            build_client(&s),
            Err(ClientError::TwoSources { key: "password" })
        ));
    }

    #[test]
    fn basic_credentials_and_an_api_key_together_are_an_error() {
        let s = settings(serde_json::json!({
            "username": "elastic", "password": "a", "api_key": "b",
        }));
        assert!(matches!(build_client(&s), Err(ClientError::TwoCredentials)));
    }

    #[test]
    fn a_username_without_a_password_is_an_error() {
        let s = settings(serde_json::json!({"username": "elastic"}));
        let err = build_client(&s).expect_err("no password");
        assert!(err.to_string().contains("\"elastic\""), "{err}");
    }

    #[test]
    fn a_ca_file_without_a_certificate_is_named_in_the_error() {
        let mut file = tempfile::NamedTempFile::new().expect("temp file");
        writeln!(file, "not a certificate").expect("write");
        let s = settings(serde_json::json!({"ca_file": file.path()}));
        match build_client(&s) {
            Err(ClientError::InvalidCa { path, .. }) => assert_eq!(path, file.path()),
            other => panic!("expected an invalid CA error, got {:?}", other.err()),
        }
    }

    #[test]
    fn settings_debug_output_redacts_the_password() {
        let s = settings(serde_json::json!({"username": "elastic", "password": "hunter2"}));
        assert!(!format!("{s:?}").contains("hunter2"));
    }
}
