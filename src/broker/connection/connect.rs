//! From accept to CONNACK: the first packet read and checked, the client refused or
//! authenticated, its session taken over from an earlier connection and attached.
//!
//! The decision a reader would question: a new connection waits (up to `TAKEOVER_WAIT`) for
//! the one it takes over to hand the session back before attaching it. Attached at once, the
//! two would share a session for a moment: acks and deliveries of the old one could land in the
//! new one's state, or be lost with it.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use bytes::BytesMut;
use tokio::io::{AsyncRead, ReadHalf};
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use super::context::{Client, Context, Limits, Live, TOPIC_ALIAS_MAX};
use super::socket::{Outbound, receive};
use crate::broker::auth::Refusal;
use crate::broker::codec::{self, CodecError, Connect, ConnectCode, Packet, Reply, Version, Will};
use crate::broker::listener::{Accepted, Stream};
use crate::broker::session::{Attached, Handover, Resumed};
use crate::metrics;

/// How long a new connection waits for the one it takes over to hand the session back.
const TAKEOVER_WAIT: Duration = Duration::from_secs(5);

/// A client whose CONNECT was accepted: its session attached, CONNACK (and what the session
/// had in flight, once resumed) still to be sent.
pub(super) struct Admitted {
    pub(super) client: Client,
    pub(super) expiry_s: u32,
    /// Boxed: most clients set no will, and inline it would be 88 bytes of every connection.
    pub(super) will: Option<Box<Will>>,
    /// The client's receive maximum: outgoing QoS 1/2 deliveries in flight at most.
    pub(super) receive_maximum: u16,
    pub(super) out: Outbound,
    /// Bytes that arrived with CONNECT.
    pub(super) inbuf: BytesMut,
    pub(super) reader: ReadHalf<Box<dyn Stream>>,
    pub(super) keep_alive_s: u16,
    pub(super) resumed: Resumed,
    /// Kicked when a new connection takes the session over, which waits until this one has
    /// handed the session back.
    pub(super) handover: Arc<Handover>,
    pub(super) live: Live,
    pub(super) connected: metrics::Connection,
}

/// From accept to CONNACK: reads CONNECT, refuses or authenticates, takes the session over
/// from an earlier connection and attaches it. `None` if the connection ended there.
pub(super) async fn open(
    accepted: Accepted,
    context: Arc<Context>,
    intake: &CancellationToken,
) -> Option<Admitted> {
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

    if let Some(previous) = context.registry.kick(&client_id) {
        debug!(%client_id, "taking over the session from its previous connection");
        if tokio::time::timeout(TAKEOVER_WAIT, previous.handed_back())
            .await
            .is_err()
        {
            warn!(%client_id, "previous connection did not hand its session back in time");
        }
    }
    let id = context.registry.next_connection_id();
    let handover = Arc::new(Handover::default());
    let resumed = context.registry.attach(
        &client_id,
        connect.clean_start,
        connect.session_expiry_s,
        Attached {
            connection: id,
            deliver: None,
            handover: Arc::clone(&handover),
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
    out.max_packet = connect.max_packet_size;
    let receive_maximum = connect
        .receive_maximum
        .unwrap_or(limits.max_inflight)
        .max(1);
    Some(Admitted {
        client: Client {
            context: Arc::clone(&context),
            peer,
            id,
            client_id,
            identity,
            version: connect.version,
        },
        expiry_s: connect.session_expiry_s,
        will: connect.will.clone().map(Box::new),
        receive_maximum,
        out,
        inbuf,
        reader,
        keep_alive_s,
        resumed,
        handover,
        live: live_guard,
        connected,
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

/// Why no CONNECT was read.
enum ConnectFailure {
    Closed,
    Io(std::io::Error),
    Codec(CodecError),
}

/// Reads until the first packet is whole: it must be CONNECT.
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

#[cfg(test)]
mod tests;
