//! Writer tests against the fault-injection stand-in for Elasticsearch (`crate::stand_in`):
//! a real node cannot be made to answer 429, 413, 503, hang, or drop a connection on cue.
//! End-to-end behaviour against a real node is tested elsewhere.
//!
//! Tests synchronise on `run` returning and on the settlements it sent, never on sleeps;
//! backoffs are set to a millisecond so retries cost nothing.

use std::num::NonZeroUsize;
use std::time::Duration;

use serde_json::{Value, json};
use tokio::{net::TcpListener, sync::mpsc};
use tokio_util::sync::CancellationToken;

use super::*;
use crate::{
    document::{Document, Processed, Rejection},
    elastic::{ElasticsearchSettings, build_client},
    reading::ReadingId,
    record::{Ack, Settled, Settlement},
    sink::{
        BatchSettings, DeadLetterSettings, RetrySettings, SinkSettings,
        dead_letter::{self, tests::message},
    },
    stand_in::{Gate, Reply, Request, StandIn},
};

/// A bulk response with these item statuses, shaped as `filter_path` leaves it.
fn items(statuses: &[u16]) -> Reply {
    let items: Vec<Value> = statuses
        .iter()
        .map(|&status| match status {
            200..=299 => json!({"create": {"status": status}}),
            400 => json!({"create": {"status": 400, "error": {
                "type": "document_parsing_exception",
                "reason": "[1:6] failed to parse field [t] of type [float]"}}}),
            409 => json!({"create": {"status": 409, "error": {
                "type": "version_conflict_engine_exception",
                "reason": "version conflict, document already exists"}}}),
            _ => json!({"create": {"status": status, "error": {
                "type": "es_rejected_execution_exception", "reason": "busy"}}}),
        })
        .collect();
    let errors = statuses.iter().any(|s| !(200..300).contains(s));
    Reply::Json(200, json!({"errors": errors, "items": items}).to_string())
}

fn all_created(request: &Request) -> Reply {
    items(&vec![201; request.ops().len()])
}

fn error(status: u16, ty: &str) -> Reply {
    Reply::Json(
        status,
        json!({"error": {"type": ty, "reason": "injected"}, "status": status}).to_string(),
    )
}

// ---- the harness ----

struct Setup {
    max_docs: usize,
    max_bytes: usize,
    flush_interval_ms: u64,
    request_timeout_ms: u64,
    initial_backoff_ms: u64,
    gzip: bool,
    dead_letter_file: std::path::PathBuf,
    _dir: tempfile::TempDir,
}

impl Setup {
    fn new() -> Self {
        let dir = tempfile::tempdir().expect("temp dir");
        Setup {
            max_docs: 1000,
            max_bytes: 1 << 20,
            // Long: batches close on size or when the channel closes unless a test says so.
            flush_interval_ms: 60_000,
            request_timeout_ms: 5_000,
            initial_backoff_ms: 1,
            gzip: false,
            dead_letter_file: dir.path().join("dead.ndjson"),
            _dir: dir,
        }
    }

    fn writer(&self, url: &str) -> Writer {
        self.writer_with_time_series(url, &[])
    }

    /// A writer that takes streams starting with `prefixes` for time-series data streams.
    fn writer_with_time_series(&self, url: &str, prefixes: &[&str]) -> Writer {
        let client = build_client(&ElasticsearchSettings {
            url: url.to_owned(),
            request_timeout_ms: self.request_timeout_ms,
            ..ElasticsearchSettings::default()
        })
        .expect("client");
        Writer::new(
            client,
            SinkSettings {
                batch: BatchSettings {
                    max_docs: NonZeroUsize::new(self.max_docs).expect("non-zero"),
                    max_bytes: NonZeroUsize::new(self.max_bytes).expect("non-zero"),
                    flush_interval_ms: self.flush_interval_ms,
                    concurrent_requests: NonZeroUsize::new(2).expect("non-zero"),
                },
                retry: RetrySettings {
                    initial_backoff_ms: self.initial_backoff_ms,
                    max_backoff_ms: self.initial_backoff_ms * 2,
                },
                dead_letter: DeadLetterSettings {
                    index: "mqtt2es-deadletter".to_owned(),
                    file: self.dead_letter_file.clone(),
                },
                time_series_prefixes: prefixes.iter().map(|p| (*p).to_owned()).collect(),
                gzip: self.gzip,
            },
        )
    }

    fn dead_letter_file(&self) -> Vec<Value> {
        std::fs::read_to_string(&self.dead_letter_file)
            .unwrap_or_default()
            .lines()
            .map(|l| serde_json::from_str(l).expect("a JSON line"))
            .collect()
    }
}

/// A document under its reading's own id (no pipeline id).
fn reading_doc(n: usize) -> Processed {
    let Processed::Document(mut document) = doc(n) else {
        unreachable!("doc makes documents")
    };
    document.id = None;
    Processed::Document(document)
}

fn doc(n: usize) -> Processed {
    Processed::Document(Document {
        pipeline: "thermometers".into(),
        deferred: Default::default(),
        index: "mqtt2es-temp".to_owned(),
        id: Some(format!("id-{n}")),
        source: json!({"@timestamp": "2025-03-01T12:00:00Z", "n": n})
            .as_object()
            .expect("an object")
            .clone()
            .into(),
    })
}

/// Sends these records (token = position) and closes the channel; returns the settlements.
async fn run_all(
    writer: Writer,
    records: Vec<Processed>,
) -> (SinkReport, Vec<Settled>, mpsc::UnboundedReceiver<Settled>) {
    let (tx, rx) = mpsc::channel(records.len().max(1));
    let (settled_tx, mut settled_rx) = mpsc::unbounded_channel();
    for (token, processed) in records.into_iter().enumerate() {
        let mut message = message(b"{\"t\":21.5}");
        message.reading = ReadingId::from_u128(token as u128);
        tx.send(Routed {
            message,
            processed,
            ack: Ack::new(settled_tx.clone(), token as u64),
        })
        .await
        .expect("the channel has room");
    }
    drop(tx);
    let report = run(rx, writer, CancellationToken::new())
        .await
        .expect("the writer ends cleanly");
    let mut settled = Vec::new();
    while let Ok(s) = settled_rx.try_recv() {
        settled.push(s);
    }
    settled.sort_by_key(|s| s.token);
    (report, settled, settled_rx)
}

fn hows(settled: &[Settled]) -> Vec<Settlement> {
    settled.iter().map(|s| s.how).collect()
}

// ---- the tests ----

#[tokio::test]
async fn closing_the_channel_flushes_the_open_batch_and_settles_every_record_stored() {
    let es = StandIn::start(|_, r| all_created(r)).await;
    let setup = Setup::new();
    // event.ingested has millisecond precision.
    let started = chrono::Utc::now() - chrono::Duration::milliseconds(1);
    let (report, settled, _) = run_all(setup.writer(&es.url), (0..3).map(doc).collect()).await;

    assert_eq!(hows(&settled), [Settlement::Stored; 3]);
    let requests = es.requests();
    assert_eq!(requests.len(), 1);
    assert!(
        requests[0].path.starts_with("/_bulk?"),
        "{}",
        requests[0].path
    );
    assert!(
        requests[0]
            .path
            .contains("filter_path=errors%2Citems.*.status%2Citems.*.error")
            || requests[0]
                .path
                .contains("filter_path=errors,items.*.status,items.*.error"),
        "{}",
        requests[0].path
    );
    let (action, mut source) = requests[0].ops()[1].clone();
    // The writer stamps the send time: after the test started, not in the future.
    let ingested = source["event"]["ingested"]
        .as_str()
        .and_then(|t| t.parse::<chrono::DateTime<chrono::Utc>>().ok())
        .unwrap_or_else(|| panic!("no event.ingested in {source}"));
    assert!(
        ingested >= started && ingested <= chrono::Utc::now(),
        "{ingested}"
    );
    source.as_object_mut().expect("an object").remove("event");
    assert_eq!(
        (action, source),
        (
            json!({"create": {"_index": "mqtt2es-temp", "_id": "id-1"}}),
            json!({"@timestamp": "2025-03-01T12:00:00Z", "n": 1})
        )
    );
    assert_eq!((report.stored, report.pending, report.requests), (3, 0, 1));
}

#[tokio::test]
async fn with_gzip_on_a_bulk_body_goes_compressed_and_says_so() {
    let es = StandIn::start(|_, r| all_created(r)).await;
    let mut setup = Setup::new();
    setup.gzip = true;
    let (report, settled, _) = run_all(setup.writer(&es.url), (0..3).map(doc).collect()).await;

    assert_eq!(hows(&settled), [Settlement::Stored; 3]);
    let request = &es.requests()[0];
    assert_eq!(request.header("content-encoding"), Some("gzip"));
    assert_eq!(request.header("content-type"), Some("application/x-ndjson"));
    assert!(
        request.wire_bytes < request.body.len(),
        "{} bytes sent",
        request.wire_bytes
    );
    assert_eq!(request.ops().len(), 3, "the stand-in unpacked three ops");
    assert_eq!(report.stored, 3);
}

#[tokio::test]
async fn batches_close_at_max_docs() {
    let es = StandIn::start(|_, r| all_created(r)).await;
    let mut setup = Setup::new();
    setup.max_docs = 2;
    let (report, settled, _) = run_all(setup.writer(&es.url), (0..5).map(doc).collect()).await;

    assert_eq!(settled.len(), 5);
    let mut sizes: Vec<usize> = es.requests().iter().map(|r| r.ops().len()).collect();
    sizes.sort();
    assert_eq!(sizes, [1, 2, 2]);
    assert_eq!(report.batches, 3);
}

#[tokio::test]
async fn a_lone_record_is_sent_at_once_not_when_the_flush_interval_runs_out() {
    let es = StandIn::start(|_, r| all_created(r)).await;
    let mut setup = Setup::new();
    // An hour: a writer that waited for it would not settle within the minute below.
    setup.flush_interval_ms = 3_600_000;
    let (tx, rx) = mpsc::channel(4);
    let (settled_tx, mut settled_rx) = mpsc::unbounded_channel();
    let sink = tokio::spawn(run(rx, setup.writer(&es.url), CancellationToken::new()));
    tx.send(Routed {
        message: message(b"{}"),
        processed: doc(0),
        ack: Ack::new(settled_tx, 0),
    })
    .await
    .expect("send");

    // A bound for a failure to show as one, not a timing assertion: the record is sent at once.
    let settled = tokio::time::timeout(std::time::Duration::from_secs(60), settled_rx.recv())
        .await
        .expect("settled without waiting for the flush interval")
        .expect("settled before the channel closes");
    assert_eq!(settled.how, Settlement::Stored);
    drop(tx);
    sink.await.expect("join").expect("clean end");
}

#[tokio::test]
async fn while_every_request_slot_is_busy_the_next_batch_grows_and_goes_out_whole() {
    let gate = Arc::new(Gate::new());
    let held = Arc::clone(&gate);
    // The first two requests (both slots) stay in flight until the gate opens.
    let es = StandIn::start(move |n, r| match n {
        0 | 1 => held.hold(all_created(r)),
        _ => all_created(r),
    })
    .await;
    let setup = Setup::new();
    let (tx, rx) = mpsc::channel(16);
    let (settled_tx, mut settled_rx) = mpsc::unbounded_channel();
    let sink = tokio::spawn(run(rx, setup.writer(&es.url), CancellationToken::new()));
    let routed = |n: usize| Routed {
        message: message(b"{}"),
        processed: doc(n),
        ack: Ack::new(settled_tx.clone(), n as u64),
    };
    for n in 0..2 {
        tx.send(routed(n)).await.expect("send");
        es.arrived(n + 1).await;
    }
    for n in 2..5 {
        tx.try_send(routed(n)).expect("the channel has room");
    }
    gate.open();
    let mut settled = Vec::new();
    while settled.len() < 5 {
        settled.push(settled_rx.recv().await.expect("a settlement"));
    }
    drop(tx);
    sink.await.expect("join").expect("clean end");

    let sizes: Vec<usize> = es.requests().iter().map(|r| r.ops().len()).collect();
    assert_eq!(
        sizes,
        [1, 1, 3],
        "one request per free slot, the rest together"
    );
    assert!(settled.iter().all(|s| s.how == Settlement::Stored));
}

#[tokio::test]
async fn a_whole_request_429_is_retried_until_stored() {
    let es = StandIn::start(|n, r| {
        if n < 2 {
            error(429, "es_rejected_execution_exception")
        } else {
            all_created(r)
        }
    })
    .await;
    let setup = Setup::new();
    let (report, settled, _) = run_all(setup.writer(&es.url), (0..2).map(doc).collect()).await;

    assert_eq!(hows(&settled), [Settlement::Stored; 2]);
    assert_eq!(es.requests().len(), 3);
    assert_eq!(report.retries, 4);
}

#[tokio::test]
async fn a_503_then_success_stores_everything() {
    let es = StandIn::start(|n, r| {
        if n == 0 {
            Reply::Json(503, "Service Unavailable".to_owned())
        } else {
            all_created(r)
        }
    })
    .await;
    let setup = Setup::new();
    let (_, settled, _) = run_all(setup.writer(&es.url), vec![doc(0)]).await;
    assert_eq!(hows(&settled), [Settlement::Stored]);
}

#[tokio::test]
async fn only_the_items_that_failed_retryably_are_sent_again() {
    let es = StandIn::start(|n, r| {
        if n == 0 {
            items(&[201, 429, 201, 503])
        } else {
            all_created(r)
        }
    })
    .await;
    let setup = Setup::new();
    let (report, settled, _) = run_all(setup.writer(&es.url), (0..4).map(doc).collect()).await;

    assert_eq!(hows(&settled), [Settlement::Stored; 4]);
    let requests = es.requests();
    assert_eq!(requests.len(), 2);
    let retried: Vec<Value> = requests[1]
        .ops()
        .iter()
        .map(|(action, _)| action["create"]["_id"].clone())
        .collect();
    assert_eq!(retried, [json!("id-1"), json!("id-3")]);
    assert_eq!(report.retries, 2);
}

#[tokio::test]
async fn a_node_that_answers_again_gets_the_batch_at_once_not_after_the_backoff() {
    // The first bulk request gets no answer (the request timeout fires: nothing answers);
    // everything after is answered. The backoff is an hour: only the probe can end it.
    let es = StandIn::start(|n, r| match n {
        0 => Reply::Hang,
        _ if r.path.starts_with("/_bulk") => all_created(r),
        _ => Reply::Json(200, "{}".to_owned()),
    })
    .await;
    let mut setup = Setup::new();
    setup.request_timeout_ms = 100;
    setup.initial_backoff_ms = 3_600_000;
    let run = run_all(setup.writer(&es.url), (0..2).map(reading_doc).collect());
    // A guard against hanging for the hour, not a measure of speed.
    let (report, settled, _) = tokio::time::timeout(Duration::from_secs(120), run)
        .await
        .expect("the probe found the node back long before the backoff ended");

    assert_eq!(hows(&settled), [Settlement::Stored; 2]);
    assert_eq!(report.stored, 2);
    let methods: Vec<String> = es.requests().iter().map(|r| r.method.clone()).collect();
    assert_eq!(methods.first().map(String::as_str), Some("POST"));
    assert!(methods.contains(&"HEAD".to_owned()), "{methods:?}");
}

#[tokio::test]
async fn a_409_on_the_readings_own_id_counts_as_already_stored_without_looking() {
    let es = StandIn::start(|_, _| items(&[409, 201])).await;
    let setup = Setup::new();
    let (report, settled, _) =
        run_all(setup.writer(&es.url), (0..2).map(reading_doc).collect()).await;

    assert_eq!(hows(&settled), [Settlement::Stored; 2]);
    assert_eq!((report.stored, report.already_stored), (1, 1));
    assert_eq!(es.requests().len(), 1, "no _mget");
}

/// A 409 in the shape Elasticsearch gives it, with the backing index and the `_id`.
fn conflict_items(statuses: &[u16]) -> Reply {
    let items: Vec<Value> = statuses
        .iter()
        .enumerate()
        .map(|(i, &status)| match status {
            409 => json!({"create": {"_id": format!("taken-{i}"), "status": 409, "error": {
                "type": "version_conflict_engine_exception",
                "reason": format!("[taken-{i}]: version conflict, document already exists"),
                "index": ".ds-mqtt2es-temp-2025.03.01-000001"}}}),
            _ => json!({"create": {"_id": format!("new-{i}"), "status": status}}),
        })
        .collect();
    let errors = statuses.iter().any(|s| !(200..300).contains(s));
    Reply::Json(200, json!({"errors": errors, "items": items}).to_string())
}

/// An `_mget` answer: each asked document found with these reading ids (`None`: not found).
fn mget(holders: &[Option<&str>]) -> Reply {
    let docs: Vec<Value> = holders
        .iter()
        .map(|holder| match holder {
            Some(id) => json!({"found": true, "_source": {"mqtt2es": {"reading_id": id}}}),
            None => json!({"found": false}),
        })
        .collect();
    Reply::Json(200, json!({ "docs": docs }).to_string())
}

#[tokio::test]
async fn a_409_on_a_pipeline_id_held_by_the_same_reading_counts_as_already_stored() {
    let es = StandIn::start(|_, r| {
        if r.path.starts_with("/_mget") {
            mget(&[Some(&ReadingId::from_u128(0).to_string())])
        } else {
            conflict_items(&[409, 201])
        }
    })
    .await;
    let setup = Setup::new();
    let (report, settled, _) = run_all(setup.writer(&es.url), (0..2).map(doc).collect()).await;

    assert_eq!(hows(&settled), [Settlement::Stored; 2]);
    assert_eq!((report.stored, report.already_stored), (1, 1));
    let asked = &es.requests()[1];
    assert!(asked.path.starts_with("/_mget"), "{}", asked.path);
    assert_eq!(
        asked.json()["docs"],
        json!([{"_index": ".ds-mqtt2es-temp-2025.03.01-000001", "_id": "taken-0"}])
    );
}

#[tokio::test]
async fn a_409_on_a_pipeline_id_held_by_another_reading_is_a_dead_letter_not_a_loss() {
    let es = StandIn::start(|_, r| {
        if r.path.starts_with("/_mget") {
            mget(&[Some("another-reading")])
        } else if r.indices().iter().any(|i| i == "mqtt2es-temp") {
            conflict_items(&[409])
        } else {
            all_created(r)
        }
    })
    .await;
    let setup = Setup::new();
    let (report, settled, _) = run_all(setup.writer(&es.url), vec![doc(0)]).await;

    assert_eq!(hows(&settled), [Settlement::DeadLettered]);
    assert_eq!(report.already_stored, 0);
    assert_eq!(report.dead_lettered.get(bulk::ID_TAKEN), Some(&1));
    let letter = &es.requests()[2].ops()[0].1;
    assert!(
        letter["error"]["message"]
            .as_str()
            .is_some_and(|m| m.contains("another-reading")),
        "{letter}"
    );
}

#[tokio::test]
async fn a_time_series_reading_whose_time_another_reading_holds_moves_to_a_later_time() {
    let es = StandIn::start(|n, r| match n {
        0 => conflict_items(&[409]),
        _ if r.path.starts_with("/_mget") => mget(&[Some("another-reading")]),
        _ => all_created(r),
    })
    .await;
    let setup = Setup::new();
    let reading = Processed::Document(Document {
        pipeline: "telemetry".into(),
        deferred: Default::default(),
        index: "mqtt2es-telemetry-lab".to_owned(),
        id: None,
        source: json!({"@timestamp": "2025-03-01T12:00:00.000000250Z", "site": "lab"})
            .as_object()
            .expect("an object")
            .clone()
            .into(),
    });
    let writer = setup.writer_with_time_series(&es.url, &["mqtt2es-telemetry-"]);
    let (report, settled, _) = run_all(writer, vec![reading]).await;

    assert_eq!(hows(&settled), [Settlement::Stored]);
    assert_eq!((report.stored, report.moved_in_series), (1, 1));
    let requests = es.requests();
    assert_eq!(requests.len(), 3, "bulk, _mget, bulk");
    let (action, moved) = requests[2].ops()[0].clone();
    assert!(action["create"].get("_id").is_none(), "{action}");
    assert_eq!(moved["@timestamp"], "2025-03-01T12:00:00.001000251Z");
}

#[tokio::test]
async fn a_failed_look_at_a_409_settles_nothing_and_the_reading_is_sent_again() {
    let es = StandIn::start(|n, r| match n {
        0 => conflict_items(&[409]),
        1 => error(503, "unavailable_shards_exception"),
        _ if r.path.starts_with("/_mget") => mget(&[Some(&ReadingId::from_u128(0).to_string())]),
        _ => conflict_items(&[409]),
    })
    .await;
    let setup = Setup::new();
    let (report, settled, _) = run_all(setup.writer(&es.url), vec![doc(0)]).await;

    assert_eq!(hows(&settled), [Settlement::Stored]);
    assert_eq!(report.already_stored, 1);
    let paths: Vec<String> = es
        .requests()
        .iter()
        .map(|r| r.path[..6].to_owned())
        .collect();
    assert_eq!(paths, ["/_bulk", "/_mget", "/_bulk", "/_mget"]);
}

#[tokio::test]
async fn a_413_splits_the_batch_until_the_halves_fit() {
    let es = StandIn::start(|_, r| {
        if r.ops().len() > 2 {
            error(413, "content_too_long_exception")
        } else {
            all_created(r)
        }
    })
    .await;
    let setup = Setup::new();
    let (report, settled, _) = run_all(setup.writer(&es.url), (0..5).map(doc).collect()).await;

    assert_eq!(hows(&settled), [Settlement::Stored; 5]);
    let sizes: Vec<usize> = es.requests().iter().map(|r| r.ops().len()).collect();
    // 5 -> 2 + 3 -> 3 -> 1 + 2
    assert_eq!(sizes, [5, 2, 3, 1, 2]);
    assert_eq!(report.stored, 5);
}

#[tokio::test]
async fn a_single_document_that_still_gets_413_is_dead_lettered_as_too_large() {
    let es = StandIn::start(|_, r| {
        if r.indices().iter().any(|i| i == "mqtt2es-temp") {
            error(413, "content_too_long_exception")
        } else {
            all_created(r)
        }
    })
    .await;
    let setup = Setup::new();
    let (report, settled, _) = run_all(setup.writer(&es.url), (0..2).map(doc).collect()).await;

    assert_eq!(hows(&settled), [Settlement::DeadLettered; 2]);
    let letters: Vec<Value> = es
        .requests()
        .iter()
        .flat_map(|r| r.ops())
        .filter(|(action, _)| action["create"]["_index"] == "mqtt2es-deadletter")
        .map(|(_, source)| source)
        .collect();
    assert_eq!(letters.len(), 2);
    assert_eq!(letters[0]["reason"], "document_too_large");
    assert_eq!(letters[0]["mqtt"]["topic"], "site/a/temp");
    assert_eq!(report.dead_lettered["document_too_large"], 2);
}

#[tokio::test]
async fn a_document_refused_with_400_becomes_a_dead_letter_with_its_original_payload() {
    let es = StandIn::start(|n, r| {
        if n == 0 {
            items(&[201, 400])
        } else {
            all_created(r)
        }
    })
    .await;
    let setup = Setup::new();
    let (report, settled, _) = run_all(setup.writer(&es.url), (0..2).map(doc).collect()).await;

    assert_eq!(
        hows(&settled),
        [Settlement::Stored, Settlement::DeadLettered]
    );
    let requests = es.requests();
    assert_eq!(requests.len(), 2);
    let (action, letter) = &requests[1].ops()[0];
    assert_eq!(action["create"]["_index"], "mqtt2es-deadletter");
    assert!(action["create"]["_id"].is_string(), "{action}");
    assert_eq!(letter["reason"], "mapping_conflict");
    assert_eq!(letter["pipeline"], "thermometers");
    assert_eq!(letter["stage"], "bulk");
    assert_eq!(letter["payload"], "{\"t\":21.5}");
    assert!(
        letter["error"]["message"]
            .as_str()
            .is_some_and(|m| m.contains("document_parsing_exception")),
        "{letter}"
    );
    assert_eq!(report.dead_lettered["mapping_conflict"], 1);
    assert_eq!(report.dead_lettered_to_file, 0);
}

#[tokio::test]
async fn a_rejected_record_is_written_to_the_dead_letter_stream() {
    let es = StandIn::start(|_, r| all_created(r)).await;
    let setup = Setup::new();
    let rejected = Processed::Rejected(Rejection {
        pipeline: None,
        stage: Some("decode".to_owned()),
        reason: "invalid_json".to_owned(),
        detail: "expected value".to_owned(),
    });
    let (report, settled, _) = run_all(setup.writer(&es.url), vec![rejected]).await;

    assert_eq!(hows(&settled), [Settlement::DeadLettered]);
    assert_eq!(es.requests()[0].indices(), ["mqtt2es-deadletter"]);
    assert_eq!(report.dead_lettered["invalid_json"], 1);
}

#[tokio::test]
async fn dead_letters_go_to_the_local_file_when_elasticsearch_keeps_failing_them() {
    let es = StandIn::start(|_, r| {
        if r.indices().iter().any(|i| i == "mqtt2es-deadletter") {
            error(503, "unavailable_shards_exception")
        } else {
            items(&[400])
        }
    })
    .await;
    let setup = Setup::new();
    let (report, settled, _) = run_all(setup.writer(&es.url), vec![doc(0)]).await;

    assert_eq!(hows(&settled), [Settlement::DeadLettered]);
    let file = setup.dead_letter_file();
    assert_eq!(file.len(), 1);
    assert_eq!(file[0]["reason"], "mapping_conflict");
    assert_eq!(file[0]["payload"], "{\"t\":21.5}");
    let dead_letter_attempts = es
        .requests()
        .iter()
        .filter(|r| r.indices() == ["mqtt2es-deadletter"])
        .count();
    assert_eq!(
        dead_letter_attempts,
        dead_letter::ELASTICSEARCH_ATTEMPTS as usize
    );
    assert_eq!(report.dead_lettered_to_file, 1);
}

#[tokio::test]
async fn a_dead_letter_elasticsearch_refuses_goes_to_the_local_file_at_once() {
    let es = StandIn::start(|_, _| items(&[400])).await;
    let setup = Setup::new();
    let (_, settled, _) = run_all(setup.writer(&es.url), vec![doc(0)]).await;

    assert_eq!(hows(&settled), [Settlement::DeadLettered]);
    assert_eq!(es.requests().len(), 2);
    assert_eq!(setup.dead_letter_file().len(), 1);
}

#[tokio::test]
async fn a_document_larger_than_max_bytes_is_never_sent() {
    let es = StandIn::start(|_, r| all_created(r)).await;
    let mut setup = Setup::new();
    setup.max_bytes = 2000;
    let big = Processed::Document(Document {
        pipeline: "thermometers".into(),
        deferred: Default::default(),
        index: "mqtt2es-temp".to_owned(),
        id: None,
        source: json!({"blob": "x".repeat(5000)})
            .as_object()
            .expect("an object")
            .clone()
            .into(),
    });
    let (report, settled, _) = run_all(setup.writer(&es.url), vec![big]).await;

    assert_eq!(hows(&settled), [Settlement::DeadLettered]);
    assert_eq!(es.requests()[0].indices(), ["mqtt2es-deadletter"]);
    assert_eq!(report.dead_lettered["document_too_large"], 1);
}

#[tokio::test]
async fn a_dropped_connection_is_retried() {
    let es = StandIn::start(|n, r| if n == 0 { Reply::Drop } else { all_created(r) }).await;
    let setup = Setup::new();
    let (_, settled, _) = run_all(setup.writer(&es.url), vec![doc(0)]).await;
    assert_eq!(hows(&settled), [Settlement::Stored]);
}

#[tokio::test]
async fn a_request_that_times_out_is_retried() {
    let es = StandIn::start(|n, r| if n == 0 { Reply::Hang } else { all_created(r) }).await;
    let mut setup = Setup::new();
    setup.request_timeout_ms = 100;
    let (report, settled, _) = run_all(setup.writer(&es.url), vec![doc(0)]).await;
    assert_eq!(hows(&settled), [Settlement::Stored]);
    assert_eq!(report.requests, 2);
}

#[tokio::test]
async fn a_dropped_record_settles_as_dropped_without_a_request() {
    let es = StandIn::start(|_, r| all_created(r)).await;
    let setup = Setup::new();
    let dropped = Processed::Dropped {
        pipeline: "thermometers".into(),
        stage: "drop".to_owned(),
    };
    let (report, settled, _) = run_all(setup.writer(&es.url), vec![dropped]).await;
    assert_eq!(hows(&settled), [Settlement::Dropped]);
    assert!(es.requests().is_empty());
    assert_eq!(report.dropped, 1);
}

#[tokio::test]
async fn abandoning_while_elasticsearch_is_unreachable_returns_without_settling() {
    // A port that was just free: connections are refused.
    let url = {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        format!("http://{}", listener.local_addr().expect("address"))
    };
    let setup = Setup::new();
    let (tx, rx) = mpsc::channel(8);
    let (settled_tx, mut settled_rx) = mpsc::unbounded_channel();
    for token in 0..3 {
        tx.send(Routed {
            message: message(b"{}"),
            processed: doc(token),
            ack: Ack::new(settled_tx.clone(), token as u64),
        })
        .await
        .expect("send");
    }
    drop(settled_tx);
    drop(tx);
    let abandon = CancellationToken::new();
    let stats = {
        let writer = setup.writer(&url);
        let stats = writer.stats();
        let sink = tokio::spawn(run(rx, writer, abandon.clone()));
        // Wait until the writer has failed at least twice, by its own counters.
        while stats.snapshot().retries < 6 {
            tokio::task::yield_now().await;
        }
        abandon.cancel();
        let report = sink.await.expect("join").expect("clean end");
        assert_eq!(report.pending, 3);
        assert_eq!(report.stored, 0);
        stats
    };

    // Every ack was dropped unsettled: the producer sees its channel close with nothing in it.
    assert_eq!(settled_rx.recv().await, None);
    assert_eq!(stats.snapshot().pending, 3);
}

#[tokio::test]
async fn abandoning_drops_the_records_still_in_the_open_batch() {
    let es = StandIn::start(|_, r| all_created(r)).await;
    let setup = Setup::new();
    let (tx, rx) = mpsc::channel(8);
    let (settled_tx, mut settled_rx) = mpsc::unbounded_channel();
    let abandon = CancellationToken::new();
    let writer = setup.writer(&es.url);
    let stats = writer.stats();
    let sink = tokio::spawn(run(rx, writer, abandon.clone()));
    tx.send(Routed {
        message: message(b"{}"),
        processed: doc(0),
        ack: Ack::new(settled_tx, 0),
    })
    .await
    .expect("send");
    while stats.snapshot().pending < 1 {
        tokio::task::yield_now().await;
    }
    abandon.cancel();
    let report = sink.await.expect("join").expect("clean end");

    assert_eq!(report.pending, 1);
    assert_eq!(settled_rx.recv().await, None);
    assert!(es.requests().is_empty());
    drop(tx);
}
