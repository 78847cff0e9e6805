//! What a client sends and what we send, as the rest of the broker sees them: [`Packet`] and
//! [`Reply`], one enum each for both protocol versions, and [`CodecError`].
//!
//! They have MQTT 5's shape, and 3.1.1 is read into it (its clean session becomes a session
//! expiry of 0 or `u32::MAX`, see [`Connect`]), so that a connection is written once for both;
//! `write` leaves out what 3.1.1 has no room for.

use std::sync::Arc;

use bytes::Bytes;
use thiserror::Error;

use super::strict;
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
