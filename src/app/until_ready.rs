//! Waiting for Elasticsearch at start: it may still be starting (compose, a reboot) or not be
//! there at all (a first try without it).

use std::time::Duration;

use anyhow::bail;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use crate::elastic;

/// How often waiting for Elasticsearch is reported after the first line that says so.
const WAITING_REPORT_EVERY: Duration = Duration::from_secs(60);

/// Elasticsearch may still be starting (compose, reboot), or not be there at all (a first try
/// without it): keep trying until it answers or we are told to stop. One warning says what is
/// missing and how to get it, then progress once a minute, not a line per retry. Configuration
/// errors it reports (401, 403, a version too old, a bad template) end the start.
pub(super) async fn until_ready<T, Fut>(
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
