//! The driver of one upstream connection: owns the ack queue, the client handle and what each
//! unacknowledged message was assigned (staged in `kept`, forgotten before its ack goes out).
//!
//! It forwards publishes into the pipeline (awaiting channel capacity, which is the
//! backpressure), and releases PUBACK/PUBREC in arrival order as records settle. On shutdown it
//! stops forwarding, waits until every ack it handed out is settled or dropped, acks what
//! settled, then sends DISCONNECT behind those acks. Publishes that arrive after intake stopped
//! are not acked, so a persistent session redelivers them on the next start.

use std::collections::HashMap;

use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tracing::{debug, error, info, warn};

use super::link::Client;
use super::session::{AckKey, Inbound, log_inbound_state};
use crate::acks::AckQueue;
use crate::kept::{self, Kept};
use crate::metrics::{self, Source};
use crate::reading::{Assigned, Assignments};
use crate::record::{Ack, Message, Record, Settled};

/// Inbound events the driver takes per wake-up at most: under load one wake-up moves many.
const INBOUND_PER_WAKE: usize = 64;

pub struct Driver {
    connection: usize,
    client: Client,
    /// `None` once intake stopped: dropping it tells the pipeline no more records come from here.
    records: Option<mpsc::Sender<Record>>,
    /// Cloned into each `Ack`. Dropped with intake, so `settled` closes when the last ack is gone.
    settle_to: Option<mpsc::UnboundedSender<Settled>>,
    queue: AckQueue<AckKey>,
    /// The connection the acks released now answer (see `link`): set at each CONNACK.
    epoch: u64,
    /// What each QoS 1/2 publish not yet acknowledged was assigned, by packet id: the broker's
    /// redelivery (DUP, after a reconnect into the same session) is the same reading and is
    /// stored once. Forgotten when its ack goes out, or when the broker has no session for us.
    readings: Assignments,
    /// Counts this connection in `mqtt2es_connected_clients` while it is up.
    online: Option<metrics::Connection>,
    /// `readings` on disk, under this connection's owner name, for redeliveries after a crash.
    kept: Kept,
    owner: String,
}

impl Driver {
    pub fn new(
        connection: usize,
        client: Client,
        records: mpsc::Sender<Record>,
        (kept, owner): (Kept, String),
    ) -> Self {
        let readings = kept
            .of(&owner)
            .unwrap_or_else(|error| {
                error!(%error, "cannot read what unacknowledged messages were assigned; their redeliveries may be stored twice");
                HashMap::new()
            })
            .into();
        Driver {
            connection,
            client,
            records: Some(records),
            settle_to: None,
            queue: AckQueue::default(),
            epoch: 0,
            readings,
            online: None,
            kept,
            owner,
        }
    }

    pub async fn run(mut self, mut inbound: mpsc::Receiver<Inbound>, intake: CancellationToken) {
        let (settle_to, mut settled) = mpsc::unbounded_channel();
        self.settle_to = Some(settle_to);
        let mut settled_open = true;
        let mut inbound_open = true;
        let mut events = Vec::with_capacity(INBOUND_PER_WAKE);
        let mut disconnect_due = false;
        loop {
            tokio::select! {
                biased;
                outcome = settled.recv(), if settled_open => match outcome {
                    Some(done) => {
                        // Every settlement already waiting, then one release: one store write
                        // and one pass over the acks for all of them.
                        self.queue.settle(done.token);
                        while let Ok(done) = settled.try_recv() {
                            self.queue.settle(done.token);
                        }
                        self.release();
                    }
                    None => {
                        settled_open = false;
                        disconnect_due = true;
                    }
                },
                _ = intake.cancelled(), if self.records.is_some() => {
                    info!(connection = self.connection, outstanding = self.queue.outstanding(), "stopping intake");
                    self.records = None;
                    self.settle_to = None;
                },
                // Every event already waiting, in order, per wake-up.
                n = inbound.recv_many(&mut events, INBOUND_PER_WAKE), if inbound_open => {
                    if n == 0 {
                        inbound_open = false;
                    }
                    for event in events.drain(..) {
                        self.handle(event).await;
                    }
                }
                else => break,
            }
            // DISCONNECT goes behind every ack: the link writes requests in order.
            if disconnect_due {
                disconnect_due = false;
                debug!(
                    connection = self.connection,
                    "every record settled; disconnecting"
                );
                if let Err(error) = self.client.disconnect() {
                    debug!(connection = self.connection, %error, "disconnect not sent");
                    break;
                }
            }
            if !inbound_open && !settled_open && !disconnect_due {
                break;
            }
        }
    }

    /// Hands the acks that are due to the link, in order, as one request: it writes them in
    /// one go. What each was assigned is forgotten on disk first: kept past its ack, it could
    /// be taken for that of a later message with the same packet id after a crash.
    fn release(&mut self) {
        let ready = self.queue.pop_ready();
        if ready.is_empty() {
            return;
        }
        let forget = self.readings.forget_each(ready.iter().map(|key| key.pkid));
        if !forget.is_empty() {
            kept::logged(self.kept.write(&self.owner, &[], &forget));
        }
        if let Err(error) = self.client.ack(self.epoch, ready) {
            debug!(connection = self.connection, %error, "acks not sent");
        }
    }

    /// The message's identity (see `Assignments::assign`): a redelivery takes back what its
    /// first copy was given; a new one keeps the identity it came with, staged for the disk
    /// (the sink commits it before the bulk request that carries the reading).
    fn assign(&mut self, message: &mut Message, pkid: u16, dup: bool) {
        let came_with = Assigned {
            reading: message.reading,
            received_at: message.received_at,
        };
        let (assigned, new) = self.readings.assign(pkid, dup, || came_with);
        message.reading = assigned.reading;
        message.received_at = assigned.received_at;
        if new {
            self.kept.stage(&self.owner, &[(pkid, assigned)], &[]);
        }
    }

    async fn handle(&mut self, event: Inbound) {
        log_inbound_state(self.connection, &event);
        match event {
            Inbound::Connected {
                session_present,
                epoch,
            } => {
                self.online
                    .get_or_insert_with(|| metrics::connected(Source::Upstream));
                // A new connection: acks for the old one's packet ids must not be sent on it.
                self.queue.reset();
                self.epoch = epoch;
                if !session_present {
                    self.readings.clear();
                    kept::logged(self.kept.forget_all(&self.owner));
                }
            }
            Inbound::Publish {
                mut message,
                key,
                dup,
            } => {
                if let Some(key) = key {
                    self.assign(&mut message, key.pkid, dup);
                }
                metrics::message_in(Source::Upstream);
                let (Some(records), Some(settle_to)) = (&self.records, &self.settle_to) else {
                    debug!(connection = self.connection, topic = %message.topic, "publish after intake stopped; left unacknowledged for redelivery");
                    return;
                };
                let ack = match key {
                    Some(key) => Ack::new(settle_to.clone(), self.queue.push(key)),
                    None => Ack::none(),
                };
                if records.send(Record { message, ack }).await.is_err() {
                    warn!(
                        connection = self.connection,
                        "pipeline closed; stopping intake"
                    );
                    self.records = None;
                    self.settle_to = None;
                }
            }
            Inbound::Disconnected { .. } => self.online = None,
            Inbound::Subscribed { .. } => {}
        }
    }
}
