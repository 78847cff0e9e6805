//! Intake: the client's publishes turned into records for the pipeline, and their PUBACK or
//! PUBREC sent once those records are durable, in arrival order (see `crate::acks`).
//!
//! The decision a reader would question: records are held here, not awaited. A record the
//! pipeline has no room for (or, for 3.1.1, one behind `broker.max_inflight` not yet durable)
//! waits in `held` while the connection goes on answering PINGREQs and taking acks of its
//! deliveries; only once `max_inflight` are held does reading stop. Backpressure must not cost
//! a device its connection, and memory per connection stays bounded.
//!
//! Fan-out to subscribers and the retained store happen on arrival, not on durability:
//! `mosquitto_sub` shows live traffic even while Elasticsearch is down, at the price that a
//! publisher's retry may reach subscribers twice (which QoS 1 allows).

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::sync::Arc;
use std::time::SystemTime;

use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use super::context::{Client, TOPIC_ALIAS_MAX};
use super::end::End;
use super::socket::Outbound;
use crate::acks::AckQueue;
use crate::broker::codec::{AckReason, Goodbye, Publish, Reply, Version};
use crate::broker::session::Delivery;
use crate::metrics;
use crate::reading::{Assigned, Assignments};
use crate::record::{Ack, Message, QoS, Record, Settled, Settlement};

/// An inbound QoS 1/2 publish waiting for its record to settle.
#[derive(Debug)]
struct Pending {
    pkid: u16,
    qos: QoS,
    reason: AckReason,
}

/// Publishes refused for this connection (ACL, `$` topics), logged once and then counted.
#[derive(Default)]
struct Refused {
    count: u64,
}

/// The client's publishes on their way into the pipeline, and the acks they are owed.
pub(super) struct Intake {
    /// `None` once intake stopped.
    records: Option<mpsc::Sender<Record>>,
    /// Records not passed to the pipeline yet, in arrival order: it had no room, or (3.1.1)
    /// `max_inflight` of this client's publishes are in it, not yet durable. Held here rather
    /// than awaited, so that the connection keeps answering PINGREQs (and taking acks of its
    /// deliveries) while Elasticsearch stalls: backpressure must not cost a device its
    /// connection. Reading stops only once `max_inflight` are held.
    held: VecDeque<Record>,
    /// How many of `held` are QoS 1/2 (counted in `acks`, but not in the pipeline).
    held_acks: usize,
    /// Assignments of held records not written to the store yet: written together, once per
    /// buffer of packets, before any of those records goes on.
    unkept: Vec<(u16, Assigned)>,
    /// Cloned into each `Ack`; dropped with intake, so `settled` closes after the last ack.
    /// Opened by a QoS 1/2 publish and closed again once none is outstanding (`settle_to()`).
    settle_to: Option<mpsc::UnboundedSender<Settled>>,
    /// `None` while no channel is open, and once it closed after intake stopped.
    settled: Option<mpsc::UnboundedReceiver<Settled>>,
    acks: AckQueue<Pending>,
    /// Packet ids of QoS 1/2 publishes read on this connection whose PUBACK or PUBREC has not
    /// gone out: a resend of one (DUP) is not new.
    unsettled: BTreeSet<u16>,
    /// QoS 2 publishes of the session whose PUBREC went out and whose PUBREL has not come.
    awaiting_pubrel: usize,
    /// What each QoS 1/2 publish not yet acknowledged was assigned, by packet id: its DUP
    /// resend (on this connection or, through the session, a later one) is the same reading.
    readings: Assignments,
    /// MQTT 5 topic aliases the client set. `BTreeMap`s and `BTreeSet`s here: empty, they are
    /// 24 bytes with no random state (a `HashMap` is 48), and these sit in every connection's
    /// task, which an idle connection mostly is; none holds more than a window's worth.
    aliases: BTreeMap<u16, String>,
    refused: Refused,
    dead_lettered: u64,
}

impl Intake {
    /// Intake into `records`, for a session that has `awaiting_pubrel` QoS 2 publishes waiting
    /// for PUBREL and whose unacknowledged publishes were assigned `readings`.
    pub(super) fn new(
        records: mpsc::Sender<Record>,
        awaiting_pubrel: usize,
        readings: Assignments,
    ) -> Intake {
        Intake {
            records: Some(records),
            held: VecDeque::new(),
            held_acks: 0,
            unkept: Vec::new(),
            settle_to: None,
            settled: None,
            acks: AckQueue::default(),
            unsettled: BTreeSet::new(),
            awaiting_pubrel,
            readings,
            aliases: BTreeMap::new(),
            refused: Refused::default(),
            dead_lettered: 0,
        }
    }

    /// Whether intake still runs (it stops with the broker, or when the pipeline closes).
    pub(super) fn is_running(&self) -> bool {
        self.records.is_some()
    }

    /// Whether settlements may still come: intake runs, or acks it sent records out with are
    /// still to report.
    pub(super) fn awaits_settlements(&self) -> bool {
        self.settled.is_some()
    }

    /// Publishes read and not yet acknowledged.
    pub(super) fn outstanding(&self) -> usize {
        self.acks.outstanding()
    }

    /// Records read and not yet passed to the pipeline.
    pub(super) fn held(&self) -> usize {
        self.held.len()
    }

    /// Backpressure on reading: none while `max_inflight` records are held. A client that
    /// keeps to a window of `max_inflight` (an MQTT 5 client must; a 3.1.1 client is asked to
    /// in the README) is therefore always read, and its PINGREQs answered.
    pub(super) fn may_read(&self, client: &Client) -> bool {
        self.held.len() < usize::from(client.limits().max_inflight)
    }

    /// Whether another record may go to the pipeline: for 3.1.1, which has no receive maximum,
    /// only while fewer than `max_inflight` of this client's publishes there are not durable.
    fn may_forward(&self, client: &Client) -> bool {
        client.version == Version::V5
            || self.acks.outstanding() - self.held_acks < usize::from(client.limits().max_inflight)
    }

    /// Only while records wait for room in the pipeline: a clone of the sender to wait on.
    /// (Those that wait for earlier ones to be durable wait for a settlement instead.)
    pub(super) fn waiting_for_room(&self, client: &Client) -> Option<mpsc::Sender<Record>> {
        match !self.held.is_empty() && self.may_forward(client) {
            true => self.records.clone(),
            false => None,
        }
    }

    /// Passes what was read but still held on to the pipeline once the connection is gone: a
    /// QoS 0 reading has no other chance, and a QoS 1/2 one stored now is found already
    /// stored when the client resends it. Waits as long as the pipeline is full, unless intake
    /// stops (shutdown), which leaves QoS 1/2 readings to the client's resend.
    pub(super) async fn pass_on_held(&mut self, client: &Client, intake: &CancellationToken) {
        self.write_kept(client);
        let Some(records) = self.records.clone() else {
            return;
        };
        while let Some(record) = self.held.pop_front() {
            tokio::select! {
                sent = records.send(record) => if sent.is_err() { break },
                () = intake.cancelled() => break,
            }
        }
        self.held.clear();
        self.held_acks = 0;
    }

    /// Stages what held records were assigned, all in one go, before any of them goes on.
    pub(super) fn write_kept(&mut self, client: &Client) {
        if !self.unkept.is_empty() {
            client
                .context
                .registry
                .stage_kept(&client.client_id, &self.unkept);
            self.unkept.clear();
        }
    }

    /// Hands held records to the pipeline in order, the first into `permit` if given, more
    /// while the pipeline has room and `may_forward` allows.
    pub(super) fn forward_held(
        &mut self,
        client: &Client,
        mut permit: Option<mpsc::OwnedPermit<Record>>,
    ) {
        self.write_kept(client);
        while self.may_forward(client) {
            let Some(record) = self.held.pop_front() else {
                return;
            };
            let acked = record.message.qos != QoS::AtMostOnce;
            let passed = match (permit.take(), &self.records) {
                (Some(permit), _) => {
                    permit.send(record);
                    Ok(())
                }
                (None, Some(records)) => records.try_send(record),
                (None, None) => return,
            };
            match passed {
                Ok(()) => self.held_acks -= usize::from(acked),
                Err(mpsc::error::TrySendError::Full(record)) => {
                    self.held.push_front(record);
                    return;
                }
                Err(mpsc::error::TrySendError::Closed(_)) => {
                    warn!(client_id = %client.client_id, "pipeline closed; stopping intake");
                    self.stop(client);
                    return;
                }
            }
        }
    }

    pub(super) fn stop(&mut self, client: &Client) {
        debug!(client_id = %client.client_id, outstanding = self.acks.outstanding(), "stopping intake");
        self.records = None;
        self.settle_to = None;
        // Not in the pipeline, so never settled: unacknowledged, the client sends them again.
        self.held.clear();
        self.held_acks = 0;
    }

    pub(super) fn on_publish(
        &mut self,
        client: &Client,
        out: &mut Outbound,
        publish: Publish,
    ) -> Option<End> {
        let topic = match publish.topic_alias {
            Some(alias)
                if client.version != Version::V5 || alias == 0 || alias > TOPIC_ALIAS_MAX =>
            {
                return Some(End::Violation(
                    Goodbye::TopicAliasInvalid,
                    format!("topic alias {alias} out of range"),
                ));
            }
            Some(alias) if publish.topic.is_empty() => match self.aliases.get(&alias) {
                Some(topic) => topic.clone(),
                None => {
                    return Some(End::Violation(
                        Goodbye::ProtocolError,
                        format!("unknown topic alias {alias}"),
                    ));
                }
            },
            Some(alias) => {
                self.aliases.insert(alias, publish.topic.clone());
                publish.topic
            }
            None => publish.topic,
        };
        if topic.is_empty() || topic.contains(['+', '#', '\0']) {
            return Some(End::Violation(
                Goodbye::ProtocolError,
                format!("invalid topic name {topic:?}"),
            ));
        }
        let qos = publish.qos;
        let pkid = publish.pkid;
        // A resend of a publish not yet durable: its PUBACK or PUBREC follows when the first
        // copy is. Taken in again, it would get a second PUBACK, which could acknowledge a later
        // publish that reuses the packet id before that one is stored.
        if qos > QoS::AtMostOnce
            && self.unsettled.contains(&pkid)
            && (qos == QoS::ExactlyOnce || publish.dup)
        {
            return None;
        }
        let context = &client.context;
        if qos == QoS::ExactlyOnce && context.registry.is_awaiting_pubrel(&client.client_id, pkid) {
            out.reply(&Reply::PubRec {
                pkid,
                reason: AckReason::Success,
            });
            return None;
        }
        // A QoS 2 publish counts against our receive maximum until its PUBCOMP goes out, not
        // only until its PUBREC (MQTT 5 §4.9); resends, handled above, count once.
        if qos > QoS::AtMostOnce
            && client.version == Version::V5
            && self.acks.outstanding() + self.awaiting_pubrel
                >= usize::from(context.limits.max_inflight)
        {
            return Some(End::Violation(
                Goodbye::ReceiveMaximumExceeded,
                format!(
                    "more than {} unacknowledged publishes",
                    context.limits.max_inflight
                ),
            ));
        }
        if topic.starts_with('$') || !context.auth.may_publish(&client.identity, &topic) {
            let reason = if topic.starts_with('$') {
                AckReason::TopicNameInvalid
            } else {
                AckReason::NotAuthorized
            };
            self.refuse(client, &topic, reason);
            if qos > QoS::AtMostOnce {
                let token = self.acks.push(Pending { pkid, qos, reason });
                self.acks.settle(token);
                self.release_acks(client, out);
            }
            return None;
        }
        let assigned = self.assign(qos, publish.dup, pkid);
        // Nothing goes on once intake stopped.
        self.records.as_ref()?;
        let delivery = Delivery::arrived(
            &topic,
            publish.payload.clone(),
            qos,
            publish.retain,
            &publish.properties,
            SystemTime::now(),
        );
        context.registry.publish(&client.client_id, &delivery);
        let ack = match qos {
            QoS::AtMostOnce => Ack::none(),
            _ => {
                self.unsettled.insert(pkid);
                let token = self.acks.push(Pending {
                    pkid,
                    qos,
                    reason: AckReason::Success,
                });
                Ack::new(self.settle_to(), token)
            }
        };
        metrics::message_in(metrics::Source::Broker);
        let record = Record {
            message: Message {
                topic,
                payload: Arc::from(&publish.payload[..]),
                qos,
                retain: publish.retain,
                reading: assigned.reading,
                received_at: assigned.received_at,
                user_properties: publish.properties.user_properties,
            },
            ack,
        };
        // Behind any held before it: records keep arrival order. They go on once the buffer
        // is parsed (or the held ones reach the limit), after one write of their assignments.
        self.held_acks += usize::from(qos != QoS::AtMostOnce);
        self.held.push_back(record);
        None
    }

    /// PUBREL: the QoS 2 exchange of `pkid` is complete.
    pub(super) fn on_pubrel(&mut self, client: &Client, out: &mut Outbound, pkid: u16) {
        if client.context.registry.release(&client.client_id, pkid) {
            self.awaiting_pubrel = self.awaiting_pubrel.saturating_sub(1);
        }
        out.reply(&Reply::PubComp(pkid));
    }

    /// The publish's identity (see `Assignments::assign`); a new one of QoS 1/2 is written to
    /// the store with the rest of the buffer before its record goes on.
    fn assign(&mut self, qos: QoS, dup: bool, pkid: u16) -> Assigned {
        if qos == QoS::AtMostOnce {
            return Assigned::now();
        }
        let (assigned, new) = self.readings.assign(pkid, dup, Assigned::now);
        if new {
            self.unkept.push((pkid, assigned));
        }
        assigned
    }

    /// Where an `Ack` reports back (only while intake runs). The channel is opened on demand
    /// and closed when nothing is outstanding, since most connections are idle between
    /// readings and an open one takes 1 KB.
    fn settle_to(&mut self) -> mpsc::UnboundedSender<Settled> {
        if let Some(to) = &self.settle_to {
            return to.clone();
        }
        let (to, settled) = mpsc::unbounded_channel();
        self.settle_to = Some(to.clone());
        self.settled = Some(settled);
        to
    }

    fn refuse(&mut self, client: &Client, topic: &str, reason: AckReason) {
        self.refused.count += 1;
        if self.refused.count == 1 {
            warn!(
                client_id = %client.client_id,
                topic,
                reason = ?reason,
                "publish refused; further refusals on this connection are counted"
            );
        }
    }

    /// The next settlement, if there is a channel (until then, never).
    pub(super) async fn next_settled(&mut self) -> Option<Settled> {
        match self.settled.as_mut() {
            Some(settled) => settled.recv().await,
            None => std::future::pending().await,
        }
    }

    /// Takes in `done` and whatever else settled meanwhile, and sends the acks they release.
    pub(super) fn on_settled(&mut self, client: &Client, out: &mut Outbound, done: Settled) {
        self.settle(done);
        while let Some(more) = self.settled.as_mut().and_then(|s| s.try_recv().ok()) {
            self.settle(more);
        }
        self.release_acks(client, out);
        if self.acks.outstanding() == 0 {
            // No `Ack` is left to send on it (`settle_to()`).
            self.settle_to = None;
            self.settled = None;
        }
    }

    /// The settlements channel closed (intake stopped and every `Ack` is gone).
    pub(super) fn on_settlements_closed(&mut self) {
        self.settled = None;
    }

    fn settle(&mut self, done: Settled) {
        let dead = done.how == Settlement::DeadLettered;
        if dead {
            self.dead_lettered += 1;
        }
        self.acks.settle_with(done.token, |pending| {
            if dead {
                pending.reason = AckReason::PayloadFormatInvalid;
            }
        });
    }

    /// Sends PUBACK / PUBREC for the unbroken run of settled publishes, in arrival order.
    fn release_acks(&mut self, client: &Client, out: &mut Outbound) {
        let registry = &client.context.registry;
        let ready = self.acks.pop_ready();
        // An error reason ends a QoS 2 exchange: no PUBREL follows (MQTT 5 §4.3.3).
        for pending in &ready {
            if pending.qos == QoS::ExactlyOnce && !pending.reason.is_error() {
                registry.await_pubrel(&client.client_id, pending.pkid);
                self.awaiting_pubrel += 1;
            }
        }
        // On disk before the acknowledgements go out (they are flushed after this returns):
        // the ids now awaiting PUBREL and what these publishes caused in the registry, and
        // their assignments forgotten.
        let forget = self
            .readings
            .forget_each(ready.iter().map(|pending| pending.pkid));
        if ready.iter().any(|pending| pending.qos != QoS::AtMostOnce) {
            registry.before_acks(&client.client_id, &forget);
        }
        for pending in ready {
            tracing::trace!(client_id = %client.client_id, ?pending, "ack");
            match pending.qos {
                QoS::AtMostOnce => {}
                QoS::AtLeastOnce => {
                    self.unsettled.remove(&pending.pkid);
                    out.reply(&Reply::PubAck {
                        pkid: pending.pkid,
                        reason: pending.reason,
                    });
                }
                QoS::ExactlyOnce => {
                    self.unsettled.remove(&pending.pkid);
                    out.reply(&Reply::PubRec {
                        pkid: pending.pkid,
                        reason: pending.reason,
                    });
                }
            }
        }
    }

    /// Logs what the connection's end leaves to say about intake: refusals beyond the first,
    /// and dead letters a 3.1.1 client was not told of.
    pub(super) fn report(&self, client: &Client) {
        if self.refused.count > 1 {
            warn!(client_id = %client.client_id, refused = self.refused.count, "publishes refused on this connection");
        }
        if self.dead_lettered > 0 && client.version == Version::V311 {
            info!(
                client_id = %client.client_id,
                dead_lettered = self.dead_lettered,
                "publishes dead-lettered (acknowledged: 3.1.1 cannot say otherwise)"
            );
        }
    }

    /// What the session keeps for the client's next connection: the assignments of its
    /// publishes not yet acknowledged.
    pub(super) fn take_readings(&mut self) -> Assignments {
        std::mem::take(&mut self.readings)
    }

    /// The records sender, for the will, once the connection is done with it.
    pub(super) fn take_records(&mut self) -> Option<mpsc::Sender<Record>> {
        self.records.take()
    }
}

/// Room for one record on `sender` (which the caller only polls when it is `Some`).
pub(super) async fn reserve(
    sender: Option<mpsc::Sender<Record>>,
) -> Result<mpsc::OwnedPermit<Record>, mpsc::error::SendError<()>> {
    match sender {
        // Boxed: inline, this wait would be part of every connection's task, when only one
        // that a full pipeline holds back waits here.
        Some(sender) => Box::pin(sender.reserve_owned()).await,
        None => std::future::pending().await,
    }
}

#[cfg(test)]
mod tests;
