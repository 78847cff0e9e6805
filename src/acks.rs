//! Acknowledgements in arrival order, shared by the upstream subscriber and the embedded broker.
//!
//! MQTT requires PUBACK/PUBREC to go out in the order the PUBLISH packets arrived, but
//! records settle out of order (concurrent bulk requests, retries of single items). This queue
//! releases only the unbroken run of settled records at its front, so an ack never overtakes a
//! record that is not yet durable.
//!
//! Tokens are consecutive, so a settlement finds its slot by subtraction. After a reconnect the
//! queue is reset: records of the old connection still settle (their documents are stored), but
//! their tokens fall below the new base and are ignored, and the broker's redelivery of them is
//! the same reading (its packet id finds what it was assigned, see `kept`), so its document's
//! `_id` meets a 409 instead of a second copy.

use std::collections::VecDeque;

#[derive(Debug)]
pub struct AckQueue<K> {
    /// Token of the record at the front of `slots`.
    base: u64,
    slots: VecDeque<Slot<K>>,
}

#[derive(Debug)]
struct Slot<K> {
    key: K,
    settled: bool,
}

impl<K> Default for AckQueue<K> {
    fn default() -> Self {
        AckQueue {
            base: 0,
            slots: VecDeque::new(),
        }
    }
}

impl<K> AckQueue<K> {
    /// Registers a record that needs an ack; returns the token its `Ack` must carry.
    pub fn push(&mut self, key: K) -> u64 {
        self.slots.push_back(Slot {
            key,
            settled: false,
        });
        self.base + self.slots.len() as u64 - 1
    }

    /// Marks a record durable. Tokens from before the last `reset` are ignored.
    pub fn settle(&mut self, token: u64) {
        let Some(index) = token.checked_sub(self.base) else {
            return;
        };
        if let Some(slot) = usize::try_from(index)
            .ok()
            .and_then(|i| self.slots.get_mut(i))
        {
            slot.settled = true;
        }
    }

    /// Like `settle`, and lets the caller record on the key how the record settled (the broker
    /// answers an MQTT 5 client with a reason code taken from it).
    pub fn settle_with(&mut self, token: u64, update: impl FnOnce(&mut K)) {
        let Some(index) = token.checked_sub(self.base) else {
            return;
        };
        if let Some(slot) = usize::try_from(index)
            .ok()
            .and_then(|i| self.slots.get_mut(i))
        {
            update(&mut slot.key);
            slot.settled = true;
        }
    }

    /// Removes and returns the keys at the front that are settled, in arrival order.
    pub fn pop_ready(&mut self) -> Vec<K> {
        let mut ready = Vec::new();
        while self.slots.front().is_some_and(|slot| slot.settled) {
            if let Some(slot) = self.slots.pop_front() {
                ready.push(slot.key);
                self.base += 1;
            }
        }
        ready
    }

    /// Forgets every outstanding record (new connection): later tokens start after the old ones.
    pub fn reset(&mut self) {
        self.base += self.slots.len() as u64;
        self.slots.clear();
    }

    /// Records waiting for their own or an earlier record's settlement.
    pub fn outstanding(&self) -> usize {
        self.slots.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_settled_in_order_are_released_at_once() {
        let mut queue = AckQueue::default();
        let a = queue.push('a');
        let b = queue.push('b');
        queue.settle(a);
        assert_eq!(queue.pop_ready(), vec!['a']);
        queue.settle(b);
        assert_eq!(queue.pop_ready(), vec!['b']);
        assert_eq!(queue.outstanding(), 0);
    }

    #[test]
    fn a_later_record_waits_for_an_earlier_unsettled_one() {
        let mut queue = AckQueue::default();
        let a = queue.push('a');
        let b = queue.push('b');
        let c = queue.push('c');
        queue.settle(c);
        queue.settle(b);
        assert!(queue.pop_ready().is_empty());
        queue.settle(a);
        assert_eq!(queue.pop_ready(), vec!['a', 'b', 'c']);
    }

    #[test]
    fn settlements_from_before_a_reset_are_ignored() {
        let mut queue = AckQueue::default();
        let old = queue.push('x');
        queue.reset();
        let new = queue.push('y');
        assert_ne!(old, new);
        queue.settle(old);
        assert!(queue.pop_ready().is_empty());
        queue.settle(new);
        assert_eq!(queue.pop_ready(), vec!['y']);
    }

    #[test]
    fn an_unknown_future_token_changes_nothing() {
        let mut queue = AckQueue::default();
        queue.push('a');
        queue.settle(99);
        assert!(queue.pop_ready().is_empty());
        assert_eq!(queue.outstanding(), 1);
    }
}
