//! Signals: SIGTERM (docker stop, systemd) and SIGINT (Ctrl-C) both mean "stop intake and
//! finish what was taken in", for `run` and `simulate` alike.

use tokio_util::sync::CancellationToken;
use tracing::{error, info};

/// Waits for SIGTERM or SIGINT and logs which. If SIGTERM cannot be watched (it always can on
/// Linux), that is logged and Ctrl-C still works.
pub async fn signalled() {
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .inspect_err(|error| error!(%error, "cannot listen for SIGTERM"))
        .ok();
    let sigterm = async {
        match &mut term {
            Some(term) => term.recv().await,
            None => std::future::pending().await,
        }
    };
    tokio::select! {
        _ = sigterm => info!("SIGTERM received"),
        _ = tokio::signal::ctrl_c() => info!("interrupt received"),
    }
}

/// Cancels `stop` on SIGTERM or SIGINT.
pub async fn stop_on_signal(stop: CancellationToken) {
    signalled().await;
    stop.cancel();
}
