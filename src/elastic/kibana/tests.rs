//! The dashboard import: the bundle and its multipart body, then the request against the
//! stand-in playing Kibana (`crate::stand_in`), which cannot run here, and its refusals.

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
    let err =
        serde_json::from_value::<KibanaSettings>(json!({"space": "x"})).expect_err("unknown key");
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
            r#"{"statusCode":400,"error":"Bad Request","message":"Invalid file extension"}"#.into(),
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
        Reply::Json(
            403,
            r#"{"statusCode":403,"error":"Forbidden","message":"Unable to bulk_create dashboard"}"#
                .into(),
        )
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
