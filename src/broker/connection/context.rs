//! What the phases of a connection share: the broker's `Context` and `Limits`, common to
//! every connection, and the `Client` one connection serves.
//!
//! The decision a reader would question: a file of its own for a few types. `mod.rs` wires the
//! phases together and so uses each of them; were these types defined there, every phase
//! would import its parent and the two would know each other.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use crate::broker::auth::{Auth, Identity};
use crate::broker::codec::Version;
use crate::broker::session::Registry;

/// Topic aliases we accept per MQTT 5 connection (advertised in CONNACK).
pub const TOPIC_ALIAS_MAX: u16 = 64;

/// The broker limits every connection applies.
#[derive(Debug, Clone)]
pub struct Limits {
    pub max_packet_bytes: usize,
    pub max_connections: usize,
    pub max_inflight: u16,
    pub connect_timeout: Duration,
    /// `broker.max_keepalive_s`.
    pub max_keepalive_s: Option<u16>,
}

/// What every connection shares.
pub struct Context {
    pub registry: Arc<Registry>,
    pub auth: Arc<Auth>,
    pub limits: Limits,
    pub live: AtomicUsize,
}

/// Counts a live connection for `max_connections` while it exists.
pub(super) struct Live(pub(super) Arc<Context>);

impl Drop for Live {
    fn drop(&mut self) {
        self.0.live.fetch_sub(1, Ordering::Relaxed);
    }
}

/// Who one connection serves, as its CONNECT established: fixed for the connection's life.
pub(super) struct Client {
    pub(super) context: Arc<Context>,
    pub(super) peer: SocketAddr,
    pub(super) id: u64,
    pub(super) client_id: String,
    pub(super) identity: Identity,
    pub(super) version: Version,
}

impl Client {
    pub(super) fn limits(&self) -> &Limits {
        &self.context.limits
    }
}
