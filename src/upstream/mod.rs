//! The upstream subscriber: mqtt2es as a client of an existing broker (Mosquitto, VerneMQ,
//! EMQX, HiveMQ), with manual acks sent only once a record is durable.
//!
//! Each connection is two tasks: a link that owns the socket (see `link`) and a driver that
//! turns publishes into records and releases acks in arrival order (see `acks`).
//! Several connections may share one `$share` group: the broker's in-flight window applies per
//! connection, so N connections give N windows while every ack still means "durable".
//! What each unacknowledged message was assigned is kept in `state_dir` (`crate::kept`), so a
//! redelivery after a crash is the same reading.
//!
//! - `link`     — one connection, 3.1.1 or 5: connect, read, write acks, reconnect.
//! - `session`  — what a link and its driver share: events, ack keys, failures, backoff.
//! - `driver`   — publishes into records, acks in arrival order, the kept assignments.
//! - `settings` — the `upstream:` section.

mod driver;
mod link;
pub mod session;
pub mod settings;

use std::sync::Arc;

use tokio::sync::mpsc;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

pub use settings::{Protocol, TlsSettings, UpstreamSettings};

use crate::kept::{Kept, KeptError};
use crate::record::Record;
use crate::secret::Secret;
use session::SessionError;

/// Events buffered between a link and its driver. Small: the broker's flow control and TCP are
/// the real buffers, and a full channel is how a slow pipeline slows the socket.
const INBOUND_CAPACITY: usize = 256;

/// The subscriber, started: its settings, filters and what each unacknowledged message was
/// assigned (opened from `state_dir`), ready to `run`; the same start-then-run shape as the
/// embedded broker's.
pub struct Upstream {
    settings: UpstreamSettings,
    password: Option<Secret>,
    filters: Vec<String>,
    kept: Kept,
}

impl Upstream {
    /// Opens `state_dir` (held exclusively while this runs); connects to nothing yet.
    pub fn start(
        settings: UpstreamSettings,
        password: Option<Secret>,
        filters: Vec<String>,
    ) -> Result<Upstream, KeptError> {
        let kept = Kept::open(&settings.state_dir)?;
        Ok(Upstream {
            settings,
            password,
            filters,
            kept,
        })
    }

    /// What each unacknowledged message was assigned, for the sink to commit before a request.
    pub fn kept(&self) -> Kept {
        self.kept.clone()
    }

    /// Runs every configured connection; see [`run`].
    pub async fn run(
        self,
        records: mpsc::Sender<Record>,
        intake: CancellationToken,
    ) -> Result<(), SessionError> {
        run(
            self.settings,
            self.password,
            self.filters,
            records,
            self.kept,
            intake,
        )
        .await
    }
}

/// Runs every configured connection until `intake` is cancelled and each connection has acked
/// what settled and disconnected (or, if the broker is unreachable then, until the caller gives
/// up waiting). Records go to `records`; each connection drops its clone when intake stops,
/// which is how the pipeline downstream learns that no more records will come.
async fn run(
    settings: UpstreamSettings,
    password: Option<Secret>,
    filters: Vec<String>,
    records: mpsc::Sender<Record>,
    kept: Kept,
    intake: CancellationToken,
) -> Result<(), SessionError> {
    let settings = Arc::new(settings);
    let filters: Arc<[String]> = filters
        .iter()
        .map(|f| settings.subscription_for(f))
        .collect();
    let mut tasks = JoinSet::new();
    for connection in 0..settings.connections.max(1) {
        let (client, link) = link::open(
            &settings,
            connection,
            password.as_ref(),
            Arc::clone(&filters),
        )?;
        let (to_driver, inbound) = mpsc::channel(INBOUND_CAPACITY);
        tasks.spawn(
            link.run(to_driver)
                .instrument(tracing::info_span!("upstream", connection)),
        );
        let owner = format!("upstream/{}", settings.client_id_for(connection));
        tasks.spawn(
            driver::Driver::new(connection, client, records.clone(), (kept.clone(), owner))
                .run(inbound, intake.clone())
                .instrument(tracing::info_span!("upstream", connection)),
        );
    }
    drop(records);
    let stop_syncing = CancellationToken::new();
    let syncer = tokio::spawn(Arc::new(kept).run_syncer(stop_syncing.clone()));
    join(tasks).await;
    stop_syncing.cancel();
    let _ = syncer.await;
    Ok(())
}

/// Waits for every connection task. A panic in one is re-raised rather than absorbed: the other
/// tasks would keep the process alive, subscribed to nothing and saying nothing more, where an
/// exit lets a supervisor restart it (and the broker redeliver what was not acknowledged).
async fn join(mut tasks: JoinSet<()>) {
    while let Some(joined) = tasks.join_next().await {
        if let Err(error) = joined
            && error.is_panic()
        {
            std::panic::resume_unwind(error.into_panic());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    #[should_panic(expected = "link failed")]
    async fn a_panicking_connection_task_ends_the_run_while_the_others_still_wait() {
        let mut tasks = JoinSet::new();
        tasks.spawn(std::future::pending::<()>());
        tasks.spawn(async { panic!("link failed") });
        // Bounded, so that a regression fails the test instead of hanging it.
        let _ = tokio::time::timeout(std::time::Duration::from_secs(5), join(tasks)).await;
    }
}
