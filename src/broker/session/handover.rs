//! The two signals of a session takeover, shared by a connection and its session's entry: the
//! registry kicks the connection that holds the session, and that connection says when it has
//! handed the session back, which the connection taking over waits for.
//!
//! The decision a reader would question: not two `CancellationToken`s. A token is a node of a
//! cancellation tree, 112 bytes with its own allocation; two per connection were about 220 of
//! the 3 KB an idle connection cost. Here both signals share one allocation of 96 bytes, each a
//! flag set once and a `Notify`. Any number may wait for the hand-back (two connections may
//! take over at once); only the connection itself waits for the kick.

use std::sync::atomic::{AtomicBool, Ordering};

use tokio::sync::Notify;
use tokio::sync::futures::Notified;

#[derive(Debug, Default)]
pub struct Handover {
    kicked: AtomicBool,
    kick: Notify,
    handed_back: Signal,
}

impl Handover {
    /// Tells the connection holding the session to go.
    pub fn kick(&self) {
        self.kicked.store(true, Ordering::Release);
        self.kick.notify_one();
    }

    /// Whether `kick` was called.
    pub fn is_kicked(&self) -> bool {
        self.kicked.load(Ordering::Acquire)
    }

    /// Completes once `kick` was called, for the one task that waits for it (the connection's
    /// loop, which ends then): a kick while it does not wait leaves a permit that its next wait
    /// takes. A plain `Notified`, not a future of our own, because it sits in every idle
    /// connection's task.
    pub fn kicked(&self) -> Notified<'_> {
        self.kick.notified()
    }

    /// Says that the connection has handed the session back.
    pub fn hand_back(&self) {
        self.handed_back.give();
    }

    /// Returns once `hand_back` was called (at once if it already was).
    pub async fn handed_back(&self) {
        self.handed_back.given().await;
    }
}

/// A signal given once, to any number of waiters, before or after they wait.
#[derive(Debug, Default)]
struct Signal {
    given: AtomicBool,
    waiters: Notify,
}

impl Signal {
    fn give(&self) {
        self.given.store(true, Ordering::Release);
        self.waiters.notify_waiters();
    }

    fn is_given(&self) -> bool {
        self.given.load(Ordering::Acquire)
    }

    async fn given(&self) {
        let notified = self.waiters.notified();
        let mut notified = std::pin::pin!(notified);
        // Registered before the flag is read: a `give` in between still wakes this waiter.
        notified.as_mut().enable();
        if self.is_given() {
            return;
        }
        notified.await;
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;

    #[tokio::test]
    async fn a_kick_given_before_anyone_waits_is_seen_by_the_next_wait() {
        let handover = Handover::default();
        assert!(!handover.is_kicked());
        handover.kick();
        assert!(handover.is_kicked());
        handover.kicked().await;
        assert!(!handover.handed_back.is_given(), "the signals are apart");
    }

    #[tokio::test]
    async fn every_connection_waiting_for_the_hand_back_is_woken_by_it() {
        let handover = Arc::new(Handover::default());
        let waiters: Vec<_> = (0..2)
            .map(|_| {
                let handover = Arc::clone(&handover);
                tokio::spawn(async move { handover.handed_back().await })
            })
            .collect();
        tokio::task::yield_now().await;
        handover.hand_back();
        for waiter in waiters {
            waiter.await.expect("woken");
        }
        handover.handed_back().await;
    }

    #[test]
    fn both_signals_take_one_allocation_of_under_a_hundred_bytes() {
        // Two tokio_util CancellationTokens took 2 x 112 bytes, each its own allocation.
        assert!(std::mem::size_of::<Handover>() + 16 <= 96);
    }
}
