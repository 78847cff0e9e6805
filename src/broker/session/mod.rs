//! Sessions and the registry that holds them: which client ids have a session, what each is
//! subscribed to, when it expires, which QoS 2 packet ids await PUBREL, what is queued for it
//! while it is offline, and which connection (if any) owns it now. The retained store lives
//! here too, because a retained publish and the fan-out it causes must be one step. So are
//! the shared subscriptions' member lists (`share`): a session ending hands its share of
//! unacknowledged messages to another member in the same step that removes it.
//!
//! The files, each importing only those listed before it:
//! - `queue`    — the offline queues and their bounds.
//! - `handover` — the two signals of a takeover: the kick, and the session handed back.
//! - `entry`    — one client id's session, the connection that holds it, what it left unfinished.
//! - `sharing`  — the shared subscriptions' member lists: joining, leaving, giving a message out.
//! - `registry` — `Registry`: the maps under its one lock, and what connections ask of them.
//! - `fanout`   — a published message reaching the sessions it matches.
//! - `persist`  — what reaches the disk and when, and the registry rebuilt from it.

pub use super::delivery::Delivery;
pub use super::subscription::Subscription;
pub use entry::{Attached, Session, Sessions, Unfinished};
pub use handover::Handover;
pub use queue::{Queue, QueueLimits};
pub use registry::{Registry, Resumed, Subscribed};

mod entry;
mod fanout;
mod handover;
mod persist;
mod queue;
mod registry;
mod sharing;
