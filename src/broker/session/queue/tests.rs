//! The offline queues' bounds (per session and in total, by messages and bytes), their numbering,
//! and which queued messages reach the store.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;

use super::*;
use crate::broker::session::Sessions;
use crate::record::QoS;

/// A message on `topic` whose topic and payload take `bytes` bytes.
fn message(topic: &str, bytes: usize) -> Delivery {
    Delivery {
        share: None,
        topic: Arc::from(topic),
        payload: Bytes::from(vec![b'x'; bytes - topic.len()]),
        qos: QoS::AtLeastOnce,
        retain: false,
        properties: None,
        expires_at: None,
        subscription_ids: Vec::new(),
    }
}

fn limits(per_session: (usize, usize), total: (usize, usize)) -> QueueLimits {
    QueueLimits {
        max_messages_per_session: per_session.0,
        max_bytes_per_session: per_session.1,
        max_messages: total.0,
        max_bytes: total.1,
    }
}

fn topics(queue: &Queue) -> Vec<String> {
    queue.iter().map(|d| d.topic.to_string()).collect()
}

/// Sessions `a` and `b`, each with an empty queue.
fn sessions() -> Sessions {
    HashMap::from([
        ("a".to_owned(), Box::default()),
        ("b".to_owned(), Box::default()),
    ])
}

fn push(queues: &mut Queues, sessions: &mut Sessions, id: &str, m: Delivery) {
    let session = sessions.get_mut(id).expect("session");
    queues.push(id, &mut session.queued, m);
    queues.trim(sessions);
}

#[test]
fn a_session_over_its_message_bound_loses_its_oldest_message() {
    let mut queues = Queues::new(limits((2, 1000), (100, 10_000)));
    let mut sessions = sessions();
    for topic in ["t/1", "t/2", "t/3"] {
        push(&mut queues, &mut sessions, "a", message(topic, 10));
    }
    assert_eq!(topics(&sessions["a"].queued), ["t/2", "t/3"]);
    assert_eq!(queues.totals(), (2, 20));
    assert_eq!(queues.dropped, 1);
}

#[test]
fn a_session_over_its_byte_bound_loses_its_oldest_messages_until_it_fits() {
    let mut queues = Queues::new(limits((100, 25), (100, 10_000)));
    let mut sessions = sessions();
    push(&mut queues, &mut sessions, "a", message("t/1", 10));
    push(&mut queues, &mut sessions, "a", message("t/2", 10));
    push(&mut queues, &mut sessions, "a", message("t/3", 20));
    assert_eq!(topics(&sessions["a"].queued), ["t/3"]);
    assert_eq!(queues.dropped, 2);
}

#[test]
fn over_a_total_bound_the_oldest_message_of_any_session_goes() {
    let mut queues = Queues::new(limits((100, 10_000), (3, 10_000)));
    let mut sessions = sessions();
    push(&mut queues, &mut sessions, "a", message("a/1", 10));
    push(&mut queues, &mut sessions, "b", message("b/1", 10));
    push(&mut queues, &mut sessions, "a", message("a/2", 10));
    push(&mut queues, &mut sessions, "b", message("b/2", 10));
    assert_eq!(topics(&sessions["a"].queued), ["a/2"]);
    assert_eq!(topics(&sessions["b"].queued), ["b/1", "b/2"]);
    push(&mut queues, &mut sessions, "a", message("a/3", 10));
    assert_eq!(topics(&sessions["b"].queued), ["b/2"], "b/1 was the oldest");

    let mut queues = Queues::new(limits((100, 10_000), (100, 35)));
    let mut sessions = self::sessions();
    push(&mut queues, &mut sessions, "b", message("b/1", 10));
    push(&mut queues, &mut sessions, "a", message("a/1", 10));
    push(&mut queues, &mut sessions, "a", message("a/2", 20));
    assert_eq!(topics(&sessions["a"].queued), ["a/1", "a/2"]);
    assert!(sessions["b"].queued.is_empty());
    assert_eq!(queues.totals(), (2, 30));
}

#[test]
fn a_message_handed_over_before_the_store_wrote_it_is_never_written() {
    let mut queues = Queues::default();
    let mut queue = Queue::default();
    queues.push("a", &mut queue, message("t/1", 10));
    assert_eq!(queues.take_all("a", &mut queue).len(), 1);
    assert!(!queues.has_changes());
    assert_eq!(queues.totals(), (0, 0));
}

#[test]
fn a_message_written_then_handed_over_is_deleted_and_numbers_keep_growing() {
    let mut queues = Queues::default();
    let mut queue = Queue::default();
    queues.push("a", &mut queue, message("t/1", 10));
    queues.push("a", &mut queue, message("t/2", 10));
    let added = queues.take_changes();
    assert_eq!(
        added,
        HashMap::from([
            (0, Change::Added("a".into())),
            (1, Change::Added("a".into()))
        ])
    );
    assert_eq!(&*queue.get(1).expect("queued").topic, "t/2");
    queues.take_all("a", &mut queue);
    queues.push("a", &mut queue, message("t/3", 10));
    assert_eq!(
        queues.take_changes(),
        HashMap::from([
            (0, Change::Removed("a".into())),
            (1, Change::Removed("a".into())),
            (2, Change::Added("a".into())),
        ])
    );
}

#[test]
fn restored_messages_keep_their_numbers_and_new_ones_come_after_them() {
    let mut queues = Queues::default();
    let mut queue = Queue::default();
    queues.restore("a", &mut queue, 41, message("t/41", 10));
    queues.forget("gone", 57);
    queues.push("a", &mut queue, message("t/new", 10));
    assert_eq!(topics(&queue), ["t/41", "t/new"]);
    assert_eq!(
        queues.take_changes(),
        HashMap::from([
            (57, Change::Removed("gone".into())),
            (58, Change::Added("a".into())),
        ])
    );
}

#[test]
fn expired_messages_are_dropped_and_the_others_keep_their_order() {
    let now = SystemTime::now();
    let expiring = |topic: &str, at: SystemTime| Delivery {
        expires_at: Some(at),
        ..message(topic, 10)
    };
    let mut queues = Queues::new(limits((100, 10_000), (2, 10_000)));
    let mut sessions = sessions();
    push(&mut queues, &mut sessions, "a", expiring("t/1", now));
    push(&mut queues, &mut sessions, "a", message("t/2", 10));
    push(&mut queues, &mut sessions, "a", expiring("t/3", now));
    push(
        &mut queues,
        &mut sessions,
        "a",
        expiring("t/4", now + Duration::from_secs(60)),
    );
    let session = sessions.get_mut("a").expect("a");
    queues.drop_expired("a", &mut session.queued, now);
    assert_eq!(topics(&session.queued), ["t/4"]);
    // The front moved with it: the total bound still finds the oldest.
    push(&mut queues, &mut sessions, "b", message("b/1", 10));
    push(&mut queues, &mut sessions, "b", message("b/2", 10));
    assert!(sessions["a"].queued.is_empty());
}
