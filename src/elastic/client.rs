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
        transport::{SingleNodeConnectionPool, TransportBuilder},
    },
};
use serde::Deserialize;

use crate::secret::Secret;

/// `elasticsearch:` in the config file.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ElasticsearchSettings {
    /// Base URL of one node or of a load balancer in front of the cluster.
    pub url: String,
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
    pub gzip: bool,
}

impl Default for ElasticsearchSettings {
    fn default() -> Self {
        ElasticsearchSettings {
            url: "http://localhost:9200".to_owned(),
            username: None,
            password: None,
            password_file: None,
            api_key: None,
            api_key_file: None,
            ca_file: None,
            request_timeout_ms: 30_000,
            gzip: true,
        }
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
    #[error("cannot build the elasticsearch client: {0}")]
    Build(#[from] elasticsearch::http::transport::BuildError),
}

/// Builds a client for one node (or load balancer) from checked settings.
pub fn build_client(settings: &ElasticsearchSettings) -> Result<Elasticsearch, ClientError> {
    let url = parse_url(&settings.url)?;
    let mut builder = TransportBuilder::new(SingleNodeConnectionPool::new(url))
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
    Ok(Elasticsearch::new(builder.build()?))
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
    fn defaults_point_at_localhost_with_gzip_and_a_timeout() {
        let s = settings(serde_json::json!({}));
        assert_eq!(s.url, "http://localhost:9200");
        assert!(s.gzip);
        assert_eq!(s.request_timeout_ms, 30_000);
        build_client(&s).expect("the defaults build a client");
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
