//! Deliveries to the client: what the registry fans out to it, queued until its receive
//! maximum allows, sent under packet ids of our own, and tracked until PUBACK or PUBCOMP.
//!
//! The decision a reader would question: a delivery waiting at the front of the queue holds
//! back everything behind it, QoS 0 too, while the window is full. Messages keep the order
//! they were published in, as a subscriber expects, at the price that a slow acknowledger also
//! delays its QoS 0 traffic.

use std::collections::{BTreeMap, VecDeque};
use std::time::SystemTime;

use tokio::sync::mpsc;

use super::socket::Outbound;
use crate::broker::codec::{Outgoing, Reply};
use crate::broker::session::{Delivery, Unfinished};
use crate::record::QoS;

/// Where an outgoing QoS 1/2 delivery stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Stage {
    /// Waiting for PUBACK (QoS 1), PUBREC or PUBCOMP (QoS 2).
    Ack,
    Rec,
    Comp,
}

/// What goes to the client, queued and in flight.
pub(super) struct Deliveries {
    /// The client's receive maximum: outgoing QoS 1/2 deliveries in flight at most.
    receive_maximum: u16,
    pending: VecDeque<Delivery>,
    inflight: BTreeMap<u16, (Delivery, Stage)>,
    next_pkid: u16,
    /// What the registry fans out to this client, once it has a subscription.
    fanned_out: Option<mpsc::Receiver<Delivery>>,
}

impl Deliveries {
    /// Deliveries to a client whose receive maximum is `receive_maximum`, starting with what
    /// its session `queued` while it was away.
    pub(super) fn new(
        receive_maximum: u16,
        queued: Vec<Delivery>,
        fanned_out: Option<mpsc::Receiver<Delivery>>,
    ) -> Deliveries {
        Deliveries {
            receive_maximum,
            pending: queued.into(),
            inflight: BTreeMap::new(),
            next_pkid: 0,
            fanned_out,
        }
    }

    /// Where the registry fans out to this client from now on (its first subscription).
    pub(super) fn fan_out_to(&mut self, fanned_out: mpsc::Receiver<Delivery>) {
        self.fanned_out = Some(fanned_out);
    }

    /// Queues `deliveries` (retained messages for a new subscription) behind what waits.
    pub(super) fn queue(&mut self, deliveries: impl IntoIterator<Item = Delivery>) {
        self.pending.extend(deliveries);
    }

    /// The next batch the registry fanned out, queued: waits for its first delivery, then
    /// takes what else is there. `None` when the registry closed the channel; never while
    /// there is none.
    pub(super) async fn fanned_out(&mut self) -> Option<()> {
        let delivery = match self.fanned_out.as_mut() {
            Some(fanned_out) => fanned_out.recv().await,
            None => std::future::pending().await,
        }?;
        self.pending.push_back(delivery);
        while let Some(more) = self.fanned_out.as_mut().and_then(|d| d.try_recv().ok()) {
            self.pending.push_back(more);
        }
        Some(())
    }

    /// Sends again what the session's last connection had in flight, under the same packet
    /// ids (MQTT-4.4.0-1): a PUBLISH with DUP set, or the PUBREL of one whose PUBREC came.
    pub(super) fn resume(&mut self, out: &mut Outbound, unfinished: Vec<Unfinished>) {
        for Unfinished {
            pkid,
            delivery,
            released,
        } in unfinished
        {
            let stage = if released {
                out.reply(&Reply::PubRel(pkid));
                Stage::Comp
            } else {
                let resent = outgoing(&delivery, pkid, true, SystemTime::now());
                let sent = out.reply(&Reply::Publish(resent));
                if !sent {
                    continue;
                }
                match delivery.qos {
                    QoS::ExactlyOnce => Stage::Rec,
                    _ => Stage::Ack,
                }
            };
            self.inflight.insert(pkid, (delivery, stage));
        }
    }

    /// Writes queued deliveries while the client's receive maximum allows; those whose expiry
    /// interval ran out while they waited are dropped (MQTT-3.3.2-5).
    pub(super) fn send_pending(&mut self, out: &mut Outbound) {
        let now = SystemTime::now();
        while let Some(front) = self.pending.front() {
            if front.expired(now) {
                self.pending.pop_front();
                continue;
            }
            if front.qos > QoS::AtMostOnce
                && self.inflight.len() >= usize::from(self.receive_maximum)
            {
                return;
            }
            let Some(delivery) = self.pending.pop_front() else {
                return;
            };
            let pkid = match delivery.qos {
                QoS::AtMostOnce => 0,
                _ => self.next_free_pkid(),
            };
            let sent = out.reply(&Reply::Publish(outgoing(&delivery, pkid, false, now)));
            if sent && delivery.qos > QoS::AtMostOnce {
                let stage = match delivery.qos {
                    QoS::ExactlyOnce => Stage::Rec,
                    _ => Stage::Ack,
                };
                self.inflight.insert(pkid, (delivery, stage));
            }
        }
    }

    fn next_free_pkid(&mut self) -> u16 {
        loop {
            self.next_pkid = self.next_pkid.wrapping_add(1).max(1);
            if !self.inflight.contains_key(&self.next_pkid) {
                return self.next_pkid;
            }
        }
    }

    /// PUBACK: a QoS 1 delivery is done, which may make room for the next.
    pub(super) fn on_puback(&mut self, out: &mut Outbound, pkid: u16) {
        if let Some((_, Stage::Ack)) = self.inflight.get(&pkid) {
            self.inflight.remove(&pkid);
        }
        self.send_pending(out);
    }

    /// PUBREC: a QoS 2 delivery arrived; we release it.
    pub(super) fn on_pubrec(&mut self, out: &mut Outbound, pkid: u16) {
        if let Some((_, stage)) = self.inflight.get_mut(&pkid) {
            *stage = Stage::Comp;
        }
        out.reply(&Reply::PubRel(pkid));
    }

    /// PUBCOMP: a QoS 2 delivery is done, which may make room for the next.
    pub(super) fn on_pubcomp(&mut self, out: &mut Outbound, pkid: u16) {
        self.inflight.remove(&pkid);
        self.send_pending(out);
    }

    /// What the session keeps once the connection ends, for its next one: those in flight
    /// under their packet ids, and those not sent yet (queued, or still in the channel).
    pub(super) fn hand_back(&mut self) -> (Vec<Unfinished>, Vec<Delivery>) {
        let unfinished = std::mem::take(&mut self.inflight)
            .into_iter()
            .map(|(pkid, (delivery, stage))| Unfinished {
                pkid,
                delivery,
                released: stage == Stage::Comp,
            })
            .collect();
        let mut unsent: Vec<Delivery> = self.pending.drain(..).collect();
        if let Some(fanned_out) = &mut self.fanned_out {
            fanned_out.close();
            while let Ok(delivery) = fanned_out.try_recv() {
                unsent.push(delivery);
            }
        }
        (unfinished, unsent)
    }
}

/// The PUBLISH that carries `delivery` to its subscriber under `pkid`, sent `now` (what is left
/// of its expiry interval goes with it).
fn outgoing(delivery: &Delivery, pkid: u16, dup: bool, now: SystemTime) -> Outgoing {
    Outgoing {
        topic: delivery.topic.to_string(),
        payload: delivery.payload.clone(),
        qos: delivery.qos,
        retain: delivery.retain,
        dup,
        pkid,
        properties: delivery.properties.clone(),
        message_expiry_s: delivery.expiry_left(now),
        subscription_ids: delivery.subscription_ids.clone(),
    }
}

#[cfg(test)]
mod tests;
