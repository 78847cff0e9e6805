//! The two tasks that talk to Elasticsearch on the metrics' behalf: the shipper, which writes
//! one `{prefix}metrics` document per interval, and the probe, which asks `_cluster/health`
//! when nothing else has heard from Elasticsearch lately (for `/readyz`).
//!
//! The shipper writes with its own bulk `create`, not through the record pipeline: a metrics
//! document is nobody's MQTT message, needs no ack, and must not queue behind the readings it
//! describes when Elasticsearch is slow. A failed document is logged once (until one succeeds
//! again) and its interval folded into the next document.

use std::time::Duration;

use chrono::Utc;
use elasticsearch::cluster::ClusterHealthParts;
use elasticsearch::http::request::JsonBody;
use elasticsearch::{BulkParts, Elasticsearch};
use serde_json::{Value, json};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use super::document::{self, Identity, Maxima};
use super::figures::FIGURES;
use super::readiness::is_answer;

/// At shutdown, how long the last document may take: Elasticsearch may be the reason we stop.
const FINAL_SHIP_TIMEOUT: Duration = Duration::from_secs(3);

fn take_maxima() -> Maxima {
    Maxima {
        bulk_latency_s: FIGURES.bulk_latency.take_max(),
        latency_s: FIGURES.latency.take_max(),
    }
}

/// Once `setup_done` fires, ships a document every `every` until `stop`, then one last one for
/// the final interval.
#[tracing::instrument(name = "metrics_ship", skip_all)]
pub async fn ship(
    client: Elasticsearch,
    index: String,
    identity: Identity,
    every: Duration,
    setup_done: CancellationToken,
    stop: CancellationToken,
) {
    tokio::select! {
        () = setup_done.cancelled() => {},
        () = stop.cancelled() => return,
    }
    let mut from = FIGURES.snapshot();
    let mut from_at = Instant::now();
    // Whatever came before this task started belongs to no interval it ships.
    let _ = take_maxima();
    let mut carried = Maxima::default();
    let mut failing = false;
    let mut ticker = tokio::time::interval_at(Instant::now() + every, every);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        let last = tokio::select! {
            _ = ticker.tick() => false,
            () = stop.cancelled() => true,
        };
        let to = FIGURES.snapshot();
        let to_at = Instant::now();
        let maxima = carried.merge(take_maxima());
        let doc = document::document(
            &identity,
            &from,
            &to,
            (to_at - from_at).as_secs_f64(),
            Utc::now(),
            maxima,
        );
        let sent = if last {
            tokio::time::timeout(FINAL_SHIP_TIMEOUT, send(&client, &index, doc))
                .await
                .unwrap_or_else(|_| Err("no answer before shutdown".to_owned()))
        } else {
            send(&client, &index, doc).await
        };
        match sent {
            Ok(()) => {
                from = to;
                from_at = to_at;
                carried = Maxima::default();
                if failing {
                    info!(%index, "metrics documents are shipped again");
                    failing = false;
                }
            }
            Err(reason) => {
                // Keep `from`: the next document covers this interval too.
                carried = maxima;
                if failing {
                    debug!(%index, %reason, "metrics document not shipped");
                } else {
                    warn!(%index, %reason, "metrics document not shipped; the next interval tries again");
                    failing = true;
                }
            }
        }
        if last {
            return;
        }
    }
}

async fn send(client: &Elasticsearch, index: &str, doc: Value) -> Result<(), String> {
    let response = client
        .bulk(BulkParts::Index(index))
        .filter_path(&["errors", "items.*.status", "items.*.error"])
        .body(vec![
            JsonBody::new(json!({"create": {}})),
            JsonBody::new(doc),
        ])
        .send()
        .await
        .map_err(|e| format!("bulk request failed: {e}"))?;
    let status = response.status_code().as_u16();
    if is_answer(status) {
        FIGURES.answered();
    }
    let body: Value = response
        .json()
        .await
        .map_err(|e| format!("unreadable bulk response (http {status}): {e}"))?;
    if !(200..300).contains(&status) || body["errors"].as_bool() != Some(false) {
        return Err(format!("elasticsearch refused it (http {status}): {body}"));
    }
    Ok(())
}

/// Keeps "Elasticsearch answered recently" true while it is there, even with no traffic.
#[tracing::instrument(name = "elasticsearch_probe", skip_all)]
pub async fn probe(client: Elasticsearch, max_age: Duration, stop: CancellationToken) {
    let every = (max_age / 3).max(Duration::from_secs(1));
    loop {
        if FIGURES.answer_age().is_none_or(|age| age >= every) {
            let cluster = client.cluster();
            let asked = cluster.health(ClusterHealthParts::None).send();
            match tokio::time::timeout(max_age, asked).await {
                Ok(Ok(response)) if is_answer(response.status_code().as_u16()) => {
                    FIGURES.answered()
                }
                Ok(Ok(response)) => {
                    debug!(
                        status = response.status_code().as_u16(),
                        "elasticsearch probe refused"
                    )
                }
                Ok(Err(error)) => debug!(%error, "elasticsearch probe failed"),
                Err(_) => debug!("elasticsearch probe timed out"),
            }
        }
        tokio::select! {
            () = tokio::time::sleep(every) => {},
            () = stop.cancelled() => return,
        }
    }
}
