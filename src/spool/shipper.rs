//! The spool's shipper: reads records from the log in order and sends them down the pipeline
//! with an ack of its own, so the sink treats them exactly as records from a connection (same
//! per-item outcomes, dead letters, retries, ids). Settlements come back out of order; the
//! shipper moves the cursor over the unbroken run of settled records, deletes segments shipped
//! to their end, and saves the cursor once a second. What a crash takes back (records settled
//! after the last saved cursor) is shipped again and stored once, by its reading id.

use std::collections::BTreeMap;
use std::io;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tracing::{error, info, warn};

use super::log::{Position, SegmentReader, Step, write_cursor};
use super::shared::Shared;
use super::wire;
use crate::metrics;
use crate::record::{Ack, Message, Record, Settled};

/// Records read from disk per read at most.
const READ_BATCH: usize = 512;
/// How often the cursor is saved while it moves.
const SAVE_CURSOR_EVERY: Duration = Duration::from_secs(1);

/// Where reading stands; moved into the blocking read and back.
struct Reading {
    position: Position,
    reader: Option<(u64, SegmentReader)>,
    /// The last record read (or skipped: shipped before, dropped, undecodable).
    through: u64,
}

pub(super) struct Shipper {
    pub shared: Arc<Shared>,
    pub out: mpsc::Sender<Record>,
    pub stop: CancellationToken,
}

impl Shipper {
    pub async fn run(self) {
        let shared = self.shared;
        let start = shared.log().shipped_through();
        let mut reading = Some(Reading {
            position: Position::default(),
            reader: None,
            through: start,
        });
        let mut progress = Progress::new(Arc::clone(&shared), start);
        let (settled_tx, mut settled_rx) = mpsc::unbounded_channel::<Settled>();
        let mut written = shared.written.subscribe();
        'shipping: loop {
            while let Ok(settled) = settled_rx.try_recv() {
                progress.settled(settled.token);
            }
            progress.save_now_and_then(false);
            let taken = reading.take().expect("put back after every read");
            let reader_shared = Arc::clone(&shared);
            let Ok((back, chunk)) =
                tokio::task::spawn_blocking(move || read_chunk(&reader_shared, taken)).await
            else {
                error!("spool: the read task failed; shipping stops");
                break;
            };
            reading = Some(back);
            let through = reading.as_ref().map_or(0, |r| r.through);
            shared.set_read_through(through);
            let chunk = match chunk {
                Ok(chunk) => chunk,
                Err(error) => {
                    warn!(%error, "spool: cannot read; trying again in a second");
                    tokio::select! {
                        _ = self.stop.cancelled() => break 'shipping,
                        _ = tokio::time::sleep(Duration::from_secs(1)) => continue,
                    }
                }
            };
            if chunk.is_empty() {
                progress.caught_up(through);
                tokio::select! {
                    biased;
                    _ = self.stop.cancelled() => break 'shipping,
                    Some(settled) = settled_rx.recv() => progress.settled(settled.token),
                    _ = written.changed() => {}
                }
                continue;
            }
            let permits = tokio::select! {
                _ = self.stop.cancelled() => break 'shipping,
                permits = self.out.reserve_many(chunk.len()) => match permits {
                    Ok(permits) => permits,
                    Err(_) => break 'shipping,
                },
            };
            for ((seq, message), permit) in chunk.into_iter().zip(permits) {
                progress.shipping(seq, &message);
                permit.send(Record {
                    message,
                    ack: Ack::awaited_by_nobody(settled_tx.clone(), seq),
                });
            }
            progress.caught_up(through);
        }
        // Stopping: what is in flight settles (or is abandoned) as the sink finishes; the
        // cursor is saved over what settled.
        drop(self.out);
        drop(settled_tx);
        while let Some(settled) = settled_rx.recv().await {
            progress.settled(settled.token);
        }
        progress.save_now_and_then(true);
        info!(
            shipped_through = progress.done_through,
            waiting = shared.log().records(),
            "spool: shipper stopped; what is left is shipped at the next start"
        );
    }
}

/// Settled records and the cursor.
struct Progress {
    shared: Arc<Shared>,
    /// Sequence number → receive time (ns) of records sent and not settled.
    in_flight: BTreeMap<u64, i64>,
    /// The last record read; everything through it that is not in flight is settled.
    read_through: u64,
    done_through: u64,
    saved_through: u64,
    saved_at: Instant,
}

impl Progress {
    fn new(shared: Arc<Shared>, start: u64) -> Progress {
        Progress {
            shared,
            in_flight: BTreeMap::new(),
            read_through: start,
            done_through: start,
            saved_through: start,
            saved_at: Instant::now(),
        }
    }

    fn shipping(&mut self, seq: u64, message: &Message) {
        let nanos = message
            .received_at
            .timestamp_nanos_opt()
            .unwrap_or_default();
        self.in_flight.insert(seq, nanos);
    }

    fn caught_up(&mut self, read_through: u64) {
        self.read_through = self.read_through.max(read_through);
        self.advance();
    }

    fn settled(&mut self, seq: u64) {
        if self.in_flight.remove(&seq).is_some() {
            metrics::spool_shipped(1);
        }
        self.advance();
    }

    fn advance(&mut self) {
        let done = match self.in_flight.keys().next() {
            Some(&oldest) => oldest - 1,
            None => self.read_through,
        };
        metrics::spool_oldest(self.in_flight.values().next().copied());
        if done <= self.done_through {
            return;
        }
        self.done_through = done;
        match self.shared.log().shipped(done) {
            Ok(0) => {}
            Ok(_) => self.shared.freed.notify_one(),
            Err(error) => warn!(%error, "spool: cannot delete a shipped segment"),
        }
        self.shared.report();
    }

    /// Saves the cursor if it moved and a second passed (or `now`).
    fn save_now_and_then(&mut self, now: bool) {
        if self.done_through == self.saved_through
            || (!now && self.saved_at.elapsed() < SAVE_CURSOR_EVERY)
        {
            return;
        }
        let dir = self.shared.log().dir().to_path_buf();
        match write_cursor(&dir, self.done_through) {
            Ok(()) => {
                self.saved_through = self.done_through;
                self.saved_at = Instant::now();
            }
            Err(error) => {
                warn!(%error, "spool: cannot save the cursor; records may be shipped twice after a restart (stored once)")
            }
        }
    }
}

/// Up to `READ_BATCH` records after `reading`'s position, decoded; blocking file I/O.
fn read_chunk(shared: &Shared, mut reading: Reading) -> (Reading, io::Result<Vec<(u64, Message)>>) {
    let result = read_into(shared, &mut reading);
    (reading, result)
}

fn read_into(shared: &Shared, reading: &mut Reading) -> io::Result<Vec<(u64, Message)>> {
    let mut chunk = Vec::new();
    while chunk.len() < READ_BATCH {
        let Some((start, limit)) = shared.log().next_read(reading.position) else {
            break;
        };
        if start.segment != reading.position.segment || reading.reader.is_none() {
            // Records before this segment that were never read were dropped or damaged.
            reading.through = reading.through.max(start.segment - 1);
            let path = shared.log().segment_path(start.segment);
            match SegmentReader::open(&path) {
                Ok(reader) => reading.reader = Some((start.segment, reader)),
                // Dropped to make room between planning and opening.
                Err(error) if error.kind() == io::ErrorKind::NotFound => {
                    reading.position = Position {
                        segment: start.segment,
                        offset: u64::MAX,
                    };
                    continue;
                }
                Err(error) => return Err(error),
            }
        }
        reading.position = start;
        let (_, reader) = reading.reader.as_mut().expect("opened above");
        loop {
            match reader.step(reading.position.offset, limit)? {
                Step::Frame { seq, body, next } => {
                    reading.position.offset = next;
                    if seq > reading.through {
                        reading.through = seq;
                        let body = reader.body(body);
                        match wire::decode(body) {
                            Ok(message) => chunk.push((seq, message)),
                            Err(error) => {
                                error!(seq, %error, "spool: a record cannot be read back; it is lost");
                                metrics::spool_damaged(body.len() as u64);
                            }
                        }
                    }
                    if chunk.len() >= READ_BATCH {
                        return Ok(chunk);
                    }
                }
                // Counted when the spool was opened.
                Step::Damaged { to } => reading.position.offset = to,
                Step::End { .. } => {
                    reading.position.offset = limit;
                    break;
                }
            }
        }
    }
    Ok(chunk)
}
