//! Which subscription of a session a message matches, and at what QoS it is delivered.
//!
//! Pure: the registry calls it for every session that has subscriptions. One delivery per
//! session however many of its filters match (MQTT 5 §3.3.4 allows either; one copy is what
//! Mosquitto does and what `mosquitto_sub -t a/# -t a/+` users expect), at the highest QoS
//! granted among the matching filters, capped by the QoS the message was published with.
//! Shared subscriptions (`$share/…`) are not counted here: their group gives a message to one
//! member (`share`), whatever that member's other subscriptions got.

use super::subscription::Subscription;
use crate::record::QoS;

/// How a message reaches a session whose subscriptions match it.
#[derive(Debug, PartialEq, Eq)]
pub struct Match {
    pub qos: QoS,
    /// Whether a matching subscription asked for Retain As Published (MQTT 5).
    pub retain_as_published: bool,
    /// The identifiers of every matching subscription that has one: one copy carries them
    /// all (MQTT-3.3.4-3).
    pub ids: Vec<u32>,
}

/// How to deliver `topic` (published at `published`) to a session holding `subscriptions`, or
/// `None` if none matches. `own` is whether the publisher is this session: MQTT 5 "no local"
/// subscriptions skip the session's own messages. Shared subscriptions are left out.
pub fn matching(
    subscriptions: &[Subscription],
    topic: &str,
    published: QoS,
    own: bool,
) -> Option<Match> {
    let mut found: Option<Match> = None;
    for s in subscriptions
        .iter()
        .filter(|s| s.filter.share_group().is_none())
        .filter(|s| !(own && s.no_local) && s.matches(topic))
    {
        let found = found.get_or_insert(Match {
            qos: QoS::AtMostOnce,
            retain_as_published: false,
            ids: Vec::new(),
        });
        found.qos = found.qos.max(s.qos.min(published));
        found.retain_as_published |= s.retain_as_published;
        found.ids.extend(s.id);
    }
    found
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
            retain_as_published: false,
            id: None,
            except: Vec::new(),
        }
    }

    fn qos_of(subs: &[Subscription], topic: &str, published: QoS, own: bool) -> Option<QoS> {
        matching(subs, topic, published, own).map(|m| m.qos)
    }

    #[test]
    fn a_topic_the_acl_carved_out_of_a_subscription_is_not_delivered_through_it() {
        let carved = Subscription {
            except: vec![TopicFilter::parse("test/nosubscribe").expect("filter")],
            ..sub("#", QoS::AtLeastOnce, false)
        };
        let subs = [carved];
        assert_eq!(
            qos_of(&subs, "test/nosubscribe", QoS::AtLeastOnce, false),
            None
        );
        assert!(qos_of(&subs, "test/other", QoS::AtLeastOnce, false).is_some());
    }

    #[test]
    fn one_copy_carries_the_identifiers_of_every_matching_subscription() {
        let mut a = sub("test/#", QoS::AtLeastOnce, false);
        a.id = Some(7);
        let mut b = sub("test/+", QoS::AtMostOnce, false);
        b.id = Some(9);
        b.retain_as_published = true;
        let unmatched = Subscription {
            id: Some(11),
            ..sub("other", QoS::AtLeastOnce, false)
        };
        let found = matching(&[a, b, unmatched], "test/a", QoS::AtLeastOnce, false);
        assert_eq!(
            found,
            Some(Match {
                qos: QoS::AtLeastOnce,
                retain_as_published: true,
                ids: vec![7, 9],
            })
        );
    }

    #[test]
    fn overlapping_filters_give_one_delivery_at_the_highest_granted_qos() {
        let subs = [
            sub("test/#", QoS::AtMostOnce, false),
            sub("test/+", QoS::AtLeastOnce, false),
        ];
        assert_eq!(
            qos_of(&subs, "test/a", QoS::ExactlyOnce, false),
            Some(QoS::AtLeastOnce)
        );
    }

    #[test]
    fn the_delivery_qos_never_exceeds_the_published_qos() {
        let subs = [sub("#", QoS::ExactlyOnce, false)];
        assert_eq!(
            qos_of(&subs, "a", QoS::AtMostOnce, false),
            Some(QoS::AtMostOnce)
        );
    }

    #[test]
    fn a_no_local_subscription_skips_the_sessions_own_messages() {
        let subs = [sub("a", QoS::AtLeastOnce, true)];
        assert_eq!(qos_of(&subs, "a", QoS::AtLeastOnce, true), None);
        assert!(qos_of(&subs, "a", QoS::AtLeastOnce, false).is_some());
    }

    #[test]
    fn a_shared_subscription_gives_the_session_no_copy_of_its_own() {
        let subs = [sub("$share/g/a/#", QoS::AtLeastOnce, false)];
        assert_eq!(qos_of(&subs, "a/b", QoS::AtLeastOnce, false), None);
        let subs = [
            sub("$share/g/a/#", QoS::ExactlyOnce, false),
            sub("a/+", QoS::AtMostOnce, false),
        ];
        assert_eq!(
            qos_of(&subs, "a/b", QoS::ExactlyOnce, false),
            Some(QoS::AtMostOnce),
            "the non-shared subscription's QoS alone"
        );
    }

    #[test]
    fn wildcards_do_not_reach_dollar_topics() {
        let subs = [sub("#", QoS::AtLeastOnce, false)];
        assert_eq!(qos_of(&subs, "$SYS/uptime", QoS::AtLeastOnce, false), None);
    }
}
