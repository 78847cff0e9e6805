//! Sessions and the registry that holds them: which client ids have a session, what each is
//! subscribed to, when it expires, which QoS 2 packet ids await PUBREL, what is queued for it
//! while it is offline, and which connection (if any) owns it now. The retained store lives
//! here too, because a retained publish and the fan-out it causes must be one step. So are
//! the shared subscriptions' member lists (`share`): a session ending hands its share of
//! unacknowledged messages to another member in the same step that removes it.
//!
//! The offline queues and their bounds are `queue`'s; what reaches the disk, and when, `persist`'s.
//!
//! One `std::sync::Mutex` over everything, held only for map work and never across an await:
//! per-message work under it is a scan of the sessions that have subscriptions, which is cheap
//! next to the pipeline and keeps takeover, fan-out and persistence trivially consistent.
//! What changed is noted under it too and written to the store by `persist`.

use std::collections::{BTreeSet, HashMap, HashSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, SystemTime};

use tokio::sync::{Notify, mpsc};
use tokio_util::sync::CancellationToken;
use tracing::warn;

pub use super::delivery::Delivery;
use super::retained::Retained;
use super::router;
use super::share::{Reach, Share};
use super::store::Store;
pub use super::subscription::Subscription;
use crate::kept::{self, Kept, KeptError};
use crate::reading::{Assigned, Assignments};
use crate::record::QoS;
use crate::topic::TopicFilter;
use persist::Dirty;
use queue::Queues;
pub use queue::{Queue, QueueLimits};

mod persist;
mod queue;

/// Deliveries buffered for one live subscriber before further ones for it are dropped.
const DELIVERY_CAPACITY: usize = 1024;

/// The connection that owns a session now.
#[derive(Debug, Clone)]
pub struct Attached {
    pub connection: u64,
    /// Opened by the registry once the session has a subscription (`open_deliveries`): a
    /// channel takes close to 3 KB before its first message, and most devices never subscribe.
    pub deliver: Option<mpsc::Sender<Delivery>>,
    /// Cancelled to take the session over: the connection says goodbye and ends.
    pub kick: CancellationToken,
    /// Cancelled by the connection once it has handed the session back.
    pub done: CancellationToken,
}

#[derive(Debug, Default)]
pub struct Session {
    pub subscriptions: Vec<Subscription>,
    /// Seconds the session outlives its connection; `u32::MAX` means forever (3.1.1).
    pub expiry_s: u32,
    pub awaiting_pubrel: BTreeSet<u16>,
    /// What the client's unacknowledged publishes were assigned, kept while it is away so that
    /// its resends after reconnecting are the same readings (held by the connection meanwhile).
    pub readings: Assignments,
    /// QoS 1/2 messages for it while it is offline (see `queue`).
    pub queued: Queue,
    /// What its last connection had in flight, kept while it is away (see `Unfinished`).
    pub unfinished: Vec<Unfinished>,
    pub disconnected_at: Option<SystemTime>,
    pub attached: Option<Attached>,
    /// The connection that attached last (0: none since this process started), so a delayed
    /// will can tell a reconnect that has already left again from no reconnect at all.
    pub last_connection: u64,
    /// Cancelled when the session ends while its last connection's will waits out its delay:
    /// the will is then published at once (MQTT 5 §3.1.2.5, "or the Session ends").
    pub will_waiting: Option<CancellationToken>,
}

impl Session {
    /// Gives the attached connection its delivery channel once the session has a subscription;
    /// the receiving end, for that connection, when it was opened now. Fan-out only reaches
    /// sessions with subscriptions, so none is missed for want of a channel.
    fn open_deliveries(&mut self) -> Option<mpsc::Receiver<Delivery>> {
        let attached = self.attached.as_mut()?;
        if self.subscriptions.is_empty() || attached.deliver.is_some() {
            return None;
        }
        let (deliver, deliveries) = mpsc::channel(DELIVERY_CAPACITY);
        attached.deliver = Some(deliver);
        Some(deliveries)
    }

    /// How a message at `qos` reaches this session now as a member of a shared subscription.
    fn reach(&self, qos: QoS) -> Reach {
        let Some(attached) = &self.attached else {
            // Offline sessions exist only while they outlive their connection.
            return match qos {
                QoS::AtMostOnce => Reach::Unreachable,
                _ if self.expired(SystemTime::now()) => Reach::Unreachable,
                _ => Reach::Queue,
            };
        };
        match &attached.deliver {
            // Its connection is ending and hands the session back next (`detach`), queue
            // included: kept for the session, or handed on if the session ends.
            Some(deliver) if deliver.is_closed() && qos > QoS::AtMostOnce => Reach::Queue,
            // Only the registry sends, under its lock: room now is room for this one.
            Some(deliver) if !deliver.is_closed() && deliver.capacity() > 0 => Reach::Live,
            _ => Reach::Unreachable,
        }
    }

    /// Its subscription `filter`, if it has one.
    fn subscription(&self, filter: &str) -> Option<&Subscription> {
        self.subscriptions
            .iter()
            .find(|s| s.filter.as_str() == filter)
    }

    fn expired(&self, now: SystemTime) -> bool {
        match (self.attached.is_some(), self.disconnected_at) {
            (false, Some(at)) if self.expiry_s != u32::MAX => {
                at + Duration::from_secs(u64::from(self.expiry_s)) <= now
            }
            _ => false,
        }
    }
}

/// An outgoing QoS 1/2 message whose client had not finished acknowledging it when its
/// connection ended: sent again on reconnect under the same packet id (MQTT-4.4.0-1), as a
/// PUBLISH with DUP set or, once its PUBREC had come, as a PUBREL.
#[derive(Debug, Clone)]
pub struct Unfinished {
    pub pkid: u16,
    pub delivery: Delivery,
    /// PUBREC came and PUBREL went out: only PUBCOMP is missing.
    pub released: bool,
}

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

#[derive(Default)]
struct Inner {
    sessions: HashMap<String, Session>,
    /// The client ids whose sessions have subscriptions: fan-out walks these only, so a fleet
    /// of publish-only devices costs nothing per message.
    subscribers: HashSet<String>,
    /// Shared subscriptions by their filter as written (`$share/<group>/<filter>`), each with
    /// its members and whose turn it is; a share goes once its last member leaves.
    shares: HashMap<String, Share>,
    retained: Retained,
    /// What the offline queues share: bounds, totals, changes to write.
    queues: Queues,
    /// What changed since the store last wrote (see `persist`).
    dirty: Dirty,
    /// The client ids whose sessions are in the store, so that a session that ends or stops
    /// outliving its connection is deleted there, and one that never was costs no write.
    stored: HashSet<String>,
}

impl Inner {
    /// Keeps `subscribers` true for `client_id` after its session changed or went away.
    fn reindex(&mut self, client_id: &str) {
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
    fn session_changed(&mut self, client_id: &str) {
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
    dropped: AtomicU64,
    /// QoS 1/2 messages of shared subscriptions that no member could take.
    unshared: AtomicU64,
    /// Where what unacknowledged publishes were assigned is kept across a crash (`None` in
    /// tests of the registry alone).
    kept: Option<Kept>,
    /// Where sessions and retained messages are kept (`None` in tests of the registry alone).
    store: Option<Store>,
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
    fn forget_kept(&self, client_id: &str, forget: &[u16]) {
        if let Some(kept) = &self.kept {
            kept::logged(kept.write(client_id, &[], forget));
        }
    }

    fn forget_all(&self, client_id: &str) {
        if let Some(kept) = &self.kept {
            kept::logged(kept.forget_all(client_id));
        }
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        // A panic while holding the lock cannot leave the maps half-updated in a way later
        // readers would misread (every update is a single insert/remove), so keep going.
        self.inner
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Wakes the writer task after a change was noted.
    fn touch(&self) {
        self.changed.notify_one();
    }

    pub async fn changed(&self) {
        self.changed.notified().await;
    }

    pub fn next_connection_id(&self) -> u64 {
        self.next_connection.fetch_add(1, Ordering::Relaxed)
    }

    /// Tells the connection that holds `client_id` to go; returns what to await until it has.
    pub fn kick(&self, client_id: &str) -> Option<CancellationToken> {
        let inner = self.lock();
        let attached = inner.sessions.get(client_id)?.attached.as_ref()?;
        attached.kick.cancel();
        Some(attached.done.clone())
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

    /// Updates the retained store and fans `message` out to every matching session: live
    /// connections get it on their channel (dropped with a count if a subscriber lags that
    /// far behind), offline persistent sessions queue QoS 1/2 messages. Each matching shared
    /// subscription gives it to one of its members (see `share`), on top of the copies for
    /// non-shared subscriptions: a session with both gets two, as MQTT 5 §4.8.2 describes and
    /// Mosquitto does.
    pub fn publish(&self, publisher: &str, message: &Delivery) {
        let mut inner = self.lock();
        if message.retain {
            inner.retained.update(message);
            inner.dirty.retained.insert(message.topic.to_string());
            self.touch();
        }
        let mut dropped = Vec::new();
        let Inner {
            sessions,
            subscribers,
            shares,
            queues,
            ..
        } = &mut *inner;
        for client_id in subscribers.iter() {
            let Some(session) = sessions.get_mut(client_id) else {
                continue;
            };
            let own = client_id == publisher;
            let Some(matched) =
                router::matching(&session.subscriptions, &message.topic, message.qos, own)
            else {
                continue;
            };
            // Live deliveries carry retain = false (MQTT 3.1.1 §3.3.1.3; 5 without Retain As
            // Published): the flag tells a subscriber "this is old news".
            let qos = matched.qos;
            let delivery = Delivery {
                qos,
                retain: message.retain && matched.retain_as_published,
                subscription_ids: matched.ids,
                ..message.clone()
            };
            if let Some(attached) = &session.attached {
                // Always `Some` here: a session with subscriptions has a channel while attached.
                let sent = attached.deliver.as_ref().map(|d| d.try_send(delivery));
                if !matches!(sent, Some(Ok(()))) {
                    dropped.push(client_id.clone());
                }
            } else if qos > QoS::AtMostOnce && !session.expired(SystemTime::now()) {
                queues.push(client_id, &mut session.queued, delivery);
            }
        }
        let mut unshared = 0;
        for share in shares.values_mut() {
            if share.matches(&message.topic)
                && !share_out(sessions, queues, share, message)
                && message.qos > QoS::AtMostOnce
            {
                unshared += 1;
            }
        }
        queues.trim(sessions);
        let queued = queues.has_changes();
        drop(inner);
        if queued {
            self.touch();
        }
        for client_id in dropped {
            self.count_dropped(&client_id);
        }
        self.count_unshared(unshared);
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
    fn count_unshared(&self, lost: u64) {
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

    fn count_dropped(&self, client_id: &str) {
        let total = self.dropped.fetch_add(1, Ordering::Relaxed) + 1;
        if total == 1 || total.is_power_of_two() {
            warn!(
                client_id,
                dropped_total = total,
                "a subscriber lags behind: messages for it were dropped"
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

/// Adds `client_id` to the members of `filter` if it is a shared subscription.
fn join(shares: &mut HashMap<String, Share>, client_id: &str, filter: &TopicFilter) {
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
fn leave(shares: &mut HashMap<String, Share>, client_id: &str, filter: &str) {
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
fn share_out(
    sessions: &mut HashMap<String, Session>,
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

impl Default for Registry {
    fn default() -> Self {
        Registry::new()
    }
}

#[cfg(test)]
mod tests;
