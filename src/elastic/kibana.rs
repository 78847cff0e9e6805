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

use super::client::{ClientError, ElasticsearchSettings, build_client};
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
            gzip: false,
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
mod tests {
    use std::fs;

    use serde_json::json;

    use super::*;
    use crate::stand_in::{Reply, StandIn};

    const DATA_VIEW: &str = r#"{"type":"index-pattern","id":"mqtt2es-telemetry","attributes":{"title":"mqtt2es-telemetry-*","timeFieldName":"@timestamp"},"references":[]}"#;
    const DASHBOARD: &str = r#"{"type":"dashboard","id":"mqtt2es-fleet","attributes":{"title":"mqtt2es — sensor fleet"},"references":[{"type":"index-pattern","id":"mqtt2es-telemetry","name":"x"}]}"#;

    fn dashboards_dir() -> tempfile::TempDir {
        let dir = tempfile::tempdir().expect("temp dir");
        fs::write(dir.path().join("b-fleet.ndjson"), format!("{DASHBOARD}\n")).expect("write");
        fs::write(
            dir.path().join("a-views.ndjson"),
            format!("{DATA_VIEW}\n\n"),
        )
        .expect("write");
        fs::write(dir.path().join("README.md"), "not an object").expect("write");
        dir
    }

    fn settings(url: &str, dir: &Path) -> KibanaSettings {
        KibanaSettings {
            url: url.to_owned(),
            username: Some("admin".to_owned()),
            password: Some(Secret::new("s3cret")),
            dashboards_dir: dir.to_owned(),
            ..KibanaSettings::default()
        }
    }

    #[test]
    fn the_bundle_holds_every_ndjson_object_in_file_name_order() {
        let dir = dashboards_dir();
        let bundle = read_bundle(dir.path()).expect("readable");
        assert_eq!(
            String::from_utf8(bundle.ndjson).expect("utf-8"),
            format!("{DATA_VIEW}\n{DASHBOARD}\n")
        );
        let ids: Vec<&str> = bundle
            .objects
            .iter()
            .map(|(_, id, _)| id.as_str())
            .collect();
        assert_eq!(ids, ["mqtt2es-telemetry", "mqtt2es-fleet"]);
    }

    #[test]
    fn a_line_that_is_not_a_saved_object_is_named_by_file_and_line() {
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join("broken.ndjson");
        fs::write(&path, format!("{DATA_VIEW}\n{{\"id\":\"x\"}}\n")).expect("write");
        let err = read_bundle(dir.path()).expect_err("no type");
        let text = err.to_string();
        assert!(
            text.contains("broken.ndjson") && text.contains("line 2"),
            "{text}"
        );
        assert!(text.contains("\"type\""), "{text}");
    }

    #[test]
    fn the_multipart_body_carries_the_bundle_as_the_file_field() {
        let (content_type, body) = multipart(b"{\"a\":1}\n");
        let boundary = content_type
            .strip_prefix("multipart/form-data; boundary=")
            .expect("a boundary");
        let text = String::from_utf8(body).expect("utf-8");
        assert!(text.starts_with(&format!("--{boundary}\r\n")), "{text}");
        assert!(
            text.contains("name=\"file\"; filename=\"mqtt2es-dashboards.ndjson\""),
            "{text}"
        );
        assert!(text.contains("\r\n\r\n{\"a\":1}\n\r\n"), "{text}");
        assert!(text.ends_with(&format!("\r\n--{boundary}--\r\n")), "{text}");
    }

    #[test]
    fn the_boundary_never_occurs_in_the_content() {
        let content = b"mqtt2es-saved-objects and mqtt2es-saved-objectsx";
        let (content_type, _) = multipart(content);
        assert!(
            content_type.ends_with("mqtt2es-saved-objectsxx"),
            "{content_type}"
        );
    }

    #[test]
    fn settings_default_to_a_local_kibana_and_refuse_unknown_keys() {
        let s: KibanaSettings = serde_json::from_value(json!({})).expect("defaults");
        assert_eq!(s.url, "http://localhost:5601");
        assert_eq!(s.dashboards_dir, PathBuf::from("dashboards"));
        let err = serde_json::from_value::<KibanaSettings>(json!({"space": "x"}))
            .expect_err("unknown key");
        assert!(err.to_string().contains("space"), "{err}");
    }

    // ---- against a stand-in: no Kibana server can run here, so this HTTP stand-in checks the
    // request as Kibana would and answers in the shape of Kibana's import API ----

    /// Checks what Kibana checks (path, method, kbn-xsrf, multipart file field with an
    /// .ndjson name) and answers like Kibana: 400 for a bad request, otherwise 200 with
    /// `success`, `successCount`, and `errors[]` for objects whose references are missing.
    fn kibana_like(request: &crate::stand_in::Request, known: &[&str]) -> Reply {
        if request.method != "POST" || !request.path.starts_with("/api/saved_objects/_import") {
            return Reply::Json(
                404,
                r#"{"statusCode":404,"error":"Not Found","message":"Not Found"}"#.into(),
            );
        }
        if request.header("kbn-xsrf").is_none() {
            return Reply::Json(400, r#"{"statusCode":400,"error":"Bad Request","message":"Request must contain a kbn-xsrf header."}"#.into());
        }
        let Some(boundary) = request
            .header("content-type")
            .and_then(|ct| ct.strip_prefix("multipart/form-data; boundary="))
        else {
            return Reply::Json(415, r#"{"statusCode":415,"error":"Unsupported Media Type","message":"Unsupported Media Type"}"#.into());
        };
        let opening = format!("--{boundary}\r\n");
        let Some(part) = request.body.strip_prefix(&opening) else {
            return Reply::Json(
                400,
                r#"{"statusCode":400,"error":"Bad Request","message":"bad multipart"}"#.into(),
            );
        };
        let Some((head, rest)) = part.split_once("\r\n\r\n") else {
            return Reply::Json(
                400,
                r#"{"statusCode":400,"error":"Bad Request","message":"bad part"}"#.into(),
            );
        };
        if !head.contains("name=\"file\"") || !head.contains(".ndjson\"") {
            return Reply::Json(
                400,
                r#"{"statusCode":400,"error":"Bad Request","message":"Invalid file extension"}"#
                    .into(),
            );
        }
        let Some(content) = rest.strip_suffix(&format!("\r\n--{boundary}--\r\n")) else {
            return Reply::Json(
                400,
                r#"{"statusCode":400,"error":"Bad Request","message":"unterminated part"}"#.into(),
            );
        };
        let objects: Vec<Value> = content
            .lines()
            .map(|l| serde_json::from_str(l).expect("the stand-in got JSON lines"))
            .collect();
        let ids: Vec<&str> = objects.iter().filter_map(|o| o["id"].as_str()).collect();
        let mut errors = Vec::new();
        for object in &objects {
            let missing: Vec<Value> = object["references"]
                .as_array()
                .into_iter()
                .flatten()
                .filter(|r| {
                    let id = r["id"].as_str().unwrap_or("");
                    !ids.contains(&id) && !known.contains(&id)
                })
                .map(|r| json!({"type": r["type"], "id": r["id"]}))
                .collect();
            if !missing.is_empty() {
                errors.push(json!({
                    "id": object["id"], "type": object["type"],
                    "title": object["attributes"]["title"],
                    "meta": {"title": object["attributes"]["title"], "icon": "dashboardApp"},
                    "error": {"type": "missing_references", "references": missing},
                }));
            }
        }
        let body = json!({
            "success": errors.is_empty(),
            "successCount": objects.len() - errors.len(),
            "errors": errors,
            "warnings": [],
        });
        Reply::Json(200, body.to_string())
    }

    #[tokio::test]
    async fn every_dashboard_file_is_imported_in_one_request_with_overwrite_and_xsrf() {
        let kibana = StandIn::start(|_, request| kibana_like(request, &[])).await;
        let dir = dashboards_dir();
        let stored = import_dashboards(&settings(&kibana.url, dir.path()))
            .await
            .expect("imported");
        assert_eq!(stored, 2);
        let requests = kibana.requests();
        assert_eq!(requests.len(), 1);
        let request = &requests[0];
        assert_eq!(request.method, "POST");
        assert_eq!(request.path, "/api/saved_objects/_import?overwrite=true");
        assert_eq!(request.header("kbn-xsrf"), Some("true"));
        assert_eq!(
            request.header("authorization"),
            Some("Basic YWRtaW46czNjcmV0"),
            "basic auth as configured"
        );
        assert!(request.body.contains(DATA_VIEW) && request.body.contains(DASHBOARD));
        // Importing again is the same request and the same answer: idempotent.
        import_dashboards(&settings(&kibana.url, dir.path()))
            .await
            .expect("imported again");
    }

    #[tokio::test]
    async fn an_object_kibana_refuses_is_reported_with_its_title_file_and_missing_reference() {
        let kibana = StandIn::start(|_, request| kibana_like(request, &[])).await;
        let dir = tempfile::tempdir().expect("temp dir");
        fs::write(dir.path().join("fleet.ndjson"), format!("{DASHBOARD}\n")).expect("write");
        let err = import_dashboards(&settings(&kibana.url, dir.path()))
            .await
            .expect_err("missing data view");
        let text = err.to_string();
        assert!(text.contains("refused 1 of 1 saved objects"), "{text}");
        assert!(text.contains("dashboard \"mqtt2es-fleet\""), "{text}");
        assert!(text.contains("\"mqtt2es — sensor fleet\""), "{text}");
        assert!(text.contains("fleet.ndjson"), "{text}");
        assert!(
            text.contains("missing_references [index-pattern \"mqtt2es-telemetry\"]"),
            "{text}"
        );
    }

    #[tokio::test]
    async fn refused_kibana_credentials_name_the_kibana_keys() {
        let kibana = StandIn::start(|_, _| {
            Reply::Json(401, r#"{"statusCode":401,"error":"Unauthorized","message":"[security_exception]: unable to authenticate user [admin] for REST request [/_security/_authenticate]"}"#.into())
        })
        .await;
        let dir = dashboards_dir();
        let err = import_dashboards(&settings(&kibana.url, dir.path()))
            .await
            .expect_err("401");
        let text = err.to_string();
        assert!(text.contains("kibana.username"), "{text}");
        assert!(
            text.contains("unable to authenticate user [admin]"),
            "{text}"
        );
    }

    #[tokio::test]
    async fn a_forbidden_import_names_the_privilege() {
        let kibana = StandIn::start(|_, _| {
            Reply::Json(403, r#"{"statusCode":403,"error":"Forbidden","message":"Unable to bulk_create dashboard"}"#.into())
        })
        .await;
        let dir = dashboards_dir();
        let err = import_dashboards(&settings(&kibana.url, dir.path()))
            .await
            .expect_err("403");
        assert!(matches!(err, KibanaError::Forbidden { .. }), "{err}");
        assert!(
            err.to_string().contains("Saved Objects Management"),
            "{err}"
        );
    }

    #[test]
    fn check_counts_the_objects_and_names_a_bad_url() {
        let dir = dashboards_dir();
        let url = "http://kibana.local:5601";
        assert_eq!(check(&settings(url, dir.path())).expect("valid"), 2);
        let err = check(&settings("kibana.local:5601", dir.path())).expect_err("no scheme");
        let text = err.to_string();
        assert!(
            text.starts_with("kibana: ") && text.contains("\"kibana.local:5601\""),
            "{text}"
        );
    }

    #[tokio::test]
    async fn an_empty_dashboards_dir_sends_nothing() {
        let kibana = StandIn::start(|_, _| Reply::Json(500, "{}".into())).await;
        let dir = tempfile::tempdir().expect("temp dir");
        let stored = import_dashboards(&settings(&kibana.url, dir.path()))
            .await
            .expect("nothing to do");
        assert_eq!(stored, 0);
        assert!(kibana.requests().is_empty());
    }
}
