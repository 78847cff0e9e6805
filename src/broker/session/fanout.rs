//! Fan-out: a published message reaching every session whose subscriptions match it, live or
//! queued, and one member of each matching shared subscription.
//!
//! A live subscriber gets it with `try_send`: one that lags a whole channel behind loses it,
//! counted and logged, rather than holding up the publisher and every other subscriber.

use std::sync::atomic::Ordering;
use std::time::SystemTime;

use tracing::warn;

use super::registry::{Inner, Registry};
use super::sharing::share_out;
use crate::broker::delivery::Delivery;
use crate::broker::router;
use crate::record::QoS;

impl Registry {
    /// Updates the retained store and fans `message` out to every matching session: live
    /// connections get it on their channel (dropped with a count if a subscriber lags that
    /// far behind), offline persistent sessions queue QoS 1/2 messages. Each matching shared
    /// subscription gives it to one of its members (see `share`), on top of the copies for
    /// non-shared subscriptions: a session with both gets two, as MQTT 5 §4.8.2 describes and
    /// Mosquitto does.
    pub fn publish(&self, publisher: &str, message: &Delivery) {
        let mut inner = self.lock();
        if message.retain {
            inner.retained.update(message);
            inner.dirty.retained.insert(message.topic.to_string());
            self.touch();
        }
        let mut dropped = Vec::new();
        let Inner {
            sessions,
            subscribers,
            shares,
            queues,
            ..
        } = &mut *inner;
        for client_id in subscribers.iter() {
            let Some(session) = sessions.get_mut(client_id) else {
                continue;
            };
            let own = client_id == publisher;
            let Some(matched) =
                router::matching(&session.subscriptions, &message.topic, message.qos, own)
            else {
                continue;
            };
            // Live deliveries carry retain = false (MQTT 3.1.1 §3.3.1.3; 5 without Retain As
            // Published): the flag tells a subscriber "this is old news".
            let qos = matched.qos;
            let delivery = Delivery {
                qos,
                retain: message.retain && matched.retain_as_published,
                subscription_ids: matched.ids,
                ..message.clone()
            };
            if let Some(attached) = &session.attached {
                // Always `Some` here: a session with subscriptions has a channel while attached.
                let sent = attached.deliver.as_ref().map(|d| d.try_send(delivery));
                if !matches!(sent, Some(Ok(()))) {
                    dropped.push(client_id.clone());
                }
            } else if qos > QoS::AtMostOnce && !session.expired(SystemTime::now()) {
                queues.push(client_id, &mut session.queued, delivery);
            }
        }
        let mut unshared = 0;
        for share in shares.values_mut() {
            if share.matches(&message.topic)
                && !share_out(sessions, queues, share, message)
                && message.qos > QoS::AtMostOnce
            {
                unshared += 1;
            }
        }
        queues.trim(sessions);
        let queued = queues.has_changes();
        drop(inner);
        if queued {
            self.touch();
        }
        for client_id in dropped {
            self.count_dropped(&client_id);
        }
        self.count_unshared(unshared);
    }

    fn count_dropped(&self, client_id: &str) {
        let total = self.dropped.fetch_add(1, Ordering::Relaxed) + 1;
        if total == 1 || total.is_power_of_two() {
            warn!(
                client_id,
                dropped_total = total,
                "a subscriber lags behind: messages for it were dropped"
            );
        }
    }
}
