//! One client connection, from CONNECT to goodbye: the task that reads packets, turns
//! publishes into records, sends PUBACK/PUBREC once those records are durable, and delivers
//! what the client subscribed to.
//!
//! The decision a reader would question: reading stops instead of buffering. A 3.1.1 client
//! has no receive maximum, so when `broker.max_inflight` of its publishes are not yet durable
//! this task stops reading the socket (TCP then slows the device), and a full pipeline channel
//! stops it too. An MQTT 5 client is told our receive maximum and disconnected with 0x93 if
//! it exceeds it. Either way memory per connection stays bounded.
//!
//! Acks go out in arrival order (see `crate::acks`). Fan-out to subscribers and the retained
//! store happen on arrival, not on durability: `mosquitto_sub` shows live traffic even while
//! Elasticsearch is down, at the price that a publisher's retry may reach subscribers twice
//! (which QoS 1 allows).

use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};
use std::mem::MaybeUninit;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::task::{Poll, ready};
use std::time::{Duration, SystemTime};

use bytes::BytesMut;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt, ReadBuf, ReadHalf, WriteHalf};
use tokio::sync::mpsc;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use super::auth::{Auth, Identity, Refusal};
use super::codec::{
    self, AckReason, CodecError, Connect, ConnectCode, Goodbye, Outgoing, Packet, Publish, Reply,
    SubCode, Version, Will,
};
use super::listener::{Accepted, Stream};
use super::session::{Attached, Delivery, Registry, Subscription, Unfinished};
use crate::acks::AckQueue;
use crate::metrics;
use crate::reading::{self, Assigned, Assignments, ReadingId};
use crate::record::{Ack, Message, QoS, Record, Settled, Settlement};
use crate::topic::TopicFilter;

/// Topic aliases we accept per MQTT 5 connection (advertised in CONNACK).
pub const TOPIC_ALIAS_MAX: u16 = 64;

/// How long a new connection waits for the one it takes over to hand the session back.
const TAKEOVER_WAIT: Duration = Duration::from_secs(5);

/// A client that does not read what we write for this long is cut off.
const WRITE_TIMEOUT: Duration = Duration::from_secs(30);

/// The most one read of the socket takes in.
const READ_CHUNK: usize = 4096;

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
struct Live(Arc<Context>);

impl Drop for Live {
    fn drop(&mut self) {
        self.0.live.fetch_sub(1, Ordering::Relaxed);
    }
}

/// How a connection ended, which decides the goodbye and whether the will is published.
#[derive(Debug)]
enum End {
    /// The client sent DISCONNECT (`will`: MQTT 5 reason 0x04 asks for the will anyway).
    Normal {
        will: bool,
    },
    /// The network connection went away without DISCONNECT.
    Lost(String),
    KeepAlive,
    TakenOver,
    /// The broker is stopping: acks that settled were sent; no will (the device is fine).
    Shutdown,
    /// The client broke the protocol: one log line, a reason code for MQTT 5, then close.
    Violation(Goodbye, String),
}

impl End {
    fn publishes_will(&self) -> bool {
        match self {
            End::Normal { will } => *will,
            End::Shutdown => false,
            _ => true,
        }
    }
}

/// An inbound QoS 1/2 publish waiting for its record to settle.
#[derive(Debug)]
struct Pending {
    pkid: u16,
    qos: QoS,
    reason: AckReason,
}

/// Where an outgoing QoS 1/2 delivery stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Stage {
    /// Waiting for PUBACK (QoS 1), PUBREC or PUBCOMP (QoS 2).
    Ack,
    Rec,
    Comp,
}

/// Publishes refused for this connection (ACL, `$` topics), logged once and then counted.
#[derive(Default)]
struct Refused {
    count: u64,
}

/// Serves one accepted connection until it ends. `records` is this connection's sender into
/// the pipeline; it is dropped when `intake` stops, so the pipeline can drain.
pub async fn serve(
    accepted: Accepted,
    context: Arc<Context>,
    records: mpsc::Sender<Record>,
    intake: CancellationToken,
) {
    // The start and the end run in boxed futures: inline, their state would be part of this
    // task's for the connection's whole life, doubling what an idle one costs, when only a
    // moment of it needs them. `opened` stays whole: destructured, the task holds it twice.
    let Some(mut opened) = Box::pin(open(accepted, context, records, &intake)).await else {
        return;
    };
    let end = opened
        .connection
        .run(
            &mut opened.reader,
            opened.keep_alive_s,
            &opened.kick,
            &intake,
        )
        .await;
    let broke_a_rule = matches!(end, End::Violation(..));
    Box::pin(opened.connection.finish(end, intake)).await;
    opened.done.cancel();
    if broke_a_rule {
        Box::pin(linger(&mut opened.reader)).await;
    }
}

/// How long a connection closed for breaking a rule is still read from, so that its DISCONNECT
/// (and reason code) reaches the client.
const LINGER: Duration = Duration::from_secs(1);

/// Reads and drops what the client still sends after our goodbye, until it closes or `LINGER`
/// passes. Closing a socket with unread bytes in it makes the kernel send RST, and a client
/// that gets RST may lose the DISCONNECT still in its receive buffer: a client that was busy
/// sending (PUBRELs for the PUBRECs it got, say) would never learn why it was cut off.
async fn linger<R: AsyncRead + Unpin>(reader: &mut R) {
    let drain = async {
        let mut buf = [0u8; 1024];
        let mut left = 256 * 1024usize;
        while left > 0 {
            match reader.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(n) => left = left.saturating_sub(n),
            }
        }
    };
    let _ = tokio::time::timeout(LINGER, drain).await;
}

/// A connection whose CONNECT was accepted, its session attached and CONNACK on its way.
struct Opened {
    connection: Connection,
    reader: ReadHalf<Box<dyn Stream>>,
    keep_alive_s: u16,
    kick: CancellationToken,
    /// Cancelled once the session is handed back (a connection taking it over waits for it).
    done: CancellationToken,
    /// Held until the task ends.
    _live: Live,
    _connected: metrics::Connection,
}

/// From accept to CONNACK: reads CONNECT, refuses or authenticates, takes the session over
/// from an earlier connection and attaches it. `None` if the connection ended there.
async fn open(
    accepted: Accepted,
    context: Arc<Context>,
    records: mpsc::Sender<Record>,
    intake: &CancellationToken,
) -> Option<Opened> {
    let Accepted { stream, peer, .. } = accepted;
    let (mut reader, writer) = tokio::io::split(stream);
    let mut inbuf = BytesMut::new();
    let limits = &context.limits;
    // Shutdown does not wait for a CONNECT: this task holds a record sender meanwhile.
    let first = tokio::select! {
        first = tokio::time::timeout(
            limits.connect_timeout,
            read_connect(&mut reader, &mut inbuf, limits.max_packet_bytes),
        ) => first,
        _ = intake.cancelled() => return None,
    };
    let connect = match first {
        Err(_) => {
            warn!(%peer, reason = "no CONNECT within broker.connect_timeout_ms", "closing connection");
            return None;
        }
        Ok(Err(ConnectFailure::Closed)) => {
            debug!(%peer, "connection closed before CONNECT");
            return None;
        }
        Ok(Err(ConnectFailure::Codec(CodecError::UnsupportedProtocol(level)))) => {
            warn!(%peer, reason = %format!("unsupported protocol level {level}"), "closing connection");
            let mut connection = Outbound::new(writer, Version::V311);
            connection.reply(&connack(
                ConnectCode::UnsupportedProtocol,
                false,
                None,
                limits,
            ));
            let _ = connection.flush().await;
            return None;
        }
        Ok(Err(ConnectFailure::Codec(CodecError::BadConnect { version, fault }))) => {
            warn!(%peer, reason = %fault, "closing connection");
            if version == Version::V5 {
                let mut connection = Outbound::new(writer, version);
                let code = ConnectCode::Refused(fault.answer);
                connection.reply(&connack(code, false, None, limits));
                let _ = connection.flush().await;
            }
            return None;
        }
        Ok(Err(ConnectFailure::Codec(error))) => {
            warn!(%peer, reason = %error, "closing connection");
            return None;
        }
        Ok(Err(ConnectFailure::Io(error))) => {
            debug!(%peer, %error, "connection failed before CONNECT");
            return None;
        }
        Ok(Ok(connect)) => connect,
    };
    let live = context.live.fetch_add(1, Ordering::Relaxed) + 1;
    let live_guard = Live(Arc::clone(&context));
    // Counted for /metrics and the shipped documents while this connection lasts.
    let connected = metrics::connected(metrics::Source::Broker);
    let mut out = Outbound::new(writer, connect.version);
    if live > limits.max_connections {
        warn!(%peer, client_id = %connect.client_id, max_connections = limits.max_connections, "connection refused: too many connections");
        out.reply(&connack(ConnectCode::ServerBusy, false, None, limits));
        let _ = out.flush().await;
        return None;
    }
    if let Some(method) = &connect.authentication_method {
        info!(%peer, client_id = %connect.client_id, %method, "connection refused: enhanced authentication (AUTH) is not supported");
        out.reply(&connack(
            ConnectCode::BadAuthenticationMethod,
            false,
            None,
            limits,
        ));
        let _ = out.flush().await;
        return None;
    }
    // A keep-alive over the limit, or none where there is one: MQTT 5 clients are told ours.
    // A 3.1.1 client cannot be told, and holding it to a shorter one would cut it off, so it
    // keeps its own (as with Mosquitto 2.0.11).
    let mut server_keep_alive = None;
    let keep_alive_s = match limits.max_keepalive_s {
        Some(max)
            if connect.version == Version::V5
                && (connect.keep_alive_s == 0 || connect.keep_alive_s > max) =>
        {
            server_keep_alive = Some(max);
            max
        }
        _ => connect.keep_alive_s,
    };
    let (client_id, assigned) = if connect.client_id.is_empty() {
        if connect.version == Version::V311 && !connect.clean_start {
            info!(%peer, "connection refused: an empty client id needs clean session");
            out.reply(&connack(ConnectCode::BadClientId, false, None, limits));
            let _ = out.flush().await;
            return None;
        }
        let id = format!("mqtt2es-{}", context.registry.next_connection_id());
        (id.clone(), Some(id))
    } else {
        (connect.client_id.clone(), None)
    };
    let identity = match context.auth.authenticate(
        &client_id,
        connect.username.as_deref(),
        connect.password.as_deref(),
        peer.ip(),
    ) {
        Ok(identity) => identity,
        Err(Refusal::AnonymousFromNetwork) => {
            // Once per address: a device retrying every few seconds would flood the log.
            if context.auth.first_refusal_from(peer.ip()) {
                warn!(%peer, %client_id, reason = %Refusal::AnonymousFromNetwork,
                    allow_with = "broker.auth.allow_anonymous: true, or give the client a user (broker.auth.password_file)",
                    "connection refused (logged once per address)");
            } else {
                debug!(%peer, %client_id, reason = %Refusal::AnonymousFromNetwork, "connection refused");
            }
            out.reply(&connack(ConnectCode::NotAuthorized, false, None, limits));
            let _ = out.flush().await;
            return None;
        }
        Err(refusal) => {
            info!(%peer, %client_id, reason = %refusal, "connection refused");
            let code = match refusal {
                Refusal::BadCredentials => ConnectCode::BadCredentials,
                Refusal::NotAuthorized | Refusal::AnonymousFromNetwork => {
                    ConnectCode::NotAuthorized
                }
            };
            out.reply(&connack(code, false, None, limits));
            let _ = out.flush().await;
            return None;
        }
    };

    if let Some(done) = context.registry.kick(&client_id) {
        debug!(%client_id, "taking over the session from its previous connection");
        if tokio::time::timeout(TAKEOVER_WAIT, done.cancelled())
            .await
            .is_err()
        {
            warn!(%client_id, "previous connection did not hand its session back in time");
        }
    }
    let id = context.registry.next_connection_id();
    let kick = CancellationToken::new();
    let done = CancellationToken::new();
    let resumed = context.registry.attach(
        &client_id,
        connect.clean_start,
        connect.session_expiry_s,
        Attached {
            connection: id,
            deliver: None,
            kick: kick.clone(),
            done: done.clone(),
        },
    );
    let mut accepted = connack(
        ConnectCode::Accepted,
        resumed.session_present,
        assigned,
        limits,
    );
    if let Reply::ConnAck {
        server_keep_alive: told,
        ..
    } = &mut accepted
    {
        *told = server_keep_alive;
    }
    out.reply(&accepted);
    debug!(
        %peer,
        %client_id,
        version = ?connect.version,
        session_present = resumed.session_present,
        keep_alive_s,
        "client connected"
    );
    let mut connection = Connection {
        context: Arc::clone(&context),
        peer,
        id,
        client_id,
        identity,
        version: connect.version,
        expiry_s: connect.session_expiry_s,
        will: connect.will.clone().map(Box::new),
        receive_maximum: connect
            .receive_maximum
            .unwrap_or(limits.max_inflight)
            .max(1),
        out,
        inbuf,
        records: Some(records),
        held: VecDeque::new(),
        held_acks: 0,
        heard: false,
        unkept: Vec::new(),
        settle_to: None,
        settled: None,
        acks: AckQueue::default(),
        unsettled: HashSet::new(),
        awaiting_pubrel: resumed.awaiting_pubrel,
        readings: resumed.readings,
        aliases: HashMap::new(),
        pending: resumed.queued.into(),
        inflight: BTreeMap::new(),
        next_pkid: 0,
        refused: Refused::default(),
        dead_lettered: 0,
        deliveries: resumed.deliveries,
    };
    connection.out.max_packet = connect.max_packet_size;
    connection.resume(resumed.unfinished);
    connection.send_pending();
    Some(Opened {
        connection,
        reader,
        keep_alive_s,
        kick,
        done,
        _live: live_guard,
        _connected: connected,
    })
}

fn connack(
    code: ConnectCode,
    session_present: bool,
    assigned_client_id: Option<String>,
    limits: &Limits,
) -> Reply {
    Reply::ConnAck {
        session_present,
        code,
        assigned_client_id,
        receive_maximum: limits.max_inflight,
        max_packet_size: u32::try_from(limits.max_packet_bytes).unwrap_or(u32::MAX),
        topic_alias_max: TOPIC_ALIAS_MAX,
        server_keep_alive: None,
    }
}

enum ConnectFailure {
    Closed,
    Io(std::io::Error),
    Codec(CodecError),
}

async fn read_connect<R: AsyncRead + Unpin>(
    reader: &mut R,
    inbuf: &mut BytesMut,
    max_packet_bytes: usize,
) -> Result<Box<Connect>, ConnectFailure> {
    loop {
        match codec::read(inbuf, None, max_packet_bytes) {
            Ok(Some(Packet::Connect(connect))) => return Ok(connect),
            Ok(Some(_)) => {
                return Err(ConnectFailure::Codec(CodecError::Malformed(
                    "first packet is not CONNECT".into(),
                )));
            }
            Ok(None) => {}
            Err(error) => return Err(ConnectFailure::Codec(error)),
        }
        match receive(reader, inbuf).await {
            Ok(0) => return Err(ConnectFailure::Closed),
            Ok(_) => {}
            Err(error) => return Err(ConnectFailure::Io(error)),
        }
    }
}

/// The write side: replies are encoded into a buffer and written after each event, so one
/// socket write carries every ack a batch of settlements released.
struct Outbound {
    writer: WriteHalf<Box<dyn Stream>>,
    buf: BytesMut,
    version: Version,
    /// The client's maximum packet size (MQTT 5).
    max_packet: Option<u32>,
}

impl Outbound {
    fn new(writer: WriteHalf<Box<dyn Stream>>, version: Version) -> Outbound {
        Outbound {
            writer,
            buf: BytesMut::new(),
            version,
            max_packet: None,
        }
    }

    /// Encodes `reply`; false if it is a PUBLISH the client's packet size limit excludes.
    fn reply(&mut self, reply: &Reply) -> bool {
        match codec::write(reply, self.version, &mut self.buf, self.max_packet) {
            Ok(()) => true,
            Err(error) => {
                debug!(%error, "packet not sent");
                false
            }
        }
    }

    async fn flush(&mut self) -> std::io::Result<()> {
        if self.buf.is_empty() {
            return Ok(());
        }
        // write_all alone leaves a WebSocket frame (and possibly a TLS record) queued in the
        // stream: flush is what puts it on the socket.
        let writer = &mut self.writer;
        let buf = &self.buf;
        let write = async move {
            writer.write_all(buf).await?;
            writer.flush().await
        };
        let result = tokio::time::timeout(WRITE_TIMEOUT, write).await;
        // Freed, not cleared: most connections write seldom, and a buffer kept between writes
        // would be 1 KB of every idle one.
        self.buf = BytesMut::new();
        match result {
            Ok(result) => result,
            Err(_) => Err(std::io::Error::new(
                std::io::ErrorKind::TimedOut,
                "client does not read",
            )),
        }
    }
}

struct Connection {
    context: Arc<Context>,
    peer: SocketAddr,
    id: u64,
    client_id: String,
    identity: Identity,
    version: Version,
    expiry_s: u32,
    /// Boxed: most clients set no will, and inline it would be 88 bytes of every connection.
    will: Option<Box<Will>>,
    /// The client's receive maximum: outgoing QoS 1/2 deliveries in flight at most.
    receive_maximum: u16,
    out: Outbound,
    inbuf: BytesMut,
    /// `None` once intake stopped.
    records: Option<mpsc::Sender<Record>>,
    /// Records not passed to the pipeline yet, in arrival order: it had no room, or (3.1.1)
    /// `max_inflight` of this client's publishes are in it, not yet durable. Held here rather
    /// than awaited, so that the connection keeps answering PINGREQs (and taking acks of its
    /// deliveries) while Elasticsearch stalls: backpressure must not cost a device its
    /// connection. Reading stops only once `max_inflight` are held.
    held: VecDeque<Record>,
    /// How many of `held` are QoS 1/2 (counted in `acks`, but not in the pipeline).
    held_acks: usize,
    /// A packet from the client was handled since the keep-alive deadline was last set.
    heard: bool,
    /// Assignments of held records not written to the store yet: written together, once per
    /// buffer of packets, before any of those records goes on.
    unkept: Vec<(u16, Assigned)>,
    /// Cloned into each `Ack`; dropped with intake, so `settled` closes after the last ack.
    /// Opened by a QoS 1/2 publish and closed again once none is outstanding (`settle_to()`).
    settle_to: Option<mpsc::UnboundedSender<Settled>>,
    /// `None` while no channel is open, and once it closed after intake stopped.
    settled: Option<mpsc::UnboundedReceiver<Settled>>,
    acks: AckQueue<Pending>,
    /// Packet ids of QoS 1/2 publishes read on this connection whose PUBACK or PUBREC has not
    /// gone out: a resend of one (DUP) is not new.
    unsettled: HashSet<u16>,
    /// QoS 2 publishes of the session whose PUBREC went out and whose PUBREL has not come.
    awaiting_pubrel: usize,
    /// What each QoS 1/2 publish not yet acknowledged was assigned, by packet id: its DUP
    /// resend (on this connection or, through the session, a later one) is the same reading.
    readings: Assignments,
    aliases: HashMap<u16, String>,
    pending: VecDeque<Delivery>,
    inflight: BTreeMap<u16, (Delivery, Stage)>,
    next_pkid: u16,
    refused: Refused,
    dead_lettered: u64,
    /// What the registry fans out to this client, once it has a subscription.
    deliveries: Option<mpsc::Receiver<Delivery>>,
}

impl Connection {
    async fn run<R: AsyncRead + Unpin>(
        &mut self,
        reader: &mut R,
        keep_alive_s: u16,
        kick: &CancellationToken,
        intake: &CancellationToken,
    ) -> End {
        let keep_alive =
            (keep_alive_s > 0).then(|| Duration::from_millis(u64::from(keep_alive_s) * 1500));
        let mut deadline = keep_alive.map(|k| Instant::now() + k);
        // Whether reading was paused (backpressure) when the loop last looked: the select may
        // then sit for longer than the keep-alive, and the client's time starts over only
        // once we read again.
        let mut paused = false;
        // Bytes that arrived with CONNECT.
        if let Some(end) = self.process_buffer() {
            return end;
        }
        loop {
            if let Err(error) = self.out.flush().await {
                return End::Lost(error.to_string());
            }
            if self.records.is_none() && self.settled.is_none() {
                return End::Shutdown;
            }
            let reading = self.records.is_some() && self.may_read();
            // Only while records wait for room in the pipeline: a clone of the sender to wait on.
            // (Those that wait for earlier ones to be durable wait for a settlement instead.)
            let waiting_for_room = match !self.held.is_empty() && self.may_forward() {
                true => self.records.clone(),
                false => None,
            };
            let wants_room = waiting_for_room.is_some();
            // Not reading is our doing (backpressure, shutdown), not the client's silence: its
            // keep-alive starts over once we read again. A packet taken from the buffer (read
            // earlier, parsed once backpressure allowed) is one heard from the client too.
            if !reading || paused || std::mem::take(&mut self.heard) {
                deadline = keep_alive.map(|k| Instant::now() + k);
            }
            paused = !reading;
            tokio::select! {
                biased;
                _ = kick.cancelled() => return End::TakenOver,
                _ = intake.cancelled(), if self.records.is_some() => self.stop_intake(),
                room = reserve(waiting_for_room), if wants_room => match room {
                    Ok(permit) => {
                        self.forward_held(Some(permit));
                        if let Some(end) = self.process_buffer() {
                            return end;
                        }
                    }
                    Err(_) => {
                        warn!(client_id = %self.client_id, "pipeline closed; stopping intake");
                        self.stop_intake();
                    }
                },
                done = next_settled(self.settled.as_mut()), if self.settled.is_some() => match done {
                    Some(done) => {
                        self.settle(done);
                        while let Some(more) = self.settled.as_mut().and_then(|s| s.try_recv().ok()) {
                            self.settle(more);
                        }
                        self.release_acks();
                        if self.acks.outstanding() == 0 {
                            // No `Ack` is left to send on it (`settle_to()`).
                            self.settle_to = None;
                            self.settled = None;
                        }
                        // Also passes on what settling made room for (3.1.1's window).
                        if let Some(end) = self.process_buffer() {
                            return end;
                        }
                    }
                    None => self.settled = None,
                },
                Some(delivery) = next_delivery(self.deliveries.as_mut()) => {
                    self.pending.push_back(delivery);
                    while let Some(more) = self.deliveries.as_mut().and_then(|d| d.try_recv().ok()) {
                        self.pending.push_back(more);
                    }
                    self.send_pending();
                }
                read = receive(reader, &mut self.inbuf), if reading => match read {
                    Ok(0) => return End::Lost("closed by the client without DISCONNECT".into()),
                    Ok(_) => {
                        deadline = keep_alive.map(|k| Instant::now() + k);
                        if let Some(end) = self.process_buffer() {
                            return end;
                        }
                    }
                    Err(error) => return End::Lost(error.to_string()),
                },
                _ = sleep_until(deadline), if deadline.is_some() && reading => {
                    return End::KeepAlive;
                }
            }
        }
    }

    /// Backpressure on reading: none while `max_inflight` records are held. A client that
    /// keeps to a window of `max_inflight` (an MQTT 5 client must; a 3.1.1 client is asked to
    /// in the README) is therefore always read, and its PINGREQs answered.
    fn may_read(&self) -> bool {
        self.held.len() < usize::from(self.context.limits.max_inflight)
    }

    /// Whether another record may go to the pipeline: for 3.1.1, which has no receive maximum,
    /// only while fewer than `max_inflight` of this client's publishes there are not durable.
    fn may_forward(&self) -> bool {
        self.version == Version::V5
            || self.acks.outstanding() - self.held_acks
                < usize::from(self.context.limits.max_inflight)
    }

    /// Passes what was read but still held on to the pipeline once the connection is gone: a
    /// QoS 0 reading has no other chance, and a QoS 1/2 one stored now is found already
    /// stored when the client resends it. Waits as long as the pipeline is full, unless intake
    /// stops (shutdown), which leaves QoS 1/2 readings to the client's resend.
    async fn pass_on_held(&mut self, intake: &CancellationToken) {
        self.write_kept();
        let Some(records) = self.records.clone() else {
            return;
        };
        while let Some(record) = self.held.pop_front() {
            tokio::select! {
                sent = records.send(record) => if sent.is_err() { break },
                () = intake.cancelled() => break,
            }
        }
        self.held.clear();
        self.held_acks = 0;
    }

    /// Stages what held records were assigned, all in one go, before any of them goes on.
    fn write_kept(&mut self) {
        if !self.unkept.is_empty() {
            self.context
                .registry
                .stage_kept(&self.client_id, &self.unkept);
            self.unkept.clear();
        }
    }

    /// Hands held records to the pipeline in order, the first into `permit` if given, more
    /// while the pipeline has room and `may_forward` allows.
    fn forward_held(&mut self, mut permit: Option<mpsc::OwnedPermit<Record>>) {
        self.write_kept();
        while self.may_forward() {
            let Some(record) = self.held.pop_front() else {
                return;
            };
            let acked = record.message.qos != QoS::AtMostOnce;
            let passed = match (permit.take(), &self.records) {
                (Some(permit), _) => {
                    permit.send(record);
                    Ok(())
                }
                (None, Some(records)) => records.try_send(record),
                (None, None) => return,
            };
            match passed {
                Ok(()) => self.held_acks -= usize::from(acked),
                Err(mpsc::error::TrySendError::Full(record)) => {
                    self.held.push_front(record);
                    return;
                }
                Err(mpsc::error::TrySendError::Closed(_)) => {
                    warn!(client_id = %self.client_id, "pipeline closed; stopping intake");
                    self.stop_intake();
                    return;
                }
            }
        }
    }

    fn stop_intake(&mut self) {
        debug!(client_id = %self.client_id, outstanding = self.acks.outstanding(), "stopping intake");
        self.records = None;
        self.settle_to = None;
        // Not in the pipeline, so never settled: unacknowledged, the client sends them again.
        self.held.clear();
        self.held_acks = 0;
    }

    /// Handles every complete packet in the buffer (as far as 3.1.1 backpressure allows).
    fn process_buffer(&mut self) -> Option<End> {
        while self.records.is_some() {
            if !self.may_read() {
                // Held to the limit: pass on what the pipeline takes now, then go on if it did.
                self.forward_held(None);
                if !self.may_read() {
                    break;
                }
            }
            let max = self.context.limits.max_packet_bytes;
            match codec::read(&mut self.inbuf, Some(self.version), max) {
                Ok(None) => break,
                Ok(Some(packet)) => {
                    self.heard = true;
                    if let Some(end) = self.handle(packet) {
                        return Some(end);
                    }
                }
                Err(error @ CodecError::TooLarge { .. }) => {
                    return Some(End::Violation(Goodbye::PacketTooLarge, error.to_string()));
                }
                Err(error) => {
                    return Some(End::Violation(Goodbye::MalformedPacket, error.to_string()));
                }
            }
        }
        self.forward_held(None);
        None
    }

    fn handle(&mut self, packet: Packet) -> Option<End> {
        tracing::trace!(client_id = %self.client_id, ?packet, "packet");
        match packet {
            Packet::Connect(_) => {
                return Some(End::Violation(
                    Goodbye::ProtocolError,
                    "second CONNECT".into(),
                ));
            }
            Packet::Publish(publish) => return self.on_publish(publish),
            Packet::PubAck(pkid) => {
                if let Some((_, Stage::Ack)) = self.inflight.get(&pkid) {
                    self.inflight.remove(&pkid);
                }
                self.send_pending();
            }
            Packet::PubRec(pkid) => {
                if let Some((_, stage)) = self.inflight.get_mut(&pkid) {
                    *stage = Stage::Comp;
                }
                self.out.reply(&Reply::PubRel(pkid));
            }
            Packet::PubComp(pkid) => {
                self.inflight.remove(&pkid);
                self.send_pending();
            }
            Packet::PubRel(pkid) => {
                if self.context.registry.release(&self.client_id, pkid) {
                    self.awaiting_pubrel = self.awaiting_pubrel.saturating_sub(1);
                }
                self.out.reply(&Reply::PubComp(pkid));
            }
            Packet::Subscribe { pkid, filters, id } => return self.on_subscribe(pkid, filters, id),
            Packet::Unsubscribe { pkid, filters } => {
                if let Some(error) = filters.iter().find_map(|f| TopicFilter::parse(f).err()) {
                    return Some(End::Violation(
                        Goodbye::MalformedPacket,
                        format!("UNSUBSCRIBE with an invalid filter: {error}"),
                    ));
                }
                let existed = self.context.registry.unsubscribe(&self.client_id, &filters);
                self.out.reply(&Reply::UnsubAck { pkid, existed });
            }
            Packet::PingReq => {
                self.out.reply(&Reply::PingResp);
            }
            Packet::Disconnect {
                publish_will,
                session_expiry_s,
            } => {
                if let Some(expiry) = session_expiry_s {
                    // A session that was to end with its connection cannot be kept after
                    // all (MQTT-3.14.2-2); the will then goes out as for any broken rule.
                    if self.expiry_s == 0 && expiry != 0 {
                        return Some(End::Violation(
                            Goodbye::ProtocolError,
                            "DISCONNECT sets a session expiry after CONNECT set none".into(),
                        ));
                    }
                    self.expiry_s = expiry;
                }
                return Some(End::Normal { will: publish_will });
            }
            Packet::Unexpected(name) => {
                return Some(End::Violation(
                    Goodbye::ProtocolError,
                    format!("unexpected {name} from a client"),
                ));
            }
        }
        None
    }

    fn on_publish(&mut self, publish: Publish) -> Option<End> {
        let topic = match publish.topic_alias {
            Some(alias) if self.version != Version::V5 || alias == 0 || alias > TOPIC_ALIAS_MAX => {
                return Some(End::Violation(
                    Goodbye::TopicAliasInvalid,
                    format!("topic alias {alias} out of range"),
                ));
            }
            Some(alias) if publish.topic.is_empty() => match self.aliases.get(&alias) {
                Some(topic) => topic.clone(),
                None => {
                    return Some(End::Violation(
                        Goodbye::ProtocolError,
                        format!("unknown topic alias {alias}"),
                    ));
                }
            },
            Some(alias) => {
                self.aliases.insert(alias, publish.topic.clone());
                publish.topic
            }
            None => publish.topic,
        };
        if topic.is_empty() || topic.contains(['+', '#', '\0']) {
            return Some(End::Violation(
                Goodbye::ProtocolError,
                format!("invalid topic name {topic:?}"),
            ));
        }
        let qos = publish.qos;
        let pkid = publish.pkid;
        // A resend of a publish not yet durable: its PUBACK or PUBREC follows when the first
        // copy is. Taken in again, it would get a second PUBACK, which could acknowledge a later
        // publish that reuses the packet id before that one is stored.
        if qos > QoS::AtMostOnce
            && self.unsettled.contains(&pkid)
            && (qos == QoS::ExactlyOnce || publish.dup)
        {
            return None;
        }
        if qos == QoS::ExactlyOnce
            && self
                .context
                .registry
                .is_awaiting_pubrel(&self.client_id, pkid)
        {
            self.out.reply(&Reply::PubRec {
                pkid,
                reason: AckReason::Success,
            });
            return None;
        }
        // A QoS 2 publish counts against our receive maximum until its PUBCOMP goes out, not
        // only until its PUBREC (MQTT 5 §4.9); resends, handled above, count once.
        if qos > QoS::AtMostOnce
            && self.version == Version::V5
            && self.acks.outstanding() + self.awaiting_pubrel
                >= usize::from(self.context.limits.max_inflight)
        {
            return Some(End::Violation(
                Goodbye::ReceiveMaximumExceeded,
                format!(
                    "more than {} unacknowledged publishes",
                    self.context.limits.max_inflight
                ),
            ));
        }
        if topic.starts_with('$') || !self.context.auth.may_publish(&self.identity, &topic) {
            let reason = if topic.starts_with('$') {
                AckReason::TopicNameInvalid
            } else {
                AckReason::NotAuthorized
            };
            self.refuse(&topic, reason);
            if qos > QoS::AtMostOnce {
                let token = self.acks.push(Pending { pkid, qos, reason });
                self.acks.settle(token);
                self.release_acks();
            }
            return None;
        }
        let assigned = self.assign(qos, publish.dup, pkid);
        // Nothing goes on once intake stopped.
        self.records.as_ref()?;
        let delivery = Delivery::arrived(
            &topic,
            publish.payload.clone(),
            qos,
            publish.retain,
            &publish.properties,
            SystemTime::now(),
        );
        self.context.registry.publish(&self.client_id, &delivery);
        let ack = match qos {
            QoS::AtMostOnce => Ack::none(),
            _ => {
                self.unsettled.insert(pkid);
                let token = self.acks.push(Pending {
                    pkid,
                    qos,
                    reason: AckReason::Success,
                });
                Ack::new(self.settle_to(), token)
            }
        };
        metrics::message_in(metrics::Source::Broker);
        let record = Record {
            message: Message {
                topic,
                payload: Arc::from(&publish.payload[..]),
                qos,
                retain: publish.retain,
                reading: assigned.reading,
                received_at: assigned.received_at,
                user_properties: publish.properties.user_properties,
            },
            ack,
        };
        // Behind any held before it: records keep arrival order. They go on once the buffer
        // is parsed (or the held ones reach the limit), after one write of their assignments.
        self.held_acks += usize::from(qos != QoS::AtMostOnce);
        self.held.push_back(record);
        None
    }

    /// The publish's identity (see `Assignments::assign`); a new one of QoS 1/2 is written to
    /// the store with the rest of the buffer before its record goes on.
    fn assign(&mut self, qos: QoS, dup: bool, pkid: u16) -> Assigned {
        if qos == QoS::AtMostOnce {
            return Assigned::now();
        }
        let (assigned, new) = self.readings.assign(pkid, dup, Assigned::now);
        if new {
            self.unkept.push((pkid, assigned));
        }
        assigned
    }

    /// Where an `Ack` reports back (only while intake runs). The channel is opened on demand
    /// and closed when nothing is outstanding, since most connections are idle between
    /// readings and an open one takes 1 KB.
    fn settle_to(&mut self) -> mpsc::UnboundedSender<Settled> {
        if let Some(to) = &self.settle_to {
            return to.clone();
        }
        let (to, settled) = mpsc::unbounded_channel();
        self.settle_to = Some(to.clone());
        self.settled = Some(settled);
        to
    }

    fn refuse(&mut self, topic: &str, reason: AckReason) {
        self.refused.count += 1;
        if self.refused.count == 1 {
            warn!(
                client_id = %self.client_id,
                topic,
                reason = ?reason,
                "publish refused; further refusals on this connection are counted"
            );
        }
    }

    fn settle(&mut self, done: Settled) {
        let dead = done.how == Settlement::DeadLettered;
        if dead {
            self.dead_lettered += 1;
        }
        self.acks.settle_with(done.token, |pending| {
            if dead {
                pending.reason = AckReason::PayloadFormatInvalid;
            }
        });
    }

    /// Sends PUBACK / PUBREC for the unbroken run of settled publishes, in arrival order.
    fn release_acks(&mut self) {
        let ready = self.acks.pop_ready();
        // An error reason ends a QoS 2 exchange: no PUBREL follows (MQTT 5 §4.3.3).
        for pending in &ready {
            if pending.qos == QoS::ExactlyOnce && !pending.reason.is_error() {
                self.context
                    .registry
                    .await_pubrel(&self.client_id, pending.pkid);
                self.awaiting_pubrel += 1;
            }
        }
        // On disk before the acknowledgements go out (they are flushed after this returns):
        // the ids now awaiting PUBREL and what these publishes caused in the registry, and
        // their assignments forgotten.
        let forget = self
            .readings
            .forget_each(ready.iter().map(|pending| pending.pkid));
        if ready.iter().any(|pending| pending.qos != QoS::AtMostOnce) {
            self.context.registry.before_acks(&self.client_id, &forget);
        }
        for pending in ready {
            tracing::trace!(client_id = %self.client_id, ?pending, "ack");
            match pending.qos {
                QoS::AtMostOnce => {}
                QoS::AtLeastOnce => {
                    self.unsettled.remove(&pending.pkid);
                    self.out.reply(&Reply::PubAck {
                        pkid: pending.pkid,
                        reason: pending.reason,
                    });
                }
                QoS::ExactlyOnce => {
                    self.unsettled.remove(&pending.pkid);
                    self.out.reply(&Reply::PubRec {
                        pkid: pending.pkid,
                        reason: pending.reason,
                    });
                }
            }
        }
    }

    fn on_subscribe(
        &mut self,
        pkid: u16,
        filters: Vec<codec::Filter>,
        id: Option<u32>,
    ) -> Option<End> {
        // Not a refusal in SUBACK: a filter that breaks MQTT's rules makes the packet
        // malformed, and the connection closes (MQTT-4.7.1-1, -2; MQTT-4.7.3-1, -2).
        if let Some(error) = filters
            .iter()
            .find_map(|f| TopicFilter::parse(&f.filter).err())
        {
            return Some(End::Violation(
                Goodbye::MalformedPacket,
                format!("SUBSCRIBE with an invalid filter: {error}"),
            ));
        }
        if id == Some(0) {
            return Some(End::Violation(
                Goodbye::ProtocolError,
                "SUBSCRIBE with subscription identifier 0 (MQTT 5 §3.8.2.1.2)".into(),
            ));
        }
        // MQTT 5 §3.8.3.1: no local on a shared subscription is a Protocol Error.
        let shared = |f: &codec::Filter| {
            TopicFilter::parse(&f.filter).is_ok_and(|p| p.share_group().is_some())
        };
        if let Some(filter) = filters.iter().find(|f| f.no_local && shared(f)) {
            return Some(End::Violation(
                Goodbye::ProtocolError,
                format!("no local on shared subscription {:?}", filter.filter),
            ));
        }
        let mut codes = Vec::with_capacity(filters.len());
        let mut accepted = Vec::new();
        let mut retain_rules = Vec::new();
        for filter in filters {
            let allowed = || {
                self.context
                    .auth
                    .subscription(&self.identity, &filter.filter)
            };
            let code = match TopicFilter::parse(&filter.filter) {
                Err(_) => SubCode::FilterInvalid,
                Ok(parsed) => match allowed() {
                    None => SubCode::NotAuthorized,
                    Some(except) => {
                        accepted.push(Subscription {
                            filter: parsed,
                            qos: filter.qos,
                            no_local: filter.no_local,
                            retain_as_published: filter.retain_as_published,
                            id,
                            except,
                        });
                        retain_rules.push(filter.retain_handling);
                        SubCode::Granted(filter.qos)
                    }
                },
            };
            if code != SubCode::Granted(filter.qos) {
                info!(client_id = %self.client_id, filter = %filter.filter, code = ?code, "subscription refused");
            }
            codes.push(code);
        }
        let subscribed = self.context.registry.subscribe(&self.client_id, accepted);
        if subscribed.deliveries.is_some() {
            self.deliveries = subscribed.deliveries;
        }
        self.out.reply(&Reply::SubAck { pkid, codes });
        for ((existed, retained), rule) in subscribed.filters.into_iter().zip(retain_rules) {
            let send = match rule {
                codec::RetainHandling::Send => true,
                codec::RetainHandling::SendIfNew => !existed,
                codec::RetainHandling::Never => false,
            };
            if send {
                self.pending.extend(retained);
            }
        }
        self.send_pending();
        None
    }

    /// Sends again what the session's last connection had in flight, under the same packet
    /// ids (MQTT-4.4.0-1): a PUBLISH with DUP set, or the PUBREL of one whose PUBREC came.
    fn resume(&mut self, unfinished: Vec<Unfinished>) {
        for Unfinished {
            pkid,
            delivery,
            released,
        } in unfinished
        {
            let stage = if released {
                self.out.reply(&Reply::PubRel(pkid));
                Stage::Comp
            } else {
                let resent = outgoing(&delivery, pkid, true, SystemTime::now());
                let sent = self.out.reply(&Reply::Publish(resent));
                if !sent {
                    continue;
                }
                match delivery.qos {
                    QoS::ExactlyOnce => Stage::Rec,
                    _ => Stage::Ack,
                }
            };
            self.inflight.insert(pkid, (delivery, stage));
        }
    }

    /// Writes queued deliveries while the client's receive maximum allows; those whose expiry
    /// interval ran out while they waited are dropped (MQTT-3.3.2-5).
    fn send_pending(&mut self) {
        let now = SystemTime::now();
        while let Some(front) = self.pending.front() {
            if front.expired(now) {
                self.pending.pop_front();
                continue;
            }
            if front.qos > QoS::AtMostOnce
                && self.inflight.len() >= usize::from(self.receive_maximum)
            {
                return;
            }
            let Some(delivery) = self.pending.pop_front() else {
                return;
            };
            let pkid = match delivery.qos {
                QoS::AtMostOnce => 0,
                _ => self.next_free_pkid(),
            };
            let sent = self
                .out
                .reply(&Reply::Publish(outgoing(&delivery, pkid, false, now)));
            if sent && delivery.qos > QoS::AtMostOnce {
                let stage = match delivery.qos {
                    QoS::ExactlyOnce => Stage::Rec,
                    _ => Stage::Ack,
                };
                self.inflight.insert(pkid, (delivery, stage));
            }
        }
    }

    fn next_free_pkid(&mut self) -> u16 {
        loop {
            self.next_pkid = self.next_pkid.wrapping_add(1).max(1);
            if !self.inflight.contains_key(&self.next_pkid) {
                return self.next_pkid;
            }
        }
    }

    /// Says goodbye, hands the session back, and publishes the will if the end calls for it.
    async fn finish(mut self, end: End, intake: CancellationToken) {
        let goodbye = match &end {
            End::Shutdown => Some(Goodbye::ShuttingDown),
            End::TakenOver => Some(Goodbye::TakenOver),
            End::KeepAlive => Some(Goodbye::KeepAliveTimeout),
            End::Violation(goodbye, _) => Some(*goodbye),
            End::Normal { .. } | End::Lost(_) => None,
        };
        match &end {
            End::Violation(_, reason) => {
                warn!(peer = %self.peer, client_id = %self.client_id, reason = %reason, "closing connection");
            }
            End::KeepAlive => {
                // What was waiting says whether the silence could have been ours.
                info!(
                    peer = %self.peer,
                    client_id = %self.client_id,
                    unacknowledged = self.acks.outstanding(),
                    held = self.held.len(),
                    buffered_bytes = self.inbuf.len(),
                    "keep-alive expired; closing connection"
                );
            }
            End::TakenOver => {
                info!(peer = %self.peer, client_id = %self.client_id, "session taken over by a new connection");
            }
            End::Lost(reason) => {
                debug!(peer = %self.peer, client_id = %self.client_id, reason = %reason, "connection lost");
            }
            End::Normal { .. } | End::Shutdown => {
                debug!(peer = %self.peer, client_id = %self.client_id, "client disconnected");
            }
        }
        if self.refused.count > 1 {
            warn!(client_id = %self.client_id, refused = self.refused.count, "publishes refused on this connection");
        }
        if self.dead_lettered > 0 && self.version == Version::V311 {
            info!(
                client_id = %self.client_id,
                dead_lettered = self.dead_lettered,
                "publishes dead-lettered (acknowledged: 3.1.1 cannot say otherwise)"
            );
        }
        if let Some(goodbye) = goodbye {
            self.out.reply(&Reply::Disconnect(goodbye));
        }
        let _ = self.out.flush().await;
        let _ = self.out.writer.shutdown().await;
        self.pass_on_held(&intake).await;

        // Outgoing messages not yet acknowledged go back to the session (QoS 1/2), so a
        // persistent subscriber gets them after reconnecting: those in flight under their
        // packet ids, the rest to be sent as new.
        let unfinished = std::mem::take(&mut self.inflight)
            .into_iter()
            .map(|(pkid, (delivery, stage))| Unfinished {
                pkid,
                delivery,
                released: stage == Stage::Comp,
            })
            .collect();
        let mut unsent: Vec<Delivery> = self.pending.drain(..).collect();
        if let Some(deliveries) = &mut self.deliveries {
            deliveries.close();
            while let Ok(delivery) = deliveries.try_recv() {
                unsent.push(delivery);
            }
        }
        self.context.registry.detach(
            &self.client_id,
            self.id,
            self.expiry_s,
            unfinished,
            unsent,
            std::mem::take(&mut self.readings),
        );

        if end.publishes_will()
            && let Some(will) = self.will.take()
            && let Some(records) = self.records.take()
        {
            publish_will(
                Arc::clone(&self.context),
                self.id,
                self.identity.clone(),
                *will,
                self.expiry_s,
                records,
                intake,
            );
        }
    }
}

/// Publishes a last will: to subscribers and the retained store, and into the pipelines as
/// a record, so that dashboards can show the device going offline. An MQTT 5 will delay is
/// honoured by waiting, in a task of its own, unless the client has reconnected by then
/// (even if that connection has ended again).
fn publish_will(
    context: Arc<Context>,
    connection: u64,
    identity: Identity,
    will: Will,
    expiry_s: u32,
    records: mpsc::Sender<Record>,
    intake: CancellationToken,
) {
    let client_id = identity.client_id.clone();
    if will.topic.is_empty()
        || will.topic.starts_with('$')
        || will.topic.contains(['+', '#', '\0'])
        || !context.auth.may_publish(&identity, &will.topic)
    {
        warn!(%client_id, topic = %will.topic, "will not published: topic not allowed");
        return;
    }
    let delay = Duration::from_secs(u64::from(will.delay_s.min(expiry_s)));
    // Published early if the session ends within the delay (a new connection with Clean
    // Start takes it over, or it expires): MQTT 5 §3.1.2.5.
    let session_ended = match delay.is_zero() {
        true => None,
        false => context.registry.will_waits(&client_id, connection),
    };
    tokio::spawn(async move {
        if !delay.is_zero() {
            let ended = async {
                match &session_ended {
                    Some(ended) => ended.cancelled().await,
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                _ = tokio::time::sleep(delay) => {
                    if context.registry.reconnected_since(&client_id, connection) {
                        debug!(%client_id, "client reconnected within its will delay; will not published");
                        return;
                    }
                }
                () = ended => {
                    debug!(%client_id, "session ended within the will delay; publishing the will now");
                }
                // Holding a record sender through shutdown would keep the pipeline open.
                _ = intake.cancelled() => return,
            }
        }
        info!(%client_id, topic = %will.topic, "publishing last will");
        context.registry.publish(
            &client_id,
            &Delivery::arrived(
                &will.topic,
                will.payload.clone(),
                will.qos,
                will.retain,
                &will.properties,
                SystemTime::now(),
            ),
        );
        metrics::message_in(metrics::Source::Broker);
        let record = Record {
            message: Message {
                topic: will.topic,
                payload: Arc::from(&will.payload[..]),
                qos: will.qos,
                retain: will.retain,
                reading: ReadingId::next(),
                received_at: reading::receive_time(),
                user_properties: will.properties.user_properties,
            },
            ack: Ack::none(),
        };
        if records.send(record).await.is_err() {
            debug!(%client_id, "pipeline closed; will only published to subscribers");
        }
    });
}

/// The PUBLISH that carries `delivery` to its subscriber under `pkid`, sent `now` (what is left
/// of its expiry interval goes with it).
fn outgoing(delivery: &Delivery, pkid: u16, dup: bool, now: SystemTime) -> Outgoing {
    Outgoing {
        topic: delivery.topic.to_string(),
        payload: delivery.payload.clone(),
        qos: delivery.qos,
        retain: delivery.retain,
        dup,
        pkid,
        properties: delivery.properties.clone(),
        message_expiry_s: delivery.expiry_left(now),
        subscription_ids: delivery.subscription_ids.clone(),
    }
}

/// Room for one record on `sender` (which the caller only polls when it is `Some`).
async fn reserve(
    sender: Option<mpsc::Sender<Record>>,
) -> Result<mpsc::OwnedPermit<Record>, mpsc::error::SendError<()>> {
    match sender {
        // Boxed: inline, this wait would be part of every connection's task, when only one
        // that a full pipeline holds back waits here.
        Some(sender) => Box::pin(sender.reserve_owned()).await,
        None => std::future::pending().await,
    }
}

/// Reads what the client sent next into `inbuf`: how many bytes, 0 at the end of the stream.
///
/// An idle connection holds no read buffer: that was 4 KB of every connection's memory, most
/// of them silent between readings. So while `inbuf` holds no partial packet, its memory goes
/// (payloads parsed out of it keep what they share) and the read lands on the stack, and only
/// what arrived is copied to the heap, to be parsed and freed in turn.
async fn receive<R: AsyncRead + Unpin>(
    reader: &mut R,
    inbuf: &mut BytesMut,
) -> std::io::Result<usize> {
    if !inbuf.is_empty() {
        // Room behind a partial packet, as much as one read from the stack would take.
        inbuf.reserve(READ_CHUNK);
        return reader.read_buf(inbuf).await;
    }
    *inbuf = BytesMut::new();
    std::future::poll_fn(|cx| {
        let mut chunk = [MaybeUninit::<u8>::uninit(); READ_CHUNK];
        let mut chunk = ReadBuf::uninit(&mut chunk);
        ready!(Pin::new(&mut *reader).poll_read(cx, &mut chunk))?;
        inbuf.extend_from_slice(chunk.filled());
        Poll::Ready(Ok(chunk.filled().len()))
    })
    .await
}

/// The next settlement on `settled`, if there is a channel (until then, never).
async fn next_settled(settled: Option<&mut mpsc::UnboundedReceiver<Settled>>) -> Option<Settled> {
    match settled {
        Some(settled) => settled.recv().await,
        None => std::future::pending().await,
    }
}

/// The next delivery on `deliveries`, if there is a channel (until then, never).
async fn next_delivery(deliveries: Option<&mut mpsc::Receiver<Delivery>>) -> Option<Delivery> {
    match deliveries {
        Some(deliveries) => deliveries.recv().await,
        None => std::future::pending().await,
    }
}

async fn sleep_until(deadline: Option<Instant>) {
    match deadline {
        Some(deadline) => tokio::time::sleep_until(deadline).await,
        None => std::future::pending().await,
    }
}

#[cfg(test)]
mod tests;
