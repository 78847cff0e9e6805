//! The registry without a store: sessions attaching, detaching, expiring and taken over, offline
//! queues, QoS 2 bookkeeping, and shared subscriptions taking turns.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;

use super::*;
use crate::broker::codec::MessageProperties;
use crate::broker::store::{self, State};
use crate::topic::TopicFilter;

fn attached(connection: u64) -> Attached {
    Attached {
        connection,
        deliver: None,
        handover: Default::default(),
    }
}

fn message(topic: &str, qos: QoS) -> Delivery {
    Delivery {
        share: None,
        topic: Arc::from(topic),
        payload: Bytes::from_static(b"x"),
        qos,
        retain: false,
        properties: None,
        expires_at: None,
        subscription_ids: Vec::new(),
    }
}

fn subscribe(registry: &Registry, client_id: &str, filter: &str) -> Subscribed {
    registry.subscribe(
        client_id,
        vec![Subscription {
            filter: TopicFilter::parse(filter).expect("filter"),
            qos: QoS::AtLeastOnce,
            no_local: false,
            retain_as_published: false,
            id: None,
            except: Vec::new(),
        }],
    )
}

#[test]
fn a_clean_session_is_gone_once_its_connection_ends() {
    let registry = Registry::new();
    let a = attached(1);
    assert!(!registry.attach("pi", true, 0, a).session_present);
    registry.detach("pi", 1, 0, Vec::new(), Vec::new(), Assignments::default());
    assert_eq!(registry.session_count(), 0);
}

#[test]
fn a_persistent_session_queues_qos1_while_offline_and_hands_it_over_on_reconnect() {
    let registry = Registry::new();
    let a = attached(1);
    registry.attach("pi", false, u32::MAX, a);
    subscribe(&registry, "pi", "cmd/#");
    registry.detach(
        "pi",
        1,
        u32::MAX,
        Vec::new(),
        Vec::new(),
        Assignments::default(),
    );

    registry.publish("other", &message("cmd/reboot", QoS::AtLeastOnce));
    registry.publish("other", &message("cmd/qos0", QoS::AtMostOnce));

    let b = attached(2);
    let resumed = registry.attach("pi", false, u32::MAX, b);
    assert!(resumed.session_present);
    let topics: Vec<_> = resumed.queued.iter().map(|d| &*d.topic).collect();
    assert_eq!(
        topics,
        ["cmd/reboot"],
        "QoS 0 is not queued for the offline"
    );
}

#[test]
fn a_live_subscriber_gets_one_copy_on_its_channel() {
    let registry = Registry::new();
    registry.attach("sub", true, 0, attached(1));
    let mut rx = subscribe(&registry, "sub", "test/#")
        .deliveries
        .expect("a channel with the first subscription");
    assert!(subscribe(&registry, "sub", "test/+").deliveries.is_none());
    registry.publish("pub", &message("test/a", QoS::AtLeastOnce));
    assert_eq!(&*rx.try_recv().expect("one delivery").topic, "test/a");
    assert!(rx.try_recv().is_err(), "only one copy");
}

#[test]
fn a_connection_gets_a_delivery_channel_only_once_its_session_subscribes() {
    let registry = Registry::new();
    assert!(
        registry
            .attach("pi", false, u32::MAX, attached(1))
            .deliveries
            .is_none()
    );
    registry.publish("other", &message("cmd/reboot", QoS::AtLeastOnce));
    let mut rx = subscribe(&registry, "pi", "cmd/#")
        .deliveries
        .expect("a channel with the first subscription");
    registry.publish("other", &message("cmd/reboot", QoS::AtLeastOnce));
    assert_eq!(&*rx.try_recv().expect("a delivery").topic, "cmd/reboot");
}

#[test]
fn a_reconnect_to_a_session_with_subscriptions_gets_its_channel_on_attach() {
    let registry = Registry::new();
    registry.attach("pi", false, u32::MAX, attached(1));
    subscribe(&registry, "pi", "cmd/#");
    registry.detach(
        "pi",
        1,
        u32::MAX,
        Vec::new(),
        Vec::new(),
        Assignments::default(),
    );

    let resumed = registry.attach("pi", false, u32::MAX, attached(2));
    let mut rx = resumed.deliveries.expect("a channel at once");
    registry.publish("other", &message("cmd/reboot", QoS::AtLeastOnce));
    assert_eq!(&*rx.try_recv().expect("a delivery").topic, "cmd/reboot");
}

#[test]
fn the_old_connection_of_a_taken_over_session_cannot_detach_the_new_one() {
    let registry = Registry::new();
    let a = attached(1);
    registry.attach("pi", false, 60, a.clone());
    registry.kick("pi").expect("attached");
    assert!(a.handover.is_kicked());
    let b = attached(2);
    registry.attach("pi", false, 60, b);
    // The old connection hands back late: it no longer owns the session.
    registry.detach("pi", 1, 0, Vec::new(), Vec::new(), Assignments::default());
    assert!(
        registry.reconnected_since("pi", 1),
        "connection 2 still holds it"
    );
}

#[test]
fn a_session_past_its_expiry_is_purged_and_one_within_it_is_kept() {
    let registry = Registry::new();
    let a = attached(1);
    registry.attach("short", false, 1, a);
    let b = attached(2);
    registry.attach("long", false, 3600, b);
    registry.detach(
        "short",
        1,
        1,
        Vec::new(),
        Vec::new(),
        Assignments::default(),
    );
    registry.detach(
        "long",
        2,
        3600,
        Vec::new(),
        Vec::new(),
        Assignments::default(),
    );
    if let Some(session) = registry.lock().sessions.get_mut("short") {
        session.disconnected_at = Some(SystemTime::now() - Duration::from_secs(5));
    }
    assert_eq!(registry.purge_expired(), 1);
    let sessions = &registry.lock().sessions;
    assert!(sessions.contains_key("long") && !sessions.contains_key("short"));
}

#[test]
fn a_subscriber_restored_from_disk_queues_what_is_published_before_it_reconnects() {
    let state = State {
        sessions: vec![store::SavedSession {
            client_id: "pi".into(),
            subscriptions: vec![store::SavedSubscription {
                filter: "cmd/#".into(),
                qos: 1,
                no_local: false,
                retain_as_published: false,
                id: None,
                except: Vec::new(),
            }],
            expiry_s: u32::MAX,
            awaiting_pubrel: Vec::new(),
            disconnected_at: None,
        }],
        retained: Vec::new(),
        queued: Vec::new(),
    };
    let registry = Registry::restore(state, QueueLimits::default());
    registry.publish("other", &message("cmd/reboot", QoS::AtLeastOnce));
    let a = attached(1);
    assert_eq!(registry.attach("pi", false, u32::MAX, a).queued.len(), 1);
}

#[test]
fn after_its_last_unsubscribe_a_session_gets_nothing() {
    let registry = Registry::new();
    registry.attach("sub", true, 0, attached(1));
    let mut rx = subscribe(&registry, "sub", "test/#")
        .deliveries
        .expect("a channel");
    assert_eq!(registry.unsubscribe("sub", &["test/#".into()]), [true]);
    registry.publish("pub", &message("test/a", QoS::AtLeastOnce));
    assert!(rx.try_recv().is_err());
}

#[test]
fn qos2_packet_ids_await_pubrel_until_released() {
    let registry = Registry::new();
    let a = attached(1);
    registry.attach("pi", false, 60, a);
    registry.await_pubrel("pi", 7);
    assert!(registry.is_awaiting_pubrel("pi", 7));
    let changes = registry.take_changes();
    let saved = changes.sessions[0].1.as_ref().expect("stored");
    assert_eq!(saved.awaiting_pubrel, vec![7]);
    registry.release("pi", 7);
    assert!(!registry.is_awaiting_pubrel("pi", 7));
}

#[test]
fn what_was_in_flight_waits_for_the_reconnect_of_a_persistent_session_only() {
    let registry = Registry::new();
    let in_flight = || {
        vec![Unfinished {
            pkid: 7,
            delivery: message("cmd/a", QoS::AtLeastOnce),
            released: false,
        }]
    };
    registry.attach("pi", false, 300, attached(1));
    registry.detach(
        "pi",
        1,
        300,
        in_flight(),
        Vec::new(),
        Assignments::default(),
    );
    let resumed = registry.attach("pi", false, 300, attached(2));
    let pkids: Vec<_> = resumed.unfinished.iter().map(|u| u.pkid).collect();
    assert_eq!(pkids, [7]);

    registry.detach("pi", 2, 0, in_flight(), Vec::new(), Assignments::default());
    let resumed = registry.attach("pi", false, 300, attached(3));
    assert!(!resumed.session_present && resumed.unfinished.is_empty());
}

#[test]
fn a_session_past_its_expiry_is_not_present_to_a_reconnect_before_the_purge() {
    let registry = Registry::new();
    registry.attach("pi", false, 1, attached(1));
    subscribe(&registry, "pi", "cmd/#");
    registry.detach("pi", 1, 1, Vec::new(), Vec::new(), Assignments::default());
    if let Some(session) = registry.lock().sessions.get_mut("pi") {
        session.disconnected_at = Some(SystemTime::now() - Duration::from_secs(5));
    }
    registry.publish("other", &message("cmd/reboot", QoS::AtLeastOnce));

    let resumed = registry.attach("pi", false, 1, attached(2));
    assert!(!resumed.session_present);
    assert!(resumed.queued.is_empty(), "nothing queued after the expiry");
    assert!(
        resumed.deliveries.is_none(),
        "its subscriptions are gone too"
    );
}

#[test]
fn a_waiting_will_is_released_when_a_clean_start_ends_the_session_and_not_by_a_resume() {
    let registry = Registry::new();
    registry.attach("pi", false, 300, attached(1));
    registry.detach("pi", 1, 300, Vec::new(), Vec::new(), Assignments::default());
    let will = registry.will_waits("pi", 1).expect("the session is there");
    registry.attach("pi", true, 300, attached(2));
    assert!(
        will.is_cancelled(),
        "the session ended: publish the will now"
    );

    registry.detach("pi", 2, 300, Vec::new(), Vec::new(), Assignments::default());
    let will = registry.will_waits("pi", 2).expect("the session is there");
    registry.attach("pi", false, 300, attached(3));
    registry.attach("pi", true, 300, attached(4));
    assert!(
        !will.is_cancelled(),
        "a resume within the delay withdrew the will for good"
    );
}

#[test]
fn an_expired_message_is_not_sent_and_one_sent_carries_what_is_left_of_its_interval() {
    let properties = MessageProperties {
        message_expiry_s: Some(10),
        ..MessageProperties::default()
    };
    let at = SystemTime::UNIX_EPOCH + Duration::from_secs(1_000);
    let message = Delivery::arrived("t", Bytes::new(), QoS::AtLeastOnce, false, &properties, at);
    assert_eq!(
        message.expiry_left(at + Duration::from_millis(3_500)),
        Some(7)
    );
    assert!(!message.expired(at + Duration::from_millis(9_999)));
    assert!(message.expired(at + Duration::from_secs(10)));
    let plain = Delivery::arrived(
        "t",
        Bytes::new(),
        QoS::AtLeastOnce,
        false,
        &MessageProperties::default(),
        at,
    );
    assert!(plain.properties.is_none() && plain.expires_at.is_none());
}

#[test]
fn a_reconnect_that_has_already_left_again_still_counts_as_a_reconnect() {
    let registry = Registry::new();
    registry.attach("pi", false, 300, attached(1));
    registry.detach("pi", 1, 300, Vec::new(), Vec::new(), Assignments::default());
    assert!(!registry.reconnected_since("pi", 1));

    registry.attach("pi", false, 300, attached(2));
    assert!(registry.reconnected_since("pi", 1));
    registry.detach("pi", 2, 300, Vec::new(), Vec::new(), Assignments::default());
    assert!(registry.reconnected_since("pi", 1));
    assert!(!registry.reconnected_since("pi", 2));
}

/// `client_id` connected with a clean session (`expiry_s` 0) or a persistent one, subscribed
/// to `filter`; where its deliveries arrive.
fn member(
    registry: &Registry,
    client_id: &str,
    connection: u64,
    expiry_s: u32,
    filter: &str,
) -> mpsc::Receiver<Delivery> {
    registry.attach(client_id, expiry_s == 0, expiry_s, attached(connection));
    subscribe(registry, client_id, filter)
        .deliveries
        .expect("a channel with the first subscription")
}

/// The topics waiting on `rx`, taken off it.
fn topics(rx: &mut mpsc::Receiver<Delivery>) -> Vec<String> {
    std::iter::from_fn(|| rx.try_recv().ok())
        .map(|d| d.topic.to_string())
        .collect()
}

fn publish_all(registry: &Registry, topics: &[&str]) {
    for topic in topics {
        registry.publish("pub", &message(topic, QoS::AtLeastOnce));
    }
}

#[test]
fn each_message_goes_to_exactly_one_member_of_each_shared_group() {
    let registry = Registry::new();
    let mut a = member(&registry, "a", 1, 0, "$share/g/test/#");
    let mut b = member(&registry, "b", 2, 0, "$share/g/test/#");
    let mut other_group = member(&registry, "c", 3, 0, "$share/h/test/#");
    publish_all(&registry, &["test/1", "test/2", "test/3", "test/4"]);

    let (a, b) = (topics(&mut a), topics(&mut b));
    let mut all: Vec<_> = a.iter().chain(&b).cloned().collect();
    all.sort();
    assert_eq!(all, ["test/1", "test/2", "test/3", "test/4"], "{a:?} {b:?}");
    assert_eq!(topics(&mut other_group).len(), 4, "a group of its own");
}

#[test]
fn members_of_a_shared_group_take_turns() {
    let registry = Registry::new();
    let mut a = member(&registry, "a", 1, 0, "$share/g/test/#");
    let mut b = member(&registry, "b", 2, 0, "$share/g/test/#");
    let mut c = member(&registry, "c", 3, 0, "$share/g/test/#");
    publish_all(
        &registry,
        &["test/1", "test/2", "test/3", "test/4", "test/5"],
    );
    assert_eq!(topics(&mut a), ["test/1", "test/4"]);
    assert_eq!(topics(&mut b), ["test/2", "test/5"]);
    assert_eq!(topics(&mut c), ["test/3"]);
}

#[test]
fn a_non_shared_subscriber_beside_a_shared_group_still_gets_every_message() {
    let registry = Registry::new();
    let mut a = member(&registry, "a", 1, 0, "$share/g/test/#");
    let mut b = member(&registry, "b", 2, 0, "$share/g/test/#");
    let mut plain = member(&registry, "plain", 3, 0, "test/#");
    publish_all(&registry, &["test/1", "test/2", "test/3"]);
    assert_eq!(topics(&mut plain), ["test/1", "test/2", "test/3"]);
    assert_eq!(topics(&mut a).len() + topics(&mut b).len(), 3);
}

#[test]
fn a_member_that_also_subscribes_without_sharing_gets_a_copy_for_each() {
    let registry = Registry::new();
    let mut a = member(&registry, "a", 1, 0, "$share/g/test/#");
    subscribe(&registry, "a", "test/+");
    registry.publish("pub", &message("test/1", QoS::AtLeastOnce));
    let shares: Vec<_> = std::iter::from_fn(|| a.try_recv().ok())
        .map(|d| d.share.map(|f| f.as_str().to_owned()))
        .collect();
    assert_eq!(shares, [None, Some("$share/g/test/#".to_owned())]);
}

#[test]
fn a_dropped_members_unacknowledged_share_goes_to_another_member() {
    let registry = Registry::new();
    let mut a = member(&registry, "a", 1, 0, "$share/g/test/#");
    subscribe(&registry, "a", "test/own");
    let mut b = member(&registry, "b", 2, 0, "$share/g/test/#");
    publish_all(&registry, &["test/1", "test/2", "test/3", "test/own"]);
    registry.publish("pub", &message("test/qos0", QoS::AtMostOnce));
    assert_eq!(topics(&mut b), ["test/2", "test/own"]);

    // As `finish` does: "test/1" was sent and not acknowledged (in flight), the rest are
    // still in the channel when the connection ends.
    let in_flight = a.try_recv().expect("test/1");
    a.close();
    let unsent: Vec<_> = std::iter::once(in_flight)
        .chain(std::iter::from_fn(|| a.try_recv().ok()))
        .collect();
    let unsent_topics: Vec<_> = unsent.iter().map(|d| &*d.topic).collect();
    assert_eq!(unsent_topics, ["test/1", "test/3", "test/own", "test/qos0"]);
    registry.detach("a", 1, 0, Vec::new(), unsent, Assignments::default());

    assert_eq!(
        topics(&mut b),
        ["test/1", "test/3"],
        "its QoS 1 share; neither its own copy of test/own nor QoS 0"
    );
    publish_all(&registry, &["test/4"]);
    assert_eq!(topics(&mut b), ["test/4"], "the only member left");
}

#[test]
fn a_persistent_member_keeps_its_unacknowledged_share_for_itself() {
    let registry = Registry::new();
    let mut a = member(&registry, "a", 1, u32::MAX, "$share/g/test/#");
    let mut b = member(&registry, "b", 2, 0, "$share/g/test/#");
    publish_all(&registry, &["test/1", "test/2"]);
    a.close();
    let unsent: Vec<_> = std::iter::from_fn(|| a.try_recv().ok()).collect();
    registry.detach("a", 1, u32::MAX, Vec::new(), unsent, Assignments::default());
    assert_eq!(topics(&mut b), ["test/2"]);

    let resumed = registry.attach("a", false, u32::MAX, attached(3));
    let queued: Vec<_> = resumed.queued.iter().map(|d| &*d.topic).collect();
    assert_eq!(queued, ["test/1"]);
}

#[test]
fn an_offline_persistent_member_gets_messages_queued_only_while_no_member_is_live() {
    let registry = Registry::new();
    member(&registry, "offline", 1, u32::MAX, "$share/g/test/#");
    registry.detach(
        "offline",
        1,
        u32::MAX,
        Vec::new(),
        Vec::new(),
        Assignments::default(),
    );
    let mut live = member(&registry, "live", 2, 0, "$share/g/test/#");
    publish_all(&registry, &["test/1", "test/2"]);
    assert_eq!(topics(&mut live), ["test/1", "test/2"]);

    drop(live);
    registry.detach("live", 2, 0, Vec::new(), Vec::new(), Assignments::default());
    publish_all(&registry, &["test/3"]);
    let resumed = registry.attach("offline", false, u32::MAX, attached(3));
    let queued: Vec<_> = resumed.queued.iter().map(|d| &*d.topic).collect();
    assert_eq!(queued, ["test/3"]);
}

#[test]
fn a_shared_subscription_gets_no_retained_messages() {
    let registry = Registry::new();
    registry.publish(
        "pub",
        &Delivery {
            retain: true,
            ..message("test/status", QoS::AtLeastOnce)
        },
    );
    registry.attach("a", true, 0, attached(1));
    let subscribed = subscribe(&registry, "a", "$share/g/test/#");
    assert!(subscribed.filters[0].1.is_empty());
    let subscribed = subscribe(&registry, "a", "test/#");
    assert_eq!(subscribed.filters[0].1.len(), 1, "a non-shared one does");
}

#[test]
fn an_unsubscribed_member_leaves_the_turns_to_the_others() {
    let registry = Registry::new();
    let mut a = member(&registry, "a", 1, 0, "$share/g/test/#");
    let mut b = member(&registry, "b", 2, 0, "$share/g/test/#");
    let mut c = member(&registry, "c", 3, 0, "$share/g/test/#");
    assert_eq!(
        registry.unsubscribe("a", &["$share/g/test/#".into()]),
        [true]
    );
    publish_all(&registry, &["test/1", "test/2"]);
    assert!(topics(&mut a).is_empty());
    assert_eq!(topics(&mut b), ["test/1"]);
    assert_eq!(topics(&mut c), ["test/2"]);
}

#[test]
fn a_shared_group_is_rebuilt_from_the_saved_state_after_a_restart() {
    let dir = tempfile::tempdir().expect("temp dir");
    let open = || {
        let db = crate::state::open(dir.path()).expect("open");
        store::Store::open(&db, dir.path()).expect("open the store")
    };
    {
        let mut registry = Registry::new();
        registry.keep_in(open());
        member(&registry, "a", 1, u32::MAX, "$share/g/test/#");
        member(&registry, "b", 2, u32::MAX, "$share/g/test/#");
        registry.commit();
    }

    let registry = Registry::restore(open().load().expect("load"), QueueLimits::default());
    publish_all(&registry, &["test/1", "test/2"]);
    let a = registry.attach("a", false, u32::MAX, attached(3)).queued;
    let b = registry.attach("b", false, u32::MAX, attached(4)).queued;
    assert_eq!(a.len() + b.len(), 2, "{a:?} {b:?}");
    assert_eq!((a.len(), b.len()), (1, 1), "{a:?} {b:?}");
    let share = a[0].share.as_ref().map(|f| f.as_str());
    assert_eq!(share, Some("$share/g/test/#"));
}
