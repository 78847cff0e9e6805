//! The broker's state on disk: sessions that outlive their connection (client id,
//! subscriptions, expiry, QoS 2 packet ids awaiting PUBREL), the messages queued for them while
//! they are offline, and retained messages, so a device reconnecting after a restart, even a
//! SIGKILL, is told its session is present and gets what was queued for it.
//!
//! Kept in keyspaces of the state directory's fjall database (see `crate::state`), one per kind,
//! each key one session or one message: `sessions` (client id → the session as JSON),
//! `retained` (topic → the message: a JSON header, then the payload as it came) and `queued`
//! (client id, a zero byte, the message's number as 8 big-endian bytes → the message, as
//! retained ones). So a change writes what changed and nothing else: a CONNECT or DISCONNECT
//! one session, a retained publish one message, a message queued for an offline session that
//! message, and its hand-over one deletion.
//!
//! fjall because its writes are what this needs: a
//! batch is one append to its journal, in the OS when the call returns (a SIGKILL loses none of
//! it) and crash-safe (recovery keeps whole batches only), with compaction in the background;
//! separate keyspaces keep a burst of session churn from rewriting the retained messages beside
//! it. The journal is fsynced every second (`Kept::run_syncer`, one database) and at shutdown,
//! so a power loss takes at most the last second.
//!
//! The store does not know the registry: the registry hands it `Changes` (the value of each key
//! it changed since the last write, `None` for gone), and this module turns them into one batch.
//! Writers take turns (`write`), so two batches never land in the opposite order of the changes
//! they carry.
//!
//! A `broker-state.json` from before (the whole state rewritten on every change) is imported on
//! the first start that finds the store empty, then renamed to `broker-state.json.migrated`.

use std::path::{Path, PathBuf};
use std::sync::{Mutex, PoisonError};
use std::time::{Duration, SystemTime};

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use bytes::Bytes;
use serde::{Deserialize, Serialize};
use thiserror::Error;
use tracing::{debug, info, warn};

use super::codec::MessageProperties;
use crate::record::QoS;

/// The whole-state file of earlier versions, imported once.
const LEGACY_FILE: &str = "broker-state.json";

/// What the legacy file is renamed to once imported.
const MIGRATED_FILE: &str = "broker-state.json.migrated";

/// The first byte of a stored message: how the rest is laid out.
const MESSAGE_FORMAT: u8 = 1;

#[derive(Debug, Error)]
pub enum StoreError {
    #[error("the broker state store failed: {0}")]
    Db(#[from] fjall::Error),
    #[error("cannot read broker state {path:?}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("broker state {path:?} is not valid: {source}")]
    Parse {
        path: PathBuf,
        source: serde_json::Error,
    },
    #[error("cannot rename {path:?} after importing it: {source}")]
    Rename {
        path: PathBuf,
        source: std::io::Error,
    },
}

/// Everything on disk, as loaded at start.
#[derive(Debug, Default)]
pub struct State {
    pub sessions: Vec<SavedSession>,
    pub retained: Vec<SavedMessage>,
    /// Per client id and message number, in that order (so each queue oldest first).
    pub queued: Vec<(String, u64, SavedMessage)>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SavedSession {
    pub client_id: String,
    pub subscriptions: Vec<SavedSubscription>,
    pub expiry_s: u32,
    pub awaiting_pubrel: Vec<u16>,
    /// Seconds since the epoch; `None` while connected.
    pub disconnected_at: Option<u64>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SavedSubscription {
    pub filter: String,
    pub qos: u8,
    #[serde(default)]
    pub no_local: bool,
    #[serde(default)]
    pub retain_as_published: bool,
    #[serde(default)]
    pub id: Option<u32>,
    /// Topics the ACL carved out of it (see `Subscription::except`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub except: Vec<String>,
}

/// A message as kept on disk: everything of a `Delivery` but the registry's own handles.
#[derive(Debug, Clone, PartialEq)]
pub struct SavedMessage {
    pub topic: String,
    pub payload: Bytes,
    pub qos: QoS,
    pub retain: bool,
    /// The publisher's MQTT 5 properties, if it set any.
    pub properties: Option<MessageProperties>,
    /// When its Message Expiry Interval runs out.
    pub expires_at: Option<SystemTime>,
    pub subscription_ids: Vec<u32>,
    /// The shared subscription it was given out through.
    pub share: Option<String>,
}

/// What changed since the last write: per key, its value now, or `None` if it is gone.
#[derive(Debug, Default)]
pub struct Changes {
    pub sessions: Vec<(String, Option<SavedSession>)>,
    pub retained: Vec<(String, Option<SavedMessage>)>,
    /// Per client id and message number.
    pub queued: Vec<(String, u64, Option<SavedMessage>)>,
}

impl Changes {
    pub fn is_empty(&self) -> bool {
        self.sessions.is_empty() && self.retained.is_empty() && self.queued.is_empty()
    }
}

/// The broker's keyspaces in the state directory's database.
pub struct Store {
    db: fjall::Database,
    sessions: fjall::Keyspace,
    retained: fjall::Keyspace,
    queued: fjall::Keyspace,
    /// Held from taking the changes to committing them (see `write`).
    turn: Mutex<()>,
}

impl Store {
    /// Opens the broker's keyspaces in `db`, importing a legacy `broker-state.json` from
    /// `state_dir` if the store has no broker state yet.
    pub fn open(db: &fjall::Database, state_dir: &Path) -> Result<Store, StoreError> {
        // Small memtables: every value is also held by the registry, so a large one would only
        // hold the same bytes twice until it is flushed.
        let options = || fjall::KeyspaceCreateOptions::default().max_memtable_size(4 << 20);
        // Payloads of 1 KiB and more go to blob files, written once when flushed: compaction
        // then moves keys and pointers, not 100 MB of retained payloads level after level.
        let separated = || {
            options().with_kv_separation(Some(
                fjall::KvSeparationOptions::default().file_target_size(16 << 20),
            ))
        };
        let store = Store {
            db: db.clone(),
            sessions: db.keyspace("sessions", options)?,
            retained: db.keyspace("retained", separated)?,
            queued: db.keyspace("queued", separated)?,
            turn: Mutex::new(()),
        };
        store.migrate(state_dir)?;
        Ok(store)
    }

    /// Everything stored. A value that cannot be read (written by a newer version, or damaged)
    /// is left out with a warning: one lost session must not keep the broker from starting.
    pub fn load(&self) -> Result<State, StoreError> {
        let mut state = State::default();
        let mut unreadable = Unreadable::default();
        for guard in self.sessions.iter() {
            let (key, value) = guard.into_inner()?;
            match serde_json::from_slice::<SavedSession>(&value) {
                Ok(session) => state.sessions.push(session),
                Err(_) => unreadable.note("sessions", &key),
            }
        }
        for guard in self.retained.iter() {
            let (key, value) = guard.into_inner()?;
            match decode_message(&value) {
                Some(message) => state.retained.push(message),
                None => unreadable.note("retained", &key),
            }
        }
        for guard in self.queued.iter() {
            let (key, value) = guard.into_inner()?;
            match (decode_queue_key(&key), decode_message(&value)) {
                (Some((client_id, number)), Some(message)) => {
                    state.queued.push((client_id, number, message));
                }
                _ => unreadable.note("queued", &key),
            }
        }
        unreadable.warn();
        Ok(state)
    }

    /// Writes what `take` returns in one batch, in the OS when this returns. Writers take
    /// turns, and `take` runs in the turn: changes taken later are committed later, so a key
    /// always ends up with its latest value. A writer whose changes were taken by the one
    /// before it finds nothing to take and returns at once: writes coalesce under load.
    pub fn write(&self, take: impl FnOnce() -> Changes) -> Result<(), StoreError> {
        let _turn = self.turn.lock().unwrap_or_else(PoisonError::into_inner);
        let changes = take();
        if changes.is_empty() {
            return Ok(());
        }
        let (sessions, retained, queued) = (
            changes.sessions.len(),
            changes.retained.len(),
            changes.queued.len(),
        );
        let mut batch = self.db.batch();
        for (client_id, session) in changes.sessions {
            match session {
                Some(session) => batch.insert(&self.sessions, client_id, encode_session(&session)),
                None => batch.remove(&self.sessions, client_id),
            }
        }
        for (topic, message) in changes.retained {
            match message {
                Some(message) => batch.insert(&self.retained, topic, encode_message(&message)),
                None => batch.remove(&self.retained, topic),
            }
        }
        for (client_id, number, message) in changes.queued {
            let key = queue_key(&client_id, number);
            match message {
                Some(message) => batch.insert(&self.queued, key, encode_message(&message)),
                None => batch.remove(&self.queued, key),
            }
        }
        batch.commit()?;
        debug!(sessions, retained, queued, "broker state written");
        Ok(())
    }

    /// Writes what is in the OS's buffers to the disk.
    pub fn sync(&self) -> Result<(), StoreError> {
        self.db.persist(fjall::PersistMode::SyncAll)?;
        Ok(())
    }

    fn is_empty(&self) -> Result<bool, StoreError> {
        Ok(self.sessions.is_empty()? && self.retained.is_empty()? && self.queued.is_empty()?)
    }

    /// Imports `state_dir/broker-state.json` into an empty store, on disk before the file is
    /// renamed, so a crash in between imports it again on the next start. A store that already
    /// holds broker state is never overwritten by the file: it is left where it is, with a
    /// warning (it would be a newer file only if an older mqtt2es ran on this state since).
    fn migrate(&self, state_dir: &Path) -> Result<(), StoreError> {
        let path = state_dir.join(LEGACY_FILE);
        let text = match std::fs::read(&path) {
            Ok(text) => text,
            Err(error) if error.kind() == std::io::ErrorKind::NotFound => return Ok(()),
            Err(source) => return Err(StoreError::Read { path, source }),
        };
        if !self.is_empty()? {
            warn!(
                file = ?path,
                "a broker-state.json beside a state store that has broker state already: not imported"
            );
            return Ok(());
        }
        let legacy: LegacyState =
            serde_json::from_slice(&text).map_err(|source| StoreError::Parse {
                path: path.clone(),
                source,
            })?;
        drop(text);
        let sessions = legacy.sessions.len();
        let mut skipped = 0;
        let changes = Changes {
            sessions: legacy
                .sessions
                .into_iter()
                .map(|s| (s.client_id.clone(), Some(s)))
                .collect(),
            retained: legacy
                .retained
                .into_iter()
                .filter_map(|m| {
                    let message = m.into_saved();
                    skipped += usize::from(message.is_none());
                    message.map(|m| (m.topic.clone(), Some(m)))
                })
                .collect(),
            queued: Vec::new(),
        };
        let retained = changes.retained.len();
        self.write(|| changes)?;
        self.sync()?;
        let migrated = state_dir.join(MIGRATED_FILE);
        std::fs::rename(&path, &migrated).map_err(|source| StoreError::Rename {
            path: path.clone(),
            source,
        })?;
        info!(
            from = ?path,
            renamed_to = ?migrated,
            sessions,
            retained,
            skipped,
            "broker state imported from broker-state.json into the state store"
        );
        Ok(())
    }
}

/// Values `load` could not read, warned about once.
#[derive(Default)]
struct Unreadable {
    count: usize,
    first: Option<String>,
}

impl Unreadable {
    fn note(&mut self, keyspace: &str, key: &[u8]) {
        self.count += 1;
        self.first
            .get_or_insert_with(|| format!("{keyspace}/{}", String::from_utf8_lossy(key)));
    }

    fn warn(self) {
        if let Some(first) = self.first {
            warn!(
                count = self.count,
                first, "broker state entries that cannot be read were left out"
            );
        }
    }
}

/// `<client id>\0<number, 8 bytes big-endian>`: a client id has no zero byte (MQTT forbids
/// U+0000 in strings), and the numbers of one queue sort in the order they were given.
fn queue_key(client_id: &str, number: u64) -> Vec<u8> {
    let mut key = Vec::with_capacity(client_id.len() + 9);
    key.extend_from_slice(client_id.as_bytes());
    key.push(0);
    key.extend_from_slice(&number.to_be_bytes());
    key
}

fn decode_queue_key(key: &[u8]) -> Option<(String, u64)> {
    let (client_id, number) = key.split_at(key.len().checked_sub(9)?);
    let (&zero, number) = number.split_first()?;
    (zero == 0).then_some(())?;
    let client_id = String::from_utf8(client_id.to_vec()).ok()?;
    Some((client_id, u64::from_be_bytes(number.try_into().ok()?)))
}

fn encode_session(session: &SavedSession) -> Vec<u8> {
    serde_json::to_vec(session).expect("a session of strings and numbers always serialises")
}

/// A stored message's header: everything but the payload, which follows it as it came.
#[derive(Serialize, Deserialize)]
struct Header {
    topic: String,
    qos: u8,
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    retain: bool,
    /// Milliseconds since the epoch.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    expires_at_ms: Option<u64>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    subscription_ids: Vec<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    share: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    properties: Option<HeaderProperties>,
}

#[derive(Default, Serialize, Deserialize)]
struct HeaderProperties {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    payload_format: Option<u8>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    message_expiry_s: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    content_type: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    response_topic: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    correlation_data_base64: Option<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    user_properties: Vec<(String, String)>,
}

/// `[format][header length, u32 big-endian][header JSON][payload]`: the payload stays as it
/// came (no base64), and the header can grow fields without a new format.
fn encode_message(message: &SavedMessage) -> Vec<u8> {
    let header = Header {
        topic: message.topic.clone(),
        qos: message.qos.level(),
        retain: message.retain,
        expires_at_ms: message.expires_at.map(|t| {
            let ms = t
                .duration_since(SystemTime::UNIX_EPOCH)
                .unwrap_or_default()
                .as_millis();
            u64::try_from(ms).unwrap_or(u64::MAX)
        }),
        subscription_ids: message.subscription_ids.clone(),
        share: message.share.clone(),
        properties: message.properties.as_ref().map(|p| HeaderProperties {
            payload_format: p.payload_format,
            message_expiry_s: p.message_expiry_s,
            content_type: p.content_type.clone(),
            response_topic: p.response_topic.clone(),
            correlation_data_base64: p.correlation_data.as_ref().map(|d| STANDARD.encode(d)),
            user_properties: p.user_properties.clone(),
        }),
    };
    let header = serde_json::to_vec(&header).expect("a header of strings and numbers serialises");
    let header_len = u32::try_from(header.len()).expect("a header is far below 4 GiB");
    let mut value = Vec::with_capacity(5 + header.len() + message.payload.len());
    value.push(MESSAGE_FORMAT);
    value.extend_from_slice(&header_len.to_be_bytes());
    value.extend_from_slice(&header);
    value.extend_from_slice(&message.payload);
    value
}

fn decode_message(value: &[u8]) -> Option<SavedMessage> {
    let (&format, rest) = value.split_first()?;
    if format != MESSAGE_FORMAT {
        return None;
    }
    let header_len = u32::from_be_bytes(rest.get(..4)?.try_into().ok()?) as usize;
    let header: Header = serde_json::from_slice(rest.get(4..4 + header_len)?).ok()?;
    let payload = Bytes::copy_from_slice(rest.get(4 + header_len..)?);
    let properties = match header.properties {
        Some(p) => Some(MessageProperties {
            payload_format: p.payload_format,
            message_expiry_s: p.message_expiry_s,
            content_type: p.content_type,
            response_topic: p.response_topic,
            correlation_data: match p.correlation_data_base64 {
                Some(data) => Some(Bytes::from(STANDARD.decode(data).ok()?)),
                None => None,
            },
            user_properties: p.user_properties,
        }),
        None => None,
    };
    Some(SavedMessage {
        topic: header.topic,
        payload,
        qos: QoS::saturating(header.qos),
        retain: header.retain,
        properties,
        expires_at: header
            .expires_at_ms
            .map(|ms| SystemTime::UNIX_EPOCH + Duration::from_millis(ms)),
        subscription_ids: header.subscription_ids,
        share: header.share,
    })
}

/// `broker-state.json` as earlier versions wrote it.
#[derive(Deserialize)]
struct LegacyState {
    sessions: Vec<SavedSession>,
    retained: Vec<LegacyMessage>,
}

#[derive(Deserialize)]
struct LegacyMessage {
    topic: String,
    payload_base64: String,
    qos: u8,
    #[serde(default)]
    user_properties: Vec<(String, String)>,
    #[serde(default)]
    properties: Option<LegacyProperties>,
    /// Seconds since the epoch.
    #[serde(default)]
    expires_at: Option<u64>,
}

#[derive(Default, Deserialize)]
struct LegacyProperties {
    payload_format: Option<u8>,
    message_expiry_s: Option<u32>,
    content_type: Option<String>,
    response_topic: Option<String>,
    correlation_data_base64: Option<String>,
}

impl LegacyMessage {
    /// `None` if its base64 is damaged.
    fn into_saved(self) -> Option<SavedMessage> {
        let payload = STANDARD.decode(self.payload_base64).ok()?;
        let saved = self.properties.unwrap_or_default();
        let properties = MessageProperties {
            payload_format: saved.payload_format,
            message_expiry_s: saved.message_expiry_s,
            content_type: saved.content_type,
            response_topic: saved.response_topic,
            correlation_data: match saved.correlation_data_base64 {
                Some(data) => Some(Bytes::from(STANDARD.decode(data).ok()?)),
                None => None,
            },
            user_properties: self.user_properties,
        };
        Some(SavedMessage {
            topic: self.topic,
            payload: Bytes::from(payload),
            qos: QoS::saturating(self.qos),
            retain: true,
            properties: (!properties.is_empty()).then_some(properties),
            expires_at: self
                .expires_at
                .map(|s| SystemTime::UNIX_EPOCH + Duration::from_secs(s)),
            subscription_ids: Vec::new(),
            share: None,
        })
    }
}

#[cfg(test)]
mod tests;
