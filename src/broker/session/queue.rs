//! Offline queues: the QoS 1/2 messages kept for a persistent session while no connection holds
//! it, handed over when it reconnects. Bounded per session and in total, by messages and by
//! bytes (`broker.offline_queue`). Beyond a bound the oldest message goes: the session's own
//! for a session bound, the oldest of any session for a total bound; counted, and logged.
//!
//! Every queued message gets a number from one counter for all sessions, so the oldest message
//! of all is the smallest number at the front of some queue (`fronts`), and each message is
//! stored under its session and number: a queue is written a message at a time, added when
//! queued and deleted when handed over or dropped, never rewritten whole.
//!
//! It knows a session only as what holds a queue (`AsMut<Queue>`), so that it imports nothing
//! of the registry.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::time::SystemTime;

use serde::{Deserialize, Serialize};
use tracing::warn;

use crate::broker::delivery::Delivery;
use crate::settings::SettingsError;

/// The `broker.offline_queue` section.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct QueueLimits {
    /// Messages one session's queue holds (as Mosquitto's `max_queued_messages`).
    pub max_messages_per_session: usize,
    /// Bytes (topics and payloads) one session's queue holds.
    pub max_bytes_per_session: usize,
    /// Messages all queues hold together.
    pub max_messages: usize,
    /// Bytes all queues hold together: they are held in memory as well as on disk.
    pub max_bytes: usize,
}

impl Default for QueueLimits {
    fn default() -> Self {
        QueueLimits {
            max_messages_per_session: 1000,
            max_bytes_per_session: 16 << 20,
            max_messages: 100_000,
            max_bytes: 64 << 20,
        }
    }
}

impl QueueLimits {
    pub fn check(&self) -> Result<(), SettingsError> {
        for (key, value) in [
            (
                "broker.offline_queue.max_messages_per_session",
                self.max_messages_per_session,
            ),
            (
                "broker.offline_queue.max_bytes_per_session",
                self.max_bytes_per_session,
            ),
            ("broker.offline_queue.max_messages", self.max_messages),
            ("broker.offline_queue.max_bytes", self.max_bytes),
        ] {
            if value == 0 {
                return Err(SettingsError::Key {
                    key,
                    message: "must be at least 1".into(),
                });
            }
        }
        Ok(())
    }
}

/// One session's queue, oldest first.
#[derive(Debug, Default)]
pub struct Queue {
    entries: VecDeque<Queued>,
    bytes: usize,
}

#[derive(Debug)]
struct Queued {
    number: u64,
    bytes: usize,
    delivery: Delivery,
}

impl Queue {
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// The message queued under `number`, if it is still queued.
    pub fn get(&self, number: u64) -> Option<&Delivery> {
        // Numbers only grow as messages are added at the back.
        let at = self
            .entries
            .binary_search_by_key(&number, |q| q.number)
            .ok()?;
        Some(&self.entries[at].delivery)
    }

    /// The messages, oldest first.
    pub fn iter(&self) -> impl Iterator<Item = &Delivery> {
        self.entries.iter().map(|q| &q.delivery)
    }
}

/// A bound of `QueueLimits`, by its key.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Bound {
    MessagesPerSession,
    BytesPerSession,
    Messages,
    Bytes,
}

impl Bound {
    fn key(self) -> &'static str {
        match self {
            Bound::MessagesPerSession => "max_messages_per_session",
            Bound::BytesPerSession => "max_bytes_per_session",
            Bound::Messages => "max_messages",
            Bound::Bytes => "max_bytes",
        }
    }
}

/// What happened to a queued message since the store last wrote.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Change {
    /// Queued by the session with this client id: to be written.
    Added(String),
    /// Handed over or dropped after it was written: to be deleted.
    Removed(String),
}

/// What all queues share: the limits, the totals, the next number, the front of each queue,
/// and the changes the store has not written yet.
#[derive(Debug, Default)]
pub struct Queues {
    limits: QueueLimits,
    next_number: u64,
    messages: usize,
    bytes: usize,
    /// The number at the front of each non-empty queue, with its client id.
    fronts: BTreeMap<u64, String>,
    /// By message number.
    changes: HashMap<u64, Change>,
    dropped: u64,
}

impl Queues {
    pub fn new(limits: QueueLimits) -> Queues {
        Queues {
            limits,
            ..Queues::default()
        }
    }

    /// Queues `delivery` for `client_id`, then drops that session's oldest while it is over a
    /// session bound. The total bounds are `trim`'s.
    pub fn push(&mut self, client_id: &str, queue: &mut Queue, delivery: Delivery) {
        let number = self.next_number;
        self.next_number += 1;
        self.insert(client_id, queue, number, delivery);
        self.changes
            .insert(number, Change::Added(client_id.to_owned()));
        self.keep_in_bounds(client_id, queue);
    }

    /// A message loaded from the store, under the number it was stored with.
    pub fn restore(&mut self, client_id: &str, queue: &mut Queue, number: u64, delivery: Delivery) {
        self.next_number = self.next_number.max(number + 1);
        self.insert(client_id, queue, number, delivery);
    }

    /// Deletes from the store a message that is no longer wanted there (its session is gone).
    pub fn forget(&mut self, client_id: &str, number: u64) {
        self.next_number = self.next_number.max(number + 1);
        self.removed(client_id, number);
    }

    /// Drops `client_id`'s oldest messages while its queue is over a session bound.
    pub fn keep_in_bounds(&mut self, client_id: &str, queue: &mut Queue) {
        loop {
            let bound = if queue.len() > self.limits.max_messages_per_session {
                Bound::MessagesPerSession
            } else if queue.bytes > self.limits.max_bytes_per_session {
                Bound::BytesPerSession
            } else {
                return;
            };
            self.pop_front(client_id, queue);
            self.count_drop(client_id, bound);
        }
    }

    /// Drops the oldest message of any session while the queues together are over a bound.
    pub fn trim<S: AsMut<Queue>>(&mut self, sessions: &mut HashMap<String, S>) {
        loop {
            let bound = if self.messages > self.limits.max_messages {
                Bound::Messages
            } else if self.bytes > self.limits.max_bytes {
                Bound::Bytes
            } else {
                return;
            };
            let Some((&number, client_id)) = self.fronts.first_key_value() else {
                return;
            };
            let client_id = client_id.clone();
            match sessions.get_mut(&client_id) {
                Some(session) => {
                    self.pop_front(&client_id, session.as_mut());
                    self.count_drop(&client_id, bound);
                }
                // Cannot happen: a session's queue is emptied (`take_all`) before it goes.
                None => {
                    self.fronts.remove(&number);
                }
            }
        }
    }

    /// Everything `client_id` has queued, oldest first, taken out of the queue: handed over to
    /// its new connection, or its session ended.
    pub fn take_all(&mut self, client_id: &str, queue: &mut Queue) -> Vec<Delivery> {
        std::iter::from_fn(|| self.pop_front(client_id, queue)).collect()
    }

    /// Drops the messages of `client_id` whose expiry interval has run out; how many.
    pub fn drop_expired(&mut self, client_id: &str, queue: &mut Queue, now: SystemTime) -> usize {
        if !queue.iter().any(|d| d.expired(now)) {
            return 0;
        }
        if let Some(front) = queue.entries.front() {
            self.fronts.remove(&front.number);
        }
        let mut expired = 0;
        for entry in std::mem::take(&mut queue.entries) {
            if entry.delivery.expired(now) {
                queue.bytes -= entry.bytes;
                self.messages -= 1;
                self.bytes -= entry.bytes;
                self.removed(client_id, entry.number);
                expired += 1;
            } else {
                queue.entries.push_back(entry);
            }
        }
        if let Some(front) = queue.entries.front() {
            self.fronts.insert(front.number, client_id.to_owned());
        }
        self.report();
        expired
    }

    /// The changes since the last call, by message number.
    pub fn take_changes(&mut self) -> HashMap<u64, Change> {
        std::mem::take(&mut self.changes)
    }

    pub fn has_changes(&self) -> bool {
        !self.changes.is_empty()
    }

    /// Messages and bytes queued in all.
    pub fn totals(&self) -> (usize, usize) {
        (self.messages, self.bytes)
    }

    fn insert(&mut self, client_id: &str, queue: &mut Queue, number: u64, delivery: Delivery) {
        let bytes = delivery.topic.len() + delivery.payload.len();
        if queue.is_empty() {
            self.fronts.insert(number, client_id.to_owned());
        }
        queue.entries.push_back(Queued {
            number,
            bytes,
            delivery,
        });
        queue.bytes += bytes;
        self.messages += 1;
        self.bytes += bytes;
        self.report();
    }

    fn pop_front(&mut self, client_id: &str, queue: &mut Queue) -> Option<Delivery> {
        let entry = queue.entries.pop_front()?;
        self.fronts.remove(&entry.number);
        if let Some(next) = queue.entries.front() {
            self.fronts.insert(next.number, client_id.to_owned());
        }
        queue.bytes -= entry.bytes;
        self.messages -= 1;
        self.bytes -= entry.bytes;
        self.removed(client_id, entry.number);
        self.report();
        Some(entry.delivery)
    }

    fn report(&self) {
        crate::metrics::offline_queued(self.messages, self.bytes);
    }

    /// Notes a message gone: deleted from the store, unless it never reached it.
    fn removed(&mut self, client_id: &str, number: u64) {
        if !matches!(self.changes.remove(&number), Some(Change::Added(_))) {
            self.changes
                .insert(number, Change::Removed(client_id.to_owned()));
        }
    }

    /// Counts a dropped message; logs the first and then each time the count doubles.
    fn count_drop(&mut self, client_id: &str, bound: Bound) {
        self.dropped += 1;
        crate::metrics::offline_message_dropped();
        if self.dropped.is_power_of_two() {
            warn!(
                client_id,
                bound = bound.key(),
                dropped_total = self.dropped,
                "an offline queue is over broker.offline_queue: its oldest message was dropped"
            );
        }
    }
}

#[cfg(test)]
mod tests;
