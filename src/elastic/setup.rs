//! What Elasticsearch must hold before the first document arrives, and the thin I/O that puts
//! it there: identify the engine, PUT the component templates, then the index templates, then
//! create the data streams whose names are known up front.
//!
//! Every step is a PUT of a complete definition (or a create that tolerates "already
//! exists"), so setup is idempotent and an upgraded mqtt2es simply installs its newer
//! templates. The definitions come from [`super::templates::plan`], a pure function of the
//! configuration and the engine's [`Features`]; this module only sends them and turns each
//! failure into an error that says what to do about it. Data streams whose names depend on
//! topics (one per site) are created by their first bulk `create`, which matching templates
//! make a data stream; that also works on distributions without the `_data_stream` API.

use elasticsearch::{
    Elasticsearch,
    cluster::ClusterPutComponentTemplateParts,
    http::response::Response,
    indices::{
        IndicesCreateDataStreamParts, IndicesGetFieldMappingParts, IndicesPutIndexTemplateParts,
        IndicesRolloverParts,
    },
    nodes::NodesInfoParts,
};
use std::collections::BTreeMap;

use serde_json::Value;

use super::{
    engine::{Engine, Features, MIN_ELASTICSEARCH, MIN_OPENSEARCH},
    templates::{self, Layout, Template},
};

/// Why setup failed. The caller decides whether to wait and try again ([`is_retryable`]).
///
/// [`is_retryable`]: SetupError::is_retryable
#[derive(Debug, thiserror::Error)]
pub enum SetupError {
    #[error("the index prefix must not be empty: the templates would match every index")]
    EmptyPrefix,
    #[error("elasticsearch at {url} is unreachable while {what}: {source}")]
    Unreachable {
        url: String,
        what: String,
        source: elasticsearch::Error,
    },
    #[error(
        "elasticsearch at {url} refused the credentials while {what} (http 401): {reason}; \
         check elasticsearch.username and password (or password_file), or api_key"
    )]
    Unauthenticated {
        url: String,
        what: String,
        reason: String,
    },
    #[error(
        "elasticsearch at {url} forbade {what} (http 403): {reason}; the configured user needs \
         the {privilege} privilege"
    )]
    Forbidden {
        url: String,
        what: String,
        privilege: &'static str,
        reason: String,
    },
    #[error(
        "{engine} at {url} is too old: mqtt2es setup needs elasticsearch {MIN_ELASTICSEARCH} or \
         newer (time-series data streams and the data stream lifecycle) or opensearch \
         {MIN_OPENSEARCH} or newer"
    )]
    TooOld { url: String, engine: Engine },
    #[error("cannot tell which search engine answers at {url}: {reason}")]
    Unrecognised { url: String, reason: String },
    #[error("elasticsearch at {url} refused {what} (http {status}): {reason}")]
    Refused {
        url: String,
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
            SetupError::EmptyPrefix
            | SetupError::Unauthenticated { .. }
            | SetupError::Forbidden { .. }
            | SetupError::TooOld { .. }
            | SetupError::Unrecognised { .. } => false,
        }
    }
}

/// What setup found and did; `run` hands `time_series_prefixes` to the sink.
#[derive(Debug, Clone)]
pub struct Installed {
    pub engine: Engine,
    pub features: Features,
    /// Index-name prefixes of time-series data streams: documents there go without `_id`.
    pub time_series_prefixes: Vec<String>,
}

/// Identifies the engine and what it supports. Needs the `monitor` cluster privilege.
pub async fn detect(client: &Elasticsearch, url: &str) -> Result<(Engine, Features), SetupError> {
    let what = "identifying the search engine (GET _nodes/_local)";
    let response = client
        .nodes()
        .info(NodesInfoParts::NodeId(&["_local"]))
        .filter_path(&[
            "nodes.*.version",
            "nodes.*.build_flavor",
            "nodes.*.modules.name",
        ])
        .send()
        .await
        .map_err(|source| unreachable(url, what, source))?;
    let product = response
        .headers()
        .get("x-elastic-product")
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    let body = expect_success(response, url, what, "monitor cluster").await?;
    let engine = Engine::from_probe(product.as_deref(), &body).map_err(|reason| {
        SetupError::Unrecognised {
            url: url.to_owned(),
            reason,
        }
    })?;
    let features = engine.features().map_err(|_| SetupError::TooOld {
        url: url.to_owned(),
        engine: engine.clone(),
    })?;
    Ok((engine, features))
}

/// Installs (or replaces) everything the plan holds. Idempotent.
pub async fn install(
    client: &Elasticsearch,
    url: &str,
    layout: &Layout<'_>,
) -> Result<Installed, SetupError> {
    if layout.prefix.is_empty() {
        return Err(SetupError::EmptyPrefix);
    }
    let (engine, features) = detect(client, url).await?;
    tracing::info!(%engine, ?features, "search engine identified");
    let plan = templates::plan(layout, &features);
    for template in &plan.component_templates {
        put_component_template(client, url, template).await?;
    }
    for template in &plan.index_templates {
        put_index_template(client, url, template).await?;
    }
    create_data_streams(client, url, &plan.data_streams).await?;
    let time_series_prefixes = templates::time_series_prefixes(layout.prefix, &features);
    for prefix in &time_series_prefixes {
        roll_over_millisecond_series(client, &format!("{prefix}*")).await;
    }
    log_lifecycle(&engine, &features);
    Ok(Installed {
        time_series_prefixes,
        engine,
        features,
    })
}

/// A time-series stream made before `@timestamp` became `date_nanos` keeps millisecond times
/// in its write index until that rolls over; meanwhile readings of one device within a
/// millisecond meet one another's `_id` and move a millisecond apart, a round trip each. A
/// rollover now gives the stream the nanosecond mapping at once. Best effort: a failure only
/// costs those round trips, so it is logged, never fatal.
async fn roll_over_millisecond_series(client: &Elasticsearch, pattern: &str) {
    // One request for every backing index's mapping (the `_data_stream` API is a module some
    // distributions lack); the write index is each stream's latest generation.
    let mappings = async {
        let response = client
            .indices()
            .get_field_mapping(IndicesGetFieldMappingParts::IndexFields(
                &[pattern],
                &["@timestamp"],
            ))
            .send()
            .await
            .ok()?;
        let body: Value = response.json().await.ok()?;
        Some(body.as_object()?.clone())
    };
    let mut write_indices: BTreeMap<String, (String, String)> = BTreeMap::new();
    for (index, mapping) in mappings.await.unwrap_or_default() {
        let Some((stream, generation)) = backing_index_of(&index) else {
            continue;
        };
        let ty = mapping
            .pointer("/mappings/@timestamp/mapping/@timestamp/type")
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_owned();
        let entry = write_indices
            .entry(stream)
            .or_insert_with(|| (generation.clone(), ty.clone()));
        if generation > entry.0 {
            *entry = (generation, ty);
        }
    }
    for (stream, (_, ty)) in write_indices {
        if ty != "date" {
            continue;
        }
        let rolled = client
            .indices()
            .rollover(IndicesRolloverParts::Alias(&stream))
            .send()
            .await;
        match rolled {
            Ok(response) if response.status_code().is_success() => tracing::info!(
                data_stream = %stream,
                "rolled over: its new backing index keeps @timestamp to the nanosecond, so \
                 readings of one device within a millisecond stay apart"
            ),
            Ok(response) => tracing::warn!(
                data_stream = %stream,
                status = response.status_code().as_u16(),
                "could not roll over a time-series stream kept to the millisecond; readings \
                 within one millisecond of a device cost an extra round trip until it rolls over"
            ),
            Err(error) => {
                tracing::warn!(data_stream = %stream, %error, "could not roll over a time-series stream kept to the millisecond")
            }
        }
    }
}

/// `.ds-<stream>-<yyyy.MM.dd>-<generation>` → the stream and its zero-padded generation.
fn backing_index_of(index: &str) -> Option<(String, String)> {
    let rest = index.strip_prefix(".ds-")?;
    let (rest, generation) = rest.rsplit_once('-')?;
    let (stream, _date) = rest.rsplit_once('-')?;
    Some((stream.to_owned(), generation.to_owned()))
}

fn log_lifecycle(engine: &Engine, features: &Features) {
    if !features.lifecycle {
        tracing::info!(
            %engine,
            "no data stream lifecycle on this engine: retention and rollover are left to the \
             cluster (on OpenSearch, an ISM policy; mqtt2es installs none)"
        );
    } else if !features.lifecycle_enforced {
        tracing::info!(
            %engine,
            "retention is set in the templates, but this node has no data-streams module to \
             apply it: nothing is rolled over or deleted by age"
        );
    } else {
        tracing::info!("retention and rollover are managed by the data stream lifecycle");
    }
}

async fn put_component_template(
    client: &Elasticsearch,
    url: &str,
    template: &Template,
) -> Result<(), SetupError> {
    let what = format!("installing component template {:?}", template.name);
    let response = client
        .cluster()
        .put_component_template(ClusterPutComponentTemplateParts::Name(&template.name))
        .body(&template.body)
        .send()
        .await
        .map_err(|source| unreachable(url, &what, source))?;
    expect_success(response, url, &what, "manage_index_templates cluster").await?;
    tracing::debug!(template = %template.name, "installed component template");
    Ok(())
}

async fn put_index_template(
    client: &Elasticsearch,
    url: &str,
    template: &Template,
) -> Result<(), SetupError> {
    let what = format!("installing index template {:?}", template.name);
    let response = client
        .indices()
        .put_index_template(IndicesPutIndexTemplateParts::Name(&template.name))
        .body(&template.body)
        .send()
        .await
        .map_err(|source| unreachable(url, &what, source))?;
    expect_success(response, url, &what, "manage_index_templates cluster").await?;
    tracing::info!(template = %template.name, "installed index template");
    Ok(())
}

/// Creates each data stream unless it exists. A node without the `_data_stream` API, or a user
/// who may write but not create, is no failure: the first write creates the stream.
async fn create_data_streams(
    client: &Elasticsearch,
    url: &str,
    names: &[String],
) -> Result<(), SetupError> {
    for name in names {
        let what = format!("creating data stream {name:?}");
        let response = client
            .indices()
            .create_data_stream(IndicesCreateDataStreamParts::Name(name))
            .send()
            .await
            .map_err(|source| unreachable(url, &what, source))?;
        let status = response.status_code().as_u16();
        if response.status_code().is_success() {
            tracing::info!(data_stream = %name, "created data stream");
            continue;
        }
        let body = response.text().await.unwrap_or_default();
        match data_stream_answer(status, &body) {
            DataStreamAnswer::Exists => {
                tracing::debug!(data_stream = %name, "data stream exists");
            }
            DataStreamAnswer::NoApi => {
                tracing::info!(
                    "this node has no data stream API: data streams are created by their first \
                     document"
                );
                return Ok(());
            }
            DataStreamAnswer::Forbidden => {
                tracing::warn!(
                    data_stream = %name,
                    reason = %error_reason(&body),
                    "may not create the data stream (needs the create_index privilege on it); \
                     its first document will"
                );
            }
            DataStreamAnswer::Failed => {
                return Err(refusal(url, &what, status, &body, "create_index index"));
            }
        }
    }
    Ok(())
}

#[derive(Debug, PartialEq, Eq)]
enum DataStreamAnswer {
    Exists,
    NoApi,
    Forbidden,
    Failed,
}

/// Sorts a failed `PUT _data_stream/<name>`.
fn data_stream_answer(status: u16, body: &str) -> DataStreamAnswer {
    let parsed: Option<Value> = serde_json::from_str(body).ok();
    let error = parsed.as_ref().and_then(|v| v.get("error"));
    let error_type = error.and_then(|e| e.get("type")).and_then(Value::as_str);
    match (status, error_type) {
        (_, Some("resource_already_exists_exception")) => DataStreamAnswer::Exists,
        (403, _) => DataStreamAnswer::Forbidden,
        (404 | 405, _) => DataStreamAnswer::NoApi,
        // Elasticsearch answers a path it has no handler for with 400 and a plain string.
        (400, None) if body.contains("no handler found") => DataStreamAnswer::NoApi,
        _ => DataStreamAnswer::Failed,
    }
}

fn unreachable(url: &str, what: &str, source: elasticsearch::Error) -> SetupError {
    SetupError::Unreachable {
        url: url.to_owned(),
        what: what.to_owned(),
        source,
    }
}

/// The JSON body of a 2xx response, or the error that says what went wrong.
async fn expect_success(
    response: Response,
    url: &str,
    what: &str,
    privilege: &'static str,
) -> Result<Value, SetupError> {
    let status = response.status_code().as_u16();
    let success = response.status_code().is_success();
    let body = response.text().await.unwrap_or_default();
    if success {
        return Ok(serde_json::from_str(&body).unwrap_or(Value::Null));
    }
    Err(refusal(url, what, status, &body, privilege))
}

fn refusal(url: &str, what: &str, status: u16, body: &str, privilege: &'static str) -> SetupError {
    let reason = error_reason(body);
    let (url, what) = (url.to_owned(), what.to_owned());
    match status {
        401 => SetupError::Unauthenticated { url, what, reason },
        403 => SetupError::Forbidden {
            url,
            what,
            privilege,
            reason,
        },
        _ => SetupError::Refused {
            url,
            what,
            status,
            reason,
        },
    }
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
        let no_handler =
            r#"{"error":"no handler found for uri [/_data_stream/x] and method [PUT]"}"#;
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
            gzip: false,
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
}
