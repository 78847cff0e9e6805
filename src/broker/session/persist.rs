//! The registry's side of persistence: it is rebuilt from what the store loaded, notes under its
//! lock which keys changed (`Dirty`: client ids and retained topics, not values; the offline
//! queues note theirs by message number, see `queue`), and hands the store those keys' values
//! as they are when it writes. A session changed ten times between two writes is written once,
//! as it is then; a message queued and handed over between two writes is never written.
//!
//! Two kinds of writer, one store (whose turns keep them in order): a connection about to send
//! acknowledgements writes everything changed so far (`before_acks`), so what a publish caused
//! (its retained copy, its copies queued for offline subscribers, a QoS 2 id awaiting PUBREL)
//! is on disk before the publisher hears it was received; and the writer task (`run_writer`)
//! writes shortly after any other change (CONNECT, SUBSCRIBE, DISCONNECT), which no
//! acknowledgement waits for.
//!
//! Only sessions that outlive their connection are stored: a clean session's connect and
//! disconnect write nothing at all.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime};

use tokio_util::sync::CancellationToken;
use tracing::{error, info};

use super::entry::Session;
use super::queue::{Change, Queue, QueueLimits};
use super::registry::Registry;
use super::sharing::join;
use crate::broker::delivery::Delivery;
use crate::broker::store::{Changes, SavedMessage, SavedSession, SavedSubscription, State};
use crate::broker::store::{Store, StoreError};
use crate::broker::subscription::Subscription;
use crate::reading::Assignments;
use crate::record::QoS;
use crate::topic::TopicFilter;

/// How long the writer task lets changes gather before writing them.
const DEBOUNCE: Duration = Duration::from_millis(100);

/// How often expired sessions are looked for.
const PURGE_EVERY: Duration = Duration::from_secs(30);

impl Registry {
    /// Sessions, their queues and retained messages as persisted by an earlier run. Sessions
    /// that were connected when it stopped count as disconnected now, so their expiry starts
    /// over. What has expired meanwhile is left out, and deleted by the first write; so are
    /// queued messages beyond `limits` (they may have been lowered since).
    pub fn restore(state: State, limits: QueueLimits) -> Registry {
        let registry = Registry::with_limits(limits);
        {
            let mut guard = registry.lock();
            let inner = &mut *guard;
            let now = SystemTime::now();
            for saved in state.sessions {
                inner.stored.insert(saved.client_id.clone());
                let session = Session {
                    subscriptions: saved
                        .subscriptions
                        .iter()
                        .filter_map(subscription)
                        .collect(),
                    expiry_s: saved.expiry_s,
                    awaiting_pubrel: saved.awaiting_pubrel.into_iter().collect(),
                    readings: Assignments::default(),
                    queued: Queue::default(),
                    unfinished: Vec::new(),
                    disconnected_at: Some(
                        saved
                            .disconnected_at
                            .map(|s| SystemTime::UNIX_EPOCH + Duration::from_secs(s))
                            .unwrap_or(now),
                    ),
                    attached: None,
                    last_connection: 0,
                    will_waiting: None,
                };
                if session.expired(now) {
                    inner.dirty.sessions.insert(saved.client_id);
                    continue;
                }
                for subscription in &session.subscriptions {
                    join(&mut inner.shares, &saved.client_id, &subscription.filter);
                }
                inner
                    .sessions
                    .insert(saved.client_id.clone(), Box::new(session));
                inner.reindex(&saved.client_id);
            }
            for message in state.retained {
                let delivery = delivery(message);
                if delivery.expired(now) {
                    inner.dirty.retained.insert(delivery.topic.to_string());
                } else {
                    inner.retained.update(&delivery);
                }
            }
            let queues = &mut inner.queues;
            for (client_id, number, message) in state.queued {
                let delivery = delivery(message);
                match inner.sessions.get_mut(&client_id) {
                    Some(session) if !delivery.expired(now) => {
                        queues.restore(&client_id, &mut session.queued, number, delivery);
                    }
                    _ => queues.forget(&client_id, number),
                }
            }
            for (client_id, session) in &mut inner.sessions {
                queues.keep_in_bounds(client_id, &mut session.queued);
            }
            queues.trim(&mut inner.sessions);
        }
        registry
    }

    /// Writes every change to `store` from now on.
    pub fn keep_in(&mut self, store: Store) {
        self.store = Some(store);
    }

    /// Writes everything changed so far; in the OS (safe from a SIGKILL) when this returns.
    /// Cheap when nothing changed. Does nothing without a store (tests of the registry alone).
    pub fn commit(&self) {
        if let Some(store) = &self.store {
            logged(store.write(|| self.take_changes()));
        }
    }

    /// Before acknowledgements go out to `client_id`: writes everything changed so far (what
    /// its publishes caused: retained copies, QoS 2 ids now awaiting PUBREL), then forgets
    /// what those publishes were assigned (see `kept`). On disk when this returns.
    pub fn before_acks(&self, client_id: &str, forget: &[u16]) {
        self.commit();
        if !forget.is_empty() {
            self.forget_kept(client_id, forget);
        }
    }

    /// Writes the last changes and fsyncs them: at shutdown, after the connections handed
    /// their sessions back.
    pub fn commit_and_sync(&self) {
        self.commit();
        if let Some(store) = &self.store {
            logged(store.sync());
        }
    }

    /// Each changed key's value now: the session if it outlives its connection (`None` if it
    /// is gone, or no longer does and was stored), the retained message (`None`: cleared).
    pub(super) fn take_changes(&self) -> Changes {
        let mut inner = self.lock();
        let inner = &mut *inner;
        if inner.dirty.is_empty() && !inner.queues.has_changes() {
            return Changes::default();
        }
        let dirty = std::mem::take(&mut inner.dirty);
        let mut changes = Changes::default();
        for client_id in dirty.sessions {
            match inner.sessions.get(&client_id).filter(|s| s.expiry_s > 0) {
                Some(session) => {
                    let saved = saved_session(&client_id, session);
                    inner.stored.insert(client_id.clone());
                    changes.sessions.push((client_id, Some(saved)));
                }
                None => {
                    if inner.stored.remove(&client_id) {
                        changes.sessions.push((client_id, None));
                    }
                }
            }
        }
        for topic in dirty.retained {
            let message = inner.retained.get(&topic).map(saved_message);
            changes.retained.push((topic, message));
        }
        for (number, change) in inner.queues.take_changes() {
            match change {
                Change::Added(client_id) => {
                    // Still queued: a message handed over or dropped since it was added is not
                    // noted as added any more (see `Queues::removed`).
                    let message = inner
                        .sessions
                        .get(&client_id)
                        .and_then(|s| s.queued.get(number))
                        .map(saved_message);
                    if message.is_some() {
                        changes.queued.push((client_id, number, message));
                    }
                }
                Change::Removed(client_id) => changes.queued.push((client_id, number, None)),
            }
        }
        changes
    }

    /// Writes changes shortly after they happen and removes expired sessions, until `stop`;
    /// then writes what is left (the caller awaits this after the connections ended).
    pub async fn run_writer(self: Arc<Self>, stop: CancellationToken) {
        let mut purge = tokio::time::interval(PURGE_EVERY);
        loop {
            tokio::select! {
                () = self.changed() => {
                    tokio::time::sleep(DEBOUNCE).await;
                }
                _ = purge.tick() => {
                    let purged = self.purge_expired();
                    if purged > 0 {
                        info!(purged, "expired sessions removed");
                    }
                }
                () = stop.cancelled() => break,
            }
            self.commit_blocking(Registry::commit).await;
        }
        self.commit_blocking(Registry::commit_and_sync).await;
    }

    async fn commit_blocking(self: &Arc<Self>, write: fn(&Registry)) {
        let registry = Arc::clone(self);
        if let Err(error) = tokio::task::spawn_blocking(move || write(&registry)).await {
            error!(%error, "the broker state writer failed");
        }
    }
}

/// Logs a failed write, the first and every thousandth after it. The state in memory goes on;
/// what was not written is lost only if mqtt2es stops before a later write succeeds.
fn logged(result: Result<(), StoreError>) {
    static FAILURES: AtomicU64 = AtomicU64::new(0);
    if let Err(error) = result {
        let n = FAILURES.fetch_add(1, Ordering::Relaxed);
        if n.is_multiple_of(1000) {
            error!(%error, failures = n + 1, "broker state not written");
        }
    }
}

fn subscription(saved: &SavedSubscription) -> Option<Subscription> {
    Some(Subscription {
        filter: TopicFilter::parse(&saved.filter).ok()?,
        qos: QoS::saturating(saved.qos),
        no_local: saved.no_local,
        retain_as_published: saved.retain_as_published,
        id: saved.id,
        except: saved
            .except
            .iter()
            .filter_map(|e| TopicFilter::parse(e).ok())
            .collect(),
    })
}

fn saved_session(client_id: &str, session: &Session) -> SavedSession {
    SavedSession {
        client_id: client_id.to_owned(),
        subscriptions: session
            .subscriptions
            .iter()
            .map(|s| SavedSubscription {
                filter: s.filter.as_str().to_owned(),
                qos: s.qos.level(),
                no_local: s.no_local,
                retain_as_published: s.retain_as_published,
                id: s.id,
                except: s.except.iter().map(|e| e.as_str().to_owned()).collect(),
            })
            .collect(),
        expiry_s: session.expiry_s,
        awaiting_pubrel: session.awaiting_pubrel.iter().copied().collect(),
        disconnected_at: session.disconnected_at.map(|t| {
            t.duration_since(SystemTime::UNIX_EPOCH)
                .map(|d| d.as_secs())
                .unwrap_or(0)
        }),
    }
}

fn saved_message(delivery: &Delivery) -> SavedMessage {
    SavedMessage {
        topic: delivery.topic.to_string(),
        payload: delivery.payload.clone(),
        qos: delivery.qos,
        retain: delivery.retain,
        properties: delivery.properties.as_deref().cloned(),
        expires_at: delivery.expires_at,
        subscription_ids: delivery.subscription_ids.clone(),
        share: delivery.share.as_ref().map(|f| f.as_str().to_owned()),
    }
}

fn delivery(saved: SavedMessage) -> Delivery {
    Delivery {
        share: saved
            .share
            .and_then(|f| TopicFilter::parse(&f).ok())
            .map(Arc::new),
        topic: Arc::from(saved.topic),
        payload: saved.payload,
        qos: saved.qos,
        retain: saved.retain,
        properties: saved.properties.map(Arc::new),
        expires_at: saved.expires_at,
        subscription_ids: saved.subscription_ids,
    }
}

#[cfg(test)]
mod tests;
