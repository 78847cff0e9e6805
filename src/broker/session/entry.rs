//! One client id's session as the registry holds it: its subscriptions, its expiry, the QoS 2
//! ids awaiting PUBREL, its offline queue, what its last connection left unfinished, and the
//! connection (if any) that holds it now.
//!
//! A session's delivery channel is opened when it first has a subscription (`open_deliveries`),
//! not when a connection attaches: a channel costs close to 3 KB before its first message, and
//! most devices never subscribe.

use std::collections::{BTreeSet, HashMap};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use super::handover::Handover;
use super::queue::Queue;
use crate::broker::delivery::Delivery;
use crate::broker::share::Reach;
use crate::broker::subscription::Subscription;
use crate::reading::Assignments;
use crate::record::QoS;

/// Deliveries buffered for one live subscriber before further ones for it are dropped.
const DELIVERY_CAPACITY: usize = 1024;

/// The connection that owns a session now.
#[derive(Debug, Clone)]
pub struct Attached {
    pub connection: u64,
    /// Opened by the registry once the session has a subscription (`open_deliveries`): a
    /// channel takes close to 3 KB before its first message, and most devices never subscribe.
    pub deliver: Option<mpsc::Sender<Delivery>>,
    /// Kicked to take the session over (the connection says goodbye and ends); the connection
    /// says when it has handed the session back.
    pub handover: Arc<Handover>,
}

/// Every session by client id. Boxed: a hash table keeps up to half its slots free, and a
/// session inline (232 bytes) made each slot 257 bytes, about 420 of every connection's bytes
/// at 10,000 of them; boxed, a slot is 33 bytes.
pub type Sessions = HashMap<String, Box<Session>>;

#[derive(Debug, Default)]
pub struct Session {
    pub subscriptions: Vec<Subscription>,
    /// Seconds the session outlives its connection; `u32::MAX` means forever (3.1.1).
    pub expiry_s: u32,
    pub awaiting_pubrel: BTreeSet<u16>,
    /// What the client's unacknowledged publishes were assigned, kept while it is away so that
    /// its resends after reconnecting are the same readings (held by the connection meanwhile).
    pub readings: Assignments,
    /// QoS 1/2 messages for it while it is offline (see `queue`).
    pub queued: Queue,
    /// What its last connection had in flight, kept while it is away (see `Unfinished`).
    pub unfinished: Vec<Unfinished>,
    pub disconnected_at: Option<SystemTime>,
    pub attached: Option<Attached>,
    /// The connection that attached last (0: none since this process started), so a delayed
    /// will can tell a reconnect that has already left again from no reconnect at all.
    pub last_connection: u64,
    /// Cancelled when the session ends while its last connection's will waits out its delay:
    /// the will is then published at once (MQTT 5 §3.1.2.5, "or the Session ends").
    pub will_waiting: Option<CancellationToken>,
}

impl Session {
    /// Gives the attached connection its delivery channel once the session has a subscription;
    /// the receiving end, for that connection, when it was opened now. Fan-out only reaches
    /// sessions with subscriptions, so none is missed for want of a channel.
    pub(super) fn open_deliveries(&mut self) -> Option<mpsc::Receiver<Delivery>> {
        let attached = self.attached.as_mut()?;
        if self.subscriptions.is_empty() || attached.deliver.is_some() {
            return None;
        }
        let (deliver, deliveries) = mpsc::channel(DELIVERY_CAPACITY);
        attached.deliver = Some(deliver);
        Some(deliveries)
    }

    /// How a message at `qos` reaches this session now as a member of a shared subscription.
    pub(super) fn reach(&self, qos: QoS) -> Reach {
        let Some(attached) = &self.attached else {
            // Offline sessions exist only while they outlive their connection.
            return match qos {
                QoS::AtMostOnce => Reach::Unreachable,
                _ if self.expired(SystemTime::now()) => Reach::Unreachable,
                _ => Reach::Queue,
            };
        };
        match &attached.deliver {
            // Its connection is ending and hands the session back next (`detach`), queue
            // included: kept for the session, or handed on if the session ends.
            Some(deliver) if deliver.is_closed() && qos > QoS::AtMostOnce => Reach::Queue,
            // Only the registry sends, under its lock: room now is room for this one.
            Some(deliver) if !deliver.is_closed() && deliver.capacity() > 0 => Reach::Live,
            _ => Reach::Unreachable,
        }
    }

    /// Its subscription `filter`, if it has one.
    pub(super) fn subscription(&self, filter: &str) -> Option<&Subscription> {
        self.subscriptions
            .iter()
            .find(|s| s.filter.as_str() == filter)
    }

    pub(super) fn expired(&self, now: SystemTime) -> bool {
        match (self.attached.is_some(), self.disconnected_at) {
            (false, Some(at)) if self.expiry_s != u32::MAX => {
                at + Duration::from_secs(u64::from(self.expiry_s)) <= now
            }
            _ => false,
        }
    }
}

/// An outgoing QoS 1/2 message whose client had not finished acknowledging it when its
/// connection ended: sent again on reconnect under the same packet id (MQTT-4.4.0-1), as a
/// PUBLISH with DUP set or, once its PUBREC had come, as a PUBREL.
#[derive(Debug, Clone)]
pub struct Unfinished {
    pub pkid: u16,
    pub delivery: Delivery,
    /// PUBREC came and PUBREL went out: only PUBCOMP is missing.
    pub released: bool,
}

/// What `queue` trims when the queues together are over a bound: it knows sessions only as
/// what holds a queue (boxed, as `Sessions` keeps them).
impl AsMut<Queue> for Box<Session> {
    fn as_mut(&mut self) -> &mut Queue {
        &mut self.queued
    }
}
