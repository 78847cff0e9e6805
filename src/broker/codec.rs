//! Bytes ⇄ packets for MQTT 3.1.1 and 5, through rumqttc's codec (`mqttbytes` v4 and v5).
//!
//! The rest of the broker sees one pair of enums, [`Packet`] (what a client sent) and [`Reply`]
//! (what we send), so that a connection is written once for both protocol versions. Nothing
//! here parses MQTT by hand, with two narrow exceptions a reader would otherwise question:
//! the protocol level byte of the first CONNECT is peeked to choose the v4 or v5 decoder, and
//! an MQTT 5 DISCONNECT with no reason code (`E0 00`, what Mosquitto's clients send) is
//! recognised here because rumqttc 0.25's v5 decoder refuses a zero-length DISCONNECT.

use bytes::{Bytes, BytesMut};
use rumqttc::mqttbytes::{self as m4, v4};
use rumqttc::v5::mqttbytes::{self as m5, v5};
use thiserror::Error;

use crate::record::QoS;

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
}

#[derive(Debug, Clone)]
pub struct Will {
    pub topic: String,
    pub payload: Bytes,
    pub qos: QoS,
    pub retain: bool,
    pub delay_s: u32,
    pub user_properties: Vec<(String, String)>,
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
    pub user_properties: Vec<(String, String)>,
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
    SharedNotSupported,
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
    pub user_properties: Vec<(String, String)>,
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
        None => match connect_level(buf)? {
            None => return Ok(None),
            Some(4) => Version::V311,
            Some(5) => Version::V5,
            Some(level) => return Err(CodecError::UnsupportedProtocol(level)),
        },
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

fn qos_of(level: u8) -> QoS {
    match level {
        0 => QoS::AtMostOnce,
        1 => QoS::AtLeastOnce,
        _ => QoS::ExactlyOnce,
    }
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
                    qos: qos_of(will.qos as u8),
                    retain: will.retain,
                    delay_s: 0,
                    user_properties: Vec::new(),
                }),
                receive_maximum: None,
                max_packet_size: None,
            }))
        }
        v4::Packet::Publish(publish) => Packet::Publish(Publish {
            topic: publish.topic,
            payload: publish.payload,
            qos: qos_of(publish.qos as u8),
            retain: publish.retain,
            dup: publish.dup,
            pkid: publish.pkid,
            topic_alias: None,
            user_properties: Vec::new(),
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
                    qos: qos_of(f.qos as u8),
                    no_local: false,
                    retain_handling: RetainHandling::Send,
                })
                .collect(),
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
                    let (delay_s, user_properties) = match will.properties {
                        Some(p) => (p.delay_interval.unwrap_or(0), p.user_properties),
                        None => (0, Vec::new()),
                    };
                    Some(Will {
                        topic,
                        payload: will.message,
                        qos: qos_of(will.qos as u8),
                        retain: will.retain,
                        delay_s,
                        user_properties,
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
            }))
        }
        v5::Packet::Publish(publish) => {
            let topic =
                String::from_utf8(publish.topic.to_vec()).map_err(|_| CodecError::TopicNotUtf8)?;
            let (topic_alias, user_properties) = match publish.properties {
                Some(p) => (p.topic_alias, p.user_properties),
                None => (None, Vec::new()),
            };
            Packet::Publish(Publish {
                topic,
                payload: publish.payload,
                qos: qos_of(publish.qos as u8),
                retain: publish.retain,
                dup: publish.dup,
                pkid: publish.pkid,
                topic_alias,
                user_properties,
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
                    qos: qos_of(f.qos as u8),
                    no_local: f.nolocal,
                    retain_handling: match f.retain_forward_rule {
                        v5::RetainForwardRule::OnEverySubscribe => RetainHandling::Send,
                        v5::RetainForwardRule::OnNewSubscribe => RetainHandling::SendIfNew,
                        v5::RetainForwardRule::Never => RetainHandling::Never,
                    },
                })
                .collect(),
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
                subscription_identifiers_available: Some(0),
                shared_subscription_available: Some(0),
                server_keep_alive: None,
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
                },
                properties,
            })
        }
        Reply::Publish(out) => {
            let properties = (!out.user_properties.is_empty()).then(|| v5::PublishProperties {
                user_properties: out.user_properties.clone(),
                ..Default::default()
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
                    SubCode::SharedNotSupported => {
                        v5::SubscribeReasonCode::SharedSubscriptionsNotSupported
                    }
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
mod tests {
    use super::*;

    fn v4_connect_bytes(client_id: &str) -> BytesMut {
        let mut buf = BytesMut::new();
        v4::Connect::new(client_id)
            .write(&mut buf)
            .expect("encode connect");
        buf
    }

    #[test]
    fn a_311_connect_is_read_in_pieces_and_then_whole() {
        let whole = v4_connect_bytes("dev-1");
        let mut buf = BytesMut::from(&whole[..3]);
        assert!(matches!(read(&mut buf, None, 1024), Ok(None)));
        buf.extend_from_slice(&whole[3..]);
        match read(&mut buf, None, 1024).expect("valid") {
            Some(Packet::Connect(connect)) => {
                assert_eq!(connect.version, Version::V311);
                assert_eq!(connect.client_id, "dev-1");
                assert_eq!(connect.session_expiry_s, 0, "clean session");
            }
            other => panic!("expected CONNECT, got {other:?}"),
        }
        assert!(buf.is_empty());
    }

    #[test]
    fn a_v5_connect_is_told_apart_by_its_protocol_level() {
        let mut connect = v5::Connect {
            keep_alive: 30,
            client_id: "dev-5".into(),
            clean_start: false,
            properties: Some(v5::ConnectProperties {
                session_expiry_interval: Some(600),
                receive_maximum: Some(7),
                ..v5::ConnectProperties::new()
            }),
        };
        connect.keep_alive = 30;
        let mut buf = BytesMut::new();
        connect.write(&None, &None, &mut buf).expect("encode");
        match read(&mut buf, None, 1024).expect("valid") {
            Some(Packet::Connect(c)) => {
                assert_eq!(c.version, Version::V5);
                assert_eq!(c.session_expiry_s, 600);
                assert_eq!(c.receive_maximum, Some(7));
                assert!(!c.clean_start);
            }
            other => panic!("expected CONNECT, got {other:?}"),
        }
    }

    #[test]
    fn a_first_packet_that_is_not_connect_is_refused() {
        let mut buf = BytesMut::from(&[0x30u8, 0x02, 0x00, 0x00][..]);
        assert!(matches!(
            read(&mut buf, None, 1024),
            Err(CodecError::NotConnect(3))
        ));
    }

    #[test]
    fn garbage_bytes_are_not_a_connect() {
        let mut buf = BytesMut::from(&b"GET / HTTP/1.1\r\n"[..]);
        assert!(read(&mut buf, None, 1024).is_err());
    }

    #[test]
    fn a_five_byte_remaining_length_is_malformed() {
        let mut buf = BytesMut::from(&[0x30u8, 0xFF, 0xFF, 0xFF, 0xFF, 0x7F][..]);
        assert!(matches!(
            read(&mut buf, Some(Version::V311), 1 << 30),
            Err(CodecError::Malformed(_))
        ));
        let mut first = BytesMut::from(&[0x10u8, 0xFF, 0xFF, 0xFF, 0xFF, 0x7F][..]);
        assert!(matches!(
            read(&mut first, None, 1 << 30),
            Err(CodecError::Malformed(_))
        ));
    }

    #[test]
    fn a_packet_over_the_limit_is_refused_before_it_is_read() {
        let mut buf = BytesMut::from(&[0x30u8, 0x80, 0x80, 0x04][..]);
        assert!(matches!(
            read(&mut buf, Some(Version::V311), 1024),
            Err(CodecError::TooLarge { .. })
        ));
    }

    #[test]
    fn a_v5_disconnect_without_reason_code_is_a_normal_disconnect() {
        let mut buf = BytesMut::from(&[0xE0u8, 0x00][..]);
        assert!(matches!(
            read(&mut buf, Some(Version::V5), 1024),
            Ok(Some(Packet::Disconnect {
                publish_will: false,
                ..
            }))
        ));
    }

    #[test]
    fn a_v5_puback_carries_its_reason_code() {
        let mut buf = BytesMut::new();
        write(
            &Reply::PubAck {
                pkid: 9,
                reason: AckReason::NotAuthorized,
            },
            Version::V5,
            &mut buf,
            None,
        )
        .expect("encode");
        // Type, length, packet id, reason code, empty property length.
        assert_eq!(&buf[..], &[0x40, 0x04, 0x00, 0x09, 0x87, 0x00]);
    }

    #[test]
    fn a_v5_disconnect_we_write_is_read_back_whole_with_its_reason() {
        let mut buf = BytesMut::new();
        write(
            &Reply::Disconnect(Goodbye::TakenOver),
            Version::V5,
            &mut buf,
            None,
        )
        .expect("encode");
        let packet = v5::Packet::read(&mut buf, None).expect("decode");
        assert!(buf.is_empty(), "bytes left over: {buf:?}");
        match packet {
            v5::Packet::Disconnect(d) => {
                assert_eq!(d.reason_code, v5::DisconnectReasonCode::SessionTakenOver)
            }
            other => panic!("expected DISCONNECT, got {other:?}"),
        }
    }

    #[test]
    fn a_publish_over_the_clients_maximum_packet_size_is_not_written() {
        let out = Outgoing {
            topic: "t".into(),
            payload: Bytes::from(vec![0u8; 100]),
            qos: QoS::AtMostOnce,
            retain: false,
            dup: false,
            pkid: 0,
            user_properties: Vec::new(),
        };
        let mut buf = BytesMut::new();
        assert!(matches!(
            write(&Reply::Publish(out), Version::V5, &mut buf, Some(50)),
            Err(CodecError::TooLarge { .. })
        ));
    }
}
