//! The registry written to a real store and rebuilt from it: what a restart brings back
//! (persistent sessions, retained and queued messages) and what it must not (ended, expired,
//! handed-over), and that clean sessions write nothing.

use std::path::Path;

use bytes::Bytes;

use super::*;
use crate::broker::codec::MessageProperties;
use crate::broker::session::Attached;
use crate::record::QoS;

fn attached(connection: u64) -> Attached {
    Attached {
        connection,
        deliver: None,
        handover: Default::default(),
    }
}

fn open(dir: &Path) -> Store {
    let db = crate::state::open(dir).expect("open the database");
    Store::open(&db, dir).expect("open the store")
}

/// A registry that writes to the store in `dir`.
fn writing_to(dir: &Path) -> Registry {
    let mut registry = Registry::new();
    registry.keep_in(open(dir));
    registry
}

/// The registry the next start builds from the store in `dir`.
fn restored(dir: &Path) -> Registry {
    let store = open(dir);
    let mut registry = Registry::restore(store.load().expect("load"), QueueLimits::default());
    registry.keep_in(store);
    registry
}

fn retained(topic: &str, payload: &'static [u8], properties: &MessageProperties) -> Delivery {
    Delivery::arrived(
        topic,
        Bytes::from_static(payload),
        QoS::AtLeastOnce,
        true,
        properties,
        SystemTime::now(),
    )
}

fn subscription(filter: &str) -> Subscription {
    Subscription {
        filter: TopicFilter::parse(filter).expect("filter"),
        qos: QoS::ExactlyOnce,
        no_local: true,
        retain_as_published: true,
        id: Some(9),
        except: vec![TopicFilter::parse("cmd/secret").expect("filter")],
    }
}

#[test]
fn a_clean_sessions_connect_subscribe_and_disconnect_leave_nothing_to_write() {
    let registry = Registry::new();
    registry.attach("clean", true, 0, attached(1));
    registry.subscribe("clean", vec![subscription("cmd/#")]);
    registry.detach(
        "clean",
        1,
        0,
        Vec::new(),
        Vec::new(),
        Assignments::default(),
    );
    assert!(registry.take_changes().is_empty());
}

#[test]
fn a_persistent_session_and_retained_messages_come_back_after_a_restart_as_they_were() {
    let dir = tempfile::tempdir().expect("temp dir");
    let properties = MessageProperties {
        payload_format: Some(1),
        message_expiry_s: Some(3600),
        content_type: Some("text/plain".into()),
        response_topic: Some("reply".into()),
        correlation_data: Some(Bytes::from_static(b"\x01")),
        user_properties: vec![("site".into(), "lab".into())],
    };
    {
        let registry = writing_to(dir.path());
        registry.attach("pi", false, u32::MAX, attached(1));
        registry.subscribe("pi", vec![subscription("cmd/#")]);
        registry.await_pubrel("pi", 7);
        registry.publish("pi", &retained("status/pi", b"online", &properties));
        registry.publish("pi", &retained("status/gone", b"soon cleared", &properties));
        registry.publish(
            "pi",
            &retained("status/gone", b"", &MessageProperties::default()),
        );
        registry.commit();
        // Connected at the crash: no disconnect, no later write.
    }
    let registry = restored(dir.path());
    assert!(registry.is_awaiting_pubrel("pi", 7));
    assert_eq!(registry.retained_count(), 1);
    {
        let inner = registry.lock();
        let session = &inner.sessions["pi"];
        assert!(session.disconnected_at.is_some(), "counts as disconnected");
        assert_eq!(session.expiry_s, u32::MAX);
        let sub = &session.subscriptions[0];
        assert_eq!(
            (
                sub.filter.as_str(),
                sub.qos,
                sub.no_local,
                sub.retain_as_published
            ),
            ("cmd/#", QoS::ExactlyOnce, true, true)
        );
        assert_eq!(sub.id, Some(9));
        assert_eq!(sub.except[0].as_str(), "cmd/secret");
        let message = inner.retained.get("status/pi").expect("retained");
        assert_eq!(&message.payload[..], b"online");
        assert_eq!(message.properties.as_deref(), Some(&properties));
        assert!(message.expires_at.is_some());
    }
    let resumed = registry.attach("pi", false, u32::MAX, attached(2));
    assert!(resumed.session_present);
    assert_eq!(resumed.awaiting_pubrel, 1);
}

#[test]
fn a_session_that_ends_is_deleted_from_the_store() {
    let dir = tempfile::tempdir().expect("temp dir");
    {
        let registry = writing_to(dir.path());
        registry.attach("ends", false, 600, attached(1));
        registry.attach("stays", false, 600, attached(2));
        registry.commit();
        // A clean start ends the stored session; a DISCONNECT with expiry 0 ends the other way.
        registry.attach("ends", true, 0, attached(3));
        registry.detach("ends", 3, 0, Vec::new(), Vec::new(), Assignments::default());
        registry.commit();
    }
    let registry = restored(dir.path());
    assert_eq!(registry.session_count(), 1);
    assert!(registry.lock().sessions.contains_key("stays"));
}

#[test]
fn a_session_that_expired_while_mqtt2es_was_down_is_deleted_by_the_first_write() {
    let dir = tempfile::tempdir().expect("temp dir");
    {
        let registry = writing_to(dir.path());
        registry.attach("short", false, 1, attached(1));
        registry.detach(
            "short",
            1,
            1,
            Vec::new(),
            Vec::new(),
            Assignments::default(),
        );
        if let Some(session) = registry.lock().sessions.get_mut("short") {
            session.disconnected_at = Some(SystemTime::now() - Duration::from_secs(5));
        }
        registry.lock().dirty.sessions.insert("short".into());
        registry.commit();
    }
    {
        let registry = restored(dir.path());
        assert_eq!(registry.session_count(), 0);
        registry.commit();
    }
    assert!(open(dir.path()).load().expect("load").sessions.is_empty());
}

/// A persistent session `sub` subscribed to `cmd/#` at QoS 1, offline.
fn offline_subscriber(registry: &Registry) {
    registry.attach("sub", false, u32::MAX, attached(1));
    registry.subscribe(
        "sub",
        vec![Subscription {
            qos: QoS::AtLeastOnce,
            no_local: false,
            ..subscription("cmd/#")
        }],
    );
    registry.detach(
        "sub",
        1,
        u32::MAX,
        Vec::new(),
        Vec::new(),
        Assignments::default(),
    );
}

fn command(topic: &str, properties: &MessageProperties) -> Delivery {
    Delivery::arrived(
        topic,
        Bytes::from(topic.to_owned()),
        QoS::ExactlyOnce,
        false,
        properties,
        SystemTime::now(),
    )
}

#[test]
fn messages_queued_for_an_offline_session_come_back_after_a_restart_in_order_and_whole() {
    let dir = tempfile::tempdir().expect("temp dir");
    let properties = MessageProperties {
        message_expiry_s: Some(3600),
        content_type: Some("text/plain".into()),
        user_properties: vec![("k".into(), "v".into())],
        ..MessageProperties::default()
    };
    {
        let registry = writing_to(dir.path());
        offline_subscriber(&registry);
        for n in 0..3 {
            registry.publish("pub", &command(&format!("cmd/{n}"), &properties));
        }
        registry.commit();
    }
    let registry = restored(dir.path());
    assert_eq!(registry.queued_count(), 3);
    let queued = registry.attach("sub", false, u32::MAX, attached(2)).queued;
    let topics: Vec<_> = queued.iter().map(|d| &*d.topic).collect();
    assert_eq!(topics, ["cmd/0", "cmd/1", "cmd/2"]);
    let first = &queued[0];
    assert_eq!(&first.payload[..], b"cmd/0");
    assert_eq!(first.qos, QoS::AtLeastOnce, "as the subscription granted");
    assert_eq!(first.subscription_ids, [9]);
    assert_eq!(first.properties.as_deref(), Some(&properties));
    assert!(first.expires_at.is_some());
}

#[test]
fn what_was_handed_over_expired_or_belonged_to_an_ended_session_is_gone_after_a_restart() {
    let dir = tempfile::tempdir().expect("temp dir");
    {
        let registry = writing_to(dir.path());
        offline_subscriber(&registry);
        registry.publish(
            "pub",
            &command("cmd/handed-over", &MessageProperties::default()),
        );
        registry.commit();
        assert_eq!(
            registry
                .attach("sub", false, u32::MAX, attached(2))
                .queued
                .len(),
            1
        );
        registry.detach(
            "sub",
            2,
            u32::MAX,
            Vec::new(),
            Vec::new(),
            Assignments::default(),
        );
        let short = MessageProperties {
            message_expiry_s: Some(1),
            ..MessageProperties::default()
        };
        let mut expiring = command("cmd/expiring", &short);
        expiring.expires_at = Some(SystemTime::now() - Duration::from_secs(1));
        registry.publish("pub", &expiring);
        registry.publish("pub", &command("cmd/kept", &MessageProperties::default()));
        registry.attach("gone", false, 600, attached(3));
        registry.subscribe("gone", vec![subscription("gone/#")]);
        registry.detach(
            "gone",
            3,
            600,
            Vec::new(),
            Vec::new(),
            Assignments::default(),
        );
        registry.publish("pub", &command("gone/1", &MessageProperties::default()));
        registry.commit();
        // The session of "gone" ends with its queue (a clean start), after it was written.
        registry.attach("gone", true, 0, attached(4));
        registry.commit();
    }
    {
        let registry = restored(dir.path());
        let queued = registry.attach("sub", false, u32::MAX, attached(5)).queued;
        let topics: Vec<_> = queued.iter().map(|d| &*d.topic).collect();
        assert_eq!(topics, ["cmd/kept"]);
        registry.commit();
    }
    let state = open(dir.path()).load().expect("load");
    assert!(state.queued.is_empty(), "{:?}", state.queued);
}

#[test]
fn a_restart_with_lower_bounds_keeps_the_newest_queued_messages() {
    let dir = tempfile::tempdir().expect("temp dir");
    {
        let registry = writing_to(dir.path());
        offline_subscriber(&registry);
        for n in 0..5 {
            registry.publish(
                "pub",
                &command(&format!("cmd/{n}"), &MessageProperties::default()),
            );
        }
        registry.commit();
    }
    let limits = QueueLimits {
        max_messages_per_session: 2,
        ..QueueLimits::default()
    };
    let store = open(dir.path());
    let registry = Registry::restore(store.load().expect("load"), limits);
    let queued = registry.attach("sub", false, u32::MAX, attached(2)).queued;
    let topics: Vec<_> = queued.iter().map(|d| &*d.topic).collect();
    assert_eq!(topics, ["cmd/3", "cmd/4"]);
}
