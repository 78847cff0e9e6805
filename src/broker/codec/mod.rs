//! Bytes ⇄ packets for MQTT 3.1.1 and 5, through rumqttc's codec (`mqttbytes` v4 and v5).
//!
//! The rest of the broker sees one pair of enums, [`Packet`] (what a client sent) and [`Reply`]
//! (what we send), so that a connection is written once for both protocol versions. Nothing
//! here parses MQTT by hand, with three narrow exceptions a reader would otherwise question:
//! the protocol level byte of the first CONNECT is peeked to choose the v4 or v5 decoder; the
//! whole CONNECT is checked for what rumqttc lets through and MQTT forbids ([`strict`]); and
//! an MQTT 5 DISCONNECT with no reason code (`E0 00`, what Mosquitto's clients send) is
//! recognised here because rumqttc 0.25's v5 decoder refuses a zero-length DISCONNECT.

use std::sync::Arc;

use bytes::{Bytes, BytesMut};
use rumqttc::mqttbytes::{self as m4, v4};
use rumqttc::v5::mqttbytes::{self as m5, v5};
use thiserror::Error;

use crate::record::QoS;

pub mod strict;

/// The largest CONNECT read. It is what a connection may make us buffer before it has
/// authenticated, so it is far below `max_packet_bytes` (16 MiB: 50 half-sent CONNECTs once
/// held 782 MB): every field of a CONNECT has a two-byte length, a will payload of 64 KiB
/// is the largest a device sends in practice, and the rest is a few short strings.
pub const MAX_CONNECT_BYTES: usize = 128 * 1024;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Version {
    V311,
    V5,
}

/// A CONNECT, both versions. For 3.1.1, `session_expiry_s` is 0 with clean session and
/// `u32::MAX` (never) without, which is what 3.1.1 persistent sessions mean.
#[derive(Debug, Clone)]
pub struct Connect {
    pub version: Version,
    pub client_id: String,
    pub clean_start: bool,
    pub keep_alive_s: u16,
    pub username: Option<String>,
    pub password: Option<Vec<u8>>,
    pub will: Option<Will>,
    pub session_expiry_s: u32,
    /// How many QoS 1/2 publishes the client accepts unacknowledged (MQTT 5; 3.1.1: ours).
    pub receive_maximum: Option<u16>,
    /// The largest packet the client accepts (MQTT 5).
    pub max_packet_size: Option<u32>,
    /// MQTT 5 enhanced authentication, which we do not support.
    pub authentication_method: Option<String>,
}

#[derive(Debug, Clone)]
pub struct Will {
    pub topic: String,
    pub payload: Bytes,
    pub qos: QoS,
    pub retain: bool,
    pub delay_s: u32,
    pub properties: MessageProperties,
}

/// The properties of an MQTT 5 PUBLISH (or will) that go on with the message to subscribers
/// (MQTT 5 §3.3.2.3). The topic alias and subscription identifiers belong to one connection
/// and are not here.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct MessageProperties {
    pub payload_format: Option<u8>,
    /// As the publisher set it: a copy sent on carries what is left of it.
    pub message_expiry_s: Option<u32>,
    pub content_type: Option<String>,
    pub response_topic: Option<String>,
    pub correlation_data: Option<Bytes>,
    pub user_properties: Vec<(String, String)>,
}

impl MessageProperties {
    pub fn is_empty(&self) -> bool {
        *self == MessageProperties::default()
    }
}

#[derive(Debug, Clone)]
pub struct Publish {
    /// Empty when the client sent only a topic alias.
    pub topic: String,
    pub payload: Bytes,
    pub qos: QoS,
    pub retain: bool,
    pub dup: bool,
    pub pkid: u16,
    pub topic_alias: Option<u16>,
    pub properties: MessageProperties,
}

/// MQTT 5 retain handling of a subscription.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RetainHandling {
    Send,
    SendIfNew,
    Never,
}

#[derive(Debug, Clone)]
pub struct Filter {
    pub filter: String,
    pub qos: QoS,
    pub no_local: bool,
    /// MQTT 5 Retain As Published: deliveries keep the publisher's RETAIN flag.
    pub retain_as_published: bool,
    pub retain_handling: RetainHandling,
}

/// What a client sent.
#[derive(Debug, Clone)]
pub enum Packet {
    Connect(Box<Connect>),
    Publish(Publish),
    PubAck(u16),
    PubRec(u16),
    PubRel(u16),
    PubComp(u16),
    Subscribe {
        pkid: u16,
        filters: Vec<Filter>,
        /// MQTT 5 Subscription Identifier (0 is a protocol error the connection answers).
        id: Option<u32>,
    },
    Unsubscribe {
        pkid: u16,
        filters: Vec<String>,
    },
    PingReq,
    /// `publish_will`: MQTT 5 reason 0x04. `session_expiry_s`: an MQTT 5 update.
    Disconnect {
        publish_will: bool,
        session_expiry_s: Option<u32>,
    },
    /// A packet only a server sends (CONNACK, SUBACK, ...), or AUTH, which we do not support.
    Unexpected(&'static str),
}

/// CONNACK outcomes, named after MQTT 5; 3.1.1 gets the nearest return code.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ConnectCode {
    Accepted,
    UnsupportedProtocol,
    BadClientId,
    ServerBusy,
    BadCredentials,
    NotAuthorized,
    /// MQTT 5 enhanced authentication asked for (0x8C): not supported.
    BadAuthenticationMethod,
    /// The CONNECT broke a rule of MQTT (MQTT 5 only: 3.1.1 has no code for it and closes).
    Refused(strict::Answer),
}

/// PUBACK / PUBREC reason codes we use (MQTT 5 only; 3.1.1 acks carry no reason).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AckReason {
    Success,
    NotAuthorized,
    TopicNameInvalid,
    PayloadFormatInvalid,
}

impl AckReason {
    pub fn is_error(self) -> bool {
        self != AckReason::Success
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SubCode {
    Granted(QoS),
    NotAuthorized,
    FilterInvalid,
}

/// Why we close a connection (MQTT 5 DISCONNECT reason; 3.1.1 just closes).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Goodbye {
    ShuttingDown,
    TakenOver,
    KeepAliveTimeout,
    ReceiveMaximumExceeded,
    ProtocolError,
    MalformedPacket,
    PacketTooLarge,
    TopicAliasInvalid,
}

impl std::fmt::Display for Goodbye {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Goodbye::ShuttingDown => "server shutting down",
            Goodbye::TakenOver => "session taken over",
            Goodbye::KeepAliveTimeout => "keep-alive timeout",
            Goodbye::ReceiveMaximumExceeded => "receive maximum exceeded",
            Goodbye::ProtocolError => "protocol error",
            Goodbye::MalformedPacket => "malformed packet",
            Goodbye::PacketTooLarge => "packet too large",
            Goodbye::TopicAliasInvalid => "topic alias invalid",
        })
    }
}

/// An outgoing PUBLISH.
#[derive(Debug, Clone)]
pub struct Outgoing {
    pub topic: String,
    pub payload: Bytes,
    pub qos: QoS,
    pub retain: bool,
    pub dup: bool,
    pub pkid: u16,
    /// The publisher's properties (MQTT 5), sent with `message_expiry_s` in place of theirs.
    pub properties: Option<Arc<MessageProperties>>,
    /// What is left of the message's expiry interval.
    pub message_expiry_s: Option<u32>,
    /// The identifiers of the subscriptions it matched (MQTT 5 §3.3.4).
    pub subscription_ids: Vec<u32>,
}

/// What we send.
#[derive(Debug, Clone)]
pub enum Reply {
    ConnAck {
        session_present: bool,
        code: ConnectCode,
        assigned_client_id: Option<String>,
        receive_maximum: u16,
        max_packet_size: u32,
        topic_alias_max: u16,
        /// The keep-alive the client is to use instead of its own (MQTT 5).
        server_keep_alive: Option<u16>,
    },
    Publish(Outgoing),
    PubAck {
        pkid: u16,
        reason: AckReason,
    },
    PubRec {
        pkid: u16,
        reason: AckReason,
    },
    PubRel(u16),
    PubComp(u16),
    SubAck {
        pkid: u16,
        codes: Vec<SubCode>,
    },
    UnsubAck {
        pkid: u16,
        existed: Vec<bool>,
    },
    PingResp,
    Disconnect(Goodbye),
}

#[derive(Debug, Error, PartialEq, Eq)]
pub enum CodecError {
    #[error("first packet is not CONNECT (packet type {0})")]
    NotConnect(u8),
    #[error("unsupported protocol level {0}")]
    UnsupportedProtocol(u8),
    #[error("packet of {size} bytes exceeds the maximum of {max}")]
    TooLarge { size: usize, max: usize },
    #[error("malformed packet: {0}")]
    Malformed(String),
    #[error("unexpected CONNECT on an established connection")]
    SecondConnect,
    #[error("topic is not valid UTF-8")]
    TopicNotUtf8,
    #[error("{fault}")]
    BadConnect {
        version: Version,
        fault: strict::Fault,
    },
}

/// Reads the next complete packet from `buf`, or `None` when more bytes are needed.
/// `version` is `None` until CONNECT: then only a CONNECT is accepted, and its protocol level
/// chooses the decoder.
pub fn read(
    buf: &mut BytesMut,
    version: Option<Version>,
    max_packet_bytes: usize,
) -> Result<Option<Packet>, CodecError> {
    if buf.is_empty() {
        return Ok(None);
    }
    let version = match version {
        Some(version) => version,
        None => {
            let (level, version) = match connect_level(buf)? {
                None => return Ok(None),
                Some(4) => (4, Version::V311),
                Some(5) => (5, Version::V5),
                Some(level) => return Err(CodecError::UnsupportedProtocol(level)),
            };
            let refuse = |fault| CodecError::BadConnect { version, fault };
            let max = max_packet_bytes.min(MAX_CONNECT_BYTES);
            let len = match whole_packet(buf) {
                Some(len) if len > max => {
                    return Err(refuse(strict::Fault {
                        answer: strict::Answer::PacketTooLarge,
                        reason: format!("CONNECT of {len} bytes exceeds the maximum of {max}"),
                    }));
                }
                Some(len) if len <= buf.len() => len,
                _ => return Ok(None),
            };
            strict::check_connect(&buf[..len], level).map_err(refuse)?;
            version
        }
    };
    let packet = match version {
        Version::V311 => read_v4(buf, max_packet_bytes)?,
        Version::V5 => read_v5(buf, max_packet_bytes)?,
    };
    Ok(packet)
}

/// The protocol level byte of a CONNECT at the front of `buf`, once enough bytes are there.
fn connect_level(buf: &[u8]) -> Result<Option<u8>, CodecError> {
    let kind = buf[0] >> 4;
    if kind != 1 {
        return Err(CodecError::NotConnect(kind));
    }
    // Remaining length: 1 to 4 bytes with a continuation bit; then protocol name (2 + 4 bytes
    // for "MQTT"; 3.1's "MQIsdp" is 6) and the level byte.
    let mut offset = 1;
    loop {
        let Some(&byte) = buf.get(offset) else {
            return Ok(None);
        };
        offset += 1;
        if byte & 0x80 == 0 {
            break;
        }
        if offset > 4 {
            return Err(CodecError::Malformed("malformed remaining length".into()));
        }
    }
    let Some(name_len) = buf.get(offset..offset + 2) else {
        return Ok(None);
    };
    let name_len = u16::from_be_bytes([name_len[0], name_len[1]]) as usize;
    if name_len > 6 {
        return Err(CodecError::Malformed(format!(
            "protocol name of {name_len} bytes"
        )));
    }
    Ok(buf.get(offset + 2 + name_len).copied())
}

/// The length of the packet at the front of `buf` (fixed header included), once its remaining
/// length has arrived (`connect_level` has checked that it is at most four bytes).
fn whole_packet(buf: &[u8]) -> Option<usize> {
    let mut remaining = 0usize;
    for (i, &byte) in buf.iter().enumerate().skip(1).take(4) {
        remaining |= usize::from(byte & 0x7F) << (7 * (i - 1));
        if byte & 0x80 == 0 {
            return Some(i + 1 + remaining);
        }
    }
    None
}

fn read_v4(buf: &mut BytesMut, max: usize) -> Result<Option<Packet>, CodecError> {
    let packet = match v4::Packet::read(buf, max) {
        Ok(packet) => packet,
        Err(m4::Error::InsufficientBytes(_)) => return Ok(None),
        Err(m4::Error::PayloadSizeLimitExceeded(size)) => {
            return Err(CodecError::TooLarge { size, max });
        }
        Err(m4::Error::TopicNotUtf8) => return Err(CodecError::TopicNotUtf8),
        Err(error) => return Err(CodecError::Malformed(error.to_string())),
    };
    Ok(Some(match packet {
        v4::Packet::Connect(connect) => {
            let (username, password) = match connect.login {
                Some(login) => (
                    Some(login.username).filter(|u| !u.is_empty()),
                    Some(login.password.into_bytes()).filter(|p| !p.is_empty()),
                ),
                None => (None, None),
            };
            Packet::Connect(Box::new(Connect {
                version: Version::V311,
                session_expiry_s: if connect.clean_session { 0 } else { u32::MAX },
                client_id: connect.client_id,
                clean_start: connect.clean_session,
                keep_alive_s: connect.keep_alive,
                username,
                password,
                will: connect.last_will.map(|will| Will {
                    topic: will.topic,
                    payload: will.message,
                    qos: QoS::saturating(will.qos as u8),
                    retain: will.retain,
                    delay_s: 0,
                    properties: MessageProperties::default(),
                }),
                receive_maximum: None,
                max_packet_size: None,
                authentication_method: None,
            }))
        }
        v4::Packet::Publish(publish) => Packet::Publish(Publish {
            topic: publish.topic,
            payload: publish.payload,
            qos: QoS::saturating(publish.qos as u8),
            retain: publish.retain,
            dup: publish.dup,
            pkid: publish.pkid,
            topic_alias: None,
            properties: MessageProperties::default(),
        }),
        v4::Packet::PubAck(ack) => Packet::PubAck(ack.pkid),
        v4::Packet::PubRec(ack) => Packet::PubRec(ack.pkid),
        v4::Packet::PubRel(ack) => Packet::PubRel(ack.pkid),
        v4::Packet::PubComp(ack) => Packet::PubComp(ack.pkid),
        v4::Packet::Subscribe(subscribe) => Packet::Subscribe {
            pkid: subscribe.pkid,
            filters: subscribe
                .filters
                .into_iter()
                .map(|f| Filter {
                    filter: f.path,
                    qos: QoS::saturating(f.qos as u8),
                    no_local: false,
                    retain_as_published: false,
                    retain_handling: RetainHandling::Send,
                })
                .collect(),
            id: None,
        },
        v4::Packet::Unsubscribe(unsubscribe) => Packet::Unsubscribe {
            pkid: unsubscribe.pkid,
            filters: unsubscribe.topics,
        },
        v4::Packet::PingReq => Packet::PingReq,
        v4::Packet::Disconnect => Packet::Disconnect {
            publish_will: false,
            session_expiry_s: None,
        },
        v4::Packet::ConnAck(_) => Packet::Unexpected("CONNACK"),
        v4::Packet::SubAck(_) => Packet::Unexpected("SUBACK"),
        v4::Packet::UnsubAck(_) => Packet::Unexpected("UNSUBACK"),
        v4::Packet::PingResp => Packet::Unexpected("PINGRESP"),
    }))
}

fn read_v5(buf: &mut BytesMut, max: usize) -> Result<Option<Packet>, CodecError> {
    // See the module doc: rumqttc's v5 decoder wants a reason code in every DISCONNECT.
    if buf.len() >= 2 && buf[0] == 0xE0 && buf[1] == 0x00 {
        let _ = buf.split_to(2);
        return Ok(Some(Packet::Disconnect {
            publish_will: false,
            session_expiry_s: None,
        }));
    }
    let limit = u32::try_from(max).unwrap_or(u32::MAX);
    let packet = match v5::Packet::read(buf, Some(limit)) {
        Ok(packet) => packet,
        Err(m5::Error::InsufficientBytes(_)) => return Ok(None),
        Err(m5::Error::PayloadSizeLimitExceeded { pkt_size, .. }) => {
            return Err(CodecError::TooLarge {
                size: pkt_size,
                max,
            });
        }
        Err(error) => return Err(CodecError::Malformed(error.to_string())),
    };
    Ok(Some(match packet {
        v5::Packet::Connect(connect, will, login) => {
            let properties = connect.properties.unwrap_or_default();
            let (username, password) = match login {
                Some(login) => (
                    Some(login.username).filter(|u| !u.is_empty()),
                    Some(login.password.into_bytes()).filter(|p| !p.is_empty()),
                ),
                None => (None, None),
            };
            let will = match will {
                Some(will) => {
                    let topic = String::from_utf8(will.topic.to_vec())
                        .map_err(|_| CodecError::TopicNotUtf8)?;
                    let (delay_s, properties) = match will.properties {
                        Some(p) => (
                            p.delay_interval.unwrap_or(0),
                            MessageProperties {
                                payload_format: p.payload_format_indicator,
                                message_expiry_s: p.message_expiry_interval,
                                content_type: p.content_type,
                                response_topic: p.response_topic,
                                correlation_data: p.correlation_data,
                                user_properties: p.user_properties,
                            },
                        ),
                        None => (0, MessageProperties::default()),
                    };
                    Some(Will {
                        topic,
                        payload: will.message,
                        qos: QoS::saturating(will.qos as u8),
                        retain: will.retain,
                        delay_s,
                        properties,
                    })
                }
                None => None,
            };
            Packet::Connect(Box::new(Connect {
                version: Version::V5,
                client_id: connect.client_id,
                clean_start: connect.clean_start,
                keep_alive_s: connect.keep_alive,
                username,
                password,
                will,
                session_expiry_s: properties.session_expiry_interval.unwrap_or(0),
                receive_maximum: properties.receive_maximum,
                max_packet_size: properties.max_packet_size,
                authentication_method: properties.authentication_method,
            }))
        }
        v5::Packet::Publish(publish) => {
            let topic =
                String::from_utf8(publish.topic.to_vec()).map_err(|_| CodecError::TopicNotUtf8)?;
            // Subscription identifiers in a PUBLISH from a client are a protocol error
            // (MQTT-3.3.4-6); rumqttc reads them, and they are dropped here.
            let (topic_alias, properties) = match publish.properties {
                Some(p) => (
                    p.topic_alias,
                    MessageProperties {
                        payload_format: p.payload_format_indicator,
                        message_expiry_s: p.message_expiry_interval,
                        content_type: p.content_type,
                        response_topic: p.response_topic,
                        correlation_data: p.correlation_data,
                        user_properties: p.user_properties,
                    },
                ),
                None => (None, MessageProperties::default()),
            };
            Packet::Publish(Publish {
                topic,
                payload: publish.payload,
                qos: QoS::saturating(publish.qos as u8),
                retain: publish.retain,
                dup: publish.dup,
                pkid: publish.pkid,
                topic_alias,
                properties,
            })
        }
        v5::Packet::PubAck(ack) => Packet::PubAck(ack.pkid),
        v5::Packet::PubRec(ack) => Packet::PubRec(ack.pkid),
        v5::Packet::PubRel(ack) => Packet::PubRel(ack.pkid),
        v5::Packet::PubComp(ack) => Packet::PubComp(ack.pkid),
        v5::Packet::Subscribe(subscribe) => Packet::Subscribe {
            pkid: subscribe.pkid,
            filters: subscribe
                .filters
                .into_iter()
                .map(|f| Filter {
                    filter: f.path,
                    qos: QoS::saturating(f.qos as u8),
                    no_local: f.nolocal,
                    retain_as_published: f.preserve_retain,
                    retain_handling: match f.retain_forward_rule {
                        v5::RetainForwardRule::OnEverySubscribe => RetainHandling::Send,
                        v5::RetainForwardRule::OnNewSubscribe => RetainHandling::SendIfNew,
                        v5::RetainForwardRule::Never => RetainHandling::Never,
                    },
                })
                .collect(),
            id: subscribe
                .properties
                .and_then(|p| p.id)
                .map(|id| u32::try_from(id).unwrap_or(u32::MAX)),
        },
        v5::Packet::Unsubscribe(unsubscribe) => Packet::Unsubscribe {
            pkid: unsubscribe.pkid,
            filters: unsubscribe.filters,
        },
        v5::Packet::PingReq(_) => Packet::PingReq,
        v5::Packet::Disconnect(disconnect) => Packet::Disconnect {
            publish_will: disconnect.reason_code
                == v5::DisconnectReasonCode::DisconnectWithWillMessage,
            session_expiry_s: disconnect
                .properties
                .and_then(|p| p.session_expiry_interval),
        },
        v5::Packet::ConnAck(_) => Packet::Unexpected("CONNACK"),
        v5::Packet::SubAck(_) => Packet::Unexpected("SUBACK"),
        v5::Packet::UnsubAck(_) => Packet::Unexpected("UNSUBACK"),
        v5::Packet::PingResp(_) => Packet::Unexpected("PINGRESP"),
        v5::Packet::Auth(_) => Packet::Unexpected("AUTH"),
    }))
}

fn v4_qos(qos: QoS) -> m4::QoS {
    match qos {
        QoS::AtMostOnce => m4::QoS::AtMostOnce,
        QoS::AtLeastOnce => m4::QoS::AtLeastOnce,
        QoS::ExactlyOnce => m4::QoS::ExactlyOnce,
    }
}

fn v5_qos(qos: QoS) -> m5::QoS {
    match qos {
        QoS::AtMostOnce => m5::QoS::AtMostOnce,
        QoS::AtLeastOnce => m5::QoS::AtLeastOnce,
        QoS::ExactlyOnce => m5::QoS::ExactlyOnce,
    }
}

/// Appends `reply` to `buf`. `max` is the client's maximum packet size (MQTT 5): a PUBLISH
/// larger than that is refused with `TooLarge`, and the caller skips it as MQTT 5 requires.
pub fn write(
    reply: &Reply,
    version: Version,
    buf: &mut BytesMut,
    max: Option<u32>,
) -> Result<(), CodecError> {
    match version {
        Version::V311 => write_v4(reply, buf),
        Version::V5 => write_v5(reply, buf, max),
    }
}

fn write_v4(reply: &Reply, buf: &mut BytesMut) -> Result<(), CodecError> {
    let packet = match reply {
        Reply::ConnAck {
            session_present,
            code,
            ..
        } => v4::Packet::ConnAck(v4::ConnAck::new(
            match code {
                ConnectCode::Accepted => v4::ConnectReturnCode::Success,
                ConnectCode::UnsupportedProtocol => v4::ConnectReturnCode::RefusedProtocolVersion,
                ConnectCode::BadClientId => v4::ConnectReturnCode::BadClientId,
                ConnectCode::ServerBusy => v4::ConnectReturnCode::ServiceUnavailable,
                ConnectCode::BadCredentials => v4::ConnectReturnCode::BadUserNamePassword,
                ConnectCode::NotAuthorized => v4::ConnectReturnCode::NotAuthorized,
                // Not sent: 3.1.1 has neither, and the connection closes.
                ConnectCode::Refused(_) | ConnectCode::BadAuthenticationMethod => {
                    v4::ConnectReturnCode::ServiceUnavailable
                }
            },
            *session_present,
        )),
        Reply::Publish(out) => {
            let mut publish =
                v4::Publish::from_bytes(out.topic.clone(), v4_qos(out.qos), out.payload.clone());
            publish.retain = out.retain;
            publish.dup = out.dup;
            publish.pkid = out.pkid;
            v4::Packet::Publish(publish)
        }
        Reply::PubAck { pkid, .. } => v4::Packet::PubAck(v4::PubAck::new(*pkid)),
        Reply::PubRec { pkid, .. } => v4::Packet::PubRec(v4::PubRec::new(*pkid)),
        Reply::PubRel(pkid) => v4::Packet::PubRel(v4::PubRel::new(*pkid)),
        Reply::PubComp(pkid) => v4::Packet::PubComp(v4::PubComp::new(*pkid)),
        Reply::SubAck { pkid, codes } => v4::Packet::SubAck(v4::SubAck::new(
            *pkid,
            codes
                .iter()
                .map(|code| match code {
                    SubCode::Granted(qos) => v4::SubscribeReasonCode::Success(v4_qos(*qos)),
                    _ => v4::SubscribeReasonCode::Failure,
                })
                .collect(),
        )),
        Reply::UnsubAck { pkid, .. } => v4::Packet::UnsubAck(v4::UnsubAck::new(*pkid)),
        Reply::PingResp => v4::Packet::PingResp,
        // 3.1.1 has no server DISCONNECT: closing the connection says it.
        Reply::Disconnect(_) => return Ok(()),
    };
    packet
        .write(buf, usize::MAX)
        .map(|_| ())
        .map_err(|error| CodecError::Malformed(error.to_string()))
}

fn v5_ack_reason(reason: AckReason) -> (v5::PubAckReason, v5::PubRecReason) {
    match reason {
        AckReason::Success => (v5::PubAckReason::Success, v5::PubRecReason::Success),
        AckReason::NotAuthorized => (
            v5::PubAckReason::NotAuthorized,
            v5::PubRecReason::NotAuthorized,
        ),
        AckReason::TopicNameInvalid => (
            v5::PubAckReason::TopicNameInvalid,
            v5::PubRecReason::TopicNameInvalid,
        ),
        AckReason::PayloadFormatInvalid => (
            v5::PubAckReason::PayloadFormatInvalid,
            v5::PubRecReason::PayloadFormatInvalid,
        ),
    }
}

fn write_v5(reply: &Reply, buf: &mut BytesMut, max: Option<u32>) -> Result<(), CodecError> {
    let packet = match reply {
        Reply::ConnAck {
            session_present,
            code,
            assigned_client_id,
            receive_maximum,
            max_packet_size,
            topic_alias_max,
            server_keep_alive,
        } => {
            let properties = (*code == ConnectCode::Accepted).then(|| v5::ConnAckProperties {
                session_expiry_interval: None,
                receive_max: Some(*receive_maximum),
                max_qos: None,
                retain_available: Some(1),
                max_packet_size: Some(*max_packet_size),
                assigned_client_identifier: assigned_client_id.clone(),
                topic_alias_max: Some(*topic_alias_max),
                reason_string: None,
                user_properties: Vec::new(),
                wildcard_subscription_available: Some(1),
                subscription_identifiers_available: Some(1),
                shared_subscription_available: Some(1),
                server_keep_alive: *server_keep_alive,
                response_information: None,
                server_reference: None,
                authentication_method: None,
                authentication_data: None,
            });
            v5::Packet::ConnAck(v5::ConnAck {
                session_present: *session_present,
                code: match code {
                    ConnectCode::Accepted => v5::ConnectReturnCode::Success,
                    ConnectCode::UnsupportedProtocol => {
                        v5::ConnectReturnCode::UnsupportedProtocolVersion
                    }
                    ConnectCode::BadClientId => v5::ConnectReturnCode::ClientIdentifierNotValid,
                    ConnectCode::ServerBusy => v5::ConnectReturnCode::ServerBusy,
                    ConnectCode::BadCredentials => v5::ConnectReturnCode::BadUserNamePassword,
                    ConnectCode::NotAuthorized => v5::ConnectReturnCode::NotAuthorized,
                    ConnectCode::BadAuthenticationMethod => {
                        v5::ConnectReturnCode::BadAuthenticationMethod
                    }
                    ConnectCode::Refused(answer) => match answer {
                        strict::Answer::Malformed => v5::ConnectReturnCode::MalformedPacket,
                        strict::Answer::ProtocolError => v5::ConnectReturnCode::ProtocolError,
                        strict::Answer::TopicNameInvalid => v5::ConnectReturnCode::TopicNameInvalid,
                        strict::Answer::PacketTooLarge => v5::ConnectReturnCode::PacketTooLarge,
                    },
                },
                properties,
            })
        }
        Reply::Publish(out) => {
            let forwarded = out.properties.as_deref();
            let properties = (forwarded.is_some()
                || out.message_expiry_s.is_some()
                || !out.subscription_ids.is_empty())
            .then(|| v5::PublishProperties {
                payload_format_indicator: forwarded.and_then(|p| p.payload_format),
                message_expiry_interval: out.message_expiry_s,
                topic_alias: None,
                response_topic: forwarded.and_then(|p| p.response_topic.clone()),
                correlation_data: forwarded.and_then(|p| p.correlation_data.clone()),
                user_properties: forwarded
                    .map(|p| p.user_properties.clone())
                    .unwrap_or_default(),
                subscription_identifiers: out
                    .subscription_ids
                    .iter()
                    .map(|&id| id as usize)
                    .collect(),
                content_type: forwarded.and_then(|p| p.content_type.clone()),
            });
            let mut publish = v5::Publish::new(
                out.topic.clone(),
                v5_qos(out.qos),
                out.payload.clone(),
                properties,
            );
            publish.retain = out.retain;
            publish.dup = out.dup;
            publish.pkid = out.pkid;
            v5::Packet::Publish(publish)
        }
        Reply::PubAck { pkid, reason } => {
            let mut ack = v5::PubAck::new(*pkid, None);
            ack.reason = v5_ack_reason(*reason).0;
            v5::Packet::PubAck(ack)
        }
        Reply::PubRec { pkid, reason } => {
            let mut ack = v5::PubRec::new(*pkid, None);
            ack.reason = v5_ack_reason(*reason).1;
            v5::Packet::PubRec(ack)
        }
        Reply::PubRel(pkid) => v5::Packet::PubRel(v5::PubRel::new(*pkid, None)),
        Reply::PubComp(pkid) => v5::Packet::PubComp(v5::PubComp::new(*pkid, None)),
        Reply::SubAck { pkid, codes } => v5::Packet::SubAck(v5::SubAck {
            pkid: *pkid,
            return_codes: codes
                .iter()
                .map(|code| match code {
                    SubCode::Granted(qos) => v5::SubscribeReasonCode::Success(v5_qos(*qos)),
                    SubCode::NotAuthorized => v5::SubscribeReasonCode::NotAuthorized,
                    SubCode::FilterInvalid => v5::SubscribeReasonCode::TopicFilterInvalid,
                })
                .collect(),
            properties: None,
        }),
        Reply::UnsubAck { pkid, existed } => v5::Packet::UnsubAck(v5::UnsubAck {
            pkid: *pkid,
            reasons: existed
                .iter()
                .map(|&e| {
                    if e {
                        v5::UnsubAckReason::Success
                    } else {
                        v5::UnsubAckReason::NoSubscriptionExisted
                    }
                })
                .collect(),
            properties: None,
        }),
        Reply::PingResp => v5::Packet::PingResp(v5::PingResp),
        Reply::Disconnect(goodbye) => v5::Packet::Disconnect(v5::Disconnect {
            // rumqttc 0.25 miscounts the remaining length of a DISCONNECT with a reason code and
            // no properties (it writes a property length it did not count), and writes one
            // whose length comes to 2 as a bare `E0 00`. A reason string avoids both, and
            // tells a person reading a client log why.
            properties: Some(v5::DisconnectProperties {
                session_expiry_interval: None,
                reason_string: Some(goodbye.to_string()),
                user_properties: Vec::new(),
                server_reference: None,
            }),
            reason_code: match goodbye {
                Goodbye::ShuttingDown => v5::DisconnectReasonCode::ServerShuttingDown,
                Goodbye::TakenOver => v5::DisconnectReasonCode::SessionTakenOver,
                Goodbye::KeepAliveTimeout => v5::DisconnectReasonCode::KeepAliveTimeout,
                Goodbye::ReceiveMaximumExceeded => v5::DisconnectReasonCode::ReceiveMaximumExceeded,
                Goodbye::ProtocolError => v5::DisconnectReasonCode::ProtocolError,
                Goodbye::MalformedPacket => v5::DisconnectReasonCode::MalformedPacket,
                Goodbye::PacketTooLarge => v5::DisconnectReasonCode::PacketTooLarge,
                Goodbye::TopicAliasInvalid => v5::DisconnectReasonCode::TopicAliasInvalid,
            },
        }),
    };
    // Only a PUBLISH can outgrow the client's limit; acks are a few bytes.
    let limit = matches!(reply, Reply::Publish(_)).then_some(max).flatten();
    packet
        .write(buf, limit)
        .map(|_| ())
        .map_err(|error| match error {
            m5::Error::OutgoingPacketTooLarge { pkt_size, max } => CodecError::TooLarge {
                size: pkt_size as usize,
                max: max as usize,
            },
            error => CodecError::Malformed(error.to_string()),
        })
}

#[cfg(test)]
mod tests;
