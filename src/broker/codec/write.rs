//! Packets to bytes: a [`Reply`] appended to a connection's buffer through rumqttc's v4 or v5
//! encoder.
//!
//! A reply is built once, in MQTT 5's terms; for 3.1.1 what it has no words for is left out (a
//! reason code on an acknowledgement, properties), written as the nearest thing it has (a
//! refused subscription is a failure) or not written at all (a server DISCONNECT: closing the
//! connection says it), so the connection need not ask which version it speaks to answer.

use bytes::BytesMut;
use rumqttc::mqttbytes::v4;
use rumqttc::v5::mqttbytes::{self as m5, v5};

use super::packet::{AckReason, CodecError, ConnectCode, Goodbye, Reply, SubCode, Version};
use super::strict;

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
                v4::Publish::from_bytes(out.topic.clone(), out.qos.v4(), out.payload.clone());
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
                    SubCode::Granted(qos) => v4::SubscribeReasonCode::Success(qos.v4()),
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
                out.qos.v5(),
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
                    SubCode::Granted(qos) => v5::SubscribeReasonCode::Success(qos.v5()),
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
