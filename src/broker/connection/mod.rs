//! One client connection, from CONNECT to goodbye: the task that reads packets, hands each to
//! the phase that owns it, and says goodbye. This file is the wiring only:
//!
//! - `connect`   — from accept to CONNACK: CONNECT read and checked, authentication, takeover.
//! - `intake`    — publishes into records, PUBACK/PUBREC once durable, in arrival order.
//! - `delivery`  — what the client subscribed to: queued, in flight, resumed after reconnect.
//! - `subscribe` — SUBSCRIBE and UNSUBSCRIBE.
//! - `will`      — the last will, published when the connection ends abnormally.
//! - `socket`    — the two halves of the socket: buffered replies, reads without an idle buffer.
//! - `context`, `end` — what the phases share: who the client is, and how a connection ends.
//!
//! The decision a reader would question: reading stops instead of buffering. A 3.1.1 client
//! has no receive maximum, so when `broker.max_inflight` of its publishes are not yet durable
//! this task stops reading the socket (TCP then slows the device), and a full pipeline channel
//! stops it too. An MQTT 5 client is told our receive maximum and disconnected with 0x93 if
//! it exceeds it. Either way memory per connection stays bounded.

mod connect;
mod context;
mod delivery;
mod end;
mod intake;
mod socket;
mod subscribe;
mod will;

use std::sync::Arc;
use std::time::Duration;

use bytes::BytesMut;
use tokio::io::{AsyncRead, ReadHalf};
use tokio::sync::mpsc;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

pub use context::{Context, Limits, TOPIC_ALIAS_MAX};

use crate::broker::codec::{self, CodecError, Goodbye, Packet, Reply, Will};
use crate::broker::listener::{Accepted, Stream};
use crate::broker::session::Handover;
use crate::metrics;
use crate::record::Record;
use connect::Admitted;
use context::{Client, Live};
use delivery::Deliveries;
use end::End;
use intake::{Intake, reserve};
use socket::{Outbound, linger, receive};

/// Serves one accepted connection until it ends. `records` is this connection's sender into
/// the pipeline; it is dropped when `intake` stops, so the pipeline can drain.
pub async fn serve(
    accepted: Accepted,
    context: Arc<Context>,
    records: mpsc::Sender<Record>,
    intake: CancellationToken,
) {
    // The start and the end run in boxed futures: inline, their state would be part of this
    // task's for the connection's whole life, doubling what an idle one costs, when only a
    // moment of it needs them. `opened` stays whole: destructured, the task holds it twice.
    let Some(mut opened) = Box::pin(open(accepted, context, records, &intake)).await else {
        return;
    };
    let end = opened
        .connection
        .run(
            &mut opened.reader,
            opened.keep_alive_s,
            &opened.handover,
            &intake,
        )
        .await;
    let broke_a_rule = matches!(end, End::Violation(..));
    Box::pin(opened.connection.finish(end, intake, &opened.handover)).await;
    if broke_a_rule {
        Box::pin(linger(&mut opened.reader)).await;
    }
}

/// A connection whose CONNECT was accepted, its session attached and CONNACK on its way.
struct Opened {
    connection: Connection,
    reader: ReadHalf<Box<dyn Stream>>,
    keep_alive_s: u16,
    /// Kicked by a connection taking the session over, told when it is handed back.
    handover: Arc<Handover>,
    /// Held until the task ends.
    _live: Live,
    _connected: metrics::Connection,
}

/// Admits the client (`connect::open`), then resends what its session had in flight and
/// sends what was queued for it. `None` if the connection ended before CONNACK.
async fn open(
    accepted: Accepted,
    context: Arc<Context>,
    records: mpsc::Sender<Record>,
    intake: &CancellationToken,
) -> Option<Opened> {
    let Admitted {
        client,
        expiry_s,
        will,
        receive_maximum,
        mut out,
        inbuf,
        reader,
        keep_alive_s,
        resumed,
        handover,
        live,
        connected,
    } = connect::open(accepted, context, intake).await?;
    let mut delivery = Deliveries::new(receive_maximum, resumed.queued, resumed.deliveries);
    delivery.resume(&mut out, resumed.unfinished);
    delivery.send_pending(&mut out);
    let connection = Connection {
        client,
        expiry_s,
        will,
        out,
        inbuf,
        heard: false,
        intake: Intake::new(records, resumed.awaiting_pubrel, resumed.readings),
        delivery,
    };
    Some(Opened {
        connection,
        reader,
        keep_alive_s,
        handover,
        _live: live,
        _connected: connected,
    })
}

/// A connection past CONNACK: who it serves, its socket, and the state of each phase.
struct Connection {
    client: Client,
    expiry_s: u32,
    /// Boxed: most clients set no will, and inline it would be 88 bytes of every connection.
    will: Option<Box<Will>>,
    out: Outbound,
    inbuf: BytesMut,
    /// A packet from the client was handled since the keep-alive deadline was last set.
    heard: bool,
    intake: Intake,
    delivery: Deliveries,
}

impl Connection {
    async fn run<R: AsyncRead + Unpin>(
        &mut self,
        reader: &mut R,
        keep_alive_s: u16,
        handover: &Handover,
        intake: &CancellationToken,
    ) -> End {
        let keep_alive =
            (keep_alive_s > 0).then(|| Duration::from_millis(u64::from(keep_alive_s) * 1500));
        let mut deadline = keep_alive.map(|k| Instant::now() + k);
        // Whether reading was paused (backpressure) when the loop last looked: the select may
        // then sit for longer than the keep-alive, and the client's time starts over only
        // once we read again.
        let mut paused = false;
        // Bytes that arrived with CONNECT.
        if let Some(end) = self.process_buffer() {
            return end;
        }
        loop {
            if let Err(error) = self.out.flush().await {
                return End::Lost(error.to_string());
            }
            if !self.intake.is_running() && !self.intake.awaits_settlements() {
                return End::Shutdown;
            }
            let reading = self.intake.is_running() && self.intake.may_read(&self.client);
            let waiting_for_room = self.intake.waiting_for_room(&self.client);
            let wants_room = waiting_for_room.is_some();
            // Not reading is our doing (backpressure, shutdown), not the client's silence: its
            // keep-alive starts over once we read again. A packet taken from the buffer (read
            // earlier, parsed once backpressure allowed) is one heard from the client too.
            if !reading || paused || std::mem::take(&mut self.heard) {
                deadline = keep_alive.map(|k| Instant::now() + k);
            }
            paused = !reading;
            let awaits_settlements = self.intake.awaits_settlements();
            tokio::select! {
                biased;
                () = handover.kicked() => return End::TakenOver,
                _ = intake.cancelled(), if self.intake.is_running() => self.intake.stop(&self.client),
                room = reserve(waiting_for_room), if wants_room => match room {
                    Ok(permit) => {
                        self.intake.forward_held(&self.client, Some(permit));
                        if let Some(end) = self.process_buffer() {
                            return end;
                        }
                    }
                    Err(_) => {
                        warn!(client_id = %self.client.client_id, "pipeline closed; stopping intake");
                        self.intake.stop(&self.client);
                    }
                },
                done = self.intake.next_settled(), if awaits_settlements => match done {
                    Some(done) => {
                        self.intake.on_settled(&self.client, &mut self.out, done);
                        // Also passes on what settling made room for (3.1.1's window).
                        if let Some(end) = self.process_buffer() {
                            return end;
                        }
                    }
                    None => self.intake.on_settlements_closed(),
                },
                Some(()) = self.delivery.fanned_out() => self.delivery.send_pending(&mut self.out),
                read = receive(reader, &mut self.inbuf), if reading => match read {
                    Ok(0) => return End::Lost("closed by the client without DISCONNECT".into()),
                    Ok(_) => {
                        deadline = keep_alive.map(|k| Instant::now() + k);
                        if let Some(end) = self.process_buffer() {
                            return end;
                        }
                    }
                    Err(error) => return End::Lost(error.to_string()),
                },
                _ = sleep_until(deadline), if deadline.is_some() && reading => {
                    return End::KeepAlive;
                }
            }
        }
    }

    /// Handles every complete packet in the buffer (as far as 3.1.1 backpressure allows).
    fn process_buffer(&mut self) -> Option<End> {
        while self.intake.is_running() {
            if !self.intake.may_read(&self.client) {
                // Held to the limit: pass on what the pipeline takes now, then go on if it did.
                self.intake.forward_held(&self.client, None);
                if !self.intake.may_read(&self.client) {
                    break;
                }
            }
            let max = self.client.limits().max_packet_bytes;
            match codec::read(&mut self.inbuf, Some(self.client.version), max) {
                Ok(None) => break,
                Ok(Some(packet)) => {
                    self.heard = true;
                    if let Some(end) = self.handle(packet) {
                        return Some(end);
                    }
                }
                Err(error @ CodecError::TooLarge { .. }) => {
                    return Some(End::Violation(Goodbye::PacketTooLarge, error.to_string()));
                }
                Err(error) => {
                    return Some(End::Violation(Goodbye::MalformedPacket, error.to_string()));
                }
            }
        }
        self.intake.forward_held(&self.client, None);
        None
    }

    /// Hands `packet` to the phase that owns it.
    fn handle(&mut self, packet: Packet) -> Option<End> {
        let client = &self.client;
        let out = &mut self.out;
        tracing::trace!(client_id = %client.client_id, ?packet, "packet");
        match packet {
            Packet::Connect(_) => Some(End::Violation(
                Goodbye::ProtocolError,
                "second CONNECT".into(),
            )),
            Packet::Publish(publish) => self.intake.on_publish(client, out, publish),
            Packet::PubAck(pkid) => {
                self.delivery.on_puback(out, pkid);
                None
            }
            Packet::PubRec(pkid) => {
                self.delivery.on_pubrec(out, pkid);
                None
            }
            Packet::PubComp(pkid) => {
                self.delivery.on_pubcomp(out, pkid);
                None
            }
            Packet::PubRel(pkid) => {
                self.intake.on_pubrel(client, out, pkid);
                None
            }
            Packet::Subscribe { pkid, filters, id } => {
                subscribe::on_subscribe(client, out, &mut self.delivery, pkid, filters, id)
            }
            Packet::Unsubscribe { pkid, filters } => {
                subscribe::on_unsubscribe(client, out, pkid, filters)
            }
            Packet::PingReq => {
                out.reply(&Reply::PingResp);
                None
            }
            Packet::Disconnect {
                publish_will,
                session_expiry_s,
            } => {
                if let Some(expiry) = session_expiry_s {
                    // A session that was to end with its connection cannot be kept after
                    // all (MQTT-3.14.2-2); the will then goes out as for any broken rule.
                    if self.expiry_s == 0 && expiry != 0 {
                        return Some(End::Violation(
                            Goodbye::ProtocolError,
                            "DISCONNECT sets a session expiry after CONNECT set none".into(),
                        ));
                    }
                    self.expiry_s = expiry;
                }
                Some(End::Normal { will: publish_will })
            }
            Packet::Unexpected(name) => Some(End::Violation(
                Goodbye::ProtocolError,
                format!("unexpected {name} from a client"),
            )),
        }
    }

    /// Says goodbye, hands the session back (and says so through `handover`), passes on what
    /// it still held, and publishes the will if the end calls for it.
    ///
    /// The session goes back before the held records go on: passing them on waits for room in
    /// the pipeline, which under backpressure can take longer than a client waits for CONNACK,
    /// and a connection taking this session over waits for the hand-back.
    async fn finish(mut self, end: End, intake: CancellationToken, handover: &Handover) {
        let client = &self.client;
        match &end {
            End::Violation(_, reason) => {
                warn!(peer = %client.peer, client_id = %client.client_id, reason = %reason, "closing connection");
            }
            End::KeepAlive => {
                // What was waiting says whether the silence could have been ours.
                info!(
                    peer = %client.peer,
                    client_id = %client.client_id,
                    unacknowledged = self.intake.outstanding(),
                    held = self.intake.held(),
                    buffered_bytes = self.inbuf.len(),
                    "keep-alive expired; closing connection"
                );
            }
            End::TakenOver => {
                info!(peer = %client.peer, client_id = %client.client_id, "session taken over by a new connection");
            }
            End::Lost(reason) => {
                debug!(peer = %client.peer, client_id = %client.client_id, reason = %reason, "connection lost");
            }
            End::Normal { .. } | End::Shutdown => {
                debug!(peer = %client.peer, client_id = %client.client_id, "client disconnected");
            }
        }
        self.intake.report(client);
        if let Some(goodbye) = end.goodbye() {
            self.out.reply(&Reply::Disconnect(goodbye));
        }
        let _ = self.out.flush().await;
        let _ = self.out.shutdown().await;
        // What held records were assigned goes into the session before the session goes back.
        self.intake.write_kept(&self.client);

        // Outgoing messages not yet acknowledged go back to the session (QoS 1/2), so a
        // persistent subscriber gets them after reconnecting: those in flight under their
        // packet ids, the rest to be sent as new.
        let (unfinished, unsent) = self.delivery.hand_back();
        let client = &self.client;
        client.context.registry.detach(
            &client.client_id,
            client.id,
            self.expiry_s,
            unfinished,
            unsent,
            self.intake.take_readings(),
        );
        handover.hand_back();
        self.intake.pass_on_held(&self.client, &intake).await;

        if end.publishes_will()
            && let Some(will) = self.will.take()
            && let Some(records) = self.intake.take_records()
        {
            will::publish_will(
                Arc::clone(&client.context),
                client.id,
                client.identity.clone(),
                *will,
                self.expiry_s,
                records,
                intake,
            );
        }
    }
}

async fn sleep_until(deadline: Option<Instant>) {
    match deadline {
        Some(deadline) => tokio::time::sleep_until(deadline).await,
        None => std::future::pending().await,
    }
}

#[cfg(test)]
mod tests;

#[cfg(test)]
mod harness;
