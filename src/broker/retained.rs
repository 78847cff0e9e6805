//! Retained messages: the last retained publish per topic, handed to every new matching
//! subscription. An empty retained payload deletes the topic's entry (MQTT §3.3.1.3).
//!
//! A plain map scanned on SUBSCRIBE: subscriptions are rare next to publishes; an index by
//! first level would be the next step if a fleet ever retains hundreds of thousands of topics.

use std::collections::BTreeMap;

use super::delivery::Delivery;
use crate::topic::TopicFilter;

#[derive(Debug, Default)]
pub struct Retained {
    by_topic: BTreeMap<String, Delivery>,
}

impl Retained {
    /// Stores or (empty payload) clears the topic's retained message.
    pub fn update(&mut self, message: &Delivery) {
        if message.payload.is_empty() {
            self.by_topic.remove(&*message.topic);
        } else {
            let mut kept = message.clone();
            kept.retain = true;
            self.by_topic.insert(message.topic.to_string(), kept);
        }
    }

    pub fn matching<'a>(&'a self, filter: &'a TopicFilter) -> impl Iterator<Item = &'a Delivery> {
        self.by_topic
            .iter()
            .filter(|(topic, _)| filter.matches(topic))
            .map(|(_, message)| message)
    }

    /// The message retained on `topic`, if any.
    pub fn get(&self, topic: &str) -> Option<&Delivery> {
        self.by_topic.get(topic)
    }

    pub fn iter(&self) -> impl Iterator<Item = &Delivery> {
        self.by_topic.values()
    }

    pub fn len(&self) -> usize {
        self.by_topic.len()
    }

    pub fn is_empty(&self) -> bool {
        self.by_topic.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use bytes::Bytes;

    use super::*;
    use crate::record::QoS;

    fn message(topic: &str, payload: &'static [u8]) -> Delivery {
        Delivery {
            share: None,
            topic: Arc::from(topic),
            payload: Bytes::from_static(payload),
            qos: QoS::AtLeastOnce,
            retain: true,
            properties: None,
            expires_at: None,
            subscription_ids: Vec::new(),
        }
    }

    #[test]
    fn a_retained_message_is_found_by_a_matching_filter_only() {
        let mut retained = Retained::default();
        retained.update(&message("test/a", b"1"));
        retained.update(&message("other/b", b"2"));
        let filter = TopicFilter::parse("test/#").expect("filter");
        let found: Vec<_> = retained.matching(&filter).map(|m| &*m.topic).collect();
        assert_eq!(found, vec!["test/a"]);
    }

    #[test]
    fn a_later_retained_message_replaces_the_earlier_one() {
        let mut retained = Retained::default();
        retained.update(&message("test/a", b"1"));
        retained.update(&message("test/a", b"2"));
        assert_eq!(retained.len(), 1);
        assert_eq!(&retained.iter().next().expect("one").payload[..], b"2");
    }

    #[test]
    fn an_empty_retained_payload_clears_the_topic() {
        let mut retained = Retained::default();
        retained.update(&message("test/a", b"1"));
        retained.update(&message("test/a", b""));
        assert!(retained.is_empty());
    }
}
