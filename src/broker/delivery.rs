//! A message on its way to subscribers, as the registry fans it out, queues it and keeps it
//! retained. Its own module so that the retained store and the registry can both use it
//! without importing each other.

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use bytes::Bytes;

use super::codec::MessageProperties;
use crate::record::QoS;
use crate::topic::TopicFilter;

/// A message on its way to a subscriber.
#[derive(Debug, Clone)]
pub struct Delivery {
    /// The shared subscription (`$share/<group>/<filter>`) it was given out through, if any:
    /// should its member's session end before acknowledging it, another member gets it.
    /// One word (a thin `Arc`), since every delivery carries it.
    pub share: Option<Arc<TopicFilter>>,
    pub topic: Arc<str>,
    pub payload: Bytes,
    pub qos: QoS,
    pub retain: bool,
    /// The publisher's MQTT 5 properties, if it set any, shared by every copy.
    pub properties: Option<Arc<MessageProperties>>,
    /// When its Message Expiry Interval (counted from its arrival) runs out.
    pub expires_at: Option<SystemTime>,
    /// The identifiers of the subscriptions it matched, for this subscriber (MQTT 5 §3.3.4).
    pub subscription_ids: Vec<u32>,
}

impl Delivery {
    /// A message that arrived `now` from a publisher.
    pub fn arrived(
        topic: &str,
        payload: Bytes,
        qos: QoS,
        retain: bool,
        properties: &MessageProperties,
        now: SystemTime,
    ) -> Delivery {
        Delivery {
            share: None,
            topic: Arc::from(topic),
            payload,
            qos,
            retain,
            properties: (!properties.is_empty()).then(|| Arc::new(properties.clone())),
            expires_at: properties
                .message_expiry_s
                .map(|s| now + Duration::from_secs(u64::from(s))),
            subscription_ids: Vec::new(),
        }
    }

    /// Whether its expiry interval has run out: then it is no longer sent (MQTT-3.3.2-5).
    pub fn expired(&self, now: SystemTime) -> bool {
        self.expires_at.is_some_and(|at| at <= now)
    }

    /// The expiry interval a copy sent `now` carries: what is left of the publisher's, in
    /// whole seconds rounded up (MQTT-3.3.2-6).
    pub fn expiry_left(&self, now: SystemTime) -> Option<u32> {
        self.expires_at.map(|at| {
            let left = at.duration_since(now).unwrap_or_default();
            let secs = left.as_secs() + u64::from(left.subsec_nanos() > 0);
            u32::try_from(secs).unwrap_or(u32::MAX)
        })
    }
}
