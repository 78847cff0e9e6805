use std::path::Path;

use bytes::Bytes;
use tokio_util::sync::CancellationToken;

use super::*;
use crate::broker::codec::MessageProperties;
use crate::broker::session::Attached;
use crate::record::QoS;

fn attached(connection: u64) -> Attached {
    Attached {
        connection,
        deliver: None,
        kick: CancellationToken::new(),
        done: CancellationToken::new(),
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
    let mut registry = Registry::restore(store.load().expect("load"));
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
