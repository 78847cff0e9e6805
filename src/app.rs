//! Wires the edges together and owns startup and the shutdown order.
//!
//! ```text
//! broker or upstream ──Record──► process ──Routed──► sink ──► Elasticsearch
//!         ▲                                            │
//!         └──────────── Settled (ack in order) ◄───────┘
//! ```
//! The source is the embedded broker unless an `upstream` broker is configured.
//! Shutdown flows downstream: a signal stops intake at the connections, which drop their
//! record senders; the processor drains and drops its sender; the sink flushes and returns.
//! Acks settle along the way and the connections send them before disconnecting. If the sink
//! cannot finish within `shutdown.grace_ms` (Elasticsearch down), it is told to abandon: what
//! is not stored stays unacknowledged, and the device (or the upstream broker) sends it again.

use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, bail};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tracing::{debug, error, info, warn};

use crate::broker::{self, Broker};
use crate::config::{Config, Secrets};
use crate::document::{Processed, Rejection};
use crate::elastic;
use crate::kept::Kept;
use crate::metrics::{self, Metrics};
use crate::pipeline::Pipelines;
use crate::record::{Message, QoS, Record};
use crate::sink::{self, Routed};
use crate::spool::Spool;
use crate::upstream;

/// Records waiting between the connections and the processor, and between processor and sink.
/// The sink's batches are the buffer that matters (a batch grows while requests are in flight);
/// these only smooth the hops, and at full rate they are full, so each slot is memory held:
/// 2048 held twice the peak RSS of 512 for no more throughput (bench/README.md).
const CHANNEL_CAPACITY: usize = 512;

/// Records the processor takes from its channel at most per wake-up (well under
/// `CHANNEL_CAPACITY`, which `reserve_many` needs).
const PROCESSOR_BATCH: usize = 256;

/// After the sink gave up, how long the connections get to send their last acks and DISCONNECT.
const DISCONNECT_GRACE: Duration = Duration::from_secs(5);

fn load_pipelines(config: &Config) -> anyhow::Result<Pipelines> {
    Ok(Pipelines::load_dir(
        &config.pipelines.dir,
        &config.index,
        &config.pipelines.decode,
    )?)
}

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
        None => process(&pipelines, config.pipelines.max_payload_bytes, &message),
    };
    let shown = match processed {
        // The reading's own id unless the pipeline made one (on a time-series stream the
        // node derives the _id from the series and @timestamp instead).
        Processed::Document(doc) => serde_json::json!({
            "pipeline": &*doc.pipeline,
            "index": doc.index,
            "id": doc.id.unwrap_or_else(|| message.reading.to_string()),
            "document": doc.source,
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

/// The names setup works with, from the configuration.
fn layout(config: &Config) -> elastic::Layout<'_> {
    elastic::Layout {
        prefix: &config.index.prefix,
        dead_letter_index: &config.dead_letter.index,
        retention: &config.setup.retention_days,
    }
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

/// Runs one message through the pipelines, refusing oversized payloads before any parsing.
fn process(pipelines: &Pipelines, max_payload_bytes: usize, message: &Message) -> Processed {
    if message.payload.len() > max_payload_bytes {
        return Processed::Rejected(Rejection {
            pipeline: None,
            stage: Some("decode".into()),
            reason: sink::dead_letter::PAYLOAD_TOO_LARGE.into(),
            detail: format!(
                "payload of {} bytes exceeds pipelines.max_payload_bytes ({max_payload_bytes})",
                message.payload.len()
            ),
        });
    }
    pipelines.process(message)
}

/// The processor task: pure pipeline work between the two channels. Ends when every upstream
/// connection dropped its sender; dropping `routed` then tells the sink to flush and finish.
async fn run_processor(
    pipelines: Arc<Pipelines>,
    max_payload_bytes: usize,
    mut records: mpsc::Receiver<Record>,
    routed: mpsc::Sender<Routed>,
) {
    // Many records per wake-up under load: one channel operation each way for all of them.
    let mut taken = Vec::with_capacity(PROCESSOR_BATCH);
    while records.recv_many(&mut taken, PROCESSOR_BATCH).await > 0 {
        let Ok(permits) = routed.reserve_many(taken.len()).await else {
            warn!("sink stopped; processor ends");
            return;
        };
        for (Record { message, ack }, permit) in taken.drain(..).zip(permits) {
            let processed = process(&pipelines, max_payload_bytes, &message);
            permit.send(Routed {
                message,
                processed,
                ack,
            });
        }
    }
}

/// Where records come from.
enum Source {
    Upstream(Box<upstream::UpstreamSettings>, Kept),
    Broker(Broker),
}

/// `mqtt2es run`.
pub async fn run(config: Config, secrets: Secrets) -> anyhow::Result<()> {
    let pipelines = Arc::new(load_pipelines(&config)?);
    let (client, nodes) = elastic::build_cluster(&config.elasticsearch)?;
    tokio::spawn(elastic::nodes::probe(nodes.clone()));
    if config.elasticsearch.sniff {
        let every = Duration::from_secs(config.elasticsearch.sniff_interval_s);
        tokio::spawn(elastic::nodes::sniff(client.clone(), nodes.clone(), every));
    }
    let shutdown = CancellationToken::new();
    tokio::spawn(watch_signals(shutdown.clone()));

    // Before setup, so /healthz answers (and /readyz says why not) while Elasticsearch is away.
    let mode = match config.upstream {
        Some(_) => metrics::Mode::Upstream,
        None => metrics::Mode::Broker,
    };
    let metrics = Metrics::start(&config.metrics, mode, &client, &config.index.prefix).await?;

    let filters = pipelines.topic_filters();
    // The embedded broker binds (and logs `listening`) before anything else starts, so a
    // taken port ends the start with its reason instead of a half-running bridge.
    let source = match &config.upstream {
        Some(upstream) => {
            info!(
                pipelines = ?pipelines.names(),
                filters = ?filters,
                broker = %format!("{}:{}", upstream.host, upstream.port),
                elasticsearch = %config.elasticsearch.target(),
                "mqtt2es starting"
            );
            let kept = Kept::open(&upstream.state_dir).context("upstream.state_dir")?;
            Source::Upstream(Box::new(upstream.clone()), kept)
        }
        None => {
            info!(
                pipelines = ?pipelines.names(),
                elasticsearch = %config.elasticsearch.target(),
                "mqtt2es starting with the embedded broker"
            );
            if let Some(problem) = config.broker.refuses_everyone() {
                bail!("{problem}");
            }
            let broker = Broker::start(&config.broker)
                .await
                .context("starting the embedded broker")?;
            metrics::broker_listening(true);
            Source::Broker(broker)
        }
    };

    let spool = match config.delivery.spool() {
        Some(settings) => Some(
            Spool::open(settings)
                .with_context(|| format!("opening the spool in {:?}", settings.dir))?,
        ),
        None => None,
    };

    let (records_tx, records_rx) = mpsc::channel(CHANNEL_CAPACITY);
    let (routed_tx, routed_rx) = mpsc::channel(CHANNEL_CAPACITY);
    let abandon = CancellationToken::new();
    // Connections are served before setup: devices connect and subscribers see live traffic
    // while Elasticsearch is still starting (compose, a reboot). Their records wait in the
    // channels, unacknowledged, until the sink runs; templates are in place before the first
    // document is written.
    let records_probe = records_tx.downgrade();
    let kept = match &source {
        Source::Upstream(_, kept) => kept.clone(),
        Source::Broker(broker) => broker.kept(),
    };
    // Spooling: the connections' records go to the spool's writer (acknowledged once fsynced,
    // Elasticsearch or not, so it starts now); the pipelines take what the shipper reads back.
    let (pipeline_input, mut spooling) = match spool {
        None => (records_rx, None),
        Some(spool) => {
            let writer = spool
                .start_writer(kept.clone(), records_rx, shutdown.clone())
                .context("starting the spool's writer")?;
            let (shipped_tx, shipped_rx) = mpsc::channel(CHANNEL_CAPACITY);
            (
                shipped_rx,
                Some(Spooling {
                    spool,
                    writer,
                    shipped_tx: Some(shipped_tx),
                    shipper: None,
                }),
            )
        }
    };
    let mut source_task: tokio::task::JoinHandle<anyhow::Result<()>> = match source {
        Source::Upstream(settings, kept) => {
            let intake = shutdown.clone();
            tokio::spawn(async move {
                upstream::run(
                    *settings,
                    secrets.upstream_password,
                    filters,
                    records_tx,
                    kept,
                    intake,
                )
                .await
                .context("upstream subscriber")
            })
        }
        Source::Broker(broker) => {
            let intake = shutdown.clone();
            tokio::spawn(async move {
                broker.run(records_tx, intake).await;
                Ok(())
            })
        }
    };

    // The sink must know which streams are time series (their documents go without `_id`),
    // so the engine is identified even when setup is left to `mqtt2es setup`.
    let target = config.elasticsearch.target();
    let url = target.as_str();
    let setup = async {
        if config.setup.on_start {
            let layout = layout(&config);
            until_ready(&shutdown, url, spooling.is_some(), || {
                elastic::install(&client, url, &layout)
            })
            .await
            .context("setting up elasticsearch")
            .map(|installed| installed.time_series_prefixes)
        } else {
            let (_, features) = until_ready(&shutdown, url, spooling.is_some(), || {
                elastic::detect(&client, url)
            })
            .await
            .context("identifying the search engine")?;
            Ok(elastic::templates::time_series_prefixes(
                &config.index.prefix,
                &features,
            ))
        }
    };
    let time_series_prefixes = match setup.await {
        Ok(prefixes) => prefixes,
        Err(_) if shutdown.is_cancelled() => {
            // Told to stop before anything could be stored: nothing was acknowledged but what
            // is in the spool, so the devices (or the upstream broker) still hold every other
            // message. A clean exit.
            match &spooling {
                None => warn!("stopped before elasticsearch was ready; nothing was acknowledged"),
                Some(_) => warn!(
                    "stopped before elasticsearch was ready; what was acknowledged is in the spool"
                ),
            }
            metrics::shutting_down();
            if tokio::time::timeout(DISCONNECT_GRACE, &mut source_task)
                .await
                .is_err()
            {
                source_task.abort();
            }
            if let Some(spooling) = spooling {
                spooling.finish().await;
            }
            metrics.stop().await;
            return Ok(());
        }
        Err(error) => return Err(error),
    };
    metrics.setup_finished();
    info!("elasticsearch ready: writing documents");

    let writer = sink::Writer::new(
        client,
        sink::SinkSettings {
            batch: config.batch.clone(),
            retry: config.retry.clone(),
            dead_letter: config.dead_letter.clone(),
            time_series_prefixes,
            gzip: config.elasticsearch.gzip,
        },
    )
    .committing(kept)
    .reporting_to(nodes)
    .observed_by(Arc::new(metrics::SinkObserver));
    // A weak probe: a strong sender kept here would keep the pipeline open after intake stops.
    if let Some(records) = records_probe.upgrade() {
        metrics::watch(writer.stats(), &records, &routed_tx);
    }
    let mut sink_task = tokio::spawn(sink::run(routed_rx, writer, abandon.clone()));
    let processor = tokio::spawn(run_processor(
        Arc::clone(&pipelines),
        config.pipelines.max_payload_bytes,
        pipeline_input,
        routed_tx,
    ));
    if let Some(spooling) = &mut spooling {
        spooling.start_shipping(shutdown.clone());
    }

    // Biased: after a signal the connections may finish before this select is polled, and that
    // normal end must not be mistaken for the unexpected one below.
    tokio::select! {
        biased;
        _ = shutdown.cancelled() => {},
        result = &mut source_task => {
            shutdown.cancel();
            match result {
                Ok(Ok(())) => bail!("connections ended unexpectedly"),
                Ok(Err(error)) => return Err(error),
                Err(error) => bail!("connections failed: {error}"),
            }
        }
        result = &mut sink_task => {
            shutdown.cancel();
            bail!("sink ended unexpectedly: {result:?}");
        }
    }

    metrics::shutting_down();
    let grace = Duration::from_millis(config.shutdown.grace_ms);
    info!(
        grace_ms = config.shutdown.grace_ms,
        "shutting down: flushing what was received"
    );
    let report = match tokio::time::timeout(grace, &mut sink_task).await {
        Ok(report) => report,
        Err(_) => {
            warn!("grace period over: records not yet stored stay unacknowledged for redelivery");
            abandon.cancel();
            sink_task.await
        }
    };
    match report {
        Ok(Ok(report)) => info!(?report, "sink flushed"),
        Ok(Err(error)) => error!(%error, "sink failed while flushing"),
        Err(error) => error!(%error, "sink task failed"),
    }
    processor.abort();
    match tokio::time::timeout(DISCONNECT_GRACE, &mut source_task).await {
        Ok(_) => info!("connections closed; bye"),
        Err(_) => {
            warn!("connections did not close in time; closing anyway");
            source_task.abort();
        }
    }
    if let Some(spooling) = spooling {
        spooling.finish().await;
    }
    metrics.stop().await;
    Ok(())
}

/// The spool's parts while `run` runs.
struct Spooling {
    spool: Spool,
    writer: std::thread::JoinHandle<()>,
    /// Handed to the shipper when it starts (after setup).
    shipped_tx: Option<mpsc::Sender<Record>>,
    shipper: Option<tokio::task::JoinHandle<()>>,
}

impl Spooling {
    /// Ships the spool into the pipelines until `stop`.
    fn start_shipping(&mut self, stop: CancellationToken) {
        let Some(out) = self.shipped_tx.take() else {
            return;
        };
        let spool = self.spool.clone();
        self.shipper = Some(tokio::spawn(async move { spool.ship(out, stop).await }));
    }

    /// After the connections closed: the writer has taken their last records; the shipper saves
    /// its cursor once what it sent has settled.
    async fn finish(self) {
        let writer = self.writer;
        if tokio::task::spawn_blocking(move || writer.join())
            .await
            .is_err()
        {
            error!("the spool's writer failed");
        }
        if let Some(shipper) = self.shipper
            && shipper.await.is_err()
        {
            error!("the spool's shipper failed");
        }
    }
}

/// How often waiting for Elasticsearch is reported after the first line that says so.
const WAITING_REPORT_EVERY: Duration = Duration::from_secs(60);

/// Elasticsearch may still be starting (compose, reboot), or not be there at all (a first try
/// without it): keep trying until it answers or we are told to stop. One warning says what is
/// missing and how to get it, then progress once a minute, not a line per retry. Configuration
/// errors it reports (401, 403, a version too old, a bad template) end the start.
async fn until_ready<T, Fut>(
    shutdown: &CancellationToken,
    url: &str,
    spooling: bool,
    mut attempt: impl FnMut() -> Fut,
) -> anyhow::Result<T>
where
    Fut: std::future::Future<Output = Result<T, elastic::SetupError>>,
{
    let mut delay = Duration::from_millis(500);
    let started = tokio::time::Instant::now();
    let mut attempts = 0u64;
    let mut reported = None;
    loop {
        attempts += 1;
        let waited_s = started.elapsed().as_secs();
        match attempt().await {
            Ok(done) => {
                if attempts > 1 {
                    info!(url, waited_s, attempts, "elasticsearch answered; starting");
                }
                return Ok(done);
            }
            Err(error) if error.is_retryable() => match reported {
                None if spooling => {
                    warn!(
                        url,
                        %error,
                        "elasticsearch not ready for setup: readings are acknowledged into the \
                         spool and shipped once it answers. No node yet? \
                         `scripts/demo` (in the source tree) runs the demo with a local node, no \
                         Docker needed; `docker compose up elasticsearch` starts one in Docker; \
                         or point elasticsearch.url (MQTT2ES_ELASTICSEARCH__URL) at yours. \
                         Progress is logged once a minute"
                    );
                    reported = Some(tokio::time::Instant::now());
                }
                None => {
                    warn!(
                        url,
                        %error,
                        "elasticsearch not ready for setup: mqtt2es waits for it and acknowledges \
                         no QoS 1/2 publish meanwhile. No node yet? \
                         `scripts/demo` (in the source tree) runs the demo with a local node, no \
                         Docker needed; `docker compose up elasticsearch` starts one in Docker; \
                         or point elasticsearch.url (MQTT2ES_ELASTICSEARCH__URL) at yours. \
                         Progress is logged once a minute"
                    );
                    reported = Some(tokio::time::Instant::now());
                }
                Some(at) if at.elapsed() >= WAITING_REPORT_EVERY => {
                    info!(url, waited_s, attempts, %error, "still waiting for elasticsearch");
                    reported = Some(tokio::time::Instant::now());
                }
                Some(_) => {
                    debug!(url, attempts, retry_in_ms = delay.as_millis() as u64, %error, "elasticsearch still not ready; retrying");
                }
            },
            Err(error) => return Err(error.into()),
        }
        tokio::select! {
            _ = tokio::time::sleep(delay) => {},
            _ = shutdown.cancelled() => bail!("stopped before elasticsearch was ready"),
        }
        delay = (delay * 2).min(Duration::from_secs(30));
    }
}

/// SIGTERM (docker stop, systemd) and SIGINT (Ctrl-C) both mean "stop intake and flush".
async fn watch_signals(shutdown: CancellationToken) {
    let mut term = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
        Ok(signal) => signal,
        Err(error) => {
            error!(%error, "cannot listen for SIGTERM");
            return;
        }
    };
    tokio::select! {
        _ = term.recv() => info!("SIGTERM received"),
        _ = tokio::signal::ctrl_c() => info!("interrupt received"),
    }
    shutdown.cancel();
}
