//! Bytes to packets: the next complete packet from a connection's buffer, through rumqttc's
//! v4 or v5 decoder.
//!
//! Before CONNECT, the protocol level byte is peeked to choose the decoder, and the whole CONNECT
//! is bounded (`MAX_CONNECT_BYTES`) and checked (`strict`) before rumqttc reads it. An MQTT 5
//! DISCONNECT with no reason code (`E0 00`, what Mosquitto's clients send) is recognised here
//! because rumqttc 0.25's v5 decoder refuses a zero-length DISCONNECT.

use bytes::BytesMut;
use rumqttc::mqttbytes::{self as m4, v4};
use rumqttc::v5::mqttbytes::{self as m5, v5};

use super::packet::{
    CodecError, Connect, Filter, MessageProperties, Packet, Publish, RetainHandling, Version, Will,
};
use super::strict;
use crate::record::QoS;

/// The largest CONNECT read. It is what a connection may make us buffer before it has
/// authenticated, so it is far below `max_packet_bytes` (16 MiB: 50 half-sent CONNECTs once
/// held 782 MB): every field of a CONNECT has a two-byte length, a will payload of 64 KiB
/// is the largest a device sends in practice, and the rest is a few short strings.
pub const MAX_CONNECT_BYTES: usize = 128 * 1024;

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

/// Takes an MQTT 5 DISCONNECT with no reason code (`E0 00`: reason 0 left out, as MQTT 5
/// allows) off the front of `buf`, which rumqttc 0.25's v5 decoder refuses; true if there was
/// one. Both directions meet it: Mosquitto's clients send it to the broker, and a broker may
/// send it to the upstream link.
pub fn take_bare_disconnect(buf: &mut BytesMut) -> bool {
    if buf.starts_with(&[0xE0, 0x00]) {
        let _ = buf.split_to(2);
        return true;
    }
    false
}

fn read_v5(buf: &mut BytesMut, max: usize) -> Result<Option<Packet>, CodecError> {
    if take_bare_disconnect(buf) {
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
