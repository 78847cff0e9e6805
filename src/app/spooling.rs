//! The spool's parts while `run` runs: the writer thread (from the start), the shipper (once
//! Elasticsearch is set up), and how both finish after the connections closed.

use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tracing::error;

use crate::record::Record;
use crate::spool::Spool;

/// The spool's parts while `run` runs.
pub(super) struct Spooling {
    pub(super) spool: Spool,
    pub(super) writer: std::thread::JoinHandle<()>,
    /// Handed to the shipper when it starts (after setup).
    pub(super) shipped_tx: Option<mpsc::Sender<Record>>,
    pub(super) shipper: Option<tokio::task::JoinHandle<()>>,
}

impl Spooling {
    /// Ships the spool into the pipelines until `stop`.
    pub(super) fn start_shipping(&mut self, stop: CancellationToken) {
        let Some(out) = self.shipped_tx.take() else {
            return;
        };
        let spool = self.spool.clone();
        self.shipper = Some(tokio::spawn(async move { spool.ship(out, stop).await }));
    }

    /// After the connections closed: the writer has taken their last records; the shipper saves
    /// its cursor once what it sent has settled.
    pub(super) async fn finish(self) {
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
