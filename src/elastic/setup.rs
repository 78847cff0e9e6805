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
mod tests;
