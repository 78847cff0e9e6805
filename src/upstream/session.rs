//! One MQTT connection to the upstream broker, hiding whether it speaks 3.1.1 or 5.
//!
//! rumqttc has separate types per protocol version; everything above this module sees only
//! [`Client`], [`Pump`] and [`Inbound`]. The pump owns the event loop and is never cancelled
//! while a connection lives: dropping `EventLoop::poll` midway can lose an outgoing packet it
//! already took (a PUBCOMP, say), so the poll loop runs in its own task and hands events over a
//! bounded channel, which is also where backpressure from the pipeline reaches the socket.

use std::sync::Arc;
use std::time::{Duration, Instant};

use rumqttc::v5;
use rumqttc::{TlsConfiguration, Transport};
use thiserror::Error;
use tokio::sync::mpsc;
use tokio_retry::strategy::{ExponentialBackoff, jitter};
use tracing::{debug, error, info, warn};

use super::settings::{Protocol, UpstreamSettings};
use crate::reading::Assigned;
use crate::record::{Message, QoS};
use crate::secret::Secret;

/// What the pump reports to the connection's driver.
#[derive(Debug)]
pub enum Inbound {
    /// CONNACK received; without a session the broker forgot our subscriptions.
    Connected { session_present: bool },
    /// `key` is `None` for QoS 0 (nothing to acknowledge). `dup`: the broker says it may have
    /// sent this one before (a redelivery after a reconnect).
    Publish {
        message: Message,
        key: Option<AckKey>,
        dup: bool,
    },
    /// SUBACK: the broker granted `granted` filters and refused `refused` (ACL, bad shared group...).
    Subscribed { granted: usize, refused: usize },
    /// Connecting failed or the connection ended; the pump reconnects after a backoff delay.
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
}

/// The request side of a connection: acks, subscriptions, disconnect.
#[derive(Clone)]
pub enum Client {
    V311(rumqttc::AsyncClient),
    V5(v5::AsyncClient),
}

/// The event loop side of a connection; see the module doc for why it runs on its own.
pub enum Pump {
    V311(Box<rumqttc::EventLoop>),
    V5(Box<v5::EventLoop>),
}

/// Rumqttc's request queue: acks and subscriptions wait here for the event loop. It fills when
/// the pump waits on a full pipeline while many acks come due (large in-flight windows); the
/// driver then keeps the rest in order and offers them again (see `driver`).
const REQUEST_CAPACITY: usize = 4096;

pub fn open(
    settings: &UpstreamSettings,
    connection: usize,
    password: Option<&Secret>,
) -> Result<(Client, Pump), SessionError> {
    let client_id = settings.client_id_for(connection);
    let transport = transport(settings)?;
    let keep_alive = Duration::from_secs(settings.keep_alive_s.max(5));
    Ok(match settings.protocol {
        Protocol::V311 => {
            let mut options = rumqttc::MqttOptions::new(client_id, &settings.host, settings.port);
            options
                .set_keep_alive(keep_alive)
                .set_clean_session(settings.clean_session)
                .set_manual_acks(true)
                .set_max_packet_size(settings.max_packet_bytes, OUTGOING_PACKET_LIMIT)
                .set_transport(transport);
            if let Some(user) = &settings.username {
                options.set_credentials(user, password.map(Secret::expose).unwrap_or(""));
            }
            let (client, eventloop) = rumqttc::AsyncClient::new(options, REQUEST_CAPACITY);
            (Client::V311(client), Pump::V311(Box::new(eventloop)))
        }
        Protocol::V5 => {
            let mut options = v5::MqttOptions::new(client_id, &settings.host, settings.port);
            let expiry = if settings.clean_session {
                None
            } else {
                Some(settings.session_expiry_s)
            };
            options
                .set_keep_alive(keep_alive)
                .set_clean_start(settings.clean_session)
                .set_session_expiry_interval(expiry)
                .set_receive_maximum(Some(settings.receive_maximum))
                .set_max_packet_size(u32::try_from(settings.max_packet_bytes).ok())
                .set_manual_acks(true)
                .set_transport(transport);
            if let Some(user) = &settings.username {
                options.set_credentials(user, password.map(Secret::expose).unwrap_or(""));
            }
            let (client, eventloop) = v5::AsyncClient::new(options, REQUEST_CAPACITY);
            (Client::V5(client), Pump::V5(Box::new(eventloop)))
        }
    })
}

fn transport(settings: &UpstreamSettings) -> Result<Transport, SessionError> {
    let Some(tls) = &settings.tls else {
        return Ok(Transport::tcp());
    };
    let read = |what: &'static str, path: &std::path::PathBuf| {
        std::fs::read(path).map_err(|source| SessionError::ReadFile {
            what,
            path: path.clone(),
            source,
        })
    };
    // rumqttc builds its rustls config with the process-wide crypto provider, and rustls only
    // picks one by itself when exactly one is compiled in; without this, any dependency that
    // enables a second one turns the first TLS connect into a panic in the pump task. An `Err`
    // means a provider is installed already, which is all this needs.
    let _ = rustls::crypto::ring::default_provider().install_default();
    let ca = read("tls.ca_file", &tls.ca_file)?;
    let client_auth = match (&tls.client_cert_file, &tls.client_key_file) {
        (Some(cert), Some(key)) => Some((
            read("tls.client_cert_file", cert)?,
            read("tls.client_key_file", key)?,
        )),
        (None, None) => None,
        _ => return Err(SessionError::HalfClientAuth),
    };
    Ok(Transport::tls_with_config(TlsConfiguration::Simple {
        ca,
        alpn: None,
        client_auth,
    }))
}

impl Client {
    /// Queues a PUBACK (QoS 1) or PUBREC (QoS 2) without waiting: the caller is the connection's
    /// driver, and waiting here on the event loop's queue would stall settlements.
    pub fn ack(&self, key: AckKey) -> Result<(), SessionError> {
        let result = match self {
            Client::V311(client) => {
                let mut publish =
                    rumqttc::Publish::new("", rumqttc::QoS::AtLeastOnce, Vec::<u8>::new());
                publish.qos = v4_qos(key.qos);
                publish.pkid = key.pkid;
                client.try_ack(&publish).map_err(|e| e.to_string())
            }
            Client::V5(client) => {
                let mut publish = v5::mqttbytes::v5::Publish::new(
                    "",
                    v5::mqttbytes::QoS::AtLeastOnce,
                    Vec::<u8>::new(),
                    None,
                );
                publish.qos = v5_qos(key.qos);
                publish.pkid = key.pkid;
                client.try_ack(&publish).map_err(|e| e.to_string())
            }
        };
        result.map_err(SessionError::Client)
    }

    pub fn subscribe(&self, filters: &[String], qos: QoS) -> Result<(), SessionError> {
        let result = match self {
            Client::V311(client) => client
                .try_subscribe_many(
                    filters
                        .iter()
                        .map(|f| rumqttc::SubscribeFilter::new(f.clone(), v4_qos(qos))),
                )
                .map_err(|e| e.to_string()),
            Client::V5(client) => client
                .try_subscribe_many(
                    filters
                        .iter()
                        .map(|f| v5::mqttbytes::v5::Filter::new(f.clone(), v5_qos(qos))),
                )
                .map_err(|e| e.to_string()),
        };
        result.map_err(SessionError::Client)
    }

    /// Queues a DISCONNECT behind every ack already queued, so those reach the broker first.
    pub async fn disconnect(&self) -> Result<(), SessionError> {
        let result = match self {
            Client::V311(client) => client.disconnect().await.map_err(|e| e.to_string()),
            Client::V5(client) => client.disconnect().await.map_err(|e| e.to_string()),
        };
        result.map_err(SessionError::Client)
    }
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

impl Pump {
    /// Polls the connection until the driver goes away or our DISCONNECT has been sent.
    pub async fn run(self, settings: Arc<UpstreamSettings>, to_driver: mpsc::Sender<Inbound>) {
        match self {
            Pump::V311(eventloop) => run_v311(*eventloop, settings, to_driver).await,
            Pump::V5(eventloop) => run_v5(*eventloop, settings, to_driver).await,
        }
    }
}

async fn run_v311(
    mut eventloop: rumqttc::EventLoop,
    settings: Arc<UpstreamSettings>,
    to_driver: mpsc::Sender<Inbound>,
) {
    use rumqttc::{Event, Outgoing, Packet};
    let mut reconnect = Reconnect::new(&settings);
    loop {
        let inbound = match eventloop.poll().await {
            Ok(Event::Incoming(Packet::ConnAck(connack))) => {
                reconnect.connected();
                // A limit raised to read one oversized packet applies to this connection only.
                eventloop
                    .mqtt_options
                    .set_max_packet_size(settings.max_packet_bytes, OUTGOING_PACKET_LIMIT);
                Inbound::Connected {
                    session_present: connack.session_present,
                }
            }
            Ok(Event::Incoming(Packet::Publish(publish))) => inbound_publish(
                publish.topic,
                &publish.payload,
                publish.qos as u8,
                publish.pkid,
                publish.dup,
                publish.retain,
                Vec::new(),
            ),
            Ok(Event::Incoming(Packet::SubAck(suback))) => subscribed(
                suback.return_codes.len(),
                suback
                    .return_codes
                    .iter()
                    .filter(|code| matches!(code, rumqttc::SubscribeReasonCode::Failure))
                    .count(),
            ),
            Ok(Event::Outgoing(Outgoing::Disconnect)) => return,
            Ok(_) => continue,
            Err(rumqttc::ConnectionError::RequestsDone) => return,
            Err(error) => {
                if let Some(size) = oversized_packet(&error) {
                    read_once_more_to_dead_letter(&mut eventloop.mqtt_options, size, &settings);
                }
                let refused = matches!(error, rumqttc::ConnectionError::ConnectionRefused(_));
                if !reconnect
                    .failed(&to_driver, error.to_string(), refused)
                    .await
                {
                    return;
                }
                continue;
            }
        };
        if to_driver.send(inbound).await.is_err() {
            return;
        }
    }
}

async fn run_v5(
    mut eventloop: v5::EventLoop,
    settings: Arc<UpstreamSettings>,
    to_driver: mpsc::Sender<Inbound>,
) {
    use rumqttc::Outgoing;
    use v5::Event;
    use v5::mqttbytes::v5::{Packet, SubscribeReasonCode};
    let mut reconnect = Reconnect::new(&settings);
    loop {
        let inbound = match eventloop.poll().await {
            Ok(Event::Incoming(Packet::ConnAck(connack))) => {
                reconnect.connected();
                Inbound::Connected {
                    session_present: connack.session_present,
                }
            }
            Ok(Event::Incoming(Packet::Publish(publish))) => inbound_publish(
                String::from_utf8_lossy(&publish.topic).into_owned(),
                &publish.payload,
                publish.qos as u8,
                publish.pkid,
                publish.dup,
                publish.retain,
                publish
                    .properties
                    .map(|p| p.user_properties)
                    .unwrap_or_default(),
            ),
            Ok(Event::Incoming(Packet::SubAck(suback))) => subscribed(
                suback.return_codes.len(),
                suback
                    .return_codes
                    .iter()
                    .filter(|code| !matches!(code, SubscribeReasonCode::Success(_)))
                    .count(),
            ),
            Ok(Event::Outgoing(Outgoing::Disconnect)) => return,
            Ok(_) => continue,
            Err(v5::ConnectionError::RequestsDone) => return,
            Err(error) => {
                let refused = matches!(error, v5::ConnectionError::ConnectionRefused(_));
                if !reconnect
                    .failed(&to_driver, error.to_string(), refused)
                    .await
                {
                    return;
                }
                continue;
            }
        };
        if to_driver.send(inbound).await.is_err() {
            return;
        }
    }
}

/// We only send small packets (SUBSCRIBE, acks, DISCONNECT).
const OUTGOING_PACKET_LIMIT: usize = 64 * 1024;

/// The largest packet MQTT can express (a 4-byte remaining length) plus its fixed header.
const MQTT_MAX_PACKET: usize = 268_435_455 + 5;

/// The size of a packet that was over our read limit, if that is why the connection failed.
fn oversized_packet(error: &rumqttc::ConnectionError) -> Option<usize> {
    use rumqttc::mqttbytes::Error;
    match error {
        rumqttc::ConnectionError::MqttState(rumqttc::StateError::Deserialization(
            Error::PayloadSizeLimitExceeded(size),
        )) => Some(*size),
        _ => None,
    }
}

/// MQTT 3.1.1 has no way to tell the broker our packet limit, so a packet over it would be
/// redelivered on every reconnect and block everything queued behind it. Instead the next
/// connection reads it once with a limit just big enough; the pipeline's `max_payload_bytes`
/// then turns it into a `payload_too_large` dead letter, it is acked, and the stream moves on.
fn read_once_more_to_dead_letter(
    options: &mut rumqttc::MqttOptions,
    remaining_length: usize,
    settings: &UpstreamSettings,
) {
    let needed = remaining_length.saturating_add(5).min(MQTT_MAX_PACKET);
    warn!(
        packet_bytes = remaining_length,
        max_packet_bytes = settings.max_packet_bytes,
        "a packet over upstream.max_packet_bytes: reading it on the next connection to dead-letter it"
    );
    options.set_max_packet_size(needed, OUTGOING_PACKET_LIMIT);
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
struct Reconnect {
    settings: Arc<UpstreamSettings>,
    delays: Backoff,
    /// Since when the current connection is up; `None` while disconnected.
    connected_at: Option<Instant>,
}

impl Reconnect {
    fn new(settings: &Arc<UpstreamSettings>) -> Self {
        Reconnect {
            settings: Arc::clone(settings),
            delays: backoff(settings),
            connected_at: None,
        }
    }

    fn connected(&mut self) {
        self.connected_at = Some(Instant::now());
    }

    /// Reports a failed connection and waits out the backoff; false when the driver is gone.
    async fn failed(
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
fn inbound_publish(
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

fn subscribed(filters: usize, refused: usize) -> Inbound {
    Inbound::Subscribed {
        granted: filters - refused,
        refused,
    }
}

fn ack_key(qos: QoS, pkid: u16) -> Option<AckKey> {
    (qos != QoS::AtMostOnce).then_some(AckKey { qos, pkid })
}

fn v4_qos(qos: QoS) -> rumqttc::QoS {
    match qos {
        QoS::AtMostOnce => rumqttc::QoS::AtMostOnce,
        QoS::AtLeastOnce => rumqttc::QoS::AtLeastOnce,
        QoS::ExactlyOnce => rumqttc::QoS::ExactlyOnce,
    }
}

fn v5_qos(qos: QoS) -> v5::mqttbytes::QoS {
    match qos {
        QoS::AtMostOnce => v5::mqttbytes::QoS::AtMostOnce,
        QoS::AtLeastOnce => v5::mqttbytes::QoS::AtLeastOnce,
        QoS::ExactlyOnce => v5::mqttbytes::QoS::ExactlyOnce,
    }
}

/// Logs a connection state change at the right level.
pub fn log_inbound_state(connection: usize, inbound: &Inbound) {
    match inbound {
        Inbound::Connected { session_present } => {
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
