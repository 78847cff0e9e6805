//! The store on a real fjall database: what comes back after reopening, that a change writes only
//! what changed, unreadable entries, and the import of a legacy `broker-state.json`.

use super::*;

fn open(dir: &Path) -> Store {
    let db = crate::state::open(dir).expect("open the database");
    Store::open(&db, dir).expect("open the store")
}

fn session(client_id: &str) -> SavedSession {
    SavedSession {
        client_id: client_id.into(),
        subscriptions: vec![
            SavedSubscription {
                filter: "cmd/#".into(),
                qos: 2,
                no_local: true,
                retain_as_published: true,
                id: Some(42),
                except: vec!["cmd/secret/#".into()],
            },
            SavedSubscription {
                filter: "$share/g/jobs/+".into(),
                qos: 1,
                no_local: false,
                retain_as_published: false,
                id: None,
                except: Vec::new(),
            },
        ],
        expiry_s: u32::MAX,
        awaiting_pubrel: vec![3, 9],
        disconnected_at: Some(1_700_000_000),
    }
}

fn message(topic: &str, payload: &'static [u8]) -> SavedMessage {
    SavedMessage {
        topic: topic.into(),
        payload: Bytes::from_static(payload),
        qos: QoS::AtLeastOnce,
        retain: true,
        properties: None,
        expires_at: None,
        subscription_ids: Vec::new(),
        share: None,
    }
}

/// A message with every field set, properties and all.
fn full_message(topic: &str) -> SavedMessage {
    SavedMessage {
        topic: topic.into(),
        payload: Bytes::from_static(b"\x00\xffbinary"),
        qos: QoS::ExactlyOnce,
        retain: true,
        properties: Some(MessageProperties {
            payload_format: Some(1),
            message_expiry_s: Some(3600),
            content_type: Some("application/json".into()),
            response_topic: Some("reply/here".into()),
            correlation_data: Some(Bytes::from_static(b"\x01\x02")),
            user_properties: vec![("site".into(), "lab".into()), ("site".into(), "two".into())],
        }),
        expires_at: Some(SystemTime::UNIX_EPOCH + Duration::from_millis(1_800_000_000_123)),
        subscription_ids: vec![7, 8],
        share: Some("$share/g/status/#".into()),
    }
}

fn write(store: &Store, changes: Changes) {
    store.write(|| changes).expect("write");
}

#[test]
fn sessions_and_retained_messages_come_back_after_reopening_with_every_field() {
    let dir = tempfile::tempdir().expect("temp dir");
    {
        let store = open(dir.path());
        assert!(store.load().expect("load").sessions.is_empty());
        write(
            &store,
            Changes {
                queued: Vec::new(),
                sessions: vec![("pi-1".into(), Some(session("pi-1")))],
                retained: vec![
                    ("status/pi-1".into(), Some(full_message("status/pi-1"))),
                    ("status/pi-2".into(), Some(message("status/pi-2", b"on"))),
                ],
            },
        );
    }
    let state = open(dir.path()).load().expect("load");
    assert_eq!(state.sessions, vec![session("pi-1")]);
    assert_eq!(
        state.retained,
        vec![full_message("status/pi-1"), message("status/pi-2", b"on")]
    );
}

#[test]
fn a_deleted_session_and_a_cleared_retained_message_stay_gone_and_later_values_win() {
    let dir = tempfile::tempdir().expect("temp dir");
    {
        let store = open(dir.path());
        write(
            &store,
            Changes {
                queued: Vec::new(),
                sessions: vec![
                    ("pi-1".into(), Some(session("pi-1"))),
                    ("pi-2".into(), Some(session("pi-2"))),
                ],
                retained: vec![
                    ("a".into(), Some(message("a", b"1"))),
                    ("b".into(), Some(message("b", b"1"))),
                ],
            },
        );
        let mut later = session("pi-2");
        later.awaiting_pubrel.clear();
        write(
            &store,
            Changes {
                queued: Vec::new(),
                sessions: vec![("pi-1".into(), None), ("pi-2".into(), Some(later))],
                retained: vec![("a".into(), None), ("b".into(), Some(message("b", b"2")))],
            },
        );
    }
    let state = open(dir.path()).load().expect("load");
    let ids: Vec<_> = state
        .sessions
        .iter()
        .map(|s| s.client_id.as_str())
        .collect();
    assert_eq!(ids, ["pi-2"]);
    assert!(state.sessions[0].awaiting_pubrel.is_empty());
    assert_eq!(state.retained, vec![message("b", b"2")]);
}

#[test]
fn a_changed_session_writes_that_session_and_nothing_else() {
    let dir = tempfile::tempdir().expect("temp dir");
    let store = open(dir.path());
    let big: &'static [u8] = Box::leak(vec![7u8; 1 << 20].into_boxed_slice());
    write(
        &store,
        Changes {
            queued: Vec::new(),
            sessions: Vec::new(),
            retained: (0..8)
                .map(|n| {
                    let topic = format!("big/{n}");
                    (topic.clone(), Some(message(&topic, big)))
                })
                .collect(),
        },
    );
    let journal = |store: &Store| store.db.journal_disk_space().expect("journal size");
    let before = journal(&store);
    for _ in 0..30 {
        write(
            &store,
            Changes {
                queued: Vec::new(),
                sessions: vec![("pi-1".into(), Some(session("pi-1")))],
                retained: Vec::new(),
            },
        );
    }
    let grown = journal(&store) - before;
    assert!(
        grown < 30 * 1024,
        "30 session writes grew the journal by {grown} bytes"
    );
}

const LEGACY: &str = r#"{
  "sessions": [
    {"client_id": "pi-1", "subscriptions": [
       {"filter": "cmd/#", "qos": 1, "no_local": true, "retain_as_published": true, "id": 5,
        "except": ["cmd/secret"]},
       {"filter": "old/#", "qos": 0}],
     "expiry_s": 4294967295, "awaiting_pubrel": [7], "disconnected_at": null}
  ],
  "retained": [
    {"topic": "status/pi-1", "payload_base64": "AG9ubGluZQ==", "qos": 1,
     "user_properties": [["site", "lab"]],
     "properties": {"payload_format": 1, "message_expiry_s": 60, "content_type": "text/plain",
                    "response_topic": "r", "correlation_data_base64": "AQI="},
     "expires_at": 1800000000},
    {"topic": "status/pi-2", "payload_base64": "b2Zm", "qos": 0}
  ]
}"#;

#[test]
fn a_legacy_state_file_is_imported_into_an_empty_store_and_renamed() {
    let dir = tempfile::tempdir().expect("temp dir");
    std::fs::write(dir.path().join(LEGACY_FILE), LEGACY).expect("write");
    {
        let state = open(dir.path()).load().expect("load");
        assert_eq!(state.sessions.len(), 1);
    }
    assert!(!dir.path().join(LEGACY_FILE).exists(), "renamed");
    assert!(dir.path().join(MIGRATED_FILE).exists(), "kept as .migrated");

    let state = open(dir.path()).load().expect("load after a restart");
    let session = &state.sessions[0];
    assert_eq!(session.client_id, "pi-1");
    assert_eq!(session.expiry_s, u32::MAX);
    assert_eq!(session.awaiting_pubrel, vec![7]);
    assert_eq!(
        session.subscriptions[0],
        SavedSubscription {
            filter: "cmd/#".into(),
            qos: 1,
            no_local: true,
            retain_as_published: true,
            id: Some(5),
            except: vec!["cmd/secret".into()],
        }
    );
    assert_eq!(session.subscriptions[1].filter, "old/#");
    assert_eq!(
        state.retained[0],
        SavedMessage {
            topic: "status/pi-1".into(),
            payload: Bytes::from_static(b"\x00online"),
            qos: QoS::AtLeastOnce,
            retain: true,
            properties: Some(MessageProperties {
                payload_format: Some(1),
                message_expiry_s: Some(60),
                content_type: Some("text/plain".into()),
                response_topic: Some("r".into()),
                correlation_data: Some(Bytes::from_static(b"\x01\x02")),
                user_properties: vec![("site".into(), "lab".into())],
            }),
            expires_at: Some(SystemTime::UNIX_EPOCH + Duration::from_secs(1_800_000_000)),
            subscription_ids: Vec::new(),
            share: None,
        }
    );
    assert_eq!(
        state.retained[1],
        message("status/pi-2", b"off").with_qos0()
    );
}

impl SavedMessage {
    fn with_qos0(mut self) -> SavedMessage {
        self.qos = QoS::AtMostOnce;
        self
    }
}

#[test]
fn a_legacy_state_file_beside_a_store_with_broker_state_is_not_imported() {
    let dir = tempfile::tempdir().expect("temp dir");
    {
        let store = open(dir.path());
        write(
            &store,
            Changes {
                queued: Vec::new(),
                sessions: vec![("pi-9".into(), Some(session("pi-9")))],
                retained: Vec::new(),
            },
        );
    }
    std::fs::write(dir.path().join(LEGACY_FILE), LEGACY).expect("write");
    let state = open(dir.path()).load().expect("load");
    let ids: Vec<_> = state
        .sessions
        .iter()
        .map(|s| s.client_id.as_str())
        .collect();
    assert_eq!(ids, ["pi-9"]);
    assert!(state.retained.is_empty());
    assert!(dir.path().join(LEGACY_FILE).exists(), "left where it was");
}

#[test]
fn a_corrupt_legacy_state_file_is_an_error_that_names_it() {
    let dir = tempfile::tempdir().expect("temp dir");
    std::fs::write(dir.path().join(LEGACY_FILE), b"{not json").expect("write");
    let db = crate::state::open(dir.path()).expect("open the database");
    let error = Store::open(&db, dir.path())
        .err()
        .expect("a corrupt file is an error");
    assert!(error.to_string().contains("broker-state.json"), "{error}");
}

#[test]
fn an_entry_that_cannot_be_read_is_left_out_and_the_rest_loads() {
    let dir = tempfile::tempdir().expect("temp dir");
    {
        let store = open(dir.path());
        write(
            &store,
            Changes {
                queued: Vec::new(),
                sessions: vec![("pi-1".into(), Some(session("pi-1")))],
                retained: vec![("ok".into(), Some(message("ok", b"1")))],
            },
        );
        store
            .sessions
            .insert("broken", b"{".as_slice())
            .expect("insert");
        store
            .retained
            .insert("broken", b"\x09?".as_slice())
            .expect("insert");
    }
    let state = open(dir.path()).load().expect("load");
    assert_eq!(state.sessions.len(), 1);
    assert_eq!(state.retained, vec![message("ok", b"1")]);
}

#[test]
fn queued_messages_come_back_per_session_in_number_order_and_deletes_stay_deleted() {
    let dir = tempfile::tempdir().expect("temp dir");
    {
        let store = open(dir.path());
        let queued = |id: &str, n: u64| (id.to_owned(), n, Some(full_message(&format!("q/{n}"))));
        write(
            &store,
            Changes {
                queued: vec![
                    queued("pi-1", 300),
                    queued("pi", 2),
                    queued("pi-1", 7),
                    queued("pi", 1),
                ],
                ..Changes::default()
            },
        );
        write(
            &store,
            Changes {
                queued: vec![("pi".into(), 1, None)],
                ..Changes::default()
            },
        );
    }
    let state = open(dir.path()).load().expect("load");
    let keys: Vec<_> = state
        .queued
        .iter()
        .map(|(id, n, _)| (id.as_str(), *n))
        .collect();
    assert_eq!(keys, [("pi", 2), ("pi-1", 7), ("pi-1", 300)]);
    assert_eq!(state.queued[0].2, full_message("q/2"));
}
