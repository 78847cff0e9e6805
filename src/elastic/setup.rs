//! What Elasticsearch must hold before the first document arrives: today, two composable
//! index templates.
//!
//! The templates are built by pure functions (tested without a node) and installed by one
//! thin function that PUTs each of them. PUT replaces, so installing is idempotent and an
//! upgrade of mqtt2es simply installs its newer templates. Data streams themselves are not
//! created here: a bulk `create` into a name that matches a `data_stream` template creates the
//! stream, which also works on distributions without the `_data_stream` API. Lifecycle
//! policies, time-series mode and dashboards will join [`templates`] as more items in the same
//! list, installed in order.
//!
//! Priorities: built-in templates (`logs-*-*`, `metrics-*-*`) use 100, so ours use 200 for
//! `{prefix}*` and 300 for the dead-letter stream, which usually also matches `{prefix}*` and
//! needs its own exact mappings.

use elasticsearch::{Elasticsearch, indices::IndicesPutIndexTemplateParts};
use serde_json::{Value, json};

/// A composable index template: its name and the body of `PUT _index_template/{name}`.
#[derive(Debug, Clone, PartialEq)]
pub struct IndexTemplate {
    pub name: String,
    pub body: Value,
}

/// Why setup failed. The caller decides whether to wait and try again.
#[derive(Debug, thiserror::Error)]
pub enum SetupError {
    #[error("the index prefix must not be empty: the template would match every index")]
    EmptyPrefix,
    #[error("elasticsearch is unreachable while installing {what}: {source}")]
    Unreachable {
        what: String,
        source: elasticsearch::Error,
    },
    #[error(
        "elasticsearch refused the credentials while installing {what} (http {status}): {reason}; \
         the user needs the manage_index_templates cluster privilege"
    )]
    Unauthorized {
        what: String,
        status: u16,
        reason: String,
    },
    #[error("elasticsearch refused {what} (http {status}): {reason}")]
    Refused {
        what: String,
        status: u16,
        reason: String,
    },
}

impl SetupError {
    /// Whether trying again later can succeed without a change of configuration.
    pub fn is_retryable(&self) -> bool {
        match self {
            SetupError::Unreachable { .. } => true,
            SetupError::Refused { status, .. } => *status == 429 || *status >= 500,
            SetupError::EmptyPrefix | SetupError::Unauthorized { .. } => false,
        }
    }
}

/// Every template mqtt2es needs, in installation order.
pub fn templates(prefix: &str, dead_letter_index: &str) -> Result<Vec<IndexTemplate>, SetupError> {
    if prefix.is_empty() {
        return Err(SetupError::EmptyPrefix);
    }
    Ok(vec![
        documents_template(prefix),
        dead_letter_template(dead_letter_index),
    ])
}

/// `{prefix}*` as data streams with dynamic mappings: pipelines decide the fields, and a
/// mapping conflict is caught per document and dead-lettered rather than prevented here.
fn documents_template(prefix: &str) -> IndexTemplate {
    IndexTemplate {
        name: format!("{prefix}streams"),
        body: json!({
            "index_patterns": [format!("{prefix}*")],
            "data_stream": {},
            "priority": 200,
            "template": {
                "mappings": {
                    "properties": {
                        "@timestamp": { "type": "date" }
                    }
                }
            },
            "_meta": { "managed_by": "mqtt2es", "description": "telemetry data streams" }
        }),
    }
}

/// The dead-letter stream has fixed mappings: a payload that broke a pipeline must not be able
/// to break its own dead letter (hence `dynamic: false` and an unindexed `payload`).
fn dead_letter_template(index: &str) -> IndexTemplate {
    let keyword = json!({ "type": "keyword" });
    IndexTemplate {
        name: index.to_owned(),
        body: json!({
            "index_patterns": [index],
            "data_stream": {},
            "priority": 300,
            "template": {
                "mappings": {
                    "dynamic": false,
                    "properties": {
                        "@timestamp": { "type": "date" },
                        "mqtt": {
                            "properties": {
                                "topic": keyword,
                                "qos": { "type": "byte" },
                                "retain": { "type": "boolean" }
                            }
                        },
                        "pipeline": keyword,
                        "stage": keyword,
                        "reason": keyword,
                        "error": { "properties": { "message": { "type": "text" } } },
                        "payload": { "type": "text", "index": false },
                        "payload_encoding": keyword,
                        "payload_bytes": { "type": "long" },
                        "payload_truncated": { "type": "boolean" }
                    }
                }
            },
            "_meta": { "managed_by": "mqtt2es", "description": "mqtt2es dead letters" }
        }),
    }
}

/// Installs (or replaces) the templates. Idempotent.
pub async fn install_templates(
    client: &Elasticsearch,
    prefix: &str,
    dead_letter_index: &str,
) -> Result<(), SetupError> {
    for template in templates(prefix, dead_letter_index)? {
        let what = format!("index template {:?}", template.name);
        let response = client
            .indices()
            .put_index_template(IndicesPutIndexTemplateParts::Name(&template.name))
            .body(&template.body)
            .send()
            .await
            .map_err(|source| SetupError::Unreachable {
                what: what.clone(),
                source,
            })?;
        let status = response.status_code().as_u16();
        if response.status_code().is_success() {
            tracing::info!(template = %template.name, "installed index template");
            continue;
        }
        let body = response.text().await.unwrap_or_default();
        let reason = error_reason(&body);
        return Err(match status {
            401 | 403 => SetupError::Unauthorized {
                what,
                status,
                reason,
            },
            _ => SetupError::Refused {
                what,
                status,
                reason,
            },
        });
    }
    Ok(())
}

/// `type: reason` from an Elasticsearch error body, or the raw body when it is not one.
fn error_reason(body: &str) -> String {
    let parsed: Option<Value> = serde_json::from_str(body).ok();
    let error = parsed.as_ref().and_then(|v| v.get("error"));
    match error {
        Some(Value::Object(e)) => format!(
            "{}: {}",
            e.get("type").and_then(Value::as_str).unwrap_or("error"),
            e.get("reason")
                .and_then(Value::as_str)
                .unwrap_or("no reason given")
        ),
        Some(Value::String(s)) => s.clone(),
        _ => format!("{body:?}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_empty_prefix_is_refused() {
        assert!(matches!(
            templates("", "mqtt2es-deadletter"),
            Err(SetupError::EmptyPrefix)
        ));
    }

    #[test]
    fn the_documents_template_makes_every_prefixed_name_a_data_stream() {
        let all = templates("mqtt2es-", "mqtt2es-deadletter").expect("templates");
        let docs = &all[0];
        assert_eq!(docs.name, "mqtt2es-streams");
        assert_eq!(docs.body["index_patterns"], json!(["mqtt2es-*"]));
        assert_eq!(docs.body["data_stream"], json!({}));
        assert_eq!(docs.body["priority"], json!(200));
        assert_eq!(
            docs.body["template"]["mappings"]["properties"]["@timestamp"]["type"],
            "date"
        );
    }

    #[test]
    fn the_dead_letter_template_outranks_the_documents_template_it_overlaps() {
        let all = templates("mqtt2es-", "mqtt2es-deadletter").expect("templates");
        let (docs, dead) = (&all[0], &all[1]);
        assert_eq!(dead.body["index_patterns"], json!(["mqtt2es-deadletter"]));
        assert!(
            dead.body["priority"].as_u64() > docs.body["priority"].as_u64(),
            "equal priorities with overlapping patterns are refused by elasticsearch"
        );
    }

    #[test]
    fn the_dead_letter_template_maps_every_field_a_dead_letter_has() {
        let all = templates("mqtt2es-", "mqtt2es-deadletter").expect("templates");
        let mapped = &all[1].body["template"]["mappings"]["properties"];
        let letter = crate::sink::dead_letter::tests::sample_dead_letter();
        for (field, value) in letter.as_object().expect("an object") {
            assert!(!mapped[field].is_null(), "{field} is not mapped");
            if let Value::Object(inner) = value {
                for sub in inner.keys() {
                    assert!(
                        !mapped[field]["properties"][sub].is_null(),
                        "{field}.{sub} is not mapped"
                    );
                }
            }
        }
        assert_eq!(mapped["payload"]["index"], json!(false));
    }

    #[test]
    fn an_error_body_is_summarised_as_type_and_reason() {
        let body = r#"{"error":{"root_cause":[],"type":"security_exception","reason":"action [indices:admin/index_template/put] is unauthorized"},"status":403}"#;
        assert_eq!(
            error_reason(body),
            "security_exception: action [indices:admin/index_template/put] is unauthorized"
        );
        assert_eq!(error_reason("Bad Gateway"), "\"Bad Gateway\"");
    }

    // ---- install_templates against the stand-in (faults a real node will not show on cue) ----

    use crate::{
        elastic::{ElasticsearchSettings, build_client},
        sink::stand_in::{Reply, StandIn},
    };

    fn client(url: &str) -> Elasticsearch {
        build_client(&ElasticsearchSettings {
            url: url.to_owned(),
            gzip: false,
            ..ElasticsearchSettings::default()
        })
        .expect("client")
    }

    #[tokio::test]
    async fn installing_puts_each_template_under_its_name() {
        let es = StandIn::start(|_, _| Reply::Json(200, r#"{"acknowledged":true}"#.into())).await;
        install_templates(&client(&es.url), "mqtt2es-", "mqtt2es-deadletter")
            .await
            .expect("installed");

        let requests = es.requests();
        let sent: Vec<(&str, &str)> = requests
            .iter()
            .map(|r| (r.method.as_str(), r.path.as_str()))
            .collect();
        assert_eq!(
            sent,
            [
                ("PUT", "/_index_template/mqtt2es-streams"),
                ("PUT", "/_index_template/mqtt2es-deadletter"),
            ]
        );
        let body: Value = serde_json::from_str(&requests[0].body).expect("json");
        assert_eq!(body["index_patterns"], json!(["mqtt2es-*"]));
    }

    #[tokio::test]
    async fn refused_credentials_are_reported_as_unauthorized_and_not_retryable() {
        let es = StandIn::start(|_, _| {
            Reply::Json(
                403,
                r#"{"error":{"type":"security_exception","reason":"action [indices:admin/index_template/put] is unauthorized for user [writer]"},"status":403}"#.into(),
            )
        })
        .await;
        let err = install_templates(&client(&es.url), "mqtt2es-", "mqtt2es-deadletter")
            .await
            .expect_err("unauthorized");
        assert!(matches!(err, SetupError::Unauthorized { status: 403, .. }));
        assert!(!err.is_retryable());
        let text = err.to_string();
        assert!(text.contains("\"mqtt2es-streams\""), "{text}");
        assert!(text.contains("unauthorized for user [writer]"), "{text}");
    }

    #[tokio::test]
    async fn an_unreachable_node_is_reported_as_retryable() {
        let url = {
            let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
                .await
                .expect("bind");
            format!("http://{}", listener.local_addr().expect("address"))
        };
        let err = install_templates(&client(&url), "mqtt2es-", "mqtt2es-deadletter")
            .await
            .expect_err("unreachable");
        assert!(matches!(err, SetupError::Unreachable { .. }), "{err}");
        assert!(err.is_retryable());
    }
}
