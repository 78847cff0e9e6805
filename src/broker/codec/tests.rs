//! Reading and writing packets through the codec: the decoder chosen by CONNECT's protocol
//! level, the size bounds, the zero-length MQTT 5 DISCONNECT, and what a v5 reply carries.

use bytes::{Bytes, BytesMut};
use rumqttc::mqttbytes::v4;
use rumqttc::v5::mqttbytes::v5;

use super::*;
use crate::record::QoS;

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
        properties: None,
        message_expiry_s: None,
        subscription_ids: Vec::new(),
    };
    let mut buf = BytesMut::new();
    assert!(matches!(
        write(&Reply::Publish(out), Version::V5, &mut buf, Some(50)),
        Err(CodecError::TooLarge { .. })
    ));
}

#[test]
fn a_connect_larger_than_a_connect_needs_is_refused_from_its_header_alone() {
    // A 15 MB CONNECT announced in its first bytes, under a 16 MiB packet limit: refused
    // before any of it is buffered.
    let mut buf = BytesMut::from(&[0x10u8, 0x80, 0x80, 0x80, 0x07, 0x00, 0x04][..]);
    buf.extend_from_slice(b"MQTT\x05");
    match read(&mut buf, None, 16 << 20) {
        Err(CodecError::BadConnect { version, fault }) => {
            assert_eq!(version, Version::V5);
            assert_eq!(fault.answer, strict::Answer::PacketTooLarge);
        }
        other => panic!("expected a refusal, got {other:?}"),
    }
}

#[test]
fn a_connect_breaking_a_rule_is_refused_with_its_version_for_the_answer() {
    let mut buf = v4_connect_bytes("dev-1");
    buf[9] |= 0x01;
    assert!(matches!(
        read(&mut buf, None, 1024),
        Err(CodecError::BadConnect {
            version: Version::V311,
            ..
        })
    ));
}
