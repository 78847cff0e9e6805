//! The null `_bulk` endpoint of `bench/fast`: answers every bulk item `201` at once and counts
//! what it was sent, so a run measures mqtt2es's own cost per reading.
//!
//! Why a stand-in at all: on the two-core machine the benchmarks run on, the real search node is
//! the bottleneck (it spends three to five times mqtt2es's CPU per document, bench/README.md),
//! so end-to-end rates against it say how fast Elasticsearch indexes, not how fast mqtt2es is.
//! `bench/fast` runs every row against both.
//!
//! It answers only what mqtt2es asks with `setup: {on_start: false}`: `GET /_nodes/_local` (the
//! engine probe, answered as Elasticsearch 9.2.0 with the `data-streams` module, so the telemetry
//! streams count as time series and their documents go without `_id`), `GET|HEAD /`,
//! `GET /_cluster/health` (the metrics probe) and `POST [/<index>]/_bulk`, gzip or plain. Anything
//! else gets a 404 and a line on stderr: a new request mqtt2es makes should be seen, not guessed.
//!
//! Counting: every bulk source that carries `mqtt2es.reading_id` is a reading; `distinct` counts
//! their ids once each (time-series documents have no `_id` to count by), so the script prints
//! lost = published - distinct and duplicates = readings - distinct. Documents without a reading
//! id (mqtt2es's own metrics) are `other`. `GET /_null/stats` answers the counts as JSON, with
//! `last_at`: when the last new reading arrived (seconds since the epoch), the end of a timed run.
//! `?wait_for=<n>&timeout_ms=<ms>` holds the answer until `distinct` reaches n or the time is up,
//! so the script learns of the last reading at once without polling in a tight loop.
//!
//! Prints `listening=<address>` once bound.

use std::collections::HashSet;
use std::convert::Infallible;
use std::io::Read;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{SystemTime, UNIX_EPOCH};

use anyhow::Context;
use clap::Parser;
use flate2::read::GzDecoder;
use http_body_util::{BodyExt, Full};
use hyper::body::{Bytes, Incoming};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Method, Request, Response, StatusCode, header};
use hyper_util::rt::TokioIo;
use serde_json::json;
use tokio::net::TcpListener;
use tokio::sync::Notify;
use tokio::time::{Duration, Instant};

#[derive(Parser)]
struct Args {
    /// Where to listen; port 0 picks a free one (printed).
    #[arg(long, default_value = "127.0.0.1:0")]
    bind: SocketAddr,
}

#[derive(Default)]
struct Counts {
    requests: u64,
    bulk_requests: u64,
    readings: u64,
    distinct: HashSet<[u8; 22]>,
    other: u64,
    bytes_in: u64,
    bytes_raw: u64,
    unknown: u64,
    first_at: Option<f64>,
    last_at: Option<f64>,
}

#[derive(Default)]
struct State {
    counts: Mutex<Counts>,
    /// Woken whenever a bulk request brings new readings (`wait_for`).
    grew: Notify,
}

type Shared = Arc<State>;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let listener = TcpListener::bind(args.bind)
        .await
        .with_context(|| format!("binding {}", args.bind))?;
    println!("listening={}", listener.local_addr()?);
    let state = Shared::default();
    loop {
        let (stream, _) = listener.accept().await.context("accepting")?;
        let state = Arc::clone(&state);
        tokio::spawn(async move {
            let service = service_fn(move |request| {
                let state = Arc::clone(&state);
                async move { Ok::<_, Infallible>(answer(request, &state).await) }
            });
            if let Err(error) = http1::Builder::new()
                .serve_connection(TokioIo::new(stream), service)
                .await
            {
                eprintln!("connection ended with an error: {error}");
            }
        });
    }
}

async fn answer(request: Request<Incoming>, state: &Shared) -> Response<Full<Bytes>> {
    lock(state).requests += 1;
    let method = request.method().clone();
    let path = request.uri().path().to_owned();
    match (&method, path.as_str()) {
        (&Method::GET | &Method::HEAD, "/") => json_answer(
            StatusCode::OK,
            json!({"name": "null", "cluster_name": "null", "version": {
                "number": "9.2.0", "build_flavor": "default"},
                "tagline": "You Know, for Search"}),
        ),
        (&Method::GET, "/_nodes/_local") => json_answer(
            StatusCode::OK,
            json!({"nodes": {"null": {"version": "9.2.0", "build_flavor": "default",
                "modules": [{"name": "data-streams"}, {"name": "x-pack-core"}]}}}),
        ),
        (&Method::GET, "/_cluster/health") => json_answer(
            StatusCode::OK,
            json!({"cluster_name": "null", "status": "green"}),
        ),
        (&Method::GET, "/_null/stats") => {
            wait_for(request.uri().query().unwrap_or(""), state).await;
            json_answer(StatusCode::OK, stats(&lock(state)))
        }
        (&Method::POST | &Method::PUT, p) if p == "/_bulk" || p.ends_with("/_bulk") => {
            match bulk(request, state).await {
                Ok(body) => Response::builder()
                    .header(header::CONTENT_TYPE, "application/json")
                    .header("x-elastic-product", "Elasticsearch")
                    .body(Full::new(Bytes::from(body)))
                    .expect("a static status and headers make a valid response"),
                Err(reason) => {
                    eprintln!("{method} {path}: {reason}");
                    json_answer(
                        StatusCode::BAD_REQUEST,
                        json!({"error": {"type": "parse_exception", "reason": reason}}),
                    )
                }
            }
        }
        _ => {
            lock(state).unknown += 1;
            eprintln!("not served: {method} {path}");
            json_answer(
                StatusCode::NOT_FOUND,
                json!({"error": {"type": "null_endpoint", "reason": format!("{method} {path} is not served here")}}),
            )
        }
    }
}

/// Reads, counts and answers one bulk request: one `201` per action line.
async fn bulk(request: Request<Incoming>, state: &Shared) -> Result<String, String> {
    let gzip = request
        .headers()
        .get(header::CONTENT_ENCODING)
        .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"gzip"));
    let body = request
        .into_body()
        .collect()
        .await
        .map_err(|e| format!("reading the body: {e}"))?
        .to_bytes();
    let raw = if gzip {
        let mut raw = Vec::with_capacity(body.len() * 8);
        GzDecoder::new(&body[..])
            .read_to_end(&mut raw)
            .map_err(|e| format!("gunzip: {e}"))?;
        std::borrow::Cow::Owned(raw)
    } else {
        std::borrow::Cow::Borrowed(&body[..])
    };
    let mut lines = raw
        .split(|&b| b == b'\n')
        .filter(|l| !l.iter().all(u8::is_ascii_whitespace));
    let mut actions = Vec::new();
    let mut ids = Vec::new();
    let mut other = 0;
    while let Some(action) = lines.next() {
        let source = lines.next().ok_or("an action line without a source line")?;
        actions.push(action_name(action)?);
        match reading_id(source) {
            Some(id) => ids.push(id),
            None => other += 1,
        }
    }
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64());
    {
        let mut counts = lock(state);
        counts.bulk_requests += 1;
        counts.bytes_in += body.len() as u64;
        counts.bytes_raw += raw.len() as u64;
        counts.other += other;
        counts.readings += ids.len() as u64;
        let before = counts.distinct.len();
        counts.distinct.extend(ids);
        if counts.distinct.len() > before {
            counts.first_at.get_or_insert(now);
            counts.last_at = Some(now);
        }
    }
    state.grew.notify_waiters();
    let mut answer = String::with_capacity(32 + actions.len() * 28);
    answer.push_str(r#"{"errors":false,"items":["#);
    for (at, name) in actions.iter().enumerate() {
        if at > 0 {
            answer.push(',');
        }
        answer.push_str(r#"{""#);
        answer.push_str(name);
        answer.push_str(r#"":{"status":201}}"#);
    }
    answer.push_str("]}");
    Ok(answer)
}

/// The one key of an action line: `create`, `index`, ... (mqtt2es writes `{"create":{...}}`).
fn action_name(line: &[u8]) -> Result<&str, String> {
    let unreadable = || {
        format!(
            "an unreadable action line: {}",
            String::from_utf8_lossy(line)
        )
    };
    let rest = line.strip_prefix(b"{\"").ok_or_else(unreadable)?;
    let end = rest
        .iter()
        .position(|&b| b == b'"')
        .ok_or_else(unreadable)?;
    std::str::from_utf8(&rest[..end]).map_err(|_| unreadable())
}

/// The 22 characters after `"reading_id":"`, searched from the end of the source line, where
/// mqtt2es writes `mqtt2es` (the bench's readings have no other field of that name). A byte
/// search, not a JSON parse: the stand-in's own CPU shares the two cores with mqtt2es, and the
/// real node, in the `-es` rows and the integration tests, is what judges the JSON.
fn reading_id(source: &[u8]) -> Option<[u8; 22]> {
    const KEY: &[u8] = br#""reading_id":""#;
    let at = source.windows(KEY.len()).rposition(|w| w == KEY)? + KEY.len();
    source.get(at..at + 22)?.try_into().ok()
}

/// `wait_for=<n>&timeout_ms=<ms>`: returns once `n` distinct readings are in or the time is up.
async fn wait_for(query: &str, state: &Shared) {
    let param = |name: &str| {
        query
            .split('&')
            .filter_map(|pair| pair.split_once('='))
            .find(|(key, _)| *key == name)
            .and_then(|(_, value)| value.parse::<u64>().ok())
    };
    let Some(want) = param("wait_for") else {
        return;
    };
    let deadline = Instant::now() + Duration::from_millis(param("timeout_ms").unwrap_or(1000));
    loop {
        // Registered before the count is read, so a bulk request in between still wakes us.
        let grew = state.grew.notified();
        if lock(state).distinct.len() as u64 >= want {
            return;
        }
        tokio::select! {
            () = grew => {}
            () = tokio::time::sleep_until(deadline) => return,
        }
    }
}

fn stats(counts: &Counts) -> serde_json::Value {
    json!({
        "requests": counts.requests,
        "bulk_requests": counts.bulk_requests,
        "readings": counts.readings,
        "distinct": counts.distinct.len(),
        "duplicates": counts.readings - counts.distinct.len() as u64,
        "other": counts.other,
        "bytes_in": counts.bytes_in,
        "bytes_raw": counts.bytes_raw,
        "unknown": counts.unknown,
        "first_at": counts.first_at,
        "last_at": counts.last_at,
    })
}

fn json_answer(status: StatusCode, body: serde_json::Value) -> Response<Full<Bytes>> {
    Response::builder()
        .status(status)
        .header(header::CONTENT_TYPE, "application/json")
        // Elasticsearch sends it on every answer since 7.14; the engine probe reads it.
        .header("x-elastic-product", "Elasticsearch")
        .body(Full::new(Bytes::from(body.to_string())))
        .expect("a static status and headers make a valid response")
}

fn lock(state: &Shared) -> std::sync::MutexGuard<'_, Counts> {
    // A panic while counting would end the run anyway; the counts are still the best we have.
    state
        .counts
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}
