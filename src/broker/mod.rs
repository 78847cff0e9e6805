//! The embedded mini-broker: devices connect straight to mqtt2es, and a PUBACK (QoS 1) or
//! PUBREC (QoS 2) goes out only once the record's ack settles, so a device's own retry covers
//! every failure between its socket and Elasticsearch.
//!
//! Why our own and not a broker crate: no general-purpose broker lets the acknowledgement wait
//! on the sink. Packets are read and written by rumqttc's codec (`mqttbytes` v4 and v5); the
//! only bytes we read by hand are `codec`'s three narrow CONNECT and DISCONNECT checks.
//!
//! - `settings`   — the `broker:` config section (limits, state directory) and its sub-sections.
//! - `listener`   — TCP, TLS and WebSocket listeners; handshakes happen off the accept loop.
//! - `auth`       — password file, JWT-as-password and per-user ACLs.
//! - `codec`      — bytes ⇄ packets for 3.1.1 and 5 behind one pair of enums.
//! - `connection` — one client: CONNECT, publishes into records, acks once durable, deliveries.
//! - `session`    — the registry of sessions (subscriptions, expiry, QoS 2 state, takeover).
//! - `router`     — which subscription a message matches, at which QoS.
//! - `subscription`, `delivery` — a subscription, and a message on its way to subscribers (apart
//!   so that the router, the registry and the retained store need not import each other).
//! - `share`      — shared subscriptions: which member of a group gets the next message.
//! - `retained`   — the retained message store.
//! - `store`      — sessions, offline queues and retained messages on disk, per change.
//!
//! What each unacknowledged publish was assigned (its reading id and receive time) is kept in
//! `crate::kept` by the session registry, so a resend after a crash is the same reading. Both
//! stores are keyspaces of one database under `state_dir` (see `crate::state`).

pub mod auth;
pub mod codec;
pub mod connection;
pub mod delivery;
pub mod listener;
pub mod retained;
pub mod router;
pub mod session;
pub mod settings;
pub mod share;
pub mod store;
pub mod subscription;

use std::sync::Arc;
use std::sync::atomic::AtomicUsize;
use std::time::Duration;

use thiserror::Error;
use tokio::sync::mpsc;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use tracing::{Instrument, error, info};

pub use settings::BrokerSettings;

use crate::kept::{Kept, KeptError};
use crate::record::Record;
use crate::state::{self, OpenError};
use auth::{Auth, AuthError};
use connection::{Context, Limits};
use listener::{ListenerError, Listeners};
use session::Registry;
use store::{Store, StoreError};

/// Accepted connections waiting for their task; the listeners wait when it is full.
const ACCEPT_QUEUE: usize = 128;

#[derive(Debug, Error)]
pub enum BrokerError {
    #[error(transparent)]
    Listen(#[from] ListenerError),
    #[error("broker.auth: {0}")]
    Auth(#[from] AuthError),
    #[error(transparent)]
    Open(#[from] OpenError),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Kept(#[from] KeptError),
}

/// A broker whose listeners are bound and whose state is loaded, ready to run.
pub struct Broker {
    listeners: Listeners,
    context: Arc<Context>,
    kept: Kept,
}

impl Broker {
    /// Loads auth and the persisted state, then binds every listener (each logs `listening`
    /// with its transport and address, port 0 resolved). Fails fast on any of them.
    pub async fn start(settings: &BrokerSettings) -> Result<Broker, BrokerError> {
        let auth = Auth::load(&settings.auth)?;
        // Who gets in, once at start: the first thing to know when a device is refused.
        info!(who = %settings.auth.describe(), "broker clients");
        let db = state::open(&settings.state_dir)?;
        let store = Store::open(&db, &settings.state_dir)?;
        let mut registry = Registry::restore(store.load()?, settings.offline_queue);
        registry.keep_in(store);
        let kept = Kept::within(&db, &settings.state_dir)?;
        registry.adopt(kept.clone())?;
        info!(
            state_dir = ?settings.state_dir,
            sessions = registry.session_count(),
            retained = registry.retained_count(),
            queued = registry.queued_count(),
            "broker state loaded"
        );
        let listeners = Listeners::bind(&settings.listeners).await?;
        Ok(Broker {
            listeners,
            context: Arc::new(Context {
                registry: Arc::new(registry),
                auth: Arc::new(auth),
                limits: Limits {
                    max_packet_bytes: settings.max_packet_bytes,
                    max_connections: settings.max_connections,
                    max_inflight: settings.max_inflight,
                    connect_timeout: Duration::from_millis(settings.connect_timeout_ms),
                    max_keepalive_s: settings.max_keepalive_s,
                },
                live: AtomicUsize::new(0),
            }),
            kept,
        })
    }

    /// The store of what unacknowledged publishes were assigned: the sink commits it before
    /// each bulk request.
    pub fn kept(&self) -> Kept {
        self.kept.clone()
    }

    /// Serves clients until `intake` is cancelled; then stops accepting and reading, lets each
    /// connection send the acks that settle (the sink flushes meanwhile) and say goodbye, and
    /// writes and fsyncs the state last. Records go to `records`; every clone of it is dropped once intake
    /// stopped, which is how the pipeline learns that no more come.
    pub async fn run(self, records: mpsc::Sender<Record>, intake: CancellationToken) {
        let Broker {
            listeners,
            context,
            kept,
        } = self;
        let registry = Arc::clone(&context.registry);
        let (accepted_tx, mut accepted) = mpsc::channel(ACCEPT_QUEUE);
        let accept = tokio::spawn(listeners.run(
            context.limits.connect_timeout,
            accepted_tx,
            intake.clone(),
        ));
        let writer_stop = CancellationToken::new();
        let writer = tokio::spawn(Arc::clone(&registry).run_writer(writer_stop.clone()));
        let syncer_stop = CancellationToken::new();
        let syncer = tokio::spawn(Arc::new(kept).run_syncer(syncer_stop.clone()));

        let mut connections = JoinSet::new();
        loop {
            tokio::select! {
                next = accepted.recv() => match next {
                    Some(client) => {
                        let span = tracing::debug_span!("client", peer = %client.peer);
                        connections.spawn(
                            connection::serve(client, Arc::clone(&context), records.clone(), intake.clone())
                                .instrument(span),
                        );
                    }
                    None => break,
                },
                Some(joined) = connections.join_next(), if !connections.is_empty() => {
                    // One client's bug must not take the others down: log it and go on.
                    if let Err(error) = joined && error.is_panic() {
                        error!(%error, "a connection task panicked");
                    }
                }
            }
        }
        drop(records);
        let _ = accept.await;
        info!(
            connections = connections.len(),
            "broker stopped accepting; waiting for connections to send their last acks"
        );
        while let Some(joined) = connections.join_next().await {
            if let Err(error) = joined
                && error.is_panic()
            {
                error!(%error, "a connection task panicked");
            }
        }
        // The writer's last write (and fsync) first, then the syncer's last fsync of the rest.
        writer_stop.cancel();
        let _ = writer.await;
        syncer_stop.cancel();
        let _ = syncer.await;
        info!(
            sessions = registry.session_count(),
            retained = registry.retained_count(),
            "broker state saved"
        );
    }
}
