//! The processor: the task that runs each record through the pipelines between the sources'
//! channel and the sink's, and the one policy applied before any pipeline sees a payload (its
//! size). The pipelines themselves are pure (`pipeline`); this is their I/O edge.
//!
//! The decision a reader would question: one task for every connection, not the pipelines run on
//! each connection's own task. The connections then only read, assign and ack; under load this
//! task takes up to `PROCESSOR_BATCH` records per wake-up and reserves room for all of them in
//! the sink's channel at once, so a batch costs one channel operation each way.

use std::sync::Arc;

use tokio::sync::mpsc;
use tracing::warn;

use crate::document::{Processed, Rejection};
use crate::pipeline::Pipelines;
use crate::record::{Message, Record};
use crate::sink::{Routed, dead_letter::PAYLOAD_TOO_LARGE};

/// Records the processor takes from its channel at most per wake-up (well under the channels'
/// capacity, which `reserve_many` needs).
const PROCESSOR_BATCH: usize = 256;

/// Runs one message through the pipelines, refusing oversized payloads before any parsing.
pub fn process(pipelines: &Pipelines, max_payload_bytes: usize, message: &Message) -> Processed {
    if message.payload.len() > max_payload_bytes {
        return Processed::Rejected(Rejection {
            pipeline: None,
            stage: Some("decode".into()),
            reason: PAYLOAD_TOO_LARGE.into(),
            detail: format!(
                "payload of {} bytes exceeds pipelines.max_payload_bytes ({max_payload_bytes})",
                message.payload.len()
            ),
        });
    }
    pipelines.process(message)
}

/// The processor task: pure pipeline work between the two channels. Ends when every upstream
/// connection dropped its sender; dropping `routed` then tells the sink to flush and finish.
pub async fn run(
    pipelines: Arc<Pipelines>,
    max_payload_bytes: usize,
    mut records: mpsc::Receiver<Record>,
    routed: mpsc::Sender<Routed>,
) {
    // Many records per wake-up under load: one channel operation each way for all of them.
    let mut taken = Vec::with_capacity(PROCESSOR_BATCH);
    while records.recv_many(&mut taken, PROCESSOR_BATCH).await > 0 {
        let Ok(permits) = routed.reserve_many(taken.len()).await else {
            warn!("sink stopped; processor ends");
            return;
        };
        for (Record { message, ack }, permit) in taken.drain(..).zip(permits) {
            let processed = process(&pipelines, max_payload_bytes, &message);
            permit.send(Routed {
                message,
                processed,
                ack,
            });
        }
    }
}
