//! The client side of MQTT 3.1.1 and 5 on the wire, through rumqttc's packet codec: what the
//! link sends (CONNECT, SUBSCRIBE, acks, PINGREQ, DISCONNECT) written into a buffer, and what a
//! broker sends read back as one version-free [`FromBroker`].

use bytes::{Bytes, BytesMut};
use rumqttc::mqttbytes::{self as m4, v4};
use rumqttc::v5::mqttbytes::{self as m5, v5};
use thiserror::Error;

use crate::broker::codec::take_bare_disconnect;
use crate::record::QoS;

use super::super::session::AckKey;
use super::super::settings::Protocol;

/// A packet from the broker, whichever protocol version it came in.
#[derive(Debug)]
pub enum FromBroker {
    /// `refused`: the broker's return or reason code when it did not accept us.
    ConnAck {
        session_present: bool,
        refused: Option<String>,
        /// MQTT 5: the keep alive the broker wants instead of ours.
        server_keep_alive: Option<u16>,
    },
    Publish {
        topic: String,
        payload: Bytes,
        qos: u8,
        pkid: u16,
        dup: bool,
        retain: bool,
        user_properties: Vec<(String, String)>,
    },
    /// The second step of a QoS 2 delivery: answered with PUBCOMP at once.
    PubRel {
        pkid: u16,
    },
    SubAck {
        granted: usize,
        refused: usize,
    },
    PingResp,
    /// MQTT 5: the broker closes the connection and says why.
    Disconnect {
        reason: String,
    },
    /// Anything a subscriber does not expect (PUBACK, UNSUBACK, AUTH...): ignored.
    Other,
}

#[derive(Debug, Error)]
pub enum WireError {
    /// A packet larger than we read; `remaining` is its remaining length.
    #[error("a packet of {remaining} bytes is over the limit of {max}")]
    TooLarge { remaining: usize, max: usize },
    #[error("malformed packet from the broker: {0}")]
    Malformed(String),
}

/// What CONNECT carries.
pub struct Hello<'a> {
    pub client_id: &'a str,
    pub keep_alive_s: u16,
    pub clean: bool,
    pub login: Option<(&'a str, &'a str)>,
    /// MQTT 5 only: session expiry (`None` with a clean start), receive maximum, packet limit.
    pub session_expiry_s: Option<u32>,
    pub receive_maximum: u16,
    pub max_packet_bytes: usize,
}

pub fn write_connect(protocol: Protocol, hello: &Hello, out: &mut BytesMut) {
    match protocol {
        Protocol::V311 => {
            let mut connect = v4::Connect::new(hello.client_id);
            connect.keep_alive = hello.keep_alive_s;
            connect.clean_session = hello.clean;
            if let Some((user, password)) = hello.login {
                connect.set_login(user, password);
            }
            // rumqttc writes a string over 65,535 bytes with a cut length; `UpstreamSettings::check`
            // refuses such a client id, username or password at start.
            let _ = connect.write(out);
        }
        Protocol::V5 => {
            let mut properties = v5::ConnectProperties::new();
            properties.session_expiry_interval = hello.session_expiry_s;
            properties.receive_maximum = Some(hello.receive_maximum);
            properties.max_packet_size = u32::try_from(hello.max_packet_bytes).ok();
            let connect = v5::Connect {
                keep_alive: hello.keep_alive_s,
                client_id: hello.client_id.to_owned(),
                clean_start: hello.clean,
                properties: Some(properties),
            };
            let login = hello.login.map(|(user, password)| v5::Login {
                username: user.to_owned(),
                password: password.to_owned(),
            });
            let _ = connect.write(&None, &login, out);
        }
    }
}

/// PUBACK for QoS 1, PUBREC for QoS 2 (a QoS 0 message has nothing to acknowledge).
pub fn write_ack(protocol: Protocol, key: AckKey, out: &mut BytesMut) {
    let _ = match (protocol, key.qos) {
        (_, QoS::AtMostOnce) => true,
        (Protocol::V311, QoS::AtLeastOnce) => v4::PubAck::new(key.pkid).write(out).is_ok(),
        (Protocol::V311, QoS::ExactlyOnce) => v4::PubRec::new(key.pkid).write(out).is_ok(),
        (Protocol::V5, QoS::AtLeastOnce) => v5::PubAck::new(key.pkid, None).write(out).is_ok(),
        (Protocol::V5, QoS::ExactlyOnce) => v5::PubRec::new(key.pkid, None).write(out).is_ok(),
    };
}

pub fn write_pubcomp(protocol: Protocol, pkid: u16, out: &mut BytesMut) {
    let _ = match protocol {
        Protocol::V311 => v4::PubComp::new(pkid).write(out).is_ok(),
        Protocol::V5 => v5::PubComp::new(pkid, None).write(out).is_ok(),
    };
}

pub fn write_subscribe(
    protocol: Protocol,
    pkid: u16,
    filters: &[String],
    qos: QoS,
    out: &mut BytesMut,
) {
    let _ = match protocol {
        Protocol::V311 => v4::Subscribe {
            pkid,
            filters: filters
                .iter()
                .map(|f| v4::SubscribeFilter::new(f.clone(), qos.v4()))
                .collect(),
        }
        .write(out)
        .is_ok(),
        Protocol::V5 => v5::Subscribe {
            pkid,
            filters: filters
                .iter()
                .map(|f| v5::Filter::new(f.clone(), qos.v5()))
                .collect(),
            properties: None,
        }
        .write(out)
        .is_ok(),
    };
}

pub fn write_ping(protocol: Protocol, out: &mut BytesMut) {
    let _ = match protocol {
        Protocol::V311 => v4::PingReq.write(out).is_ok(),
        Protocol::V5 => v5::PingReq::write(out).is_ok(),
    };
}

pub fn write_disconnect(protocol: Protocol, out: &mut BytesMut) {
    let _ = match protocol {
        Protocol::V311 => v4::Disconnect.write(out).is_ok(),
        Protocol::V5 => v5::Disconnect::new(v5::DisconnectReasonCode::NormalDisconnection)
            .write(out)
            .is_ok(),
    };
}

/// The next whole packet in `buf` (taken out of it), or `None` until more bytes arrive.
pub fn read(
    protocol: Protocol,
    buf: &mut BytesMut,
    max_packet_bytes: usize,
) -> Result<Option<FromBroker>, WireError> {
    if buf.is_empty() {
        return Ok(None);
    }
    match protocol {
        Protocol::V311 => read_v4(buf, max_packet_bytes),
        Protocol::V5 => read_v5(buf, max_packet_bytes),
    }
}

fn read_v4(buf: &mut BytesMut, max: usize) -> Result<Option<FromBroker>, WireError> {
    let packet = match v4::Packet::read(buf, max) {
        Ok(packet) => packet,
        Err(m4::Error::InsufficientBytes(_)) => return Ok(None),
        Err(m4::Error::PayloadSizeLimitExceeded(remaining)) => {
            return Err(WireError::TooLarge { remaining, max });
        }
        Err(error) => return Err(WireError::Malformed(format!("{error:?}"))),
    };
    Ok(Some(match packet {
        v4::Packet::ConnAck(connack) => FromBroker::ConnAck {
            session_present: connack.session_present,
            refused: (connack.code != v4::ConnectReturnCode::Success)
                .then(|| format!("{:?}", connack.code)),
            server_keep_alive: None,
        },
        v4::Packet::Publish(publish) => FromBroker::Publish {
            topic: publish.topic,
            payload: publish.payload,
            qos: publish.qos as u8,
            pkid: publish.pkid,
            dup: publish.dup,
            retain: publish.retain,
            user_properties: Vec::new(),
        },
        v4::Packet::PubRel(pubrel) => FromBroker::PubRel { pkid: pubrel.pkid },
        v4::Packet::SubAck(suback) => {
            let refused = suback
                .return_codes
                .iter()
                .filter(|code| matches!(code, v4::SubscribeReasonCode::Failure))
                .count();
            FromBroker::SubAck {
                granted: suback.return_codes.len() - refused,
                refused,
            }
        }
        v4::Packet::PingResp => FromBroker::PingResp,
        _ => FromBroker::Other,
    }))
}

fn read_v5(buf: &mut BytesMut, max: usize) -> Result<Option<FromBroker>, WireError> {
    if take_bare_disconnect(buf) {
        return Ok(Some(FromBroker::Disconnect {
            reason: "NormalDisconnection".to_owned(),
        }));
    }
    let limit = u32::try_from(max).unwrap_or(u32::MAX);
    let packet = match v5::Packet::read(buf, Some(limit)) {
        Ok(packet) => packet,
        Err(m5::Error::InsufficientBytes(_)) => return Ok(None),
        Err(m5::Error::PayloadSizeLimitExceeded { pkt_size, .. }) => {
            return Err(WireError::TooLarge {
                remaining: pkt_size,
                max,
            });
        }
        Err(error) => return Err(WireError::Malformed(format!("{error:?}"))),
    };
    Ok(Some(match packet {
        v5::Packet::ConnAck(connack) => FromBroker::ConnAck {
            session_present: connack.session_present,
            refused: (connack.code != v5::ConnectReturnCode::Success)
                .then(|| format!("{:?}", connack.code)),
            server_keep_alive: connack.properties.and_then(|p| p.server_keep_alive),
        },
        v5::Packet::Publish(publish) => FromBroker::Publish {
            topic: String::from_utf8_lossy(&publish.topic).into_owned(),
            payload: publish.payload,
            qos: publish.qos as u8,
            pkid: publish.pkid,
            dup: publish.dup,
            retain: publish.retain,
            user_properties: publish
                .properties
                .map(|p| p.user_properties)
                .unwrap_or_default(),
        },
        v5::Packet::PubRel(pubrel) => FromBroker::PubRel { pkid: pubrel.pkid },
        v5::Packet::SubAck(suback) => {
            let refused = suback
                .return_codes
                .iter()
                .filter(|code| !matches!(code, v5::SubscribeReasonCode::Success(_)))
                .count();
            FromBroker::SubAck {
                granted: suback.return_codes.len() - refused,
                refused,
            }
        }
        v5::Packet::PingResp(_) => FromBroker::PingResp,
        v5::Packet::Disconnect(disconnect) => FromBroker::Disconnect {
            reason: format!("{:?}", disconnect.reason_code),
        },
        _ => FromBroker::Other,
    }))
}

#[cfg(test)]
mod tests;
