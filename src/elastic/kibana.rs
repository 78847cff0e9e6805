//! The `kibana:` settings and the import of `dashboards/*.ndjson` through Kibana's
//! saved-objects import API (`POST /api/saved_objects/_import?overwrite=true`).
//!
//! All files go in one request, concatenated in file-name order: Kibana resolves references
//! within one import, so a dashboard may refer to a data view from another file whatever the
//! order. `overwrite=true` makes the import idempotent (same ids, replaced in place). Kibana
//! answers 200 even when some objects fail, with the failures in `errors[]`; each is reported
//! with its type, id, title and the file it came from.
//!
//! The request goes through the same client builder as Elasticsearch (timeout, CA file, basic
//! auth or API key) rather than a second HTTP stack; only the body is ours, a multipart form
//! built by hand because it is one file field and the client takes raw bytes.

use std::path::{Path, PathBuf};

use elasticsearch::http::{
    Method,
    headers::{ACCEPT, CONTENT_TYPE, HeaderMap, HeaderName, HeaderValue},
};
use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::client::{ClientError, ElasticsearchSettings, Gzip, build_client};
use crate::secret::Secret;

/// The import endpoint (default space).
pub const IMPORT_PATH: &str = "/api/saved_objects/_import";

/// `kibana:` in the config file. Without the section, setup imports no dashboards.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct KibanaSettings {
    pub url: String,
    pub username: Option<String>,
    pub password: Option<Secret>,
    pub password_file: Option<PathBuf>,
    /// An API key in its encoded form (`base64(id:key)`).
    pub api_key: Option<Secret>,
    pub api_key_file: Option<PathBuf>,
    /// PEM file with the CA certificate(s) that signed Kibana's certificate.
    pub ca_file: Option<PathBuf>,
    pub request_timeout_ms: u64,
    /// The saved-object NDJSON files to import: every `*.ndjson` here.
    pub dashboards_dir: PathBuf,
}

impl Default for KibanaSettings {
    fn default() -> Self {
        KibanaSettings {
            url: "http://localhost:5601".to_owned(),
            username: None,
            password: None,
            password_file: None,
            api_key: None,
            api_key_file: None,
            ca_file: None,
            request_timeout_ms: 60_000,
            dashboards_dir: PathBuf::from("dashboards"),
        }
    }
}

impl KibanaSettings {
    /// Relative paths against the config file's directory.
    pub fn resolve_paths(&mut self, resolve: &dyn Fn(&mut PathBuf)) {
        resolve(&mut self.dashboards_dir);
        for file in [
            &mut self.password_file,
            &mut self.api_key_file,
            &mut self.ca_file,
        ]
        .into_iter()
        .flatten()
        {
            resolve(file);
        }
    }

    /// The same transport as for Elasticsearch, minus gzip (a multipart body is sent as is).
    fn client_settings(&self) -> ElasticsearchSettings {
        ElasticsearchSettings {
            url: self.url.clone(),
            username: self.username.clone(),
            password: self.password.clone(),
            password_file: self.password_file.clone(),
            api_key: self.api_key.clone(),
            api_key_file: self.api_key_file.clone(),
            ca_file: self.ca_file.clone(),
            request_timeout_ms: self.request_timeout_ms,
            gzip: Gzip::Never,
            ..ElasticsearchSettings::default()
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum KibanaError {
    #[error("kibana: {0}")]
    Client(#[from] ClientError),
    #[error("cannot read the dashboards in {path:?}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path:?} line {line}: {reason}")]
    InvalidObject {
        path: PathBuf,
        line: usize,
        reason: String,
    },
    #[error("kibana at {url} is unreachable: {source}")]
    Unreachable {
        url: String,
        source: elasticsearch::Error,
    },
    #[error(
        "kibana at {url} refused the credentials (http 401): {reason}; check kibana.username and \
         password (or password_file), or api_key"
    )]
    Unauthenticated { url: String, reason: String },
    #[error(
        "kibana at {url} forbade the saved-objects import (http 403): {reason}; the user needs \
         the \"all\" privilege on Saved Objects Management (for example the kibana_admin role)"
    )]
    Forbidden { url: String, reason: String },
    #[error("kibana at {url} refused the import (http {status}): {reason}")]
    Refused {
        url: String,
        status: u16,
        reason: String,
    },
    #[error("kibana at {url} refused {failed} of {total} saved objects: {details}")]
    Objects {
        url: String,
        failed: usize,
        total: usize,
        details: String,
    },
}

/// The saved objects of every `*.ndjson` file in a directory, in file-name order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Bundle {
    /// All objects, one per line, newline-terminated.
    pub ndjson: Vec<u8>,
    /// `(type, id, file)` of each object, to say where a failed one came from.
    pub objects: Vec<(String, String, PathBuf)>,
}

/// Reads and checks the files: every non-empty line a JSON object with a `type` and an `id`.
pub fn read_bundle(dir: &Path) -> Result<Bundle, KibanaError> {
    let read_error = |source| KibanaError::Read {
        path: dir.to_owned(),
        source,
    };
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .map_err(read_error)?
        .filter_map(|entry| entry.ok().map(|e| e.path()))
        .filter(|path| path.extension().is_some_and(|ext| ext == "ndjson"))
        .collect();
    files.sort();
    let mut bundle = Bundle {
        ndjson: Vec::new(),
        objects: Vec::new(),
    };
    for path in files {
        let text = std::fs::read_to_string(&path).map_err(|source| KibanaError::Read {
            path: path.clone(),
            source,
        })?;
        for (n, line) in text.lines().enumerate() {
            if line.trim().is_empty() {
                continue;
            }
            let invalid = |reason: String| KibanaError::InvalidObject {
                path: path.clone(),
                line: n + 1,
                reason,
            };
            let object: Value =
                serde_json::from_str(line).map_err(|e| invalid(format!("not JSON: {e}")))?;
            let field = |name: &str| {
                object
                    .get(name)
                    .and_then(Value::as_str)
                    .map(str::to_owned)
                    .ok_or_else(|| invalid(format!("a saved object needs a string {name:?}")))
            };
            bundle
                .objects
                .push((field("type")?, field("id")?, path.clone()));
            bundle.ndjson.extend_from_slice(line.as_bytes());
            bundle.ndjson.push(b'\n');
        }
    }
    Ok(bundle)
}

/// A `multipart/form-data` body with the bundle as the `file` field; returns the content type
/// (with its boundary) and the body.
pub fn multipart(ndjson: &[u8]) -> (String, Vec<u8>) {
    // A boundary must not occur in the content; lengthen it until it does not.
    let mut boundary = "mqtt2es-saved-objects".to_owned();
    while ndjson
        .windows(boundary.len())
        .any(|w| w == boundary.as_bytes())
    {
        boundary.push('x');
    }
    let mut body = Vec::with_capacity(ndjson.len() + 256);
    body.extend_from_slice(
        format!(
            "--{boundary}\r\nContent-Disposition: form-data; name=\"file\"; \
             filename=\"mqtt2es-dashboards.ndjson\"\r\nContent-Type: application/ndjson\r\n\r\n"
        )
        .as_bytes(),
    );
    body.extend_from_slice(ndjson);
    body.extend_from_slice(format!("\r\n--{boundary}--\r\n").as_bytes());
    (format!("multipart/form-data; boundary={boundary}"), body)
}

/// The parts of Kibana's import answer we report on.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct ImportResponse {
    success: bool,
    #[serde(default)]
    success_count: usize,
    #[serde(default)]
    errors: Vec<ImportFailure>,
}

#[derive(Debug, Deserialize)]
struct ImportFailure {
    #[serde(rename = "type")]
    kind: String,
    id: String,
    #[serde(default)]
    title: Option<String>,
    #[serde(default)]
    meta: Option<Value>,
    error: Value,
}

/// How many objects Kibana stored, or why it did not store them all.
fn interpret(url: &str, status: u16, body: &str, bundle: &Bundle) -> Result<usize, KibanaError> {
    let parsed: Option<Value> = serde_json::from_str(body).ok();
    let reason = || match parsed.as_ref() {
        Some(v) => v
            .get("message")
            .and_then(Value::as_str)
            .map(str::to_owned)
            .unwrap_or_else(|| v.to_string()),
        None => format!("{body:?}"),
    };
    let url = url.to_owned();
    match status {
        200..=299 => {}
        401 => {
            return Err(KibanaError::Unauthenticated {
                url,
                reason: reason(),
            });
        }
        403 => {
            return Err(KibanaError::Forbidden {
                url,
                reason: reason(),
            });
        }
        _ => {
            return Err(KibanaError::Refused {
                url,
                status,
                reason: reason(),
            });
        }
    }
    let response: ImportResponse =
        serde_json::from_str(body).map_err(|e| KibanaError::Refused {
            url: url.clone(),
            status,
            reason: format!("unreadable import answer ({e}): {body:?}"),
        })?;
    if response.success && response.errors.is_empty() {
        return Ok(response.success_count);
    }
    let details = response
        .errors
        .iter()
        .map(|failure| describe_failure(failure, bundle))
        .collect::<Vec<_>>()
        .join("; ");
    Err(KibanaError::Objects {
        url,
        failed: response.errors.len(),
        total: bundle.objects.len(),
        details,
    })
}

/// `dashboard "fleet" ("mqtt2es — sensor fleet", from dashboards/fleet.ndjson):
/// missing_references [index-pattern "x"]`.
fn describe_failure(failure: &ImportFailure, bundle: &Bundle) -> String {
    let title = failure.title.clone().or_else(|| {
        failure
            .meta
            .as_ref()
            .and_then(|m| m.get("title"))
            .and_then(Value::as_str)
            .map(str::to_owned)
    });
    let file = bundle
        .objects
        .iter()
        .find(|(kind, id, _)| *kind == failure.kind && *id == failure.id)
        .map(|(_, _, path)| path.display().to_string());
    let origin = match (title, file) {
        (Some(title), Some(file)) => format!(" ({title:?}, from {file})"),
        (Some(title), None) => format!(" ({title:?})"),
        (None, Some(file)) => format!(" (from {file})"),
        (None, None) => String::new(),
    };
    let kind = failure
        .error
        .get("type")
        .and_then(Value::as_str)
        .unwrap_or("unknown");
    let mut what = kind.to_owned();
    if let Some(references) = failure.error.get("references").and_then(Value::as_array) {
        let list: Vec<String> = references
            .iter()
            .map(|r| {
                format!(
                    "{} {:?}",
                    r.get("type").and_then(Value::as_str).unwrap_or("?"),
                    r.get("id").and_then(Value::as_str).unwrap_or("?")
                )
            })
            .collect();
        what.push_str(&format!(" [{}]", list.join(", ")));
    }
    if let Some(message) = failure.error.get("message").and_then(Value::as_str) {
        what.push_str(&format!(": {message}"));
    }
    format!("{} {:?}{origin}: {what}", failure.kind, failure.id)
}

/// What `mqtt2es check` verifies without contacting Kibana: the client settings (URL, secret
/// files, CA) and every saved object in the dashboards directory. Returns the object count.
pub fn check(settings: &KibanaSettings) -> Result<usize, KibanaError> {
    build_client(&settings.client_settings())?;
    Ok(read_bundle(&settings.dashboards_dir)?.objects.len())
}

/// Imports every dashboard file; returns how many objects Kibana stored.
pub async fn import_dashboards(settings: &KibanaSettings) -> Result<usize, KibanaError> {
    let bundle = read_bundle(&settings.dashboards_dir)?;
    if bundle.objects.is_empty() {
        tracing::info!(
            dir = %settings.dashboards_dir.display(),
            "no saved objects to import into kibana"
        );
        return Ok(0);
    }
    let client = build_client(&settings.client_settings())?;
    let (content_type, body) = multipart(&bundle.ndjson);
    let mut headers = HeaderMap::new();
    headers.insert(
        CONTENT_TYPE,
        HeaderValue::from_str(&content_type).expect("the boundary is plain ASCII"),
    );
    headers.insert(ACCEPT, HeaderValue::from_static("application/json"));
    // Kibana refuses state-changing API calls without it (its CSRF protection).
    headers.insert(
        HeaderName::from_static("kbn-xsrf"),
        HeaderValue::from_static("true"),
    );
    let response = client
        .send(
            Method::Post,
            IMPORT_PATH,
            headers,
            Some(&[("overwrite", "true")]),
            Some(body),
            None,
        )
        .await
        .map_err(|source| KibanaError::Unreachable {
            url: settings.url.clone(),
            source,
        })?;
    let status = response.status_code().as_u16();
    let text = response.text().await.unwrap_or_default();
    let stored = interpret(&settings.url, status, &text, &bundle)?;
    tracing::info!(
        objects = stored,
        kibana = %settings.url,
        "dashboards imported into kibana"
    );
    Ok(stored)
}

#[cfg(test)]
mod tests;
