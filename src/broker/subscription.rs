//! One subscription of a session: its filter and options. Its own module so that the router
//! (which picks a QoS from them) and the registry (which keeps them) do not import each other.

use crate::record::QoS;
use crate::topic::TopicFilter;

#[derive(Debug, Clone)]
pub struct Subscription {
    pub filter: TopicFilter,
    pub qos: QoS,
    pub no_local: bool,
    /// MQTT 5 Retain As Published: live deliveries keep the publisher's RETAIN flag.
    pub retain_as_published: bool,
    /// MQTT 5 Subscription Identifier, sent with every message the subscription matches.
    pub id: Option<u32>,
    /// Topics the ACL denies this client that the filter would match (see `auth::acl`):
    /// messages on them are not delivered through it.
    pub except: Vec<TopicFilter>,
}

impl Subscription {
    /// Whether a message on `topic` is delivered through this subscription.
    pub fn matches(&self, topic: &str) -> bool {
        self.filter.matches(topic) && !self.except.iter().any(|e| e.matches(topic))
    }
}
