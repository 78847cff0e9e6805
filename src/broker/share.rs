//! Shared subscriptions (`$share/<group>/<filter>`, MQTT 5 §4.8.2): the members of one group
//! and filter, and which of them gets the next message.
//!
//! Pure: the registry says how each member can be reached and delivers to the one chosen.
//! The decision a reader would question: turns go round-robin among the *live* members, and
//! an offline persistent member gets a message queued only when no member is live. Mosquitto
//! rotates through every member and queues for an offline one in its turn; that holds a
//! message back until a reconnect that may never come while a connected member could have
//! acknowledged it at once, and the point of a group is that its members stand in for each
//! other. Queueing for an offline member still beats dropping a QoS 1/2 message when nobody is
//! connected.

use std::sync::Arc;

use crate::topic::TopicFilter;

/// How a member can take a message now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reach {
    /// Connected, with room for it.
    Live,
    /// Not connected (or going), but its session outlives the connection and queues it.
    Queue,
    /// Neither: a connected member that lags too far behind, or an offline one and QoS 0.
    Unreachable,
}

/// The members of one shared subscription in the order they joined, and whose turn is next.
#[derive(Debug)]
pub struct Share {
    /// Handed to each delivery it gives out (`Delivery::share`).
    filter: Arc<TopicFilter>,
    members: Vec<String>,
    next: usize,
}

impl Share {
    /// A share of `filter` (`$share/<group>/<filter>`) with no members yet.
    pub fn new(filter: TopicFilter) -> Share {
        Share {
            filter: Arc::new(filter),
            members: Vec::new(),
            next: 0,
        }
    }

    pub fn filter(&self) -> &Arc<TopicFilter> {
        &self.filter
    }

    /// Whether a message on `topic` is for this share.
    pub fn matches(&self, topic: &str) -> bool {
        self.filter.matches(topic)
    }

    pub fn join(&mut self, client_id: &str) {
        if !self.members.iter().any(|m| m == client_id) {
            self.members.push(client_id.to_owned());
        }
    }

    /// Removes `client_id`; the turn stays with the member that would have had it.
    pub fn leave(&mut self, client_id: &str) {
        let Some(at) = self.members.iter().position(|m| m == client_id) else {
            return;
        };
        self.members.remove(at);
        if at < self.next {
            self.next -= 1;
        }
        if self.next >= self.members.len() {
            self.next = 0;
        }
    }

    pub fn is_empty(&self) -> bool {
        self.members.is_empty()
    }

    /// The member to give the next message to, and how: the first live one from whose turn it
    /// is, else the first that queues; the turn passes to the member after it. `None` (and the
    /// turn stays) when no member can take it.
    pub fn pick(&mut self, reach: impl Fn(&str) -> Reach) -> Option<(&str, Reach)> {
        let count = self.members.len();
        let mut queue = None;
        let mut chosen = None;
        for at in (0..count).map(|i| (self.next + i) % count) {
            match reach(&self.members[at]) {
                Reach::Live => {
                    chosen = Some((at, Reach::Live));
                    break;
                }
                Reach::Queue if queue.is_none() => queue = Some((at, Reach::Queue)),
                Reach::Queue | Reach::Unreachable => {}
            }
        }
        let (at, how) = chosen.or(queue)?;
        self.next = (at + 1) % count;
        Some((&self.members[at], how))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn share(members: &[&str]) -> Share {
        let mut share = Share::new(TopicFilter::parse("$share/g/test/#").expect("filter"));
        for member in members {
            share.join(member);
        }
        share
    }

    fn picks(share: &mut Share, times: usize, reach: impl Fn(&str) -> Reach) -> Vec<String> {
        (0..times)
            .map(|_| match share.pick(&reach) {
                Some((member, _)) => member.to_owned(),
                None => "-".to_owned(),
            })
            .collect()
    }

    #[test]
    fn live_members_take_turns() {
        let mut share = share(&["a", "b", "c"]);
        assert_eq!(
            picks(&mut share, 7, |_| Reach::Live),
            ["a", "b", "c", "a", "b", "c", "a"]
        );
    }

    #[test]
    fn a_member_that_cannot_take_it_now_is_passed_over_for_the_next_live_one() {
        let mut share = share(&["a", "b", "c"]);
        let reach = |m: &str| match m {
            "b" => Reach::Unreachable,
            _ => Reach::Live,
        };
        assert_eq!(picks(&mut share, 4, reach), ["a", "c", "a", "c"]);
    }

    #[test]
    fn an_offline_member_gets_it_queued_only_when_no_member_is_live() {
        let mut share = share(&["offline", "live"]);
        let reach = |m: &str| match m {
            "offline" => Reach::Queue,
            _ => Reach::Live,
        };
        assert_eq!(picks(&mut share, 3, reach), ["live", "live", "live"]);

        let mut share = self::share(&["lagging", "offline-1", "offline-2"]);
        let reach = |m: &str| match m {
            "lagging" => Reach::Unreachable,
            _ => Reach::Queue,
        };
        assert_eq!(share.pick(reach), Some(("offline-1", Reach::Queue)));
        assert_eq!(
            share.pick(reach),
            Some(("offline-2", Reach::Queue)),
            "offline members take turns too"
        );
    }

    #[test]
    fn nobody_gets_it_when_no_member_can_take_it() {
        let mut share = share(&["a", "b"]);
        assert_eq!(share.pick(|_| Reach::Unreachable), None);
        assert_eq!(share.pick(|_| Reach::Live), Some(("a", Reach::Live)));
        let filter = TopicFilter::clone(share.filter());
        assert_eq!(Share::new(filter).pick(|_| Reach::Live), None);
    }

    #[test]
    fn a_member_leaving_leaves_the_turn_with_the_member_that_would_have_had_it() {
        let mut share = share(&["a", "b", "c"]);
        assert_eq!(picks(&mut share, 2, |_| Reach::Live), ["a", "b"]);
        share.leave("a");
        assert_eq!(picks(&mut share, 3, |_| Reach::Live), ["c", "b", "c"]);
        share.leave("c");
        share.leave("b");
        assert!(share.is_empty());
    }

    #[test]
    fn joining_twice_is_one_membership() {
        let mut share = share(&["a", "a", "b"]);
        assert_eq!(picks(&mut share, 2, |_| Reach::Live), ["a", "b"]);
        share.leave("a");
        assert_eq!(picks(&mut share, 2, |_| Reach::Live), ["b", "b"]);
    }
}
