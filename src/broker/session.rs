//! Sessions and the registry that holds them: which client ids have a session, what each is
//! subscribed to, when it expires, which QoS 2 packet ids await PUBREL, what is queued for it
//! while it is offline, and which connection (if any) owns it now. The retained store lives
//! here too, because a retained publish and the fan-out it causes must be one step.
//!
//! One `std::sync::Mutex` over everything, held only for map work and never across an await:
//! per-message work under it is a scan of the sessions that have subscriptions, which is cheap
//! next to the pipeline and keeps takeover, fan-out and persistence trivially consistent.

use std::collections::{BTreeSet, HashMap, HashSet, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use tokio::sync::{Notify, mpsc};
use tokio_util::sync::CancellationToken;
use tracing::warn;

use super::codec::MessageProperties;
use super::retained::Retained;
use super::router;
use super::store::{self, State};
use crate::kept::{self, Kept, KeptError};
use crate::reading::{Assigned, Assignments};
use crate::record::QoS;
use crate::topic::TopicFilter;

/// Messages kept for a disconnected persistent session (QoS 1 and 2 only). Beyond this the
/// oldest are dropped with a counted warning, as Mosquitto's `max_queued_messages` does.
pub const MAX_QUEUED: usize = 1000;

/// Deliveries buffered for one live subscriber before further ones for it are dropped.
const DELIVERY_CAPACITY: usize = 1024;

/// A message on its way to a subscriber.
#[derive(Debug, Clone)]
pub struct Delivery {
    pub topic: Arc<str>,
    pub payload: Bytes,
    pub qos: QoS,
    pub retain: bool,
    /// The publisher's MQTT 5 properties, if it set any, shared by every copy.
    pub properties: Option<Arc<MessageProperties>>,
    /// When its Message Expiry Interval (counted from its arrival) runs out.
    pub expires_at: Option<SystemTime>,
    /// The identifiers of the subscriptions it matched, for this subscriber (MQTT 5 §3.3.4).
    pub subscription_ids: Vec<u32>,
}

impl Delivery {
    /// A message that arrived `now` from a publisher.
    pub fn arrived(
        topic: &str,
        payload: Bytes,
        qos: QoS,
        retain: bool,
        properties: &MessageProperties,
        now: SystemTime,
    ) -> Delivery {
        Delivery {
            topic: Arc::from(topic),
            payload,
            qos,
            retain,
            properties: (!properties.is_empty()).then(|| Arc::new(properties.clone())),
            expires_at: properties
                .message_expiry_s
                .map(|s| now + Duration::from_secs(u64::from(s))),
            subscription_ids: Vec::new(),
        }
    }

    /// Whether its expiry interval has run out: then it is no longer sent (MQTT-3.3.2-5).
    pub fn expired(&self, now: SystemTime) -> bool {
        self.expires_at.is_some_and(|at| at <= now)
    }

    /// The expiry interval a copy sent `now` carries: what is left of the publisher's, in
    /// whole seconds rounded up (MQTT-3.3.2-6).
    pub fn expiry_left(&self, now: SystemTime) -> Option<u32> {
        self.expires_at.map(|at| {
            let left = at.duration_since(now).unwrap_or_default();
            let secs = left.as_secs() + u64::from(left.subsec_nanos() > 0);
            u32::try_from(secs).unwrap_or(u32::MAX)
        })
    }
}

#[derive(Debug, Clone)]
pub struct Subscription {
    pub filter: TopicFilter,
    pub qos: QoS,
    pub no_local: bool,
    /// MQTT 5 Retain As Published: live deliveries keep the publisher's RETAIN flag.
    pub retain_as_published: bool,
    /// MQTT 5 Subscription Identifier, sent with every message the subscription matches.
    pub id: Option<u32>,
}

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
    pub queued: VecDeque<Delivery>,
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

    fn expired(&self, now: SystemTime) -> bool {
        match (self.attached.is_some(), self.disconnected_at) {
            (false, Some(at)) if self.expiry_s != u32::MAX => {
                at + Duration::from_secs(u64::from(self.expiry_s)) <= now
            }
            _ => false,
        }
    }
}

/// What a new connection finds.
pub struct Resumed {
    pub session_present: bool,
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
    retained: Retained,
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
}

pub struct Registry {
    inner: Mutex<Inner>,
    /// Bumped on every change worth persisting; the store task writes when it moved.
    version: AtomicU64,
    changed: Notify,
    next_connection: AtomicU64,
    dropped: AtomicU64,
    /// Where what unacknowledged publishes were assigned is kept across a crash (`None` in
    /// tests of the registry alone).
    kept: Option<Kept>,
}

impl Registry {
    pub fn new() -> Registry {
        Registry {
            inner: Mutex::new(Inner::default()),
            version: AtomicU64::new(0),
            changed: Notify::new(),
            next_connection: AtomicU64::new(1),
            dropped: AtomicU64::new(0),
            kept: None,
        }
    }

    /// Sessions and retained messages as persisted by an earlier run. Sessions that were
    /// connected when it stopped count as disconnected now, so their expiry starts over.
    pub fn restore(state: State) -> Registry {
        let registry = Registry::new();
        {
            let mut inner = registry.lock();
            let now = SystemTime::now();
            for saved in state.sessions {
                let subscriptions = saved
                    .subscriptions
                    .iter()
                    .filter_map(|s| {
                        Some(Subscription {
                            filter: TopicFilter::parse(&s.filter).ok()?,
                            qos: store::qos(s.qos),
                            no_local: s.no_local,
                            retain_as_published: s.retain_as_published,
                            id: s.id,
                        })
                    })
                    .collect();
                let session = Session {
                    subscriptions,
                    expiry_s: saved.expiry_s,
                    awaiting_pubrel: saved.awaiting_pubrel.into_iter().collect(),
                    readings: Assignments::default(),
                    queued: VecDeque::new(),
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
                if !session.expired(now) {
                    inner.sessions.insert(saved.client_id.clone(), session);
                    inner.reindex(&saved.client_id);
                }
            }
            for message in state.retained {
                if let Some(delivery) = message.into_delivery()
                    && !delivery.expired(now)
                {
                    inner.retained.update(&delivery);
                }
            }
        }
        registry
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
    pub fn forget_kept(&self, client_id: &str, forget: &[u16]) {
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

    fn touch(&self) {
        self.version.fetch_add(1, Ordering::Relaxed);
        self.changed.notify_one();
    }

    pub fn version(&self) -> u64 {
        self.version.load(Ordering::Relaxed)
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
        let mut inner = self.lock();
        // A session past its expiry is gone, even if the purge has not come round to it yet
        // (MQTT-3.2.2-3 : no Session Present for it).
        let expired = inner
            .sessions
            .get(client_id)
            .is_some_and(|s| s.expired(SystemTime::now()));
        if clean_start || expired {
            if let Some(ended) = inner.sessions.remove(client_id)
                && let Some(will) = ended.will_waiting
            {
                will.cancel();
            }
            inner.reindex(client_id);
            self.forget_all(client_id);
        }
        let session_present = inner.sessions.contains_key(client_id);
        let session = inner.sessions.entry(client_id.to_owned()).or_default();
        // A reconnect within the will delay: that will is not published (see `will_waiting`).
        session.will_waiting = None;
        session.expiry_s = expiry_s;
        session.disconnected_at = None;
        session.last_connection = attached.connection;
        session.attached = Some(attached);
        let deliveries = session.open_deliveries();
        let queued = session.queued.drain(..).collect();
        let readings = std::mem::take(&mut session.readings);
        drop(inner);
        self.touch();
        Resumed {
            session_present,
            queued,
            readings,
            deliveries,
        }
    }

    /// Hands the session back when `connection` ends: kept with its queue if it has an expiry,
    /// otherwise removed. A connection that was taken over no longer owns it and changes nothing.
    pub fn detach(
        &self,
        client_id: &str,
        connection: u64,
        expiry_s: u32,
        unsent: Vec<Delivery>,
        readings: Assignments,
    ) {
        let mut inner = self.lock();
        let Some(session) = inner.sessions.get_mut(client_id) else {
            return;
        };
        if session.attached.as_ref().map(|a| a.connection) != Some(connection) {
            return;
        }
        session.attached = None;
        if expiry_s == 0 {
            inner.sessions.remove(client_id);
            inner.reindex(client_id);
            self.forget_all(client_id);
        } else {
            session.expiry_s = expiry_s;
            session.disconnected_at = Some(SystemTime::now());
            session.readings = readings;
            for delivery in unsent.into_iter().filter(|d| d.qos > QoS::AtMostOnce) {
                session.queued.push_back(delivery);
            }
            while session.queued.len() > MAX_QUEUED {
                session.queued.pop_front();
                self.count_dropped(client_id);
            }
        }
        drop(inner);
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
            let retained = inner
                .retained
                .matching(&subscription.filter)
                .filter(|m| !m.expired(now))
                .map(|m| Delivery {
                    qos: m.qos.min(subscription.qos),
                    subscription_ids: subscription.id.into_iter().collect(),
                    ..m.clone()
                })
                .collect();
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
        self.touch();
        Subscribed {
            filters: result,
            deliveries,
        }
    }

    pub fn unsubscribe(&self, client_id: &str, filters: &[String]) -> Vec<bool> {
        let mut inner = self.lock();
        let Some(session) = inner.sessions.get_mut(client_id) else {
            return vec![false; filters.len()];
        };
        let existed = filters
            .iter()
            .map(|filter| {
                let before = session.subscriptions.len();
                session
                    .subscriptions
                    .retain(|s| s.filter.as_str() != filter);
                session.subscriptions.len() != before
            })
            .collect();
        inner.reindex(client_id);
        drop(inner);
        self.touch();
        existed
    }

    /// Updates the retained store and fans `message` out to every matching session: live
    /// connections get it on their channel (dropped with a count if a subscriber lags that
    /// far behind), offline persistent sessions queue QoS 1/2 messages.
    pub fn publish(&self, publisher: &str, message: &Delivery) {
        let mut inner = self.lock();
        if message.retain {
            inner.retained.update(message);
            self.touch();
        }
        let mut dropped = Vec::new();
        let Inner {
            sessions,
            subscribers,
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
                session.queued.push_back(delivery);
                if session.queued.len() > MAX_QUEUED {
                    session.queued.pop_front();
                    dropped.push(client_id.clone());
                }
            }
        }
        drop(inner);
        for client_id in dropped {
            self.count_dropped(&client_id);
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
        if let Some(session) = self.lock().sessions.get_mut(client_id) {
            session.awaiting_pubrel.insert(pkid);
        }
        self.touch();
    }

    pub fn is_awaiting_pubrel(&self, client_id: &str, pkid: u16) -> bool {
        self.lock()
            .sessions
            .get(client_id)
            .is_some_and(|s| s.awaiting_pubrel.contains(&pkid))
    }

    pub fn release(&self, client_id: &str, pkid: u16) {
        let removed = self
            .lock()
            .sessions
            .get_mut(client_id)
            .is_some_and(|s| s.awaiting_pubrel.remove(&pkid));
        if removed {
            self.touch();
        }
    }

    /// Removes expired disconnected sessions; returns how many.
    pub fn purge_expired(&self) -> usize {
        let now = SystemTime::now();
        let mut inner = self.lock();
        let expired: Vec<String> = inner
            .sessions
            .iter()
            .filter(|(_, s)| s.expired(now))
            .map(|(id, _)| id.clone())
            .collect();
        for client_id in &expired {
            inner.sessions.remove(client_id);
            self.forget_all(client_id);
        }
        let purged = expired.len();
        let Inner {
            sessions,
            subscribers,
            ..
        } = &mut *inner;
        subscribers.retain(|id| sessions.contains_key(id));
        drop(inner);
        if purged > 0 {
            self.touch();
        }
        purged
    }

    /// What survives a restart: sessions that outlive their connection, and retained messages.
    pub fn snapshot(&self) -> State {
        let inner = self.lock();
        State::capture(
            inner
                .sessions
                .iter()
                .filter(|(_, s)| s.expiry_s > 0)
                .map(|(id, s)| (id.as_str(), s)),
            inner.retained.iter(),
        )
    }

    pub fn session_count(&self) -> usize {
        self.lock().sessions.len()
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
mod tests {
    use super::*;

    fn attached(connection: u64) -> Attached {
        Attached {
            connection,
            deliver: None,
            kick: CancellationToken::new(),
            done: CancellationToken::new(),
        }
    }

    fn message(topic: &str, qos: QoS) -> Delivery {
        Delivery {
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
            }],
        )
    }

    #[test]
    fn a_clean_session_is_gone_once_its_connection_ends() {
        let registry = Registry::new();
        let a = attached(1);
        assert!(!registry.attach("pi", true, 0, a).session_present);
        registry.detach("pi", 1, 0, Vec::new(), Assignments::default());
        assert_eq!(registry.session_count(), 0);
    }

    #[test]
    fn a_persistent_session_queues_qos1_while_offline_and_hands_it_over_on_reconnect() {
        let registry = Registry::new();
        let a = attached(1);
        registry.attach("pi", false, u32::MAX, a);
        subscribe(&registry, "pi", "cmd/#");
        registry.detach("pi", 1, u32::MAX, Vec::new(), Assignments::default());

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
        registry.detach("pi", 1, u32::MAX, Vec::new(), Assignments::default());

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
        assert!(a.kick.is_cancelled());
        let b = attached(2);
        registry.attach("pi", false, 60, b);
        // The old connection hands back late: it no longer owns the session.
        registry.detach("pi", 1, 0, Vec::new(), Assignments::default());
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
        registry.detach("short", 1, 1, Vec::new(), Assignments::default());
        registry.detach("long", 2, 3600, Vec::new(), Assignments::default());
        if let Some(session) = registry.lock().sessions.get_mut("short") {
            session.disconnected_at = Some(SystemTime::now() - Duration::from_secs(5));
        }
        assert_eq!(registry.purge_expired(), 1);
        assert!(
            registry
                .snapshot()
                .sessions
                .iter()
                .any(|s| s.client_id == "long")
        );
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
                }],
                expiry_s: u32::MAX,
                awaiting_pubrel: Vec::new(),
                disconnected_at: None,
            }],
            retained: Vec::new(),
        };
        let registry = Registry::restore(state);
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
        assert_eq!(registry.snapshot().sessions[0].awaiting_pubrel, vec![7]);
        registry.release("pi", 7);
        assert!(!registry.is_awaiting_pubrel("pi", 7));
    }

    #[test]
    fn a_session_past_its_expiry_is_not_present_to_a_reconnect_before_the_purge() {
        let registry = Registry::new();
        registry.attach("pi", false, 1, attached(1));
        subscribe(&registry, "pi", "cmd/#");
        registry.detach("pi", 1, 1, Vec::new(), Assignments::default());
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
        registry.detach("pi", 1, 300, Vec::new(), Assignments::default());
        let will = registry.will_waits("pi", 1).expect("the session is there");
        registry.attach("pi", true, 300, attached(2));
        assert!(
            will.is_cancelled(),
            "the session ended: publish the will now"
        );

        registry.detach("pi", 2, 300, Vec::new(), Assignments::default());
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
        let message =
            Delivery::arrived("t", Bytes::new(), QoS::AtLeastOnce, false, &properties, at);
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
        registry.detach("pi", 1, 300, Vec::new(), Assignments::default());
        assert!(!registry.reconnected_since("pi", 1));

        registry.attach("pi", false, 300, attached(2));
        assert!(registry.reconnected_since("pi", 1));
        registry.detach("pi", 2, 300, Vec::new(), Assignments::default());
        assert!(registry.reconnected_since("pi", 1));
        assert!(!registry.reconnected_since("pi", 2));
    }
}
