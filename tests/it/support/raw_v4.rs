//! MQTT 3.1.1 by hand: packets encoded and decoded with rumqttc's codec over a plain TCP
//! stream, for tests that must control each packet (withhold an acknowledgement, resend).

use std::time::Duration;

/// Writes one 3.1.1 packet made with rumqttc's encoder.
pub async fn send_v4(stream: &mut tokio::net::TcpStream, packet: rumqttc::mqttbytes::v4::Packet) {
    use tokio::io::AsyncWriteExt;
    let mut buf = bytes::BytesMut::new();
    packet.write(&mut buf, 1 << 20).expect("encode");
    stream.write_all(&buf).await.expect("send");
}

/// Reads the next 3.1.1 packet, decoded with rumqttc's decoder.
pub async fn receive_v4(
    stream: &mut tokio::net::TcpStream,
    buf: &mut bytes::BytesMut,
) -> rumqttc::mqttbytes::v4::Packet {
    use tokio::io::AsyncReadExt;
    loop {
        match rumqttc::mqttbytes::v4::Packet::read(buf, 1 << 20) {
            Ok(packet) => return packet,
            Err(rumqttc::mqttbytes::Error::InsufficientBytes(_)) => {}
            Err(error) => panic!("undecodable reply: {error}"),
        }
        let read = tokio::time::timeout(Duration::from_secs(30), stream.read_buf(buf))
            .await
            .expect("a reply within 30 s")
            .expect("read");
        assert!(read > 0, "connection closed while waiting for a reply");
    }
}

/// Connects as `client_id` with a persistent session; returns the stream and session_present.
pub async fn connect_persistent(port: u16, client_id: &str) -> (tokio::net::TcpStream, bool) {
    use rumqttc::mqttbytes::v4::{Connect, Packet};
    let mut stream = tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .expect("connect");
    let mut connect = Connect::new(client_id);
    connect.clean_session = false;
    send_v4(&mut stream, Packet::Connect(connect)).await;
    let mut buf = bytes::BytesMut::new();
    match receive_v4(&mut stream, &mut buf).await {
        Packet::ConnAck(ack) => {
            assert_eq!(ack.code, rumqttc::ConnectReturnCode::Success);
            (stream, ack.session_present)
        }
        other => panic!("expected CONNACK, got {other:?}"),
    }
}
