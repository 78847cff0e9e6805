//! The spool's writer: takes records from the connections, appends them to the log, fsyncs,
//! and only then acknowledges them (`Settlement::Spooled`). One thread, because every batch
//! ends in an fsync: while one batch syncs, the next gathers in the channel, so one sync
//! covers as many records as arrived meanwhile (group commit).

use std::io;
use std::os::unix::fs::FileExt;
use std::sync::Arc;
use std::time::Duration;

use tokio::runtime::Handle;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tracing::{error, info, warn};

use super::settings::{OnFull, SpoolSettings};
use super::shared::Shared;
use super::{log, wire};
use crate::kept::Kept;
use crate::metrics;
use crate::record::{Record, Settlement};

/// Records taken from the channel per append at most.
const WRITE_BATCH: usize = 1024;
/// How long a writer that cannot write waits before it tries again, unless room is freed first.
const RETRY_EVERY: Duration = Duration::from_secs(1);

/// Why an append did not happen.
enum Refused {
    /// `on_full: block` and no room.
    Full,
    /// The file system said no (ENOSPC, EIO, …).
    Io(io::Error),
}

pub(super) struct Writer {
    pub shared: Arc<Shared>,
    pub settings: SpoolSettings,
    pub kept: Kept,
    pub runtime: Handle,
    /// Cancelled at shutdown: a writer that cannot write then gives up on what it holds, which
    /// stays unacknowledged (the devices send it again).
    pub shutdown: CancellationToken,
}

impl Writer {
    /// Until every connection dropped its sender.
    pub fn run(self, mut records: mpsc::Receiver<Record>) {
        let mut batch = Vec::with_capacity(WRITE_BATCH);
        let mut frames = Vec::new();
        let mut body = Vec::new();
        while self
            .runtime
            .block_on(records.recv_many(&mut batch, WRITE_BATCH))
            > 0
        {
            let first = self.shared.log().next_seq();
            frames.clear();
            for (seq, record) in (first..).zip(&batch) {
                body.clear();
                wire::encode(&record.message, &mut body);
                log::frame(seq, &body, &mut frames);
            }
            let last = first + batch.len() as u64 - 1;
            if !self.write_durably(&frames, first, last) {
                // Shutting down and unable to write: unacknowledged, so resent later.
                batch.clear();
                continue;
            }
            for record in batch.drain(..) {
                record.ack.settle(Settlement::Spooled);
            }
            self.shared.written.send_replace(last);
            self.shared.report();
        }
    }

    /// Appends and syncs `frames` (records `first..=last`), waiting for room or for the file
    /// system as long as it takes. `false` if shutdown came first.
    fn write_durably(&self, frames: &[u8], first: u64, last: u64) -> bool {
        let mut problem: Option<String> = None;
        loop {
            match self.try_append(frames, first, last) {
                Ok(()) => {
                    if let Some(problem) = problem {
                        info!(was = %problem, "spool: writing again; acknowledgements resume");
                        metrics::spool_problem(None);
                    }
                    return true;
                }
                Err(refused) => {
                    let now = match refused {
                        Refused::Full => format!(
                            "spool full ({} of spool.max_bytes {}, on_full: block): \
                             acknowledgements wait until the shipper frees room",
                            self.shared.log().bytes(),
                            self.settings.max_bytes
                        ),
                        Refused::Io(error) if error.kind() == io::ErrorKind::StorageFull => {
                            format!(
                                "the disk of {:?} is full: acknowledgements wait until space \
                                 is freed",
                                self.settings.dir
                            )
                        }
                        Refused::Io(error) => format!(
                            "cannot write the spool in {:?}: {error}; acknowledgements wait",
                            self.settings.dir
                        ),
                    };
                    if problem.as_deref() != Some(now.as_str()) {
                        warn!("{now}");
                        metrics::spool_problem(Some(now.clone()));
                        problem = Some(now);
                    }
                }
            }
            if self.shutdown.is_cancelled() {
                error!(
                    "shutting down with records the spool could not take; they stay unacknowledged"
                );
                return false;
            }
            self.runtime.block_on(async {
                tokio::select! {
                    _ = self.shared.freed.notified() => {}
                    _ = tokio::time::sleep(RETRY_EVERY) => {}
                    _ = self.shutdown.cancelled() => {}
                }
            });
        }
    }

    fn try_append(&self, frames: &[u8], first: u64, last: u64) -> Result<(), Refused> {
        // So that a device's resend (DUP) gets the reading id written here (see `kept`).
        self.kept
            .commit()
            .map_err(|error| Refused::Io(io::Error::other(error)))?;
        let mut log = self.shared.log();
        while log.bytes() + frames.len() as u64 > self.settings.max_bytes {
            match self.settings.on_full {
                OnFull::Block => return Err(Refused::Full),
                OnFull::DropOldest => match log.drop_oldest().map_err(Refused::Io)? {
                    Some(segment) => {
                        let read = self.shared.read_through();
                        let lost = segment
                            .last_seq
                            .saturating_sub(read.max(segment.first_seq - 1));
                        if lost > 0 {
                            warn!(
                                records = lost,
                                first = segment.first_seq.max(read + 1),
                                last = segment.last_seq,
                                "spool full (on_full: drop_oldest): dropped the oldest records \
                                 not yet shipped"
                            );
                            metrics::spool_dropped(lost);
                        }
                    }
                    // One batch larger than the whole spool: written all the same.
                    None => break,
                },
            }
        }
        let (file, at) = log.appender(first).map_err(Refused::Io)?;
        drop(log);
        if let Err(error) = file
            .write_all_at(frames, at)
            .and_then(|()| file.sync_data())
        {
            // Leave no partial record behind for the next append to follow; if even this
            // fails, opening finds the torn tail and cuts it.
            let _ = file.set_len(at);
            return Err(Refused::Io(error));
        }
        self.shared.log().appended(last, frames.len() as u64);
        Ok(())
    }
}
