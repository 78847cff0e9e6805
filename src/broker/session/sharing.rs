//! The shared subscriptions' member lists as the registry keeps them, by filter as written
//! (`$share/<group>/<filter>`): a session joining and leaving, and a message given to the member
//! whose turn it is.
//!
//! These are functions over the registry's maps rather than methods of it, so that the step
//! that removes a session can hand its share on while it holds those maps borrowed apart.

use std::collections::HashMap;
use std::sync::Arc;

use super::entry::Sessions;
use super::queue::Queues;
use crate::broker::delivery::Delivery;
use crate::broker::share::{Reach, Share};
use crate::topic::TopicFilter;

/// Adds `client_id` to the members of `filter` if it is a shared subscription.
pub(super) fn join(shares: &mut HashMap<String, Share>, client_id: &str, filter: &TopicFilter) {
    if filter.share_group().is_none() {
        return;
    }
    if let Some(share) = shares.get_mut(filter.as_str()) {
        share.join(client_id);
        return;
    }
    let mut share = Share::new(filter.clone());
    share.join(client_id);
    shares.insert(filter.as_str().to_owned(), share);
}

/// Removes `client_id` from the members of the shared subscription `filter`, if it is one.
pub(super) fn leave(shares: &mut HashMap<String, Share>, client_id: &str, filter: &str) {
    if let Some(share) = shares.get_mut(filter) {
        share.leave(client_id);
        if share.is_empty() {
            shares.remove(filter);
        }
    }
}

/// Gives `message` to the member of `share` whose turn it is, as that member's subscription
/// asks (QoS, Retain As Published, identifier); false if no member could take it. The caller
/// trims the queues to their total bounds after.
pub(super) fn share_out(
    sessions: &mut Sessions,
    queues: &mut Queues,
    share: &mut Share,
    message: &Delivery,
) -> bool {
    // Its own handle: the member picked borrows `share`.
    let shared = Arc::clone(share.filter());
    let filter = shared.as_str();
    let reach = |member: &str| {
        let session = sessions.get(member);
        session
            .and_then(|s| {
                let subscription = s.subscription(filter)?;
                // A member the ACL denies this topic cannot take it (see `Subscription`).
                subscription
                    .matches(&message.topic)
                    .then(|| s.reach(subscription.qos.min(message.qos)))
            })
            .unwrap_or(Reach::Unreachable)
    };
    let Some((member, how)) = share.pick(reach) else {
        return false;
    };
    let Some(session) = sessions.get_mut(member) else {
        return false;
    };
    let Some(subscription) = session.subscription(filter) else {
        return false;
    };
    let delivery = Delivery {
        qos: subscription.qos.min(message.qos),
        retain: message.retain && subscription.retain_as_published,
        subscription_ids: subscription.id.into_iter().collect(),
        share: Some(shared),
        ..message.clone()
    };
    let deliver = session.attached.as_ref().and_then(|a| a.deliver.as_ref());
    let delivery = match (how, deliver) {
        (Reach::Live, Some(deliver)) => match deliver.try_send(delivery) {
            Ok(()) => return true,
            // Closed since `reach` looked: the connection hands the queue back (`detach`).
            Err(error) => error.into_inner(),
        },
        _ => delivery,
    };
    queues.push(member, &mut session.queued, delivery);
    true
}
