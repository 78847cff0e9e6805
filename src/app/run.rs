//! `mqtt2es run`: starts the parts in order, then stops them in order.

use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, bail};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tracing::{error, info, warn};

use super::parts::{layout, load_pipelines};
use super::signals::stop_on_signal;
use super::spooling::Spooling;
use super::until_ready::until_ready;
use crate::broker::Broker;
use crate::config::{Config, Secrets};
use crate::elastic;
use crate::kept::Kept;
use crate::metrics::{self, Metrics};
use crate::processor;
use crate::sink;
use crate::spool::Spool;
use crate::upstream::Upstream;

/// Records waiting between the connections and the processor, and between processor and sink.
/// The sink's batches are the buffer that matters (a batch grows while requests are in flight);
/// these only smooth the hops, and at full rate they are full, so each slot is memory held:
/// 2048 held twice the peak RSS of 512 for no more throughput (bench/README.md).
const CHANNEL_CAPACITY: usize = 512;

/// After the sink gave up, how long the connections get to send their last acks and DISCONNECT.
const DISCONNECT_GRACE: Duration = Duration::from_secs(5);

/// Where records come from: either source is started (bound, its state opened) before
/// anything else, then run until intake stops.
enum Source {
    Upstream(Box<Upstream>),
    Broker(Broker),
}

impl Source {
    /// What each unacknowledged message was assigned, on disk (the sink commits it).
    fn kept(&self) -> Kept {
        match self {
            Source::Upstream(upstream) => upstream.kept(),
            Source::Broker(broker) => broker.kept(),
        }
    }

    /// Takes in records until `intake` is cancelled and the connections have said goodbye.
    async fn run(
        self,
        records: mpsc::Sender<crate::record::Record>,
        intake: CancellationToken,
    ) -> anyhow::Result<()> {
        match self {
            Source::Upstream(upstream) => upstream
                .run(records, intake)
                .await
                .context("upstream subscriber"),
            Source::Broker(broker) => {
                broker.run(records, intake).await;
                Ok(())
            }
        }
    }
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
    tokio::spawn(stop_on_signal(shutdown.clone()));

    // Before setup, so /healthz answers (and /readyz says why not) while Elasticsearch is away.
    let mode = match config.upstream {
        Some(_) => metrics::Mode::Upstream,
        None => metrics::Mode::Broker,
    };
    let metrics = Metrics::start(&config.metrics, mode, &client, &config.index.prefix).await?;

    let filters = pipelines.topic_filters();
    let workers = tokio::runtime::Handle::current().metrics().num_workers();
    // The embedded broker binds (and logs `listening`) before anything else starts, so a
    // taken port ends the start with its reason instead of a half-running bridge.
    let source = match &config.upstream {
        Some(upstream) => {
            info!(
                workers,
                pipelines = ?pipelines.names(),
                filters = ?filters,
                broker = %format!("{}:{}", upstream.host, upstream.port),
                elasticsearch = %config.elasticsearch.target(),
                "mqtt2es starting"
            );
            let upstream = Upstream::start(upstream.clone(), secrets.upstream_password, filters)
                .context("upstream.state_dir")?;
            Source::Upstream(Box::new(upstream))
        }
        None => {
            info!(
                workers,
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
    let kept = source.kept();
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
    let mut source_task = tokio::spawn(source.run(records_tx, shutdown.clone()));

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
            finish(source_task, spooling, metrics).await;
            return Ok(());
        }
        Err(error) => return Err(error),
    };
    metrics.setup_finished();
    // Whether bulk bodies are gzipped (`elasticsearch.gzip`, `auto` by default) is said here:
    // with `auto` it depends on where the nodes are.
    let gzip = config.elasticsearch.gzips();
    info!(gzip, "elasticsearch ready: writing documents");

    let writer = sink::Writer::new(
        client,
        sink::SinkSettings {
            batch: config.batch.clone(),
            retry: config.retry.clone(),
            dead_letter: config.dead_letter.clone(),
            time_series_prefixes,
            gzip,
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
    let processor = tokio::spawn(processor::run(
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
    finish(source_task, spooling, metrics).await;
    Ok(())
}

/// The last steps of every stop, after the sink is done or was never started: the connections
/// send their last acks and DISCONNECT (or are closed after `DISCONNECT_GRACE`), the spool's
/// writer and shipper finish, and the metrics endpoint closes.
async fn finish(
    mut source_task: tokio::task::JoinHandle<anyhow::Result<()>>,
    spooling: Option<Spooling>,
    metrics: Metrics,
) {
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
}
