//! Groups items into bulk requests: a batch closes at `max_docs` items, when the next item
//! would take it past `max_bytes`, or `flush_interval_ms` after its first item arrived. The
//! writer also takes whatever is open as soon as a request slot is free, so the age rule only
//! ends a batch that grew while every slot was busy.
//!
//! Pure: the caller passes the time in and asks for the deadline, so the writer can sleep
//! until exactly then and the tests need no clock. The age counts from the *first* item, not
//! the last, so a steady trickle of readings cannot hold a batch (and its MQTT acks) open
//! forever.
//!
//! A byte-full batch closes when the *next* item does not fit rather than as soon as it
//! reaches the limit, so one push closes at most one batch. The writer guarantees that no
//! single item exceeds `max_bytes` (those are dead-lettered before batching); the batcher does
//! not refuse one, it just sends it alone.

use std::time::Duration;

use tokio::time::Instant;

use super::settings::BatchSettings;

/// A closed batch: the items in arrival order and their encoded size.
#[derive(Debug)]
pub struct Batch<T> {
    pub items: Vec<T>,
    pub bytes: usize,
}

#[derive(Debug)]
pub struct Batcher<T> {
    max_docs: usize,
    max_bytes: usize,
    max_age: Duration,
    open: Vec<T>,
    bytes: usize,
    opened_at: Option<Instant>,
}

impl<T> Batcher<T> {
    pub fn new(settings: &BatchSettings) -> Self {
        Batcher {
            max_docs: settings.max_docs.get(),
            max_bytes: settings.max_bytes.get(),
            max_age: Duration::from_millis(settings.flush_interval_ms),
            open: Vec::new(),
            bytes: 0,
            opened_at: None,
        }
    }

    /// Adds an item of `bytes` encoded bytes; returns a batch if this closed one.
    pub fn push(&mut self, item: T, bytes: usize, now: Instant) -> Option<Batch<T>> {
        let full = if !self.open.is_empty() && self.bytes + bytes > self.max_bytes {
            self.take()
        } else {
            None
        };
        if self.open.is_empty() {
            self.opened_at = Some(now);
        }
        self.open.push(item);
        self.bytes += bytes;
        // An open batch always holds fewer than max_docs items, so the byte rule above never
        // closes a batch that this rule also closes: at most one batch per push.
        if self.open.len() >= self.max_docs {
            debug_assert!(full.is_none());
            return self.take();
        }
        full
    }

    /// When the open batch must be sent, if there is one.
    pub fn deadline(&self) -> Option<Instant> {
        self.opened_at.map(|at| at + self.max_age)
    }

    /// The open batch, if its age has run out at `now`.
    pub fn expired(&mut self, now: Instant) -> Option<Batch<T>> {
        match self.deadline() {
            Some(deadline) if now >= deadline => self.take(),
            _ => None,
        }
    }

    /// Whatever is open, regardless of age: for the final flush.
    pub fn take(&mut self) -> Option<Batch<T>> {
        if self.open.is_empty() {
            return None;
        }
        self.opened_at = None;
        Some(Batch {
            items: std::mem::take(&mut self.open),
            bytes: std::mem::replace(&mut self.bytes, 0),
        })
    }

    pub fn len(&self) -> usize {
        self.open.len()
    }

    pub fn is_empty(&self) -> bool {
        self.open.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use std::num::NonZeroUsize;

    use super::*;

    fn batcher(max_docs: usize, max_bytes: usize, flush_interval_ms: u64) -> Batcher<&'static str> {
        Batcher::new(&BatchSettings {
            max_docs: NonZeroUsize::new(max_docs).expect("non-zero"),
            max_bytes: NonZeroUsize::new(max_bytes).expect("non-zero"),
            flush_interval_ms,
            ..BatchSettings::default()
        })
    }

    fn items(batch: Option<Batch<&'static str>>) -> Vec<&'static str> {
        batch.expect("a closed batch").items
    }

    #[test]
    fn a_batch_closes_when_it_reaches_max_docs() {
        let now = Instant::now();
        let mut b = batcher(3, 1000, 1000);
        assert!(b.push("a", 10, now).is_none());
        assert!(b.push("b", 10, now).is_none());
        assert_eq!(items(b.push("c", 10, now)), ["a", "b", "c"]);
        assert!(b.is_empty());
        assert_eq!(b.deadline(), None);
    }

    #[test]
    fn an_item_that_does_not_fit_closes_the_batch_and_opens_the_next() {
        let now = Instant::now();
        let mut b = batcher(100, 25, 1000);
        assert!(b.push("a", 10, now).is_none());
        assert!(b.push("b", 10, now).is_none());
        let closed = b.push("c", 10, now).expect("closed on bytes");
        assert_eq!((closed.items, closed.bytes), (vec!["a", "b"], 20));
        assert_eq!(b.len(), 1);
    }

    #[test]
    fn a_batch_exactly_at_max_bytes_waits_for_the_next_item_or_its_age() {
        let now = Instant::now();
        let mut b = batcher(100, 20, 1000);
        assert!(b.push("a", 10, now).is_none());
        assert!(b.push("b", 10, now).is_none());
        assert_eq!(items(b.push("c", 1, now)), ["a", "b"]);
    }

    #[test]
    fn an_item_larger_than_max_bytes_is_sent_alone() {
        let now = Instant::now();
        let mut b = batcher(100, 20, 1000);
        assert!(b.push("a", 5, now).is_none());
        assert_eq!(items(b.push("huge", 50, now)), ["a"]);
        assert_eq!(items(b.push("b", 5, now)), ["huge"]);
    }

    #[test]
    fn a_batch_expires_flush_interval_after_its_first_item() {
        let start = Instant::now();
        let mut b = batcher(100, 1000, 1000);
        b.push("a", 1, start);
        b.push("b", 1, start + Duration::from_millis(900));
        assert_eq!(b.deadline(), Some(start + Duration::from_millis(1000)));
        assert!(b.expired(start + Duration::from_millis(999)).is_none());
        assert_eq!(
            items(b.expired(start + Duration::from_millis(1000))),
            ["a", "b"]
        );
    }

    #[test]
    fn the_age_of_the_next_batch_starts_at_its_own_first_item() {
        let start = Instant::now();
        let mut b = batcher(2, 1000, 1000);
        b.push("a", 1, start);
        b.push("b", 1, start);
        let later = start + Duration::from_millis(1500);
        b.push("c", 1, later);
        assert_eq!(b.deadline(), Some(later + Duration::from_millis(1000)));
    }

    #[test]
    fn an_empty_batcher_has_no_deadline_and_nothing_to_take() {
        let mut b = batcher(2, 1000, 1000);
        assert_eq!(b.deadline(), None);
        assert!(b.expired(Instant::now()).is_none());
        assert!(b.take().is_none());
    }

    #[test]
    fn take_flushes_a_partial_batch_regardless_of_age() {
        let now = Instant::now();
        let mut b = batcher(100, 1000, 60_000);
        b.push("a", 3, now);
        let batch = b.take().expect("the partial batch");
        assert_eq!((batch.items, batch.bytes), (vec!["a"], 3));
        assert!(b.is_empty());
    }
}
