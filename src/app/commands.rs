//! The short commands: `check` (everything `run` verifies before connecting anywhere), `try`
//! (what the pipelines make of one message) and `setup` (Elasticsearch and Kibana, idempotent).

use std::sync::Arc;

use anyhow::{Context, bail};
use tracing::info;

use super::parts::{layout, load_pipelines};
use crate::broker;
use crate::config::Config;
use crate::document::Processed;
use crate::elastic;
use crate::processor;
use crate::record::{Message, QoS};

/// `mqtt2es check`: everything `run` would verify before connecting anywhere.
pub fn check(config: &Config) -> anyhow::Result<String> {
    let pipelines = load_pipelines(config)?;
    elastic::build_client(&config.elasticsearch)?;
    let kibana = match &config.kibana {
        Some(kibana) => format!(
            "; importing {} saved object(s) from {:?} into {}",
            elastic::kibana::check(kibana)?,
            kibana.dashboards_dir,
            kibana.url
        ),
        None => String::new(),
    };
    let kibana = match config.delivery.spool() {
        Some(spool) => format!("{kibana}; {}", crate::spool::describe(spool)),
        None => kibana,
    };
    let Some(upstream) = &config.upstream else {
        if let Some(problem) = config.broker.refuses_everyone() {
            bail!("{problem}");
        }
        broker::auth::Auth::load(&config.broker.auth).context("broker.auth")?;
        let broker = &config.broker;
        return Ok(format!(
            "configuration ok: {} pipeline(s) [{}] from {:?}; embedded broker listening on {}; {}; state in {:?}; writing to {}{}",
            pipelines.names().len(),
            pipelines.names().join(", "),
            config.pipelines.dir,
            broker
                .listeners
                .iter()
                .map(|l| format!("{} {}", l.transport, l.bind))
                .collect::<Vec<_>>()
                .join(", "),
            broker.auth.describe(),
            broker.state_dir,
            config.elasticsearch.target(),
            kibana,
        ));
    };
    let filters = pipelines.topic_filters();
    Ok(format!(
        "configuration ok: {} pipeline(s) [{}] from {:?}; subscribing to {} as {:?} on {}:{}; writing to {}{}",
        pipelines.names().len(),
        pipelines.names().join(", "),
        config.pipelines.dir,
        filters
            .iter()
            .map(|f| upstream.subscription_for(f))
            .collect::<Vec<_>>()
            .join(", "),
        upstream.client_id,
        upstream.host,
        upstream.port,
        config.elasticsearch.target(),
        kibana,
    ))
}

/// A message given on the command line to `mqtt2es try`.
pub struct Sample {
    pub topic: String,
    pub payload: Vec<u8>,
    pub pipeline: Option<String>,
    pub qos: u8,
    pub retain: bool,
}

/// `mqtt2es try`: what the pipelines make of one message, as pretty JSON.
pub fn try_sample(config: &Config, sample: Sample) -> anyhow::Result<String> {
    let pipelines = load_pipelines(config)?;
    let message = Message {
        topic: sample.topic,
        payload: Arc::from(sample.payload),
        qos: QoS::saturating(sample.qos),
        retain: sample.retain,
        reading: crate::reading::ReadingId::next(),
        received_at: crate::reading::receive_time(),
        user_properties: Vec::new(),
    };
    let processed = match &sample.pipeline {
        Some(name) => pipelines.process_with(name, &message).with_context(|| {
            format!(
                "no pipeline named {name:?}; there are: {}",
                pipelines.names().join(", ")
            )
        })?,
        None => processor::process(&pipelines, config.pipelines.max_payload_bytes, &message),
    };
    let shown = match processed {
        // The reading's own id unless the pipeline made one (on a time-series stream the
        // node derives the _id from the series and @timestamp instead).
        Processed::Document(doc) => serde_json::json!({
            "document": doc.as_stored(&message),
            "pipeline": &*doc.pipeline,
            "index": doc.index,
            "id": doc.id.unwrap_or_else(|| message.reading.to_string()),
        }),
        Processed::Dropped { pipeline, stage } => serde_json::json!({
            "dropped": {"pipeline": pipeline, "stage": stage},
        }),
        Processed::Rejected(rejection) => serde_json::json!({
            "dead_letter": {
                "pipeline": rejection.pipeline,
                "stage": rejection.stage,
                "reason": rejection.reason,
                "detail": rejection.detail,
            },
        }),
    };
    Ok(serde_json::to_string_pretty(&shown)?)
}

/// `mqtt2es setup`: templates, lifecycle and data streams in Elasticsearch, then the
/// dashboards in Kibana when a `kibana:` section is configured. Idempotent.
pub async fn setup(config: &Config) -> anyhow::Result<()> {
    let client = elastic::build_client(&config.elasticsearch)?;
    let installed = elastic::install(&client, &config.elasticsearch.target(), &layout(config))
        .await
        .context("setting up elasticsearch")?;
    info!(engine = %installed.engine, "elasticsearch is set up");
    match &config.kibana {
        None => info!("no kibana section in the configuration: dashboards not imported"),
        Some(kibana) => {
            elastic::import_dashboards(kibana)
                .await
                .context("importing the dashboards into kibana")?;
        }
    }
    Ok(())
}
