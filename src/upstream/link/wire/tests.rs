use bytes::BytesMut;
use rumqttc::mqttbytes::{self as m4, v4};
use rumqttc::v5::mqttbytes::{self as m5, v5};

use super::*;

fn key(qos: QoS, pkid: u16) -> AckKey {
    AckKey { qos, pkid }
}

#[test]
fn a_group_of_acks_is_written_back_to_back_as_pubacks_and_pubrecs_in_order() {
    for protocol in [Protocol::V311, Protocol::V5] {
        let mut out = BytesMut::new();
        for k in [
            key(QoS::AtLeastOnce, 7),
            key(QoS::ExactlyOnce, 8),
            key(QoS::AtMostOnce, 9),
            key(QoS::AtLeastOnce, 65535),
        ] {
            write_ack(protocol, k, &mut out);
        }
        let mut seen = Vec::new();
        while !out.is_empty() {
            seen.push(match protocol {
                Protocol::V311 => match v4::Packet::read(&mut out, 1024).expect("a packet") {
                    v4::Packet::PubAck(ack) => ("puback", ack.pkid),
                    v4::Packet::PubRec(rec) => ("pubrec", rec.pkid),
                    other => panic!("{other:?}"),
                },
                Protocol::V5 => match v5::Packet::read(&mut out, None).expect("a packet") {
                    v5::Packet::PubAck(ack) => ("puback", ack.pkid),
                    v5::Packet::PubRec(rec) => ("pubrec", rec.pkid),
                    other => panic!("{other:?}"),
                },
            });
        }
        assert_eq!(
            seen,
            [("puback", 7), ("pubrec", 8), ("puback", 65535)],
            "{protocol:?}"
        );
    }
}

#[test]
fn a_publish_arriving_a_byte_at_a_time_is_read_once_whole_and_not_before() {
    let mut publish = v5::Publish::new(
        "sensors/a/b/telemetry",
        m5::QoS::AtLeastOnce,
        "{\"t\":1}",
        None,
    );
    publish.pkid = 42;
    publish.properties = Some(v5::PublishProperties {
        user_properties: vec![("site".into(), "lab".into())],
        ..Default::default()
    });
    let mut whole = BytesMut::new();
    publish.write(&mut whole).expect("encode");
    let mut buf = BytesMut::new();
    for (i, byte) in whole.iter().enumerate() {
        buf.extend_from_slice(&[*byte]);
        let read = read(Protocol::V5, &mut buf, 1024).expect("no error");
        if i + 1 < whole.len() {
            assert!(
                read.is_none(),
                "read after {} of {} bytes",
                i + 1,
                whole.len()
            );
            continue;
        }
        match read {
            Some(FromBroker::Publish {
                topic,
                payload,
                qos,
                pkid,
                user_properties,
                ..
            }) => {
                assert_eq!(topic, "sensors/a/b/telemetry");
                assert_eq!(&payload[..], b"{\"t\":1}");
                assert_eq!((qos, pkid), (1, 42));
                assert_eq!(user_properties, [("site".to_owned(), "lab".to_owned())]);
            }
            other => panic!("{other:?}"),
        }
    }
    assert!(buf.is_empty());
}

#[test]
fn a_packet_over_the_limit_is_reported_with_its_size() {
    let mut publish = v4::Publish::new("t", m4::QoS::AtLeastOnce, vec![b'x'; 5000]);
    publish.pkid = 1;
    let mut buf = BytesMut::new();
    publish.write(&mut buf).expect("encode");
    match read(Protocol::V311, &mut buf, 1000) {
        Err(WireError::TooLarge { remaining, max }) => {
            assert!(remaining > 5000, "{remaining}");
            assert_eq!(max, 1000);
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn a_bare_mqtt5_disconnect_from_the_broker_is_read_as_a_normal_disconnect() {
    let mut buf = BytesMut::from(&[0xE0, 0x00, 0xD0][..]);
    match read(Protocol::V5, &mut buf, 1024) {
        Ok(Some(FromBroker::Disconnect { reason })) => assert_eq!(reason, "NormalDisconnection"),
        other => panic!("{other:?}"),
    }
    assert_eq!(&buf[..], [0xD0]);
}

#[test]
fn an_mqtt5_connect_carries_session_expiry_receive_maximum_and_packet_limit() {
    let hello = Hello {
        client_id: "mqtt2es-0",
        keep_alive_s: 30,
        clean: false,
        login: Some(("bridge", "secret")),
        session_expiry_s: Some(3600),
        receive_maximum: 500,
        max_packet_bytes: 1 << 20,
    };
    let mut out = BytesMut::new();
    write_connect(Protocol::V5, &hello, &mut out);
    match v5::Packet::read(&mut out, None).expect("a CONNECT") {
        v5::Packet::Connect(connect, None, Some(login)) => {
            assert_eq!(connect.client_id, "mqtt2es-0");
            assert_eq!(connect.keep_alive, 30);
            assert!(!connect.clean_start);
            let properties = connect.properties.expect("properties");
            assert_eq!(properties.session_expiry_interval, Some(3600));
            assert_eq!(properties.receive_maximum, Some(500));
            assert_eq!(properties.max_packet_size, Some(1 << 20));
            assert_eq!(
                (login.username.as_str(), login.password.as_str()),
                ("bridge", "secret")
            );
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn a_refused_connack_names_its_return_code() {
    let mut buf = BytesMut::new();
    v4::ConnAck::new(v4::ConnectReturnCode::NotAuthorized, false)
        .write(&mut buf)
        .expect("encode");
    match read(Protocol::V311, &mut buf, 1024) {
        Ok(Some(FromBroker::ConnAck { refused, .. })) => {
            assert_eq!(refused.as_deref(), Some("NotAuthorized"))
        }
        other => panic!("{other:?}"),
    }
}
