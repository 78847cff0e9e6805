//! `Registry`: every session, the retained store and the shared subscriptions' member lists,
//! and what connections ask of them: attach and detach, subscribe and unsubscribe, QoS 2
//! bookkeeping, the purge of expired sessions. What changed is noted under its lock too
//! (`Dirty`) and written to the store by `persist`; fan-out is `fanout`'s.
//!
//! One `std::sync::Mutex` over everything, held only for map work and never across an await:
//! per-message work under it is a scan of the sessions that have subscriptions, which is cheap
//! next to the pipeline and keeps takeover, fan-out and persistence trivially consistent.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::SystemTime;

use tokio::sync::{Notify, mpsc};
use tokio_util::sync::CancellationToken;
use tracing::warn;

use super::entry::{Attached, Sessions, Unfinished};
use super::handover::Handover;
use super::queue::{QueueLimits, Queues};
use super::sharing::{join, leave, share_out};
use crate::broker::delivery::Delivery;
use crate::broker::retained::Retained;
use crate::broker::share::Share;
use crate::broker::store::Store;
use crate::broker::subscription::Subscription;
use crate::kept::{self, Kept, KeptError};
use crate::reading::{Assigned, Assignments};
use crate::record::QoS;

/// What a new connection finds.
pub struct Resumed {
    pub session_present: bool,
    /// Messages it had in flight when its last connection ended, to send again first.
    pub unfinished: Vec<Unfinished>,
    /// How many of its QoS 2 publishes await PUBREL (they count against receive maximum).
    pub awaiting_pubrel: usize,
    /// Messages queued while it was away, to send first.
    pub queued: Vec<Delivery>,
    /// What its unacknowledged publishes were assigned (empty for a new session).
    pub readings: Assignments,
    /// Where its deliveries arrive, if the session has subscriptions already.
    pub deliveries: Option<mpsc::Receiver<Delivery>>,
}

/// What a SUBSCRIBE changed.
pub struct Subscribed {
    /// Per filter: whether it existed before, and the retained messages to deliver for it
    /// (already capped at the granted QoS).
    pub filters: Vec<(bool, Vec<Delivery>)>,
    /// Where deliveries arrive from now on, if this was the first subscription while attached.
    pub deliveries: Option<mpsc::Receiver<Delivery>>,
}

/// Keys changed since the store last wrote: client ids and retained topics, not values (see
/// `persist`; the offline queues note theirs by message number, see `queue`).
#[derive(Debug, Default)]
pub(super) struct Dirty {
    pub sessions: HashSet<String>,
    pub retained: HashSet<String>,
}

impl Dirty {
    pub(super) fn is_empty(&self) -> bool {
        self.sessions.is_empty() && self.retained.is_empty()
    }
}

#[derive(Default)]
pub(super) struct Inner {
    pub(super) sessions: Sessions,
    /// The client ids whose sessions have subscriptions: fan-out walks these only, so a fleet
    /// of publish-only devices costs nothing per message.
    pub(super) subscribers: HashSet<String>,
    /// Shared subscriptions by their filter as written (`$share/<group>/<filter>`), each with
    /// its members and whose turn it is; a share goes once its last member leaves.
    pub(super) shares: HashMap<String, Share>,
    pub(super) retained: Retained,
    /// What the offline queues share: bounds, totals, changes to write.
    pub(super) queues: Queues,
    /// What changed since the store last wrote (see `persist`).
    pub(super) dirty: Dirty,
    /// The client ids whose sessions are in the store, so that a session that ends or stops
    /// outliving its connection is deleted there, and one that never was costs no write.
    pub(super) stored: HashSet<String>,
}

impl Inner {
    /// Keeps `subscribers` true for `client_id` after its session changed or went away.
    pub(super) fn reindex(&mut self, client_id: &str) {
        match self.sessions.get(client_id) {
            Some(session) if !session.subscriptions.is_empty() => {
                self.subscribers.insert(client_id.to_owned());
            }
            _ => {
                self.subscribers.remove(client_id);
            }
        }
    }

    /// Notes that `client_id`'s session changed (or ended), for the store.
    pub(super) fn session_changed(&mut self, client_id: &str) {
        if !self.dirty.sessions.contains(client_id) {
            self.dirty.sessions.insert(client_id.to_owned());
        }
    }
}

pub struct Registry {
    inner: Mutex<Inner>,
    /// Notified after every change worth persisting; the writer task writes then.
    changed: Notify,
    next_connection: AtomicU64,
    pub(super) dropped: AtomicU64,
    /// QoS 1/2 messages of shared subscriptions that no member could take.
    unshared: AtomicU64,
    /// Where what unacknowledged publishes were assigned is kept across a crash (`None` in
    /// tests of the registry alone).
    kept: Option<Kept>,
    /// Where sessions and retained messages are kept (`None` in tests of the registry alone).
    pub(super) store: Option<Store>,
}

impl Registry {
    pub fn new() -> Registry {
        Registry::with_limits(QueueLimits::default())
    }

    /// A registry whose offline queues are bounded by `limits`.
    pub fn with_limits(limits: QueueLimits) -> Registry {
        Registry {
            inner: Mutex::new(Inner {
                queues: Queues::new(limits),
                ..Inner::default()
            }),
            changed: Notify::new(),
            next_connection: AtomicU64::new(1),
            dropped: AtomicU64::new(0),
            unshared: AtomicU64::new(0),
            kept: None,
            store: None,
        }
    }

    /// Keeps assignments in `kept` from now on, and gives each restored session what was kept
    /// for it; what was kept for a session that no longer exists is forgotten.
    pub fn adopt(&mut self, kept: Kept) -> Result<(), KeptError> {
        let all = kept.all()?;
        {
            let mut inner = self.lock();
            for (owner, readings) in all {
                match inner.sessions.get_mut(&owner) {
                    Some(session) => session.readings = readings.into(),
                    None => kept.forget_all(&owner)?,
                }
            }
        }
        self.kept = Some(kept);
        Ok(())
    }

    /// Stages what publishes of `client_id` were assigned, before they go on; the sink commits
    /// it before the bulk request that carries them (see `kept`).
    pub fn stage_kept(&self, client_id: &str, keep: &[(u16, Assigned)]) {
        if let Some(kept) = &self.kept {
            kept.stage(client_id, keep, &[]);
        }
    }

    /// Forgets what publishes of `client_id` were assigned, on disk when this returns: their
    /// acknowledgements go out next.
    pub(super) fn forget_kept(&self, client_id: &str, forget: &[u16]) {
        if let Some(kept) = &self.kept {
            kept::logged(kept.write(client_id, &[], forget));
        }
    }

    fn forget_all(&self, client_id: &str) {
        if let Some(kept) = &self.kept {
            kept::logged(kept.forget_all(client_id));
        }
    }

    pub(super) fn lock(&self) -> MutexGuard<'_, Inner> {
        // A panic while holding the lock cannot leave the maps half-updated in a way later
        // readers would misread (every update is a single insert/remove), so keep going.
        self.inner
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Wakes the writer task after a change was noted.
    pub(super) fn touch(&self) {
        self.changed.notify_one();
    }

    pub async fn changed(&self) {
        self.changed.notified().await;
    }

    pub fn next_connection_id(&self) -> u64 {
        self.next_connection.fetch_add(1, Ordering::Relaxed)
    }

    /// Tells the connection that holds `client_id` to go; returns what to await until it has.
    pub fn kick(&self, client_id: &str) -> Option<Arc<Handover>> {
        let inner = self.lock();
        let attached = inner.sessions.get(client_id)?.attached.as_ref()?;
        attached.handover.kick();
        Some(Arc::clone(&attached.handover))
    }

    /// Gives `client_id`'s session to a new connection, after any old one was kicked.
    pub fn attach(
        &self,
        client_id: &str,
        clean_start: bool,
        expiry_s: u32,
        attached: Attached,
    ) -> Resumed {
        let mut guard = self.lock();
        let inner = &mut *guard;
        // A session past its expiry is gone, even if the purge has not come round to it yet
        // (MQTT-3.2.2-3 : no Session Present for it).
        let expired = inner
            .sessions
            .get(client_id)
            .is_some_and(|s| s.expired(SystemTime::now()));
        if clean_start || expired {
            self.end_session(inner, client_id, Vec::new());
            self.forget_all(client_id);
        }
        let session_present = inner.sessions.contains_key(client_id);
        inner.session_changed(client_id);
        let session = inner.sessions.entry(client_id.to_owned()).or_default();
        // A reconnect within the will delay: that will is not published (see `will_waiting`).
        session.will_waiting = None;
        session.expiry_s = expiry_s;
        session.disconnected_at = None;
        session.last_connection = attached.connection;
        session.attached = Some(attached);
        let deliveries = session.open_deliveries();
        let queued = inner.queues.take_all(client_id, &mut session.queued);
        let unfinished = std::mem::take(&mut session.unfinished);
        let awaiting_pubrel = session.awaiting_pubrel.len();
        let readings = std::mem::take(&mut session.readings);
        drop(guard);
        self.touch();
        Resumed {
            session_present,
            unfinished,
            awaiting_pubrel,
            queued,
            readings,
            deliveries,
        }
    }

    /// Hands the session back when `connection` ends: kept with what was in flight and its
    /// queue if it has an expiry, otherwise removed. A connection that was taken over no
    /// longer owns it and changes nothing.
    pub fn detach(
        &self,
        client_id: &str,
        connection: u64,
        expiry_s: u32,
        unfinished: Vec<Unfinished>,
        mut unsent: Vec<Delivery>,
        readings: Assignments,
    ) {
        let mut guard = self.lock();
        let inner = &mut *guard;
        let Some(session) = inner.sessions.get_mut(client_id) else {
            return;
        };
        if session.attached.as_ref().map(|a| a.connection) != Some(connection) {
            return;
        }
        session.attached = None;
        if expiry_s == 0 {
            // What was in flight goes with the session, or to another member of its share.
            let in_flight = unfinished.into_iter().filter(|u| !u.released);
            unsent.splice(0..0, in_flight.map(|u| u.delivery));
            self.end_session(inner, client_id, unsent);
            self.forget_all(client_id);
        } else {
            session.unfinished = unfinished;
            session.expiry_s = expiry_s;
            session.disconnected_at = Some(SystemTime::now());
            session.readings = readings;
            // Ahead of what a shared subscription queued for it while the connection ended:
            // queued again, in that order, under new numbers.
            let queues = &mut inner.queues;
            let meanwhile = queues.take_all(client_id, &mut session.queued);
            let unsent = unsent.into_iter().filter(|d| d.qos > QoS::AtMostOnce);
            for delivery in unsent.chain(meanwhile) {
                queues.push(client_id, &mut session.queued, delivery);
            }
            inner.session_changed(client_id);
            inner.queues.trim(&mut inner.sessions);
        }
        drop(guard);
        self.touch();
    }

    /// Tells the registry that the will of `connection`, the last to hold `client_id`'s
    /// session, waits out its delay: the token returned is cancelled if the session ends
    /// first. `None` if the session is gone or held by a newer connection already.
    pub fn will_waits(&self, client_id: &str, connection: u64) -> Option<CancellationToken> {
        let mut inner = self.lock();
        let session = inner.sessions.get_mut(client_id)?;
        if session.attached.is_some() || session.last_connection != connection {
            return None;
        }
        let token = CancellationToken::new();
        session.will_waiting = Some(token.clone());
        Some(token)
    }

    /// Whether another connection than `connection` has taken up `client_id`'s session since,
    /// even one that has already gone again (a delayed will checks this: MQTT 5 §3.1.3.2.2).
    pub fn reconnected_since(&self, client_id: &str, connection: u64) -> bool {
        self.lock()
            .sessions
            .get(client_id)
            .is_some_and(|s| s.attached.is_some() || s.last_connection != connection)
    }

    /// Adds or replaces subscriptions of `client_id`, whose connection calls this.
    pub fn subscribe(&self, client_id: &str, subscriptions: Vec<Subscription>) -> Subscribed {
        let mut inner = self.lock();
        let inner = &mut *inner;
        let Some(session) = inner.sessions.get_mut(client_id) else {
            return Subscribed {
                filters: Vec::new(),
                deliveries: None,
            };
        };
        let mut result = Vec::with_capacity(subscriptions.len());
        let now = SystemTime::now();
        for subscription in subscriptions {
            join(&mut inner.shares, client_id, &subscription.filter);
            // A shared subscription gets no retained messages (MQTT 5 §4.8.2): the group shares
            // a stream, and each member joining would replay the old news to it again.
            let retained = match subscription.filter.share_group() {
                Some(_) => Vec::new(),
                None => inner
                    .retained
                    .matching(&subscription.filter)
                    .filter(|m| !m.expired(now) && subscription.matches(&m.topic))
                    .map(|m| Delivery {
                        qos: m.qos.min(subscription.qos),
                        subscription_ids: subscription.id.into_iter().collect(),
                        ..m.clone()
                    })
                    .collect(),
            };
            let existing = session
                .subscriptions
                .iter_mut()
                .find(|s| s.filter.as_str() == subscription.filter.as_str());
            let existed = match existing {
                Some(slot) => {
                    *slot = subscription;
                    true
                }
                None => {
                    session.subscriptions.push(subscription);
                    false
                }
            };
            result.push((existed, retained));
        }
        let deliveries = session.open_deliveries();
        inner.reindex(client_id);
        inner.session_changed(client_id);
        self.touch();
        Subscribed {
            filters: result,
            deliveries,
        }
    }

    /// Removes subscriptions of `client_id`; a shared one's member leaves its group, though
    /// what it was given through it stays its own to finish (MQTT 5 §3.10.4).
    pub fn unsubscribe(&self, client_id: &str, filters: &[String]) -> Vec<bool> {
        let mut inner = self.lock();
        let Inner {
            sessions, shares, ..
        } = &mut *inner;
        let Some(session) = sessions.get_mut(client_id) else {
            return vec![false; filters.len()];
        };
        let existed = filters
            .iter()
            .map(|filter| {
                let before = session.subscriptions.len();
                session
                    .subscriptions
                    .retain(|s| s.filter.as_str() != filter);
                leave(shares, client_id, filter);
                session.subscriptions.len() != before
            })
            .collect();
        inner.reindex(client_id);
        inner.session_changed(client_id);
        drop(inner);
        self.touch();
        existed
    }

    /// Removes `client_id`'s session. A will waiting out its delay is published now (see
    /// `will_waiting`). The session leaves its shared subscriptions, and the QoS 1/2 messages
    /// it held of them (`unsent` by its connection, in flight or not yet sent, and its queue)
    /// go to another member each (MQTT 5 §4.8.2): a member dropping out loses none of its
    /// share. What it held of its other subscriptions goes with it.
    fn end_session(&self, inner: &mut Inner, client_id: &str, unsent: Vec<Delivery>) {
        let Some(mut session) = inner.sessions.remove(client_id) else {
            return;
        };
        inner.session_changed(client_id);
        let queued = inner.queues.take_all(client_id, &mut session.queued);
        if let Some(will) = &session.will_waiting {
            will.cancel();
        }
        inner.subscribers.remove(client_id);
        for subscription in &session.subscriptions {
            leave(&mut inner.shares, client_id, subscription.filter.as_str());
        }
        let mut unshared = 0;
        for delivery in unsent.into_iter().chain(queued) {
            let Some(filter) = delivery
                .share
                .as_ref()
                .filter(|_| delivery.qos > QoS::AtMostOnce)
            else {
                continue;
            };
            let given = inner.shares.get_mut(filter.as_str()).is_some_and(|share| {
                share_out(&mut inner.sessions, &mut inner.queues, share, &delivery)
            });
            if !given {
                unshared += 1;
            }
        }
        inner.queues.trim(&mut inner.sessions);
        self.count_unshared(unshared);
    }

    /// Counts QoS 1/2 messages of shared subscriptions that no member could take.
    pub(super) fn count_unshared(&self, lost: u64) {
        if lost == 0 {
            return;
        }
        let before = self.unshared.fetch_add(lost, Ordering::Relaxed);
        let total = before + lost;
        if before == 0 || total.ilog2() > before.ilog2() {
            warn!(
                dropped_total = total,
                "no member of a shared subscription could take a message: dropped"
            );
        }
    }

    /// A PUBREC went out for `pkid`: until its PUBREL, a resent PUBLISH with that id is not new.
    pub fn await_pubrel(&self, client_id: &str, pkid: u16) {
        let mut inner = self.lock();
        if let Some(session) = inner.sessions.get_mut(client_id) {
            session.awaiting_pubrel.insert(pkid);
            inner.session_changed(client_id);
        }
        drop(inner);
        self.touch();
    }

    pub fn is_awaiting_pubrel(&self, client_id: &str, pkid: u16) -> bool {
        self.lock()
            .sessions
            .get(client_id)
            .is_some_and(|s| s.awaiting_pubrel.contains(&pkid))
    }

    /// The PUBREL for `pkid` came; false if it was not awaited.
    pub fn release(&self, client_id: &str, pkid: u16) -> bool {
        let mut inner = self.lock();
        let removed = inner
            .sessions
            .get_mut(client_id)
            .is_some_and(|s| s.awaiting_pubrel.remove(&pkid));
        if removed {
            inner.session_changed(client_id);
        }
        drop(inner);
        if removed {
            self.touch();
        }
        removed
    }

    /// Removes expired disconnected sessions, and queued messages whose expiry interval ran
    /// out; returns how many sessions.
    pub fn purge_expired(&self) -> usize {
        let now = SystemTime::now();
        let mut guard = self.lock();
        let inner = &mut *guard;
        let expired: Vec<String> = inner
            .sessions
            .iter()
            .filter(|(_, s)| s.expired(now))
            .map(|(id, _)| id.clone())
            .collect();
        for client_id in &expired {
            self.end_session(inner, client_id, Vec::new());
            self.forget_all(client_id);
        }
        for (client_id, session) in &mut inner.sessions {
            inner
                .queues
                .drop_expired(client_id, &mut session.queued, now);
        }
        let changed = !expired.is_empty() || inner.queues.has_changes();
        drop(guard);
        if changed {
            self.touch();
        }
        expired.len()
    }

    pub fn session_count(&self) -> usize {
        self.lock().sessions.len()
    }

    /// Messages queued for offline sessions.
    pub fn queued_count(&self) -> usize {
        self.lock().queues.totals().0
    }

    pub fn retained_count(&self) -> usize {
        self.lock().retained.len()
    }
}

impl Default for Registry {
    fn default() -> Self {
        Registry::new()
    }
}

#[cfg(test)]
mod tests;
