//! One connection to the upstream broker, MQTT 3.1.1 or 5: connect, subscribe, read publishes,
//! write acks, keep alive, reconnect. Our own loop on rumqttc's packet codec, not rumqttc's
//! event loop, for one reason: that loop writes and flushes every request on its own, so each
//! PUBACK cost a `write` of 4 bytes here and a wake-up of the broker's single thread (13 % of
//! mqtt2es's CPU upstream at QoS 1, the largest single item in a profile). Acks come due in
//! groups (every reading of a bulk request at once); here each group is one write.
//!
//! The link task owns the socket and is never cancelled while a connection lives: what it took
//! from the driver is written before it looks at anything else. Publishes go to the driver over
//! a bounded channel; while that is full the link stops reading the socket (TCP then slows the
//! broker), but it still writes acks and pings.
//!
//! Acks carry the epoch of the connection whose publishes they answer: one still queued when
//! that connection fails is dropped, never sent on the next connection, where the same packet
//! id may be a different message.

mod transport;
pub mod wire;

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::Duration;

use bytes::BytesMut;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::mpsc;
use tokio::time::{Instant, MissedTickBehavior, timeout};
use tracing::{debug, info, warn};

use super::session::{AckKey, Inbound, Reconnect, SessionError, inbound_publish};
use super::settings::{Protocol, UpstreamSettings};
use crate::record::QoS;
use crate::secret::Secret;
use transport::{CONNECT_TIMEOUT, Stream, Transport};
use wire::{FromBroker, Hello, WireError};

/// What the driver asks of the link.
#[derive(Debug)]
enum Request {
    /// Acks for publishes of connection `epoch`, in the order they are to go out.
    Acks { epoch: u64, keys: Vec<AckKey> },
    /// DISCONNECT behind everything asked before, then the link ends.
    Disconnect,
}

/// The driver's handle on its link. Sending never waits: acks are bounded by the broker's
/// in-flight window, and waiting here would stall the driver's settlements.
#[derive(Clone)]
pub struct Client {
    requests: mpsc::UnboundedSender<Request>,
}

impl Client {
    pub fn ack(&self, epoch: u64, keys: Vec<AckKey>) -> Result<(), SessionError> {
        self.requests
            .send(Request::Acks { epoch, keys })
            .map_err(|_| SessionError::Client("the connection's link has ended".to_owned()))
    }

    pub fn disconnect(&self) -> Result<(), SessionError> {
        self.requests
            .send(Request::Disconnect)
            .map_err(|_| SessionError::Client("the connection's link has ended".to_owned()))
    }
}

/// The connection task, ready to run.
pub struct Link {
    settings: Arc<UpstreamSettings>,
    protocol: Protocol,
    client_id: String,
    password: Option<Secret>,
    filters: Arc<[String]>,
    qos: QoS,
    transport: Transport,
    requests: mpsc::UnboundedReceiver<Request>,
    /// Whether the broker's session holds our subscription (a SUBACK came since the last
    /// CONNACK without a session).
    subscribed: bool,
    /// The read limit of the next connection; see [`read_once_more_to_dead_letter`].
    next_limit: usize,
}

pub fn open(
    settings: &Arc<UpstreamSettings>,
    connection: usize,
    password: Option<&Secret>,
    filters: Arc<[String]>,
) -> Result<(Client, Link), SessionError> {
    let (to_link, requests) = mpsc::unbounded_channel();
    let link = Link {
        settings: Arc::clone(settings),
        protocol: settings.protocol,
        client_id: settings.client_id_for(connection),
        password: password.cloned(),
        filters,
        qos: QoS::saturating(settings.qos),
        transport: Transport::new(settings)?,
        requests,
        subscribed: false,
        next_limit: settings.max_packet_bytes,
    };
    Ok((Client { requests: to_link }, link))
}

/// Why a connection ended.
enum End {
    /// We sent DISCONNECT, or the driver is gone: the link is done.
    Done,
    /// The connection failed; reconnect.
    Failed(String),
}

/// One turn of a live connection's loop.
enum Step<'a> {
    Request(Option<Request>),
    Deliver(Result<mpsc::Permit<'a, Inbound>, mpsc::error::SendError<()>>),
    Read(std::io::Result<usize>),
    Ping,
}

/// What a connection attempt got: the stream, what was read past CONNACK, and CONNACK's word.
struct Established {
    stream: Box<dyn Stream>,
    read: BytesMut,
    session_present: bool,
    keep_alive: Option<Duration>,
}

/// A connection attempt that failed, and whether the broker refused us (credentials, ACLs).
struct Refusal {
    error: String,
    refused: bool,
}

/// Our one SUBSCRIBE per connection. Packet ids we send are a space of their own, apart from
/// those of the broker's publishes, so it never collides with one.
const SUBSCRIBE_PKID: u16 = 1;

/// Buffer room made before each read of the socket.
const READ_CHUNK: usize = 64 * 1024;

/// The largest packet MQTT can express (a 4-byte remaining length) plus its fixed header.
const MQTT_MAX_PACKET: usize = 268_435_455 + 5;

impl Link {
    /// Connects and reconnects until the driver disconnects or goes away.
    pub async fn run(mut self, to_driver: mpsc::Sender<Inbound>) {
        let mut reconnect = Reconnect::new(&self.settings);
        let mut epoch = 0;
        loop {
            let limit = std::mem::replace(&mut self.next_limit, self.settings.max_packet_bytes);
            let attempt = match timeout(CONNECT_TIMEOUT, self.connect(limit)).await {
                Ok(attempt) => attempt,
                Err(_) => Err(Refusal {
                    error: format!(
                        "no CONNACK within {} s of connecting",
                        CONNECT_TIMEOUT.as_secs()
                    ),
                    refused: false,
                }),
            };
            let established = match attempt {
                Ok(established) => established,
                Err(Refusal { error, refused }) => {
                    if !reconnect.failed(&to_driver, error, refused).await {
                        return;
                    }
                    continue;
                }
            };
            epoch += 1;
            reconnect.connected();
            let session_present = established.session_present;
            if !session_present {
                self.subscribed = false;
            }
            let connected = Inbound::Connected {
                session_present,
                epoch,
            };
            if to_driver.send(connected).await.is_err() {
                return;
            }
            match self.serve(established, epoch, limit, &to_driver).await {
                End::Done => return,
                End::Failed(error) => {
                    if !reconnect.failed(&to_driver, error, false).await {
                        return;
                    }
                }
            }
        }
    }

    /// TCP (and TLS), CONNECT, CONNACK.
    async fn connect(&self, limit: usize) -> Result<Established, Refusal> {
        let unreachable = |error: String| Refusal {
            error,
            refused: false,
        };
        let mut stream = self.transport.connect().await.map_err(unreachable)?;
        let settings = &self.settings;
        let keep_alive_s = settings.keep_alive_s.clamp(5, u64::from(u16::MAX)) as u16;
        let hello = Hello {
            client_id: &self.client_id,
            keep_alive_s,
            clean: settings.clean_session,
            login: settings.username.as_deref().map(|user| {
                (
                    user,
                    self.password.as_ref().map(Secret::expose).unwrap_or(""),
                )
            }),
            session_expiry_s: (!settings.clean_session).then_some(settings.session_expiry_s),
            receive_maximum: settings.receive_maximum,
            max_packet_bytes: limit,
        };
        let mut out = BytesMut::new();
        wire::write_connect(self.protocol, &hello, &mut out);
        stream
            .write_all(&out)
            .await
            .map_err(|e| unreachable(format!("sending CONNECT failed: {e}")))?;
        let mut read = BytesMut::with_capacity(READ_CHUNK);
        loop {
            match wire::read(self.protocol, &mut read, limit) {
                Ok(Some(FromBroker::ConnAck {
                    session_present,
                    refused: None,
                    server_keep_alive,
                })) => {
                    let keep_alive = match server_keep_alive {
                        Some(0) => None,
                        Some(seconds) => Some(Duration::from_secs(seconds.into())),
                        None => Some(Duration::from_secs(keep_alive_s.into())),
                    };
                    return Ok(Established {
                        stream,
                        read,
                        session_present,
                        keep_alive,
                    });
                }
                Ok(Some(FromBroker::ConnAck {
                    refused: Some(code),
                    ..
                })) => {
                    return Err(Refusal {
                        error: format!("connection refused, return code {code}"),
                        refused: true,
                    });
                }
                Ok(Some(other)) => {
                    return Err(unreachable(format!(
                        "expected CONNACK, the broker sent {other:?}"
                    )));
                }
                Ok(None) => {}
                Err(error) => return Err(unreachable(error.to_string())),
            }
            read.reserve(READ_CHUNK);
            match stream.read_buf(&mut read).await {
                Ok(0) => {
                    return Err(unreachable(
                        "the broker closed the connection before CONNACK".to_owned(),
                    ));
                }
                Ok(_) => {}
                Err(e) => return Err(unreachable(format!("reading CONNACK failed: {e}"))),
            }
        }
    }

    /// A live connection: publishes to the driver, the driver's acks to the broker.
    async fn serve(
        &mut self,
        established: Established,
        epoch: u64,
        limit: usize,
        to_driver: &mpsc::Sender<Inbound>,
    ) -> End {
        let Established {
            mut stream,
            mut read,
            keep_alive,
            ..
        } = established;
        let mut out = BytesMut::with_capacity(256);
        let mut inbox: VecDeque<Inbound> = VecDeque::new();
        if !self.subscribed {
            info!(filters = ?self.filters, "subscribing");
            wire::write_subscribe(
                self.protocol,
                SUBSCRIBE_PKID,
                &self.filters,
                self.qos,
                &mut out,
            );
        }
        // `None`: the broker asked for no keep alive; the timer then fires once a year.
        let period = keep_alive.unwrap_or(Duration::from_secs(365 * 86_400));
        let mut ping = tokio::time::interval_at(Instant::now() + period, period);
        ping.set_missed_tick_behavior(MissedTickBehavior::Delay);
        let mut ping_outstanding = false;
        let mut disconnecting = false;
        loop {
            // Bytes already read: what they hold goes to the driver before the next read.
            loop {
                match wire::read(self.protocol, &mut read, limit) {
                    Ok(Some(packet)) => match packet {
                        FromBroker::Publish {
                            topic,
                            payload,
                            qos,
                            pkid,
                            dup,
                            retain,
                            user_properties,
                        } => inbox.push_back(inbound_publish(
                            topic,
                            &payload,
                            qos,
                            pkid,
                            dup,
                            retain,
                            user_properties,
                        )),
                        FromBroker::PubRel { pkid } => {
                            wire::write_pubcomp(self.protocol, pkid, &mut out)
                        }
                        FromBroker::SubAck { granted, refused } => {
                            self.subscribed = true;
                            inbox.push_back(Inbound::Subscribed { granted, refused });
                        }
                        FromBroker::PingResp => ping_outstanding = false,
                        FromBroker::Disconnect { reason } => {
                            return End::Failed(format!("the broker disconnected us: {reason}"));
                        }
                        FromBroker::ConnAck { .. } | FromBroker::Other => {}
                    },
                    Ok(None) => break,
                    Err(WireError::TooLarge { remaining, .. }) => {
                        self.next_limit = read_once_more_to_dead_letter(remaining, &self.settings);
                        return End::Failed(format!(
                            "a packet of {remaining} bytes is over upstream.max_packet_bytes ({limit})"
                        ));
                    }
                    Err(error) => return End::Failed(error.to_string()),
                }
            }
            if !out.is_empty() {
                match timeout(CONNECT_TIMEOUT, stream.write_all(&out)).await {
                    Ok(Ok(())) => out.clear(),
                    Ok(Err(e)) => return End::Failed(format!("writing to the broker failed: {e}")),
                    Err(_) => {
                        return End::Failed(format!(
                            "the broker took no bytes for {} s",
                            CONNECT_TIMEOUT.as_secs()
                        ));
                    }
                }
                if disconnecting {
                    let _ = stream.shutdown().await;
                    debug!("DISCONNECT sent");
                    return End::Done;
                }
            }
            if inbox.is_empty() {
                read.reserve(READ_CHUNK);
            }
            let step = tokio::select! {
                biased;
                request = self.requests.recv() => Step::Request(request),
                permit = to_driver.reserve(), if !inbox.is_empty() => Step::Deliver(permit),
                n = stream.read_buf(&mut read), if inbox.is_empty() => Step::Read(n),
                _ = ping.tick() => Step::Ping,
            };
            match step {
                Step::Request(None) => return End::Done,
                Step::Request(Some(request)) => {
                    let mut next = Some(request);
                    // Every request already waiting goes into this one write.
                    while let Some(request) = next.take() {
                        match request {
                            Request::Acks { epoch: of, keys } if of == epoch => {
                                for key in keys {
                                    wire::write_ack(self.protocol, key, &mut out);
                                }
                            }
                            Request::Acks { keys, .. } => {
                                debug!(acks = keys.len(), "acks for an earlier connection dropped");
                            }
                            Request::Disconnect => {
                                wire::write_disconnect(self.protocol, &mut out);
                                disconnecting = true;
                                break;
                            }
                        }
                        next = self.requests.try_recv().ok();
                    }
                }
                Step::Deliver(Err(_)) => return End::Done,
                Step::Deliver(Ok(permit)) => {
                    permit.send(
                        inbox
                            .pop_front()
                            .expect("a permit only when the inbox has one"),
                    );
                    while !inbox.is_empty() {
                        match to_driver.try_reserve() {
                            Ok(permit) => permit.send(inbox.pop_front().expect("not empty")),
                            Err(mpsc::error::TrySendError::Full(())) => break,
                            Err(mpsc::error::TrySendError::Closed(())) => return End::Done,
                        }
                    }
                }
                Step::Read(Ok(0)) => {
                    return End::Failed("the broker closed the connection".to_owned());
                }
                Step::Read(Ok(_)) => {}
                Step::Read(Err(e)) => {
                    return End::Failed(format!("reading from the broker failed: {e}"));
                }
                Step::Ping => {
                    if ping_outstanding {
                        return End::Failed(format!("no PINGRESP within {} s", period.as_secs()));
                    }
                    wire::write_ping(self.protocol, &mut out);
                    ping_outstanding = true;
                }
            }
        }
    }
}

/// MQTT 3.1.1 has no way to tell the broker our packet limit, so a packet over it would be
/// redelivered on every reconnect and block everything queued behind it. Instead the next
/// connection reads it once with a limit just big enough; the pipeline's `max_payload_bytes`
/// then turns it into a `payload_too_large` dead letter, it is acked, and the stream moves on.
/// Returns that limit.
fn read_once_more_to_dead_letter(remaining_length: usize, settings: &UpstreamSettings) -> usize {
    warn!(
        packet_bytes = remaining_length,
        max_packet_bytes = settings.max_packet_bytes,
        "a packet over upstream.max_packet_bytes: reading it on the next connection to dead-letter it"
    );
    remaining_length.saturating_add(5).min(MQTT_MAX_PACKET)
}

#[cfg(test)]
mod tests;
