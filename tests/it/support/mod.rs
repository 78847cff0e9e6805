//! The test harness: real Mosquitto brokers and a real search node (Elasticsearch or OpenSearch),
//! started on free loopback ports, isolated per test by names rather than by processes where
//! starting one per test would cost too much.
//!
//! `scripts/test` installs the programs and exports where they are; the harness only starts
//! them. Nothing it starts outlives the test binary, even one that aborts: see `process`.
//!
//! Every test module gets its parts here, one of each:
//! - `bridge`: the mqtt2es binary, configured through `BridgeSpec`'s methods;
//! - `subscriber` and `publish`: Mosquitto's `mosquitto_sub` and `mosquitto_pub`;
//! - `mosquitto`, `search`, `proxy`: the broker, the search node(s), a proxy that loses answers;
//! - `readings`, `telemetry`: the test readings and the shipped telemetry pipeline in a bridge;
//! - `program`: any other client program with its output collected; `paho`: Python and paho;
//! - `raw_v4`: MQTT 3.1.1 packets by hand; `metrics`: the bridge's HTTP endpoint;
//! - `certs`, `ports`, `process`: certificates, free ports, and processes that cannot leak.

pub mod bridge;
pub mod certs;
pub mod metrics;
pub mod mosquitto;
pub mod paho;
pub mod ports;
pub mod process;
pub mod program;
pub mod proxy;
pub mod publish;
pub mod raw_v4;
pub mod readings;
pub mod search;
pub mod subscriber;
pub mod telemetry;

pub use mosquitto::Mosquitto;
pub use ports::free_port;
pub use search::{SearchCluster, SearchNode};

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// A name no other test of this run uses: tests sharing the search node isolate themselves by
/// it. Lowercase, so it makes a valid index, data stream, topic or client id:
/// `unique("it-count")` → `it-count-4711-3`.
pub fn unique(prefix: &str) -> String {
    static NEXT: AtomicU64 = AtomicU64::new(0);
    format!(
        "{prefix}-{}-{}",
        std::process::id(),
        NEXT.fetch_add(1, Ordering::Relaxed)
    )
}

/// The last `max_lines` lines of a log file, for panic messages when a program fails to start.
fn tail(path: &std::path::Path, max_lines: usize) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_else(|e| format!("({e})"));
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(max_lines)..].join("\n")
}

/// Polls `try_count` (which refreshes the index itself) until it returns `expected` or `timeout`
/// passes; returns the last count. Ingest is asynchronous, so this is a readiness wait with an
/// explicit refresh, never a fixed sleep. A node not ready to count yet counts as 0.
pub async fn wait_for_count(
    node: &SearchNode,
    index: &str,
    expected: u64,
    timeout: Duration,
) -> u64 {
    let deadline = Instant::now() + timeout;
    loop {
        let count = node.try_count(index).await.unwrap_or(0);
        if count >= expected || Instant::now() > deadline {
            return count;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// A soak knob (`MQTT2ES_SOAK_*`) from the environment, `default` when unset: CI runs the short
/// variant, `scripts/soak` the long one.
pub fn soak_setting(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}
