//! The one type that flows through the system: a `Record` is an MQTT message plus the handle
//! that acknowledges it once it is durable.
//!
//! The ack handle is deliberately transport-neutral: it carries only a token and a channel
//! back to whoever produced the record (the upstream subscriber, the embedded broker, the
//! spool's shipper). The producer decides what "ack" means on its side (a PUBACK in arrival
//! order, a PUBREC, an fsync'd spool offset); the sink only reports how the record settled.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use chrono::{DateTime, Utc};
use tokio::sync::mpsc;

use crate::reading::ReadingId;

/// MQTT quality of service, independent of any client library's enum.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, serde::Serialize)]
pub enum QoS {
    AtMostOnce = 0,
    AtLeastOnce = 1,
    ExactlyOnce = 2,
}

impl QoS {
    pub fn level(self) -> u8 {
        self as u8
    }

    /// The QoS of an MQTT level; `None` for anything but 0, 1 and 2.
    pub fn from_level(level: u8) -> Option<QoS> {
        match level {
            0 => Some(QoS::AtMostOnce),
            1 => Some(QoS::AtLeastOnce),
            2 => Some(QoS::ExactlyOnce),
            _ => None,
        }
    }

    /// As rumqttc's MQTT 3.1.1 codec names it.
    pub fn v4(self) -> rumqttc::mqttbytes::QoS {
        match self {
            QoS::AtMostOnce => rumqttc::mqttbytes::QoS::AtMostOnce,
            QoS::AtLeastOnce => rumqttc::mqttbytes::QoS::AtLeastOnce,
            QoS::ExactlyOnce => rumqttc::mqttbytes::QoS::ExactlyOnce,
        }
    }

    /// As rumqttc's MQTT 5 codec names it.
    pub fn v5(self) -> rumqttc::v5::mqttbytes::QoS {
        match self {
            QoS::AtMostOnce => rumqttc::v5::mqttbytes::QoS::AtMostOnce,
            QoS::AtLeastOnce => rumqttc::v5::mqttbytes::QoS::AtLeastOnce,
            QoS::ExactlyOnce => rumqttc::v5::mqttbytes::QoS::ExactlyOnce,
        }
    }

    /// The QoS of a level checked before (by the codec, the settings or a store that wrote it):
    /// anything above 2 reads as 2.
    pub fn saturating(level: u8) -> QoS {
        QoS::from_level(level).unwrap_or(QoS::ExactlyOnce)
    }
}

/// An MQTT application message as it arrived, before any pipeline touched it.
#[derive(Debug, Clone)]
pub struct Message {
    pub topic: String,
    /// Shared so that a dead letter written late (after a 400 from Elasticsearch) still has the
    /// raw bytes without the pipeline having copied them.
    pub payload: Arc<[u8]>,
    pub qos: QoS,
    pub retain: bool,
    /// Assigned once when the message first arrived (see `reading`): a redelivery of this
    /// message carries the same id and receive time.
    pub reading: ReadingId,
    pub received_at: DateTime<Utc>,
    /// MQTT 5 user properties, in the order the client sent them.
    pub user_properties: Vec<(String, String)>,
}

/// How a record ended up durable. Every variant means "the producer may acknowledge it".
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Settlement {
    /// Elasticsearch confirmed the document (or already held this reading: a 409 on its id).
    Stored,
    /// The record went to the dead-letter store (Elasticsearch stream or local file) with a reason.
    DeadLettered,
    /// A pipeline's drop condition discarded it on purpose.
    Dropped,
    /// Fsynced in the local spool (`delivery: spool`), to be shipped from there.
    Spooled,
}

/// Sent back to the producer when a record settles.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Settled {
    pub token: u64,
    pub how: Settlement,
}

/// The producer's side of acknowledgement: the receiver for this sender lives in the task that
/// owns the MQTT connection (or broker session). Unbounded on purpose: the number of tokens
/// outstanding is already bounded by MQTT flow control and the pipeline channels, and a settle
/// must never block the sink.
pub type SettledSender = mpsc::UnboundedSender<Settled>;

/// Acknowledges one record when it is durable. Not `Clone`: exactly one party settles it.
///
/// Dropping an ack without settling it means "not durable": nothing is sent, and the producer
/// never acknowledges the message, so the MQTT peer redelivers it (persistent session, or the
/// device's own retry). That is what happens to in-flight records at shutdown.
#[derive(Debug)]
#[must_use = "an ack that is dropped without settle() leaves the message unacknowledged"]
pub struct Ack {
    /// Where to report, the token, and the count in `mqtt2es_acks_pending` if someone waits.
    route: Option<(SettledSender, u64, Option<Owed>)>,
}

/// Acks someone waits for, alive and not yet settled: the gauge `mqtt2es_acks_pending`. Kept
/// here rather than in `metrics` so that the ack does not depend on the module that reads it.
static PENDING: AtomicU64 = AtomicU64::new(0);

/// QoS 1 and 2 messages whose acknowledgement waits for them to be durable, now.
pub fn acks_pending() -> u64 {
    PENDING.load(Ordering::Relaxed)
}

/// Counts one ack in a gauge for as long as it lives: whether the ack is settled or dropped,
/// the count goes down exactly once.
#[derive(Debug)]
struct Owed(&'static AtomicU64);

impl Owed {
    fn new(gauge: &'static AtomicU64) -> Self {
        gauge.fetch_add(1, Ordering::Relaxed);
        Owed(gauge)
    }
}

impl Drop for Owed {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

impl Ack {
    /// For QoS 0 messages and tools (`mqtt2es try`): nobody waits for this one.
    pub fn none() -> Self {
        Ack { route: None }
    }

    pub fn new(to: SettledSender, token: u64) -> Self {
        Ack {
            route: Some((to, token, Some(Owed::new(&PENDING)))),
        }
    }

    /// For the spool's shipper: reported like any ack, but no device waits for it (it was
    /// acknowledged when its record was spooled), so it is not counted as pending.
    pub fn awaited_by_nobody(to: SettledSender, token: u64) -> Self {
        Ack {
            route: Some((to, token, None)),
        }
    }

    /// Reports the record as durable. A producer that went away (connection closed) is not an
    /// error: its broker will redeliver, and the deterministic id makes that harmless.
    pub fn settle(self, how: Settlement) {
        if let Some((to, token, _owed)) = self.route {
            let _ = to.send(Settled { token, how });
        }
    }
}

/// A message and its ack handle.
#[derive(Debug)]
pub struct Record {
    pub message: Message,
    pub ack: Ack,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn settling_an_ack_reports_its_token_and_outcome() {
        let (tx, mut rx) = mpsc::unbounded_channel();
        Ack::new(tx, 7).settle(Settlement::Stored);
        assert_eq!(
            rx.try_recv().expect("a settlement"),
            Settled {
                token: 7,
                how: Settlement::Stored
            }
        );
    }

    #[test]
    fn an_owed_ack_is_counted_until_it_is_dropped() {
        // A gauge of its own: other tests create and settle acks in parallel with this one.
        static GAUGE: AtomicU64 = AtomicU64::new(0);
        let first = Owed::new(&GAUGE);
        let second = Owed::new(&GAUGE);
        assert_eq!(GAUGE.load(Ordering::Relaxed), 2);
        drop(first);
        assert_eq!(GAUGE.load(Ordering::Relaxed), 1);
        drop(second);
        assert_eq!(GAUGE.load(Ordering::Relaxed), 0);
    }

    #[test]
    fn an_ack_nobody_waits_for_is_reported_but_not_counted_as_pending() {
        let (tx, mut rx) = mpsc::unbounded_channel();
        let shipped = Ack::awaited_by_nobody(tx.clone(), 3);
        assert!(matches!(&shipped.route, Some((_, 3, None))));
        assert!(matches!(&Ack::new(tx, 4).route, Some((_, 4, Some(_)))));
        shipped.settle(Settlement::Stored);
        assert_eq!(rx.try_recv().expect("a settlement").token, 3);
    }

    #[test]
    fn dropping_an_ack_reports_nothing() {
        let (tx, mut rx) = mpsc::unbounded_channel::<Settled>();
        drop(Ack::new(tx, 1));
        assert!(rx.try_recv().is_err());
    }
}
