//! Reading the bridge's operations endpoint (`/metrics`, `/readyz`) over HTTP, with deadlines.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

fn http() -> reqwest::Client {
    reqwest::Client::builder()
        .timeout(Duration::from_secs(10))
        .build()
        .expect("an HTTP client")
}

/// Status and body of `GET http://{address}{path}`.
pub async fn get(address: SocketAddr, path: &str) -> (u16, String) {
    let response = http()
        .get(format!("http://{address}{path}"))
        .send()
        .await
        .unwrap_or_else(|e| panic!("GET {path} on {address}: {e}"));
    let status = response.status().as_u16();
    (status, response.text().await.expect("a text body"))
}

/// The value of the sample line `name` (name and labels exactly as exposed), if present.
pub fn sample(text: &str, name: &str) -> Option<f64> {
    text.lines().find_map(|line| {
        let value = line.strip_prefix(name)?.strip_prefix(' ')?;
        value.parse().ok()
    })
}

/// Polls `/metrics` until every `(sample, value)` reads as expected; panics with the last text.
pub async fn wait_for_samples(
    address: SocketAddr,
    expected: &[(&str, f64)],
    timeout: Duration,
) -> String {
    let deadline = Instant::now() + timeout;
    loop {
        let (status, text) = get(address, "/metrics").await;
        assert_eq!(status, 200, "{text}");
        let missing: Vec<_> = expected
            .iter()
            .filter(|(name, value)| sample(&text, name) != Some(*value))
            .collect();
        if missing.is_empty() {
            return text;
        }
        assert!(
            Instant::now() < deadline,
            "/metrics never showed {missing:?}:\n{text}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Polls `/readyz` until it answers `status`; returns the body.
pub async fn wait_for_readyz(address: SocketAddr, status: u16, timeout: Duration) -> String {
    let deadline = Instant::now() + timeout;
    loop {
        let (got, body) = get(address, "/readyz").await;
        if got == status {
            return body;
        }
        assert!(
            Instant::now() < deadline,
            "/readyz still {got} ({body:?}) after {timeout:?}, not {status}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}
