//! What a connection's link and its driver share, whichever MQTT version the link speaks: the
//! events the link reports ([`Inbound`]), what an ack needs ([`AckKey`]), how a failure is
//! classified and logged, and the reconnect backoff.

use std::sync::Arc;
use std::time::{Duration, Instant};

use thiserror::Error;
use tokio::sync::mpsc;
use tokio_retry::strategy::{ExponentialBackoff, jitter};
use tracing::{debug, error, info, warn};

use super::settings::UpstreamSettings;
use crate::reading::Assigned;
use crate::record::{Message, QoS};

/// What the link reports to the connection's driver.
#[derive(Debug)]
pub enum Inbound {
    /// CONNACK received; without a session the broker forgot our subscriptions. `epoch`
    /// numbers the connection: acks for its publishes name it (see `link`).
    Connected { session_present: bool, epoch: u64 },
    /// `key` is `None` for QoS 0 (nothing to acknowledge). `dup`: the broker says it may have
    /// sent this one before (a redelivery after a reconnect).
    Publish {
        message: Message,
        key: Option<AckKey>,
        dup: bool,
    },
    /// SUBACK: the broker granted `granted` filters and refused `refused` (ACL, bad shared group...).
    Subscribed { granted: usize, refused: usize },
    /// Connecting failed or the connection ended; the link reconnects after a backoff delay.
    Disconnected { error: String, failure: Failure },
}

/// How far a connection got before it failed: what an operator should look at differs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Failure {
    /// The broker answered CONNECT with a refusal (credentials, authorization, client id):
    /// retrying alone will not fix it.
    Refused,
    /// No session came about: TCP, TLS or the CONNECT exchange failed.
    Unreachable,
    /// An established connection went away.
    Lost,
}

impl Failure {
    fn classify(refused: bool, connected: bool) -> Failure {
        match (refused, connected) {
            (true, _) => Failure::Refused,
            (false, false) => Failure::Unreachable,
            (false, true) => Failure::Lost,
        }
    }
}

/// What a PUBACK/PUBREC needs: the packet id and which of the two to send.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AckKey {
    pub qos: QoS,
    pub pkid: u16,
}

#[derive(Debug, Error)]
pub enum SessionError {
    #[error("cannot read {what} file {path:?}: {source}")]
    ReadFile {
        what: &'static str,
        path: std::path::PathBuf,
        source: std::io::Error,
    },
    #[error("tls.client_cert_file and tls.client_key_file must be given together")]
    HalfClientAuth,
    #[error("upstream client request queue: {0}")]
    Client(String),
    #[error("upstream TLS: {0}")]
    Tls(String),
}

/// Reconnect delays: capped exponential with full jitter, so a fleet of bridges does not hammer
/// a restarted broker in lockstep.
type Backoff = std::iter::Map<ExponentialBackoff, fn(Duration) -> Duration>;

fn backoff(settings: &UpstreamSettings) -> Backoff {
    let initial = settings.reconnect_initial_ms.max(1);
    ExponentialBackoff::from_millis(2)
        .factor(initial / 2 + 1)
        .max_delay(Duration::from_millis(
            settings.reconnect_max_ms.max(initial),
        ))
        .map(jitter)
}

/// A connection must last this long before the backoff starts over. Resetting it on every
/// CONNACK let a connection that dies at once (a packet over `max_packet_bytes` redelivered by
/// the broker every time) reconnect hundreds of times a second.
const STABLE_CONNECTION: Duration = Duration::from_secs(10);

/// After a connection ended, the delays start afresh if it had been stable, else they go on.
fn after_disconnect(
    delays: &mut Backoff,
    connected_at: Option<Instant>,
    settings: &UpstreamSettings,
) {
    if connected_at.is_some_and(|at| at.elapsed() >= STABLE_CONNECTION) {
        *delays = backoff(settings);
    }
}

/// One connection's reconnect state, the same for both protocol versions.
pub(super) struct Reconnect {
    settings: Arc<UpstreamSettings>,
    delays: Backoff,
    /// Since when the current connection is up; `None` while disconnected.
    connected_at: Option<Instant>,
}

impl Reconnect {
    pub(super) fn new(settings: &Arc<UpstreamSettings>) -> Self {
        Reconnect {
            settings: Arc::clone(settings),
            delays: backoff(settings),
            connected_at: None,
        }
    }

    pub(super) fn connected(&mut self) {
        self.connected_at = Some(Instant::now());
    }

    /// Reports a failed connection and waits out the backoff; false when the driver is gone.
    pub(super) async fn failed(
        &mut self,
        to_driver: &mpsc::Sender<Inbound>,
        error: String,
        refused: bool,
    ) -> bool {
        let was_connected = self.connected_at.take();
        after_disconnect(&mut self.delays, was_connected, &self.settings);
        let failure = Failure::classify(refused, was_connected.is_some());
        if to_driver
            .send(Inbound::Disconnected { error, failure })
            .await
            .is_err()
        {
            return false;
        }
        let delay = self.delays.next().unwrap_or(Duration::from_secs(1));
        debug!(
            delay_ms = delay.as_millis() as u64,
            "reconnecting after delay"
        );
        tokio::time::sleep(delay).await;
        true
    }
}

/// A PUBLISH from either protocol version as the driver sees it, stamped with its receive time.
pub(super) fn inbound_publish(
    topic: String,
    payload: &[u8],
    qos_level: u8,
    pkid: u16,
    dup: bool,
    retain: bool,
    user_properties: Vec<(String, String)>,
) -> Inbound {
    let qos = QoS::saturating(qos_level);
    // A new reading as far as this connection knows; the driver, which remembers what it has
    // not acknowledged yet, gives a redelivery its first identity back.
    let assigned = Assigned::now();
    Inbound::Publish {
        key: ack_key(qos, pkid),
        dup,
        message: Message {
            topic,
            payload: Arc::from(payload),
            qos,
            retain,
            reading: assigned.reading,
            received_at: assigned.received_at,
            user_properties,
        },
    }
}

fn ack_key(qos: QoS, pkid: u16) -> Option<AckKey> {
    (qos != QoS::AtMostOnce).then_some(AckKey { qos, pkid })
}

/// Logs a connection state change at the right level.
pub fn log_inbound_state(connection: usize, inbound: &Inbound) {
    match inbound {
        Inbound::Connected {
            session_present, ..
        } => {
            info!(connection, session_present, "connected to upstream broker")
        }
        Inbound::Disconnected {
            error,
            failure: Failure::Refused,
        } => {
            error!(
                connection,
                %error,
                "upstream broker refused the connection; check upstream.username, the password \
                 and the broker's ACLs for this client id; retrying"
            )
        }
        Inbound::Disconnected {
            error,
            failure: Failure::Unreachable,
        } => {
            warn!(connection, %error, "cannot connect to upstream broker; retrying")
        }
        Inbound::Disconnected {
            error,
            failure: Failure::Lost,
        } => {
            warn!(connection, %error, "upstream connection lost; reconnecting")
        }
        Inbound::Subscribed {
            granted,
            refused: 0,
        } => {
            info!(connection, granted, "subscribed")
        }
        Inbound::Subscribed { granted, refused } => {
            error!(
                connection,
                granted,
                refused,
                "upstream broker refused subscriptions; check its ACLs and the filters"
            )
        }
        Inbound::Publish { .. } => {}
    }
}

#[cfg(test)]
mod tests;
