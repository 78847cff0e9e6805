//! Which subscription of a session a message matches, and at what QoS it is delivered.
//!
//! Pure: the registry calls it for every session that has subscriptions. One delivery per
//! session however many of its filters match (MQTT 5 §3.3.4 allows either; one copy is what
//! Mosquitto does and what `mosquitto_sub -t a/# -t a/+` users expect), at the highest QoS
//! granted among the matching filters, capped by the QoS the message was published with.

use super::session::Subscription;
use crate::record::QoS;

/// The QoS to deliver `topic` (published at `published`) with to a session holding
/// `subscriptions`, or `None` if none matches. `own` is whether the publisher is this session:
/// MQTT 5 "no local" subscriptions skip the session's own messages.
pub fn delivery_qos(
    subscriptions: &[Subscription],
    topic: &str,
    published: QoS,
    own: bool,
) -> Option<QoS> {
    subscriptions
        .iter()
        .filter(|s| !(own && s.no_local) && s.filter.matches(topic))
        .map(|s| s.qos)
        .max()
        .map(|granted| granted.min(published))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::topic::TopicFilter;

    fn sub(filter: &str, qos: QoS, no_local: bool) -> Subscription {
        Subscription {
            filter: TopicFilter::parse(filter).expect("filter"),
            qos,
            no_local,
        }
    }

    #[test]
    fn overlapping_filters_give_one_delivery_at_the_highest_granted_qos() {
        let subs = [
            sub("test/#", QoS::AtMostOnce, false),
            sub("test/+", QoS::AtLeastOnce, false),
        ];
        assert_eq!(
            delivery_qos(&subs, "test/a", QoS::ExactlyOnce, false),
            Some(QoS::AtLeastOnce)
        );
    }

    #[test]
    fn the_delivery_qos_never_exceeds_the_published_qos() {
        let subs = [sub("#", QoS::ExactlyOnce, false)];
        assert_eq!(
            delivery_qos(&subs, "a", QoS::AtMostOnce, false),
            Some(QoS::AtMostOnce)
        );
    }

    #[test]
    fn a_no_local_subscription_skips_the_sessions_own_messages() {
        let subs = [sub("a", QoS::AtLeastOnce, true)];
        assert_eq!(delivery_qos(&subs, "a", QoS::AtLeastOnce, true), None);
        assert!(delivery_qos(&subs, "a", QoS::AtLeastOnce, false).is_some());
    }

    #[test]
    fn wildcards_do_not_reach_dollar_topics() {
        let subs = [sub("#", QoS::AtLeastOnce, false)];
        assert_eq!(
            delivery_qos(&subs, "$SYS/uptime", QoS::AtLeastOnce, false),
            None
        );
    }
}
