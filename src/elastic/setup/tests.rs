//! Setup against the stand-in for Elasticsearch (`crate::stand_in`): the order of the PUTs, the
//! rollover of a time-series stream kept to the millisecond, and refusals (credentials,
//! privileges, an old engine, no node) that say what to do.

use super::*;

#[test]
fn an_error_body_is_summarised_as_type_and_reason() {
    let body = r#"{"error":{"root_cause":[],"type":"security_exception","reason":"action [indices:admin/index_template/put] is unauthorized"},"status":403}"#;
    assert_eq!(
        error_reason(body),
        "security_exception: action [indices:admin/index_template/put] is unauthorized"
    );
    assert_eq!(error_reason("Bad Gateway"), "\"Bad Gateway\"");
}

#[test]
fn a_failed_data_stream_creation_is_sorted_by_what_it_means() {
    // Answers of the real engines: OpenSearch and full Elasticsearch for an existing
    // stream, the minimal Elasticsearch distribution for the missing API.
    let exists = r#"{"error":{"root_cause":[],"type":"resource_already_exists_exception","reason":"data_stream [mqtt2es-deadletter] already exists"},"status":400}"#;
    assert_eq!(data_stream_answer(400, exists), DataStreamAnswer::Exists);
    let no_handler = r#"{"error":"no handler found for uri [/_data_stream/x] and method [PUT]"}"#;
    assert_eq!(data_stream_answer(400, no_handler), DataStreamAnswer::NoApi);
    assert_eq!(data_stream_answer(405, ""), DataStreamAnswer::NoApi);
    assert_eq!(data_stream_answer(403, "{}"), DataStreamAnswer::Forbidden);
    let no_template = r#"{"error":{"type":"illegal_argument_exception","reason":"no matching index template found for data stream [x]"},"status":400}"#;
    assert_eq!(
        data_stream_answer(400, no_template),
        DataStreamAnswer::Failed
    );
}

// ---- install against the stand-in (faults a real node will not show on cue) ----

use crate::{
    elastic::{ElasticsearchSettings, build_client, templates::RetentionDays},
    stand_in::{Reply, StandIn},
};

fn client(url: &str) -> Elasticsearch {
    build_client(&ElasticsearchSettings {
        url: url.to_owned(),
        ..ElasticsearchSettings::default()
    })
    .expect("client")
}

const RETENTION: RetentionDays = RetentionDays {
    telemetry: 365,
    status: 365,
    metrics: 30,
    messages: 30,
    dead_letters: 90,
};

fn layout() -> Layout<'static> {
    Layout {
        prefix: "mqtt2es-",
        dead_letter_index: "mqtt2es-deadletter",
        retention: &RETENTION,
    }
}

const NODE_9_2: &str = r#"{"nodes":{"n":{"version":"9.2.0","build_flavor":"default","modules":[{"name":"x-pack-core"}]}}}"#;

#[tokio::test]
async fn a_time_series_stream_kept_to_the_millisecond_is_rolled_over_and_one_to_the_nanosecond_is_not()
 {
    let es = StandIn::start(|_, request| {
        let path = request.path.split('?').next().unwrap_or("").replace("%40", "@");
        let reply = match path.as_str() {
            "/_nodes/_local" => NODE_9_2,
            // Elasticsearch 9.2's answer, shortened: "old" still writes to a millisecond
            // index; "new" was rolled over before and writes to a nanosecond one.
            "/mqtt2es-telemetry-*/_mapping/field/@timestamp" => {
                r#"{
                ".ds-mqtt2es-telemetry-old-2026.12.01-000001":{"mappings":{"@timestamp":{"full_name":"@timestamp","mapping":{"@timestamp":{"type":"date"}}}}},
                ".ds-mqtt2es-telemetry-new-2026.12.01-000001":{"mappings":{"@timestamp":{"full_name":"@timestamp","mapping":{"@timestamp":{"type":"date"}}}}},
                ".ds-mqtt2es-telemetry-new-2026.12.02-000002":{"mappings":{"@timestamp":{"full_name":"@timestamp","mapping":{"@timestamp":{"type":"date_nanos"}}}}}
                }"#
            }
            _ => r#"{"acknowledged":true}"#,
        };
        Reply::Json(200, reply.into())
    })
    .await;
    install(&client(&es.url), &es.url, &layout())
        .await
        .expect("installed");
    let rolled: Vec<String> = es
        .requests()
        .iter()
        .filter(|r| r.path.contains("_rollover"))
        .map(|r| format!("{} {}", r.method, r.path.split('?').next().unwrap_or("")))
        .collect();
    assert_eq!(rolled, ["POST /mqtt2es-telemetry-old/_rollover"]);
}

#[tokio::test]
async fn installing_identifies_the_engine_then_puts_components_before_index_templates() {
    let es = StandIn::start(|_, request| {
        if request.path.starts_with("/_nodes") {
            Reply::Json(200, NODE_9_2.into())
        } else {
            Reply::Json(200, r#"{"acknowledged":true}"#.into())
        }
    })
    .await;
    let installed = install(&client(&es.url), &es.url, &layout())
        .await
        .expect("installed");
    assert!(installed.features.time_series);
    assert_eq!(installed.time_series_prefixes, ["mqtt2es-telemetry-"]);

    let requests = es.requests();
    let sent: Vec<String> = requests
        .iter()
        .map(|r| {
            let path = r.path.split('?').next().unwrap_or("").replace("%40", "@");
            format!("{} {path}", r.method)
        })
        .collect();
    assert_eq!(
        sent,
        [
            "GET /_nodes/_local",
            "PUT /_component_template/mqtt2es-base@mappings",
            "PUT /_component_template/mqtt2es-telemetry@mappings",
            "PUT /_component_template/mqtt2es-status@mappings",
            "PUT /_component_template/mqtt2es-metrics@mappings",
            "PUT /_component_template/mqtt2es-deadletter@mappings",
            "PUT /_component_template/mqtt2es-telemetry@settings",
            "PUT /_index_template/mqtt2es-streams",
            "PUT /_index_template/mqtt2es-telemetry",
            "PUT /_index_template/mqtt2es-status",
            "PUT /_index_template/mqtt2es-metrics",
            "PUT /_index_template/mqtt2es-deadletter",
            "PUT /_data_stream/mqtt2es-deadletter",
            "PUT /_data_stream/mqtt2es-metrics",
            "GET /mqtt2es-telemetry-*/_mapping/field/@timestamp",
        ]
    );
    let body: Value = serde_json::from_str(&requests[8].body).expect("json");
    assert_eq!(
        body["index_patterns"],
        serde_json::json!(["mqtt2es-telemetry-*"])
    );
}

#[tokio::test]
async fn a_forbidden_template_names_the_privilege_and_is_not_retryable() {
    let es = StandIn::start(|_, request| {
        if request.path.starts_with("/_nodes") {
            return Reply::Json(200, NODE_9_2.into());
        }
        Reply::Json(
            403,
            r#"{"error":{"type":"security_exception","reason":"action [cluster:admin/component_template/put] is unauthorized for user [writer]"},"status":403}"#.into(),
        )
    })
    .await;
    let err = install(&client(&es.url), &es.url, &layout())
        .await
        .expect_err("forbidden");
    assert!(matches!(err, SetupError::Forbidden { .. }), "{err}");
    assert!(!err.is_retryable());
    let text = err.to_string();
    assert!(text.contains("\"mqtt2es-base@mappings\""), "{text}");
    assert!(text.contains("unauthorized for user [writer]"), "{text}");
    assert!(text.contains("manage_index_templates"), "{text}");
    assert!(text.contains(&es.url), "{text}");
}

#[tokio::test]
async fn refused_credentials_say_to_check_them() {
    let es = StandIn::start(|_, _| {
        Reply::Json(
            401,
            r#"{"error":{"type":"security_exception","reason":"unable to authenticate user [elastic] for REST request [/_nodes/_local]"},"status":401}"#.into(),
        )
    })
    .await;
    let err = install(&client(&es.url), &es.url, &layout())
        .await
        .expect_err("unauthenticated");
    assert!(matches!(err, SetupError::Unauthenticated { .. }), "{err}");
    assert!(!err.is_retryable());
    assert!(err.to_string().contains("elasticsearch.username"), "{err}");
}

#[tokio::test]
async fn an_engine_older_than_supported_is_refused_with_the_minimum_versions() {
    let es = StandIn::start(|_, _| {
        Reply::Json(
            200,
            r#"{"nodes":{"n":{"version":"7.17.9","build_flavor":"default"}}}"#.into(),
        )
    })
    .await;
    let err = install(&client(&es.url), &es.url, &layout())
        .await
        .expect_err("too old");
    let text = err.to_string();
    assert!(text.starts_with("elasticsearch 7.17.9 at "), "{text}");
    assert!(text.contains("8.14.0") && text.contains("2.0.0"), "{text}");
    assert!(!err.is_retryable());
    assert_eq!(
        es.requests().len(),
        1,
        "nothing is installed on a refused engine"
    );
}

#[tokio::test]
async fn an_unreachable_node_is_reported_with_its_url_as_retryable() {
    let url = {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        format!("http://{}", listener.local_addr().expect("address"))
    };
    let err = install(&client(&url), &url, &layout())
        .await
        .expect_err("unreachable");
    assert!(matches!(err, SetupError::Unreachable { .. }), "{err}");
    assert!(err.to_string().contains(&url), "{err}");
    assert!(err.is_retryable());
}

#[tokio::test]
async fn an_empty_prefix_is_refused_before_any_request() {
    let es = StandIn::start(|_, _| Reply::Json(200, "{}".into())).await;
    let layout = Layout {
        prefix: "",
        ..layout()
    };
    let err = install(&client(&es.url), &es.url, &layout)
        .await
        .expect_err("empty prefix");
    assert!(matches!(err, SetupError::EmptyPrefix));
    assert!(es.requests().is_empty());
}
