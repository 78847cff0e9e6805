//! Store and forward (`delivery.mode: spool`): a reading is acknowledged once it is fsynced in a
//! local spool, and a shipper drains the spool into Elasticsearch in order.
//!
//! ```text
//! connections ──Record──► writer ──append+fsync──► spool.dir ──► shipper ──Record──► process ──► sink
//!      ▲                    │ (ack: Spooled)                        ▲                          │
//!      └────────────────────┘                                       └──── Settled (cursor) ◄───┘
//! ```
//! The spool holds messages as they arrived (`wire`), with the reading id and receive time
//! they were assigned, so the pipelines run when a record is shipped and a record shipped twice
//! (a crash between storing it and saving the cursor) is the same document. The writer commits
//! what `kept` holds before each append: a device's resend (DUP) of a publish the writer already
//! spooled but not yet acknowledged gets the same reading id, so the second copy is stored once.
//!
//! Full (`spool.max_bytes`): `on_full: block` stops acknowledging until the shipper frees room
//! (the devices hold their readings, as in direct delivery); `drop_oldest` deletes the oldest
//! segment and counts the records it held. A disk that is full, or any write or sync that
//! fails, is treated like `block`: the partial write is cut off, nothing is acknowledged, and
//! the writer tries again every second until it succeeds.
//!
//! - `log`      — segment files, frames and the cursor.
//! - `wire`     — a message as the spool stores it.
//! - `writer`   — append, fsync, then acknowledge (one thread, group commit).
//! - `shipper`  — the log read back in order into the pipelines; the cursor moved as they settle.
//! - `shared`   — what writer and shipper share; `settings` — the `delivery:` section.

mod log;
mod settings;
mod shared;
mod shipper;
mod wire;
mod writer;

use std::io;
use std::sync::atomic::AtomicU64;
use std::sync::{Arc, Mutex};

use tokio::sync::{Notify, mpsc, watch};
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

pub use settings::{Delivery, DeliverySettings, OnFull, SpoolSettings};
use shared::Shared;

use crate::kept::Kept;
use crate::metrics;
use crate::record::Record;

/// An open spool; clones share it.
#[derive(Clone)]
pub struct Spool {
    shared: Arc<Shared>,
    settings: SpoolSettings,
}

impl Spool {
    /// Opens (or creates) the spool, recovering what a crash left; says what it found.
    pub fn open(settings: &SpoolSettings) -> io::Result<Spool> {
        let (log, opened) = log::Log::open(&settings.dir, settings.segment_bytes())?;
        if opened.damaged_bytes > 0 {
            warn!(
                dir = ?settings.dir,
                bytes = opened.damaged_bytes,
                "spool: skipped bytes that were no whole record (a write torn by a crash or \
                 power loss, or damage on disk); every record around them is kept"
            );
            metrics::spool_damaged(opened.damaged_bytes);
        }
        info!(
            dir = ?settings.dir,
            records = opened.records,
            bytes = log.bytes(),
            max_bytes = settings.max_bytes,
            on_full = settings.on_full.as_str(),
            "spool open: readings are acknowledged once fsynced here"
        );
        let written = log.next_seq() - 1;
        let shared = Arc::new(Shared {
            read_through: AtomicU64::new(log.shipped_through()),
            log: Mutex::new(log),
            written: watch::Sender::new(written),
            freed: Notify::new(),
        });
        metrics::spool_enabled();
        shared.report();
        Ok(Spool {
            shared,
            settings: settings.clone(),
        })
    }

    /// Starts the writer on a thread of its own: it takes `records` until every sender is
    /// dropped. `shutdown` lets a writer that cannot write give up.
    pub fn start_writer(
        &self,
        kept: Kept,
        records: mpsc::Receiver<Record>,
        shutdown: CancellationToken,
    ) -> io::Result<std::thread::JoinHandle<()>> {
        let writer = writer::Writer {
            shared: Arc::clone(&self.shared),
            settings: self.settings.clone(),
            kept,
            runtime: tokio::runtime::Handle::current(),
            shutdown,
        };
        std::thread::Builder::new()
            .name("spool-writer".into())
            .spawn(move || writer.run(records))
    }

    /// Ships the spool into `out` until `stop`; then waits for what is in flight to settle
    /// (the sink finishing drops the rest) and saves the cursor.
    pub async fn ship(&self, out: mpsc::Sender<Record>, stop: CancellationToken) {
        shipper::Shipper {
            shared: Arc::clone(&self.shared),
            out,
            stop,
        }
        .run()
        .await;
    }
}

/// One line for `mqtt2es check`.
pub fn describe(settings: &SpoolSettings) -> String {
    format!(
        "delivery: spool (acknowledged once fsynced in {:?}, up to {} bytes, when full: {})",
        settings.dir,
        settings.max_bytes,
        settings.on_full.as_str()
    )
}
