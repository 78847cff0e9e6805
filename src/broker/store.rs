//! The broker's state on disk (`broker.state_dir/broker-state.json`): sessions that outlive
//! their connection (client id, subscriptions, expiry, QoS 2 packet ids awaiting PUBREL) and
//! retained messages, so a device reconnecting after a restart, even a SIGKILL, is told its
//! session is present.
//!
//! Whole-file snapshots, written atomically (temp file, fsync, rename, fsync of the directory)
//! by one task shortly after each change, not a write-ahead log: the state is small, changes
//! come in bursts, and a snapshot at most a moment old loses nothing that MQTT does not
//! recover by itself. Messages queued for offline sessions are not persisted: they live in
//! memory only, like QoS 0 traffic.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use bytes::Bytes;
use serde::{Deserialize, Serialize};
use thiserror::Error;
use tokio_util::sync::CancellationToken;
use tracing::{debug, error, info};

use super::codec::MessageProperties;
use super::session::{Delivery, Registry, Session};
use crate::record::QoS;

const FILE: &str = "broker-state.json";

/// How long the store task lets changes accumulate before writing them.
const DEBOUNCE: Duration = Duration::from_millis(100);

/// How often expired sessions are looked for.
const PURGE_EVERY: Duration = Duration::from_secs(30);

#[derive(Debug, Error)]
pub enum StoreError {
    #[error("cannot create broker.state_dir {path:?}: {source}")]
    CreateDir {
        path: PathBuf,
        source: std::io::Error,
    },
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
    #[error("cannot write broker state {path:?}: {source}")]
    Write {
        path: PathBuf,
        source: std::io::Error,
    },
}

#[derive(Debug, Default, Serialize, Deserialize)]
pub struct State {
    pub sessions: Vec<SavedSession>,
    pub retained: Vec<SavedMessage>,
}

#[derive(Debug, Serialize, Deserialize)]
pub struct SavedSession {
    pub client_id: String,
    pub subscriptions: Vec<SavedSubscription>,
    pub expiry_s: u32,
    pub awaiting_pubrel: Vec<u16>,
    /// Seconds since the epoch; `None` while connected.
    pub disconnected_at: Option<u64>,
}

#[derive(Debug, Serialize, Deserialize)]
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

#[derive(Debug, Serialize, Deserialize)]
pub struct SavedMessage {
    pub topic: String,
    pub payload_base64: String,
    pub qos: u8,
    #[serde(default)]
    pub user_properties: Vec<(String, String)>,
    /// The publisher's other MQTT 5 properties.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub properties: Option<SavedProperties>,
    /// Seconds since the epoch when its Message Expiry Interval runs out.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expires_at: Option<u64>,
}

#[derive(Debug, Default, Serialize, Deserialize)]
pub struct SavedProperties {
    pub payload_format: Option<u8>,
    pub message_expiry_s: Option<u32>,
    pub content_type: Option<String>,
    pub response_topic: Option<String>,
    pub correlation_data_base64: Option<String>,
}

pub fn qos(level: u8) -> QoS {
    match level {
        0 => QoS::AtMostOnce,
        1 => QoS::AtLeastOnce,
        _ => QoS::ExactlyOnce,
    }
}

impl SavedMessage {
    pub fn into_delivery(self) -> Option<Delivery> {
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
        Some(Delivery {
            share: None,
            topic: Arc::from(self.topic),
            payload: Bytes::from(payload),
            qos: qos(self.qos),
            retain: true,
            properties: (!properties.is_empty()).then(|| Arc::new(properties)),
            expires_at: self
                .expires_at
                .map(|s| SystemTime::UNIX_EPOCH + Duration::from_secs(s)),
            subscription_ids: Vec::new(),
        })
    }
}

impl State {
    pub fn capture<'a>(
        sessions: impl Iterator<Item = (&'a str, &'a Session)>,
        retained: impl Iterator<Item = &'a Delivery>,
    ) -> State {
        let epoch = |t: SystemTime| {
            t.duration_since(SystemTime::UNIX_EPOCH)
                .map(|d| d.as_secs())
                .unwrap_or(0)
        };
        State {
            sessions: sessions
                .map(|(client_id, s)| SavedSession {
                    client_id: client_id.to_owned(),
                    subscriptions: s
                        .subscriptions
                        .iter()
                        .map(|sub| SavedSubscription {
                            filter: sub.filter.as_str().to_owned(),
                            qos: sub.qos.level(),
                            no_local: sub.no_local,
                            retain_as_published: sub.retain_as_published,
                            id: sub.id,
                            except: sub.except.iter().map(|e| e.as_str().to_owned()).collect(),
                        })
                        .collect(),
                    expiry_s: s.expiry_s,
                    awaiting_pubrel: s.awaiting_pubrel.iter().copied().collect(),
                    disconnected_at: s.disconnected_at.map(epoch),
                })
                .collect(),
            retained: retained
                .map(|m| {
                    let properties = m.properties.as_deref();
                    SavedMessage {
                        topic: m.topic.to_string(),
                        payload_base64: STANDARD.encode(&m.payload),
                        qos: m.qos.level(),
                        user_properties: properties
                            .map(|p| p.user_properties.clone())
                            .unwrap_or_default(),
                        properties: properties.map(|p| SavedProperties {
                            payload_format: p.payload_format,
                            message_expiry_s: p.message_expiry_s,
                            content_type: p.content_type.clone(),
                            response_topic: p.response_topic.clone(),
                            correlation_data_base64: p
                                .correlation_data
                                .as_ref()
                                .map(|d| STANDARD.encode(d)),
                        }),
                        expires_at: m.expires_at.map(epoch),
                    }
                })
                .collect(),
        }
    }
}

/// Where the state lives; creating the directory is part of opening it, so a bad
/// `state_dir` fails at start, not at the first write.
pub struct Store {
    path: PathBuf,
}

impl Store {
    pub fn open(dir: &Path) -> Result<Store, StoreError> {
        std::fs::create_dir_all(dir).map_err(|source| StoreError::CreateDir {
            path: dir.to_owned(),
            source,
        })?;
        Ok(Store {
            path: dir.join(FILE),
        })
    }

    pub fn load(&self) -> Result<State, StoreError> {
        let text = match std::fs::read(&self.path) {
            Ok(text) => text,
            Err(error) if error.kind() == std::io::ErrorKind::NotFound => {
                return Ok(State::default());
            }
            Err(source) => {
                return Err(StoreError::Read {
                    path: self.path.clone(),
                    source,
                });
            }
        };
        serde_json::from_slice(&text).map_err(|source| StoreError::Parse {
            path: self.path.clone(),
            source,
        })
    }

    /// Writes `state` so that a crash at any point leaves either the old or the new file.
    pub fn save(&self, state: &State) -> Result<(), StoreError> {
        let err = |source| StoreError::Write {
            path: self.path.clone(),
            source,
        };
        let bytes = serde_json::to_vec(state).map_err(|e| err(std::io::Error::other(e)))?;
        let temp = self.path.with_extension("json.tmp");
        {
            use std::io::Write;
            let mut file = std::fs::File::create(&temp).map_err(err)?;
            file.write_all(&bytes).map_err(err)?;
            file.sync_all().map_err(err)?;
        }
        std::fs::rename(&temp, &self.path).map_err(err)?;
        if let Some(dir) = self.path.parent() {
            std::fs::File::open(dir)
                .and_then(|d| d.sync_all())
                .map_err(err)?;
        }
        Ok(())
    }

    /// Writes the registry whenever it changed, until `stop`; then once more, last, after
    /// the connections handed their sessions back (the caller awaits this task after them).
    pub async fn run(self: Arc<Self>, registry: Arc<Registry>, stop: CancellationToken) {
        let store = self;
        let mut written = registry.version();
        let mut purge = tokio::time::interval(PURGE_EVERY);
        loop {
            tokio::select! {
                _ = registry.changed() => {
                    tokio::time::sleep(DEBOUNCE).await;
                }
                _ = purge.tick() => {
                    let purged = registry.purge_expired();
                    if purged > 0 {
                        info!(purged, "expired sessions removed");
                    }
                }
                _ = stop.cancelled() => break,
            }
            let version = registry.version();
            if version != written {
                written = version;
                save_blocking(&store, &registry).await;
            }
        }
    }

    pub async fn save_now(self: &Arc<Self>, registry: &Arc<Registry>) {
        save_blocking(self, registry).await;
    }
}

async fn save_blocking(store: &Arc<Store>, registry: &Arc<Registry>) {
    let state = registry.snapshot();
    let store = Arc::clone(store);
    let sessions = state.sessions.len();
    match tokio::task::spawn_blocking(move || store.save(&state)).await {
        Ok(Ok(())) => debug!(sessions, "broker state saved"),
        Ok(Err(error)) => error!(%error, "broker state not saved"),
        Err(error) => error!(%error, "broker state writer failed"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_saved_state_loads_back_the_same() {
        let dir = tempfile::tempdir().expect("temp dir");
        let store = Store::open(&dir.path().join("state")).expect("open");
        assert!(store.load().expect("empty").sessions.is_empty());
        let state = State {
            sessions: vec![SavedSession {
                client_id: "pi-1".into(),
                subscriptions: vec![SavedSubscription {
                    filter: "cmd/#".into(),
                    qos: 1,
                    no_local: false,
                    retain_as_published: false,
                    id: None,
                    except: Vec::new(),
                }],
                expiry_s: u32::MAX,
                awaiting_pubrel: vec![3, 9],
                disconnected_at: None,
            }],
            retained: vec![SavedMessage {
                topic: "status".into(),
                payload_base64: STANDARD.encode(b"\x00online"),
                qos: 1,
                user_properties: Vec::new(),
                properties: None,
                expires_at: None,
            }],
        };
        store.save(&state).expect("save");
        let back = store.load().expect("load");
        assert_eq!(back.sessions[0].client_id, "pi-1");
        assert_eq!(back.sessions[0].awaiting_pubrel, vec![3, 9]);
        let retained = back
            .retained
            .into_iter()
            .next()
            .and_then(SavedMessage::into_delivery)
            .expect("retained");
        assert_eq!(&retained.payload[..], b"\x00online");
        assert!(!dir.path().join("state/broker-state.json.tmp").exists());
    }

    #[test]
    fn a_corrupt_state_file_is_an_error_that_names_it() {
        let dir = tempfile::tempdir().expect("temp dir");
        std::fs::write(dir.path().join(FILE), b"{not json").expect("write");
        let store = Store::open(dir.path()).expect("open");
        let error = store.load().expect_err("corrupt");
        assert!(error.to_string().contains("broker-state.json"), "{error}");
    }

    #[test]
    fn a_restored_registry_presents_persistent_sessions_and_retained_messages() {
        let state = State {
            sessions: vec![SavedSession {
                client_id: "pi-1".into(),
                subscriptions: Vec::new(),
                expiry_s: 60,
                awaiting_pubrel: vec![5],
                disconnected_at: None,
            }],
            retained: Vec::new(),
        };
        let registry = Registry::restore(state);
        assert!(registry.is_awaiting_pubrel("pi-1", 5));
        assert_eq!(registry.session_count(), 1);
    }
}
